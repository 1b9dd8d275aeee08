//! The Raft log, vote and snapshots, persisted in one redb file in the node's data directory.
//!
//! Every write is one redb write transaction committed with `Durability::Immediate` (fsync) in a
//! blocking thread, so the consensus arbiter never stalls on disk (docs/architecture.md §3). A vote is
//! durable before `save_vote` returns; appended entries are durable and readable before the
//! flush callback fires. A failed commit is a storage error, which openraft treats as fatal.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogId, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::types::ClusterName;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";
const CLUSTER: &str = "cluster";
pub(crate) const SNAPSHOT: &str = "snapshot";
/// The store's file name in the data directory.
pub const FILE: &str = "raft.redb";

/// Why the data directory's store cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// redb could not open or create the file.
    #[error("cannot open the Raft store {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: redb::Error,
    },
    /// The store belongs to another cluster.
    #[error("the data directory belongs to cluster {found}, not {expected}")]
    OtherCluster {
        /// The cluster recorded in the store.
        found: ClusterName,
        /// The cluster this node was configured for.
        expected: ClusterName,
    },
    /// The store's contents do not decode.
    #[error("the Raft store is corrupt: {0}")]
    Corrupt(#[from] StoreError),
    /// A store that must exist (the node key next to it does) was created empty just now.
    #[error("the Raft store {0} is new, but the node key next to it is not")]
    Lost(String),
}

/// The shared redb database behind the log store and the state machine.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    faults: Arc<crate::faults::DiskFaults>,
    /// Durable writes in progress.
    pending: Arc<PendingWrites>,
    /// The highest log index saved as committed (0: none yet), for metrics.
    committed: Arc<std::sync::atomic::AtomicU64>,
}

/// Nanoseconds since this process first asked (never 0).
fn mono_ns() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64 + 1
}

/// Marks a durable write in progress for as long as it lives. Writes in flight are counted; the
/// start kept is the oldest one's (the first of a run of overlapping writes).
struct Pending<'a>(&'a PendingWrites);

/// Durable writes in flight and when the oldest began.
#[derive(Debug, Default)]
pub(crate) struct PendingWrites {
    in_flight: std::sync::Mutex<(u32, u64)>,
}

impl<'a> Pending<'a> {
    fn start(at: &'a PendingWrites) -> Pending<'a> {
        let mut g = at.in_flight.lock().expect("pending lock is never poisoned");
        if g.0 == 0 {
            g.1 = mono_ns();
        }
        g.0 += 1;
        Pending(at)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut g = self.0.in_flight.lock().expect("pending lock is never poisoned");
        g.0 -= 1;
    }
}

impl Store {
    /// Opens (or creates) `dir/raft.redb` and checks it belongs to `cluster`, recording the
    /// cluster name on first use.
    pub fn open(dir: &Path, cluster: &ClusterName) -> Result<Store, OpenError> {
        Store::open_with_faults(dir, cluster, Arc::new(crate::faults::DiskFaults::off()))
    }

    /// [`Store::open`], with storage fault injection (tests and the chaos lab).
    pub fn open_with_faults(
        dir: &Path,
        cluster: &ClusterName,
        faults: Arc<crate::faults::DiskFaults>,
    ) -> Result<Store, OpenError> {
        Store::open_checked(dir, cluster, faults, false)
    }

    /// As [`Store::open_with_faults`]; with `must_exist`, a store that records no cluster yet
    /// (new, or emptied) is refused ([`OpenError::Lost`]) and nothing is written to it.
    pub fn open_checked(
        dir: &Path,
        cluster: &ClusterName,
        faults: Arc<crate::faults::DiskFaults>,
        must_exist: bool,
    ) -> Result<Store, OpenError> {
        let path = dir.join(FILE);
        let open_err = |e: redb::Error| OpenError::Open { path: path.display().to_string(), source: e };
        let db = Database::create(&path).map_err(|e| open_err(e.into()))?;
        let store = Store { db: Arc::new(db), faults, pending: Default::default(), committed: Default::default() };
        match store.get_meta::<ClusterName>(CLUSTER)? {
            Some(found) if &found != cluster => {
                return Err(OpenError::OtherCluster { found, expected: cluster.clone() })
            }
            Some(_) => {}
            None if must_exist => return Err(OpenError::Lost(path.display().to_string())),
            None => store.put_meta(CLUSTER, cluster).map_err(open_err)?,
        }
        Ok(store)
    }

    /// How long the durable write in progress has been waiting (its fsync), if one is.
    pub fn write_pending_for(&self) -> Option<Duration> {
        let (n, since) = *self.pending.in_flight.lock().expect("pending lock is never poisoned");
        (n > 0).then(|| Duration::from_nanos(mono_ns().saturating_sub(since)))
    }

    /// The disk fault injector (tests and the chaos lab).
    pub fn faults(&self) -> &Arc<crate::faults::DiskFaults> {
        &self.faults
    }

    /// Whether this store already holds Raft state (a vote, a snapshot or any log entry).
    pub fn has_raft_state(&self) -> Result<bool, redb::Error> {
        let tx = self.db.begin_read()?;
        let has_meta = match tx.open_table(META) {
            Ok(t) => t.get(VOTE)?.is_some() || t.get(SNAPSHOT)?.is_some(),
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(e.into()),
        };
        let has_log = match tx.open_table(LOG) {
            Ok(t) => t.last()?.is_some(),
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(e.into()),
        };
        Ok(has_meta || has_log)
    }

    /// Reads a metadata value.
    pub(crate) fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(redb::Error::from(e).into()),
        };
        let Some(v) = table.get(key)? else { return Ok(None) };
        Ok(Some(rmp_serde::from_slice(v.value())?))
    }

    /// Writes a metadata value durably.
    pub(crate) fn put_meta<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), redb::Error> {
        let bytes = crate::wire::encode(value);
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert(key, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// The highest log index saved as committed (0: none yet).
    pub fn committed_index(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The log store over this database.
    pub fn log_store(&self) -> LogStore {
        LogStore { store: self.clone() }
    }

    fn read_entries(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(redb::Error::from(e).into()),
        };
        let range = match end {
            Some(end) => table.range(start..end)?,
            None => table.range(start..)?,
        };
        let mut out = Vec::new();
        for item in range {
            let (_, v) = item?;
            out.push(rmp_serde::from_slice(v.value())?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(redb::Error::from(e).into()),
        };
        let last = match table.last()? {
            Some((_, v)) => Some(rmp_serde::from_slice(v.value())?),
            None => None,
        };
        Ok(last)
    }

    /// Writes one metadata value on a blocking thread and waits for its fsync.
    pub(crate) async fn put_meta_durable(&self, key: &'static str, bytes: Vec<u8>) -> Result<(), redb::Error> {
        self.write(move |tx| {
            tx.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    /// Runs a write transaction on a blocking thread and waits for its fsync.
    ///
    /// A write that fails ends the process (exit code 70, [`crate::fatal`]): after a failed
    /// fsync nothing is known about what reached the disk, and a node that goes on could
    /// acknowledge what it later forgets (a vote, a log entry). Fail-stop is the only safe answer.
    pub(crate) async fn write<F>(&self, f: F) -> Result<(), redb::Error>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let (db, faults, pending) = (self.db.clone(), self.faults.clone(), self.pending.clone());
        let run = move || -> Result<(), redb::Error> {
            let _pending = Pending::start(&pending);
            let tx = db.begin_write()?;
            f(&tx)?;
            if faults.write_fails() {
                return Err(redb::Error::Io(std::io::Error::other("injected fault: fsync failed")));
            }
            if let Some(d) = faults.take_stall() {
                tracing::warn!(
                    stall_ms = d.as_millis() as u64,
                    "fault injection: a durable write stalls before its fsync"
                );
                std::thread::sleep(d);
            }
            tx.commit()?;
            Ok(())
        };
        let result = match tokio::task::spawn_blocking(run).await {
            Ok(r) => r,
            Err(e) => Err(redb::Error::Corrupted(format!("storage thread failed: {e}"))),
        };
        if let Err(e) = &result {
            crate::fatal::storage_failed(e);
        }
        result
    }
}

/// An error reading the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed.
    #[error(transparent)]
    Db(#[from] redb::Error),
    /// A stored value does not decode.
    #[error("stored value does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// The Raft log storage (openraft's v2 `RaftLogStorage`).
#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => *s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(*e + 1),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        self.store.read_entries(start, end).map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = |e: StoreError| -> StorageError { StorageIOError::read_logs(&e).into() };
        let last_purged: Option<LogId> = self.store.get_meta(PURGED).map_err(read)?;
        let last = self.store.last_entry().map_err(read)?.map(|e| *e.get_log_id());
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = crate::wire::encode(vote);
        self.store.put_meta_durable(VOTE, bytes).await.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.store.get_meta(VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.store.committed.fetch_max(committed.map_or(0, |l| l.index), std::sync::atomic::Ordering::Relaxed);
        let bytes = crate::wire::encode(&committed);
        self.store.put_meta_durable(COMMITTED, bytes).await.map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.store.get_meta::<Option<LogId>>(COMMITTED).map_err(|e| StorageIOError::read(&e))?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> =
            entries.into_iter().map(|e| (e.get_log_id().index, crate::wire::encode(&e))).collect();
        let result = self
            .store
            .write(move |tx| {
                let mut t = tx.open_table(LOG)?;
                for (i, bytes) in &encoded {
                    t.insert(*i, bytes.as_slice())?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "raft log append failed; the node stops");
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.store
            .write(move |tx| {
                tx.open_table(LOG)?.retain_in(from.., |_, _| false)?;
                Ok(())
            })
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let upto = log_id.index;
        let bytes = crate::wire::encode(&log_id);
        self.store
            .write(move |tx| {
                tx.open_table(META)?.insert(PURGED, bytes.as_slice())?;
                tx.open_table(LOG)?.retain_in(..=upto, |_, _| false)?;
                Ok(())
            })
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
