//! Registered entity types and messages, and dispatch of encoded messages to them.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use actix::{ArbiterHandle, Handler};
use clusterfunk_actors::proxy::{Dispatch, Envelope, Refusal};
use clusterfunk_actors::types::{NodeId, ShardId};
use futures::future::BoxFuture;

use super::host::{Admission, EntityHost, HostControl, Undelivered};
use super::messages::{Lists, MessageList};
use super::{default_wire_name, wire_id, RemoteMessage, ShardedActor};
use crate::config::ConfigError;

type Handle = Arc<dyn Fn(Envelope) -> BoxFuture<'static, Result<Vec<u8>, Refusal>> + Send + Sync>;
type KeyShard = Arc<dyn Fn(&[u8]) -> Option<ShardId> + Send + Sync>;
pub(super) type MakeHandle<E> = fn(Arc<EntityHost<E>>) -> Handle;

/// One registered message type.
struct MessageReg<E: ShardedActor> {
    id: u64,
    name: &'static str,
    ty: TypeId,
    type_name: &'static str,
    make: MakeHandle<E>,
}

/// How an entity type is registered: its wire name and its messages' (the messages are those
/// of [`ShardedActor::Messages`]). Given to
/// [`Builder::entity_with`](crate::Builder::entity_with) and
/// [`ClientBuilder::entity_with`](crate::ClientBuilder::entity_with).
///
/// Every entity type and message type has a **wire name**, which nodes use to tell each other
/// what a message is: by default the type's name without its module path (`Counter`, `Add`),
/// so moving a type to another module changes nothing on the wire. Name them yourself when two
/// types share a name, or to keep the wire name when a type is renamed:
///
/// ```
/// # use actix::prelude::*;
/// # use clusterfunk::{EntityInfo, ShardedActor};
/// # struct Counter;
/// # impl Actor for Counter { type Context = Context<Self>; }
/// # impl ShardedActor for Counter { type Key = String; type Messages = (Add,); fn from_key(_: &String, _: EntityInfo) -> Self { Counter } }
/// # #[derive(Message, serde::Serialize, serde::Deserialize)] #[rtype(result = "u64")] struct Add(u64);
/// # impl Handler<Add> for Counter { type Result = u64; fn handle(&mut self, _: Add, _: &mut Context<Self>) -> u64 { 0 } }
/// let builder = clusterfunk::Cluster::builder()
///     .entity_with::<Counter>(|e| e.named("shop.counter").message_named::<Add, _>("shop.counter.add"));
/// # let _ = builder;
/// ```
pub struct EntityRegistration<E: ShardedActor> {
    name: Option<&'static str>,
    default_name: &'static str,
    messages: Vec<MessageReg<E>>,
    _entity: PhantomData<fn() -> E>,
}

impl<E: ShardedActor> EntityRegistration<E> {
    pub(crate) fn new() -> Self {
        let messages = <E::Messages as MessageList<E>>::declare()
            .into_iter()
            .map(|d| MessageReg {
                id: wire_id(d.default_name),
                name: d.default_name,
                ty: d.ty,
                type_name: d.type_name,
                make: d.make,
            })
            .collect();
        EntityRegistration { name: None, default_name: default_wire_name::<E>(), messages, _entity: PhantomData }
    }

    /// The entity type's wire name (default: its type name without the module path). Every
    /// node of a cluster must use the same one.
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = Some(name);
        self
    }

    /// The wire name of message `M`, one of the entity's [`Messages`](ShardedActor::Messages)
    /// (default: its type name without the module path). Every node and client must use the same
    /// one. The second type parameter is inferred: write `message_named::<Add, _>("...")`.
    pub fn message_named<M, I>(mut self, name: &'static str) -> Self
    where
        M: RemoteMessage,
        E::Messages: Lists<M, I>,
    {
        for m in self.messages.iter_mut().filter(|m| m.ty == TypeId::of::<M>()) {
            m.id = wire_id(name);
            m.name = name;
        }
        self
    }

    fn wire_name(&self) -> &'static str {
        self.name.unwrap_or(self.default_name)
    }
}

pub(super) fn make_handle<E, M>(host: Arc<EntityHost<E>>) -> Handle
where
    E: ShardedActor + Handler<M>,
    M: RemoteMessage,
{
    Arc::new(move |env: Envelope| {
        let host = host.clone();
        Box::pin(async move {
            let key: E::Key = rmp_serde::from_slice(&env.key).map_err(|e| Refusal::Malformed(format!("key: {e}")))?;
            // The shard comes from the sender: recompute it from the key, or a buggy or hostile
            // peer could make a second instance of the key live under another shard.
            let actual = host.shard_of(&key);
            if actual != Some(env.shard) {
                return Err(Refusal::WrongShard { claimed: env.shard, actual: actual.unwrap_or(env.shard) });
            }
            let msg: M =
                rmp_serde::from_slice(&env.payload).map_err(|e| Refusal::Malformed(format!("message: {e}")))?;
            // `env.epoch` is what the receiver admitted the message under (Router::serve_local).
            let admission = if env.replica { Admission::Replica(env.epoch) } else { Admission::Owner(env.epoch) };
            // A sender's trace context that is not well-formed is ignored: a new trace starts.
            let trace = env.trace.as_deref().and_then(crate::trace::TraceContext::parse);
            let out = host.deliver(&key, env.shard, admission, msg, trace).await.map_err(|e| match e {
                Undelivered::Refused(r, _) | Undelivered::Failed(r) => r,
            })?;
            // The handler ran: an answer that cannot be encoded is a failed entity, not a
            // malformed request (which the sender may resend: it would run twice).
            super::encode_value(&out).map_err(|e| {
                tracing::warn!(error = %e, "an entity's answer does not encode: answered EntityFailed");
                Refusal::EntityFailed
            })
        })
    })
}

/// What a registration contributes once the node runs.
pub(crate) trait EntitySpec: Send + Sync {
    /// The wire id, wire name and Rust type name.
    fn entity(&self) -> (u64, &'static str, &'static str);
    /// The messages' wire ids, wire names and Rust type names.
    fn messages(&self) -> Vec<(u64, &'static str, &'static str)>;
    fn install(&self, env: &HostEnv, reg: &mut Registry);
    /// Records the wire ids only (a client's registry: it hosts nothing).
    fn names(&self, reg: &mut Registry);
}

pub(crate) struct HostEnv {
    pub(crate) arbiters: Arc<[ArbiterHandle]>,
    pub(crate) node: NodeId,
    pub(crate) ownership: Arc<clusterfunk_actors::serving::Ownership>,
    pub(crate) idle: Duration,
}

impl<E: ShardedActor> EntitySpec for EntityRegistration<E> {
    fn entity(&self) -> (u64, &'static str, &'static str) {
        let name = self.wire_name();
        (wire_id(name), name, std::any::type_name::<E>())
    }

    fn messages(&self) -> Vec<(u64, &'static str, &'static str)> {
        self.messages.iter().map(|m| (m.id, m.name, m.type_name)).collect()
    }

    fn names(&self, reg: &mut Registry) {
        let name = self.wire_name();
        let eid = wire_id(name);
        reg.entities.insert(eid, name);
        reg.entity_ids.insert(TypeId::of::<E>(), (eid, std::any::type_name::<E>()));
        for m in &self.messages {
            reg.message_ids.insert((TypeId::of::<E>(), m.ty), m.id);
        }
    }

    fn install(&self, env: &HostEnv, reg: &mut Registry) {
        self.names(reg);
        let name = self.wire_name();
        let host =
            Arc::new(EntityHost::<E>::new(name, env.arbiters.clone(), env.node, env.ownership.clone(), env.idle));
        let eid = wire_id(name);
        for m in &self.messages {
            reg.handlers.insert((eid, m.id), (m.make)(host.clone()));
        }
        let h = host.clone();
        reg.key_shards.insert(
            eid,
            Arc::new(move |key: &[u8]| rmp_serde::from_slice::<E::Key>(key).ok().and_then(|k| h.shard_of(&k))),
        );
        reg.controls.push(host.clone());
        reg.hosts.insert(TypeId::of::<E>(), host);
    }
}

/// Refuses registrations whose wire ids collide (two types under one wire name, or two names
/// with one hash) or that repeat an entity type.
pub(crate) fn check_ids(specs: &[Arc<dyn EntitySpec>]) -> Result<(), ConfigError> {
    let mut entities: HashMap<u64, &'static str> = HashMap::new();
    let mut types = std::collections::HashSet::new();
    for spec in specs {
        let (id, _, ty) = spec.entity();
        // One type twice, even under two wire names, would get two hosts: one key live twice.
        if !types.insert(ty) {
            return Err(ConfigError::DuplicateEntity(ty));
        }
        if let Some(other) = entities.insert(id, ty) {
            return Err(if other == ty {
                ConfigError::DuplicateEntity(ty)
            } else {
                ConfigError::WireIdCollision { a: other, b: ty }
            });
        }
        let mut messages: HashMap<u64, &'static str> = HashMap::new();
        for (mid, _, mty) in spec.messages() {
            if let Some(other) = messages.insert(mid, mty) {
                if other != mty {
                    return Err(ConfigError::WireIdCollision { a: other, b: mty });
                }
            }
        }
    }
    Ok(())
}

/// Every registered type on this node: dispatches encoded messages to their hosts.
#[derive(Default)]
pub(crate) struct Registry {
    entities: HashMap<u64, &'static str>,
    handlers: HashMap<(u64, u64), Handle>,
    /// Entity wire id → the shard of an encoded key (None: it does not decode, or no map yet).
    key_shards: HashMap<u64, KeyShard>,
    hosts: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    /// Entity type → its wire id and Rust type name.
    entity_ids: HashMap<TypeId, (u64, &'static str)>,
    /// (entity type, message type) → the message's wire id.
    message_ids: HashMap<(TypeId, TypeId), u64>,
    pub(crate) controls: Vec<Arc<dyn HostControl>>,
}

impl Registry {
    pub(crate) fn build(specs: &[Arc<dyn EntitySpec>], env: &HostEnv) -> Registry {
        let mut reg = Registry::default();
        for spec in specs {
            spec.install(env, &mut reg);
        }
        reg
    }

    /// A client's registry: the wire ids, no hosts.
    pub(crate) fn names(specs: &[Arc<dyn EntitySpec>]) -> Registry {
        let mut reg = Registry::default();
        for spec in specs {
            spec.names(&mut reg);
        }
        reg
    }

    /// The wire name of the entity type with wire id `id`.
    pub(crate) fn wire_name(&self, id: u64) -> Option<&'static str> {
        self.entities.get(&id).copied()
    }

    pub(crate) fn host<E: ShardedActor>(&self) -> Option<Arc<EntityHost<E>>> {
        self.hosts.get(&TypeId::of::<E>()).cloned().and_then(|h| h.downcast::<EntityHost<E>>().ok())
    }

    /// The wire id and type name of entity type `E`, if registered.
    pub(crate) fn entity_id<E: ShardedActor>(&self) -> Option<(u64, &'static str)> {
        self.entity_ids.get(&TypeId::of::<E>()).copied()
    }

    /// The wire id `M` was registered under for `E`, if it was.
    pub(crate) fn message_id<E: ShardedActor, M: 'static>(&self) -> Option<u64> {
        self.message_ids.get(&(TypeId::of::<E>(), TypeId::of::<M>())).copied()
    }
}

impl Dispatch for Registry {
    fn dispatch(&self, env: Envelope) -> BoxFuture<'static, Result<Vec<u8>, Refusal>> {
        match self.handlers.get(&(env.entity, env.message)) {
            Some(h) => h(env),
            None if self.entities.contains_key(&env.entity) => {
                Box::pin(futures::future::ready(Err(Refusal::UnknownMessage(env.message))))
            }
            None => Box::pin(futures::future::ready(Err(Refusal::UnknownEntity(env.entity)))),
        }
    }

    fn key_shard(&self, env: &Envelope) -> Option<ShardId> {
        self.key_shards.get(&env.entity).and_then(|f| f(&env.key))
    }
}
