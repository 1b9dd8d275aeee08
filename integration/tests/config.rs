//! Configuration with real node processes: a TOML file, `CLUSTERFUNK_*` variables and flags, in
//! that order of precedence; bad input names the source, the key and the reason; a node that
//! listens on every interface never publishes `0.0.0.0` or port 0, and `--advertise` replaces
//! what it publishes.

use std::path::Path;
use std::time::Duration;

use clusterfunk_integration::{free_ports, http_get, logs, run_to_exit, wait_until, NodeProc};
use serde_json::Value;

const T: Duration = Duration::from_secs(40);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cf-node"))
}

/// `/usr/bin/env`, to start a node with variables of its own.
fn env_exe() -> &'static Path {
    Path::new("/usr/bin/env")
}

#[test]
fn bad_input_names_the_file_or_variable_the_key_and_the_reason() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "shards = 64\nvoterz = 3\n")?;
    let node = exe().to_string_lossy().to_string();
    let b = bad.to_string_lossy().to_string();
    let (code, out) = run_to_exit(exe(), &["--config", &b, "--no-mdns", "--traffic", "0"], T)?;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(&format!("{b}: voterz: unknown setting")), "{out}");

    std::fs::write(&bad, "gossip_interval = 250\n")?;
    let (code, out) = run_to_exit(exe(), &["--config", &b, "--no-mdns"], T)?;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("gossip_interval: \"250\" has no unit"), "{out}");

    std::fs::write(&bad, "suspect_after = \"3s\"\n")?;
    let (code, out) = run_to_exit(exe(), &["--config", &b, "--no-mdns"], T)?;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("down_after: 2s must be longer than suspect_after (3s)"), "{out}");

    let (code, out) = run_to_exit(env_exe(), &["CLUSTERFUNK_VOTERS=three", &node, "--no-mdns"], T)?;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("CLUSTERFUNK_VOTERS: \"three\" is not a whole number"), "{out}");
    let (code, out) = run_to_exit(env_exe(), &["CLUSTERFUNK_SHARDZ=3", &node, "--no-mdns"], T)?;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("CLUSTERFUNK_SHARDZ: unknown setting"), "{out}");

    let (code, out) = run_to_exit(exe(), &["--advertise", "0.0.0.0", "--no-mdns"], T)?;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("advertise: \"0.0.0.0\""), "{out}");
    Ok(())
}

fn me(s: &Value) -> Option<Value> {
    let id = s["node_id"].as_str()?;
    s["members"].as_array()?.iter().find(|m| m["id"] == id).cloned()
}

#[test]
fn file_then_environment_then_flags_and_no_wildcard_is_ever_published() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "name = \"cfgtest\"\nenv = \"lab\"\nshards = 32\nweight = 1\nzone = \"from-file\"\n\
         gossip_interval = \"100ms\"\nmdns = false\nbootstrap = true\nrebalance = \"manual\"\n",
    )?;
    let f = file.to_string_lossy().to_string();
    let ports = free_ports(4);
    let (p2p, http) = (ports[0], ports[1]);
    let mut a = NodeProc::new(
        exe(),
        dir.path().join("a"),
        format!("0.0.0.0:{p2p}"),
        format!("0.0.0.0:{http}"),
        &["--config", &f, "--zone", "from-flag", "--traffic", "0"],
    );
    a.prefix = vec![
        env_exe().to_string_lossy().to_string(),
        "CLUSTERFUNK_WEIGHT=3".into(),
        "CLUSTERFUNK_ZONE=from-env".into(),
    ];
    a.dashboard = format!("127.0.0.1:{http}");
    a.start()?;
    let fail = |e: anyhow::Error, nodes: &[NodeProc]| anyhow::anyhow!("{e}\n{}", logs(nodes));
    let s = wait_until(T, "the node up with a shard map and its addresses", || {
        let s = a.status().ok()?;
        let m = me(&s)?;
        (s["shard_map"]["shards"].as_u64()? > 0 && m["addr"].is_string() && m["dashboard"].is_string()).then_some(s)
    })
    .map_err(|e| fail(e, std::slice::from_ref(&a)))?;
    let m = me(&s).unwrap();
    assert_eq!(s["cluster"]["name"], "cfgtest", "from the file");
    assert_eq!(s["shard_map"]["shards"], 32, "from the file");
    assert_eq!(m["weight"], 3, "the environment wins over the file");
    assert_eq!(m["zone"], "from-flag", "a flag wins over the environment");
    for field in ["addr", "dashboard"] {
        let v = m[field].as_str().unwrap();
        assert!(!v.starts_with("0.0.0.0") && !v.ends_with(":0"), "{field} published as {v}");
    }
    assert!(m["dashboard"].as_str().unwrap().ends_with(&format!(":{http}")), "{m}");
    // The file's rebalancing mode is the new cluster's, written through Raft.
    wait_until(T, "the configured rebalancing mode in the cluster state", || {
        let (code, body) = http_get(&a.dashboard, "/cluster/shards").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["rebalance"] == "manual").then_some(())
    })
    .map_err(|e| fail(e, std::slice::from_ref(&a)))?;

    // Advertised: exactly that host is published, with the listening port: an address no
    // listener of this node has, so it can only come from --advertise.
    let (p2p_b, http_b) = (ports[2], ports[3]);
    let mut b = NodeProc::new(
        exe(),
        dir.path().join("b"),
        format!("0.0.0.0:{p2p_b}"),
        format!("0.0.0.0:{http_b}"),
        &[
            "--name",
            "cfgtest2",
            "--env",
            "lab",
            "--no-mdns",
            "--bootstrap",
            "--advertise",
            "192.0.2.10",
            "--traffic",
            "0",
        ],
    );
    b.dashboard = format!("127.0.0.1:{http_b}");
    b.start()?;
    let m = wait_until(T, "the advertised node's addresses", || {
        let m = me(&b.status().ok()?)?;
        (m["addr"].is_string() && m["dashboard"].is_string()).then_some(m)
    })
    .map_err(|e| fail(e, std::slice::from_ref(&b)))?;
    assert_eq!(m["addr"], format!("192.0.2.10:{p2p_b}").as_str(), "{m}");
    assert_eq!(m["dashboard"], format!("192.0.2.10:{http_b}").as_str(), "{m}");
    Ok(())
}
