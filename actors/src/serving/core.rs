//! The serving core: from this node's lease and the applied cluster state, decides which shards
//! it activates and stops, when their entities stop, which hooks run, and when a handoff is
//! confirmed. Pure: events in, effects out, no clock, no I/O (docs/architecture.md §7.3).
//!
//! The shell carries the effects out **in order**, each to its end, before it observes again:
//!
//! - a shard this node must no longer serve: [`Effect::Deactivate`] (the table stops serving it:
//!   from then on nothing for it runs here, queued messages included), then
//!   [`Effect::StopEntities`] (waited for without a budget), then the hooks, then, for a planned
//!   move, [`Effect::ConfirmReleased`]: a handoff is confirmed only after the shard's entities
//!   stopped, never before;
//! - a shard whose lease ran out while the map still gives it to this node keeps its entities
//!   (paused): nothing reaches them without a lease, and if it serves again at the same epoch,
//!   nobody else served it meanwhile. Paused entities stop as soon as the map moves the shard;
//! - a shard this node now owns: its *assigned* hooks, then [`Effect::Activate`], whose outcome
//!   (the table activates only what the latest applied map still gives this node under a valid
//!   lease) comes back as [`Input::Activated`];
//! - follower roles last: they never gate serving.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::state::ClusterState;
use crate::types::{Epoch, NodeId, ShardId};

/// A change of this node's role for one shard, given to the hooks.
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
        /// out, and its entities are kept (paused).
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

/// What the core is told.
#[derive(Debug)]
pub enum Input<'a> {
    /// The lease (until when this node may serve, `None`: no lease) and the applied state, at
    /// `now` on the lease clock. Read the lease first, then the state: a lease that needs log
    /// index X is published after X was applied, so the state read next is at least that new.
    Observe {
        /// The end of the usable lease.
        lease_until: Option<Instant>,
        /// The applied cluster state.
        state: &'a ClusterState,
        /// Now, on the lease clock.
        now: Instant,
    },
    /// What [`Effect::Activate`] did: per shard, whether the table activated it; `state` is the
    /// latest applied state (to name the new owner of a shard that was not activated).
    Activated {
        /// `(shard, epoch, activated)`.
        results: Vec<(ShardId, Epoch, bool)>,
        /// The latest applied state.
        state: &'a ClusterState,
    },
    /// A [`Effect::ConfirmReleased`] did not commit: confirm these again at the next observation.
    ConfirmFailed(Vec<(ShardId, Epoch)>),
}

/// What the shell must do, in order, each to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Stop serving these shards in the table (journal `deactivate`); `ran_out` dates the end
    /// when the lease ran out before it was noticed.
    Deactivate {
        /// The shards.
        shards: Vec<ShardId>,
        /// When serving really ended, if earlier than now.
        ran_out: Option<Instant>,
    },
    /// Stop every entity of these shards on this node and wait until they stopped (no budget:
    /// what follows must not run while one of them still does).
    StopEntities(Vec<ShardId>),
    /// Run these hooks (concurrently, each within the hook budget).
    Hooks(Vec<ShardChange>),
    /// Propose `Released` for these handoffs: this node stopped the shards and their entities.
    /// The leader never releases them while this node's lease lives, so a confirmation that
    /// fails must come back as [`Input::ConfirmFailed`].
    ConfirmReleased(Vec<(ShardId, Epoch)>),
    /// Activate these shards in the table if the latest applied map still gives them to this
    /// node under a valid lease; answer with [`Input::Activated`] (always, even when empty).
    Activate(Vec<(ShardId, Epoch)>),
}

/// The serving state of one node.
#[derive(Debug)]
pub struct Core {
    local: NodeId,
    /// Shards the table serves at these epochs (as far as the core made it).
    active: BTreeMap<ShardId, Epoch>,
    /// Shards this node follows, with their epoch.
    following: BTreeMap<ShardId, Epoch>,
    /// Per shard, the last owner seen.
    last_owner: Vec<Option<NodeId>>,
    /// Handoffs confirmed (proposed) and not yet seen gone.
    released: BTreeSet<(ShardId, Epoch)>,
    /// Shards whose lease ran out while the map still gave them here: entities kept for the epoch.
    paused: BTreeMap<ShardId, Epoch>,
    last_until: Option<Instant>,
    /// The follower roles of the last observation, applied once its activations are known.
    replicas: Option<Roles>,
}

/// The follower roles and owners of one observed map.
type Roles = (BTreeMap<ShardId, Epoch>, Vec<Option<NodeId>>);

impl Core {
    /// The core of node `local`: nothing served yet.
    pub fn new(local: NodeId) -> Core {
        Core {
            local,
            active: BTreeMap::new(),
            following: BTreeMap::new(),
            last_owner: Vec::new(),
            released: BTreeSet::new(),
            paused: BTreeMap::new(),
            last_until: None,
            replicas: None,
        }
    }

    /// Shards active here, with their epochs.
    pub fn active(&self) -> &BTreeMap<ShardId, Epoch> {
        &self.active
    }

    /// Shards whose entities are kept through a lease lapse.
    pub fn paused(&self) -> &BTreeMap<ShardId, Epoch> {
        &self.paused
    }

    /// When the shell must observe again without a change: when the lease it serves under ends.
    pub fn wake_at(&self, lease_until: Option<Instant>, now: Instant) -> Option<Instant> {
        lease_until.filter(|u| now < *u)
    }

    /// Handles one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input<'_>) -> Vec<Effect> {
        match input {
            Input::Observe { lease_until, state, now } => self.observe(lease_until, state, now),
            Input::Activated { results, state } => self.activated(results, state),
            Input::ConfirmFailed(shards) => {
                for k in &shards {
                    self.released.remove(k);
                }
                Vec::new()
            }
        }
    }

    /// The node stops: what it still serves stops serving.
    pub fn shutdown(&mut self) -> Vec<Effect> {
        let shards: Vec<ShardId> = std::mem::take(&mut self.active).into_keys().collect();
        if shards.is_empty() {
            return Vec::new();
        }
        vec![Effect::Deactivate { shards, ran_out: None }]
    }

    fn observe(&mut self, lease_until: Option<Instant>, state: &ClusterState, now: Instant) -> Vec<Effect> {
        let (local, map) = (self.local, &state.shard_map);
        let n = map.shard_count();
        if self.last_owner.len() != n as usize {
            self.last_owner = vec![None; n as usize];
        }
        if lease_until.is_some() {
            self.last_until = lease_until;
        }
        let serving = lease_until.is_some_and(|u| now < u);
        let owned_at = |s: ShardId| (map.owner(s) == Some(local)).then(|| map.shard_epoch(s));
        let desired: BTreeMap<ShardId, Epoch> = if serving {
            (0..n).map(ShardId).filter_map(|s| owned_at(s).map(|e| (s, e))).collect()
        } else {
            BTreeMap::new()
        };
        let replicas: BTreeMap<ShardId, Epoch> = (0..n)
            .map(ShardId)
            .filter(|s| map.replicas(*s).contains(&local))
            .map(|s| (s, map.shard_epoch(s)))
            .collect();
        let mut effects = Vec::new();

        // 1. Stop what this node must no longer serve; paused entities whose shard moved stop too.
        let stops: Vec<(ShardId, Epoch)> =
            self.active.iter().filter(|(s, e)| desired.get(s) != Some(e)).map(|(s, e)| (*s, *e)).collect();
        let mut stop_entities = Vec::new();
        let mut hooks = Vec::new();
        for (s, e) in &stops {
            self.active.remove(s);
            let still_assigned = owned_at(*s) == Some(*e);
            if still_assigned {
                self.paused.insert(*s, *e);
            } else {
                self.paused.remove(s);
                stop_entities.push(*s);
            }
            hooks.push(ShardChange::Unassigned {
                shard: *s,
                epoch: *e,
                new_owner: map
                    .owner(*s)
                    .or_else(|| state.handoffs.get(s).and_then(|h| h.to.owner))
                    .filter(|o| *o != local),
                // A follower now, or in the assignment a handoff away from here lands in.
                stays_replica: replicas.contains_key(s)
                    || state.handoffs.get(s).is_some_and(|h| h.to.replicas.contains(&local)),
                still_assigned,
            });
        }
        let moved: Vec<ShardId> =
            self.paused.iter().filter(|(s, e)| owned_at(**s) != Some(**e)).map(|(s, _)| *s).collect();
        for s in moved {
            self.paused.remove(&s);
            stop_entities.push(s);
        }
        if !stops.is_empty() {
            let ran_out = if serving { None } else { self.last_until.filter(|u| *u <= now) };
            effects.push(Effect::Deactivate { shards: stops.iter().map(|(s, _)| *s).collect(), ran_out });
        }
        if !stop_entities.is_empty() {
            effects.push(Effect::StopEntities(stop_entities));
        }
        if !hooks.is_empty() {
            effects.push(Effect::Hooks(hooks));
        }

        // 2. Confirm handoffs away from this node: the shard is not served here, and its entities
        //    stopped (in step 1 of this round or an earlier one: effects run to their end in order).
        let confirm: Vec<(ShardId, Epoch)> = state
            .handoffs
            .iter()
            .filter(|(s, h)| h.from == local && !self.active.contains_key(s) && !self.paused.contains_key(s))
            .map(|(s, _)| (*s, map.shard_epoch(*s)))
            .filter(|k| !self.released.contains(k))
            .collect();
        self.released.retain(|(s, _)| state.handoffs.get(s).is_some_and(|h| h.from == local));
        if !confirm.is_empty() {
            self.released.extend(confirm.iter().copied());
            effects.push(Effect::ConfirmReleased(confirm));
        }

        // 3. Start what this node now owns: hooks first, then serving. Entities kept through a
        //    lease lapse serve on only at the epoch they had.
        let starts: Vec<(ShardId, Epoch)> =
            desired.iter().filter(|(s, e)| self.active.get(s) != Some(e)).map(|(s, e)| (*s, *e)).collect();
        let stale: Vec<ShardId> =
            starts.iter().filter(|(s, e)| self.paused.get(s).is_some_and(|p| p != e)).map(|(s, _)| *s).collect();
        for s in &stale {
            self.paused.remove(s);
        }
        if !stale.is_empty() {
            effects.push(Effect::StopEntities(stale));
        }
        if !starts.is_empty() {
            let changes = starts
                .iter()
                .map(|(s, e)| ShardChange::Assigned {
                    shard: *s,
                    epoch: *e,
                    previous_owner: self.last_owner[s.0 as usize].filter(|o| *o != local),
                    was_replica: self.following.contains_key(s),
                })
                .collect();
            effects.push(Effect::Hooks(changes));
        }
        effects.push(Effect::Activate(starts));
        self.replicas = Some((replicas, map.owners().to_vec()));
        effects
    }

    fn activated(&mut self, results: Vec<(ShardId, Epoch, bool)>, state: &ClusterState) -> Vec<Effect> {
        let (local, latest) = (self.local, &state.shard_map);
        let mut effects = Vec::new();
        let mut dropped = Vec::new();
        for (s, e, ok) in results {
            if ok {
                self.active.insert(s, e);
                self.paused.remove(&s);
            } else {
                // Its assigned hooks ran: tell the user it is not served after all.
                dropped.push(ShardChange::Unassigned {
                    shard: s,
                    epoch: e,
                    new_owner: latest.owner(s).filter(|o| *o != local),
                    stays_replica: latest.replicas(s).contains(&local),
                    still_assigned: false,
                });
            }
        }
        if !dropped.is_empty() {
            effects.push(Effect::Hooks(dropped));
        }

        // 4. Follower roles (these do not gate serving).
        let Some((replicas, owners)) = self.replicas.take() else { return effects };
        let mut changes = Vec::new();
        let mut stop = Vec::new();
        for (s, e) in &replicas {
            if !self.following.contains_key(s) {
                let leader = owners.get(s.0 as usize).copied().flatten();
                changes.push(ShardChange::ReplicaAdded { shard: *s, epoch: *e, leader });
            }
        }
        for (s, e) in &self.following {
            // A follower promoted to owner gained leadership (Assigned); it did not lose the shard.
            if !replicas.contains_key(s) && !self.active.contains_key(s) && !self.paused.contains_key(s) {
                stop.push(*s);
                changes.push(ShardChange::ReplicaRemoved { shard: *s, epoch: *e });
            }
        }
        if !stop.is_empty() {
            effects.push(Effect::StopEntities(stop));
        }
        if !changes.is_empty() {
            effects.push(Effect::Hooks(changes));
        }
        self.following = replicas;
        for (i, o) in owners.iter().enumerate() {
            if o.is_some() {
                self.last_owner[i] = *o;
            }
        }
        effects
    }
}

#[cfg(test)]
mod tests;
