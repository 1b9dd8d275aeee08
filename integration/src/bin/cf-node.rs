//! The demo node, built inside the integration package so its tests can start it as a real
//! process (`CARGO_BIN_EXE_cf-node`).

fn main() {
    std::process::exit(clusterfunk_demo::main());
}
