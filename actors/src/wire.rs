//! The wire format between nodes (DESIGN §7): versioned enums encoded with rmp-serde, framed with
//! a 4-byte big-endian length checked against a limit *before* allocating.
//!
//! ONLY APPEND to these enums and their fields: variant order and field order are the protocol.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::consensus::types::{ClientWriteError, RaftError, TypeConfig};
use crate::state::{Command, CommandResult};
use crate::types::{ClusterName, NodeId, NodeMeta};

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
    Lease(crate::lease::LeaseRequest),
    /// From the leader, which is leaving and has stopped its heartbeats: start an election as
    /// soon as the voters' leader lease allows (leadership handover).
    Elect,
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
    Lease(crate::lease::LeaseReply),
    /// Whether the node will stand for election (it is a voter and the request came from the
    /// leader it knows).
    Elect(bool),
}

/// A gossip message (topic `clusterfunk/<key>/<env>/members`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gossip {
    /// A node announcing itself; sent every heartbeat interval.
    Heartbeat(Heartbeat),
}

/// A node's periodic announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's cluster; messages from another cluster are dropped and counted.
    pub cluster: ClusterName,
    /// The sender's metadata.
    pub meta: NodeMeta,
    /// Increases with every heartbeat of one process run.
    pub seq: u64,
    /// Random per process run: a restart is a new incarnation.
    pub incarnation: u64,
}

/// Encodes a message with rmp-serde.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    rmp_serde::to_vec(msg).expect("encoding wire types into a Vec cannot fail")
}

/// Decodes a message; any failure is `InvalidData`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, FrameError::Decode(e)))
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is over the limit.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The payload does not decode.
    #[error("frame does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Reads one length-prefixed frame of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, FrameError::TooLarge { len, max }));
    }
    // Grow with what arrives rather than allocating `len` up front: a peer announcing 16 MiB
    // frames on many streams and sending nothing would otherwise hold that memory.
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended inside a frame"));
    }
    Ok(buf)
}

/// Writes one length-prefixed frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(bytes.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn heartbeat() -> Gossip {
        Gossip::Heartbeat(Heartbeat {
            cluster: ClusterName::new("shop", "dev"),
            meta: NodeMeta {
                id: NodeId(1),
                peer_id: "p".into(),
                addrs: vec![],
                weight: 1,
                workers: 2,
                zone: None,
                dashboard: None,
            },
            seq: 3,
            incarnation: 4,
        })
    }

    #[test]
    fn gossip_round_trip_and_golden() {
        let bytes = encode(&heartbeat());
        assert_eq!(decode::<Gossip>(&bytes).unwrap(), heartbeat());
        assert_eq!(hex(&bytes), "81a94865617274626561749492a473686f70a36465769701a170900102c0c00304");
    }

    #[test]
    fn raft_request_round_trip_and_golden() {
        let req = RaftRequest::ClientWrite(Command::RemoveMember { id: NodeId(9) });
        let bytes = encode(&req);
        assert!(matches!(
            decode::<RaftRequest>(&bytes).unwrap(),
            RaftRequest::ClientWrite(Command::RemoveMember { id: NodeId(9) })
        ));
        assert_eq!(hex(&bytes), "81ab436c69656e74577269746581ac52656d6f76654d656d6265729109");
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

    #[test]
    fn malformed_and_oversized_frames_are_errors() {
        assert_eq!(decode::<Gossip>(b"\x93\x01").unwrap_err().kind(), io::ErrorKind::InvalidData);
        futures::executor::block_on(async {
            let mut big: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
            let err = read_frame(&mut big, 1024).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let mut out = Vec::new();
            write_frame(&mut out, b"abc").await.unwrap();
            assert_eq!(read_frame(&mut out.as_slice(), 1024).await.unwrap(), b"abc");
            let mut short: &[u8] = &[0, 0, 0, 9, 1];
            assert_eq!(read_frame(&mut short, 1024).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        });
    }
}
