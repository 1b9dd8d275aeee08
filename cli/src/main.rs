//! The `clusterfunk` command-line tool; see the crate docs.

fn main() {
    std::process::exit(clusterfunk_cli::main());
}
