//! Hosting the instances of one entity type on this node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, ArbiterHandle, Handler, MailboxError};
use clusterfunk_actors::ownership::Ownership;
use clusterfunk_actors::types::{NodeId, ShardId};
use dashmap::DashMap;
use futures::future::BoxFuture;
use tracing::debug;

use super::{EntityInfo, RemoteMessage, ShardedActor};

struct Slot<E: Actor> {
    addr: Addr<E>,
    shard: ShardId,
    last_used: Arc<AtomicU64>,
}

/// The instances of `E` on this node.
pub(crate) struct EntityHost<E: ShardedActor> {
    entities: DashMap<E::Key, Slot<E>>,
    arbiters: Arc<[ArbiterHandle]>,
    node: NodeId,
    ownership: Arc<Ownership>,
    idle: Duration,
    started: Instant,
    activations: AtomicU64,
}

/// What the node does to every host, whatever its type.
pub(crate) trait HostControl: Send + Sync {
    /// Stops the instances of `shard`; the future ends when they all stopped (their `stopping`
    /// and `stopped` ran).
    fn stop_shard(&self, shard: ShardId) -> BoxFuture<'static, ()>;
    /// Stops instances idle for longer than the idle time.
    fn passivate_idle(&self);
    /// Live instances.
    fn len(&self) -> usize;
    /// Instances created so far.
    fn activations(&self) -> u64;
}

impl<E: ShardedActor> EntityHost<E> {
    pub(crate) fn new(arbiters: Arc<[ArbiterHandle]>, node: NodeId, ownership: Arc<Ownership>, idle: Duration) -> Self {
        EntityHost {
            entities: DashMap::new(),
            arbiters,
            node,
            ownership,
            idle,
            started: Instant::now(),
            activations: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The live instance for `key`, created on its shard's arbiter if there is none. Two first
    /// messages racing create one instance: the map entry is locked while it is created (no
    /// `.await` happens under it).
    fn addr(&self, key: &E::Key, shard: ShardId) -> Addr<E> {
        let now = self.now_ms();
        if let Some(s) = self.entities.get(key) {
            if s.addr.connected() {
                s.last_used.store(now, Ordering::Relaxed);
                return s.addr.clone();
            }
        }
        let mut entry = self.entities.entry(key.clone()).or_insert_with(|| self.spawn(key, shard, now));
        if !entry.addr.connected() {
            *entry = self.spawn(key, shard, now);
        }
        entry.last_used.store(now, Ordering::Relaxed);
        entry.addr.clone()
    }

    fn spawn(&self, key: &E::Key, shard: ShardId, now: u64) -> Slot<E> {
        let arbiter = &self.arbiters[shard.0 as usize % self.arbiters.len()];
        let active = self.ownership.active_epoch(shard);
        let info = EntityInfo { shard, node: self.node, epoch: active.unwrap_or_default(), replica: active.is_none() };
        let k = key.clone();
        let addr = E::start_in_arbiter(arbiter, move |_| E::from_key(&k, info));
        self.activations.fetch_add(1, Ordering::Relaxed);
        Slot { addr, shard, last_used: Arc::new(AtomicU64::new(now)) }
    }

    /// Delivers `msg` to the instance for `key`, creating it if needed.
    pub(crate) async fn deliver<M>(&self, key: &E::Key, shard: ShardId, msg: M) -> Result<M::Output, MailboxError>
    where
        M: RemoteMessage,
        E: Handler<M>,
        E::Context: actix::dev::ToEnvelope<E, M>,
    {
        let addr = self.addr(key, shard);
        let result = addr.send(msg).await;
        if result.is_err() {
            // The instance stopped or panicked: forget it so the next message makes a new one.
            // Compared by address, not by `connected()`: a panicking instance stays connected
            // until its unwinding ends (slow with RUST_BACKTRACE set), and a message sent in that
            // window would reach the dying instance.
            self.entities.remove_if(key, |_, s| s.addr == addr);
            debug!(?key, "entity failed while handling a message");
        }
        result
    }
}

impl<E: ShardedActor> HostControl for EntityHost<E> {
    fn stop_shard(&self, shard: ShardId) -> BoxFuture<'static, ()> {
        // Dropping the last address stops the actor after its mailbox drains.
        let mut stopping = Vec::new();
        self.entities.retain(|_, s| {
            let keep = s.shard != shard;
            if !keep {
                stopping.push(s.addr.downgrade());
            }
            keep
        });
        Box::pin(async move {
            while stopping.iter().any(|w| w.upgrade().is_some()) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    }

    fn passivate_idle(&self) {
        let cutoff = self.now_ms().saturating_sub(self.idle.as_millis() as u64);
        self.entities.retain(|_, s| s.last_used.load(Ordering::Relaxed) >= cutoff && s.addr.connected());
    }

    fn len(&self) -> usize {
        self.entities.len()
    }

    fn activations(&self) -> u64 {
        self.activations.load(Ordering::Relaxed)
    }
}
