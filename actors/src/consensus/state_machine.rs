//! The Raft state machine: applies committed [`Command`]s to the [`ClusterState`], publishes every
//! applied state through a watch, and persists snapshots in the node's redb store.
//!
//! Restart: the last persisted snapshot is loaded at open; openraft then re-applies the log from
//! the snapshot up to the durable commit index.

use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot::{SnapshotData, MAX_SNAPSHOT};
use super::store::{Store, SNAPSHOT};
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{ClusterState, CommandResult};

/// What every node knows of the replicated state after applying the log up to `last_applied`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The Raft membership (voters and learners) as of `last_applied`.
    pub membership: StoredMembership,
    /// The cluster state.
    pub state: ClusterState,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state machine (openraft v2 `RaftStateMachine`).
pub struct StateMachine {
    store: Store,
    applied: AppliedState,
    tx: watch::Sender<Arc<AppliedState>>,
    snapshot_seq: u64,
    before_publish: Option<BeforePublish>,
}

/// Runs on every applied state before it is published (the serving table revokes moved shards).
pub type BeforePublish = Box<dyn Fn(&AppliedState) + Send + Sync>;

impl StateMachine {
    /// Opens the state machine over `store`, restoring the last snapshot; returns it with a watch
    /// of the applied state.
    pub fn open(store: Store) -> Result<(StateMachine, watch::Receiver<Arc<AppliedState>>), super::store::StoreError> {
        let applied = match store.get_meta::<StoredSnapshot>(SNAPSHOT)? {
            Some(snap) => settled(rmp_serde::from_slice(&snap.data)?),
            None => AppliedState::default(),
        };
        let (tx, rx) = watch::channel(Arc::new(applied.clone()));
        Ok((StateMachine { store, applied, tx, snapshot_seq: 0, before_publish: None }, rx))
    }

    /// Sets what runs on every applied state before it is published; runs it once now.
    pub fn before_publish(&mut self, f: BeforePublish) {
        f(&self.applied);
        self.before_publish = Some(f);
    }

    fn publish(&self) {
        if let Some(f) = &self.before_publish {
            f(&self.applied);
        }
        self.tx.send_replace(Arc::new(self.applied.clone()));
    }
}

/// A restored state, its worker epoch settled (`ClusterState::settle_workers_epoch`).
fn settled(mut applied: AppliedState) -> AppliedState {
    let index = applied.last_applied.map_or(0, |l| l.index);
    applied.state.settle_workers_epoch(index);
    applied
}

/// Whether received snapshot bytes decode as an applied state (checked before openraft hands
/// them to [`StateMachine`], where a failure would stop the node).
fn decodes(data: &[u8]) -> Result<(), String> {
    rmp_serde::from_slice::<AppliedState>(data).map(|_| ()).map_err(|e| e.to_string())
}

/// Builds a snapshot from a copy of the applied state.
pub struct SnapshotBuilder {
    store: Store,
    applied: AppliedState,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = crate::wire::encode(&self.applied);
        let last = self.applied.last_applied;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta { last_log_id: last, last_membership: self.applied.membership.clone(), snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        let bytes = crate::wire::encode(&stored);
        self.store
            .put_meta_durable(SNAPSHOT, bytes)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotData::from_bytes(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            self.applied.last_applied = Some(entry.log_id);
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::Applied { index },
                EntryPayload::Normal(cmd) => self.applied.state.apply(cmd, index),
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    CommandResult::Applied { index }
                }
            };
            results.push(result);
        }
        self.publish();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder { store: self.store.clone(), applied: self.applied.clone(), seq: self.snapshot_seq }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(SnapshotData::receiving(MAX_SNAPSHOT, decodes)))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotData>) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let applied: AppliedState = settled(
            rmp_serde::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?,
        );
        let stored = StoredSnapshot { meta: meta.clone(), data };
        let bytes = crate::wire::encode(&stored);
        let sig = meta.signature();
        self.store
            .put_meta_durable(SNAPSHOT, bytes)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(sig), &e))?;
        self.applied = applied;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let stored: Option<StoredSnapshot> =
            self.store.get_meta(SNAPSHOT).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(SnapshotData::from_bytes(s.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::WORKERS_EPOCH_UNKNOWN;
    use crate::types::{ClusterName, NodeId};

    #[test]
    fn a_snapshot_from_before_the_worker_index_takes_its_log_index_as_the_worker_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &ClusterName::new("a", "b")).unwrap();
        // A state written before the field decodes with the sentinel, as this one does.
        let mut applied = AppliedState {
            last_applied: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(3, NodeId(1)), 42)),
            ..AppliedState::default()
        };
        applied.state.workers_epoch = WORKERS_EPOCH_UNKNOWN;
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id: "3-42-1".into(),
        };
        store.put_meta(SNAPSHOT, &StoredSnapshot { meta, data: crate::wire::encode(&applied) }).unwrap();
        let (sm, rx) = StateMachine::open(store).unwrap();
        assert_eq!(sm.applied.state.workers_epoch, 42);
        assert_eq!(rx.borrow().state.workers_epoch, 42);
    }
}
