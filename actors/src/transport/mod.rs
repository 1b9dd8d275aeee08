//! The transport actor: the only owner of the libp2p `Swarm` (docs/architecture.md §2, §9).
//!
//! TCP + noise + yamux, with a pnet pre-shared key under noise when a cluster secret is set;
//! identify (its protocol version carries the cluster name, and a peer of another cluster is
//! disconnected and never dialed again); mDNS discovery; gossipsub on a topic scoped by cluster key
//! and environment; and request-response for Raft RPCs on a cluster-scoped protocol name.
//!
//! The swarm runs as one task on its own arbiter ([`Transport::spawn`]). Other actors talk to it
//! through a bounded command channel ([`Handle`]); it reports to them with `try_send` on their
//! bounded mailboxes. A malformed frame from a peer closes the connection to that peer, is
//! counted in [`Stats`], and the node goes on.

pub(crate) mod behaviour;
mod codec;
mod event_loop;
pub mod seeds;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Message, Recipient};
pub use event_loop::{StartError, Transport};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::faults::{Fate, FaultPlan, MessageFaults};
use crate::types::ClusterName;
use crate::wire::Heartbeat;

/// Transport settings.
#[derive(Clone)]
pub struct Config {
    /// The cluster; scopes protocol names, the gossip topic and identify.
    pub cluster: ClusterName,
    /// The node's key (its libp2p identity).
    pub keypair: Keypair,
    /// Where to listen, e.g. `/ip4/0.0.0.0/tcp/7000`.
    pub listen: Multiaddr,
    /// Static seeds as `host:port`, resolved off the event loop and again every
    /// [`seeds::REFRESH`] (so DNS names follow changes); a name that does not resolve is retried.
    pub seeds: Vec<String>,
    /// Other discovery sources, run like the seeds ([`seeds::Discovery`]).
    pub discovery: seeds::Sources,
    /// Pre-shared key: when set, the connection is wrapped in libp2p pnet under noise, so nodes
    /// without it cannot even complete a handshake.
    pub secret: Option<[u8; 32]>,
    /// Whether to discover peers by mDNS (LAN only; it never sees loopback-only hosts).
    pub mdns: bool,
    /// Largest frame accepted from a peer, in bytes. Default 16 MiB: above openraft's 3 MiB
    /// snapshot chunk and any append batch; a frame over it drops the connection.
    pub max_frame: usize,
    /// How long a Raft RPC may take before it fails. Default 2 s.
    pub rpc_timeout: Duration,
    /// How often seeds not connected are dialed again. Default 2 s.
    pub redial_interval: Duration,
    /// Message-level fault injection from the start (tests and the chaos lab only); can also
    /// be set later with [`Handle::faults`]. Default none.
    pub faults: Option<FaultPlan>,
    /// The wire protocol version announced at the handshake. Default [`crate::wire::VERSION`];
    /// another value only in tests that stand in for an older build.
    pub wire_version: u32,
}

impl Config {
    /// Defaults for `cluster` with key `keypair`, listening on `listen`.
    pub fn new(cluster: ClusterName, keypair: Keypair, listen: Multiaddr) -> Config {
        Config {
            cluster,
            keypair,
            listen,
            seeds: Vec::new(),
            discovery: seeds::Sources::default(),
            secret: None,
            mdns: true,
            max_frame: 16 << 20,
            rpc_timeout: Duration::from_secs(2),
            redial_interval: Duration::from_secs(2),
            faults: None,
            wire_version: crate::wire::VERSION,
        }
    }
}

/// What the transport tells the membership actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum Event {
    /// The swarm listens on this address.
    Listening(Multiaddr),
    /// A peer of this cluster is connected (identify confirmed the cluster).
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// mDNS found a peer (not yet known to be of this cluster).
    Discovered(PeerId, Vec<Multiaddr>),
    /// A heartbeat arrived by gossip (boxed: it carries the sender's endpoints and metadata,
    /// and every event goes through a mailbox).
    Heartbeat(Box<Heartbeat>),
}

/// A Raft RPC from a peer, for the consensus actor; answer on `reply`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct InboundRaft {
    /// The sender.
    pub from: PeerId,
    /// The request: one frame of the Raft protocol, not yet decoded (`consensus::rpc`).
    pub request: Vec<u8>,
    /// Where the encoded response goes; dropping it fails the peer's request.
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// Commands to the transport.
#[derive(Debug)]
pub(crate) enum Command {
    Raft { peer: PeerId, addrs: Vec<Multiaddr>, request: Vec<u8>, reply: oneshot::Sender<Result<Vec<u8>, Error>> },
    Publish(Vec<u8>),
    Dial { peer: PeerId, addrs: Vec<Multiaddr> },
    Disconnect(PeerId),
    Block { peer: PeerId, blocked: bool },
    Shutdown,
}

/// Why a transport call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport's command queue is full; try again later.
    #[error("transport command queue is full")]
    QueueFull,
    /// The transport has stopped.
    #[error("transport has stopped")]
    Closed,
    /// The peer could not be reached or did not answer.
    #[error("request to {peer} failed: {source}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        #[source]
        source: Arc<libp2p::request_response::OutboundFailure>,
    },
    /// A peer id or address does not parse.
    #[error("bad peer address: {0}")]
    BadAddress(String),
    /// The fault injector dropped the request (it was never sent).
    #[error("request dropped by fault injection")]
    Dropped,
    /// The peer's answer did not decode; the connection to it was closed.
    #[error("malformed answer from {peer}")]
    Malformed {
        /// The peer.
        peer: PeerId,
    },
}

/// Counters the transport keeps; read by the dashboard and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames refused as malformed or oversized (each closed its connection).
    pub malformed_frames: AtomicU64,
    /// Of those, gossip messages.
    pub malformed_gossip: AtomicU64,
    /// Of those, Raft frames (requests and responses).
    pub malformed_raft: AtomicU64,
    /// Connections refused because the peer is of another cluster.
    pub foreign_peers: AtomicU64,
    /// Transport events dropped because the membership mailbox was full.
    pub events_dropped: AtomicU64,
    /// Raft requests refused because the consensus mailbox was full (the peer's request fails;
    /// Raft retries).
    pub raft_mailbox_full: AtomicU64,
    /// Peers connected now.
    pub connected_peers: AtomicU64,
    /// Non-member clients (`clusterfunk::Client`) connected now; not among `connected_peers`.
    pub connected_clients: AtomicU64,
    /// Gossip heartbeats signed by another peer than the one they describe, dropped.
    pub forged_heartbeats: AtomicU64,
    /// Gossip payload bytes this node published (each is sent on to its mesh peers: the bytes
    /// on the wire are a multiple, plus framing and crypto).
    pub gossip_out_bytes: AtomicU64,
    /// Gossip payload bytes received (its own published ones excluded).
    pub gossip_in_bytes: AtomicU64,
    /// Raft payload bytes sent: requests and responses.
    pub raft_out_bytes: AtomicU64,
    /// Raft payload bytes received: requests and responses.
    pub raft_in_bytes: AtomicU64,
    /// The wire protocol version each peer announced at its handshake (identify), kept after
    /// it disconnects (the last one known).
    pub peer_wire: std::sync::Mutex<std::collections::HashMap<PeerId, u32>>,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn add(counter: &AtomicU64, bytes: usize) {
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Where the transport sends what it learns.
#[derive(Clone)]
pub struct Outputs {
    /// Membership events.
    pub events: Recipient<Event>,
    /// Inbound Raft RPCs.
    pub raft: Recipient<InboundRaft>,
}

/// A cloneable handle to the transport.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    seeds: seeds::Seeds,
    local: PeerId,
    stats: Arc<Stats>,
    streams: libp2p_stream::Control,
    faults: Arc<MessageFaults>,
    rpc_timeout: Duration,
    wire_version: u32,
}

impl Handle {
    /// The wire protocol version this node announces.
    pub fn wire_version(&self) -> u32 {
        self.wire_version
    }

    /// What is known of each static seed (addresses, resolution errors).
    pub fn seeds(&self) -> Vec<seeds::SeedStatus> {
        self.seeds.status()
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// The wire protocol version `peer` announced at its handshake (the last one known), if it
    /// connected since this node started.
    pub fn peer_wire(&self, peer: &PeerId) -> Option<u32> {
        self.stats.peer_wire.lock().unwrap_or_else(|e| e.into_inner()).get(peer).copied()
    }

    /// A control to open and accept long-lived streams (the proxy path). Each clone has one
    /// guaranteed slot for opening a stream: clone it per user, not per stream.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// The transport's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    fn try_command(&self, cmd: Command) -> Result<(), Error> {
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::QueueFull,
            mpsc::error::TrySendError::Closed(_) => Error::Closed,
        })
    }

    /// The message-level fault injector this node's transport and proxy share: set a
    /// [`FaultPlan`] on it to delay, drop, duplicate and reorder what this node sends.
    pub fn faults(&self) -> &Arc<MessageFaults> {
        &self.faults
    }

    /// Sends one encoded Raft RPC to `peer` (dialing `addrs` if not connected) and waits for its
    /// encoded response (see `consensus::rpc::call`).
    pub async fn raft(&self, peer: PeerId, addrs: Vec<Multiaddr>, request: Vec<u8>) -> Result<Vec<u8>, Error> {
        match self.faults.fate() {
            None => self.raft_now(peer, addrs, request).await,
            Some(Fate::Drop) => {
                // Lost on the way: the sender learns only by its timeout.
                tokio::time::sleep(self.rpc_timeout).await;
                Err(Error::Dropped)
            }
            Some(Fate::Send { delay, duplicate }) => {
                if let Some(after) = duplicate {
                    let (h, a, r) = (self.clone(), addrs.clone(), request.clone());
                    crate::faults::later(after, async move {
                        let _ = h.raft_now(peer, a, r).await;
                    });
                }
                tokio::time::sleep(delay).await;
                self.raft_now(peer, addrs, request).await
            }
        }
    }

    async fn raft_now(&self, peer: PeerId, addrs: Vec<Multiaddr>, request: Vec<u8>) -> Result<Vec<u8>, Error> {
        let (reply, rx) = oneshot::channel();
        self.try_command(Command::Raft { peer, addrs, request, reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Publishes a gossip message to the cluster topic.
    pub fn publish(&self, bytes: Vec<u8>) -> Result<(), Error> {
        match self.faults.fate() {
            None => self.try_command(Command::Publish(bytes)),
            Some(Fate::Drop) => Ok(()),
            Some(Fate::Send { delay, duplicate }) => {
                for after in std::iter::once(delay).chain(duplicate) {
                    let (h, b) = (self.clone(), bytes.clone());
                    crate::faults::later(after, async move {
                        let _ = h.try_command(Command::Publish(b));
                    });
                }
                Ok(())
            }
        }
    }

    /// Asks the transport to connect to `peer`.
    pub fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), Error> {
        self.try_command(Command::Dial { peer, addrs })
    }

    /// Closes every connection to `peer` (after it sent something malformed).
    pub fn disconnect(&self, peer: PeerId) {
        let _ = self.try_command(Command::Disconnect(peer));
    }

    /// `peer` sent a frame that does not decode (found by a protocol above the transport):
    /// counted with the transport's malformed frames, and every connection to it closed.
    pub fn malformed(&self, peer: PeerId, error: &dyn std::fmt::Display) {
        Stats::bump(&self.stats.malformed_frames);
        Stats::bump(&self.stats.malformed_raft);
        tracing::warn!(%peer, %error, "malformed frame: closing the connection to this peer");
        self.disconnect(peer);
    }

    /// Fault injection (and an operator's tool): closes every connection to `peer` and refuses
    /// new ones while `blocked`. Blocking each other on two sides of a cut is a symmetric
    /// partition at the connection level: Raft, gossip and the proxy all lose the peer.
    pub fn block(&self, peer: PeerId, blocked: bool) -> Result<(), Error> {
        self.try_command(Command::Block { peer, blocked })
    }

    /// Stops the swarm.
    pub fn shutdown(&self) {
        let _ = self.try_command(Command::Shutdown);
    }
}

/// The peer and its dialable addresses, as stored in node metadata (addresses that do not parse
/// are skipped). An unknown peer id is an error.
pub fn parse_peer(peer_id: &Option<PeerId>, addrs: &[String]) -> Result<(PeerId, Vec<Multiaddr>), Error> {
    let peer = peer_id.ok_or_else(|| Error::BadAddress("no peer id".into()))?;
    let addrs = addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()).collect();
    Ok((peer, addrs))
}
