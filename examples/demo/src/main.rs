//! The demo node binary; see the crate docs.

fn main() {
    std::process::exit(clusterfunk_demo::main());
}
