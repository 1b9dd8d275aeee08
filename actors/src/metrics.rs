//! What the actors measure as it happens, for the node's Prometheus registry (docs/operations.md,
//! "Metrics"): durations (histograms) and counts of events that leave no other trace. Values that
//! already live in a counter or in the applied state (members, Raft indices, refusals) are read
//! at scrape time instead and are not duplicated here. One `Metrics` per node, never a global:
//! several nodes run in one test process.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Labels of a counter family: `(name, value)` pairs with values from a fixed set (never an
/// entity key).
pub type Labels = Vec<(&'static str, &'static str)>;

/// The node's event metrics. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Shards this node handed off (stopped and confirmed released to their next owner).
    pub handoffs: Counter,
    /// From a handoff's start on this node (its entities asked to stop) to the release being in
    /// the log.
    pub handoff_seconds: Histogram,
    /// Rebalances this node's shard manager started while it led (plans with moves).
    pub rebalances: Counter,
    /// From a rebalance's start to its last handoff done.
    pub rebalance_seconds: Histogram,
    /// Round trip of a message forwarded to its owner, answered (refusals included).
    pub proxy_latency_seconds: Histogram,
    /// Messages this node sent that failed, by reason.
    pub proxy_failures: Family<Labels, Counter>,
    /// From a command proposed on this node to its result (committed and applied, or refused).
    pub raft_write_seconds: Histogram,
}

/// Every reason a send is counted under in `proxy_failures` (`proxy::router`'s `reason`), each
/// exported from the start (at 0), so a scrape always shows the whole family.
pub const PROXY_FAILURE_REASONS: &[&str] = &[
    "not_owner",
    "unknown_entity",
    "unknown_message",
    "malformed",
    "entity_failed",
    "owner_overloaded",
    "wrong_shard",
    "refused",
    "queue_full",
    "timeout",
    "unreachable",
    "connection_lost",
    "no_owner",
    "overloaded",
    "too_large",
    "closed",
];

impl Default for Metrics {
    fn default() -> Self {
        // 0.5 ms .. ~16 s, doubling.
        let seconds = || Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let proxy_failures: Family<Labels, Counter> = Family::default();
        for reason in PROXY_FAILURE_REASONS {
            let _created = proxy_failures.get_or_create(&vec![("reason", *reason)]);
        }
        Metrics {
            handoffs: Counter::default(),
            handoff_seconds: seconds(),
            rebalances: Counter::default(),
            rebalance_seconds: seconds(),
            proxy_latency_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            proxy_failures,
            raft_write_seconds: seconds(),
        }
    }
}

impl Metrics {
    /// Records a failed send, by the reason's name (one of [`PROXY_FAILURE_REASONS`]).
    pub fn proxy_failed(&self, reason: &'static str) {
        debug_assert!(PROXY_FAILURE_REASONS.contains(&reason), "{reason} is not a listed reason");
        self.proxy_failures.get_or_create(&vec![("reason", reason)]).inc();
    }
}

/// Observes the time since `started` in a histogram when dropped: a future that returns early
/// (or is dropped) is timed too.
pub struct Timed {
    started: std::time::Instant,
    into: Histogram,
}

impl Timed {
    /// Times from `started` into `into`.
    pub fn new(started: std::time::Instant, into: Histogram) -> Timed {
        Timed { started, into }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.into.observe(self.started.elapsed().as_secs_f64());
    }
}
