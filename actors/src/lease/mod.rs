//! Node leases (docs/architecture.md §7.1, §7.2): a node serves shards only while it holds a lease granted by a Raft
//! leader that heard from a quorum recently; the leader takes shards from a node only after that
//! node's lease has surely run out.
//!
//! - A node sends a renewal every `L/3` to the leader it knows. When a renewal it *sent* at `t_send`
//!   (its monotonic clock) is granted, its lease is valid until `t_send + L`; it serves while
//!   `now + margin < t_send + L`.
//! - A grant carries the leader's applied log index; the node uses that grant only once its own
//!   state has applied up to it. So a node that was cut off and comes back cannot serve from a stale
//!   map: it first learns every move made meanwhile.
//! - The leader grants only while Raft says a quorum acknowledged it within `election_timeout_max`
//!   (CheckQuorum), and only to renewals of its own term.
//! - The leader treats a node as gone once `L·(1+ρ)/(1−ρ) + G` passed since its last renewal
//!   arrived ([`Config::takeover_after`]); a new leader first waits that long after winning.
//!
//! Why the two nodes can never serve one shard: see docs/sharding.md, "Single ownership".

mod clock;
mod core;
mod keeper;
pub(crate) use keeper::spawn as spawn_keeper;

use std::time::Duration;

pub use clock::{monotonic_ns, Clock, SkewedClock, SystemClock};
pub use core::{may_grant, Holder, Table};
pub use keeper::{LeaseService, Publish};

/// Lease timings (L, ρ, G and the serving margin δ).
#[derive(Clone, Debug)]
pub struct Config {
    /// L: how long a granted lease is valid, from when its renewal was sent. Renewed every L/3.
    /// Default 500 ms. Must be at least three Raft heartbeats.
    pub duration: Duration,
    /// ρ: the largest relative drift between two nodes' monotonic clocks. Default 0.01 (1 %).
    pub drift: f64,
    /// G: extra time the leader waits before taking shards from a silent node. Default 100 ms.
    pub grace: Duration,
    /// δ: a node stops serving this long before its lease runs out. Default 10 ms.
    pub margin: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            duration: Duration::from_millis(500),
            drift: 0.01,
            grace: Duration::from_millis(100),
            margin: Duration::from_millis(10),
        }
    }
}

impl Config {
    /// How often a node renews: L/3.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How long the leader waits without a renewal before taking a node's shards:
    /// `L·(1+ρ)/(1−ρ) + G`.
    pub fn takeover_after(&self) -> Duration {
        self.duration.mul_f64((1.0 + self.drift) / (1.0 - self.drift)) + self.grace
    }

    /// Checks the settings against the Raft heartbeat; the error names the field and why.
    pub fn validate(&self, raft_heartbeat: Duration) -> Result<(), ConfigError> {
        if self.duration < raft_heartbeat * 3 {
            return Err(ConfigError::ShorterThanHeartbeats { lease: self.duration, heartbeat: raft_heartbeat });
        }
        if !(0.0..0.5).contains(&self.drift) {
            return Err(ConfigError::Drift(self.drift));
        }
        if self.margin >= self.duration / 3 {
            return Err(ConfigError::Margin { margin: self.margin, lease: self.duration });
        }
        Ok(())
    }
}

/// Why lease settings cannot work.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// L is shorter than three Raft heartbeats.
    #[error(
        "lease: {lease:?} is shorter than three Raft heartbeats ({heartbeat:?} each): a node would lose its lease \
         whenever one heartbeat is late"
    )]
    ShorterThanHeartbeats {
        /// L.
        lease: Duration,
        /// The Raft heartbeat interval.
        heartbeat: Duration,
    },
    /// ρ is out of range.
    #[error("lease_drift: {0} must be in [0, 0.5)")]
    Drift(f64),
    /// δ is too large for L.
    #[error("lease margin {margin:?} must be under a third of the lease ({lease:?})")]
    Margin {
        /// δ.
        margin: Duration,
        /// L.
        lease: Duration,
    },
}

pub use crate::consensus::rpc::{LeaseReply, LeaseRequest, Refusal};
