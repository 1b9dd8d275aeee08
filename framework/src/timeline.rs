//! The dashboard's events timeline (`GET /api/timeline?after=N`): what happened to the cluster
//! as this node saw it, one line per happening, the last [`KEEP`] kept.
//!
//! Fed by one task, started with the dashboard, from what every node already has:
//! - the applied cluster state: joins and leaves (members registered and removed, voters and
//!   learners), drains, handoffs (from the entry's appearance in the log to its release, with the
//!   time it took as this node saw it), map changes (how many shards changed owner);
//! - this node's event stream: members up and down, leader changes, rebalances with their plan
//!   size (on the leader), shards assigned to and taken from this node (grouped per change);
//! - this node's lease (lost, acquired) and its refusal counters (grouped per second).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{get, web, HttpResponse, Responder};
use clusterfunk_actors::consensus::AppliedState;
use clusterfunk_actors::events::ClusterEvent;
use clusterfunk_actors::types::{NodeId, ShardId};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::cluster::{Cluster, Inner};

/// How many lines the timeline keeps.
pub(crate) const KEEP: usize = 500;

/// One line of the timeline.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Item {
    /// Its place in the timeline (increasing; the page asks for what came after the last).
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch (for people; nothing decides on it).
    pub at_ms: u64,
    /// `join`, `leave`, `drain`, `up`, `down`, `leader`, `rebalance`, `map`, `handoff`,
    /// `assigned`, `unassigned`, `lease`, `refused`, `lagged`.
    pub kind: &'static str,
    /// What happened, for people.
    pub text: String,
}

/// The lines kept, newest last.
#[derive(Default)]
pub(crate) struct Timeline {
    items: Mutex<(u64, VecDeque<Item>)>,
}

impl Timeline {
    fn push(&self, kind: &'static str, text: String) {
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut g = self.items.lock().expect("timeline lock is never poisoned");
        g.0 += 1;
        let seq = g.0;
        g.1.push_back(Item { seq, at_ms, kind, text });
        while g.1.len() > KEEP {
            g.1.pop_front();
        }
    }

    /// The lines after `seq`; every line kept when `seq` is beyond the last one (a page that
    /// followed this node before it restarted, its numbering starting again).
    pub(crate) fn after(&self, seq: u64) -> Vec<Item> {
        let g = self.items.lock().expect("timeline lock is never poisoned");
        let seq = if seq > g.0 { 0 } else { seq };
        g.1.iter().filter(|i| i.seq > seq).cloned().collect()
    }
}

/// `GET /api/timeline?after=N` query.
#[derive(serde::Deserialize)]
struct After {
    after: Option<u64>,
}

/// The timeline lines after `after` (all kept ones without it), oldest first.
#[get("/api/timeline")]
pub(crate) async fn route(cluster: web::Data<Cluster>, q: web::Query<After>) -> impl Responder {
    HttpResponse::Ok().json(cluster.timeline().after(q.after.unwrap_or(0)))
}

/// A short name for a node in a line (its id's last 6 hex digits, as the page shows it).
fn short(n: &NodeId) -> String {
    let s = n.to_string();
    s[s.len().saturating_sub(6)..].to_string()
}

fn list(nodes: &BTreeSet<NodeId>) -> String {
    nodes.iter().map(short).collect::<Vec<_>>().join(", ")
}

/// What the task compares each applied state with.
struct Seen {
    members: BTreeSet<NodeId>,
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    draining: BTreeSet<NodeId>,
    owners: Vec<Option<NodeId>>,
    /// Handoffs in flight: when this node first saw each, and its old and new owner.
    handoffs: BTreeMap<ShardId, (Instant, NodeId, Option<NodeId>)>,
}

impl Seen {
    fn of(a: &AppliedState, now: Instant) -> Seen {
        let m = a.membership.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let learners = m.nodes().map(|(id, _)| *id).filter(|id| !voters.contains(id)).collect();
        Seen {
            members: a.state.members.keys().copied().collect(),
            voters,
            learners,
            draining: a.state.draining.clone(),
            owners: a.state.shard_map.owners().to_vec(),
            handoffs: a.state.handoffs.iter().map(|(s, h)| (*s, (now, h.from, h.to.owner))).collect(),
        }
    }

    /// Lines for what changed from `self` to `next`; `self` becomes `next`.
    fn diff(&mut self, a: &AppliedState, now: Instant, out: &mut Vec<(&'static str, String)>) {
        let next = Seen::of(a, now);
        let added = |x: &BTreeSet<NodeId>, y: &BTreeSet<NodeId>| y.difference(x).copied().collect::<BTreeSet<_>>();
        for (kind, what, was, is) in [
            ("join", "registered", &self.members, &next.members),
            ("join", "joined Raft as voter", &self.voters, &next.voters),
            ("join", "joined Raft as learner", &self.learners, &next.learners),
            ("drain", "draining", &self.draining, &next.draining),
        ] {
            let new = added(was, is);
            if !new.is_empty() {
                out.push((kind, format!("{} {what}", list(&new))));
            }
        }
        let left = added(&next.members, &self.members);
        if !left.is_empty() {
            out.push(("leave", format!("{} removed from the cluster", list(&left))));
        }
        let undrained: BTreeSet<NodeId> =
            added(&next.draining, &self.draining).into_iter().filter(|n| next.members.contains(n)).collect();
        if !undrained.is_empty() {
            out.push(("drain", format!("{} no longer draining", list(&undrained))));
        }
        // Owner changes of the map, counted once per applied map.
        if self.owners.len() == next.owners.len() {
            let moved = self.owners.iter().zip(&next.owners).filter(|(a, b)| a != b).count();
            if moved > 0 {
                let e = a.state.shard_map.epoch().0;
                out.push(("map", format!("map epoch {e}: {moved} shard{} changed owner", plural(moved))));
            }
        } else if !next.owners.is_empty() {
            out.push(("map", format!("map of {} shards", next.owners.len())));
        }
        // Handoffs that finished, grouped by old and new owner, with the longest.
        let mut done: BTreeMap<(NodeId, Option<NodeId>), (usize, Duration)> = BTreeMap::new();
        for (s, (since, from, to)) in &self.handoffs {
            if !next.handoffs.contains_key(s) {
                let e = done.entry((*from, *to)).or_insert((0, Duration::ZERO));
                e.0 += 1;
                e.1 = e.1.max(now.saturating_duration_since(*since));
            }
        }
        for ((from, to), (n, took)) in done {
            let to = to.as_ref().map_or("nobody".to_string(), short);
            out.push((
                "handoff",
                format!("handoff of {n} shard{} {} → {to} done in {} ms", plural(n), short(&from), took.as_millis()),
            ));
        }
        let started: usize = next.handoffs.keys().filter(|s| !self.handoffs.contains_key(s)).count();
        if started > 0 {
            out.push(("handoff", format!("{started} handoff{} started", plural(started))));
        }
        // Keep the first-seen times of the handoffs still in flight.
        let mut handoffs = next.handoffs;
        for (s, v) in handoffs.iter_mut() {
            if let Some(old) = self.handoffs.get(s) {
                v.0 = old.0;
            }
        }
        *self = Seen { handoffs, ..next };
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The counters whose growth the timeline reports as refusals.
fn refusal_counts(inner: &Inner) -> BTreeMap<&'static str, u64> {
    let node = &inner.node;
    let mut c: BTreeMap<&'static str, u64> = node.refusals.snapshot().into_iter().collect();
    c.insert("stale_epoch", node.ownership.stats().rejected_stale);
    c.insert("proxy_not_member", inner.router.stats().unauthorized.load(Ordering::Relaxed));
    c.insert("foreign_peer", node.transport.stats().foreign_peers.load(Ordering::Relaxed));
    c
}

/// Starts the task that fills `inner`'s timeline; it ends when the cluster is dropped.
pub(crate) fn spawn(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let node = &inner.node;
    let (events, applied, lease) = (node.events.subscribe(), node.applied.clone(), node.lease_until.clone());
    actix_rt::spawn(run(weak, events, applied, lease));
}

async fn run(
    weak: Weak<Inner>,
    mut events: tokio::sync::broadcast::Receiver<ClusterEvent>,
    mut applied: tokio::sync::watch::Receiver<Arc<AppliedState>>,
    mut lease: tokio::sync::watch::Receiver<Option<Instant>>,
) {
    let mut seen = Seen::of(&applied.borrow_and_update(), Instant::now());
    let mut had_lease = lease.borrow_and_update().is_some();
    let mut refused = match weak.upgrade() {
        Some(inner) => refusal_counts(&inner),
        None => return,
    };
    // Shards assigned to and taken from this node, grouped until the next tick.
    let (mut assigned, mut unassigned) = (0usize, 0usize);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out: Vec<(&'static str, String)> = Vec::new();
    loop {
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
                let a = applied.borrow_and_update().clone();
                seen.diff(&a, Instant::now(), &mut out);
            }
            changed = lease.changed() => {
                if changed.is_err() {
                    return;
                }
                let has = lease.borrow_and_update().is_some();
                if has != had_lease {
                    had_lease = has;
                    out.push(("lease", if has { "this node acquired its lease: serving" } else { "this node lost its lease: not serving" }.to_string()));
                }
            }
            ev = events.recv() => match ev {
                Ok(ClusterEvent::ShardAssigned { .. }) => assigned += 1,
                Ok(ClusterEvent::ShardUnassigned { .. }) => unassigned += 1,
                Ok(ClusterEvent::MemberUp(n)) => out.push(("up", format!("{} up", short(&n)))),
                Ok(ClusterEvent::MemberDown(n)) => out.push(("down", format!("{} down", short(&n)))),
                Ok(ClusterEvent::LeaderChanged { leader, term }) => out.push((
                    "leader",
                    match leader {
                        Some(l) => format!("{} leads (term {term})", short(&l)),
                        None => format!("no leader (term {term})"),
                    },
                )),
                Ok(ClusterEvent::RebalanceStarted(p)) => {
                    let n = p.moves.len();
                    out.push(("rebalance", format!("rebalance planned: {n} move{}, {} replica change{}", plural(n), p.replica_changes, plural(p.replica_changes as usize))));
                }
                Ok(ClusterEvent::RebalanceFinished(p)) => {
                    out.push(("rebalance", format!("rebalance finished: {} move{}", p.moves.len(), plural(p.moves.len()))));
                }
                Ok(ClusterEvent::WorkersChanged(w)) => out.push((
                    "workers",
                    match w.index {
                        Some(i) => format!("worker index {i} ({} worker{}) of {}, epoch {}", w.count, plural(w.count as usize), w.total, w.epoch),
                        None => "out of the worker index".to_string(),
                    },
                )),
                Ok(ClusterEvent::MembershipRefused(reason)) => out.push(("refused", format!("this node is refused membership: {reason}"))),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => out.push(("lagged", format!("{n} events missed (the timeline fell behind)"))),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let Some(inner) = weak.upgrade() else { return };
                if assigned > 0 {
                    out.push(("assigned", format!("{assigned} shard{} assigned to this node", plural(assigned))));
                }
                if unassigned > 0 {
                    out.push(("unassigned", format!("{unassigned} shard{} left this node", plural(unassigned))));
                }
                (assigned, unassigned) = (0, 0);
                let now = refusal_counts(&inner);
                let grown: Vec<String> = now
                    .iter()
                    .filter_map(|(k, v)| {
                        let d = v.saturating_sub(refused.get(k).copied().unwrap_or(0));
                        (d > 0).then(|| format!("{k} {d}"))
                    })
                    .collect();
                if !grown.is_empty() {
                    out.push(("refused", format!("refused: {}", grown.join(", "))));
                }
                refused = now;
            }
        }
        if !out.is_empty() {
            let Some(inner) = weak.upgrade() else { return };
            for (kind, text) in out.drain(..) {
                inner.timeline.push(kind, text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_is_right() {
        assert_eq!(plural(1), "");
        assert_eq!(plural(2), "s");
    }

    #[test]
    fn the_timeline_keeps_the_last_lines_in_order() {
        let t = Timeline::default();
        for i in 0..(KEEP + 10) {
            t.push("map", format!("line {i}"));
        }
        let all = t.after(0);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all.last().unwrap().text, format!("line {}", KEEP + 9));
        let last = all.last().unwrap().seq;
        assert!(t.after(last).is_empty());
        assert_eq!(t.after(last - 2).len(), 2);
        // A page that followed an earlier run of this node gets everything again.
        assert_eq!(t.after(last + 100).len(), KEEP);
    }
}
