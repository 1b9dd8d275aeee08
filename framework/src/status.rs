//! The cluster status as the dashboard's `GET /api/cluster` serves it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use clusterfunk_actors::consensus::AppliedState;
use clusterfunk_actors::membership::{MemberState, View};
use clusterfunk_actors::multiaddr::Protocol;
use clusterfunk_actors::node::Node;
use clusterfunk_actors::types::{ClusterName, NodeId, NodeMeta};
use clusterfunk_actors::Multiaddr;
use serde::Serialize;

/// A node's view of the cluster. Node ids are 16-hex-digit strings (JSON numbers lose precision
/// past 2^53).
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: String,
    /// This node's instance id, if it has one.
    pub node_name: Option<String>,
    /// This node's place in the worker index ([`Cluster::workers`](crate::Cluster::workers)).
    pub workers: crate::WorkerIndex,
    /// Why this node is refused membership, while it is.
    pub membership_refused: Option<String>,
    /// Where the service's own HTTP server listens, if it runs
    /// ([`ClusterConfig::start_with_http`](crate::ClusterConfig::start_with_http)).
    pub http: Option<String>,
    /// The cluster's name.
    pub cluster: ClusterInfo,
    /// The Raft leader, if known.
    pub leader: Option<String>,
    /// The Raft term.
    pub term: u64,
    /// This node's Raft state.
    pub raft: RaftInfo,
    /// Members of the Raft group (voters and learners), with liveness as this node sees it.
    pub members: Vec<MemberStatus>,
    /// The committed shard map.
    pub shard_map: ShardMapStatus,
    /// Transport counters.
    pub transport: TransportStatus,
    /// Entity traffic counters (cumulative; rates are their differences over time).
    pub traffic: TrafficStatus,
    /// What this node serves: its lease and active shards (docs/architecture.md §7).
    pub ownership: OwnershipStatus,
}

/// This node's lease and serving state.
#[derive(Clone, Debug, Serialize)]
pub struct OwnershipStatus {
    /// Whether this node holds a valid lease (without one it serves nothing).
    pub lease_valid: bool,
    /// Milliseconds the lease is still valid for.
    pub lease_left_ms: Option<u64>,
    /// Shards this node serves now.
    pub serving: u64,
    /// Messages refused for a stale epoch.
    pub rejected_stale: u64,
    /// Shard hooks that overran their budget.
    pub hooks_overrun: u64,
    /// Entity stops that took longer than the hook budget (a handoff waits for them).
    pub slow_stops: u64,
    /// Entity stops given up after the force-stop time (their answers withheld).
    pub abandoned_stops: u64,
    /// Planned moves waiting for their old owner to confirm.
    pub handoffs_pending: usize,
    /// Whether this node is leaving the cluster.
    pub draining: bool,
    /// Why this node is not ready (what `GET /ready` says), or `None` when it is.
    pub not_ready: Option<String>,
    /// Why the leader refused this node's last lease renewal, if no grant came after it.
    pub lease_refused: Option<String>,
}

/// Entity traffic on this node.
#[derive(Clone, Debug, Serialize)]
pub struct TrafficStatus {
    /// Messages delivered here without leaving the node.
    pub local: u64,
    /// Messages forwarded to their owner on another node.
    pub forwarded: u64,
    /// Messages from other nodes served here.
    pub served: u64,
    /// Messages that failed (refused, timed out, no owner...).
    pub failed: u64,
    /// Malformed proxy frames refused.
    pub malformed: u64,
    /// Requests that arrived twice on one stream and ran once.
    pub duplicates: u64,
    /// Proxy streams refused because their peer is not in the Raft configuration.
    pub unauthorized: u64,
    /// Requests from non-member clients (for this node's shards, or routed on as a gateway).
    pub client_requests: u64,
    /// Client streams refused (over the subscriber limit, or a client's replica write).
    pub client_refused: u64,
    /// Entity instances alive here now.
    pub entities: u64,
    /// Entity instances created here so far.
    pub activations: u64,
    /// Entity instances alive here now, per entity type.
    pub by_type: BTreeMap<String, u64>,
}

/// The cluster's name.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterInfo {
    /// The cluster key.
    pub name: String,
    /// The environment.
    pub env: String,
}

/// Raft details of this node.
#[derive(Clone, Debug, Serialize)]
pub struct RaftInfo {
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: String,
    /// The last log index on this node.
    pub last_log_index: Option<u64>,
    /// The last applied index on this node.
    pub last_applied: Option<u64>,
    /// The highest index this node knows to be committed.
    pub commit_index: u64,
    /// Raft, lease and forwarded-command requests refused because the sender may not ask them,
    /// per reason (`not_member`, `other_node`, `leader_only`).
    pub refused: BTreeMap<String, u64>,
    /// Nodes refused membership while this node led: not on the allowlist (production mode) or
    /// removed by an operator.
    pub unadmitted: Vec<String>,
}

/// One member.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: String,
    /// Its instance id (`-i ID`), if it has one.
    pub name: Option<String>,
    /// Its first worker index in the committed state (its workers are `worker_first ..
    /// worker_first + workers`); `None` while it is not in the index.
    pub worker_first: Option<u64>,
    /// `host:port` it listens on for other nodes.
    pub addr: Option<String>,
    /// `voter` or `learner` (`registered`: in the cluster state, not in the Raft configuration).
    pub role: &'static str,
    /// `up`, `suspect` or `down`, as this node sees it.
    pub state: MemberState,
    /// Weight.
    pub weight: u32,
    /// Worker count.
    pub workers: u32,
    /// Zone, if set.
    pub zone: Option<String>,
    /// Dashboard `host:port`, if it serves one.
    pub dashboard: Option<String>,
    /// The endpoints it declared ([`Member::endpoints`](crate::Member::endpoints)).
    pub endpoints: BTreeMap<String, String>,
    /// The metadata it declared.
    pub metadata: BTreeMap<String, String>,
    /// The wire protocol version it announced at its last handshake with this node (this
    /// node's own for itself), if known.
    pub wire: Option<u32>,
    /// Shards it owns in the applied map.
    pub owned: u32,
    /// Shards it follows (replicas) in the applied map.
    pub followed: u32,
    /// Milliseconds its lease may still run: this node's own, and every member's while this
    /// node leads (from the renewals it granted); `None` where this node cannot know.
    pub lease_left_ms: Option<u64>,
}

/// A summary of the shard map.
#[derive(Clone, Debug, Serialize)]
pub struct ShardMapStatus {
    /// The map epoch (log index of the last change).
    pub epoch: u64,
    /// Number of shards.
    pub shards: u32,
    /// Copies per shard.
    pub replica_factor: u32,
    /// Shards owned per node id.
    pub owners: BTreeMap<String, u32>,
    /// Shards with no owner.
    pub unassigned: u32,
}

/// Transport counters.
#[derive(Clone, Debug, Serialize)]
pub struct TransportStatus {
    /// Peers connected now.
    pub connected_peers: u64,
    /// Non-member clients connected now (not among `connected_peers`).
    pub connected_clients: u64,
    /// Malformed or oversized frames refused (each closed its connection).
    pub malformed_frames: u64,
    /// Peers of other clusters refused.
    pub foreign_peers: u64,
    /// Transport events dropped on a full membership mailbox.
    pub events_dropped: u64,
    /// Raft requests refused on a full consensus mailbox.
    pub raft_mailbox_full: u64,
    /// Gossip heartbeats dropped because they described another peer than their signer.
    pub forged_heartbeats: u64,
    /// Gossip payload bytes published (sent on to mesh peers: the wire carries a multiple).
    pub gossip_out_bytes: u64,
    /// Gossip payload bytes received.
    pub gossip_in_bytes: u64,
    /// Raft payload bytes sent (requests and responses).
    pub raft_out_bytes: u64,
    /// Raft payload bytes received (requests and responses).
    pub raft_in_bytes: u64,
    /// The message fault plan in force (tests and the chaos lab), and what it did so far.
    pub faults: Option<FaultsStatus>,
    /// The seeds and other discovery sources ([`crate::Discovery`]), by name: what each found
    /// last, and the error of one that fails.
    pub seeds: Vec<clusterfunk_actors::transport::seeds::SeedStatus>,
}

/// Message-level fault injection on this node.
#[derive(Clone, Debug, Serialize)]
pub struct FaultsStatus {
    /// The plan, as `delay=..,drop=..,dup=..,reorder=..,seed=..`.
    pub plan: String,
    /// Messages never sent.
    pub dropped: u64,
    /// Messages sent twice.
    pub duplicated: u64,
    /// Messages held back for later ones to overtake.
    pub reordered: u64,
    /// Messages delayed.
    pub delayed: u64,
}

pub(crate) fn collect(inner: &crate::cluster::Inner) -> ClusterStatus {
    let (node, cluster): (&Node, &ClusterName) = (&inner.node, &inner.cluster);
    let m = node.metrics();
    let applied = node.applied.borrow().clone();
    let view = node.view.borrow().clone();
    let map = node.map.borrow().clone();
    let followed = applied.state.shard_map.follower_counts();
    let leases = node.lease.leases_left();
    let members = applied
        .membership
        .membership()
        .nodes()
        .map(|(id, _)| member_status(*id, &applied, &view, node, &followed, leases.as_ref()))
        .collect();
    let owners = map.owner_counts().iter().map(|(id, n)| (id.to_string(), *n)).collect::<BTreeMap<_, _>>();
    let assigned: u32 = map.owner_counts().values().sum();
    let stats = node.transport.stats();
    ClusterStatus {
        node_id: node.id.to_string(),
        node_name: node.name.clone(),
        workers: *node.workers.borrow(),
        membership_refused: node.refused.borrow().clone(),
        http: inner.http.get().map(|(a, _)| a.to_string()),
        cluster: ClusterInfo { name: cluster.key.clone(), env: cluster.env.clone() },
        leader: m.current_leader.map(|l| l.to_string()),
        term: m.current_term,
        raft: RaftInfo {
            state: format!("{:?}", m.state),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            commit_index: node.committed_index(),
            refused: node.refusals.snapshot().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            unadmitted: node.refusals.unadmitted_nodes().iter().map(|id| id.to_string()).collect(),
        },
        members,
        shard_map: ShardMapStatus {
            epoch: map.epoch().0,
            shards: map.shard_count(),
            replica_factor: map.replica_factor(),
            owners,
            unassigned: map.shard_count() - assigned,
        },
        transport: TransportStatus {
            connected_peers: stats.connected_peers.load(Ordering::Relaxed),
            connected_clients: stats.connected_clients.load(Ordering::Relaxed),
            malformed_frames: stats.malformed_frames.load(Ordering::Relaxed),
            foreign_peers: stats.foreign_peers.load(Ordering::Relaxed),
            events_dropped: stats.events_dropped.load(Ordering::Relaxed),
            raft_mailbox_full: stats.raft_mailbox_full.load(Ordering::Relaxed),
            forged_heartbeats: stats.forged_heartbeats.load(Ordering::Relaxed),
            gossip_out_bytes: stats.gossip_out_bytes.load(Ordering::Relaxed),
            gossip_in_bytes: stats.gossip_in_bytes.load(Ordering::Relaxed),
            raft_out_bytes: stats.raft_out_bytes.load(Ordering::Relaxed),
            raft_in_bytes: stats.raft_in_bytes.load(Ordering::Relaxed),
            seeds: node.transport.seeds(),
            faults: {
                let f = node.transport.faults();
                f.plan().map(|plan| {
                    let s = f.stats();
                    FaultsStatus {
                        plan: plan.to_string(),
                        dropped: s.dropped.load(Ordering::Relaxed),
                        duplicated: s.duplicated.load(Ordering::Relaxed),
                        reordered: s.reordered.load(Ordering::Relaxed),
                        delayed: s.delayed.load(Ordering::Relaxed),
                    }
                })
            },
        },
        traffic: {
            let r = inner.router.stats();
            TrafficStatus {
                local: r.local.load(Ordering::Relaxed),
                forwarded: r.forwarded.load(Ordering::Relaxed),
                served: r.served.load(Ordering::Relaxed),
                failed: r.failed.load(Ordering::Relaxed),
                malformed: r.malformed.load(Ordering::Relaxed),
                duplicates: r.duplicates.load(Ordering::Relaxed),
                unauthorized: r.unauthorized.load(Ordering::Relaxed),
                client_requests: r.client_requests.load(Ordering::Relaxed),
                client_refused: r.client_refused.load(Ordering::Relaxed),
                entities: inner.registry.controls.iter().map(|h| h.len() as u64).sum(),
                activations: inner.registry.controls.iter().map(|h| h.activations()).sum(),
                by_type: inner.registry.controls.iter().map(|h| (h.name().to_string(), h.len() as u64)).collect(),
            }
        },
        ownership: {
            let o = node.ownership.stats();
            let now = node.ownership.clock().now();
            let until = node.ownership.lease_until().filter(|u| *u > now);
            OwnershipStatus {
                lease_valid: until.is_some(),
                lease_left_ms: until.map(|u| u.duration_since(now).as_millis() as u64),
                serving: o.active,
                rejected_stale: o.rejected_stale,
                hooks_overrun: node.serving.hooks_overrun.load(Ordering::Relaxed),
                slow_stops: node.serving.slow_stops.load(Ordering::Relaxed),
                abandoned_stops: node.serving.abandoned_stops.load(Ordering::Relaxed),
                handoffs_pending: applied.state.handoffs.len(),
                draining: applied.state.is_draining(node.id),
                not_ready: node.ready().err().map(|e| e.to_string()),
                lease_refused: node.lease.own_refusal().map(|r| r.to_string()),
            }
        },
    }
}

/// One node as this node sees it: what it said about itself by gossip (or registered), its Raft
/// role (`registered` when it is only in the cluster state) and its liveness. `followed` (the map's follower counts) and `leases` (the
/// leader's lease table, `LeaseService::leases_left`) are computed once by the caller for every
/// member.
pub(crate) fn member_status(
    id: NodeId,
    applied: &AppliedState,
    view: &View,
    node: &Node,
    followed: &BTreeMap<NodeId, u32>,
    leases: Option<&std::collections::HashMap<NodeId, std::time::Duration>>,
) -> MemberStatus {
    // What it declared, its role and liveness: the typed member (`members::member`), which
    // knows every node of the Raft configuration.
    let m = crate::members::member(id, applied, view);
    let meta: Option<&NodeMeta> = view.members.get(&id).map(|v| &v.meta).or(applied.state.members.get(&id));
    let role = match m.as_ref().map(|m| m.role) {
        Some(crate::Role::Voter) => "voter",
        Some(crate::Role::Learner) => "learner",
        _ => "registered",
    };
    MemberStatus {
        id: id.to_string(),
        name: m.as_ref().and_then(|m| m.name.clone()),
        worker_first: clusterfunk_actors::workers::WorkerIndex::of(&applied.state, id).index,
        addr: m.as_ref().and_then(|m| host_port(&m.addrs)),
        role,
        state: m.as_ref().map_or(MemberState::Down, |m| m.state),
        weight: m.as_ref().map_or(1, |m| m.weight),
        workers: m.as_ref().map_or(1, |m| m.workers),
        zone: m.as_ref().and_then(|m| m.zone.clone()),
        dashboard: m.as_ref().and_then(|m| m.dashboard.clone()),
        endpoints: m.as_ref().map(|m| m.endpoints.clone()).unwrap_or_default(),
        metadata: m.map(|m| m.metadata).unwrap_or_default(),
        wire: if id == node.id {
            Some(node.transport.wire_version())
        } else {
            meta.and_then(|m| m.peer_id).and_then(|p| node.transport.peer_wire(&p))
        },
        owned: applied.state.shard_map.owner_counts().get(&id).copied().unwrap_or(0),
        followed: followed.get(&id).copied().unwrap_or(0),
        lease_left_ms: if id == node.id {
            let now = node.ownership.clock().now();
            Some(node.ownership.lease_until().map_or(0, |u| u.saturating_duration_since(now).as_millis() as u64))
        } else {
            leases.map(|l| l.get(&id).map_or(0, |d| d.as_millis() as u64))
        },
    }
}

/// The `ip:port` of a multiaddress `/ip4|ip6/../tcp/..`, if it is one.
pub(crate) fn socket_addr(addr: &str) -> Option<std::net::SocketAddr> {
    let ma = addr.parse::<Multiaddr>().ok()?;
    let mut it = ma.iter();
    let ip = match it.next()? {
        Protocol::Ip4(ip) => std::net::IpAddr::V4(ip),
        Protocol::Ip6(ip) => std::net::IpAddr::V6(ip),
        _ => return None,
    };
    match it.next()? {
        Protocol::Tcp(port) => Some(std::net::SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// The first routable `ip:port` among multiaddresses (non-loopback preferred).
pub(crate) fn host_port(addrs: &[String]) -> Option<String> {
    let parsed: Vec<std::net::SocketAddr> =
        addrs.iter().filter_map(|a| socket_addr(a)).filter(|a| !a.ip().is_unspecified()).collect();
    parsed.iter().find(|a| !a.ip().is_loopback()).or(parsed.first()).map(|a| a.to_string())
}
