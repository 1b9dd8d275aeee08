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

/// Counts two owners in merged journal records (read once, [`read_journals`]): `(in service,
/// in activation intervals)`, printing the first few of each with their times.
pub fn overlap_in(all: &[crate::journal::Record]) -> (usize, usize) {
    let service = crate::journal::service_overlaps(all);
    for o in service.iter().take(3) {
        eprintln!(
            "  overlap in service: shard {} served on {} (epoch {}) over [{}, {}] and on {} (epoch {}) over [{}, {}]",
            o.shard, o.a.0, o.a.1, o.a.2, o.a.3, o.b.0, o.b.1, o.b.2, o.b.3
        );
    }
    let overlaps = crate::journal::overlaps(all);
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
    (service.len(), overlaps.len())
}

/// The final read of a set: its content, the entity incarnation that answered, and when it was
/// invoked (journal clock).
pub type FinalRead = (Vec<String>, Option<String>, u64);

/// Acknowledged appends missing from the final sets: `(lost, explained)`. A missing append is
/// lost if the incarnation that acknowledged it answered the final read too; otherwise it is
/// explained only when the journals show, after the append was invoked (its handler ran at some
/// point before it answered) and before the final read, its shard activated at a newer epoch than the one that acknowledged it (a move), or the node
/// that acknowledged it stopped (a restart: values live in entity memory). Anything else is lost.
pub fn lost_appends(
    history: &[Record],
    finals: &BTreeMap<String, FinalRead>,
    journal: &[crate::journal::Record],
) -> (usize, usize) {
    let (mut lost, mut moved) = (0, 0);
    for r in history {
        let (Op::Append { elem }, Outcome::Ok) = (&r.op, r.result) else { continue };
        let Some((set, instance, read_at)) = finals.get(&r.key) else { continue };
        if set.contains(elem) {
            continue;
        }
        let same_instance = r.instance.is_some() && r.instance == *instance;
        // From the invoke, not the completion: the entity may have handled the append before a
        // move whose activation the journal shows before the answer reached the client.
        let between = |t: u64| t > r.invoke && t < *read_at;
        // A move: the shard activated at a newer epoch. A restart: the process that answered
        // was stopped (the lab journals `stopped` when it kills or sees a node exit).
        let moved_on = r.shard.zip(r.epoch).is_some_and(|(shard, epoch)| {
            journal.iter().any(|j| j.event == "activate" && j.shard == shard && j.epoch > epoch && between(j.t_ns))
        });
        let restarted = r
            .responder
            .as_ref()
            .is_some_and(|node| journal.iter().any(|j| j.event == "stopped" && j.node == *node && between(j.t_ns)));
        let explained = !same_instance && (moved_on || restarted);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn append(elem: &str, instance: &str, epoch: u64, complete: u64) -> Record {
        Record {
            client: 0,
            id: 1,
            key: "s".into(),
            op: Op::Append { elem: elem.into() },
            invoke: complete - 1,
            complete,
            result: Outcome::Ok,
            cas_ok: None,
            read: None,
            set: None,
            responder: Some("a".into()),
            shard: Some(3),
            epoch: Some(epoch),
            instance: Some(instance.into()),
            via: 0,
        }
    }

    fn activate(t: u64, epoch: u64) -> crate::journal::Record {
        crate::journal::Record { t_ns: t, node: "b".into(), event: "activate".into(), shard: 3, epoch, msg_epoch: None }
    }

    #[test]
    fn lost_means_lost_unless_a_newer_activation_explains_it() {
        let finals = BTreeMap::from([("s".to_string(), (vec!["x".to_string()], Some("i2".to_string()), 100))]);
        let h = [append("x", "i1", 5, 10), append("y", "i1", 5, 20)];
        // y is missing: no activation at all -> lost.
        assert_eq!(lost_appends(&h, &finals, &[]), (1, 0));
        // An activation at the same epoch (a lease lapse, entities kept) explains nothing.
        assert_eq!(lost_appends(&h, &finals, &[activate(50, 5)]), (1, 0));
        // One after the final read explains nothing either.
        assert_eq!(lost_appends(&h, &finals, &[activate(150, 6)]), (1, 0));
        // A newer epoch activated between the append and the final read: a move.
        assert_eq!(lost_appends(&h, &finals, &[activate(50, 6)]), (0, 1));
        // The node that acknowledged it was stopped (killed) in between: a restart.
        let stopped = crate::journal::Record {
            t_ns: 50,
            node: "a".into(),
            event: "stopped".into(),
            shard: 0,
            epoch: 0,
            msg_epoch: None,
        };
        assert_eq!(lost_appends(&h, &finals, std::slice::from_ref(&stopped)), (0, 1));
        let other = crate::journal::Record { node: "b".into(), ..stopped };
        assert_eq!(lost_appends(&h, &finals, &[other]), (1, 0), "another node's restart explains nothing");
        // The incarnation that acknowledged it answered the final read: lost, whatever moved.
        let same = BTreeMap::from([("s".to_string(), (vec!["x".to_string()], Some("i1".to_string()), 100))]);
        assert_eq!(lost_appends(&h, &same, &[activate(50, 6)]), (1, 0));
        // The answer reached the client after the new epoch activated (the old instance handled
        // it, then the shard moved): explained. One before the invoke explains nothing.
        let mut late = append("y", "i1", 5, 60);
        late.invoke = 40;
        let h = [append("x", "i1", 5, 10), late];
        assert_eq!(lost_appends(&h, &finals, &[activate(50, 6)]), (0, 1));
        assert_eq!(lost_appends(&h, &finals, &[activate(30, 6)]), (1, 0));
    }
}
