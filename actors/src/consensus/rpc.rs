//! The Raft protocol (`/clusterfunk/<key>/<env>/raft/1`): openraft's RPCs, commands forwarded
//! to the leader, lease renewals and the leadership handover. Carried by the transport as
//! opaque length-prefixed frames; encoded and decoded here ([`call`], and the consensus actor
//! for inbound requests). ONLY APPEND to these enums and their fields.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::types::{ClientWriteError, RaftError, TypeConfig};
use crate::state::{Command, CommandResult};
use crate::transport;
use crate::types::NodeId;
use crate::wire;

/// A Raft RPC request (protocol `/clusterfunk/<key>/<env>/raft/1`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    /// openraft AppendEntries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// openraft RequestVote.
    Vote(VoteRequest<NodeId>),
    /// openraft InstallSnapshot (one chunk).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A command forwarded from a follower to the leader.
    ClientWrite(Command),
    /// A lease renewal, to the leader.
    Lease(LeaseRequest),
    /// From the leader, which is leaving and has stopped its heartbeats: start an election as
    /// soon as the voters' leader lease allows (leadership handover).
    Elect,
    /// An operator's membership request, relayed by the member that received it to the leader,
    /// with the operator's token (the leader checks it again).
    Manage {
        /// The request.
        op: super::manage::MemberOp,
        /// The operator's bearer token.
        token: crate::types::Token,
    },
    /// The answer to a relayed membership request the leader answered `ManagePending` for.
    ManageResult {
        /// The id the leader gave.
        id: u64,
        /// The operator's bearer token again.
        token: crate::types::Token,
    },
    /// Raft's ReadIndex, to the leader: the log index a linearizable read must have applied
    /// (the leader confirms with a quorum that it still leads).
    ReadIndex,
}

impl RaftRequest {
    /// The request's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RaftRequest::AppendEntries(_) => "append_entries",
            RaftRequest::Vote(_) => "vote",
            RaftRequest::InstallSnapshot(_) => "install_snapshot",
            RaftRequest::ClientWrite(_) => "client_write",
            RaftRequest::Lease(_) => "lease",
            RaftRequest::Elect => "elect",
            RaftRequest::Manage { .. } => "manage",
            RaftRequest::ManageResult { .. } => "manage_result",
            RaftRequest::ReadIndex => "read_index",
        }
    }
}

/// The response to a [`RaftRequest`], same variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    /// AppendEntries result.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError>),
    /// Vote result.
    Vote(Result<VoteResponse<NodeId>, RaftError>),
    /// InstallSnapshot result.
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<InstallSnapshotError>>),
    /// ClientWrite result.
    ClientWrite(Result<CommandResult, RaftError<ClientWriteError>>),
    /// Lease renewal answer.
    Lease(LeaseReply),
    /// Whether the node will stand for election (it is a voter and the request came from the
    /// leader it knows).
    Elect(bool),
    /// The request was refused before Raft saw it: the sender may not ask it
    /// (docs/architecture.md §13).
    Refused(super::authorize::Unauthorized),
    /// The answer to a relayed membership request.
    Manage(Result<super::manage::Done, super::manage::ManageError>),
    /// A relayed membership request still runs on the leader (it may wait for a learner to catch
    /// up for longer than one RPC may take): ask for its answer with `ManageResult`.
    ManagePending(u64),
    /// The answer to `ReadIndex`: the index, or why there is none.
    ReadIndex(Result<u64, String>),
}

/// A renewal, sent by a node to the Raft leader it knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The renewing node.
    pub node: NodeId,
    /// The Raft term the node is in; a leader of another term refuses.
    pub term: u64,
}

/// The leader's answer to a [`LeaseRequest`]. ONLY APPEND.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseReply {
    /// Granted: valid for L from when the request was sent, once the node applied `min_applied`.
    Granted {
        /// The leader's applied log index when it granted.
        min_applied: u64,
    },
    /// Refused: not the leader, another term, or no quorum heard recently.
    Refused {
        /// Why.
        reason: Refusal,
    },
}

/// Why a leader refused a renewal. ONLY APPEND.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The receiver does not lead the Raft group.
    #[error("not the leader")]
    NotLeader,
    /// The receiver leads another term than the renewal's.
    #[error("leader of term {leader}, request of term {request}")]
    OtherTerm {
        /// The leader's term.
        leader: u64,
        /// The renewal's term.
        request: u64,
    },
    /// No quorum acknowledged the leader within the window (CheckQuorum).
    #[error("no quorum heard for {0:?}")]
    NoQuorum(Duration),
    /// No quorum has acknowledged the leader yet.
    #[error("no quorum has acknowledged this leader yet")]
    NoQuorumYet,
    /// The node's lease ran out and its shards are being moved.
    #[error("its lease ran out and its shards are being moved")]
    Fenced,
}

/// Answers lease renewals: implemented by the lease service (a layer above consensus), which
/// the consensus actor asks for every `RaftRequest::Lease` it receives.
pub trait LeaseGranter: Send + Sync + 'static {
    /// The answer to `request`, which arrived from `from`.
    fn grant(&self, request: &LeaseRequest) -> LeaseReply;
}

/// Sends `request` to `peer` (dialing `addrs` if needed) and decodes its answer. An answer that
/// does not decode closes the connection to the peer and is counted as malformed.
pub async fn call(
    transport: &transport::Handle,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    request: &RaftRequest,
) -> Result<RaftResponse, transport::Error> {
    let bytes = transport.raft(peer, addrs, wire::encode(request)).await?;
    wire::decode(&bytes).map_err(|e| {
        transport.malformed(peer, &e);
        transport::Error::Malformed { peer }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn raft_request_round_trip_and_golden() {
        let req = RaftRequest::ClientWrite(Command::RemoveMember { id: NodeId(9) });
        let bytes = encode(&req);
        assert!(matches!(
            decode::<RaftRequest>(&bytes).unwrap(),
            RaftRequest::ClientWrite(Command::RemoveMember { id: NodeId(9) })
        ));
        // Structs are maps keyed by field name (`81 a2 "id" 09`), so a field appended later is
        // skipped by a build that does not know it.
        assert_eq!(hex(&bytes), "81ab436c69656e74577269746581ac52656d6f76654d656d62657281a2696409");
        // The positional form earlier builds wrote still decodes.
        let old = "81ab436c69656e74577269746581ac52656d6f76654d656d6265729109";
        let old: Vec<u8> = (0..old.len()).step_by(2).map(|i| u8::from_str_radix(&old[i..i + 2], 16).unwrap()).collect();
        assert!(matches!(
            decode::<RaftRequest>(&old).unwrap(),
            RaftRequest::ClientWrite(Command::RemoveMember { id: NodeId(9) })
        ));
        let vote = RaftRequest::Vote(VoteRequest { vote: openraft::Vote::new(2, NodeId(1)), last_log_id: None });
        let back: RaftRequest = decode(&encode(&vote)).unwrap();
        assert!(matches!(back, RaftRequest::Vote(v) if v.vote.leader_id.term == 2));
    }

    #[test]
    fn raft_response_round_trip() {
        let resp = RaftResponse::ClientWrite(Ok(CommandResult::Applied { index: 7 }));
        let back: RaftResponse = decode(&encode(&resp)).unwrap();
        assert!(matches!(back, RaftResponse::ClientWrite(Ok(CommandResult::Applied { index: 7 }))));
    }
}
