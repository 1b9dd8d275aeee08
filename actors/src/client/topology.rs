//! Following the map one node pushes: connect to a member (any from the last map, else a seed),
//! open its topology stream, and take each map it sends; when the stream ends, follow another.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use rand::seq::SliceRandom;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::swarm::Command;
use super::{Members, Stats, View};
use crate::proxy::clients::Topology;
use crate::transport::seeds::Seeds;
use crate::types::NodeId;

/// Longest pause between two rounds of tries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long opening one node's topology stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct Follow {
    pub(crate) protocol: StreamProtocol,
    pub(crate) control: libp2p_stream::Control,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) connected: mpsc::Receiver<PeerId>,
    pub(crate) seeds: Seeds,
    pub(crate) view: watch::Sender<View>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) max_frame: usize,
}

/// Runs until the client is dropped.
pub(crate) async fn follow(mut f: Follow) {
    let mut backoff = Duration::from_millis(100);
    let mut followed_before = false;
    loop {
        let got_one = match candidates(&f) {
            // The members of the last map, in random order (clients spread over the nodes).
            members if !members.is_empty() => {
                let mut any = false;
                for (node, peer, addrs) in members {
                    let _ = f.commands.try_send(Command::Dial { peer, addrs });
                    if follow_one(&mut f, Some(node), peer, &mut followed_before).await {
                        any = true;
                        break;
                    }
                }
                any
            }
            // No map yet: a seed, whose peer id is learned when it connects.
            _ => {
                for sa in f.seeds.addrs() {
                    let addr = Multiaddr::from(sa.ip()).with(Protocol::Tcp(sa.port()));
                    let _ = f.commands.try_send(Command::DialAddr(addr));
                }
                match tokio::time::timeout(OPEN_TIMEOUT, f.connected.recv()).await {
                    Ok(Some(peer)) => follow_one(&mut f, None, peer, &mut followed_before).await,
                    Ok(None) => return,
                    Err(_) => false,
                }
            }
        };
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
    loop {
        let frame = match crate::wire::read_frame(&mut stream, f.max_frame).await {
            Ok(b) => b,
            Err(e) => {
                debug!(%node, error = %e, "client: topology stream ended");
                return got;
            }
        };
        let parsed = crate::wire::decode::<Topology>(&frame).map_err(|e| e.to_string()).and_then(|t| {
            let map = t.shard_map()?;
            Ok((map, members(&t)))
        });
        let (map, members) = match parsed {
            Ok(p) => p,
            Err(e) => {
                f.stats.malformed.fetch_add(1, Ordering::Relaxed);
                warn!(%node, error = %e, "client: a topology frame that does not decode; following another node");
                return got;
            }
        };
        if !got {
            got = true;
            if *before {
                f.stats.switches.fetch_add(1, Ordering::Relaxed);
            }
            *before = true;
            info!(%node, epoch = map.epoch().0, shards = map.shard_count(), "client: following this node's shard map");
        }
        f.stats.maps.fetch_add(1, Ordering::Relaxed);
        f.view.send_modify(|v| {
            v.from = Some(node);
            // A node that is behind (just switched to) does not take the map back in time.
            if v.map.shard_count() == 0 || map.epoch() >= v.map.epoch() {
                v.map = Arc::new(map);
                v.members = Arc::new(members);
            }
        });
    }
}

fn members(t: &Topology) -> Members {
    t.endpoints().into_iter().map(|(node, peer, addrs)| (node, (peer, addrs))).collect()
}
