//! A Raft RPC response, as a node reads it from a peer: bytes decode or fail, never panic.
#![no_main]
use clusterfunk_actors::consensus::rpc::RaftResponse;
use clusterfunk_actors::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = wire::decode::<RaftResponse>(data) {
        let _ = wire::encode(&resp);
    }
});
