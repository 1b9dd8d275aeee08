//! A Raft snapshot as InstallSnapshot delivers it (the whole applied state: members, shard map,
//! handoffs): bytes decode or fail, never panic; a decoded state round-trips.
#![no_main]
use clusterfunk_actors::consensus::AppliedState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = rmp_serde::from_slice::<AppliedState>(data) {
        let bytes = clusterfunk_actors::wire::encode(&state);
        assert_eq!(rmp_serde::from_slice::<AppliedState>(&bytes).expect("round trip"), state);
    }
});
