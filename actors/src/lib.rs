//! Internal actors of [clusterfunk](https://docs.rs/clusterfunk): transport, membership,
//! consensus and the shard manager, each a pure core plus an actix shell (docs/architecture.md §2).
//!
//! Users depend on the `clusterfunk` crate, which re-exports what they need; nothing here is a
//! stable API.
#![warn(missing_docs, unreachable_pub)]

pub mod client;
pub mod consensus;
pub mod events;
pub mod fatal;
pub mod faults;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod serving;
pub mod shard;
pub mod shard_manager;
pub mod state;
#[doc(hidden)]
pub mod testing;
pub mod transport;
pub mod types;
pub mod wire;
pub mod workers;

pub use libp2p::{multiaddr, Multiaddr};
