//! The request-response codec for Raft RPCs: length-prefixed rmp-serde frames (see `wire`).

use std::io;

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;

use crate::wire::{self, RaftRequest, RaftResponse};

/// An inbound request as the codec read it.
///
/// A frame that is malformed or over the limit is *delivered* as `Malformed` rather than
/// returned as a read error: libp2p's request-response drops read errors of inbound requests
/// with a debug log and no peer id, and we must count the frame and drop that peer.
#[derive(Debug)]
pub(crate) enum Inbound {
    Request(RaftRequest),
    Malformed(io::Error),
}

/// Encodes [`RaftRequest`]s and [`RaftResponse`]s, refusing frames over `max_frame`.
#[derive(Clone)]
pub(crate) struct RaftCodec {
    pub(crate) max_frame: usize,
}

impl libp2p::request_response::Codec for RaftCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound;
    type Response = RaftResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Inbound>
    where
        T: AsyncRead + Unpin + Send,
    {
        match wire::read_frame(io, self.max_frame).await.and_then(|f| wire::decode(&f)) {
            Ok(req) => Ok(Inbound::Request(req)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Inbound::Malformed(e)),
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RaftResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        wire::decode(&wire::read_frame(io, self.max_frame).await?)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Inbound) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Inbound::Request(req) => wire::write_frame(io, &wire::encode(&req)).await,
            Inbound::Malformed(_) => {
                Err(io::Error::new(io::ErrorKind::InvalidInput, "a malformed request is never sent"))
            }
        }
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: RaftResponse) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        wire::write_frame(io, &wire::encode(&res)).await
    }
}
