//! The chaos lab: real node processes in network namespaces, a nemesis, a recorded KV workload,
//! and the checkers (ownership overlap, per-key linearizability, lost acknowledged writes,
//! recovery time). `src/bin/chaos.rs` runs the scenarios.

pub mod lab;
pub mod linear;
pub mod scenarios;
pub mod workload;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clusterfunk_actors::lease::monotonic_ns;

use self::workload::{Op, Outcome, Record};

/// What one run of a scenario found.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// The faults injected, in order.
    pub faults: Vec<String>,
    /// Operations recorded; of which answered and unknown.
    pub ops: (usize, usize, usize),
    /// Two owners seen in what was served: handler runs of one shard on two nodes interleaved,
    /// or an older epoch served after a newer one ([`crate::journal::service_overlaps`]).
    pub overlap: usize,
    /// Activation interval pairs of one shard on two nodes that overlap in time, as the nodes
    /// journalled them (a deactivation may be backdated to when a lease ended). Reported; the
    /// verdict is [`Self::overlap`].
    pub active_overlap: usize,
    /// Acknowledged appends missing from the final read of their set, whichever incarnation
    /// answered, with no journalled activation of their shard (a move, a restart) after them.
    pub lost: usize,
    /// Acknowledged appends missing that a journalled activation of their shard after them
    /// explains (replica factor 1 keeps values in entity memory: expected).
    pub lost_to_moves: usize,
    /// Linearizability.
    pub verdict: linear::Verdict,
    /// From the first fault until each key answered continuously again, over the keys.
    pub recovery: Recovery,
    /// Anything a person should know (a node that refused to start, a key the checker gave up on).
    pub notes: Vec<String>,
}

/// Recovery over the keys: from the first fault until the key's last failure is behind it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Median over the keys, ms.
    pub median_ms: u64,
    /// Worst key, ms.
    pub max_ms: u64,
    /// Keys that never answered again after their last failure.
    pub unrecovered: usize,
}

impl RunResult {
    /// Whether the run passed every checker: no overlap in service, nothing lost, linearizable
    /// (`unknown` is a failure), every key recovered.
    pub fn passed(&self) -> bool {
        self.overlap == 0 && self.lost == 0 && self.verdict == linear::Verdict::Yes && self.recovery.unrecovered == 0
    }

    /// The line `--scenario` ends with.
    pub fn line(&self) -> String {
        format!(
            "RESULT scenario={} overlap={} active_overlap={} lost={} linearizable={} recovery_ms={}/{} passed={}",
            self.scenario,
            self.overlap,
            self.active_overlap,
            self.lost,
            self.verdict.as_str(),
            self.recovery.median_ms,
            self.recovery.max_ms,
            self.passed()
        )
    }
}

/// Reads every journal; a missing or empty one fails the run (the checkers would see nothing).
pub fn read_journals(journals: &[impl AsRef<Path>]) -> anyhow::Result<Vec<crate::journal::Record>> {
    let mut all = Vec::new();
    for j in journals {
        let j = j.as_ref();
        let recs = match std::fs::read_to_string(j) {
            Ok(text) => crate::journal::parse(&text)?,
            Err(e) => anyhow::bail!("journal {}: {e}: the overlap checker cannot run without it", j.display()),
        };
        all.extend(recs);
    }
    Ok(all)
}

/// Counts two owners in the journals: `(in service, in activation intervals)`, printing the
/// first few of each with their times.
pub fn overlap_in(journals: &[impl AsRef<Path>]) -> anyhow::Result<(usize, usize)> {
    let all = read_journals(journals)?;
    let service = crate::journal::service_overlaps(&all);
    for o in service.iter().take(3) {
        eprintln!(
            "  overlap in service: shard {} served on {} (epoch {}) over [{}, {}] and on {} (epoch {}) over [{}, {}]",
            o.shard, o.a.0, o.a.1, o.a.2, o.a.3, o.b.0, o.b.1, o.b.2, o.b.3
        );
    }
    let overlaps = crate::journal::overlaps(&all);
    for (a, b) in overlaps.iter().take(3) {
        let (from, to) = (a.from.max(b.from), a.to.min(b.to));
        let served = |node: &str| {
            all.iter()
                .filter(|r| r.event == "serve" && r.node == node && r.shard == a.shard && (from..=to).contains(&r.t_ns))
                .count()
        };
        eprintln!(
            "  active overlap: shard {} on {} epoch {} [{}, {}] and on {} epoch {} [{}, {}] ({} ns together; messages run meanwhile: {} and {})",
            a.shard,
            a.node,
            a.epoch,
            a.from,
            a.to,
            b.node,
            b.epoch,
            b.from,
            b.to,
            to.saturating_sub(from),
            served(&a.node),
            served(&b.node),
        );
    }
    Ok((service.len(), overlaps.len()))
}

/// Acknowledged appends missing from the final sets: `(lost, explained)`. `finals` maps a set key
/// to its final content. A missing append is explained when the journals show its shard
/// activated (on any node: a move, or a restart) after the append completed; otherwise it is lost,
/// whichever incarnation answered the final read.
pub fn lost_appends(
    history: &[Record],
    finals: &BTreeMap<String, (Vec<String>, Option<String>)>,
    journal: &[crate::journal::Record],
) -> (usize, usize) {
    let (mut lost, mut moved) = (0, 0);
    for r in history {
        let (Op::Append { elem }, Outcome::Ok) = (&r.op, r.result) else { continue };
        let Some((set, _)) = finals.get(&r.key) else { continue };
        if set.contains(elem) {
            continue;
        }
        let explained = r.shard.is_some_and(|shard| {
            journal.iter().any(|j| j.event == "activate" && j.shard == shard && j.t_ns > r.complete)
        });
        if explained {
            moved += 1;
        } else {
            lost += 1;
        }
    }
    (lost, moved)
}

/// Per key, from `fault_ns` until it answered again after its last failure (an operation that
/// reached a node and did not answer, or answered an error; one that could not reach the node
/// it chose is the client's network, not the key); median and max over `keys`.
pub fn recovery(history: &[Record], keys: &[String], fault_ns: u64) -> Recovery {
    let mut per_key = Vec::new();
    let mut unrecovered = 0;
    for k in keys {
        let ops: Vec<&Record> = history.iter().filter(|r| r.key == *k && r.invoke >= fault_ns).collect();
        let last_bad = ops.iter().filter(|r| r.result == Outcome::Unknown).map(|r| r.invoke).max();
        let since = last_bad.unwrap_or(fault_ns);
        match ops.iter().filter(|r| r.result == Outcome::Ok && r.invoke >= since).map(|r| r.complete).min() {
            Some(t) if last_bad.is_some() => per_key.push(t.saturating_sub(fault_ns) / 1_000_000),
            Some(_) => per_key.push(0),
            None => unrecovered += 1,
        }
    }
    per_key.sort();
    Recovery {
        median_ms: per_key.get(per_key.len().saturating_sub(1) / 2).copied().unwrap_or(0),
        max_ms: per_key.last().copied().unwrap_or(0),
        unrecovered,
    }
}

/// Now on the journals' clock.
pub fn now_ns() -> u64 {
    monotonic_ns()
}

/// Waits `d` while the workload runs (faults are held for a duration; nothing is asserted after).
pub fn hold(d: Duration) {
    std::thread::sleep(d);
}
