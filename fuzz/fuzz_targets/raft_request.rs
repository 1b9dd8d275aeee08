//! A Raft RPC request (AppendEntries, Vote, InstallSnapshot, forwarded command, lease renewal):
//! any bytes decode to a request or an error, never a panic, and a decoded request encodes.
#![no_main]
use clusterfunk_actors::consensus::rpc::RaftRequest;
use clusterfunk_actors::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = wire::decode::<RaftRequest>(data) {
        let _ = wire::encode(&req);
    }
});
