//! Auto membership (dev mode, docs/architecture.md §8), a pure decision run on the leader: initialize the
//! cluster state, register discovered nodes, add them as learners, and promote learners until
//! there are `voters` voters. It never removes or demotes a voter: failure detection changes
//! placement, never the voter set (docs/architecture.md §8).

use std::collections::BTreeSet;

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
    /// Whether discovered nodes join automatically (dev mode).
    pub auto_join: bool,
}

/// The largest weight a node is registered with: a heartbeat claiming more (a misconfigured or
/// hostile node drawing every shard to itself) is registered at this.
pub const MAX_WEIGHT: u32 = 10_000;

/// What the leader registers of what a node said about itself: its weight capped at
/// [`MAX_WEIGHT`] (and at least 1).
pub fn admitted(meta: &NodeMeta) -> NodeMeta {
    NodeMeta { weight: meta.weight.clamp(1, MAX_WEIGHT), ..meta.clone() }
}

/// The next membership step.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Commit a command to the cluster state.
    Write(Command),
    /// Add a node as a non-voting learner.
    AddLearner(NodeId, RaftNode),
    /// Make these nodes voters (the current voters plus promoted learners).
    SetVoters(BTreeSet<NodeId>),
}

/// The next step, or `None` when membership is as it should be. One step at a time: the caller
/// runs it to completion before asking again (openraft needs membership changes serialized).
pub fn next_action(applied: &AppliedState, view: &View, s: &Settings) -> Option<Action> {
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
    if !registered(&local.meta) {
        return Some(Action::Write(Command::RegisterMember { meta: admitted(&local.meta) }));
    }
    let up: Vec<&NodeMeta> = view.members.values().filter(|m| m.state == MemberState::Up).map(|m| &m.meta).collect();
    for meta in &up {
        let known = st.members.contains_key(&meta.id);
        if !registered(meta) && (known || s.auto_join) {
            return Some(Action::Write(Command::RegisterMember { meta: admitted(meta) }));
        }
    }
    let membership = applied.membership.membership();
    let in_raft: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    for meta in &up {
        if st.members.contains_key(&meta.id) && !in_raft.contains(&meta.id) {
            let node = RaftNode { peer_id: meta.peer_id, addrs: meta.addrs.clone() };
            return Some(Action::AddLearner(meta.id, node));
        }
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if voters.len() < s.voters && s.auto_join {
        let learners: Vec<NodeId> =
            up.iter().map(|m| m.id).filter(|id| in_raft.contains(id) && !voters.contains(id)).collect();
        if !learners.is_empty() {
            let mut next = voters.clone();
            next.extend(learners.into_iter().take(s.voters - voters.len()));
            return Some(Action::SetVoters(next));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{LogId, Membership, StoredMembership};

    use super::*;
    use crate::membership::MemberView;
    use crate::state::ClusterState;

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
        }
    }

    fn settings() -> Settings {
        Settings { cluster: ClusterName::new("a", "b"), shards: 8, replica_factor: 1, voters: 3, auto_join: true }
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
    fn a_claimed_weight_is_registered_capped() {
        let m = NodeMeta { id: NodeId(3), weight: u32::MAX, ..NodeMeta::default() };
        assert_eq!(admitted(&m).weight, MAX_WEIGHT);
        assert_eq!(admitted(&NodeMeta { weight: 0, ..m.clone() }).weight, 1);
        assert_eq!(admitted(&NodeMeta { weight: 7, ..m }).weight, 7);
    }

    #[test]
    fn steps_in_order() {
        let s = settings();
        assert!(matches!(
            next_action(&AppliedState::default(), &view(&[1]), &s),
            Some(Action::Write(Command::Init { .. }))
        ));
        let v = view(&[1, 2, 3, 4]);
        assert_eq!(
            next_action(&applied(&[], &[1], &[]), &v, &s),
            Some(Action::Write(Command::RegisterMember { meta: meta(1) }))
        );
        assert_eq!(
            next_action(&applied(&[1], &[1], &[]), &v, &s),
            Some(Action::Write(Command::RegisterMember { meta: meta(2) }))
        );
        assert!(matches!(
            next_action(&applied(&[1, 2, 3, 4], &[1], &[]), &v, &s),
            Some(Action::AddLearner(NodeId(2), _))
        ));
        assert_eq!(
            next_action(&applied(&[1, 2, 3, 4], &[1], &[2, 3, 4]), &v, &s),
            Some(Action::SetVoters([1, 2, 3].map(NodeId).into()))
        );
        assert_eq!(next_action(&applied(&[1, 2, 3, 4], &[1, 2, 3], &[4]), &v, &s), None);
    }

    #[test]
    fn never_touches_voters_of_down_nodes_and_respects_manual_mode() {
        let mut s = settings();
        let mut v = view(&[1, 2, 3]);
        v.members.get_mut(&NodeId(3)).unwrap().state = MemberState::Down;
        assert_eq!(next_action(&applied(&[1, 2, 3], &[1, 2, 3], &[]), &v, &s), None);
        s.auto_join = false;
        let v = view(&[1, 9]);
        assert_eq!(
            next_action(&applied(&[1], &[1], &[]), &v, &s),
            None,
            "an unknown node does not join in manual mode"
        );
    }
}
