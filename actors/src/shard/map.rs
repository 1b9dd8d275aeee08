//! The shard map: who owns each shard, its replicas, and the epoch of each assignment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{Epoch, NodeId, ShardId};

/// Where one shard lives.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Assignment {
    /// The node serving the shard (the shard leader), if any.
    pub owner: Option<NodeId>,
    /// Followers, on nodes distinct from the owner and each other.
    pub replicas: Vec<NodeId>,
}

/// An immutable snapshot of every shard's owner, replicas and epoch.
///
/// Readers get it behind an `Arc` from a watch: a lookup is an array index, and a new map is
/// swapped in whole when Raft commits one, so readers never lock.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ShardMap {
    epoch: Epoch,
    owners: Vec<Option<NodeId>>,
    epochs: Vec<Epoch>,
    /// `replica_slots` followers per shard, flattened; `None` marks an empty slot.
    followers: Vec<Option<NodeId>>,
    replica_slots: usize,
    /// Shards owned per node, kept in step with `owners` so the allocator starts in O(nodes).
    counts: BTreeMap<NodeId, u32>,
}

impl ShardMap {
    /// An unassigned map of `shards` shards, each with room for `replica_factor - 1` followers.
    pub fn new(shards: u32, replica_factor: u32) -> ShardMap {
        let slots = replica_factor.saturating_sub(1) as usize;
        ShardMap {
            epoch: Epoch(0),
            owners: vec![None; shards as usize],
            epochs: vec![Epoch(0); shards as usize],
            followers: vec![None; shards as usize * slots],
            replica_slots: slots,
            counts: BTreeMap::new(),
        }
    }

    /// The epoch of the map: the log index of the entry that last changed it (0 before any).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The number of shards.
    pub fn shard_count(&self) -> u32 {
        self.owners.len() as u32
    }

    /// Copies per shard: the owner plus its followers.
    pub fn replica_factor(&self) -> u32 {
        self.replica_slots as u32 + 1
    }

    /// The node serving `shard`, or `None` if it is unassigned or out of range.
    #[inline]
    pub fn owner(&self, shard: ShardId) -> Option<NodeId> {
        self.owners.get(shard.0 as usize).copied().flatten()
    }

    /// The epoch at which `shard` was last assigned.
    #[inline]
    pub fn shard_epoch(&self, shard: ShardId) -> Epoch {
        self.epochs.get(shard.0 as usize).copied().unwrap_or_default()
    }

    /// The followers of `shard` (not including the owner).
    pub fn replicas(&self, shard: ShardId) -> Vec<NodeId> {
        let start = shard.0 as usize * self.replica_slots;
        self.followers
            .get(start..start + self.replica_slots)
            .map(|s| s.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    /// The assignment of `shard`.
    pub fn assignment(&self, shard: ShardId) -> Assignment {
        Assignment { owner: self.owner(shard), replicas: self.replicas(shard) }
    }

    /// Every shard's assignment, in shard order.
    pub fn assignments(&self) -> Vec<Assignment> {
        (0..self.shard_count()).map(|s| self.assignment(ShardId(s))).collect()
    }

    /// The number of shards each node owns.
    pub fn owner_counts(&self) -> &BTreeMap<NodeId, u32> {
        &self.counts
    }

    /// Every shard's owner, indexed by shard number.
    pub fn owners(&self) -> &[Option<NodeId>] {
        &self.owners
    }

    /// Applies a set of changed assignments, all at `epoch`; returns how many shards changed.
    pub fn apply(&mut self, changes: &[(ShardId, Assignment)], epoch: Epoch) -> usize {
        changes.iter().filter(|(shard, a)| self.assign(*shard, a, epoch)).count()
    }

    /// Whether any shard has no owner.
    pub fn has_unassigned(&self) -> bool {
        self.owners.iter().any(Option::is_none)
    }

    /// Sets `shard`'s assignment at `epoch` if it differs from the current one; returns whether
    /// it changed. The map epoch becomes `epoch` on any change.
    pub fn assign(&mut self, shard: ShardId, assignment: &Assignment, epoch: Epoch) -> bool {
        let i = shard.0 as usize;
        if i >= self.owners.len() || self.assignment(shard) == *assignment {
            return false;
        }
        if let Some(old) = self.owners[i] {
            if let Some(c) = self.counts.get_mut(&old) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(&old);
                }
            }
        }
        if let Some(new) = assignment.owner {
            *self.counts.entry(new).or_insert(0) += 1;
        }
        self.owners[i] = assignment.owner;
        let slots = &mut self.followers[i * self.replica_slots..(i + 1) * self.replica_slots];
        for (k, slot) in slots.iter_mut().enumerate() {
            *slot = assignment.replicas.get(k).copied();
        }
        self.epochs[i] = epoch;
        self.epoch = epoch;
        true
    }

    /// Encodes the map with rmp-serde in its compact wire form.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(&WireMap::from(self)).expect("encoding into a Vec cannot fail")
    }

    /// Decodes a map encoded by [`ShardMap::encode`], checking every length and index.
    pub fn decode(bytes: &[u8]) -> Result<ShardMap, MapDecodeError> {
        let wire: WireMap = rmp_serde::from_slice(bytes)?;
        wire.try_into()
    }
}

/// Why a shard map could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapDecodeError {
    /// The bytes are not a valid encoding.
    #[error("malformed shard map: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    /// Array lengths disagree with the shard count.
    #[error("shard map arrays have inconsistent lengths")]
    Lengths,
    /// A node index points past the node table.
    #[error("shard map names node index {0}, past its node table")]
    NodeIndex(u16),
    /// The format version is unknown.
    #[error("unknown shard map version {0}")]
    Version(u8),
}

const NO_NODE: u16 = u16::MAX;

/// The wire form: a node table and packed little-endian arrays, so encoding 10k shards is a few
/// memcpys rather than 10k tagged values (DEPENDENCIES.md: ≈53 µs that way).
#[derive(Serialize, Deserialize)]
struct WireMap {
    version: u8,
    epoch: u64,
    shards: u32,
    replica_slots: u32,
    nodes: Vec<u64>,
    #[serde(with = "serde_bytes")]
    owners: Vec<u8>,
    #[serde(with = "serde_bytes")]
    epochs: Vec<u8>,
    #[serde(with = "serde_bytes")]
    followers: Vec<u8>,
}

impl From<&ShardMap> for WireMap {
    fn from(map: &ShardMap) -> WireMap {
        let mut nodes: Vec<NodeId> = map.owners.iter().chain(&map.followers).flatten().copied().collect();
        nodes.sort_unstable();
        nodes.dedup();
        let index = |n: &Option<NodeId>| -> u16 {
            match n {
                None => NO_NODE,
                Some(n) => nodes.binary_search(n).expect("node table holds every node") as u16,
            }
        };
        let pack = |v: &[Option<NodeId>]| -> Vec<u8> { v.iter().flat_map(|n| index(n).to_le_bytes()).collect() };
        WireMap {
            version: 1,
            epoch: map.epoch.0,
            shards: map.owners.len() as u32,
            replica_slots: map.replica_slots as u32,
            owners: pack(&map.owners),
            followers: pack(&map.followers),
            epochs: map.epochs.iter().flat_map(|e| e.0.to_le_bytes()).collect(),
            nodes: nodes.iter().map(|n| n.0).collect(),
        }
    }
}

impl TryFrom<WireMap> for ShardMap {
    type Error = MapDecodeError;

    fn try_from(w: WireMap) -> Result<ShardMap, MapDecodeError> {
        if w.version != 1 {
            return Err(MapDecodeError::Version(w.version));
        }
        let shards = w.shards as usize;
        let slots = w.replica_slots as usize;
        let follower_len = shards.checked_mul(slots).ok_or(MapDecodeError::Lengths)?;
        if w.owners.len() != shards * 2 || w.epochs.len() != shards * 8 || w.followers.len() != follower_len * 2 {
            return Err(MapDecodeError::Lengths);
        }
        let unpack = |bytes: &[u8]| -> Result<Vec<Option<NodeId>>, MapDecodeError> {
            bytes
                .chunks_exact(2)
                .map(|c| match u16::from_le_bytes([c[0], c[1]]) {
                    NO_NODE => Ok(None),
                    i => w.nodes.get(i as usize).map(|n| Some(NodeId(*n))).ok_or(MapDecodeError::NodeIndex(i)),
                })
                .collect()
        };
        let owners = unpack(&w.owners)?;
        let mut counts = BTreeMap::new();
        for owner in owners.iter().flatten() {
            *counts.entry(*owner).or_insert(0) += 1;
        }
        Ok(ShardMap {
            epoch: Epoch(w.epoch),
            counts,
            owners,
            followers: unpack(&w.followers)?,
            epochs: w
                .epochs
                .chunks_exact(8)
                .map(|c| Epoch(u64::from_le_bytes(c.try_into().expect("chunks_exact(8)"))))
                .collect(),
            replica_slots: slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ShardMap {
        let mut m = ShardMap::new(8, 2);
        for s in 0..8u32 {
            let a =
                Assignment { owner: Some(NodeId(u64::from(s % 3) + 1)), replicas: vec![NodeId(u64::from(s % 3) + 2)] };
            m.assign(ShardId(s), &a, Epoch(10 + u64::from(s)));
        }
        m
    }

    #[test]
    fn assign_sets_epochs_and_reports_change() {
        let mut m = sample();
        let a = m.assignment(ShardId(3));
        assert!(!m.assign(ShardId(3), &a, Epoch(99)), "same assignment is no change");
        assert_eq!(m.shard_epoch(ShardId(3)), Epoch(13));
        assert_eq!(m.epoch(), Epoch(17));
        assert!(m.assign(ShardId(3), &Assignment { owner: Some(NodeId(9)), replicas: vec![] }, Epoch(20)));
        assert_eq!(
            (m.owner(ShardId(3)), m.shard_epoch(ShardId(3)), m.epoch()),
            (Some(NodeId(9)), Epoch(20), Epoch(20))
        );
        assert_eq!(m.replicas(ShardId(3)), vec![]);
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(ShardMap::decode(&m.encode()).unwrap(), m);
        let empty = ShardMap::new(0, 1);
        assert_eq!(ShardMap::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn golden_bytes() {
        let mut m = ShardMap::new(2, 1);
        m.assign(ShardId(1), &Assignment { owner: Some(NodeId(7)), replicas: vec![] }, Epoch(5));
        let hex: String = m.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "98010502009107c404ffff0000c41000000000000000000500000000000000c400");
    }

    #[test]
    fn decode_rejects_bad_input() {
        assert!(matches!(ShardMap::decode(b"\xc1"), Err(MapDecodeError::Malformed(_))));
        let mut w = WireMap::from(&sample());
        w.owners.pop();
        let bytes = rmp_serde::to_vec(&w).unwrap();
        assert!(matches!(ShardMap::decode(&bytes), Err(MapDecodeError::Lengths)));
        let mut w = WireMap::from(&sample());
        w.owners[0] = 200;
        let bytes = rmp_serde::to_vec(&w).unwrap();
        assert!(matches!(ShardMap::decode(&bytes), Err(MapDecodeError::NodeIndex(200))));
    }
}
