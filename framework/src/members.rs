//! The cluster's members as typed values ([`Cluster::members`](crate::Cluster::members),
//! [`Cluster::member`](crate::Cluster::member), [`Cluster::owner_node`](crate::Cluster::owner_node)).

use std::collections::BTreeMap;

use clusterfunk_actors::consensus::AppliedState;
use clusterfunk_actors::membership::{MemberState, View};
use clusterfunk_actors::types::{admitted_attributes, name_error, NodeId, NodeMeta};

/// A member's place in the Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Votes in Raft.
    Voter,
    /// Replicates the Raft log without voting.
    Learner,
    /// In the cluster state, not (or no longer) in the Raft configuration.
    Registered,
}

/// One member of the cluster as this node knows it: what it announced about itself (by gossip,
/// else as registered through Raft), its role and its liveness as this node sees it.
///
/// ```no_run
/// # fn f(cluster: &clusterfunk::Cluster, shard: clusterfunk::ShardId) {
/// // Where a service's own gRPC port is for the node that owns `shard`:
/// if let Some(grpc) = cluster.owner_node(shard).and_then(|m| m.endpoint("grpc").map(str::to_string)) {
///     println!("dial {grpc}");
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// Its instance id (`-i ID`), if it has one.
    pub name: Option<String>,
    /// Voter, learner, or only registered.
    pub role: Role,
    /// Up, suspect or down, as this node sees it.
    pub state: MemberState,
    /// The multiaddresses it listens on for other nodes.
    pub addrs: Vec<String>,
    /// The endpoints it declared ([`Builder::endpoint`](crate::Builder::endpoint); `http` for
    /// its service's own server).
    pub endpoints: BTreeMap<String, String>,
    /// The metadata it declared ([`Builder::metadata`](crate::Builder::metadata)).
    pub metadata: BTreeMap<String, String>,
    /// Its zone, if set.
    pub zone: Option<String>,
    /// Its weight.
    pub weight: u32,
    /// Its worker count.
    pub workers: u32,
    /// Its dashboard `host:port`, if it serves one.
    pub dashboard: Option<String>,
}

impl Member {
    /// The endpoint named `name`, if it declared one.
    pub fn endpoint(&self, name: &str) -> Option<&str> {
        self.endpoints.get(name).map(String::as_str)
    }
}

/// Member `id` as `applied` and `view` know it; `None` if neither does.
pub(crate) fn member(id: NodeId, applied: &AppliedState, view: &View) -> Option<Member> {
    let membership = applied.membership.membership();
    let seen = view.members.get(&id);
    let registered = applied.state.members.get(&id);
    let in_raft = membership.get_node(&id);
    let meta: Option<&NodeMeta> = seen.map(|v| &v.meta).or(registered);
    if meta.is_none() && in_raft.is_none() {
        return None;
    }
    let role = if membership.voter_ids().any(|v| v == id) {
        Role::Voter
    } else if in_raft.is_some() {
        Role::Learner
    } else {
        Role::Registered
    };
    let raft_addrs = in_raft.map(|n| n.addrs.clone()).unwrap_or_default();
    // What gossip says is bounded as a registration would be (a member may say anything).
    let attrs =
        |f: fn(&NodeMeta) -> &BTreeMap<String, String>| meta.map(|m| admitted_attributes(f(m))).unwrap_or_default();
    Some(Member {
        id,
        name: registered
            .map_or_else(|| meta.and_then(|m| m.name.clone()), |r| r.name.clone())
            .filter(|n| name_error(n).is_none()),
        role,
        state: seen.map_or(MemberState::Down, |v| v.state),
        addrs: meta.map(|m| m.addrs.clone()).filter(|a| !a.is_empty()).unwrap_or(raft_addrs),
        endpoints: attrs(|m| &m.endpoints),
        metadata: attrs(|m| &m.metadata),
        zone: meta.and_then(|m| m.zone.clone()),
        weight: meta.map_or(1, |m| m.weight),
        workers: registered.or(meta).map_or(1, |m| m.workers),
        dashboard: meta.and_then(|m| m.dashboard.clone()),
    })
}

/// Every member in the Raft configuration or the cluster state, by id.
pub(crate) fn all(applied: &AppliedState, view: &View) -> Vec<Member> {
    let mut ids: Vec<NodeId> = applied.membership.membership().nodes().map(|(id, _)| *id).collect();
    ids.extend(applied.state.members.keys().copied());
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter().filter_map(|id| member(id, applied, view)).collect()
}
