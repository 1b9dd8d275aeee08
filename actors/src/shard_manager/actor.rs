//! The shard manager actor: ticks the core, proposes its commands, publishes the committed map.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;
use tracing::{info, warn};

use super::core::{Core, Decision};
use crate::consensus::types::Raft;
use crate::consensus::{AppliedState, Consensus, Propose};
use crate::membership::View;
use crate::shard::ShardMap;
use crate::state::CommandResult;

const TICK: Duration = Duration::from_millis(100);

/// The shard manager actor.
pub struct ShardManager {
    core: Core,
    raft: Raft,
    consensus: Addr<Consensus>,
    applied: watch::Receiver<Arc<AppliedState>>,
    view: watch::Receiver<Arc<View>>,
    map: watch::Sender<Arc<ShardMap>>,
}

impl ShardManager {
    /// A shard manager publishing the committed map on the returned watch.
    pub fn new(
        core: Core,
        raft: Raft,
        consensus: Addr<Consensus>,
        applied: watch::Receiver<Arc<AppliedState>>,
        view: watch::Receiver<Arc<View>>,
    ) -> (ShardManager, watch::Receiver<Arc<ShardMap>>) {
        let initial = Arc::new(applied.borrow().state.shard_map.clone());
        let (tx, rx) = watch::channel(initial);
        (ShardManager { core, raft, consensus, applied, view, map: tx }, rx)
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        let applied = self.applied.borrow().clone();
        self.publish_map(&applied);
        let is_leader = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.current_leader == Some(m.id)
        };
        let view = self.view.borrow().clone();
        let Decision::Commit(cmd) = self.core.tick(Instant::now(), is_leader, &applied.state, &view) else { return };
        let send = self.consensus.send(Propose(cmd));
        ctx.spawn(send.into_actor(self).map(|res, act, _| {
            act.core.committed();
            match res {
                Ok(Ok(CommandResult::Applied { index })) => info!(epoch = index, "shard map committed"),
                Ok(Ok(other)) => warn!(result = ?other, "shard map refused; recomputing"),
                Ok(Err(e)) => warn!(error = %e, "shard map proposal failed; retrying"),
                Err(e) => warn!(error = %e, "consensus mailbox unavailable; retrying"),
            }
        }));
    }

    fn publish_map(&self, applied: &AppliedState) {
        let current = self.map.borrow().epoch();
        let next = &applied.state.shard_map;
        if next.epoch() != current || next.shard_count() != self.map.borrow().shard_count() {
            self.map.send_replace(Arc::new(next.clone()));
        }
    }
}

impl Actor for ShardManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, ctx| act.on_tick(ctx));
    }
}
