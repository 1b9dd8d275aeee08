//! The client's swarm: TCP + (pnet) + noise + yamux like a node's, with identify (so nodes know
//! it for a client of their cluster) and streams only.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Config, ConnectError};
use crate::transport::behaviour;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    identify: identify::Behaviour,
    streams: libp2p_stream::Behaviour,
}

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
    let behaviour = Behaviour { identify, streams: libp2p_stream::Behaviour::new() };
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
    arbiter.spawn(run(swarm, rx, connected_tx, ours));
    Ok(Started { commands, control, connected })
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut rx: mpsc::Receiver<Command>,
    connected: mpsc::Sender<PeerId>,
    ours: String,
) {
    let mut foreign: HashSet<PeerId> = HashSet::new();
    loop {
        tokio::select! {
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
                        foreign.insert(peer_id);
                        let _ = swarm.disconnect_peer_id(peer_id);
                    } else {
                        let _ = connected.try_send(peer_id);
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
