//! A peer sending a malformed frame on a proxy stream is counted and dropped; the router goes on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

mod common;

use clusterfunk_actors::node::Node;
use clusterfunk_actors::proxy::{self, Dispatch, Envelope, Refusal, Router};
use futures::future::BoxFuture;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{noise, tcp, yamux};

struct Nobody;

impl Dispatch for Nobody {
    fn dispatch(&self, env: Envelope) -> BoxFuture<'static, Result<Vec<u8>, Refusal>> {
        Box::pin(futures::future::ready(Err(Refusal::UnknownEntity(env.entity))))
    }
}

#[actix_rt::test]
async fn malformed_proxy_frame_drops_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::node_config(dir.path(), "pframes");
    let cluster = cfg.cluster.clone();
    let node = Node::start(cfg).await.expect("node starts");
    let router = Router::start(
        node.id,
        proxy::Config::default(),
        &cluster,
        node.map.clone(),
        node.applied.clone(),
        node.transport.clone(),
        Arc::new(Nobody),
        node.ownership.clone(),
        node.transport_arbiter(),
    );
    let addr = common::listen_addr(&node).await;
    let server = node.transport.local_peer_id();

    let mut client = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .build();
    client.dial(addr).expect("dial starts");
    loop {
        if let libp2p::swarm::SwarmEvent::ConnectionEstablished { peer_id, .. } = client.select_next_some().await {
            assert_eq!(peer_id, server);
            break;
        }
    }
    let mut control = client.behaviour().new_control();
    actix_rt::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let mut stream = control.open_stream(server, proxy::protocol(&cluster)).await.expect("stream opens");
    stream.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while router.stats().malformed.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the malformed frame is counted");
    assert!(node.metrics().running_state.is_ok(), "the node goes on");
    node.shutdown().await;
}
