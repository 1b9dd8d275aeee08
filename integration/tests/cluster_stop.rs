//! A whole-cluster stop is not a failure: SIGTERM to every node of a serving 3-node cluster at
//! once (what Ctrl-C on `demo --local 3` does) ends every process with exit code 0, logs no
//! ERROR, and takes about a second at most (the leader does not try to hand over to peers that
//! are leaving too).

use std::time::{Duration, Instant};

use clusterfunk_integration::{logs, start_cluster, wait_formed, wait_until};

#[test]
fn sigterm_to_every_node_at_once_stops_cleanly() -> anyhow::Result<()> {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let dir = tempfile::tempdir()?;
    let mut nodes =
        start_cluster(exe, dir.path(), 3, &["--name", "stop", "--no-mdns", "--shards", "64", "--traffic", "20"])?;
    wait_formed(&nodes, 64, Duration::from_secs(30)).map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    let started = Instant::now();
    for n in &mut nodes {
        assert!(n.signal(libc::SIGTERM), "the node runs");
    }
    let codes = wait_until(Duration::from_secs(20), "every node exited", || {
        let codes: Vec<Option<i32>> = nodes.iter_mut().map(|n| n.exited()).collect::<Option<_>>()?;
        Some(codes)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    let took = started.elapsed();
    eprintln!("whole-cluster stop: {took:?}, exit codes {codes:?}");
    assert!(codes.iter().all(|c| *c == Some(0)), "exit codes {codes:?}\n{}", logs(&nodes));
    for n in &nodes {
        let log = std::fs::read_to_string(n.log_path())?;
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(errors.is_empty(), "a normal stop logged ERRORs:\n{}", errors.join("\n"));
        let saw = log.contains("every member is leaving") || log.contains("handed off");
        assert!(saw, "the node left by the whole-cluster path or after handing off:\n{}", n.log_tail(20));
    }
    Ok(())
}
