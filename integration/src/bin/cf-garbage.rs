//! A hostile *authenticated* peer for the chaos lab's garbage-frames scenario: it has the cluster
//! secret and the cluster's identify version, so its connection gets past pnet, noise and the
//! cluster check, and then it sends, on every protocol a node serves, frames no node would send:
//! random bytes under a valid length, length prefixes over the limit, frames cut short, well-formed
//! proxy requests for unknown entities and out-of-range shards, and random gossip. Then
//! *well-formed hostile* requests: a high-term AppendEntries and Vote, forwarded `Released` and
//! `SetAssignments` commands, a lease for the node itself, the operators' path (membership
//! requests with guessed tokens, forwarded operator commands, a read index, a poll for a relayed
//! answer), and heartbeats forged for the node: every Raft request must be answered `Refused`
//! (it is not a member of the Raft configuration), the poll with nothing.
//!
//! `cf-garbage --name chaos --env lab [--secret HEX] [--seed N] [--rounds N] HOST:PORT...`
//!
//! It prints one `GARBAGE` line per target with what it sent and how the node answered, and one
//! `HOSTILE` line with how many well-formed hostile requests were refused, and exits 0 once it
//! sent everything and every hostile request was refused (being dropped is the expected answer
//! to garbage, not a failure); 2 on bad arguments, 1 if a target could never be reached or a
//! hostile request was not refused.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use clusterfunk::{Epoch, ShardId};
use clusterfunk_actors::consensus::manage::{ManageError, MemberOp};
use clusterfunk_actors::consensus::rpc::{LeaseRequest, RaftRequest, RaftResponse};
use clusterfunk_actors::proxy::{Envelope, Frame};
use clusterfunk_actors::state::Command;
use clusterfunk_actors::testing::{framed, RawCodec};
use clusterfunk_actors::types::{ClusterName, NodeId, NodeMeta, Token};
use clusterfunk_actors::wire::{self, Gossip, Heartbeat};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport as _};
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, identity, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use rand::{Rng, SeedableRng};

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    raft: request_response::Behaviour<RawCodec>,
    streams: libp2p_stream::Behaviour,
}

struct Args {
    name: String,
    env: String,
    secret: Option<[u8; 32]>,
    seed: u64,
    rounds: u32,
    targets: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { name: "chaos".into(), env: "lab".into(), secret: None, seed: 1, rounds: 3, targets: vec![] };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |what: &str| it.next().ok_or_else(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--name" => a.name = value("a cluster key")?,
            "--env" => a.env = value("an environment")?,
            "--seed" => a.seed = value("a number")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--rounds" => a.rounds = value("a number")?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--secret" => {
                let hex = value("64 hex characters")?;
                let bytes: Result<Vec<u8>, _> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("x"), 16))
                    .collect();
                a.secret =
                    Some(bytes.ok().and_then(|b| b.try_into().ok()).ok_or("--secret: 64 hex characters (32 bytes)")?);
            }
            t if !t.starts_with('-') => a.targets.push(t.to_string()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.targets.is_empty() {
        return Err("no target HOST:PORT given".into());
    }
    Ok(a)
}

fn transport(key: &identity::Keypair, secret: Option<[u8; 32]>) -> Boxed<(PeerId, StreamMuxerBox)> {
    let noise = noise::Config::new(key).expect("an ed25519 key makes a noise config");
    let tcp = tcp::tokio::Transport::new(tcp::Config::new().nodelay(true));
    match secret {
        Some(k) => tcp
            .and_then(move |socket, _| PnetConfig::new(PreSharedKey::new(k)).handshake(socket))
            .upgrade(Version::V1)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .boxed(),
        None => tcp
            .upgrade(Version::V1)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .boxed(),
    }
}

/// What a node did with what we sent.
#[derive(Default)]
struct Tally {
    sent: u32,
    answered: u32,
    dropped: u32,
}

struct Peer {
    swarm: Swarm<Behaviour>,
    control: libp2p_stream::Control,
    proxy: StreamProtocol,
    topic: gossipsub::IdentTopic,
    rng: rand::rngs::StdRng,
}

impl Peer {
    /// Polls the swarm until `done` says so or `timeout` passes.
    async fn drive<T>(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&SwarmEvent<BehaviourEvent>) -> Option<T>,
    ) -> Option<T> {
        let wait = async {
            loop {
                let ev = self.swarm.select_next_some().await;
                if let Some(t) = done(&ev) {
                    return t;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// Connects to `addr` (again, after being dropped) and returns the node's peer id.
    async fn connect(&mut self, addr: &Multiaddr) -> Option<PeerId> {
        if self.swarm.dial(addr.clone()).is_err() {
            return None;
        }
        self.drive(Duration::from_secs(10), |ev| match ev {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => Some(Some(*peer_id)),
            SwarmEvent::OutgoingConnectionError { .. } => Some(None),
            _ => None,
        })
        .await
        .flatten()
    }

    /// Waits until the connection to `peer` is closed (what a node does to a garbage peer).
    async fn closed(&mut self, peer: PeerId, within: Duration) -> bool {
        if !self.swarm.is_connected(&peer) {
            return true;
        }
        self.drive(within, |ev| match ev {
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if *peer_id == peer => Some(()),
            _ => None,
        })
        .await
        .is_some()
    }

    /// Writes `bytes` on a new proxy stream and reads what comes back until the stream closes.
    async fn proxy_stream(&mut self, peer: PeerId, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut control, proto) = (self.control.clone(), self.proxy.clone());
        let io = async move {
            let mut s = control.open_stream(peer, proto).await.map_err(io::Error::other)?;
            s.write_all(&bytes).await?;
            s.flush().await?;
            let mut back = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut back)).await;
            Ok(back)
        };
        tokio::pin!(io);
        loop {
            tokio::select! {
                r = &mut io => return r,
                _ = self.swarm.select_next_some() => {}
            }
        }
    }

    /// Sends `bytes` as a Raft request; `Ok` if the node answered anything.
    async fn raft(&mut self, peer: PeerId, bytes: Vec<u8>) -> bool {
        let id = self.swarm.behaviour_mut().raft.send_request(&peer, bytes);
        self.drive(Duration::from_secs(3), |ev| match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Raft(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            })) if *request_id == id => Some(!response.is_empty()),
            SwarmEvent::Behaviour(BehaviourEvent::Raft(request_response::Event::OutboundFailure {
                request_id,
                ..
            })) if *request_id == id => Some(false),
            _ => None,
        })
        .await
        .unwrap_or(false)
    }

    fn random(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.rng.fill(&mut v[..]);
        v
    }

    /// One round against one node: each kind of garbage on each protocol, reconnecting after
    /// every drop.
    async fn round(&mut self, addr: &Multiaddr, t: &mut Tally) -> Result<(), String> {
        // A well-formed proxy request for an entity type nobody registered, to an out-of-range
        // shard with a far-future epoch: answered with a refusal, and the stream stays usable.
        let peer = self.connect(addr).await.ok_or("cannot connect")?;
        let env = Envelope {
            entity: self.rng.gen(),
            message: self.rng.gen(),
            shard: ShardId(u32::MAX),
            key: self.random(16),
            payload: self.random(64),
            epoch: Epoch(u64::MAX),
            replica: false,
            trace: None,
        };
        let back = self.proxy_stream(peer, Frame::Request { id: 1, env }.encode()).await;
        t.sent += 1;
        if back.is_ok_and(|b| !b.is_empty()) {
            t.answered += 1;
        }

        let garbage: Vec<(&str, Vec<u8>)> = {
            let n = self.rng.gen_range(1..4096);
            let body = self.random(n);
            let short = self.random(100);
            vec![
                ("random bytes under a valid length", framed(&body)),
                ("a length prefix over the limit", vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3]),
                ("a frame cut short", {
                    let mut f = (10_000u32).to_be_bytes().to_vec();
                    f.extend(short);
                    f
                }),
                (
                    "a response frame where requests go",
                    Frame::Response { id: 9, result: Ok(Default::default()) }.encode(),
                ),
            ]
        };
        for (what, bytes) in garbage {
            let peer = self.connect(addr).await.ok_or("cannot reconnect")?;
            t.sent += 1;
            let _ = self.proxy_stream(peer, bytes.clone()).await;
            if self.closed(peer, Duration::from_millis(1500)).await {
                t.dropped += 1;
            } else {
                eprintln!("  proxy, {what}: still connected");
            }
            let peer = self.connect(addr).await.ok_or("cannot reconnect")?;
            t.sent += 1;
            if self.raft(peer, bytes).await {
                t.answered += 1;
                eprintln!("  raft, {what}: answered");
            }
            if self.closed(peer, Duration::from_millis(1500)).await {
                t.dropped += 1;
            }
        }

        // Random gossip on the cluster topic (signed by us: the author is known).
        let peer = self.connect(addr).await.ok_or("cannot reconnect")?;
        let data = self.random(200);
        let topic = self.topic.clone();
        let published = self.drive_publish(topic, data).await;
        if published {
            t.sent += 1;
            if self.closed(peer, Duration::from_millis(1500)).await {
                t.dropped += 1;
            }
        }
        Ok(())
    }

    /// Sends a well-formed request and decodes the answer (`None`: no answer).
    async fn raft_rpc(&mut self, peer: PeerId, req: &RaftRequest) -> Option<RaftResponse> {
        let id = self.swarm.behaviour_mut().raft.send_request(&peer, framed(&wire::encode(req)));
        let bytes = self
            .drive(Duration::from_secs(3), |ev| match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Raft(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                })) if *request_id == id => Some(Some(response.clone())),
                SwarmEvent::Behaviour(BehaviourEvent::Raft(request_response::Event::OutboundFailure {
                    request_id,
                    ..
                })) if *request_id == id => Some(None),
                _ => None,
            })
            .await
            .flatten()?;
        wire::decode(bytes.get(4..)?).ok()
    }

    /// Well-formed hostile requests to one node: each must be refused. Returns (Raft requests
    /// sent, refused, forged heartbeats sent).
    async fn hostile(&mut self, addr: &Multiaddr, args: &Args) -> Result<(u32, u32, u32), String> {
        let peer = self.connect(addr).await.ok_or("cannot connect")?;
        let me = NodeId::from_peer_bytes(&self.swarm.local_peer_id().to_bytes());
        let target = NodeId::from_peer_bytes(&peer.to_bytes());
        let term = 1_000;
        let requests = [
            RaftRequest::AppendEntries(openraft::raft::AppendEntriesRequest {
                vote: openraft::Vote::new_committed(term, me),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            }),
            RaftRequest::Vote(openraft::raft::VoteRequest { vote: openraft::Vote::new(term, me), last_log_id: None }),
            RaftRequest::ClientWrite(Command::Released { node: target, shards: vec![(ShardId(0), Epoch(1))] }),
            RaftRequest::ClientWrite(Command::SetAssignments { based_on: Epoch(1), changes: vec![] }),
            RaftRequest::ClientWrite(Command::RemoveMember { id: target }),
            RaftRequest::Lease(LeaseRequest { node: target, term: 1 }),
            // The operators' path: membership by command with guessed tokens, the operators'
            // state commands forwarded, and a read index (a members-only view of the log).
            RaftRequest::Manage { op: MemberOp::Remove(target), token: Token::new("guess-0123456789abcdef") },
            RaftRequest::Manage { op: MemberOp::Add(me), token: Token::new("") },
            RaftRequest::Manage { op: MemberOp::RebalanceCommit("0".repeat(16)), token: Token::new("x".repeat(32)) },
            RaftRequest::ClientWrite(Command::SetAllowed { id: me, allowed: true }),
            RaftRequest::ClientWrite(Command::SetProduction),
            RaftRequest::ClientWrite(Command::Pin { shard: ShardId(0), node: Some(me) }),
            RaftRequest::ClientWrite(Command::AbortRebalance),
            RaftRequest::ReadIndex,
        ];
        let (mut sent, mut refused) = (0, 0);
        for req in &requests {
            sent += 1;
            match self.raft_rpc(peer, req).await {
                Some(RaftResponse::Refused(_)) => refused += 1,
                other => eprintln!("  hostile {}: answered {other:?}", req.kind()),
            }
        }
        // A poll for a relayed request's answer is answered to anyone, with nothing: only the
        // relay of a request gets its result (and only a member can relay).
        sent += 1;
        let poll = RaftRequest::ManageResult { id: 1, token: Token::new("guess-0123456789abcdef") };
        match self.raft_rpc(peer, &poll).await {
            Some(RaftResponse::Refused(_)) | Some(RaftResponse::Manage(Err(ManageError::Failed(_)))) => refused += 1,
            other => eprintln!("  hostile {}: answered {other:?}", poll.kind()),
        }
        // Heartbeats forged for the node (its id and peer id, our signature), and for a node
        // that does not exist (its id, our peer id).
        let mut forged = 0;
        let cluster = ClusterName::new(&args.name, &args.env);
        for meta in [
            NodeMeta { id: target, peer_id: Some(peer), weight: 10_000, workers: 1, ..NodeMeta::default() },
            NodeMeta {
                id: NodeId(42),
                peer_id: Some(*self.swarm.local_peer_id()),
                weight: 10_000,
                workers: 1,
                ..NodeMeta::default()
            },
        ] {
            let hb = Heartbeat {
                cluster: cluster.clone(),
                meta,
                seq: 1,
                incarnation: 1,
                raft_members: vec![me],
                bootstrapping: false,
            };
            let topic = self.topic.clone();
            if self.drive_publish(topic, wire::encode(&Gossip::Heartbeat(hb))).await {
                forged += 1;
            }
        }
        Ok((sent, refused, forged))
    }

    /// Publishes `data` once the node is known to subscribe to the topic (up to 3 s).
    async fn drive_publish(&mut self, topic: gossipsub::IdentTopic, data: Vec<u8>) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
            if self.swarm.behaviour_mut().gossipsub.publish(topic.clone(), data.clone()).is_ok() {
                return true;
            }
            let _ = self.drive(Duration::from_millis(100), |_| None::<()>).await;
        }
        false
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cf-garbage: {e}");
            std::process::exit(2);
        }
    };
    let key = identity::Keypair::generate_ed25519();
    let version = format!("clusterfunk/1/{}/{}", args.name, args.env);
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .validation_mode(gossipsub::ValidationMode::Permissive)
        .build()
        .expect("a valid gossipsub config");
    let raft_proto = StreamProtocol::try_from_owned(format!("/clusterfunk/{}/{}/raft/1", args.name, args.env))
        .expect("cluster names are plain");
    let behaviour = Behaviour {
        identify: identify::Behaviour::new(identify::Config::new(version, key.public())),
        gossipsub: gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_cfg)
            .expect("a gossipsub behaviour"),
        raft: request_response::Behaviour::with_codec(
            RawCodec,
            [(raft_proto, ProtocolSupport::Outbound)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(2)),
        ),
        streams: libp2p_stream::Behaviour::new(),
    };
    let transport = transport(&key, args.secret);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|_| transport)
        .expect("a transport")
        .with_behaviour(|_| behaviour)
        .expect("a behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    let topic = gossipsub::IdentTopic::new(format!("clusterfunk/{}/{}/members", args.name, args.env));
    swarm.behaviour_mut().gossipsub.subscribe(&topic).expect("subscribe");
    let control = swarm.behaviour().streams.new_control();
    let proxy = StreamProtocol::try_from_owned(format!("/clusterfunk/{}/{}/proxy/1", args.name, args.env))
        .expect("cluster names are plain");
    let mut peer = Peer { swarm, control, proxy, topic, rng: rand::rngs::StdRng::seed_from_u64(args.seed) };

    let mut unreachable = 0;
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for _ in 0..args.rounds {
        for target in &args.targets {
            let Ok(sock) = target.parse::<std::net::SocketAddr>() else {
                eprintln!("cf-garbage: {target} is not HOST:PORT");
                std::process::exit(2);
            };
            let addr: Multiaddr = format!("/ip4/{}/tcp/{}", sock.ip(), sock.port()).parse().expect("an address");
            let t = tallies.entry(target.clone()).or_default();
            if let Err(e) = peer.round(&addr, t).await {
                eprintln!("cf-garbage: {target}: {e}");
                unreachable += 1;
            }
        }
    }
    for target in &args.targets {
        let t = &tallies[target];
        println!("GARBAGE target={target} sent={} answered={} dropped={}", t.sent, t.answered, t.dropped);
    }
    let mut not_refused = 0;
    for target in &args.targets {
        let sock: std::net::SocketAddr = target.parse().expect("checked above");
        let addr: Multiaddr = format!("/ip4/{}/tcp/{}", sock.ip(), sock.port()).parse().expect("an address");
        match peer.hostile(&addr, &args).await {
            Ok((sent, refused, forged)) => {
                println!("HOSTILE target={target} raft_requests={sent} refused={refused} forged_heartbeats={forged}");
                not_refused += sent - refused;
            }
            Err(e) => {
                eprintln!("cf-garbage: {target}: {e}");
                unreachable += 1;
            }
        }
    }
    std::process::exit(if unreachable > 0 || not_refused > 0 { 1 } else { 0 });
}
