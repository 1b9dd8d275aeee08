//! The serving shell: one task per node that feeds the lease and the applied state to the
//! [`Core`] and carries out its effects, in order (docs/architecture.md §7.3).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use futures::future::{join_all, BoxFuture};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::core::{Core, Effect, Input, ShardChange};
use super::Ownership;
use crate::consensus::{AppliedState, Consensus, Propose};
use crate::state::{Command, CommandResult};
use crate::types::{Epoch, ShardId};

/// What the node does when its shards change: implemented by the framework (entities, user hooks).
pub trait ShardHooks: Send + Sync + 'static {
    /// Stops every entity of `shard` on this node; the future ends once they all stopped (what
    /// was queued for them is answered `NotOwner`, never run). Waited for without a budget.
    fn stop_entities(&self, shard: ShardId) -> BoxFuture<'static, ()>;
    /// Runs the user's hooks for one change; waited for within the hook budget.
    fn on_change(&self, change: ShardChange) -> BoxFuture<'static, ()>;
}

/// How long a planned move waits for its shard's entities to stop before it is confirmed
/// anyway. A handler that has not returned by then is abandoned: nothing else runs in its
/// instance, its answer is withheld (`Indeterminate`: it may have taken effect), and its writes
/// to the service's own storage carry its old epoch, which that storage must refuse once it saw
/// the newer one.
pub const FORCE_STOP: Duration = Duration::from_secs(10);

/// The serving task's counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Hooks that overran their budget.
    pub hooks_overrun: AtomicU64,
    /// Shards activated so far.
    pub activations: AtomicU64,
    /// Shards stopped so far.
    pub deactivations: AtomicU64,
    /// Entity stops that took longer than the hook budget.
    pub slow_stops: AtomicU64,
    /// Entity stops given up after [`FORCE_STOP`].
    pub abandoned_stops: AtomicU64,
}

pub(crate) struct Inputs {
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) applied: watch::Receiver<Arc<AppliedState>>,
    pub(crate) lease: watch::Receiver<Option<Instant>>,
    pub(crate) consensus: Addr<Consensus>,
    pub(crate) hooks: watch::Receiver<Option<Arc<dyn ShardHooks>>>,
    pub(crate) budget: Duration,
    pub(crate) metrics: crate::metrics::Metrics,
}

/// Runs the serving core of this node until the applied state or the lease watch closes.
pub(crate) async fn run(counters: Arc<Counters>, mut io: Inputs) {
    let mut core = Core::new(io.ownership.local());
    let clock = io.ownership.clock().clone();
    // Hooks must be installed before the first activation (the framework does it at start).
    while io.hooks.borrow().is_none() {
        if io.hooks.changed().await.is_err() {
            return;
        }
    }
    let hooks = io.hooks.borrow().clone().expect("installed above");
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel(64);
    let shell = Shell { counters, hooks, io, failed: failed_tx, stopping: Default::default() };
    let mut io_lease = shell.io.lease.clone();
    let mut io_applied = shell.io.applied.clone();
    loop {
        let until = *io_lease.borrow_and_update();
        let applied = io_applied.borrow_and_update().clone();
        let now = clock.now();
        let effects = core.handle(Input::Observe { lease_until: until, state: &applied.state, now });
        shell.carry_out(&mut core, effects).await;
        let expiry = core.wake_at(until, clock.now()).map(|u| {
            let left = u.saturating_duration_since(clock.now());
            tokio::time::Instant::now() + left
        });
        let lease_end = async {
            match expiry {
                Some(t) => tokio::time::sleep_until(t).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            r = io_applied.changed() => if r.is_err() { break },
            r = io_lease.changed() => if r.is_err() { break },
            Some(shards) = failed_rx.recv() => { core.handle(Input::ConfirmFailed(shards)); }
            _ = lease_end => {}
        }
    }
    let effects = core.shutdown();
    shell.carry_out(&mut core, effects).await;
    debug!("serving task stopped");
}

/// `fut`, with a panic in it logged instead of ending the serving task (a dead serving task
/// would leave this node's handoffs unconfirmed while its lease lives).
async fn guarded(fut: BoxFuture<'static, ()>, what: &'static str) {
    use futures::FutureExt;
    if std::panic::AssertUnwindSafe(fut).catch_unwind().await.is_err() {
        error!(what, "panicked; the shard proceeds without it");
    }
}

struct Shell {
    counters: Arc<Counters>,
    hooks: Arc<dyn ShardHooks>,
    io: Inputs,
    /// Confirmations that did not commit, back to the core.
    failed: tokio::sync::mpsc::Sender<Vec<(ShardId, Epoch)>>,
    /// When each shard's entities were last asked to stop: a handoff's start, for
    /// `handoff_seconds` (one entry per shard at most).
    stopping: Arc<std::sync::Mutex<std::collections::HashMap<ShardId, std::time::Instant>>>,
}

impl Shell {
    async fn carry_out(&self, core: &mut Core, effects: Vec<Effect>) {
        let mut queue: std::collections::VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            if let Effect::Activate(starts) = effect {
                let results = self.activate(starts);
                let latest = self.io.applied.borrow().clone();
                let more = core.handle(Input::Activated { results, state: &latest.state });
                for e in more.into_iter().rev() {
                    queue.push_front(e);
                }
                continue;
            }
            self.run(effect).await;
        }
    }

    fn activate(&self, starts: Vec<(ShardId, Epoch)>) -> Vec<(ShardId, Epoch, bool)> {
        let own = &self.io.ownership;
        let results: Vec<_> = starts.into_iter().map(|(s, e)| (s, e, own.activate_if_owned(s, e))).collect();
        let started = results.iter().filter(|r| r.2).count();
        self.counters.activations.fetch_add(started as u64, Ordering::Relaxed);
        if started > 0 {
            info!(shards = started, "serving shards");
        }
        if started < results.len() {
            info!(shards = results.len() - started, "assignment superseded while its hooks ran; not serving");
        }
        results
    }

    async fn run(&self, effect: Effect) {
        match effect {
            Effect::Deactivate { shards, ran_out } => {
                for s in &shards {
                    self.io.ownership.deactivate(*s, ran_out);
                }
                self.counters.deactivations.fetch_add(shards.len() as u64, Ordering::Relaxed);
                if ran_out.is_some() || !self.io.ownership.lease_valid() {
                    warn!(shards = shards.len(), "lease ran out: stopped serving");
                } else {
                    info!(shards = shards.len(), "stopped shards that moved away");
                }
            }
            Effect::StopEntities(shards) => {
                let now = std::time::Instant::now();
                self.stopping.lock().expect("never poisoned").extend(shards.iter().map(|s| (*s, now)));
                self.stop_entities(shards).await
            }
            Effect::Hooks(changes) => self.run_hooks(changes).await,
            Effect::ConfirmReleased(shards) => self.confirm(shards),
            Effect::Activate(_) => unreachable!("carried out by carry_out"),
        }
    }

    /// Waits for every entity of `shards` to stop: a handoff confirmed while one still ran would
    /// let two instances of a key run at once. A stop slower than the hook budget is logged and
    /// counted; after [`FORCE_STOP`] the instance is abandoned (see there).
    async fn stop_entities(&self, shards: Vec<ShardId>) {
        let stops = join_all(shards.iter().map(|s| guarded(self.hooks.stop_entities(*s), "entity stop")));
        tokio::pin!(stops);
        let started = tokio::time::Instant::now();
        loop {
            let left = FORCE_STOP.saturating_sub(started.elapsed());
            if left.is_zero() {
                self.counters.abandoned_stops.fetch_add(1, Ordering::Relaxed);
                error!(shards = ?shards, waited = ?started.elapsed(), "entities did not stop: abandoning them (their answers are withheld)");
                return;
            }
            match tokio::time::timeout(self.io.budget.min(left), &mut stops).await {
                Ok(_) => return,
                Err(_) => {
                    self.counters.slow_stops.fetch_add(1, Ordering::Relaxed);
                    warn!(shards = shards.len(), waited = ?started.elapsed(), "entities still stopping; the handoff waits for them");
                }
            }
        }
    }

    async fn run_hooks(&self, changes: Vec<ShardChange>) {
        let budget = self.io.budget;
        let runs = changes.into_iter().map(|c| {
            let fut = guarded(self.hooks.on_change(c.clone()), "shard hook");
            async move {
                if tokio::time::timeout(budget, fut).await.is_err() {
                    self.counters.hooks_overrun.fetch_add(1, Ordering::Relaxed);
                    warn!(change = ?c, ?budget, "shard hook overran its budget; proceeding");
                }
            }
        });
        join_all(runs).await;
    }

    fn confirm(&self, shards: Vec<(ShardId, Epoch)>) {
        let local = self.io.ownership.local();
        for (s, e) in &shards {
            self.io.ownership.mark_released(*s, *e);
        }
        let send = self.io.consensus.send(Propose(Command::Released { node: local, shards: shards.clone() }));
        // Not awaited: the next observation must not wait on a Raft round trip. A confirmation
        // that fails goes back to the core, which confirms again (the leader releases a live
        // owner's shards only on the lease rule).
        let failed = self.failed.clone();
        let (stopping, metrics) = (self.stopping.clone(), self.io.metrics.clone());
        actix::spawn(async move {
            let ok = match send.await {
                Ok(Ok(CommandResult::Applied { index })) => {
                    info!(shards = shards.len(), index, "handoff confirmed: shards released");
                    let mut stopping = stopping.lock().expect("never poisoned");
                    // Counted once per shard whose entities this incarnation stopped: a
                    // confirmation repeated after its reply was lost changes nothing, and
                    // finds no entry.
                    for (s, _) in &shards {
                        if let Some(t) = stopping.remove(s) {
                            metrics.handoffs.inc();
                            metrics.handoff_seconds.observe(t.elapsed().as_secs_f64());
                        }
                    }
                    true
                }
                Ok(Ok(other)) => {
                    warn!(result = ?other, "handoff confirmation refused");
                    true
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "handoff confirmation failed; confirming again");
                    false
                }
                Err(e) => {
                    warn!(error = %e, "consensus mailbox unavailable; confirming again");
                    false
                }
            };
            if !ok {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if failed.send(shards).await.is_err() {
                    debug!("serving task gone: confirmation not retried");
                }
            }
        });
    }
}
