//! Registered entity types and messages, and dispatch of encoded messages to them.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use actix::{ArbiterHandle, Handler};
use clusterfunk_actors::proxy::{Dispatch, Envelope, Refusal};
use clusterfunk_actors::types::NodeId;
use futures::future::BoxFuture;

use super::host::{Admission, EntityHost, HostControl, Undelivered};
use super::{wire_id, RemoteMessage, ShardedActor};
use crate::config::ConfigError;

type Handle = Arc<dyn Fn(Envelope) -> BoxFuture<'static, Result<Vec<u8>, Refusal>> + Send + Sync>;
type MakeHandle<E> = fn(Arc<EntityHost<E>>) -> Handle;

/// The messages an entity type handles from other nodes; built with
/// `Cluster::builder().entity::<E>(|e| e.handles::<M1>().handles::<M2>())`.
pub struct EntityRegistration<E: ShardedActor> {
    messages: Vec<(u64, &'static str, MakeHandle<E>)>,
    _entity: PhantomData<fn() -> E>,
}

impl<E: ShardedActor> EntityRegistration<E> {
    pub(crate) fn new() -> Self {
        EntityRegistration { messages: Vec::new(), _entity: PhantomData }
    }

    /// `E` accepts `M` from any node.
    pub fn handles<M>(mut self) -> Self
    where
        M: RemoteMessage,
        E: Handler<M>,
    {
        let (id, name) = wire_id::<M>();
        self.messages.push((id, name, make_handle::<E, M>));
        self
    }
}

fn make_handle<E, M>(host: Arc<EntityHost<E>>) -> Handle
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
            let out = host.deliver(&key, env.shard, admission, msg).await.map_err(|e| match e {
                Undelivered::Refused(r, _) | Undelivered::Failed(r) => r,
            })?;
            rmp_serde::to_vec(&out).map_err(|e| Refusal::Malformed(format!("result: {e}")))
        })
    })
}

/// What a registration contributes once the node runs.
pub(crate) trait EntitySpec: Send + Sync {
    fn entity(&self) -> (u64, &'static str);
    fn messages(&self) -> Vec<(u64, &'static str)>;
    fn install(&self, env: &HostEnv, reg: &mut Registry);
}

pub(crate) struct HostEnv {
    pub(crate) arbiters: Arc<[ArbiterHandle]>,
    pub(crate) node: NodeId,
    pub(crate) ownership: Arc<clusterfunk_actors::serving::Ownership>,
    pub(crate) idle: Duration,
}

impl<E: ShardedActor> EntitySpec for EntityRegistration<E> {
    fn entity(&self) -> (u64, &'static str) {
        wire_id::<E>()
    }

    fn messages(&self) -> Vec<(u64, &'static str)> {
        self.messages.iter().map(|(id, name, _)| (*id, *name)).collect()
    }

    fn install(&self, env: &HostEnv, reg: &mut Registry) {
        let host = Arc::new(EntityHost::<E>::new(env.arbiters.clone(), env.node, env.ownership.clone(), env.idle));
        let (eid, name) = wire_id::<E>();
        reg.entities.insert(eid, name);
        for (mid, _, make) in &self.messages {
            reg.handlers.insert((eid, *mid), make(host.clone()));
        }
        reg.controls.push(host.clone());
        reg.hosts.insert(TypeId::of::<E>(), host);
    }
}

/// Refuses registrations whose wire ids collide (or repeat an entity type).
pub(crate) fn check_ids(specs: &[Arc<dyn EntitySpec>]) -> Result<(), ConfigError> {
    let mut entities: HashMap<u64, &'static str> = HashMap::new();
    for spec in specs {
        let (id, name) = spec.entity();
        if let Some(other) = entities.insert(id, name) {
            return Err(if other == name {
                ConfigError::DuplicateEntity(name)
            } else {
                ConfigError::WireIdCollision { a: other, b: name }
            });
        }
        let mut messages: HashMap<u64, &'static str> = HashMap::new();
        for (mid, mname) in spec.messages() {
            if let Some(other) = messages.insert(mid, mname) {
                if other != mname {
                    return Err(ConfigError::WireIdCollision { a: other, b: mname });
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
    hosts: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
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

    pub(crate) fn host<E: ShardedActor>(&self) -> Option<Arc<EntityHost<E>>> {
        self.hosts.get(&TypeId::of::<E>()).cloned().and_then(|h| h.downcast::<EntityHost<E>>().ok())
    }

    pub(crate) fn handles(&self, entity: u64, message: u64) -> bool {
        self.handlers.contains_key(&(entity, message))
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
}
