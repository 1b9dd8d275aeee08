//! The log subscriber a node binary installs (the demo, the examples, the test nodes): `fmt`
//! output with a filter (`RUST_LOG`, else the given default), colours only on a terminal, and
//! without openraft 0.9's duplicate `ERROR RPCError`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Where [`init`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Standard output.
    Stdout,
    /// Standard error (a binary whose standard output is its result).
    Stderr,
}

/// Installs the process's tracing subscriber: `RUST_LOG` if set, else `default_filter` (e.g.
/// `"info,openraft=warn,libp2p=warn"`). openraft 0.9 logs every failed replication call twice,
/// a WARN `error replication to target=...` and then, at ERROR, `RPCError` with the same error
/// (a heartbeat that timed out on a starved machine, a peer that is gone): the ERROR copy is
/// dropped, so a transient network hiccup does not read as an error. Every other ERROR stays.
/// Does nothing if a subscriber is already installed.
///
/// ```no_run
/// clusterfunk::logging::init("info,openraft=warn,libp2p=warn", clusterfunk::logging::Output::Stdout);
/// ```
pub fn init(default_filter: &str, output: Output) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let not_a_duplicate = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.level() == &tracing::Level::ERROR
            && meta.target().starts_with("openraft::replication")
            && meta.fields().field("err").is_some())
    });
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let layer = match output {
        Output::Stdout => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            fmt.with_ansi(ansi).with_writer(std::io::stdout).boxed()
        }
        Output::Stderr => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            fmt.with_ansi(ansi).with_writer(std::io::stderr).boxed()
        }
    };
    let _ = tracing_subscriber::registry().with(layer.with_filter(filter).with_filter(not_a_duplicate)).try_init();
}
