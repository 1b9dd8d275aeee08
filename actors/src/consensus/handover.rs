//! Raft leadership handover for a leader that leaves on purpose (`Cluster::leave`, SIGTERM).
//!
//! openraft 0.9 has no leadership transfer. Without one, the voters elect a new leader only
//! after the old one has been silent for their leader lease plus an election timeout (450–600 ms
//! with the defaults), and any voter may win. With it: the leaving leader picks the voter with
//! the most log, stops its heartbeats and asks that voter to stand; the voter starts its election
//! as soon as the other voters' leader lease (`election_timeout_max` since the last heartbeat) has
//! run out, about 300 ms. Safety is Raft's: the chosen voter wins only with a quorum of votes and a
//! log at least as long as theirs.

use std::time::Duration;

use libp2p::PeerId;
use tracing::{info, warn};

use super::rpc::{self, RaftRequest, RaftResponse};
use super::types::{matched_index, Raft};
use crate::transport::{self, parse_peer};
use crate::types::NodeId;

/// Whether an `Elect` request from `from` comes from the leader this node follows (only the
/// leader may hand over its leadership; anybody else asking would just disrupt the group).
pub(crate) fn from_leader(raft: &Raft, from: &PeerId) -> bool {
    let m = raft.metrics().borrow().clone();
    let Some(leader) = m.current_leader else { return false };
    let membership = m.membership_config.membership();
    let is_voter = membership.voter_ids().any(|v| v == m.id);
    let leader_peer = membership.get_node(&leader).and_then(|n| n.peer_id);
    is_voter && leader != m.id && leader_peer == Some(*from)
}

/// Stands for election once the voters' leader lease has run out, retrying until this node
/// leads or someone else does, for at most two election timeouts past the lease.
pub(crate) async fn stand_for_election(raft: Raft) {
    let cfg = raft.config().clone();
    let lease = Duration::from_millis(cfg.election_timeout_max);
    let me = raft.metrics().borrow().id;
    let old = raft.metrics().borrow().current_leader;
    tokio::time::sleep(lease).await;
    let deadline = tokio::time::Instant::now() + lease * 2;
    let mut metrics = raft.metrics();
    let round = Duration::from_millis(cfg.heartbeat_interval * 2);
    while tokio::time::Instant::now() < deadline {
        let leader = metrics.borrow().current_leader;
        if leader.is_some() && leader != old {
            if leader == Some(me) {
                info!(node = %me, "leadership handed over to this node");
            }
            return;
        }
        let _ = raft.trigger().elect().await;
        // Give the votes a round trip before trying again: a new election (a new term) would
        // make the votes already on their way count for nothing.
        let _ =
            tokio::time::timeout(round, metrics.wait_for(|m| m.current_leader.is_some_and(|l| Some(l) != old))).await;
    }
    warn!(node = %me, "leadership handover: not elected in time; the group elects on its own timers");
}

/// On the leader: hands leadership to the most caught-up other voter and waits until the group
/// follows someone else, for at most `timeout`. Returns the new leader, or `None` if this node
/// was not the leader, is the only voter, or the handover did not finish in time (heartbeats are
/// then turned back on; the caller stops anyway and the group elects on its own timers).
pub async fn hand_over(raft: &Raft, transport: &transport::Handle, timeout: Duration) -> Option<NodeId> {
    let m = raft.metrics().borrow().clone();
    let me = m.id;
    if m.current_leader != Some(me) {
        return None;
    }
    let membership = m.membership_config.membership();
    let matched = |v: &NodeId| matched_index(&m, *v).unwrap_or(0);
    let target = membership.voter_ids().filter(|v| *v != me).max_by_key(matched)?;
    let (peer, addrs) = membership.get_node(&target).and_then(|n| parse_peer(&n.peer_id, &n.addrs).ok())?;
    info!(node = %me, to = %target, "leaving as Raft leader: handing leadership over");
    let started = std::time::Instant::now();
    raft.runtime_config().heartbeat(false);
    let asked = tokio::time::timeout(timeout, rpc::call(transport, peer, addrs, &RaftRequest::Elect)).await;
    if !matches!(asked, Ok(Ok(RaftResponse::Elect(true)))) {
        warn!(node = %me, to = %target, "leadership handover refused or unanswered");
        raft.runtime_config().heartbeat(true);
        return None;
    }
    let mut metrics = raft.metrics();
    let moved = async {
        let m = metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != me)).await.ok()?;
        m.current_leader
    };
    match tokio::time::timeout(timeout, moved).await {
        Ok(Some(new)) => {
            let took_ms = started.elapsed().as_millis() as u64;
            info!(node = %me, new_leader = %new, took_ms, "leadership handed over");
            Some(new)
        }
        _ => {
            warn!(node = %me, "leadership handover did not finish in time");
            raft.runtime_config().heartbeat(true);
            None
        }
    }
}
