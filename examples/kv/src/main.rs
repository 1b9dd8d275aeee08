//! The sharded KV store node; takes the demo's flags (`kv --help`).

fn main() {
    std::process::exit(clusterfunk_demo::main_with(clusterfunk_kv::APP));
}
