//! The shard manager (DESIGN §2, §4): on the leader, turn membership and leases into a shard map
//! and commit it through Raft; on every node, publish the committed map and activate and stop the
//! shards this node owns (hooks, journal, handoff confirmation).

mod actor;
mod core;

use std::time::Duration;

pub use actor::ShardManager;
pub use core::{Core, Decision};

/// Shard manager timings.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a needed rebalance must stay needed before it is committed, so a burst of
    /// membership changes (a rolling start) becomes one map change. Failover is not debounced.
    /// Default 500 ms.
    pub debounce: Duration,
    /// How long the leader waits for an old owner to confirm a handoff before releasing the shard
    /// itself: the lease takeover time. Set from the lease config.
    pub handoff_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            debounce: Duration::from_millis(500),
            handoff_timeout: crate::lease::Config::default().takeover_after(),
        }
    }
}
