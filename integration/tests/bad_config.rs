//! A config that cannot work is refused at start with a message naming the field and the reason.

use std::time::Duration;

use clusterfunk_integration::{free_port, run_to_exit, wait_until, NodeProc};

fn exe() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_cf-node"))
}

fn refused(args: &[&str], field: &str) {
    let (code, out) = run_to_exit(exe(), args, Duration::from_secs(20)).expect("runs");
    assert_eq!(code, Some(2), "exit code for {args:?}; output:\n{out}");
    assert!(out.contains(field), "message for {args:?} names {field:?}:\n{out}");
}

#[test]
fn invalid_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    let d = d.to_str().unwrap();
    refused(&["--shards", "0", "--data-dir", d, "--no-mdns"], "shards: 0");
    refused(&["--weight", "0", "--data-dir", d, "--no-mdns"], "weight: 0");
    refused(&["--voters", "4", "--data-dir", d, "--no-mdns"], "voters: 4");
    refused(&["--listen", "not-an-address", "--data-dir", d, "--no-mdns"], "listen:");
    refused(&["--name", "bad/name", "--data-dir", d, "--no-mdns"], "name:");
}

#[test]
fn unusable_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    refused(&["--data-dir", file.to_str().unwrap(), "--no-mdns", "--listen", "127.0.0.1:0"], "data_dir");
}

#[test]
fn bootstrap_twice_and_other_cluster_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let dash = format!("127.0.0.1:{}", free_port());
    let mut node = NodeProc::new(
        exe(),
        data.clone(),
        "127.0.0.1:0".into(),
        dash,
        &["--name", "first", "--no-mdns", "--shards", "8"],
    );
    node.start_with(&["--bootstrap"]).unwrap();
    wait_until(Duration::from_secs(30), "the node to take a shard map", || {
        node.status().ok().filter(|s| s["shard_map"]["epoch"].as_u64() > Some(0))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail(30)));
    node.kill();
    let d = data.to_str().unwrap();
    refused(&["--name", "first", "--bootstrap", "--data-dir", d, "--no-mdns", "--listen", "127.0.0.1:0"], "bootstrap:");
    refused(
        &["--name", "second", "--data-dir", d, "--no-mdns", "--listen", "127.0.0.1:0"],
        "belongs to cluster first/dev",
    );
}

#[test]
fn a_failed_fsync_ends_the_process_with_code_70() {
    // The store fails its fourth durable write (the bootstrap writes more than that): whatever
    // the runtime wrapper (the demo runs under SystemRunner::block_on), the process must exit.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--bootstrap", "--no-mdns", "--data-dir", d.to_str().unwrap(), "--listen", &listen];
    let (code, out) =
        run_to_exit(exe(), &[&args[..], &["--fail-disk-after", "3"]].concat(), Duration::from_secs(30)).expect("runs");
    assert_eq!(code, Some(70), "exit code after a failed fsync; output:\n{out}");
    assert!(out.contains("storage failure"), "the reason is logged:\n{out}");
}

#[test]
fn a_seed_that_does_not_resolve_is_retried_and_shown_not_fatal() {
    // `.invalid` never resolves (RFC 2606). The node starts, serves, and says what it retries.
    let dir = tempfile::tempdir().unwrap();
    let dash = format!("127.0.0.1:{}", free_port());
    let extra = ["--no-mdns", "--shards", "8", "--bootstrap", "--join", "seed.clusterfunk.invalid:7000"];
    let mut node = NodeProc::new(exe(), dir.path().join("n"), "127.0.0.1:0".into(), dash, &extra);
    node.start().unwrap();
    let seed = wait_until(Duration::from_secs(30), "the seed to be retried", || {
        let s = node.status().ok()?;
        let seed = s["transport"]["seeds"][0].clone();
        (s["shard_map"]["epoch"].as_u64() > Some(0) && seed["failures"].as_u64() >= Some(2)).then_some(seed)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail(30)));
    assert_eq!(seed["seed"], "seed.clusterfunk.invalid:7000");
    assert!(seed["error"].as_str().is_some_and(|e| !e.is_empty()), "{seed}");
    let log = node.log_tail(200);
    assert!(
        log.contains("cannot discover through this source") && log.contains("seed.clusterfunk.invalid:7000"),
        "{}",
        node.log_tail(30)
    );
}
