//! Every node's half of the shard manager: activates the shards this node owns while its lease is
//! valid, stops the others, runs the hooks in order, and confirms handoffs through Raft.
//!
//! Order per shard (DESIGN §4): on the new owner, the *assigned* hook completes before the shard
//! serves (journal `activate`, then serving); on the old owner, the shard stops serving first
//! (journal `deactivate`), then its entities stop and the *unassigned* hook runs, then the
//! handoff is confirmed (`Released`). Each hook has a time budget; an overrun is logged and
//! counted and the shard proceeds.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use futures::future::{join_all, BoxFuture};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::consensus::{AppliedState, Consensus, Propose};
use crate::ownership::Ownership;
use crate::shard::ShardMap;
use crate::state::{Command, CommandResult};
use crate::types::{Epoch, NodeId, ShardId};

/// A change of this node's role for one shard, given to [`ShardHooks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardChange {
    /// This node becomes the shard's owner (leader) at `epoch`; it serves once the hook returns.
    Assigned {
        /// The shard.
        shard: ShardId,
        /// Its epoch: the fencing token.
        epoch: Epoch,
        /// Who owned it before, as far as this node saw.
        previous_owner: Option<NodeId>,
        /// Whether this node was one of its followers (a promotion).
        was_replica: bool,
    },
    /// This node stopped serving the shard (moved away, or the lease ran out).
    Unassigned {
        /// The shard.
        shard: ShardId,
        /// The epoch it was served at here.
        epoch: Epoch,
        /// The next owner, if known.
        new_owner: Option<NodeId>,
        /// Whether this node stays one of its followers (a demotion).
        stays_replica: bool,
        /// Whether the map still gives the shard to this node at `epoch`: only its lease ran
        /// out. Its entities may keep their state: nothing reaches them without a lease, and if
        /// it serves the shard again at the same epoch, nobody else served it meanwhile.
        still_assigned: bool,
    },
    /// This node became a follower of the shard.
    ReplicaAdded {
        /// The shard.
        shard: ShardId,
        /// The shard's epoch.
        epoch: Epoch,
        /// Its owner.
        leader: Option<NodeId>,
    },
    /// This node is no longer a follower of the shard.
    ReplicaRemoved {
        /// The shard.
        shard: ShardId,
        /// The shard's epoch.
        epoch: Epoch,
    },
}

/// What the node does when its shards change: implemented by the framework (entities, user hooks).
pub trait ShardHooks: Send + Sync + 'static {
    /// Runs for one change; the activator waits for it (within the hook budget).
    fn on_change(&self, change: ShardChange) -> BoxFuture<'static, ()>;
}

/// The activator task's handle: counters.
#[derive(Debug, Default)]
pub struct Activator {
    /// Hooks that overran their budget.
    pub hooks_overrun: AtomicU64,
    /// Shards activated so far.
    pub activations: AtomicU64,
    /// Shards stopped so far.
    pub deactivations: AtomicU64,
}

pub(crate) struct Inputs {
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) applied: watch::Receiver<Arc<AppliedState>>,
    pub(crate) lease: watch::Receiver<Option<Instant>>,
    pub(crate) consensus: Addr<Consensus>,
    pub(crate) hooks: watch::Receiver<Option<Arc<dyn ShardHooks>>>,
    pub(crate) budget: Duration,
}

impl Activator {
    pub(crate) async fn run(self: Arc<Self>, mut io: Inputs) {
        let local = io.ownership.local();
        let clock = io.ownership.clock().clone();
        let mut active: BTreeMap<ShardId, Epoch> = BTreeMap::new();
        let mut following: BTreeMap<ShardId, Epoch> = BTreeMap::new();
        let mut last_owner: Vec<Option<NodeId>> = Vec::new();
        let mut released: HashSet<(ShardId, Epoch)> = HashSet::new();
        let mut last_until: Option<Instant> = None;
        // Hooks must be installed before the first activation (the framework does it at start).
        while io.hooks.borrow().is_none() {
            if io.hooks.changed().await.is_err() {
                return;
            }
        }
        loop {
            // The lease first, then the applied state: a lease that needs log index X is
            // published after X was applied, so the map read next is at least that new.
            let until = *io.lease.borrow_and_update();
            let applied = io.applied.borrow_and_update().clone();
            let map: &ShardMap = &applied.state.shard_map;
            let hooks = io.hooks.borrow().clone().expect("installed above");
            let n = map.shard_count();
            if last_owner.len() != n as usize {
                last_owner = vec![None; n as usize];
                io.ownership.init(n);
            }
            if until.is_some() {
                last_until = until;
            }
            let now = clock.now();
            let serving = until.is_some_and(|u| now < u);
            let desired: BTreeMap<ShardId, Epoch> = if serving {
                (0..n).map(ShardId).filter(|s| map.owner(*s) == Some(local)).map(|s| (s, map.shard_epoch(s))).collect()
            } else {
                BTreeMap::new()
            };
            let replicas: BTreeMap<ShardId, Epoch> = (0..n)
                .map(ShardId)
                .filter(|s| map.replicas(*s).contains(&local))
                .map(|s| (s, map.shard_epoch(s)))
                .collect();

            // 1. Stop what this node must no longer serve.
            let stops: Vec<(ShardId, Epoch)> =
                active.iter().filter(|(s, e)| desired.get(s) != Some(e)).map(|(s, e)| (*s, *e)).collect();
            if !stops.is_empty() {
                let ran_out = if serving { None } else { last_until.filter(|u| *u <= now) };
                for (s, _) in &stops {
                    io.ownership.deactivate(*s, n, ran_out);
                    active.remove(s);
                }
                self.deactivations.fetch_add(stops.len() as u64, Ordering::Relaxed);
                if !serving {
                    warn!(shards = stops.len(), "lease ran out: stopped serving every shard");
                } else {
                    info!(shards = stops.len(), "stopped shards that moved away");
                }
                let changes = stops.iter().map(|(s, e)| ShardChange::Unassigned {
                    shard: *s,
                    epoch: *e,
                    new_owner: map
                        .owner(*s)
                        .or_else(|| applied.state.handoffs.get(s).and_then(|h| h.to.owner))
                        .filter(|o| *o != local),
                    stays_replica: replicas.contains_key(s),
                    still_assigned: map.owner(*s) == Some(local) && map.shard_epoch(*s) == *e,
                });
                self.run_hooks(&hooks, changes.collect(), io.budget).await;
            }

            // 2. Confirm handoffs away from this node: it is not serving those shards.
            let confirm: Vec<(ShardId, Epoch)> = applied
                .state
                .handoffs
                .iter()
                .filter(|(s, h)| h.from == local && !active.contains_key(s))
                .map(|(s, _)| (*s, applied.state.shard_map.shard_epoch(*s)))
                .filter(|k| !released.contains(k))
                .collect();
            if !confirm.is_empty() {
                released.extend(confirm.iter().copied());
                self.confirm(&io.consensus, local, confirm);
            }
            released.retain(|(s, _)| applied.state.handoffs.get(s).is_some_and(|h| h.from == local));

            // 3. Start what this node now owns: hooks first, then serving.
            let starts: Vec<(ShardId, Epoch)> =
                desired.iter().filter(|(s, e)| active.get(s) != Some(e)).map(|(s, e)| (*s, *e)).collect();
            if !starts.is_empty() {
                let changes = starts.iter().map(|(s, e)| {
                    let prev = last_owner[s.0 as usize].filter(|o| *o != local);
                    ShardChange::Assigned {
                        shard: *s,
                        epoch: *e,
                        previous_owner: prev,
                        was_replica: following.contains_key(s),
                    }
                });
                self.run_hooks(&hooks, changes.collect(), io.budget).await;
                // The lease may have run out or the map moved on while the hooks ran: activate
                // only what the latest applied map still gives this node under a valid lease.
                let mut dropped = Vec::new();
                for (s, e) in &starts {
                    if io.ownership.activate_if_owned(*s, *e, n) {
                        active.insert(*s, *e);
                    } else {
                        dropped.push((*s, *e));
                    }
                }
                let started = starts.len() - dropped.len();
                self.activations.fetch_add(started as u64, Ordering::Relaxed);
                if started > 0 {
                    info!(shards = started, total = active.len(), "serving shards");
                }
                if !dropped.is_empty() {
                    // Their assigned hooks ran: tell the user they are not served after all.
                    info!(shards = dropped.len(), "assignment superseded while its hooks ran; not serving");
                    let latest = io.applied.borrow().clone();
                    let changes = dropped.iter().map(|(s, e)| ShardChange::Unassigned {
                        shard: *s,
                        epoch: *e,
                        new_owner: latest.state.shard_map.owner(*s).filter(|o| *o != local),
                        stays_replica: latest.state.shard_map.replicas(*s).contains(&local),
                        still_assigned: false,
                    });
                    self.run_hooks(&hooks, changes.collect(), io.budget).await;
                }
            }

            // 4. Follower roles (these do not gate serving).
            let mut changes = Vec::new();
            for (s, e) in &replicas {
                if !following.contains_key(s) {
                    changes.push(ShardChange::ReplicaAdded { shard: *s, epoch: *e, leader: map.owner(*s) });
                }
            }
            for (s, e) in &following {
                // A follower promoted to owner gained leadership (ShardAssigned, above); it did
                // not lose the shard.
                if !replicas.contains_key(s) && !active.contains_key(s) {
                    changes.push(ShardChange::ReplicaRemoved { shard: *s, epoch: *e });
                }
            }
            if !changes.is_empty() {
                self.run_hooks(&hooks, changes, io.budget).await;
            }
            following = replicas;
            for (i, o) in map.owners().iter().enumerate() {
                if o.is_some() {
                    last_owner[i] = *o;
                }
            }

            // 5. Wait for a change, or for the lease to run out.
            let expiry = until.filter(|_| serving).map(|u| {
                let left = u.saturating_duration_since(clock.now());
                tokio::time::Instant::now() + left
            });
            let lease_end = async {
                match expiry {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                r = io.applied.changed() => if r.is_err() { break },
                r = io.lease.changed() => if r.is_err() { break },
                _ = lease_end => {}
            }
        }
        for (s, _) in active {
            io.ownership.deactivate(s, last_owner.len() as u32, None);
        }
        debug!("activator stopped");
    }

    async fn run_hooks(&self, hooks: &Arc<dyn ShardHooks>, changes: Vec<ShardChange>, budget: Duration) {
        let runs = changes.into_iter().map(|c| {
            let fut = hooks.on_change(c.clone());
            async move {
                if tokio::time::timeout(budget, fut).await.is_err() {
                    self.hooks_overrun.fetch_add(1, Ordering::Relaxed);
                    warn!(change = ?c, ?budget, "shard hook overran its budget; proceeding");
                }
            }
        });
        join_all(runs).await;
    }

    fn confirm(&self, consensus: &Addr<Consensus>, local: NodeId, shards: Vec<(ShardId, Epoch)>) {
        let send = consensus.send(Propose(Command::Released { node: local, shards: shards.clone() }));
        actix::spawn(async move {
            match send.await {
                Ok(Ok(CommandResult::Applied { index })) => {
                    info!(shards = shards.len(), index, "handoff confirmed: shards released")
                }
                Ok(Ok(other)) => warn!(result = ?other, "handoff confirmation refused"),
                Ok(Err(e)) => warn!(error = %e, "handoff confirmation failed; the leader releases after the lease"),
                Err(e) => warn!(error = %e, "consensus mailbox unavailable"),
            }
        });
    }
}
