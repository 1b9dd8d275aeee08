//! The shard manager (docs/architecture.md §2, §7.5): on the leader, turn membership and leases into a shard map
//! and commit it through Raft; on every node, publish the committed map and activate and stop the
//! shards this node owns (hooks, journal, handoff confirmation).

mod actor;
mod core;

use std::time::Duration;

pub use actor::ShardManager;
pub use core::{Core, Decision, Handoff};

/// Shard manager timings.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a needed rebalance must stay needed before it is committed, so a burst of
    /// membership changes (a rolling start) becomes one map change. Failover is not debounced.
    /// Default 500 ms.
    pub debounce: Duration,
    /// The lease takeover time (`L·(1+ρ)/(1−ρ) + G`, set from the lease config): a new leader
    /// lets the members renew with it for this long (or the debounce, if shorter) before it
    /// decides anything. An unconfirmed handoff is released by the leader only once the old
    /// owner's lease has surely run out: a live owner confirms once its entities stopped.
    pub takeover: Duration,
}

impl Config {
    /// How often the leader looks for expired leases and needed rebalances: a twelfth of the
    /// takeover time, within 10..=250 ms (50 ms by default, so failover waits at most a tick
    /// beyond the lease rule).
    pub fn tick(&self) -> Duration {
        let tick = Duration::from_millis((self.takeover / 12).as_millis() as u64);
        tick.clamp(Duration::from_millis(10), Duration::from_millis(250))
    }
}

impl Default for Config {
    fn default() -> Config {
        Config { debounce: Duration::from_millis(500), takeover: crate::lease::Config::default().takeover_after() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_follows_the_takeover_time() {
        let ms = Duration::from_millis;
        assert_eq!(Config::default().tick(), ms(50), "the default lease keeps 50 ms");
        assert_eq!(Config { takeover: ms(5200), ..Config::default() }.tick(), ms(250), "at most 250 ms");
        assert_eq!(Config { takeover: ms(60), ..Config::default() }.tick(), ms(10), "at least 10 ms");
    }
}
