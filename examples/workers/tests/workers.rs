//! The worker index across real processes of the `workers` binary (libcluster's cluster-test):
//! three instances `node1 -n 2`, `node2`, `node3 -n 4` print indices 0, 2 and 3 of 7 at one
//! epoch; when node2 leaves it prints -1, node3 moves to 2 and the total drops to 6; node2
//! restarted (without `-i`: its instance id is kept in its data directory) is back at 2 of 7
//! under a later epoch. Static mode and refused counts and ids are checked too.

use std::path::Path;
use std::time::Duration;

use clusterfunk_integration::{logs, run_to_exit, start_cluster_each, wait_formed, wait_until, NodeProc};

/// Every block the instance printed, in order: (index, count, total, epoch).
fn blocks(n: &NodeProc) -> Vec<(i64, u64, u64, u64)> {
    let log = std::fs::read_to_string(n.log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let block = |at: usize| {
        let field = |i: usize, name: &str| lines.get(at + i)?.strip_prefix(name)?.trim().parse::<i64>().ok();
        Some((
            field(0, "instance index: ")?,
            field(1, "instance thread count: ")? as u64,
            field(2, "total thread count: ")? as u64,
            field(3, "epoch: ")? as u64,
        ))
    };
    (0..lines.len()).filter(|i| lines[*i].starts_with("instance index: ")).filter_map(block).collect()
}

/// The last block the instance printed.
fn last_block(n: &NodeProc) -> Option<(i64, u64, u64, u64)> {
    blocks(n).pop()
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
    // It printed -1 once, under the epoch it held: out of the index as soon as it started to
    // leave, before the cluster committed the leave (which comes under a later epoch).
    assert_eq!(last_block(&nodes[1]).map(|b| (b.0, b.3)), Some((-1, first)), "{}", nodes[1].log_tail(30));
    let all = blocks(&nodes[1]);
    let at = all.iter().rposition(|b| b.0 == 2).expect("node2 held index 2");
    assert_eq!(all[at + 1..], [(-1, 1, 7, first)], "after index 2, only the leave's -1: {all:?}");
    let after = wait_layout(&[&nodes[0], &nodes[2]], &[(0, 2, 6), (2, 4, 6)])?;
    assert!(after > first, "a new layout has a later epoch: {after} after {first}");

    // node2 comes back, without -i: the data directory kept its instance id.
    let at = nodes[1].args.iter().position(|a| a == "-i").expect("started with -i");
    nodes[1].args.drain(at..at + 2);
    nodes[1].start()?;
    let back = wait_layout(&[&nodes[0], &nodes[1], &nodes[2]], &[(0, 2, 7), (2, 1, 7), (3, 4, 7)])?;
    assert!(back > after, "the rejoin is a later epoch: {back} after {after}");
    assert_eq!(nodes[1].status()?["node_name"], "node2");

    // A fourth instance claiming node1's instance id is refused with the reason, and changes
    // nothing.
    let seed = nodes[0].listen.clone();
    let (code, out) = run_to_exit(
        exe,
        &[
            "-k",
            &key,
            "--no-mdns",
            "-i",
            "node1",
            "--join",
            &seed,
            "--data-dir",
            dir.path().join("dup").to_str().unwrap(),
        ],
        Duration::from_secs(30),
    )?;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("refused: instance id \"node1\" is held by member"), "{out}");
    assert!(!out.contains("instance index: 0"), "the refused instance never got an index:\n{out}");
    assert_eq!(last_block(&nodes[0]).map(|b| (b.0, b.2, b.3)), Some((0, 7, back)), "the layout did not change");
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
    // A static node takes no part in the dynamic index: registered with no workers.
    let s = wait_until(Duration::from_secs(20), "the static node registered", || {
        let s = n.status().ok()?;
        (s["members"].as_array()?.len() == 1).then_some(s)
    })?;
    assert_eq!(s["members"][0]["workers"], 0, "{s}");
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
