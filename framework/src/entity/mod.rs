//! Sharded actors: entity types whose instances live on the node owning their key's shard.

mod host;
mod messages;
mod registry;
mod sharded;

use std::fmt::Debug;
use std::hash::Hash;

use actix::{Actor, Context, Message};
use clusterfunk_actors::shard::ShardKey;
use clusterfunk_actors::types::{Epoch, NodeId, ShardId};
pub use host::fencing_epoch;
pub(crate) use host::PASSIVATION_REASONS;
pub use messages::{At, Lists, MessageList};
pub use registry::EntityRegistration;
pub(crate) use registry::{check_ids, EntitySpec, HostEnv, Registry};
use serde::de::DeserializeOwned;
use serde::Serialize;
pub(crate) use sharded::Via;
pub use sharded::{Handles, SendError, SendFailure, Sharded};

/// A user's message or reply as it goes on the wire: structs as maps keyed by field name, so a
/// field appended with `#[serde(default)]` is skipped by the build before and defaulted by the
/// build after (docs/wire-protocol.md, "Encoding"). Keys are not encoded with this.
pub(crate) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// An entity type: one actix actor instance per key, living on the node that owns the key's
/// shard.
///
/// # Contract
///
/// - **Creation.** [`from_key`](ShardedActor::from_key) runs on the owning node when the first
///   message for a key arrives there (from this node or forwarded from another). The instance is
///   started on one of the node's entity arbiters, chosen by shard, so all entities of one shard
///   share a thread and never run on the caller's thread.
/// - **Messages.** Ordinary actix handlers: `impl Handler<M> for YourEntity`, listed once in
///   [`Messages`](ShardedActor::Messages): `type Messages = (Add, Get);`. Their types and
///   results must be serde types. One instance handles its messages one at a time, in the order
///   they reach it.
/// - **Passivation.** An instance that received nothing for the configured idle time is stopped
///   (its `stopping`/`stopped` run); the next message creates a new one from `from_key`. An entity
///   can passivate itself with `ctx.stop()`; a message that reaches it while it is stopping fails
///   with [`SendError::EntityFailed`] without being handled.
/// - **Fencing.** Whether this node still serves the key's shard is checked when a message's
///   handler is about to run, not when it was queued: a message still queued when the shard
///   stops here (moved away, lease lost) is answered `NotOwner` and never handled, and an answer
///   is withheld (`Refusal::Indeterminate`: it may have taken effect) if the node's lease ran
///   out while the handler ran. Messages an entity sends itself
///   through its own address are ordinary actix messages and are not fenced.
/// - **Rebalance.** When its shard leaves this node, every instance of the shard is stopped
///   (what was queued for it is refused, see above), the move is confirmed only once they all
///   stopped, and the new owner creates fresh instances on demand. State in the actor is lost with it: keep what must survive in storage of your own,
///   keyed by the entity key (the sharded KV example shows the trade-off).
/// - **Panics.** A panic in a handler stops that instance; the caller of the failed message gets
///   [`SendError::EntityFailed`], and the next message creates a new instance.
///
/// # Example
///
/// ```
/// use actix::prelude::*;
/// use clusterfunk::{EntityInfo, ShardedActor};
/// use serde::{Deserialize, Serialize};
///
/// struct Counter {
///     n: u64,
/// }
///
/// impl Actor for Counter {
///     type Context = Context<Self>;
/// }
///
/// impl ShardedActor for Counter {
///     type Key = String;
///     type Messages = (Add,);
///     fn from_key(_key: &String, _info: EntityInfo) -> Self {
///         Counter { n: 0 }
///     }
/// }
///
/// #[derive(Message, Serialize, Deserialize)]
/// #[rtype(result = "u64")]
/// struct Add(u64);
///
/// impl Handler<Add> for Counter {
///     type Result = u64;
///     fn handle(&mut self, Add(k): Add, _: &mut Context<Self>) -> u64 {
///         self.n += k;
///         self.n
///     }
/// }
///
/// // In main: Cluster::builder().entity::<Counter>()...
/// ```
pub trait ShardedActor: Actor<Context = Context<Self>> + Sized {
    /// What identifies one instance; hashed with [`ShardKey`] to find its shard.
    type Key: ShardKey + Serialize + DeserializeOwned + Clone + Eq + Hash + Debug + Send + Sync + 'static;

    /// The messages it accepts from anywhere, each with a `Handler` impl: a tuple such as
    /// `(Add, Get)`, or `()` for none ([`MessageList`]). Only these can be sent with
    /// [`Sharded`]; a message left out fails to compile where it is sent.
    type Messages: MessageList<Self>;

    /// Creates the instance for `key`. Runs on the owning node, on the entity's arbiter.
    fn from_key(key: &Self::Key, info: EntityInfo) -> Self;
}

/// Where a new entity instance lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntityInfo {
    /// The key's shard.
    pub shard: ShardId,
    /// This node.
    pub node: NodeId,
    /// The epoch the shard was served (or, for a replica instance, followed) at on this node
    /// when the instance was created. A promoted follower's instances serve on under a newer
    /// epoch: for the fencing token of the message being handled, call
    /// [`fencing_epoch`](crate::fencing_epoch) in the handler and pass it to your own storage (a
    /// write carrying an older epoch than one already seen must be refused there).
    pub epoch: Epoch,
    /// Whether the instance was created on a follower of the shard, by a message from
    /// [`Sharded::send_to_replicas`](crate::Sharded::send_to_replicas), rather than on its owner.
    /// A replica instance that is still alive when its node is promoted serves on as the owner's.
    pub replica: bool,
}

/// A message that can cross nodes: an actix message whose type and result are serde types.
/// Implemented for every such type.
pub trait RemoteMessage:
    Message<Result = <Self as RemoteMessage>::Output> + Serialize + DeserializeOwned + Send + 'static
{
    /// The result type.
    type Output: Serialize + DeserializeOwned + Send + 'static;
}

impl<M> RemoteMessage for M
where
    M: Message + Serialize + DeserializeOwned + Send + 'static,
    M::Result: Serialize + DeserializeOwned + Send + 'static,
{
    type Output = M::Result;
}

/// The wire id of a wire name: xxh3 of its bytes. Derived here and nowhere else.
pub(crate) fn wire_id(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// The default wire name of a type: its name without module paths (`Vec<Add>` for
/// `alloc::vec::Vec<demo::counter::Add>`), so moving a type to another module does not change
/// it. Kept for the life of the process (one per registered type).
pub(crate) fn default_wire_name<T: ?Sized>() -> &'static str {
    Box::leak(short_name(std::any::type_name::<T>()).into_boxed_str())
}

/// `full` without its path segments.
fn short_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut ident = String::new();
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            ident.push(c);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            ident.clear();
        } else {
            out.push_str(&ident);
            ident.clear();
            out.push(c);
        }
    }
    out.push_str(&ident);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_field_appended_to_a_user_message_crosses_builds() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Before {
            amount: u64,
        }
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct After {
            amount: u64,
            #[serde(default)]
            note: Option<String>,
        }
        let after = After { amount: 3, note: Some("gift".into()) };
        let old: Before = rmp_serde::from_slice(&super::encode_value(&after).unwrap()).unwrap();
        assert_eq!(old, Before { amount: 3 });
        let new: After = rmp_serde::from_slice(&super::encode_value(&old).unwrap()).unwrap();
        assert_eq!(new, After { amount: 3, note: None });
        assert!(rmp_serde::from_slice::<Before>(&rmp_serde::to_vec(&after).unwrap()).is_err(), "positional fails");
    }

    use super::*;

    #[test]
    fn default_wire_names_ignore_module_paths() {
        assert_eq!(short_name("demo::counter::Add"), "Add");
        assert_eq!(short_name("alloc::vec::Vec<demo::counter::Add>"), "Vec<Add>");
        assert_eq!(short_name("a::Pair<b::X, c::d::Y>"), "Pair<X, Y>");
        assert_eq!(short_name("Plain"), "Plain");
        // Pinned: a wire id is part of the protocol (docs/wire-protocol.md).
        assert_eq!(wire_id("Add"), xxhash_rust::xxh3::xxh3_64(b"Add"));
    }
}
