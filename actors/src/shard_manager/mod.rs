//! The shard manager, allocation half (DESIGN §2, §3): on the leader, turn membership into a
//! shard map and commit it through Raft (debounced); everywhere, publish the committed map.

mod actor;
mod core;

use std::time::Duration;

pub use actor::ShardManager;
pub use core::{Core, Decision};

/// Shard manager timings.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a needed rebalance must stay needed before it is committed, so a burst of
    /// membership changes (a rolling start) becomes one map change. Default 500 ms.
    pub debounce: Duration,
    /// After winning an election, how long members the new leader has not heard from yet still
    /// count as alive (its failure detector starts empty). Default 2 s, the membership
    /// `down_after`.
    pub leader_grace: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config { debounce: Duration::from_millis(500), leader_grace: Duration::from_secs(2) }
    }
}
