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
    parse(&text)
}

/// Parses journal lines.
pub fn parse(text: &str) -> anyhow::Result<Vec<Record>> {
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
                // A second activation never erases an open one: the open interval ends here
                // and a new one starts (an overwrite would hide what the first one overlapped).
                if let Some((from, epoch)) = open.insert(key, (r.t_ns, r.epoch)) {
                    out.push(Interval { node: r.node.clone(), shard: r.shard, epoch, from, to: r.t_ns });
                }
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

/// What the service in merged journals shows: the `serve` records (a message's handler
/// about to run, journalled at the check at execution) of each activation span
/// `[first serve, last serve]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceOverlap {
    /// The shard.
    pub shard: u32,
    /// A node and epoch that served, and the span of its service.
    pub a: (String, u64, u64, u64),
    /// Another node and epoch that served inside that span (or an older epoch served after a newer one).
    pub b: (String, u64, u64, u64),
}

/// Two owners seen in what was *served*, not in what a node believed: for each shard, the
/// handler runs (`serve` records) in time order must come in blocks, one node (one activation)
/// after another, and their epochs never go back. Independent of `deactivate` records (which a
/// node may backdate to when its lease ended): a node that believed it stopped but ran a handler
/// is caught here. Returns every violation.
pub fn service_overlaps(records: &[Record]) -> Vec<ServiceOverlap> {
    // (shard) -> spans per (node, epoch): [first, last] serve time.
    type Spans = BTreeMap<(String, u64), (u64, u64)>;
    let mut spans: BTreeMap<u32, Spans> = BTreeMap::new();
    for r in records.iter().filter(|r| r.event == "serve") {
        let e = spans.entry(r.shard).or_default().entry((r.node.clone(), r.epoch)).or_insert((r.t_ns, r.t_ns));
        e.0 = e.0.min(r.t_ns);
        e.1 = e.1.max(r.t_ns);
    }
    let mut out = Vec::new();
    for (shard, by) in spans {
        let list: Vec<_> = by.into_iter().collect();
        for (k, ((na, ea), (fa, la))) in list.iter().enumerate() {
            for ((nb, eb), (fb, lb)) in &list[k + 1..] {
                let interleaved = na != nb && fa <= lb && fb <= la;
                // An older epoch served after a newer one began serving (any nodes).
                let backwards = (ea < eb && la > fb) || (eb < ea && lb > fa);
                if interleaved || backwards {
                    out.push(ServiceOverlap { shard, a: (na.clone(), *ea, *fa, *la), b: (nb.clone(), *eb, *fb, *lb) });
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
        // A second activate on a (node, shard) still open does not erase the first interval.
        let again = vec![
            r(1, "a", "activate", 0),
            r(2, "b", "activate", 0),
            r(3, "b", "deactivate", 0),
            r(4, "a", "activate", 0),
        ];
        assert_eq!(overlaps(&again).len(), 1, "a's first interval [1, 4) overlapped b's [2, 3)");
    }

    fn serve(t: u64, node: &str, shard: u32, epoch: u64) -> Record {
        Record { t_ns: t, node: node.into(), event: "serve".into(), shard, epoch, msg_epoch: None }
    }

    #[test]
    fn service_shows_two_owners_whatever_the_deactivations_say() {
        // a serves epoch 1, then b epoch 2: one block after the other.
        let ok = vec![serve(1, "a", 0, 1), serve(3, "a", 0, 1), serve(5, "b", 0, 2), serve(9, "b", 0, 2)];
        assert!(service_overlaps(&ok).is_empty());
        // a says it stopped at 4 (backdated), yet ran a handler at 6 after b began at 5.
        let mut bad = ok.clone();
        bad.push(r(4, "a", "deactivate", 0));
        bad.push(serve(6, "a", 0, 1));
        let found = service_overlaps(&bad);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].a.0.as_str(), found[0].b.0.as_str()), ("a", "b"));
        assert!(overlaps(&bad).is_empty(), "the activation intervals alone do not see it");
        // The same node, an older epoch after a newer one (a restart that went back).
        let back = vec![serve(1, "a", 0, 2), serve(2, "a", 0, 1)];
        assert_eq!(service_overlaps(&back).len(), 1);
        // Other shards do not mix.
        let two = vec![serve(1, "a", 0, 1), serve(2, "b", 1, 1), serve(3, "a", 0, 1)];
        assert!(service_overlaps(&two).is_empty());
    }
}
