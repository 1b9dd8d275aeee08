//! A client outside the cluster: follows the shard map a node pushes to it and sends each
//! message straight to the owner of its key's shard (docs/architecture.md §9, §13).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clusterfunk_actors::shard::{shard_for, ShardKey, ShardMap};
use clusterfunk_actors::types::{ClusterName, NodeId, ShardId, Token};

use crate::config::{parse_secret, seed_form, ConfigError, Specs};
use crate::entity::{EntityRegistration, Registry, Sharded, ShardedActor, Via};
use crate::Error;

/// A client of a cluster that is not a member of it: a web front end, a batch job, another
/// service. It connects to any node, is pushed every new shard map (no polling), and sends each
/// message straight to the node that owns its key's shard over one pooled connection per node.
/// A node that does not own the shard any more answers `NotOwner` with the owner it knows; the
/// client tries that owner (or waits for the next map) and sends again, until the route wait
/// runs out. Nothing is followed silently: a node serves a client's message only while it
/// serves the shard, exactly as it would a member's.
///
/// The client sends with the same [`Sharded`] handle a member uses. Cheap to clone; the
/// connection closes when the last clone is dropped. Use it from a tokio runtime (actix's is one):
/// its own networking runs on a thread of its own.
///
/// ```no_run
/// # use clusterfunk::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # struct Counter(u64);
/// # impl actix::Actor for Counter { type Context = actix::Context<Self>; }
/// # impl ShardedActor for Counter { type Key = String; type Messages = (Add,); fn from_key(_: &String, _: EntityInfo) -> Self { Counter(0) } }
/// # #[derive(actix::Message, Serialize, Deserialize)] #[rtype(result = "u64")] struct Add(u64);
/// # impl actix::Handler<Add> for Counter { type Result = u64; fn handle(&mut self, a: Add, _: &mut Self::Context) -> u64 { self.0 += a.0; self.0 } }
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = clusterfunk::Client::builder()
///     .name("shop")
///     .env("dev")
///     .seed("10.0.0.5:7000")
///     .entity::<Counter>()
///     .connect()
///     .await?;
/// let n = client.sharded::<Counter>().send(&"basket-7".to_string(), Add(1)).await?;
/// println!("now {n}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: clusterfunk_actors::client::Client,
    registry: Arc<Registry>,
}

/// Builds a [`Client`]: the cluster's name and environment, at least one node address, and the
/// entity types it sends to, registered as on the nodes (same wire names).
#[derive(Debug, Default)]
pub struct ClientBuilder {
    name: String,
    env: String,
    seeds: Vec<String>,
    discovery: clusterfunk_actors::transport::seeds::Sources,
    secret: Option<Token>,
    gateway: bool,
    timeouts: Option<(Duration, Duration)>,
    connect_timeout: Option<Duration>,
    entities: Specs,
}

impl ClientBuilder {
    /// The cluster's name (its key). Required.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The cluster's environment. Default `dev`.
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = env.into();
        self
    }

    /// A node to ask for the shard map first, `host:port` (a node's listen address). Give
    /// several: the first that answers is used, and later the client knows every member.
    pub fn seed(mut self, addr: impl Into<String>) -> Self {
        self.seeds.push(addr.into());
        self
    }

    /// Another way to find nodes beside [`seed`](ClientBuilder::seed), run like the seeds (see
    /// [`Builder::discovery`](crate::Builder::discovery)). Repeatable.
    pub fn discovery(mut self, source: impl crate::Discovery) -> Self {
        self.discovery.0.push(Arc::new(source));
        self
    }

    /// The cluster secret (64 hex characters), if the cluster has one.
    pub fn secret(mut self, hex: impl Into<String>) -> Self {
        self.secret = Some(Token::new(hex));
        self
    }

    /// Sends every message to the node the client follows, which routes it on, instead of
    /// straight to the owner: for a client that can reach only some nodes (one more hop per
    /// message). Default false.
    pub fn gateway(mut self, yes: bool) -> Self {
        self.gateway = yes;
        self
    }

    /// How long one request to a node may take (default 5 s), and how long a message waits for
    /// its shard to get an owner, retries included (default 5 s).
    pub fn timeouts(mut self, request: Duration, route_wait: Duration) -> Self {
        self.timeouts = Some((request, route_wait));
        self
    }

    /// How long [`connect`](Self::connect) waits for the first shard map. Default 10 s.
    pub fn connect_timeout(mut self, wait: Duration) -> Self {
        self.connect_timeout = Some(wait);
        self
    }

    /// Registers an entity type the client sends to, with the messages its
    /// [`Messages`](ShardedActor::Messages) lists, under their default wire names.
    pub fn entity<E: ShardedActor>(self) -> Self {
        self.entity_with::<E>(|e| e)
    }

    /// [`entity`](Self::entity), with wire names of your own: the same as the nodes give it.
    pub fn entity_with<E: ShardedActor>(
        mut self,
        f: impl FnOnce(EntityRegistration<E>) -> EntityRegistration<E>,
    ) -> Self {
        self.entities.0.push(Arc::new(f(EntityRegistration::new())));
        self
    }

    /// Checks the settings, connects, and waits for the first shard map.
    pub async fn connect(self) -> Result<Client, Error> {
        let env = if self.env.is_empty() { "dev".to_string() } else { self.env.clone() };
        for (field, value) in [("name", &self.name), ("env", &env)] {
            if let Err(reason) = ClusterName::new(value.as_str(), "x").validate() {
                return Err(ConfigError::Name { field, value: value.clone(), reason }.into());
            }
        }
        if self.seeds.is_empty() && self.discovery.is_empty() {
            return Err(ConfigError::Address {
                field: "seed",
                value: String::new(),
                reason: "a client needs at least one node address (host:port) or discovery".into(),
            }
            .into());
        }
        for s in &self.seeds {
            seed_form("seed", s)?;
        }
        let secret = self.secret.as_ref().map(|s| parse_secret(s.expose())).transpose()?;
        crate::entity::check_ids(&self.entities.0)?;
        let mut cfg = clusterfunk_actors::client::Config::new(ClusterName::new(&self.name, &env), self.seeds);
        cfg.secret = secret;
        cfg.discovery = self.discovery;
        cfg.gateway = self.gateway;
        if let Some((request, route_wait)) = self.timeouts {
            if request.is_zero() || route_wait.is_zero() {
                return Err(ConfigError::Address {
                    field: "timeouts",
                    value: format!("{request:?}, {route_wait:?}"),
                    reason: "must be above zero".into(),
                }
                .into());
            }
            cfg.proxy.request_timeout = request;
            cfg.proxy.route_wait = route_wait;
        }
        if let Some(w) = self.connect_timeout {
            cfg.connect_timeout = w;
        }
        let inner =
            clusterfunk_actors::client::Client::connect(cfg).await.map_err(|e| Error::Connect(e.to_string()))?;
        Ok(Client { inner, registry: Arc::new(Registry::names(&self.entities.0)) })
    }
}

/// What a [`Client`] counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Requests sent to nodes (first tries and retries).
    pub sent: u64,
    /// Requests a node answered `NotOwner` (each retried while the route wait lasts).
    pub not_owner: u64,
    /// Shard maps received.
    pub maps: u64,
    /// Times the client began following another node's map (the one before went away, stopped
    /// answering pings, or its map looked stale).
    pub switches: u64,
    /// Times the followed node's map looked stale (many `NotOwner` answers and no new map for
    /// seconds: a node cut off from the cluster) and the client followed another node.
    pub stale: u64,
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The handle for sending to entities of type `E`: the same type, and calls, as a member's.
    ///
    /// # Panics
    /// If `E` was not registered with [`ClientBuilder::entity`].
    pub fn sharded<E: ShardedActor>(&self) -> Sharded<E> {
        let entity = self.registry.entity_id::<E>().unwrap_or_else(|| {
            panic!("{} is not registered: add .entity::<{0}>() to the client builder", std::any::type_name::<E>())
        });
        Sharded {
            entity: entity.0,
            wire_name: self.registry.wire_name(entity.0).expect("registered"),
            registry: self.registry.clone(),
            via: Via::Client(self.inner.clone()),
        }
    }

    /// The newest shard map the client was sent.
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.inner.map()
    }

    /// The shard `key` maps to.
    pub fn shard_for<K: ShardKey + ?Sized>(&self, key: &K) -> ShardId {
        shard_for(key, self.inner.map().shard_count())
    }

    /// The owner of `shard` in the client's map.
    pub fn owner(&self, shard: ShardId) -> Option<NodeId> {
        self.inner.map().owner(shard)
    }

    /// The endpoint `name` (`http`, `grpc`, ..) that `node` declared
    /// ([`Builder::endpoint`](crate::Builder::endpoint)), as the cluster last told the client:
    /// with [`owner`](Client::owner), where to call a shard's owner over a protocol of your own.
    pub fn endpoint(&self, node: NodeId, name: &str) -> Option<String> {
        self.inner.attributes().get(&node).and_then(|(e, _)| e.get(name).cloned())
    }

    /// The metadata `node` declared ([`Builder::metadata`](crate::Builder::metadata)), as the
    /// cluster last told the client; empty for a node it does not know.
    pub fn metadata(&self, node: NodeId) -> std::collections::BTreeMap<String, String> {
        self.inner.attributes().get(&node).map(|(_, m)| m.clone()).unwrap_or_default()
    }

    /// The node whose pushed maps the client follows now.
    pub fn following(&self) -> Option<NodeId> {
        self.inner.following()
    }

    /// Waits until the client's map satisfies `pred`, at most `timeout`.
    pub async fn wait_for_map(
        &self,
        timeout: Duration,
        what: &'static str,
        pred: impl Fn(&ShardMap) -> bool,
    ) -> Result<Arc<ShardMap>, Error> {
        match tokio::time::timeout(timeout, self.inner.wait_for_map(pred)).await {
            Ok(Ok(m)) => Ok(m),
            _ => Err(Error::Timeout(timeout, what)),
        }
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        let s = self.inner.stats();
        ClientStats {
            sent: s.sent.load(Ordering::Relaxed),
            not_owner: s.not_owner.load(Ordering::Relaxed),
            maps: s.maps.load(Ordering::Relaxed),
            switches: s.switches.load(Ordering::Relaxed),
            stale: s.stale.load(Ordering::Relaxed),
        }
    }
}
