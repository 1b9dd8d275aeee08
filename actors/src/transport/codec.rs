//! The request-response codec for Raft RPCs: length-prefixed rmp-serde frames (see `wire`).

use std::io;

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;

use crate::wire::{self, RaftRequest, RaftResponse};

/// Encodes [`RaftRequest`]s and [`RaftResponse`]s, refusing frames over `max_frame`.
#[derive(Clone)]
pub(crate) struct RaftCodec {
    pub(crate) max_frame: usize,
}

impl libp2p::request_response::Codec for RaftCodec {
    type Protocol = StreamProtocol;
    type Request = RaftRequest;
    type Response = RaftResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RaftRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        wire::decode(&wire::read_frame(io, self.max_frame).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RaftResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        wire::decode(&wire::read_frame(io, self.max_frame).await?)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: RaftRequest) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        wire::write_frame(io, &wire::encode(&req)).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: RaftResponse) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        wire::write_frame(io, &wire::encode(&res)).await
    }
}
