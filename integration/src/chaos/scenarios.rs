//! The scenarios: each makes a lab, runs the workload, injects its faults, heals, and hands the
//! history and journals to the checkers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};

use super::lab::{ChaosLab, LabOpts, P2P_PORT};
use super::workload::{invoke, Op, Outcome, Shape, Workload};
use super::{linear, lost_appends, now_ns, overlap_in, read_journals, recovery, Recovery, RunResult};
use crate::{view, wait_until};

/// The lease length the nodes run with (the framework default).
pub const LEASE: Duration = Duration::from_millis(500);

/// A scenario's state while it runs.
pub struct Env {
    /// The lab.
    pub lab: ChaosLab,
    /// Faults injected so far.
    pub faults: Vec<String>,
    /// When the first fault was injected (journal clock).
    pub fault_at: Option<u64>,
    /// Shorter holds (CI).
    pub quick: bool,
    /// Things to report.
    pub notes: Vec<String>,
    /// A random source for choices, from the seed.
    pub rng: rand::rngs::StdRng,
    /// Nodes that must answer nothing in a window (fail-stop until restarted): `(node id,
    /// from, until)` in journal-clock ns.
    pub silent: Vec<(String, u64, u64)>,
}

impl Env {
    /// Records a fault being injected now.
    pub fn fault(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("  fault: {what}");
        self.fault_at.get_or_insert_with(now_ns);
        self.faults.push(what);
    }

    /// Waits until every node other than `except` serves all shards with one leader.
    pub fn served(&self, except: &[usize]) -> anyhow::Result<()> {
        self.lab.wait_serving(except, Duration::from_secs(60))
    }

    /// Waits until every running node is back in one complete map, serving.
    pub fn healed(&self) -> anyhow::Result<()> {
        self.lab.wait_formed(Duration::from_secs(90))?;
        self.lab.wait_serving(&[], Duration::from_secs(60))
    }

    fn hold(&self, full: Duration, quick: Duration) {
        super::hold(if self.quick { quick } else { full });
    }
}

/// One scenario.
pub struct Scenario {
    /// Its name (`--scenario NAME`).
    pub name: &'static str,
    /// What it does.
    pub about: &'static str,
    /// Part of the CI subset.
    pub ci: bool,
    /// How it runs.
    pub run: Run,
}

/// How a scenario runs.
pub enum Run {
    /// In a lab made with `opts`, under the recorded workload: `inject` injects the faults and
    /// heals; the checkers run on what was recorded.
    Faults {
        /// The lab it needs.
        opts: fn() -> LabOpts,
        /// Injects the faults and heals.
        inject: fn(&mut Env) -> anyhow::Result<()>,
    },
    /// On its own `(node binary, seed, quick)`: it makes its own labs and repeats itself, so
    /// one seed is enough.
    Whole(fn(&Path, u64, bool) -> anyhow::Result<RunResult>),
}

fn three() -> LabOpts {
    LabOpts::default()
}

/// Every scenario, in the order `--all` runs them.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "leader-kill",
            about: "kill -9 the Raft leader, restart it on its data dir",
            ci: true,
            run: Run::Faults { opts: three, inject: leader_kill },
        },
        Scenario {
            name: "owner-kill",
            about: "kill -9 a shard owner that is not the leader, restart it",
            ci: true,
            run: Run::Faults { opts: three, inject: owner_kill },
        },
        Scenario {
            name: "leader-minority",
            about: "partition the leader alone (bridge port down) for 5 s, heal",
            ci: true,
            run: Run::Faults { opts: three, inject: leader_minority },
        },
        Scenario {
            name: "follower-isolated",
            about: "partition one follower for 5 s, heal",
            ci: false,
            run: Run::Faults { opts: three, inject: follower_isolated },
        },
        Scenario {
            name: "one-way",
            about: "the leader's packets to one follower are lost (bogus neighbour entry) for 5 s",
            ci: false,
            run: Run::Faults { opts: three, inject: one_way },
        },
        Scenario {
            name: "flapping",
            about: "one follower's link goes down and up every 1 s for 60 s (10 s quick)",
            ci: false,
            run: Run::Faults { opts: three, inject: flapping },
        },
        Scenario {
            name: "rolling-restart",
            about: "SIGTERM (graceful leave) and restart every node in turn",
            ci: false,
            run: Run::Faults { opts: three, inject: rolling_restart },
        },
        Scenario {
            name: "restart-all",
            about: "kill -9 every node at once, restart all on their persistent logs",
            ci: true,
            run: Run::Faults { opts: three, inject: restart_all },
        },
        Scenario {
            name: "truncated-tail",
            about: "kill -9 a follower, cut 4 KiB off its Raft store, restart it (it repairs the store or refuses to start)",
            ci: false,
            run: Run::Faults { opts: three, inject: truncated_tail },
        },
        Scenario {
            name: "disk-full",
            about: "a follower's data dir (16 MiB tmpfs) fills up and a Raft write fails: it exits 70 (fail-stop) and answers nothing more; freed and restarted",
            ci: false,
            run: Run::Faults { opts: || LabOpts { tmpfs_mib: Some((2, 16)), ..LabOpts::default() }, inject: disk_full },
        },
        Scenario {
            name: "sigstop-owner",
            about: "SIGSTOP a shard owner for 2·L, then SIGCONT",
            ci: true,
            run: Run::Faults { opts: three, inject: sigstop_owner },
        },
        Scenario {
            name: "two-node-split",
            about: "a two-node cluster (two voters) split in two for 5 s: neither side has a quorum, neither serves; heal",
            ci: false,
            run: Run::Faults { opts: || LabOpts { nodes: 2, voters: 3, ..LabOpts::default() }, inject: two_node_split },
        },
        Scenario {
            name: "dup-reorder",
            about: "every node delays (0-10 ms), duplicates (10%), reorders (10%) and drops (1%) what it sends; an owner is killed and restarted under it",
            ci: true,
            run: Run::Faults {
                opts: || LabOpts { faults: Some(MESSAGE_FAULTS), ..LabOpts::default() },
                inject: dup_reorder,
            },
        },
        Scenario {
            name: "garbage-frames",
            about: "with the cluster secret on: raw garbage to every node's TCP port, then a peer holding the secret sends random, oversized and cut-short frames on every protocol, and well-formed hostile RPCs (high-term AppendEntries and Vote, forwarded Released / SetAssignments / RemoveMember, a lease for the node, membership requests with guessed tokens, forwarded operator commands, a read index, forged heartbeats): all refused, members, pins and the rebalance mode unchanged, the cluster undisturbed",
            ci: true,
            run: Run::Faults { opts: || LabOpts { secret: true, ..LabOpts::default() }, inject: garbage_frames },
        },
        Scenario {
            name: "wrong-secret",
            about: "a fourth node with another cluster secret tries to join",
            ci: true,
            run: Run::Faults {
                opts: || LabOpts { nodes: 4, intruder: true, ..LabOpts::default() },
                inject: wrong_secret,
            },
        },
        Scenario {
            name: "slow-disk-leader",
            about: "the leader's next Raft write stalls 3 s before its fsync (its Raft core parked, heartbeats stopped): it must stop granting leases, the others take over; /health says why",
            ci: true,
            run: Run::Faults { opts: three, inject: slow_disk_leader },
        },
        Scenario {
            name: "clock-skew",
            about: "a follower's lease clock runs 10% slow (ten times ρ) and it is cut off for 5 s: the grace G covers it",
            ci: false,
            run: Run::Faults { opts: || LabOpts { clock_rate: Some((2, 0.9)), ..LabOpts::default() }, inject: clock_skew },
        },
        Scenario {
            name: "bootstrap-race",
            about: "5 nodes started with --bootstrap at the same instant, each able to discover the others, 20 times (3 quick): exactly one cluster each time",
            ci: false,
            run: Run::Whole(bootstrap_race),
        },
    ]
}

/// Finds a scenario.
pub fn find(name: &str) -> anyhow::Result<Scenario> {
    all().into_iter().find(|s| s.name == name).with_context(|| format!("no scenario named {name:?} (see --list)"))
}

/// Runs scenario `name` with `seed` using the node binary `exe`.
pub fn run(exe: &Path, name: &str, seed: u64, quick: bool) -> anyhow::Result<RunResult> {
    let sc = find(name)?;
    let (opts, inject) = match sc.run {
        Run::Faults { opts, inject } => (opts(), inject),
        Run::Whole(run) => return run(exe, seed, quick),
    };
    let members = if opts.intruder { opts.nodes - 1 } else { opts.nodes };
    let mut lab = ChaosLab::new(exe, opts)?;
    lab.start()?;
    lab.wait_serving(&[], Duration::from_secs(60))?;
    let targets: Vec<String> = lab.http_addrs().into_iter().take(members).collect();
    // Clients live in the nodes' namespaces, so a cut-off node keeps its own clients: a
    // partition shows a client both sides, and a split brain could not hide from them.
    let namespaces: Vec<String> = lab.net.hosts.iter().take(members).cloned().collect();
    let wl = Workload::start(targets.clone(), Shape { seed, namespaces, ..Shape::default() });
    let base = wl.len();
    wait_until(Duration::from_secs(30), "baseline traffic", || (wl.len() >= base + 100).then_some(()))?;
    let mut env = Env {
        lab,
        faults: Vec::new(),
        fault_at: None,
        quick,
        notes: Vec::new(),
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        silent: Vec::new(),
    };
    let outcome = inject(&mut env);
    let after = wl.len();
    let settled = outcome.and_then(|_| {
        wait_until(Duration::from_secs(60), "traffic after healing", || (wl.len() >= after + 200).then_some(()))
    });
    let keys: Vec<String> = wl.keys.iter().chain(wl.sets.iter()).cloned().collect();
    let sets = wl.sets.clone();
    let history = wl.stop();
    if let Err(e) = settled {
        bail!("{}: {e:#}\n{}", sc.name, env.lab.logs());
    }
    // Final reads of every set, through any node that answers.
    let mut finals = BTreeMap::new();
    // And of every key: a key whose last operation failed (a dropped message late in the run)
    // recovered when its final read answers, not never.
    let mut final_ops = Vec::new();
    for key in &keys {
        let op = if sets.contains(key) { Op::ReadSet } else { Op::Read };
        let r = wait_until(Duration::from_secs(30), "a final read", || {
            targets.iter().enumerate().find_map(|(i, t)| {
                let r = invoke(usize::MAX, 0, t, i, key, op.clone());
                (r.result == Outcome::Ok).then_some(r)
            })
        })?;
        if sets.contains(key) {
            finals.insert(key.clone(), (r.set.clone().unwrap_or_default(), r.instance.clone(), r.invoke));
        }
        final_ops.push(r);
    }
    for (node, from, until) in &env.silent {
        let late = history
            .iter()
            .filter(|r| r.result == Outcome::Ok && r.responder.as_deref() == Some(node.as_str()))
            .filter(|r| r.complete > *from && r.invoke < *until)
            .count();
        if late > 0 {
            bail!("{}: node {node} acknowledged {late} operations after it stopped and before its restart", sc.name);
        }
    }
    let journal = read_journals(&env.lab.journals)?;
    let (overlap, active_overlap) = overlap_in(&journal);
    if !journal.iter().any(|r| r.event == "serve") {
        bail!("{}: the journals record no service: the overlap checker had nothing to check", sc.name);
    }
    let (lost, lost_to_moves) = lost_appends(&history, &finals, &journal);
    let report = linear::check(&history, Duration::from_secs(if quick { 30 } else { 90 }));
    for (k, n) in &report.violations {
        env.notes.push(format!("key {k}: no linearization of its {n} operations"));
    }
    for k in &report.timed_out {
        env.notes.push(format!("key {k}: the linearizability search ran out of time (a failure)"));
    }
    let fault_at = env.fault_at.unwrap_or_else(now_ns);
    let answered: Vec<_> = history.iter().cloned().chain(final_ops).collect();
    let recovery = recovery(&answered, &keys, fault_at);
    if recovery.unrecovered > 0 {
        env.notes.push(format!("{} keys never answered again after their last failure", recovery.unrecovered));
    }
    if active_overlap > 0 {
        env.notes.push(format!("{active_overlap} overlapping activation intervals (as journalled)"));
    }
    // What each node's clients saw after the fault (the clients live in the nodes' namespaces).
    let per_via: Vec<String> = (0..targets.len())
        .map(|v| {
            let after = history.iter().filter(|r| r.via == v && r.invoke >= fault_at);
            let (mut ok, mut fail, mut unknown, mut slowest) = (0, 0, 0, 0);
            for r in after {
                match r.result {
                    Outcome::Ok => {
                        ok += 1;
                        slowest = slowest.max(r.complete.saturating_sub(r.invoke) / 1_000_000);
                    }
                    Outcome::Fail => fail += 1,
                    Outcome::Unknown => unknown += 1,
                }
            }
            format!("n{v}: {ok} answered (slowest {slowest} ms), {fail} not sent, {unknown} unknown")
        })
        .collect();
    env.notes.push(format!("after the fault, through {}", per_via.join("; ")));
    let ok = history.iter().filter(|r| r.result == Outcome::Ok).count();
    let unknown = history.iter().filter(|r| r.result == Outcome::Unknown).count();
    Ok(RunResult {
        scenario: sc.name.to_string(),
        seed,
        faults: env.faults.clone(),
        ops: (history.len(), ok, unknown),
        overlap,
        active_overlap,
        lost,
        lost_to_moves,
        verdict: report.verdict,
        recovery,
        notes: env.notes.clone(),
    })
}

fn leader_kill(env: &mut Env) -> anyhow::Result<()> {
    let l = env.lab.leader()?;
    kill_and_restart(env, l, "leader")
}

fn owner_kill(env: &mut Env) -> anyhow::Result<()> {
    let o = env.lab.owner_not_leader()?;
    kill_and_restart(env, o, "owner")
}

/// kill -9 node `i`; the others serve everything; it restarts on its data dir and rejoins.
fn kill_and_restart(env: &mut Env, i: usize, role: &str) -> anyhow::Result<()> {
    env.fault(format!("kill -9 {role} n{i}"));
    env.lab.kill(i);
    env.served(&[i])?;
    env.fault(format!("restart n{i} on its data dir"));
    env.lab.nodes[i].start()?;
    env.healed()
}

fn leader_minority(env: &mut Env) -> anyhow::Result<()> {
    let l = env.lab.leader()?;
    cut_off(env, l, &format!("partition {{n{l}}} (the leader) from the rest (bridge port down)"))
}

fn follower_isolated(env: &mut Env) -> anyhow::Result<()> {
    let f = env.lab.owner_not_leader()?;
    cut_off(env, f, &format!("partition follower n{f} (bridge port down)"))
}

/// Cuts node `i` off; the others serve everything; held a while, then healed.
fn cut_off(env: &mut Env, i: usize, what: &str) -> anyhow::Result<()> {
    env.fault(what);
    env.lab.isolate(i, true)?;
    env.served(&[i])?;
    env.hold(Duration::from_secs(5), Duration::from_secs(2));
    env.fault(format!("heal n{i}"));
    env.lab.isolate(i, false)?;
    env.healed()
}

fn one_way(env: &mut Env) -> anyhow::Result<()> {
    let l = env.lab.leader()?;
    let f = env.lab.owner_not_leader()?;
    env.fault(format!("one-way loss n{l} -> n{f}"));
    env.lab.one_way(l, f, true)?;
    env.hold(Duration::from_secs(5), Duration::from_secs(3));
    env.fault(format!("heal n{l} -> n{f}"));
    env.lab.one_way(l, f, false)?;
    env.healed()
}

fn flapping(env: &mut Env) -> anyhow::Result<()> {
    let f = env.lab.owner_not_leader()?;
    let total = if env.quick { Duration::from_secs(10) } else { Duration::from_secs(60) };
    env.fault(format!("n{f}'s link flaps (1 s down, 1 s up) for {}s", total.as_secs()));
    let start = Instant::now();
    while start.elapsed() < total {
        env.lab.isolate(f, true)?;
        super::hold(Duration::from_secs(1));
        env.lab.isolate(f, false)?;
        super::hold(Duration::from_secs(1));
    }
    env.healed()
}

fn rolling_restart(env: &mut Env) -> anyhow::Result<()> {
    for i in 0..env.lab.nodes.len() {
        env.fault(format!("SIGTERM n{i} (graceful leave), restart it"));
        env.lab.nodes[i].signal(libc::SIGTERM);
        if env.lab.watch_exit(i, Duration::from_secs(20)).is_none() {
            bail!("n{i} did not leave and exit within 20 s of SIGTERM:\n{}", env.lab.nodes[i].log_tail(40));
        }
        env.lab.nodes[i].start()?;
        env.healed()?;
    }
    Ok(())
}

fn restart_all(env: &mut Env) -> anyhow::Result<()> {
    env.fault("kill -9 every node");
    for i in 0..env.lab.nodes.len() {
        env.lab.kill(i);
    }
    env.fault("restart every node on its data dir");
    for i in 0..env.lab.nodes.len() {
        env.lab.nodes[i].start()?;
    }
    env.healed()
}

fn truncated_tail(env: &mut Env) -> anyhow::Result<()> {
    let f = env.lab.owner_not_leader()?;
    env.fault(format!("kill -9 n{f}"));
    env.lab.kill(f);
    let store = env.lab.store_file(f);
    let len = std::fs::metadata(&store)?.len();
    env.fault(format!("truncate n{f}'s raft.redb from {len} to {} bytes", len.saturating_sub(4096)));
    std::fs::OpenOptions::new().write(true).open(&store)?.set_len(len.saturating_sub(4096))?;
    env.lab.nodes[f].start()?;
    // Either it repairs the store and rejoins, or it refuses to start with a clear error.
    let exited = wait_until(Duration::from_secs(30), "the node to rejoin or refuse", || {
        if let Some(code) = env.lab.nodes[f].exited() {
            env.lab.mark_stopped(f);
            return Some(Some(code));
        }
        env.lab.nodes[f].status().ok().filter(|s| view::leader(s).is_some()).map(|_| None)
    })?;
    if let Some(code) = exited {
        let log = env.lab.nodes[f].log_tail(5);
        let tail = log.lines().rev().find(|l| l.contains("error")).unwrap_or("").to_string();
        env.notes.push(format!(
            "REFUSED TO START (not a recovery): n{f} refused its truncated store (exit {code:?}): {tail}"
        ));
        env.served(&[f])?;
        // Leave it out: the others serve everything.
        env.lab.nodes[f].kill();
        return Ok(());
    }
    env.notes.push(format!("n{f} repaired its truncated store and rejoined"));
    env.healed()
}

fn disk_full(env: &mut Env) -> anyhow::Result<()> {
    let f = 2;
    let id = env.lab.nodes[f].status()?["node_id"].as_str().unwrap_or_default().to_string();
    env.fault(format!("fill n{f}'s data dir (tmpfs)"));
    let filler = env.lab.fill_disk(f)?;
    // Raft writes must happen for the full disk to matter: the leader writes entries (its own
    // registration, through the stall trigger with a 1 ms stall), which every follower appends
    // until its store needs a page the disk has not got.
    let l = env.lab.leader()?;
    env.fault(format!("the leader n{l} writes 2000 Raft entries"));
    env.lab.stall_disk(l, Duration::from_millis(1), 2000)?;
    let died = env.lab.watch_exit(f, Duration::from_secs(10));
    match died {
        Some(Some(70)) => {
            env.notes.push(format!("n{f} failed a Raft write on the full disk and exited 70 (fail-stop)"))
        }
        other => bail!(
            "n{f} on a full disk: expected exit 70 after a failed Raft write, got {other:?}:\n{}",
            env.lab.nodes[f].log_tail(20)
        ),
    }
    let stopped = super::now_ns();
    env.served(&[f])?;
    env.fault(format!("free n{f}'s disk and restart it"));
    std::fs::remove_file(&filler)?;
    env.silent.push((id, stopped, super::now_ns()));
    env.lab.restart(f)?;
    env.healed()
}

fn slow_disk_leader(env: &mut Env) -> anyhow::Result<()> {
    let l = env.lab.leader()?;
    let stall = LEASE * 6;
    env.fault(format!("n{l} (the leader): its next Raft write stalls {} ms before the fsync", stall.as_millis()));
    let started = Instant::now();
    env.lab.stall_disk(l, stall, 1)?;
    // While its core is parked, it says so on /health.
    let dash = env.lab.nodes[l].dashboard.clone();
    let unhealthy = wait_until(stall, "the stalled leader to report it on /health", || {
        crate::http_get(&dash, "/health").ok().filter(|(code, _)| *code == 503).map(|(_, body)| body)
    });
    match unhealthy {
        Ok(body) => env.notes.push(format!("n{l} during the stall: /health 503 {}", body.trim())),
        Err(_) => bail!("n{l} never reported its stalled disk on /health within {} ms", stall.as_millis()),
    }
    // The others elect a leader and serve every shard, its shards too, while it is parked.
    env.served(&[l])?;
    if started.elapsed() < stall {
        env.notes.push(format!("the others served every shard {} ms into the stall", started.elapsed().as_millis()));
    }
    super::hold(stall.saturating_sub(started.elapsed()));
    env.fault(format!("n{l}'s write completes"));
    env.healed()
}

fn clock_skew(env: &mut Env) -> anyhow::Result<()> {
    let f = 2;
    env.faults.push(format!("n{f}'s lease clock runs at 0.9 of true time since it started"));
    cut_off(env, f, &format!("partition n{f} (slow lease clock) from the rest"))
}

fn sigstop_owner(env: &mut Env) -> anyhow::Result<()> {
    let o = env.lab.owner_not_leader()?;
    env.fault(format!("SIGSTOP n{o} for 2·L"));
    env.lab.pause(o, true);
    super::hold(LEASE * 2);
    env.fault(format!("SIGCONT n{o}"));
    env.lab.pause(o, false);
    env.healed()
}

/// The plan of the dup-reorder scenario.
const MESSAGE_FAULTS: &str = "delay=0ms..10ms,dup=0.1,reorder=0.1,drop=0.01";

fn dup_reorder(env: &mut Env) -> anyhow::Result<()> {
    // In force since the nodes started: recovery is timed from the kill, not from this.
    env.faults.push(format!("every node sends under {MESSAGE_FAULTS} (Raft, leases, gossip, proxy)"));
    env.hold(Duration::from_secs(10), Duration::from_secs(4));
    let o = env.lab.owner_not_leader()?;
    kill_and_restart(env, o, "owner")?;
    let repeats: u64 = env.lab.nodes.iter().filter_map(|n| n.status().ok()?["traffic"]["duplicates"].as_u64()).sum();
    let injected: u64 =
        env.lab.nodes.iter().filter_map(|n| n.status().ok()?["transport"]["faults"]["duplicated"].as_u64()).sum();
    if injected == 0 {
        bail!("no node reports duplicated messages: the fault plan is not in force");
    }
    env.notes.push(format!("{injected} messages sent twice; {repeats} repeated proxy requests answered once"));
    Ok(())
}

fn two_node_split(env: &mut Env) -> anyhow::Result<()> {
    // Voter target 3 with two nodes: both are voters (an even target is refused by the config).
    let voters = env.lab.nodes[0].status()?["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "voter").count());
    if voters != 2 {
        bail!("two-node-split needs two voters, the cluster has {voters}");
    }
    env.fault("split n0 | n1 (bridge port of n1 down)");
    let cut = super::now_ns();
    env.lab.isolate(1, true)?;
    env.hold(Duration::from_secs(5), Duration::from_secs(3));
    let healed_at = super::now_ns();
    env.fault("heal");
    env.lab.isolate(1, false)?;
    // Two voters: neither side has a quorum. The leader may grant leases on its last quorum
    // acknowledgement for up to the Raft election timeout (300 ms) after the cut, each good for
    // L: after that (and 100 ms of slack) neither serves (the journals show every handler run;
    // the clients of both sides kept asking).
    let quiet_from = cut + (Duration::from_millis(300) + LEASE + Duration::from_millis(100)).as_nanos() as u64;
    let journal = read_journals(&env.lab.journals)?;
    let served = journal.iter().filter(|r| r.event == "serve" && r.t_ns > quiet_from && r.t_ns < healed_at).count();
    if served > 0 {
        let late: Vec<u64> = journal
            .iter()
            .filter(|r| r.event == "serve" && r.t_ns > quiet_from && r.t_ns < healed_at)
            .map(|r| (r.t_ns - cut) / 1_000_000)
            .take(5)
            .collect();
        bail!("{served} handlers ran during the split after every lease had run out (ms after the cut: {late:?}): a side without a quorum served");
    }
    env.notes.push("no handler ran on either side during the split (after the lease in force ran out)".into());
    env.healed()
}

fn garbage_frames(env: &mut Env) -> anyhow::Result<()> {
    let before = malformed_counts(env);
    // Before any handshake: raw bytes on the TCP port.
    for (i, ipaddr) in env.lab.net.ips.clone().iter().enumerate() {
        let addr = format!("{ipaddr}:{P2P_PORT}");
        env.fault(format!("64 KiB of random bytes, then a 4 GiB length prefix, to n{i}'s TCP port"));
        let mut junk = vec![0u8; 64 << 10];
        env.rng.fill(&mut junk[..]);
        for payload in [junk, vec![0xff, 0xff, 0xff, 0xff, 0x0f, b'/']] {
            if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(1)) {
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(&payload);
            }
        }
    }
    // After it: an authenticated peer of this cluster (the `cf-garbage` binary, from n0's
    // namespace) sending random, oversized and cut-short frames on the proxy and Raft
    // protocols, and random gossip.
    let garbage = env.lab.nodes[0].exe.with_file_name("cf-garbage");
    let targets: Vec<String> = env.lab.net.ips.iter().map(|ip| format!("{ip}:{P2P_PORT}")).collect();
    let rounds = if env.quick { "1" } else { "2" };
    env.fault(format!(
        "an authenticated peer sends random, oversized and cut-short proxy/Raft frames and random gossip to every node ({rounds} rounds)"
    ));
    let seed = env.rng.gen::<u32>().to_string();
    let prefix = env.lab.net.exec_prefix(0);
    let terms_before: Vec<Option<u64>> =
        env.lab.nodes.iter().map(|n| n.status().ok().and_then(|s| s["term"].as_u64())).collect();
    // What an operator's command would change: who is a member, pins, the rebalance mode.
    let operated = |n: &crate::NodeProc| -> Option<(Vec<String>, String)> {
        let (_, members) = crate::http_get(&n.dashboard, "/cluster/members").ok()?;
        let members: Vec<serde_json::Value> = serde_json::from_str(&members).ok()?;
        let mut ids: Vec<String> = members.iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect();
        ids.sort();
        let (_, shards) = crate::http_get(&n.dashboard, "/cluster/shards").ok()?;
        let shards: serde_json::Value = serde_json::from_str(&shards).ok()?;
        let pins = shards["assignments"].as_array()?.iter().filter(|r| !r["pinned"].is_null()).count();
        Some((ids, format!("rebalance {} pins {pins}", shards["rebalance"])))
    };
    let operated_before: Vec<_> = env.lab.nodes.iter().map(operated).collect();
    let out = std::process::Command::new(&prefix[0])
        .args(&prefix[1..])
        .arg(&garbage)
        .args(["--name", "chaos", "--env", "lab", "--rounds", rounds, "--seed", &seed])
        .args(["--secret", super::lab::SECRET])
        .args(&targets)
        .output()
        .with_context(|| format!("running {}", garbage.display()))?;
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("cf-garbage failed ({}): {report}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    env.notes
        .extend(report.lines().filter(|l| l.starts_with("GARBAGE") || l.starts_with("HOSTILE")).map(str::to_string));
    let terms_after: Vec<Option<u64>> =
        env.lab.nodes.iter().map(|n| n.status().ok().and_then(|s| s["term"].as_u64())).collect();
    if terms_after != terms_before || terms_after.iter().any(Option::is_none) {
        bail!("the Raft term moved under hostile requests: {terms_before:?} -> {terms_after:?}");
    }
    let operated_after: Vec<_> = env.lab.nodes.iter().map(operated).collect();
    if operated_after != operated_before || operated_after.iter().any(Option::is_none) {
        bail!("hostile requests changed what only an operator may: {operated_before:?} -> {operated_after:?}");
    }
    let (refused, forged): (Vec<u64>, Vec<u64>) = env
        .lab
        .nodes
        .iter()
        .map(|n| {
            let s = n.status().unwrap_or_default();
            let refused = s["raft"]["refused"].as_object().map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
            (refused, s["transport"]["forged_heartbeats"].as_u64().unwrap_or(0))
        })
        .unzip();
    if refused.contains(&0) || forged.iter().all(|f| *f == 0) {
        bail!("hostile requests not counted: refused per node {refused:?}, forged heartbeats per node {forged:?}");
    }
    env.notes.push(format!(
        "term unchanged on every node ({terms_after:?}); refused Raft requests per node {refused:?}; forged heartbeats dropped per node {forged:?}"
    ));
    env.healed()?;
    for (i, n) in env.lab.nodes.iter_mut().enumerate() {
        if n.exited().is_some() {
            bail!("n{i} exited after garbage input");
        }
    }
    let after = malformed_counts(env);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if a <= b {
            bail!("n{i} counted no malformed frame ({b} before, {a} after): the garbage did not reach it");
        }
    }
    env.notes.push(format!(
        "malformed frames counted per node: {:?}",
        after.iter().zip(&before).map(|(a, b)| a - b).collect::<Vec<_>>()
    ));
    Ok(())
}

/// Per node: malformed frames counted by the transport (Raft, gossip) plus the proxy.
fn malformed_counts(env: &Env) -> Vec<u64> {
    env.lab
        .nodes
        .iter()
        .map(|n| {
            n.status().ok().map_or(0, |s| {
                s["transport"]["malformed_frames"].as_u64().unwrap_or(0)
                    + s["traffic"]["malformed"].as_u64().unwrap_or(0)
            })
        })
        .collect()
}

fn wrong_secret(env: &mut Env) -> anyhow::Result<()> {
    let x = env.lab.nodes.len() - 1;
    env.fault(format!("start n{x} with another cluster secret, joining n0"));
    env.lab.nodes[x].start()?;
    env.hold(Duration::from_secs(5), Duration::from_secs(3));
    let s = env.lab.nodes[0].status()?;
    let members = view::members_in(&s, "up").len();
    if members != x {
        bail!("the cluster has {members} members after the intruder tried to join (expected {x})");
    }
    let intruder = env.lab.nodes[x].status().ok();
    if intruder.as_ref().and_then(view::leader).is_some() {
        bail!("the node with the wrong secret sees a leader: it joined");
    }
    env.notes.push(format!("n{x} (wrong secret) never joined; the cluster kept {members} members"));
    env.lab.kill(x);
    Ok(())
}

fn bootstrap_race(exe: &Path, seed: u64, quick: bool) -> anyhow::Result<RunResult> {
    let reps = if quick { 3 } else { 20 };
    let (mut overlap, mut active_overlap) = (0, 0);
    let mut times = Vec::new();
    let mut history = Vec::new();
    for rep in 0..reps {
        let mut lab = ChaosLab::new(exe, LabOpts { nodes: 5, ..LabOpts::default() })?;
        let t0 = Instant::now();
        lab.start_all_bootstrapping()?;
        let ids = lab.wait_formed(Duration::from_secs(90))?;
        lab.wait_serving(&[], Duration::from_secs(60))?;
        times.push(t0.elapsed().as_millis() as u64);
        let ss: Vec<serde_json::Value> = lab.nodes.iter().map(|n| n.status()).collect::<anyhow::Result<_>>()?;
        let leaders: std::collections::BTreeSet<Option<String>> = ss.iter().map(view::leader).collect();
        if leaders.len() != 1 || ids.len() != 5 {
            bail!("rep {rep}: {} leaders over {} members: not exactly one cluster", leaders.len(), ids.len());
        }
        // Exactly one created a cluster; each of the others says why it joined instead (a node
        // added while it still looks around decides once its look is over).
        let decided = || {
            let logs: Vec<String> =
                lab.nodes.iter().map(|n| std::fs::read_to_string(n.log_path()).unwrap_or_default()).collect();
            let created = logs.iter().filter(|l| l.contains("bootstrapped a new cluster")).count();
            let joined = logs.iter().filter(|l| l.contains("bootstrap: node") && l.contains("joining it")).count();
            (created, joined)
        };
        let _ =
            wait_until(Duration::from_secs(15), "every node's bootstrap decision", || (decided().1 >= 4).then_some(()));
        let (created, joined) = decided();
        if created != 1 || joined != 4 {
            bail!("rep {rep}: {created} nodes created a cluster and {joined} said why they joined (expected 1 and 4)");
        }
        let wl = Workload::start(lab.http_addrs(), Shape { seed: seed + rep as u64, clients: 3, ..Shape::default() });
        wait_until(Duration::from_secs(30), "traffic", || (wl.len() >= 100).then_some(()))?;
        history.extend(wl.stop());
        let (service, active) = overlap_in(&read_journals(&lab.journals)?);
        overlap += service;
        active_overlap += active;
        eprintln!("  rep {rep}: one cluster of 5 in {} ms", times.last().unwrap_or(&0));
    }
    times.sort();
    let report = linear::check(&history, Duration::from_secs(30));
    let ok = history.iter().filter(|r| r.result == Outcome::Ok).count();
    let unknown = history.iter().filter(|r| r.result == Outcome::Unknown).count();
    Ok(RunResult {
        scenario: "bootstrap-race".into(),
        seed,
        faults: vec![format!("{reps} × 5 nodes started together, every one with --bootstrap")],
        ops: (history.len(), ok, unknown),
        overlap,
        active_overlap,
        lost: 0,
        lost_to_moves: 0,
        verdict: report.verdict,
        // Not an outage: how long forming one cluster of five took.
        recovery: Recovery {
            median_ms: times[times.len() / 2],
            max_ms: times.last().copied().unwrap_or(0),
            unrecovered: 0,
        },
        notes: vec![format!("one cluster every time; formed in median {} ms", times[times.len() / 2])],
    })
}
