//! Readiness of one node (what `GET /ready` serves, docs/operations.md "Health and readiness"):
//! the pure decision from what the node holds now, tested alone.

use std::fmt;

use crate::lease::Refusal;
use crate::shard::ShardMap;
use crate::types::{Epoch, NodeId, ShardId};

/// What readiness is decided from: this node's applied map, lease and serving table.
pub struct Inputs<'a, F: Fn(ShardId) -> Option<Epoch>> {
    /// This node.
    pub local: NodeId,
    /// The shard map of the last applied Raft entry (an empty map before the first).
    pub map: &'a ShardMap,
    /// Whether this node holds a valid lease now.
    pub lease_valid: bool,
    /// Why the leader refused this node's last renewal, if no grant came after it.
    pub refusal: Option<Refusal>,
    /// Whether the applied cluster state marks this node as leaving.
    pub draining: bool,
    /// The epoch a shard is served at here now (the serving table).
    pub serving: F,
}

/// Why a node is not ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// No Raft entry carrying a shard map was applied here yet.
    NoMap,
    /// The leader fenced this node: its lease ran out and its shards are being moved.
    Fenced,
    /// No valid lease (the last refusal, if the leader gave one).
    NoLease(Option<Refusal>),
    /// The node is leaving the cluster.
    Draining,
    /// The map gives this node shards it does not serve yet (a handoff to it is in flight).
    NotServing {
        /// Shards the map gives this node.
        owned: u32,
        /// Of those, the ones not served here at the map's epoch.
        missing: u32,
        /// The first of them.
        first: ShardId,
    },
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::NoMap => write!(f, "no committed shard map applied yet"),
            NotReady::Fenced => write!(f, "fenced by the leader: its lease ran out and its shards are being moved"),
            NotReady::NoLease(None) => write!(f, "no valid lease"),
            NotReady::NoLease(Some(r)) => write!(f, "no valid lease (last renewal refused: {r})"),
            NotReady::Draining => write!(f, "draining: this node is leaving the cluster"),
            NotReady::NotServing { owned, missing, first } => write!(
                f,
                "serves {} of the {owned} shards its map gives it ({missing} waiting for a handoff, first shard {first})",
                owned - missing
            ),
        }
    }
}

/// Ready: this node holds a committed map and a valid lease, is neither fenced nor leaving, and
/// serves every shard its map gives it at the map's epoch. A node the map gives no shard is
/// ready once the other conditions hold (it routes).
pub fn readiness<F: Fn(ShardId) -> Option<Epoch>>(i: Inputs<'_, F>) -> Result<(), NotReady> {
    if i.map.shard_count() == 0 {
        return Err(NotReady::NoMap);
    }
    // A node the leader fenced has no valid lease (its own count starts when it sent the
    // renewal, the leader's when it arrived): a `Fenced` beside a valid lease is a late reply
    // to an older renewal, overtaken by a grant.
    if !i.lease_valid {
        return Err(match i.refusal {
            Some(Refusal::Fenced) => NotReady::Fenced,
            other => NotReady::NoLease(other),
        });
    }
    if i.draining {
        return Err(NotReady::Draining);
    }
    let (mut owned, mut missing, mut first) = (0, 0, None);
    for (s, owner) in i.map.owners().iter().enumerate() {
        if *owner != Some(i.local) {
            continue;
        }
        owned += 1;
        let shard = ShardId(s as u32);
        if (i.serving)(shard) != Some(i.map.shard_epoch(shard)) {
            missing += 1;
            first.get_or_insert(shard);
        }
    }
    match first {
        Some(first) => Err(NotReady::NotServing { owned, missing, first }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Assignment;

    const ME: NodeId = NodeId(1);

    fn map() -> ShardMap {
        let mut m = ShardMap::new(4, 1);
        for s in 0..4u32 {
            let owner = if s.is_multiple_of(2) { ME } else { NodeId(2) };
            m.assign(ShardId(s), &Assignment { owner: Some(owner), replicas: vec![] }, Epoch(5 + u64::from(s)));
        }
        m
    }

    fn inputs<'a>(
        map: &'a ShardMap,
        serving: &'a dyn Fn(ShardId) -> Option<Epoch>,
    ) -> Inputs<'a, impl Fn(ShardId) -> Option<Epoch> + 'a> {
        Inputs { local: ME, map, lease_valid: true, refusal: None, draining: false, serving: move |s| serving(s) }
    }

    #[test]
    fn a_node_serving_its_shards_with_a_lease_is_ready() {
        let m = map();
        let all = |s: ShardId| Some(m.shard_epoch(s));
        assert_eq!(readiness(inputs(&m, &all)), Ok(()));
    }

    #[test]
    fn each_missing_condition_makes_it_not_ready_and_says_which() {
        let m = map();
        let all = |s: ShardId| Some(m.shard_epoch(s));
        let empty = ShardMap::new(0, 1);
        assert_eq!(readiness(inputs(&empty, &all)), Err(NotReady::NoMap));
        assert_eq!(readiness(Inputs { lease_valid: false, ..inputs(&m, &all) }), Err(NotReady::NoLease(None)));
        let quorum = Some(Refusal::NoQuorumYet);
        assert_eq!(
            readiness(Inputs { lease_valid: false, refusal: quorum.clone(), ..inputs(&m, &all) }),
            Err(NotReady::NoLease(quorum))
        );
        let fenced = Some(Refusal::Fenced);
        assert_eq!(
            readiness(Inputs { lease_valid: false, refusal: fenced.clone(), ..inputs(&m, &all) }),
            Err(NotReady::Fenced)
        );
        // Beside a valid lease a `Fenced` is a late reply to an older renewal: still ready.
        assert_eq!(readiness(Inputs { refusal: fenced, ..inputs(&m, &all) }), Ok(()));
        assert_eq!(readiness(Inputs { draining: true, ..inputs(&m, &all) }), Err(NotReady::Draining));
    }

    #[test]
    fn a_shard_of_its_map_not_served_at_the_maps_epoch_makes_it_not_ready() {
        let m = map();
        // Shard 2 served at an older epoch (the map moved it back here; the handoff waits).
        let stale = |s: ShardId| if s == ShardId(2) { Some(Epoch(1)) } else { Some(m.shard_epoch(s)) };
        let e = readiness(inputs(&m, &stale)).unwrap_err();
        assert_eq!(e, NotReady::NotServing { owned: 2, missing: 1, first: ShardId(2) });
        assert_eq!(e.to_string(), "serves 1 of the 2 shards its map gives it (1 waiting for a handoff, first shard 2)");
        // Not served at all.
        let none = |s: ShardId| if s == ShardId(0) { None } else { Some(m.shard_epoch(s)) };
        assert!(matches!(readiness(inputs(&m, &none)), Err(NotReady::NotServing { missing: 1, .. })));
        // Shards of other nodes do not count.
        let mine = |s: ShardId| s.0.is_multiple_of(2).then(|| m.shard_epoch(s));
        assert_eq!(readiness(inputs(&m, &mine)), Ok(()));
    }
}
