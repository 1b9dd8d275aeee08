//! The consensus actor shell.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use openraft::error::{ClientWriteError as CWE, RaftError as RE};
use openraft::ChangeMembers;
use tokio::sync::watch;
use tracing::{info, warn};

use super::authorize::{self, Refusals, Unauthorized};
use super::auto::{self, Action, Settings};
use super::manage::{self, Done, ManageError, MemberOp, Rebalance, Step};
use super::network::Network;
use super::rpc::{self, LeaseGranter, RaftRequest, RaftResponse};
use super::state_machine::{AppliedState, StateMachine};
use super::store::Store;
use super::types::{matched_index, ClientWriteError, Raft, RaftError, RaftMetrics, RaftNode};
use crate::membership::{RaftMembers, View};
use crate::state::{Command, CommandResult};
use crate::transport::{self, parse_peer, InboundRaft};
use crate::types::NodeId;
use crate::wire;

const MAILBOX: usize = 1024;
const TICK: Duration = Duration::from_millis(100);
/// How long a membership step waits for a new learner to catch up.
const ADD_LEARNER: Duration = Duration::from_secs(10);
/// How long an operator's request waits for a membership change in progress.
const LOCK_WAIT: Duration = Duration::from_secs(15);
/// How long a step-down waits for the group to follow the new leader.
const STEP_DOWN: Duration = Duration::from_secs(5);
/// How long the liveness probe waits for the configuration's nodes to acknowledge it.
const PROBE: Duration = Duration::from_secs(1);
/// How long a voter change may take to commit before the request reports it.
const CHANGE: Duration = Duration::from_secs(10);
/// How long a leader holds a relayed request's RPC before answering `ManagePending` (below the
/// transport's 2 s RPC timeout).
const RELAY_ANSWER: Duration = Duration::from_millis(1200);
/// How long a rebalance plan or commit waits for the shard manager to be free.
const REBALANCE_WAIT: Duration = Duration::from_secs(5);
/// How long a membership write (a probe, a state command) may take to commit: a leader that
/// lost its quorum must answer rather than hold the lock.
const WRITE: Duration = Duration::from_secs(10);
/// How long a relaying node polls the leader for a pending request's answer (below the CLI's
/// 60 s read timeout, so the operator gets the relay's answer, not a timeout).
const RELAY_WAIT: Duration = Duration::from_secs(45);

/// An operator's membership request with the bearer token it came with
/// (docs/architecture.md §8.2): carried out on the leader, relayed there by any other member.
#[derive(Debug, Message)]
#[rtype(result = "Result<Done, ManageError>")]
pub struct Manage {
    /// The request.
    pub op: MemberOp,
    /// The operator's token.
    pub token: crate::types::Token,
}

/// Proposes a command; answered once it is committed and applied (or refused).
#[derive(Debug, Message)]
#[rtype(result = "Result<CommandResult, ProposeError>")]
pub struct Propose(pub Command);

/// Why a proposal failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// No leader is known right now; retry after an election.
    #[error("no raft leader is known")]
    NoLeader,
    /// Raft refused the write.
    #[error(transparent)]
    Raft(#[from] RaftError<ClientWriteError>),
    /// The leader could not be reached.
    #[error("forwarding to the leader failed: {0}")]
    Transport(#[from] transport::Error),
    /// The leader answered with something else.
    #[error("unexpected response from the leader")]
    Unexpected,
    /// This node is not the leader, and the command is one only a leader decides in its own
    /// term: it is not forwarded (docs/architecture.md §13).
    #[error("not the leader: a leader's decision is never forwarded to another leader")]
    NotLeader,
    /// The leader refused the forwarded command.
    #[error("the leader refused the command: {0}")]
    Refused(Unauthorized),
    /// A node of the configuration could not read the command yet.
    #[error(transparent)]
    Upgrade(manage::Refused),
}

/// The consensus actor.
pub struct Consensus {
    raft: Raft,
    transport: transport::Handle,
    applied: watch::Receiver<Arc<AppliedState>>,
    view: watch::Receiver<Arc<View>>,
    settings: Settings,
    lease: Arc<dyn LeaseGranter>,
    /// Serializes membership changes: auto steps and operators' requests.
    lock: Arc<tokio::sync::Mutex<()>>,
    refusals: Arc<Refusals>,
    membership: Recipient<RaftMembers>,
    announced: Vec<NodeId>,
    token: Option<crate::types::Token>,
    jobs: Arc<std::sync::Mutex<Jobs>>,
    /// The leader's shard manager, for rebalance plans and commits (it starts after consensus).
    rebalancer: Arc<OnceLock<Recipient<Rebalance>>>,
    /// Why an auto membership step waits for an upgrade (logged once per reason).
    upgrade_wait: Option<String>,
    metrics: crate::metrics::Metrics,
}

/// What carrying out a membership request needs, cloned out of the actor.
#[derive(Clone)]
struct Exec {
    raft: Raft,
    transport: transport::Handle,
    applied: watch::Receiver<Arc<AppliedState>>,
    view: watch::Receiver<Arc<View>>,
    lock: Arc<tokio::sync::Mutex<()>>,
    rebalancer: Arc<OnceLock<Recipient<Rebalance>>>,
}

impl Exec {
    /// Carries out `op` on this node, which must lead: plans it against the configuration and
    /// state of the moment (under the membership lock) and runs the steps in order. A `Replace`
    /// whose new node is not a learner yet runs in two rounds: admit it, then (with its
    /// acknowledgement) change the seat.
    async fn run(self, op: MemberOp) -> Result<Done, ManageError> {
        let commit = match &op {
            MemberOp::RebalancePlan => Some(None),
            MemberOp::RebalanceCommit(id) => Some(Some(id.clone())),
            _ => None,
        };
        if let Some(commit) = commit {
            return self.rebalance(commit).await;
        }
        let _guard =
            tokio::time::timeout(LOCK_WAIT, self.lock.clone().lock_owned()).await.map_err(|_| ManageError::Busy)?;
        let mut total = 0;
        let mut leader = None;
        for _round in 0..2 {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader != Some(m.id) {
                return Err(ManageError::NoLeader);
            }
            let live = if manage::changes_voters(&op) { self.probe(&m).await? } else { BTreeSet::new() };
            let m = self.raft.metrics().borrow().clone();
            let applied = self.applied.borrow().clone();
            let view = self.view.borrow().clone();
            let membership = m.membership_config.membership();
            let seen = manage::Seen {
                state: &applied.state,
                voters: membership.get_joint_config().last().cloned().unwrap_or_default(),
                nodes: membership.nodes().map(|(id, _)| *id).collect(),
                view: &view,
                leader: m.id,
                live,
            };
            let admitting = matches!(op, MemberOp::Replace { new, .. } if !seen.nodes.contains(&new));
            let steps = match manage::plan(&op, &seen) {
                Ok(steps) => steps,
                Err(why) => {
                    info!(op = op.name(), reason = %why, "membership request refused");
                    return Err(ManageError::Refused(why));
                }
            };
            let leaving = match op {
                MemberOp::Remove(id) | MemberOp::Replace { old: id, .. } => Some(id),
                _ => None,
            };
            for step in &steps {
                if let Step::Write(cmd) = step {
                    if let Err(why) = wire_gate_except(&self.raft, &self.transport, cmd, leaving) {
                        info!(op = op.name(), reason = %why, "membership request refused");
                        return Err(ManageError::Refused(why));
                    }
                }
            }
            info!(op = op.name(), ?op, steps = steps.len(), "membership request");
            total += steps.len();
            leader = self.steps(&op, steps).await?.or(Some(m.id));
            if !admitting {
                break;
            }
        }
        info!(op = op.name(), steps = total, "membership request done");
        Ok(Done { leader, steps: total, plan: None })
    }

    /// A rebalance plan or commit, which the leader's shard manager carries out (it decides
    /// every shard move, on its lease table).
    async fn rebalance(&self, commit: Option<String>) -> Result<Done, ManageError> {
        let me = {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader != Some(m.id) {
                return Err(ManageError::NoLeader);
            }
            m.id
        };
        // Under the membership lock, so no other operator's request (an abort, a pin) lands
        // between the plan of the moment and its commit.
        let _guard =
            tokio::time::timeout(LOCK_WAIT, self.lock.clone().lock_owned()).await.map_err(|_| ManageError::Busy)?;
        let to = self.rebalancer.get().ok_or(ManageError::Busy)?;
        let committing = commit.is_some();
        // The shard manager is busy while one of its own decisions commits, and a new leader
        // settles for about a second: both pass.
        let deadline = tokio::time::Instant::now() + REBALANCE_WAIT;
        let plan = loop {
            let r =
                to.send(Rebalance { commit: commit.clone() }).await.map_err(|e| ManageError::Failed(e.to_string()))?;
            match r {
                Err(ManageError::Busy | ManageError::Refused(manage::Refused::Settling))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => break r?,
            }
        };
        let steps = if committing { plan.moves.len() } else { 0 };
        Ok(Done { leader: Some(me), steps, plan: Some(plan) })
    }

    /// Which nodes acknowledge Raft now: this leader writes a probe entry (it registers itself
    /// again, which changes nothing) and waits up to [`PROBE`] for every node of the
    /// configuration to have it; the ones whose replication reached it are live.
    async fn probe(&self, m: &RaftMetrics) -> Result<BTreeSet<NodeId>, ManageError> {
        let failed = |e: &dyn std::fmt::Display| ManageError::Failed(format!("liveness probe: {e}"));
        let meta = self
            .applied
            .borrow()
            .state
            .members
            .get(&m.id)
            .cloned()
            .ok_or_else(|| failed(&"leader not registered yet"))?;
        let write = tokio::time::timeout(WRITE, self.raft.client_write(Command::RegisterMember { meta }));
        let index = write
            .await
            .map_err(|_| failed(&format!("the probe entry did not commit within {WRITE:?}")))?
            .map_err(|e| failed(&e))?
            .log_id
            .index;
        let nodes: BTreeSet<NodeId> = m.membership_config.membership().nodes().map(|(id, _)| *id).collect();
        let acked = |m: &RaftMetrics| -> BTreeSet<NodeId> {
            let Some(r) = m.replication.as_ref() else { return BTreeSet::new() };
            r.iter().filter(|(_, l)| l.is_some_and(|l| l.index >= index)).map(|(id, _)| *id).collect()
        };
        let mut metrics = self.raft.metrics();
        let me = m.id;
        let all = metrics.wait_for(|m| nodes.iter().all(|n| *n == me || acked(m).contains(n)));
        let _ = tokio::time::timeout(PROBE, all).await;
        let now = self.raft.metrics().borrow().clone();
        Ok(acked(&now))
    }

    /// Runs `steps` in order; returns the new leader if one took over (step-down).
    async fn steps(&self, op: &MemberOp, steps: Vec<Step>) -> Result<Option<NodeId>, ManageError> {
        let failed = |e: &dyn std::fmt::Display| ManageError::Failed(format!("{}: {e}", op.name()));
        let mut leader = None;
        for step in steps {
            match step {
                Step::Write(cmd) => match tokio::time::timeout(WRITE, self.raft.client_write(cmd)).await {
                    Ok(r) => r.map(|_| ()).map_err(|e| failed(&e))?,
                    Err(_) => return Err(failed(&format!("the write did not commit within {WRITE:?}"))),
                },
                Step::AddLearner(id, node) => {
                    match tokio::time::timeout(ADD_LEARNER, self.raft.add_learner(id, node, true)).await {
                        Ok(r) => r.map(|_| ()).map_err(|e| failed(&e))?,
                        Err(_) => return Err(failed(&format!("node {id} did not catch up within {ADD_LEARNER:?}"))),
                    }
                }
                Step::SetVoters(ids) => {
                    let change = self.raft.change_membership(ChangeMembers::ReplaceAllVoters(ids), true);
                    match tokio::time::timeout(CHANGE, change).await {
                        Ok(r) => r.map(|_| ()).map_err(|e| failed(&e))?,
                        Err(_) => {
                            return Err(failed(&format!(
                                "the voter change did not commit within {CHANGE:?}; it stays pending until its voters answer"
                            )))
                        }
                    }
                }
                Step::RemoveNodes(ids) => {
                    let change = self.raft.change_membership(ChangeMembers::RemoveNodes(ids), false);
                    match tokio::time::timeout(CHANGE, change).await {
                        Ok(r) => r.map(|_| ()).map_err(|e| failed(&e))?,
                        Err(_) => return Err(failed(&format!("the removal did not commit within {CHANGE:?}"))),
                    }
                }
                Step::HandOver => {
                    let new = super::handover::hand_over(&self.raft, &self.transport, STEP_DOWN).await;
                    // The handover stopped this node's heartbeats; it must send them again if
                    // it is elected later.
                    self.raft.runtime_config().heartbeat(true);
                    leader = Some(new.ok_or_else(|| failed(&"no other voter took over in time"))?);
                }
            }
        }
        Ok(leader)
    }
}

/// Refuses `cmd` while a node of the Raft configuration announced (at its last handshake) a wire
/// protocol version older than the one that introduced `cmd`: it could not decode the entry
/// and would stop at it. Nodes never seen since this one started are not counted.
fn wire_gate(raft: &Raft, transport: &transport::Handle, cmd: &Command) -> Result<(), manage::Refused> {
    wire_gate_except(raft, transport, cmd, None)
}

/// [`wire_gate`], not counting `leaving`: the node an operator removes or replaces (a dead old
/// node must not block its own removal; it never reads the log again).
fn wire_gate_except(
    raft: &Raft,
    transport: &transport::Handle,
    cmd: &Command,
    leaving: Option<NodeId>,
) -> Result<(), manage::Refused> {
    let needs = cmd.since_wire();
    if needs <= 1 {
        return Ok(());
    }
    let m = raft.metrics().borrow().clone();
    let oldest = m
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| Some(**id) != leaving)
        .filter_map(|(id, n)| {
            let wire = if *id == m.id {
                Some(transport.wire_version())
            } else {
                n.peer_id.and_then(|p| transport.peer_wire(&p))
            };
            wire.map(|w| (w, *id))
        })
        .min();
    match oldest {
        Some((has, node)) if has < needs => Err(manage::Refused::Upgrade { node, has, needs }),
        _ => Ok(()),
    }
}

/// The log index a linearizable read must wait for (Raft's ReadIndex): on the leader after it
/// confirmed its leadership with a quorum; elsewhere asked of the leader.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, String>")]
pub struct ReadIndex;

/// The read index on this node, which must lead: its applied index (every acknowledged write is
/// applied on the leader before it is acknowledged), if a quorum acknowledged it within the
/// election timeout, so no other leader can have been elected meanwhile (a lease read, Raft
/// thesis §6.4.1). Not openraft's `get_read_log_id`: it confirms with extra AppendEntries under
/// a one-heartbeat (50 ms) time limit, which a loaded node misses, and its failures log errors.
async fn read_index(raft: &Raft) -> Result<u64, String> {
    // Voters refuse to elect anyone for `election_timeout_max` after hearing from their leader
    // (openraft's leader lease): a quorum ack younger than that means no other leader yet.
    let window = raft.config().election_timeout_max;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) {
            return Err("this node no longer leads".into());
        }
        let alone = m.membership_config.membership().voter_ids().all(|v| v == m.id);
        let fresh = alone || m.millis_since_quorum_ack.is_some_and(|ms| ms < window);
        if fresh {
            return Ok(m.last_applied.map_or(0, |l| l.index));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match m.millis_since_quorum_ack {
                Some(ms) => format!("the leader last heard from a quorum {ms} ms ago"),
                None => "no quorum has acknowledged the leader yet".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The Raft leader's address record, if a leader is known.
fn leader_node(m: &RaftMetrics) -> Option<RaftNode> {
    m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned())
}

/// Relayed requests the leader still runs, by id: the peer that relayed it (the only one its
/// answer is given to) and the answer once done.
#[derive(Default)]
struct Jobs {
    next: u64,
    done: BTreeMap<u64, (libp2p::PeerId, Option<Result<Done, ManageError>>)>,
}

impl Jobs {
    /// At most this many answers are kept for relays that never came back for them.
    const KEEP: usize = 64;

    fn start(&mut self, relay: libp2p::PeerId) -> u64 {
        // Unpredictable ids: the token is checked again on every poll, but guessing ids should
        // not even be possible.
        self.next = self.next.wrapping_add(1 + rand::random::<u32>() as u64);
        while self.done.len() >= Self::KEEP {
            let Some(oldest) = self.done.keys().next().copied() else { break };
            self.done.remove(&oldest);
        }
        self.done.insert(self.next, (relay, None));
        self.next
    }

    /// The answer to job `id` for `relay`: `Some(None)` while it runs, taken once done; `None`
    /// if there is no such job of that relay.
    fn take(&mut self, id: u64, relay: &libp2p::PeerId) -> Option<Option<Result<Done, ManageError>>> {
        match self.done.get(&id) {
            Some((peer, None)) if peer == relay => Some(None),
            Some((peer, Some(_))) if peer == relay => self.done.remove(&id).map(|(_, r)| r),
            _ => None,
        }
    }
}

impl Consensus {
    /// Starts the Raft core on `arbiter` over the opened `store` and `sm`.
    pub async fn start_raft(
        id: NodeId,
        cfg: openraft::Config,
        store: Store,
        sm: StateMachine,
        transport: transport::Handle,
        arbiter: &ArbiterHandle,
    ) -> Result<Raft, openraft::error::Fatal<NodeId>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let network = Network { transport };
        let log = store.log_store();
        arbiter.spawn(async move {
            let r = Raft::new(id, Arc::new(cfg), network, log, sm).await;
            let _ = tx.send(r);
        });
        rx.await.unwrap_or(Err(openraft::error::Fatal::Stopped))
    }

    /// A consensus shell around a started `raft`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raft: Raft,
        transport: transport::Handle,
        applied: watch::Receiver<Arc<AppliedState>>,
        view: watch::Receiver<Arc<View>>,
        settings: Settings,
        lease: Arc<dyn LeaseGranter>,
        refusals: Arc<Refusals>,
        membership: Recipient<RaftMembers>,
        token: Option<crate::types::Token>,
    ) -> Consensus {
        let announced = Vec::new();
        Consensus {
            raft,
            transport,
            applied,
            view,
            settings,
            lease,
            lock: Arc::new(tokio::sync::Mutex::new(())),
            refusals,
            membership,
            announced,
            token,
            jobs: Default::default(),
            rebalancer: Default::default(),
            upgrade_wait: None,
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// Records the node's event metrics here (the time from a proposal to its result).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where the shard manager that carries out rebalance requests is set, once it started.
    pub fn rebalancer(&self) -> Arc<OnceLock<Recipient<Rebalance>>> {
        self.rebalancer.clone()
    }

    fn exec(&self) -> Exec {
        Exec {
            raft: self.raft.clone(),
            transport: self.transport.clone(),
            applied: self.applied.clone(),
            view: self.view.clone(),
            lock: self.lock.clone(),
            rebalancer: self.rebalancer.clone(),
        }
    }

    /// Counts a relayed request with a wrong token (logged at the first and every power of two).
    fn bad_token(&self, from: &libp2p::PeerId) {
        let n = self.refusals.bad_token();
        if n.is_power_of_two() {
            warn!(peer = %from, refused = n, "relayed management request with a wrong or missing token refused");
        }
    }

    /// Counts (and logs once) the nodes this leader sees that may not become members.
    fn note_unadmitted(&self, applied: &AppliedState, view: &View) {
        for id in auto::refused(applied, view, &self.settings) {
            if self.refusals.unadmitted(id) {
                let holder = view.members.get(&id).and_then(|m| auto::name_holder(&applied.state, &m.meta));
                match holder {
                    Some(holder) => {
                        warn!(node = %id, holder = %holder, "node refused membership: a member holds its instance id")
                    }
                    None => {
                        warn!(node = %id, "node refused membership: not on the allowlist (production mode) or removed by an operator")
                    }
                }
            }
        }
    }

    /// Applies the authorization rule (docs/architecture.md §13) to a request from `from`.
    fn authorize(&self, request: &RaftRequest, from: &libp2p::PeerId) -> Result<(), Unauthorized> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let local = authorize::Local { unjoined: membership.nodes().next().is_none(), term: m.current_term };
        let view = self.view.borrow();
        // Vouched: a member of this node's configuration lists the sender in its own.
        let vouched = |id| {
            membership.nodes().any(|(member, _)| {
                view.members.get(member).is_some_and(|v| *member != m.id && v.raft_members.contains(&id))
            })
        };
        authorize::authorize(request, authorize::sender(from, membership.nodes(), vouched), local)
    }

    /// Tells the membership actor this node's configuration members when they change (they go
    /// into its heartbeats, for nodes that lag behind a membership change).
    fn announce_members(&mut self, m: &RaftMetrics) {
        let ids: Vec<NodeId> = m.membership_config.membership().nodes().map(|(id, _)| *id).collect();
        // A full mailbox leaves `announced` as it was: tried again on the next tick.
        if ids != self.announced && self.membership.try_send(RaftMembers(ids.clone())).is_ok() {
            self.announced = ids;
        }
    }

    fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        let m = self.metrics();
        if let Err(openraft::error::Fatal::Stopped) = &m.running_state {
            // Shut down on purpose (Node::shutdown): this node stops, the process goes on.
            ctx.stop();
            return;
        }
        if let Err(fatal) = &m.running_state {
            crate::fatal::exit(&format!("raft stopped with a fatal error: {fatal}"));
        }
        self.announce_members(&m);
        if m.current_leader != Some(m.id) {
            return;
        }
        let Ok(guard) = self.lock.clone().try_lock_owned() else { return };
        let applied = self.applied.borrow().clone();
        let view = self.view.borrow().clone();
        self.note_unadmitted(&applied, &view);
        // Caught up: its log has reached the current membership entry (so it holds the entry that
        // made it a learner, and everything before it).
        let since = m.membership_config.log_id().map_or(0, |l| l.index);
        let caught_up = |id: NodeId| matched_index(&m, id).is_some_and(|i| i >= since);
        let Some(action) = auto::next_action(&applied, &view, &self.settings, &caught_up) else { return };
        if let Action::Write(cmd) = &action {
            if let Err(why) = wire_gate(&self.raft, &self.transport, cmd) {
                if self.upgrade_wait.replace(why.to_string()).as_deref() != Some(&why.to_string()) {
                    warn!(reason = %why, "membership step waits for an upgrade");
                }
                return;
            }
        }
        self.upgrade_wait = None;
        info!(?action, "membership step");
        let raft = self.raft.clone();
        let fut = async move {
            match action {
                Action::Write(cmd) => match tokio::time::timeout(WRITE, raft.client_write(cmd)).await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => {
                        warn!("membership write did not commit in time; retrying on a later tick");
                        Ok(())
                    }
                },
                // Not blocking until they caught up: promotion waits for that (`caught_up`), and
                // one that never answers (another cluster's member) must not hold up the rest.
                Action::AddLearners(nodes) => {
                    match tokio::time::timeout(WRITE, raft.change_membership(ChangeMembers::AddNodes(nodes), true))
                        .await
                    {
                        Ok(r) => r.map(|_| ()),
                        Err(_) => {
                            warn!("adding learners did not commit in time; retrying on a later tick");
                            Ok(())
                        }
                    }
                }
                Action::SetVoters(ids) => {
                    let change = raft.change_membership(ChangeMembers::ReplaceAllVoters(ids), true);
                    match tokio::time::timeout(CHANGE, change).await {
                        Ok(r) => r.map(|_| ()),
                        Err(_) => {
                            warn!("voter change did not commit in time; it stays pending until its voters answer");
                            Ok(())
                        }
                    }
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |res, _, _| {
            drop(guard);
            if let Err(e) = res {
                warn!(error = %e, "membership step failed; retrying on the next tick");
            }
        }));
    }
}

impl Actor for Consensus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        ctx.run_interval(TICK, |act, ctx| act.on_tick(ctx));
    }
}

impl Handler<InboundRaft> for Consensus {
    type Result = ();

    fn handle(&mut self, msg: InboundRaft, _: &mut Context<Self>) {
        // Decoded here, not in the transport (which knows no protocol above it): a request that
        // does not decode closes the connection to its sender, and the reply is dropped.
        let request: RaftRequest = match wire::decode(&msg.request) {
            Ok(r) => r,
            Err(e) => return self.transport.malformed(msg.from, &e),
        };
        let reply = move |resp: RaftResponse| {
            let _ = msg.reply.send(wire::encode(&resp));
        };
        if let Err(why) = self.authorize(&request, &msg.from) {
            // Logged at the first refusal of a reason and then at every power of two, so a
            // peer repeating itself cannot flood the log; the counter has every one.
            let n = self.refusals.bump(why);
            if n.is_power_of_two() {
                warn!(peer = %msg.from, reason = why.name(), request = request.kind(), refused = n, "raft request refused");
            }
            return reply(RaftResponse::Refused(why));
        }
        if let RaftRequest::Lease(req) = &request {
            return reply(RaftResponse::Lease(self.lease.grant(req)));
        }
        if let RaftRequest::Manage { op, token } = request {
            if let Err(e) = manage::check_token(self.token.as_ref(), &token) {
                self.bad_token(&msg.from);
                return reply(RaftResponse::Manage(Err(e)));
            }
            // Relayed once at most: a member that is not the leader answers NoLeader. A request
            // that runs longer than one RPC may take is answered `ManagePending`, and the relay
            // asks again.
            let (id, exec, jobs) =
                (self.jobs.lock().unwrap_or_else(|e| e.into_inner()).start(msg.from), self.exec(), self.jobs.clone());
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let relay = msg.from;
            actix::spawn(async move {
                let r = exec.run(op).await;
                jobs.lock().unwrap_or_else(|e| e.into_inner()).done.insert(id, (relay, Some(r.clone())));
                let _ = done_tx.send(r);
            });
            let jobs = self.jobs.clone();
            actix::spawn(async move {
                match tokio::time::timeout(RELAY_ANSWER, done_rx).await {
                    Ok(Ok(r)) => {
                        jobs.lock().unwrap_or_else(|e| e.into_inner()).done.remove(&id);
                        reply(RaftResponse::Manage(r))
                    }
                    _ => reply(RaftResponse::ManagePending(id)),
                }
            });
            return;
        }
        if let RaftRequest::ManageResult { id, token } = request {
            // Only the relay of job `id` gets anything, the token checked first: a peer that
            // relayed nothing learns nothing, not even whether a token it guesses is right.
            let unknown = || {
                RaftResponse::Manage(Err(ManageError::Failed(format!(
                    "the leader knows no request {id} (it restarted or lost leadership); check the cluster and retry"
                ))))
            };
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if jobs.done.get(&id).is_none_or(|(peer, _)| *peer != msg.from) {
                return reply(unknown());
            }
            if let Err(e) = manage::check_token(self.token.as_ref(), &token) {
                drop(jobs);
                self.bad_token(&msg.from);
                return reply(RaftResponse::Manage(Err(e)));
            }
            return match jobs.take(id, &msg.from) {
                Some(None) => reply(RaftResponse::ManagePending(id)),
                Some(Some(r)) => reply(RaftResponse::Manage(r)),
                None => reply(unknown()),
            };
        }
        if let RaftRequest::ReadIndex = &request {
            let raft = self.raft.clone();
            actix::spawn(async move { reply(RaftResponse::ReadIndex(read_index(&raft).await)) });
            return;
        }
        if let RaftRequest::Elect = &request {
            let accepted = super::handover::from_leader(&self.raft, &msg.from);
            if accepted {
                actix::spawn(super::handover::stand_for_election(self.raft.clone()));
            }
            return reply(RaftResponse::Elect(accepted));
        }
        let raft = self.raft.clone();
        actix::spawn(async move {
            let resp = match request {
                RaftRequest::Lease(_)
                | RaftRequest::Elect
                | RaftRequest::Manage { .. }
                | RaftRequest::ManageResult { .. }
                | RaftRequest::ReadIndex => {
                    unreachable!("answered above")
                }
                RaftRequest::AppendEntries(r) => RaftResponse::AppendEntries(raft.append_entries(r).await),
                RaftRequest::Vote(r) => RaftResponse::Vote(raft.vote(r).await),
                RaftRequest::InstallSnapshot(r) => RaftResponse::InstallSnapshot(raft.install_snapshot(r).await),
                RaftRequest::ClientWrite(cmd) => {
                    RaftResponse::ClientWrite(raft.client_write(cmd).await.map(|r| r.data))
                }
            };
            reply(resp);
        });
    }
}

impl Handler<Propose> for Consensus {
    type Result = ResponseFuture<Result<CommandResult, ProposeError>>;

    fn handle(&mut self, msg: Propose, _: &mut Context<Self>) -> Self::Result {
        let raft = self.raft.clone();
        let transport = self.transport.clone();
        let local = self.raft.metrics().borrow().id;
        // Raft shut down (the node stops): nothing to ask it, and a call into a stopped core is
        // logged by openraft as an error.
        if self.raft.metrics().borrow().running_state.is_err() {
            return Box::pin(std::future::ready(Err(ProposeError::NoLeader)));
        }
        if let Err(why) = wire_gate(&self.raft, &self.transport, &msg.0) {
            return Box::pin(std::future::ready(Err(ProposeError::Upgrade(why))));
        }
        let (started, took) = (std::time::Instant::now(), self.metrics.raft_write_seconds.clone());
        Box::pin(async move {
            let _timed = crate::metrics::Timed::new(started, took);
            match raft.client_write(msg.0.clone()).await {
                Ok(r) => Ok(r.data),
                Err(RE::APIError(CWE::ForwardToLeader(fwd))) => {
                    // Only what concerns this node itself is forwarded. A shard move decided
                    // here while leader was decided on this leader's lease table: forwarded to
                    // the next leader it would be committed in a term whose leases it never saw
                    // (found by the chaos lab's flapping scenario: two owners for 0.1-0.4 ms).
                    if authorize::forwardable(&msg.0, local).is_err() {
                        return Err(ProposeError::NotLeader);
                    }
                    let node: RaftNode = fwd.leader_node.ok_or(ProposeError::NoLeader)?;
                    let (peer, addrs) = parse_peer(&node.peer_id, &node.addrs)?;
                    match rpc::call(&transport, peer, addrs, &RaftRequest::ClientWrite(msg.0)).await? {
                        RaftResponse::ClientWrite(r) => Ok(r?),
                        RaftResponse::Refused(why) => Err(ProposeError::Refused(why)),
                        _ => Err(ProposeError::Unexpected),
                    }
                }
                Err(e) => Err(e.into()),
            }
        })
    }
}

impl Handler<Manage> for Consensus {
    type Result = ResponseFuture<Result<Done, ManageError>>;

    fn handle(&mut self, msg: Manage, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = manage::check_token(self.token.as_ref(), &msg.token) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let m = self.metrics();
        if m.current_leader == Some(m.id) {
            return Box::pin(self.exec().run(msg.op));
        }
        let (Some(node), Some(leader)) = (leader_node(&m), m.current_leader) else {
            return Box::pin(std::future::ready(Err(ManageError::NoLeader)));
        };
        let transport = self.transport.clone();
        Box::pin(async move {
            let (peer, addrs) =
                parse_peer(&node.peer_id, &node.addrs).map_err(|e| ManageError::Unreachable(e.to_string()))?;
            // A leader of an older build could not decode the op (and would drop this node for it).
            let needs = msg.op.since_wire();
            if let Some(has) = transport.peer_wire(&peer).filter(|has| *has < needs) {
                return Err(ManageError::Refused(manage::Refused::Upgrade { node: leader, has, needs }));
            }
            let deadline = tokio::time::Instant::now() + RELAY_WAIT;
            let mut request = RaftRequest::Manage { op: msg.op, token: msg.token.clone() };
            loop {
                match rpc::call(&transport, peer, addrs.clone(), &request).await {
                    Ok(RaftResponse::Manage(r)) => return r,
                    Ok(RaftResponse::ManagePending(id)) if tokio::time::Instant::now() < deadline => {
                        request = RaftRequest::ManageResult { id, token: msg.token.clone() };
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Ok(RaftResponse::ManagePending(id)) => {
                        return Err(ManageError::Failed(format!(
                            "request {id} still runs on the leader after {RELAY_WAIT:?}; check `members`"
                        )))
                    }
                    Ok(RaftResponse::Refused(why)) => {
                        return Err(ManageError::Failed(format!("the leader refused the relay: {why}")))
                    }
                    Ok(_) => return Err(ManageError::Failed("unexpected answer from the leader".into())),
                    // A poll lost on the way is asked again; the request itself is not resent.
                    Err(_)
                        if matches!(request, RaftRequest::ManageResult { .. })
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => return Err(ManageError::Unreachable(e.to_string())),
                }
            }
        })
    }
}

impl Handler<ReadIndex> for Consensus {
    type Result = ResponseFuture<Result<u64, String>>;

    fn handle(&mut self, _: ReadIndex, _: &mut Context<Self>) -> Self::Result {
        let m = self.metrics();
        let raft = self.raft.clone();
        if m.current_leader == Some(m.id) {
            return Box::pin(async move { read_index(&raft).await });
        }
        let Some(node) = leader_node(&m) else {
            return Box::pin(std::future::ready(Err("no raft leader is known".to_string())));
        };
        let transport = self.transport.clone();
        Box::pin(async move {
            let (peer, addrs) = parse_peer(&node.peer_id, &node.addrs).map_err(|e| e.to_string())?;
            match rpc::call(&transport, peer, addrs, &RaftRequest::ReadIndex).await {
                Ok(RaftResponse::ReadIndex(r)) => r,
                Ok(RaftResponse::Refused(why)) => Err(format!("the leader refused: {why}")),
                Ok(_) => Err("unexpected answer from the leader".into()),
                Err(e) => Err(format!("the leader could not be reached: {e}")),
            }
        })
    }
}

/// Initializes a new single-node cluster with this node as its only voter.
pub(crate) async fn bootstrap(
    raft: &Raft,
    id: NodeId,
    node: RaftNode,
) -> Result<(), RaftError<openraft::error::InitializeError<NodeId, RaftNode>>> {
    raft.initialize(BTreeMap::from([(id, node)])).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_answer_goes_to_its_relay_only_and_once() {
        let (relay, other) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let mut jobs = Jobs::default();
        let id = jobs.start(relay);
        assert_eq!(jobs.take(id, &relay), Some(None), "still running");
        assert_eq!(jobs.take(id, &other), None, "another peer learns nothing");
        let done = Ok(Done { leader: None, steps: 2, plan: None });
        jobs.done.insert(id, (relay, Some(done.clone())));
        assert_eq!(jobs.take(id, &other), None);
        assert_eq!(jobs.take(id, &relay), Some(Some(done)));
        assert_eq!(jobs.take(id, &relay), None, "taken once");
        // Bounded: the oldest answers nobody fetched make room.
        let first = jobs.start(relay);
        for _ in 0..Jobs::KEEP {
            jobs.start(relay);
        }
        assert_eq!(jobs.done.len(), Jobs::KEEP);
        assert_eq!(jobs.take(first, &relay), None);
    }
}
