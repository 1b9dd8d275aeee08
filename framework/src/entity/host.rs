//! Hosting the instances of one entity type on this node.
//!
//! Messages do not go through the actix mailbox: each instance reads a bounded inbox of jobs
//! from inside its own context, and a job checks the serving table **when it runs**, right
//! before the handler (docs/architecture.md §7.3, "fence where it runs"). A message queued while
//! its shard was served here and still queued when the shard stops is answered `NotOwner` and
//! handed back, never run; an answer is withheld (`NotOwner`) if the shard stopped being served
//! here while the handler ran, so a node that paused or lost its lease does not acknowledge.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::dev::MessageResponse;
use actix::fut::ActorFuture;
use actix::{ActorContext, ArbiterHandle, AsyncContext, Context, Handler};
use clusterfunk_actors::serving::Ownership;
use clusterfunk_actors::types::{Epoch, NodeId, Refusal, ShardId};
use dashmap::DashMap;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{EntityInfo, RemoteMessage, ShardedActor};
use crate::trace::{Current, TraceContext};

/// Jobs an instance may have queued; a sender waits when its inbox is full.
const INBOX: usize = 256;
/// Jobs run per poll before the instance yields to its arbiter.
const BATCH: usize = 64;

type Job<E> = Box<dyn FnOnce(&mut E, &mut Context<E>) + Send>;

/// Under which right a message runs on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// This node serves the shard at this epoch.
    Owner(Epoch),
    /// A replica message: this node follows the shard at this epoch.
    Replica(Epoch),
}

impl Admission {
    fn epoch(self) -> Epoch {
        match self {
            Admission::Owner(e) | Admission::Replica(e) => e,
        }
    }
}

/// Why a message was not answered.
pub(crate) enum Undelivered<M> {
    /// Refused before its handler ran; the message comes back.
    Refused(Refusal, M),
    /// The instance stopped or panicked, or the answer was withheld (`Refusal::Indeterminate`).
    Failed(Refusal),
}

thread_local! {
    static FENCING_EPOCH: Cell<Option<Epoch>> = const { Cell::new(None) };
}

/// The epoch the message being handled runs under, inside a sharded entity's handler (on its
/// thread, while the handler runs): the fencing token for a write to the service's own storage.
/// After a follower is promoted its instances run under the new epoch, newer than
/// [`EntityInfo::epoch`]. `None` outside a handler.
pub fn fencing_epoch() -> Option<Epoch> {
    FENCING_EPOCH.with(|c| c.get())
}

/// Sets the fencing epoch for the handler running on this thread and clears it when dropped,
/// even if the handler panics.
struct FencingEpoch;

impl FencingEpoch {
    fn set(epoch: Epoch) -> FencingEpoch {
        FENCING_EPOCH.with(|c| c.set(Some(epoch)));
        FencingEpoch
    }
}

impl Drop for FencingEpoch {
    fn drop(&mut self) {
        FENCING_EPOCH.with(|c| c.set(None));
    }
}

struct Slot<E: ShardedActor> {
    jobs: mpsc::Sender<Job<E>>,
    shard: ShardId,
    last_used: Arc<AtomicU64>,
    /// Calls of `deliver` waiting on this instance: it is not passivated while there are any.
    in_flight: Arc<AtomicU64>,
    /// Resolves (with an error) once the instance's context was dropped: it stopped.
    stopped: oneshot::Receiver<()>,
}

/// Counts one call in flight on a slot for as long as it lives.
struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The instances of `E` on this node.
pub(crate) struct EntityHost<E: ShardedActor> {
    entities: DashMap<E::Key, Slot<E>>,
    /// Instances passivated and perhaps still stopping: a stop of their shard waits for them too.
    retired: std::sync::Mutex<Vec<(ShardId, oneshot::Receiver<()>)>>,
    arbiters: Arc<[ArbiterHandle]>,
    node: NodeId,
    ownership: Arc<Ownership>,
    idle: Duration,
    started: Instant,
    activations: AtomicU64,
    /// The type's wire name (the `entity_type` label of its metrics).
    name: &'static str,
    /// Instances stopped, by reason: idle, their shard stopped here, they stopped themselves.
    passivated: [AtomicU64; 3],
}

/// Why instances stopped, as `HostControl::passivated` counts them.
pub(crate) const PASSIVATION_REASONS: [&str; 3] = ["idle", "shard_stopped", "stopped"];

/// What the node does to every host, whatever its type.
pub(crate) trait HostControl: Send + Sync {
    /// Stops the instances of `shard`: what is queued for them is answered `NotOwner`; the
    /// future ends when they all stopped (their `stopping` and `stopped` ran).
    fn stop_shard(&self, shard: ShardId) -> BoxFuture<'static, ()>;
    /// Stops instances idle for longer than the idle time.
    fn passivate_idle(&self);
    /// Live instances.
    fn len(&self) -> usize;
    /// Live instances of `shard`.
    fn len_in(&self, shard: ShardId) -> usize;
    /// Instances created so far.
    fn activations(&self) -> u64;
    /// The type's wire name.
    fn name(&self) -> &'static str;
    /// Instances stopped so far, per [`PASSIVATION_REASONS`].
    fn passivated(&self) -> [u64; 3];
}

impl<E: ShardedActor> EntityHost<E> {
    pub(crate) fn new(
        name: &'static str,
        arbiters: Arc<[ArbiterHandle]>,
        node: NodeId,
        ownership: Arc<Ownership>,
        idle: Duration,
    ) -> Self {
        EntityHost {
            entities: DashMap::new(),
            retired: std::sync::Mutex::new(Vec::new()),
            arbiters,
            node,
            ownership,
            idle,
            started: Instant::now(),
            activations: AtomicU64::new(0),
            name,
            passivated: Default::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The inbox of the live instance for `key`, created on its shard's arbiter if there is
    /// none, with a count of this call in flight. Two first messages racing create one instance:
    /// the map entry is locked while it is created (no `.await` happens under it). An instance is
    /// created only while `admission` still holds, checked under that lock: a stop of the shard
    /// (which deactivates it first, then removes its slots under the same locks) cannot miss an
    /// instance created for it. `None`: the admission no longer holds.
    fn inbox(&self, key: &E::Key, shard: ShardId, admission: Admission) -> Option<(mpsc::Sender<Job<E>>, InFlight)> {
        let now = self.now_ms();
        let take = |s: &Slot<E>| {
            s.last_used.store(now, Ordering::Relaxed);
            s.in_flight.fetch_add(1, Ordering::AcqRel);
            (s.jobs.clone(), InFlight(s.in_flight.clone()))
        };
        if let Some(s) = self.entities.get(key) {
            if !s.jobs.is_closed() {
                return Some(take(&s));
            }
        }
        match self.entities.entry(key.clone()) {
            dashmap::Entry::Occupied(mut o) => {
                if o.get().jobs.is_closed() {
                    if !holds(&self.ownership, shard, admission) {
                        return None;
                    }
                    o.insert(self.spawn(key, shard, admission, now));
                }
                Some(take(o.get()))
            }
            dashmap::Entry::Vacant(v) => {
                if !holds(&self.ownership, shard, admission) {
                    return None;
                }
                let slot = v.insert(self.spawn(key, shard, admission, now));
                Some(take(&slot))
            }
        }
    }

    fn spawn(&self, key: &E::Key, shard: ShardId, admission: Admission, now: u64) -> Slot<E> {
        let arbiter = &self.arbiters[shard.0 as usize % self.arbiters.len()];
        let info = EntityInfo {
            shard,
            node: self.node,
            epoch: admission.epoch(),
            replica: matches!(admission, Admission::Replica(_)),
        };
        let (jobs, rx) = mpsc::channel(INBOX);
        let (done, stopped) = oneshot::channel();
        let k = key.clone();
        E::start_in_arbiter(arbiter, move |ctx| {
            ctx.spawn(Inbox { rx, _done: done, closed: false });
            E::from_key(&k, info)
        });
        self.activations.fetch_add(1, Ordering::Relaxed);
        Slot { jobs, shard, last_used: Arc::new(AtomicU64::new(now)), in_flight: Arc::new(AtomicU64::new(0)), stopped }
    }

    /// Delivers `msg` to the instance for `key`, creating it if needed. The serving table is
    /// checked again when the handler is about to run, and before the answer is given.
    ///
    /// Cancel-safe: a dropped call leaves nothing behind (its job, if queued, finds no one to
    /// answer and its handler does not run).
    pub(crate) async fn deliver<M>(
        &self,
        key: &E::Key,
        shard: ShardId,
        admission: Admission,
        msg: M,
        trace: Option<TraceContext>,
    ) -> Result<M::Output, Undelivered<M>>
    where
        M: RemoteMessage,
        E: Handler<M>,
    {
        let token = self.ownership.lease_token();
        let Some((jobs, _in_flight)) = self.inbox(key, shard, admission) else {
            // The shard stopped here between admission and now: nothing was created or run.
            return Err(Undelivered::Refused(self.ownership.not_owner(shard), msg));
        };
        let (tx, rx) = oneshot::channel::<M::Output>();
        let (refuse_tx, mut refused) = oneshot::channel::<(Refusal, M)>();
        let own = self.ownership.clone();
        let name = self.name;
        let job: Job<E> = Box::new(move |act: &mut E, ctx: &mut Context<E>| {
            if tx.is_closed() {
                return; // the caller gave up: do not run it
            }
            if let Err(r) = admit(&own, shard, admission) {
                let _ = refuse_tx.send((r, msg));
                return;
            }
            let _epoch = FencingEpoch::set(admission.epoch());
            // The handler continues the sender's trace (docs/architecture.md §14).
            let (ctx_trace, span) = TraceContext::handle_span(trace, name);
            let _span = span.enter();
            let _trace = Current::set(ctx_trace);
            let res = <E as Handler<M>>::handle(act, msg, ctx);
            res.handle(ctx, Some(tx));
        });
        if jobs.send(job).await.is_err() {
            self.forget(key, &jobs);
            return Err(Undelivered::Failed(Refusal::EntityFailed));
        }
        match rx.await {
            // Acknowledged only under a lease that never ran out since admission (otherwise a
            // takeover may have happened while the handler ran) and if no handoff of the shard
            // was confirmed meanwhile (a stop abandoned after the force-stop time).
            Ok(out) if self.may_answer(shard, admission, token) => Ok(out),
            Ok(_) => Err(Undelivered::Failed(Refusal::Indeterminate { shard })),
            Err(_) => match refused.try_recv() {
                Ok((r, msg)) => Err(Undelivered::Refused(r, msg)),
                Err(_) => {
                    // The instance stopped or panicked: forget it so the next message makes a
                    // new one (compared by inbox: a panicking instance's inbox closes when its
                    // context is dropped, after unwinding).
                    self.forget(key, &jobs);
                    debug!(?key, "entity failed while handling a message");
                    Err(Undelivered::Failed(Refusal::EntityFailed))
                }
            },
        }
    }

    fn may_answer(&self, shard: ShardId, admission: Admission, token: u64) -> bool {
        match admission {
            Admission::Owner(e) => self.ownership.may_answer(shard, e, token),
            Admission::Replica(_) => self.ownership.lease_held_since(token),
        }
    }

    /// The shard `key` maps to under the applied map, once there is one.
    pub(crate) fn shard_of(&self, key: &E::Key) -> Option<ShardId> {
        let n = self.ownership.applied_map().map_or(0, |m| m.shard_count());
        (n > 0).then(|| clusterfunk_actors::shard::shard_for(key, n))
    }

    fn forget(&self, key: &E::Key, jobs: &mpsc::Sender<Job<E>>) {
        self.entities.remove_if(key, |_, s| s.jobs.same_channel(jobs));
    }
}

/// Whether `admission` still holds (no journal record: this decides whether to create an
/// instance, not whether a message runs).
fn holds(own: &Ownership, shard: ShardId, admission: Admission) -> bool {
    match admission {
        Admission::Owner(e) => own.serving_epoch(shard) == Some(e),
        Admission::Replica(e) => own.check_replica(shard, e).is_ok(),
    }
}

/// The check at execution: the shard is still served here (or followed) at the admitted epoch.
fn admit(own: &Ownership, shard: ShardId, admission: Admission) -> Result<(), Refusal> {
    match admission {
        Admission::Owner(e) => own.fence(shard, e),
        Admission::Replica(e) => own.check_replica(shard, e),
    }
}

/// An instance's inbox, polled inside its context: runs each job with the actor and its
/// context. When every sender is gone (the shard stopped, the instance was passivated) it stops
/// the actor and stays pending, so `_done` is dropped only with the context, after `stopped`.
struct Inbox<E: ShardedActor> {
    rx: mpsc::Receiver<Job<E>>,
    _done: oneshot::Sender<()>,
    closed: bool,
}

impl<E: ShardedActor> ActorFuture<E> for Inbox<E> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, act: &mut E, ctx: &mut Context<E>, task: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Pending;
        }
        for _ in 0..BATCH {
            match this.rx.poll_recv(task) {
                Poll::Ready(Some(job)) => {
                    job(act, ctx);
                    // A handler that made the context wait (`ctx.wait`, `AtomicResponse`) or
                    // stop: no other message runs until the context polls this again.
                    if ctx.waiting() || ctx.state().stopping() {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(None) => {
                    this.closed = true;
                    ctx.stop();
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<E: ShardedActor> HostControl for EntityHost<E> {
    fn stop_shard(&self, shard: ShardId) -> BoxFuture<'static, ()> {
        // Dropping the slot drops the last sender of each inbox: what is queued runs its check
        // (the shard is no longer served: NotOwner), then the instance stops.
        let keys: Vec<E::Key> =
            self.entities.iter().filter(|s| s.value().shard == shard).map(|s| s.key().clone()).collect();
        let mut stopping: Vec<oneshot::Receiver<()>> =
            keys.iter().filter_map(|k| self.entities.remove(k)).map(|(_, slot)| slot.stopped).collect();
        self.passivated[1].fetch_add(stopping.len() as u64, Ordering::Relaxed);
        let mut retired = self.retired.lock().expect("retired lock is never poisoned");
        let (theirs, others): (Vec<_>, Vec<_>) = retired.drain(..).partition(|(s, _)| *s == shard);
        *retired = others;
        stopping.extend(theirs.into_iter().map(|(_, r)| r));
        Box::pin(async move {
            // Each receiver resolves (with an error) when its instance's context is dropped.
            for s in stopping {
                let _ = s.await;
            }
        })
    }

    fn passivate_idle(&self) {
        let cutoff = self.now_ms().saturating_sub(self.idle.as_millis() as u64);
        let idle: Vec<E::Key> = self
            .entities
            .iter()
            .filter(|s| {
                let s = s.value();
                s.jobs.is_closed()
                    || (s.last_used.load(Ordering::Relaxed) < cutoff && s.in_flight.load(Ordering::Acquire) == 0)
            })
            .map(|s| s.key().clone())
            .collect();
        let mut retired = self.retired.lock().expect("retired lock is never poisoned");
        // Those that stopped since the last round are done with.
        retired.retain_mut(|(_, r)| matches!(r.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        for k in idle {
            let gone = self.entities.remove_if(&k, |_, s| {
                s.jobs.is_closed()
                    || (s.last_used.load(Ordering::Relaxed) < cutoff && s.in_flight.load(Ordering::Acquire) == 0)
            });
            if let Some((_, slot)) = gone {
                let reason = if slot.jobs.is_closed() { 2 } else { 0 };
                self.passivated[reason].fetch_add(1, Ordering::Relaxed);
                retired.push((slot.shard, slot.stopped));
            }
        }
    }

    fn len_in(&self, shard: ShardId) -> usize {
        self.entities.iter().filter(|s| s.value().shard == shard).count()
    }

    fn len(&self) -> usize {
        self.entities.len()
    }

    fn activations(&self) -> u64 {
        self.activations.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn passivated(&self) -> [u64; 3] {
        self.passivated.each_ref().map(|c| c.load(Ordering::Relaxed))
    }
}
