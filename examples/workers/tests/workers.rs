//! The worker index across real processes of the `workers` binary (libcluster's cluster-test):
//! three instances `node1 -n 2`, `node2`, `node3 -n 4` print indices 0, 2 and 3 of 7 at one
//! epoch; when node2 leaves it prints -1, node3 moves to 2 and the total drops to 6; node2
//! restarted (without `-i`: its instance id is kept in its data directory) is back at 2 of 7
//! under a later epoch. Static mode and refused counts and ids are checked too.

use std::path::Path;
use std::time::Duration;

use clusterfunk_integration::{logs, run_to_exit, start_cluster_each, wait_formed, wait_until, NodeProc};

/// The last block the instance printed: (index, count, total, epoch).
fn last_block(n: &NodeProc) -> Option<(i64, u64, u64, u64)> {
    let log = std::fs::read_to_string(n.log_path()).ok()?;
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().rposition(|l| l.starts_with("instance index: "))?;
    let field = |i: usize, name: &str| lines.get(at + i)?.strip_prefix(name)?.trim().parse::<i64>().ok();
    Some((
        field(0, "instance index: ")?,
        field(1, "instance thread count: ")? as u64,
        field(2, "total thread count: ")? as u64,
        field(3, "epoch: ")? as u64,
    ))
}

/// Waits until the instances print these (index, count, total), all at one epoch; returns it.
fn wait_layout(nodes: &[&NodeProc], want: &[(i64, u64, u64)]) -> anyhow::Result<u64> {
    wait_until(Duration::from_secs(30), &format!("worker layout {want:?}"), || {
        let blocks: Vec<(i64, u64, u64, u64)> = nodes.iter().map(|n| last_block(n)).collect::<Option<_>>()?;
        let got: Vec<(i64, u64, u64)> = blocks.iter().map(|b| (b.0, b.1, b.2)).collect();
        (got == want && blocks.iter().all(|b| b.3 == blocks[0].3)).then_some(blocks[0].3)
    })
    .map_err(|e| {
        let tails: Vec<String> = nodes.iter().map(|n| n.log_tail(12)).collect();
        anyhow::anyhow!("{e}\n{}", tails.join("\n-----\n"))
    })
}

#[test]
fn three_instances_take_contiguous_ranges_and_close_the_gap_when_one_leaves() -> anyhow::Result<()> {
    let exe = Path::new(env!("CARGO_BIN_EXE_workers"));
    let dir = tempfile::tempdir()?;
    let key = format!("workers-{}", std::process::id());
    let flags = |i: usize| -> Vec<String> {
        let (id, n) = [("node1", "2"), ("node2", "1"), ("node3", "4")][i];
        ["-i", id, "-n", n].iter().map(|s| s.to_string()).collect()
    };
    let mut nodes = start_cluster_each(exe, dir.path(), 3, &["-k", &key, "--no-mdns", "-v"], flags)?;
    wait_formed(&nodes, 64, Duration::from_secs(60)).map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    let first = wait_layout(&[&nodes[0], &nodes[1], &nodes[2]], &[(0, 2, 7), (2, 1, 7), (3, 4, 7)])?;
    // Each instance shows its name and the others' with their ranges.
    let s = nodes[2].status()?;
    assert_eq!(s["node_name"], "node3");
    let mut seen: Vec<(String, u64)> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap_or("?").to_string(), m["worker_first"].as_u64().unwrap_or(u64::MAX)))
        .collect();
    seen.sort();
    assert_eq!(seen, [("node1".to_string(), 0), ("node2".to_string(), 2), ("node3".to_string(), 3)], "{s}");

    // node2 leaves.
    assert!(nodes[1].signal(libc::SIGTERM));
    let code = wait_until(Duration::from_secs(20), "node2 exited", || nodes[1].exited())?;
    assert_eq!(code, Some(0), "{}", nodes[1].log_tail(20));
    assert_eq!(last_block(&nodes[1]).map(|b| b.0), Some(-1), "a leaving instance prints index -1");
    let after = wait_layout(&[&nodes[0], &nodes[2]], &[(0, 2, 6), (2, 4, 6)])?;
    assert!(after > first, "a new layout has a later epoch: {after} after {first}");

    // node2 comes back, without -i: the data directory kept its instance id.
    let at = nodes[1].args.iter().position(|a| a == "-i").expect("started with -i");
    nodes[1].args.drain(at..at + 2);
    nodes[1].start()?;
    let back = wait_layout(&[&nodes[0], &nodes[1], &nodes[2]], &[(0, 2, 7), (2, 1, 7), (3, 4, 7)])?;
    assert!(back > after, "the rejoin is a later epoch: {back} after {after}");
    assert_eq!(nodes[1].status()?["node_name"], "node2");
    Ok(())
}

#[test]
fn static_mode_prints_the_configured_range_and_bad_counts_and_ids_are_refused() -> anyhow::Result<()> {
    let exe = Path::new(env!("CARGO_BIN_EXE_workers"));
    let dir = tempfile::tempdir()?;
    let ports = clusterfunk_integration::free_ports(2);
    let mut n = NodeProc::new(
        exe,
        dir.path().join("s"),
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
        &[
            "-k",
            &format!("static-{}", std::process::id()),
            "--no-mdns",
            "--bootstrap",
            "-I",
            "5",
            "-T",
            "10",
            "-n",
            "2",
        ],
    );
    n.start()?;
    let b = wait_until(Duration::from_secs(20), "the static block", || last_block(&n))?;
    assert_eq!(b, (5, 2, 10, 0), "static mode: the flags' range, epoch 0");
    assert!(n.signal(libc::SIGTERM));
    wait_until(Duration::from_secs(20), "the static instance exited", || n.exited())?;
    assert_eq!(last_block(&n).map(|b| b.0), Some(-1));

    let d = dir.path().join("bad");
    let d = d.to_str().unwrap();
    for (args, says) in [
        (vec!["-n", "0"], "workers: a node runs at least 1 worker"),
        (vec!["-n", "5000"], "workers: 5000 is over max_workers (1024)"),
        (vec!["-I", "9", "-T", "10", "-n", "2"], "worker_index: 9 + 2 workers is beyond worker_total 10"),
        (vec!["-i", "node 1"], "instance_id: \"node 1\" is not usable: ' ' is not a letter"),
    ] {
        let mut all = vec!["--no-mdns", "--data-dir", d];
        all.extend(args.iter().copied());
        let (code, out) = run_to_exit(exe, &all, Duration::from_secs(20))?;
        assert_ne!(code, Some(0), "{args:?} was accepted: {out}");
        assert!(out.contains(says), "{args:?}: expected {says:?} in\n{out}");
    }
    Ok(())
}
