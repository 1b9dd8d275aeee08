//! Membership by command, with real node processes and the real `clusterfunk` CLI (as `cf-cli`).
//!
//! - The limbo is gone: 3 voters and a learner; one voter dies for good (its data dir wiped);
//!   `member replace` gives its seat to the learner; then a second original voter dies and the
//!   two left still elect a leader and serve every shard. Before the replace, the same second
//!   loss would have left 1 live voter of 3: no leader, ever.
//! - Production mode: an unlisted node is refused and never listed; every command works and
//!   every refusal names its reason with exit code 1; no token or a wrong one changes nothing.
//!   With manual rebalancing, `rebalance plan` shows exactly the moves `rebalance commit` then
//!   makes; `shard move` pins a shard and it moves there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterfunk_integration::{http_get, logs, run_cli, start_cluster, wait_until, NodeProc};
use serde_json::Value;

const SHARDS: u64 = 64;
const T: Duration = Duration::from_secs(40);
const TOKEN: &str = "test-token-0123456789abcdef";

fn cli() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cf-cli"))
}

/// Runs the CLI (`cf-cli`) against `node` with `args`; returns its exit code and output.
fn run(node: &str, token: Option<&Path>, args: &[&str]) -> (i32, String) {
    run_cli(cli(), node, token, args)
}

fn members(node: &NodeProc) -> Option<Vec<Value>> {
    let (code, body) = http_get(&node.dashboard, "/cluster/members").ok()?;
    (code == 200).then(|| serde_json::from_str::<Vec<Value>>(&body).ok()).flatten()
}

/// `GET /cluster/shards` of the node at `addr`.
fn shard_map(addr: &str) -> Option<Value> {
    let (code, body) = http_get(addr, "/cluster/shards").ok()?;
    (code == 200).then(|| serde_json::from_str::<Value>(&body).ok()).flatten()
}

fn with_role(ms: &[Value], role: &str) -> Vec<String> {
    let mut v: Vec<String> =
        ms.iter().filter(|m| m["role"] == role).filter_map(|m| m["id"].as_str().map(str::to_string)).collect();
    v.sort();
    v
}

fn node_id(n: &NodeProc) -> Option<String> {
    n.status().ok()?["node_id"].as_str().map(str::to_string)
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let p = dir.join(format!("token-{}", token.len()));
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

/// Every live node agrees on a leader and the shards are all owned by `owners`.
fn serving(nodes: &[&NodeProc], owners: &[String]) -> Option<String> {
    let ss: Vec<Value> = nodes.iter().map(|n| n.status().ok()).collect::<Option<_>>()?;
    let leader = ss[0]["leader"].as_str()?.to_string();
    ss.iter()
        .all(|s| {
            let o = s["shard_map"]["owners"].as_object().cloned().unwrap_or_default();
            let mut ids: Vec<String> = o.keys().cloned().collect();
            ids.sort();
            s["leader"].as_str() == Some(leader.as_str())
                && ids == owners
                && o.values().filter_map(Value::as_u64).sum::<u64>() == SHARDS
        })
        .then_some(leader)
}

/// `n` node processes of environment `env` with the test token (node 0 bootstraps); returns
/// them and the token file.
fn start(dir: &Path, n: usize, env: &str, extra: &[&str]) -> anyhow::Result<(Vec<NodeProc>, PathBuf)> {
    let tf = token_file(dir, TOKEN);
    let tfs = tf.to_string_lossy().to_string();
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let mut args = vec!["--name", "mtest", "--env", env, "--no-mdns", "--shards", "64", "--traffic", "0"];
    args.extend(["--token-file", tfs.as_str()]);
    args.extend(extra);
    Ok((start_cluster(exe, dir, n, &args)?, tf))
}

#[test]
fn replace_a_dead_voter_and_survive_the_next_loss() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut nodes, tf) = start(dir.path(), 4, "limbo", &[])?;
    let fail = |e: anyhow::Error, nodes: &[NodeProc]| anyhow::anyhow!("{e}\n{}", logs(nodes));

    eprintln!("--- 3 voters and 1 learner");
    let ids: Vec<String> =
        wait_until(T, "node ids", || nodes.iter().map(node_id).collect()).map_err(|e| fail(e, &nodes))?;
    let ms = wait_until(T, "3 voters and a learner", || {
        let ms = members(&nodes[0])?;
        (with_role(&ms, "voter").len() == 3 && with_role(&ms, "learner").len() == 1).then_some(ms)
    })
    .map_err(|e| fail(e, &nodes))?;
    let voters = with_role(&ms, "voter");
    let learner = with_role(&ms, "learner")[0].clone();
    let leader = ms.iter().find(|m| m["leader"] == true).and_then(|m| m["id"].as_str()).unwrap().to_string();
    let idx = |id: &str| ids.iter().position(|i| i == id).unwrap();

    eprintln!("--- a voter dies for good: killed, its data dir wiped");
    let dead = voters.iter().find(|v| **v != leader).unwrap().clone();
    nodes[idx(&dead)].kill();
    std::fs::remove_dir_all(&nodes[idx(&dead)].data_dir)?;
    let live: Vec<usize> = (0..4).filter(|i| *i != idx(&dead)).collect();
    // Through a follower: the request is relayed to the leader, and runs longer than one RPC
    // (the liveness probe waits a second for the dead voter), so the relay polls for it.
    let via = nodes[*live.iter().find(|i| ids[**i] != leader).unwrap()].dashboard.clone();
    wait_until(T, "the dead voter seen down", || {
        let ms = members(&nodes[live[0]])?;
        ms.iter().any(|m| m["id"] == dead.as_str() && m["state"] == "down").then_some(())
    })
    .map_err(|e| fail(e, &nodes))?;

    eprintln!("--- refusals while it is dead: each exit 1 with the reason, nothing changes");
    let other_live_voter = voters.iter().find(|v| **v != dead && **v != leader).unwrap();
    let (code, out) = run(&via, Some(&tf), &["member", "remove", other_live_voter]);
    assert_eq!(code, 1, "removing a live voter would leave 1 live of 2: {out}");
    assert!(out.contains("not a quorum"), "{out}\n{}", logs(&nodes));
    let (code, out) = run(&via, Some(&tf), &["member", "demote", &learner]);
    assert_eq!((code, out.contains("is not a voter")), (1, true), "{out}");
    let (code, out) = run(&via, None, &["member", "replace", &dead, "--by", &learner]);
    assert_eq!((code, out.contains("token")), (1, true), "no token: {out}");
    let wrong = token_file(dir.path(), "a-wrong-token-of-some-length");
    let (code, out) = run(&via, Some(&wrong), &["member", "replace", &dead, "--by", &learner]);
    assert_eq!((code, out.contains("wrong or missing management token")), (1, true), "{out}");
    let ms = members(&nodes[live[0]]).unwrap();
    assert_eq!(with_role(&ms, "voter"), voters, "nothing changed");

    eprintln!("--- member replace {dead} --by {learner}");
    let (code, out) = run(&via, Some(&tf), &["member", "replace", &dead, "--by", &learner]);
    assert_eq!(code, 0, "replace: {out}\n{}", logs(&nodes));
    let mut expect: Vec<String> = voters.iter().filter(|v| **v != dead).cloned().chain([learner.clone()]).collect();
    expect.sort();
    for i in &live {
        wait_until(T, "3 live voters, the dead one gone", || {
            let ms = members(&nodes[*i])?;
            (with_role(&ms, "voter") == expect && !ms.iter().any(|m| m["id"] == dead.as_str())).then_some(())
        })
        .map_err(|e| fail(e, &nodes))?;
    }

    eprintln!("--- a second original voter dies: the leader {leader}");
    nodes[idx(&leader)].kill();
    let rest: Vec<&NodeProc> = live.iter().filter(|i| **i != idx(&leader)).map(|i| &nodes[*i]).collect();
    let mut owners: Vec<String> = rest.iter().map(|n| node_id(n).unwrap()).collect();
    owners.sort();
    let new_leader = wait_until(Duration::from_secs(60), "a new leader and every shard served by the two left", || {
        serving(&rest, &owners)
    })
    .map_err(|e| fail(e, &nodes))?;
    assert_ne!(new_leader, leader);
    eprintln!("new leader {new_leader}; {SHARDS} shards served by {owners:?}");

    eprintln!("--- and now no change may cost the quorum: removing a live voter is refused");
    let via = rest[0].dashboard.clone();
    let (code, out) = run(&via, Some(&tf), &["member", "remove", &owners[0]]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a quorum") || out.contains("is the leader"), "{out}");
    Ok(())
}

#[test]
fn production_mode_every_command_and_refusal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // One ownership journal for all (each line is one append): checked for two owners at the end.
    let journal = dir.path().join("journal.jsonl");
    let j = journal.to_string_lossy().to_string();
    let (mut nodes, tf) = start(dir.path(), 3, "prod", &["--mode", "production", "--journal", &j])?;
    let fail = |e: anyhow::Error, nodes: &[NodeProc]| anyhow::anyhow!("{e}\n{}", logs(nodes));
    let ids: Vec<String> =
        wait_until(T, "node ids", || nodes.iter().map(node_id).collect()).map_err(|e| fail(e, &nodes))?;
    let via = nodes[0].dashboard.clone();

    eprintln!("--- unlisted nodes are refused, counted, and never members");
    wait_until(T, "both others refused", || {
        let s = nodes[0].status().ok()?;
        let un: Vec<String> = serde_json::from_value(s["raft"]["unadmitted"].clone()).ok()?;
        (un.contains(&ids[1]) && un.contains(&ids[2])).then_some(())
    })
    .map_err(|e| fail(e, &nodes))?;
    let ms = members(&nodes[0]).unwrap();
    assert_eq!(ms.len(), 1, "only the bootstrap node is a member: {ms:?}");
    let (code, out) = run(&via, None, &["--json", "members"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(&ids[1]), "an unlisted node is never listed: {out}");
    let (code, out) = run(&via, None, &["status"]);
    assert_eq!((code, out.contains(&ids[0])), (0, true), "{out}");

    eprintln!("--- usage, unreachable, no token");
    assert_eq!(run(&via, Some(&tf), &["member"]).0, 2, "usage");
    assert_eq!(run(&via, Some(&tf), &["frobnicate"]).0, 2, "usage");
    let dead_port = clusterfunk_integration::free_port();
    let (code, out) = run(&format!("127.0.0.1:{dead_port}"), Some(&tf), &["members"]);
    assert_eq!((code, out.contains("unreachable")), (3, true), "{out}");
    let (code, out) = run(&via, None, &["member", "add", &ids[1]]);
    assert_eq!(code, 1, "{out}");
    // Without a token: 401 before anything of the request is read (a bad body changes nothing).
    for (method, path, body) in [
        ("POST", "/cluster/members", ""),
        ("POST", "/cluster/members", r#"{"node": "x"}"#),
        ("PUT", "/cluster/shards/0", r#"{"to": null}"#),
        ("POST", "/cluster/rebalance/commit", "{}"),
        ("POST", "/cluster/leader/step-down", ""),
    ] {
        let (code, answer) = clusterfunk_integration::http(&via, method, path, body)?;
        assert_eq!(code, 401, "{method} {path} without a token: {answer}");
    }
    assert_eq!(members(&nodes[0]).unwrap().len(), 1, "nothing changed");

    eprintln!("--- add (by id and by address), promote");
    let (code, out) = run(&via, Some(&tf), &["member", "add", &ids[1]]);
    assert_eq!(code, 0, "add: {out}\n{}", logs(&nodes));
    let (code, out) = run(&via, Some(&tf), &["member", "add", &nodes[2].listen]);
    assert_eq!(code, 0, "add by address: {out}\n{}", logs(&nodes));
    let ms = members(&nodes[0]).unwrap();
    assert_eq!(with_role(&ms, "learner"), {
        let mut l = vec![ids[1].clone(), ids[2].clone()];
        l.sort();
        l
    });
    let (code, out) = run(&via, Some(&tf), &["member", "add", &ids[1]]);
    assert_eq!((code, out.contains("already a member")), (1, true), "{out}");
    for id in &ids[1..] {
        let (code, out) = run(&via, Some(&tf), &["member", "promote", id]);
        assert_eq!(code, 0, "promote: {out}\n{}", logs(&nodes));
    }
    let (code, out) = run(&via, Some(&tf), &["member", "promote", &ids[1]]);
    assert_eq!((code, out.contains("is not a learner")), (1, true), "{out}");
    let mut all = ids.clone();
    all.sort();
    wait_until(T, "3 voters serving every shard", || {
        let ms = members(&nodes[0])?;
        let refs: Vec<&NodeProc> = nodes.iter().collect();
        (with_role(&ms, "voter") == all).then(|| serving(&refs, &all)).flatten()
    })
    .map_err(|e| fail(e, &nodes))?;

    eprintln!("--- shards: the same map, as of now, from every node");
    let answers = wait_until(T, "every node answering the same map", || {
        let a: Vec<Value> = nodes
            .iter()
            .map(|n| {
                let (code, out) = run(&n.dashboard, None, &["--json", "shards"]);
                (code == 0).then(|| serde_json::from_str::<Value>(&out).ok()).flatten()
            })
            .collect::<Option<_>>()?;
        a.iter().all(|x| x["epoch"] == a[0]["epoch"] && x["assignments"] == a[0]["assignments"]).then_some(a)
    })
    .map_err(|e| fail(e, &nodes))?;
    assert_eq!(answers[0]["assignments"].as_array().map(Vec::len), Some(SHARDS as usize));
    // (Waited for: a lease lapse on a loaded machine can move a node's shards for a moment.)
    let (out, rows) = wait_until(T, "shards --of a node that owns some", || {
        let (code, out) = run(&via, None, &["--json", "shards", "--of", &ids[1]]);
        let mine: Value = (code == 0).then(|| serde_json::from_str(&out).ok()).flatten()?;
        let rows = mine["assignments"].as_array()?.clone();
        (!rows.is_empty()).then_some((out, rows))
    })
    .map_err(|e| fail(e, &nodes))?;
    assert!(rows.iter().all(|r| r["owner"] == ids[1].as_str()), "only its shards: {out}");
    let (code, out) = run(&via, None, &["shards"]);
    assert!(code == 0 && out.contains("SHARD") && out.contains(&ids[2]), "a table: {out}");

    eprintln!("--- drain, undrain; a relayed request through a follower; the leader's events");
    let leader = nodes[0].status()?["leader"].as_str().unwrap().to_string();
    let follower = nodes.iter().find(|n| node_id(n).as_deref() != Some(leader.as_str())).unwrap();
    let leader_node = nodes.iter().find(|n| node_id(n).as_deref() == Some(leader.as_str())).unwrap();
    let victim = ids.iter().find(|i| **i != leader).unwrap().clone();
    let mut events = std::process::Command::new(cli())
        .args(["--node", &leader_node.dashboard, "--json", "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let hello = rx.recv_timeout(T)?;
    assert!(hello.contains("\"connected\"") && hello.contains(&leader), "the stream says who answers: {hello}");
    let (code, out) = run(&follower.dashboard, Some(&tf), &["drain", &victim]);
    assert_eq!(code, 0, "drain through a follower: {out}");
    let deadline = std::time::Instant::now() + T;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("rebalance_started") && l.contains(&victim)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no rebalance event for the drain streamed; got {seen:?}"),
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let (code, out) = run(&via, None, &["events", "--limit", "1"]);
    assert!(code == 0 && out.starts_with("connected "), "--limit 1 ends after the first event: {out}");
    wait_until(T, "the drained node owns no shard", || {
        let ms = members(&nodes[0])?;
        ms.iter().any(|m| m["id"] == victim.as_str() && m["drained"] == true && m["shards"] == 0).then_some(())
    })
    .map_err(|e| fail(e, &nodes))?;
    let s0 = shard_map(&via).unwrap()["assignments"][0]["shard"].as_u64().unwrap().to_string();
    let (code, out) = run(&via, Some(&tf), &["shard", "move", &s0, "--to", &victim]);
    assert_eq!((code, out.contains("is draining")), (1, true), "a move to a drained node: {out}");

    eprintln!("--- manual rebalancing: undrain gives nothing until a plan is committed, and the commit makes exactly the plan");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "mode", "manual"]);
    assert_eq!(code, 0, "rebalance mode manual: {out}");
    let (code, out) = run(&via, Some(&tf), &["undrain", &victim]);
    assert_eq!(code, 0, "undrain: {out}");
    let before = wait_until(T, "no handoff in flight, rebalancing manual", || {
        let m = shard_map(&via)?;
        let rows = m["assignments"].as_array()?;
        (m["rebalance"] == "manual" && rows.iter().all(|r| r["handoff"].is_null())).then_some(m)
    })
    .map_err(|e| fail(e, &nodes))?;
    let (code, out) = run(&via, Some(&tf), &["--json", "rebalance", "plan"]);
    assert_eq!(code, 0, "plan: {out}");
    let plan: Value = serde_json::from_str(out.trim())?;
    let plan = &plan["plan"];
    let moves = plan["moves"].as_array().cloned().unwrap_or_default();
    assert!(!moves.is_empty(), "the undrained node's share is planned: {plan}");
    assert!(moves.iter().all(|m| m["to"] == victim.as_str() && m["reason"] == "over_quota"), "{plan}");
    assert_eq!(shard_map(&via).unwrap()["epoch"], before["epoch"], "a plan moves nothing");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "plan"]);
    assert!(code == 0 && out.contains("over_quota") && out.contains("rebalance commit"), "{out}");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "commit", "0000000000000000"]);
    assert_eq!((code, out.contains("changed since")), (1, true), "a stale plan id: {out}");
    let id = plan["id"].as_str().unwrap();
    let (code, out) = run(&follower.dashboard, Some(&tf), &["rebalance", "commit", id]);
    assert_eq!(code, 0, "commit through a follower: {out}");
    let after = wait_until(T, "the committed moves handed off", || {
        let m = shard_map(&via)?;
        m["assignments"].as_array()?.iter().all(|r| r["handoff"].is_null() && !r["owner"].is_null()).then_some(m)
    })
    .map_err(|e| fail(e, &nodes))?;
    let owner = |m: &Value, s: u64| m["assignments"][s as usize]["owner"].as_str().map(str::to_string);
    for s in 0..SHARDS {
        let planned = moves.iter().find(|m| m["shard"] == s);
        let want = match planned {
            Some(m) => m["to"].as_str().map(str::to_string),
            None => owner(&before, s),
        };
        assert_eq!(owner(&after, s), want, "shard {s}: the commit makes the plan, and nothing else");
    }

    eprintln!("--- shard move: pinned, moved by handoff; refusals");
    let moved = moves[0]["shard"].as_u64().unwrap().to_string();
    let back = moves[0]["from"].as_str().unwrap().to_string();
    let (code, out) = run(&via, Some(&tf), &["shard", "move", &moved, "--to", &back]);
    assert_eq!(code, 0, "shard move: {out}");
    wait_until(T, "the shard on its pinned node", || {
        let m = shard_map(&via)?;
        let r = &m["assignments"][moved.parse::<usize>().ok()?];
        (r["owner"] == back.as_str() && r["pinned"] == back.as_str()).then_some(())
    })
    .map_err(|e| fail(e, &nodes))?;
    let (code, out) = run(&via, Some(&tf), &["shard", "move", "9999", "--to", &back]);
    assert_eq!((code, out.contains("does not exist")), (1, true), "{out}");
    let (code, out) = run(&via, Some(&tf), &["shard", "move", &moved, "--to", "00000000000000ff"]);
    assert_eq!((code, out.contains("is not a member")), (1, true), "{out}");
    let (code, out) = run(&via, Some(&tf), &["shard", "unpin", &moved]);
    assert_eq!(code, 0, "unpin: {out}");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "abort"]);
    assert_eq!(code, 0, "abort: {out}");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "mode", "auto"]);
    assert_eq!(code, 0, "mode auto: {out}");
    let (code, out) = run(&via, Some(&tf), &["rebalance", "mode", "sideways"]);
    assert_eq!(code, 2, "usage: {out}");
    wait_until(T, "the undrained node owns shards again", || {
        let ms = members(&nodes[0])?;
        ms.iter()
            .any(|m| m["id"] == victim.as_str() && m["drained"] == false && m["shards"].as_u64() > Some(0))
            .then_some(())
    })
    .map_err(|e| fail(e, &nodes))?;

    eprintln!("--- leader step-down");
    let (code, out) = run(&via, Some(&tf), &["--json", "leader", "step-down"]);
    assert_eq!(code, 0, "step-down: {out}");
    let answer: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    let new_leader = answer["leader"].as_str().unwrap_or_default().to_string();
    assert!(!new_leader.is_empty() && new_leader != leader, "another voter leads: {out}");
    wait_until(T, "all follow the new leader", || {
        nodes.iter().all(|n| n.status().ok().is_some_and(|s| s["leader"] == new_leader.as_str())).then_some(())
    })
    .map_err(|e| fail(e, &nodes))?;

    eprintln!("--- demote, remove; refusals: unknown node, the leader itself");
    let (code, out) = run(&via, Some(&tf), &["member", "remove", "00000000000000ff"]);
    assert_eq!((code, out.contains("is not a member")), (1, true), "{out}");
    let (code, out) = run(&via, Some(&tf), &["member", "remove", &new_leader]);
    assert_eq!((code, out.contains("step-down")), (1, true), "{out}");
    let target = ids.iter().find(|i| **i != new_leader).unwrap().clone();
    let (code, out) = run(&via, Some(&tf), &["member", "demote", &target]);
    assert_eq!(code, 0, "demote: {out}");
    let (code, out) = run(&via, Some(&tf), &["member", "remove", &target]);
    assert_eq!(code, 0, "remove: {out}");
    let ti = ids.iter().position(|i| *i == target).unwrap();
    let rest: Vec<&NodeProc> = nodes.iter().enumerate().filter(|(i, _)| *i != ti).map(|(_, n)| n).collect();
    let mut owners: Vec<String> = rest.iter().map(|n| node_id(n).unwrap()).collect();
    owners.sort();
    wait_until(T, "the removed node gone, its shards moved", || {
        let ms = members(rest[0])?;
        (!ms.iter().any(|m| m["id"] == target.as_str())).then(|| serving(&rest, &owners)).flatten()
    })
    .map_err(|e| fail(e, &nodes))?;
    // The removed node still runs: it is not admitted again.
    wait_until(T, "the removed node refused", || {
        let s = rest[0].status().ok()?;
        let leader = s["leader"].as_str()?.to_string();
        let ln = nodes.iter().find(|n| node_id(n).as_deref() == Some(leader.as_str()))?;
        let un: Vec<String> = serde_json::from_value(ln.status().ok()?["raft"]["unadmitted"].clone()).ok()?;
        un.contains(&target).then_some(())
    })
    .map_err(|e| fail(e, &nodes))?;
    assert!(!members(rest[0]).unwrap().iter().any(|m| m["id"] == target.as_str()));
    nodes[ti].kill();

    eprintln!("--- through every drain, commit, pin and removal: never two owners of a shard");
    let records = clusterfunk_integration::journal::read(&journal)?;
    let moved = clusterfunk_integration::journal::moved_shards(&records);
    assert!(moved > 0, "the journal saw shards move: {} records", records.len());
    let overlaps = clusterfunk_integration::journal::overlaps(&records);
    assert!(overlaps.is_empty(), "a shard active on two nodes at once: {:?}", &overlaps[..overlaps.len().min(5)]);
    Ok(())
}
