//! openraft's network over the transport: each RPC is one request-response exchange.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use super::rpc::{self, RaftRequest, RaftResponse};
use super::types::{RaftError, RaftNode, RpcError, TypeConfig};
use crate::transport::{self, parse_peer};
use crate::types::NodeId;

/// Makes a [`Conn`] per target node.
pub(crate) struct Network {
    pub(crate) transport: transport::Handle,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> Conn {
        Conn { transport: self.transport.clone(), target, node: node.clone() }
    }
}

/// The RPC client for one target.
pub(crate) struct Conn {
    transport: transport::Handle,
    target: NodeId,
    node: RaftNode,
}

/// The response variant did not match the request.
#[derive(Debug, thiserror::Error)]
#[error("peer answered a raft request with another kind of response")]
struct Mismatch;

// The error types are openraft's, fixed by the `RaftNetwork` trait.
#[allow(clippy::result_large_err)]
impl Conn {
    async fn call<E: std::error::Error>(
        &self,
        req: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftResponse, RpcError<E>> {
        let (peer, addrs) = parse_peer(&self.node.peer_id, &self.node.addrs)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match tokio::time::timeout(option.hard_ttl(), rpc::call(&self.transport, peer, addrs, &req)).await {
            // Unreachable: openraft backs off before trying this target again.
            Ok(Ok(RaftResponse::Refused(why))) => Err(RPCError::Unreachable(Unreachable::new(&why))),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e @ transport::Error::Request { .. })) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Err(e)) => Err(RPCError::Network(NetworkError::new(&e))),
            Err(elapsed) => Err(RPCError::Network(NetworkError::new(&elapsed))),
        }
    }

    fn remote<T, E: std::error::Error>(&self, r: Result<T, RaftError<E>>) -> Result<T, RpcError<E>> {
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        match self.call(RaftRequest::AppendEntries(rpc), &option).await? {
            RaftResponse::AppendEntries(r) => self.remote(r),
            _ => Err(RPCError::Network(NetworkError::new(&Mismatch))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        match self.call(RaftRequest::InstallSnapshot(rpc), &option).await? {
            RaftResponse::InstallSnapshot(r) => self.remote(r),
            _ => Err(RPCError::Network(NetworkError::new(&Mismatch))),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcError> {
        match self.call(RaftRequest::Vote(rpc), &option).await? {
            RaftResponse::Vote(r) => self.remote(r),
            _ => Err(RPCError::Network(NetworkError::new(&Mismatch))),
        }
    }
}
