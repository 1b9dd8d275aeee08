//! Membership by command (docs/architecture.md §8.2): what an operator's request becomes on the
//! leader, or why it is refused. Pure: the consensus actor supplies the Raft configuration, the
//! committed state and the gossip view, and runs the steps one at a time through the same lock
//! as auto membership (openraft needs membership changes serialized).
//!
//! The quorum rule: a change is refused when the voters it leaves would not have a majority of
//! live ones, so no command can leave the cluster without a quorum (a joint configuration that
//! never commits would wedge every later change). Live means *acknowledged Raft just now*: before
//! a change of voters the leader writes a probe entry and counts the nodes whose replication
//! reached it within a second ([`Seen::live`]); gossip alone says Up for a second after a crash,
//! and for a node whose Raft core is parked on a stalled disk. A node becoming a voter must be
//! live (caught up) itself. Joint consensus (openraft's `change_membership`) keeps each step safe
//! while it commits.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::auto::admitted;
use super::types::RaftNode;
use crate::membership::{MemberState, View};
use crate::shard::Move;
use crate::state::{ClusterState, Command};
use crate::types::{Epoch, NodeId, NodeMeta, ShardId, Token};

/// An operator's membership request. ONLY APPEND (it travels to the leader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberOp {
    /// Admit a node the cluster can see (by its gossip) as a non-voting learner: it is put on
    /// the allowlist, registered (it gets shards) and replicated to.
    Add(NodeId),
    /// Make a learner a voter.
    Promote(NodeId),
    /// Make a voter a learner (it keeps its shards).
    Demote(NodeId),
    /// Take a node out of the Raft configuration and the cluster state, and off the allowlist
    /// (a removed node that still runs does not join again until it is added).
    Remove(NodeId),
    /// Give `old`'s voter seat to `new` in one step: `new` is added as a learner if it is not
    /// one, becomes a voter as `old` stops being one, and `old` is removed.
    Replace {
        /// The voter to replace (usually dead).
        old: NodeId,
        /// The node taking its seat.
        new: NodeId,
    },
    /// Hand off all of a node's shards gracefully; it stays a member and gets no shards.
    Drain(NodeId),
    /// End a drain: the node gets shards again.
    Undrain(NodeId),
    /// The leader hands Raft leadership to the most caught-up other voter.
    StepDown,
    /// Pin a shard to a node (it moves there by graceful handoff and stays while the node is a
    /// candidate), or unpin it (`to: None`).
    MoveShard {
        /// The shard.
        shard: ShardId,
        /// Its node, or `None` to unpin.
        to: Option<NodeId>,
    },
    /// The allocator's plan of the moment, without moving anything.
    RebalancePlan,
    /// Carry out the plan with this id, if the cluster has not changed since it was made.
    RebalanceCommit(String),
    /// Send the handoffs in flight back to their old owners; rebalancing becomes manual.
    RebalanceAbort,
    /// Rebalance automatically, or only when an operator commits a plan.
    SetRebalance {
        /// Manual or automatic.
        manual: bool,
    },
    /// Set shards' weights (1 is the default): the allocator balances the total weight per node.
    SetShardWeights(Vec<(ShardId, u32)>),
}

impl MemberOp {
    /// The op's name, for logs and answers.
    pub fn name(&self) -> &'static str {
        match self {
            MemberOp::Add(_) => "add",
            MemberOp::Promote(_) => "promote",
            MemberOp::Demote(_) => "demote",
            MemberOp::Remove(_) => "remove",
            MemberOp::Replace { .. } => "replace",
            MemberOp::Drain(_) => "drain",
            MemberOp::Undrain(_) => "undrain",
            MemberOp::StepDown => "step-down",
            MemberOp::MoveShard { .. } => "shard-move",
            MemberOp::RebalancePlan => "rebalance-plan",
            MemberOp::RebalanceCommit(_) => "rebalance-commit",
            MemberOp::RebalanceAbort => "rebalance-abort",
            MemberOp::SetRebalance { .. } => "rebalance-mode",
            MemberOp::SetShardWeights(_) => "shard-weight",
        }
    }

    /// The wire protocol version a node must speak to decode this op when it is relayed to it.
    pub fn since_wire(&self) -> u32 {
        match self {
            MemberOp::SetShardWeights(_) => 4,
            _ => 2,
        }
    }
}

/// Why a membership request was refused. ONLY APPEND.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The node is neither in the Raft configuration nor in the cluster state.
    #[error("node {0} is not a member")]
    UnknownNode(NodeId),
    /// The node is not in this cluster's gossip view: it cannot be reached to be added.
    #[error("node {0} is not seen by the cluster (is it running, with this cluster's key, environment and secret?)")]
    NotSeen(NodeId),
    /// The node is already in the Raft configuration.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// Promote of a voter, or of a node that is not a learner.
    #[error("node {0} is not a learner")]
    NotLearner(NodeId),
    /// The node would become a voter but did not acknowledge the leader's latest entry in time
    /// (it is down, or still catching up).
    #[error("node {0} has not caught up with the leader's log; wait until it has, then retry")]
    NotCaughtUp(NodeId),
    /// Demote or replace of a node that is not a voter.
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
    /// The change would leave no voter at all.
    #[error("node {0} is the last voter; the cluster would have no voter left")]
    LastVoter(NodeId),
    /// The voters after the change would not have a majority of live ones.
    #[error("the change leaves {live} live of {voters} voters, not a quorum; replace or remove dead voters first")]
    NoQuorum {
        /// Live voters after the change.
        live: usize,
        /// Voters after the change.
        voters: usize,
    },
    /// The leader itself would stop being a voter: step it down first.
    #[error("node {0} is the leader; run `leader step-down` first")]
    IsLeader(NodeId),
    /// No other member could take a drained node's shards.
    #[error("node {0} is the only member that is not draining; its shards would have nowhere to go")]
    NothingLeft(NodeId),
    /// Step-down on a cluster with one voter.
    #[error("there is no other voter to hand leadership to")]
    NoOtherVoter,
    /// The shard does not exist.
    #[error("shard {shard} does not exist (the cluster has {shards} shards)")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
        /// How many the cluster has.
        shards: u32,
    },
    /// The node takes no shards: it is draining or leaving.
    #[error("node {0} is draining; it takes no shards (undrain it first)")]
    Draining(NodeId),
    /// The cluster changed between the plan and its commit.
    #[error("the cluster changed since plan {given} was made (the plan now is {now}); look at `rebalance plan` again")]
    PlanChanged {
        /// The plan id committed.
        given: String,
        /// The id of the plan of the moment.
        now: String,
    },
    /// A new leader lets the members renew their leases with it before it moves shards.
    #[error("the leader took over moments ago and waits for the members' leases; retry in a few seconds")]
    Settling,
    /// A node of the configuration speaks an older wire protocol and could not read the change.
    #[error("node {node} speaks wire protocol {has} and cannot read this change (it needs {needs}): upgrade it first (docs/operations.md, \"Rolling upgrades\")")]
    Upgrade {
        /// The oldest node.
        node: NodeId,
        /// The version it announced.
        has: u32,
        /// The version the change needs.
        needs: u32,
    },
    /// Handoffs are in flight: each one that finishes changes the plan.
    #[error("{0} handoffs are still in flight; plan once they finished (`clusterfunk shards` shows them)")]
    HandoffsInFlight(usize),
    /// One request names a shard twice (`"7"` and `"07"` are one shard).
    #[error("shard {0} is given more than one weight")]
    DuplicateShard(u32),
    /// A shard weight outside `1..=MAX_SHARD_WEIGHT`.
    #[error("shard {shard}: weight {weight} is not between 1 and {max}")]
    BadWeight {
        /// The shard.
        shard: u32,
        /// The weight asked for.
        weight: u32,
        /// The largest allowed.
        max: u32,
    },
}

/// One step of a request, run in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Commit a command to the cluster state.
    Write(Command),
    /// Add a node as a non-voting learner (waits until it caught up).
    AddLearner(NodeId, RaftNode),
    /// Make exactly these nodes the voters (joint consensus; the others stay learners).
    SetVoters(BTreeSet<NodeId>),
    /// Remove these non-voters from the configuration.
    RemoveNodes(BTreeSet<NodeId>),
    /// Hand leadership over.
    HandOver,
}

/// What the planner sees.
pub struct Seen<'a> {
    /// The committed cluster state.
    pub state: &'a ClusterState,
    /// Voters of the Raft configuration (the last one, when it is joint).
    pub voters: BTreeSet<NodeId>,
    /// Every node of the configuration, voters included.
    pub nodes: BTreeSet<NodeId>,
    /// The gossip view (for nodes to add).
    pub view: &'a View,
    /// This node (the leader).
    pub leader: NodeId,
    /// Nodes that acknowledged the leader's probe entry (the leader counts as live).
    pub live: BTreeSet<NodeId>,
}

impl Seen<'_> {
    fn live(&self, id: NodeId) -> bool {
        id == self.leader || self.live.contains(&id)
    }

    /// Refuses a voter set without a live majority (or without any voter).
    fn quorum(&self, voters: &BTreeSet<NodeId>, gone: NodeId) -> Result<(), Refused> {
        if voters.is_empty() {
            return Err(Refused::LastVoter(gone));
        }
        let live = voters.iter().filter(|v| self.live(**v)).count();
        if live * 2 <= voters.len() {
            return Err(Refused::NoQuorum { live, voters: voters.len() });
        }
        Ok(())
    }

    fn seen(&self, id: NodeId) -> Result<&NodeMeta, Refused> {
        match self.view.members.get(&id) {
            Some(m) if m.state == MemberState::Up => Ok(&m.meta),
            _ => Err(Refused::NotSeen(id)),
        }
    }

    /// The steps that make `id` a caught-up learner, allowed and registered.
    fn admit(&self, id: NodeId) -> Result<Vec<Step>, Refused> {
        let meta = self.seen(id)?;
        let mut steps = vec![Step::Write(Command::SetAllowed { id, allowed: true })];
        if self.state.members.get(&id) != Some(&admitted(meta)) {
            steps.push(Step::Write(Command::RegisterMember { meta: admitted(meta) }));
        }
        steps.push(Step::AddLearner(id, RaftNode { peer_id: meta.peer_id, addrs: meta.addrs.clone() }));
        Ok(steps)
    }
}

impl Seen<'_> {
    /// Whether `id` is a voter that may lose its seat: a member, a voter, not the leader.
    fn unseatable(&self, id: NodeId) -> Result<(), Refused> {
        if !self.nodes.contains(&id) && !self.state.members.contains_key(&id) {
            return Err(Refused::UnknownNode(id));
        }
        if !self.voters.contains(&id) {
            return Err(Refused::NotVoter(id));
        }
        if id == self.leader {
            return Err(Refused::IsLeader(id));
        }
        Ok(())
    }
}

/// Whether `op` changes the voters (and so needs fresh liveness: [`Seen::live`]).
pub fn changes_voters(op: &MemberOp) -> bool {
    matches!(op, MemberOp::Promote(_) | MemberOp::Demote(_) | MemberOp::Remove(_) | MemberOp::Replace { .. })
}

/// The steps that carry out `op` on the leader, or why it is refused.
pub fn plan(op: &MemberOp, s: &Seen) -> Result<Vec<Step>, Refused> {
    let member = |id: NodeId| s.nodes.contains(&id) || s.state.members.contains_key(&id);
    match *op {
        MemberOp::Add(id) => {
            if s.nodes.contains(&id) {
                return Err(Refused::AlreadyMember(id));
            }
            s.admit(id)
        }
        MemberOp::Promote(id) => {
            if !member(id) {
                return Err(Refused::UnknownNode(id));
            }
            if s.voters.contains(&id) || !s.nodes.contains(&id) {
                return Err(Refused::NotLearner(id));
            }
            if !s.live(id) {
                return Err(Refused::NotCaughtUp(id));
            }
            let mut next = s.voters.clone();
            next.insert(id);
            s.quorum(&next, id)?;
            Ok(vec![Step::Write(Command::HoldLearner { id, held: false }), Step::SetVoters(next)])
        }
        MemberOp::Demote(id) => {
            s.unseatable(id)?;
            let mut next = s.voters.clone();
            next.remove(&id);
            s.quorum(&next, id)?;
            // Held: auto membership does not promote it again (until `Promote`).
            Ok(vec![Step::Write(Command::HoldLearner { id, held: true }), Step::SetVoters(next)])
        }
        MemberOp::Remove(id) => {
            if !member(id) {
                return Err(Refused::UnknownNode(id));
            }
            if id == s.leader {
                return Err(Refused::IsLeader(id));
            }
            // Off the allowlist first: if a later step fails, auto membership must not add the
            // node back (it skips removed nodes).
            let mut steps = vec![Step::Write(Command::SetAllowed { id, allowed: false })];
            if s.voters.contains(&id) {
                let mut next = s.voters.clone();
                next.remove(&id);
                s.quorum(&next, id)?;
                steps.push(Step::SetVoters(next));
            }
            if s.nodes.contains(&id) {
                steps.push(Step::RemoveNodes(BTreeSet::from([id])));
            }
            steps.push(Step::Write(Command::RemoveMember { id }));
            Ok(steps)
        }
        MemberOp::Replace { old, new } => {
            s.unseatable(old)?;
            if s.voters.contains(&new) {
                return Err(Refused::NotLearner(new));
            }
            if !s.nodes.contains(&new) {
                // Admitted first (the caller then plans the seat change again, with `new`'s
                // acknowledgement: it must have caught up before it counts).
                return s.admit(new);
            }
            if !s.live(new) {
                return Err(Refused::NotCaughtUp(new));
            }
            let mut next = s.voters.clone();
            next.remove(&old);
            next.insert(new);
            s.quorum(&next, old)?;
            Ok(vec![
                Step::Write(Command::SetAllowed { id: old, allowed: false }),
                Step::Write(Command::HoldLearner { id: new, held: false }),
                Step::SetVoters(next),
                Step::RemoveNodes(BTreeSet::from([old])),
                Step::Write(Command::RemoveMember { id: old }),
            ])
        }
        MemberOp::Drain(id) => {
            if !s.state.members.contains_key(&id) {
                return Err(Refused::UnknownNode(id));
            }
            let others = s.state.members.keys().any(|m| *m != id && !s.state.is_draining(*m));
            if !others {
                return Err(Refused::NothingLeft(id));
            }
            Ok(vec![Step::Write(Command::SetDrained { id, drained: true })])
        }
        MemberOp::Undrain(id) => {
            if !s.state.members.contains_key(&id) {
                return Err(Refused::UnknownNode(id));
            }
            Ok(vec![Step::Write(Command::SetDrained { id, drained: false })])
        }
        MemberOp::StepDown => {
            if !s.voters.iter().any(|v| *v != s.leader) {
                return Err(Refused::NoOtherVoter);
            }
            Ok(vec![Step::HandOver])
        }
        MemberOp::MoveShard { shard, to } => {
            let shards = s.state.shard_map.shard_count();
            if shard.0 >= shards {
                return Err(Refused::UnknownShard { shard: shard.0, shards });
            }
            if let Some(id) = to {
                if !s.state.members.contains_key(&id) || s.state.removed.contains(&id) {
                    return Err(Refused::UnknownNode(id));
                }
                if s.state.is_draining(id) {
                    return Err(Refused::Draining(id));
                }
                s.seen(id)?;
            }
            Ok(vec![Step::Write(Command::Pin { shard, node: to })])
        }
        MemberOp::SetShardWeights(ref weights) => {
            let shards = s.state.shard_map.shard_count();
            let max = crate::shard::MAX_SHARD_WEIGHT;
            let mut seen = BTreeSet::new();
            for (shard, weight) in weights {
                if !seen.insert(*shard) {
                    return Err(Refused::DuplicateShard(shard.0));
                }
                if shard.0 >= shards {
                    return Err(Refused::UnknownShard { shard: shard.0, shards });
                }
                if !(1..=max).contains(weight) {
                    return Err(Refused::BadWeight { shard: shard.0, weight: *weight, max });
                }
            }
            let changed: Vec<(ShardId, u32)> =
                weights.iter().copied().filter(|(sh, w)| s.state.shard_weight(*sh) != *w).collect();
            if changed.is_empty() {
                return Ok(vec![]);
            }
            Ok(vec![Step::Write(Command::SetShardWeights { weights: changed })])
        }
        MemberOp::RebalanceAbort => Ok(vec![Step::Write(Command::AbortRebalance)]),
        MemberOp::SetRebalance { manual } => Ok(vec![Step::Write(Command::SetRebalance { manual })]),
        // Carried out by the shard manager (it holds the lease table): see [`Rebalance`].
        MemberOp::RebalancePlan | MemberOp::RebalanceCommit(_) => Ok(vec![]),
    }
}

/// A rebalance plan: the moves the allocator would make now, with the id that commits it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalancePlan {
    /// Names this plan: a hash of the map epoch and every change, so a commit is refused once
    /// anything differs.
    pub id: String,
    /// The map epoch it was computed from.
    pub epoch: Epoch,
    /// Whether rebalancing is manual (load-balancing moves wait for a commit).
    pub manual: bool,
    /// Owner changes, in shard order.
    pub moves: Vec<Move>,
    /// Shards whose follower set changes.
    pub replica_changes: u32,
    /// Each live candidate's load (total shard weight) before and after, and its quota.
    #[serde(default)]
    pub loads: Vec<crate::shard::NodeLoad>,
}

/// Asks the shard manager of the leader for its plan (`commit: None`) or to carry out the plan
/// with this id. Sent by the consensus actor, which relays operators' requests to the leader.
#[derive(Debug, actix::Message)]
#[rtype(result = "Result<RebalancePlan, ManageError>")]
pub struct Rebalance {
    /// The plan id to commit, or `None` for the plan only.
    pub commit: Option<String>,
}

/// What a request that was carried out reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The Raft leader after it (another node after a step-down).
    pub leader: Option<NodeId>,
    /// How many steps it took (0: there was nothing to change).
    pub steps: usize,
    /// The plan shown or committed (rebalance requests).
    #[serde(default)]
    pub plan: Option<RebalancePlan>,
}

/// Why a membership request was not carried out. ONLY APPEND.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// The node that checked it has no management token: mutations are off there.
    #[error("no management token is configured on the node that checked the request (give every node the same --token-file)")]
    NoToken,
    /// The request's token is missing or not this node's.
    #[error("wrong or missing management token")]
    BadToken,
    /// Refused, with the reason; nothing changed.
    #[error("{0}")]
    Refused(Refused),
    /// No leader is known (or it stopped leading meanwhile); retry after an election.
    #[error("no raft leader is known; retry once one is elected")]
    NoLeader,
    /// The leader could not be reached.
    #[error("the leader could not be reached: {0}")]
    Unreachable(String),
    /// A step failed midway (the steps before it are committed; the request can be repeated).
    #[error("{0}")]
    Failed(String),
    /// Another membership change held the lock for too long.
    #[error("another membership change is in progress; retry")]
    Busy,
}

/// Checks a request's bearer token against the node's, in time independent of where they
/// differ (only the length can show).
pub fn check_token(configured: Option<&Token>, given: &Token) -> Result<(), ManageError> {
    let Some(want) = configured else { return Err(ManageError::NoToken) };
    let (a, b) = (want.expose().as_bytes(), given.expose().as_bytes());
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    if a.len() != b.len() || diff != 0 || b.is_empty() {
        return Err(ManageError::BadToken);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MemberView;
    use crate::types::ClusterName;

    fn meta(id: u64) -> NodeMeta {
        NodeMeta { id: NodeId(id), weight: 1, workers: 1, ..NodeMeta::default() }
    }

    /// Nodes 1..=5 registered; voters 1, 2, 3; learner 4; `down` not Up; 9 seen, not a member.
    fn world(down: &[u64]) -> (ClusterState, View) {
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 4, replica_factor: 1 }, 1);
        for i in 1..=4 {
            st.apply(&Command::RegisterMember { meta: meta(i) }, 2);
        }
        let view = View {
            local: NodeId(1),
            members: [1, 2, 3, 4, 9]
                .into_iter()
                .map(|i| {
                    let state = if down.contains(&i) { MemberState::Down } else { MemberState::Up };
                    let v = MemberView { meta: meta(i), state, raft_members: vec![], bootstrapping: false };
                    (NodeId(i), v)
                })
                .collect(),
        };
        (st, view)
    }

    fn seen<'a>(st: &'a ClusterState, view: &'a View) -> Seen<'a> {
        // Live: what acknowledged the probe; here, every node the view has Up.
        let live = view.members.values().filter(|m| m.state == MemberState::Up).map(|m| m.meta.id).collect();
        Seen {
            state: st,
            voters: [1, 2, 3].map(NodeId).into(),
            nodes: [1, 2, 3, 4].map(NodeId).into(),
            view,
            leader: NodeId(1),
            live,
        }
    }

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn replace_a_dead_voter_in_one_request() {
        let (st, view) = world(&[3]);
        let s = seen(&st, &view);
        let steps = plan(&MemberOp::Replace { old: NodeId(3), new: NodeId(4) }, &s).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Write(Command::SetAllowed { id: NodeId(3), allowed: false }),
                Step::Write(Command::HoldLearner { id: NodeId(4), held: false }),
                Step::SetVoters(ids(&[1, 2, 4])),
                Step::RemoveNodes(ids(&[3])),
                Step::Write(Command::RemoveMember { id: NodeId(3) }),
            ]
        );
        // A node not yet a learner is admitted first (then the seat change is planned again).
        let steps = plan(&MemberOp::Replace { old: NodeId(3), new: NodeId(9) }, &s).unwrap();
        assert!(matches!(steps[..], [Step::Write(Command::SetAllowed { .. }), Step::Write(_), Step::AddLearner(..)]));
        // A learner that did not acknowledge the probe does not take a seat.
        let lagging = Seen { live: ids(&[2]), ..seen(&st, &view) };
        assert_eq!(
            plan(&MemberOp::Replace { old: NodeId(3), new: NodeId(4) }, &lagging),
            Err(Refused::NotCaughtUp(NodeId(4)))
        );
        assert_eq!(plan(&MemberOp::Promote(NodeId(4)), &lagging), Err(Refused::NotCaughtUp(NodeId(4))));
    }

    #[test]
    fn no_change_may_leave_the_voters_without_a_live_majority() {
        // Voter 3 is dead: removing or demoting the live voter 2 would leave 1 live of 2.
        let (st, view) = world(&[3]);
        let s = seen(&st, &view);
        for op in [MemberOp::Remove(NodeId(2)), MemberOp::Demote(NodeId(2))] {
            assert_eq!(plan(&op, &s), Err(Refused::NoQuorum { live: 1, voters: 2 }), "{op:?}");
        }
        // Removing the dead one leaves 2 live of 2: fine.
        assert!(plan(&MemberOp::Remove(NodeId(3)), &s).is_ok());
        // Promoting a live learner beside a dead voter: 3 live of 4, fine; with a second voter
        // silent (Up in gossip, no acknowledgement: a stalled disk), 2 of 4 is refused.
        assert!(plan(&MemberOp::Promote(NodeId(4)), &s).is_ok());
        let stalled = Seen { live: ids(&[4]), ..seen(&st, &view) };
        assert_eq!(plan(&MemberOp::Promote(NodeId(4)), &stalled), Err(Refused::NoQuorum { live: 2, voters: 4 }));
        // Replacing a live voter by a dead node: refused.
        let (st, view) = world(&[3, 4]);
        let s = seen(&st, &view);
        assert_eq!(
            plan(&MemberOp::Replace { old: NodeId(2), new: NodeId(4) }, &s),
            Err(Refused::NotCaughtUp(NodeId(4)))
        );
    }

    #[test]
    fn refusals_name_the_reason() {
        let (st, view) = world(&[]);
        let s = seen(&st, &view);
        assert_eq!(plan(&MemberOp::Remove(NodeId(42)), &s), Err(Refused::UnknownNode(NodeId(42))));
        assert_eq!(plan(&MemberOp::Remove(NodeId(1)), &s), Err(Refused::IsLeader(NodeId(1))));
        assert_eq!(plan(&MemberOp::Promote(NodeId(2)), &s), Err(Refused::NotLearner(NodeId(2))));
        assert_eq!(plan(&MemberOp::Demote(NodeId(4)), &s), Err(Refused::NotVoter(NodeId(4))));
        assert_eq!(plan(&MemberOp::Add(NodeId(2)), &s), Err(Refused::AlreadyMember(NodeId(2))));
        assert_eq!(plan(&MemberOp::Add(NodeId(77)), &s), Err(Refused::NotSeen(NodeId(77))));
        assert_eq!(plan(&MemberOp::Drain(NodeId(77)), &s), Err(Refused::UnknownNode(NodeId(77))));
        // The last voter: a one-voter cluster cannot demote or hand over.
        let one = Seen { voters: ids(&[1]), nodes: ids(&[1, 2]), ..seen(&st, &view) };
        assert_eq!(plan(&MemberOp::StepDown, &one), Err(Refused::NoOtherVoter));
        let lone = Seen { voters: ids(&[2]), leader: NodeId(1), ..seen(&st, &view) };
        assert_eq!(plan(&MemberOp::Demote(NodeId(2)), &lone), Err(Refused::LastVoter(NodeId(2))));
        // Draining every member would leave the shards nowhere.
        let mut all = st.clone();
        for i in 2..=4 {
            all.apply(&Command::SetDrained { id: NodeId(i), drained: true }, 3);
        }
        let s = seen(&all, &view);
        assert_eq!(plan(&MemberOp::Drain(NodeId(1)), &s), Err(Refused::NothingLeft(NodeId(1))));
    }

    #[test]
    fn shard_weights_are_checked_before_they_are_written() {
        let (st, view) = world(&[]);
        let s = seen(&st, &view);
        let max = crate::shard::MAX_SHARD_WEIGHT;
        let set = |w: Vec<(u32, u32)>| MemberOp::SetShardWeights(w.into_iter().map(|(s, w)| (ShardId(s), w)).collect());
        assert_eq!(plan(&set(vec![(4, 2)]), &s), Err(Refused::UnknownShard { shard: 4, shards: 4 }));
        assert_eq!(plan(&set(vec![(1, 2), (2, 0)]), &s), Err(Refused::BadWeight { shard: 2, weight: 0, max }));
        assert_eq!(plan(&set(vec![(1, max + 1)]), &s), Err(Refused::BadWeight { shard: 1, weight: max + 1, max }));
        assert_eq!(plan(&set(vec![(1, 1)]), &s), Ok(vec![]), "unchanged: nothing to write");
        assert_eq!(plan(&set(vec![(1, 5), (2, 2), (1, 1)]), &s), Err(Refused::DuplicateShard(1)));
        assert_eq!(
            plan(&set(vec![(1, 1), (3, 8)]), &s),
            Ok(vec![Step::Write(Command::SetShardWeights { weights: vec![(ShardId(3), 8)] })])
        );
        assert_eq!(set(vec![]).since_wire(), 4);
        assert_eq!(MemberOp::Remove(NodeId(2)).since_wire(), 2);
    }

    #[test]
    fn tokens() {
        let t = |s: &str| Token::new(s);
        assert_eq!(check_token(None, &t("x")), Err(ManageError::NoToken));
        assert_eq!(check_token(Some(&t("secret")), &t("")), Err(ManageError::BadToken));
        assert_eq!(check_token(Some(&t("")), &t("")), Err(ManageError::BadToken));
        assert_eq!(check_token(Some(&t("secret")), &t("secreT")), Err(ManageError::BadToken));
        assert_eq!(check_token(Some(&t("secret")), &t("secret2")), Err(ManageError::BadToken));
        assert_eq!(check_token(Some(&t("secret")), &t("secret")), Ok(()));
        assert_eq!(format!("{:?}", t("secret")), "Token(<redacted>)");
    }

    #[test]
    fn add_and_remove_keep_the_allowlist() {
        let (st, view) = world(&[]);
        let s = seen(&st, &view);
        let add = plan(&MemberOp::Add(NodeId(9)), &s).unwrap();
        assert_eq!(add[0], Step::Write(Command::SetAllowed { id: NodeId(9), allowed: true }));
        assert!(matches!(add.last(), Some(Step::AddLearner(NodeId(9), _))));
        let rm = plan(&MemberOp::Remove(NodeId(4)), &s).unwrap();
        assert_eq!(rm[0], Step::Write(Command::SetAllowed { id: NodeId(4), allowed: false }), "off the list first");
        assert_eq!(rm[1], Step::RemoveNodes(ids(&[4])), "a learner leaves without a voter change");
        let demote = plan(&MemberOp::Demote(NodeId(2)), &s).unwrap();
        assert_eq!(demote[0], Step::Write(Command::HoldLearner { id: NodeId(2), held: true }), "not promoted again");
    }

    #[test]
    fn a_shard_moves_only_to_a_live_member_that_takes_shards() {
        let (mut st, view) = world(&[3]);
        st.apply(&Command::SetDrained { id: NodeId(2), drained: true }, 3);
        let s = seen(&st, &view);
        let mv = |shard, to: u64| plan(&MemberOp::MoveShard { shard: ShardId(shard), to: Some(NodeId(to)) }, &s);
        assert_eq!(mv(4, 1), Err(Refused::UnknownShard { shard: 4, shards: 4 }));
        assert_eq!(mv(0, 9), Err(Refused::UnknownNode(NodeId(9))), "seen, but not a member");
        assert_eq!(mv(0, 2), Err(Refused::Draining(NodeId(2))));
        assert_eq!(mv(0, 3), Err(Refused::NotSeen(NodeId(3))), "down");
        assert_eq!(mv(0, 4), Ok(vec![Step::Write(Command::Pin { shard: ShardId(0), node: Some(NodeId(4)) })]));
        let unpin = plan(&MemberOp::MoveShard { shard: ShardId(0), to: None }, &s);
        assert_eq!(unpin, Ok(vec![Step::Write(Command::Pin { shard: ShardId(0), node: None })]));
    }
}
