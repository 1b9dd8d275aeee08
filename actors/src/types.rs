//! Identifier newtypes and node metadata shared by every actor.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity in the cluster, stable across restarts on the same data directory.
///
/// Derived from the node's libp2p key (xxh3 of the peer id bytes), so the transport identity and the
/// Raft identity can never disagree. A wiped data directory makes a new key and so a new id, which
/// is what openraft requires (a node must never rejoin under an id whose log it lost).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The id of the node whose libp2p peer id is `peer`.
    pub fn from_peer_bytes(peer: &[u8]) -> NodeId {
        NodeId(xxhash_rust::xxh3::xxh3_64(peer))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(NodeId)
    }
}

/// A shard number, `0..shard_count`.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A fencing epoch: the Raft log index of the entry that assigned a shard (docs/architecture.md §7.4).
///
/// Durable and monotonic: log indexes are never reused, even across restarts.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A cluster's name: a key and an environment (`shop` / `production`).
///
/// It scopes discovery (the mDNS service), gossip (the topic) and the Raft protocol name, so two
/// clusters on one LAN never mix, and is written into the data directory so a node cannot be
/// started on another cluster's data.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ClusterName {
    /// The cluster key, e.g. `shop`.
    pub key: String,
    /// The environment, e.g. `dev` or `production`.
    pub env: String,
}

impl ClusterName {
    /// A cluster name from its key and environment.
    pub fn new(key: impl Into<String>, env: impl Into<String>) -> ClusterName {
        ClusterName { key: key.into(), env: env.into() }
    }

    /// Checks that key and environment are non-empty and made of `[A-Za-z0-9_-]`, so they can be
    /// used in protocol names, topics and mDNS service names.
    pub fn validate(&self) -> Result<(), &'static str> {
        for part in [&self.key, &self.env] {
            if part.is_empty() || part.len() > 48 {
                return Err("must be 1 to 48 characters");
            }
            if !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err("may only contain ASCII letters, digits, '-' and '_'");
            }
        }
        Ok(())
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.key, self.env)
    }
}

/// What a node says about itself in its heartbeats, and what the cluster state records for it.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct NodeMeta {
    /// The node's id.
    pub id: NodeId,
    /// The node's libp2p peer id (`None`: not known). Typed here, so no reader parses it; on
    /// the wire and on disk it is its base58 text, as it always was.
    #[serde(with = "peer_text")]
    pub peer_id: Option<libp2p::PeerId>,
    /// Multiaddresses the node listens on.
    pub addrs: Vec<String>,
    /// Relative capacity: shards are given in proportion to weight. At least 1.
    pub weight: u32,
    /// Worker threads this node runs (for the worker index; docs/architecture.md §8).
    pub workers: u32,
    /// Optional failure zone; replicas go to distinct zones when zones are set.
    pub zone: Option<String>,
    /// `host:port` of the node's dashboard and API, if it serves one.
    pub dashboard: Option<String>,
    /// The instance id a person gave the node (`-i ID`): shown beside its node id, and what the
    /// worker index orders instances by. Appended: not sent when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Named endpoints the node serves (`http` → `10.0.0.5:8081`, `grpc`, anything): what a
    /// client of the service dials. At most [`MAX_ATTRIBUTES`], each checked by
    /// [`attribute_error`]. Appended: not sent when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
    /// Key/value metadata the node was started with (`rack` → `r12`, `version` → `2.3.1`).
    /// The same limits as `endpoints`. Appended: not sent when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The most endpoints, and the most metadata entries, a node is registered with.
pub const MAX_ATTRIBUTES: usize = 16;
/// The longest endpoint address or metadata value, in bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 256;

/// Why `key = value` cannot be an endpoint or a metadata entry: a key that is not a valid name
/// ([`name_error`]), or a value longer than [`MAX_ATTRIBUTE_VALUE`] bytes or holding a control
/// character.
pub fn attribute_error(key: &str, value: &str) -> Option<String> {
    if let Some(e) = name_error(key) {
        return Some(format!("the name {key:?}: {e}"));
    }
    if value.len() > MAX_ATTRIBUTE_VALUE {
        return Some(format!("the value of {key:?} is longer than {MAX_ATTRIBUTE_VALUE} bytes"));
    }
    value.chars().find(|c| c.is_control()).map(|c| format!("the value of {key:?} holds the control character {c:?}"))
}

/// The entries of `attrs` that [`attribute_error`] accepts, the first [`MAX_ATTRIBUTES`] of them.
pub fn admitted_attributes(attrs: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    attrs
        .iter()
        .filter(|(k, v)| attribute_error(k, v).is_none())
        .take(MAX_ATTRIBUTES)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// This instance's place in the cluster-wide worker index (docs/architecture.md §8.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerIndex {
    /// The index of this instance's first worker (its workers are `index .. index + count`);
    /// `None` while it is not in the index (not yet a member, or leaving).
    pub index: Option<u64>,
    /// This instance's worker count.
    pub count: u32,
    /// Workers in the whole cluster.
    pub total: u64,
    /// The Raft log index of the change that gave this layout (0 in static mode): the same on
    /// every node for one layout, higher for a later one.
    pub epoch: u64,
}

impl WorkerIndex {
    /// Static mode: `count` workers from `base`, `total` in all, set by configuration.
    pub fn fixed(base: u64, count: u32, total: u64) -> WorkerIndex {
        WorkerIndex { index: Some(base), count, total, epoch: 0 }
    }

    /// Not in the index (this instance left), keeping its count.
    pub fn left(self) -> WorkerIndex {
        WorkerIndex { index: None, ..self }
    }
}

/// The longest instance id.
pub const MAX_NAME_LEN: usize = 64;

/// Why `name` cannot be an instance id: empty, longer than [`MAX_NAME_LEN`] bytes, or a character
/// other than ASCII letters, digits, `.`, `_` and `-`.
pub fn name_error(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("it is empty".into())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!("it is longer than {MAX_NAME_LEN} bytes"))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("{c:?} is not a letter, digit, '.', '_' or '-'"))
    }
}

/// A peer id as its base58 text (`""` for none): the format node metadata and Raft node records
/// always had. Text that is not a peer id does not decode.
pub mod peer_text {
    use libp2p::PeerId;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `peer` as text.
    pub fn serialize<S: Serializer>(peer: &Option<PeerId>, s: S) -> Result<S::Ok, S::Error> {
        match peer {
            Some(p) => s.serialize_str(&p.to_base58()),
            None => s.serialize_str(""),
        }
    }

    /// Parses the text form.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PeerId>, D::Error> {
        let text: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// Why a node refused a message. ONLY APPEND.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// This node does not own the shard; here is who does, as far as it knows.
    #[error("not the owner of shard {shard} (owner {owner:?} at epoch {epoch})")]
    NotOwner {
        /// The shard.
        shard: ShardId,
        /// The epoch of the receiver's map entry for it.
        epoch: Epoch,
        /// The owner the receiver knows of.
        owner: Option<NodeId>,
    },
    /// No entity type with this id is registered on the receiver.
    #[error("unknown entity type {0:016x}")]
    UnknownEntity(u64),
    /// The entity type does not handle this message type.
    #[error("unknown message type {0:016x}")]
    UnknownMessage(u64),
    /// The key or message did not decode on the receiver.
    #[error("the message does not decode: {0}")]
    Malformed(String),
    /// The entity stopped (panicked, or stopped itself) while handling the message.
    #[error("the entity failed while handling the message")]
    EntityFailed,
    /// The receiver has too many requests in flight.
    #[error("the receiver is overloaded")]
    Overloaded,
    /// The envelope's shard is not the shard its key maps to: the sender is buggy or hostile
    /// (a second instance of the key could live under the wrong shard). The peer is dropped.
    #[error("the key maps to shard {actual}, not {claimed}")]
    WrongShard {
        /// The shard the envelope named.
        claimed: ShardId,
        /// The shard the key maps to.
        actual: ShardId,
    },
    /// The handler ran, but the receiver's lease ran out before it answered (it paused, or was
    /// cut off): another node may serve the shard by now, so the answer is withheld. The message
    /// may or may not have taken effect; it is not retried.
    #[error("shard {shard}: the lease ran out while the handler ran; the outcome is unknown")]
    Indeterminate {
        /// The shard.
        shard: ShardId,
    },
    /// A node serving a client as its gateway could not deliver the message to the shard's
    /// owner (none in time, unreachable, queue full): it was not handled. Only clients get it.
    #[error("the gateway could not deliver it: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// Whether the receiver refused the message before its handler ran: it was not handled.
    pub fn unhandled(&self) -> bool {
        match self {
            Refusal::NotOwner { .. }
            | Refusal::UnknownEntity(_)
            | Refusal::UnknownMessage(_)
            | Refusal::Malformed(_)
            | Refusal::Overloaded
            | Refusal::WrongShard { .. }
            | Refusal::Unavailable(_) => true,
            // A handler that failed may have done part of its work; a withheld answer may have
            // taken effect.
            Refusal::EntityFailed | Refusal::Indeterminate { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `NodeMeta` as it was stored before the peer id was typed.
    #[derive(Serialize)]
    struct OldMeta {
        id: NodeId,
        peer_id: String,
        addrs: Vec<String>,
        weight: u32,
        workers: u32,
        zone: Option<String>,
        dashboard: Option<String>,
    }

    fn old(peer_id: &str) -> Vec<u8> {
        let m = OldMeta {
            id: NodeId(1),
            peer_id: peer_id.into(),
            addrs: vec![],
            weight: 1,
            workers: 1,
            zone: None,
            dashboard: None,
        };
        crate::wire::encode(&m)
    }

    #[test]
    fn a_typed_peer_id_reads_and_writes_the_text_form() {
        let text = "12D3KooWCMQ8kvhesHFcJAmuMGijzh3aA9q6wkhEtB1XJLQZtjHF";
        let meta: NodeMeta = rmp_serde::from_slice(&old(text)).unwrap();
        assert_eq!(meta.peer_id, Some(text.parse().unwrap()));
        assert_eq!(crate::wire::encode(&meta), old(text), "written as before");
        let none: NodeMeta = rmp_serde::from_slice(&old("")).unwrap();
        assert_eq!(none.peer_id, None);
        assert!(rmp_serde::from_slice::<NodeMeta>(&old("not-a-peer")).is_err(), "a bad peer id does not decode");
    }
}

/// A secret string (a management token, a cluster secret's text): its `Debug` never shows it,
/// so no `?config` or `?request` in a log line can leak it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }

    /// The secret itself, for the one place that compares or sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}
