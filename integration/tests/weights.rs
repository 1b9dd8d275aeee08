//! Shard weights with real node processes and the real `clusterfunk` CLI (as `cf-cli`).
//!
//! Three nodes start with `--shard-weight 5=20`: the shard list shows it, and every node's load
//! (the total weight of the shards it owns) ends within one heaviest shard of its quota. Bad
//! weights, unknown shards and missing tokens are refused with the reason and change nothing.
//! With manual rebalancing, one node's shards made heavier at run time give a plan that shows
//! each move's weight and every node's load before and after, and committing it balances the
//! loads; back in automatic mode, `clusterfunk shard weight` rebalances on its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterfunk_integration::{http, http_get, http_with_token, logs, run_cli, start_cluster, wait_until, NodeProc};
use serde_json::Value;

const SHARDS: u64 = 64;
const T: Duration = Duration::from_secs(40);
const TOKEN: &str = "weights-token-0123456789abcdef";

/// Runs the CLI (`cf-cli`) against `node` with `args`; returns its exit code and output.
fn run(node: &str, token: Option<&Path>, args: &[&str]) -> (i32, String) {
    run_cli(Path::new(env!("CARGO_BIN_EXE_cf-cli")), node, token, args)
}

/// `PUT path` with the management token; returns the status code and body.
fn put_with_token(addr: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    http_with_token(addr, "PUT", path, body, Some(TOKEN))
}

/// `GET /cluster/shards` of the node at `addr`.
fn shard_map(addr: &str) -> Option<Value> {
    let (code, body) = http_get(addr, "/cluster/shards").ok()?;
    (code == 200).then(|| serde_json::from_str::<Value>(&body).ok()).flatten()
}

fn weight(m: &Value, shard: u64) -> u64 {
    m["assignments"][shard as usize]["weight"].as_u64().unwrap_or(0)
}

/// Each owner's load (total weight of the shards it owns) in the shard list `m`.
fn loads(m: &Value) -> BTreeMap<String, u64> {
    let mut l = BTreeMap::new();
    for r in m["assignments"].as_array().into_iter().flatten() {
        if let Some(o) = r["owner"].as_str() {
            *l.entry(o.to_string()).or_insert(0) += r["weight"].as_u64().unwrap_or(0);
        }
    }
    l
}

/// Every shard owned, no handoff in flight, the total weight `total`, and each of the 3 nodes
/// (equal node weights) within `w_max` of its quota `total / 3`.
fn balanced(m: &Value, total: u64, w_max: u64) -> bool {
    let rows = m["assignments"].as_array().cloned().unwrap_or_default();
    let quota = total as f64 / 3.0;
    let l = loads(m);
    rows.len() as u64 == SHARDS
        && rows.iter().all(|r| r["handoff"].is_null() && !r["owner"].is_null())
        && m["total_weight"] == total
        && l.len() == 3
        && l.values().all(|v| (*v as f64 - quota).abs() <= w_max as f64)
}

fn start(dir: &Path) -> anyhow::Result<(Vec<NodeProc>, PathBuf)> {
    let tf = dir.join("token");
    std::fs::write(&tf, format!("{TOKEN}\n"))?;
    let tfs = tf.to_string_lossy().to_string();
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let args = [
        "--name",
        "wtest",
        "--env",
        "weights",
        "--no-mdns",
        "--shards",
        "64",
        "--traffic",
        "0",
        "--token-file",
        &tfs,
        "--shard-weight",
        "5=20",
    ];
    Ok((start_cluster(exe, dir, 3, &args)?, tf))
}

#[test]
fn weighted_shards_balance_by_load_set_by_config_and_at_run_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (nodes, tf) = start(dir.path())?;
    let fail = |e: anyhow::Error| anyhow::anyhow!("{e}\n{}", logs(&nodes));
    let via = nodes[1].dashboard.clone();

    eprintln!("--- the configured weight is committed, and loads are balanced by weight");
    let total = SHARDS - 1 + 20;
    let m = wait_until(T, "shard 5 at weight 20, loads balanced", || {
        let m = shard_map(&via)?;
        (weight(&m, 5) == 20 && balanced(&m, total, 20)).then_some(m)
    })
    .map_err(fail)?;
    let (code, out) = run(&via, None, &["shards"]);
    assert!(code == 0 && out.contains("WEIGHT"), "the shards table has a weight column: {out}");

    eprintln!("--- refusals: each exit 1 with the reason, nothing changes");
    let (code, out) = run(&via, Some(&tf), &["shard", "weight", "5", "0"]);
    assert_eq!((code, out.contains("not between 1 and 1000000")), (1, true), "weight 0: {out}");
    let (code, out) = run(&via, Some(&tf), &["shard", "weight", "5", "1000001"]);
    assert_eq!((code, out.contains("not between 1 and 1000000")), (1, true), "too heavy: {out}");
    let (code, out) = run(&via, Some(&tf), &["shard", "weight", "9999", "2"]);
    assert_eq!((code, out.contains("does not exist")), (1, true), "no such shard: {out}");
    let (code, out) = run(&via, None, &["shard", "weight", "5", "3"]);
    assert_eq!((code, out.contains("token")), (1, true), "no token: {out}");
    let (code, _) = http(&via, "PUT", "/cluster/shards/weights", r#"{"weights":{"5":3}}"#)?;
    assert_eq!(code, 401, "the bulk route without a token");
    let (code, body) = put_with_token(&via, "/cluster/shards/weights", r#"{"weights":{"five":3}}"#)?;
    assert_eq!((code, body.contains("not a shard number")), (400, true), "{body}");
    let (code, body) = put_with_token(&via, "/cluster/shards/weights", r#"{"weights":{"5":3,"05":20}}"#)?;
    assert_eq!((code, body.contains("shard 5 is given more than one weight")), (409, true), "{body}");
    let now = shard_map(&via).unwrap();
    assert_eq!((weight(&now, 5), &now["total_weight"]), (20, &m["total_weight"]), "nothing changed");

    eprintln!("--- manual rebalancing: one node's shards made heavier; the plan shows weights and loads");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "mode", "manual"]);
    assert_eq!(code, 0, "rebalance mode manual: {out}");
    let hot = m["assignments"][0]["owner"].as_str().unwrap().to_string();
    let heavier: BTreeMap<String, u32> = m["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["owner"] == hot.as_str() && r["shard"] != 5)
        .map(|r| (r["shard"].to_string(), 3))
        .collect();
    let body = serde_json::json!({ "weights": heavier }).to_string();
    let (code, out) = put_with_token(&via, "/cluster/shards/weights", &body)?;
    assert_eq!(code, 200, "bulk weights: {out}");
    let total = total + 2 * heavier.len() as u64;
    let before = wait_until(T, "the new weights committed", || {
        let m = shard_map(&via)?;
        (m["total_weight"] == total && m["rebalance"] == "manual").then_some(m)
    })
    .map_err(fail)?;
    let (code, out) = run(&via, Some(&tf), &["--json", "rebalance", "plan"]);
    assert_eq!(code, 0, "plan: {out}");
    let plan: Value = serde_json::from_str(out.trim())?;
    let plan = &plan["plan"];
    let moves = plan["moves"].as_array().cloned().unwrap_or_default();
    assert!(!moves.is_empty(), "the heavy node is over its quota: {plan}");
    let mut moved = 0;
    for mv in &moves {
        let s = mv["shard"].as_u64().unwrap();
        assert_eq!(mv["from"], hot.as_str(), "only the heavy node gives shards up: {plan}");
        assert_eq!(mv["weight"].as_u64(), Some(weight(&before, s)), "a move shows its shard's weight: {plan}");
        moved += weight(&before, s);
    }
    assert_eq!(plan["moved_weight"], moved, "{plan}");
    let plan_loads = plan["loads"].as_array().cloned().unwrap_or_default();
    assert_eq!(plan_loads.len(), 3, "a load row per node: {plan}");
    let now = loads(&before);
    let quota = total as f64 / 3.0;
    for l in &plan_loads {
        let node = l["node"].as_str().unwrap();
        assert_eq!(l["before"].as_u64(), now.get(node).copied(), "load now, as the shard list has it: {plan}");
        assert!((l["quota"].as_u64().unwrap() as f64 - quota).abs() <= 0.5, "{plan}");
        assert!((l["after"].as_u64().unwrap() as f64 - quota).abs() <= 20.0, "planned load within w_max: {plan}");
    }
    assert_eq!(shard_map(&via).unwrap()["epoch"], before["epoch"], "a plan moves nothing");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "plan"]);
    assert!(code == 0 && out.contains("LOAD AFTER") && out.contains("WEIGHT"), "{out}");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "commit", plan["id"].as_str().unwrap()]);
    assert_eq!(code, 0, "commit: {out}");
    let after = wait_until(T, "the committed moves handed off, loads balanced", || {
        let m = shard_map(&via)?;
        balanced(&m, total, 20).then_some(m)
    })
    .map_err(fail)?;
    for mv in &moves {
        let s = mv["shard"].as_u64().unwrap() as usize;
        assert_eq!(after["assignments"][s]["owner"], mv["to"], "shard {s}: the commit makes the plan");
    }

    eprintln!("--- automatic again: a weight set by the CLI rebalances on its own");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "mode", "auto"]);
    assert_eq!(code, 0, "rebalance mode auto: {out}");
    let light = loads(&after).into_iter().min_by_key(|(_, l)| *l).unwrap().0;
    let target = after["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["owner"] != light.as_str() && r["weight"] == 1)
        .and_then(|r| r["shard"].as_u64())
        .unwrap();
    let (code, out) = run(&nodes[2].dashboard, Some(&tf), &["shard", "weight", &target.to_string(), "30"]);
    assert_eq!(code, 0, "shard weight through another node: {out}");
    let total = total + 29;
    wait_until(T, "balanced with the 30", || {
        let m = shard_map(&nodes[0].dashboard)?;
        (weight(&m, target) == 30 && balanced(&m, total, 30)).then_some(())
    })
    .map_err(fail)?;
    Ok(())
}
