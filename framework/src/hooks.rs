//! Lifecycle hooks: what a service hears when its node's shards and the cluster change
//! (DESIGN §4), as typed messages to an actor or as closures.
//!
//! Order, per node:
//! - a shard moving here: [`ClusterEvent::ShardAssigned`] (then `ShardLeadershipGained` if this
//!   node was one of its followers) — **before** the shard serves: the node waits for the hooks;
//! - a shard moving away (or the lease running out): the shard stops serving, its entities stop
//!   (their `stopping` runs), then `ShardLeadershipLost` (if this node stays a follower), then
//!   [`ClusterEvent::ShardUnassigned`]; a planned move is confirmed to the cluster only after that,
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
use clusterfunk_actors::shard_manager::{ShardChange, ShardHooks};
use clusterfunk_actors::types::{Epoch, ShardId};
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

/// The node's shard hooks: stop entities, then the user's hooks.
pub(crate) struct NodeHooks {
    pub(crate) registry: Arc<Registry>,
    pub(crate) user: Hooks,
    /// Shards whose lease ran out while the map still gave them to this node, with the epoch
    /// their (kept) entities belong to.
    pub(crate) paused: std::sync::Mutex<std::collections::HashMap<ShardId, Epoch>>,
}

impl NodeHooks {
    /// Stops every entity of `shard` here (they finish their mailboxes), then fires `events`.
    fn stop_then_fire(&self, shard: ShardId, events: Vec<ClusterEvent>) -> BoxFuture<'static, ()> {
        let stops: Vec<_> = self.registry.controls.iter().map(|h| h.stop_shard(shard)).collect();
        let fire = self.user.fire(events);
        Box::pin(async move {
            futures::future::join_all(stops).await;
            fire.await;
        })
    }
}

impl ShardHooks for NodeHooks {
    fn on_change(&self, change: ShardChange) -> BoxFuture<'static, ()> {
        let events = match change {
            ShardChange::Assigned { shard, epoch, previous_owner, was_replica } => {
                let mut v = vec![ClusterEvent::ShardAssigned { shard, epoch, previous_owner }];
                if was_replica {
                    v.push(ClusterEvent::ShardLeadershipGained { shard, epoch });
                }
                // Entities kept through a lease lapse serve on only at the epoch they had.
                let kept = self.paused.lock().expect("paused lock is never poisoned").remove(&shard);
                if kept.is_some_and(|e| e != epoch) {
                    return self.stop_then_fire(shard, v);
                }
                v
            }
            ShardChange::Unassigned { shard, epoch, new_owner, stays_replica, still_assigned } => {
                if still_assigned {
                    // Only the lease ran out: keep the entities (paused) for the same epoch.
                    self.paused.lock().expect("paused lock is never poisoned").insert(shard, epoch);
                    return self.user.fire(vec![ClusterEvent::ShardUnassigned { shard, epoch, new_owner }]);
                }
                self.paused.lock().expect("paused lock is never poisoned").remove(&shard);
                let mut v = Vec::new();
                if stays_replica {
                    v.push(ClusterEvent::ShardLeadershipLost { shard, epoch });
                }
                v.push(ClusterEvent::ShardUnassigned { shard, epoch, new_owner });
                return self.stop_then_fire(shard, v);
            }
            ShardChange::ReplicaAdded { shard, epoch, leader } => {
                vec![ClusterEvent::ReplicaAdded { shard, epoch, leader }]
            }
            ShardChange::ReplicaRemoved { shard, epoch } => {
                // No longer a follower: its replica instances go (the owner's never live here).
                return self.stop_then_fire(shard, vec![ClusterEvent::ReplicaRemoved { shard, epoch }]);
            }
        };
        self.user.fire(events)
    }
}
