//! One outbound stream to a peer: a bounded queue of encoded frames, a writer task that
//! coalesces up to `batch` frames into one write, and a reader task that matches responses to
//! requests by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::Stream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::frame::{Frame, Refusal};
use super::Error;
use crate::faults::{Fate, MessageFaults};
use crate::types::NodeId;
use crate::wire;

type Reply = oneshot::Sender<Result<Vec<u8>, Refusal>>;
/// Where a request's answer arrives.
pub(crate) type Answer = oneshot::Receiver<Result<Vec<u8>, Refusal>>;

/// A live link; cheap to clone.
#[derive(Clone)]
pub(crate) struct Link {
    node: NodeId,
    tx: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<u64, Reply>>>,
    next_id: Arc<AtomicU64>,
    alive: Arc<AtomicBool>,
    max_frame: usize,
    faults: Arc<MessageFaults>,
}

/// See [`Link::slot`].
pub(crate) struct Slot<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.link.forget(self.id);
    }
}

impl Link {
    /// Starts the writer and reader tasks for `stream` on `arbiter`.
    pub(crate) fn start(
        node: NodeId,
        stream: Stream,
        cfg: &super::Config,
        faults: Arc<MessageFaults>,
        arbiter: &actix::ArbiterHandle,
    ) -> Link {
        let (tx, rx) = mpsc::channel(cfg.queue_per_peer);
        let link = Link {
            node,
            tx,
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: Arc::new(AtomicU64::new(1)),
            alive: Arc::new(AtomicBool::new(true)),
            max_frame: cfg.max_frame,
            faults,
        };
        let (read, write) = stream.split();
        arbiter.spawn(write_loop(write, rx, cfg.batch, link.alive.clone()));
        let reader = link.clone();
        let max = cfg.max_frame;
        arbiter.spawn(async move { reader.read_loop(read, max).await });
        link
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Gives the link up (its node stopped answering): every waiting request fails at once
    /// (`ConnectionLost`: it may have been handled) and it is no longer alive, so its owner
    /// opens a new one for the next request.
    pub(crate) fn kill(&self) {
        self.alive.store(false, Ordering::Release);
        self.pending.lock().expect("pending lock is never poisoned").clear();
    }

    /// Queues a request; returns its id and the receiver of its answer. A full queue is an error,
    /// never a silent drop.
    pub(crate) fn send(&self, env: &super::Envelope) -> Result<(u64, Answer), Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = super::frame::length_prefixed(&super::frame::RequestRef::Request { id, env });
        if bytes.len() - 4 > self.max_frame {
            // The receiver would refuse it and drop us: refuse it here instead.
            return Err(Error::TooLarge { len: bytes.len() - 4, max: self.max_frame });
        }
        let (reply, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock is never poisoned: no panics inside").insert(id, reply);
        match self.faults.fate() {
            None => {}
            // Lost on the way: the caller's request times out.
            Some(Fate::Drop) => return Ok((id, rx)),
            Some(Fate::Send { delay, duplicate }) => {
                // Sent later (and maybe twice) from a task of its own, so frames queued after it
                // can overtake it; the receiver answers a repeated id once. A full queue then
                // fails the request at once (dropping its reply), as it would have here.
                for (after, copy) in std::iter::once((delay, false)).chain(duplicate.map(|d| (d, true))) {
                    let (link, b) = (self.clone(), bytes.clone());
                    crate::faults::later(after, async move {
                        if link.tx.try_send(b).is_err() && !copy {
                            link.forget(id);
                        }
                    });
                }
                return Ok((id, rx));
            }
        }
        match self.tx.try_send(bytes) {
            Ok(()) => Ok((id, rx)),
            Err(e) => {
                self.forget(id);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => Error::QueueFull { node: self.node },
                    mpsc::error::TrySendError::Closed(_) => {
                        Error::Unreachable { node: self.node, reason: "link closed" }
                    }
                })
            }
        }
    }

    /// Drops a pending request (not sent, or timed out), so its slot does not outlive it.
    pub(crate) fn forget(&self, id: u64) {
        self.pending.lock().expect("pending lock is never poisoned").remove(&id);
    }

    /// A guard that forgets request `id` when dropped (answered, timed out, or cancelled).
    pub(crate) fn slot(&self, id: u64) -> Slot<'_> {
        Slot { link: self, id }
    }

    /// Requests waiting for their answer.
    pub(crate) fn pending(&self) -> usize {
        self.pending.lock().expect("pending lock is never poisoned").len()
    }

    async fn read_loop(self, mut read: ReadHalf<Stream>, max: usize) {
        loop {
            let frame = match wire::read_frame(&mut read, max).await.and_then(|b| wire::decode::<Frame>(&b)) {
                Ok(f) => f,
                Err(e) => {
                    debug!(node = %self.node, error = %e, "proxy link closed");
                    break;
                }
            };
            match frame {
                Frame::Response { id, result } => {
                    let reply = self.pending.lock().expect("pending lock is never poisoned").remove(&id);
                    if let Some(reply) = reply {
                        let _ = reply.send(result.map(|b| b.into_vec()));
                    }
                }
                Frame::Request { .. } => {
                    debug!(node = %self.node, "request on an outbound link: closing it");
                    break;
                }
            }
        }
        self.alive.store(false, Ordering::Release);
        // Dropping the senders fails every waiting request with `Unreachable`.
        self.pending.lock().expect("pending lock is never poisoned").clear();
    }
}

/// Writes queued frames, coalescing whatever is queued (up to `batch`) into one write.
pub(crate) async fn write_loop(
    mut write: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    batch: usize,
    alive: Arc<AtomicBool>,
) {
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        for _ in 1..batch {
            match rx.try_recv() {
                Ok(next) => buf.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        if let Err(e) = async {
            write.write_all(&buf).await?;
            write.flush().await
        }
        .await
        {
            debug!(error = %e, "proxy stream write failed");
            break;
        }
    }
    alive.store(false, Ordering::Release);
    let _ = write.close().await;
}
