//! The shard manager's decision: when to commit which allocation, and how. Pure.
//!
//! - Shards of a node whose lease has surely run out (the lease table says so) move at once, in
//!   one `SetAssignments`: the old owner cannot serve any more and cannot confirm anything.
//! - Every other owner change is a planned move: `BeginHandoff` takes the shard from its live
//!   owner, which stops it and confirms with `Released`; only then does the new owner get it.
//!   The old owner confirms only once the shard's entities stopped; the leader releases an
//!   unconfirmed handoff itself only when the old owner's lease has surely run out (it is gone or
//!   cut off: not serving, and no handler of it can still be acknowledged). A live old owner is
//!   never overtaken: releasing on a plain timeout would let the new owner's instance start
//!   while the old one's handler still runs.
//! - Planned moves, first assignments and replica changes are debounced, so a rolling start
//!   becomes one map change.
//! - Pinned shards (an operator's `shard move`) go to their node like any planned move.
//! - With manual rebalancing, moves that only balance load (an owner over its quota) wait for an
//!   operator to commit a plan ([`Core::split`] gives the commit's commands); failover, first
//!   assignments, drains and pins stay automatic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::info;

use super::Config;
use crate::shard::{allocate_weighted, Allocation, Assignment, Candidate, MoveReason, Plan};
use crate::state::{ClusterState, Command};
use crate::types::{NodeId, ShardId};

/// A planned move: `(shard, from, to)`, as `Command::BeginHandoff` carries it.
pub type Handoff = (ShardId, NodeId, Assignment);

/// What the core wants done.
// One decision per 50 ms tick at most: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Nothing to do now.
    Wait,
    /// Commit this command (`plan` is set when it starts a rebalance).
    Commit(Command, Option<Plan>),
}

/// Decides rebalances on the leader.
pub struct Core {
    cfg: Config,
    needed_since: Option<Instant>,
    in_flight: bool,
}

impl Core {
    /// A core with `cfg`.
    pub fn new(cfg: Config) -> Core {
        Core { cfg, needed_since: None, in_flight: false }
    }

    /// The timings this core runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The candidates for shards: registered members whose lease has not run out and that are
    /// not leaving.
    pub fn candidates(state: &ClusterState, expired: &impl Fn(NodeId) -> bool) -> Vec<Candidate> {
        state
            .members
            .values()
            .filter(|m| !expired(m.id) && !state.is_draining(m.id))
            .map(|m| Candidate { id: m.id, weight: m.weight.max(1), zone: m.zone.clone() })
            .collect()
    }

    /// What the allocator would do now (pins and shard weights honoured), leaving out shards
    /// whose handoff is in flight. Those count as on their new owner already: the rest is
    /// planned as it will be once they land (else a moving shard would count as unassigned,
    /// and be placed, and weigh, somewhere it is not going).
    pub fn allocation(state: &ClusterState, expired: &impl Fn(NodeId) -> bool) -> Allocation {
        let candidates = Self::candidates(state, expired);
        let landed;
        let map = if state.handoffs.is_empty() {
            &*state.shard_map
        } else {
            let mut m = (*state.shard_map).clone();
            let to: Vec<(ShardId, Assignment)> = state.handoffs.iter().map(|(s, h)| (*s, h.to.clone())).collect();
            m.apply(&to, m.epoch());
            landed = m;
            &landed
        };
        let mut alloc = allocate_weighted(map, &candidates, &state.pinned, &state.shard_weights);
        alloc.changes.retain(|(s, _)| !state.handoffs.contains_key(s));
        alloc.plan.retain_moves(|m| !state.handoffs.contains_key(&m.shard));
        alloc
    }

    /// Whether a leader that has led for `led` may move shards (it first lets the members renew
    /// their leases with it).
    pub fn settled(&self, led: Duration) -> bool {
        led >= self.cfg.debounce.min(self.cfg.takeover)
    }

    /// How `alloc` is carried out now: direct assignments (shards with no owner, or an owner
    /// whose lease surely ran out) and handoffs from live owners.
    pub fn split(
        state: &ClusterState,
        alloc: Allocation,
        expired: &impl Fn(NodeId) -> bool,
    ) -> (Vec<(ShardId, Assignment)>, Vec<Handoff>) {
        let map = &state.shard_map;
        let mut direct = Vec::new();
        let mut handoffs = Vec::new();
        for (s, a) in alloc.changes {
            match map.owner(s) {
                Some(o) if !expired(o) && Some(o) != a.owner => handoffs.push((s, o, a)),
                _ => direct.push((s, a)),
            }
        }
        (direct, handoffs)
    }

    /// Called on every tick with the latest state. `leader_for` is how long this node has led
    /// (`None`: not the leader); `expired(node)` whether the node's lease has surely run out.
    pub fn tick(
        &mut self,
        now: Instant,
        leader_for: Option<Duration>,
        state: &ClusterState,
        expired: impl Fn(NodeId) -> bool,
    ) -> Decision {
        let Some(led) = leader_for else {
            self.needed_since = None;
            return Decision::Wait;
        };
        if self.in_flight || state.name.is_none() || state.members.is_empty() {
            return Decision::Wait;
        }
        // A new leader first lets the members renew their leases with it.
        if !self.settled(led) {
            return Decision::Wait;
        }
        let map = &state.shard_map;
        // Handoffs whose old owner's lease surely ran out: it cannot confirm, and cannot serve.
        let mut overdue: BTreeMap<NodeId, Vec<(ShardId, crate::types::Epoch)>> = BTreeMap::new();
        for (shard, h) in &state.handoffs {
            if expired(h.from) {
                overdue.entry(h.from).or_default().push((*shard, map.shard_epoch(*shard)));
            }
        }
        if let Some((node, shards)) = overdue.into_iter().next() {
            info!(%node, shards = shards.len(), "old owner's lease ran out before it confirmed: releasing on the lease rule");
            return self.commit(Command::Released { node, shards }, None);
        }

        let mut alloc = Self::allocation(state, &expired);
        if state.manual_rebalance {
            // Load-balancing moves wait for an operator's commit.
            let held: std::collections::BTreeSet<ShardId> =
                alloc.plan.moves.iter().filter(|m| m.reason == MoveReason::OverQuota).map(|m| m.shard).collect();
            alloc.changes.retain(|(s, _)| !held.contains(s));
            alloc.plan.retain_moves(|m| !held.contains(&m.shard));
        }
        let changes = alloc.changes;
        if changes.is_empty() {
            self.needed_since = None;
            return Decision::Wait;
        }
        // Failover: owners whose lease ran out lose their shards now, without debounce.
        let (failover, rest): (Vec<_>, Vec<_>) =
            changes.into_iter().partition(|(s, _)| map.owner(*s).is_some_and(&expired));
        if !failover.is_empty() {
            info!(shards = failover.len(), based_on = %map.epoch(), "failover: reassigning shards of nodes whose lease ran out");
            let plan = Plan { moves: alloc.plan.moves.clone(), ..Plan::default() };
            return self.commit(Command::SetAssignments { based_on: map.epoch(), changes: failover }, Some(plan));
        }
        let needed = *self.needed_since.get_or_insert(now);
        if now.saturating_duration_since(needed) < self.cfg.debounce {
            return Decision::Wait;
        }
        self.needed_since = None;
        let (planned, direct): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|(s, a): &(ShardId, Assignment)| map.owner(*s).is_some_and(|o| Some(o) != a.owner));
        if !direct.is_empty() {
            info!(shards = direct.len(), based_on = %map.epoch(), "rebalance: assigning shards");
            return self
                .commit(Command::SetAssignments { based_on: map.epoch(), changes: direct }, Some(alloc.plan.clone()));
        }
        info!(moves = planned.len(), based_on = %map.epoch(), "rebalance: handing off shards");
        let moves = planned.into_iter().filter_map(|(s, a)| map.owner(s).map(|from| (s, from, a))).collect();
        self.commit(Command::BeginHandoff { based_on: map.epoch(), moves }, Some(alloc.plan))
    }

    fn commit(&mut self, cmd: Command, plan: Option<Plan>) -> Decision {
        self.in_flight = true;
        Decision::Commit(cmd, plan)
    }

    /// The commit finished (applied, refused or failed): decide again on the next tick.
    pub fn committed(&mut self) {
        self.in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ClusterName, Epoch, NodeMeta};

    fn state(ids: &[u64]) -> ClusterState {
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("a", "b"), shards: 16, replica_factor: 1 }, 1);
        for i in ids {
            st.apply(
                &Command::RegisterMember { meta: NodeMeta { id: NodeId(*i), weight: 1, ..NodeMeta::default() } },
                2,
            );
        }
        st
    }

    const MS: Duration = Duration::from_millis(1);

    fn commit(d: Decision) -> Command {
        match d {
            Decision::Commit(c, _) => c,
            Decision::Wait => panic!("expected a commit"),
        }
    }

    #[test]
    fn debounces_first_assignment_then_commits_once() {
        let mut c = Core::new(Config::default());
        let st = state(&[1, 2]);
        let t0 = Instant::now();
        let alive = |_| false;
        assert_eq!(c.tick(t0, Some(MS), &st, alive), Decision::Wait, "new leader waits");
        assert_eq!(c.tick(t0, Some(600 * MS), &st, alive), Decision::Wait, "debounce starts");
        let Command::SetAssignments { changes, .. } = commit(c.tick(t0 + 500 * MS, Some(1100 * MS), &st, alive)) else {
            panic!()
        };
        assert_eq!(changes.len(), 16);
        assert_eq!(c.tick(t0 + 600 * MS, Some(1200 * MS), &st, alive), Decision::Wait, "one in flight");
        assert_eq!(c.tick(t0, None, &st, alive), Decision::Wait, "followers decide nothing");
    }

    fn assigned(ids: &[u64]) -> ClusterState {
        let mut st = state(ids);
        let mut c = Core::new(Config::default());
        let t0 = Instant::now();
        c.tick(t0, Some(Duration::from_secs(1)), &st, |_| false);
        let cmd = commit(c.tick(t0 + Duration::from_secs(1), Some(Duration::from_secs(2)), &st, |_| false));
        st.apply(&cmd, 10);
        st
    }

    #[test]
    fn an_expired_owner_loses_its_shards_at_once_and_a_live_one_hands_off() {
        let st = assigned(&[1, 2]);
        let t0 = Instant::now();
        let mut c = Core::new(Config::default());
        let Command::SetAssignments { changes, .. } =
            commit(c.tick(t0, Some(Duration::from_secs(5)), &st, |n| n == NodeId(2)))
        else {
            panic!("failover is a direct assignment")
        };
        assert_eq!(changes.len(), 8);
        assert!(changes.iter().all(|(_, a)| a.owner == Some(NodeId(1))));

        // A third node joins: the planned moves are handoffs, after the debounce.
        let mut st = st;
        st.apply(&Command::RegisterMember { meta: NodeMeta { id: NodeId(3), weight: 1, ..NodeMeta::default() } }, 11);
        let mut c = Core::new(Config::default());
        assert_eq!(c.tick(t0, Some(Duration::from_secs(5)), &st, |_| false), Decision::Wait);
        let Command::BeginHandoff { moves, based_on } =
            commit(c.tick(t0 + Duration::from_secs(1), Some(Duration::from_secs(6)), &st, |_| false))
        else {
            panic!("a live owner hands off")
        };
        assert_eq!(moves.len(), 5);
        assert!(moves.iter().all(|(_, _, to)| to.owner == Some(NodeId(3))));
        c.committed();
        st.apply(&Command::BeginHandoff { based_on, moves: moves.clone() }, 12);
        let (shard, from, _) = moves[0].clone();
        assert_eq!(st.shard_map.owner(shard), None, "unowned while the old owner stops");
        // The old owner confirms one; the leader releases the rest only once its lease ran out.
        st.apply(&Command::Released { node: from, shards: vec![(shard, Epoch(12))] }, 13);
        assert_eq!(st.shard_map.owner(shard), Some(NodeId(3)));
        assert_eq!(st.shard_map.shard_epoch(shard), Epoch(13));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(c.tick(t1, Some(Duration::from_secs(7)), &st, |_| false), Decision::Wait);
        let late = t1 + Duration::from_secs(60);
        assert_eq!(
            c.tick(late, Some(Duration::from_secs(60)), &st, |_| false),
            Decision::Wait,
            "a live old owner is never overtaken, however long it takes"
        );
        let Command::Released { shards, .. } = commit(c.tick(late, Some(Duration::from_secs(60)), &st, |n| n == from))
        else {
            panic!("handoffs of an owner whose lease ran out are released")
        };
        assert_eq!(shards.len(), st.handoffs.values().filter(|h| h.from == shards_from(&st, &shards)).count());
    }

    fn shards_from(st: &ClusterState, shards: &[(ShardId, Epoch)]) -> NodeId {
        st.handoffs[&shards[0].0].from
    }

    #[test]
    fn a_draining_node_hands_off_everything() {
        let mut st = assigned(&[1, 2]);
        st.apply(&Command::SetDraining { id: NodeId(2), draining: true }, 11);
        let mut c = Core::new(Config::default());
        let t0 = Instant::now();
        c.tick(t0, Some(Duration::from_secs(5)), &st, |_| false);
        let Command::BeginHandoff { moves, .. } =
            commit(c.tick(t0 + Duration::from_secs(1), Some(Duration::from_secs(6)), &st, |_| false))
        else {
            panic!()
        };
        assert_eq!(moves.len(), 8);
        assert!(moves.iter().all(|(_, from, to)| *from == NodeId(2) && to.owner == Some(NodeId(1))));
    }

    #[test]
    fn manual_rebalancing_holds_load_moves_but_not_pins_or_failover() {
        let mut st = assigned(&[1, 2]);
        st.apply(&Command::SetRebalance { manual: true }, 11);
        st.apply(&Command::RegisterMember { meta: NodeMeta { id: NodeId(3), weight: 1, ..NodeMeta::default() } }, 12);
        let t0 = Instant::now();
        let mut c = Core::new(Config::default());
        for k in 0..5 {
            let t = t0 + Duration::from_secs(k);
            assert_eq!(c.tick(t, Some(Duration::from_secs(5 + k)), &st, |_| false), Decision::Wait, "held");
        }
        // The plan an operator would commit: node 3's quota, as handoffs from live owners.
        let alloc = Core::allocation(&st, &|_| false);
        assert_eq!(alloc.plan.moves.len(), 5);
        let (direct, handoffs) = Core::split(&st, alloc, &|_| false);
        assert!(direct.is_empty());
        assert!(handoffs.iter().all(|(_, _, a)| a.owner == Some(NodeId(3))));
        // A pin is carried out (after the debounce), manual or not.
        st.apply(&Command::Pin { shard: ShardId(0), node: Some(NodeId(3)) }, 13);
        let t = t0 + Duration::from_secs(10);
        assert_eq!(c.tick(t, Some(Duration::from_secs(20)), &st, |_| false), Decision::Wait);
        let Command::BeginHandoff { moves, .. } =
            commit(c.tick(t + Duration::from_secs(1), Some(Duration::from_secs(21)), &st, |_| false))
        else {
            panic!("a pin is a handoff")
        };
        assert_eq!(moves.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(), vec![(ShardId(0), NodeId(1))]);
        // Failover is never held.
        c.committed();
        let mut c = Core::new(Config::default());
        let Command::SetAssignments { changes, .. } =
            commit(c.tick(t, Some(Duration::from_secs(20)), &st, |n| n == NodeId(2)))
        else {
            panic!("failover")
        };
        assert_eq!(changes.len(), 8);
    }
}
