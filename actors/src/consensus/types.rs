//! openraft type configuration and aliases for its deeply generic types.

use serde::{Deserialize, Serialize};

use crate::state::{Command, CommandResult};
use crate::types::NodeId;

/// How Raft reaches a node: its libp2p peer id and addresses.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct RaftNode {
    /// The libp2p peer id (`None`: not known); base58 text on disk and on the wire.
    #[serde(with = "crate::types::peer_text")]
    pub peer_id: Option<libp2p::PeerId>,
    /// Multiaddresses to dial.
    pub addrs: Vec<String>,
}

openraft::declare_raft_types!(
    /// clusterfunk's Raft types: `ClusterState` commands over `NodeId`s.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = RaftNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = super::snapshot::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// Stored membership.
pub type StoredMembership = openraft::StoredMembership<NodeId, RaftNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, RaftNode>;
/// Raft metrics.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, RaftNode>;

/// On the leader: the last log index `id`'s replication has matched (`None`: nothing yet, or this
/// node does not lead).
pub fn matched_index(m: &RaftMetrics, id: NodeId) -> Option<u64> {
    m.replication.as_ref()?.get(&id).copied().flatten().map(|l| l.index)
}
/// A Raft error with an API-specific part.
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
/// `client_write`'s API error.
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, RaftNode>;
/// An RPC error as the network reports it.
pub type RpcError<E = openraft::error::Infallible> = openraft::error::RPCError<NodeId, RaftNode, RaftError<E>>;
