//! The libp2p behaviour and transport stack.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport as _};
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, mdns, noise, ping, tcp, yamux, PeerId, StreamProtocol, Swarm};

use super::codec::RaftCodec;
use super::Config;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) identify: identify::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) raft: request_response::Behaviour<RaftCodec>,
    /// Long-lived streams for the proxy path (one per peer, frames coalesced).
    pub(crate) streams: libp2p_stream::Behaviour,
    /// Answers pings: a client finds a dead node it follows by them (docs/architecture.md §15).
    pub(crate) ping: ping::Behaviour,
    /// Peers refused at the connection level: the fault-injection partition (and an operator's
    /// block).
    pub(crate) blocked: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
}

/// The identify protocol version: peers whose version differs are of another cluster.
pub(crate) fn protocol_version(cluster: &crate::types::ClusterName) -> String {
    format!("clusterfunk/1/{}/{}", cluster.key, cluster.env)
}

/// The identify agent version of a non-member client (`clusterfunk::Client`): a node does not
/// count such a peer among its cluster peers.
pub(crate) fn client_agent_version(wire: u32) -> String {
    format!("{CLIENT_AGENT}{} wire/{wire}", env!("CARGO_PKG_VERSION"))
}

/// How a client's agent version starts.
pub(crate) const CLIENT_AGENT: &str = "clusterfunk-client/";

/// The identify agent version: the build, and the wire protocol version it speaks
/// (`clusterfunk/0.1.0 wire/3`).
pub(crate) fn agent_version(wire: u32) -> String {
    format!("clusterfunk/{} wire/{wire}", env!("CARGO_PKG_VERSION"))
}

/// The wire protocol version in a peer's agent version; a build from before the version
/// exchange announced none, and speaks version 1.
pub(crate) fn wire_of(agent_version: &str) -> u32 {
    agent_version.split_whitespace().find_map(|t| t.strip_prefix("wire/")).and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// The gossip topic for membership heartbeats.
pub(crate) fn topic(cfg: &Config) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("clusterfunk/{}/{}/members", cfg.cluster.key, cfg.cluster.env))
}

/// TCP + (pnet with `secret`) + noise + yamux: the stack of nodes and clients alike.
pub(crate) fn transport(
    keypair: &libp2p::identity::Keypair,
    secret: Option<[u8; 32]>,
) -> std::io::Result<Boxed<(PeerId, StreamMuxerBox)>> {
    let noise = noise::Config::new(keypair).map_err(std::io::Error::other)?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::new().nodelay(true));
    let yamux = yamux::Config::default();
    Ok(match secret {
        Some(key) => {
            let psk = PreSharedKey::new(key);
            tcp.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                .upgrade(Version::V1)
                .authenticate(noise)
                .multiplex(yamux)
                .timeout(Duration::from_secs(10))
                .boxed()
        }
        None => tcp.upgrade(Version::V1).authenticate(noise).multiplex(yamux).timeout(Duration::from_secs(10)).boxed(),
    })
}

/// Builds the swarm. Must run inside a tokio runtime (mDNS opens its sockets here).
pub(crate) fn build(cfg: &Config) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    let transport = transport(&cfg.keypair, cfg.secret)?;
    let local = cfg.keypair.public().to_peer_id();
    let identify = identify::Behaviour::new(
        identify::Config::new(protocol_version(&cfg.cluster), cfg.keypair.public())
            .with_agent_version(agent_version(cfg.wire_version)),
    );
    let mdns = if cfg.mdns {
        let mdns_cfg = mdns::Config { query_interval: Duration::from_secs(5), ..mdns::Config::default() };
        Some(mdns::tokio::Behaviour::new(mdns_cfg, local)?)
    } else {
        None
    };
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        // Every message is verified once per copy received, before duplicates are dropped (the
        // codec checks the signature), so the copies, not the messages, are what a node pays
        // for: a mesh of 4 (gossipsub's default is 6) and no flood publishing (which sends each
        // message to every peer besides the mesh) halve them in a large cluster, where every
        // member's heartbeat reaches every member. Up to 5 nodes the mesh is all the peers either
        // way; an empty mesh (just connected) publishes to up to 4 peers subscribed to the topic.
        // Measured with `integration/src/bin/scale.rs` (docs/sharding.md).
        .mesh_n(4)
        .mesh_n_low(3)
        .mesh_n_high(8)
        .mesh_outbound_min(2)
        .gossip_lazy(4)
        .flood_publish(false)
        .validation_mode(gossipsub::ValidationMode::Strict)
        // A message is forwarded only after we decoded it (`on_gossip` reports the result), so
        // garbage from one member stops at its first hop instead of reaching every node.
        .validate_messages()
        .max_transmit_size(64 << 10)
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(cfg.keypair.clone()), gossip_cfg)
        .map_err(std::io::Error::other)?;
    let protocol =
        StreamProtocol::try_from_owned(format!("/clusterfunk/{}/{}/raft/1", cfg.cluster.key, cfg.cluster.env))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    let raft = request_response::Behaviour::with_codec(
        RaftCodec { max_frame: cfg.max_frame },
        [(protocol, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(cfg.rpc_timeout),
    );
    let behaviour = Behaviour {
        identify,
        mdns: mdns.into(),
        gossipsub,
        raft,
        streams: libp2p_stream::Behaviour::new(),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(30))),
        blocked: Default::default(),
    };
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|_| transport)?
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn the_wire_version_rides_in_the_agent_version() {
        assert_eq!(wire_of(&agent_version(crate::wire::VERSION)), crate::wire::VERSION);
        assert_eq!(wire_of(&agent_version(7)), 7);
        assert_eq!(wire_of("clusterfunk/0.1.0"), 1, "a build before the exchange speaks version 1");
        assert_eq!(wire_of("clusterfunk/0.1.0 wire/x"), 1);
    }
}
