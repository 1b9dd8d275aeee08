//! The replicated cluster state (the Raft state machine's data) and the commands that change it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::shard::{Assignment, ShardMap};
use crate::types::{ClusterName, Epoch, NodeId, NodeMeta, ShardId};

/// A change to the cluster state, committed through Raft.
///
/// ONLY APPEND TO THIS ENUM: the variant order is part of the log format on disk and on the wire.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster's name and fixed shape; the first entry the bootstrap node commits.
    Init {
        /// The cluster's name.
        name: ClusterName,
        /// The fixed number of shards.
        shards: u32,
        /// Copies of each shard (owner + followers).
        replica_factor: u32,
    },
    /// Records (or updates) a member's metadata.
    RegisterMember {
        /// What the node said about itself.
        meta: NodeMeta,
    },
    /// Changes some shards' assignments, computed against the map at `based_on`.
    SetAssignments {
        /// The map epoch the allocation was computed from; a stale plan is refused.
        based_on: Epoch,
        /// The changed shards.
        changes: Vec<(ShardId, Assignment)>,
    },
    /// Forgets a member (it no longer gets shards).
    RemoveMember {
        /// The node.
        id: NodeId,
    },
    /// Starts planned moves (graceful handoff, docs/architecture.md §7.5): each shard loses its owner (messages
    /// wait) until the old owner confirms it stopped ([`Command::Released`]), then goes to `to`.
    BeginHandoff {
        /// The map epoch the plan was computed from; a stale plan is refused.
        based_on: Epoch,
        /// `(shard, from, to)`; `to` keeps the shard's followers.
        moves: Vec<(ShardId, NodeId, Assignment)>,
    },
    /// The old owner stopped these shards (each at the epoch its handoff began): hand them over.
    Released {
        /// The old owner.
        node: NodeId,
        /// The shards, with the epoch of their handoff.
        shards: Vec<(ShardId, Epoch)>,
    },
    /// Marks a member as leaving (it gets no shards and hands off the ones it has) or not.
    SetDraining {
        /// The node.
        id: NodeId,
        /// Leaving or not.
        draining: bool,
    },
    /// An operator drains a member (it keeps its membership and gets no shards; its own restart
    /// does not end it) or ends the drain.
    SetDrained {
        /// The node.
        id: NodeId,
        /// Drained or not.
        drained: bool,
    },
    /// An operator demoted a voter (`held`): auto membership does not promote it again until
    /// an operator promotes it.
    HoldLearner {
        /// The node.
        id: NodeId,
        /// Held as a learner or not.
        held: bool,
    },
    /// The cluster runs in production mode from now on (written by a leader configured for it):
    /// auto membership admits only allowed nodes, whatever a later leader's own configuration
    /// says.
    SetProduction,
    /// Puts a node on the allowlist (production mode admits only listed nodes) or takes it off
    /// and marks it removed (a removed node is not admitted again until it is allowed).
    SetAllowed {
        /// The node.
        id: NodeId,
        /// On the list or removed.
        allowed: bool,
    },
    /// An operator pins a shard to a node (the allocator moves it there by handoff and keeps it
    /// there while the node is a candidate), or unpins it (`node: None`).
    Pin {
        /// The shard.
        shard: ShardId,
        /// Its node, or `None` to unpin.
        node: Option<NodeId>,
    },
    /// An operator sets how shards are rebalanced: `manual` holds moves that only balance load
    /// until a plan is committed (failover, first assignments, drains and pins stay automatic).
    SetRebalance {
        /// Manual or automatic.
        manual: bool,
    },
    /// An operator aborts a rebalance: every handoff still in flight returns to its old owner
    /// once that owner confirms it stopped, and rebalancing becomes manual so it is not planned
    /// again at once.
    AbortRebalance,
    /// Sets shards' weights (a hot shard counts more in its owner's load): each listed shard
    /// takes its weight, 1 being the default (the entry is dropped). Weights outside
    /// `1..=MAX_SHARD_WEIGHT` and shards that do not exist are refused before this is written,
    /// and skipped if written anyway.
    SetShardWeights {
        /// `(shard, weight)`.
        weights: Vec<(ShardId, u32)>,
    },
}

impl Command {
    /// The wire protocol version that introduced this command ([`crate::wire::VERSION`]): a
    /// node speaking an older one cannot decode it, so it is not written until none is left.
    pub fn since_wire(&self) -> u32 {
        match self {
            // An instance id orders the worker index: a node that cannot read it would drop it
            // from the snapshots it sends, and its receivers would order by node id instead.
            Command::RegisterMember { meta } if meta.name.is_some() => 3,
            Command::Init { .. }
            | Command::RegisterMember { .. }
            | Command::SetAssignments { .. }
            | Command::RemoveMember { .. }
            | Command::BeginHandoff { .. }
            | Command::Released { .. }
            | Command::SetDraining { .. } => 1,
            Command::SetDrained { .. }
            | Command::HoldLearner { .. }
            | Command::SetProduction
            | Command::SetAllowed { .. }
            | Command::Pin { .. }
            | Command::SetRebalance { .. }
            | Command::AbortRebalance => 2,
            Command::SetShardWeights { .. } => 4,
        }
    }
}

/// A planned move in progress: the shard is unowned until `from` confirms it stopped.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Handoff {
    /// The old owner.
    pub from: NodeId,
    /// The assignment after the handoff.
    pub to: Assignment,
}

/// What applying a [`Command`] did.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied; the state is now at this log index.
    Applied {
        /// The log index of the entry.
        index: u64,
    },
    /// Refused: the allocation was computed against an older map.
    StaleMap {
        /// The map epoch it was computed from.
        based_on: Epoch,
        /// The current map epoch.
        current: Epoch,
    },
    /// Refused: the cluster was already initialized, or not yet.
    BadInit,
}

/// The cluster's replicated state: its name and shape, its members, and the shard map.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster's name, once initialized.
    pub name: Option<ClusterName>,
    /// Members by id, with the metadata they registered.
    pub members: BTreeMap<NodeId, NodeMeta>,
    /// The shard map, shared copy-on-write with every reader (docs/architecture.md §6).
    #[serde(with = "map_bytes")]
    pub shard_map: Arc<ShardMap>,
    /// Planned moves waiting for their old owner to confirm.
    #[serde(default)]
    pub handoffs: BTreeMap<ShardId, Handoff>,
    /// Members leaving the cluster.
    #[serde(default)]
    pub draining: std::collections::BTreeSet<NodeId>,
    /// Members an operator drained (`drain NODE`): no shards until `undrain`.
    #[serde(default)]
    pub drained: std::collections::BTreeSet<NodeId>,
    /// Nodes an operator admitted (by command or the config's `members`): in production mode
    /// only these become members.
    #[serde(default)]
    pub allowed: std::collections::BTreeSet<NodeId>,
    /// Nodes an operator removed: not admitted again, in any mode, until allowed.
    #[serde(default)]
    pub removed: std::collections::BTreeSet<NodeId>,
    /// Learners an operator demoted: auto membership does not promote them.
    #[serde(default)]
    pub held: std::collections::BTreeSet<NodeId>,
    /// Production mode, once a leader configured for it said so (it is never turned off).
    #[serde(default)]
    pub production: bool,
    /// Shards an operator pinned to a node.
    #[serde(default)]
    pub pinned: BTreeMap<ShardId, NodeId>,
    /// Whether load-balancing moves wait for an operator's commit.
    #[serde(default)]
    pub manual_rebalance: bool,
    /// Whether the rebalancing mode was ever set (by command, an abort, or a leader configured
    /// with `rebalance = "manual"`): from then on only commands change it.
    #[serde(default)]
    pub rebalance_set: bool,
    /// The log index of the last change to the worker layout ([`ClusterState::worker_layout`]):
    /// the worker index's epoch (`crate::workers`). A state written before the worker index
    /// reads as [`WORKERS_EPOCH_UNKNOWN`] until [`settle_workers_epoch`](ClusterState::settle_workers_epoch).
    #[serde(default = "workers_epoch_unknown")]
    pub workers_epoch: u64,
    /// Shards whose weight is not 1 (an operator's `shard weight`, or the config's
    /// `shard_weights`): the allocator balances the total weight per node.
    #[serde(default)]
    pub shard_weights: BTreeMap<ShardId, u32>,
    /// Whether weights were ever set (by command, or by a leader configured with
    /// `shard_weights`): from then on only commands change them.
    #[serde(default)]
    pub weights_set: bool,
}

/// The worker epoch of a state written before the worker index, until it is settled.
pub const WORKERS_EPOCH_UNKNOWN: u64 = u64::MAX;

fn workers_epoch_unknown() -> u64 {
    WORKERS_EPOCH_UNKNOWN
}

impl ClusterState {
    /// The shard map to change: copied only if a reader still holds the current one.
    pub fn map_mut(&mut self) -> &mut ShardMap {
        Arc::make_mut(&mut self.shard_map)
    }

    /// A shard's weight: 1 unless one was set.
    pub fn shard_weight(&self, shard: ShardId) -> u32 {
        self.shard_weights.get(&shard).copied().unwrap_or(1)
    }

    /// Whether `id` takes no new shards: it is leaving, or an operator drained it.
    pub fn is_draining(&self, id: NodeId) -> bool {
        self.draining.contains(&id) || self.drained.contains(&id)
    }

    /// Whether `id` has handed everything off: it owns no shard and no handoff from it waits
    /// for its confirmation.
    pub fn handed_off(&self, id: NodeId) -> bool {
        self.shard_map.owner_counts().get(&id).is_none_or(|n| *n == 0) && self.handoffs.values().all(|h| h.from != id)
    }

    /// A state restored from a snapshot written before the worker index has no worker epoch:
    /// it takes the snapshot's log index, the index of a state whose layout it is. Two nodes
    /// then never show one epoch for two layouts (equal epochs are equal log points), and a
    /// later layout still has a higher epoch; only one layout may show two epochs, until the next
    /// change.
    pub fn settle_workers_epoch(&mut self, snapshot_index: u64) {
        if self.workers_epoch == WORKERS_EPOCH_UNKNOWN {
            self.workers_epoch = snapshot_index;
        }
    }

    /// The worker index's layout: members not leaving (nor being removed by an operator), (the name, else the
    /// node id in hex; ties by node id), with their worker counts.
    pub fn worker_layout(&self) -> Vec<(String, NodeId, u32)> {
        let mut layout: Vec<(String, NodeId, u32)> = self
            .members
            .values()
            .filter(|m| !self.draining.contains(&m.id) && !self.removed.contains(&m.id))
            .map(|m| (m.name.clone().unwrap_or_else(|| m.id.to_string()), m.id, m.workers))
            .collect();
        layout.sort();
        layout
    }

    /// Applies `cmd`, committed at log `index`; a change to the worker layout sets
    /// [`workers_epoch`](ClusterState::workers_epoch) to `index`.
    pub fn apply(&mut self, cmd: &Command, index: u64) -> CommandResult {
        // A removal starts with `SetAllowed { allowed: false }`, which the removed node still
        // applies (it leaves the Raft configuration next, and never sees `RemoveMember`).
        let layout_may_change = matches!(
            cmd,
            Command::RegisterMember { .. }
                | Command::RemoveMember { .. }
                | Command::SetDraining { .. }
                | Command::SetAllowed { .. }
        );
        let before = layout_may_change.then(|| self.worker_layout());
        let result = self.apply_command(cmd, index);
        if before.is_some_and(|b| b != self.worker_layout()) {
            self.workers_epoch = index;
        }
        result
    }

    fn apply_command(&mut self, cmd: &Command, index: u64) -> CommandResult {
        match cmd {
            Command::Init { name, shards, replica_factor } => {
                if self.name.is_some() {
                    return CommandResult::BadInit;
                }
                self.name = Some(name.clone());
                self.shard_map = Arc::new(ShardMap::new(*shards, *replica_factor));
            }
            Command::RegisterMember { meta } => {
                self.members.insert(meta.id, meta.clone());
            }
            Command::SetAssignments { based_on, changes } => {
                if *based_on != self.shard_map.epoch() {
                    return CommandResult::StaleMap { based_on: *based_on, current: self.shard_map.epoch() };
                }
                self.map_mut().apply(changes, Epoch(index));
            }
            Command::RemoveMember { id } => {
                self.members.remove(id);
                self.draining.remove(id);
                self.drained.remove(id);
                self.held.remove(id);
                self.pinned.retain(|_, n| n != id);
            }
            Command::BeginHandoff { based_on, moves } => {
                if *based_on != self.shard_map.epoch() {
                    return CommandResult::StaleMap { based_on: *based_on, current: self.shard_map.epoch() };
                }
                let mut changes = Vec::with_capacity(moves.len());
                for (shard, from, to) in moves {
                    if self.shard_map.owner(*shard) != Some(*from) || self.handoffs.contains_key(shard) {
                        continue;
                    }
                    let replicas = self.shard_map.replicas(*shard);
                    changes.push((*shard, Assignment { owner: None, replicas }));
                    self.handoffs.insert(*shard, Handoff { from: *from, to: to.clone() });
                }
                if !changes.is_empty() {
                    self.map_mut().apply(&changes, Epoch(index));
                }
            }
            Command::Released { node, shards } => {
                let mut changes = Vec::with_capacity(shards.len());
                for (shard, epoch) in shards {
                    let ok = self.handoffs.get(shard).is_some_and(|h| h.from == *node)
                        && self.shard_map.shard_epoch(*shard) == *epoch
                        && self.shard_map.owner(*shard).is_none();
                    if ok {
                        if let Some(h) = self.handoffs.remove(shard) {
                            changes.push((*shard, h.to));
                        }
                    }
                }
                if !changes.is_empty() {
                    self.map_mut().apply(&changes, Epoch(index));
                }
            }
            Command::SetDraining { id, draining } => {
                if *draining {
                    self.draining.insert(*id);
                } else {
                    self.draining.remove(id);
                }
            }
            Command::SetDrained { id, drained } => {
                if *drained {
                    self.drained.insert(*id);
                } else {
                    self.drained.remove(id);
                }
            }
            Command::HoldLearner { id, held } => {
                if *held {
                    self.held.insert(*id);
                } else {
                    self.held.remove(id);
                }
            }
            Command::SetProduction => self.production = true,
            Command::SetAllowed { id, allowed } => {
                if *allowed {
                    self.allowed.insert(*id);
                    self.removed.remove(id);
                } else {
                    self.allowed.remove(id);
                    self.removed.insert(*id);
                    self.pinned.retain(|_, n| n != id);
                }
            }
            Command::Pin { shard, node } => match node {
                Some(n) if shard.0 < self.shard_map.shard_count() => {
                    self.pinned.insert(*shard, *n);
                }
                Some(_) => {}
                None => {
                    self.pinned.remove(shard);
                }
            },
            Command::SetShardWeights { weights } => {
                let shards = self.shard_map.shard_count();
                for (shard, weight) in weights {
                    match *weight {
                        _ if shard.0 >= shards => {}
                        1 => {
                            self.shard_weights.remove(shard);
                        }
                        w if (2..=crate::shard::MAX_SHARD_WEIGHT).contains(&w) => {
                            self.shard_weights.insert(*shard, w);
                        }
                        _ => {}
                    }
                }
                self.weights_set = true;
            }
            Command::SetRebalance { manual } => {
                self.manual_rebalance = *manual;
                self.rebalance_set = true;
            }
            Command::AbortRebalance => {
                self.manual_rebalance = true;
                self.rebalance_set = true;
                // Back only to an old owner that may still take shards: not one that was removed
                // or is draining (its shard would just move off again, or wait on a non-member).
                let back =
                    |id: NodeId| self.members.contains_key(&id) && !self.is_draining(id) && !self.removed.contains(&id);
                let aborted: Vec<(ShardId, NodeId)> =
                    self.handoffs.iter().filter(|(_, h)| back(h.from)).map(|(s, h)| (*s, h.from)).collect();
                for (shard, from) in aborted {
                    let replicas = self.shard_map.replicas(shard);
                    if let Some(h) = self.handoffs.get_mut(&shard) {
                        h.to = Assignment { owner: Some(from), replicas };
                    }
                    // A pin would only plan the move again at once.
                    if self.pinned.get(&shard).is_some_and(|n| *n != from) {
                        self.pinned.remove(&shard);
                    }
                }
            }
        }
        CommandResult::Applied { index }
    }
}

mod map_bytes {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::shard::ShardMap;

    pub(super) fn serialize<S: Serializer>(map: &Arc<ShardMap>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&map.encode())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<ShardMap>, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        ShardMap::decode(&bytes).map(Arc::new).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64) -> NodeMeta {
        NodeMeta { id: NodeId(id), weight: 1, workers: 1, ..NodeMeta::default() }
    }

    #[test]
    fn init_once_then_assign_with_epochs() {
        let mut st = ClusterState::default();
        let init = Command::Init { name: ClusterName::new("shop", "dev"), shards: 4, replica_factor: 1 };
        assert_eq!(st.apply(&init, 1), CommandResult::Applied { index: 1 });
        assert_eq!(st.apply(&init, 2), CommandResult::BadInit);
        st.apply(&Command::RegisterMember { meta: meta(7) }, 3);
        let a = Assignment { owner: Some(NodeId(7)), replicas: vec![] };
        let set = Command::SetAssignments { based_on: Epoch(0), changes: vec![(ShardId(2), a)] };
        assert_eq!(st.apply(&set, 4), CommandResult::Applied { index: 4 });
        assert_eq!(st.shard_map.shard_epoch(ShardId(2)), Epoch(4));
        assert_eq!(st.apply(&set, 5), CommandResult::StaleMap { based_on: Epoch(0), current: Epoch(4) });
    }

    #[test]
    fn the_map_is_shared_until_an_entry_changes_it() {
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 4, replica_factor: 1 }, 1);
        let reader = st.shard_map.clone();
        st.apply(&Command::RegisterMember { meta: meta(7) }, 2);
        assert!(Arc::ptr_eq(&reader, &st.shard_map), "an entry that does not touch the map does not copy it");
        let a = Assignment { owner: Some(NodeId(7)), replicas: vec![] };
        st.apply(&Command::SetAssignments { based_on: Epoch(0), changes: vec![(ShardId(1), a)] }, 3);
        assert!(!Arc::ptr_eq(&reader, &st.shard_map), "a reader keeps the map it took");
        assert_eq!(reader.owner(ShardId(1)), None);
        assert_eq!(st.shard_map.owner(ShardId(1)), Some(NodeId(7)));
    }

    #[test]
    fn round_trips_through_rmp() {
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 3, replica_factor: 2 }, 1);
        st.apply(&Command::RegisterMember { meta: meta(1) }, 2);
        let bytes = crate::wire::encode(&st);
        assert_eq!(rmp_serde::from_slice::<ClusterState>(&bytes).unwrap(), st);
    }

    #[test]
    fn an_aborted_handoff_returns_to_its_old_owner_at_a_new_epoch() {
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 4, replica_factor: 1 }, 1);
        st.apply(&Command::RegisterMember { meta: meta(1) }, 1);
        let one = |o| Assignment { owner: Some(NodeId(o)), replicas: vec![] };
        st.apply(&Command::SetAssignments { based_on: Epoch(0), changes: vec![(ShardId(1), one(1))] }, 2);
        st.apply(&Command::BeginHandoff { based_on: Epoch(2), moves: vec![(ShardId(1), NodeId(1), one(2))] }, 3);
        assert_eq!(st.shard_map.owner(ShardId(1)), None);
        st.apply(&Command::AbortRebalance, 4);
        assert!(st.manual_rebalance, "an abort leaves rebalancing manual");
        st.apply(&Command::Released { node: NodeId(1), shards: vec![(ShardId(1), Epoch(3))] }, 5);
        assert_eq!(st.shard_map.owner(ShardId(1)), Some(NodeId(1)), "back with its old owner");
        assert_eq!(st.shard_map.shard_epoch(ShardId(1)), Epoch(5), "under a new epoch");
    }

    #[test]
    fn an_abort_sends_back_only_to_an_owner_that_may_take_shards() {
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 4, replica_factor: 1 }, 1);
        for i in [1, 2, 3] {
            st.apply(&Command::RegisterMember { meta: meta(i) }, 2);
        }
        let one = |o| Assignment { owner: Some(NodeId(o)), replicas: vec![] };
        let all = vec![(ShardId(0), one(1)), (ShardId(1), one(2)), (ShardId(2), one(3))];
        st.apply(&Command::SetAssignments { based_on: Epoch(0), changes: all }, 3);
        st.apply(&Command::Pin { shard: ShardId(0), node: Some(NodeId(3)) }, 4);
        let moves = vec![(ShardId(0), NodeId(1), one(3)), (ShardId(1), NodeId(2), one(3))];
        st.apply(&Command::BeginHandoff { based_on: Epoch(3), moves }, 5);
        st.apply(&Command::SetDrained { id: NodeId(2), drained: true }, 6);
        st.apply(&Command::AbortRebalance, 7);
        assert_eq!(st.handoffs[&ShardId(0)].to.owner, Some(NodeId(1)), "back to its old owner");
        assert_eq!(st.handoffs[&ShardId(1)].to.owner, Some(NodeId(3)), "a drained owner does not get it back");
        assert!(st.pinned.is_empty(), "the aborted move's pin is dropped");
    }

    #[test]
    fn an_instance_id_waits_for_wire_3() {
        let plain = Command::RegisterMember { meta: meta(1) };
        assert_eq!(plain.since_wire(), 1, "a registration without a name reads as before");
        let named = Command::RegisterMember { meta: NodeMeta { name: Some("node1".into()), ..meta(1) } };
        assert_eq!(named.since_wire(), 3);
        const { assert!(crate::wire::VERSION >= 3) };
    }

    #[test]
    fn a_state_written_before_pins_still_decodes() {
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 3, replica_factor: 1 }, 1);
        st.apply(&Command::RegisterMember { meta: meta(1) }, 2);
        let map = serde_bytes::ByteBuf::from(st.shard_map.encode());
        // The ten fields a node of the previous release wrote.
        let old = (
            &st.name,
            &st.members,
            map,
            &st.handoffs,
            &st.draining,
            &st.drained,
            &st.allowed,
            &st.removed,
            &st.held,
            st.production,
        );
        let decoded: ClusterState = rmp_serde::from_slice(&rmp_serde::to_vec(&old).unwrap()).unwrap();
        // A state from before the worker index has no worker epoch: it takes the snapshot's
        // index when restored (docs/operations.md, "Rolling upgrades").
        assert_eq!(st.workers_epoch, 2, "the registration changed the layout");
        let mut decoded = decoded;
        assert_eq!(decoded.workers_epoch, WORKERS_EPOCH_UNKNOWN);
        decoded.settle_workers_epoch(9);
        assert_eq!(decoded, ClusterState { workers_epoch: 9, ..st });
    }

    #[test]
    fn shard_weights_set_reset_and_skip_what_is_out_of_range() {
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 4, replica_factor: 1 }, 1);
        assert!(!st.weights_set);
        assert_eq!(st.shard_weight(ShardId(2)), 1);
        let max = crate::shard::MAX_SHARD_WEIGHT;
        let weights = vec![(ShardId(2), 9), (ShardId(3), max), (ShardId(1), 0), (ShardId(0), max + 1), (ShardId(4), 5)];
        st.apply(&Command::SetShardWeights { weights }, 2);
        assert!(st.weights_set);
        assert_eq!(
            st.shard_weights,
            BTreeMap::from([(ShardId(2), 9), (ShardId(3), max)]),
            "0, above max, no such shard: skipped"
        );
        st.apply(&Command::SetShardWeights { weights: vec![(ShardId(2), 1)] }, 3);
        assert_eq!(st.shard_weights, BTreeMap::from([(ShardId(3), max)]), "1 is the default: the entry goes");
        assert_eq!(Command::SetShardWeights { weights: vec![] }.since_wire(), 4);
        // A state from before weights (no such fields) decodes with none set.
        let mut old = ClusterState::default();
        old.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 4, replica_factor: 1 }, 1);
        let bytes = rmp_serde::to_vec(&old).unwrap();
        let decoded: ClusterState = rmp_serde::from_slice(&bytes).unwrap();
        assert!(decoded.shard_weights.is_empty() && !decoded.weights_set);
    }

    #[test]
    fn new_commands_golden_bytes() {
        let hex = |c: &Command| -> String { crate::wire::encode(c).iter().map(|b| format!("{b:02x}")).collect() };
        assert_eq!(
            hex(&Command::Pin { shard: ShardId(3), node: Some(NodeId(5)) }),
            "81a350696e82a5736861726403a46e6f646505"
        );
        assert_eq!(hex(&Command::SetRebalance { manual: true }), "81ac536574526562616c616e636581a66d616e75616cc3");
        assert_eq!(hex(&Command::AbortRebalance), "ae41626f7274526562616c616e6365");
    }

    #[test]
    fn pins_name_existing_shards_and_go_with_their_node() {
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 4, replica_factor: 1 }, 1);
        st.apply(&Command::Pin { shard: ShardId(9), node: Some(NodeId(1)) }, 2);
        assert!(st.pinned.is_empty(), "no such shard");
        st.apply(&Command::Pin { shard: ShardId(2), node: Some(NodeId(1)) }, 3);
        st.apply(&Command::Pin { shard: ShardId(3), node: Some(NodeId(2)) }, 4);
        st.apply(&Command::RemoveMember { id: NodeId(1) }, 5);
        assert_eq!(st.pinned, BTreeMap::from([(ShardId(3), NodeId(2))]));
        st.apply(&Command::Pin { shard: ShardId(3), node: None }, 6);
        assert!(st.pinned.is_empty());
    }

    #[test]
    fn command_golden_bytes() {
        let cmd = Command::RemoveMember { id: NodeId(5) };
        let hex: String = crate::wire::encode(&cmd).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "81ac52656d6f76654d656d62657281a2696405");
        // The positional form earlier builds wrote (and keep in their logs) still decodes.
        let old = [0x81, 0xac, b'R', b'e', b'm', b'o', b'v', b'e', b'M', b'e', b'm', b'b', b'e', b'r', 0x91, 0x05];
        assert_eq!(crate::wire::decode::<Command>(&old).unwrap(), cmd);
    }
}
