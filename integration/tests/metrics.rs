//! `GET /metrics` of three real node processes, parsed with a Prometheus text-format parser
//! (prometheus-parse, not a regex): every family docs/operations.md lists is there on every
//! node, the nodes agree (one leader, every shard owned once), and a drain moves the handoff
//! counter and histogram of the drained node. `double_owner_detected` stays 0 throughout.

use std::path::Path;
use std::time::Duration;

use clusterfunk_integration::{http_get, logs, run_to_exit, start_cluster, wait_formed, wait_until, NodeProc};
use prometheus_parse::{Scrape, Value};

const T: Duration = Duration::from_secs(60);
const SHARDS: u64 = 64;

/// Every family docs/operations.md ("Metrics") lists, as the text format names it.
const FAMILIES: &[&str] = &[
    "clusterfunk_members",
    "clusterfunk_raft_leader",
    "clusterfunk_raft_term",
    "clusterfunk_raft_last_log_index",
    "clusterfunk_raft_commit_index",
    "clusterfunk_raft_applied_index",
    "clusterfunk_raft_write_duration_seconds",
    "clusterfunk_shards_owned",
    "clusterfunk_shards_followed",
    "clusterfunk_shards_serving",
    "clusterfunk_shards_unassigned",
    "clusterfunk_shard_map_epoch",
    "clusterfunk_lease_remaining_seconds",
    "clusterfunk_handoffs_in_flight",
    "clusterfunk_handoffs_total",
    "clusterfunk_handoff_duration_seconds",
    "clusterfunk_rebalances_total",
    "clusterfunk_rebalance_duration_seconds",
    "clusterfunk_buffered_messages",
    "clusterfunk_proxy_messages_total",
    "clusterfunk_proxy_failed_total",
    "clusterfunk_proxy_failures_total",
    "clusterfunk_proxy_duplicates_total",
    "clusterfunk_proxy_latency_seconds",
    "clusterfunk_queue_full_total",
    "clusterfunk_stale_epoch_refusals_total",
    "clusterfunk_malformed_frames_total",
    "clusterfunk_refused_requests_total",
    "clusterfunk_foreign_peers_total",
    "clusterfunk_unadmitted_nodes",
    "clusterfunk_entities_active",
    "clusterfunk_entities_activated_total",
    "clusterfunk_entities_passivated_total",
    "clusterfunk_hooks_overrun_total",
    "clusterfunk_double_owner_detected_total",
];

fn scrape(node: &NodeProc) -> Option<Scrape> {
    let (code, body) = http_get(&node.dashboard, "/metrics").ok()?;
    (code == 200).then_some(())?;
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).ok()
}

/// The value of the sample `name` without labels (a counter, gauge or untyped line).
fn value(s: &Scrape, name: &str) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == name && x.labels.is_empty()).and_then(|x| match x.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    })
}

/// Observations in the histogram `name` (its `+Inf` bucket).
fn observations(s: &Scrape, name: &str) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == name).and_then(|x| match &x.value {
        Value::Histogram(h) => h.iter().find(|b| b.less_than.is_infinite()).map(|b| b.count),
        _ => None,
    })
}

fn token_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, "metrics-test-token-0123456789\n").unwrap();
    p
}

#[test]
fn every_documented_family_is_scraped_and_a_drain_moves_the_handoff_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tf = token_file(dir.path());
    let tfs = tf.to_string_lossy().to_string();
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let shards = SHARDS.to_string();
    let args = ["--name", "metrics", "--no-mdns", "--shards", &shards, "--traffic", "20", "--token-file", &tfs];
    let nodes = start_cluster(exe, dir.path(), 3, &args)?;
    let fail = |e: anyhow::Error| anyhow::anyhow!("{e}\n{}", logs(&nodes));
    let ids = wait_formed(&nodes, SHARDS, T).map_err(fail)?;

    // Every family on every node, and the nodes agree on what the map says.
    let scrapes = wait_until(T, "every node's metrics agreeing on one leader and the whole map", || {
        let all: Vec<Scrape> = nodes.iter().map(scrape).collect::<Option<_>>()?;
        let leaders: f64 = all.iter().map(|s| value(s, "clusterfunk_raft_leader").unwrap_or(0.0)).sum();
        let owned: f64 = all.iter().map(|s| value(s, "clusterfunk_shards_owned").unwrap_or(0.0)).sum();
        (leaders == 1.0 && owned == SHARDS as f64).then_some(all)
    })
    .map_err(fail)?;
    for (i, s) in scrapes.iter().enumerate() {
        let missing: Vec<&&str> = FAMILIES.iter().filter(|f| !s.docs.contains_key(**f)).collect();
        assert!(missing.is_empty(), "node {i} lacks {missing:?}; it has {:?}", s.docs.keys().collect::<Vec<_>>());
        let undocumented: Vec<&String> = s.docs.keys().filter(|k| !FAMILIES.contains(&k.as_str())).collect();
        assert!(undocumented.is_empty(), "node {i} exports families the docs do not list: {undocumented:?}");
        assert_eq!(value(s, "clusterfunk_double_owner_detected_total"), Some(0.0));
        assert!(value(s, "clusterfunk_lease_remaining_seconds").is_some_and(|v| v > 0.0), "a live lease");
        assert!(value(s, "clusterfunk_raft_commit_index").is_some_and(|v| v > 0.0), "a commit index");
    }

    // A drain hands the victim's shards off: its handoff counter and histogram move.
    let victim = 2;
    let before = value(&scrapes[victim], "clusterfunk_handoffs_total").unwrap_or(0.0);
    let cli = Path::new(env!("CARGO_BIN_EXE_cf-cli"));
    let (code, out) =
        run_to_exit(cli, &["--node", &nodes[0].dashboard, "--token-file", &tfs, "drain", &ids[victim]], T)?;
    assert_eq!(code, Some(0), "drain: {out}");
    let s = wait_until(T, "the drained node's handoff metrics to move", || {
        let s = scrape(&nodes[victim])?;
        let moved = value(&s, "clusterfunk_handoffs_total")? > before
            && observations(&s, "clusterfunk_handoff_duration_seconds")? > 0.0
            && value(&s, "clusterfunk_shards_owned")? == 0.0;
        moved.then_some(s)
    })
    .map_err(fail)?;
    assert!(value(&s, "clusterfunk_handoffs_total").unwrap() >= 1.0);
    for n in &nodes {
        let s = scrape(n).expect("a node answers /metrics");
        assert_eq!(value(&s, "clusterfunk_double_owner_detected_total"), Some(0.0), "never two owners");
    }
    Ok(())
}
