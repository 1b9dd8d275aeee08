//! A peer outside the Raft configuration gets no proxy stream; a member sending a malformed
//! frame on one is counted and dropped; the router goes on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

mod common;

use clusterfunk_actors::consensus::types::RaftNode;
use clusterfunk_actors::node::Node;
use clusterfunk_actors::proxy::{self, Dispatch, Envelope, Refusal, Router};
use clusterfunk_actors::types::NodeId;
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
        node.metrics.clone(),
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
    let client_peer = *client.local_peer_id();
    let mut control = client.behaviour().new_control();
    actix_rt::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let wait = |what: &'static str, f: Box<dyn Fn() -> bool>| async move {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !f() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    };

    // Not a member of the Raft configuration: its stream is refused before a frame is read
    // (the write may already find it closed).
    let mut stream = control.open_stream(server, proxy::protocol(&cluster)).await.expect("stream opens");
    let _ = stream.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).await;
    let _ = stream.flush().await;
    let stats = router.clone();
    wait(
        "the outsider's stream to be refused",
        Box::new(move || stats.stats().unauthorized.load(Ordering::Relaxed) == 1),
    )
    .await;
    assert_eq!(router.stats().malformed.load(Ordering::Relaxed), 0, "refused before reading");

    // A learner (a member) sending a malformed frame is counted as malformed and dropped.
    let id = NodeId::from_peer_bytes(&client_peer.to_bytes());
    node.raft
        .add_learner(id, RaftNode { peer_id: Some(client_peer), addrs: vec![] }, false)
        .await
        .expect("learner added");
    let applied = node.applied.clone();
    wait(
        "the learner to be applied",
        Box::new(move || applied.borrow().membership.membership().get_node(&id).is_some()),
    )
    .await;
    let mut stream = control.open_stream(server, proxy::protocol(&cluster)).await.expect("stream opens");
    stream.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).await.unwrap();
    stream.flush().await.unwrap();
    let stats = router.clone();
    wait("the malformed frame to be counted", Box::new(move || stats.stats().malformed.load(Ordering::Relaxed) == 1))
        .await;
    assert!(node.metrics().running_state.is_ok(), "the node goes on");
    node.shutdown().await;
}
