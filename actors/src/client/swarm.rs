//! The client's swarm: TCP + (pnet) + noise + yamux like a node's, with identify (so nodes know
//! it for a client of their cluster), streams, and ping: a node that stops answering pings is
//! disconnected, which ends the streams to it (the map it pushed is followed from another node,
//! its requests fail `ConnectionLost`) instead of waiting minutes for TCP to give up.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

use super::{Config, ConnectError};
use crate::transport::behaviour;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    identify: identify::Behaviour,
    streams: libp2p_stream::Behaviour,
    ping: ping::Behaviour,
}

/// How often the client pings each node it is connected to, and how long an answer may take.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(4);
/// A node that answered pings and then answered none for this long is disconnected. (libp2p's
/// ping reports only a second failure in a row, which with a new stream's negotiation timeout
/// takes some 15 s.)
const SILENT_AFTER: Duration = Duration::from_secs(4);

/// The most peers of other clusters remembered (not dialled again); the set starts over beyond.
const MAX_FOREIGN: usize = 1024;

/// Commands to the client's swarm.
#[derive(Debug)]
pub(crate) enum Command {
    /// Connect to a member.
    Dial { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Connect to an address whose peer is not known yet (a seed).
    DialAddr(Multiaddr),
}

/// What the started swarm gives the client.
pub(crate) struct Started {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) control: libp2p_stream::Control,
    /// Peers of the cluster the client connected to (identify confirmed the cluster).
    pub(crate) connected: mpsc::Receiver<PeerId>,
    /// Peers the client is no longer connected to, or that stopped answering pings: the streams
    /// to them are given up. (A connection closed by this side does not wake a reader of its
    /// streams in yamux: this does.)
    pub(crate) gone: broadcast::Sender<PeerId>,
}

/// Builds the swarm and runs it on the current arbiter until the client is dropped.
pub(crate) fn start(cfg: &Config, arbiter: &actix::ArbiterHandle) -> Result<Started, ConnectError> {
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let transport = behaviour::transport(&keypair, cfg.secret).map_err(|e| ConnectError::Build(e.to_string()))?;
    let ours = behaviour::protocol_version(&cfg.cluster);
    let identify = identify::Behaviour::new(
        identify::Config::new(ours.clone(), keypair.public())
            .with_agent_version(behaviour::client_agent_version(crate::wire::VERSION)),
    );
    let ping = ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL).with_timeout(PING_TIMEOUT));
    let behaviour = Behaviour { identify, streams: libp2p_stream::Behaviour::new(), ping };
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| ConnectError::Build(e.to_string()))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| ConnectError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let control = swarm.behaviour().streams.new_control();
    let (commands, rx) = mpsc::channel(256);
    let (connected_tx, connected) = mpsc::channel(64);
    let (gone, _) = broadcast::channel(64);
    arbiter.spawn(run(swarm, rx, connected_tx, gone.clone(), ours));
    Ok(Started { commands, control, connected, gone })
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut rx: mpsc::Receiver<Command>,
    connected: mpsc::Sender<PeerId>,
    gone: broadcast::Sender<PeerId>,
    ours: String,
) {
    let mut foreign: HashSet<PeerId> = HashSet::new();
    // The last answered ping of each connection (a node of an older build never answers one).
    let mut answered: std::collections::HashMap<libp2p::swarm::ConnectionId, (PeerId, std::time::Instant)> =
        Default::default();
    let mut tick = tokio::time::interval(PING_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let silent: Vec<_> =
                    answered.iter().filter(|(_, (_, at))| at.elapsed() > SILENT_AFTER).map(|(c, (p, _))| (*c, *p)).collect();
                for (connection, peer) in silent {
                    answered.remove(&connection);
                    warn!(%peer, silent = ?SILENT_AFTER, "client: a node stopped answering pings; disconnecting");
                    swarm.close_connection(connection);
                    let _ = gone.send(peer);
                }
            }
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Command::Dial { peer, addrs }) => {
                    if foreign.contains(&peer) {
                        continue;
                    }
                    for a in &addrs {
                        swarm.add_peer_address(peer, a.clone());
                    }
                    let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
                    if let Err(e) = swarm.dial(opts) {
                        debug!(%peer, error = %e, "client dial not started");
                    }
                }
                Some(Command::DialAddr(addr)) => {
                    if let Err(e) = swarm.dial(DialOpts::unknown_peer_id().address(addr.clone()).build()) {
                        debug!(%addr, error = %e, "client seed dial not started");
                    }
                }
            },
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    if info.protocol_version != ours {
                        warn!(peer = %peer_id, theirs = %info.protocol_version, %ours, "client: a peer of another cluster; disconnecting");
                        if foreign.len() >= MAX_FOREIGN {
                            foreign.clear();
                        }
                        foreign.insert(peer_id);
                        let _ = swarm.disconnect_peer_id(peer_id);
                    } else {
                        let _ = connected.try_send(peer_id);
                    }
                }
                // A node of an older build does not speak ping (Unsupported): nothing is known then.
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(failure) }))
                    if !matches!(failure, ping::Failure::Unsupported) =>
                {
                    answered.remove(&connection);
                    warn!(%peer, error = %failure, "client: a node stopped answering pings; disconnecting");
                    swarm.close_connection(connection);
                    let _ = gone.send(peer);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, connection, result: Ok(_) })) => {
                    answered.insert(connection, (peer, std::time::Instant::now()));
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                    answered.remove(&connection_id);
                    if num_established == 0 {
                        let _ = gone.send(peer_id);
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    debug!(peer = ?peer_id, %error, "client dial failed");
                }
                _ => {}
            },
        }
    }
    debug!("client swarm stopped");
}
