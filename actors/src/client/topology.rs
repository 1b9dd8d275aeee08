//! Following the map one node pushes: connect to a member (any from the last map, then the
//! seeds), open its topology stream, and take each map it sends; when the stream ends (or the
//! node's map looks stale: `Staleness`), follow another.
//!
//! The first map of a stream is taken whatever its epoch: the client trusts the node it follows
//! now, not one it followed before (a node that pushed a wrong epoch, or a cluster rebuilt from
//! scratch, would otherwise strand it). Owners fence every request (`Router::serve_local`), so
//! an older map costs `NotOwner` round trips, never a misroute. Within a stream the epoch only
//! grows and the shard count never changes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use rand::seq::SliceRandom;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use super::swarm::Command;
use super::{Attributes, Members, Staleness, Stats, View};
use crate::proxy::clients::Topology;
use crate::transport::seeds::Seeds;
use crate::types::NodeId;

/// Longest pause between two rounds of tries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long opening one node's topology stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// The most members tried in one round before the seeds are.
const MAX_TRIES: usize = 16;

pub(crate) struct Follow {
    pub(crate) protocol: StreamProtocol,
    pub(crate) control: libp2p_stream::Control,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) connected: mpsc::Receiver<PeerId>,
    pub(crate) seeds: Seeds,
    pub(crate) view: watch::Sender<View>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) staleness: Arc<Staleness>,
    pub(crate) gone: broadcast::Sender<PeerId>,
    pub(crate) max_frame: usize,
}

/// Runs until the client is dropped.
pub(crate) async fn follow(mut f: Follow) {
    let mut backoff = Duration::from_millis(100);
    let mut followed_before = false;
    let mut last: Option<NodeId> = None;
    loop {
        // The members of the last map, in random order (clients spread over the nodes), the one
        // just followed last (its map looked stale, or it went away).
        let mut got_one = false;
        let mut members = candidates(&f);
        members.sort_by_key(|(n, _, _)| Some(*n) == last);
        for (node, peer, addrs) in members.into_iter().take(MAX_TRIES) {
            let _ = f.commands.try_send(Command::Dial { peer, addrs });
            if follow_one(&mut f, Some(node), peer, &mut followed_before).await {
                got_one = true;
                last = Some(node);
                break;
            }
        }
        // No map yet, or no member answered (all moved, or a wrong member list): a seed, whose
        // peer id is learned when it connects.
        if !got_one {
            for sa in f.seeds.addrs() {
                let addr = Multiaddr::from(sa.ip()).with(Protocol::Tcp(sa.port()));
                let _ = f.commands.try_send(Command::DialAddr(addr));
            }
            got_one = match tokio::time::timeout(OPEN_TIMEOUT, f.connected.recv()).await {
                Ok(Some(peer)) => {
                    last = Some(NodeId::from_peer_bytes(&peer.to_bytes()));
                    follow_one(&mut f, None, peer, &mut followed_before).await
                }
                Ok(None) => return,
                Err(_) => false,
            };
        }
        if got_one {
            backoff = Duration::from_millis(100);
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn candidates(f: &Follow) -> Vec<(NodeId, PeerId, Vec<Multiaddr>)> {
    let view = f.view.borrow();
    let mut out: Vec<_> = view.members.iter().map(|(n, (p, a))| (*n, *p, a.clone())).collect();
    out.shuffle(&mut rand::thread_rng());
    out
}

/// Follows `peer`'s pushed maps until its stream ends; whether at least one map came.
async fn follow_one(f: &mut Follow, node: Option<NodeId>, peer: PeerId, before: &mut bool) -> bool {
    // Drain what connected meanwhile: the next seed round waits for a fresh connection.
    while f.connected.try_recv().is_ok() {}
    let node = node.unwrap_or_else(|| NodeId::from_peer_bytes(&peer.to_bytes()));
    let mut stream = match tokio::time::timeout(OPEN_TIMEOUT, f.control.open_stream(peer, f.protocol.clone())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%node, error = %e, "client: cannot open the topology stream");
            return false;
        }
        Err(_) => return false,
    };
    let mut got = false;
    let mut shards = None;
    let mut gone = f.gone.subscribe();
    let lost = async move {
        loop {
            match gone.recv().await {
                Ok(p) if p == peer => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => std::future::pending::<()>().await,
            }
        }
    };
    tokio::pin!(lost);
    loop {
        let read = tokio::select! {
            r = crate::wire::read_frame(&mut stream, f.max_frame) => r,
            _ = &mut lost => {
                debug!(%node, "client: disconnected from the node it follows");
                return got;
            }
            _ = f.staleness.refollow.notified() => {
                warn!(%node, "client: the map this node pushes looks stale (many NotOwner answers, no new map); following another node");
                return got;
            }
        };
        let frame = match read {
            Ok(b) => b,
            Err(e) => {
                debug!(%node, error = %e, "client: topology stream ended");
                return got;
            }
        };
        let parsed = crate::wire::decode::<Topology>(&frame).map_err(|e| e.to_string()).and_then(|t| {
            let map = t.shard_map()?;
            let members = members(&t);
            let attributes = attributes(&t, &members);
            Ok((map, members, attributes))
        });
        let (map, members, attributes) = match parsed {
            Ok(p) => p,
            Err(e) => {
                f.stats.malformed.fetch_add(1, Ordering::Relaxed);
                warn!(%node, error = %e, "client: a topology frame that does not decode; following another node");
                return got;
            }
        };
        if *shards.get_or_insert(map.shard_count()) != map.shard_count() {
            f.stats.malformed.fetch_add(1, Ordering::Relaxed);
            warn!(%node, shards = map.shard_count(), "client: a node changed the shard count of its map; following another node");
            return got;
        }
        let first = !got;
        if !got {
            got = true;
            if *before {
                f.stats.switches.fetch_add(1, Ordering::Relaxed);
            }
            *before = true;
            info!(%node, epoch = map.epoch().0, shards = map.shard_count(), "client: following this node's shard map");
        }
        f.stats.maps.fetch_add(1, Ordering::Relaxed);
        f.staleness.map_came();
        // Requests waiting for a new map wake only when something changed.
        f.view.send_if_modified(|v| {
            let mut changed = v.from != Some(node);
            v.from = Some(node);
            let same = *v.members == members && *v.attributes == attributes;
            if first || map.epoch() > v.map.epoch() || (map.epoch() == v.map.epoch() && !same) {
                changed |= *v.map != map || !same;
                v.map = Arc::new(map);
                v.members = Arc::new(members);
                v.attributes = Arc::new(attributes);
            }
            changed
        });
    }
}

fn members(t: &Topology) -> Members {
    t.endpoints().into_iter().map(|(node, peer, addrs)| (node, (peer, addrs))).collect()
}

/// The declared endpoints and metadata of the members `members` kept (an entry whose peer id
/// does not name its node is dropped there, and so here).
fn attributes(t: &Topology, members: &Members) -> Attributes {
    t.members
        .iter()
        .filter(|e| members.contains_key(&e.node))
        .map(|e| (e.node, (e.endpoints.clone(), e.metadata.clone())))
        .collect()
}
