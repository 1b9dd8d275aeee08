//! The dashboard and HTTP API: `GET /api/cluster`, `/health`, `/ready`, and a status page at `/`.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{get, web, App, HttpResponse, HttpServer, Responder};

use crate::cluster::Inner;

#[get("/api/cluster")]
async fn api_cluster(inner: web::Data<Arc<Inner>>) -> impl Responder {
    HttpResponse::Ok().json(inner.status())
}

/// Liveness: the process serves HTTP.
#[get("/health")]
async fn health() -> impl Responder {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Readiness: a leader is known and every shard has an owner.
#[get("/ready")]
async fn ready(inner: web::Data<Arc<Inner>>) -> impl Responder {
    let s = inner.status();
    if s.leader.is_none() {
        return HttpResponse::ServiceUnavailable().content_type("text/plain").body("not ready: no raft leader known\n");
    }
    if s.shard_map.shards == 0 || s.shard_map.unassigned > 0 {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("not ready: shards without an owner\n");
    }
    HttpResponse::Ok().content_type("text/plain").body("ready\n")
}

#[get("/")]
async fn index() -> impl Responder {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("dashboard.html"))
}

/// Binds the dashboard on `addr` (one worker thread: it serves operators, not traffic).
pub(crate) fn serve(addr: SocketAddr, inner: Arc<Inner>) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let data = web::Data::new(inner);
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).service(api_cluster).service(health).service(ready).service(index)
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    Ok((server.run(), bound))
}
