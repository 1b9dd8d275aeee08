//! The membership core: events in, effects out; no I/O, no clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tracing::info;

use super::Config;
use crate::transport::parse_peer;
use crate::types::{ClusterName, NodeId, NodeMeta};
use crate::wire::Heartbeat;

/// A member's liveness as this node sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Heard from recently.
    Up,
    /// Not heard from for `suspect_after`.
    Suspect,
    /// Not heard from for `down_after`.
    Down,
}

impl MemberState {
    /// Every state.
    pub const ALL: [MemberState; 3] = [MemberState::Up, MemberState::Suspect, MemberState::Down];

    /// The name it is serialized as (`up`, `suspect`, `down`).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// One member in the view.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MemberView {
    /// What it last said about itself.
    pub meta: NodeMeta,
    /// Its liveness.
    pub state: MemberState,
    /// The members of its Raft configuration, as its last heartbeat listed them.
    pub raft_members: Vec<NodeId>,
    /// Its last heartbeat said it is deciding whether to create a new cluster.
    pub bootstrapping: bool,
}

/// This node's view of the members (itself included, always up).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct View {
    /// This node.
    pub local: NodeId,
    /// Every member heard of, by id.
    pub members: BTreeMap<NodeId, MemberView>,
}

impl View {
    /// Members currently up.
    pub fn up(&self) -> impl Iterator<Item = &MemberView> {
        self.members.values().filter(|m| m.state == MemberState::Up)
    }
}

/// Inputs to the core.
// One at a time, moved into `step` and dropped there: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input {
    /// Time passed.
    Tick,
    /// A heartbeat arrived.
    Heartbeat(Heartbeat),
    /// A peer of this cluster connected.
    Connected(PeerId),
    /// A peer disconnected.
    Disconnected(PeerId),
    /// mDNS found a peer.
    Discovered(PeerId, Vec<Multiaddr>),
    /// The transport listens on a new address.
    Listening(Multiaddr),
    /// The members of this node's Raft configuration now (announced in heartbeats).
    RaftMembers(Vec<NodeId>),
    /// Whether this node is deciding whether to create a new cluster (announced in heartbeats).
    Bootstrapping(bool),
}

/// What the shell must do.
// A few per step, drained by the shell at once: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Connect to a peer.
    Dial(PeerId, Vec<Multiaddr>),
    /// Publish this heartbeat.
    Publish(Heartbeat),
    /// The view changed: publish it.
    ViewChanged,
}

struct Remote {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    last_heard: Instant,
    disconnected_since: Option<Instant>,
    last_dial: Option<Instant>,
}

/// The membership state machine.
pub struct Core {
    cfg: Config,
    cluster: ClusterName,
    local_peer: PeerId,
    incarnation: u64,
    seq: u64,
    last_sent: Option<Instant>,
    view: View,
    remotes: HashMap<NodeId, Remote>,
    connected: HashSet<PeerId>,
    effects: Vec<Effect>,
    /// This node's Raft configuration members, announced in its heartbeats.
    raft_members: Vec<NodeId>,
    /// Whether this node is deciding whether to bootstrap, announced in its heartbeats.
    bootstrapping: bool,
    /// The host (or `host:port`) this node publishes instead of its listening addresses.
    advertise: Option<String>,
    /// Whether the published dashboard host was taken from a listening address (the dashboard
    /// listens on every interface): a later, non-loopback address replaces a loopback one.
    dashboard_derived: bool,
    /// The endpoints published with a listening address's host (bound to `0.0.0.0`).
    derived_endpoints: std::collections::BTreeSet<String>,
}

impl Core {
    /// A core for the local node `meta`; `incarnation` is random per process run.
    pub fn new(cfg: Config, cluster: ClusterName, local_peer: PeerId, meta: NodeMeta, incarnation: u64) -> Core {
        let local = meta.id;
        let mut members = BTreeMap::new();
        members
            .insert(local, MemberView { meta, state: MemberState::Up, raft_members: Vec::new(), bootstrapping: false });
        Core {
            cfg,
            cluster,
            local_peer,
            incarnation,
            seq: 0,
            last_sent: None,
            view: View { local, members },
            remotes: HashMap::new(),
            connected: HashSet::new(),
            effects: Vec::new(),
            raft_members: Vec::new(),
            bootstrapping: false,
            advertise: None,
            dashboard_derived: false,
            derived_endpoints: Default::default(),
        }
    }

    /// Publishes `advertise` (a host or `host:port`; without a port, the listening one) as this
    /// node's only address, instead of its listening addresses.
    pub fn with_advertise(mut self, advertise: Option<String>) -> Core {
        self.advertise = advertise;
        self
    }

    /// The timings this core runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Takes the effects produced so far.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Handles one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Tick => self.on_tick(now),
            Input::Heartbeat(hb) => self.on_heartbeat(hb, now),
            Input::Connected(peer) => {
                self.connected.insert(peer);
                if let Some(r) = self.remotes.get_mut(&node_of(&peer)) {
                    r.disconnected_since = None;
                }
            }
            Input::Disconnected(peer) => {
                self.connected.remove(&peer);
                if let Some(r) = self.remotes.get_mut(&node_of(&peer)) {
                    r.disconnected_since = Some(now);
                }
            }
            Input::Discovered(peer, addrs) => self.on_discovered(peer, addrs, now),
            Input::RaftMembers(ids) => self.raft_members = ids,
            Input::Bootstrapping(b) => self.bootstrapping = b,
            Input::Listening(addr) => {
                let local = self.view.local;
                if let Some(me) = self.view.members.get_mut(&local) {
                    let a = published_addr(&addr, self.advertise.as_deref()).to_string();
                    if !me.meta.addrs.contains(&a) {
                        if self.advertise.is_some() {
                            me.meta.addrs = vec![a];
                        } else {
                            me.meta.addrs.push(a);
                        }
                        self.effects.push(Effect::ViewChanged);
                    }
                    if let Some(d) = dashboard_host(me.meta.dashboard.as_deref(), &addr, self.dashboard_derived) {
                        me.meta.dashboard = Some(d);
                        self.dashboard_derived = true;
                        self.effects.push(Effect::ViewChanged);
                    }
                    // An endpoint bound to every interface is published like the dashboard.
                    for (name, value) in me.meta.endpoints.iter_mut() {
                        let derived = self.derived_endpoints.contains(name);
                        if let Some(v) = dashboard_host(Some(value.as_str()), &addr, derived) {
                            *value = v;
                            self.derived_endpoints.insert(name.clone());
                            self.effects.push(Effect::ViewChanged);
                        }
                    }
                }
            }
        }
    }

    fn on_discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) {
        if peer == self.local_peer {
            return;
        }
        let id = node_of(&peer);
        let r = self.remotes.entry(id).or_insert_with(|| Remote {
            peer,
            addrs: Vec::new(),
            // Not heard from yet: it joins the view with its first heartbeat.
            last_heard: now,
            disconnected_since: Some(now),
            last_dial: None,
        });
        for a in addrs {
            if !r.addrs.contains(&a) {
                r.addrs.push(a);
            }
        }
        self.maybe_dial(id, now);
    }

    fn on_heartbeat(&mut self, hb: Heartbeat, now: Instant) {
        let Ok((peer, addrs)) = parse_peer(&hb.meta.peer_id, &hb.meta.addrs) else { return };
        // The id must be the one derived from the peer id: a node cannot speak for another.
        if hb.cluster != self.cluster || node_of(&peer) != hb.meta.id || hb.meta.id == self.view.local {
            return;
        }
        let id = hb.meta.id;
        let connected = self.connected.contains(&peer);
        let r = self.remotes.entry(id).or_insert_with(|| Remote {
            peer,
            addrs: Vec::new(),
            last_heard: now,
            disconnected_since: if connected { None } else { Some(now) },
            last_dial: None,
        });
        r.last_heard = now;
        r.addrs = addrs;
        let changed = match self.view.members.get_mut(&id) {
            Some(m) => {
                let was = (m.state, m.meta.clone(), m.raft_members.clone(), m.bootstrapping);
                m.state = MemberState::Up;
                m.meta = hb.meta;
                m.raft_members = hb.raft_members;
                m.bootstrapping = hb.bootstrapping;
                if was.0 != MemberState::Up {
                    info!(node = %id, from = ?was.0, "member up");
                }
                was != (m.state, m.meta.clone(), m.raft_members.clone(), m.bootstrapping)
            }
            None => {
                info!(node = %id, addrs = ?hb.meta.addrs, "member joined the view");
                let m = MemberView {
                    meta: hb.meta,
                    state: MemberState::Up,
                    raft_members: hb.raft_members,
                    bootstrapping: hb.bootstrapping,
                };
                self.view.members.insert(id, m);
                true
            }
        };
        if changed {
            self.effects.push(Effect::ViewChanged);
        }
        self.maybe_dial(id, now);
    }

    fn on_tick(&mut self, now: Instant) {
        if self.last_sent.is_none_or(|t| now.duration_since(t) >= self.cfg.heartbeat_interval) {
            self.last_sent = Some(now);
            self.seq += 1;
            let meta = self.view.members[&self.view.local].meta.clone();
            self.effects.push(Effect::Publish(Heartbeat {
                cluster: self.cluster.clone(),
                meta,
                seq: self.seq,
                incarnation: self.incarnation,
                raft_members: self.raft_members.clone(),
                bootstrapping: self.bootstrapping,
            }));
        }
        let mut changed = false;
        for (id, m) in self.view.members.iter_mut() {
            let Some(r) = self.remotes.get(id) else { continue };
            let silent = now.duration_since(r.last_heard);
            let state = if silent >= self.cfg.down_after {
                MemberState::Down
            } else if silent >= self.cfg.suspect_after {
                MemberState::Suspect
            } else {
                MemberState::Up
            };
            if state != m.state {
                info!(node = %id, from = ?m.state, to = ?state, silent_ms = silent.as_millis() as u64, "member state changed");
                m.state = state;
                changed = true;
            }
        }
        if changed {
            self.effects.push(Effect::ViewChanged);
        }
        let ids: Vec<NodeId> = self.remotes.keys().copied().collect();
        for id in ids {
            self.maybe_dial(id, now);
        }
    }

    /// Only one side dials: the lower id at once, the higher one after `fallback_dial_after`
    /// without a connection; neither more often than `redial_interval`.
    fn maybe_dial(&mut self, id: NodeId, now: Instant) {
        let local = self.view.local;
        let Some(r) = self.remotes.get_mut(&id) else { return };
        if self.connected.contains(&r.peer) || r.addrs.is_empty() {
            return;
        }
        if r.last_dial.is_some_and(|t| now.duration_since(t) < self.cfg.redial_interval) {
            return;
        }
        let waited = r.disconnected_since.is_none_or(|t| now.duration_since(t) >= self.cfg.fallback_dial_after);
        if local < id || waited {
            r.last_dial = Some(now);
            self.effects.push(Effect::Dial(r.peer, r.addrs.clone()));
        }
    }
}

/// The node id of a peer.
pub(crate) fn node_of(peer: &PeerId) -> NodeId {
    NodeId::from_peer_bytes(&peer.to_bytes())
}

/// The address this node publishes for a listening address `addr`: `addr` itself, or the
/// advertised host (with its own port, or `addr`'s).
pub fn published_addr(addr: &Multiaddr, advertise: Option<&str>) -> Multiaddr {
    let Some(adv) = advertise else { return addr.clone() };
    let listen_port = addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
        _ => None,
    });
    let (host, port) = match adv.parse::<std::net::SocketAddr>() {
        Ok(sa) => (sa.ip().to_string(), Some(sa.port())),
        Err(_) => match adv.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => (h.to_string(), p.parse().ok()),
            _ => (adv.trim_matches(|c| c == '[' || c == ']').to_string(), None),
        },
    };
    let Some(port) = port.or(listen_port) else { return addr.clone() };
    let proto = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => "ip4",
        Ok(std::net::IpAddr::V6(_)) => "ip6",
        Err(_) => "dns",
    };
    format!("/{proto}/{host}/tcp/{port}").parse().unwrap_or_else(|_| addr.clone())
}

/// The dashboard address to publish once this node listens on `addr`, if it changes: a
/// dashboard bound to every interface (`0.0.0.0:port`) is published with `addr`'s IP, a
/// non-loopback one replacing a loopback one taken earlier (`derived`). Never `0.0.0.0`.
pub fn dashboard_host(dashboard: Option<&str>, addr: &Multiaddr, derived: bool) -> Option<String> {
    let current: std::net::SocketAddr = dashboard?.parse().ok()?;
    let ip = addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    })?;
    if ip.is_unspecified() {
        return None;
    }
    let better = current.ip().is_unspecified() || (derived && current.ip().is_loopback() && !ip.is_loopback());
    better.then(|| std::net::SocketAddr::new(ip, current.port()).to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::identity::Keypair;

    use super::*;

    #[test]
    fn a_node_never_publishes_an_unspecified_address_or_port_zero() {
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/7000".parse().unwrap();
        let lan: Multiaddr = "/ip4/10.1.2.3/tcp/7000".parse().unwrap();
        assert_eq!(published_addr(&a, None), a);
        assert_eq!(published_addr(&a, Some("10.0.0.9")).to_string(), "/ip4/10.0.0.9/tcp/7000");
        assert_eq!(published_addr(&a, Some("10.0.0.9:9000")).to_string(), "/ip4/10.0.0.9/tcp/9000");
        assert_eq!(published_addr(&a, Some("node-1.internal")).to_string(), "/dns/node-1.internal/tcp/7000");
        assert_eq!(published_addr(&a, Some("::1")).to_string(), "/ip6/::1/tcp/7000");
        assert_eq!(dashboard_host(Some("0.0.0.0:8080"), &a, false).as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(dashboard_host(Some("127.0.0.1:8080"), &lan, true).as_deref(), Some("10.1.2.3:8080"));
        assert_eq!(dashboard_host(Some("127.0.0.1:8080"), &lan, false), None, "bound to loopback: stays");
        assert_eq!(dashboard_host(Some("10.1.2.3:8080"), &a, true), None, "never back to loopback");
        assert_eq!(dashboard_host(None, &a, false), None);
    }

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    fn meta(p: &PeerId) -> NodeMeta {
        NodeMeta {
            id: node_of(p),
            peer_id: Some(*p),
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            weight: 1,
            workers: 1,
            zone: None,
            dashboard: None,
            name: None,
            endpoints: Default::default(),
            metadata: Default::default(),
        }
    }

    fn core(p: &PeerId) -> Core {
        Core::new(Config::default(), ClusterName::new("a", "b"), *p, meta(p), 1)
    }

    fn hb(p: &PeerId) -> Heartbeat {
        Heartbeat {
            cluster: ClusterName::new("a", "b"),
            meta: meta(p),
            seq: 1,
            incarnation: 1,
            raft_members: vec![],
            bootstrapping: false,
        }
    }

    #[test]
    fn heartbeat_then_silence_goes_up_suspect_down() {
        let (me, other) = (peer(), peer());
        let mut c = core(&me);
        let t0 = Instant::now();
        c.handle(Input::Connected(other), t0);
        c.handle(Input::Heartbeat(hb(&other)), t0);
        assert_eq!(c.take_effects(), vec![Effect::ViewChanged]);
        assert_eq!(c.view().members[&node_of(&other)].state, MemberState::Up);
        c.handle(Input::Tick, t0 + Duration::from_millis(999));
        assert!(matches!(c.take_effects().as_slice(), [Effect::Publish(_)]));
        c.handle(Input::Tick, t0 + Duration::from_millis(1000));
        assert_eq!(c.view().members[&node_of(&other)].state, MemberState::Suspect);
        c.handle(Input::Tick, t0 + Duration::from_millis(2000));
        assert_eq!(c.view().members[&node_of(&other)].state, MemberState::Down);
        assert!(c.take_effects().contains(&Effect::ViewChanged));
        c.handle(Input::Heartbeat(hb(&other)), t0 + Duration::from_millis(2100));
        assert_eq!(c.view().members[&node_of(&other)].state, MemberState::Up);
    }

    #[test]
    fn heartbeat_with_forged_id_or_other_cluster_is_ignored() {
        let (me, other) = (peer(), peer());
        let mut c = core(&me);
        let mut forged = hb(&other);
        forged.meta.id = NodeId(42);
        c.handle(Input::Heartbeat(forged), Instant::now());
        let mut foreign = hb(&other);
        foreign.cluster = ClusterName::new("x", "y");
        c.handle(Input::Heartbeat(foreign), Instant::now());
        assert_eq!(c.view().members.len(), 1);
        assert!(c.take_effects().is_empty());
    }

    #[test]
    fn only_the_lower_id_dials_at_once() {
        let (a, b) = (peer(), peer());
        let (lo, hi) = if node_of(&a) < node_of(&b) { (a, b) } else { (b, a) };
        let t0 = Instant::now();
        let addrs = vec!["/ip4/127.0.0.1/tcp/9".parse::<Multiaddr>().unwrap()];
        let mut low = core(&lo);
        low.handle(Input::Discovered(hi, addrs.clone()), t0);
        assert_eq!(low.take_effects(), vec![Effect::Dial(hi, addrs.clone())]);
        let mut high = core(&hi);
        high.handle(Input::Discovered(lo, addrs.clone()), t0);
        assert!(high.take_effects().is_empty(), "the higher id waits");
        high.handle(Input::Tick, t0 + Duration::from_secs(3));
        assert!(high.take_effects().contains(&Effect::Dial(lo, addrs)), "fallback dial");
    }

    #[test]
    fn heartbeats_are_sent_every_interval() {
        let me = peer();
        let mut c = core(&me);
        let t0 = Instant::now();
        c.handle(Input::Tick, t0);
        c.handle(Input::Tick, t0 + Duration::from_millis(100));
        c.handle(Input::Tick, t0 + Duration::from_millis(250));
        let seqs: Vec<u64> = c
            .take_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Publish(h) => Some(h.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![1, 2]);
    }
}
