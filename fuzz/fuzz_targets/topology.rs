//! The shard map and member endpoints a node pushes to a client: bytes decode to a topology or
//! to an error; its map decodes or fails, and its endpoints parse, without panicking.
#![no_main]
use clusterfunk_actors::proxy::clients::Topology;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = clusterfunk_actors::wire::decode::<Topology>(data) {
        let _ = t.shard_map();
        for (node, peer, _) in t.endpoints() {
            assert_eq!(clusterfunk_actors::types::NodeId::from_peer_bytes(&peer.to_bytes()), node);
        }
    }
});
