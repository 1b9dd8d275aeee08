//! A user's own [`Discovery`] with real nodes and real libp2p connections: a node whose only way
//! in is a registry that is not ready yet starts anyway, shows the registry's error and backoff
//! in its status, and joins as soon as the registry answers. A discovery that panics beside it
//! is an error in the status, not a crash.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clusterfunk::{Cluster, ClusterStatus, Discovered, Discovery};
use clusterfunk_integration::inproc::{node, Tally};

/// Answers `addr` once `ready` is set; until then fails as a registry that is not up would.
struct Registry {
    ready: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Discovery for Registry {
    fn name(&self) -> String {
        "registry test/dev".into()
    }

    fn discover(&self) -> Discovered<'_> {
        Box::pin(async move {
            if self.ready.load(Ordering::SeqCst) {
                Ok(vec![self.addr])
            } else {
                Err(std::io::Error::other("registry not ready"))
            }
        })
    }

    fn refresh(&self) -> Duration {
        Duration::from_secs(1)
    }
}

struct Broken;

impl Discovery for Broken {
    fn name(&self) -> String {
        "broken".into()
    }

    fn discover(&self) -> Discovered<'_> {
        Box::pin(async { panic!("a bug in a discovery") })
    }
}

/// The status of the source `name`: failures in a row, the last error, the addresses found.
fn source(s: &ClusterStatus, name: &str) -> Option<(u32, Option<String>, Vec<SocketAddr>)> {
    s.transport.seeds.iter().find(|x| x.seed == name).map(|x| (x.failures, x.error.clone(), x.addrs.clone()))
}

#[actix_rt::test]
async fn a_node_joins_through_its_own_discovery_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ports = clusterfunk_integration::free_ports(2);
    let a_addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let a = node(&dir.path().join("a"), "disco", a_addr.to_string(), None).await.expect("a bootstraps");
    let ready = Arc::new(AtomicBool::new(false));
    let b = Cluster::builder()
        .name("disco")
        .env("test")
        .data_dir(dir.path().join("b"))
        .listen(format!("127.0.0.1:{}", ports[1]))
        .shards(1024)
        .voters(1)
        .mdns(false)
        .discovery(Registry { ready: ready.clone(), addr: a_addr })
        .discovery(Broken)
        .entity::<Tally>()
        .build()
        .expect("a valid config")
        .start()
        .await
        .expect("b starts though nothing can be found yet");
    let t = Duration::from_secs(30);

    b.wait_until(t, "the registry's error, retried with backoff", |s| {
        source(s, "registry test/dev")
            .is_some_and(|(failures, error, _)| failures >= 2 && error.as_deref() == Some("registry not ready"))
    })
    .await
    .unwrap();
    b.wait_until(t, "the broken discovery reported", |s| {
        source(s, "broken").is_some_and(|(_, error, _)| error.as_deref() == Some("the discovery panicked"))
    })
    .await
    .unwrap();
    assert_eq!(a.status().members.len(), 1, "not found: not joined");

    ready.store(true, Ordering::SeqCst);
    b.wait_until(t, "found through the registry, joined and serving", |s| {
        source(s, "registry test/dev").is_some_and(|(_, error, addrs)| error.is_none() && addrs == vec![a_addr])
            && s.shard_map.owners.len() == 2
            && s.shard_map.unassigned == 0
    })
    .await
    .unwrap();
    a.wait_until(t, "a sees b as an owner", |s| s.shard_map.owners.len() == 2).await.unwrap();
    b.shutdown().await;
    a.shutdown().await;
}
