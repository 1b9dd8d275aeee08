//! The serving side of single ownership, on every node (docs/architecture.md §7.3): which shards
//! this node serves, when, and under which epoch.
//!
//! - [`table`]: the serving table read on every message (lease, active shards, highest epoch seen);
//!   revocations happen in the state machine before an applied state is published;
//! - [`core`]: the pure decision (activate, stop, hooks, handoff confirmation) from the lease and
//!   the applied state; tested alone and in a deterministic simulation of many nodes;
//! - `shell`: the task that carries the core's effects out;
//! - `drain`: leaving (every shard handed off) and coming back after a restart;
//! - [`journal`]: what the lab's checkers read;
//! - [`ready`]: whether this node is ready (`GET /ready`).

pub mod core;
mod drain;
pub mod journal;
pub mod ready;
mod shell;
#[cfg(test)]
mod sim;
pub mod table;

pub use self::core::{Core, Effect, Input, ShardChange};
pub(crate) use drain::{drain, rejoin};
pub use drain::{DrainError, Drained};
pub use journal::{FileJournal, Journal, MemoryJournal};
pub(crate) use shell::{run, Inputs};
pub use shell::{Counters, ShardHooks, FORCE_STOP};
pub use table::{Ownership, OwnershipStats};
