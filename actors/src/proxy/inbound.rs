//! Serving inbound proxy streams: decode requests, check ownership, dispatch, answer.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::{AsyncReadExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

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
    let mut seen = RecentIds::new(RECENT_IDS);
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
            router.malformed(peer, &"a response frame on an inbound proxy stream");
            return;
        };
        if !seen.insert(id) {
            // The same request twice (a duplicating network, or the fault injector): it runs
            // once and the first copy's answer is the answer.
            router.stats().duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
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

/// How many request ids per stream are remembered to answer a repeated one once. A sender's ids
/// increase by one per request, so a copy arriving after this many newer requests would run
/// again: far beyond any delay the fault injector makes.
const RECENT_IDS: usize = 1 << 16;

/// The last `cap` request ids seen on a stream.
struct RecentIds {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    cap: usize,
}

impl RecentIds {
    fn new(cap: usize) -> RecentIds {
        RecentIds { set: HashSet::new(), order: VecDeque::new(), cap }
    }

    /// Records `id`; false if it was seen already.
    fn insert(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn recent_ids_answer_a_repeat_once_within_the_window() {
        let mut r = super::RecentIds::new(3);
        assert!(r.insert(1) && r.insert(3) && r.insert(2));
        assert!(!r.insert(3), "a repeat");
        assert!(r.insert(4), "evicts 1");
        assert!(r.insert(1), "forgotten after the window");
        assert!(!r.insert(4));
    }
}
