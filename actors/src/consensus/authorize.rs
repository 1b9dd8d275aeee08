//! Who may ask what of this node's Raft group (docs/architecture.md §13): the rule every
//! inbound Raft, lease and forwarded-command request passes before openraft or the lease
//! service sees it. Pure: the consensus actor supplies who the sender is.
//!
//! Reaching a node is not enough to drive its Raft group: without a cluster secret anyone on
//! the network can open a connection, so one AppendEntries with a high vote would depose the
//! leader, and one forwarded `Released` would complete a handoff before the old owner stopped.
//! A request is served only from a peer whose id is in this node's Raft configuration (voters
//! and learners), and a forwarded command or lease only for the sender's own node.

use std::sync::atomic::{AtomicU64, Ordering};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::rpc::RaftRequest;
use super::types::RaftNode;
use crate::state::Command;
use crate::types::NodeId;

/// Why a request was refused before it reached Raft. ONLY APPEND.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Unauthorized {
    /// The sender's peer id is not in this node's Raft configuration.
    #[error("the sender is not a member of the raft configuration")]
    NotMember,
    /// A lease or a forwarded command named another node than the sender's.
    #[error("the request names another node than the sender's")]
    OtherNode,
    /// A forwarded command that only the leader decides (shard moves, members): a leader
    /// writes those itself, in its own term, and never forwards them.
    #[error("only the leader decides this command; it is never forwarded")]
    LeaderOnly,
}

impl Unauthorized {
    /// Every reason, in counter order.
    pub const ALL: [Unauthorized; 3] = [Unauthorized::NotMember, Unauthorized::OtherNode, Unauthorized::LeaderOnly];

    /// A short name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Unauthorized::NotMember => "not_member",
            Unauthorized::OtherNode => "other_node",
            Unauthorized::LeaderOnly => "leader_only",
        }
    }
}

/// Who sent a request, as this node's Raft configuration knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A member (voter or learner) with this id.
    Member(NodeId),
    /// A peer the configuration does not list.
    Outsider,
}

/// Looks `peer` up in the configuration's `nodes`.
pub fn sender<'a>(peer: &PeerId, nodes: impl IntoIterator<Item = (&'a NodeId, &'a RaftNode)>) -> Sender {
    nodes
        .into_iter()
        .find(|(_, n)| n.peer_id.as_ref() == Some(peer))
        .map_or(Sender::Outsider, |(id, _)| Sender::Member(*id))
}

/// Whether a member may forward `cmd` to the leader: only what concerns the sender itself (its
/// own shards released, its own leave mark). Everything else is the leader's decision.
pub fn forwardable(cmd: &Command, from: NodeId) -> Result<(), Unauthorized> {
    match cmd {
        Command::Released { node, .. } | Command::SetDraining { id: node, .. } if *node == from => Ok(()),
        Command::Released { .. } | Command::SetDraining { .. } => Err(Unauthorized::OtherNode),
        _ => Err(Unauthorized::LeaderOnly),
    }
}

/// Whether `request` from `sender` may be served. `local_is_member`: this node is in its own
/// configuration. A node outside it (new, or removed and coming back) accepts replication from
/// any peer of the cluster, as that is how it joins; it takes nothing else from an outsider.
pub fn authorize(request: &RaftRequest, sender: Sender, local_is_member: bool) -> Result<(), Unauthorized> {
    let joining = !local_is_member;
    match (request, sender) {
        (RaftRequest::AppendEntries(_) | RaftRequest::InstallSnapshot(_), Sender::Outsider) if joining => Ok(()),
        (_, Sender::Outsider) => Err(Unauthorized::NotMember),
        (RaftRequest::ClientWrite(cmd), Sender::Member(from)) => forwardable(cmd, from),
        (RaftRequest::Lease(req), Sender::Member(from)) if req.node != from => Err(Unauthorized::OtherNode),
        (_, Sender::Member(_)) => Ok(()),
    }
}

/// Refusals counted per reason.
#[derive(Debug, Default)]
pub struct Refusals([AtomicU64; 3]);

impl Refusals {
    /// Counts one refusal.
    pub fn bump(&self, why: Unauthorized) {
        self.0[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for one reason.
    pub fn get(&self, why: Unauthorized) -> u64 {
        self.0[why as usize].load(Ordering::Relaxed)
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Unauthorized::ALL.iter().map(|r| (r.name(), self.get(*r))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::rpc::LeaseRequest;
    use crate::types::{Epoch, ShardId};

    fn vote() -> RaftRequest {
        RaftRequest::Vote(openraft::raft::VoteRequest { vote: openraft::Vote::new(99, NodeId(7)), last_log_id: None })
    }

    fn append() -> RaftRequest {
        RaftRequest::AppendEntries(openraft::raft::AppendEntriesRequest {
            vote: openraft::Vote::new_committed(99, NodeId(7)),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        })
    }

    fn released(node: u64) -> RaftRequest {
        RaftRequest::ClientWrite(Command::Released { node: NodeId(node), shards: vec![(ShardId(1), Epoch(3))] })
    }

    #[test]
    fn an_outsider_drives_nothing_of_a_member() {
        for req in [vote(), append(), released(2), RaftRequest::Lease(LeaseRequest { node: NodeId(2), term: 1 })] {
            assert_eq!(authorize(&req, Sender::Outsider, true), Err(Unauthorized::NotMember), "{req:?}");
        }
        assert_eq!(authorize(&RaftRequest::Elect, Sender::Outsider, true), Err(Unauthorized::NotMember));
    }

    #[test]
    fn a_joining_node_takes_replication_only() {
        assert_eq!(authorize(&append(), Sender::Outsider, false), Ok(()));
        assert_eq!(authorize(&vote(), Sender::Outsider, false), Err(Unauthorized::NotMember));
        assert_eq!(authorize(&released(2), Sender::Outsider, false), Err(Unauthorized::NotMember));
    }

    #[test]
    fn a_member_asks_only_for_itself() {
        let m = Sender::Member(NodeId(2));
        assert_eq!(authorize(&vote(), m, true), Ok(()));
        assert_eq!(authorize(&append(), m, true), Ok(()));
        assert_eq!(authorize(&released(2), m, true), Ok(()));
        assert_eq!(authorize(&released(1), m, true), Err(Unauthorized::OtherNode));
        let drain = |id| RaftRequest::ClientWrite(Command::SetDraining { id: NodeId(id), draining: true });
        assert_eq!(authorize(&drain(2), m, true), Ok(()));
        assert_eq!(authorize(&drain(3), m, true), Err(Unauthorized::OtherNode));
        let lease = |node| RaftRequest::Lease(LeaseRequest { node: NodeId(node), term: 4 });
        assert_eq!(authorize(&lease(2), m, true), Ok(()));
        assert_eq!(authorize(&lease(1), m, true), Err(Unauthorized::OtherNode));
        for cmd in [
            Command::SetAssignments { based_on: Epoch(3), changes: vec![] },
            Command::BeginHandoff { based_on: Epoch(3), moves: vec![] },
            Command::RemoveMember { id: NodeId(2) },
            Command::RegisterMember { meta: Default::default() },
        ] {
            assert_eq!(authorize(&RaftRequest::ClientWrite(cmd), m, true), Err(Unauthorized::LeaderOnly));
        }
    }

    #[test]
    fn senders_are_found_by_peer_id() {
        let a = PeerId::random();
        let nodes = [(NodeId(1), RaftNode { peer_id: Some(a), addrs: vec![] }), (NodeId(2), RaftNode::default())];
        assert_eq!(sender(&a, nodes.iter().map(|(i, n)| (i, n))), Sender::Member(NodeId(1)));
        assert_eq!(sender(&PeerId::random(), nodes.iter().map(|(i, n)| (i, n))), Sender::Outsider);
        let r = Refusals::default();
        r.bump(Unauthorized::OtherNode);
        assert_eq!(r.snapshot(), vec![("not_member", 0), ("other_node", 1), ("leader_only", 0)]);
    }
}
