//! Auto membership (dev mode, docs/architecture.md §8), a pure decision run on the leader: initialize the
//! cluster state, register discovered nodes, add them as learners, and promote learners until
//! there are `voters` voters. It never removes or demotes a voter: failure detection changes
//! placement, never the voter set (docs/architecture.md §8).

use std::collections::{BTreeMap, BTreeSet};

use super::state_machine::AppliedState;
use super::types::RaftNode;
use crate::membership::{MemberState, View};
use crate::state::Command;
use crate::types::{ClusterName, NodeId, NodeMeta};

/// What the cluster was configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The cluster name.
    pub cluster: ClusterName,
    /// Shards, used when this leader initializes the state.
    pub shards: u32,
    /// Replica factor, likewise.
    pub replica_factor: u32,
    /// Target number of voters (3, 5 or 7).
    pub voters: usize,
    /// Whether discovered nodes join automatically (dev mode). Off (production mode): only
    /// nodes on the allowlist (by command, or `members` below) are admitted.
    pub auto_join: bool,
    /// Production mode: nodes listed in the configuration, put on the allowlist by the first
    /// leader that sees them missing from it (unless an operator removed them since), and
    /// promoted to voters up to `voters`.
    pub members: Vec<NodeId>,
    /// The rebalancing mode a cluster starts in (`rebalance = "manual"`): written by the first
    /// leader configured for it that finds no mode recorded; after that only commands change it
    /// (an operator's `rebalance mode auto` is not undone by a restart).
    pub manual_rebalance: bool,
    /// The shard weights a cluster starts with (`shard_weights`): written by the first leader
    /// configured with some that finds none ever set; after that only commands change them.
    pub shard_weights: Vec<(crate::types::ShardId, u32)>,
}

/// The largest weight a node is registered with: a heartbeat claiming more (a misconfigured or
/// hostile node drawing every shard to itself) is registered at this.
pub const MAX_WEIGHT: u32 = 10_000;

/// What the leader registers of what a node said about itself: its weight capped at
/// [`MAX_WEIGHT`] (and at least 1), its worker count at [`MAX_WORKERS`](crate::workers::MAX_WORKERS)
/// (so the cluster's total cannot overflow), no instance id unless it is a valid one, and only
/// valid endpoints and metadata, at most [`MAX_ATTRIBUTES`](crate::types::MAX_ATTRIBUTES) of each.
pub fn admitted(meta: &NodeMeta) -> NodeMeta {
    NodeMeta {
        weight: meta.weight.clamp(1, MAX_WEIGHT),
        workers: meta.workers.min(crate::workers::MAX_WORKERS),
        name: meta.name.clone().filter(|n| crate::types::name_error(n).is_none()),
        // A heartbeat is at most 64 KiB (gossip's limit); what is committed is bounded too.
        endpoints: crate::types::admitted_attributes(&meta.endpoints),
        metadata: crate::types::admitted_attributes(&meta.metadata),
        ..meta.clone()
    }
}

/// Most learners one step adds: a rolling start of fifty needs a handful of membership entries,
/// not fifty, while the leader does not start fifty snapshots at once.
pub const LEARNERS_PER_STEP: usize = 8;

/// The next membership step.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per tick at most: boxing the command buys nothing
pub enum Action {
    /// Commit a command to the cluster state.
    Write(Command),
    /// Add nodes as non-voting learners, in one membership entry (at most [`LEARNERS_PER_STEP`]).
    /// They catch up on their own; only caught-up learners are promoted.
    AddLearners(BTreeMap<NodeId, RaftNode>),
    /// Make these nodes voters (the current voters plus promoted learners).
    SetVoters(BTreeSet<NodeId>),
}

/// Whether the cluster admits every node that finds it: this leader is configured for dev mode
/// and no leader configured for production mode has said otherwise (`ClusterState::production`
/// is never turned off, so a node restarted with the wrong flag cannot open the cluster).
pub fn open(st: &crate::state::ClusterState, s: &Settings) -> bool {
    s.auto_join && !st.production
}

/// Whether a node not yet registered may be: never one an operator removed; in dev mode any
/// other; in production mode one on the allowlist.
pub fn admissible(st: &crate::state::ClusterState, id: NodeId, s: &Settings) -> bool {
    !st.removed.contains(&id) && (open(st, s) || st.allowed.contains(&id))
}

/// The member, other than `meta`'s node, that already holds the instance id `meta` would be
/// registered with: two instances never share one (the second is not registered).
pub fn name_holder(st: &crate::state::ClusterState, meta: &NodeMeta) -> Option<NodeId> {
    let name = admitted(meta).name?;
    st.members.values().find(|m| m.id != meta.id && m.name.as_deref() == Some(name.as_str())).map(|m| m.id)
}

/// Nodes this cluster sees (Up in gossip) that are not members and may not become ones: in
/// production mode, those not on the allowlist; in any mode, those an operator removed and those
/// whose instance id a member holds.
pub fn refused(applied: &AppliedState, view: &View, s: &Settings) -> Vec<NodeId> {
    let st = &applied.state;
    if st.name.is_none() {
        return Vec::new();
    }
    view.members
        .values()
        .filter(|m| m.state == MemberState::Up && m.meta.id != view.local && !st.members.contains_key(&m.meta.id))
        .filter(|m| !admissible(st, m.meta.id, s) || name_holder(st, &m.meta).is_some())
        .map(|m| m.meta.id)
        .collect()
}

/// The next step, or `None` when membership is as it should be. One step at a time: the caller
/// runs it to completion before asking again (openraft needs membership changes serialized).
/// `caught_up` says whether a learner's log has reached the current membership entry: only such
/// a learner is promoted (one that has not would hold every commit of the joint configuration
/// until it catches up; a learner just added has not).
pub fn next_action(
    applied: &AppliedState,
    view: &View,
    s: &Settings,
    caught_up: &dyn Fn(NodeId) -> bool,
) -> Option<Action> {
    let st = &applied.state;
    if st.name.is_none() {
        return Some(Action::Write(Command::Init {
            name: s.cluster.clone(),
            shards: s.shards,
            replica_factor: s.replica_factor,
        }));
    }
    let local = view.members.get(&view.local)?;
    let registered = |m: &NodeMeta| st.members.get(&m.id) == Some(&admitted(m));
    if !registered(&local.meta) && name_holder(st, &local.meta).is_none() {
        return Some(Action::Write(Command::RegisterMember { meta: admitted(&local.meta) }));
    }
    if !s.auto_join {
        if !st.production {
            return Some(Action::Write(Command::SetProduction));
        }
        if let Some(id) = s.members.iter().find(|id| !st.allowed.contains(id) && !st.removed.contains(id)) {
            return Some(Action::Write(Command::SetAllowed { id: *id, allowed: true }));
        }
    }
    if s.manual_rebalance && !st.rebalance_set && !st.manual_rebalance {
        return Some(Action::Write(Command::SetRebalance { manual: true }));
    }
    let up: Vec<&NodeMeta> = view.members.values().filter(|m| m.state == MemberState::Up).map(|m| &m.meta).collect();
    for meta in &up {
        let known = st.members.contains_key(&meta.id);
        if !registered(meta)
            && !st.removed.contains(&meta.id)
            && (known || admissible(st, meta.id, s))
            && name_holder(st, meta).is_none()
        {
            return Some(Action::Write(Command::RegisterMember { meta: admitted(meta) }));
        }
    }
    let membership = applied.membership.membership();
    let in_raft: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    let pending: Vec<&NodeMeta> = up
        .iter()
        .copied()
        .filter(|m| st.members.contains_key(&m.id) && !in_raft.contains(&m.id) && !st.removed.contains(&m.id))
        .collect();
    // Voters before more learners: a rolling start of many nodes should not run on one voter
    // until the last of them has caught up. While more learners are coming (pending, or added
    // and catching up), promote only to an odd count (1 → 3 → 5): two voters tolerate no more
    // failures than one and need both to answer.
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if voters.len() < s.voters {
        // Dev mode promotes any learner; production mode only those its configuration lists
        // (an operator promotes the others by command).
        let candidates: Vec<NodeId> = up
            .iter()
            .map(|m| m.id)
            .filter(|id| in_raft.contains(id) && !voters.contains(id) && !st.held.contains(id))
            .filter(|id| open(st, s) || s.members.contains(id))
            .collect();
        let learners: Vec<NodeId> = candidates.iter().copied().filter(|id| caught_up(*id)).collect();
        let coming = !pending.is_empty() || learners.len() < candidates.len();
        let mut take = learners.len().min(s.voters - voters.len());
        if take > 0 && (voters.len() + take).is_multiple_of(2) && coming {
            take -= 1;
        }
        if take > 0 {
            let mut next = voters.clone();
            next.extend(learners.into_iter().take(take));
            return Some(Action::SetVoters(next));
        }
    }
    if !pending.is_empty() {
        let nodes = pending
            .iter()
            .take(LEARNERS_PER_STEP)
            .map(|m| (m.id, RaftNode { peer_id: m.peer_id, addrs: m.addrs.clone() }))
            .collect();
        return Some(Action::AddLearners(nodes));
    }
    // Last: it needs wire 4, and a refusal must not hold up membership during an upgrade.
    if !s.shard_weights.is_empty() && !st.weights_set {
        return Some(Action::Write(Command::SetShardWeights { weights: s.shard_weights.clone() }));
    }
    None
}

#[cfg(test)]
mod tests {
    use openraft::{LogId, Membership, StoredMembership};

    use super::*;
    use crate::membership::MemberView;
    use crate::state::ClusterState;
    use crate::types::ShardId;

    /// Every learner caught up.
    fn next(a: &AppliedState, v: &View, s: &Settings) -> Option<Action> {
        next_action(a, v, s, &|_| true)
    }

    /// The nodes an `AddLearners` step adds (panics on another step).
    fn learners(a: Option<Action>) -> Vec<u64> {
        match a {
            Some(Action::AddLearners(nodes)) => nodes.keys().map(|id| id.0).collect(),
            other => panic!("not AddLearners: {other:?}"),
        }
    }

    fn meta(id: u64) -> NodeMeta {
        NodeMeta {
            id: NodeId(id),
            peer_id: Some(
                libp2p::identity::Keypair::ed25519_from_bytes([id as u8; 32]).expect("32 bytes").public().to_peer_id(),
            ),
            addrs: vec![],
            weight: 1,
            workers: 1,
            zone: None,
            dashboard: None,
            name: None,
            endpoints: Default::default(),
            metadata: Default::default(),
        }
    }

    fn settings() -> Settings {
        Settings {
            cluster: ClusterName::new("a", "b"),
            shards: 8,
            replica_factor: 1,
            voters: 3,
            auto_join: true,
            members: vec![],
            manual_rebalance: false,
            shard_weights: vec![],
        }
    }

    fn view(ids: &[u64]) -> View {
        View {
            local: NodeId(ids[0]),
            members: ids
                .iter()
                .map(|i| {
                    (
                        NodeId(*i),
                        MemberView {
                            meta: meta(*i),
                            state: MemberState::Up,
                            raft_members: vec![],
                            bootstrapping: false,
                        },
                    )
                })
                .collect(),
        }
    }

    fn applied(registered: &[u64], voters: &[u64], learners: &[u64]) -> AppliedState {
        let mut state = ClusterState::default();
        state.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 8, replica_factor: 1 }, 1);
        for i in registered {
            state.apply(&Command::RegisterMember { meta: meta(*i) }, 2);
        }
        let nodes: BTreeMap<NodeId, RaftNode> =
            voters.iter().chain(learners).map(|i| (NodeId(*i), RaftNode::default())).collect();
        let m = Membership::new(vec![voters.iter().map(|i| NodeId(*i)).collect()], nodes);
        AppliedState { last_applied: None, membership: StoredMembership::new(Some(LogId::default()), m), state }
    }

    #[test]
    fn a_second_instance_claiming_a_held_instance_id_is_not_registered() {
        let named = |id: u64, name: &str| NodeMeta { name: Some(name.into()), ..meta(id) };
        let mut a = applied(&[1], &[1], &[]);
        a.state.apply(&Command::RegisterMember { meta: named(1, "node1") }, 3);
        let mut v = view(&[1, 2, 3]);
        v.members.get_mut(&NodeId(2)).unwrap().meta = named(2, "node1");
        v.members.get_mut(&NodeId(1)).unwrap().meta = named(1, "node1");
        let s = settings();
        assert_eq!(name_holder(&a.state, &named(2, "node1")), Some(NodeId(1)));
        assert_eq!(name_holder(&a.state, &named(1, "node1")), None, "a member re-registering keeps its own");
        // Node 3 (no name) is registered; node 2 never is, and is counted as refused.
        assert_eq!(next(&a, &v, &s), Some(Action::Write(Command::RegisterMember { meta: meta(3) })));
        a.state.apply(&Command::RegisterMember { meta: meta(3) }, 4);
        let step = next(&a, &v, &s);
        assert!(!matches!(step, Some(Action::Write(Command::RegisterMember { .. }))), "{step:?}");
        assert_eq!(refused(&a, &v, &s), vec![NodeId(2)]);
        // A leader whose own instance id another member holds does not register itself either.
        let mut v = view(&[2, 1, 3]);
        v.members.get_mut(&NodeId(2)).unwrap().meta = named(2, "node1");
        v.members.get_mut(&NodeId(1)).unwrap().meta = named(1, "node1");
        let step = next(&a, &v, &s);
        assert!(!matches!(step, Some(Action::Write(Command::RegisterMember { .. }))), "{step:?}");
    }

    #[test]
    fn configured_shard_weights_are_written_once() {
        let s = Settings { shard_weights: vec![(ShardId(3), 5), (ShardId(7), 2)], ..settings() };
        let mut a = applied(&[1, 2, 3], &[1, 2, 3], &[]);
        let v = view(&[1, 2, 3]);
        let want = Command::SetShardWeights { weights: vec![(ShardId(3), 5), (ShardId(7), 2)] };
        assert_eq!(next(&a, &v, &s), Some(Action::Write(want.clone())));
        a.state.apply(&want, 5);
        assert_eq!(a.state.shard_weight(ShardId(3)), 5);
        assert_eq!(next(&a, &v, &s), None);
        // An operator's later change stands: a leader restarted with the config does not undo it.
        a.state.apply(&Command::SetShardWeights { weights: vec![(ShardId(3), 1)] }, 6);
        assert_eq!(a.state.shard_weight(ShardId(3)), 1);
        assert_eq!(next(&a, &v, &s), None);
    }

    #[test]
    fn a_claimed_weight_is_registered_capped() {
        let m = NodeMeta {
            id: NodeId(3),
            weight: u32::MAX,
            workers: u32::MAX,
            name: Some("x\u{1b}[2J".into()),
            ..NodeMeta::default()
        };
        assert_eq!(admitted(&m).workers, crate::workers::MAX_WORKERS);
        assert_eq!(admitted(&m).name, None, "an instance id with a control character is not registered");
        assert_eq!(admitted(&m).weight, MAX_WEIGHT);
        assert_eq!(admitted(&NodeMeta { weight: 0, ..m.clone() }).weight, 1);
        assert_eq!(admitted(&NodeMeta { weight: 7, ..m }).weight, 7);
    }

    #[test]
    fn claimed_endpoints_and_metadata_are_registered_bounded() {
        let many: BTreeMap<String, String> = (0..100).map(|i| (format!("e{i:03}"), format!("10.0.0.1:{i}"))).collect();
        let mut bad = BTreeMap::new();
        bad.insert("ok".to_string(), "10.0.0.1:80".to_string());
        bad.insert("bad key".to_string(), "x".to_string());
        bad.insert("long".to_string(), "y".repeat(crate::types::MAX_ATTRIBUTE_VALUE + 1));
        bad.insert("ctl".to_string(), "a\u{1b}[2J".to_string());
        let m = NodeMeta { id: NodeId(4), endpoints: many, metadata: bad, ..NodeMeta::default() };
        let a = admitted(&m);
        assert_eq!(a.endpoints.len(), crate::types::MAX_ATTRIBUTES, "a hostile member cannot grow the state");
        assert_eq!(a.endpoints.keys().next().map(String::as_str), Some("e000"));
        assert_eq!(a.metadata.into_iter().collect::<Vec<_>>(), vec![("ok".to_string(), "10.0.0.1:80".to_string())]);
    }

    #[test]
    fn steps_in_order() {
        let s = settings();
        assert!(matches!(next(&AppliedState::default(), &view(&[1]), &s), Some(Action::Write(Command::Init { .. }))));
        let v = view(&[1, 2, 3, 4]);
        assert_eq!(
            next(&applied(&[], &[1], &[]), &v, &s),
            Some(Action::Write(Command::RegisterMember { meta: meta(1) }))
        );
        assert_eq!(
            next(&applied(&[1], &[1], &[]), &v, &s),
            Some(Action::Write(Command::RegisterMember { meta: meta(2) }))
        );
        assert_eq!(learners(next(&applied(&[1, 2, 3, 4], &[1], &[]), &v, &s)), vec![2, 3, 4], "in one step");
        // Voters come before more learners, to an odd count: not {1, 2} while 3 is coming.
        assert_eq!(learners(next(&applied(&[1, 2, 3, 4], &[1], &[2]), &v, &s)), vec![3, 4]);
        assert_eq!(
            next(&applied(&[1, 2, 3, 4], &[1], &[2, 3]), &v, &s),
            Some(Action::SetVoters([1, 2, 3].map(NodeId).into())),
            "promoted before 4 is added"
        );
        assert_eq!(learners(next(&applied(&[1, 2, 3, 4], &[1, 2, 3], &[]), &v, &s)), vec![4]);
        // Fifty at once go in steps of LEARNERS_PER_STEP.
        let ids: Vec<u64> = (1..=50).collect();
        let first = learners(next(&applied(&ids, &[1], &[]), &view(&ids), &s));
        assert_eq!(first, (2..=9).collect::<Vec<_>>());
        assert_eq!(
            next(&applied(&[1, 2, 3, 4], &[1], &[2, 3, 4]), &v, &s),
            Some(Action::SetVoters([1, 2, 3].map(NodeId).into()))
        );
        assert_eq!(next(&applied(&[1, 2, 3, 4], &[1, 2, 3], &[4]), &v, &s), None);
    }

    #[test]
    fn a_learner_that_has_not_caught_up_is_not_promoted() {
        let s = settings();
        let v = view(&[1, 2, 3, 4]);
        let a = applied(&[1, 2, 3, 4], &[1], &[2, 3, 4]);
        let lagging = |id: NodeId| id != NodeId(3);
        assert_eq!(
            next_action(&a, &v, &s, &lagging),
            Some(Action::SetVoters([1, 2, 4].map(NodeId).into())),
            "the caught-up ones are promoted"
        );
        let only_2 = |id: NodeId| id == NodeId(2);
        assert_eq!(next_action(&a, &v, &s, &only_2), None, "not to two voters while 3 and 4 catch up");
        assert_eq!(next_action(&a, &v, &s, &|_| false), None, "none caught up: nothing to promote");
        let a = applied(&[1, 2], &[1], &[2]);
        assert_eq!(
            next_action(&a, &view(&[1, 2]), &s, &|_| true),
            Some(Action::SetVoters([1, 2].map(NodeId).into())),
            "with nothing else coming, two voters it is"
        );
    }

    #[test]
    fn never_touches_voters_of_down_nodes_and_respects_manual_mode() {
        let mut s = settings();
        let mut v = view(&[1, 2, 3]);
        v.members.get_mut(&NodeId(3)).unwrap().state = MemberState::Down;
        assert_eq!(next(&applied(&[1, 2, 3], &[1, 2, 3], &[]), &v, &s), None);
        s.auto_join = false;
        let v = view(&[1, 9]);
        let mut a = applied(&[1], &[1], &[]);
        a.state.apply(&Command::SetProduction, 2);
        assert_eq!(next(&a, &v, &s), None, "an unknown node does not join in manual mode");
        assert_eq!(refused(&a, &v, &s), vec![NodeId(9)], "and is counted as refused");
    }

    #[test]
    fn a_configured_rebalance_mode_is_written_once_and_a_command_outlasts_it() {
        let mut s = settings();
        s.manual_rebalance = true;
        let v = view(&[1]);
        let mut a = applied(&[1], &[1], &[]);
        assert_eq!(next(&a, &v, &s), Some(Action::Write(Command::SetRebalance { manual: true })));
        a.state.apply(&Command::SetRebalance { manual: true }, 2);
        assert_eq!(next(&a, &v, &s), None, "written once");
        // An operator turns it back to auto; a leader restarted with the same config leaves it.
        a.state.apply(&Command::SetRebalance { manual: false }, 3);
        assert_eq!(next(&a, &v, &s), None, "the operator's command outlasts the config");
        s.manual_rebalance = false;
        assert_eq!(next(&applied(&[1], &[1], &[]), &v, &s), None, "auto is the default: nothing to write");
    }

    #[test]
    fn production_mode_admits_the_listed_and_the_allowed_only() {
        let mut s = settings();
        s.auto_join = false;
        s.members = vec![NodeId(2)];
        let v = view(&[1, 2, 3]);
        let mut a = applied(&[1], &[1], &[]);
        assert_eq!(next(&a, &v, &s), Some(Action::Write(Command::SetProduction)), "the mode is recorded");
        a.state.apply(&Command::SetProduction, 3);
        assert_eq!(
            next(&a, &v, &s),
            Some(Action::Write(Command::SetAllowed { id: NodeId(2), allowed: true })),
            "a listed node goes on the allowlist"
        );
        a.state.apply(&Command::SetAllowed { id: NodeId(2), allowed: true }, 3);
        assert_eq!(next(&a, &v, &s), Some(Action::Write(Command::RegisterMember { meta: meta(2) })));
        assert_eq!(refused(&a, &v, &s), vec![NodeId(3)]);
        // Listed learners are promoted; an allowed one added by command is not.
        let mut a = applied(&[1, 2, 3], &[1], &[2, 3]);
        a.state.apply(&Command::SetProduction, 2);
        a.state.apply(&Command::SetAllowed { id: NodeId(2), allowed: true }, 3);
        a.state.apply(&Command::SetAllowed { id: NodeId(3), allowed: true }, 4);
        assert_eq!(next(&a, &v, &s), Some(Action::SetVoters([1, 2].map(NodeId).into())));
        // A removed node is not registered again, in any mode, and a listed one stays removed.
        let mut a = applied(&[1], &[1], &[]);
        a.state.apply(&Command::SetProduction, 2);
        a.state.apply(&Command::SetAllowed { id: NodeId(2), allowed: false }, 3);
        assert_eq!(next(&a, &v, &s), None);
        let mut dev = applied(&[1], &[1], &[]);
        dev.state.apply(&Command::SetAllowed { id: NodeId(2), allowed: false }, 3);
        s.auto_join = true;
        assert_eq!(next(&dev, &view(&[1, 2]), &s), None);
        assert_eq!(refused(&dev, &view(&[1, 2]), &s), vec![NodeId(2)]);
    }

    #[test]
    fn a_dev_mode_leader_keeps_a_production_cluster_closed() {
        // A node restarted without --mode production that wins an election.
        let s = settings();
        let mut a = applied(&[1], &[1], &[]);
        a.state.apply(&Command::SetProduction, 2);
        assert_eq!(next(&a, &view(&[1, 9]), &s), None, "an unlisted node stays out");
        assert_eq!(refused(&a, &view(&[1, 9]), &s), vec![NodeId(9)]);
        // And in production no learner is promoted that the configuration does not list.
        let mut a = applied(&[1, 2], &[1], &[2]);
        a.state.apply(&Command::SetProduction, 2);
        assert_eq!(next(&a, &view(&[1, 2]), &s), None);
    }

    #[test]
    fn operators_decisions_stick() {
        let s = settings();
        // A demoted voter (held) is not promoted again in dev mode.
        let mut a = applied(&[1, 2, 3], &[1, 2], &[3]);
        a.state.apply(&Command::HoldLearner { id: NodeId(3), held: true }, 4);
        assert_eq!(next(&a, &view(&[1, 2, 3]), &s), None);
        // A node whose removal stopped midway (still registered, out of Raft, removed) is not
        // added back as a learner.
        let mut a = applied(&[1, 2], &[1], &[]);
        a.state.apply(&Command::SetAllowed { id: NodeId(2), allowed: false }, 4);
        assert_eq!(next(&a, &view(&[1, 2]), &s), None);
    }
}
