//! The wire format between nodes (docs/architecture.md §9, docs/wire-protocol.md): versioned
//! enums encoded with rmp-serde, framed with a 4-byte big-endian length checked against a limit
//! *before* allocating. This layer knows no protocol above it: the framing here, the gossip
//! enum in [`gossip`] (it depends only on the shared types); the Raft protocol's enums live with
//! consensus (`consensus::rpc`), the proxy's with the proxy (`proxy::Frame`).
//!
//! ONLY APPEND to the protocol enums and their fields: variant order and field order are the
//! protocol.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub mod gossip;

/// The wire protocol version this build speaks, announced at every handshake (identify's agent
/// version, `wire/N`). Version 1: the builds before the exchange (no `wire/` token). Version 2
/// adds the operators' commands to the cluster state (`SetDrained` .. `AbortRebalance`) and
/// their relay (`RaftRequest::Manage`, `ManageResult`, `ReadIndex`). Version 3 adds the instance
/// id to a member's registration (`NodeMeta::name`, which orders the worker index). Version 4 adds
/// shard weights (`SetShardWeights`, and `MemberOp::SetShardWeights` relayed). A leader writes a command
/// only once every node of the Raft configuration announced a version that reads it
/// (`state::Command::since_wire`; docs/operations.md, "Rolling upgrades").
pub const VERSION: u32 = 4;
pub use gossip::{Gossip, Heartbeat};

/// Encodes a message with rmp-serde, structs as maps keyed by field name (docs/wire-protocol.md,
/// "Encoding"): a build that does not know an appended field skips it, and a build that knows it
/// reads its default from a frame without it. Every build decodes both this and the positional
/// arrays that earlier builds wrote, so the change needs no flag day.
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, msg);
    out
}

/// [`encode`], appended to `out`.
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, msg: &T) {
    msg.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .expect("encoding wire types into a Vec cannot fail");
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
