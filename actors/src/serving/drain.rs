//! Leaving and coming back (docs/architecture.md §7.6): a node that leaves marks itself as
//! leaving through Raft, and the leader hands each of its shards off (the serving core stops it
//! here, its entities stop, the move is confirmed, the new owner starts it); a node restarted
//! after it left clears its mark once it sees itself in the applied state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::consensus::{AppliedState, Consensus, Propose, ProposeError};
use crate::state::{Command, CommandResult};
use crate::types::NodeId;

/// Why a drain did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// The cluster did not accept the leave mark in time (no quorum, say).
    #[error("timed out after {0:?} waiting for the cluster to accept the leave")]
    NotAccepted(Duration),
    /// Not every shard was handed off in time.
    #[error("timed out after {0:?} waiting for this node's shards to be handed off")]
    NotHandedOff(Duration),
}

/// Proposes `cmd`, waiting for the consensus actor's answer.
async fn propose(consensus: &Addr<Consensus>, cmd: Command) -> Result<CommandResult, ProposeError> {
    consensus.send(Propose(cmd)).await.unwrap_or(Err(ProposeError::NoLeader))
}

/// Whether every member is leaving: the whole cluster stops (Ctrl-C on `demo --local`, SIGTERM
/// to every node), and there is nobody to hand shards to.
pub(crate) fn everyone_leaving(a: &AppliedState) -> bool {
    !a.state.members.is_empty() && a.state.members.keys().all(|m| a.state.draining.contains(m))
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every shard of this node was handed off.
    HandedOff,
    /// Every member is leaving: nothing to hand off to, so nothing was (the whole cluster stops).
    AllLeaving,
}

/// Marks `id` as leaving and waits until it owns no shard and no handoff from it is pending, or
/// until every member is leaving. `leaving` is set first, so a concurrent [`rejoin`] does not
/// clear the mark.
pub(crate) async fn drain(
    id: NodeId,
    consensus: &Addr<Consensus>,
    applied: &watch::Receiver<Arc<AppliedState>>,
    leaving: &AtomicBool,
    timeout: Duration,
) -> Result<Drained, DrainError> {
    leaving.store(true, Ordering::Relaxed);
    info!(node = %id, "leaving: handing off shards");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let cmd = Command::SetDraining { id, draining: true };
        match tokio::time::timeout_at(deadline, propose(consensus, cmd)).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                warn!(error = %e, "leave: cannot mark this node as leaving yet; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return Err(DrainError::NotAccepted(timeout)),
        }
    }
    let mut applied = applied.clone();
    let handed_off = async move {
        let done = |a: &AppliedState| a.state.handed_off(id);
        let a = applied.wait_for(|a| done(a) || everyone_leaving(a)).await.ok()?.clone();
        Some(if done(&a) { Drained::HandedOff } else { Drained::AllLeaving })
    };
    match tokio::time::timeout_at(deadline, handed_off).await {
        Ok(Some(Drained::HandedOff)) => {
            info!(node = %id, "leaving: every shard handed off");
            Ok(Drained::HandedOff)
        }
        Ok(Some(Drained::AllLeaving)) => {
            info!(node = %id, "leaving: every member is leaving (the whole cluster stops); nothing to hand off to");
            Ok(Drained::AllLeaving)
        }
        _ => Err(DrainError::NotHandedOff(timeout)),
    }
}

/// A node restarted after it left (its data dir still says "leaving") takes shards again: once
/// it sees itself in the applied state, it clears its mark through Raft, unless it is leaving
/// again meanwhile.
pub(crate) async fn rejoin(
    id: NodeId,
    consensus: Addr<Consensus>,
    mut applied: watch::Receiver<Arc<AppliedState>>,
    leaving: Arc<AtomicBool>,
) {
    if applied.wait_for(|a| a.state.members.contains_key(&id)).await.is_err() {
        return;
    }
    loop {
        let draining = applied.borrow().state.draining.contains(&id);
        if !draining || leaving.load(Ordering::Relaxed) {
            return;
        }
        match propose(&consensus, Command::SetDraining { id, draining: false }).await {
            Ok(_) => {
                info!(node = %id, "restarted after leaving: taking shards again");
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot clear this node's leaving mark yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
