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
use clusterfunk_actors::shard::Plan;
use clusterfunk_actors::shard_manager::{NodeEvent, ShardChange, ShardHooks};
use clusterfunk_actors::types::{Epoch, NodeId, ShardId};
use futures::future::BoxFuture;
use tracing::warn;

use crate::entity::Registry;

/// Something that happened to this node's shards or to the cluster.
#[derive(Clone, Debug, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum ClusterEvent {
    /// This node now owns `shard` at `epoch`; it serves once every hook returned.
    ShardAssigned {
        /// The shard.
        shard: ShardId,
        /// Its epoch: the fencing token for the service's own storage.
        epoch: Epoch,
        /// The node that owned it before, as far as this node saw.
        previous_owner: Option<NodeId>,
    },
    /// This node stopped serving `shard` (it moved away or this node's lease ran out); its
    /// entities have stopped.
    ShardUnassigned {
        /// The shard.
        shard: ShardId,
        /// The epoch it was served at here.
        epoch: Epoch,
        /// The next owner, if known (`None` when the lease ran out).
        new_owner: Option<NodeId>,
    },
    /// A follower of `shard` on this node was promoted to its leader (after `ShardAssigned`).
    ShardLeadershipGained {
        /// The shard.
        shard: ShardId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// This node led `shard` and stays one of its followers (before `ShardUnassigned`).
    ShardLeadershipLost {
        /// The shard.
        shard: ShardId,
        /// The epoch it led at.
        epoch: Epoch,
    },
    /// This node became a follower (replica) of `shard`.
    ReplicaAdded {
        /// The shard.
        shard: ShardId,
        /// The shard's epoch.
        epoch: Epoch,
        /// Its leader.
        leader: Option<NodeId>,
    },
    /// This node is no longer a follower of `shard`.
    ReplicaRemoved {
        /// The shard.
        shard: ShardId,
        /// The shard's epoch.
        epoch: Epoch,
    },
    /// The Raft leader changed.
    LeaderChanged {
        /// The new leader, if one is known.
        leader: Option<NodeId>,
        /// Its term.
        term: u64,
    },
    /// A member came up (this node's failure detector).
    MemberUp(NodeId),
    /// A member went down.
    MemberDown(NodeId),
    /// This node, as Raft leader, committed a new placement: the plan (which shards move, from
    /// where, to where, why).
    RebalanceStarted(Plan),
    /// Every move of that plan is done.
    RebalanceFinished(Plan),
}

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

    pub(crate) fn node_event(ev: NodeEvent) -> Option<ClusterEvent> {
        Some(match ev {
            NodeEvent::LeaderChanged { leader, term } => ClusterEvent::LeaderChanged { leader, term },
            NodeEvent::MemberUp(n) => ClusterEvent::MemberUp(n),
            NodeEvent::MemberDown(n) => ClusterEvent::MemberDown(n),
            NodeEvent::RebalanceStarted(p) => ClusterEvent::RebalanceStarted(p),
            NodeEvent::RebalanceFinished(p) => ClusterEvent::RebalanceFinished(p),
            _ => return None,
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
                    let stops: Vec<_> = self.registry.controls.iter().map(|h| h.stop_shard(shard)).collect();
                    let fire = self.user.fire(v);
                    return Box::pin(async move {
                        futures::future::join_all(stops).await;
                        fire.await;
                    });
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
                let stops: Vec<_> = self.registry.controls.iter().map(|h| h.stop_shard(shard)).collect();
                let mut v = Vec::new();
                if stays_replica {
                    v.push(ClusterEvent::ShardLeadershipLost { shard, epoch });
                }
                v.push(ClusterEvent::ShardUnassigned { shard, epoch, new_owner });
                let fire = self.user.fire(v);
                return Box::pin(async move {
                    futures::future::join_all(stops).await;
                    fire.await;
                });
            }
            ShardChange::ReplicaAdded { shard, epoch, leader } => {
                vec![ClusterEvent::ReplicaAdded { shard, epoch, leader }]
            }
            ShardChange::ReplicaRemoved { shard, epoch } => vec![ClusterEvent::ReplicaRemoved { shard, epoch }],
        };
        self.user.fire(events)
    }
}
