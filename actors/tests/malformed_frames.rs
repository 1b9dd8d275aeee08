//! A peer that sends malformed or oversized frames on the Raft protocol gets its connection
//! closed and counted; the node goes on and answers a well-formed request afterwards. A peer
//! outside the Raft configuration, or a member asking for another node, drives nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;

use clusterfunk_actors::consensus::authorize::Unauthorized;
use clusterfunk_actors::consensus::rpc::{self, LeaseRequest, RaftRequest, RaftResponse};
use clusterfunk_actors::node::Node;
use clusterfunk_actors::state::Command;
use clusterfunk_actors::testing::{framed, RawCodec};
use clusterfunk_actors::types::{NodeId, ShardId};
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

    let mut client = raw_client("/clusterfunk/frames/test/raft/1");
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

    // The node goes on: a well-formed request gets a well-formed answer, and from this peer,
    // which is not in the Raft configuration, that answer is a refusal.
    let vote =
        RaftRequest::Vote(openraft::raft::VoteRequest { vote: openraft::Vote::new(0, NodeId(1)), last_log_id: None });
    let resp = request(&mut client, server, framed(&wire::encode(&vote))).await.expect("answered");
    let resp: RaftResponse = wire::decode(&resp[4..]).expect("a framed RaftResponse");
    assert!(matches!(resp, RaftResponse::Refused(Unauthorized::OtherNode)), "a vote for node 1 from another: {resp:?}");
    assert!(node.metrics().running_state.is_ok());
    node.shutdown().await;
}

/// A peer that reaches the node but is not in its Raft configuration drives nothing: a
/// high-term AppendEntries or Vote (which would depose the leader), a forged `Released` or
/// `SetAssignments` (which would move shards), a lease for the node itself: all refused,
/// counted, and the leader still leads in its term. Before the authorization rule the
/// AppendEntries alone made the node a follower of a leader that does not exist.
#[actix_rt::test]
async fn an_outsider_drives_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(common::node_config(dir.path(), "outsider")).await.expect("node starts");
    let addr = common::listen_addr(&node).await;
    let server = node.transport.local_peer_id();
    wait_for("the node to lead", || node.metrics().current_leader == Some(node.id)).await;
    let term = node.metrics().current_term;
    let mut client = raw_client("/clusterfunk/outsider/test/raft/1");
    client.add_peer_address(server, addr);
    // The attacker speaks as itself (its node id is derived from its key), at a high term.
    let me = NodeId::from_peer_bytes(&client.local_peer_id().to_bytes());
    let epoch = node.map.borrow().epoch();
    let append = |leader| {
        RaftRequest::AppendEntries(openraft::raft::AppendEntriesRequest {
            vote: openraft::Vote::new_committed(term + 100, leader),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        })
    };
    let hostile = [
        (append(me), Unauthorized::NotMember),
        (
            RaftRequest::Vote(openraft::raft::VoteRequest {
                vote: openraft::Vote::new(term + 100, me),
                last_log_id: None,
            }),
            Unauthorized::NotMember,
        ),
        (
            RaftRequest::ClientWrite(Command::Released { node: node.id, shards: vec![(ShardId(0), epoch)] }),
            Unauthorized::NotMember,
        ),
        (
            RaftRequest::ClientWrite(Command::SetAssignments { based_on: epoch, changes: vec![] }),
            Unauthorized::NotMember,
        ),
        (RaftRequest::Lease(LeaseRequest { node: node.id, term }), Unauthorized::NotMember),
        // Posing as the node itself, or at a term no election reaches.
        (append(node.id), Unauthorized::OtherNode),
        (
            RaftRequest::AppendEntries(openraft::raft::AppendEntriesRequest {
                vote: openraft::Vote::new_committed(u64::MAX - 1, me),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            }),
            Unauthorized::ImplausibleTerm,
        ),
    ];
    for (req, why) in &hostile {
        let resp = request(&mut client, server, framed(&wire::encode(req))).await.expect("answered");
        let resp: RaftResponse = wire::decode(&resp[4..]).expect("a framed RaftResponse");
        assert!(matches!(resp, RaftResponse::Refused(w) if w == *why), "{} answered {resp:?}", req.kind());
    }
    assert_eq!(node.refusals.get(Unauthorized::NotMember), 5);
    assert_eq!(node.refusals.get(Unauthorized::OtherNode), 1);
    assert_eq!(node.refusals.get(Unauthorized::ImplausibleTerm), 1);
    let m = node.metrics();
    assert_eq!((m.current_term, m.current_leader), (term, Some(node.id)), "the leader still leads in its term");
    assert_eq!(node.map.borrow().epoch(), epoch, "no shard moved");
    node.shutdown().await;
}

/// A member asks only for itself: a lease or a `Released` for another node, and any command
/// only a leader decides, are refused by the leader, which stays as it was.
#[actix_rt::test]
async fn a_member_asks_only_for_itself() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Node::start(common::node_config(d1.path(), "member")).await.expect("node starts");
    let addr = common::listen_addr(&leader).await;
    let mut cfg = common::node_config(d2.path(), "member");
    cfg.bootstrap = false;
    cfg.seeds = vec![addr.iter().fold(String::new(), |mut s, p| {
        use libp2p::multiaddr::Protocol;
        match p {
            Protocol::Ip4(ip) => s = format!("{ip}"),
            Protocol::Tcp(port) => s = format!("{s}:{port}"),
            _ => {}
        }
        s
    })];
    let member = Node::start(cfg).await.expect("second node starts");
    let joined = || leader.applied.borrow().membership.membership().get_node(&member.id).is_some();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !joined() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the second node joins the raft configuration");
    // Each announces its configuration's members in its heartbeats (what lets a node that
    // lags behind a membership change accept a newer member vouched for by one it knows).
    let vouches = || leader.view.borrow().members.get(&member.id).is_some_and(|v| v.raft_members.contains(&leader.id));
    tokio::time::timeout(Duration::from_secs(30), async {
        while !vouches() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the member's heartbeats list its configuration");
    let (term, epoch) = (leader.metrics().current_term, leader.map.borrow().epoch());
    let peer = leader.transport.local_peer_id();
    let ask = |req: RaftRequest| {
        let (t, addrs) = (member.transport.clone(), vec![addr.clone()]);
        async move { rpc::call(&t, peer, addrs, &req).await.expect("answered") }
    };
    let refused =
        |r: RaftResponse, why: Unauthorized| assert!(matches!(r, RaftResponse::Refused(w) if w == why), "{r:?}");
    refused(ask(RaftRequest::Lease(LeaseRequest { node: leader.id, term })).await, Unauthorized::OtherNode);
    let released = Command::Released { node: leader.id, shards: vec![(ShardId(0), epoch)] };
    refused(ask(RaftRequest::ClientWrite(released)).await, Unauthorized::OtherNode);
    let moves = Command::SetAssignments { based_on: epoch, changes: vec![] };
    refused(ask(RaftRequest::ClientWrite(moves)).await, Unauthorized::LeaderOnly);
    refused(ask(RaftRequest::ClientWrite(Command::RemoveMember { id: leader.id })).await, Unauthorized::LeaderOnly);
    // Its own lease is granted (or refused for a lease reason), never refused as unauthorized.
    let own = ask(RaftRequest::Lease(LeaseRequest { node: member.id, term })).await;
    assert!(matches!(own, RaftResponse::Lease(_)), "{own:?}");
    assert_eq!(leader.refusals.get(Unauthorized::OtherNode), 2);
    assert_eq!(leader.refusals.get(Unauthorized::LeaderOnly), 2);
    assert_eq!(leader.metrics().current_term, term);
    assert_eq!(leader.map.borrow().epoch(), epoch, "no shard moved");
    member.shutdown().await;
    leader.shutdown().await;
}

fn raw_client(protocol: &'static str) -> Swarm<request_response::Behaviour<RawCodec>> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(StreamProtocol::new(protocol), ProtocolSupport::Outbound)],
                Default::default(),
            )
        })
        .unwrap()
        .build()
}
