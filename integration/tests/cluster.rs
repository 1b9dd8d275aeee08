//! Three real node processes on loopback (static seeds: mDNS does not work on loopback): they
//! form one cluster; the leader is killed and the rest elect another and drop it from the map; it
//! restarts on its data dir and rejoins under its old id.

use std::time::Duration;

use clusterfunk_integration::{logs, start_cluster, view, NodeProc};
use serde_json::Value;

const SHARDS: u64 = 256;
const T: Duration = Duration::from_secs(30);

fn statuses(nodes: &[&NodeProc]) -> Option<Vec<Value>> {
    nodes.iter().map(|n| n.status().ok()).collect()
}

/// Every node sees the same leader, these members up, and the same complete map over `owners`.
fn agreed(nodes: &[&NodeProc], up: &[String], owners: &[String]) -> Option<(String, u64)> {
    let ss = statuses(nodes)?;
    let leader = view::leader(&ss[0])?;
    let (epoch, map) = view::map(&ss[0]);
    for s in &ss {
        let ups = view::members_in(s, "up");
        let ok = view::leader(s).as_ref() == Some(&leader)
            && up.iter().all(|id| ups.contains(id))
            && view::map(s) == (epoch, map.clone())
            && view::owners(s) == (owners.to_vec(), SHARDS);
        if !ok {
            return None;
        }
    }
    Some((leader, epoch))
}

#[test]
fn three_nodes_form_fail_over_and_rejoin() -> anyhow::Result<()> {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let dir = tempfile::tempdir()?;
    let mut nodes =
        start_cluster(exe, dir.path(), 3, &["--name", "itest", "--env", "cluster", "--no-mdns", "--shards", "256"])?;

    eprintln!("--- phase 1: three nodes form one cluster");
    let ids: Vec<String> = clusterfunk_integration::wait_until(T, "node ids", || {
        nodes.iter().map(|n| n.status().ok().and_then(|s| s["node_id"].as_str().map(str::to_string))).collect()
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    let mut sorted = ids.clone();
    sorted.sort();
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    let (leader, epoch) =
        clusterfunk_integration::wait_until(T, "3 members up and one agreed map", || agreed(&refs, &sorted, &sorted))
            .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    // The third node is promoted from learner a moment after the map agrees (slower on a loaded
    // machine): waited for, not read once.
    clusterfunk_integration::wait_until(T, "all three voters", || {
        let s = nodes[0].status().ok()?;
        let voters = s["members"].as_array()?.iter().filter(|m| m["role"] == "voter").count();
        (voters == 3).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    assert!(epoch > 0);

    eprintln!("--- phase 2: kill the leader {leader}");
    let li = ids.iter().position(|id| *id == leader).expect("leader is one of ours");
    nodes[li].kill();
    let rest: Vec<String> = sorted.iter().filter(|id| **id != leader).cloned().collect();
    let survivors: Vec<&NodeProc> = nodes.iter().enumerate().filter(|(i, _)| *i != li).map(|(_, n)| n).collect();
    let (new_leader, new_epoch) =
        clusterfunk_integration::wait_until(T, "a new leader and a map without the dead node", || {
            agreed(&survivors, &rest, &rest).filter(|(l, _)| *l != leader)
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    assert!(new_epoch > epoch, "the map epoch moves forward");
    // Shards move on the lease rule (≈0.6 s); the gossip failure detector marks the node down later.
    let s = clusterfunk_integration::wait_until(T, "the dead leader seen down", || {
        survivors[0].status().ok().filter(|s| view::members_in(s, "down").contains(&leader))
    })?;
    let voters = s["members"].as_array().unwrap().iter().filter(|m| m["role"] == "voter").count();
    assert_eq!(voters, 3, "failure detection never changes the voter set: {s}");

    eprintln!("--- phase 3: restart the killed node on its data dir (new leader {new_leader})");
    nodes[li].start()?;
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    let (_, back_epoch) =
        clusterfunk_integration::wait_until(T, "the old leader back under its id, with shards", || {
            let s = nodes[li].status().ok()?;
            (s["node_id"] == leader.as_str()).then_some(())?;
            agreed(&refs, &sorted, &sorted)
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    assert!(back_epoch > new_epoch);
    Ok(())
}
