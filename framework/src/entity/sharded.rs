//! The handle for sending to the entities of one type.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::Handler;
use clusterfunk_actors::proxy::{route, Envelope, Refusal, Route, Router};
use clusterfunk_actors::shard::shard_for;
use clusterfunk_actors::types::{Epoch, NodeId, ShardId};

use super::host::{Admission, EntityHost, Undelivered};
use super::messages::Lists;
use super::registry::Registry;
use super::{RemoteMessage, ShardedActor};
use crate::trace::TraceContext;
use crate::RouteError;
use tracing::Instrument;

/// Why a message to an entity was not answered.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Routing failed: no owner in time, owner unreachable, queue full, timeout, or a refusal by
    /// the receiving node (see [`RouteError`]).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The entity stopped or panicked while handling the message.
    #[error("the entity failed while handling the message")]
    EntityFailed,
    /// The key or the message could not be encoded (what the encoder said).
    #[error("cannot encode the message: {0}")]
    Encode(String),
    /// The answer could not be decoded (what the decoder said): the message was handled.
    #[error("cannot decode the answer: {0}")]
    Decode(String),
}

impl SendError {
    /// Whether the message certainly was not handled: it was never sent, or the receiver
    /// refused it before its handler ran. Such a message may be sent again (the
    /// [`SendFailure`] of such an error hands it back).
    pub fn unsent(&self) -> bool {
        match self {
            SendError::Route(e) => e.unsent(),
            SendError::Encode(_) => true,
            SendError::EntityFailed | SendError::Decode(_) => false,
        }
    }
}

/// A send that failed: why ([`error`](Self::error)), and the message itself when it certainly
/// was not handled (never sent, or refused before its handler ran), so it can be sent again or
/// elsewhere without a copy. `?` turns it into a [`SendError`].
pub struct SendFailure<M> {
    error: SendError,
    unsent: Option<M>,
}

impl<M> SendFailure<M> {
    /// `error`, keeping `msg` if the error says it was not handled.
    fn of(error: SendError, msg: M) -> SendFailure<M> {
        let unsent = error.unsent().then_some(msg);
        SendFailure { error, unsent }
    }

    /// Why it failed.
    pub fn error(&self) -> &SendError {
        &self.error
    }

    /// Why it failed, dropping the message.
    pub fn into_error(self) -> SendError {
        self.error
    }

    /// The message, if it certainly was not handled.
    pub fn unsent(&self) -> Option<&M> {
        self.unsent.as_ref()
    }

    /// The message, if it certainly was not handled.
    pub fn into_unsent(self) -> Option<M> {
        self.unsent
    }
}

impl<M> From<SendError> for SendFailure<M> {
    /// A failure with no message to hand back.
    fn from(error: SendError) -> SendFailure<M> {
        SendFailure { error, unsent: None }
    }
}

impl<M> From<SendFailure<M>> for SendError {
    fn from(f: SendFailure<M>) -> SendError {
        f.error
    }
}

impl<M> std::fmt::Display for SendFailure<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<M> std::fmt::Debug for SendFailure<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFailure").field("error", &self.error).field("unsent", &self.unsent.is_some()).finish()
    }
}

impl<M> std::error::Error for SendFailure<M> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

/// `E` accepts `M` from anywhere: `M` is one of its [`Messages`](ShardedActor::Messages), as
/// [`Sharded::send`] requires. `I` is `M`'s position in the list, inferred (never written).
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not accept `{M}`",
    label = "`{M}` is not in `{Self}`'s `type Messages`",
    note = "list `{M}` in `type Messages = (..)` of `impl ShardedActor for {Self}`"
)]
pub trait Handles<M: RemoteMessage, I>: ShardedActor + Handler<M> {}

impl<E, M, I> Handles<M, I> for E
where
    E: ShardedActor + Handler<M>,
    M: RemoteMessage,
    E::Messages: Lists<M, I>,
{
}

/// The envelope of `msg` for `key` in `shard`, not yet stamped.
fn envelope<K: serde::Serialize, M: RemoteMessage>(
    entity: u64,
    message: u64,
    shard: ShardId,
    key: &K,
    msg: &M,
    trace: &TraceContext,
) -> Result<Envelope, SendError> {
    Ok(Envelope {
        entity,
        message,
        shard,
        key: rmp_serde::to_vec(key).map_err(|e| SendError::Encode(e.to_string()))?,
        payload: super::encode_value(msg).map_err(|e| SendError::Encode(e.to_string()))?,
        epoch: Epoch(0),
        replica: false,
        trace: Some(trace.traceparent()),
    })
}

/// An answer off the wire.
fn decode<T: serde::de::DeserializeOwned, M>(bytes: &[u8]) -> Result<T, SendFailure<M>> {
    rmp_serde::from_slice(bytes).map_err(|e| SendError::Decode(e.to_string()).into())
}

fn route_error(e: RouteError) -> SendError {
    match e {
        RouteError::Refused(r) => SendError::from(r),
        e => SendError::Route(e),
    }
}

impl From<Refusal> for SendError {
    fn from(r: Refusal) -> SendError {
        match r {
            Refusal::EntityFailed => SendError::EntityFailed,
            r => SendError::Route(RouteError::Refused(r)),
        }
    }
}

/// Sends messages to the entities of type `E`, wherever they live: from a member
/// ([`Cluster::sharded`](crate::Cluster::sharded)) or from a client outside the cluster
/// ([`Client::sharded`](crate::Client::sharded)), with the same calls. Cheap to clone.
pub struct Sharded<E: ShardedActor> {
    /// The entity type's wire id, looked up once.
    pub(crate) entity: u64,
    /// The entity type's wire name.
    pub(crate) wire_name: &'static str,
    pub(crate) registry: Arc<Registry>,
    pub(crate) via: Via<E>,
}

/// How a [`Sharded`] reaches the entities.
pub(crate) enum Via<E: ShardedActor> {
    /// From a member: its own entities directly, the others through its router.
    Member { host: Arc<EntityHost<E>>, router: Router, map: clusterfunk_actors::consensus::MapView },
    /// From a client: straight to the owner (or through its gateway).
    Client(clusterfunk_actors::client::Client),
}

impl<E: ShardedActor> Clone for Via<E> {
    fn clone(&self) -> Self {
        match self {
            Via::Member { host, router, map } => {
                Via::Member { host: host.clone(), router: router.clone(), map: map.clone() }
            }
            Via::Client(c) => Via::Client(c.clone()),
        }
    }
}

impl<E: ShardedActor> Clone for Sharded<E> {
    fn clone(&self) -> Self {
        Sharded {
            entity: self.entity,
            wire_name: self.wire_name,
            registry: self.registry.clone(),
            via: self.via.clone(),
        }
    }
}

impl<E: ShardedActor> Sharded<E> {
    /// Sends `msg` to the instance for `key` and waits for its answer.
    ///
    /// On the owning node it is delivered directly (no encoding); elsewhere it is sent to the
    /// owner (from a [`Client`](crate::Client): straight to it). While the shard has no owner
    /// the message waits (bounded by the route wait); if the owner answers `NotOwner`, the map
    /// is refreshed and the message retried. A failure hands the message back when it certainly
    /// was not handled ([`SendFailure::into_unsent`]).
    ///
    /// Cancel-safe: dropping the future frees everything it holds at once (its queue slot, its
    /// pending answer). As after a timeout, a message already sent may or may not be handled.
    ///
    /// The send continues the trace of the message being handled on this thread (a handler
    /// sending on), else starts one: read when `send` is called, not when it is first polled
    /// ([`traceparent`](crate::traceparent)).
    pub fn send<'a, M, I>(
        &'a self,
        key: &'a E::Key,
        msg: M,
    ) -> impl std::future::Future<Output = Result<M::Output, SendFailure<M>>> + 'a
    where
        M: RemoteMessage,
        E: Handles<M, I>,
    {
        self.traced(key, msg, None)
    }

    /// [`send`](Self::send) within `timeout` overall: waiting for an owner, retries and the
    /// answer. Out of time before the message was sent: `NoOwner` (the message comes back);
    /// after: `Timeout` (it may have been handled).
    ///
    /// ```no_run
    /// # use clusterfunk::prelude::*;
    /// # use std::time::Duration;
    /// # struct Counter(u64);
    /// # impl actix::Actor for Counter { type Context = actix::Context<Self>; }
    /// # impl ShardedActor for Counter { type Key = String; type Messages = (Add,); fn from_key(_: &String, _: EntityInfo) -> Self { Counter(0) } }
    /// # #[derive(actix::Message, serde::Serialize, serde::Deserialize)] #[rtype(result = "u64")] struct Add(u64);
    /// # impl actix::Handler<Add> for Counter { type Result = u64; fn handle(&mut self, a: Add, _: &mut Self::Context) -> u64 { self.0 += a.0; self.0 } }
    /// async fn add(counters: &Sharded<Counter>, key: String) -> Option<u64> {
    ///     match counters.send_timeout(&key, Add(1), Duration::from_millis(200)).await {
    ///         Ok(n) => Some(n),
    ///         Err(e) => {
    ///             // Never handled: safe to queue for later.
    ///             if let Some(again) = e.into_unsent() {
    ///                 let _ = again;
    ///             }
    ///             None
    ///         }
    ///     }
    /// }
    /// ```
    pub fn send_timeout<'a, M, I>(
        &'a self,
        key: &'a E::Key,
        msg: M,
        timeout: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<M::Output, SendFailure<M>>> + 'a
    where
        M: RemoteMessage,
        E: Handles<M, I>,
    {
        self.traced(key, msg, Some(timeout))
    }

    /// Sends `msg` to the instance for `key` without wanting its answer: `Ok` once the entity
    /// handled it, else an error like [`send`](Self::send)'s. Never a silent drop: a message
    /// that could not be delivered is an error (with the message when it was not handled).
    pub async fn tell<M, I>(&self, key: &E::Key, msg: M) -> Result<(), SendFailure<M>>
    where
        M: RemoteMessage,
        E: Handles<M, I>,
    {
        self.traced(key, msg, None).await.map(drop)
    }

    fn traced<'a, M>(
        &'a self,
        key: &'a E::Key,
        msg: M,
        timeout: Option<std::time::Duration>,
    ) -> impl std::future::Future<Output = Result<M::Output, SendFailure<M>>> + 'a
    where
        M: RemoteMessage,
        E: Handler<M>,
    {
        let (trace, span) = TraceContext::open_send(self.wire_name);
        self.send_traced(key, msg, trace, timeout).instrument(span)
    }

    async fn send_traced<M>(
        &self,
        key: &E::Key,
        msg: M,
        trace: TraceContext,
        timeout: Option<std::time::Duration>,
    ) -> Result<M::Output, SendFailure<M>>
    where
        M: RemoteMessage,
        E: Handler<M>,
    {
        let (eid, mid) = self.ids::<M>();
        let (host, router, map) = match &self.via {
            Via::Member { host, router, map } => (host, router, map),
            Via::Client(client) => {
                let shard = shard_for(key, client.map().shard_count());
                let env = match envelope(eid, mid, shard, key, &msg, &trace) {
                    Ok(env) => env,
                    Err(e) => return Err(SendFailure::of(e, msg)),
                };
                return match client.request(env, timeout).await {
                    Ok(bytes) => decode(&bytes),
                    Err(e) => Err(SendFailure::of(route_error(e), msg)),
                };
            }
        };
        let start = std::time::Instant::now();
        // One read of the map gives both the shard and its route.
        let target = {
            let map = map.borrow();
            (map.shard_count() > 0).then(|| {
                let shard = shard_for(key, map.shard_count());
                (shard, route(&map, router.local(), shard))
            })
        };
        let mut msg = msg;
        if let Some((shard, Route::Local)) = target {
            if let Some(epoch) = router.serving_epoch(shard) {
                router.stats().local.fetch_add(1, Ordering::Relaxed);
                let delivery = host.deliver(key, shard, Admission::Owner(epoch), msg, Some(trace));
                let delivered = match timeout {
                    None => delivery.await,
                    Some(t) => match tokio::time::timeout(t, delivery).await {
                        Ok(d) => d,
                        Err(_) => {
                            // Queued to the entity, maybe handled: nothing to hand back.
                            let e = RouteError::Timeout { node: router.local(), timeout: t };
                            router.count_failure(&e);
                            return Err(SendError::Route(e).into());
                        }
                    },
                };
                match delivered {
                    Ok(out) => return Ok(out),
                    // The shard stopped here before the handler ran: the message comes back
                    // and goes the way of any other (to the new owner, once there is one).
                    Err(Undelivered::Refused(_, m)) => msg = m,
                    Err(Undelivered::Failed(r)) => {
                        router.count_failure(&RouteError::Refused(r.clone()));
                        return Err(SendError::from(r).into());
                    }
                }
            }
        }
        let env = match envelope(eid, mid, target.map_or(ShardId(0), |t| t.0), key, &msg, &trace) {
            Ok(env) => env,
            Err(e) => return Err(SendFailure::of(e, msg)),
        };
        let env = match target {
            Some(_) => env,
            None => match self.wait_for_shard(map, router, key, env).await {
                Ok(env) => env,
                Err(e) => return Err(SendFailure::of(e, msg)),
            },
        };
        let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
        match router.request_within(env, left).await {
            Ok(bytes) => decode(&bytes),
            Err(e) => Err(SendFailure::of(route_error(e), msg)),
        }
    }

    /// Sends `msg` to the instance for `key` on each **follower** of its shard (with a replica
    /// factor above 1), stamped with the shard's epoch in this node's map, and returns each
    /// follower's answer. Call it on the shard's leader, typically from the entity after it applied a write.
    ///
    /// A follower takes the message only if its own map makes it a follower of the shard at that
    /// epoch, and refuses anything stamped older than the newest epoch it saw for the shard: the
    /// writes of a deposed leader fail with `NotOwner` carrying the newer epoch. On the follower
    /// the message goes to a replica instance of the entity ([`EntityInfo::replica`](crate::EntityInfo::replica)); when the
    /// follower is promoted, that instance (and what it was sent) serves on as the owner's.
    /// Nothing is retried: the answers say which followers have the message. Cancel-safe, like
    /// [`send`](Sharded::send). Refused with `NotOwner` (for every follower) unless this node
    /// leads the shard at the epoch of its map.
    ///
    /// ```no_run
    /// # use clusterfunk::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// # struct Account(i64);
    /// # impl actix::Actor for Account { type Context = actix::Context<Self>; }
    /// # impl ShardedActor for Account { type Key = String; type Messages = (Deposit,); fn from_key(_: &String, _: EntityInfo) -> Self { Account(0) } }
    /// #[derive(actix::Message, Serialize, Deserialize)]
    /// #[rtype(result = "i64")]
    /// struct Deposit(i64);
    /// # impl actix::Handler<Deposit> for Account { type Result = i64; fn handle(&mut self, d: Deposit, _: &mut Self::Context) -> i64 { self.0 += d.0; self.0 } }
    /// async fn replicate(cluster: &Cluster, key: String) {
    ///     for (follower, answer) in cluster.sharded::<Account>().send_to_replicas(&key, Deposit(5)).await {
    ///         if let Err(e) = answer {
    ///             eprintln!("follower {follower} missed the deposit: {e}");
    ///         }
    ///     }
    /// }
    /// ```
    pub async fn send_to_replicas<M, I>(&self, key: &E::Key, msg: M) -> Vec<(NodeId, Result<M::Output, SendError>)>
    where
        M: RemoteMessage,
        E: Handles<M, I>,
    {
        let (router, map) = match &self.via {
            Via::Member { router, map, .. } => (router, map),
            // A client leads no shard: refused as from any node that does not lead it.
            Via::Client(client) => {
                let map = client.map();
                if map.shard_count() == 0 {
                    return Vec::new();
                }
                let shard = shard_for(key, map.shard_count());
                let r = Refusal::NotOwner { shard, epoch: map.shard_epoch(shard), owner: map.owner(shard) };
                return map.replicas(shard).into_iter().map(|f| (f, Err(SendError::from(r.clone())))).collect();
            }
        };
        let (shard, epoch, followers, owner) = {
            let map = map.borrow();
            if map.shard_count() == 0 {
                return Vec::new();
            }
            let shard = shard_for(key, map.shard_count());
            (shard, map.shard_epoch(shard), map.replicas(shard), map.owner(shard))
        };
        let fail = |e: SendError| followers.iter().map(|f| (*f, Err(e.clone()))).collect::<Vec<_>>();
        // Only the shard's leader replicates, and only while it serves the shard at that epoch.
        if router.serving_epoch(shard) != Some(epoch) {
            return fail(SendError::from(Refusal::NotOwner { shard, epoch, owner }));
        }
        let (eid, mid) = self.ids::<M>();
        let (key, payload) = match (rmp_serde::to_vec(key), super::encode_value(&msg)) {
            (Ok(k), Ok(p)) => (k, p),
            (Err(e), _) | (_, Err(e)) => return fail(SendError::Encode(e.to_string())),
        };
        let (trace, span) = TraceContext::open_send(self.wire_name);
        let env = Envelope {
            entity: eid,
            message: mid,
            shard,
            key,
            payload,
            epoch,
            replica: true,
            trace: Some(trace.traceparent()),
        };
        let sends = followers.iter().map(|f| {
            let (router, env, f) = (router, &env, *f);
            async move {
                let answer = match router.request_to(f, env).await {
                    Ok(bytes) => rmp_serde::from_slice(&bytes).map_err(|e| SendError::Decode(e.to_string())),
                    Err(RouteError::Refused(r)) => Err(SendError::from(r)),
                    Err(e) => Err(SendError::Route(e)),
                };
                (f, answer)
            }
        });
        futures::future::join_all(sends).instrument(span).await
    }

    /// The wire ids of `E` and `M`, one of its messages (registered with it).
    fn ids<M: RemoteMessage>(&self) -> (u64, u64) {
        let mid = self.registry.message_id::<E, M>().expect("an entity's listed messages are registered with it");
        (self.entity, mid)
    }

    /// Before this node has the cluster's state there is no shard count: wait for the first map.
    async fn wait_for_shard(
        &self,
        map: &clusterfunk_actors::consensus::MapView,
        router: &Router,
        key: &E::Key,
        mut env: Envelope,
    ) -> Result<Envelope, SendError> {
        let mut map = map.clone();
        let wait = router.config().route_wait;
        let got = tokio::time::timeout(wait, map.wait_for(|m| m.shard_count() > 0)).await;
        match got {
            Ok(Ok(m)) => {
                env.shard = shard_for(key, m.shard_count());
                Ok(env)
            }
            _ => Err(SendError::Route(RouteError::NoOwner { shard: ShardId(0), waited: wait })),
        }
    }
}
