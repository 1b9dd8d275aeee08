//! The swarm task: selects over commands, swarm events and pending Raft replies.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::behaviour::{self, Behaviour, BehaviourEvent};
use super::codec::Inbound;
use super::{Command, Config, Error, Event, Handle, InboundRaft, Outputs, Stats};
use crate::wire::{self, Gossip};

type Reply = BoxFuture<'static, (PeerId, ResponseChannel<Vec<u8>>, Option<Vec<u8>>)>;

/// Capacity of the command channel into the transport.
const COMMAND_CAPACITY: usize = 1024;

/// The transport's swarm task.
pub struct Transport {
    swarm: Swarm<Behaviour>,
    cfg: Config,
    out: Outputs,
    stats: Arc<Stats>,
    topic: gossipsub::IdentTopic,
    rx: mpsc::Receiver<Command>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, Error>>>,
    replies: FuturesUnordered<Reply>,
    /// Peers whose identify confirmed they are of this cluster.
    members: HashSet<PeerId>,
    /// Peers of another cluster: disconnected and never dialed again.
    foreign: HashSet<PeerId>,
    /// Non-member clients of this cluster connected now: never reported to membership.
    clients: HashSet<PeerId>,
    /// Listen addresses peers announced through identify, to tell which seeds are connected.
    announced: HashMap<PeerId, Vec<Multiaddr>>,
    listening: Vec<Multiaddr>,
    /// The static seeds, resolved by their own task.
    seeds: super::seeds::Seeds,
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The swarm could not be built.
    #[error("cannot build the libp2p swarm: {0}")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        #[source]
        source: libp2p::TransportError<io::Error>,
    },
    /// The arbiter stopped before the swarm started.
    #[error("the transport arbiter stopped")]
    Stopped,
}

/// An error and all its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

impl Transport {
    /// Builds the swarm on `arbiter`, starts listening, and runs it there until shutdown.
    pub async fn spawn(cfg: Config, out: Outputs, arbiter: &actix::ArbiterHandle) -> Result<Handle, StartError> {
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let stats = Arc::new(Stats::default());
        let faults = Arc::new(crate::faults::MessageFaults::new(cfg.faults.clone()));
        let rpc_timeout = cfg.rpc_timeout;
        let wire_version = cfg.wire_version;
        let local = cfg.keypair.public().to_peer_id();
        let (started_tx, started_rx) = oneshot::channel();
        let task_stats = stats.clone();
        let seeds = super::seeds::spawn(cfg.discovery.with_seeds(&cfg.seeds), arbiter);
        let task_seeds = seeds.clone();
        let spawned = arbiter.spawn(async move {
            let mut swarm = match behaviour::build(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = started_tx.send(Err(StartError::Build(e)));
                    return;
                }
            };
            if let Err(e) = swarm.listen_on(cfg.listen.clone()) {
                let _ = started_tx.send(Err(StartError::Listen { addr: cfg.listen.clone(), source: e }));
                return;
            }
            let topic = behaviour::topic(&cfg);
            if let Err(e) = swarm.behaviour_mut().gossipsub.subscribe(&topic) {
                let _ = started_tx.send(Err(StartError::Build(Box::new(e))));
                return;
            }
            let _ = started_tx.send(Ok(swarm.behaviour().streams.new_control()));
            let t = Transport {
                swarm,
                cfg,
                out,
                stats: task_stats,
                topic,
                rx,
                pending: HashMap::new(),
                replies: FuturesUnordered::new(),
                members: HashSet::new(),
                foreign: HashSet::new(),
                clients: HashSet::new(),
                announced: HashMap::new(),
                listening: Vec::new(),
                seeds: task_seeds,
            };
            t.run().await;
        });
        if !spawned {
            return Err(StartError::Stopped);
        }
        let streams = started_rx.await.map_err(|_| StartError::Stopped)??;
        Ok(Handle { tx, seeds, local, stats, streams, faults, rpc_timeout, wire_version })
    }

    async fn run(mut self) {
        let mut redial = tokio::time::interval(self.cfg.redial_interval);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.on_command(cmd),
                },
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                Some((peer, channel, resp)) = self.replies.next(), if !self.replies.is_empty() => {
                    self.on_reply(peer, channel, resp)
                }
                _ = redial.tick() => self.dial_seeds(),
            }
        }
        info!("transport stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Raft { peer, addrs, request, reply } => self.send_raft(peer, addrs, request, reply),
            Command::Publish(bytes) => {
                Stats::add(&self.stats.gossip_out_bytes, bytes.len());
                let topic = self.topic.clone();
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    debug!(error = %e, "gossip publish failed");
                }
            }
            Command::Dial { peer, addrs } => self.dial_peer(peer, addrs),
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Block { peer, blocked } => {
                let b = &mut self.swarm.behaviour_mut().blocked;
                if blocked {
                    info!(%peer, "fault injection: peer blocked (connections closed and refused)");
                    b.block_peer(peer);
                } else {
                    info!(%peer, "fault injection: peer unblocked");
                    b.unblock_peer(peer);
                }
            }
            Command::Shutdown => {}
        }
    }

    fn send_raft(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    ) {
        if !self.swarm.is_connected(&peer) {
            self.dial_peer(peer, addrs);
        }
        Stats::add(&self.stats.raft_out_bytes, request.len());
        let id = self.swarm.behaviour_mut().raft.send_request(&peer, Inbound::Request(request));
        self.pending.insert(id, reply);
    }

    /// Dials from a fresh port: with port reuse, two nodes dialing each other can turn into one
    /// TCP simultaneous open where both act as noise initiator and the handshake fails
    /// (seen here: 8 of 44 runs failed that way). Who dials first is decided by membership (lower id first).
    fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if self.foreign.contains(&peer) || peer == *self.swarm.local_peer_id() {
            return;
        }
        for a in &addrs {
            self.swarm.add_peer_address(peer, a.clone());
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, error = %e, "dial not started");
        }
    }

    /// Dials the seeds' addresses as last resolved (by their own task: no DNS here).
    fn dial_seeds(&mut self) {
        for sa in self.seeds.addrs() {
            let addr = Multiaddr::from(sa.ip()).with(Protocol::Tcp(sa.port()));
            let known = self.listening.contains(&addr) || self.announced.values().any(|v| v.contains(&addr));
            if known {
                continue;
            }
            let opts = DialOpts::unknown_peer_id().address(addr.clone()).allocate_new_port().build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%addr, error = %e, "seed dial not started");
            }
        }
    }

    fn on_reply(&mut self, peer: PeerId, channel: ResponseChannel<Vec<u8>>, resp: Option<Vec<u8>>) {
        match resp {
            Some(resp) => {
                Stats::add(&self.stats.raft_out_bytes, resp.len());
                if self.swarm.behaviour_mut().raft.send_response(channel, resp).is_err() {
                    debug!(%peer, "raft response not sent: connection closed");
                }
            }
            None => debug!(%peer, "consensus dropped a raft request"),
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(e)) => self.on_mdns(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossip(e),
            SwarmEvent::Behaviour(BehaviourEvent::Raft(e)) => self.on_raft(e),
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, peer = %self.swarm.local_peer_id(), "listening");
                self.listening.push(address.clone());
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if self.clients.remove(&peer_id) => {
                self.stats.connected_clients.store(self.clients.len() as u64, Ordering::Relaxed);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if self.members.remove(&peer_id) => {
                self.stats.connected_peers.store(self.members.len() as u64, Ordering::Relaxed);
                self.emit(Event::PeerDisconnected(peer_id));
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.explain_handshake_failure("dial", &error_chain(&error));
                debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                self.explain_handshake_failure("incoming connection", &error_chain(&error));
            }
            _ => {}
        }
    }

    /// A wrong pre-shared key shows up as a failed protocol negotiation, not as an
    /// authentication error (libp2p reports a wrong key so): say what it most likely means.
    fn explain_handshake_failure(&self, side: &str, error: &str) {
        if self.cfg.secret.is_some() && (error.contains("ultistream") || error.contains("negotiate transport")) {
            warn!(%error, "{side} handshake failed: the peer most likely has a different cluster secret");
        } else {
            debug!(%error, "{side} failed");
        }
    }

    fn on_identify(&mut self, e: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = e else { return };
        let ours = behaviour::protocol_version(&self.cfg.cluster);
        if info.protocol_version != ours {
            Stats::bump(&self.stats.foreign_peers);
            warn!(peer = %peer_id, theirs = %info.protocol_version, %ours, "refusing a peer of another cluster");
            self.foreign.insert(peer_id);
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        }
        if info.agent_version.starts_with(behaviour::CLIENT_AGENT) {
            // A client routes through this node's client protocols; it is not a cluster peer
            // (membership never hears of it, and its addresses are not dialed).
            if self.clients.insert(peer_id) {
                self.stats.connected_clients.store(self.clients.len() as u64, Ordering::Relaxed);
                debug!(peer = %peer_id, agent = %info.agent_version, "client connected");
            }
            return;
        }
        let wire = behaviour::wire_of(&info.agent_version);
        let old = self.stats.peer_wire.lock().unwrap_or_else(|e| e.into_inner()).insert(peer_id, wire);
        if old != Some(wire) && wire != crate::wire::VERSION {
            info!(peer = %peer_id, theirs = wire, ours = crate::wire::VERSION, "peer speaks another wire protocol version");
        }
        for a in &info.listen_addrs {
            self.swarm.add_peer_address(peer_id, a.clone());
        }
        self.announced.insert(peer_id, info.listen_addrs);
        if self.members.insert(peer_id) {
            self.stats.connected_peers.store(self.members.len() as u64, Ordering::Relaxed);
            self.emit(Event::PeerConnected(peer_id));
        }
    }

    fn on_mdns(&mut self, e: mdns::Event) {
        let mdns::Event::Discovered(list) = e else { return };
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in list {
            if !self.foreign.contains(&peer) {
                by_peer.entry(peer).or_default().push(addr);
            }
        }
        for (peer, addrs) in by_peer {
            debug!(%peer, ?addrs, "mdns discovered");
            self.emit(Event::Discovered(peer, addrs));
        }
    }

    fn on_gossip(&mut self, e: gossipsub::Event) {
        let gossipsub::Event::Message { propagation_source, message_id, message } = e else { return };
        Stats::add(&self.stats.gossip_in_bytes, message.data.len());
        let accept = match wire::decode::<Gossip>(&message.data) {
            // Strict validation: every message is signed by its author. A heartbeat speaks for
            // the node that signed it only (docs/architecture.md §13), or a member could pose
            // as another (its addresses, its liveness).
            Ok(Gossip::Heartbeat(hb)) if !speaks_for_itself(&hb, message.source.as_ref()) => {
                Stats::bump(&self.stats.forged_heartbeats);
                warn!(
                    author = ?message.source, claims = ?hb.meta.peer_id, node = %hb.meta.id,
                    "heartbeat for another peer than its author dropped"
                );
                gossipsub::MessageAcceptance::Reject
            }
            Ok(Gossip::Heartbeat(hb)) if hb.cluster == self.cfg.cluster => {
                self.emit(Event::Heartbeat(Box::new(hb)));
                gossipsub::MessageAcceptance::Accept
            }
            Ok(Gossip::Heartbeat(hb)) => {
                Stats::bump(&self.stats.foreign_peers);
                warn!(peer = %propagation_source, cluster = %hb.cluster, "heartbeat from another cluster dropped");
                gossipsub::MessageAcceptance::Reject
            }
            Err(e) => {
                // Blame the signed author, not the neighbour that relayed it: messages are
                // validated before they are forwarded, so a relay is only possible from a node
                // that accepted it (an older version), and dropping it would cut a good link.
                Stats::bump(&self.stats.malformed_gossip);
                match message.source {
                    Some(author) => self.malformed(author, &e),
                    None => Stats::bump(&self.stats.malformed_frames),
                }
                gossipsub::MessageAcceptance::Reject
            }
        };
        let _ = self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
            &message_id,
            &propagation_source,
            accept,
        );
    }

    fn on_raft(&mut self, e: request_response::Event<Inbound, Vec<u8>>) {
        use request_response::{Event as E, Message as M};
        match e {
            E::Message { peer, message: M::Request { request: Inbound::Request(request), channel, .. }, .. } => {
                Stats::add(&self.stats.raft_in_bytes, request.len());
                self.on_raft_request(peer, request, channel)
            }
            E::Message { peer, message: M::Request { request: Inbound::Malformed(e), .. }, .. } => {
                Stats::bump(&self.stats.malformed_raft);
                self.malformed(peer, &e)
            }
            E::Message { message: M::Response { request_id, response }, .. } => {
                Stats::add(&self.stats.raft_in_bytes, response.len());
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            E::OutboundFailure { peer, request_id, error, .. } => {
                if let request_response::OutboundFailure::Io(io) = &error {
                    if io.kind() == io::ErrorKind::InvalidData {
                        Stats::bump(&self.stats.malformed_raft);
                        self.malformed(peer, io);
                    }
                }
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(Error::Request { peer, source: Arc::new(error) }));
                }
            }
            E::InboundFailure { peer, error: request_response::InboundFailure::Io(io), .. }
                if io.kind() == io::ErrorKind::InvalidData =>
            {
                Stats::bump(&self.stats.malformed_raft);
                self.malformed(peer, &io);
            }
            _ => {}
        }
    }

    fn on_raft_request(&mut self, from: PeerId, request: Vec<u8>, channel: ResponseChannel<Vec<u8>>) {
        let (reply, rx) = oneshot::channel();
        match self.out.raft.try_send(InboundRaft { from, request, reply }) {
            Ok(()) => self.replies.push(Box::pin(async move { (from, channel, rx.await.ok()) })),
            Err(_) => {
                // Dropping the channel fails the peer's request: an error to the caller, not a
                // silent drop. Raft retries.
                Stats::bump(&self.stats.raft_mailbox_full);
                warn!(peer = %from, "consensus mailbox full: raft request refused");
            }
        }
    }

    fn malformed(&mut self, peer: PeerId, error: &dyn std::fmt::Display) {
        Stats::bump(&self.stats.malformed_frames);
        warn!(%peer, %error, "malformed frame: closing the connection to this peer");
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn emit(&self, ev: Event) {
        if self.out.events.try_send(ev).is_err() {
            Stats::bump(&self.stats.events_dropped);
            warn!("membership mailbox full: transport event dropped");
        }
    }
}

/// Whether a heartbeat describes the peer that signed it: its peer id is the author's and its
/// node id the one derived from the author's key.
fn speaks_for_itself(hb: &wire::Heartbeat, author: Option<&PeerId>) -> bool {
    match (author, hb.meta.peer_id.as_ref()) {
        (Some(author), Some(claimed)) => {
            author == claimed && hb.meta.id == crate::types::NodeId::from_peer_bytes(&author.to_bytes())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ClusterName, NodeId, NodeMeta};

    fn heartbeat(peer: Option<PeerId>, id: NodeId) -> wire::Heartbeat {
        wire::Heartbeat {
            cluster: ClusterName::new("shop", "dev"),
            meta: NodeMeta { id, peer_id: peer, ..NodeMeta::default() },
            seq: 1,
            incarnation: 1,
            raft_members: vec![],
            bootstrapping: false,
        }
    }

    #[test]
    fn a_heartbeat_speaks_only_for_its_author() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let id = |p: &PeerId| NodeId::from_peer_bytes(&p.to_bytes());
        assert!(speaks_for_itself(&heartbeat(Some(a), id(&a)), Some(&a)));
        assert!(!speaks_for_itself(&heartbeat(Some(b), id(&b)), Some(&a)), "another peer's heartbeat");
        assert!(!speaks_for_itself(&heartbeat(Some(a), id(&b)), Some(&a)), "another node id");
        assert!(!speaks_for_itself(&heartbeat(None, id(&a)), Some(&a)), "no peer id");
        assert!(!speaks_for_itself(&heartbeat(Some(a), id(&a)), None), "unsigned");
    }
}
