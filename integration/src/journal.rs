//! The ownership-journal checker: merge the JSON-lines journals of every node (one
//! `CLOCK_MONOTONIC` for all of them) and count the instants a shard was active on two nodes.

use std::collections::BTreeMap;
use std::path::Path;

/// One journal line.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Record {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub t_ns: u64,
    /// The node (hex id).
    pub node: String,
    /// `activate`, `deactivate` or `reject_stale`.
    pub event: String,
    /// The shard.
    pub shard: u32,
    /// The epoch.
    pub epoch: u64,
    /// For `reject_stale`: the epoch the refused message carried.
    #[serde(default)]
    pub msg_epoch: Option<u64>,
}

/// Reads one journal (a missing file is an empty journal).
pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// A serving interval of one shard on one node: `[from, to)`, `to = u64::MAX` while still open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// The node.
    pub node: String,
    /// The shard.
    pub shard: u32,
    /// The epoch.
    pub epoch: u64,
    /// Start (ns).
    pub from: u64,
    /// End (ns).
    pub to: u64,
}

/// The serving intervals in merged journals.
pub fn intervals(records: &[Record]) -> Vec<Interval> {
    let mut open: BTreeMap<(String, u32), (u64, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.t_ns);
    for r in sorted {
        let key = (r.node.clone(), r.shard);
        match r.event.as_str() {
            "activate" => {
                open.insert(key, (r.t_ns, r.epoch));
            }
            "deactivate" => {
                if let Some((from, epoch)) = open.remove(&key) {
                    out.push(Interval { node: r.node.clone(), shard: r.shard, epoch, from, to: r.t_ns });
                }
            }
            // The process was gone by then (written by the test harness after kill -9 or an
            // exit): everything it had open ends.
            "stopped" => {
                let ended: Vec<(String, u32)> = open.keys().filter(|(n, _)| *n == r.node).cloned().collect();
                for k in ended {
                    let (from, epoch) = open.remove(&k).expect("listed above");
                    out.push(Interval { node: k.0, shard: k.1, epoch, from, to: r.t_ns });
                }
            }
            _ => {}
        }
    }
    for ((node, shard), (from, epoch)) in open {
        out.push(Interval { node, shard, epoch, from, to: u64::MAX });
    }
    out
}

/// Appends a `stopped` record for the node of `journal` (its process is gone now): closes every
/// interval it had open. Nothing to do if the node never wrote a record.
pub fn mark_stopped(journal: &Path) -> anyhow::Result<()> {
    let Some(node) = read(journal).ok().and_then(|r| r.first().map(|r| r.node.clone())) else { return Ok(()) };
    let t = clusterfunk_actors::lease::monotonic_ns();
    let mut f = std::fs::OpenOptions::new().append(true).open(journal)?;
    std::io::Write::write_all(
        &mut f,
        format!("{{\"t_ns\":{t},\"node\":\"{node}\",\"event\":\"stopped\",\"shard\":0,\"epoch\":0}}\n").as_bytes(),
    )?;
    Ok(())
}

/// Pairs of intervals of one shard on two different nodes that overlap in time (must be none).
pub fn overlaps(records: &[Record]) -> Vec<(Interval, Interval)> {
    let mut by_shard: BTreeMap<u32, Vec<Interval>> = BTreeMap::new();
    for i in intervals(records) {
        by_shard.entry(i.shard).or_default().push(i);
    }
    let mut out = Vec::new();
    for list in by_shard.values() {
        for (k, a) in list.iter().enumerate() {
            for b in &list[k + 1..] {
                if a.node != b.node && a.from < b.to && b.from < a.to {
                    out.push((a.clone(), b.clone()));
                }
            }
        }
    }
    out
}

/// Shards that were served by more than one node over the run (so the overlap check had
/// something to check).
pub fn moved_shards(records: &[Record]) -> usize {
    let mut nodes: BTreeMap<u32, std::collections::BTreeSet<String>> = BTreeMap::new();
    for i in intervals(records) {
        nodes.entry(i.shard).or_default().insert(i.node);
    }
    nodes.values().filter(|n| n.len() > 1).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: u64, node: &str, event: &str, shard: u32) -> Record {
        Record { t_ns: t, node: node.into(), event: event.into(), shard, epoch: 1, msg_epoch: None }
    }

    #[test]
    fn finds_overlaps_and_only_them() {
        let ok = vec![r(1, "a", "activate", 0), r(5, "a", "deactivate", 0), r(5, "b", "activate", 0)];
        assert!(overlaps(&ok).is_empty());
        assert_eq!(moved_shards(&ok), 1);
        let bad = vec![r(1, "a", "activate", 0), r(4, "b", "activate", 0), r(5, "a", "deactivate", 0)];
        assert_eq!(overlaps(&bad).len(), 1);
        let open = vec![r(1, "a", "activate", 0), r(9, "b", "activate", 0)];
        assert_eq!(overlaps(&open).len(), 1, "an interval still open overlaps what comes later");
    }
}
