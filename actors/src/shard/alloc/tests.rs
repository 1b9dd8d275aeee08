use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::types::Epoch;

fn cands(ws: &[(u64, u32)]) -> Vec<Candidate> {
    ws.iter().map(|(id, w)| Candidate { id: NodeId(*id), weight: *w, zone: None }).collect()
}

fn applied(map: &ShardMap, nodes: &[Candidate], epoch: u64) -> (ShardMap, Allocation) {
    let alloc = allocate(map, nodes);
    let mut next = map.clone();
    next.apply(&alloc.changes, Epoch(epoch));
    (next, alloc)
}

/// Each node within one shard of its exact weighted quota; every shard owned by a live node.
fn assert_balanced(map: &ShardMap, nodes: &[Candidate]) {
    let total: u64 = nodes.iter().map(|n| u64::from(n.weight)).sum();
    for n in nodes {
        let exact = f64::from(map.shard_count()) * f64::from(n.weight) / total as f64;
        let got = f64::from(map.owner_counts().get(&n.id).copied().unwrap_or(0));
        assert!((got - exact).abs() < 1.0, "node {} holds {got}, exact quota {exact}", n.id);
    }
    assert!(!map.has_unassigned() || nodes.is_empty());
    for o in map.owners().iter().flatten() {
        assert!(nodes.iter().any(|n| n.id == *o), "dead owner {o}");
    }
}

#[test]
fn fresh_allocation_is_contiguous_and_balanced() {
    let nodes = cands(&[(1, 1), (2, 1), (3, 2)]);
    let (map, alloc) = applied(&ShardMap::new(8, 1), &nodes, 3);
    assert_eq!(alloc.plan.moves.len(), 8);
    assert!(alloc.plan.moves.iter().all(|m| m.reason == MoveReason::Unassigned && m.from.is_none()));
    let owners: Vec<u64> = map.owners().iter().map(|o| o.unwrap().0).collect();
    assert_eq!(owners, vec![1, 1, 2, 2, 3, 3, 3, 3]);
    assert_eq!(map.shard_epoch(ShardId(0)), Epoch(3));
}

#[test]
fn no_nodes_unassigns_everything() {
    let nodes = cands(&[(1, 1)]);
    let (map, _) = applied(&ShardMap::new(4, 1), &nodes, 1);
    let (map, alloc) = applied(&map, &[], 2);
    assert!(alloc.plan.moves.iter().all(|m| m.to.is_none() && m.reason == MoveReason::OwnerLeft));
    assert!(map.owners().iter().all(Option::is_none));
}

#[test]
fn stable_when_nothing_changes() {
    let nodes = cands(&[(1, 3), (2, 1), (5, 2)]);
    let (map, _) = applied(&ShardMap::new(1000, 1), &nodes, 1);
    assert!(allocate(&map, &nodes).is_empty());
}

#[test]
fn follower_is_promoted_when_owner_leaves() {
    let nodes = cands(&[(1, 1), (2, 1), (3, 1)]);
    let (map, _) = applied(&ShardMap::new(30, 2), &nodes, 1);
    let dead = NodeId(2);
    let (next, alloc) = applied(&map, &nodes.iter().filter(|n| n.id != dead).cloned().collect::<Vec<_>>(), 2);
    for m in &alloc.plan.moves {
        assert_eq!(m.from, Some(dead));
        if m.promoted {
            assert!(map.replicas(m.shard).contains(&m.to.unwrap()));
        }
    }
    assert!(alloc.plan.moves.iter().filter(|m| m.promoted).count() >= alloc.plan.moves.len() / 2);
    for s in 0..30 {
        let a = next.assignment(ShardId(s));
        assert_eq!(a.replicas.len(), 1);
        assert_ne!(Some(a.replicas[0]), a.owner);
    }
}

#[test]
fn replicas_go_to_distinct_zones() {
    let mut nodes = cands(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
    for (n, z) in nodes.iter_mut().zip(["a", "a", "b", "b"]) {
        n.zone = Some(z.into());
    }
    let (map, _) = applied(&ShardMap::new(64, 2), &nodes, 1);
    let zone = |id: NodeId| nodes.iter().find(|n| n.id == id).unwrap().zone.clone();
    for s in 0..64 {
        let a = map.assignment(ShardId(s));
        assert_eq!(a.replicas.len(), 1);
        assert_ne!(zone(a.owner.unwrap()), zone(a.replicas[0]), "shard {s}");
    }
}

#[test]
fn more_replicas_than_nodes_fills_what_it_can() {
    let nodes = cands(&[(1, 1), (2, 1)]);
    let (map, _) = applied(&ShardMap::new(4, 3), &nodes, 1);
    for s in 0..4 {
        let a = map.assignment(ShardId(s));
        assert_eq!(a.replicas.len(), 1);
        assert_ne!(Some(a.replicas[0]), a.owner);
    }
}

fn arb_nodes() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::btree_map(1u64..1000, 1u32..8, 1..20)
        .prop_map(|m| m.into_iter().map(|(id, weight)| Candidate { id: NodeId(id), weight, zone: None }).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_node_within_one_of_quota(nodes in arb_nodes(), shards in 1u32..3000) {
        let (map, _) = applied(&ShardMap::new(shards, 1), &nodes, 1);
        assert_balanced(&map, &nodes);
    }

    #[test]
    fn deterministic(nodes in arb_nodes(), shards in 1u32..2000, rot in 0usize..20) {
        let mut shuffled = nodes.clone();
        let len = shuffled.len();
        shuffled.rotate_left(rot % len);
        prop_assert_eq!(allocate(&ShardMap::new(shards, 2), &nodes), allocate(&ShardMap::new(shards, 2), &shuffled));
    }

    #[test]
    fn leaving_moves_only_the_leavers_shards(nodes in arb_nodes(), shards in 1u32..3000, pick in 0usize..20) {
        prop_assume!(nodes.len() >= 2);
        let (map, _) = applied(&ShardMap::new(shards, 1), &nodes, 1);
        let leaver = nodes[pick % nodes.len()].id;
        let rest: Vec<Candidate> = nodes.iter().filter(|n| n.id != leaver).cloned().collect();
        let (next, alloc) = applied(&map, &rest, 2);
        let had = map.owner_counts().get(&leaver).copied().unwrap_or(0) as usize;
        prop_assert_eq!(alloc.plan.moves.len(), had);
        prop_assert!(alloc.plan.moves.iter().all(|m| m.from == Some(leaver)));
        assert_balanced(&next, &rest);
    }

    #[test]
    fn joining_moves_exactly_the_joiners_quota(nodes in arb_nodes(), shards in 1u32..3000, id in 1000u64..2000, w in 1u32..8) {
        let (map, _) = applied(&ShardMap::new(shards, 1), &nodes, 1);
        let mut more = nodes.clone();
        more.push(Candidate { id: NodeId(id), weight: w, zone: None });
        let (next, alloc) = applied(&map, &more, 2);
        let got = next.owner_counts().get(&NodeId(id)).copied().unwrap_or(0) as usize;
        prop_assert_eq!(alloc.plan.moves.len(), got);
        prop_assert!(alloc.plan.moves.iter().all(|m| m.to == Some(NodeId(id))));
        assert_balanced(&next, &more);
    }

    #[test]
    fn replicas_distinct_and_balanced(nodes in arb_nodes(), shards in 1u32..500, r in 2u32..4) {
        let (map, _) = applied(&ShardMap::new(shards, r), &nodes, 1);
        let want = (r as usize - 1).min(nodes.len() - 1);
        for s in 0..shards {
            let a = map.assignment(ShardId(s));
            prop_assert_eq!(a.replicas.len(), want);
            let mut all: Vec<NodeId> = a.replicas.clone();
            all.push(a.owner.unwrap());
            all.sort();
            all.dedup();
            prop_assert_eq!(all.len(), want + 1);
        }
        assert_balanced(&map, &nodes);
    }
}

#[test]
fn a_pinned_shard_moves_to_its_node_and_the_node_sheds_another() {
    let nodes = cands(&[(1, 1), (2, 1)]);
    let (map, _) = applied(&ShardMap::new(8, 1), &nodes, 1);
    assert_eq!(map.owner(ShardId(0)), Some(NodeId(1)));
    let pins = BTreeMap::from([(ShardId(0), NodeId(2))]);
    let alloc = allocate_pinned(&map, &nodes, &pins);
    let mut next = map.clone();
    next.apply(&alloc.changes, Epoch(2));
    assert_eq!(next.owner(ShardId(0)), Some(NodeId(2)), "on its pinned node");
    assert!(alloc.plan.moves.iter().any(|m| m.shard == ShardId(0) && m.reason == MoveReason::Pinned));
    assert_balanced(&next, &nodes);
    assert!(allocate_pinned(&next, &nodes, &pins).is_empty(), "stable once there");
    // Its node leaves: the pin is ignored while it is away.
    let (gone, _) = {
        let alloc = allocate_pinned(&next, &nodes[..1], &pins);
        let mut m = next.clone();
        m.apply(&alloc.changes, Epoch(3));
        (m, alloc)
    };
    assert_eq!(gone.owner(ShardId(0)), Some(NodeId(1)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn pins_hold_and_the_result_is_stable(
        nodes in arb_nodes(),
        shards in 1u32..1000,
        r in 1u32..4,
        picks in prop::collection::vec((0u32..1000, 0usize..40), 0..10),
    ) {
        let (map, _) = applied(&ShardMap::new(shards, r), &nodes, 1);
        // Some pins name a node that is not a candidate (index past the list): ignored.
        let pins: BTreeMap<ShardId, NodeId> = picks
            .iter()
            .map(|(s, n)| (ShardId(s % shards), nodes.get(*n).map_or(NodeId(5000 + *n as u64), |c| c.id)))
            .collect();
        let alloc = allocate_pinned(&map, &nodes, &pins);
        let mut next = map.clone();
        next.apply(&alloc.changes, Epoch(2));
        let candidate = |id: &NodeId| nodes.iter().any(|c| c.id == *id);
        for (s, n) in &pins {
            if candidate(n) {
                prop_assert_eq!(next.owner(*s), Some(*n));
            }
        }
        prop_assert!(!next.has_unassigned());
        // Nobody holds more than its quota (rounded up), unless its pins alone are more.
        let total: u64 = nodes.iter().map(|n| u64::from(n.weight)).sum();
        let counts = next.owner_counts();
        for n in &nodes {
            let quota = (u64::from(shards) * u64::from(n.weight)).div_ceil(total);
            let pinned = pins.iter().filter(|(s, p)| **p == n.id && next.owner(**s) == Some(n.id)).count() as u64;
            let held = u64::from(counts.get(&n.id).copied().unwrap_or(0));
            prop_assert!(held <= quota.max(pinned), "node {} holds {held}, quota {quota}, pinned {pinned}", n.id);
        }
        for s in 0..shards {
            let a = next.assignment(ShardId(s));
            prop_assert!(!a.replicas.contains(&a.owner.unwrap()), "shard {s}: its owner is its own follower");
        }
        // A fixpoint with one copy; with followers and unequal weights the follower phase can
        // move one follower back and forth between runs (docs/sharding.md, "Known limits").
        if r == 1 {
            prop_assert!(allocate_pinned(&next, &nodes, &pins).is_empty(), "a second run changes nothing");
        }
    }
}

// ---- Shard weights ----

fn weighted(
    map: &ShardMap,
    nodes: &[Candidate],
    weights: &BTreeMap<ShardId, u32>,
    epoch: u64,
) -> (ShardMap, Allocation) {
    let alloc = allocate_weighted(map, nodes, &BTreeMap::new(), weights);
    let mut next = map.clone();
    next.apply(&alloc.changes, Epoch(epoch));
    (next, alloc)
}

/// Each node's load (total weight owned).
fn load_of(map: &ShardMap, weights: &BTreeMap<ShardId, u32>, id: NodeId) -> u64 {
    (0..map.shard_count())
        .map(ShardId)
        .filter(|s| map.owner(*s) == Some(id))
        .map(|s| u64::from(weights.get(&s).copied().unwrap_or(1)))
        .sum()
}

/// Every node strictly within one heaviest shard of its weighted quota (exact arithmetic), and
/// every shard owned by a live node.
fn assert_weight_balanced(map: &ShardMap, nodes: &[Candidate], weights: &BTreeMap<ShardId, u32>) {
    let total: u128 = (0..map.shard_count()).map(|s| u128::from(weights.get(&ShardId(s)).copied().unwrap_or(1))).sum();
    let heaviest: u128 =
        (0..map.shard_count()).map(|s| u128::from(weights.get(&ShardId(s)).copied().unwrap_or(1))).max().unwrap_or(1);
    let nw: u128 = nodes.iter().map(|n| u128::from(n.weight)).sum();
    for n in nodes {
        let load = u128::from(load_of(map, weights, n.id));
        let (have, want) = (load * nw, total * u128::from(n.weight));
        assert!(
            have.abs_diff(want) < heaviest * nw,
            "node {} holds weight {load}, quota {:.2}, heaviest shard {heaviest}",
            n.id,
            want as f64 / nw as f64
        );
    }
    assert!(!map.has_unassigned() || nodes.is_empty());
    for o in map.owners().iter().flatten() {
        assert!(nodes.iter().any(|n| n.id == *o), "dead owner {o}");
    }
    // Rule 5: no shard is at least one lighter than the gap between its owner and the lowest node.
    let dev = |n: &Candidate| {
        let load = u128::from(load_of(map, weights, n.id));
        (load * nw) as i128 - (total * u128::from(n.weight)) as i128
    };
    let Some(low) = nodes.iter().map(dev).min() else { return };
    for n in nodes {
        let gap = dev(n) - low;
        let fits = (0..map.shard_count())
            .map(ShardId)
            .filter(|s| map.owner(*s) == Some(n.id))
            .find(|s| (i128::from(weights.get(s).copied().unwrap_or(1)) + 1) * (nw as i128) < gap);
        assert!(fits.is_none(), "shard {fits:?} of node {} is lighter than its gap {gap} to the lowest node", n.id);
    }
}

fn arb_weights(shards: u32) -> impl Strategy<Value = BTreeMap<ShardId, u32>> {
    prop::collection::btree_map(0..shards, 1u32..40, 0..(shards as usize).min(60))
        .prop_map(|m| m.into_iter().map(|(s, w)| (ShardId(s), w)).collect())
}

fn arb_weighted() -> impl Strategy<Value = (Vec<Candidate>, u32, BTreeMap<ShardId, u32>)> {
    (arb_nodes(), 1u32..1500).prop_flat_map(|(nodes, shards)| (Just(nodes), Just(shards), arb_weights(shards)))
}

#[test]
fn a_hot_shard_counts_its_weight() {
    // 8 shards, shard 0 weighs 5: total 12, two equal nodes get 6 each.
    let nodes = cands(&[(1, 1), (2, 1)]);
    let weights = BTreeMap::from([(ShardId(0), 5)]);
    let (map, alloc) = weighted(&ShardMap::new(8, 1), &nodes, &weights, 1);
    assert_eq!(load_of(&map, &weights, NodeId(1)) + load_of(&map, &weights, NodeId(2)), 12);
    assert_eq!(load_of(&map, &weights, NodeId(1)), 6, "{:?}", map.owners());
    let hot = map.owner(ShardId(0)).unwrap();
    assert_eq!(map.owner_counts()[&hot], 2, "the hot shard's owner holds one more shard, not four");
    assert_eq!(alloc.plan.moves.iter().find(|m| m.shard == ShardId(0)).unwrap().weight, 5);
    let loads: Vec<(u64, u64)> = alloc.plan.loads.iter().map(|l| (l.after, l.quota)).collect();
    assert_eq!(loads, vec![(6, 6), (6, 6)], "the plan shows each node's load and quota");
    // Raising a weight at run time moves shards off the hot shard's owner, and only that.
    let hotter = BTreeMap::from([(ShardId(0), 9)]);
    let (next, alloc) = weighted(&map, &nodes, &hotter, 2);
    assert!(alloc.plan.moves.iter().all(|m| m.from == Some(hot) && m.reason == MoveReason::OverQuota), "{alloc:?}");
    assert_weight_balanced(&next, &nodes, &hotter);
    assert!(allocate_weighted(&next, &nodes, &BTreeMap::new(), &hotter).is_empty());
}

#[test]
fn unit_weights_allocate_as_without_weights() {
    let nodes = cands(&[(1, 1), (2, 3), (9, 2)]);
    let ones: BTreeMap<ShardId, u32> = (0..100).map(|s| (ShardId(s), 1)).collect();
    let empty = ShardMap::new(100, 2);
    assert_eq!(allocate_weighted(&empty, &nodes, &BTreeMap::new(), &ones), allocate(&empty, &nodes));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn weighted_every_node_within_one_heaviest_shard_of_quota((nodes, shards, weights) in arb_weighted()) {
        let (map, _) = weighted(&ShardMap::new(shards, 1), &nodes, &weights, 1);
        assert_weight_balanced(&map, &nodes, &weights);
    }

    #[test]
    fn weighted_same_input_same_output((nodes, shards, weights) in arb_weighted(), rot in 0usize..20) {
        let mut shuffled = nodes.clone();
        let len = shuffled.len();
        shuffled.rotate_left(rot % len);
        let none = BTreeMap::new();
        let empty = ShardMap::new(shards, 2);
        prop_assert_eq!(
            allocate_weighted(&empty, &nodes, &none, &weights),
            allocate_weighted(&empty, &shuffled, &none, &weights)
        );
    }

    #[test]
    fn weighted_a_second_run_changes_nothing((nodes, shards, weights) in arb_weighted(), r in 1u32..3) {
        let (map, _) = weighted(&ShardMap::new(shards, r), &nodes, &weights, 1);
        let again = allocate_weighted(&map, &nodes, &BTreeMap::new(), &weights);
        if r == 1 {
            prop_assert!(again.is_empty(), "{:?}", again.plan);
        } else {
            prop_assert!(again.plan.moves.is_empty(), "{:?}", again.plan);
        }
    }

    #[test]
    fn weighted_leaving_moves_the_leavers_shards_and_lifts_only_nodes_a_heaviest_shard_short(
        (nodes, shards, weights) in arb_weighted(),
        pick in 0usize..20,
    ) {
        prop_assume!(nodes.len() >= 2);
        let (map, _) = weighted(&ShardMap::new(shards, 1), &nodes, &weights, 1);
        let leaver = nodes[pick % nodes.len()].id;
        let rest: Vec<Candidate> = nodes.iter().filter(|n| n.id != leaver).cloned().collect();
        assert_leave(&map, &rest, leaver, &weights);
    }
}

/// What a leave may move (module doc, rules 1-4): every shard of the leaver, and another node's
/// shard only as a lift of a node that, without its last lift, is still a heaviest shard or more
/// below its quota. With unit weights that never happens (`leaving_moves_only_the_leavers_shards`).
fn assert_leave(map: &ShardMap, rest: &[Candidate], leaver: NodeId, weights: &BTreeMap<ShardId, u32>) -> ShardMap {
    let (next, alloc) = weighted(map, rest, weights, 99);
    let had = map.owners().iter().filter(|o| **o == Some(leaver)).count();
    assert_eq!(
        alloc.plan.moves.iter().filter(|m| m.from == Some(leaver)).count(),
        had,
        "every shard of the leaver moves"
    );
    let w = |s: ShardId| u128::from(weights.get(&s).copied().unwrap_or(1));
    let total: u128 = (0..map.shard_count()).map(|s| w(ShardId(s))).sum();
    let heaviest: u128 = (0..map.shard_count()).map(|s| w(ShardId(s))).max().unwrap_or(1);
    let nw: u128 = rest.iter().map(|n| u128::from(n.weight)).sum();
    for n in rest {
        let lifts: Vec<&Move> =
            alloc.plan.moves.iter().filter(|m| m.from != Some(leaver) && m.to == Some(n.id)).collect();
        let Some(last) = lifts.iter().map(|m| u128::from(m.weight)).max() else { continue };
        assert!(lifts.iter().all(|m| m.reason == MoveReason::OverQuota), "{lifts:?}");
        let load = u128::from(load_of(&next, weights, n.id));
        // Rule 4 (a heaviest shard short before its last lift), or rule 5 (short of its new
        // quota when the leave happened: the lifts fill part of its gap).
        let before = u128::from(load_of(map, weights, n.id));
        assert!(
            (load - last) * nw + heaviest * nw <= total * u128::from(n.weight)
                || before * nw < total * u128::from(n.weight),
            "node {} was lifted (load {before} -> {load}, last lift {last}) without being short",
            n.id
        );
    }
    assert_weight_balanced(&next, rest, weights);
    next
}

#[derive(Clone, Debug)]
enum Step {
    Join(u64, u32),
    Leave(usize),
    Weigh(u32, u32),
}

fn arb_history() -> impl Strategy<Value = (Vec<Candidate>, u32, Vec<Step>, u32)> {
    let step = prop_oneof![
        (1000u64..1100, 1u32..8).prop_map(|(id, w)| Step::Join(id, w)),
        (0usize..20).prop_map(Step::Leave),
        (0u32..400, prop_oneof![3 => Just(1u32), 1 => 2u32..40]).prop_map(|(s, w)| Step::Weigh(s, w)),
    ];
    (arb_nodes(), 50u32..400, prop::collection::vec(step, 1..12), 1u32..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Joins, leaves and weight changes in any order: after each, every node is within one
    /// heaviest shard of its quota, a leave moves what `assert_leave` allows, a second run
    /// changes no owner, and the order of the candidates does not matter.
    #[test]
    fn weighted_histories_stay_balanced_and_stable((mut nodes, shards, steps, r) in arb_history()) {
        let mut weights: BTreeMap<ShardId, u32> = BTreeMap::new();
        let none = BTreeMap::new();
        let (mut map, _) = weighted(&ShardMap::new(shards, r), &nodes, &weights, 1);
        for (k, step) in steps.into_iter().enumerate() {
            let epoch = 2 + k as u64;
            match step {
                Step::Join(id, w) if !nodes.iter().any(|n| n.id == NodeId(id)) => {
                    nodes.push(Candidate { id: NodeId(id), weight: w, zone: None });
                    map = weighted(&map, &nodes, &weights, epoch).0;
                }
                Step::Leave(i) if nodes.len() > 1 => {
                    let leaver = nodes.remove(i % nodes.len()).id;
                    map = assert_leave(&map, &nodes, leaver, &weights);
                }
                Step::Weigh(s, w) => {
                    weights.insert(ShardId(s % shards), w);
                    map = weighted(&map, &nodes, &weights, epoch).0;
                }
                _ => continue,
            }
            assert_weight_balanced(&map, &nodes, &weights);
            let again = allocate_weighted(&map, &nodes, &none, &weights);
            prop_assert!(again.plan.moves.is_empty(), "a second run moves {:?}", again.plan.moves);
            let mut shuffled = nodes.clone();
            shuffled.reverse();
            prop_assert_eq!(allocate_weighted(&map, &shuffled, &none, &weights), again);
        }
    }
}

/// One hot shard does not stop the rest from balancing: a node joining a cluster whose shard 0
/// weighs 1000 (and 1000 shards weigh 1) gets its share of the light shards, and the hot shard's
/// owner keeps only it. Rules 1-4 alone gave the new node nothing (it was 500 short, under the
/// heaviest shard).
#[test]
fn a_hot_shard_does_not_stop_a_joining_node_from_getting_its_share() {
    let weights = BTreeMap::from([(ShardId(0), 1000)]);
    let three = cands(&[(1, 1), (2, 1), (3, 1)]);
    let (map, _) = weighted(&ShardMap::new(1001, 1), &three, &weights, 1);
    assert_weight_balanced(&map, &three, &weights);
    let four = cands(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
    let (next, alloc) = weighted(&map, &four, &weights, 2);
    assert_weight_balanced(&next, &four, &weights);
    let loads: Vec<u64> = four.iter().map(|n| load_of(&next, &weights, n.id)).collect();
    let hot = next.owner(ShardId(0)).unwrap();
    assert_eq!(load_of(&next, &weights, hot), 1000, "the hot shard's owner keeps only it: {loads:?}");
    // Within two of each other: rule 5 spares moves that only trade rounding.
    let light: Vec<u64> = loads.iter().copied().filter(|l| *l != 1000).collect();
    assert!(light.iter().max().unwrap() - light.iter().min().unwrap() <= 2, "{loads:?}");
    assert!(alloc.plan.moves.iter().all(|m| m.to == Some(NodeId(4)) || m.from == Some(hot)), "{:?}", alloc.plan.moves);
    assert!(allocate_weighted(&next, &four, &BTreeMap::new(), &weights).is_empty(), "a second run changes nothing");
}

/// Why a weighted leave may move more than the leaver's shards (found by proptest): the leaver
/// holds nothing (its quota, 1.6, is under the heaviest shard, 7), yet its quota spreads over the
/// rest and leaves node 4 7.11 short, more than a heaviest shard: no allocation that moves only
/// the leaver's shards is balanced. Node 4 is lifted with the lightest shard that covers the gap
/// of its donor, and nothing else moves.
#[test]
fn a_leave_that_leaves_a_node_a_heaviest_shard_short_lifts_it() {
    let nodes = cands(&[(1, 1), (2, 3), (4, 4), (8, 2)]);
    let weights = BTreeMap::from([(ShardId(0), 4), (ShardId(1), 7), (ShardId(2), 5)]);
    let mut map = ShardMap::new(3, 1);
    let own = |n: u64| Assignment { owner: Some(NodeId(n)), replicas: vec![] };
    map.apply(&[(ShardId(0), own(2)), (ShardId(1), own(8)), (ShardId(2), own(2))], Epoch(1));
    // Within one heaviest shard (7) of every quota before: 0 vs 1.6, 9 vs 4.8, 0 vs 6.4, 7 vs 3.2.
    // After node 1 leaves, node 4's quota is 16 * 4 / 9 = 7.11: only another node's shard lifts it.
    let next = assert_leave(&map, &nodes[1..], NodeId(1), &weights);
    let alloc = allocate_weighted(&map, &nodes[1..], &BTreeMap::new(), &weights);
    assert_eq!(alloc.plan.moves.len(), 1, "{:?}", alloc.plan.moves);
    assert_eq!((alloc.plan.moves[0].shard, alloc.plan.moves[0].to), (ShardId(0), Some(NodeId(4))));
    assert_eq!(next.owner(ShardId(0)), Some(NodeId(4)));
}

/// How much a weighted leave moves beyond the leaver's shards, over 300 seeded histories of
/// joins, leaves and weight changes (3 to 12 nodes of weight 1 to 4, 200 to 2000 shards, one in
/// twenty hot at weight 2 to 50). Prints the figures (docs/sharding.md, "Shard weights") and
/// holds them to at most 3 % of the leavers' weight (measured: 1.7 %).
#[test]
fn weighted_leaves_move_little_beyond_the_leavers_shards() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut leaves, mut extra_leaves, mut leaver_weight, mut extra_weight) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..300 {
        let shards = 200 + rand(1800) as u32;
        let mut nodes: Vec<Candidate> = (0..3 + rand(10))
            .map(|i| Candidate { id: NodeId(i + 1), weight: 1 + rand(4) as u32, zone: None })
            .collect();
        let mut weights: BTreeMap<ShardId, u32> = BTreeMap::new();
        for s in 0..shards {
            if rand(20) == 0 {
                weights.insert(ShardId(s), 2 + rand(49) as u32);
            }
        }
        let (mut map, _) = weighted(&ShardMap::new(shards, 1), &nodes, &weights, 1);
        let mut next_id = 100;
        for step in 0..20u64 {
            match rand(3) {
                0 => {
                    next_id += 1;
                    nodes.push(Candidate { id: NodeId(next_id), weight: 1 + rand(4) as u32, zone: None });
                    map = weighted(&map, &nodes, &weights, step + 2).0;
                }
                1 if nodes.len() > 2 => {
                    let leaver = nodes.remove(rand(nodes.len() as u64) as usize).id;
                    let alloc = allocate_weighted(&map, &nodes, &BTreeMap::new(), &weights);
                    let (mine, other): (Vec<&Move>, Vec<&Move>) =
                        alloc.plan.moves.iter().partition(|m| m.from == Some(leaver));
                    leaves += 1;
                    extra_leaves += u64::from(!other.is_empty());
                    leaver_weight += mine.iter().map(|m| u64::from(m.weight)).sum::<u64>();
                    extra_weight += other.iter().map(|m| u64::from(m.weight)).sum::<u64>();
                    map = assert_leave(&map, &nodes, leaver, &weights);
                }
                _ => {
                    weights.insert(ShardId(rand(u64::from(shards)) as u32), 1 + rand(50) as u32);
                    map = weighted(&map, &nodes, &weights, step + 2).0;
                }
            }
            assert_weight_balanced(&map, &nodes, &weights);
        }
    }
    let share = extra_weight as f64 / leaver_weight.max(1) as f64;
    eprintln!(
        "{leaves} leaves: {extra_leaves} ({:.1} %) moved a shard not the leaver's; weight {extra_weight} beyond \
         the leavers' {leaver_weight} ({:.3} %)",
        100.0 * extra_leaves as f64 / leaves.max(1) as f64,
        100.0 * share
    );
    assert!(leaves > 1000, "{leaves}");
    assert!(share <= 0.03, "a leave moves {:.2} % of the leavers' weight beyond their shards", 100.0 * share);
}
