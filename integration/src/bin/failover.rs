//! Failover figures, printed as `name=value` lines: three real node processes on loopback; kill -9
//! the leader (or a follower that owns shards) and time, from the kill:
//! - `served`: requests (`POST /counter/{key}` on a survivor) for keys the dead node served all
//!   answered — each waits in the survivor's proxy until its shard is served again;
//! - `all_served`: the survivors serve every shard (lease valid, shard active: `ownership.serving`);
//! - the survivors agree on a new leader (leader kill), and on a map without the dead node.
//!
//! Then the dead node restarts on its data dir and the next trial starts once it serves again.
//!
//! ```text
//! cargo build --release -p clusterfunk-integration && target/release/failover [--trials N]
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use clusterfunk_integration::{http, start_cluster, view, wait_until, NodeProc};

const SHARDS: u64 = 1024;

fn main() -> anyhow::Result<()> {
    let trials: usize = std::env::args().skip_while(|a| a != "--trials").nth(1).map_or(Ok(10), |t| t.parse())?;
    let exe = std::env::current_exe()?.with_file_name("cf-node");
    anyhow::ensure!(exe.exists(), "{} not found: build the package first", exe.display());
    let dir = tempfile::tempdir()?;
    let mut nodes = start_cluster(&exe, dir.path(), 3, &["--name", "failover", "--no-mdns", "--http", "127.0.0.1:0"])?;
    let mut results: Vec<(&str, Vec<f64>)> = vec![("leader_kill", vec![]), ("owner_kill", vec![])];
    let mut elections = Vec::new();
    let mut served_keys: [Vec<f64>; 2] = [vec![], vec![]];
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
        // Keys the victim serves, found by asking (each answer names the serving node).
        let entry = nodes[(vi + 1) % 3].service()?;
        let keys: Vec<String> = (0..256)
            .map(|i| format!("fo-{trial}-{i}"))
            .filter(|k| {
                let (code, body) = http(&entry, "POST", &format!("/counter/{k}"), "").unwrap_or((0, String::new()));
                code == 200 && body.contains(&victim)
            })
            .take(8)
            .collect();
        anyhow::ensure!(!keys.is_empty(), "no key served by the victim");
        let killed = Instant::now();
        nodes[vi].kill();
        let clients: Vec<_> = keys
            .iter()
            .map(|k| {
                let (entry, path) = (entry.clone(), format!("/counter/{k}"));
                std::thread::spawn(move || {
                    let r = http(&entry, "POST", &path, "");
                    (killed.elapsed(), matches!(r, Ok((200, _))))
                })
            })
            .collect();
        let rest: Vec<String> = all_ids.iter().filter(|id| **id != victim).cloned().collect();
        let survivors: Vec<&NodeProc> = nodes.iter().enumerate().filter(|(i, _)| *i != vi).map(|(_, n)| n).collect();
        let (mut leader_at, mut all_served_at) = (None, None);
        loop {
            anyhow::ensure!(killed.elapsed() < Duration::from_secs(30), "no failover within 30 s");
            let Some(ss) = survivors.iter().map(|n| n.status().ok()).collect::<Option<Vec<_>>>() else { continue };
            if leader_at.is_none() {
                let l = view::leader(&ss[0]).filter(|l| *l != victim);
                if l.is_some() && ss.iter().all(|s| view::leader(s) == l) {
                    leader_at = Some(killed.elapsed());
                }
            }
            let serving: u64 = ss.iter().map(|s| s["ownership"]["serving"].as_u64().unwrap_or(0)).sum();
            if all_served_at.is_none() && serving == SHARDS {
                all_served_at = Some(killed.elapsed());
            }
            if all_served_at.is_some() && ss.iter().all(|s| view::owners(s) == (rest.clone(), SHARDS)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut served = Duration::ZERO;
        for c in clients {
            let (t, ok) = c.join().expect("client thread");
            anyhow::ensure!(ok, "a request for a dead node's key failed instead of waiting for failover");
            served = served.max(t);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let all = ms(all_served_at.unwrap_or_default().max(served));
        results[if kill_leader { 0 } else { 1 }].1.push(all);
        served_keys[if kill_leader { 0 } else { 1 }].push(ms(served));
        if kill_leader {
            elections.push(ms(leader_at.unwrap_or_default()));
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
    for (i, (name, v)) in results.iter_mut().enumerate() {
        let (p50, max) = stat(&mut served_keys[i]);
        println!("{name}_dead_nodes_keys_served_ms_p50={p50:.0}\n{name}_dead_nodes_keys_served_ms_max={max:.0}");
        let (p50, max) = stat(v);
        println!("{name}_all_shards_served_ms_p50={p50:.0}\n{name}_all_shards_served_ms_max={max:.0}");
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
        let serving: u64 = ss.iter().map(|s| s["ownership"]["serving"].as_u64().unwrap_or(0)).sum();
        (serving == SHARDS).then_some(())?;
        ss.iter()
            .all(|s| {
                view::leader(s).as_deref() == Some(l.as_str())
                    && view::owners(s) == (ids.clone(), SHARDS)
                    && view::members_in(s, "up") == ids
            })
            .then_some(ids)
    })
}
