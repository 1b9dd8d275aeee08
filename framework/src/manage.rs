//! The management HTTP API (docs/operations.md, "Management API"), on the dashboard server:
//!
//! | route | what |
//! |---|---|
//! | `GET /cluster/members` | every member: Raft role, liveness, drain, shards |
//! | `GET /cluster/members/{id}` | one member |
//! | `POST /cluster/members` `{"node": ID or host:port}` | add as learner |
//! | `DELETE /cluster/members/{id}` | remove |
//! | `PUT /cluster/members/{id}` `{"operation": ..}` | `promote`, `demote`, `drain`, `undrain`, `leave`, `replace` (with `"by"`) |
//! | `POST /cluster/leader/step-down` | hand Raft leadership to another voter |
//! | `GET /cluster/shards[?node=ID]` | the shard map as of now (linearizable: Raft ReadIndex), with its epoch |
//! | `PUT /cluster/shards/{shard}` `{"to": ID or null}` | pin the shard to a node (a planned move by handoff), or unpin it |
//! | `PUT /cluster/shards/{shard}/weight` `{"weight": N}` | set the shard's weight (1 to 1000000; 1 is the default): the allocator balances total weight per node |
//! | `PUT /cluster/shards/weights` `{"weights": {"SHARD": N, ..}}` | set several weights in one change |
//! | `POST /cluster/rebalance/plan` | the allocator's plan of the moment (moves with their weights, from, to, why; each node's load before and after, and its quota) and its id; moves nothing |
//! | `POST /cluster/rebalance/commit` `{"id": ..}` | carry out that plan; refused if the cluster changed since |
//! | `POST /cluster/rebalance/abort` | send handoffs in flight back to their old owners; rebalancing becomes manual |
//! | `PUT /cluster/rebalance` `{"mode": "auto" or "manual"}` | whether load-balancing moves wait for a commit |
//! | `GET /cluster/events` | server-sent events: `connected` (who answers), then this node's `ClusterEvent` stream |
//!
//! Reads are open; every mutation needs `Authorization: Bearer <token>` (the node's management
//! token): missing or wrong is 401 and nothing changes. A node relays a mutation to the leader.
//! Answers are JSON; a refusal is `{"error": reason, "refused": true}` with 409.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use clusterfunk_actors::consensus::manage::{check_token, Done, ManageError, MemberOp};
use clusterfunk_actors::events::ClusterEvent;
use clusterfunk_actors::shard::{Move, MoveReason, NodeLoad};
use clusterfunk_actors::types::{NodeId, ShardId, Token};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::status::MemberStatus;

/// One member as `GET /cluster/members` lists it: its status (as `GET /api/cluster` shows it)
/// and what an operator acts on.
#[derive(Clone, Debug, Serialize)]
pub struct MemberInfo {
    /// Id, address, role (`voter`, `learner` or `registered`), liveness, weight, zone.
    #[serde(flatten)]
    pub member: MemberStatus,
    /// Whether it leads the Raft group.
    pub leader: bool,
    /// Whether it takes no new shards (leaving, or drained by an operator).
    pub draining: bool,
    /// Whether an operator drained it (`undrain` ends it).
    pub drained: bool,
    /// Shards it owns in the committed map.
    pub shards: u32,
}

/// The members as this node sees them: the Raft configuration and the registered members.
pub(crate) fn members(cluster: &Cluster) -> Vec<MemberInfo> {
    let node = cluster.node();
    let applied = node.applied.borrow().clone();
    let view = node.view.borrow().clone();
    let map = node.map.borrow().clone();
    let leader = node.metrics().current_leader;
    let ids: std::collections::BTreeSet<NodeId> = applied
        .membership
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .chain(applied.state.members.keys().copied())
        .collect();
    let owned = map.owner_counts();
    let followed = applied.state.shard_map.follower_counts();
    let leases = node.lease.leases_left();
    ids.into_iter()
        .map(|id| MemberInfo {
            member: crate::status::member_status(id, &applied, &view, node, &followed, leases.as_ref()),
            leader: leader == Some(id),
            draining: applied.state.is_draining(id),
            drained: applied.state.drained.contains(&id),
            shards: owned.get(&id).copied().unwrap_or(0),
        })
        .collect()
}

/// A node named by its id (16 hex digits) or by a `host:port` it listens on, among the nodes
/// this one sees or has in its configuration.
pub(crate) fn resolve_node(cluster: &Cluster, name: &str) -> Result<NodeId, String> {
    let name = name.trim();
    if name.len() == 16 {
        if let Ok(id) = name.parse::<NodeId>() {
            return Ok(id);
        }
    }
    let Ok(addr) = name.parse::<std::net::SocketAddr>() else {
        return Err(format!("{name:?} is neither a node id (16 hex digits) nor an ip:port"));
    };
    let node = cluster.node();
    let view = node.view.borrow().clone();
    let applied = node.applied.borrow().clone();
    let listed = |addrs: &[String]| addrs.iter().any(|a| crate::status::socket_addr(a) == Some(addr));
    let mut found: Vec<NodeId> = view
        .members
        .values()
        .map(|m| &m.meta)
        .chain(applied.state.members.values())
        .filter(|m| listed(&m.addrs))
        .map(|m| m.id)
        .chain(applied.membership.membership().nodes().filter(|(_, n)| listed(&n.addrs)).map(|(id, _)| *id))
        .collect();
    found.sort();
    found.dedup();
    // Any node can claim any address in its gossip: an address two nodes claim names neither.
    match found[..] {
        [id] => Ok(id),
        [] => Err(format!("no node the cluster sees listens on {addr}")),
        _ => Err(format!("more than one node claims {addr}: {found:?}; name the node by its id")),
    }
}

fn error(status: StatusCode, msg: impl std::fmt::Display, refused: bool) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": msg.to_string(), "refused": refused }))
}

/// The bearer token of a request (empty when there is none).
fn bearer(req: &HttpRequest) -> Token {
    let t = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    Token::new(t)
}

/// The refusal of a request without this node's token (401, or 403 where no token is
/// configured), checked before anything of the request is read: a caller without the token
/// learns nothing, not even whether its body would parse.
fn unauthorized(cluster: &Cluster, req: &HttpRequest) -> Option<HttpResponse> {
    let e = check_token(cluster.inner_token(), &bearer(req)).err()?;
    let n = cluster.node().refusals.bad_token();
    if n.is_power_of_two() {
        let peer = req.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::warn!(%peer, refused = n, path = req.path(), "management request without a valid token refused");
    }
    Some(answer(Err(e)))
}

/// Runs `op` with the request's token: checked here first (401 without a change), then on the
/// leader, to which the node relays it.
async fn run(cluster: &Cluster, req: &HttpRequest, op: MemberOp) -> HttpResponse {
    if let Some(refused) = unauthorized(cluster, req) {
        return refused;
    }
    answer(cluster.node().manage(op, bearer(req)).await)
}

fn answer(r: Result<Done, ManageError>) -> HttpResponse {
    match r {
        Ok(done) => HttpResponse::Ok().json(serde_json::json!({
            "ok": true,
            "leader": done.leader.map(|l| l.to_string()),
            "steps": done.steps,
            "plan": done.plan.map(|p| {
                let mut v = plan_json(&p.moves, p.replica_changes, &p.loads);
                v["id"] = p.id.into();
                v["epoch"] = p.epoch.0.into();
                v["mode"] = if p.manual { "manual" } else { "auto" }.into();
                v
            }),
        })),
        Err(e @ ManageError::BadToken) => error(StatusCode::UNAUTHORIZED, e, false),
        Err(e @ ManageError::NoToken) => error(StatusCode::FORBIDDEN, e, false),
        Err(e @ ManageError::Refused(_)) => error(StatusCode::CONFLICT, e, true),
        Err(e @ (ManageError::NoLeader | ManageError::Busy)) => error(StatusCode::SERVICE_UNAVAILABLE, e, false),
        Err(e @ ManageError::Unreachable(_)) => error(StatusCode::BAD_GATEWAY, e, false),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e, false),
    }
}

#[get("/cluster/members")]
async fn list(cluster: web::Data<Cluster>) -> HttpResponse {
    HttpResponse::Ok().json(members(&cluster))
}

#[get("/cluster/members/{id}")]
async fn one(cluster: web::Data<Cluster>, id: web::Path<String>) -> HttpResponse {
    let Ok(id) = resolve_node(&cluster, &id) else {
        return error(StatusCode::NOT_FOUND, format!("no member {id}"), false);
    };
    match members(&cluster).into_iter().find(|m| m.member.id == id.to_string()) {
        Some(m) => HttpResponse::Ok().json(m),
        None => error(StatusCode::NOT_FOUND, format!("node {id} is not a member"), false),
    }
}

/// `POST /cluster/members` body.
#[derive(Deserialize)]
struct AddBody {
    node: String,
}

/// `PUT /cluster/members/{id}` body.
#[derive(Deserialize)]
struct PutBody {
    operation: String,
    #[serde(default)]
    by: Option<String>,
}

/// A JSON body, or the 400 that says what is wrong with it. Only `application/json` is read,
/// so a cross-site form post cannot reach a mutation.
fn json_body<T: serde::de::DeserializeOwned>(req: &HttpRequest, body: &[u8]) -> Result<T, Box<HttpResponse>> {
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(Box::new(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be application/json", false)));
    }
    serde_json::from_slice(body).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("body: {e}"), false)))
}

#[post("/cluster/members")]
async fn add(cluster: web::Data<Cluster>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Some(refused) = unauthorized(&cluster, &req) {
        return refused;
    }
    let b: AddBody = match json_body(&req, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match resolve_node(&cluster, &b.node) {
        Ok(id) => run(&cluster, &req, MemberOp::Add(id)).await,
        Err(e) => error(StatusCode::NOT_FOUND, e, true),
    }
}

#[delete("/cluster/members/{id}")]
async fn remove(cluster: web::Data<Cluster>, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    if let Some(refused) = unauthorized(&cluster, &req) {
        return refused;
    }
    match resolve_node(&cluster, &id) {
        Ok(id) => run(&cluster, &req, MemberOp::Remove(id)).await,
        Err(e) => error(StatusCode::NOT_FOUND, e, true),
    }
}

#[put("/cluster/members/{id}")]
async fn change(
    cluster: web::Data<Cluster>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(refused) = unauthorized(&cluster, &req) {
        return refused;
    }
    let b: PutBody = match json_body(&req, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let id = match resolve_node(&cluster, &id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::NOT_FOUND, e, true),
    };
    let op = match b.operation.as_str() {
        "promote" => MemberOp::Promote(id),
        "demote" => MemberOp::Demote(id),
        "drain" => MemberOp::Drain(id),
        "undrain" => MemberOp::Undrain(id),
        "leave" => return leave(&cluster, &req, id).await,
        "replace" => {
            let Some(by) = b.by else {
                return error(StatusCode::BAD_REQUEST, "replace: \"by\" names the node taking the seat", false);
            };
            match resolve_node(&cluster, &by) {
                Ok(new) => MemberOp::Replace { old: id, new },
                Err(e) => return error(StatusCode::NOT_FOUND, e, true),
            }
        }
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("operation: {other:?} is not promote, demote, drain, undrain, leave or replace"),
                false,
            )
        }
    };
    run(&cluster, &req, op).await
}

/// How long `leave` waits for a drained node's shards to be handed off before removing it.
const LEAVE_DRAIN: Duration = Duration::from_secs(30);

/// A graceful leave by command: drain, wait until the node owns no shard, then remove it.
async fn leave(cluster: &Cluster, req: &HttpRequest, id: NodeId) -> HttpResponse {
    let drained = run(cluster, req, MemberOp::Drain(id)).await;
    if !drained.status().is_success() {
        return drained;
    }
    // Handed off: it owns no shard and no handoff from it waits for its confirmation (a
    // removed node could not confirm: its shards would wait for its lease to run out).
    let mut applied = cluster.node().applied.clone();
    let handed_off = applied.wait_for(|a| a.state.handed_off(id));
    match tokio::time::timeout(LEAVE_DRAIN, handed_off).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, "leave: this node is stopping", false),
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("leave: node {id} still has shards after {LEAVE_DRAIN:?}; it stays drained, not removed"),
                false,
            )
        }
    }
    let removed = run(cluster, req, MemberOp::Remove(id)).await;
    if removed.status() == StatusCode::CONFLICT {
        tracing::warn!(node = %id, "leave: drained, but the removal was refused; the node stays a drained member");
    }
    removed
}

#[post("/cluster/leader/step-down")]
async fn step_down(cluster: web::Data<Cluster>, req: HttpRequest) -> HttpResponse {
    run(&cluster, &req, MemberOp::StepDown).await
}

/// `GET /cluster/shards` query.
#[derive(Deserialize)]
struct ShardsQuery {
    node: Option<String>,
}

/// How long `GET /cluster/shards` waits for this node to apply what the leader committed.
const READ_WAIT: Duration = Duration::from_secs(5);

#[get("/cluster/shards")]
async fn shards(cluster: web::Data<Cluster>, q: web::Query<ShardsQuery>) -> HttpResponse {
    let only = match q.node.as_deref().map(|n| resolve_node(&cluster, n)).transpose() {
        Ok(o) => o,
        Err(e) => return error(StatusCode::NOT_FOUND, e, false),
    };
    // Linearizable: every node answers with a map at least as new as anything committed before
    // the request (the leader confirms with a quorum; this node waits until it applied that).
    let applied = match cluster.node().read_state(READ_WAIT).await {
        Ok(a) => a,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e, false),
    };
    let st = &applied.state;
    let map = &st.shard_map;
    let id = |n: NodeId| n.to_string();
    let rows: Vec<Value> = (0..map.shard_count())
        .map(ShardId)
        .filter(|s| {
            only.is_none_or(|n| {
                map.owner(*s) == Some(n)
                    || map.replicas(*s).contains(&n)
                    || st.handoffs.get(s).is_some_and(|h| h.from == n)
            })
        })
        .map(|s| {
            serde_json::json!({
                "shard": s.0,
                "owner": map.owner(s).map(id),
                "replicas": map.replicas(s).into_iter().map(id).collect::<Vec<_>>(),
                "epoch": map.shard_epoch(s).0,
                "weight": st.shard_weight(s),
                "pinned": st.pinned.get(&s).map(|n| id(*n)),
                "handoff": st.handoffs.get(&s).map(|h| serde_json::json!({
                    "from": id(h.from),
                    "to": h.to.owner.map(id),
                })),
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "epoch": map.epoch().0,
        "applied_index": applied.last_applied.map_or(0, |l| l.index),
        "shards": map.shard_count(),
        "replica_factor": map.replica_factor(),
        "rebalance": if st.manual_rebalance { "manual" } else { "auto" },
        "total_weight": (0..map.shard_count()).map(|s| u64::from(st.shard_weight(ShardId(s)))).sum::<u64>(),
        "assignments": rows,
    }))
}

/// A mutation of one shard: the token checked, the shard number from the path, the JSON body.
fn shard_body<T: serde::de::DeserializeOwned>(
    cluster: &Cluster,
    req: &HttpRequest,
    shard: &str,
    body: &[u8],
) -> Result<(u32, T), Box<HttpResponse>> {
    if let Some(refused) = unauthorized(cluster, req) {
        return Err(Box::new(refused));
    }
    let Ok(shard) = shard.parse::<u32>() else {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, format!("shard: {shard:?} is not a shard number"), false)));
    };
    Ok((shard, json_body(req, body)?))
}

/// `PUT /cluster/shards/{shard}` body: the node to pin it to, or `null` to unpin.
#[derive(Deserialize)]
struct MoveBody {
    to: Option<String>,
}

#[put("/cluster/shards/{shard}")]
async fn move_shard(
    cluster: web::Data<Cluster>,
    req: HttpRequest,
    shard: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let (shard, b) = match shard_body::<MoveBody>(&cluster, &req, &shard, &body) {
        Ok(sb) => sb,
        Err(r) => return *r,
    };
    let to = match b.to.as_deref().map(|n| resolve_node(&cluster, n)).transpose() {
        Ok(to) => to,
        Err(e) => return error(StatusCode::CONFLICT, e, true),
    };
    run(&cluster, &req, MemberOp::MoveShard { shard: ShardId(shard), to }).await
}

/// `PUT /cluster/shards/{shard}/weight` body.
#[derive(Deserialize)]
struct WeightBody {
    weight: u32,
}

#[put("/cluster/shards/{shard}/weight")]
async fn shard_weight(
    cluster: web::Data<Cluster>,
    req: HttpRequest,
    shard: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let (shard, b) = match shard_body::<WeightBody>(&cluster, &req, &shard, &body) {
        Ok(sb) => sb,
        Err(r) => return *r,
    };
    run(&cluster, &req, MemberOp::SetShardWeights(vec![(ShardId(shard), b.weight)])).await
}

/// `PUT /cluster/shards/weights` body: weights by shard number.
#[derive(Deserialize)]
struct WeightsBody {
    weights: std::collections::BTreeMap<String, u32>,
}

#[put("/cluster/shards/weights")]
async fn shard_weights(cluster: web::Data<Cluster>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Some(refused) = unauthorized(&cluster, &req) {
        return refused;
    }
    let b: WeightsBody = match json_body(&req, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut weights = Vec::with_capacity(b.weights.len());
    for (shard, weight) in b.weights {
        let Ok(s) = shard.parse::<u32>() else {
            return error(StatusCode::BAD_REQUEST, format!("weights: {shard:?} is not a shard number"), false);
        };
        weights.push((ShardId(s), weight));
    }
    run(&cluster, &req, MemberOp::SetShardWeights(weights)).await
}

#[post("/cluster/rebalance/plan")]
async fn rebalance_plan(cluster: web::Data<Cluster>, req: HttpRequest) -> HttpResponse {
    run(&cluster, &req, MemberOp::RebalancePlan).await
}

/// `POST /cluster/rebalance/commit` body.
#[derive(Deserialize)]
struct CommitBody {
    id: String,
}

#[post("/cluster/rebalance/commit")]
async fn rebalance_commit(cluster: web::Data<Cluster>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Some(refused) = unauthorized(&cluster, &req) {
        return refused;
    }
    let b: CommitBody = match json_body(&req, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    run(&cluster, &req, MemberOp::RebalanceCommit(b.id)).await
}

#[post("/cluster/rebalance/abort")]
async fn rebalance_abort(cluster: web::Data<Cluster>, req: HttpRequest) -> HttpResponse {
    run(&cluster, &req, MemberOp::RebalanceAbort).await
}

/// `PUT /cluster/rebalance` body.
#[derive(Deserialize)]
struct ModeBody {
    mode: String,
}

#[put("/cluster/rebalance")]
async fn rebalance_mode(cluster: web::Data<Cluster>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Some(refused) = unauthorized(&cluster, &req) {
        return refused;
    }
    let b: ModeBody = match json_body(&req, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let manual = match b.mode.as_str() {
        "manual" => true,
        "auto" => false,
        other => return error(StatusCode::BAD_REQUEST, format!("mode: {other:?} is not auto or manual"), false),
    };
    run(&cluster, &req, MemberOp::SetRebalance { manual }).await
}

/// Owner changes as the API shows them (a plan, a rebalance event).
fn plan_json(moves: &[Move], replica_changes: u32, loads: &[NodeLoad]) -> Value {
    let id = |n: &NodeId| n.to_string();
    serde_json::json!({
        "moves": moves.iter().map(|m| serde_json::json!({
            "shard": m.shard.0,
            "from": m.from.as_ref().map(id),
            "to": m.to.as_ref().map(id),
            "reason": match m.reason {
                MoveReason::Unassigned => "unassigned",
                MoveReason::OwnerLeft => "owner_left",
                MoveReason::OverQuota => "over_quota",
                MoveReason::Pinned => "pinned",
                _ => "other",
            },
            "promoted": m.promoted,
            "weight": m.weight,
        })).collect::<Vec<_>>(),
        "moved_weight": moves.iter().map(|m| u64::from(m.weight)).sum::<u64>(),
        "replica_changes": replica_changes,
        "loads": loads.iter().map(|l| serde_json::json!({
            "node": id(&l.node),
            "before": l.before,
            "after": l.after,
            "quota": l.quota,
        })).collect::<Vec<_>>(),
    })
}

/// One event as the stream sends it: its kind and its fields (node ids as 16-hex-digit text).
pub(crate) fn event_json(ev: &ClusterEvent) -> (&'static str, Value) {
    let id = |n: &NodeId| n.to_string();
    let plan = |p: &clusterfunk_actors::shard::Plan| plan_json(&p.moves, p.replica_changes, &p.loads);
    match ev {
        ClusterEvent::ShardAssigned { shard, epoch, previous_owner } => (
            "shard_assigned",
            serde_json::json!({ "shard": shard.0, "epoch": epoch.0, "previous_owner": previous_owner.as_ref().map(id) }),
        ),
        ClusterEvent::ShardUnassigned { shard, epoch, new_owner } => (
            "shard_unassigned",
            serde_json::json!({ "shard": shard.0, "epoch": epoch.0, "new_owner": new_owner.as_ref().map(id) }),
        ),
        ClusterEvent::ShardLeadershipGained { shard, epoch } => {
            ("shard_leadership_gained", serde_json::json!({ "shard": shard.0, "epoch": epoch.0 }))
        }
        ClusterEvent::ShardLeadershipLost { shard, epoch } => {
            ("shard_leadership_lost", serde_json::json!({ "shard": shard.0, "epoch": epoch.0 }))
        }
        ClusterEvent::ReplicaAdded { shard, epoch, leader } => (
            "replica_added",
            serde_json::json!({ "shard": shard.0, "epoch": epoch.0, "leader": leader.as_ref().map(id) }),
        ),
        ClusterEvent::ReplicaRemoved { shard, epoch } => {
            ("replica_removed", serde_json::json!({ "shard": shard.0, "epoch": epoch.0 }))
        }
        ClusterEvent::LeaderChanged { leader, term } => {
            ("leader_changed", serde_json::json!({ "leader": leader.as_ref().map(id), "term": term }))
        }
        ClusterEvent::MemberUp(n) => ("member_up", serde_json::json!({ "node": id(n) })),
        ClusterEvent::MemberDown(n) => ("member_down", serde_json::json!({ "node": id(n) })),
        ClusterEvent::RebalanceStarted(p) => ("rebalance_started", plan(p)),
        ClusterEvent::RebalanceFinished(p) => ("rebalance_finished", plan(p)),
        ClusterEvent::WorkersChanged(w) => ("workers_changed", serde_json::json!(w)),
        ClusterEvent::MembershipRefused(reason) => ("membership_refused", serde_json::json!({ "reason": reason })),
        _ => ("other", serde_json::json!({ "debug": format!("{ev:?}") })),
    }
}

/// How often the event stream sends a comment line when nothing happens (so proxies and the
/// CLI see a live connection).
const KEEPALIVE: Duration = Duration::from_secs(15);

#[get("/cluster/events")]
async fn events(cluster: web::Data<Cluster>) -> HttpResponse {
    let rx = cluster.node().events.subscribe();
    // First, who answers: a client knows it is subscribed once it sees this.
    let m = cluster.node().metrics();
    let hello = serde_json::json!({
        "node": cluster.node_id().to_string(),
        "leader": m.current_leader.map(|l| l.to_string()),
        "term": m.current_term,
    });
    let first = futures::stream::once(std::future::ready(Ok::<_, std::convert::Infallible>(web::Bytes::from(
        format!("event: connected\ndata: {hello}\n\n"),
    ))));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let frame = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Ok(ev)) => {
                let (kind, data) = event_json(&ev);
                format!("event: {kind}\ndata: {data}\n\n")
            }
            // A slow reader missed events: say so in the stream, and go on.
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                format!("event: lagged\ndata: {{\"missed\": {n}}}\n\n")
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
            Err(_) => ": keepalive\n\n".to_string(),
        };
        Some((Ok::<_, std::convert::Infallible>(web::Bytes::from(frame)), rx))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(futures::StreamExt::chain(first, stream))
}

/// The management routes.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(list)
        .service(one)
        .service(add)
        .service(remove)
        .service(change)
        .service(step_down)
        .service(shards)
        .service(shard_weights)
        .service(shard_weight)
        .service(move_shard)
        .service(rebalance_plan)
        .service(rebalance_commit)
        .service(rebalance_abort)
        .service(rebalance_mode)
        .service(events);
}
