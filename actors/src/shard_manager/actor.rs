//! The shard manager actor: ticks the core on the leader, proposes its commands, publishes the
//! committed map, and reports cluster-level events (leader, members, rebalances).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use super::core::{Core, Decision};
use crate::consensus::manage::{ManageError, Rebalance, RebalancePlan, Refused};
use crate::consensus::types::Raft;
use crate::consensus::{AppliedState, Consensus, Propose};
use crate::events::ClusterEvent;
use crate::lease::LeaseService;
use crate::membership::{MemberState, View};
use crate::shard::{Allocation, Plan};
use crate::state::{ClusterState, Command, CommandResult};
use crate::types::NodeId;

/// The shard manager actor.
pub struct ShardManager {
    core: Core,
    raft: Raft,
    consensus: Addr<Consensus>,
    lease: Arc<LeaseService>,
    applied: watch::Receiver<Arc<AppliedState>>,
    view: watch::Receiver<Arc<View>>,
    events: broadcast::Sender<ClusterEvent>,
    leader: Option<NodeId>,
    up: BTreeSet<NodeId>,
    open_plan: Option<Plan>,
    /// When the open plan started (for `rebalance_seconds`).
    plan_started: Option<std::time::Instant>,
    busy: bool,
    metrics: crate::metrics::Metrics,
}

impl ShardManager {
    /// Records the node's event metrics here (rebalances and their duration).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A plan with moves started: it stays open until its last handoff is done.
    fn started(&mut self, plan: Plan) {
        self.metrics.rebalances.inc();
        if self.open_plan.is_none() {
            self.plan_started = Some(std::time::Instant::now());
        }
        self.open_plan = Some(plan);
    }

    /// A shard manager reporting events on `events`. (The committed map is the applied state's:
    /// readers take it through [`crate::consensus::MapView`].)
    pub fn new(
        core: Core,
        raft: Raft,
        consensus: Addr<Consensus>,
        lease: Arc<LeaseService>,
        applied: watch::Receiver<Arc<AppliedState>>,
        view: watch::Receiver<Arc<View>>,
        events: broadcast::Sender<ClusterEvent>,
    ) -> ShardManager {
        ShardManager {
            core,
            raft,
            consensus,
            lease,
            applied,
            view,
            events,
            leader: None,
            up: BTreeSet::new(),
            open_plan: None,
            plan_started: None,
            metrics: crate::metrics::Metrics::default(),
            busy: false,
        }
    }

    fn emit(&self, ev: ClusterEvent) {
        // No receiver yet is fine; a lagging receiver learns of the lag when it reads.
        let _ = self.events.send(ev);
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        let applied = self.applied.borrow().clone();
        self.watch_cluster();
        if self.open_plan.is_some() && !self.in_flight() && applied.state.handoffs.is_empty() {
            let plan = self.open_plan.take().expect("checked");
            if let Some(t) = self.plan_started.take() {
                self.metrics.rebalance_seconds.observe(t.elapsed().as_secs_f64());
            }
            info!(moves = plan.moves.len(), "rebalance finished");
            self.emit(ClusterEvent::RebalanceFinished(plan));
        }
        if self.busy {
            return;
        }
        let leader_for = self.lease.leader_for();
        // Whose lease ran out, asked once per member per tick (the core asks per shard). Those
        // nodes are fenced (no renewal granted) until the decision below is in the log or dropped.
        // Members, and the old owners of pending handoffs (one that is no longer a member must
        // still be released on the lease rule).
        let expired = match leader_for {
            Some(_) => self.fence_expired(&applied.state),
            None => BTreeSet::new(),
        };
        let decision = self.core.tick(Instant::now(), leader_for, &applied.state, |n| expired.contains(&n));
        let Decision::Commit(cmd, plan) = decision else {
            self.lease.unfence(expired);
            return;
        };
        self.busy = true;
        let send = self.consensus.send(Propose(cmd));
        ctx.spawn(send.into_actor(self).map(move |res, act, _| {
            act.core.committed();
            act.busy = false;
            act.lease.unfence(expired);
            match res {
                Ok(Ok(CommandResult::Applied { index })) => {
                    info!(epoch = index, "shard map committed");
                    if let Some(plan) = plan {
                        act.emit(ClusterEvent::RebalanceStarted(plan.clone()));
                        act.started(plan);
                    }
                }
                Ok(Ok(other)) => warn!(result = ?other, "shard map refused; recomputing"),
                Ok(Err(e)) => warn!(error = %e, "shard map proposal failed; retrying"),
                Err(e) => warn!(error = %e, "consensus mailbox unavailable; retrying"),
            }
        }));
    }

    /// Members (and old owners of pending handoffs: one that is no longer a member must still
    /// be released on the lease rule) whose lease surely ran out. They are fenced (no renewal
    /// granted) until the decision made on this is in the log or dropped: call `unfence`.
    fn fence_expired(&self, state: &ClusterState) -> BTreeSet<NodeId> {
        state
            .members
            .keys()
            .chain(state.handoffs.values().map(|h| &h.from))
            .copied()
            .collect::<BTreeSet<NodeId>>()
            .into_iter()
            .filter(|n| self.lease.fence_expired(*n))
            .collect()
    }

    fn in_flight(&self) -> bool {
        self.busy
    }

    fn watch_cluster(&mut self) {
        let (leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != self.leader {
            self.leader = leader;
            self.emit(ClusterEvent::LeaderChanged { leader, term });
        }
        let view = self.view.borrow().clone();
        let up: BTreeSet<NodeId> =
            view.members.iter().filter(|(_, m)| m.state != MemberState::Down).map(|(id, _)| *id).collect();
        for id in up.difference(&self.up) {
            self.emit(ClusterEvent::MemberUp(*id));
        }
        for id in self.up.difference(&up) {
            self.emit(ClusterEvent::MemberDown(*id));
        }
        self.up = up;
    }
}

/// The plan an operator sees: the allocation of the moment, named by a hash of its epoch and
/// every change.
fn plan_of(state: &ClusterState, alloc: &Allocation) -> RebalancePlan {
    let epoch = state.shard_map.epoch();
    let bytes = crate::wire::encode(&(epoch, &alloc.changes));
    RebalancePlan {
        id: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
        epoch,
        manual: state.manual_rebalance,
        moves: alloc.plan.moves.clone(),
        replica_changes: alloc.plan.replica_changes,
        loads: alloc.plan.loads.clone(),
    }
}

impl Handler<Rebalance> for ShardManager {
    type Result = ResponseActFuture<Self, Result<RebalancePlan, ManageError>>;

    /// An operator's plan or commit (relayed here by the consensus actor on the leader). A
    /// commit is decided like a tick: on the lease table, with expired owners fenced until it is
    /// in the log; shards of live owners move by handoff.
    fn handle(&mut self, msg: Rebalance, _: &mut Context<Self>) -> Self::Result {
        let done = |r| Box::pin(fut::ready(r));
        let Some(led) = self.lease.leader_for() else { return done(Err(ManageError::NoLeader)) };
        if !self.core.settled(led) {
            return done(Err(ManageError::Refused(Refused::Settling)));
        }
        if self.busy {
            return done(Err(ManageError::Busy));
        }
        let applied = self.applied.borrow().clone();
        let state = &applied.state;
        if !state.handoffs.is_empty() {
            return done(Err(ManageError::Refused(Refused::HandoffsInFlight(state.handoffs.len()))));
        }
        let expired = self.fence_expired(state);
        let alloc = Core::allocation(state, &|n| expired.contains(&n));
        let plan = plan_of(state, &alloc);
        let Some(given) = msg.commit else {
            self.lease.unfence(expired);
            return done(Ok(plan));
        };
        if given != plan.id {
            self.lease.unfence(expired);
            return done(Err(ManageError::Refused(Refused::PlanChanged { given, now: plan.id })));
        }
        if alloc.changes.is_empty() {
            self.lease.unfence(expired);
            return done(Ok(plan));
        }
        let (direct, handoffs) = Core::split(state, alloc, &|n| expired.contains(&n));
        let epoch = state.shard_map.epoch();
        info!(plan = %plan.id, moves = plan.moves.len(), direct = direct.len(), handoffs = handoffs.len(), "rebalance: operator's commit");
        self.busy = true;
        let consensus = self.consensus.clone();
        let failed = |e: &dyn std::fmt::Display| ManageError::Failed(format!("rebalance commit: {e}"));
        // No time limit on the writes, as for a tick's decision: the expired owners stay fenced
        // until each write is in the log or refused (a fence lifted while a write might still
        // be appended could let a grant at an older index outlive the move).
        let work = async move {
            let propose = |cmd| async {
                match consensus.send(Propose(cmd)).await {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(failed(&e)),
                    Err(e) => Err(failed(&e)),
                }
            };
            let mut based_on = epoch;
            if !direct.is_empty() {
                match propose(Command::SetAssignments { based_on, changes: direct }).await? {
                    CommandResult::Applied { index } => based_on = crate::types::Epoch(index),
                    other => return Err(failed(&format!("{other:?}; nothing moved, plan again"))),
                }
            }
            if !handoffs.is_empty() {
                match propose(Command::BeginHandoff { based_on, moves: handoffs }).await? {
                    CommandResult::Applied { .. } => {}
                    other => {
                        return Err(failed(&format!("{other:?}: the assignments are in, the handoffs not; plan again")))
                    }
                }
            }
            Ok(())
        };
        Box::pin(work.into_actor(self).map(move |r, act, _| {
            act.busy = false;
            act.lease.unfence(expired);
            r?;
            let started =
                Plan { moves: plan.moves.clone(), replica_changes: plan.replica_changes, loads: plan.loads.clone() };
            act.emit(ClusterEvent::RebalanceStarted(started.clone()));
            act.started(started);
            Ok(plan)
        }))
    }
}

impl Actor for ShardManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.core.config().tick(), |act, ctx| act.on_tick(ctx));
    }
}
