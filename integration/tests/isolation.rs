//! Clusters never mix: a node of another cluster is refused at the identify handshake, and a
//! node with another secret cannot connect at all, while a correctly configured node joins.

use std::time::Duration;

use clusterfunk_integration::{free_ports, view, wait_until, NodeProc};

const T: Duration = Duration::from_secs(30);

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn node(dir: &std::path::Path, name: &str, ports: (u16, u16), args: &[&str]) -> NodeProc {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let mut all = vec!["--no-mdns", "--shards", "16"];
    all.extend_from_slice(args);
    NodeProc::new(exe, dir.join(name), format!("127.0.0.1:{}", ports.0), format!("127.0.0.1:{}", ports.1), &all)
}

#[test]
fn another_cluster_name_is_refused_at_the_handshake() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = free_ports(6);
    let seed = format!("127.0.0.1:{}", p[0]);
    let mut a = node(dir.path(), "a", (p[0], p[1]), &["--name", "shop", "--env", "dev"]);
    let mut b = node(dir.path(), "b", (p[2], p[3]), &["--name", "shop", "--env", "production", "--join", &seed]);
    let mut c = node(dir.path(), "c", (p[4], p[5]), &["--name", "shop", "--env", "dev", "--join", &seed]);
    a.start_with(&["--bootstrap"])?;
    b.start_with(&["--bootstrap"])?;
    c.start()?;
    let logs = || [&a, &b, &c].iter().map(|n| n.log_tail(20)).collect::<Vec<_>>().join("\n-----\n");
    let s = wait_until(T, "shop/dev to have 2 members and to have refused shop/production", || {
        let s = a.status().ok()?;
        (view::members_in(&s, "up").len() == 2 && s["transport"]["foreign_peers"].as_u64()? >= 1).then_some(s)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    let b_id = b.status()?["node_id"].as_str().unwrap_or_default().to_string();
    assert!(!s["members"].to_string().contains(&b_id), "shop/production never joins shop/dev: {s}");
    // b has a seed, so its bootstrap first looks around (10 s when it hears of nobody of its
    // own cluster) and then creates shop/production alone.
    let bs = wait_until(T, "shop/production to form alone", || {
        let bs = b.status().ok()?;
        (view::leader(&bs).is_some()).then_some(bs)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    assert_eq!(view::members_in(&bs, "up"), vec![b_id], "shop/production stays alone: {bs}");
    Ok(())
}

#[test]
fn a_wrong_secret_cannot_connect() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = free_ports(6);
    let seed = format!("127.0.0.1:{}", p[0]);
    let (s1, s2) = ("11".repeat(32), "22".repeat(32));
    let common = ["--name", "secret", "--env", "test"];
    let with = |s: &str, more: &[&str]| -> Vec<String> {
        common.iter().copied().chain(["--secret", s]).chain(more.iter().copied()).map(str::to_string).collect()
    };
    let a_args = with(&s1, &[]);
    let good_args = with(&s1, &["--join", &seed]);
    let bad_args = with(&s2, &["--join", &seed]);
    let mut a = node(dir.path(), "a", (p[0], p[1]), &refs(&a_args));
    let mut good = node(dir.path(), "good", (p[2], p[3]), &refs(&good_args));
    let mut bad = node(dir.path(), "bad", (p[4], p[5]), &refs(&bad_args));
    a.start_with(&["--bootstrap"])?;
    bad.start()?;
    good.start()?;
    let logs = || [&a, &good, &bad].iter().map(|n| n.log_tail(20)).collect::<Vec<_>>().join("\n-----\n");
    let s = wait_until(T, "the node with the right secret to join", || {
        let s = a.status().ok()?;
        (view::members_in(&s, "up").len() == 2).then_some(s)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    let bad_status = bad.status()?;
    let bad_id = bad_status["node_id"].as_str().unwrap_or_default().to_string();
    assert!(!s["members"].to_string().contains(&bad_id), "the wrong secret never joins: {s}");
    assert_eq!(bad_status["transport"]["connected_peers"], 0, "the wrong secret has no connection: {bad_status}");
    // In no member list of any good node: the status, the management API, the shard map (which
    // a node answers once it knows the Raft leader: the node that just joined may not yet).
    wait_until(T, "both good nodes to know the leader", || {
        [&a, &good].iter().all(|n| n.status().ok().and_then(|s| view::leader(&s)).is_some()).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    for n in [&a, &good] {
        for path in ["/api/cluster", "/cluster/members", "/cluster/shards"] {
            let (code, body) = clusterfunk_integration::http_get(&n.dashboard, path)?;
            assert_eq!(code, 200, "{path}: {body}");
            assert!(!body.contains(&bad_id), "{path} of {} lists the wrong-secret node: {body}", n.dashboard);
        }
    }
    Ok(())
}
