//! Events a node reports about its shards and the cluster; the framework hands them to the
//! user's hooks (`clusterfunk::hooks`), which document their order.

use crate::shard::Plan;
use crate::types::{Epoch, NodeId, ShardId, WorkerIndex};

/// Something that happened to this node's shards or to the cluster.
#[derive(Clone, Debug, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum ClusterEvent {
    /// This node now owns `shard` at `epoch`; it serves once every hook returned.
    ShardAssigned {
        /// The shard.
        shard: ShardId,
        /// Its epoch: the fencing token for the service's own storage.
        epoch: Epoch,
        /// The node that owned it before, as far as this node saw.
        previous_owner: Option<NodeId>,
    },
    /// This node stopped serving `shard` (it moved away or this node's lease ran out); its
    /// entities have stopped.
    ShardUnassigned {
        /// The shard.
        shard: ShardId,
        /// The epoch it was served at here.
        epoch: Epoch,
        /// The next owner, if known (`None` when the lease ran out).
        new_owner: Option<NodeId>,
    },
    /// A follower of `shard` on this node was promoted to its leader (after `ShardAssigned`).
    ShardLeadershipGained {
        /// The shard.
        shard: ShardId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// This node led `shard` and stays one of its followers (before `ShardUnassigned`).
    ShardLeadershipLost {
        /// The shard.
        shard: ShardId,
        /// The epoch it led at.
        epoch: Epoch,
    },
    /// This node became a follower (replica) of `shard`.
    ReplicaAdded {
        /// The shard.
        shard: ShardId,
        /// The shard's epoch.
        epoch: Epoch,
        /// Its leader.
        leader: Option<NodeId>,
    },
    /// This node is no longer a follower of `shard`.
    ReplicaRemoved {
        /// The shard.
        shard: ShardId,
        /// The shard's epoch.
        epoch: Epoch,
    },
    /// The Raft leader changed.
    LeaderChanged {
        /// The new leader, if one is known.
        leader: Option<NodeId>,
        /// Its term.
        term: u64,
    },
    /// A member came up (this node's failure detector).
    MemberUp(NodeId),
    /// A member went down.
    MemberDown(NodeId),
    /// This node, as Raft leader, committed a new placement: the plan (which shards move, from
    /// where, to where, why).
    RebalanceStarted(Plan),
    /// Every move of that plan is done.
    RebalanceFinished(Plan),
    /// This node's place in the worker index changed (a member joined or left, a worker count
    /// changed, or this node is leaving: then its index is `None`).
    WorkersChanged(WorkerIndex),
    /// This node is refused membership, for the reason given (another member holds its
    /// instance id): it gets no shards and no worker index until the reason is gone.
    MembershipRefused(String),
}
