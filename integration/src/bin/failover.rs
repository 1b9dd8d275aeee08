//! Failover figures, printed as `name=value` lines: three real node processes on loopback; kill -9
//! the leader (or a follower that owns shards), time until the survivors agree on a leader and on a
//! complete shard map without the dead node, restart it, repeat.
//!
//! ```text
//! cargo build --release -p clusterfunk-integration && target/release/failover [--trials N]
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use clusterfunk_integration::{start_cluster, view, wait_until, NodeProc};

const SHARDS: u64 = 1024;

fn main() -> anyhow::Result<()> {
    let trials: usize = std::env::args().skip_while(|a| a != "--trials").nth(1).map_or(Ok(10), |t| t.parse())?;
    let exe = std::env::current_exe()?.with_file_name("cf-node");
    anyhow::ensure!(exe.exists(), "{} not found: build the package first", exe.display());
    let dir = tempfile::tempdir()?;
    let mut nodes = start_cluster(&exe, dir.path(), 3, &["--name", "failover", "--no-mdns"])?;
    let mut results: Vec<(&str, Vec<f64>)> = vec![("leader_kill", vec![]), ("owner_kill", vec![])];
    let mut elections = Vec::new();
    for trial in 0..trials * 2 {
        let all_ids = wait_healthy(&nodes, Duration::from_secs(60)).context("cluster healthy")?;
        let status = nodes[0].status()?;
        let leader = view::leader(&status).context("a leader")?;
        let kill_leader = trial % 2 == 0;
        let victim = if kill_leader {
            leader.clone()
        } else {
            all_ids.iter().find(|id| **id != leader).cloned().context("a follower")?
        };
        let vi = nodes
            .iter()
            .position(|n| {
                n.status().ok().and_then(|s| s["node_id"].as_str().map(str::to_string)) == Some(victim.clone())
            })
            .context("victim")?;
        let killed = Instant::now();
        nodes[vi].kill();
        let rest: Vec<String> = all_ids.iter().filter(|id| **id != victim).cloned().collect();
        let survivors: Vec<&NodeProc> = nodes.iter().enumerate().filter(|(i, _)| *i != vi).map(|(_, n)| n).collect();
        let mut leader_at = None;
        wait_until(Duration::from_secs(30), "failover", || {
            let ss: Vec<serde_json::Value> = survivors.iter().map(|n| n.status().ok()).collect::<Option<_>>()?;
            let l = view::leader(&ss[0]).filter(|l| *l != victim)?;
            if ss.iter().all(|s| view::leader(s).as_deref() == Some(l.as_str())) && leader_at.is_none() {
                leader_at = Some(killed.elapsed());
            }
            ss.iter().all(|s| view::owners(s) == (rest.clone(), SHARDS)).then_some(())
        })?;
        let map_ms = killed.elapsed().as_secs_f64() * 1000.0;
        results[if kill_leader { 0 } else { 1 }].1.push(map_ms);
        if kill_leader {
            elections.push(leader_at.unwrap_or_default().as_secs_f64() * 1000.0);
        }
        nodes[vi].start()?;
    }
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[v.len() - 1])
    };
    println!("trials={trials}");
    let (p50, max) = stat(&mut elections);
    println!("leader_kill_new_leader_ms_p50={p50:.0}\nleader_kill_new_leader_ms_max={max:.0}");
    for (name, v) in &mut results {
        let (p50, max) = stat(v);
        println!("{name}_map_without_dead_ms_p50={p50:.0}\n{name}_map_without_dead_ms_max={max:.0}");
    }
    Ok(())
}

/// Waits until every node is up, agrees on a leader, and the map covers all three; returns the ids.
fn wait_healthy(nodes: &[NodeProc], timeout: Duration) -> anyhow::Result<Vec<String>> {
    wait_until(timeout, "a healthy 3-node cluster", || {
        let ss: Vec<serde_json::Value> = nodes.iter().map(|n| n.status().ok()).collect::<Option<_>>()?;
        let ids: Vec<String> = {
            let mut v: Vec<String> = ss.iter().filter_map(|s| s["node_id"].as_str().map(str::to_string)).collect();
            v.sort();
            v
        };
        let l = view::leader(&ss[0])?;
        ss.iter()
            .all(|s| {
                view::leader(s).as_deref() == Some(l.as_str())
                    && view::owners(s) == (ids.clone(), SHARDS)
                    && view::members_in(s, "up") == ids
            })
            .then_some(ids)
    })
}
