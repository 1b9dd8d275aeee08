//! The service's own HTTP server (`start_with_http`): its routes run on a server of their own,
//! with several workers and state captured by the routes, apart from the dashboard's; the
//! management and dashboard routes stay on the dashboard's server.
//!
//! A handler that blocks one worker (held on a gate the test opens) must leave both another
//! request of the service and the dashboard's `/health` answered: on one shared single-worker
//! server, as before, both would wait behind it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use clusterfunk::{Cluster, ConfigError};

/// `GET path` on `addr` with a 10 s limit; the status code and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((code, body))
}

/// A gate a handler waits at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    entered: AtomicBool,
}

fn builder(dir: &std::path::Path) -> clusterfunk::Builder {
    Cluster::builder()
        .name("httpservice")
        .env("test")
        .data_dir(dir)
        .listen("127.0.0.1:0")
        .dashboard("127.0.0.1:0")
        .bootstrap(true)
        .voters(1)
        .shards(8)
        .mdns(false)
}

#[actix_rt::test]
async fn the_services_routes_run_on_a_server_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Gate::default());
    let (h, g) = (hits.clone(), gate.clone());
    let cluster = builder(dir.path())
        .http("127.0.0.1:0")
        .http_workers(2)
        .build()
        .unwrap()
        .start_with_http(move |cfg: &mut web::ServiceConfig| {
            let (hits, gate) = (h.clone(), g.clone());
            cfg.route(
                "/hits",
                web::get().to(move |c: web::Data<Cluster>| {
                    let n = hits.fetch_add(1, Ordering::Relaxed) + 1;
                    let node = c.node_id();
                    async move { HttpResponse::Ok().body(format!("{n} {node}")) }
                }),
            );
            cfg.route(
                "/block",
                web::get().to(move || {
                    // Blocks this worker thread, as a handler doing blocking work would.
                    gate.entered.store(true, Ordering::Release);
                    let mut open = gate.open.lock().unwrap();
                    while !*open {
                        open = gate.cv.wait(open).unwrap();
                    }
                    async { HttpResponse::Ok().body("released") }
                }),
            );
        })
        .await
        .unwrap();
    let (http, dash) = (cluster.http_addr().expect("serving"), cluster.dashboard_addr().expect("a dashboard"));
    assert_ne!(http, dash);
    assert_eq!(cluster.status().http, Some(http.to_string()), "the status says where");
    let me = cluster.member(cluster.node_id()).expect("itself");
    assert_eq!(me.endpoint("http"), Some(http.to_string().as_str()), "announced as the node's http endpoint");

    let node = cluster.node_id().to_string();
    let (code, body) = tokio::task::spawn_blocking(move || get(http, "/hits")).await.unwrap().unwrap();
    assert_eq!((code, body), (200, format!("1 {node}")), "state captured by the routes, the cluster as Data");
    // Each server serves its own routes only.
    let wrong =
        tokio::task::spawn_blocking(move || (get(dash, "/hits"), get(http, "/api/cluster"), get(http, "/health")));
    let (on_dash, api_on_http, health_on_http) = wrong.await.unwrap();
    assert_eq!(on_dash.unwrap().0, 404, "the service's route is not on the dashboard");
    assert_eq!(api_on_http.unwrap().0, 404, "the management API is not on the service's server");
    assert_eq!(health_on_http.unwrap().0, 404);

    // One worker held in a handler: the other serves, and so does the dashboard.
    let blocked = std::thread::spawn(move || get(http, "/block"));
    let waited = Instant::now();
    while !gate.entered.load(Ordering::Acquire) {
        assert!(waited.elapsed() < Duration::from_secs(10), "the blocking handler never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Two requests at once: connections go to the workers in turn, so one reaches the free one
    // (the other may wait behind the blocked handler).
    let (tx, rx) = std::sync::mpsc::channel();
    let both: Vec<_> = (0..2)
        .map(|_| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send(get(http, "/hits"));
            })
        })
        .collect();
    let first = tokio::task::spawn_blocking(move || (rx.recv_timeout(Duration::from_secs(10)), rx)).await.unwrap();
    let (first, rx) = (first.0.expect("no answer from the free worker"), first.1);
    assert_eq!(first.expect("another worker answers while one is blocked").0, 200);
    let health = tokio::task::spawn_blocking(move || get(dash, "/health")).await.unwrap();
    assert_eq!(health.expect("the dashboard answers while the service is busy").0, 200);
    assert!(!blocked.is_finished(), "all of that while the first handler still blocks");
    *gate.open.lock().unwrap() = true;
    gate.cv.notify_all();
    assert_eq!(blocked.join().unwrap().unwrap(), (200, "released".to_string()));
    both.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(rx.recv().unwrap().unwrap().0, 200);
    assert_eq!(hits.load(Ordering::Relaxed), 3);

    cluster.shutdown().await;
    let after = tokio::task::spawn_blocking(move || get(http, "/hits")).await.unwrap();
    assert!(after.is_err() || after.unwrap().0 == 0, "the server stopped with the node");
}

#[actix_rt::test]
async fn routes_without_an_address_and_a_bad_worker_count_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Err(err) = builder(dir.path()).build().unwrap().start_with_http(|_: &mut web::ServiceConfig| {}).await else {
        panic!("routes without an address started");
    };
    assert!(matches!(err, clusterfunk::Error::Config(ConfigError::NoHttp)), "{err}");
    assert!(err.to_string().contains("http"), "names the field: {err}");
    for n in [0, 257] {
        let err = builder(dir.path()).http("127.0.0.1:0").http_workers(n).build().unwrap_err();
        assert_eq!(err, ConfigError::HttpWorkers(n));
        assert!(err.to_string().starts_with("http_workers:"), "{err}");
    }
    let err = builder(dir.path()).http("nowhere").build().unwrap_err();
    assert!(err.to_string().starts_with("http:"), "{err}");
    // Endpoints and metadata: each named and bounded.
    let err = builder(dir.path()).endpoint("bad name", "x:1").build().unwrap_err();
    assert!(err.to_string().starts_with("endpoint: the name \"bad name\""), "{err}");
    let err = builder(dir.path()).metadata("rack", "r\n1").build().unwrap_err();
    assert!(err.to_string().starts_with("metadata:") && err.to_string().contains("control"), "{err}");
    let many = (0..17).fold(builder(dir.path()), |b, i| b.endpoint(format!("e{i}"), "x:1"));
    assert!(many.build().unwrap_err().to_string().contains("17 given, at most 16"));
}
