//! The request-response codec for Raft RPCs: length-prefixed frames (see `wire`), carried as
//! bytes; the Raft protocol above decodes them (`consensus::rpc`).

use std::io;

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;

use crate::wire;

/// An inbound request as the codec read it.
///
/// A frame that is malformed or over the limit is *delivered* as `Malformed` rather than
/// returned as a read error: libp2p's request-response drops read errors of inbound requests
/// with a debug log and no peer id, and we must count the frame and drop that peer.
#[derive(Debug)]
pub(crate) enum Inbound {
    Request(Vec<u8>),
    Malformed(io::Error),
}

/// Frames Raft requests and responses, refusing frames over `max_frame`.
#[derive(Clone)]
pub(crate) struct RaftCodec {
    pub(crate) max_frame: usize,
}

impl libp2p::request_response::Codec for RaftCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Inbound>
    where
        T: AsyncRead + Unpin + Send,
    {
        match wire::read_frame(io, self.max_frame).await {
            Ok(req) => Ok(Inbound::Request(req)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Inbound::Malformed(e)),
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        wire::read_frame(io, self.max_frame).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Inbound) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Inbound::Request(req) => wire::write_frame(io, &req).await,
            Inbound::Malformed(_) => {
                Err(io::Error::new(io::ErrorKind::InvalidInput, "a malformed request is never sent"))
            }
        }
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        wire::write_frame(io, &res).await
    }
}
