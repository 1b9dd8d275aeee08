//! Cluster configuration: a builder with documented defaults and a `validate()` that names the
//! field and the reason for every refusal.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clusterfunk_actors::faults::FaultPlan;
use clusterfunk_actors::types::{ClusterName, ShardId};
use clusterfunk_actors::Multiaddr;

use crate::entity::{EntityRegistration, EntitySpec, ShardedActor};
use crate::hooks::{ClusterEvent, Hook, Hooks};

/// Why a configuration cannot work. Each variant names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `name` or `env` is not usable in protocol names.
    #[error("{field}: {value:?} {reason}")]
    Name {
        /// `name` or `env`.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// `shards` must be between 1 and 65,535.
    #[error("shards: {0} is out of range; a cluster needs 1 to 65535 shards")]
    Shards(u32),
    /// `weight` must be at least 1.
    #[error("weight: 0 would give this node no shards at all; use a weight of at least 1")]
    Weight,
    /// `weight` is over the largest a leader registers.
    #[error("weight: {0} is over 10000, the largest weight a node is registered with")]
    WeightTooLarge(u32),
    /// `workers` must be at least 1.
    #[error("workers: a node runs at least 1 worker")]
    Workers,
    /// `workers` is over `max_workers`.
    #[error("workers: {workers} is over max_workers ({max})")]
    WorkersTooMany {
        /// The count given.
        workers: u32,
        /// The maximum configured.
        max: u32,
    },
    /// `max_workers` is 0 or over the largest count a leader registers.
    #[error("max_workers: {0} is not between 1 and 65536")]
    MaxWorkers(u32),
    /// Static worker indices that do not fit: this node's range must lie inside the total.
    #[error("worker_index: {base} + {workers} workers is beyond worker_total {total}")]
    StaticWorkers {
        /// The base index given.
        base: u64,
        /// This node's worker count.
        workers: u32,
        /// The total given.
        total: u64,
    },
    /// `worker_index` and `worker_total` go together.
    #[error("worker_index and worker_total: give both (static worker indices) or neither")]
    StaticWorkersHalf,
    /// The instance id is not usable.
    #[error("instance_id: {value:?} is not usable: {reason}")]
    InstanceId {
        /// The value given.
        value: String,
        /// Why.
        reason: String,
    },
    /// `voters` must be 1, 3, 5 or 7.
    #[error("voters: {0} is not 1, 3, 5 or 7 (an even count adds no fault tolerance)")]
    Voters(usize),
    /// `replica_factor` must be 1 to 7.
    #[error("replica_factor: {0} is not between 1 and 7")]
    ReplicaFactor(u32),
    /// A shard weight that names no shard, or is outside `1..=1000000`.
    #[error("shard_weights: shard {shard} weight {weight}: {reason}")]
    ShardWeight {
        /// The shard given.
        shard: u32,
        /// The weight given.
        weight: u32,
        /// Why it is refused.
        reason: String,
    },
    /// An address does not parse or resolve.
    #[error("{field}: {value:?} is not a usable host:port ({reason})")]
    Address {
        /// `listen`, `join` or `dashboard`.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why.
        reason: String,
    },
    /// The cluster secret is not 64 hex characters.
    #[error("secret: a cluster secret is 64 hex characters (32 bytes)")]
    Secret,
    /// An entity type was registered twice.
    #[error("entity: {0} is registered twice")]
    DuplicateEntity(&'static str),
    /// Two registered types have the same wire name (or hash to the same wire id): name one.
    #[error("entity: {a} and {b} have the same wire name; give one another with .named(..) or .message_named::<..>(..) in entity_with")]
    WireIdCollision {
        /// One type.
        a: &'static str,
        /// The other.
        b: &'static str,
    },
    /// The passivation time is zero.
    #[error("passivate_after: must be more than zero")]
    PassivateAfter,
    /// An endpoint or metadata entry is not valid, or there are too many.
    #[error("{field}: {reason}")]
    Attribute {
        /// `endpoint` or `metadata`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The HTTP server's worker count is 0 or above 256.
    #[error("http_workers: {0} is not from 1 to 256")]
    HttpWorkers(usize),
    /// [`ClusterConfig::start_with_http`] was given routes but no `http` address is set.
    #[error("http: routes were given to start_with_http but no address to serve them on: set http (Builder::http, --http host:port)")]
    NoHttp,
    /// The lease settings do not fit (`lease`, `lease_drift` or `lease_grace`), with the reason.
    #[error(transparent)]
    Lease(#[from] clusterfunk_actors::lease::ConfigError),
    /// The hook budget is zero.
    #[error("hook_budget: must be more than zero")]
    HookBudget,
    /// A `members` entry is not a node id.
    #[error("members: {0:?} is not a node id (16 hex digits, as `clusterfunk members` shows them)")]
    Member(String),
    /// The management token is too short to be a secret.
    #[error("management_token: a token is at least 16 characters (use a random one, e.g. `openssl rand -hex 32`)")]
    Token,
    /// A config file could not be read, or a key in it is unknown or has a bad value.
    #[error("{}", file_message(path, key, reason))]
    File {
        /// The file (empty for text parsed with `str::parse`).
        path: PathBuf,
        /// The key (empty for a file that does not parse or cannot be read).
        key: String,
        /// Why.
        reason: String,
    },
    /// A `CLUSTERFUNK_*` environment variable is unknown or has a bad value.
    #[error("{var}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// Why.
        reason: String,
    },
    /// A file a setting names (`secret_file`, `token_file`) cannot be read.
    #[error("{field}: cannot read {}: {reason}", path.display())]
    Unreadable {
        /// The setting.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A timing or size does not fit the others, with the reason.
    #[error("{field}: {reason}")]
    Timing {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn file_message(path: &std::path::Path, key: &str, reason: &str) -> String {
    let file = if path.as_os_str().is_empty() { "config".to_string() } else { path.display().to_string() };
    if key.is_empty() {
        format!("{file}: {reason}")
    } else {
        format!("{file}: {key}: {reason}")
    }
}

/// How nodes become members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Every node that finds the cluster (same key, environment and secret) joins, and learners
    /// are promoted until there are `voters` voters. For development and tests.
    #[default]
    Dev,
    /// Nodes become members only by command (`clusterfunk member add`) or by the configuration's
    /// [`member`](Builder::member) list; others are refused and counted. Voters change only by
    /// command, beyond the listed ones (docs/operations.md, "Running a production cluster").
    Production,
}

/// Whether load-balancing moves wait for an operator (docs/operations.md, "Moving shards by hand").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rebalance {
    /// Shards move to even out load as soon as the allocator plans it (after the debounce).
    #[default]
    Auto,
    /// Moves whose only reason is load wait for `clusterfunk rebalance commit`; failover, first
    /// assignments, drains and pins stay automatic.
    Manual,
}

/// Registered entity types (shown by name in `Debug`).
#[derive(Clone, Default)]
pub(crate) struct Specs(pub(crate) Vec<Arc<dyn EntitySpec>>);

impl std::fmt::Debug for Specs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|s| s.entity().1)).finish()
    }
}

/// A validated configuration, ready to [`start`](ClusterConfig::start).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub(crate) node: clusterfunk_actors::node::Config,
    pub(crate) dashboard: Option<SocketAddr>,
    pub(crate) http: Option<SocketAddr>,
    pub(crate) http_workers: usize,
    pub(crate) entities: Specs,
    pub(crate) passivate_after: Duration,
    pub(crate) proxy: clusterfunk_actors::proxy::Config,
    pub(crate) hooks: Hooks,
}

/// Builds a [`ClusterConfig`]. Every setting has a default; see each method.
#[derive(Clone, Debug)]
pub struct Builder {
    name: String,
    env: String,
    data_dir: Option<PathBuf>,
    listen: String,
    join: Vec<String>,
    discovery: clusterfunk_actors::transport::seeds::Sources,
    dashboard: Option<String>,
    http: Option<String>,
    http_workers: Option<usize>,
    endpoints: std::collections::BTreeMap<String, String>,
    metadata: std::collections::BTreeMap<String, String>,
    bootstrap: bool,
    shards: u32,
    replica_factor: u32,
    voters: usize,
    weight: u32,
    workers: u32,
    max_workers: u32,
    static_workers: (Option<u64>, Option<u64>),
    instance_id: Option<String>,
    zone: Option<String>,
    secret: Option<clusterfunk_actors::types::Token>,
    mdns: bool,
    entities: Specs,
    passivate_after: Duration,
    lease: clusterfunk_actors::lease::Config,
    journal: Option<PathBuf>,
    hook_budget: Duration,
    hooks: Hooks,
    faults: Option<FaultPlan>,
    fail_disk_after: Option<u64>,
    disk_stall_trigger: Option<PathBuf>,
    lease_clock_rate: Option<f64>,
    mode: Mode,
    rebalance: Rebalance,
    shard_weights: std::collections::BTreeMap<u32, u32>,
    members: Vec<String>,
    management_token: Option<clusterfunk_actors::types::Token>,
    advertise: Option<String>,
    wire_version: Option<u32>,
    membership: clusterfunk_actors::membership::Config,
    raft: clusterfunk_actors::consensus::Config,
    debounce: Duration,
    proxy: clusterfunk_actors::proxy::Config,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            name: "clusterfunk".into(),
            env: "dev".into(),
            data_dir: None,
            listen: "0.0.0.0:0".into(),
            join: Vec::new(),
            discovery: Default::default(),
            dashboard: None,
            http: None,
            http_workers: None,
            endpoints: Default::default(),
            metadata: Default::default(),
            bootstrap: false,
            shards: 1024,
            replica_factor: 1,
            voters: 3,
            weight: 1,
            workers: 1,
            max_workers: 1024,
            static_workers: (None, None),
            instance_id: None,
            zone: None,
            secret: None,
            mdns: true,
            entities: Specs::default(),
            passivate_after: Duration::from_secs(120),
            lease: Default::default(),
            journal: None,
            hook_budget: Duration::from_secs(2),
            hooks: Hooks::default(),
            faults: None,
            fail_disk_after: None,
            disk_stall_trigger: None,
            lease_clock_rate: None,
            mode: Mode::Dev,
            rebalance: Rebalance::Auto,
            shard_weights: Default::default(),
            members: Vec::new(),
            management_token: None,
            advertise: None,
            wire_version: None,
            membership: Default::default(),
            raft: Default::default(),
            debounce: clusterfunk_actors::shard_manager::Config::default().debounce,
            proxy: Default::default(),
        }
    }
}

impl Builder {
    /// The cluster key, e.g. `shop`. Default `clusterfunk`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The environment, e.g. `dev` or `production`. Default `dev`. Clusters with the same key
    /// and another environment never mix.
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = env.into();
        self
    }

    /// Where the node keeps its identity key and Raft log. Default `clusterfunk-data/<name>-<env>`
    /// under the working directory; give each node on one machine its own.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// `host:port` to listen on for other nodes. Default `0.0.0.0:0` (all interfaces, a free
    /// port; peers learn it by gossip). Give a fixed port for nodes others `join`.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// The host (or `host:port`) other nodes dial and the dashboard links show for this node,
    /// when it differs from what it listens on: a node behind NAT or in a container, or one
    /// listening on `0.0.0.0`. Without a port, the port it listens on. Default: its listening
    /// addresses (every interface's, for `0.0.0.0`); a node never publishes `0.0.0.0` or port 0.
    pub fn advertise(mut self, host: impl Into<String>) -> Self {
        self.advertise = Some(host.into());
        self
    }

    /// How often this node gossips its heartbeat. Default 250 ms: faster detects a crash sooner
    /// (with [`failure_detector`](Builder::failure_detector)) and costs more traffic, per node, to
    /// every node.
    pub fn gossip_interval(mut self, every: Duration) -> Self {
        self.membership.heartbeat_interval = every;
        self
    }

    /// Silence after which a member is suspect, and after which it is down. Default 1 s and
    /// 2 s: a crashed node's shards move after `down` plus the rebalance debounce at the latest
    /// (sooner once its lease runs out); shorter risks marking a busy node down.
    pub fn failure_detector(mut self, suspect: Duration, down: Duration) -> Self {
        self.membership.suspect_after = suspect;
        self.membership.down_after = down;
        self
    }

    pub(crate) fn failure_detector_now(&self) -> (Duration, Duration) {
        (self.membership.suspect_after, self.membership.down_after)
    }

    /// Raft's leader heartbeat and election timeout range. Default 50 ms and 150–300 ms: a new
    /// leader about 0.5 s after the old one dies. Shorter fails over sooner and risks needless
    /// elections on a loaded machine; the lease must cover three heartbeats.
    pub fn raft_timing(mut self, heartbeat: Duration, election_min: Duration, election_max: Duration) -> Self {
        self.raft.heartbeat_interval = heartbeat;
        self.raft.election_timeout = (election_min, election_max);
        self
    }

    pub(crate) fn raft_timing_now(&self) -> (Duration, Duration, Duration) {
        (self.raft.heartbeat_interval, self.raft.election_timeout.0, self.raft.election_timeout.1)
    }

    /// How long a needed rebalance waits to be committed, so a burst of joins (a rolling start)
    /// becomes one map change. Failover is not debounced. Default 500 ms.
    pub fn rebalance_debounce(mut self, wait: Duration) -> Self {
        self.debounce = wait;
        self
    }

    /// How long a remote request may take, and how long a message waits for its shard to get
    /// an owner (during a failover or handoff) before it fails. Default 5 s and 5 s.
    pub fn proxy_timeouts(mut self, request: Duration, route_wait: Duration) -> Self {
        self.proxy.request_timeout = request;
        self.proxy.route_wait = route_wait;
        self
    }

    pub(crate) fn proxy_timeouts_now(&self) -> (Duration, Duration) {
        (self.proxy.request_timeout, self.proxy.route_wait)
    }

    /// Frames queued per peer, and messages waiting for a route at once; beyond either a send
    /// fails at once with an error (never a silent drop). Default 4096 and 10,000: memory under
    /// a burst vs. failing early.
    pub fn proxy_queues(mut self, per_peer: usize, waiting: usize) -> Self {
        self.proxy.queue_per_peer = per_peer;
        self.proxy.max_waiting = waiting;
        self
    }

    pub(crate) fn proxy_queues_now(&self) -> (usize, usize) {
        (self.proxy.queue_per_peer, self.proxy.max_waiting)
    }

    /// How nodes become members: [`Mode::Dev`] (the default: every node that finds the cluster
    /// joins) or [`Mode::Production`] (only by command or the [`member`](Builder::member) list).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The rebalancing mode a new cluster starts in ([`Rebalance::Auto`] by default). The first
    /// leader configured with [`Rebalance::Manual`] that finds no mode recorded writes it; from
    /// then on only `clusterfunk rebalance mode` changes it, so restarting nodes with this
    /// setting never undoes an operator's choice.
    pub fn rebalance(mut self, mode: Rebalance) -> Self {
        self.rebalance = mode;
        self
    }

    /// Gives `shard` a weight (repeatable; the default is 1): a hot shard counts `weight` times
    /// in its owner's load, and the allocator balances the total weight per node in proportion to
    /// node weight (docs/sharding.md, "Shard weights"). Like [`rebalance`](Builder::rebalance),
    /// these are the weights a new cluster starts with: the first leader configured with some
    /// writes them if none were ever set, and from then on only `clusterfunk shard weight`
    /// (`PUT /cluster/shards/{shard}/weight`) changes them. A shard beyond
    /// [`shards`](Builder::shards), or a weight outside `1..=1000000`, is refused by `build`.
    ///
    /// ```
    /// let config = clusterfunk::Cluster::builder().shards(64).shard_weight(7, 10).build().unwrap();
    /// # let _ = config;
    /// ```
    pub fn shard_weight(mut self, shard: u32, weight: u32) -> Self {
        self.shard_weights.insert(shard, weight);
        self
    }

    /// Production mode: node ids (16 hex digits) admitted as members without a command, and
    /// promoted to voters up to [`voters`](Builder::voters) (repeatable). An operator's
    /// `member remove` wins over the list.
    pub fn member(mut self, id: impl Into<String>) -> Self {
        self.members.push(id.into());
        self
    }

    /// The bearer token management mutations (HTTP `Authorization: Bearer ..`, the
    /// `clusterfunk` CLI) must carry. Without one the node accepts no mutation. Read it from a
    /// file or the environment, never from a command line (others can read that). At least 16
    /// characters; give every node the same one (a node relays a mutation to the leader, which
    /// checks it too).
    pub fn management_token(mut self, token: impl Into<String>) -> Self {
        self.management_token = Some(clusterfunk_actors::types::Token::new(token));
        self
    }

    /// A seed `host:port` to join (repeatable). DNS names are resolved off the event loop, again
    /// every 10 s (one name may give many addresses), and retried with backoff while they do not
    /// resolve; the status shows each seed's addresses or error.
    pub fn join(mut self, addr: impl Into<String>) -> Self {
        self.join.push(addr.into());
        self
    }

    /// Another way to find the other nodes, beside [`join`](Builder::join) and mDNS: a service
    /// registry, a cloud API, SRV records (docs/discovery.md). It runs like the seeds: in a task
    /// of its own, asked again every [`Discovery::refresh`](crate::Discovery::refresh); an error, a panic or no answer
    /// within 10 s is retried with backoff and shown in the status (`transport.seeds`, under
    /// its [`name`](crate::Discovery::name)), never fatal. Repeatable.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use clusterfunk::{Discovered, Discovery};
    ///
    /// /// Reads `host:port` lines from a file some other system keeps up to date.
    /// struct FromFile(std::path::PathBuf);
    ///
    /// impl Discovery for FromFile {
    ///     fn name(&self) -> String {
    ///         format!("file {}", self.0.display())
    ///     }
    ///     fn discover(&self) -> Discovered<'_> {
    ///         Box::pin(async move {
    ///             let text = std::fs::read_to_string(&self.0)?;
    ///             Ok(text.lines().filter_map(|l| l.trim().parse::<SocketAddr>().ok()).collect())
    ///         })
    ///     }
    /// }
    ///
    /// let config = clusterfunk::Cluster::builder()
    ///     .name("shop")
    ///     .mdns(false)
    ///     .discovery(FromFile("/etc/shop/nodes".into()))
    ///     .build()
    ///     .unwrap();
    /// # let _ = config;
    /// ```
    pub fn discovery(mut self, source: impl crate::Discovery) -> Self {
        self.discovery.0.push(Arc::new(source));
        self
    }

    /// `host:port` for the dashboard, the management API, `/health`, `/ready` and `/metrics`
    /// (one worker thread: it serves operators). Default: none.
    pub fn dashboard(mut self, addr: impl Into<String>) -> Self {
        self.dashboard = Some(addr.into());
        self
    }

    /// `host:port` for your own HTTP service: the routes given to
    /// [`ClusterConfig::start_with_http`] are served there, by a server of their own with
    /// [`http_workers`](Self::http_workers) threads, apart from the dashboard's. Port 0 takes a
    /// free port ([`Cluster::http_addr`](crate::Cluster::http_addr) says which). Default: none.
    pub fn http(mut self, addr: impl Into<String>) -> Self {
        self.http = Some(addr.into());
        self
    }

    /// A named endpoint this node serves (`grpc` → `10.0.0.5:9000`, anything a client of your
    /// service dials), announced with its membership and returned by
    /// [`Cluster::members`](crate::Cluster::members) and
    /// [`Cluster::owner_node`](crate::Cluster::owner_node) on every node. The `http` server's
    /// address is announced as `http` unless given here. At most 16; a name is letters, digits,
    /// `.`, `_`, `-` (up to 64 bytes), a value up to 256 bytes.
    pub fn endpoint(mut self, name: impl Into<String>, addr: impl Into<String>) -> Self {
        self.endpoints.insert(name.into(), addr.into());
        self
    }

    /// A key/value pair announced with this node's membership (`rack` → `r12`), like
    /// [`endpoint`](Self::endpoint) and with its limits.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Worker threads of the [`http`](Self::http) server, 1 to 256. Default: one per core.
    pub fn http_workers(mut self, n: usize) -> Self {
        self.http_workers = Some(n);
        self
    }

    /// Create a new cluster with this node as its first voter. Refused when the data directory
    /// already holds a cluster. Default `false`.
    pub fn bootstrap(mut self, yes: bool) -> Self {
        self.bootstrap = yes;
        self
    }

    /// The fixed number of shards, set when the cluster is created. Default 1024: enough for
    /// ~100 nodes at ~10 shards each; more shards cost a little memory per map (≈10 bytes each).
    pub fn shards(mut self, n: u32) -> Self {
        self.shards = n;
        self
    }

    /// Copies of each shard: an owner and `n - 1` followers on other nodes. Default 1.
    pub fn replica_factor(mut self, n: u32) -> Self {
        self.replica_factor = n;
        self
    }

    /// Voting members kept in dev/auto mode (1, 3, 5 or 7); the rest are learners. Default 3:
    /// survives one failure; 5 survives two at the cost of slower commits.
    pub fn voters(mut self, n: usize) -> Self {
        self.voters = n;
        self
    }

    /// This node's share of shards relative to others. Default 1.
    pub fn weight(mut self, w: u32) -> Self {
        self.weight = w;
        self
    }

    /// Worker threads this node declares for the worker index ([`Cluster::workers`](crate::Cluster::workers)).
    /// Default 1; at most [`max_workers`](Builder::max_workers).
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    /// The most workers this node may declare (a start with more is refused). Default 1024.
    pub fn max_workers(mut self, n: u32) -> Self {
        self.max_workers = n;
        self
    }

    /// Static worker indices: this node's workers are `base .. base + workers` of `total`, as
    /// configured, with no coordination (and no guarantee that two nodes do not overlap).
    /// Default: dynamic, derived from the committed cluster state.
    pub fn static_workers(mut self, base: u64, total: u64) -> Self {
        self.static_workers = (Some(base), Some(total));
        self
    }

    /// Settings give the two halves of [`static_workers`](Builder::static_workers) one by one;
    /// one without the other is refused at `build`.
    pub(crate) fn static_worker_parts(mut self, base: Option<u64>, total: Option<u64>) -> Self {
        self.static_workers = (base.or(self.static_workers.0), total.or(self.static_workers.1));
        self
    }

    /// The instance id that names this node for people (`-i ID`): shown beside its node id, and
    /// what the worker index orders instances by. Letters, digits, `.`, `_`, `-`; at most 64
    /// bytes. Kept in the data directory: a restart without one keeps the last one given.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// This node's failure zone; replicas are placed in distinct zones. Default: none.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Whether this node serves non-member clients ([`Client`](crate::Client)): the shard map
    /// pushed to them, their messages for its shards, and messages it routes on as their
    /// gateway. Default true. Without a cluster secret any host that reaches the node can be a
    /// client; with one, only holders of it can connect at all.
    pub fn accept_clients(mut self, yes: bool) -> Self {
        self.proxy.accept_clients = yes;
        self
    }

    /// A 64-hex-character pre-shared secret: nodes without it cannot connect. Default: none.
    pub fn secret(mut self, hex: impl Into<String>) -> Self {
        self.secret = Some(clusterfunk_actors::types::Token::new(hex));
        self
    }

    /// mDNS discovery on the LAN. Default on. (It never finds nodes on a loopback-only host: use
    /// `join` there.)
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Hosts entity type `E` on this node, with the messages its
    /// [`Messages`](ShardedActor::Messages) lists, under their default wire names:
    /// `.entity::<Counter>()`.
    pub fn entity<E: ShardedActor>(self) -> Self {
        self.entity_with::<E>(|e| e)
    }

    /// [`entity`](Self::entity), with wire names of your own (for a renamed or moved type):
    /// `.entity_with::<Counter>(|e| e.named("shop.counter"))`.
    pub fn entity_with<E: ShardedActor>(
        mut self,
        f: impl FnOnce(EntityRegistration<E>) -> EntityRegistration<E>,
    ) -> Self {
        self.entities.0.push(Arc::new(f(EntityRegistration::new())));
        self
    }

    /// How long an entity instance may receive nothing before it is stopped. Default 120 s:
    /// memory for idle entities vs. re-creating them.
    pub fn passivate_after(mut self, idle: Duration) -> Self {
        self.passivate_after = idle;
        self
    }

    /// L, the node lease (docs/architecture.md §7.1): a node serves its shards only while a lease granted by
    /// the Raft leader is valid, renewed every L/3. Shards of a node that stops renewing move
    /// after `L·(1+ρ)/(1−ρ) + G`. Default 500 ms; at least three Raft heartbeats (150 ms).
    pub fn lease(mut self, l: Duration) -> Self {
        self.lease.duration = l;
        self
    }

    /// ρ, the largest relative drift between two nodes' clocks. Default 0.01.
    pub fn lease_drift(mut self, rho: f64) -> Self {
        self.lease.drift = rho;
        self
    }

    /// G, extra time before a silent node's shards move. Default 100 ms.
    pub fn lease_grace(mut self, g: Duration) -> Self {
        self.lease.grace = g;
        self
    }

    /// Appends this node's ownership journal (JSON lines: `activate`, `deactivate`,
    /// `reject_stale`, with shard, epoch and `CLOCK_MONOTONIC` nanoseconds) to `path`, for the
    /// history checkers. Default: no journal.
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(path.into());
        self
    }

    /// How long each lifecycle hook may run before the shard proceeds without it (logged and
    /// counted). Default 2 s.
    pub fn hook_budget(mut self, budget: Duration) -> Self {
        self.hook_budget = budget;
        self
    }

    /// Message-level fault injection from the start, for tests and the chaos lab: what this node
    /// sends (Raft RPCs, gossip, proxy requests) is delayed, dropped, duplicated and reordered as
    /// `plan` says. Never in production. Default: none. See also [`Faults::messages`](crate::Faults::messages).
    ///
    /// ```
    /// let plan = "delay=1ms..20ms,dup=0.05,reorder=0.05".parse().unwrap();
    /// let builder = clusterfunk::Cluster::builder().message_faults(plan);
    /// ```
    pub fn message_faults(mut self, plan: FaultPlan) -> Self {
        self.faults = Some(plan);
        self
    }

    /// Storage fault injection, for tests and the chaos lab: the Raft store fails its durable
    /// write after `writes` more, as a failed fsync would, and the process exits with code 70.
    /// Never in production.
    #[doc(hidden)]
    pub fn fail_disk_after(mut self, writes: u64) -> Self {
        self.fail_disk_after = Some(writes);
        self
    }

    /// Storage fault injection, for tests and the chaos lab: when `file` appears, its number of
    /// milliseconds stalls the Raft store's next durable write (the leader then writes once so
    /// the stall parks its Raft core). Never in production.
    #[doc(hidden)]
    pub fn disk_stall_trigger(mut self, file: impl Into<PathBuf>) -> Self {
        self.disk_stall_trigger = Some(file.into());
        self
    }

    /// Upgrade tests only: announce this wire protocol version at handshakes, standing in for
    /// an older build (the leader then writes no change that version cannot read). Never in
    /// production.
    #[doc(hidden)]
    pub fn announce_wire_version(mut self, v: u32) -> Self {
        self.wire_version = Some(v);
        self
    }

    /// Clock fault injection, for the chaos lab: the lease clock runs at `rate` of true time
    /// (a drift past the configured ρ). Never in production.
    #[doc(hidden)]
    pub fn lease_clock_rate(mut self, rate: f64) -> Self {
        self.lease_clock_rate = Some(rate);
        self
    }

    /// Calls `f` for every [`ClusterEvent`] on this node (see [`crate::hooks`] for the order).
    /// Shard hooks are awaited: a shard serves only after its `ShardAssigned` hooks returned.
    ///
    /// ```
    /// use clusterfunk::{Cluster, ClusterEvent};
    /// let builder = Cluster::builder().on_event(|ev| async move {
    ///     if let ClusterEvent::ShardAssigned { shard, epoch, .. } = ev {
    ///         println!("serving shard {shard} at epoch {epoch}: load its data here");
    ///     }
    /// });
    /// ```
    pub fn on_event<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClusterEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.hooks.0.push(Hook::closure(f));
        self
    }

    /// Sends every [`ClusterEvent`] on this node to an actor, waiting for its handler.
    pub fn hooks(mut self, actor: actix::Recipient<ClusterEvent>) -> Self {
        self.hooks.0.push(Hook::Actor(actor));
        self
    }

    /// Checks every field and returns a configuration ready to start.
    pub fn build(self) -> Result<ClusterConfig, ConfigError> {
        let cluster = ClusterName::new(&self.name, &self.env);
        for (field, value) in [("name", &self.name), ("env", &self.env)] {
            if let Err(reason) = ClusterName::new(value.as_str(), "x").validate() {
                return Err(ConfigError::Name { field, value: value.clone(), reason });
            }
        }
        if self.shards == 0 || self.shards > 65_535 {
            return Err(ConfigError::Shards(self.shards));
        }
        if self.weight == 0 {
            return Err(ConfigError::Weight);
        }
        if self.weight > clusterfunk_actors::consensus::auto::MAX_WEIGHT {
            return Err(ConfigError::WeightTooLarge(self.weight));
        }
        if self.workers == 0 {
            return Err(ConfigError::Workers);
        }
        if self.max_workers == 0 || self.max_workers > clusterfunk_actors::workers::MAX_WORKERS {
            return Err(ConfigError::MaxWorkers(self.max_workers));
        }
        if self.workers > self.max_workers {
            return Err(ConfigError::WorkersTooMany { workers: self.workers, max: self.max_workers });
        }
        let static_workers = match self.static_workers {
            (None, None) => None,
            (Some(base), Some(total)) => match base.checked_add(u64::from(self.workers)) {
                Some(end) if end <= total => Some((base, total)),
                _ => return Err(ConfigError::StaticWorkers { base, workers: self.workers, total }),
            },
            _ => return Err(ConfigError::StaticWorkersHalf),
        };
        if let Some(id) = &self.instance_id {
            if let Some(reason) = clusterfunk_actors::types::name_error(id) {
                return Err(ConfigError::InstanceId { value: id.clone(), reason });
            }
        }
        if ![1, 3, 5, 7].contains(&self.voters) {
            return Err(ConfigError::Voters(self.voters));
        }
        if !(1..=7).contains(&self.replica_factor) {
            return Err(ConfigError::ReplicaFactor(self.replica_factor));
        }
        let max_weight = clusterfunk_actors::shard::MAX_SHARD_WEIGHT;
        for (&shard, &weight) in &self.shard_weights {
            let reason = if shard >= self.shards {
                format!("there is no such shard (the cluster has {} shards, 0 to {})", self.shards, self.shards - 1)
            } else if !(1..=max_weight).contains(&weight) {
                format!("the weight is not between 1 and {max_weight}")
            } else {
                continue;
            };
            return Err(ConfigError::ShardWeight { shard, weight, reason });
        }
        let listen = resolve("listen", &self.listen)?;
        for j in &self.join {
            seed_form("join", j)?;
        }
        let dashboard = self.dashboard.as_deref().map(|d| resolve("dashboard", d)).transpose()?;
        let http = self.http.as_deref().map(|d| resolve("http", d)).transpose()?;
        for (field, attrs) in [("endpoint", &self.endpoints), ("metadata", &self.metadata)] {
            if attrs.len() > clusterfunk_actors::types::MAX_ATTRIBUTES {
                let reason = format!("{} given, at most {}", attrs.len(), clusterfunk_actors::types::MAX_ATTRIBUTES);
                return Err(ConfigError::Attribute { field, reason });
            }
            if let Some(reason) = attrs.iter().find_map(|(k, v)| clusterfunk_actors::types::attribute_error(k, v)) {
                return Err(ConfigError::Attribute { field, reason });
            }
        }
        let http_workers =
            self.http_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        if !(1..=256).contains(&http_workers) {
            return Err(ConfigError::HttpWorkers(http_workers));
        }
        let secret = self.secret.as_ref().map(|s| parse_secret(s.expose())).transpose()?;
        crate::entity::check_ids(&self.entities.0)?;
        if self.passivate_after.is_zero() {
            return Err(ConfigError::PassivateAfter);
        }
        if self.hook_budget.is_zero() {
            return Err(ConfigError::HookBudget);
        }
        let members = self
            .members
            .iter()
            .map(|m| match m.trim() {
                t if t.len() == 16 => {
                    t.parse::<clusterfunk_actors::types::NodeId>().map_err(|_| ConfigError::Member(m.clone()))
                }
                _ => Err(ConfigError::Member(m.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token = self.management_token.as_ref().map(|t| clusterfunk_actors::types::Token::new(t.expose().trim()));
        if token.as_ref().is_some_and(|t| t.expose().chars().count() < 16) {
            return Err(ConfigError::Token);
        }
        self.check_timings()?;
        let raft = self.raft.clone();
        self.lease.validate(raft.heartbeat_interval).map_err(ConfigError::Lease)?;
        let advertise = self.advertise.as_deref().map(advertised).transpose()?;
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("clusterfunk-data").join(format!("{}-{}", self.name, self.env)));
        let node = clusterfunk_actors::node::Config {
            cluster,
            data_dir,
            listen: Multiaddr::from(listen.ip()).with(clusterfunk_actors::multiaddr::Protocol::Tcp(listen.port())),
            seeds: self.join,
            discovery: self.discovery,
            bootstrap: self.bootstrap,
            shards: self.shards,
            replica_factor: self.replica_factor,
            voters: self.voters,
            auto_join: self.mode == Mode::Dev,
            manual_rebalance: self.rebalance == Rebalance::Manual,
            shard_weights: self.shard_weights.iter().map(|(s, w)| (ShardId(*s), *w)).collect(),
            members,
            management_token: token,
            weight: self.weight,
            workers: self.workers,
            static_workers,
            name: self.instance_id,
            zone: self.zone,
            dashboard: dashboard.map(|d| d.to_string()),
            endpoints: self.endpoints,
            metadata: self.metadata,
            secret,
            mdns: self.mdns,
            advertise,
            wire_version: self.wire_version,
            membership: self.membership,
            raft,
            shard_manager: clusterfunk_actors::shard_manager::Config { debounce: self.debounce, ..Default::default() },
            lease: self.lease,
            journal: self.journal,
            hook_budget: self.hook_budget,
            faults: self.faults,
            fail_disk_after: self.fail_disk_after,
            disk_stall_trigger: self.disk_stall_trigger,
            lease_clock_rate: self.lease_clock_rate,
        };
        Ok(ClusterConfig {
            node,
            dashboard,
            http,
            http_workers,
            entities: self.entities,
            passivate_after: self.passivate_after,
            proxy: self.proxy,
            hooks: self.hooks,
        })
    }

    /// Timings and sizes that do not fit each other are refused here, not at run time.
    fn check_timings(&self) -> Result<(), ConfigError> {
        let t = |field, reason: String| Err(ConfigError::Timing { field, reason });
        let m = &self.membership;
        if m.heartbeat_interval.is_zero() {
            return t("gossip_interval", "must be more than zero".into());
        }
        if m.suspect_after <= m.heartbeat_interval {
            return t(
                "suspect_after",
                format!("{:?} must be longer than gossip_interval ({:?})", m.suspect_after, m.heartbeat_interval),
            );
        }
        if m.down_after <= m.suspect_after {
            return t(
                "down_after",
                format!("{:?} must be longer than suspect_after ({:?})", m.down_after, m.suspect_after),
            );
        }
        let (hb, (min, max)) = (self.raft.heartbeat_interval, self.raft.election_timeout);
        if hb < Duration::from_millis(1) {
            return t("raft_heartbeat", "must be at least 1ms".into());
        }
        if min <= hb {
            return t("election_timeout_min", format!("{min:?} must be longer than raft_heartbeat ({hb:?})"));
        }
        if max <= min {
            return t("election_timeout_max", format!("{max:?} must be longer than election_timeout_min ({min:?})"));
        }
        if self.debounce > Duration::from_secs(60) {
            return t(
                "rebalance_debounce",
                format!("{:?} is over a minute: joins would wait that long for shards", self.debounce),
            );
        }
        // openraft takes whole milliseconds; a fraction would be dropped there but not in the
        // lease service's quorum window.
        for (field, d) in [("raft_heartbeat", hb), ("election_timeout_min", min), ("election_timeout_max", max)] {
            if d.subsec_nanos() % 1_000_000 != 0 {
                return t(field, format!("{d:?} is not a whole number of milliseconds"));
            }
        }
        let p = &self.proxy;
        if p.request_timeout.is_zero() {
            return t("proxy_request_timeout", "must be more than zero".into());
        }
        if p.route_wait.is_zero() {
            return t("proxy_route_wait", "must be more than zero".into());
        }
        const MAX_QUEUE: usize = 1 << 24;
        if p.queue_per_peer == 0 || p.queue_per_peer > MAX_QUEUE {
            return t("proxy_queue", format!("{} is not between 1 and {MAX_QUEUE}", p.queue_per_peer));
        }
        if p.max_waiting == 0 || p.max_waiting > MAX_QUEUE {
            return t("proxy_max_waiting", format!("{} is not between 1 and {MAX_QUEUE}", p.max_waiting));
        }
        Ok(())
    }
}

/// An advertised `host`, `host:port`, `ip`, `ip:port` or `[ipv6]:port`: a concrete address
/// others can use (never `0.0.0.0`, `::` or port 0), in a form `published_addr` reads back.
fn advertised(value: &str) -> Result<String, ConfigError> {
    let err =
        |reason: &str| ConfigError::Address { field: "advertise", value: value.to_string(), reason: reason.into() };
    let v = value.trim();
    let (host, port): (String, Option<u16>) = if let Ok(a) = v.parse::<SocketAddr>() {
        (a.ip().to_string(), Some(a.port()))
    } else if let Ok(ip) = v.trim_matches(|c| c == '[' || c == ']').parse::<std::net::IpAddr>() {
        (ip.to_string(), None)
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                (h.to_string(), Some(p.parse::<u16>().map_err(|_| err("the port is not a number"))?))
            }
            _ => (v.to_string(), None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '[' || c == ']') {
        return Err(err("expected a host or host:port"));
    }
    let ip = host.parse::<std::net::IpAddr>().ok();
    if ip.is_some_and(|ip| ip.is_unspecified()) {
        return Err(err("an unspecified address (0.0.0.0, ::) is not one others can reach"));
    }
    if port == Some(0) {
        return Err(err("port 0 is not one others can reach; leave the port out to use the listening one"));
    }
    Ok(match (ip, port) {
        (Some(ip), Some(p)) => SocketAddr::new(ip, p).to_string(),
        (None, Some(p)) => format!("{host}:{p}"),
        (_, None) => host,
    })
}

fn resolve(field: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    let err = |reason: String| ConfigError::Address { field, value: value.to_string(), reason };
    value.to_socket_addrs().map_err(|e| err(e.to_string()))?.next().ok_or_else(|| err("resolves to no address".into()))
}

/// A seed is `host:port` or `ip:port`; the host is resolved later, off the event loop, and
/// retried while it does not resolve (a seed that is down at start is not a configuration error).
pub(crate) fn seed_form(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let err = |reason: &str| ConfigError::Address { field, value: value.to_string(), reason: reason.into() };
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(|| err("expected host:port"))?;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(err("expected host:port"));
    }
    port.parse::<u16>().map_err(|_| err("the port is not a number from 0 to 65535"))?;
    Ok(())
}

pub(crate) fn parse_secret(hex: &str) -> Result<[u8; 32], ConfigError> {
    // By characters, never by byte index: a non-ASCII string of 64 bytes must be refused, not
    // sliced inside a character (a panic at start).
    let digits: Vec<u32> =
        hex.trim().chars().map(|c| c.to_digit(16)).collect::<Option<_>>().ok_or(ConfigError::Secret)?;
    if digits.len() != 64 {
        return Err(ConfigError::Secret);
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
        *byte = (pair[0] * 16 + pair[1]) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_field() {
        let b = Builder::default;
        assert_eq!(b().shards(0).build().unwrap_err(), ConfigError::Shards(0));
        assert_eq!(b().weight(0).build().unwrap_err(), ConfigError::Weight);
        assert_eq!(b().weight(10_001).build().unwrap_err(), ConfigError::WeightTooLarge(10_001));
        assert!(b().weight(10_000).build().is_ok());
        assert_eq!(b().voters(2).build().unwrap_err(), ConfigError::Voters(2));
        assert!(b().name("a/b").build().unwrap_err().to_string().starts_with("name:"));
        assert!(b().env("").build().unwrap_err().to_string().starts_with("env:"));
        assert!(b().listen("nope").build().unwrap_err().to_string().starts_with("listen:"));
        assert!(b().join("127.0.0.1").build().unwrap_err().to_string().starts_with("join:"));
        assert!(b().join("host:http").build().unwrap_err().to_string().starts_with("join:"));
        assert!(b().join("seed.example.invalid:7000").build().is_ok(), "resolved later, retried: not a config error");
        assert_eq!(b().secret("abc").build().unwrap_err(), ConfigError::Secret);
        // 64 bytes, not 64 characters: refused with the field, never a panic.
        let non_ascii = format!("aé{}", "a".repeat(61));
        assert_eq!(non_ascii.len(), 64);
        assert_eq!(b().secret(non_ascii.clone()).build().unwrap_err(), ConfigError::Secret);
        assert_eq!(b().secret("g".repeat(64)).build().unwrap_err(), ConfigError::Secret);
        assert!(b().secret("0f".repeat(32)).build().is_ok());
        assert_eq!(b().member("xyz").build().unwrap_err(), ConfigError::Member("xyz".into()));
        assert_eq!(b().member("0123456789abcdeg").build().unwrap_err(), ConfigError::Member("0123456789abcdeg".into()));
        assert!(b().mode(Mode::Production).member("0123456789abcdef").build().is_ok());
        assert_eq!(b().management_token("short").build().unwrap_err(), ConfigError::Token);
        let field = |b: Builder| match b.build() {
            Err(ConfigError::Timing { field, .. }) => field,
            Err(ConfigError::Address { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let ms = Duration::from_millis;
        assert_eq!(field(b().failure_detector(ms(100), ms(2000)).gossip_interval(ms(200))), "suspect_after");
        assert_eq!(field(b().failure_detector(ms(1000), ms(900))), "down_after");
        assert_eq!(field(b().raft_timing(ms(50), ms(40), ms(300))), "election_timeout_min");
        assert_eq!(field(b().raft_timing(ms(50), ms(150), ms(150))), "election_timeout_max");
        assert_eq!(field(b().proxy_queues(0, 10)), "proxy_queue");
        assert_eq!(field(b().advertise("0.0.0.0")), "advertise");
        assert_eq!(field(b().advertise("10.0.0.5:0")), "advertise");
        assert!(b().advertise("node-1.example.internal").build().is_ok());
        assert_eq!(field(b().advertise("[::]")), "advertise");
        assert_eq!(advertised("[2001:db8::1]:7000").unwrap(), "[2001:db8::1]:7000");
        assert_eq!(advertised("2001:db8::1").unwrap(), "2001:db8::1");
        assert_eq!(field(b().raft_timing(Duration::from_micros(50_500), ms(150), ms(300))), "raft_heartbeat");
        assert_eq!(field(b().proxy_queues(1 << 30, 10)), "proxy_queue");
        assert!(b().advertise("10.0.0.5:7000").raft_timing(ms(20), ms(100), ms(200)).lease(ms(300)).build().is_ok());
        assert!(b().management_token("a".repeat(16)).build().is_ok());
        let weight = |b: Builder| b.build().unwrap_err().to_string();
        assert!(weight(b().shards(8).shard_weight(8, 2))
            .starts_with("shard_weights: shard 8 weight 2: there is no such shard"));
        assert!(
            weight(b().shard_weight(3, 0)).starts_with("shard_weights: shard 3 weight 0: the weight is not between 1")
        );
        assert!(weight(b().shard_weight(3, 1_000_001)).contains("not between 1 and 1000000"));
        assert!(b().shards(8).shard_weight(7, 1_000_000).build().is_ok());
    }

    #[test]
    fn defaults_build() {
        let c = Builder::default().name("shop").env("dev").secret("00".repeat(32)).build().unwrap();
        assert_eq!(c.node.shards, 1024);
        assert_eq!(c.node.data_dir, PathBuf::from("clusterfunk-data/shop-dev"));
        assert_eq!(c.node.secret, Some([0u8; 32]));
    }
}
