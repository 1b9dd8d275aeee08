//! A rolling upgrade, with real node processes: one node stands in for the previous build (it
//! announces wire protocol 1 at its handshakes). While it is a member, the leader writes no
//! change that version cannot read, and says which node holds it back; once the node is
//! restarted on the current build, the same change goes through.

use std::path::Path;
use std::time::Duration;

use clusterfunk_integration::{logs, run_to_exit, start_cluster, wait_formed, wait_until, NodeProc};
use serde_json::Value;

const T: Duration = Duration::from_secs(40);
const TOKEN: &str = "upgrade-token-0123456789";

fn cli(node: &str, token: &Path, args: &[&str]) -> (i32, String) {
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-cli"));
    let t = token.to_string_lossy().to_string();
    let mut all = vec!["--node", node, "--token-file", t.as_str()];
    all.extend(args);
    let (code, out) = run_to_exit(exe, &all, Duration::from_secs(90)).expect("the cli runs");
    (code.unwrap_or(-1), out)
}

fn wire_of(n: &NodeProc, id: &str) -> Option<u64> {
    let (code, body) = clusterfunk_integration::http_get(&n.dashboard, "/cluster/members").ok()?;
    let ms: Vec<Value> = (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()?;
    ms.iter().find(|m| m["id"] == id)?["wire"].as_u64()
}

#[test]
fn a_change_an_old_node_cannot_read_waits_for_its_upgrade() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tf = dir.path().join("token");
    std::fs::write(&tf, TOKEN)?;
    let t = tf.to_string_lossy().to_string();
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let args =
        ["--name", "upgrade", "--env", "lab", "--no-mdns", "--shards", "32", "--traffic", "0", "--token-file", &t];
    let mut nodes = start_cluster(exe, dir.path(), 3, &args)?;
    let fail = |e: anyhow::Error, nodes: &[NodeProc]| anyhow::anyhow!("{e}\n{}", logs(nodes));
    let ids = wait_formed(&nodes, 32, T).map_err(|e| fail(e, &nodes))?;
    let leader = nodes[0].status()?["leader"].as_str().unwrap_or_default().to_string();
    let old = (0..3).find(|i| ids[*i] != leader).unwrap();
    let target = (0..3).find(|i| *i != old && ids[*i] != leader).unwrap();
    let via = nodes[target].dashboard.clone();

    eprintln!("--- node {} restarts as the previous build (wire protocol 1)", ids[old]);
    nodes[old].kill();
    nodes[old].start_with(&["--announce-wire-version", "1"])?;
    wait_until(T, "the leader sees wire 1 for the old node", || {
        let ln = nodes.iter().find(|n| n.status().ok().is_some_and(|s| s["node_id"] == leader.as_str()))?;
        (wire_of(ln, &ids[old]) == Some(1)).then_some(())
    })
    .map_err(|e| fail(e, &nodes))?;
    let (code, out) = cli(&via, &tf, &["drain", &ids[target]]);
    assert_eq!(code, 1, "a drain (SetDrained, wire 2) waits for the old node: {out}");
    assert!(out.contains(&format!("node {} speaks wire protocol 1", ids[old])), "{out}");
    let (code, out) = cli(&via, &tf, &["members"]);
    assert!(code == 0 && out.contains("WIRE"), "{out}");

    eprintln!("--- upgraded: the same change goes through");
    nodes[old].kill();
    nodes[old].start()?;
    wait_until(T, "the leader sees wire 2 for the upgraded node", || {
        let ln = nodes.iter().find(|n| n.status().ok().is_some_and(|s| s["node_id"] == leader.as_str()))?;
        (wire_of(ln, &ids[old]) == Some(u64::from(clusterfunk_actors::wire::VERSION))).then_some(())
    })
    .map_err(|e| fail(e, &nodes))?;
    let (code, out) = cli(&via, &tf, &["drain", &ids[target]]);
    assert_eq!(code, 0, "drain after the upgrade: {out}\n{}", logs(&nodes));
    let (code, out) = cli(&via, &tf, &["undrain", &ids[target]]);
    assert_eq!(code, 0, "undrain: {out}");
    Ok(())
}
