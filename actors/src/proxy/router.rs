//! The router handle: where each message goes, and the remote path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::ArbiterHandle;
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{watch, Semaphore};
use tracing::warn;

use super::frame::{Envelope, Refusal};
use super::link::Link;
use super::{Config, Dispatch, Error};
use crate::consensus::{AppliedState, MapView};
use crate::serving::Ownership;
use crate::shard::ShardMap;
use crate::transport::{self, parse_peer};
use crate::types::{Epoch, NodeId, ShardId};

/// Where a message for a shard goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node owns the shard.
    Local,
    /// Another node owns it.
    Remote(NodeId),
    /// Nobody owns it yet: wait for the map to change.
    Wait,
}

/// The route for `shard` on node `local` under `map`. Pure.
#[inline]
pub fn route(map: &ShardMap, local: NodeId, shard: ShardId) -> Route {
    match map.owner(shard) {
        Some(o) if o == local => Route::Local,
        Some(o) => Route::Remote(o),
        None => Route::Wait,
    }
}

/// Proxy counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages delivered to entities on this node without encoding.
    pub local: AtomicU64,
    /// Messages sent to other nodes.
    pub forwarded: AtomicU64,
    /// Messages from other nodes served here.
    pub served: AtomicU64,
    /// Messages refused or failed (any reason).
    pub failed: AtomicU64,
    /// Malformed frames from peers (each closed its stream and dropped the peer).
    pub malformed: AtomicU64,
    /// Requests that arrived twice on one stream (same id) and were answered once.
    pub duplicates: AtomicU64,
    /// Streams refused because their peer is not in the Raft configuration (docs/architecture.md §13).
    pub unauthorized: AtomicU64,
    /// Requests from other nodes refused `Overloaded` because this node already ran its
    /// maximum of inbound requests per stream.
    pub inbound_full: AtomicU64,
    /// Requests from non-member clients (direct and through this node as gateway).
    pub client_requests: AtomicU64,
    /// Client streams refused: over the subscriber limit, or a client's replica write.
    pub client_refused: AtomicU64,
}

struct Inner {
    local: NodeId,
    cfg: Config,
    protocol: StreamProtocol,
    map: MapView,
    applied: watch::Receiver<Arc<AppliedState>>,
    transport: transport::Handle,
    control: tokio::sync::Mutex<libp2p_stream::Control>,
    links: Mutex<HashMap<NodeId, Link>>,
    dispatch: Arc<dyn Dispatch>,
    ownership: Arc<Ownership>,
    arbiter: ArbiterHandle,
    waiting: Arc<Semaphore>,
    stats: Stats,
    metrics: crate::metrics::Metrics,
}

/// The shard router. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

/// The name a failure is counted under (`clusterfunk_proxy_failures_total{reason}`).
fn reason(e: &Error) -> &'static str {
    match e {
        Error::Refused(r) => match r {
            Refusal::NotOwner { .. } => "not_owner",
            Refusal::UnknownEntity(_) => "unknown_entity",
            Refusal::UnknownMessage(_) => "unknown_message",
            Refusal::Malformed(_) => "malformed",
            Refusal::EntityFailed => "entity_failed",
            Refusal::Overloaded => "owner_overloaded",
            Refusal::WrongShard { .. } => "wrong_shard",
            _ => "refused",
        },
        Error::QueueFull { .. } => "queue_full",
        Error::Timeout { .. } => "timeout",
        Error::Unreachable { .. } => "unreachable",
        Error::ConnectionLost { .. } => "connection_lost",
        Error::NoOwner { .. } => "no_owner",
        Error::Overloaded => "overloaded",
        Error::TooLarge { .. } => "too_large",
        Error::Closed => "closed",
    }
}

impl Router {
    /// Starts the router: accepts inbound proxy streams on `arbiter` and serves them with
    /// `dispatch`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        local: NodeId,
        cfg: Config,
        cluster: &crate::types::ClusterName,
        map: MapView,
        applied: watch::Receiver<Arc<AppliedState>>,
        transport: transport::Handle,
        dispatch: Arc<dyn Dispatch>,
        ownership: Arc<Ownership>,
        arbiter: ArbiterHandle,
        metrics: crate::metrics::Metrics,
    ) -> Router {
        let protocol = super::protocol(cluster);
        let mut control = transport.streams();
        let incoming = control.accept(protocol.clone());
        let clients = cfg.accept_clients.then(|| {
            [
                control.accept(super::clients::client_protocol(cluster)),
                control.accept(super::clients::gateway_protocol(cluster)),
                control.accept(super::clients::topology_protocol(cluster)),
            ]
        });
        let router = Router {
            inner: Arc::new(Inner {
                local,
                waiting: Arc::new(Semaphore::new(cfg.max_waiting)),
                cfg,
                protocol,
                map,
                applied,
                transport,
                control: tokio::sync::Mutex::new(control),
                links: Mutex::new(HashMap::new()),
                dispatch,
                ownership,
                arbiter: arbiter.clone(),
                stats: Stats::default(),
                metrics,
            }),
        };
        use super::inbound::Peer;
        match incoming {
            Ok(incoming) => {
                arbiter.spawn(super::inbound::accept_loop(router.clone(), incoming, Peer::Member));
            }
            Err(e) => warn!(error = %e, "proxy protocol already registered; inbound proxy streams are not served"),
        }
        if let Some([direct, gateway, topology]) = clients {
            match (direct, gateway, topology) {
                (Ok(direct), Ok(gateway), Ok(topology)) => {
                    arbiter.spawn(super::inbound::accept_loop(router.clone(), direct, Peer::Client));
                    arbiter.spawn(super::inbound::accept_loop(router.clone(), gateway, Peer::Gateway));
                    arbiter.spawn(super::clients::topology_loop(router.clone(), topology));
                }
                _ => warn!("client protocols already registered; clients are not served"),
            }
        }
        router
    }

    /// Messages waiting now for their shard to get an owner (at most the configured
    /// `max_waiting`).
    pub fn waiting(&self) -> usize {
        self.inner.cfg.max_waiting.saturating_sub(self.inner.waiting.available_permits())
    }

    /// This node.
    pub fn local(&self) -> NodeId {
        self.inner.local
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub(crate) fn arbiter(&self) -> &ArbiterHandle {
        &self.inner.arbiter
    }

    pub(crate) fn applied(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.inner.applied.clone()
    }

    /// Sends an encoded message to its shard's owner (this node included) and returns the
    /// encoded result, stamped with the shard's epoch in this node's map. Waits (bounded by the
    /// route wait) while the shard has no owner (a handoff in progress, a failover); on `NotOwner`
    /// (the owner is activating, its lease lapsed, or one of the two maps is behind) or an
    /// unreachable owner, waits for a newer map or a moment and retries.
    pub async fn request(&self, env: Envelope) -> Result<Vec<u8>, Error> {
        self.request_within(env, None).await
    }

    /// [`Self::request`] within `timeout` overall when given (routing, retries and the request
    /// itself; each request to a node is cut to what is left of it), else within the route wait
    /// plus the request timeout. Out of time before it was sent: `NoOwner`; after: `Timeout`.
    pub async fn request_within(&self, env: Envelope, timeout: Option<Duration>) -> Result<Vec<u8>, Error> {
        let result = self.route_request(env, timeout).await;
        if let Err(e) = &result {
            // Every failure, the route wait's (no owner, overloaded) included.
            self.count_failure(e);
        }
        result
    }

    /// Counts a failed send (`traffic.failed`, `clusterfunk_proxy_failures_total{reason}`): for
    /// callers that delivered without [`Self::request`] (the local fast path).
    pub fn count_failure(&self, e: &Error) {
        self.inner.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.proxy_failed(reason(e));
    }

    async fn route_request(&self, mut env: Envelope, timeout: Option<Duration>) -> Result<Vec<u8>, Error> {
        let start = Instant::now();
        let wait = timeout.unwrap_or(self.inner.cfg.route_wait);
        let mut map = self.inner.map.clone();
        let mut refusals = 0u32;
        let result = loop {
            let r = {
                let m = map.borrow_and_update();
                env.epoch = m.shard_epoch(env.shard);
                route(&m, self.inner.local, env.shard)
            };
            // With a deadline, each try gets what is left of it.
            let hop = match timeout {
                Some(t) => t.saturating_sub(start.elapsed()).max(Duration::from_millis(1)),
                None => self.inner.cfg.request_timeout,
            };
            let attempt = match r {
                // Without a deadline a local handler may take as long as it takes (as before).
                Route::Local if timeout.is_none() => self.deliver_local(env.clone()).await,
                Route::Local => match tokio::time::timeout(hop, self.deliver_local(env.clone())).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout { node: self.inner.local, timeout: hop }),
                },
                Route::Remote(node) => self.remote(node, &env, hop.min(self.inner.cfg.request_timeout)).await,
                Route::Wait => {
                    self.wait_for_map(&mut map, start, wait, env.shard, None).await?;
                    continue;
                }
            };
            match attempt {
                Err(Error::Refused(Refusal::NotOwner { .. })) if start.elapsed() < wait => {
                    refusals += 1;
                    // The receiver may be ahead of us or behind, or about to serve: wait a little.
                    let nap = Duration::from_millis((2u64 << refusals.min(6)).min(100));
                    self.wait_for_map(&mut map, start, wait, env.shard, Some(nap)).await?;
                }
                Err(Error::Unreachable { .. }) if start.elapsed() < wait => {
                    // Not sent: the owner may be down; a new map will move the shard.
                    self.wait_for_map(&mut map, start, wait, env.shard, Some(Duration::from_millis(200))).await?;
                }
                other => break other,
            }
        };
        result
    }

    /// Waits for the map to change, at most until the route wait runs out (then `NoOwner`), or
    /// for `nap` if given (then returns normally).
    async fn wait_for_map(
        &self,
        map: &mut MapView,
        start: Instant,
        wait: Duration,
        shard: ShardId,
        nap: Option<Duration>,
    ) -> Result<(), Error> {
        let Ok(_permit) = self.inner.waiting.clone().try_acquire_owned() else {
            return Err(Error::Overloaded);
        };
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(Error::NoOwner { shard, waited: start.elapsed() });
        }
        match tokio::time::timeout(nap.map_or(left, |n| n.min(left)), map.changed()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) if nap.is_some() && start.elapsed() < wait => Ok(()),
            Err(_) => Err(Error::NoOwner { shard, waited: start.elapsed() }),
        }
    }

    /// Sends `env` as it is (its epoch included) to `node`, without routing or retries: for
    /// messages to a shard's followers, and for tests of fencing.
    pub async fn request_to(&self, node: NodeId, env: &Envelope) -> Result<Vec<u8>, Error> {
        if node == self.inner.local {
            // `serve_local` counts its own failures (as served here).
            return self.serve_local(env.clone()).await.map_err(Error::Refused);
        }
        let result = self.remote(node, env, self.inner.cfg.request_timeout).await;
        if let Err(e) = &result {
            self.count_failure(e);
        }
        result
    }

    /// Whether this node serves `shard` right now (lease valid, shard active): a caller may then
    /// deliver locally without the router.
    #[inline]
    pub fn serving(&self, shard: ShardId) -> bool {
        self.inner.ownership.serving_epoch(shard).is_some()
    }

    /// The epoch this node serves `shard` at right now, if it does (lease valid, shard active).
    pub fn serving_epoch(&self, shard: ShardId) -> Option<Epoch> {
        self.inner.ownership.serving_epoch(shard)
    }

    /// The shard of `env`'s key, if this node can tell ([`Dispatch::key_shard`]).
    pub(crate) fn key_shard(&self, env: &Envelope) -> Option<ShardId> {
        self.inner.dispatch.key_shard(env)
    }

    async fn deliver_local(&self, mut env: Envelope) -> Result<Vec<u8>, Error> {
        env.epoch = self
            .inner
            .ownership
            .check(env.shard, env.epoch, || self.inner.map.borrow().clone())
            .map_err(Error::Refused)?;
        self.inner.dispatch.dispatch(env).await.map_err(Error::Refused)
    }

    async fn remote(&self, node: NodeId, env: &Envelope, timeout: Duration) -> Result<Vec<u8>, Error> {
        let link = self.link(node).await?;
        let (id, rx) = link.send(env)?;
        // Whatever ends this call (an answer, the timeout, or the caller dropping it) frees the
        // request's slot: a dropped `send` must not hold it until the link dies.
        let _slot = link.slot(id);
        self.inner.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => {
                self.inner.metrics.proxy_latency_seconds.observe(sent.elapsed().as_secs_f64());
                r.map_err(Error::Refused)
            }
            Ok(Err(_)) => Err(Error::ConnectionLost { node }),
            Err(_) => Err(Error::Timeout { node, timeout }),
        }
    }

    /// Requests sent to other nodes and not answered yet, over every link.
    #[doc(hidden)]
    pub fn pending_requests(&self) -> usize {
        self.inner.links.lock().expect("links lock is never poisoned").values().map(|l| l.pending()).sum()
    }

    async fn link(&self, node: NodeId) -> Result<Link, Error> {
        if let Some(l) = self.live_link(node) {
            return Ok(l);
        }
        let (peer, addrs) = self.peer_of(node)?;
        let mut control = self.inner.control.lock().await;
        if let Some(l) = self.live_link(node) {
            return Ok(l);
        }
        let _ = self.inner.transport.dial(peer, addrs);
        let open = control.open_stream(peer, self.inner.protocol.clone());
        let stream = match tokio::time::timeout(self.inner.cfg.request_timeout, open).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(Error::Unreachable { node, reason: "cannot open a proxy stream" }),
            Err(_) => return Err(Error::Unreachable { node, reason: "timed out opening a proxy stream" }),
        };
        let faults = self.inner.transport.faults().clone();
        let link = Link::start(node, stream, &self.inner.cfg, faults, &self.inner.arbiter);
        self.inner.links.lock().expect("links lock is never poisoned").insert(node, link.clone());
        Ok(link)
    }

    fn live_link(&self, node: NodeId) -> Option<Link> {
        self.inner.links.lock().expect("links lock is never poisoned").get(&node).filter(|l| l.is_alive()).cloned()
    }

    fn peer_of(&self, node: NodeId) -> Result<(PeerId, Vec<libp2p::Multiaddr>), Error> {
        let applied = self.inner.applied.borrow();
        let meta = applied.state.members.get(&node).ok_or(Error::Unreachable { node, reason: "not a member" })?;
        parse_peer(&meta.peer_id, &meta.addrs).map_err(|_| Error::Unreachable { node, reason: "bad peer id" })
    }

    /// Serves a message that arrived from a peer: refuses it unless this node serves the shard
    /// now (lease valid, shard active) at an epoch no newer than the message's.
    pub(crate) async fn serve_local(&self, mut env: Envelope) -> Result<Vec<u8>, Refusal> {
        let admitted = if env.replica {
            self.inner.ownership.check_replica(env.shard, env.epoch).map(|_| env.epoch)
        } else {
            self.inner.ownership.check(env.shard, env.epoch, || self.inner.map.borrow().clone())
        };
        match admitted {
            // From here on the envelope carries the epoch it was admitted under: the entity
            // host checks it again when the handler runs.
            Ok(epoch) => env.epoch = epoch,
            Err(r) => {
                self.inner.stats.failed.fetch_add(1, Ordering::Relaxed);
                return Err(r);
            }
        }
        let result = self.inner.dispatch.dispatch(env).await;
        let counter = if result.is_ok() { &self.inner.stats.served } else { &self.inner.stats.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Whether `peer` is in the Raft configuration this node applied (voter or learner): only
    /// members may send entity messages (docs/architecture.md §13).
    pub(crate) fn authorize(&self, peer: &PeerId) -> bool {
        let applied = self.inner.applied.borrow();
        let member = crate::consensus::authorize::sender(peer, applied.membership.membership().nodes(), |_| false);
        let ok = matches!(member, crate::consensus::authorize::Sender::Member(_));
        if !ok {
            self.inner.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "proxy stream from a peer outside the raft configuration refused");
        }
        ok
    }

    pub(crate) fn malformed(&self, peer: PeerId, error: &dyn std::fmt::Display) {
        self.inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, %error, "malformed proxy frame: dropping the peer");
        self.inner.transport.disconnect(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Assignment;
    use crate::types::Epoch;

    #[test]
    fn routes() {
        let mut map = ShardMap::new(3, 1);
        map.assign(ShardId(0), &Assignment { owner: Some(NodeId(1)), replicas: vec![] }, Epoch(1));
        map.assign(ShardId(1), &Assignment { owner: Some(NodeId(2)), replicas: vec![] }, Epoch(1));
        assert_eq!(route(&map, NodeId(1), ShardId(0)), Route::Local);
        assert_eq!(route(&map, NodeId(1), ShardId(1)), Route::Remote(NodeId(2)));
        assert_eq!(route(&map, NodeId(1), ShardId(2)), Route::Wait);
        assert_eq!(route(&map, NodeId(1), ShardId(9)), Route::Wait);
    }
}
