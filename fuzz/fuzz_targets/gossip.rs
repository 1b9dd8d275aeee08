//! A gossip message (membership heartbeats): bytes decode or fail, never panic; a decoded
//! message round-trips.
#![no_main]
use clusterfunk_actors::wire::{self, Gossip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = wire::decode::<Gossip>(data) {
        assert_eq!(wire::decode::<Gossip>(&wire::encode(&g)).expect("round trip"), g);
    }
});
