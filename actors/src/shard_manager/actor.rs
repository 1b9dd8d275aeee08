//! The shard manager actor: ticks the core on the leader, proposes its commands, publishes the
//! committed map, and reports cluster-level events (leader, members, rebalances).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use super::core::{Core, Decision};
use crate::consensus::types::Raft;
use crate::consensus::{AppliedState, Consensus, Propose};
use crate::events::ClusterEvent;
use crate::lease::LeaseService;
use crate::membership::{MemberState, View};
use crate::shard::Plan;
use crate::state::CommandResult;
use crate::types::NodeId;

const TICK: Duration = Duration::from_millis(50);

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
    busy: bool,
}

impl ShardManager {
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
        let expired: BTreeSet<NodeId> = match leader_for {
            Some(_) => applied
                .state
                .members
                .keys()
                .chain(applied.state.handoffs.values().map(|h| &h.from))
                .copied()
                .collect::<BTreeSet<NodeId>>()
                .into_iter()
                .filter(|n| self.lease.fence_expired(*n))
                .collect(),
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
                        act.open_plan = Some(plan);
                    }
                }
                Ok(Ok(other)) => warn!(result = ?other, "shard map refused; recomputing"),
                Ok(Err(e)) => warn!(error = %e, "shard map proposal failed; retrying"),
                Err(e) => warn!(error = %e, "consensus mailbox unavailable; retrying"),
            }
        }));
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

impl Actor for ShardManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, ctx| act.on_tick(ctx));
    }
}
