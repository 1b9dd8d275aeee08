//! A non-member client of a cluster (docs/architecture.md §9, §13): it follows the shard map one
//! node pushes to it and sends each request straight to the owner of its shard, over one pooled
//! stream per owner.
//!
//! The client runs its own small libp2p swarm (identify and streams; no gossip, no Raft, no
//! mDNS) on a thread of its own, so it can be used from any tokio runtime, actix's included.
//! A node's answer `NotOwner` names the owner it knows of and that owner's epoch: the client
//! tries that owner if its epoch is newer than the map's, else waits for the next map (pushed)
//! or a moment, and sends again, until the route wait runs out. Every request ends in an
//! answer or a typed error; a node serves a client's request only while it serves the shard
//! (`Router::serve_local`), so a stale map is corrected, never followed silently.

mod swarm;
mod topology;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::faults::MessageFaults;
use crate::proxy::{self, clients, Envelope, Error, Refusal};
use crate::shard::ShardMap;
use crate::types::{ClusterName, Epoch, NodeId};

/// Client settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster.
    pub cluster: ClusterName,
    /// Nodes to ask for the map first, as `host:port` (DNS names are resolved off the event
    /// loop and again every few seconds). After the first map the client knows every member.
    pub seeds: Vec<String>,
    /// Other discovery sources, run like the seeds.
    pub discovery: crate::transport::seeds::Sources,
    /// The cluster secret, if the cluster has one.
    pub secret: Option<[u8; 32]>,
    /// Timeouts, queues and frame limits (the proxy's; `request_timeout` per hop,
    /// `route_wait` for a shard's owner).
    pub proxy: proxy::Config,
    /// Send every request to the node the map comes from, which routes it on, instead of
    /// straight to the owner: for a client that can reach only some nodes. Default false.
    pub gateway: bool,
    /// How long [`Client::connect`] waits for the first map. Default 10 s.
    pub connect_timeout: Duration,
}

impl Config {
    /// Defaults for `cluster`, asking `seeds` first.
    pub fn new(cluster: ClusterName, seeds: Vec<String>) -> Config {
        Config {
            cluster,
            seeds,
            discovery: Default::default(),
            secret: None,
            proxy: proxy::Config::default(),
            gateway: false,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No seed was given.
    #[error("seeds: a client needs at least one node address (host:port)")]
    NoSeeds,
    /// The swarm could not be built.
    #[error("cannot build the client's libp2p swarm: {0}")]
    Build(String),
    /// No node sent a shard map in time.
    #[error("no node of {cluster} sent a shard map within {waited:?} (seeds: {seeds}); is a node listening there, with this cluster name and secret?")]
    NoMap {
        /// The cluster.
        cluster: ClusterName,
        /// How long it waited.
        waited: Duration,
        /// What is known of each seed.
        seeds: String,
    },
}

/// Client counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests sent (first tries and retries).
    pub sent: AtomicU64,
    /// Requests answered `NotOwner` (each retried while the route wait lasts).
    pub not_owner: AtomicU64,
    /// Maps received from the node the client follows.
    pub maps: AtomicU64,
    /// Times the client started following another node (the one before went away).
    pub switches: AtomicU64,
    /// Frames from a node that did not decode, or a map that changed the shard count (the
    /// stream was dropped).
    pub malformed: AtomicU64,
    /// Times the followed node's map looked stale (many `NotOwner` answers, no new map) and the
    /// client followed another node.
    pub stale: AtomicU64,
}

/// Where each member listens, from the last topology.
pub(crate) type Members = HashMap<NodeId, (PeerId, Vec<Multiaddr>)>;

/// Each member's declared endpoints and metadata, from the last topology.
pub type Attributes = HashMap<NodeId, (BTreeMap<String, String>, BTreeMap<String, String>)>;

/// What the client follows: the newest map, the members, and the node it came from.
#[derive(Clone, Default)]
pub(crate) struct View {
    pub(crate) map: Arc<ShardMap>,
    pub(crate) members: Arc<Members>,
    pub(crate) attributes: Arc<Attributes>,
    pub(crate) from: Option<NodeId>,
}

/// `NotOwner` answers since the last map came that make the client follow another node, when
/// that map is older than [`STALE_AFTER`]: the node it follows is behind (cut off from the
/// Raft majority, or lying), so its map is not what the owners serve.
const STALE_REFUSALS: u64 = 16;
const STALE_AFTER: Duration = Duration::from_secs(3);

/// When the followed node's map looks stale: counted refusals, and when the last map came.
pub(crate) struct Staleness {
    refusals: AtomicU64,
    last_map: Mutex<Instant>,
    /// Wakes the follow loop to drop its stream and follow another node.
    pub(crate) refollow: tokio::sync::Notify,
}

impl Staleness {
    fn new() -> Staleness {
        Staleness { refusals: AtomicU64::new(0), last_map: Mutex::new(Instant::now()), refollow: Default::default() }
    }

    /// A map came from the followed node.
    pub(crate) fn map_came(&self) {
        self.refusals.store(0, Ordering::Relaxed);
        *self.last_map.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// A node answered `NotOwner`; whether the client should follow another node now.
    fn refused(&self) -> bool {
        let n = self.refusals.fetch_add(1, Ordering::Relaxed) + 1;
        let old = self.last_map.lock().unwrap_or_else(|e| e.into_inner()).elapsed() >= STALE_AFTER;
        if n >= STALE_REFUSALS && old {
            self.refusals.store(0, Ordering::Relaxed);
            // Only a follow loop reading now is woken: no permit is kept for a stream not open yet.
            self.refollow.notify_waiters();
            return true;
        }
        false
    }
}

struct Inner {
    cfg: Config,
    view: watch::Receiver<View>,
    control: libp2p_stream::Control,
    links: Mutex<HashMap<(NodeId, bool), proxy::link::Link>>,
    /// One link open at a time per node (others wait for it, not for every node's).
    opening: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    staleness: Arc<Staleness>,
    swarm: mpsc::Sender<swarm::Command>,
    arbiter: actix::ArbiterHandle,
    waiting: Arc<Semaphore>,
    faults: Arc<MessageFaults>,
    stats: Arc<Stats>,
    seeds: crate::transport::seeds::Seeds,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
    }
}

/// Gives up the links to each node the swarm lost (until the client is dropped).
async fn give_up_links(inner: std::sync::Weak<Inner>, mut gone: tokio::sync::broadcast::Receiver<PeerId>) {
    loop {
        let peer = match gone.recv().await {
            Ok(p) => p,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        let node = NodeId::from_peer_bytes(&peer.to_bytes());
        let mut links = inner.links.lock().expect("links lock is never poisoned");
        links.retain(|(n, _), l| {
            if *n == node {
                l.kill();
            }
            *n != node
        });
    }
}

/// A connected client. Cheap to clone; the connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Starts the client's thread and swarm, and waits for the first shard map from one of the
    /// seeds.
    pub async fn connect(cfg: Config) -> Result<Client, ConnectError> {
        if cfg.seeds.is_empty() && cfg.discovery.is_empty() {
            return Err(ConnectError::NoSeeds);
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread_cfg = cfg.clone();
        std::thread::Builder::new()
            .name("clusterfunk-client".into())
            .spawn(move || {
                let system = actix::System::new();
                system.block_on(async move {
                    let arbiter = actix::Arbiter::current();
                    let started = swarm::start(&thread_cfg, &arbiter);
                    let ok = started.is_ok();
                    let _ = ready_tx.send(started.map(|s| (s, arbiter)));
                    if ok {
                        let _ = stop_rx.await;
                    }
                });
            })
            .map_err(|e| ConnectError::Build(e.to_string()))?;
        let (started, arbiter) =
            ready_rx.await.map_err(|_| ConnectError::Build("the client thread stopped".into()))??;
        let swarm::Started { commands, control, connected, gone } = started;
        let (view_tx, view) = watch::channel(View::default());
        let stats = Arc::new(Stats::default());
        let seeds = crate::transport::seeds::spawn(cfg.discovery.with_seeds(&cfg.seeds), &arbiter);
        let staleness = Arc::new(Staleness::new());
        let inner = Arc::new(Inner {
            waiting: Arc::new(Semaphore::new(cfg.proxy.max_waiting)),
            cfg: cfg.clone(),
            view,
            control: control.clone(),
            links: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            staleness: staleness.clone(),
            swarm: commands.clone(),
            arbiter: arbiter.clone(),
            faults: Arc::new(MessageFaults::new(None)),
            stats: stats.clone(),
            seeds: seeds.clone(),
            stop: Mutex::new(Some(stop_tx)),
        });
        arbiter.spawn(give_up_links(Arc::downgrade(&inner), gone.subscribe()));
        arbiter.spawn(topology::follow(topology::Follow {
            protocol: clients::topology_protocol(&cfg.cluster),
            control,
            commands,
            connected,
            seeds,
            view: view_tx,
            stats,
            staleness,
            gone,
            max_frame: 16 << 20,
        }));
        let client = Client { inner };
        let mut view = client.inner.view.clone();
        let first = tokio::time::timeout(cfg.connect_timeout, view.wait_for(|v| v.map.shard_count() > 0)).await;
        match first {
            Ok(Ok(_)) => Ok(client),
            _ => Err(ConnectError::NoMap {
                cluster: cfg.cluster.clone(),
                waited: cfg.connect_timeout,
                seeds: client.seed_report(),
            }),
        }
    }

    fn seed_report(&self) -> String {
        let seeds = self.inner.seeds.status();
        if seeds.is_empty() {
            return "none resolved yet".into();
        }
        seeds
            .iter()
            .map(|s| match &s.error {
                Some(e) => format!("{}: {e}", s.seed),
                None => format!("{} -> {:?}", s.seed, s.addrs),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The newest shard map the client has.
    pub fn map(&self) -> Arc<ShardMap> {
        self.inner.view.borrow().map.clone()
    }

    /// Waits until the newest map satisfies `pred` and returns it (an error: the client stopped).
    pub async fn wait_for_map(&self, pred: impl Fn(&ShardMap) -> bool) -> Result<Arc<ShardMap>, Error> {
        let mut view = self.inner.view.clone();
        let v = view.wait_for(|v| pred(&v.map)).await.map_err(|_| Error::Closed)?;
        Ok(v.map.clone())
    }

    /// The node whose pushed map the client follows now.
    pub fn following(&self) -> Option<NodeId> {
        self.inner.view.borrow().from
    }

    /// The endpoints and metadata each member declared, as the last topology gave them.
    pub fn attributes(&self) -> Arc<Attributes> {
        self.inner.view.borrow().attributes.clone()
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Sends an encoded message for `env.shard` and returns the encoded answer: to the shard's
    /// owner, retried on `NotOwner` and an unreachable owner until the route wait (or `timeout`,
    /// when shorter) runs out; through the gateway when configured so.
    pub async fn request(&self, mut env: Envelope, timeout: Option<Duration>) -> Result<Vec<u8>, Error> {
        let start = Instant::now();
        let cfg = &self.inner.cfg.proxy;
        let wait = timeout.unwrap_or(cfg.route_wait);
        let deadline = start + wait;
        let mut view = self.inner.view.clone();
        let mut hint: Option<(NodeId, Epoch)> = None;
        let mut refusals = 0u32;
        loop {
            let (target, epoch) = {
                let v = view.borrow_and_update();
                let epoch = v.map.shard_epoch(env.shard);
                if self.inner.cfg.gateway {
                    (v.from, epoch)
                } else {
                    match hint {
                        // The refusing node knows of a newer assignment than our map: go there.
                        Some((n, e)) if e > epoch => (Some(n), e),
                        _ => (v.map.owner(env.shard), epoch),
                    }
                }
            };
            env.epoch = epoch;
            let Some(node) = target else {
                self.wait_for_view(&mut view, start, deadline, env.shard, None).await?;
                continue;
            };
            let hop = if self.inner.cfg.gateway {
                // The gateway waits for an owner and retries itself.
                cfg.request_timeout + cfg.route_wait
            } else {
                cfg.request_timeout
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let hop = timeout.map_or(hop, |_| hop.min(left.max(Duration::from_millis(1))));
            match self.remote(node, &env, hop, deadline).await {
                Err(Error::Refused(Refusal::NotOwner { epoch, owner, .. })) if Instant::now() < deadline => {
                    self.inner.stats.not_owner.fetch_add(1, Ordering::Relaxed);
                    if self.inner.staleness.refused() {
                        self.inner.stats.stale.fetch_add(1, Ordering::Relaxed);
                    }
                    refusals += 1;
                    // The refusing node itself may be the owner at a newer epoch (the shard came
                    // back, or its follower was promoted): then the hint names it, and the
                    // message goes to it again stamped with that epoch.
                    hint = owner.map(|o| (o, epoch));
                    let nap = Duration::from_millis((2u64 << refusals.min(6)).min(100));
                    self.wait_for_view(&mut view, start, deadline, env.shard, Some(nap)).await?;
                }
                Err(Error::Unreachable { .. }) if Instant::now() < deadline => {
                    // Not sent: the node may be down; a new map (or a new gateway) will say.
                    hint = None;
                    self.wait_for_view(&mut view, start, deadline, env.shard, Some(Duration::from_millis(200))).await?;
                }
                other => return other,
            }
        }
    }

    /// Waits for a new view until `deadline` (then `NoOwner`), or for `nap` if given.
    async fn wait_for_view(
        &self,
        view: &mut watch::Receiver<View>,
        start: Instant,
        deadline: Instant,
        shard: crate::types::ShardId,
        nap: Option<Duration>,
    ) -> Result<(), Error> {
        let Ok(_permit) = self.inner.waiting.clone().try_acquire_owned() else {
            return Err(Error::Overloaded);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let waited = || start.elapsed();
        if left.is_zero() {
            return Err(Error::NoOwner { shard, waited: waited() });
        }
        match tokio::time::timeout(nap.map_or(left, |n| n.min(left)), view.changed()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) if nap.is_some() && Instant::now() < deadline => Ok(()),
            Err(_) => Err(Error::NoOwner { shard, waited: waited() }),
        }
    }

    async fn remote(
        &self,
        node: NodeId,
        env: &Envelope,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Vec<u8>, Error> {
        let link = self.link(node, deadline).await?;
        let (id, rx) = link.send(env)?;
        let _slot = link.slot(id);
        self.inner.stats.sent.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r.map_err(Error::Refused),
            Ok(Err(_)) => Err(Error::ConnectionLost { node }),
            Err(_) => Err(Error::Timeout { node, timeout }),
        }
    }

    fn protocol(&self) -> StreamProtocol {
        if self.inner.cfg.gateway {
            clients::gateway_protocol(&self.inner.cfg.cluster)
        } else {
            clients::client_protocol(&self.inner.cfg.cluster)
        }
    }

    fn live_link(&self, node: NodeId) -> Option<proxy::link::Link> {
        let links = self.inner.links.lock().expect("links lock is never poisoned");
        links.get(&(node, self.inner.cfg.gateway)).filter(|l| l.is_alive()).cloned()
    }

    /// The link to `node`, opened if there is none (within `request_timeout` and `deadline`).
    async fn link(&self, node: NodeId, deadline: Instant) -> Result<proxy::link::Link, Error> {
        if let Some(l) = self.live_link(node) {
            return Ok(l);
        }
        let (peer, addrs) = self
            .inner
            .view
            .borrow()
            .members
            .get(&node)
            .cloned()
            .ok_or(Error::Unreachable { node, reason: "not a member in the client's map" })?;
        let lock = {
            let mut opening = self.inner.opening.lock().expect("opening lock is never poisoned");
            opening.entry(node).or_default().clone()
        };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let timeout = self.inner.cfg.proxy.request_timeout.min(left);
        // A request for a node whose link is being opened waits for that open, not its own.
        let Ok(_opening) = tokio::time::timeout(timeout, lock.lock()).await else {
            return Err(Error::Unreachable { node, reason: "timed out waiting for a client stream to open" });
        };
        if let Some(l) = self.live_link(node) {
            return Ok(l);
        }
        let _ = self.inner.swarm.try_send(swarm::Command::Dial { peer, addrs });
        let mut control = self.inner.control.clone();
        let stream = match tokio::time::timeout(timeout, control.open_stream(peer, self.protocol())).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(Error::Unreachable { node, reason: "cannot open a client stream" }),
            Err(_) => return Err(Error::Unreachable { node, reason: "timed out opening a client stream" }),
        };
        let link = proxy::link::Link::start(
            node,
            stream,
            &self.inner.cfg.proxy,
            self.inner.faults.clone(),
            &self.inner.arbiter,
        );
        let members = self.inner.view.borrow().members.clone();
        let mut links = self.inner.links.lock().expect("links lock is never poisoned");
        // Links to nodes that left the cluster (or died) are not kept.
        links.retain(|(n, _), l| l.is_alive() && members.contains_key(n));
        links.insert((node, self.inner.cfg.gateway), link.clone());
        drop(links);
        self.inner.opening.lock().expect("opening lock is never poisoned").retain(|n, _| members.contains_key(n));
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_refusals_after_an_old_map_make_the_client_follow_another_node() {
        let s = Staleness::new();
        // A fresh map: refusals are a rebalance in progress, not a stale node.
        assert!((0..STALE_REFUSALS * 2).all(|_| !s.refused()));
        // The same map, older than STALE_AFTER: the STALE_REFUSALS-th refusal since it came says
        // so, once (the count starts over).
        *s.last_map.lock().unwrap() = Instant::now() - STALE_AFTER;
        s.map_came();
        *s.last_map.lock().unwrap() = Instant::now() - STALE_AFTER;
        let said: Vec<bool> = (0..STALE_REFUSALS * 2).map(|_| s.refused()).collect();
        assert_eq!(said.iter().filter(|b| **b).count(), 2);
        assert!(said[STALE_REFUSALS as usize - 1] && !said[STALE_REFUSALS as usize - 2]);
        // A new map resets both.
        s.map_came();
        assert!((0..STALE_REFUSALS * 2).all(|_| !s.refused()));
    }
}
