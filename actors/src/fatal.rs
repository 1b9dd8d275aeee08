//! Fatal errors end the process: exit code 70 (`EX_SOFTWARE`), whatever runtime wrapper the
//! binary uses (`System::stop_with_code` is ignored under `SystemRunner::block_on`, so the
//! process would stay up with its arbiters stopped). docs/operations.md lists the code.

/// The exit code of a node that stopped on a fatal error.
pub const EXIT_CODE: i32 = 70;

/// The Raft store failed a durable write: log it and end the process at once, before anything
/// else can be acknowledged.
pub fn storage_failed(error: &dyn std::fmt::Display) -> ! {
    exit(&format!("storage failure: {error}"))
}

/// Logs `why` and ends the process with [`EXIT_CODE`].
pub fn exit(why: &str) -> ! {
    tracing::error!(reason = %why, code = EXIT_CODE, "fatal: the node stops (fail-stop); restart it once the cause is fixed");
    // Whatever the log writer buffered: the reason must reach the operator.
    eprintln!("clusterfunk: fatal: {why}; exiting with code {EXIT_CODE}");
    std::process::exit(EXIT_CODE)
}
