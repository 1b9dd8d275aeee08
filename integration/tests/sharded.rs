//! Sharded actors across real processes: a key's messages from every node reach one instance;
//! after its owner is killed the key is served again (by a fresh instance) within the failover.

use std::time::{Duration, Instant};

use clusterfunk_integration::{http, logs, start_cluster, wait_formed, wait_until, NodeProc};
use serde_json::Value;

fn add(node: &NodeProc, key: &str) -> Option<Value> {
    let (code, body) = http(&node.service().ok()?, "POST", &format!("/counter/{key}"), "").ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

#[test]
fn one_instance_per_key_and_failover() -> anyhow::Result<()> {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let dir = tempfile::tempdir()?;
    let mut nodes = start_cluster(
        exe,
        dir.path(),
        3,
        &["--name", "sharded", "--no-mdns", "--shards", "64", "--traffic", "0", "--http", "127.0.0.1:0"],
    )?;
    let ids = wait_formed(&nodes, 64, Duration::from_secs(30))?;

    eprintln!("--- a message for k from each node reaches the same instance");
    let mut answers = Vec::new();
    for n in &nodes {
        answers.push(add(n, "k").ok_or_else(|| anyhow::anyhow!("add failed\n{}", logs(&nodes)))?);
    }
    let values: Vec<u64> = answers.iter().map(|a| a["value"].as_u64().unwrap_or(0)).collect();
    assert_eq!(values, vec![1, 2, 3], "one instance counted all three: {answers:?}");
    // A cross-site form post cannot count (the route takes JSON only), and counts nothing.
    let form = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(nodes[0].service()?)?;
        let ct = "application/x-www-form-urlencoded";
        write!(s, "POST /counter/k HTTP/1.0\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: 3\r\n\r\na=1")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        resp
    };
    assert!(form.starts_with("HTTP/1.0 415") || form.starts_with("HTTP/1.1 415"), "{form}");
    let again = add(&nodes[0], "k").ok_or_else(|| anyhow::anyhow!("add failed"))?;
    assert_eq!(again["value"], 4, "the form post counted nothing: {again}");
    let owner = answers[0]["node"].as_str().unwrap_or_default().to_string();
    assert!(answers.iter().all(|a| a["node"] == owner.as_str()), "{answers:?}");

    eprintln!("--- kill the owner {owner}; k is served again");
    let oi = ids.iter().position(|id| *id == owner).expect("the owner is one of ours");
    nodes[oi].kill();
    let killed = Instant::now();
    let survivor = &nodes[(oi + 1) % 3];
    // Once the survivor has seen the connection close, ONE request for k must succeed: it waits
    // (bounded) for the map that moves k's shard instead of failing.
    wait_until(Duration::from_secs(10), "the survivor to see the owner gone", || {
        (survivor.status().ok()?["transport"]["connected_peers"].as_u64()? == 1).then_some(())
    })?;
    let again =
        add(survivor, "k").ok_or_else(|| anyhow::anyhow!("one request failed instead of waiting\n{}", logs(&nodes)))?;
    eprintln!("k served again after {:?} by {}", killed.elapsed(), again["node"]);
    assert_ne!(again["node"], owner.as_str());
    assert_eq!(again["value"], 1, "a fresh instance (the demo does not persist counters)");
    Ok(())
}
