//! A peer that sends malformed or oversized frames on the Raft protocol gets its connection
//! closed and counted; the node goes on and answers a well-formed request afterwards.

use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;

use clusterfunk_actors::consensus::rpc::{RaftRequest, RaftResponse};
use clusterfunk_actors::node::Node;
use clusterfunk_actors::testing::{framed, RawCodec};
use clusterfunk_actors::types::NodeId;
use clusterfunk_actors::wire;
use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, PeerId, StreamProtocol, Swarm};

async fn request(
    client: &mut Swarm<request_response::Behaviour<RawCodec>>,
    peer: PeerId,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let id = client.behaviour_mut().send_request(&peer, bytes);
    loop {
        match client.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) if request_id == id => return Ok(response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, error, .. })
                if request_id == id =>
            {
                return Err(error.to_string())
            }
            _ => {}
        }
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[actix_rt::test]
async fn malformed_frames_drop_the_peer_not_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(common::node_config(dir.path(), "frames")).await.expect("node starts");
    let addr = common::listen_addr(&node).await;
    let server = node.transport.local_peer_id();

    let protocol = StreamProtocol::new("/clusterfunk/frames/test/raft/1");
    let mut client = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(protocol, ProtocolSupport::Outbound)],
                Default::default(),
            )
        })
        .unwrap()
        .build();
    client.add_peer_address(server, addr);
    let stats = node.transport.stats().clone();

    // A frame whose payload is not a RaftRequest.
    let r = request(&mut client, server, framed(b"\xc1\xc1garbage")).await;
    assert!(r.as_ref().map_or(true, Vec::is_empty), "no answer to garbage: {r:?}");
    wait_for("the malformed frame to be counted", || stats.malformed_frames.load(Ordering::Relaxed) == 1).await;

    // A length prefix over the 16 MiB limit: refused before allocating.
    let r = request(&mut client, server, vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    assert!(r.as_ref().map_or(true, Vec::is_empty), "no answer to an oversized frame: {r:?}");
    wait_for("the oversized frame to be counted", || stats.malformed_frames.load(Ordering::Relaxed) == 2).await;

    // The node goes on: a well-formed vote request gets a well-formed answer.
    let vote =
        RaftRequest::Vote(openraft::raft::VoteRequest { vote: openraft::Vote::new(0, NodeId(1)), last_log_id: None });
    let resp = request(&mut client, server, framed(&wire::encode(&vote))).await.expect("answered");
    let resp: RaftResponse = wire::decode(&resp[4..]).expect("a framed RaftResponse");
    assert!(matches!(resp, RaftResponse::Vote(Ok(_))), "{resp:?}");
    assert!(node.metrics().running_state.is_ok());
    node.shutdown().await;
}
