//! The shard manager's decision: when to commit which allocation. Pure.

use std::time::Instant;

use tracing::info;

use super::Config;
use crate::membership::{MemberState, View};
use crate::shard::{allocate, Candidate};
use crate::state::{ClusterState, Command};

/// What the core wants done.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Nothing to do now.
    Wait,
    /// Commit this command.
    Commit(Command),
}

/// Decides rebalances on the leader.
pub struct Core {
    cfg: Config,
    leader_since: Option<Instant>,
    needed_since: Option<Instant>,
    in_flight: bool,
}

impl Core {
    /// A core with `cfg`.
    pub fn new(cfg: Config) -> Core {
        Core { cfg, leader_since: None, needed_since: None, in_flight: false }
    }

    /// The live candidates: registered members the view does not hold down. A member absent from
    /// the view counts as alive during `leader_grace` after becoming leader.
    pub fn candidates(&self, state: &ClusterState, view: &View, now: Instant) -> Vec<Candidate> {
        let in_grace = self.leader_since.is_some_and(|t| now.duration_since(t) < self.cfg.leader_grace);
        state
            .members
            .values()
            .filter(|m| match view.members.get(&m.id) {
                Some(v) => v.state != MemberState::Down,
                None => in_grace,
            })
            .map(|m| Candidate { id: m.id, weight: m.weight.max(1), zone: m.zone.clone() })
            .collect()
    }

    /// Called on every tick with the latest state.
    pub fn tick(&mut self, now: Instant, is_leader: bool, state: &ClusterState, view: &View) -> Decision {
        if !is_leader {
            self.leader_since = None;
            self.needed_since = None;
            return Decision::Wait;
        }
        let since = *self.leader_since.get_or_insert(now);
        if self.in_flight || state.name.is_none() || state.members.is_empty() {
            return Decision::Wait;
        }
        // A new leader first waits for its failure detector to hear from the members.
        if now.duration_since(since) < self.cfg.debounce {
            return Decision::Wait;
        }
        let alloc = allocate(&state.shard_map, &self.candidates(state, view, now));
        if alloc.is_empty() {
            self.needed_since = None;
            return Decision::Wait;
        }
        let needed = *self.needed_since.get_or_insert(now);
        if now.duration_since(needed) < self.cfg.debounce {
            return Decision::Wait;
        }
        self.in_flight = true;
        self.needed_since = None;
        info!(
            moves = alloc.plan.moves.len(),
            replica_changes = alloc.plan.replica_changes,
            based_on = %state.shard_map.epoch(),
            "rebalance: committing a new shard map"
        );
        Decision::Commit(Command::SetAssignments { based_on: state.shard_map.epoch(), changes: alloc.changes })
    }

    /// The commit finished (applied, refused or failed): decide again on the next tick.
    pub fn committed(&mut self) {
        self.in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::membership::MemberView;
    use crate::types::{ClusterName, NodeId, NodeMeta};

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

    fn view(up: &[u64], down: &[u64]) -> View {
        let mv = |i: &u64, s| {
            (NodeId(*i), MemberView { meta: NodeMeta { id: NodeId(*i), ..NodeMeta::default() }, state: s })
        };
        View {
            local: NodeId(up[0]),
            members: up
                .iter()
                .map(|i| mv(i, MemberState::Up))
                .chain(down.iter().map(|i| mv(i, MemberState::Down)))
                .collect(),
        }
    }

    #[test]
    fn debounces_then_commits_once() {
        let mut c = Core::new(Config::default());
        let (st, v) = (state(&[1, 2]), view(&[1, 2], &[]));
        let t0 = Instant::now();
        assert_eq!(c.tick(t0, true, &st, &v), Decision::Wait, "new leader waits");
        assert_eq!(c.tick(t0 + Duration::from_millis(500), true, &st, &v), Decision::Wait, "debounce starts");
        let Decision::Commit(Command::SetAssignments { changes, .. }) =
            c.tick(t0 + Duration::from_millis(1000), true, &st, &v)
        else {
            panic!("expected a commit")
        };
        assert_eq!(changes.len(), 16);
        assert_eq!(c.tick(t0 + Duration::from_millis(1100), true, &st, &v), Decision::Wait, "one in flight");
    }

    #[test]
    fn down_members_get_no_shards_and_followers_decide_nothing() {
        let mut c = Core::new(Config::default());
        let st = state(&[1, 2, 3]);
        let t0 = Instant::now();
        c.tick(t0, true, &st, &view(&[1, 2], &[3]));
        let ids: Vec<u64> = c.candidates(&st, &view(&[1, 2], &[3]), t0).iter().map(|c| c.id.0).collect();
        assert_eq!(ids, vec![1, 2]);
        let mut f = Core::new(Config::default());
        assert_eq!(f.tick(t0 + Duration::from_secs(5), false, &st, &view(&[1], &[])), Decision::Wait);
    }

    #[test]
    fn unknown_members_count_as_alive_only_during_grace() {
        let mut c = Core::new(Config::default());
        let st = state(&[1, 2]);
        let v = view(&[1], &[]);
        let t0 = Instant::now();
        c.tick(t0, true, &st, &v);
        assert_eq!(c.candidates(&st, &v, t0 + Duration::from_secs(1)).len(), 2);
        assert_eq!(c.candidates(&st, &v, t0 + Duration::from_secs(3)).len(), 1);
    }
}
