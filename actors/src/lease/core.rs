//! The lease rules, pure: the holder's side and the leader's table.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{Config, Refusal};
use crate::types::NodeId;

/// A node's leases: grants it holds, each usable once the node applied the leader's index.
#[derive(Debug)]
pub struct Holder {
    cfg: Config,
    grants: Vec<(Instant, u64)>,
}

impl Holder {
    /// No lease yet.
    pub fn new(cfg: Config) -> Holder {
        Holder { cfg, grants: Vec::new() }
    }

    /// A renewal sent at `sent` was granted with `min_applied`.
    pub fn granted(&mut self, sent: Instant, min_applied: u64) {
        self.grants.push((sent + self.cfg.duration, min_applied));
        // Keep the latest grant per usable-at index; drop grants another one dominates.
        self.grants.sort_by_key(|g| std::cmp::Reverse(g.0));
        let mut best_index = u64::MAX;
        self.grants.retain(|&(_, idx)| {
            let keep = idx < best_index;
            best_index = best_index.min(idx);
            keep
        });
    }

    /// Until when the node may serve, having applied the log up to `applied`: the end of the
    /// latest usable grant minus the margin. `None` when it holds no usable lease.
    pub fn serving_until(&self, applied: u64) -> Option<Instant> {
        self.grants
            .iter()
            .filter(|(_, idx)| *idx <= applied)
            .map(|(until, _)| until.checked_sub(self.cfg.margin).unwrap_or(*until))
            .max()
    }

    /// The first index the node must apply to use a later grant than the one it can use now.
    pub fn waiting_for(&self, applied: u64) -> Option<u64> {
        self.grants.iter().map(|(_, idx)| *idx).filter(|idx| *idx > applied).min()
    }

    /// Forgets every grant (the node left, or its clock cannot be trusted).
    pub fn clear(&mut self) {
        self.grants.clear();
    }
}

/// The leader's record of renewals, deciding when a silent node's shards may be taken.
#[derive(Debug)]
pub struct Table {
    cfg: Config,
    leader_since: Option<Instant>,
    term: Option<u64>,
    last: HashMap<NodeId, Instant>,
    fenced: HashSet<NodeId>,
}

impl Table {
    /// An empty table (not leader).
    pub fn new(cfg: Config) -> Table {
        Table { cfg, leader_since: None, term: None, last: HashMap::new(), fenced: HashSet::new() }
    }

    /// Tracks leadership (`Some(term)` while leader of that term): a new leader, or the same node
    /// leading again in a later term, starts with an empty table and waits out every lease an
    /// earlier leader may have granted.
    pub fn set_leader(&mut self, leader_term: Option<u64>, now: Instant) {
        if leader_term != self.term {
            self.term = leader_term;
            self.leader_since = leader_term.map(|_| now);
            self.last.clear();
            self.fenced.clear();
        }
    }

    /// Refuses `node` grants until [`Self::unfence`] (its shards are being moved).
    pub fn fence(&mut self, node: NodeId) {
        self.fenced.insert(node);
    }

    /// Lets `node` renew again.
    pub fn unfence(&mut self, node: NodeId) {
        self.fenced.remove(&node);
    }

    /// Whether `node` is fenced.
    pub fn is_fenced(&self, node: NodeId) -> bool {
        self.fenced.contains(&node)
    }

    /// Whether this table is the leader's.
    pub fn is_leader(&self) -> bool {
        self.leader_since.is_some()
    }

    /// A renewal from `node` arrived (and was granted) at `now`.
    pub fn renewed(&mut self, node: NodeId, now: Instant) {
        self.last.insert(node, now);
    }

    /// Whether every lease `node` may hold has surely run out: `takeover_after` passed since its
    /// last renewal arrived here, or since this node became leader if none arrived.
    pub fn expired(&self, node: NodeId, now: Instant) -> bool {
        let Some(since) = self.leader_since else { return false };
        let last = self.last.get(&node).copied().unwrap_or(since).max(since);
        now.saturating_duration_since(last) >= self.cfg.takeover_after()
    }

    /// While this table is the leader's: for each node that renewed, how long the lease it holds
    /// may still run (at most the lease duration from the renewal's arrival here).
    pub fn leases_left(&self, now: Instant) -> Option<HashMap<NodeId, Duration>> {
        self.leader_since?;
        Some(
            self.last
                .iter()
                .map(|(n, at)| (*n, self.cfg.duration.saturating_sub(now.saturating_duration_since(*at))))
                .collect(),
        )
    }

    /// How long this node has been leader.
    pub fn leader_for(&self, now: Instant) -> Option<Duration> {
        self.leader_since.map(|t| now.saturating_duration_since(t))
    }
}

/// Whether a leader may grant a renewal (CheckQuorum): it is the leader of the renewal's term
/// and a quorum acknowledged it less than `quorum_window` ago.
pub fn may_grant(
    leader_term: Option<u64>,
    request_term: u64,
    quorum_ack_age: Option<Duration>,
    quorum_window: Duration,
) -> Result<(), Refusal> {
    match leader_term {
        None => Err(Refusal::NotLeader),
        Some(t) if t != request_term => Err(Refusal::OtherTerm { leader: t, request: request_term }),
        Some(_) => match quorum_ack_age {
            Some(age) if age < quorum_window => Ok(()),
            Some(age) => Err(Refusal::NoQuorum(age)),
            None => Err(Refusal::NoQuorumYet),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::default()
    }

    #[test]
    fn a_grant_is_usable_once_applied_and_ends_at_send_plus_l() {
        let mut h = Holder::new(cfg());
        let t0 = Instant::now();
        assert_eq!(h.serving_until(100), None);
        h.granted(t0, 50);
        assert_eq!(h.serving_until(49), None, "the leader's index is not applied yet");
        assert_eq!(h.serving_until(50), Some(t0 + Duration::from_millis(490)));
        // A later grant at a higher index is not usable yet: the earlier one still is.
        h.granted(t0 + Duration::from_millis(160), 60);
        assert_eq!(h.serving_until(55), Some(t0 + Duration::from_millis(490)));
        assert_eq!(h.waiting_for(55), Some(60));
        assert_eq!(h.serving_until(60), Some(t0 + Duration::from_millis(650)));
        // A later grant at a lower-or-equal index makes the older ones useless.
        h.granted(t0 + Duration::from_millis(320), 60);
        assert_eq!(h.grants.len(), 2, "the grant at index 50 still serves a node that has not applied 60");
        h.clear();
        assert_eq!(h.serving_until(1000), None);
    }

    #[test]
    fn the_leader_waits_out_silent_nodes_and_a_new_leader_waits_for_everyone() {
        let c = cfg();
        let w = c.takeover_after();
        assert_eq!(w, Duration::from_millis(500).mul_f64(1.01 / 0.99) + Duration::from_millis(100));
        let mut t = Table::new(c);
        let t0 = Instant::now();
        assert!(!t.expired(NodeId(1), t0 + w * 10), "a follower's table never expires anyone");
        t.set_leader(Some(1), t0);
        assert!(!t.expired(NodeId(1), t0 + w - Duration::from_millis(1)), "new leader waits");
        assert!(t.expired(NodeId(1), t0 + w));
        t.renewed(NodeId(2), t0 + w);
        assert!(!t.expired(NodeId(2), t0 + w * 2 - Duration::from_millis(1)));
        assert!(t.expired(NodeId(2), t0 + w * 2));
        t.set_leader(Some(3), t0 + w * 3);
        assert!(!t.expired(NodeId(2), t0 + w * 3), "a new term restarts the wait");
        t.fence(NodeId(2));
        assert!(t.is_fenced(NodeId(2)));
        t.unfence(NodeId(2));
        assert!(!t.is_fenced(NodeId(2)));
        t.fence(NodeId(2));
        t.set_leader(None, t0 + w * 5);
        assert!(!t.expired(NodeId(2), t0 + w * 5), "a follower expires no one");
        assert!(!t.is_fenced(NodeId(2)), "a new term forgets fences");
    }

    #[test]
    fn grants_need_the_term_and_a_recent_quorum() {
        let win = Duration::from_millis(300);
        assert!(may_grant(None, 3, Some(Duration::ZERO), win).is_err());
        assert!(may_grant(Some(4), 3, Some(Duration::ZERO), win).is_err());
        assert!(may_grant(Some(3), 3, None, win).is_err());
        assert!(may_grant(Some(3), 3, Some(win), win).is_err());
        assert!(may_grant(Some(3), 3, Some(Duration::from_millis(50)), win).is_ok());
    }

    #[test]
    fn config_is_checked_against_heartbeats() {
        let mut c = cfg();
        assert!(c.validate(Duration::from_millis(50)).is_ok());
        c.duration = Duration::from_millis(120);
        let e = c.validate(Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("three Raft heartbeats"), "{e}");
    }
}
