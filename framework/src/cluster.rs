//! The running cluster member and what a service asks of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Arbiter, ArbiterHandle};
use clusterfunk_actors::faults::FaultPlan;
use clusterfunk_actors::node::{Node, StartError};
use clusterfunk_actors::proxy::Router;
use clusterfunk_actors::serving::DrainError;
use clusterfunk_actors::shard::{shard_for, ShardKey, ShardMap};
use clusterfunk_actors::types::{ClusterName, NodeId, ShardId, WorkerIndex};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::hooks::{ClusterEvent, Hooks, NodeHooks};

use crate::entity::{HostEnv, Registry, Sharded, ShardedActor};

use crate::config::{Builder, ClusterConfig, ConfigError};
use crate::status::{self, ClusterStatus};

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The node could not start (data directory, listen address, Raft).
    #[error("cannot start the node: {0}")]
    Start(#[from] StartError),
    /// The dashboard address could not be bound.
    #[error("dashboard: cannot listen on {addr}: {source}")]
    Dashboard {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `http` address of the service's own server could not be bound.
    #[error("http: cannot listen on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// A [`Client`](crate::Client) could not connect: no node sent a shard map in time (the
    /// message says what is known of each seed).
    #[error("client: {0}")]
    Connect(String),
}

pub(crate) struct Inner {
    pub(crate) node: Node,
    pub(crate) cluster: ClusterName,
    pub(crate) registry: Arc<Registry>,
    pub(crate) router: Router,
    arbiters: Vec<Arbiter>,
    dashboard: std::sync::OnceLock<SocketAddr>,
    /// The service's own HTTP server: where it listens, and its handle (stopped on shutdown).
    pub(crate) http: std::sync::OnceLock<(SocketAddr, actix_web::dev::ServerHandle)>,
    token: Option<clusterfunk_actors::types::Token>,
    /// This node's Prometheus registry (`GET /metrics`).
    pub(crate) metrics: crate::metrics::Metrics,
    /// The dashboard's events timeline (filled while the dashboard runs).
    pub(crate) timeline: crate::timeline::Timeline,
}

impl Inner {
    pub(crate) fn status(&self) -> ClusterStatus {
        status::collect(self)
    }
}

/// A running member of a cluster: the handle `main` keeps.
///
/// ```no_run
/// # async fn run() -> Result<(), clusterfunk::Error> {
/// let cluster = clusterfunk::Cluster::builder()
///     .name("shop")
///     .env("dev")
///     .bootstrap(true)
///     .data_dir("/var/lib/shop")
///     .dashboard("127.0.0.1:8080")
///     .build()?
///     .start()
///     .await?;
/// if let Some(shard) = cluster.shard_for("user-42") {
///     println!("user-42 lives in shard {shard}, owned by {:?}", cluster.owner(shard));
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// A builder with every setting at its default.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The node (for the dashboard and management routes).
    pub(crate) fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The dashboard's events timeline.
    pub(crate) fn timeline(&self) -> &crate::timeline::Timeline {
        &self.inner.timeline
    }

    /// Live entity instances of `shard` on this node, over every entity type.
    pub(crate) fn entities_in(&self, shard: ShardId) -> u64 {
        self.inner.registry.controls.iter().map(|h| h.len_in(shard) as u64).sum()
    }

    /// This node's metrics in the Prometheus text format (`GET /metrics`).
    pub(crate) fn metrics_text(&self) -> String {
        self.inner.metrics.encode()
    }

    /// The management token mutations must carry, if this node has one.
    pub(crate) fn inner_token(&self) -> Option<&clusterfunk_actors::types::Token> {
        self.inner.token.as_ref()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node.id
    }

    /// This node's instance id (`-i ID`, [`Builder::instance_id`](crate::Builder::instance_id)),
    /// if it has one.
    pub fn instance_id(&self) -> Option<&str> {
        self.inner.node.name.as_deref()
    }

    /// This node's place in the cluster-wide worker index: its first index, its count, the
    /// cluster's total and the epoch (docs/architecture.md §8.3). In dynamic mode it follows the
    /// committed cluster state: at one epoch no two workers in the cluster hold one index, so hand
    /// the epoch to whatever the workers share as a fencing token. `index` is `None` until this
    /// node is a member and once it is leaving. In static mode
    /// ([`Builder::static_workers`](crate::Builder::static_workers)) it is the configured range,
    /// epoch 0.
    ///
    /// ```no_run
    /// # async fn run(cluster: clusterfunk::Cluster) {
    /// let mut workers = cluster.watch_workers();
    /// while let Some(w) = workers.changed().await {
    ///     match w.index {
    ///         Some(first) => println!("workers {first}..{} of {} (epoch {})", first + u64::from(w.count), w.total, w.epoch),
    ///         None => println!("not in the worker index"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn workers(&self) -> WorkerIndex {
        *self.inner.node.workers.borrow()
    }

    /// Follows [`workers`](Cluster::workers) as it changes (also a
    /// [`ClusterEvent::WorkersChanged`](crate::ClusterEvent::WorkersChanged) to the hooks).
    pub fn watch_workers(&self) -> WorkerWatch {
        WorkerWatch { rx: self.inner.node.workers.clone(), first: true }
    }

    /// Why this node is refused membership, while it is: another member holds its instance id
    /// (also a [`ClusterEvent::MembershipRefused`](crate::ClusterEvent::MembershipRefused), and
    /// an ERROR in the log). A refused node gets no shards and no worker index.
    pub fn membership_refused(&self) -> Option<String> {
        self.inner.node.refused.borrow().clone()
    }

    /// The current committed shard map: an immutable snapshot, swapped whole on change.
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.inner.node.map.borrow().clone()
    }

    /// The shard `key` maps to (xxh3 of its bytes modulo the shard count), or `None` until this
    /// node has the cluster's state (the shard count is the cluster's, fixed at its creation).
    pub fn shard_for<K: ShardKey + ?Sized>(&self, key: &K) -> Option<ShardId> {
        let n = self.inner.node.map.borrow().shard_count();
        (n > 0).then(|| shard_for(key, n))
    }

    /// The node owning `shard`, if it has one.
    pub fn owner(&self, shard: ShardId) -> Option<NodeId> {
        self.inner.node.map.borrow().owner(shard)
    }

    /// The followers of `shard` (replica factor > 1), not including the owner.
    pub fn replicas(&self, shard: ShardId) -> Vec<NodeId> {
        self.inner.node.map.borrow().replicas(shard)
    }

    /// `shard`'s leader and followers with the map epoch they hold it at: what a service that
    /// replicates its own data sends with each replica write, so followers can refuse writes
    /// from an older leader (keep the highest epoch seen per shard; refuse lower ones).
    pub fn replica_set(&self, shard: ShardId) -> ReplicaSet {
        let map = self.inner.node.map.borrow();
        ReplicaSet { shard, epoch: map.shard_epoch(shard), leader: map.owner(shard), followers: map.replicas(shard) }
    }

    /// Whether this node owns `shard` now.
    pub fn is_owner(&self, shard: ShardId) -> bool {
        self.owner(shard) == Some(self.node_id())
    }

    /// Every member (in the Raft configuration or registered), with what it declared
    /// (endpoints, metadata) and its liveness as this node sees it.
    pub fn members(&self) -> Vec<crate::Member> {
        let node = &self.inner.node;
        crate::members::all(&node.applied.borrow(), &node.view.borrow())
    }

    /// Member `id`, if this node knows it.
    pub fn member(&self, id: NodeId) -> Option<crate::Member> {
        let node = &self.inner.node;
        crate::members::member(id, &node.applied.borrow(), &node.view.borrow())
    }

    /// The node that owns `shard` in this node's map, with its endpoints and metadata.
    pub fn owner_node(&self, shard: ShardId) -> Option<crate::Member> {
        self.member(self.owner(shard)?)
    }

    /// Whether this node follows `shard` (is one of its replicas) in its map.
    pub fn is_replica(&self, shard: ShardId) -> bool {
        self.inner.node.map.borrow().replicas(shard).contains(&self.node_id())
    }

    /// The handle for sending to entities of type `E`.
    ///
    /// # Panics
    /// If `E` was not registered with [`Builder::entity`](crate::Builder::entity): a programming
    /// error, found the first time the code runs.
    pub fn sharded<E: ShardedActor>(&self) -> Sharded<E> {
        let host = self.inner.registry.host::<E>().unwrap_or_else(|| {
            panic!("{} is not registered: add .entity::<{0}>() to the builder", std::any::type_name::<E>())
        });
        let entity = self.inner.registry.entity_id::<E>().expect("registered: its host exists");
        Sharded {
            entity: entity.0,
            wire_name: self.inner.registry.wire_name(entity.0).expect("registered"),
            registry: self.inner.registry.clone(),
            via: crate::entity::Via::Member {
                host,
                router: self.inner.router.clone(),
                map: self.inner.node.map.clone(),
            },
        }
    }

    /// This node's view of the cluster (what `GET /api/cluster` serves).
    pub fn status(&self) -> ClusterStatus {
        self.inner.status()
    }

    /// Whether this node is healthy (what `GET /health` serves): Raft runs and the disk
    /// answers. `Err` says what is wrong, e.g. a durable write waiting on the disk for over a
    /// second. (A failed write ends the process with exit code 70 instead.)
    pub fn health(&self) -> Result<(), String> {
        self.inner.node.health()
    }

    /// Whether this node is ready (what `GET /ready` serves): it holds a committed shard map
    /// and a valid lease, is neither fenced by the leader nor draining, and serves every shard
    /// the map gives it. `Err` says which condition fails, e.g. `no valid lease`.
    pub fn ready(&self) -> Result<(), String> {
        self.inner.node.ready().map_err(|e| e.to_string())
    }

    /// The address the dashboard is bound to, if it runs.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.inner.dashboard.get().copied()
    }

    /// Waits until `ready(&status)` holds, checking whenever the shard map, membership view or
    /// Raft metrics change, for at most `timeout`. Cancel-safe.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &'static str,
        mut ready: impl FnMut(&ClusterStatus) -> bool,
    ) -> Result<ClusterStatus, Error> {
        let node = &self.inner.node;
        let (mut map, mut view, mut metrics) = (node.map.clone(), node.view.clone(), node.raft.metrics());
        let wait = async {
            loop {
                let s = self.status();
                if ready(&s) {
                    return s;
                }
                tokio::select! {
                    _ = map.changed() => {}
                    _ = view.changed() => {}
                    _ = metrics.changed() => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| Error::Timeout(timeout, what))
    }

    /// Stops this node at once: Raft, the transport and the entity arbiters. Its shards move to
    /// the others once its lease has surely run out (`L·(1+ρ)/(1−ρ) + G`, about 0.6 s with the
    /// defaults). Prefer [`leave`](Cluster::leave), which hands them off first.
    pub async fn shutdown(&self) {
        self.stop_http().await;
        self.inner.node.shutdown().await;
        for a in &self.inner.arbiters {
            a.stop();
        }
    }

    /// Leaves the cluster gracefully (what a node does on SIGTERM): marks itself as leaving
    /// through Raft, hands off every shard it owns (each stops here, its hooks run, the move is
    /// confirmed, then it starts on its new owner; messages meanwhile wait in the senders'
    /// proxies), hands Raft leadership to the most caught-up other voter if it leads, then stops. If the handoff does not finish within `timeout` (no quorum, say) it
    /// stops anyway and the shards move once its lease has run out.
    pub async fn leave(&self, timeout: Duration) -> Result<(), Error> {
        let result = self.inner.node.leave(timeout).await;
        self.stop_http().await;
        for a in &self.inner.arbiters {
            a.stop();
        }
        result.map_err(|e| match e {
            DrainError::NotAccepted(t) => Error::Timeout(t, "the cluster to accept the leave"),
            DrainError::NotHandedOff(t) => Error::Timeout(t, "this node's shards to be handed off"),
            _ => Error::Timeout(timeout, "the leave"),
        })
    }

    /// Stops the service's HTTP server, if it runs: no new connections, in-flight requests get
    /// their 5 s.
    async fn stop_http(&self) {
        if let Some((_, handle)) = self.inner.http.get() {
            handle.stop(true).await;
        }
    }

    /// Where the service's own HTTP server listens ([`ClusterConfig::start_with_http`]), if it
    /// runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.inner.http.get().map(|(a, _)| *a)
    }

    /// Fault injection for tests: cut this node off from others at the connection level.
    pub fn faults(&self) -> Faults {
        Faults { cluster: self.clone() }
    }

    /// The proxy router (for tests and tools that send raw envelopes).
    #[doc(hidden)]
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The epoch `shard` is served at on this node, if this node serves it now: the fencing
    /// token for the service's own storage.
    pub fn shard_epoch(&self, shard: ShardId) -> Option<clusterfunk_actors::types::Epoch> {
        self.inner.node.ownership.serving_epoch(shard)
    }
}

/// This node's place in the worker index as it changes ([`Cluster::watch_workers`]).
pub struct WorkerWatch {
    rx: tokio::sync::watch::Receiver<WorkerIndex>,
    first: bool,
}

impl WorkerWatch {
    /// The current value at the first call, then each new one as it comes (a value that changes
    /// twice quickly may be seen once, at its latest); `None` once the node stopped.
    pub async fn changed(&mut self) -> Option<WorkerIndex> {
        if std::mem::take(&mut self.first) {
            return Some(*self.rx.borrow_and_update());
        }
        self.rx.changed().await.ok()?;
        Some(*self.rx.borrow_and_update())
    }
}

/// A shard's copies at one epoch (see [`Cluster::replica_set`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSet {
    /// The shard.
    pub shard: ShardId,
    /// The epoch of its current assignment: the fencing token to send with replica writes.
    pub epoch: clusterfunk_actors::types::Epoch,
    /// The shard's leader (owner).
    pub leader: Option<NodeId>,
    /// Its followers, on distinct nodes (distinct zones when zones are set).
    pub followers: Vec<NodeId>,
}

/// Fault injection on one node's transport (docs/architecture.md §11): blocking a peer closes every connection
/// to it and refuses new ones, so Raft, gossip, leases and the proxy all lose it. Block on both
/// sides of a cut for a symmetric partition.
#[derive(Clone)]
pub struct Faults {
    cluster: Cluster,
}

impl Faults {
    /// Blocks (`true`) or unblocks `node`. Unknown nodes are ignored.
    pub fn block(&self, node: NodeId, blocked: bool) {
        let n = &self.cluster.inner.node;
        let peer = n.applied.borrow().state.members.get(&node).and_then(|m| m.peer_id);
        if let Some(peer) = peer {
            if let Err(e) = n.transport.block(peer, blocked) {
                warn!(error = %e, %node, "fault injection: cannot reach the transport");
            }
        }
    }

    /// Sets (or with `None` clears) the message-level fault plan of this node: what it sends
    /// from now on is delayed, dropped, duplicated and reordered as the plan says.
    pub fn messages(&self, plan: Option<FaultPlan>) {
        self.cluster.inner.node.transport.faults().set(plan);
    }

    /// Blocks or unblocks every other member.
    pub fn isolate(&self, isolated: bool) {
        let n = &self.cluster.inner.node;
        let others: Vec<NodeId> = n.applied.borrow().state.members.keys().copied().filter(|id| *id != n.id).collect();
        for o in others {
            self.block(o, isolated);
        }
    }
}

impl ClusterConfig {
    /// Starts the node (and its dashboard, if configured). Must run inside an actix `System`
    /// (`#[actix::main]` or `actix_rt::System::new().block_on(..)`).
    pub async fn start(self) -> Result<Cluster, Error> {
        self.launch(None::<fn(&mut actix_web::web::ServiceConfig)>).await
    }

    /// Starts the node, and your HTTP service on the [`http`](crate::Builder::http) address: a
    /// server of its own with [`http_workers`](crate::Builder::http_workers) threads, so a busy
    /// service never slows the dashboard, `/health` or `/ready` (which stay on the dashboard's
    /// server, as the management routes do). `routes` runs once per worker thread and may
    /// capture state; handlers also get the cluster as `web::Data<Cluster>`. The server stops
    /// with [`Cluster::shutdown`] and [`Cluster::leave`] (in-flight requests get 5 s).
    ///
    /// ```no_run
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use actix_web::{web, HttpResponse};
    ///
    /// # async fn run() -> Result<(), clusterfunk::Error> {
    /// let hits = Arc::new(AtomicU64::new(0));
    /// let cluster = clusterfunk::Cluster::builder()
    ///     .name("shop")
    ///     .http("0.0.0.0:8080")
    ///     .build()?
    ///     .start_with_http(move |cfg: &mut web::ServiceConfig| {
    ///         let hits = hits.clone();
    ///         cfg.route("/hits", web::get().to(move || {
    ///             let n = hits.fetch_add(1, Ordering::Relaxed) + 1;
    ///             async move { HttpResponse::Ok().body(n.to_string()) }
    ///         }));
    ///     })
    ///     .await?;
    /// # let _ = cluster; Ok(()) }
    /// ```
    pub async fn start_with_http<F>(self, routes: F) -> Result<Cluster, Error>
    where
        F: Fn(&mut actix_web::web::ServiceConfig) + Clone + Send + 'static,
    {
        if self.http.is_none() {
            return Err(ConfigError::NoHttp.into());
        }
        self.launch(Some(routes)).await
    }

    async fn launch<F>(self, routes: Option<F>) -> Result<Cluster, Error>
    where
        F: Fn(&mut actix_web::web::ServiceConfig) + Clone + Send + 'static,
    {
        // The service's port is bound before the node starts: a port in use fails at once.
        let http = match (self.http, routes.is_some()) {
            (Some(addr), true) => {
                let l = std::net::TcpListener::bind(addr).map_err(|source| Error::Http { addr, source })?;
                Some((addr, l))
            }
            (Some(addr), false) => {
                tracing::warn!(%addr, "http is set but no routes were given (start_with_http): nothing is served there");
                None
            }
            (None, _) => None,
        };
        // The dashboard's port is bound first, so the address this node publishes is the real
        // one (never port 0), with the advertised host if there is one.
        let mut node_cfg = self.node.clone();
        let listener = match self.dashboard {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(|source| Error::Dashboard { addr, source })?;
                let bound = l.local_addr().map_err(|source| Error::Dashboard { addr, source })?;
                l.set_nonblocking(true).map_err(|source| Error::Dashboard { addr, source })?;
                node_cfg.dashboard = Some(published_dashboard(bound, node_cfg.advertise.as_deref()));
                Some((addr, l))
            }
            None => None,
        };
        if let Some((addr, l)) = &http {
            // The service's own server is an endpoint of the node, unless one is named `http`.
            let bound = l.local_addr().map_err(|source| Error::Http { addr: *addr, source })?;
            let published = published_dashboard(bound, node_cfg.advertise.as_deref());
            node_cfg.endpoints.entry("http".into()).or_insert(published);
        }
        let node = Node::start(node_cfg).await?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
        let handles: Arc<[ArbiterHandle]> = arbiters.iter().map(|a| a.handle()).collect();
        let env =
            HostEnv { arbiters: handles, node: node.id, ownership: node.ownership.clone(), idle: self.passivate_after };
        let registry = Arc::new(Registry::build(&self.entities.0, &env));
        node.set_hooks(Arc::new(NodeHooks { registry: registry.clone(), user: self.hooks.clone() }));
        actix_rt::spawn(forward_events(node.events.subscribe(), self.hooks.clone(), self.node.hook_budget));
        // The proxy's stream tasks run beside the swarm's connection tasks: on a loaded 2-core
        // machine every cross-thread wake-up costs ~25 µs, and a remote ask would otherwise
        // cross threads four more times.
        let router = Router::start(
            node.id,
            self.proxy.clone(),
            &self.node.cluster,
            node.map.clone(),
            node.applied.clone(),
            node.transport.clone(),
            registry.clone(),
            node.ownership.clone(),
            node.transport_arbiter(),
            node.metrics.clone(),
        );
        actix_rt::spawn(passivate(registry.clone(), self.passivate_after));
        let node_metrics = node.metrics.clone();
        let inner = Arc::new_cyclic(|weak| Inner {
            node,
            cluster: self.node.cluster.clone(),
            registry,
            router,
            arbiters,
            dashboard: std::sync::OnceLock::new(),
            http: std::sync::OnceLock::new(),
            token: self.node.management_token.clone(),
            metrics: crate::metrics::Metrics::new(weak.clone(), &node_metrics),
            timeline: Default::default(),
        });
        let cluster = Cluster { inner };
        if let Some((addr, listener)) = listener {
            let (server, bound) = crate::dashboard::serve(listener, cluster.clone())
                .map_err(|source| Error::Dashboard { addr, source })?;
            actix_rt::spawn(server);
            crate::timeline::spawn(&cluster.inner);
            info!(url = %format!("http://{bound}/"), "dashboard");
            let _ = cluster.inner.dashboard.set(bound);
        }
        if let (Some((addr, listener)), Some(routes)) = (http, routes) {
            let (server, bound) = crate::dashboard::serve_service(listener, cluster.clone(), routes, self.http_workers)
                .map_err(|source| Error::Http { addr, source })?;
            let _ = cluster.inner.http.set((bound, server.handle()));
            actix_rt::spawn(server);
            info!(url = %format!("http://{bound}/"), workers = self.http_workers, "service http");
        }
        Ok(cluster)
    }
}

/// The dashboard address to publish for one bound at `bound`: the advertised host with the bound
/// port, else the bound address (`0.0.0.0:port` is completed by the membership layer with the
/// host of a listening address).
fn published_dashboard(bound: SocketAddr, advertise: Option<&str>) -> String {
    let Some(adv) = advertise else { return bound.to_string() };
    let host = match adv.parse::<SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => match adv.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => adv.rsplit_once(':').map_or(adv, |(h, _)| h).to_string(),
        },
    };
    if host.contains(':') {
        format!("[{host}]:{}", bound.port())
    } else {
        format!("{host}:{}", bound.port())
    }
}

/// Stops idle entities.
async fn passivate(registry: Arc<Registry>, idle: Duration) {
    let mut tick = tokio::time::interval((idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
    loop {
        tick.tick().await;
        for host in &registry.controls {
            host.passivate_idle();
        }
    }
}

/// Hands cluster-level events to the user's hooks, in order, each within the budget.
async fn forward_events(mut events: broadcast::Receiver<ClusterEvent>, hooks: Hooks, budget: Duration) {
    if hooks.0.is_empty() {
        return;
    }
    loop {
        match events.recv().await {
            Ok(ev) => {
                if tokio::time::timeout(budget, hooks.fire(vec![ev.clone()])).await.is_err() {
                    warn!(event = ?ev, ?budget, "hook overran its budget; going on");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(missed = n, "hooks are too slow: cluster events were skipped");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
