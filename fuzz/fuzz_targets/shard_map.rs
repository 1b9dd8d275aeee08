//! The shard map codec (in snapshots and the replicated state): bytes decode to a map whose
//! every index is valid, or to an error; a decoded map answers every query without panicking
//! and round-trips.
#![no_main]
use clusterfunk_actors::shard::ShardMap;
use clusterfunk_actors::types::ShardId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = ShardMap::decode(data) {
        for s in 0..map.shard_count().min(70_000) {
            let _ = map.owner(ShardId(s));
            let _ = map.replicas(ShardId(s));
            let _ = map.shard_epoch(ShardId(s));
        }
        let _ = map.owner_counts();
        assert_eq!(ShardMap::decode(&map.encode()).expect("round trip"), map);
    }
});
