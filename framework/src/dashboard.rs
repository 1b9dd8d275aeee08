//! The dashboard and HTTP API: `GET /api/cluster`, `/health`, `/ready`, `/metrics`, and a
//! status page at `/`.

use std::net::SocketAddr;

use actix_web::{get, web, App, HttpResponse, HttpServer, Responder};

use clusterfunk_actors::types::{NodeId, ShardId};

use crate::cluster::Cluster;

#[get("/api/cluster")]
async fn api_cluster(cluster: web::Data<Cluster>) -> impl Responder {
    HttpResponse::Ok().json(cluster.status())
}

/// Health: Raft runs and the disk answers (a durable write waiting over a second is a
/// stalled disk). 503 with the reason otherwise.
#[get("/health")]
async fn health(cluster: web::Data<Cluster>) -> impl Responder {
    match cluster.health() {
        Ok(()) => HttpResponse::Ok().content_type("text/plain").body("ok\n"),
        Err(why) => HttpResponse::ServiceUnavailable().content_type("text/plain").body(format!("unhealthy: {why}\n")),
    }
}

/// Readiness of this node: a committed map, a valid lease, not fenced, not draining, and every
/// shard the map gives it served here. 503 with the reason otherwise.
#[get("/ready")]
async fn ready(cluster: web::Data<Cluster>) -> impl Responder {
    match cluster.ready() {
        Ok(()) => HttpResponse::Ok().content_type("text/plain").body("ready\n"),
        Err(why) => HttpResponse::ServiceUnavailable().content_type("text/plain").body(format!("not ready: {why}\n")),
    }
}

/// Prometheus metrics of this node (docs/operations.md, "Metrics").
#[get("/metrics")]
async fn metrics(cluster: web::Data<Cluster>) -> impl Responder {
    HttpResponse::Ok().content_type(crate::metrics::CONTENT_TYPE).body(cluster.metrics_text())
}

/// `GET /api/shards?epoch=E` query: the epoch of the map the page holds.
#[derive(serde::Deserialize)]
struct ShardsQuery {
    epoch: Option<u64>,
}

/// The applied shard map, compact, for the dashboard's grid: node ids once, then one owner
/// index per shard (-1: none), each shard's epoch, and followers and handoffs where there are
/// any. When the page already holds this epoch, only `{"epoch", "unchanged": true}`: the page
/// polls every second and refetches the map only when it changed.
#[get("/api/shards")]
async fn api_shards(cluster: web::Data<Cluster>, q: web::Query<ShardsQuery>) -> impl Responder {
    let applied = cluster.node().applied.borrow().clone();
    let st = &applied.state;
    let map = &st.shard_map;
    if q.epoch == Some(map.epoch().0) {
        return HttpResponse::Ok().json(serde_json::json!({ "epoch": map.epoch().0, "unchanged": true }));
    }
    let nodes: Vec<NodeId> = applied.membership.membership().nodes().map(|(id, _)| *id).collect();
    let mut positions: std::collections::HashMap<NodeId, i64> =
        nodes.iter().enumerate().map(|(i, n)| (*n, i as i64)).collect();
    let mut names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    let mut idx = |n: NodeId| -> i64 {
        let next = positions.len() as i64;
        *positions.entry(n).or_insert_with(|| {
            names.push(n.to_string());
            next
        })
    };
    let shards = map.shard_count();
    let owner: Vec<i64> = (0..shards).map(|s| map.owner(ShardId(s)).map_or(-1, &mut idx)).collect();
    let epochs: Vec<u64> = (0..shards).map(|s| map.shard_epoch(ShardId(s)).0).collect();
    let replicas: Vec<Vec<i64>> = if map.replica_factor() > 1 {
        (0..shards).map(|s| map.replicas(ShardId(s)).into_iter().map(&mut idx).collect()).collect()
    } else {
        Vec::new()
    };
    let handoffs: Vec<serde_json::Value> = st
        .handoffs
        .iter()
        .map(|(s, h)| serde_json::json!([s.0, idx(h.from), h.to.owner.map_or(-1, &mut idx)]))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "epoch": map.epoch().0,
        "shards": shards,
        "replica_factor": map.replica_factor(),
        "nodes": names,
        "owner": owner,
        "epochs": epochs,
        "replicas": replicas,
        "handoffs": handoffs,
    }))
}

/// One shard in full, for the grid's click: its owner, followers, epoch, handoff and pin as
/// the applied map has them, and what this node holds of it (served here, live entities).
#[get("/api/shards/{shard}")]
async fn api_shard(cluster: web::Data<Cluster>, shard: web::Path<u32>) -> impl Responder {
    let applied = cluster.node().applied.borrow().clone();
    let st = &applied.state;
    let map = &st.shard_map;
    let s = ShardId(*shard);
    if s.0 >= map.shard_count() {
        return HttpResponse::NotFound()
            .json(serde_json::json!({ "error": format!("shard {} is not below {}", s.0, map.shard_count()) }));
    }
    let id = |n: NodeId| n.to_string();
    HttpResponse::Ok().json(serde_json::json!({
        "shard": s.0,
        "owner": map.owner(s).map(id),
        "replicas": map.replicas(s).into_iter().map(id).collect::<Vec<_>>(),
        "epoch": map.shard_epoch(s).0,
        "pinned": st.pinned.get(&s).map(|n| id(*n)),
        "handoff": st.handoffs.get(&s).map(|h| serde_json::json!({ "from": id(h.from), "to": h.to.owner.map(id) })),
        "node": id(cluster.node_id()),
        "served_here_at": cluster.node().ownership.serving_epoch(s).map(|e| e.0),
        "entities_here": cluster.entities_in(s),
    }))
}

#[get("/")]
async fn index() -> impl Responder {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("dashboard.html"))
}

/// Serves the service's own routes on `listener` with `workers` threads (`start_with_http`).
pub(crate) fn serve_service<F>(
    listener: std::net::TcpListener,
    cluster: Cluster,
    routes: F,
    workers: usize,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let data = web::Data::new(cluster);
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes.clone()))
        .workers(workers)
        .shutdown_timeout(5)
        .disable_signals()
        .listen(listener)?;
    let bound = server.addrs().first().copied().ok_or_else(|| std::io::Error::other("no address bound"))?;
    Ok((server.run(), bound))
}

/// Serves the dashboard on `listener` (one worker thread: it serves operators, not traffic).
pub(crate) fn serve(
    listener: std::net::TcpListener,
    cluster: Cluster,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let data = web::Data::new(cluster);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .service(api_cluster)
            .service(health)
            .service(ready)
            .service(metrics)
            .service(api_shards)
            .service(api_shard)
            .service(crate::timeline::route)
            .service(index)
            .configure(crate::manage::routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?;
    let bound = server.addrs().first().copied().ok_or_else(|| std::io::Error::other("no address bound"))?;
    Ok((server.run(), bound))
}
