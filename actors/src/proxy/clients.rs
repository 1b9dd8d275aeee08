//! What a node serves to non-member clients (`clusterfunk::Client`; docs/architecture.md §9,
//! §13): the shard map pushed on a stream of its own, requests straight to this node's shards,
//! and (for a client that reaches only some nodes) requests this node routes on.
//!
//! A client is not in the Raft configuration, so it cannot ask a member anything but these:
//! it reads the committed map and member addresses (what any node holding the cluster secret
//! could learn by joining), and it sends entity messages, which are fenced exactly as a
//! member's are (`Router::serve_local`). A replica write from a client is refused and the
//! client dropped: only a shard's leader replicates.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::debug;

use super::router::Router;
use crate::consensus::AppliedState;
use crate::shard::ShardMap;
use crate::types::{ClusterName, NodeId};

/// Requests a client sends straight to the owner of their shard.
pub fn client_protocol(cluster: &ClusterName) -> StreamProtocol {
    named(cluster, "client/1")
}

/// Requests a client sends to one node, which routes them on (to the owner, over its own
/// links): for clients that can reach only some nodes.
pub fn gateway_protocol(cluster: &ClusterName) -> StreamProtocol {
    named(cluster, "client-gateway/1")
}

/// The stream a node pushes [`Topology`] frames on.
pub fn topology_protocol(cluster: &ClusterName) -> StreamProtocol {
    named(cluster, "client-map/1")
}

fn named(cluster: &ClusterName, what: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/clusterfunk/{}/{}/{what}", cluster.key, cluster.env))
        .expect("cluster names are validated to [A-Za-z0-9_-]")
}

/// What a client needs to route: the committed shard map and where each member listens. Pushed
/// on every change of either. ONLY APPEND.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The shard map as the sending node applied it ([`ShardMap::encode`]).
    #[serde(with = "serde_bytes")]
    pub map: Vec<u8>,
    /// Every member the map may name.
    pub members: Vec<Endpoint>,
}

/// Where one member listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The node.
    pub node: NodeId,
    /// Its libp2p peer id (base58).
    pub peer_id: String,
    /// Its multiaddresses.
    pub addrs: Vec<String>,
    /// The endpoints it declared (`http`, `grpc`, ..), as committed with its membership.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
    /// The metadata it declared, as committed with its membership.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The members' endpoints in `applied`.
fn endpoints(applied: &AppliedState) -> Vec<Endpoint> {
    applied
        .state
        .members
        .values()
        .filter_map(|m| {
            let peer = m.peer_id?;
            Some(Endpoint {
                node: m.id,
                peer_id: peer.to_base58(),
                addrs: m.addrs.clone(),
                endpoints: m.endpoints.clone(),
                metadata: m.metadata.clone(),
            })
        })
        .collect()
}

impl Topology {
    /// The topology in `applied`.
    pub fn of(applied: &AppliedState) -> Topology {
        Topology { map: applied.state.shard_map.encode(), members: endpoints(applied) }
    }

    /// The map, checked (a frame from the network).
    pub fn shard_map(&self) -> Result<ShardMap, String> {
        ShardMap::decode(&self.map).map_err(|e| e.to_string())
    }

    /// The members that can be dialed: a peer id that parses and names the node it is listed
    /// for (a node id is derived from its key: an entry naming another node's id is dropped),
    /// with the addresses that parse.
    pub fn endpoints(&self) -> Vec<(NodeId, libp2p::PeerId, Vec<libp2p::Multiaddr>)> {
        self.members
            .iter()
            .filter_map(|e| {
                let peer = e.peer_id.parse::<libp2p::PeerId>().ok()?;
                let addrs = e.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                (NodeId::from_peer_bytes(&peer.to_bytes()) == e.node).then_some((e.node, peer, addrs))
            })
            .collect()
    }
}

/// Topology streams served at once; beyond it a new one is closed at once.
pub const MAX_SUBSCRIBERS: usize = 1024;

/// Client request streams served at once per protocol (direct, gateway); beyond it a new one
/// is closed at once. Each may have `inbound_concurrency` requests in flight.
pub const MAX_CLIENT_STREAMS: usize = 1024;

/// Accepts topology streams until the transport stops.
pub(crate) async fn topology_loop(router: Router, mut incoming: libp2p_stream::IncomingStreams) {
    let slots = Arc::new(Semaphore::new(MAX_SUBSCRIBERS));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            router.stats().client_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, max = MAX_SUBSCRIBERS, "too many clients subscribed to the shard map: refused");
            continue;
        };
        let applied = router.applied();
        router.arbiter().spawn(async move {
            push_topology(peer, stream, applied).await;
            drop(permit);
        });
    }
}

/// Writes the topology now and after every change of the map or of a member's address, until
/// the client goes away or the node stops. Changes that come faster than the client reads are
/// coalesced: it always gets the newest.
async fn push_topology(peer: PeerId, mut stream: Stream, mut applied: tokio::sync::watch::Receiver<Arc<AppliedState>>) {
    // What was sent last: the map by its epoch and size (any change of it moves the epoch),
    // the members in full (few and small). Most applied entries (lease grants...) change neither.
    let mut last: Option<((u64, u32), Vec<Endpoint>)> = None;
    loop {
        let frame = {
            let a = applied.borrow_and_update();
            let key = ((a.state.shard_map.epoch().0, a.state.shard_map.shard_count()), endpoints(&a));
            (last.as_ref() != Some(&key))
                .then(|| (Topology { map: a.state.shard_map.encode(), members: key.1.clone() }, key))
        };
        if let Some((topology, key)) = frame {
            let bytes = crate::wire::encode(&topology);
            if let Err(e) = crate::wire::write_frame(&mut stream, &bytes).await {
                debug!(%peer, error = %e, "client topology stream closed");
                return;
            }
            last = Some(key);
        }
        if applied.changed().await.is_err() {
            let _ = stream.close().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The endpoints and metadata are appended: a member without them is encoded as before, and
    /// a topology from a build before them decodes with none.
    #[test]
    fn endpoints_and_metadata_cross_builds() {
        let plain = Endpoint {
            node: NodeId(7),
            peer_id: "p".into(),
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            endpoints: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        #[derive(Serialize)]
        struct Before<'a> {
            node: NodeId,
            peer_id: &'a str,
            addrs: &'a [String],
        }
        let before = crate::wire::encode(&Before { node: plain.node, peer_id: "p", addrs: &plain.addrs });
        assert_eq!(crate::wire::encode(&plain), before, "nothing new on the wire when there is nothing to say");
        assert_eq!(crate::wire::decode::<Endpoint>(&before).unwrap(), plain);
        let full = Endpoint {
            endpoints: BTreeMap::from([("grpc".into(), "10.0.0.1:9000".into())]),
            metadata: BTreeMap::from([("rack".into(), "r1".into())]),
            ..plain
        };
        assert_eq!(crate::wire::decode::<Endpoint>(&crate::wire::encode(&full)).unwrap(), full);
    }
}
