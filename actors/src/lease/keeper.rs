//! The lease shells: the leader's granting service and every node's renewal task.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::core::{may_grant, Holder, Table};
use super::{Clock, Config, LeaseReply, LeaseRequest};
use crate::consensus::rpc::{self, LeaseGranter, RaftRequest, RaftResponse};
use crate::consensus::types::Raft;
use crate::consensus::AppliedState;
use crate::transport::{self, parse_peer};
use crate::types::NodeId;

/// The leader's side: grants renewals (CheckQuorum) and knows whose leases have surely run out.
///
/// Two clocks: the renewal table's waits (a silent node's W, a new leader's W) run on
/// [`Clock::waiting_now`], which may lag but never runs ahead (`CLOCK_MONOTONIC` stops in a
/// suspend: a resumed leader waits longer, never shorter); holders measure their leases on
/// [`Clock::now`], which never lags (`CLOCK_BOOTTIME`: a resumed node finds its lease over).
pub struct LeaseService {
    cfg: Config,
    raft: Raft,
    clock: Arc<dyn Clock>,
    quorum_window: Duration,
    table: Mutex<Table>,
    evidence: Mutex<Evidence>,
    /// Why the leader refused this node's last renewal, until the next grant (readiness shows
    /// it: a fenced node is told so only in this reply).
    own_refusal: Mutex<Option<super::Refusal>>,
}

/// The last Raft metrics report this service saw, and when it may have been published.
///
/// openraft computes `millis_since_quorum_ack` when its core publishes a report, which it does
/// after every batch of events. A core parked on a slow fsync publishes nothing, and its last
/// report ages without saying so: read as it stands, it would let a deposed leader grant leases
/// while the others elect (docs/architecture.md §13). So the age is the reported one plus the
/// time since the report *may* have been published (the previous check: a report seen now was
/// published after it), and a stalled core's evidence runs out by itself.
///
/// Two more things void the evidence:
/// - a suspend: openraft measures the age on `CLOCK_MONOTONIC`, which stops while the machine
///   is suspended, so the first report after a resume understates it by the whole suspend.
///   When the lease clock (`CLOCK_BOOTTIME`) advanced more than `Instant` between two checks,
///   no report counts until one shows a quorum acknowledgement made after the resume;
/// - a leader that has not yet applied an entry of its own term: until its first entry is
///   committed, an entry of an older term it holds may still be overwritten or committed by a
///   later leader, so it grants nothing (the lease `min_applied` would not cover it).
struct Evidence {
    metrics: watch::Receiver<crate::consensus::types::RaftMetrics>,
    /// When the current report may have been published, at the earliest.
    published_after: Instant,
    /// The previous check, on the lease clock and on `Instant`.
    last_check: (Instant, Instant),
    /// Since when (lease clock) the evidence is void after a suspend.
    void_since: Option<Instant>,
    leader_term: Option<u64>,
    applied_in_term: bool,
    last_log: u64,
    quorum_age: Option<Duration>,
}

/// How much more the lease clock may advance than `Instant` between two checks before it
/// counts as a suspend (the two are read together under the evidence lock).
const SUSPEND: Duration = Duration::from_millis(5);

impl Evidence {
    fn new(metrics: watch::Receiver<crate::consensus::types::RaftMetrics>, now: Instant) -> Evidence {
        let mut ev = Evidence {
            metrics,
            published_after: now,
            last_check: (now, Instant::now()),
            void_since: None,
            leader_term: None,
            applied_in_term: false,
            last_log: 0,
            quorum_age: None,
        };
        ev.metrics.mark_changed();
        ev
    }

    /// Takes a new report if one was published, and answers leadership, the last log index and
    /// the quorum-ack age as of `now` (lease clock; `mono` is `Instant::now()`).
    fn at(&mut self, now: Instant, mono: Instant) -> (Option<u64>, u64, Option<Duration>) {
        let (prev, prev_mono) = self.last_check;
        let lease_adv = now.saturating_duration_since(prev);
        let mono_adv = mono.saturating_duration_since(prev_mono);
        // Relative too: a test clock skewed by a few percent is not a suspend.
        if lease_adv > mono_adv + mono_adv / 10 + SUSPEND {
            warn!(jump_ms = lease_adv.as_millis() as u64, "lease clock jumped ahead of the monotonic clock (a suspend): no lease is granted until a quorum acknowledges this leader again");
            self.void_since = Some(now);
        }
        self.last_check = (now, mono);
        if self.metrics.has_changed().unwrap_or(false) {
            let m = self.metrics.borrow_and_update();
            self.published_after = prev;
            self.leader_term = (m.current_leader == Some(m.id)).then_some(m.current_term);
            self.applied_in_term = m.last_applied.is_some_and(|l| l.leader_id.get_term() == m.current_term);
            self.last_log = m.last_log_index.unwrap_or(0);
            // +1 ms: openraft truncates the age to whole milliseconds.
            self.quorum_age = m.millis_since_quorum_ack.map(|a| Duration::from_millis(a + 1));
        }
        let age = self.quorum_age.map(|a| a + now.saturating_duration_since(self.published_after));
        if let (Some(since), Some(a)) = (self.void_since, age) {
            if a < now.saturating_duration_since(since) {
                self.void_since = None;
            }
        }
        let usable = self.void_since.is_none() && self.applied_in_term;
        (self.leader_term, self.last_log, age.filter(|_| usable))
    }
}

impl LeaseService {
    /// A service over `raft`; grants need a quorum ack younger than `quorum_window` (the Raft
    /// leader lease, `election_timeout_max`: a voter refuses to elect anyone else for that long
    /// after it acknowledged this leader).
    pub fn new(cfg: Config, raft: Raft, clock: Arc<dyn Clock>, quorum_window: Duration) -> LeaseService {
        let table = Table::new(cfg.clone());
        let evidence = Mutex::new(Evidence::new(raft.metrics(), clock.now()));
        LeaseService {
            cfg,
            raft,
            clock,
            quorum_window,
            table: Mutex::new(table),
            evidence,
            own_refusal: Mutex::new(None),
        }
    }

    /// The lease timings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// While this node leads: how long each node's lease may still run, by the renewals it
    /// granted (the dashboard's lease column).
    pub fn leases_left(&self) -> Option<std::collections::HashMap<NodeId, Duration>> {
        let now = self.clock.waiting_now();
        self.lock().leases_left(now)
    }

    /// Why the leader refused this node's last renewal, if no grant came after it.
    pub fn own_refusal(&self) -> Option<super::Refusal> {
        self.own_refusal.lock().expect("lease refusal lock is never poisoned").clone()
    }

    fn set_own_refusal(&self, refusal: Option<super::Refusal>) {
        *self.own_refusal.lock().expect("lease refusal lock is never poisoned") = refusal;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("lease state lock is never poisoned")
    }

    /// Reads the Raft metrics: leadership (`Some(term)` while leader), the last log index and
    /// the quorum-ack age now: the reported age plus the time since that report ([`Evidence`]).
    fn observe(&self) -> (Option<u64>, u64, Option<Duration>) {
        let mut ev = self.evidence.lock().expect("lease evidence lock is never poisoned");
        // Both clocks read together, under the lock.
        let (now, mono) = (self.clock.now(), Instant::now());
        let seen = ev.at(now, mono);
        drop(ev);
        self.lock().set_leader(seen.0, self.clock.waiting_now());
        seen
    }

    /// Answers a renewal.
    ///
    /// A grant is usable once the node applied the leader's *last log index* at the time of the
    /// grant: every entry this leader may still commit that moves a shard comes at or before it,
    /// so a node never serves from a map older than a move made before its grant.
    pub fn grant(&self, req: &LeaseRequest) -> LeaseReply {
        let (leader_term, last_log, age) = self.observe();
        let now = self.clock.waiting_now();
        let mut st = self.lock();
        if st.is_fenced(req.node) {
            return LeaseReply::Refused { reason: super::Refusal::Fenced };
        }
        match may_grant(leader_term, req.term, age, self.quorum_window) {
            Ok(()) => {
                st.renewed(req.node, now);
                LeaseReply::Granted { min_applied: last_log }
            }
            Err(reason) => LeaseReply::Refused { reason },
        }
    }

    /// Whether every lease `node` may hold has surely run out (this node is the leader and has
    /// not heard a renewal from it for `takeover_after`); if so, fences `node`: it gets no grant
    /// until [`Self::unfence`], so a renewal racing with the move of its shards cannot be granted
    /// at a log index before the move. The check and the fence are one step under the lock.
    pub fn fence_expired(&self, node: NodeId) -> bool {
        self.observe();
        let now = self.clock.waiting_now();
        let mut st = self.lock();
        let expired = st.expired(node, now);
        if expired {
            st.fence(node);
        }
        expired
    }

    /// Lets fenced nodes renew again (their shards' move is in the log, or was not made).
    pub fn unfence(&self, nodes: impl IntoIterator<Item = NodeId>) {
        let mut st = self.lock();
        for n in nodes {
            st.unfence(n);
        }
    }

    /// How long this node has led (in its current term), if it leads.
    pub fn leader_for(&self) -> Option<Duration> {
        self.observe();
        self.lock().leader_for(self.clock.waiting_now())
    }
}

/// Where the keeper publishes until when this node may serve.
pub type Publish = Arc<dyn Fn(Option<Instant>) + Send + Sync>;

impl LeaseGranter for LeaseService {
    fn grant(&self, request: &LeaseRequest) -> LeaseReply {
        LeaseService::grant(self, request)
    }
}

/// Renews this node's lease every L/3 (and at once when the leader changes), and publishes
/// until when it may serve through `publish` (the serving table, a layer above: it is told
/// first, synchronously) and on the returned watch.
pub(crate) fn spawn(
    svc: Arc<LeaseService>,
    local: NodeId,
    publish: Publish,
    transport: transport::Handle,
    applied: watch::Receiver<Arc<AppliedState>>,
    arbiter: &actix::ArbiterHandle,
) -> watch::Receiver<Option<Instant>> {
    let (tx, rx) = watch::channel(None);
    arbiter.spawn(run(svc, local, publish, transport, applied, tx));
    rx
}

async fn run(
    svc: Arc<LeaseService>,
    local: NodeId,
    publish: Publish,
    transport: transport::Handle,
    mut applied: watch::Receiver<Arc<AppliedState>>,
    lease: watch::Sender<Option<Instant>>,
) {
    let cfg = svc.config().clone();
    let clock = svc.clock.clone();
    let mut holder = Holder::new(cfg.clone());
    let mut metrics = svc.raft.metrics();
    let (done_tx, mut done_rx) = mpsc::channel::<(Instant, LeaseReply)>(16);
    let mut next = tokio::time::Instant::now();
    let mut leader = None;
    let mut had_lease = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                next = tokio::time::Instant::now() + cfg.renew_every();
                renew(&svc, local, &transport, &done_tx);
            }
            changed = metrics.changed() => {
                if changed.is_err() {
                    break;
                }
                svc.observe();
                let now_leader = metrics.borrow_and_update().current_leader;
                if now_leader != leader {
                    leader = now_leader;
                    next = tokio::time::Instant::now();
                    // The old leader's refusal says nothing about the new one.
                    svc.set_own_refusal(None);
                }
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some((sent, reply)) = done_rx.recv() => match reply {
                LeaseReply::Granted { min_applied } => {
                    svc.set_own_refusal(None);
                    holder.granted(sent, min_applied)
                }
                LeaseReply::Refused { reason } => {
                    debug!(%reason, "lease renewal refused");
                    svc.set_own_refusal(Some(reason));
                }
            },
        }
        let index = applied.borrow().last_applied.map_or(0, |l| l.index);
        let until = holder.serving_until(index).filter(|u| *u > clock.now());
        publish(until);
        lease.send_if_modified(|cur| {
            let changed = *cur != until;
            *cur = until;
            changed
        });
        if until.is_some() != had_lease {
            had_lease = until.is_some();
            if had_lease {
                info!(node = %local, "lease acquired: serving");
            } else {
                warn!(node = %local, waiting_for_index = ?holder.waiting_for(index), "lease lost: not serving");
            }
        }
    }
    publish(None);
    let _ = lease.send(None);
}

/// Sends one renewal to the leader this node knows (itself included); the answer comes back on
/// `done` with the time the renewal was sent.
fn renew(
    svc: &Arc<LeaseService>,
    local: NodeId,
    transport: &transport::Handle,
    done: &mpsc::Sender<(Instant, LeaseReply)>,
) {
    let (leader, term, node) = {
        let m = svc.raft.metrics();
        let m = m.borrow();
        let Some(leader) = m.current_leader else { return };
        (leader, m.current_term, m.membership_config.membership().get_node(&leader).cloned())
    };
    let req = LeaseRequest { node: local, term };
    let sent = svc.clock.now();
    if leader == local {
        let _ = done.try_send((sent, svc.grant(&req)));
        return;
    }
    let Some(node) = node else { return };
    let Ok((peer, addrs)) = parse_peer(&node.peer_id, &node.addrs) else { return };
    let (transport, done, timeout) = (transport.clone(), done.clone(), svc.cfg.renew_every());
    actix::spawn(async move {
        match tokio::time::timeout(timeout, rpc::call(&transport, peer, addrs, &RaftRequest::Lease(req))).await {
            Ok(Ok(RaftResponse::Lease(reply))) => {
                let _ = done.try_send((sent, reply));
            }
            Ok(Ok(RaftResponse::Refused(why))) => warn!(%leader, reason = %why, "lease renewal refused by the leader"),
            Ok(Ok(_)) => warn!(%leader, "lease renewal: unexpected answer"),
            Ok(Err(e)) => debug!(%leader, error = %e, "lease renewal failed"),
            Err(_) => debug!(%leader, "lease renewal timed out"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::types::RaftMetrics;

    fn leader(age_ms: u64) -> RaftMetrics {
        let mut m = RaftMetrics::new_initial(NodeId(1));
        m.current_leader = Some(NodeId(1));
        m.current_term = 3;
        m.last_applied = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(3, NodeId(1)), 7));
        m.millis_since_quorum_ack = Some(age_ms);
        m
    }

    /// A leader whose core stops publishing (parked on an fsync) must not go on granting on
    /// its last report: the evidence ages with the time since that report.
    #[test]
    fn evidence_ages_while_the_core_publishes_nothing() {
        let (tx, rx) = watch::channel(leader(10));
        let t0 = Instant::now();
        let mut ev = Evidence::new(rx, t0);
        let window = Duration::from_millis(300);
        let ms = Duration::from_millis;
        let (term, _, age) = ev.at(t0, t0);
        assert_eq!((term, age), (Some(3), Some(ms(11))), "10 ms reported, +1 for truncation");
        assert!(may_grant(term, 3, age, window).is_ok());
        // No report for 400 ms: the last one said 10 ms, the evidence is 411 ms old.
        let (term, _, age) = ev.at(t0 + ms(400), t0 + ms(400));
        assert_eq!(age, Some(ms(411)));
        assert_eq!(may_grant(term, 3, age, window), Err(super::super::Refusal::NoQuorum(ms(411))));
        // A fresh report counts from the previous check (it was published after it).
        tx.send(leader(5)).unwrap();
        let (_, _, age) = ev.at(t0 + ms(450), t0 + ms(450));
        assert_eq!(age, Some(ms(6 + 50)));
    }

    /// After a suspend, openraft's age (on CLOCK_MONOTONIC) understates the time since the
    /// last quorum acknowledgement by the whole suspend: nothing counts until an ack made after
    /// the resume.
    #[test]
    fn a_suspend_voids_the_evidence_until_a_new_quorum_ack() {
        let (tx, rx) = watch::channel(leader(10));
        let (t0, m0) = (Instant::now(), Instant::now());
        let ms = Duration::from_millis;
        let mut ev = Evidence::new(rx, t0);
        assert!(ev.at(t0, m0).2.is_some());
        // Suspended 2 s: the lease clock advanced 2 s more than Instant.
        tx.send(leader(20)).unwrap();
        let (_, _, age) = ev.at(t0 + ms(2050), m0 + ms(50));
        assert_eq!(age, None, "the report after the resume says 20 ms, but the ack was before the suspend");
        tx.send(leader(30)).unwrap();
        assert_eq!(ev.at(t0 + ms(2060), m0 + ms(60)).2, None, "still an ack from before the resume");
        // A quorum acknowledged 2 ms ago, after the resume at t0 + 2050.
        tx.send(leader(2)).unwrap();
        assert!(ev.at(t0 + ms(2100), m0 + ms(100)).2.is_some());
    }

    /// A new leader grants nothing before it applied an entry of its own term.
    #[test]
    fn a_leader_grants_once_it_applied_in_its_term() {
        let mut m = leader(5);
        m.last_applied = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(2, NodeId(2)), 6));
        let (tx, rx) = watch::channel(m);
        let t0 = Instant::now();
        let mut ev = Evidence::new(rx, t0);
        assert_eq!(ev.at(t0, t0).2, None, "the last applied entry is of term 2");
        tx.send(leader(5)).unwrap();
        assert!(ev.at(t0, t0).2.is_some());
    }
}
