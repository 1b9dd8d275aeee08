//! The Go ancestor's test set: 10,000 shards on 50 nodes, as real processes on loopback (network
//! namespaces cost a veth pair and a bridge port per node for nothing a loopback run lacks here:
//! the nodes only need distinct ports). Prints `name=value` figures:
//!
//! - `form_s`: from the first start until one node's cluster state has every node registered,
//!   `converge_s`: until every node reports the same complete map (no shard unassigned);
//! - per node, over a quiet window: `rss_mb` (median and max), `cpu_pct` (of one core; median
//!   and max), and the bytes per second of gossip and Raft payloads sent, from the nodes' own
//!   counters (`transport.gossip_out_bytes`, `transport.raft_out_bytes`), and of everything on
//!   loopback (`lo_bytes_per_s`, from /proc/net/dev: every frame, framing and crypto included);
//! - `kill_n` learners killed at once, then `served_again_s`: until the survivors serve every
//!   shard again (each active under a lease: `ownership.serving` summed).
//!
//! ```text
//! cargo build --release -p clusterfunk-integration --bin cf-node --bin scale
//! target/release/scale [--nodes 50] [--voters 5] [--shards 10000] [--kill 5] [--window 20] \
//!     [-- node flags, e.g. --gossip-interval 1s --suspect-after 5s --down-after 10s]
//! ```
//!
//! 50 nodes on two cores need slower timers than the defaults (docs/sharding.md, "10,000 shards
//! on many nodes"):
//!
//! ```text
//! target/release/scale --nodes 50 -- --gossip-interval 1s --suspect-after 5s --down-after 10s \
//!     --raft-heartbeat 500ms --election-timeout-min 3s --election-timeout-max 6s --lease 5s
//! ```
//!
//! Not part of CI's run: 50 nodes take about 20 s to form and most of two cores.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clusterfunk_integration::{free_ports, wait_every, wait_until, NodeProc};
use serde_json::Value;

/// How often the all-node waits poll.
const POLL: Duration = Duration::from_millis(250);

fn arg(name: &str, default: u64) -> anyhow::Result<u64> {
    let v = std::env::args().skip_while(|a| a != name).nth(1);
    v.map_or(Ok(default), |v| v.parse().with_context(|| format!("{name} {v}")))
}

/// `utime + stime` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process, in MiB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Bytes received on loopback so far (every byte sent on it is received on it).
fn lo_bytes() -> Option<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
    let line = dev.lines().find(|l| l.trim_start().starts_with("lo:"))?;
    line.split_once(':')?.1.split_whitespace().next()?.parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn counter(s: &Value, name: &str) -> u64 {
    s["transport"][name].as_u64().unwrap_or(0)
}

/// The epoch of a node's map when no shard in it is unassigned.
fn complete(s: &Value) -> Option<u64> {
    let m = &s["shard_map"];
    (m["unassigned"].as_u64() == Some(0)).then(|| m["epoch"].as_u64()).flatten()
}

/// Whether the nodes `which` all hold one complete map and serve `shards` between them. Stops
/// at the first node that does not: fifty status requests every poll would load the machine
/// whose figures are being taken.
fn on_one_map(nodes: &[NodeProc], which: impl IntoIterator<Item = usize>, shards: u64) -> Option<()> {
    let (mut epoch, mut serving) = (None, 0);
    for i in which {
        let s = nodes[i].status().ok()?;
        let e = complete(&s)?;
        if *epoch.get_or_insert(e) != e {
            return None;
        }
        serving += s["ownership"]["serving"].as_u64().unwrap_or(0);
    }
    (serving == shards).then_some(())
}

fn main() -> anyhow::Result<()> {
    let n = arg("--nodes", 50)? as usize;
    let voters = arg("--voters", 5)?;
    let shards = arg("--shards", 10_000)?;
    let kill = arg("--kill", 5)? as usize;
    let window = Duration::from_secs(arg("--window", 20)?);
    anyhow::ensure!(kill < n && n as u64 > voters, "--kill must leave the voters and a survivor");
    let exe = std::env::current_exe()?.with_file_name("cf-node");
    anyhow::ensure!(exe.exists(), "{} not found: build it first (see the doc comment)", exe.display());
    let dir = tempfile::tempdir()?;
    let ports = free_ports(2 * n);
    let (voters_s, shards_s) = (voters.to_string(), shards.to_string());
    // Flags after `--` go to every node (gossip timings for a large cluster, say).
    let extra: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let mut base = vec!["--name", "scale", "--no-mdns", "--traffic", "0", "--voters", &voters_s, "--shards", &shards_s];
    base.extend(extra.iter().map(String::as_str));
    let seed = format!("127.0.0.1:{}", ports[0]);
    let mut nodes: Vec<NodeProc> = (0..n)
        .map(|i| {
            let mut args: Vec<&str> = base.clone();
            if i == 0 {
                args.push("--bootstrap");
            } else {
                args.extend(["--join", seed.as_str()]);
            }
            NodeProc::new(
                &exe,
                dir.path().join(format!("n{i}")),
                format!("127.0.0.1:{}", ports[2 * i]),
                format!("127.0.0.1:{}", ports[2 * i + 1]),
                &args,
            )
        })
        .collect();
    let started = Instant::now();
    for node in nodes.iter_mut() {
        node.start()?;
    }
    let limit = Duration::from_secs(600);
    let logs = |nodes: &[NodeProc]| clusterfunk_integration::logs(&nodes[..nodes.len().min(3)]);

    // Formed: one node's status lists every node as a member.
    wait_until(limit, "every node registered", || {
        let s = nodes[0].status().ok()?;
        (s["members"].as_array()?.len() == n).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    let form = started.elapsed();
    println!("form_s={:.1}", form.as_secs_f64());

    // Converged: every node has the same complete map, and every shard is served.
    wait_every(POLL, limit, "every node on one complete map, every shard served", || on_one_map(&nodes, 0..n, shards))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    let converge = started.elapsed();
    println!("converge_s={:.1}", converge.as_secs_f64());

    // A quiet window: memory, CPU, bytes.
    let pids: Vec<u32> = nodes.iter().filter_map(NodeProc::pid).collect();
    let ticks0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
    let before: Vec<Value> = nodes.iter().map(|n| n.status()).collect::<anyhow::Result<_>>()?;
    let lo0 = lo_bytes().unwrap_or(0);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let secs = t0.elapsed().as_secs_f64();
    let lo1 = lo_bytes().unwrap_or(0);
    let after: Vec<Value> = nodes.iter().map(|n| n.status()).collect::<anyhow::Result<_>>()?;
    let hz = 100.0; // USER_HZ on Linux
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&ticks0)
        .map(|(p, t0)| (cpu_ticks(*p).unwrap_or(*t0) - t0) as f64 / hz / secs * 100.0)
        .collect();
    let rss: Vec<f64> = pids.iter().filter_map(|p| rss_mb(*p)).collect();
    let rate = |name: &str| -> Vec<f64> {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| (counter(a, name).saturating_sub(counter(b, name))) as f64 / secs)
            .collect()
    };
    let (gossip, raft) = (rate("gossip_out_bytes"), rate("raft_out_bytes"));
    println!("rss_mb_median={:.1} rss_mb_max={:.1}", median(rss.clone()), max(&rss));
    println!(
        "cpu_pct_median={:.1} cpu_pct_max={:.1} cpu_pct_total={:.0}",
        median(cpu.clone()),
        max(&cpu),
        cpu.iter().sum::<f64>()
    );
    println!(
        "gossip_out_bytes_per_s_median={:.0} gossip_out_bytes_per_s_total={:.0}",
        median(gossip.clone()),
        gossip.iter().sum::<f64>()
    );
    println!(
        "raft_out_bytes_per_s_median={:.0} raft_out_bytes_per_s_max={:.0} raft_out_bytes_per_s_total={:.0}",
        median(raft.clone()),
        max(&raft),
        raft.iter().sum::<f64>()
    );
    println!("lo_bytes_per_s={:.0}", (lo1.saturating_sub(lo0)) as f64 / secs);

    // Kill learners that own shards, at once; time until every shard is served again.
    let statuses: Vec<Value> = nodes.iter().map(|n| n.status()).collect::<anyhow::Result<_>>()?;
    let roles: BTreeMap<String, String> = statuses[0]["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter_map(|m| Some((m["id"].as_str()?.to_string(), m["role"].as_str()?.to_string())))
        .collect();
    let victims: Vec<usize> = (0..n)
        .filter(|i| {
            let id = statuses[*i]["node_id"].as_str().unwrap_or_default();
            roles.get(id).map(String::as_str) == Some("learner")
        })
        .take(kill)
        .collect();
    anyhow::ensure!(victims.len() == kill, "only {} learners to kill", victims.len());
    let killed_at = Instant::now();
    for v in &victims {
        nodes[*v].kill();
    }
    let alive: Vec<usize> = (0..n).filter(|i| !victims.contains(i)).collect();
    wait_every(POLL, limit, "every shard served again by the survivors", || {
        on_one_map(&nodes, alive.iter().copied(), shards)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    println!("kill_n={kill} served_again_s={:.1}", killed_at.elapsed().as_secs_f64());
    println!("nodes={n} voters={voters} shards={shards} window_s={secs:.0}");
    for i in alive {
        nodes[i].signal(libc::SIGTERM);
    }
    Ok(())
}
