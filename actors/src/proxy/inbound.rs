//! Serving inbound proxy streams: decode requests, check ownership, dispatch, answer.

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

/// Who opened an inbound stream, by the protocol it opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A member's proxy stream: only peers in the Raft configuration (docs/architecture.md §13).
    Member,
    /// A client's requests for this node's own shards (`proxy::clients`).
    Client,
    /// A client's requests this node routes on, as its gateway.
    Gateway,
}

/// Accepts proxy streams from peers until the transport stops.
pub(crate) async fn accept_loop(router: Router, mut incoming: libp2p_stream::IncomingStreams, from: Peer) {
    // Members are few and known; clients are not: their streams are capped per protocol.
    let slots = Arc::new(Semaphore::new(super::clients::MAX_CLIENT_STREAMS));
    while let Some((peer, stream)) = incoming.next().await {
        let r = router.clone();
        if from == Peer::Member {
            router.arbiter().spawn(serve(r, peer, stream, from));
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            router.stats().client_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, max = super::clients::MAX_CLIENT_STREAMS, "too many client streams: refused");
            continue;
        };
        router.arbiter().spawn(async move {
            serve(r, peer, stream, from).await;
            drop(permit);
        });
    }
}

/// Serves one request of a client: fenced here like a member's, or (gateway) routed on.
async fn serve_client(router: &Router, env: super::Envelope, from: Peer) -> Result<Vec<u8>, Refusal> {
    router.stats().client_requests.fetch_add(1, Ordering::Relaxed);
    if from == Peer::Client {
        return router.serve_local(env).await;
    }
    let shard = env.shard;
    // Checked here, not only at the owner: the owner would take a wrong one for a hostile member
    // (this node) and drop it; the client is the one to drop (the caller does).
    if let Some(actual) = router.key_shard(&env).filter(|a| *a != shard) {
        return Err(Refusal::WrongShard { claimed: shard, actual });
    }
    router.request(env).await.map_err(|e| match e {
        super::Error::Refused(r) => r,
        e if e.unsent() => Refusal::Unavailable(e.to_string()),
        // Sent on, and no answer: it may have been handled.
        _ => Refusal::Indeterminate { shard },
    })
}

async fn serve(router: Router, peer: PeerId, stream: Stream, from: Peer) {
    if from == Peer::Member && !router.authorize(&peer) {
        // Dropping the stream closes it: the sender sees its requests fail.
        return;
    }
    let cfg = router.config().clone();
    let (mut read, write) = stream.split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(cfg.queue_per_peer);
    router.arbiter().spawn(write_loop(write, rx, cfg.batch, Arc::new(AtomicBool::new(true))));
    let in_flight = Arc::new(Semaphore::new(cfg.inbound_concurrency));
    let mut seen = RecentIds::new();
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
        if from != Peer::Member && env.replica {
            // Only a shard's leader replicates; a client claiming to is buggy or hostile.
            router.stats().client_refused.fetch_add(1, Ordering::Relaxed);
            router.malformed(peer, &"a replica write from a client");
            return;
        }
        if !seen.insert(id) {
            // The same request twice (a duplicating network, or the fault injector): it runs
            // once and the first copy's answer is the answer.
            router.stats().duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            router.stats().inbound_full.fetch_add(1, Ordering::Relaxed);
            let resp = Frame::Response { id, result: Err(Refusal::Overloaded) }.encode();
            if tx.send(resp).await.is_err() {
                return;
            }
            continue;
        };
        let (r, tx) = (router.clone(), tx.clone());
        router.arbiter().spawn(async move {
            let result = match from {
                Peer::Member => r.serve_local(env).await,
                Peer::Client | Peer::Gateway => serve_client(&r, env, from).await,
            };
            drop(permit);
            let wrong = matches!(result, Err(Refusal::WrongShard { .. }));
            let resp = Frame::Response { id, result: result.map(serde_bytes::ByteBuf::from) }.encode();
            let _ = tx.send(resp).await;
            if wrong {
                // A well-formed frame whose shard is not its key's: a buggy or hostile sender.
                r.malformed(peer, &"an envelope whose shard is not its key's");
            }
        });
    }
}

/// How many request ids below the newest a stream remembers, to answer a repeated one once. A
/// sender's ids increase by one per request, so a copy would have to arrive after this many newer
/// requests to run twice: far beyond any delay the fault injector makes (and TCP neither repeats
/// nor reorders). 512 bytes per stream.
const RECENT_IDS: u64 = 4096;

/// The request ids seen on a stream within [`RECENT_IDS`] of the newest: a bitmap window.
struct RecentIds {
    newest: u64,
    bits: Box<[u64; (RECENT_IDS / 64) as usize]>,
}

impl RecentIds {
    fn new() -> RecentIds {
        RecentIds { newest: 0, bits: Box::new([0; (RECENT_IDS / 64) as usize]) }
    }

    fn bit(&mut self, id: u64) -> (&mut u64, u64) {
        let slot = (id % RECENT_IDS) as usize;
        (&mut self.bits[slot / 64], 1 << (slot % 64))
    }

    /// Records `id`; false if it was seen already. An id older than the window counts as new.
    fn insert(&mut self, id: u64) -> bool {
        if id > self.newest {
            let advance = id - self.newest;
            if advance >= RECENT_IDS {
                self.bits.fill(0);
            } else {
                for old in self.newest + 1..id {
                    let (word, mask) = self.bit(old);
                    *word &= !mask;
                }
            }
            self.newest = id;
            let (word, mask) = self.bit(id);
            *word |= mask;
            return true;
        }
        if self.newest - id >= RECENT_IDS {
            return true;
        }
        let (word, mask) = self.bit(id);
        let fresh = *word & mask == 0;
        *word |= mask;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::{RecentIds, RECENT_IDS};

    #[test]
    fn recent_ids_answer_a_repeat_once_within_the_window() {
        let mut r = RecentIds::new();
        assert!(r.insert(1) && r.insert(3) && r.insert(2), "out of order, each new");
        assert!(!r.insert(3) && !r.insert(1), "repeats");
        assert!(r.insert(10) && r.insert(5), "a gap, then an id from inside it");
        assert!(!r.insert(5));
        // Far ahead: the window moves; ids slots reused by the jump are new again.
        let far = 3 + RECENT_IDS;
        assert!(r.insert(far));
        assert!(r.insert(far - 1), "never seen");
        assert!(!r.insert(far - 1));
        assert!(r.insert(3), "older than the window: counted as new");
        assert!(r.insert(far + 2 * RECENT_IDS), "a jump past the whole window clears it");
        assert!(r.insert(far + 2 * RECENT_IDS - 5));
        assert!(!r.insert(far + 2 * RECENT_IDS));
    }
}
