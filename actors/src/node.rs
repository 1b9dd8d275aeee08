//! One node: identity, data directory checks, and the actors wired together (docs/architecture.md §2).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::consensus::auto::Settings;
use crate::consensus::store::{OpenError, Store};
use crate::consensus::types::{Raft, RaftError, RaftMetrics, RaftNode};
use crate::consensus::{self, AppliedState, Consensus, Propose, StateMachine};
use crate::events::ClusterEvent;
use crate::lease::{self, Clock, LeaseService, SystemClock};
use crate::membership::{self, Membership, RaftMembers, View};
use crate::serving::{self, FileJournal, Journal, Ownership, ShardHooks};
use crate::shard_manager::{self, ShardManager};
use crate::state::{Command, CommandResult};
use crate::transport::{self, Transport};
use crate::types::{ClusterName, NodeId, NodeMeta};
use crate::workers::WorkerIndex;

/// Everything a node needs to start. Validated by the `clusterfunk` crate's builder.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster's name.
    pub cluster: ClusterName,
    /// Where the node keeps its key and Raft store.
    pub data_dir: PathBuf,
    /// Where to listen.
    pub listen: Multiaddr,
    /// Static seeds (`host:port`).
    pub seeds: Vec<String>,
    /// Other discovery sources (`transport::seeds::Discovery`), run like the seeds.
    pub discovery: crate::transport::seeds::Sources,
    /// Create a new cluster with this node as its first voter.
    pub bootstrap: bool,
    /// Shards (used by the node that initializes the cluster state).
    pub shards: u32,
    /// Copies per shard.
    pub replica_factor: u32,
    /// Target voters in auto mode.
    pub voters: usize,
    /// Whether discovered nodes join automatically (dev mode); off in production mode, where
    /// only nodes on the allowlist (by command, or `members`) are admitted.
    pub auto_join: bool,
    /// Start a new cluster with manual rebalancing (`auto::Settings::manual_rebalance`).
    pub manual_rebalance: bool,
    /// Shard weights a new cluster starts with (`auto::Settings::shard_weights`).
    pub shard_weights: Vec<(crate::types::ShardId, u32)>,
    /// Production mode: the nodes the configuration lists as members (admitted and promoted to
    /// voters up to `voters` by the leader).
    pub members: Vec<NodeId>,
    /// The bearer token operators' membership requests must carry (`None`: this node accepts
    /// none).
    pub management_token: Option<crate::types::Token>,
    /// This node's weight.
    pub weight: u32,
    /// This node's worker count.
    pub workers: u32,
    /// Static worker indices: `(base, total)` from configuration instead of the cluster state.
    pub static_workers: Option<(u64, u64)>,
    /// The instance id that names this node for people (`None`: the one kept in the data
    /// directory, if any).
    pub name: Option<String>,
    /// This node's zone.
    pub zone: Option<String>,
    /// This node's dashboard address, announced to others (`0.0.0.0:port`: the host of a
    /// listening address is published instead).
    pub dashboard: Option<String>,
    /// Named endpoints announced with the node's membership (`NodeMeta::endpoints`).
    pub endpoints: std::collections::BTreeMap<String, String>,
    /// Metadata announced with the node's membership (`NodeMeta::metadata`).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The host (or `host:port`) published instead of the listening addresses.
    pub advertise: Option<String>,
    /// The wire protocol version announced at handshakes, for tests that stand in for an older
    /// build (default: [`crate::wire::VERSION`]).
    pub wire_version: Option<u32>,
    /// Pre-shared cluster secret.
    pub secret: Option<[u8; 32]>,
    /// mDNS discovery on or off.
    pub mdns: bool,
    /// Membership timings.
    pub membership: membership::Config,
    /// Raft timings.
    pub raft: consensus::Config,
    /// Shard manager timings.
    pub shard_manager: shard_manager::Config,
    /// Lease timings.
    pub lease: lease::Config,
    /// Where to append the ownership journal (JSON lines), if anywhere.
    pub journal: Option<PathBuf>,
    /// How long each shard hook may run before the shard proceeds without it.
    pub hook_budget: std::time::Duration,
    /// Message-level fault injection from the start (tests and the chaos lab). Default none.
    pub faults: Option<crate::faults::FaultPlan>,
    /// Storage fault injection: the Raft store fails its write after this many (tests and the
    /// chaos lab: the node must exit with code 70). Default none.
    pub fail_disk_after: Option<u64>,
    /// Storage fault injection: while this file exists the node reads a number of milliseconds
    /// from it, deletes it, and stalls its next durable write that long (as the leader, it then
    /// writes one entry so the stall hits its Raft core). Tests and the chaos lab. Default none.
    pub disk_stall_trigger: Option<PathBuf>,
    /// Runs the lease clock at this rate (1.0 = true time): a clock drifting past ρ, for the
    /// chaos lab. Default none.
    pub lease_clock_rate: Option<f64>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A file or directory under the data directory cannot be created, read or written.
    #[error("data_dir: cannot {action} {}: {source}", path.display())]
    DataDir {
        /// The file or directory.
        path: PathBuf,
        /// What was tried.
        action: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The node key file does not hold a node key (or a new one cannot be encoded).
    #[error("data_dir: {} is not a node key: {source}", path.display())]
    NodeKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: libp2p::identity::DecodingError,
    },
    /// The Raft store cannot be read.
    #[error("data_dir {}: cannot read the Raft store: {source}", path.display())]
    StoreRead {
        /// The data directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::Error,
    },
    /// The Raft store cannot be used.
    #[error("data_dir: {0}")]
    Store(#[from] OpenError),
    /// The node key survived but the Raft store next to it did not (docs/architecture.md §13).
    #[error(
        "data_dir {}: the node key is there but the Raft store (raft.redb) is gone or empty: this node id would \
         come back without the votes it cast, and could vote twice in one term. Start the node with a new \
         data_dir (it gets a new id); the old id stays in the cluster's configuration until an operator removes it",
        .0.display()
    )]
    LostStore(PathBuf),
    /// The Raft store holds state but the node key next to it is gone (docs/architecture.md §13).
    #[error(
        "data_dir {}: the Raft store holds a node's votes and log but the node key (node.key) is gone: a new key \
         would be a new node on another node's votes. Restore node.key, or start with a new data_dir",
        .0.display()
    )]
    LostKey(PathBuf),
    /// `bootstrap` was asked for on a data directory that already holds a cluster.
    #[error("bootstrap: the data directory {0} already holds a cluster; start without --bootstrap to rejoin it")]
    AlreadyBootstrapped(PathBuf),
    /// The transport could not start.
    #[error("listen: {0}")]
    Transport(#[from] transport::StartError),
    /// The Raft configuration was refused.
    #[error("raft config: {0}")]
    RaftConfig(#[from] Box<openraft::ConfigError>),
    /// Raft could not start.
    #[error("raft: {0}")]
    Raft(#[from] Box<openraft::error::Fatal<NodeId>>),
    /// The lease settings do not fit the Raft timings.
    #[error(transparent)]
    Lease(#[from] lease::ConfigError),
    /// The ownership journal cannot be opened.
    #[error("journal: {0}")]
    Journal(std::io::Error),
    /// The new cluster could not be initialized.
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] Box<RaftError<openraft::error::InitializeError<NodeId, RaftNode>>>),
}

/// A running node.
pub struct Node {
    /// The node's id.
    pub id: NodeId,
    /// The transport handle.
    pub transport: transport::Handle,
    /// The Raft handle (metrics: leader, term, membership).
    pub raft: Raft,
    /// The applied cluster state.
    pub applied: watch::Receiver<Arc<AppliedState>>,
    /// The membership view.
    pub view: watch::Receiver<Arc<View>>,
    /// The committed shard map.
    pub map: consensus::MapView,
    /// What this node serves now (lease, active shards with their epochs).
    pub ownership: Arc<Ownership>,
    /// The lease service (leader side) and timings.
    pub lease: Arc<LeaseService>,
    /// Until when this node's lease lets it serve.
    pub lease_until: watch::Receiver<Option<std::time::Instant>>,
    /// The serving task's counters.
    pub serving: Arc<serving::Counters>,
    /// Raft, lease and forwarded-command requests refused by the authorization rule, per reason.
    pub refusals: Arc<consensus::authorize::Refusals>,
    /// Cluster-level events as this node sees them.
    pub events: broadcast::Sender<ClusterEvent>,
    /// This node's place in the worker index (`crate::workers`), as it changes.
    pub workers: watch::Receiver<WorkerIndex>,
    /// This node's instance id, if it has one.
    pub name: Option<String>,
    /// Why this node is refused membership, while it is (another member holds its instance id).
    pub refused: watch::Receiver<Option<String>>,
    workers_tx: Arc<watch::Sender<WorkerIndex>>,
    /// What the actors measure as it happens (docs/operations.md, "Metrics").
    pub metrics: crate::metrics::Metrics,
    hooks: watch::Sender<Option<Arc<dyn ShardHooks>>>,
    consensus: Addr<Consensus>,
    leaving: Arc<std::sync::atomic::AtomicBool>,
    store: Store,
    arbiters: Vec<Arbiter>,
}

/// A durable write pending longer than this makes the node unhealthy.
pub const WRITE_STALLED: std::time::Duration = std::time::Duration::from_secs(1);

impl Node {
    /// Starts a node. Must run inside an actix `System`.
    pub async fn start(cfg: Config) -> Result<Node, StartError> {
        let clock: Arc<dyn Clock> = match cfg.lease_clock_rate {
            Some(rate) => {
                warn!(rate, "fault injection: the lease clock runs at this rate of true time");
                Arc::new(crate::lease::SkewedClock::new(rate))
            }
            None => Arc::new(SystemClock),
        };
        Node::start_with_clock(cfg, clock).await
    }

    /// Starts a node measuring leases on `clock` (tests skew it).
    pub async fn start_with_clock(mut cfg: Config, clock: Arc<dyn Clock>) -> Result<Node, StartError> {
        cfg.lease.validate(cfg.raft.heartbeat_interval).map_err(StartError::Lease)?;
        cfg.shard_manager.takeover = cfg.lease.takeover_after();
        // The store is created (and its directory entry synced) before the key: a key without
        // its store is then always a lost store, never a first start that stopped between the
        // two (docs/architecture.md §13).
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
            path: dir.clone(),
            action: "create",
            source,
        })?;
        let key_exists = dir.join(KEY_FILE).exists();
        let store_len = std::fs::metadata(dir.join(consensus::store::FILE)).map_or(0, |m| m.len());
        if key_exists && store_len == 0 {
            return Err(StartError::LostStore(dir.clone()));
        }
        let disk = match cfg.fail_disk_after {
            Some(n) => crate::faults::DiskFaults::fail_after(n),
            None => crate::faults::DiskFaults::off(),
        };
        let store = match Store::open_checked(&cfg.data_dir, &cfg.cluster, Arc::new(disk), key_exists) {
            Err(OpenError::Lost(_)) => return Err(StartError::LostStore(dir.clone())),
            r => r?,
        };
        if !key_exists {
            if store.has_raft_state().map_err(|source| StartError::StoreRead { path: dir.clone(), source })? {
                return Err(StartError::LostKey(dir.clone()));
            }
            sync_dir(dir).map_err(|source| StartError::DataDir { path: dir.clone(), action: "sync", source })?;
        }
        let keypair = load_or_create_key(&cfg.data_dir)?;
        let peer = keypair.public().to_peer_id();
        let id = NodeId::from_peer_bytes(&peer.to_bytes());
        let has_state =
            store.has_raft_state().map_err(|source| StartError::StoreRead { path: cfg.data_dir.clone(), source })?;
        if cfg.bootstrap && has_state {
            return Err(StartError::AlreadyBootstrapped(cfg.data_dir.clone()));
        }
        let (mut sm, applied) =
            StateMachine::open(store.clone()).map_err(|e| StartError::Store(OpenError::Corrupt(e)))?;
        let journal = match &cfg.journal {
            Some(p) => Some(Arc::new(FileJournal::open(p).map_err(StartError::Journal)?) as Arc<dyn Journal>),
            None => None,
        };
        let ownership = Arc::new(Ownership::new(id, clock.clone(), journal));
        let own = ownership.clone();
        sm.before_publish(Box::new(move |a| own.revoke(&a.state.shard_map)));
        info!(node = %id, %peer, cluster = %cfg.cluster, data_dir = %cfg.data_dir.display(), restarted = has_state, "starting node");
        if cfg.secret.is_none() && cfg.auto_join {
            warn!(
                "no cluster secret: any host that reaches this node can join the cluster and be given shards \
                 (automatic membership); set a cluster secret outside a network you trust (docs/operations.md)"
            );
        }

        let mut membership_ctx = Context::<Membership>::new();
        membership_ctx.set_mailbox_capacity(1024);
        let membership_addr = membership_ctx.address();
        let mut consensus_ctx = Context::<Consensus>::new();
        consensus_ctx.set_mailbox_capacity(1024);
        let outputs = transport::Outputs {
            events: membership_ctx.address().recipient(),
            raft: consensus_ctx.address().recipient(),
        };
        let transport_arbiter = Arbiter::new();
        let raft_arbiter = Arbiter::new();
        let mut tcfg = transport::Config::new(cfg.cluster.clone(), keypair, cfg.listen.clone());
        tcfg.seeds = cfg.seeds.clone();
        tcfg.discovery = cfg.discovery.clone();
        tcfg.secret = cfg.secret;
        tcfg.mdns = cfg.mdns;
        tcfg.faults = cfg.faults.clone();
        tcfg.wire_version = cfg.wire_version.unwrap_or(crate::wire::VERSION);
        let transport = Transport::spawn(tcfg, outputs, &transport_arbiter.handle()).await?;

        let raft_cfg = cfg.raft.to_openraft(&cfg.cluster.to_string())?;
        let kept_store = store.clone();
        let raft = Consensus::start_raft(id, raft_cfg, store, sm, transport.clone(), &raft_arbiter.handle())
            .await
            .map_err(Box::new)?;
        // With nobody to discover (no seeds, no mDNS) a bootstrap node creates its cluster at
        // once; otherwise it first looks around (`bootstrap_when_alone`).
        let discovers = !cfg.seeds.is_empty() || !cfg.discovery.is_empty() || cfg.mdns;
        let raft_addr = membership::published_addr(&cfg.listen, cfg.advertise.as_deref());
        let raft_node = RaftNode { peer_id: Some(peer), addrs: vec![raft_addr.to_string()] };
        if cfg.bootstrap && !discovers {
            consensus::actor_bootstrap(&raft, id, raft_node.clone()).await.map_err(Box::new)?;
            info!(node = %id, "bootstrapped a new cluster");
        }

        let name = instance_name(dir, cfg.name.clone())?;
        let meta = NodeMeta {
            id,
            peer_id: Some(peer),
            addrs: Vec::new(),
            weight: cfg.weight,
            // A node with static indices takes no part in the dynamic index.
            workers: if cfg.static_workers.is_some() { 0 } else { cfg.workers },
            zone: cfg.zone.clone(),
            dashboard: cfg.dashboard.clone(),
            name: name.clone(),
            endpoints: cfg.endpoints.clone(),
            metadata: cfg.metadata.clone(),
        };
        let core = membership::Core::new(cfg.membership.clone(), cfg.cluster.clone(), peer, meta, rand::random())
            .with_advertise(cfg.advertise.clone());
        let (membership, view) = Membership::new(core, transport.clone());
        membership_ctx.run(membership);
        let settings = Settings {
            cluster: cfg.cluster.clone(),
            shards: cfg.shards,
            replica_factor: cfg.replica_factor,
            voters: cfg.voters,
            auto_join: cfg.auto_join,
            members: cfg.members.clone(),
            manual_rebalance: cfg.manual_rebalance,
            shard_weights: cfg.shard_weights.clone(),
        };
        let lease =
            Arc::new(LeaseService::new(cfg.lease.clone(), raft.clone(), clock.clone(), cfg.raft.election_timeout.1));
        let refusals = Arc::new(consensus::authorize::Refusals::default());
        let consensus_actor = Consensus::new(
            raft.clone(),
            transport.clone(),
            applied.clone(),
            view.clone(),
            settings,
            lease.clone(),
            refusals.clone(),
            membership_addr.clone().recipient(),
            cfg.management_token.clone(),
        );
        let metrics = crate::metrics::Metrics::default();
        let consensus_actor = consensus_actor.with_metrics(metrics.clone());
        let rebalancer = consensus_actor.rebalancer();
        let consensus = consensus_ctx.run(consensus_actor);
        let (events, _) = broadcast::channel(1024);
        let map = consensus::MapView::new(applied.clone());
        let sm_actor = ShardManager::new(
            shard_manager::Core::new(cfg.shard_manager.clone()),
            raft.clone(),
            consensus.clone(),
            lease.clone(),
            applied.clone(),
            view.clone(),
            events.clone(),
        )
        .with_metrics(metrics.clone());
        let _ = rebalancer.set(sm_actor.start().recipient());
        let own = ownership.clone();
        let lease_until = lease::spawn_keeper(
            lease.clone(),
            id,
            Arc::new(move |until| own.set_lease(until)),
            transport.clone(),
            applied.clone(),
            &raft_arbiter.handle(),
        );
        let (hooks, hooks_rx) = watch::channel(None);
        let counters = Arc::new(serving::Counters::default());
        actix::spawn(serving::run(
            counters.clone(),
            serving::Inputs {
                ownership: ownership.clone(),
                applied: applied.clone(),
                lease: lease_until.clone(),
                consensus: consensus.clone(),
                hooks: hooks_rx,
                budget: cfg.hook_budget,
                metrics: metrics.clone(),
            },
        ));
        if cfg.bootstrap && discovers {
            actix::spawn(bootstrap_when_alone(id, raft.clone(), raft_node, view.clone(), membership_addr.clone()));
        }
        let leaving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        actix::spawn(serving::rejoin(id, consensus.clone(), applied.clone(), leaving.clone()));
        let first = match cfg.static_workers {
            Some((base, total)) => WorkerIndex::fixed(base, cfg.workers, total),
            None => WorkerIndex { count: cfg.workers, ..WorkerIndex::default() },
        };
        let (workers_tx, workers) = watch::channel(first);
        let workers_tx = Arc::new(workers_tx);
        let (refused_tx, refused) = watch::channel(None);
        if let Some(name) = name.clone() {
            actix::spawn(watch_name_conflict(id, name, view.clone(), refused_tx, events.clone()));
        }
        if cfg.static_workers.is_none() {
            let own = cfg.workers;
            actix::spawn(track_workers(id, own, applied.clone(), leaving.clone(), workers_tx.clone(), events.clone()));
        }
        if let Some(path) = cfg.disk_stall_trigger.clone() {
            actix::spawn(stall_trigger(path, kept_store.faults().clone(), raft.clone(), view.clone()));
        }
        Ok(Node {
            id,
            transport,
            raft,
            applied,
            view,
            map,
            ownership,
            lease,
            lease_until,
            serving: counters,
            refusals,
            events,
            workers,
            name,
            refused,
            workers_tx,
            metrics,
            hooks,
            consensus,
            leaving,
            store: kept_store,
            arbiters: vec![transport_arbiter, raft_arbiter],
        })
    }

    /// The highest Raft log index this node saved as committed (0: none yet).
    pub fn committed_index(&self) -> u64 {
        self.store.committed_index()
    }

    /// Installs what runs when this node's shards change. No shard is activated before it is set.
    pub fn set_hooks(&self, hooks: Arc<dyn ShardHooks>) {
        self.hooks.send_replace(Some(hooks));
    }

    /// Proposes a command through Raft (forwarded to the leader).
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, consensus::ProposeError> {
        self.consensus.send(Propose(cmd)).await.unwrap_or(Err(consensus::ProposeError::NoLeader))
    }

    /// Carries out an operator's membership request with its bearer token: on the leader, to
    /// which any other node relays it (docs/architecture.md §8.2).
    pub async fn manage(
        &self,
        op: consensus::manage::MemberOp,
        token: crate::types::Token,
    ) -> Result<consensus::manage::Done, consensus::manage::ManageError> {
        self.consensus
            .send(consensus::Manage { op, token })
            .await
            .unwrap_or_else(|_| Err(consensus::manage::ManageError::Failed("this node is stopping".into())))
    }

    /// The committed state as of now, linearizably: Raft's ReadIndex (asked of the leader, which
    /// confirms its leadership with a quorum), then this node's state once it applied that far
    /// (at most `timeout`). Any node gives an answer at least as new as every change committed
    /// before the call.
    pub async fn read_state(&self, timeout: std::time::Duration) -> Result<Arc<AppliedState>, String> {
        let index =
            self.consensus.send(consensus::ReadIndex).await.map_err(|_| "this node is stopping".to_string())??;
        let mut applied = self.applied.clone();
        let caught_up = async move {
            applied.wait_for(|a| a.last_applied.map_or(0, |l| l.index) >= index).await.map(|a| a.clone()).ok()
        };
        match tokio::time::timeout(timeout, caught_up).await {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Err("this node is stopping".into()),
            Err(_) => Err(format!("this node did not apply index {index} within {timeout:?}")),
        }
    }

    /// The arbiter running the swarm (and its connection tasks): stream work placed here avoids
    /// a thread hop per frame.
    pub fn transport_arbiter(&self) -> actix::ArbiterHandle {
        self.arbiters[0].handle()
    }

    /// Whether Raft runs and the disk answers: `Err` names what is wrong (a durable write
    /// pending longer than [`WRITE_STALLED`], Raft stopped). A failed write ends the process
    /// (exit 70), so it never shows here.
    pub fn health(&self) -> Result<(), String> {
        if let Err(e) = &self.metrics().running_state {
            return Err(format!("raft: stopped: {e}"));
        }
        match self.store.write_pending_for() {
            Some(d) if d > WRITE_STALLED => {
                Err(format!("storage: a durable write has been waiting {} ms for the disk", d.as_millis()))
            }
            _ => Ok(()),
        }
    }

    /// Whether this node is ready (what `GET /ready` serves): it holds a committed map and a
    /// valid lease, is neither fenced nor leaving, and serves every shard its map gives it
    /// ([`serving::ready::readiness`]). The map is the serving table's, so the shards it is
    /// compared with were revoked and activated against that very map.
    pub fn ready(&self) -> Result<(), serving::ready::NotReady> {
        let map = self.ownership.applied_map().unwrap_or_default();
        let draining = self.applied.borrow().state.is_draining(self.id);
        serving::ready::readiness(serving::ready::Inputs {
            local: self.id,
            map: &map,
            lease_valid: self.ownership.lease_valid(),
            refusal: self.lease.own_refusal(),
            draining,
            serving: |s| self.ownership.serving_epoch(s),
        })
    }

    /// The latest Raft metrics.
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// If this node is the Raft leader, hands leadership to the most caught-up other voter and
    /// waits (at most `timeout`) until the group follows it: what a leaving leader does before
    /// it stops. Returns the new leader, if there was a handover.
    pub async fn hand_over_leadership(&self, timeout: std::time::Duration) -> Option<NodeId> {
        consensus::handover::hand_over(&self.raft, &self.transport, timeout).await
    }

    /// Leaves the cluster gracefully: marks this node as leaving through Raft and waits (at most
    /// `timeout`) until every shard it owned was handed off, hands Raft leadership to the most
    /// caught-up other voter if it leads, then stops. Stops even when the handoff did not finish
    /// (its shards then move once its lease has run out), and says so.
    ///
    /// Not cancel-safe: dropped midway, the node stays marked as leaving (a restart clears it).
    pub async fn leave(&self, timeout: std::time::Duration) -> Result<(), serving::DrainError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // A leaving node never stands for election (it still votes).
        self.raft.runtime_config().elect(false);
        // Its workers stop being indexed now, before the cluster commits the leave: an index
        // it gives up early is never held twice.
        self.leaving.store(true, std::sync::atomic::Ordering::SeqCst);
        let now = *self.workers.borrow();
        publish_workers(&self.workers_tx, &self.events, &self.leaving, now);
        let result = serving::drain(self.id, &self.consensus, &self.applied, &self.leaving, timeout).await;
        if result == Ok(serving::Drained::AllLeaving) {
            self.quiesce().await;
        }
        // Then Raft leadership, if this node has it, so the group does not wait out an election
        // timeout for a leader that left on purpose; unless the whole cluster stops, when nobody
        // would take it.
        if result != Ok(serving::Drained::AllLeaving) {
            let left =
                deadline.saturating_duration_since(tokio::time::Instant::now()).max(std::time::Duration::from_secs(1));
            self.hand_over_leadership(left).await;
        }
        self.shutdown().await;
        result.map(|_| ())
    }

    /// The whole cluster stops: as leader, make sure every follower learned that (they have
    /// the last entry and one more heartbeat round told them it is committed), then send no more
    /// heartbeats, so nobody's Raft calls a peer that already stopped. Followers, which stand
    /// for no election while leaving, stop once the leader's heartbeats have stopped too (they
    /// learned it a heartbeat after it was replicated; the leader stops three heartbeats after
    /// that). At most about a second.
    async fn quiesce(&self) {
        let m = self.metrics();
        let beat = std::time::Duration::from_millis(self.raft.config().heartbeat_interval);
        if m.current_leader != Some(m.id) {
            tokio::time::sleep(beat * 6).await;
            return;
        }
        let index = m.last_log_index.unwrap_or(0);
        let me = m.id;
        let mut metrics = self.raft.metrics();
        let replicated = metrics.wait_for(|m| {
            m.replication
                .as_ref()
                .is_some_and(|r| r.iter().all(|(id, l)| *id == me || l.as_ref().is_some_and(|l| l.index >= index)))
        });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), replicated).await;
        tokio::time::sleep(beat * 3).await;
        self.raft.runtime_config().heartbeat(false);
    }

    /// Whether this node is leaving (or left).
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops Raft and the transport.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.transport.shutdown();
        for a in &self.arbiters {
            a.stop();
        }
    }
}

/// The node key's file name in the data directory.
const KEY_FILE: &str = "node.key";
/// The instance id's file name in the data directory.
const NAME_FILE: &str = "instance-id";

/// The instance id: `given` (written to the data directory when it differs from the one kept
/// there), else the one kept there, else none.
fn instance_name(dir: &Path, given: Option<String>) -> Result<Option<String>, StartError> {
    let io = |path: &Path, action, source| StartError::DataDir { path: path.to_path_buf(), action, source };
    let path = dir.join(NAME_FILE);
    let kept = match std::fs::read_to_string(&path) {
        Ok(text) => match crate::types::name_error(text.trim()) {
            None => Some(text.trim().to_string()),
            Some(reason) => {
                warn!(path = %path.display(), reason = %reason, "the kept instance id is not usable: ignored");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&path, "read", e)),
    };
    match given {
        Some(name) if kept.as_ref() != Some(&name) => {
            if let Some(old) = &kept {
                info!(old = %old, new = %name, "instance id changed");
            }
            let tmp = dir.join(format!("{NAME_FILE}.tmp"));
            std::fs::write(&tmp, format!("{name}\n")).map_err(|e| io(&tmp, "write", e))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io(&tmp, "sync", e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io(&path, "rename", e))?;
            sync_dir(dir).map_err(|e| io(dir, "sync", e))?;
            Ok(Some(name))
        }
        Some(name) => Ok(Some(name)),
        None => Ok(kept),
    }
}

/// Publishes this node's place in the worker index, and a `WorkersChanged` event (sent under the
/// watch's lock, so events come in the watch's order), if it changed. Once `leaving` is set the
/// node is out of the index for good: the first value after it is the one before with no index
/// (read under the lock, so a value computed before the leave began cannot overwrite it), and
/// later layouts are not followed.
fn publish_workers(
    tx: &watch::Sender<WorkerIndex>,
    events: &broadcast::Sender<ClusterEvent>,
    leaving: &std::sync::atomic::AtomicBool,
    next: WorkerIndex,
) {
    tx.send_if_modified(|w| {
        let next = match leaving.load(std::sync::atomic::Ordering::SeqCst) {
            true if w.index.is_none() => return false,
            true => w.left(),
            false => next,
        };
        if *w == next {
            return false;
        }
        *w = next;
        info!(
            index = next.index.map_or(-1, |i| i as i64),
            count = next.count,
            total = next.total,
            epoch = next.epoch,
            "worker index"
        );
        let _ = events.send(ClusterEvent::WorkersChanged(next));
        true
    });
}

/// While this node is not a member, whether a member it hears of holds its instance id (the
/// leader does not register a second holder, `consensus::auto::name_holder`): then it says so,
/// at ERROR (an operator has to act) and as a `MembershipRefused` event, once per reason.
async fn watch_name_conflict(
    id: NodeId,
    name: String,
    mut view: watch::Receiver<Arc<View>>,
    tx: watch::Sender<Option<String>>,
    events: broadcast::Sender<ClusterEvent>,
) {
    loop {
        let reason = {
            let v = view.borrow_and_update();
            let member = v.members.values().any(|m| m.raft_members.contains(&id));
            let holder = v.members.values().find(|m| {
                m.meta.id != id
                    && m.state == membership::MemberState::Up
                    && m.meta.name.as_deref() == Some(name.as_str())
                    && m.raft_members.contains(&m.meta.id)
            });
            match (member, holder) {
                (false, Some(h)) => Some(format!(
                    "instance id {name:?} is held by member {}: start this node with another one, or remove that member first (clusterfunk member remove {})",
                    h.meta.id, h.meta.id
                )),
                _ => None,
            }
        };
        if *tx.borrow() != reason {
            if let Some(r) = &reason {
                tracing::error!(node = %id, reason = %r, "refused membership");
                let _ = events.send(ClusterEvent::MembershipRefused(r.clone()));
            }
            tx.send_replace(reason);
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// Dynamic mode: derives this node's worker index from every applied state.
async fn track_workers(
    id: NodeId,
    own_count: u32,
    mut applied: watch::Receiver<Arc<AppliedState>>,
    leaving: Arc<std::sync::atomic::AtomicBool>,
    tx: Arc<watch::Sender<WorkerIndex>>,
    events: broadcast::Sender<ClusterEvent>,
) {
    loop {
        let mut next = WorkerIndex::of(&applied.borrow_and_update().state, id);
        if next.index.is_none() {
            next.count = own_count; // not registered (yet): what this node declares
        }
        publish_workers(&tx, &events, &leaving, next);
        if applied.changed().await.is_err() {
            return;
        }
    }
}

fn load_or_create_key(dir: &Path) -> Result<Keypair, StartError> {
    let io = |path: &Path, action, source| StartError::DataDir { path: path.to_path_buf(), action, source };
    let path = dir.join(KEY_FILE);
    let key_err = |source| StartError::NodeKey { path: path.clone(), source };
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(key_err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(key_err)?;
            write_private(&path, &bytes).map_err(|e| io(&path, "write", e))?;
            sync_dir(dir).map_err(|e| io(dir, "sync", e))?;
            Ok(key)
        }
        Err(e) => Err(io(&path, "read", e)),
    }
}

/// How long a bootstrap node that can discover others looks around, from the first node it
/// hears of, before it decides.
pub const BOOTSTRAP_LOOK: std::time::Duration = std::time::Duration::from_secs(2);
/// How long it waits to hear of any other node before it creates a cluster alone.
pub const BOOTSTRAP_ALONE: std::time::Duration = std::time::Duration::from_secs(10);

/// A node started to create a new cluster that can discover others (docs/architecture.md §8):
/// it announces that it is bootstrapping and looks around for [`BOOTSTRAP_LOOK`] from the first
/// node it hears of (at most [`BOOTSTRAP_ALONE`] if it hears of none). If some node
/// it sees already belongs to a cluster, or another bootstrapping node has a lower id, it does
/// not create one and joins instead (automatic membership adds it); otherwise it creates it.
/// Of several nodes started with `--bootstrap` at once that see each other, one cluster forms.
async fn bootstrap_when_alone(
    id: NodeId,
    raft: Raft,
    node: RaftNode,
    view: watch::Receiver<Arc<View>>,
    membership: actix::Addr<Membership>,
) {
    let announce = |b: bool| {
        if membership.try_send(membership::Bootstrapping(b)).is_err() {
            warn!(bootstrapping = b, "membership mailbox full: bootstrap intent not announced");
        }
    };
    announce(true);
    // The look starts at the first other node heard of (a seed may not listen yet when this
    // node starts: its redial comes seconds later), and ends alone after BOOTSTRAP_ALONE.
    let start = tokio::time::Instant::now();
    let mut first_heard = None;
    // Sticky over the whole look: a lower bootstrapping node seen once is not forgotten because
    // its latest heartbeat was lost or reordered.
    let mut lower_seen: Option<NodeId> = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = tokio::time::Instant::now();
        {
            let v = view.borrow();
            if v.members.len() > 1 {
                first_heard.get_or_insert(now);
            }
            let lower = v.members.values().filter(|m| m.bootstrapping && m.meta.id < id).map(|m| m.meta.id).min();
            lower_seen = match (lower_seen, lower) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let looked = first_heard.is_some_and(|t| now - t >= BOOTSTRAP_LOOK);
        if looked || now - start >= BOOTSTRAP_ALONE {
            break;
        }
    }
    let seen = view.borrow().clone();
    let member =
        seen.members.values().filter(|m| m.meta.id != id).find(|m| !m.raft_members.is_empty()).map(|m| m.meta.id);
    match (member, lower_seen) {
        (Some(m), _) => {
            warn!(node = %id, member = %m, "bootstrap: node {m} already belongs to a cluster of this name; joining it instead of creating another")
        }
        (None, Some(l)) => {
            info!(node = %id, winner = %l, "bootstrap: node {l} (a lower id) is creating this cluster at the same time; joining it")
        }
        (None, None) => match consensus::actor_bootstrap(&raft, id, node).await {
            Ok(()) => {
                info!(node = %id, looked_ms = start.elapsed().as_millis() as u64, seen = seen.members.len() - 1, "bootstrapped a new cluster");
                // Members first, then the end of the look (one mailbox, in order): no heartbeat
                // of this node says "not bootstrapping, no cluster" in between.
                if membership.try_send(RaftMembers(vec![id])).is_err() {
                    warn!("membership mailbox full: raft members not announced yet");
                }
            }
            Err(e) => {
                warn!(node = %id, error = %e, "bootstrap: node {id} was added to a cluster while it looked around; joining it")
            }
        },
    }
    announce(false);
}

/// Fault injection (`Config::disk_stall_trigger`): polls `path`; when it appears, stalls the
/// next durable write for the milliseconds it holds, and as the leader writes entries (its own
/// registration, unchanged: one, or as many as a second number in the file says) so that the
/// stall parks its Raft core and the followers append too.
async fn stall_trigger(
    path: PathBuf,
    disk: Arc<crate::faults::DiskFaults>,
    raft: Raft,
    view: watch::Receiver<Arc<View>>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let _ = std::fs::remove_file(&path);
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(ms)), writes) = (words.next(), words.next().unwrap_or(Ok(1))) else {
            warn!(path = %path.display(), %text, "disk stall trigger: expected `<ms> [writes]`");
            continue;
        };
        disk.stall_next(std::time::Duration::from_millis(ms));
        let m = raft.metrics().borrow().clone();
        let leads = m.current_leader == Some(m.id);
        warn!(stall_ms = ms, leads, "fault injection: the next durable write stalls");
        let meta = view.borrow().members.get(&m.id).map(|v| consensus::auto::admitted(&v.meta));
        if let (true, Some(meta), Ok(writes)) = (leads, meta, writes) {
            let raft = raft.clone();
            actix::spawn(async move {
                for _ in 0..writes {
                    if raft.client_write(Command::RegisterMember { meta: meta.clone() }).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
}

/// Makes the directory's entries (a file just created in it) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
