//! The `clusterfunk` CLI, built here so the tests can run it as a process.

fn main() {
    std::process::exit(clusterfunk_cli::main());
}
