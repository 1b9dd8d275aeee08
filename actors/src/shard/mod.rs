//! Shard math (docs/architecture.md §6, docs/sharding.md): key → shard, the shard map, and the weighted minimal-movement allocator.
//!
//! Everything here is pure: no I/O, no clock, no randomness, so it is tested and benchmarked alone.

mod alloc;
mod hash;
mod map;

pub use alloc::{
    allocate, allocate_pinned, allocate_weighted, Allocation, Candidate, Move, MoveReason, NodeLoad, Plan,
    MAX_SHARD_WEIGHT,
};
pub use hash::{shard_for, ShardKey};
pub use map::{Assignment, MapDecodeError, ShardMap};
