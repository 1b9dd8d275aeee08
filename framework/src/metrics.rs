//! `GET /metrics`: one Prometheus registry per [`Cluster`](crate::Cluster) (several nodes in one
//! process never share one), in the Prometheus text format. Every family is listed, with its
//! type, unit and meaning, in docs/operations.md ("Metrics"). No label carries an entity key:
//! labels take values from fixed sets (states, roles, reasons, entity type names).
//!
//! What the actors measure as it happens (durations, failures by reason) is registered as it is
//! (`clusterfunk_actors::metrics::Metrics`); what already lives in a counter or in the applied
//! state is read when scraped ([`Scrape`]), so the two can never disagree with the status JSON.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use clusterfunk_actors::membership::MemberState;

use crate::cluster::Inner;

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A node's registry.
pub(crate) struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The registry of the node `inner` will be (a weak reference: the registry lives in it).
    pub(crate) fn new(inner: Weak<Inner>, m: &clusterfunk_actors::metrics::Metrics) -> Metrics {
        let mut r = Registry::with_prefix("clusterfunk");
        r.register("handoffs", "Shards this node handed off (stopped, and released in the log)", m.handoffs.clone());
        r.register("rebalances", "Rebalances this node started while it led (plans with moves)", m.rebalances.clone());
        r.register("proxy_failures", "Messages sent from this node that failed, by reason", m.proxy_failures.clone());
        let durations = [
            (
                "handoff_duration",
                "From a handoff's start on this node (its entities asked to stop) to its release being in the log",
                &m.handoff_seconds,
            ),
            ("rebalance_duration", "From a rebalance's start to its last handoff done", &m.rebalance_seconds),
            ("proxy_latency", "Round trip of a message forwarded to its shard's owner", &m.proxy_latency_seconds),
            (
                "raft_write_duration",
                "From a command proposed on this node to its result (committed and applied, or refused)",
                &m.raft_write_seconds,
            ),
        ];
        for (name, help, h) in durations {
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
        }
        r.register_collector(Box::new(Scrape { inner, failures: m.proxy_failures.clone() }));
        Metrics { registry: r }
    }

    /// The registry in the Prometheus text format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing into a String cannot fail");
        out
    }
}

/// The values read when scraped.
struct Scrape {
    inner: Weak<Inner>,
    failures: prometheus_client::metrics::family::Family<
        clusterfunk_actors::metrics::Labels,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

/// One family of values with labels.
type Rows = Vec<(Vec<(&'static str, String)>, f64)>;

fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    ty: MetricType,
    rows: Rows,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, ty)?;
    for (labels, v) in rows {
        let e = m.encode_family(&labels)?;
        match ty {
            MetricType::Counter => ConstCounter::new(v).encode(e)?,
            _ => ConstGauge::new(v).encode(e)?,
        }
    }
    Ok(())
}

fn one(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    ty: MetricType,
    v: f64,
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, unit, ty, vec![(vec![], v)])
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(inner) = self.inner.upgrade() else { return Ok(()) };
        let e = &mut enc;
        let s = inner.status();
        let node = &inner.node;
        let (gauge, counter) = (MetricType::Gauge, MetricType::Counter);

        let mut members: BTreeMap<(&'static str, &'static str), f64> = BTreeMap::new();
        for role in ["voter", "learner"] {
            for state in MemberState::ALL {
                members.insert((role, state.as_str()), 0.0);
            }
        }
        for m in &s.members {
            *members.entry((m.role, m.state.as_str())).or_default() += 1.0;
        }
        let rows = members
            .into_iter()
            .map(|((role, state), n)| (vec![("role", role.to_string()), ("state", state.to_string())], n))
            .collect();
        family(e, "members", "Members of the Raft group by role and state, as this node sees them", None, gauge, rows)?;

        let leader = s.leader.as_deref() == Some(s.node_id.as_str());
        one(e, "raft_leader", "1 if this node is the Raft leader", None, gauge, f64::from(u8::from(leader)))?;
        one(e, "raft_term", "The Raft term", None, gauge, s.term as f64)?;
        one(
            e,
            "raft_last_log_index",
            "The last Raft log index on this node",
            None,
            gauge,
            s.raft.last_log_index.unwrap_or(0) as f64,
        )?;
        one(
            e,
            "raft_commit_index",
            "The highest Raft log index this node knows committed",
            None,
            gauge,
            node.committed_index() as f64,
        )?;
        one(
            e,
            "raft_applied_index",
            "The last Raft log index applied on this node",
            None,
            gauge,
            s.raft.last_applied.unwrap_or(0) as f64,
        )?;

        let map = node.map.borrow().clone();
        let followed = (0..map.shard_count())
            .filter(|sh| map.replicas(clusterfunk_actors::types::ShardId(*sh)).contains(&node.id))
            .count();
        let owned = s.shard_map.owners.get(&s.node_id).copied().unwrap_or(0);
        one(e, "shards_owned", "Shards the committed map gives this node", None, gauge, f64::from(owned))?;
        one(
            e,
            "shards_followed",
            "Shards this node follows (replicas) in the committed map",
            None,
            gauge,
            followed as f64,
        )?;
        one(
            e,
            "shards_serving",
            "Shards this node serves now (lease valid, shard active)",
            None,
            gauge,
            s.ownership.serving as f64,
        )?;
        one(
            e,
            "shards_unassigned",
            "Shards with no owner in the committed map",
            None,
            gauge,
            f64::from(s.shard_map.unassigned),
        )?;
        one(e, "shard_map_epoch", "The committed shard map's epoch", None, gauge, s.shard_map.epoch as f64)?;
        let lease = s.ownership.lease_left_ms.unwrap_or(0) as f64 / 1000.0;
        one(
            e,
            "lease_remaining",
            "How long this node's lease still lets it serve (0: no valid lease)",
            Some(&Unit::Seconds),
            gauge,
            lease,
        )?;
        one(
            e,
            "handoffs_in_flight",
            "Planned moves waiting for their old owner to confirm",
            None,
            gauge,
            s.ownership.handoffs_pending as f64,
        )?;
        one(
            e,
            "buffered_messages",
            "Messages sent from this node waiting for their shard to get an owner (a handoff, a failover)",
            None,
            gauge,
            inner.router.waiting() as f64,
        )?;

        let t = &s.traffic;
        let rows = vec![
            (vec![("direction", "local".to_string())], t.local as f64),
            (vec![("direction", "forwarded".to_string())], t.forwarded as f64),
            (vec![("direction", "served".to_string())], t.served as f64),
        ];
        family(e, "proxy_messages", "Entity messages: delivered here from here (local), sent to another node (forwarded), from another node served here (served)", None, counter, rows)?;
        one(
            e,
            "proxy_failed",
            "Entity messages sent from this node that failed, any reason (by reason: clusterfunk_proxy_failures_total)",
            None,
            counter,
            t.failed as f64,
        )?;
        one(
            e,
            "proxy_duplicates",
            "Requests that arrived twice on one stream and ran once",
            None,
            counter,
            t.duplicates as f64,
        )?;

        let count = |reason: &'static str| self.failures.get(&vec![("reason", reason)]).map_or(0, |c| c.get()) as f64;
        let ts = node.transport.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
        let rows = vec![
            (vec![("queue", "proxy_link".to_string())], count("queue_full")),
            (vec![("queue", "route_wait".to_string())], count("overloaded")),
            (vec![("queue", "proxy_inbound".to_string())], load(&inner.router.stats().inbound_full)),
            (vec![("queue", "consensus_mailbox".to_string())], load(&ts.raft_mailbox_full)),
            (vec![("queue", "membership_mailbox".to_string())], load(&ts.events_dropped)),
        ];
        family(
            e,
            "queue_full",
            "Sends refused because a bounded queue was full (never a silent drop)",
            None,
            counter,
            rows,
        )?;
        one(
            e,
            "stale_epoch_refusals",
            "Messages refused because they carried an epoch older than the one seen for their shard",
            None,
            counter,
            s.ownership.rejected_stale as f64,
        )?;

        let ts = node.transport.stats();
        let rows = vec![
            (vec![("protocol", "gossip".to_string())], ts.malformed_gossip.load(Ordering::Relaxed) as f64),
            (vec![("protocol", "raft".to_string())], ts.malformed_raft.load(Ordering::Relaxed) as f64),
            (vec![("protocol", "proxy".to_string())], t.malformed as f64),
        ];
        family(
            e,
            "malformed_frames",
            "Frames that did not decode (or were over the limit), by protocol; each dropped its peer",
            None,
            counter,
            rows,
        )?;

        // Every reason the authorization rule knows, zero or not (`Refusals::snapshot`).
        let mut rows: Rows = s
            .raft
            .refused
            .iter()
            .map(|(r, n)| (vec![("protocol", "raft".to_string()), ("reason", r.clone())], *n as f64))
            .collect();
        rows.push((
            vec![("protocol", "proxy".to_string()), ("reason", "not_member".to_string())],
            t.unauthorized as f64,
        ));
        family(
            e,
            "refused_requests",
            "Requests refused because the sender may not ask them (not a member, asking for another node, leader only)",
            None,
            counter,
            rows,
        )?;
        one(
            e,
            "foreign_peers",
            "Connections refused because the peer is of another cluster",
            None,
            counter,
            ts.foreign_peers.load(Ordering::Relaxed) as f64,
        )?;
        one(
            e,
            "unadmitted_nodes",
            "Nodes refused membership while this node led (production mode's allowlist, or removed)",
            None,
            gauge,
            s.raft.unadmitted.len() as f64,
        )?;

        let (mut active, mut activated, mut passivated): (Rows, Rows, Rows) = Default::default();
        for h in &inner.registry.controls {
            let ty = h.name().to_string();
            active.push((vec![("entity_type", ty.clone())], h.len() as f64));
            activated.push((vec![("entity_type", ty.clone())], h.activations() as f64));
            for (reason, n) in crate::entity::PASSIVATION_REASONS.iter().zip(h.passivated()) {
                passivated.push((vec![("entity_type", ty.clone()), ("reason", reason.to_string())], n as f64));
            }
        }
        family(e, "entities_active", "Entity instances alive on this node, by entity type", None, gauge, active)?;
        family(
            e,
            "entities_activated",
            "Entity instances created on this node, by entity type",
            None,
            counter,
            activated,
        )?;
        family(
            e,
            "entities_passivated",
            "Entity instances stopped on this node, by entity type and reason (idle, shard_stopped, stopped)",
            None,
            counter,
            passivated,
        )?;
        one(
            e,
            "hooks_overrun",
            "Shard hooks that overran their budget",
            None,
            counter,
            s.ownership.hooks_overrun as f64,
        )?;
        one(
            e,
            "double_owner_detected",
            "Messages that showed this node serving a shard its own map gives another node at a newer epoch: two owners. Must stay 0",
            None,
            counter,
            node.ownership.double_owner_detected() as f64,
        )?;
        Ok(())
    }
}
