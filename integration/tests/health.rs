//! `GET /health` and `GET /ready` of three real node processes, per node:
//! - all three ready and healthy once the cluster formed;
//! - the leader's disk stalls (its Raft core parked on an fsync): its lease lapses, so it says
//!   `not ready: no valid lease` and `unhealthy` while the others take its shards over and stay
//!   ready; when the write completes it is ready again;
//! - a drained node is not ready (`draining`) while the others are.

use std::path::Path;
use std::time::Duration;

use clusterfunk_integration::{
    http_get, logs, run_to_exit, start_cluster_each, view, wait_formed, wait_until, NodeProc,
};

const T: Duration = Duration::from_secs(60);
const SHARDS: u64 = 32;

fn get(node: &NodeProc, path: &str) -> Option<(u16, String)> {
    http_get(&node.dashboard, path).ok()
}

fn ready(node: &NodeProc) -> bool {
    get(node, "/ready").is_some_and(|(code, _)| code == 200)
}

#[test]
fn ready_follows_the_lease_the_map_and_draining_of_each_node() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tf = dir.path().join("token");
    std::fs::write(&tf, "health-test-token-0123456789\n")?;
    let tfs = tf.to_string_lossy().to_string();
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let shards = SHARDS.to_string();
    let args = ["--name", "health", "--no-mdns", "--shards", &shards, "--traffic", "20", "--token-file", &tfs];
    let trigger = |i: usize| dir.path().join(format!("stall-n{i}"));
    let nodes = start_cluster_each(exe, dir.path(), 3, &args, |i| {
        vec!["--stall-disk-trigger".into(), trigger(i).to_string_lossy().to_string()]
    })?;
    let fail = |e: anyhow::Error| anyhow::anyhow!("{e}\n{}", logs(&nodes));
    let ids = wait_formed(&nodes, SHARDS, T).map_err(fail)?;

    // Formed: every node healthy and ready.
    wait_until(T, "every node healthy and ready", || {
        nodes.iter().all(|n| ready(n) && get(n, "/health").is_some_and(|(c, _)| c == 200)).then_some(())
    })
    .map_err(fail)?;

    // The leader's next durable write stalls 3 s: its core parks, its lease lapses.
    let leader_id = wait_until(T, "a leader", || view::leader(&nodes[0].status().ok()?)).map_err(fail)?;
    let l = ids.iter().position(|id| *id == leader_id).expect("the leader is one of the nodes");
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let tmp = trigger(l).with_extension("tmp");
    std::fs::write(&tmp, "3000 1")?;
    std::fs::rename(&tmp, trigger(l))?;
    let why = wait_until(Duration::from_secs(3), "the stalled leader to say it is not ready", || {
        get(&nodes[l], "/ready").filter(|(code, _)| *code == 503).map(|(_, body)| body)
    })
    .map_err(fail)?;
    assert!(why.contains("no valid lease") || why.contains("fenced"), "the reason names the lease: {why}");
    // Its status says the same as /ready.
    let s = nodes[l].status()?;
    assert!(s["ownership"]["not_ready"].as_str().is_some_and(|r| r.contains("lease") || r.contains("fenced")), "{s}");
    // /health turns once the write has waited over a second.
    let health = wait_until(Duration::from_secs(3), "the stalled leader to say it is unhealthy", || {
        get(&nodes[l], "/health").filter(|(code, _)| *code == 503).map(|(_, body)| body)
    })
    .map_err(fail)?;
    assert!(health.contains("storage"), "the reason names the disk: {health}");

    // The others take its shards over and are ready while it is parked.
    wait_until(T, "the others ready, serving the stalled node's shards too", || {
        let s = nodes[others[0]].status().ok()?;
        let (owners, total) = view::owners(&s);
        let moved = total == SHARDS && !owners.contains(&ids[l]);
        (moved && others.iter().all(|i| ready(&nodes[*i]))).then_some(())
    })
    .map_err(fail)?;

    // The write completes: it rejoins, gets a lease, and is ready again (with whatever the
    // map gives it).
    wait_until(T, "every node ready again after the stall", || nodes.iter().all(ready).then_some(())).map_err(fail)?;
    assert_eq!(get(&nodes[l], "/health").map(|(c, _)| c), Some(200), "healthy once the write completed");

    // A drained node is not ready, and says why; the others are.
    let victim = others[1];
    let cli = Path::new(env!("CARGO_BIN_EXE_cf-cli"));
    let (code, out) =
        run_to_exit(cli, &["--node", &nodes[l].dashboard, "--token-file", &tfs, "drain", &ids[victim]], T)?;
    assert_eq!(code, Some(0), "drain: {out}");
    let why = wait_until(T, "the drained node to say it is not ready", || {
        get(&nodes[victim], "/ready").filter(|(code, _)| *code == 503).map(|(_, body)| body)
    })
    .map_err(fail)?;
    assert!(why.contains("draining"), "the reason is the drain: {why}");
    wait_until(T, "the two others ready, serving every shard", || {
        let s = nodes[l].status().ok()?;
        let (owners, total) = view::owners(&s);
        let done = total == SHARDS && !owners.contains(&ids[victim]);
        (done && [l, others[0]].iter().all(|i| ready(&nodes[*i]))).then_some(())
    })
    .map_err(fail)?;
    assert_eq!(get(&nodes[victim], "/health").map(|(c, _)| c), Some(200), "a drained node is still healthy");
    Ok(())
}
