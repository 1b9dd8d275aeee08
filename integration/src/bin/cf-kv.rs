//! The sharded KV node, built inside the integration package so its tests can start it as a real
//! process (`CARGO_BIN_EXE_cf-kv`).

fn main() {
    std::process::exit(clusterfunk_demo::main_with(clusterfunk_kv::APP));
}
