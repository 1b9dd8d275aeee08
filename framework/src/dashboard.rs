//! The dashboard and HTTP API: `GET /api/cluster`, `/health`, `/ready`, `/metrics`, and a
//! status page at `/`.

use std::net::SocketAddr;

use actix_web::{get, web, App, HttpResponse, HttpServer, Responder};

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

#[get("/")]
async fn index() -> impl Responder {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("dashboard.html"))
}

/// Serves the dashboard on `listener` (one worker thread: it serves operators, not traffic).
pub(crate) fn serve(
    listener: std::net::TcpListener,
    cluster: Cluster,
    routes: fn(&mut web::ServiceConfig),
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let data = web::Data::new(cluster);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .service(api_cluster)
            .service(health)
            .service(ready)
            .service(metrics)
            .service(index)
            .configure(crate::manage::routes)
            .configure(routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?;
    let bound = server.addrs().first().copied().ok_or_else(|| std::io::Error::other("no address bound"))?;
    Ok((server.run(), bound))
}
