//! Lifecycle hooks: what a service hears when its node's shards and the cluster change
//! (docs/architecture.md §10.3), as typed messages to an actor or as closures.
//!
//! Order, per node:
//! - a shard moving here: [`ClusterEvent::ShardAssigned`] (then `ShardLeadershipGained` if this
//!   node was one of its followers) — **before** the shard serves: the node waits for the hooks;
//! - a shard moving away (or the lease running out): the shard stops serving, its entities stop
//!   (their `stopping` runs), then `ShardLeadershipLost` (if this node stays a follower, in the
//!   map or in the assignment its handoff lands in), then [`ClusterEvent::ShardUnassigned`]
//!   (and once a handoff landed, `ReplicaAdded` with the new leader); a planned move is confirmed to the cluster only after that,
//!   so the new owner's `ShardAssigned` comes after the old owner's `ShardUnassigned`;
//! - `ReplicaAdded` / `ReplicaRemoved` when this node becomes or stops being a follower;
//! - `LeaderChanged`, `MemberUp` / `MemberDown`, and on the Raft leader `RebalanceStarted` /
//!   `RebalanceFinished` with the plan, in the order they happen.
//!
//! Each hook has a time budget ([`Builder::hook_budget`](crate::Builder::hook_budget), default
//! 2 s): one that overruns is logged and counted (`hooks_overrun` in the status) and the shard
//! proceeds without it.

use std::sync::Arc;

use actix::Recipient;
use clusterfunk_actors::serving::{ShardChange, ShardHooks};
use clusterfunk_actors::types::ShardId;
use futures::future::BoxFuture;
use tracing::warn;

use crate::entity::Registry;

pub use clusterfunk_actors::events::ClusterEvent;

type Closure = Arc<dyn Fn(ClusterEvent) -> BoxFuture<'static, ()> + Send + Sync>;

/// One registered hook.
#[derive(Clone)]
pub(crate) enum Hook {
    Closure(Closure),
    Actor(Recipient<ClusterEvent>),
}

impl Hook {
    pub(crate) fn closure<F, Fut>(f: F) -> Hook
    where
        F: Fn(ClusterEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        Hook::Closure(Arc::new(move |ev| Box::pin(f(ev))))
    }

    fn call(&self, ev: ClusterEvent) -> BoxFuture<'static, ()> {
        match self {
            Hook::Closure(f) => f(ev),
            Hook::Actor(r) => {
                let send = r.send(ev);
                Box::pin(async move {
                    if let Err(e) = send.await {
                        warn!(error = %e, "hook actor unavailable");
                    }
                })
            }
        }
    }
}

/// The registered hooks (shown as a count in `Debug`).
#[derive(Clone, Default)]
pub(crate) struct Hooks(pub(crate) Vec<Hook>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} hooks", self.0.len())
    }
}

impl Hooks {
    /// Runs every hook for each event, in registration order, one event after the other.
    pub(crate) fn fire(&self, events: Vec<ClusterEvent>) -> BoxFuture<'static, ()> {
        let hooks = self.0.clone();
        Box::pin(async move {
            for ev in events {
                for h in &hooks {
                    h.call(ev.clone()).await;
                }
            }
        })
    }
}

/// The node's shard hooks: entity stops (the hosts), then the user's hooks. What happens when is
/// the serving core's decision (docs/architecture.md §7.3); this only translates.
pub(crate) struct NodeHooks {
    pub(crate) registry: Arc<Registry>,
    pub(crate) user: Hooks,
}

impl ShardHooks for NodeHooks {
    fn stop_entities(&self, shard: ShardId) -> BoxFuture<'static, ()> {
        let stops: Vec<_> = self.registry.controls.iter().map(|h| h.stop_shard(shard)).collect();
        Box::pin(async move {
            futures::future::join_all(stops).await;
        })
    }

    fn on_change(&self, change: ShardChange) -> BoxFuture<'static, ()> {
        let events = match change {
            ShardChange::Assigned { shard, epoch, previous_owner, was_replica } => {
                let mut v = vec![ClusterEvent::ShardAssigned { shard, epoch, previous_owner }];
                if was_replica {
                    v.push(ClusterEvent::ShardLeadershipGained { shard, epoch });
                }
                v
            }
            ShardChange::Unassigned { shard, epoch, new_owner, stays_replica, still_assigned } => {
                let mut v = Vec::new();
                if stays_replica && !still_assigned {
                    v.push(ClusterEvent::ShardLeadershipLost { shard, epoch });
                }
                v.push(ClusterEvent::ShardUnassigned { shard, epoch, new_owner });
                v
            }
            ShardChange::ReplicaAdded { shard, epoch, leader } => {
                vec![ClusterEvent::ReplicaAdded { shard, epoch, leader }]
            }
            ShardChange::ReplicaRemoved { shard, epoch } => vec![ClusterEvent::ReplicaRemoved { shard, epoch }],
        };
        self.user.fire(events)
    }
}
