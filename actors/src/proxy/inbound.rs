//! Serving inbound proxy streams: decode requests, check ownership, dispatch, answer.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures::{AsyncReadExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

use super::frame::{Frame, Refusal};
use super::link::write_loop;
use super::router::Router;
use crate::wire;

/// Accepts proxy streams from peers until the transport stops.
pub(crate) async fn accept_loop(router: Router, mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        let r = router.clone();
        router.arbiter().spawn(serve(r, peer, stream));
    }
}

async fn serve(router: Router, peer: PeerId, stream: Stream) {
    let cfg = router.config().clone();
    let (mut read, write) = stream.split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(cfg.queue_per_peer);
    router.arbiter().spawn(write_loop(write, rx, cfg.batch, Arc::new(AtomicBool::new(true))));
    let in_flight = Arc::new(Semaphore::new(cfg.inbound_concurrency));
    loop {
        let frame = match wire::read_frame(&mut read, cfg.max_frame).await {
            Ok(bytes) => match wire::decode::<Frame>(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    router.malformed(peer, &e);
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                router.malformed(peer, &e);
                return;
            }
            Err(e) => {
                debug!(%peer, error = %e, "inbound proxy stream closed");
                return;
            }
        };
        let Frame::Request { id, env } = frame else {
            warn!(%peer, "response frame on an inbound proxy stream: closing it");
            return;
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let resp = Frame::Response { id, result: Err(Refusal::Overloaded) }.encode();
            if tx.send(resp).await.is_err() {
                return;
            }
            continue;
        };
        let (r, tx) = (router.clone(), tx.clone());
        router.arbiter().spawn(async move {
            let result = r.serve_local(env).await;
            drop(permit);
            let resp = Frame::Response { id, result: result.map(serde_bytes::ByteBuf::from) }.encode();
            let _ = tx.send(resp).await;
        });
    }
}
