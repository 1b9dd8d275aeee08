//! The cluster-wide worker index (docs/architecture.md §8.3): every instance declares a worker
//! count, instances sorted by their instance id take contiguous ranges of indices, and each
//! learns `(index, count, total, epoch)`.
//!
//! Dynamic mode derives it from the committed [`ClusterState`]: every node computes it from the
//! same applied log, so at one epoch no two workers hold one index. Across epochs they may (a
//! node that has not applied the latest change still uses its old range): the epoch is the
//! fencing token to hand to whatever the workers share. Static mode takes the base index and the
//! total from configuration, with no coordination and no such guarantee.

use crate::state::ClusterState;
use crate::types::NodeId;
pub use crate::types::WorkerIndex;

/// The most workers one instance may declare; a peer claiming more is registered with this many.
pub const MAX_WORKERS: u32 = 65_536;

impl WorkerIndex {
    /// Dynamic mode: `me`'s range in the committed state.
    pub fn of(state: &ClusterState, me: NodeId) -> WorkerIndex {
        let mut index = None;
        let mut total = 0u64;
        let mut count = 0;
        for (_, id, n) in state.worker_layout() {
            if id == me {
                index = Some(total);
                count = n;
            }
            total += u64::from(n);
        }
        WorkerIndex { index, count, total, epoch: state.workers_epoch }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use crate::types::{ClusterName, NodeMeta};

    fn meta(id: u64, name: &str, workers: u32) -> NodeMeta {
        NodeMeta { id: NodeId(id), weight: 1, workers, name: Some(name.into()), ..NodeMeta::default() }
    }

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&Command::Init { name: ClusterName::new("k", "e"), shards: 8, replica_factor: 1 }, 1);
        // Node ids in another order than the names: the names order the ranges.
        s.apply(&Command::RegisterMember { meta: meta(30, "node1", 2) }, 2);
        s.apply(&Command::RegisterMember { meta: meta(10, "node2", 1) }, 3);
        s.apply(&Command::RegisterMember { meta: meta(20, "node3", 4) }, 4);
        s
    }

    #[test]
    fn instances_sorted_by_name_take_contiguous_ranges() {
        let s = cluster();
        let idx = |id| WorkerIndex::of(&s, NodeId(id));
        assert_eq!(idx(30), WorkerIndex { index: Some(0), count: 2, total: 7, epoch: 4 });
        assert_eq!(idx(10), WorkerIndex { index: Some(2), count: 1, total: 7, epoch: 4 });
        assert_eq!(idx(20), WorkerIndex { index: Some(3), count: 4, total: 7, epoch: 4 });
        assert_eq!(idx(99).index, None, "not a member");
    }

    #[test]
    fn a_leave_closes_the_gap_and_a_rejoin_restores_it_under_new_epochs() {
        let mut s = cluster();
        s.apply(&Command::SetDraining { id: NodeId(10), draining: true }, 7);
        assert_eq!(WorkerIndex::of(&s, NodeId(10)).index, None, "a leaving instance is not in the index");
        assert_eq!(WorkerIndex::of(&s, NodeId(20)), WorkerIndex { index: Some(2), count: 4, total: 6, epoch: 7 });
        // A command that does not change the layout keeps the epoch.
        s.apply(&Command::SetProduction, 8);
        assert_eq!(WorkerIndex::of(&s, NodeId(20)).epoch, 7);
        s.apply(&Command::SetDraining { id: NodeId(10), draining: false }, 9);
        assert_eq!(WorkerIndex::of(&s, NodeId(20)), WorkerIndex { index: Some(3), count: 4, total: 7, epoch: 9 });
        // A changed worker count is a new layout.
        s.apply(&Command::RegisterMember { meta: meta(30, "node1", 3) }, 10);
        assert_eq!(WorkerIndex::of(&s, NodeId(10)), WorkerIndex { index: Some(3), count: 1, total: 8, epoch: 10 });
        // An operator's removal starts with taking it off the allowlist, which the removed node
        // still applies (it never sees the `RemoveMember` that follows): it is out from there.
        s.apply(&Command::SetAllowed { id: NodeId(30), allowed: false }, 11);
        assert_eq!(WorkerIndex::of(&s, NodeId(30)).index, None, "the removed node sees itself out");
        assert_eq!(WorkerIndex::of(&s, NodeId(10)), WorkerIndex { index: Some(0), count: 1, total: 5, epoch: 11 });
        s.apply(&Command::RemoveMember { id: NodeId(30) }, 12);
        assert_eq!(WorkerIndex::of(&s, NodeId(10)).epoch, 11, "the same layout, the same epoch");
    }

    #[test]
    fn no_two_instances_share_an_index_at_one_epoch() {
        // Any set of members, names (some missing, some equal), counts and leaving marks.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..500 {
            let mut s = ClusterState::default();
            let n = 1 + next() % 12;
            for i in 0..n {
                let id = next() % 1000;
                let name = match next() % 3 {
                    0 => None,
                    _ => Some(format!("n{}", next() % 5)),
                };
                let workers = (next() % 5) as u32;
                let m = NodeMeta { id: NodeId(id), workers, name, ..NodeMeta::default() };
                s.apply(&Command::RegisterMember { meta: m }, 2 + i);
                if next() % 4 == 0 {
                    s.apply(&Command::SetDraining { id: NodeId(id), draining: true }, 2 + i);
                }
            }
            let mut taken = std::collections::BTreeSet::new();
            let ids: Vec<NodeId> = s.members.keys().copied().collect();
            let total = WorkerIndex::of(&s, ids[0]).total;
            let mut sum = 0;
            for id in ids {
                let w = WorkerIndex::of(&s, id);
                assert_eq!(w.total, total, "every instance sees one total");
                if let Some(i) = w.index {
                    for k in i..i + u64::from(w.count) {
                        assert!(k < total && taken.insert(k), "index {k} held twice or out of range");
                    }
                    sum += u64::from(w.count);
                }
            }
            assert_eq!(sum, total, "the ranges cover 0..total");
        }
    }
}
