//! # clusterfunk
//!
//! A Rust actor-model runtime for clusters of services: nodes find each other (mDNS or seeds),
//! agree through Raft on a persistent log about members and a weighted shard map, and every key
//! maps to the one node owning its shard.
//!
//! ```no_run
//! # async fn run() -> Result<(), clusterfunk::Error> {
//! use clusterfunk::Cluster;
//!
//! let cluster = Cluster::builder().name("shop").env("dev").bootstrap(true).build()?.start().await?;
//! let status = cluster.wait_until(std::time::Duration::from_secs(10), "a shard map", |s| s.shard_map.epoch > 0).await?;
//! println!("leader {:?}, {} shards", status.leader, status.shard_map.shards);
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! - `opentelemetry`: the trace context every message carries ([`traceparent`]) is the
//!   OpenTelemetry span's when the subscriber has a `tracing_opentelemetry` layer, so an
//!   exporter sees the caller, the send and the entity's handler on the owning node as one trace.
//!
//! See `docs/` in the repository for the guides, and docs/architecture.md for how it fits together.
#![warn(missing_docs, unreachable_pub)]

mod client;
mod cluster;
mod config;
mod dashboard;
mod entity;
pub mod hooks;
pub mod logging;
mod manage;
mod members;
mod metrics;
mod settings;
mod status;
mod timeline;
mod trace;

pub use client::{Client, ClientBuilder, ClientStats};
pub use cluster::{Cluster, Error, Faults, ReplicaSet, WorkerWatch};
pub use clusterfunk_actors::faults::{FaultPlan, FaultPlanError};
pub use clusterfunk_actors::membership::MemberState;
pub use clusterfunk_actors::proxy::{Error as RouteError, Refusal};
pub use clusterfunk_actors::shard::{Assignment, Move, MoveReason, Plan, ShardKey, ShardMap};
pub use clusterfunk_actors::transport::seeds::{Discovered, Discovery};
pub use clusterfunk_actors::types::{ClusterName, Epoch, NodeId, ShardId, WorkerIndex};
pub use config::{Builder, ClusterConfig, ConfigError, Mode, Rebalance};
pub use entity::{
    fencing_epoch, At, EntityInfo, EntityRegistration, Handles, Lists, MessageList, RemoteMessage, SendError,
    SendFailure, Sharded, ShardedActor,
};
pub use hooks::ClusterEvent;
pub use manage::MemberInfo;
pub use members::{Member, Role};
pub use settings::{parse_duration, parse_shard_weight, Settings, KEYS as SETTINGS_KEYS};
pub use status::{
    ClusterInfo, ClusterStatus, FaultsStatus, MemberStatus, OwnershipStatus, RaftInfo, ShardMapStatus, TrafficStatus,
    TransportStatus,
};
pub use trace::traceparent;

/// What most users import.
pub mod prelude {
    pub use crate::{
        Client, Cluster, ClusterStatus, EntityInfo, NodeId, SendError, SendFailure, ShardId, ShardKey, Sharded,
        ShardedActor,
    };
}
