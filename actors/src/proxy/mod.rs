//! The proxy (shard router): every message for an entity key goes to the node owning the key's
//! shard (docs/architecture.md §2, §9).
//!
//! The hot path is not an actor: a hop through one mailbox per message would cost more than the
//! whole local delivery. [`Router`] is a cloneable handle; remote traffic to each peer goes over
//! one long-lived libp2p stream ([`link`]) whose writer task coalesces queued frames into one
//! write, with request ids matched by its reader task. Inbound streams are served by
//! [`inbound`]. Deciding where a message goes is a pure function ([`route`]).

pub mod clients;
mod frame;
pub mod inbound;
pub(crate) mod link;
mod router;

use std::time::Duration;

pub use frame::{Envelope, Frame, Refusal};
use futures::future::BoxFuture;
pub use router::{route, Route, Router, Stats};

use crate::types::{NodeId, ShardId};

/// The stream protocol of the proxy path.
pub fn protocol(cluster: &crate::types::ClusterName) -> libp2p::StreamProtocol {
    libp2p::StreamProtocol::try_from_owned(format!("/clusterfunk/{}/{}/proxy/1", cluster.key, cluster.env))
        .expect("cluster names are validated to [A-Za-z0-9_-]")
}

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Frames queued per peer before a send fails with [`Error::QueueFull`]. Default 4096.
    pub queue_per_peer: usize,
    /// Frames coalesced into one write. Default 64 (measured: 64 per write ≈ 23× one per write).
    pub batch: usize,
    /// How long a remote request may take. Default 5 s.
    pub request_timeout: Duration,
    /// How long a message waits for its shard to get an owner (or a new one after `NotOwner`)
    /// before failing. Default 5 s: longer than a failover.
    pub route_wait: Duration,
    /// How many messages may wait for a route at once; beyond it they fail with
    /// [`Error::Overloaded`]. Default 10,000.
    pub max_waiting: usize,
    /// Largest frame accepted, in bytes. Default 4 MiB.
    pub max_frame: usize,
    /// Requests served at once per inbound stream. Default 4096.
    pub inbound_concurrency: usize,
    /// Whether this node serves non-member clients (`clusterfunk::Client`): the shard map
    /// pushed to them, their requests for its shards, and requests it routes on as their
    /// gateway. Default true. With a cluster secret only holders of it can connect at all.
    pub accept_clients: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            queue_per_peer: 4096,
            batch: 64,
            request_timeout: Duration::from_secs(5),
            route_wait: Duration::from_secs(5),
            max_waiting: 10_000,
            max_frame: 4 << 20,
            inbound_concurrency: 4096,
            accept_clients: true,
        }
    }
}

/// Why a message was not answered.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The receiving node refused it (not the owner, unknown type, entity failed...).
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The queue towards the owner is full; the message was not sent.
    #[error("the queue to node {node} is full")]
    QueueFull {
        /// The owner.
        node: NodeId,
    },
    /// No answer within the request timeout; the message may or may not have been handled.
    #[error("no answer from node {node} within {timeout:?}")]
    Timeout {
        /// The owner.
        node: NodeId,
        /// The timeout.
        timeout: Duration,
    },
    /// The owner could not be reached; the message was not sent.
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// The owner.
        node: NodeId,
        /// What happened.
        reason: &'static str,
    },
    /// The connection broke after the message was sent: it may or may not have been handled.
    #[error("connection to node {node} lost before the answer")]
    ConnectionLost {
        /// The owner.
        node: NodeId,
    },
    /// The shard had no owner within the route wait.
    #[error("shard {shard} has no owner (waited {waited:?})")]
    NoOwner {
        /// The shard.
        shard: ShardId,
        /// How long it waited.
        waited: Duration,
    },
    /// Too many messages are waiting for a route.
    #[error("too many messages are waiting for a shard owner")]
    Overloaded,
    /// The frame would exceed the size limit.
    #[error("message of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The node is shutting down.
    #[error("the proxy has stopped")]
    Closed,
}

impl Error {
    /// Whether the message certainly was not handled (it was never sent, or the receiver
    /// refused it before its handler ran): it may be sent again.
    pub fn unsent(&self) -> bool {
        match self {
            Error::Refused(r) => r.unhandled(),
            Error::QueueFull { .. }
            | Error::Unreachable { .. }
            | Error::NoOwner { .. }
            | Error::Overloaded
            | Error::TooLarge { .. }
            | Error::Closed => true,
            Error::Timeout { .. } | Error::ConnectionLost { .. } => false,
        }
    }
}

/// Local delivery of an encoded message: implemented by the framework's entity registry.
pub trait Dispatch: Send + Sync + 'static {
    /// Delivers `env` to its entity on this node and returns the encoded result.
    fn dispatch(&self, env: Envelope) -> BoxFuture<'static, Result<Vec<u8>, Refusal>>;

    /// The shard of `env`'s key, when this node knows its entity type, the key decodes, and
    /// there is a map: a gateway checks a client's envelope with it before routing it on (the
    /// owner drops a member that sends an envelope whose shard is not its key's).
    fn key_shard(&self, env: &Envelope) -> Option<ShardId> {
        let _ = env;
        None
    }
}
