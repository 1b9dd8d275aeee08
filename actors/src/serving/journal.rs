//! The ownership journal: what this node activated, served, stopped and refused, for the lab's
//! checkers (docs/architecture.md §7.3). Behind a trait so tests can keep it in memory.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::lease::monotonic_ns;
use crate::types::{Epoch, NodeId, ShardId};

/// What happened to a shard on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The shard starts serving at `epoch` (written *before* it serves).
    Activate,
    /// The shard stopped serving (written *after* it stopped; for a lease that ran out, dated
    /// to the instant it ran out).
    Deactivate,
    /// A message for the shard ran in an entity (checked at execution, not at admission).
    Serve,
    /// A message stamped with an older epoch than the highest seen was refused.
    RejectStale,
}

impl Event {
    /// The name the checkers read.
    pub fn name(self) -> &'static str {
        match self {
            Event::Activate => "activate",
            Event::Deactivate => "deactivate",
            Event::Serve => "serve",
            Event::RejectStale => "reject_stale",
        }
    }
}

/// One journal line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// What happened.
    pub event: Event,
    /// The node.
    pub node: NodeId,
    /// The shard.
    pub shard: ShardId,
    /// The epoch the shard is (or was) served at here.
    pub epoch: Epoch,
    /// The refused message's epoch ([`Event::RejectStale`]).
    pub msg_epoch: Option<Epoch>,
    /// How long before now it happened (a lease that ran out before it was noticed).
    pub ago: Duration,
}

/// Where records go. Called on the hot path for [`Event::Serve`]: keep it cheap.
pub trait Journal: Send + Sync {
    /// Appends one record.
    fn record(&self, rec: Record);
}

/// JSON lines with `CLOCK_MONOTONIC` nanoseconds: one clock for every process and network
/// namespace on a machine, so the journals of several nodes merge exactly.
pub struct FileJournal {
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl FileJournal {
    /// Appends to `path` (created if missing).
    pub fn open(path: &Path) -> std::io::Result<FileJournal> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileJournal { out: Mutex::new(std::io::BufWriter::new(f)) })
    }
}

/// The JSON line of `rec` at `t_ns`.
pub fn line(rec: &Record, t_ns: u64) -> String {
    let extra = rec.msg_epoch.map_or(String::new(), |e| format!(",\"msg_epoch\":{}", e.0));
    format!(
        "{{\"t_ns\":{t_ns},\"node\":\"{}\",\"event\":\"{}\",\"shard\":{},\"epoch\":{}{extra}}}\n",
        rec.node,
        rec.event.name(),
        rec.shard.0,
        rec.epoch.0
    )
}

impl Journal for FileJournal {
    fn record(&self, rec: Record) {
        let t = monotonic_ns().saturating_sub(rec.ago.as_nanos() as u64);
        let line = line(&rec, t);
        let mut w = self.out.lock().expect("journal lock is never poisoned");
        // The journal is a test aid: a write error must not stop serving, but must be visible.
        if let Err(e) = w.write_all(line.as_bytes()).and_then(|_| w.flush()) {
            tracing::warn!(error = %e, "ownership journal: write failed");
        }
    }
}

/// Records in memory (tests).
#[derive(Default)]
pub struct MemoryJournal {
    /// What was recorded, in order.
    pub records: Mutex<Vec<Record>>,
}

impl Journal for MemoryJournal {
    fn record(&self, rec: Record) {
        self.records.lock().expect("journal lock is never poisoned").push(rec);
    }
}
