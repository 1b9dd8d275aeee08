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
    /// Interval pairs where a shard was active on two nodes at once.
    pub overlap: usize,
    /// Acknowledged appends missing at the end although the entity incarnation that
    /// acknowledged them is the one that answered the final read.
    pub lost: usize,
    /// Acknowledged appends missing because their entity was restarted or its shard moved
    /// (replica factor 1 keeps values in entity memory: expected).
    pub lost_to_moves: usize,
    /// Linearizability.
    pub verdict: linear::Verdict,
    /// From the first fault until every key was served again.
    pub recovery_ms: u64,
    /// Anything a person should know (a node that refused to start, a key the checker gave up on).
    pub notes: Vec<String>,
}

impl RunResult {
    /// The line `--scenario` ends with.
    pub fn line(&self) -> String {
        format!(
            "RESULT scenario={} overlap={} lost={} linearizable={} recovery_ms={}",
            self.scenario,
            self.overlap,
            self.lost,
            self.verdict.as_str(),
            self.recovery_ms
        )
    }
}

/// Counts overlapping activations in the journals.
pub fn overlap_in(journals: &[impl AsRef<Path>]) -> anyhow::Result<usize> {
    let mut all = Vec::new();
    for j in journals {
        if j.as_ref().exists() {
            all.extend(crate::journal::read(j.as_ref())?);
        }
    }
    let overlaps = crate::journal::overlaps(&all);
    // A failure must say what it saw: the first few pairs, with their times.
    for (a, b) in overlaps.iter().take(3) {
        let (from, to) = (a.from.max(b.from), a.to.min(b.to));
        let served = |node: &str| {
            all.iter()
                .filter(|r| r.event == "serve" && r.node == node && r.shard == a.shard && (from..=to).contains(&r.t_ns))
                .count()
        };
        eprintln!(
            "  overlap: messages run while both were active: {} on {}, {} on {}",
            served(&a.node),
            a.node,
            served(&b.node),
            b.node
        );
        eprintln!(
            "  overlap: shard {} on {} epoch {} [{}, {}] and on {} epoch {} [{}, {}] ({} ns together)",
            a.shard,
            a.node,
            a.epoch,
            a.from,
            a.to,
            b.node,
            b.epoch,
            b.from,
            b.to,
            a.to.min(b.to).saturating_sub(a.from.max(b.from))
        );
    }
    Ok(overlaps.len())
}

/// Acknowledged appends missing from the final sets: `(lost, lost_to_moves)`. `finals` maps a set
/// key to its final content and the entity incarnation that answered.
pub fn lost_appends(history: &[Record], finals: &BTreeMap<String, (Vec<String>, Option<String>)>) -> (usize, usize) {
    let (mut lost, mut moved) = (0, 0);
    for r in history {
        let (Op::Append { elem }, Outcome::Ok) = (&r.op, r.result) else { continue };
        let Some((set, instance)) = finals.get(&r.key) else { continue };
        if set.contains(elem) {
            continue;
        }
        if r.instance.is_some() && r.instance == *instance {
            lost += 1;
        } else {
            moved += 1;
        }
    }
    (lost, moved)
}

/// From `fault_ns` until every key had an answered operation invoked after it, in ms; `None` if
/// some key never did.
pub fn recovery_ms(history: &[Record], keys: &[String], fault_ns: u64) -> Option<u64> {
    let mut worst = 0;
    for k in keys {
        let first = history
            .iter()
            .filter(|r| r.key == *k && r.result == Outcome::Ok && r.invoke >= fault_ns)
            .map(|r| r.complete)
            .min()?;
        worst = worst.max(first.saturating_sub(fault_ns));
    }
    Some(worst / 1_000_000)
}

/// Now on the journals' clock.
pub fn now_ns() -> u64 {
    monotonic_ns()
}

/// Waits `d` while the workload runs (faults are held for a duration; nothing is asserted after).
pub fn hold(d: Duration) {
    std::thread::sleep(d);
}
