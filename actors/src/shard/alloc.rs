//! The weighted, minimal-movement allocator (docs/architecture.md §6, docs/sharding.md). Runs on the Raft leader; pure.
//!
//! Rules, in order:
//! 1. Each node's quota is its weighted share of the shards, rounded to a whole number so that the
//!    quotas sum to the shard count: every node is within one shard of `shards * weight / total`.
//!    The rounding is *sticky*: a node already holding its rounded-up share keeps it, so a change
//!    elsewhere does not make it shed a shard.
//! 2. A shard stays where it is unless its owner left or is over quota. A node over quota gives up
//!    its highest-numbered shards.
//! 3. Freed shards go first to one of their own live followers that is under quota (a promotion:
//!    the follower already has the data), then to under-quota nodes in id order, in contiguous
//!    runs.
//! 4. Followers (replica factor > 1) stay unless their node left, is now the owner, or is over its
//!    follower quota; empty slots take the under-quota node with the largest deficit on a node
//!    distinct from the owner and the other followers, and in a distinct zone when zones are set.
//!
//! Ties are broken by node id, so the same input always gives the same output.
//!
//! Pins ([`allocate_pinned`]): a shard an operator pinned to a live candidate goes to that node
//! (moved there if needed) and is never given up for quota; it counts toward its node's load, so
//! the node sheds other shards instead. A pin to a node that is not a candidate is ignored while
//! the node is away.
//!
//! Shard weights ([`allocate_weighted`]): a hot shard may count more than 1. A node's *load* is
//! the total weight of the shards it owns and its quota `W * weight / total node weight`, where
//! `W` is the total shard weight; shards cannot be split, so the aim is every node within one
//! heaviest shard (`w_max`) of its quota. With every shard at weight 1 the rules above apply as
//! they are (they meet the quota to the shard). Otherwise:
//! 1. Shards with no owner, or whose owner left, are freed.
//! 2. A node `w_max` or more over its quota frees shards until it is not: each time the lightest
//!    shard that is enough, else its heaviest (ties: the highest-numbered), so as little weight
//!    moves as it can.
//! 3. Freed shards, heaviest first (ties: lowest-numbered), go to a live follower that stays
//!    within its quota with it (a promotion), else to the node furthest below its quota (ties by
//!    id). Whoever takes one ends less than `w_max` over its quota.
//! 4. While a node is `w_max` or more below its quota, the node furthest over its quota gives it
//!    a shard (the lightest that covers the smaller of the two gaps, else its heaviest). Each such
//!    move strictly lowers the sum of squared deviations, so this ends; then every node is within
//!    `w_max` of its quota.
//! 5. While some node has a shard at least one lighter than the gap between its deviation and
//!    that of the node furthest below its quota (so moving it there lowers the sum of squared
//!    deviations; the one spares moves that only trade rounding, as with weights of 1),
//!    the node furthest over that has one gives the shard that lowers it most. So one hot shard
//!    does not stop the others from balancing (a node joining a cluster with a shard of weight
//!    1000 and 1000 of weight 1 still gets its share), and once no such shard is left a second
//!    run changes nothing.
//!
//! Followers are balanced by count, not weight.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::map::{Assignment, ShardMap};
use crate::types::{NodeId, ShardId};

/// A node that may hold shards.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Candidate {
    /// The node.
    pub id: NodeId,
    /// Its weight (≥ 1).
    pub weight: u32,
    /// Its failure zone, if zones are used.
    pub zone: Option<String>,
}

/// Why a shard's owner changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MoveReason {
    /// The shard had no owner.
    Unassigned,
    /// Its owner is no longer among the live candidates.
    OwnerLeft,
    /// Its owner holds more than its quota.
    OverQuota,
    /// An operator pinned it to another node.
    Pinned,
}

/// One change of owner.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Move {
    /// The shard.
    pub shard: ShardId,
    /// The previous owner.
    pub from: Option<NodeId>,
    /// The new owner (`None` when no node is left).
    pub to: Option<NodeId>,
    /// Why it moves.
    pub reason: MoveReason,
    /// Whether the new owner was a follower of the shard.
    pub promoted: bool,
    /// The shard's weight (1 unless an operator or the config set one).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// One node's load in a [`Plan`]: the total weight of the shards it owns, before and after.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeLoad {
    /// The node.
    pub node: NodeId,
    /// Its load now.
    pub before: u64,
    /// Its load once the plan is carried out.
    pub after: u64,
    /// Its weighted quota, `W * weight / total node weight`, rounded to the nearest whole weight.
    pub quota: u64,
}

/// What a rebalance would do, computable without committing it.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Plan {
    /// Owner changes, in shard order.
    pub moves: Vec<Move>,
    /// Shards whose follower set changes.
    pub replica_changes: u32,
    /// Each live candidate's load before and after, in node id order.
    #[serde(default)]
    pub loads: Vec<NodeLoad>,
}

impl Plan {
    /// Keeps only the moves `keep` accepts (the others wait: a handoff in flight, manual
    /// rebalancing); each node's load after is then that of the moves kept.
    pub fn retain_moves(&mut self, keep: impl Fn(&Move) -> bool) {
        let (kept, held): (Vec<Move>, Vec<Move>) = std::mem::take(&mut self.moves).into_iter().partition(|m| keep(m));
        for m in held {
            for l in &mut self.loads {
                if m.to == Some(l.node) {
                    l.after = l.after.saturating_sub(u64::from(m.weight));
                }
                if m.from == Some(l.node) {
                    l.after += u64::from(m.weight);
                }
            }
        }
        self.moves = kept;
    }
}

/// The result of [`allocate`]: the changed assignments and the plan that explains them.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Allocation {
    /// Shards whose assignment changes, with their new assignment, in shard order.
    pub changes: Vec<(ShardId, Assignment)>,
    /// Why.
    pub plan: Plan,
}

impl Allocation {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Computes the assignments that bring `current` in line with the live `nodes`.
///
/// `nodes` may be in any order; weights of 0 are treated as 1 (config refuses them earlier).
/// The replica factor is the map's own.
pub fn allocate(current: &ShardMap, nodes: &[Candidate]) -> Allocation {
    allocate_pinned(current, nodes, &BTreeMap::new())
}

/// [`allocate`], with the shards of `pinned` kept on (or moved to) their node while it is one of
/// the `nodes`.
pub fn allocate_pinned(current: &ShardMap, nodes: &[Candidate], pinned: &BTreeMap<ShardId, NodeId>) -> Allocation {
    allocate_weighted(current, nodes, pinned, &BTreeMap::new())
}

/// The largest weight a shard may carry: a node's load then fits easily in a `u64` and the
/// allocator's arithmetic in an `i128` (a weight above it counts as this).
pub const MAX_SHARD_WEIGHT: u32 = 1_000_000;

/// [`allocate_pinned`], with shards weighted: a shard not in `weights` weighs 1, and a node's
/// load is the total weight of its shards (the module doc gives the rules).
pub fn allocate_weighted(
    current: &ShardMap,
    nodes: &[Candidate],
    pinned: &BTreeMap<ShardId, NodeId>,
    weights: &BTreeMap<ShardId, u32>,
) -> Allocation {
    let mut nodes: Vec<&Candidate> = nodes.iter().collect();
    nodes.sort_by_key(|n| n.id);
    nodes.dedup_by_key(|n| n.id);
    let shards = current.shard_count() as usize;
    let weight = |s: ShardId| weights.get(&s).map_or(1, |w| (*w).clamp(1, MAX_SHARD_WEIGHT));
    let weighted = weights.iter().any(|(s, w)| (s.0 as usize) < shards && *w > 1);
    let mut owners: Vec<(ShardId, Option<NodeId>, MoveReason, bool)> = Vec::new();
    let overrides = if weighted {
        owner_phase_weighted(current, &nodes, pinned, &weight, &mut owners)
    } else {
        owner_phase(current, &nodes, shards, pinned, &mut owners)
    };
    let new_owner = |shard: ShardId| match overrides.binary_search_by_key(&shard, |o| o.0) {
        Ok(i) => overrides[i].1,
        Err(_) => current.owner(shard),
    };
    let mut alloc = Allocation::default();
    alloc.plan.loads = loads(current, &nodes, &weight, &overrides);
    if current.replica_factor() <= 1 {
        for (shard, to, reason, promoted) in owners {
            let from = current.owner(shard);
            alloc.plan.moves.push(Move { shard, from, to, reason, promoted, weight: weight(shard) });
            alloc.changes.push((shard, Assignment { owner: to, replicas: vec![] }));
        }
        return alloc;
    }
    let followers = follower_phase(current, &nodes, &new_owner);
    let mut moved = owners.into_iter().peekable();
    for (s, replicas) in followers.into_iter().enumerate() {
        let shard = ShardId(s as u32);
        let owner = new_owner(shard);
        if let Some((_, to, reason, promoted)) = moved.next_if(|m| m.0 == shard) {
            let from = current.owner(shard);
            alloc.plan.moves.push(Move { shard, from, to, reason, promoted, weight: weight(shard) });
        }
        let next = Assignment { owner, replicas };
        if next.replicas != current.replicas(shard) {
            alloc.plan.replica_changes += 1;
        }
        if next != current.assignment(shard) {
            alloc.changes.push((shard, next));
        }
    }
    alloc
}

/// A shard that changes owner: `(shard, new owner, why, promoted)`.
type Moved = (ShardId, Option<NodeId>, MoveReason, bool);

/// The pins to live candidates (they hold), the owners with pinned shards on their node, and
/// the pin moves that takes.
fn apply_pins(
    current: &ShardMap,
    nodes: &[&Candidate],
    pinned: &BTreeMap<ShardId, NodeId>,
) -> (BTreeMap<ShardId, NodeId>, Vec<Option<NodeId>>, Vec<Moved>) {
    let shards = current.shard_count() as usize;
    let candidate = |id: &NodeId| nodes.binary_search_by_key(id, |n| n.id).is_ok();
    let pins: BTreeMap<ShardId, NodeId> =
        pinned.iter().filter(|(s, n)| (s.0 as usize) < shards && candidate(n)).map(|(s, n)| (*s, *n)).collect();
    let mut owners = current.owners().to_vec();
    let mut pin_moves = Vec::new();
    for (s, n) in &pins {
        if owners[s.0 as usize] != Some(*n) {
            pin_moves.push((*s, Some(*n), MoveReason::Pinned, current.replicas(*s).contains(n)));
            owners[s.0 as usize] = Some(*n);
        }
    }
    (pins, owners, pin_moves)
}

/// The new owner of each shard that changes one, in shard order (from `moved`).
fn overrides_of(moved: &[Moved]) -> Vec<(ShardId, Option<NodeId>)> {
    moved.iter().map(|m| (m.0, m.1)).collect()
}

/// Each candidate's load before and after the owner changes `overrides`.
fn loads(
    current: &ShardMap,
    nodes: &[&Candidate],
    weight: &impl Fn(ShardId) -> u32,
    overrides: &[(ShardId, Option<NodeId>)],
) -> Vec<NodeLoad> {
    let at = |id: Option<NodeId>| id.and_then(|id| nodes.binary_search_by_key(&id, |n| n.id).ok());
    let mut before = vec![0u64; nodes.len()];
    let mut total = 0u128;
    for (s, o) in current.owners().iter().enumerate() {
        let w = u64::from(weight(ShardId(s as u32)));
        total += u128::from(w);
        if let Some(i) = at(*o) {
            before[i] += w;
        }
    }
    let mut after = before.clone();
    for (s, to) in overrides {
        let w = u64::from(weight(*s));
        if let Some(i) = at(current.owner(*s)) {
            after[i] -= w;
        }
        if let Some(i) = at(*to) {
            after[i] += w;
        }
    }
    let node_total: u128 = nodes.iter().map(|n| u128::from(n.weight.max(1))).sum();
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeLoad {
            node: n.id,
            before: before[i],
            after: after[i],
            quota: ((2 * total * u128::from(n.weight.max(1)) + node_total) / (2 * node_total)) as u64,
        })
        .collect()
}

/// Decides owners with every shard at weight 1. Returns the shards that change owner (in
/// `moved`, shard order) and their new owners.
fn owner_phase(
    current: &ShardMap,
    nodes: &[&Candidate],
    shards: usize,
    pinned: &BTreeMap<ShardId, NodeId>,
    moved: &mut Vec<Moved>,
) -> Vec<(ShardId, Option<NodeId>)> {
    let candidate = |id: &NodeId| nodes.binary_search_by_key(id, |n| n.id).is_ok();
    // Pins to live candidates hold: their shards start on their node.
    let (pins, owners, pin_moves) = apply_pins(current, nodes, pinned);
    let mut counts: BTreeMap<NodeId, u32> = BTreeMap::new();
    for o in owners.iter().flatten() {
        *counts.entry(*o).or_default() += 1;
    }
    let held: Vec<u64> = nodes.iter().map(|n| u64::from(counts.get(&n.id).copied().unwrap_or(0))).collect();
    let quota = quotas(shards as u64, nodes, &held);
    // Nodes that must give shards up: those gone (all of theirs) and those over quota (the surplus).
    let mut release: Vec<(NodeId, u64, MoveReason)> = counts
        .iter()
        .filter(|(id, _)| !candidate(id))
        .map(|(id, c)| (*id, u64::from(*c), MoveReason::OwnerLeft))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        if held[i] > quota[i] {
            release.push((n.id, held[i] - quota[i], MoveReason::OverQuota));
        }
    }
    let mut freed: Vec<(ShardId, MoveReason)> = Vec::new();
    let unassigned = shards as u64 - counts.values().map(|c| u64::from(*c)).sum::<u64>();
    let to_free = unassigned + release.iter().map(|r| r.1).sum::<u64>();
    if to_free > 0 {
        // Scan from the top so an over-quota node keeps its lowest-numbered shards; pinned
        // shards are never given up.
        for s in (0..shards).rev() {
            match owners[s] {
                None => freed.push((ShardId(s as u32), MoveReason::Unassigned)),
                Some(_) if pins.contains_key(&ShardId(s as u32)) => {}
                Some(o) => {
                    if let Some(r) = release.iter_mut().find(|r| r.0 == o && r.1 > 0) {
                        r.1 -= 1;
                        freed.push((ShardId(s as u32), r.2));
                    }
                }
            }
            if freed.len() as u64 == to_free {
                break;
            }
        }
        freed.reverse();
    }
    let mut deficit: Vec<u64> = (0..nodes.len()).map(|i| quota[i].saturating_sub(held[i])).collect();
    let mut taken: Vec<Option<(NodeId, bool)>> = vec![None; freed.len()];
    // Promotions first: a live follower under quota takes the shard.
    if current.replica_factor() > 1 {
        for (k, (shard, _)) in freed.iter().enumerate() {
            for f in current.replicas(*shard) {
                if let Ok(i) = nodes.binary_search_by_key(&f, |n| n.id) {
                    if deficit[i] > 0 {
                        deficit[i] -= 1;
                        taken[k] = Some((f, true));
                        break;
                    }
                }
            }
        }
    }
    // Then contiguous runs to under-quota nodes in id order.
    let mut node = 0;
    for slot in taken.iter_mut().filter(|t| t.is_none()) {
        while node < nodes.len() && deficit[node] == 0 {
            node += 1;
        }
        if node < nodes.len() {
            deficit[node] -= 1;
            *slot = Some((nodes[node].id, false));
        }
    }
    for ((shard, reason), t) in freed.into_iter().zip(taken) {
        moved.push((shard, t.map(|t| t.0), reason, t.is_some_and(|t| t.1)));
    }
    // A pinned shard is never freed, so the two lists name distinct shards.
    moved.extend(pin_moves);
    moved.sort_by_key(|m| m.0);
    overrides_of(moved)
}

/// Decides owners with weighted shards (the module doc's weighted rules). Same contract as
/// [`owner_phase`].
fn owner_phase_weighted(
    current: &ShardMap,
    nodes: &[&Candidate],
    pinned: &BTreeMap<ShardId, NodeId>,
    weight: &impl Fn(ShardId) -> u32,
    moved: &mut Vec<Moved>,
) -> Vec<(ShardId, Option<NodeId>)> {
    let shards = current.shard_count();
    let at = |id: NodeId| nodes.binary_search_by_key(&id, |n| n.id).ok();
    let (pins, mut owners, pin_moves) = apply_pins(current, nodes, pinned);
    let w = |s: ShardId| i128::from(weight(s));
    // Deviations are kept scaled by the total node weight `nw`, so they are exact integers:
    // dev[i] = load[i] * nw - W * weight[i].
    let nw: i128 = nodes.iter().map(|n| i128::from(n.weight.max(1))).sum::<i128>().max(1);
    let total: i128 = (0..shards).map(|s| w(ShardId(s))).sum();
    let w_max = (0..shards).map(|s| w(ShardId(s))).max().unwrap_or(1);
    let tolerance = w_max * nw;
    let mut dev: Vec<i128> = nodes.iter().map(|n| -total * i128::from(n.weight.max(1))).collect();
    let mut reason: BTreeMap<ShardId, MoveReason> = BTreeMap::new();
    let mut freed: Vec<ShardId> = Vec::new();
    let holder: Vec<Option<usize>> = owners.iter().map(|o| o.and_then(at)).collect();
    // Each node's lightest shard that may move (not pinned), for rule 5's check below.
    let mut lightest: Vec<Option<i128>> = vec![None; nodes.len()];
    for s in (0..shards).map(ShardId) {
        match holder[s.0 as usize] {
            Some(i) => {
                dev[i] += w(s) * nw;
                if !pins.contains_key(&s) {
                    lightest[i] = Some(lightest[i].map_or(w(s), |l| l.min(w(s))));
                }
            }
            None => {
                let why = if owners[s.0 as usize].is_some() { MoveReason::OwnerLeft } else { MoveReason::Unassigned };
                reason.insert(s, why);
                owners[s.0 as usize] = None;
                freed.push(s);
            }
        }
    }
    // The node furthest below its quota (ties by id).
    let lowest = |dev: &[i128]| (0..dev.len()).min_by_key(|i| (dev[*i], *i));
    // Rule 5's move for the lowest node `j`: the node furthest over it whose lightest movable
    // shard weighs at least one less than the gap between them (moving it lowers the sum of
    // squared deviations, by more than rounding would), and that gap. For a donor the widest
    // gap is to the lowest node, so checking the lowest is enough.
    let refine = |dev: &[i128], lightest: &dyn Fn(usize) -> Option<i128>| {
        let j = lowest(dev)?;
        (0..dev.len())
            .filter(|i| lightest(*i).is_some_and(|l| (l + 1) * nw < dev[*i] - dev[j]))
            .max_by_key(|i| (dev[*i], Reverse(*i)))
            .map(|i| (i, j, dev[i] - dev[j]))
    };
    // Balanced already (the common case, on every tick of the leader): only the pins move.
    if freed.is_empty() && dev.iter().all(|d| d.abs() < tolerance) && refine(&dev, &|i| lightest[i]).is_none() {
        moved.extend(pin_moves);
        moved.sort_by_key(|m| m.0);
        return overrides_of(moved);
    }
    // Each node's shards that may move (not pinned), lightest first, then highest-numbered.
    let mut movable: Vec<BTreeSet<(i128, Reverse<ShardId>)>> = vec![BTreeSet::new(); nodes.len()];
    for s in (0..shards).map(ShardId) {
        if let Some(i) = holder[s.0 as usize].filter(|_| !pins.contains_key(&s)) {
            movable[i].insert((w(s), Reverse(s)));
        }
    }
    // The lightest of `i`'s movable shards weighing at least `need` (scaled), else its heaviest.
    let pick = |set: &BTreeSet<(i128, Reverse<ShardId>)>, need: i128| {
        let least = (need + nw - 1).div_euclid(nw).max(1);
        set.range((least, Reverse(ShardId(u32::MAX)))..).next().or_else(|| set.iter().next_back()).copied()
    };
    // Rule 2: a node `w_max` or more over its quota frees shards until it is not.
    for i in 0..nodes.len() {
        while dev[i] >= tolerance {
            let Some((ws, Reverse(s))) = pick(&movable[i], dev[i] - tolerance + 1) else { break };
            movable[i].remove(&(ws, Reverse(s)));
            dev[i] -= ws * nw;
            owners[s.0 as usize] = None;
            reason.insert(s, MoveReason::OverQuota);
            freed.push(s);
        }
    }
    // Rule 3: heaviest first, to a follower that stays within its quota, else the lowest node.
    freed.sort_by_key(|s| (Reverse(w(*s)), *s));
    for s in freed {
        let follower = current.replicas(s).into_iter().filter_map(at).find(|f| dev[*f] + w(s) * nw <= 0);
        let Some(i) = follower.or_else(|| lowest(&dev)) else { continue };
        dev[i] += w(s) * nw;
        movable[i].insert((w(s), Reverse(s)));
        owners[s.0 as usize] = Some(nodes[i].id);
    }
    // Rule 4: lift nodes `w_max` or more below their quota. Each move lowers the sum of squared
    // deviations (by at least 2 * nw), so this ends; the bound only guards a bug.
    for _ in 0..(shards as usize + 1) * 4 {
        let Some(j) = lowest(&dev) else { break };
        if dev[j] > -tolerance {
            break;
        }
        let donor =
            (0..nodes.len()).filter(|i| dev[*i] > 0 && !movable[*i].is_empty()).max_by_key(|i| (dev[*i], Reverse(*i)));
        let Some(i) = donor else { break };
        let Some((ws, Reverse(s))) = pick(&movable[i], dev[i].min(-dev[j])) else { break };
        movable[i].remove(&(ws, Reverse(s)));
        dev[i] -= ws * nw;
        dev[j] += ws * nw;
        movable[j].insert((ws, Reverse(s)));
        owners[s.0 as usize] = Some(nodes[j].id);
        reason.entry(s).or_insert(MoveReason::OverQuota);
    }
    // Rule 5: while moving a shard to the lowest node lowers the sum of squared deviations, the
    // node furthest over that has such a shard gives the one that lowers it most (its weight
    // nearest half the gap; ties: the lighter). First among the shards that move anyway (their
    // owner changed above), then among all. Each move lowers the sum by at least 2 * nw and
    // leaves both nodes strictly between their old deviations (no node ends further from its
    // quota), so this ends; the bound only guards a bug.
    let moving = |s: ShardId, i: usize| current.owner(s) != Some(nodes[i].id);
    for anyway in [true, false] {
        let mut pool: Vec<BTreeSet<(i128, Reverse<ShardId>)>> = movable
            .iter()
            .enumerate()
            .map(|(i, set)| set.iter().filter(|(_, Reverse(s))| !anyway || moving(*s, i)).copied().collect())
            .collect();
        for _ in 0..(shards as usize + 1) * 4 {
            let Some((i, j, gap)) = refine(&dev, &|i| pool[i].first().map(|m| m.0)) else { break };
            // Weights `w` with `(w + 1) * nw < gap`; the best is nearest `gap / (2 * nw)`.
            let below = (gap - 1).div_euclid(nw) - 1;
            let half = gap.div_euclid(2 * nw);
            let gain = |ws: i128| ws * (gap - ws * nw);
            let under = pool[i].range(..=(half, Reverse(ShardId(0)))).next_back().copied();
            let over = pool[i].range((half + 1, Reverse(ShardId(u32::MAX)))..).next().copied().filter(|m| m.0 <= below);
            let best = match (under, over) {
                (Some(u), Some(o)) => Some(if gain(o.0) > gain(u.0) { o } else { u }),
                (u, o) => u.or(o),
            };
            let Some((ws, Reverse(s))) = best else { break };
            for set in [&mut movable[i], &mut pool[i]] {
                set.remove(&(ws, Reverse(s)));
            }
            dev[i] -= ws * nw;
            dev[j] += ws * nw;
            movable[j].insert((ws, Reverse(s)));
            if !anyway || moving(s, j) {
                pool[j].insert((ws, Reverse(s)));
            }
            owners[s.0 as usize] = Some(nodes[j].id);
            reason.entry(s).or_insert(MoveReason::OverQuota);
        }
    }
    for s in (0..shards).map(ShardId) {
        let to = owners[s.0 as usize];
        let pin_move = pin_moves.iter().any(|m| m.0 == s);
        if to != current.owner(s) && !pin_move {
            let why = reason.get(&s).copied().unwrap_or(MoveReason::OverQuota);
            moved.push((s, to, why, to.is_some_and(|t| current.replicas(s).contains(&t))));
        }
    }
    moved.extend(pin_moves);
    moved.sort_by_key(|m| m.0);
    overrides_of(moved)
}

/// Whole-number quotas summing to `total`, each within one of `total * w / W`.
///
/// The remainder goes first to nodes already holding their rounded-up share (so they need not
/// shed), then to those holding least (so a joining node takes it rather than creating a deficit
/// elsewhere), then by larger fraction, then by node id.
fn quotas(total: u64, nodes: &[&Candidate], held: &[u64]) -> Vec<u64> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let weights: Vec<u128> = nodes.iter().map(|n| u128::from(n.weight.max(1))).collect();
    let sum: u128 = weights.iter().sum();
    let mut quota: Vec<u64> = weights.iter().map(|w| (u128::from(total) * w / sum) as u64).collect();
    let frac: Vec<u128> = weights.iter().map(|w| u128::from(total) * w % sum).collect();
    let remainder = total - quota.iter().sum::<u64>();
    let mut eligible: Vec<usize> = (0..nodes.len()).filter(|i| frac[*i] > 0).collect();
    eligible.sort_by(|a, b| {
        let pref = |i: usize| held[i] > quota[i];
        pref(*b).cmp(&pref(*a)).then(held[*a].cmp(&held[*b])).then(frac[*b].cmp(&frac[*a])).then(a.cmp(b))
    });
    for i in eligible.into_iter().take(remainder as usize) {
        quota[i] += 1;
    }
    quota
}

/// [`quotas`] with each node's quota at most `cap`: capped nodes get their cap, and the rest of
/// `total` is shared by the others again, until every quota fits.
fn capped_quotas(total: u64, nodes: &[&Candidate], held: &[u64], cap: &[u64]) -> Vec<u64> {
    let mut quota = vec![0u64; nodes.len()];
    let mut open: Vec<usize> = (0..nodes.len()).collect();
    let mut left = total;
    loop {
        let sub: Vec<&Candidate> = open.iter().map(|i| nodes[*i]).collect();
        let sub_held: Vec<u64> = open.iter().map(|i| held[*i]).collect();
        let q = quotas(left, &sub, &sub_held);
        let over: Vec<usize> = open.iter().zip(&q).filter(|(i, q)| **q > cap[**i]).map(|(i, _)| *i).collect();
        if over.is_empty() {
            for (i, q) in open.iter().zip(q) {
                quota[*i] = q;
            }
            return quota;
        }
        for i in over {
            quota[i] = cap[i];
            left = left.saturating_sub(cap[i]);
            open.retain(|o| *o != i);
        }
        if open.is_empty() {
            return quota;
        }
    }
}

/// Decides followers for every shard, given the new owners.
fn follower_phase(
    current: &ShardMap,
    nodes: &[&Candidate],
    owner_of: &impl Fn(ShardId) -> Option<NodeId>,
) -> Vec<Vec<NodeId>> {
    let shards = current.shard_count();
    let slots = (current.replica_factor() as usize - 1).min(nodes.len().saturating_sub(1));
    let zones_in_use = {
        let mut z: Vec<&str> = nodes.iter().filter_map(|n| n.zone.as_deref()).collect();
        z.sort_unstable();
        z.dedup();
        z.len() > 1
    };
    let zone_of = |id: NodeId| nodes.binary_search_by_key(&id, |n| n.id).ok().and_then(|i| nodes[i].zone.as_deref());
    let mut held = vec![0u64; nodes.len()];
    for s in 0..shards {
        for f in current.replicas(ShardId(s)) {
            if let Ok(i) = nodes.binary_search_by_key(&f, |n| n.id) {
                held[i] += 1;
            }
        }
    }
    // A node cannot follow the shards it owns: its share is capped there and the rest spread
    // over the others by weight (an uncapped share cannot be met, and the allocator would
    // move one follower back and forth forever).
    let owned: Vec<u64> = {
        let mut o = vec![0u64; nodes.len()];
        for s in 0..shards {
            if let Some(Ok(i)) = owner_of(ShardId(s)).map(|id| nodes.binary_search_by_key(&id, |n| n.id)) {
                o[i] += 1;
            }
        }
        o
    };
    let cap: Vec<u64> = owned.iter().map(|o| u64::from(shards) - o).collect();
    let quota = capped_quotas(u64::from(shards) * slots as u64, nodes, &held, &cap);
    let mut count = vec![0u64; nodes.len()];
    let mut result: Vec<Vec<NodeId>> = Vec::with_capacity(shards as usize);
    // Keep pass.
    for s in 0..shards {
        let owner = owner_of(ShardId(s));
        let mut kept: Vec<NodeId> = Vec::with_capacity(slots);
        for f in current.replicas(ShardId(s)) {
            let Ok(i) = nodes.binary_search_by_key(&f, |n| n.id) else { continue };
            let distinct = Some(f) != owner && !kept.contains(&f);
            let zone_ok = !zones_in_use || {
                let z = zone_of(f);
                z != owner.and_then(zone_of) && kept.iter().all(|k| zone_of(*k) != z)
            };
            if distinct && zone_ok && count[i] < quota[i] && kept.len() < slots {
                count[i] += 1;
                kept.push(f);
            }
        }
        result.push(kept);
    }
    // Fill pass.
    for (s, kept) in result.iter_mut().enumerate() {
        let owner = owner_of(ShardId(s as u32));
        while kept.len() < slots {
            let fits = |i: usize, zones: bool| {
                let id = nodes[i].id;
                Some(id) != owner
                    && !kept.contains(&id)
                    && (!zones || {
                        let z = zone_of(id);
                        z != owner.and_then(zone_of) && kept.iter().all(|k| zone_of(*k) != z)
                    })
            };
            let pick = |zones: bool| {
                (0..nodes.len())
                    .filter(|i| fits(*i, zones))
                    .min_by_key(|i| (count[*i] >= quota[*i], count[*i] as i64 - quota[*i] as i64, nodes[*i].id))
            };
            let Some(i) = (if zones_in_use { pick(true).or_else(|| pick(false)) } else { pick(false) }) else {
                break;
            };
            count[i] += 1;
            kept.push(nodes[i].id);
        }
    }
    result
}

#[cfg(test)]
mod tests;
