//! The consensus actor: the Raft group (openraft) over a persistent redb log, with the replicated
//! [`ClusterState`](crate::state::ClusterState) as its state machine (docs/architecture.md §2, §5).
//!
//! The Raft core runs on its own arbiter so disk and network waits never stall the other actors;
//! the actix shell answers inbound RPCs, serializes membership changes (auto mode) and forwards
//! proposals to the leader.

mod actor;
pub mod authorize;
pub mod auto;
pub mod handover;
pub mod manage;
pub mod map_view;
mod network;
pub mod rpc;
pub mod snapshot;
mod state_machine;
pub mod store;
pub mod types;

use std::time::Duration;

pub(crate) use actor::bootstrap as actor_bootstrap;
pub use actor::{Consensus, Manage, Propose, ProposeError, ReadIndex};
pub use map_view::MapView;
pub use state_machine::{AppliedState, BeforePublish, StateMachine};

/// Raft timings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Leader heartbeat. Default 50 ms.
    pub heartbeat_interval: Duration,
    /// Election timeout range. Default 150–300 ms. openraft followers also refuse to vote for
    /// `election_timeout.1` after hearing from their leader (its leader lease), so a new leader is
    /// elected 450–600 ms after the old one stops.
    pub election_timeout: (Duration, Duration),
    /// Entries between snapshots (after which the log before the snapshot is purged). Default 1000.
    pub snapshot_every: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            snapshot_every: 1000,
        }
    }
}

impl Config {
    pub(crate) fn to_openraft(&self, cluster: &str) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        openraft::Config {
            cluster_name: cluster.to_string(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout.0.as_millis() as u64,
            election_timeout_max: self.election_timeout.1.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.snapshot_every,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(Box::new)
    }
}
