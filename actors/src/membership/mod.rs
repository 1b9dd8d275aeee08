//! The membership actor: who is alive and how to reach them (docs/architecture.md §2).
//!
//! Discovery by mDNS and static seeds (in the transport), gossip heartbeats carrying node
//! metadata, and a failure detector: a member not heard from for `suspect_after` is *suspect*,
//! for `down_after` *down*. Membership gives hints only: the consensus actor decides who joins
//! the Raft group, and the shard manager moves shards away from down nodes. It never changes
//! voters (docs/architecture.md §8).

mod actor;
mod core;

use std::time::Duration;

pub use actor::{Bootstrapping, Membership, RaftMembers};
pub use core::{dashboard_host, published_addr, Core, Effect, Input, MemberState, MemberView, View};

/// Membership timings.
///
/// Detection time is `down_after` plus up to one tick; a shorter value moves shards sooner after
/// a crash but risks declaring a node down during a pause (GC-free Rust rarely pauses, but a
/// loaded 2-core VM can stall for hundreds of ms).
#[derive(Clone, Debug)]
pub struct Config {
    /// How often this node announces itself. Default 250 ms.
    pub heartbeat_interval: Duration,
    /// Silence after which a member is suspect. Default 1 s (4 heartbeats).
    pub suspect_after: Duration,
    /// Silence after which a member is down. Default 2 s (8 heartbeats).
    pub down_after: Duration,
    /// How long the higher-id side waits for the lower-id side to dial before dialing itself
    /// (only one side dials: a TCP simultaneous open fails the noise handshake). Default 3 s.
    pub fallback_dial_after: Duration,
    /// Least time between two dials of the same peer. Default 1 s.
    pub redial_interval: Duration,
}

impl Config {
    /// How often the failure detector looks: a fifth of the heartbeat interval or of a quarter
    /// of `suspect_after`, whichever is shorter, within 10..=250 ms (50 ms by default). A timer
    /// finer than the timings it serves only costs wakeups, which add up with many nodes on a
    /// machine.
    pub fn tick(&self) -> Duration {
        (self.heartbeat_interval.min(self.suspect_after / 4) / 5)
            .clamp(Duration::from_millis(10), Duration::from_millis(250))
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            heartbeat_interval: Duration::from_millis(250),
            suspect_after: Duration::from_secs(1),
            down_after: Duration::from_secs(2),
            fallback_dial_after: Duration::from_secs(3),
            redial_interval: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_follows_the_timings_it_serves() {
        let ms = Duration::from_millis;
        assert_eq!(Config::default().tick(), ms(50), "the defaults keep 50 ms");
        let lab = Config { heartbeat_interval: ms(1000), suspect_after: ms(5000), ..Config::default() };
        assert_eq!(lab.tick(), ms(200), "slow gossip, slow timer");
        let tight = Config { heartbeat_interval: ms(1000), suspect_after: ms(400), ..Config::default() };
        assert_eq!(tight.tick(), ms(20), "a short suspect_after still gets its resolution");
        let fast = Config { heartbeat_interval: ms(10), ..Config::default() };
        assert_eq!(fast.tick(), ms(10), "never below 10 ms");
        let slow = Config { heartbeat_interval: ms(60_000), suspect_after: ms(600_000), ..Config::default() };
        assert_eq!(slow.tick(), ms(250), "never above 250 ms");
    }
}
