//! The membership actor: carries out the core's effects.

use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, AsyncContext, Context, Handler};
use tokio::sync::watch;
use tracing::debug;

use super::core::{Core, Effect, Input, View};
use crate::transport::{self, Event};
use crate::wire::{self, Gossip};

/// Mailbox capacity: transport events beyond it are refused (and counted by the transport).
const MAILBOX: usize = 1024;

/// The membership actor.
pub struct Membership {
    core: Core,
    transport: transport::Handle,
    view: watch::Sender<Arc<View>>,
}

impl Membership {
    /// A membership actor publishing its view on the returned watch.
    pub fn new(core: Core, transport: transport::Handle) -> (Membership, watch::Receiver<Arc<View>>) {
        let (tx, rx) = watch::channel(Arc::new(core.view().clone()));
        (Membership { core, transport, view: tx }, rx)
    }

    fn step(&mut self, input: Input) {
        self.core.handle(input, Instant::now());
        for effect in self.core.take_effects() {
            match effect {
                Effect::Dial(peer, addrs) => {
                    if let Err(e) = self.transport.dial(peer, addrs) {
                        debug!(%peer, error = %e, "dial not queued");
                    }
                }
                Effect::Publish(hb) => {
                    if let Err(e) = self.transport.publish(wire::encode(&Gossip::Heartbeat(hb))) {
                        debug!(error = %e, "heartbeat not queued");
                    }
                }
                Effect::ViewChanged => {
                    self.view.send_replace(Arc::new(self.core.view().clone()));
                }
            }
        }
    }
}

impl Actor for Membership {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        ctx.run_interval(self.core.config().tick(), |act, _| act.step(Input::Tick));
    }
}

impl Handler<Event> for Membership {
    type Result = ();

    fn handle(&mut self, ev: Event, _: &mut Context<Self>) {
        let input = match ev {
            Event::Listening(a) => Input::Listening(a),
            Event::PeerConnected(p) => Input::Connected(p),
            Event::PeerDisconnected(p) => Input::Disconnected(p),
            Event::Discovered(p, a) => Input::Discovered(p, a),
            Event::Heartbeat(hb) => Input::Heartbeat(*hb),
        };
        self.step(input);
    }
}

/// The members of this node's Raft configuration changed (sent by the consensus actor, a layer
/// above): announced in heartbeats from now on.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct RaftMembers(pub Vec<crate::types::NodeId>);

impl Handler<RaftMembers> for Membership {
    type Result = ();

    fn handle(&mut self, msg: RaftMembers, _: &mut Context<Self>) {
        self.step(Input::RaftMembers(msg.0));
    }
}

/// Whether this node is deciding whether to create a new cluster (announced in heartbeats).
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct Bootstrapping(pub bool);

impl Handler<Bootstrapping> for Membership {
    type Result = ();

    fn handle(&mut self, msg: Bootstrapping, _: &mut Context<Self>) {
        self.step(Input::Bootstrapping(msg.0));
    }
}
