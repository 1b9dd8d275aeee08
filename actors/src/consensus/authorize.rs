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
    /// The sender's peer id is not in this node's Raft configuration, and no member vouches
    /// for it.
    #[error("the sender is not a member of the raft configuration")]
    NotMember,
    /// A lease, a forwarded command or a Raft vote named another node than the sender's
    /// (a peer may speak only for itself: its node id is derived from its key).
    #[error("the request names another node than the sender's")]
    OtherNode,
    /// A forwarded command that only the leader decides (shard moves, members): a leader
    /// writes those itself, in its own term, and never forwards them.
    #[error("only the leader decides this command; it is never forwarded")]
    LeaderOnly,
    /// A vote far beyond this node's term: no real election gets there, and a term near
    /// `u64::MAX` would leave the group unable to elect anyone.
    #[error("a raft term implausibly far beyond this node's")]
    ImplausibleTerm,
}

impl Unauthorized {
    /// Every reason, in counter order.
    pub const ALL: [Unauthorized; 4] =
        [Unauthorized::NotMember, Unauthorized::OtherNode, Unauthorized::LeaderOnly, Unauthorized::ImplausibleTerm];

    /// A short name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Unauthorized::NotMember => "not_member",
            Unauthorized::OtherNode => "other_node",
            Unauthorized::LeaderOnly => "leader_only",
            Unauthorized::ImplausibleTerm => "implausible_term",
        }
    }
}

/// How far past this node's term a Raft request may be. Terms grow by one per election (an
/// isolated voter without pre-vote: one per 150-300 ms, a million in days); 2^40 is millennia
/// of that and still far from `u64::MAX`, where `term + 1` would overflow.
pub const MAX_TERM_JUMP: u64 = 1 << 40;

/// Who sent a request. The node id is always the one derived from the sender's peer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A member (voter or learner) of this node's Raft configuration.
    Member(NodeId),
    /// Not in this node's configuration, but a member's signed heartbeat lists it in that
    /// member's (newer) configuration: this node lags behind a membership change.
    Vouched(NodeId),
    /// Neither.
    Outsider(NodeId),
}

impl Sender {
    fn id(self) -> NodeId {
        match self {
            Sender::Member(id) | Sender::Vouched(id) | Sender::Outsider(id) => id,
        }
    }
}

/// What this node knows of itself, for [`authorize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    /// Its Raft configuration lists no node at all: it never joined (or bootstrapped) a cluster.
    pub unjoined: bool,
    /// Its current Raft term.
    pub term: u64,
}

/// Classifies `peer`: a member if its peer id is in the configuration's `nodes`, vouched if a
/// member's heartbeat lists it (`vouched`), an outsider otherwise.
pub fn sender<'a>(
    peer: &PeerId,
    nodes: impl IntoIterator<Item = (&'a NodeId, &'a RaftNode)>,
    vouched: impl FnOnce(NodeId) -> bool,
) -> Sender {
    let id = NodeId::from_peer_bytes(&peer.to_bytes());
    if nodes.into_iter().any(|(_, n)| n.peer_id.as_ref() == Some(peer)) {
        Sender::Member(id)
    } else if vouched(id) {
        Sender::Vouched(id)
    } else {
        Sender::Outsider(id)
    }
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

/// Whether `request` from `sender` may be served by a node in state `local`.
///
/// - Raft's own RPCs (AppendEntries, InstallSnapshot, Vote) must name the sender as the leader
///   or candidate, stay within [`MAX_TERM_JUMP`] of this node's term, and come from a member or
///   a vouched peer; a node that never joined takes replication (not votes) from anyone, as
///   that is how it joins.
/// - Lease renewals and forwarded commands: members only, and only for themselves.
/// - Elect: members only (the handover checks further that it is the leader).
pub fn authorize(request: &RaftRequest, sender: Sender, local: Local) -> Result<(), Unauthorized> {
    let claim = match request {
        RaftRequest::AppendEntries(r) => Some((r.vote.leader_id(), true)),
        RaftRequest::InstallSnapshot(r) => Some((r.vote.leader_id(), true)),
        RaftRequest::Vote(r) => Some((r.vote.leader_id(), false)),
        _ => None,
    };
    if let Some((leader, replication)) = claim {
        if leader.voted_for() != Some(sender.id()) {
            return Err(Unauthorized::OtherNode);
        }
        if leader.get_term() > local.term.saturating_add(MAX_TERM_JUMP) {
            return Err(Unauthorized::ImplausibleTerm);
        }
        return match sender {
            Sender::Member(_) | Sender::Vouched(_) => Ok(()),
            Sender::Outsider(_) if replication && local.unjoined => Ok(()),
            Sender::Outsider(_) => Err(Unauthorized::NotMember),
        };
    }
    // The answer to a relayed membership request may be asked for by its relay after the
    // request removed it (an operator removing the node they talk to); it carries the token,
    // which the leader checks, and reveals only that answer.
    if matches!(request, RaftRequest::ManageResult { .. }) {
        return Ok(());
    }
    let Sender::Member(from) = sender else { return Err(Unauthorized::NotMember) };
    match request {
        RaftRequest::ClientWrite(cmd) => forwardable(cmd, from),
        RaftRequest::Lease(req) if req.node != from => Err(Unauthorized::OtherNode),
        _ => Ok(()),
    }
}

/// Refusals counted per reason, and the nodes refused membership.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; 4],
    bad_tokens: AtomicU64,
    unadmitted: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
}

impl Refusals {
    /// Counts one refusal; returns the count for that reason, this one included.
    pub fn bump(&self, why: Unauthorized) -> u64 {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The count for one reason.
    pub fn get(&self, why: Unauthorized) -> u64 {
        self.counts[why as usize].load(Ordering::Relaxed)
    }

    /// Counts a management request with a wrong or missing token; returns the count.
    pub fn bad_token(&self) -> u64 {
        self.bad_tokens.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records that `id` was refused membership (production mode: not on the allowlist; any
    /// mode: removed by an operator). Returns whether it is the first time.
    pub fn unadmitted(&self, id: NodeId) -> bool {
        self.unadmitted.lock().unwrap_or_else(|e| e.into_inner()).insert(id)
    }

    /// Every node refused membership so far (seen by this node while it led).
    pub fn unadmitted_nodes(&self) -> Vec<NodeId> {
        self.unadmitted.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = Unauthorized::ALL.iter().map(|r| (r.name(), self.get(*r))).collect();
        v.push(("bad_token", self.bad_tokens.load(Ordering::Relaxed)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::rpc::LeaseRequest;
    use crate::types::{Epoch, ShardId};

    const A: NodeId = NodeId(7);
    const JOINED: Local = Local { unjoined: false, term: 5 };

    fn vote(term: u64, candidate: NodeId) -> RaftRequest {
        RaftRequest::Vote(openraft::raft::VoteRequest { vote: openraft::Vote::new(term, candidate), last_log_id: None })
    }

    fn append(term: u64, leader: NodeId) -> RaftRequest {
        RaftRequest::AppendEntries(openraft::raft::AppendEntriesRequest {
            vote: openraft::Vote::new_committed(term, leader),
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
        let o = Sender::Outsider(A);
        for req in [vote(99, A), append(99, A), released(7), RaftRequest::Lease(LeaseRequest { node: A, term: 1 })] {
            assert_eq!(authorize(&req, o, JOINED), Err(Unauthorized::NotMember), "{req:?}");
        }
        assert_eq!(authorize(&RaftRequest::Elect, o, JOINED), Err(Unauthorized::NotMember));
    }

    #[test]
    fn a_node_that_never_joined_takes_replication_only() {
        let (o, fresh) = (Sender::Outsider(A), Local { unjoined: true, term: 0 });
        assert_eq!(authorize(&append(3, A), o, fresh), Ok(()));
        assert_eq!(authorize(&vote(3, A), o, fresh), Err(Unauthorized::NotMember));
        assert_eq!(authorize(&released(7), o, fresh), Err(Unauthorized::NotMember));
        assert_eq!(authorize(&append(3, NodeId(1)), o, fresh), Err(Unauthorized::OtherNode), "only as itself");
        assert_eq!(authorize(&append(u64::MAX - 1, A), o, fresh), Err(Unauthorized::ImplausibleTerm));
    }

    #[test]
    fn raft_rpcs_speak_only_for_the_sender_and_within_reach_of_the_term() {
        let m = Sender::Member(A);
        assert_eq!(authorize(&vote(6, A), m, JOINED), Ok(()));
        assert_eq!(authorize(&append(6, A), m, JOINED), Ok(()));
        assert_eq!(
            authorize(&vote(6, NodeId(1)), m, JOINED),
            Err(Unauthorized::OtherNode),
            "a vote for another candidate"
        );
        assert_eq!(authorize(&append(6, NodeId(1)), m, JOINED), Err(Unauthorized::OtherNode), "posing as the leader");
        assert_eq!(authorize(&append(5 + MAX_TERM_JUMP, A), m, JOINED), Ok(()));
        assert_eq!(authorize(&append(6 + MAX_TERM_JUMP, A), m, JOINED), Err(Unauthorized::ImplausibleTerm));
    }

    #[test]
    fn a_vouched_peer_gets_raft_rpcs_only() {
        let v = Sender::Vouched(A);
        assert_eq!(authorize(&append(9, A), v, JOINED), Ok(()), "a lagging node catches up from a newer leader");
        assert_eq!(authorize(&vote(9, A), v, JOINED), Ok(()), "and can vote for a newer member");
        assert_eq!(authorize(&released(7), v, JOINED), Err(Unauthorized::NotMember));
        assert_eq!(
            authorize(&RaftRequest::Lease(LeaseRequest { node: A, term: 9 }), v, JOINED),
            Err(Unauthorized::NotMember)
        );
    }

    #[test]
    fn a_member_asks_only_for_itself() {
        let m = Sender::Member(NodeId(2));
        assert_eq!(authorize(&released(2), m, JOINED), Ok(()));
        assert_eq!(authorize(&released(1), m, JOINED), Err(Unauthorized::OtherNode));
        let drain = |id| RaftRequest::ClientWrite(Command::SetDraining { id: NodeId(id), draining: true });
        assert_eq!(authorize(&drain(2), m, JOINED), Ok(()));
        assert_eq!(authorize(&drain(3), m, JOINED), Err(Unauthorized::OtherNode));
        let lease = |node| RaftRequest::Lease(LeaseRequest { node: NodeId(node), term: 4 });
        assert_eq!(authorize(&lease(2), m, JOINED), Ok(()));
        assert_eq!(authorize(&lease(1), m, JOINED), Err(Unauthorized::OtherNode));
        assert_eq!(authorize(&RaftRequest::Elect, m, JOINED), Ok(()));
        for cmd in [
            Command::SetAssignments { based_on: Epoch(3), changes: vec![] },
            Command::BeginHandoff { based_on: Epoch(3), moves: vec![] },
            Command::RemoveMember { id: NodeId(2) },
            Command::RegisterMember { meta: Default::default() },
            Command::SetAllowed { id: NodeId(2), allowed: true },
            Command::SetDrained { id: NodeId(2), drained: false },
            Command::HoldLearner { id: NodeId(2), held: false },
            Command::SetProduction,
        ] {
            assert_eq!(authorize(&RaftRequest::ClientWrite(cmd), m, JOINED), Err(Unauthorized::LeaderOnly));
        }
    }

    #[test]
    fn operators_requests_are_relayed_by_members_only() {
        use crate::consensus::manage::MemberOp;
        use crate::types::Token;
        let manage = RaftRequest::Manage { op: MemberOp::Remove(NodeId(2)), token: Token::new("the-right-token-1") };
        for who in [Sender::Outsider(A), Sender::Vouched(A)] {
            assert_eq!(authorize(&manage, who, JOINED), Err(Unauthorized::NotMember), "{who:?}");
            assert_eq!(authorize(&RaftRequest::ReadIndex, who, JOINED), Err(Unauthorized::NotMember));
        }
        let fresh = Local { unjoined: true, term: 0 };
        assert_eq!(authorize(&manage, Sender::Outsider(A), fresh), Err(Unauthorized::NotMember), "not even unjoined");
        assert_eq!(authorize(&manage, Sender::Member(A), JOINED), Ok(()), "the leader then checks the token");
        assert_eq!(authorize(&RaftRequest::ReadIndex, Sender::Member(A), JOINED), Ok(()));
        // The answer may be fetched by a relay its own request removed; it carries the token.
        let result = RaftRequest::ManageResult { id: 7, token: Token::new("x") };
        assert_eq!(authorize(&result, Sender::Outsider(A), JOINED), Ok(()));
    }

    #[test]
    fn senders_are_found_by_peer_id_or_vouched_for() {
        let a = PeerId::random();
        let id = NodeId::from_peer_bytes(&a.to_bytes());
        let nodes = [(id, RaftNode { peer_id: Some(a), addrs: vec![] }), (NodeId(2), RaftNode::default())];
        let it = || nodes.iter().map(|(i, n)| (i, n));
        assert_eq!(sender(&a, it(), |_| false), Sender::Member(id));
        let b = PeerId::random();
        let bid = NodeId::from_peer_bytes(&b.to_bytes());
        assert_eq!(sender(&b, it(), |_| false), Sender::Outsider(bid));
        assert_eq!(sender(&b, it(), |v| v == bid), Sender::Vouched(bid));
        let r = Refusals::default();
        r.bump(Unauthorized::OtherNode);
        assert_eq!(
            r.snapshot(),
            vec![("not_member", 0), ("other_node", 1), ("leader_only", 0), ("implausible_term", 0), ("bad_token", 0)]
        );
    }
}
