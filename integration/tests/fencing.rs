//! Fencing where it runs (docs/architecture.md §7), three nodes in one process:
//! (a) messages queued behind a long (3 s) handler when the node loses its lease are answered
//!     `NotOwner` and never run, and the long handler's own answer is withheld;
//! (b) a planned move is confirmed only after the shard's entities stopped, even when stopping
//!     takes longer than the hook budget: the new owner's instance starts after the old one ended;
//! (c) an envelope whose shard is not its key's is refused and its sender dropped;
//! (d) a `send` dropped before its answer frees its pending slot at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actix::prelude::*;
use clusterfunk::{Cluster, EntityInfo, NodeId, Refusal, RouteError, SendError, ShardId, ShardedActor};
use clusterfunk_actors::lease::monotonic_ns;
use clusterfunk_actors::proxy::Envelope;
use clusterfunk_integration::inproc::{cluster, cut, logs, settled};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(30);

/// What the entities did, across every node of the process: (what, node, key, time).
static SEEN: Mutex<Vec<(&'static str, NodeId, String, u64)>> = Mutex::new(Vec::new());
static BLOCKING: AtomicBool = AtomicBool::new(false);
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seen(what: &'static str, node: NodeId, key: &str) {
    SEEN.lock().unwrap().push((what, node, key.to_string(), monotonic_ns()));
}

fn seen_of(what: &str, key: &str) -> Vec<(NodeId, u64)> {
    SEEN.lock().unwrap().iter().filter(|r| r.0 == what && r.2 == key).map(|r| (r.1, r.3)).collect()
}

struct Slow {
    key: String,
    node: NodeId,
}

impl Actor for Slow {
    type Context = Context<Self>;
}

impl ShardedActor for Slow {
    type Key = String;
    type Messages = (Block, Count);
    fn from_key(key: &String, info: EntityInfo) -> Self {
        seen("created", info.node, key);
        Slow { key: key.clone(), node: info.node }
    }
}

/// Blocks the entity's thread for this many milliseconds.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
struct Block(u64);

impl Handler<Block> for Slow {
    type Result = ();
    fn handle(&mut self, Block(ms): Block, _: &mut Context<Self>) {
        BLOCKING.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        seen("block-ended", self.node, &self.key);
        BLOCKING.store(false, Ordering::SeqCst);
    }
}

#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
struct Count;

impl Handler<Count> for Slow {
    type Result = ();
    fn handle(&mut self, _: Count, _: &mut Context<Self>) {
        seen("count", self.node, &self.key);
    }
}

async fn start(dir: &std::path::Path, name: &str, budget: Duration) -> Vec<Cluster> {
    cluster(dir, name, 3, 3, |b, _| b.hook_budget(budget).entity::<Slow>()).await.unwrap()
}

fn index_of(nodes: &[Cluster], id: NodeId) -> usize {
    nodes.iter().position(|c| c.node_id() == id).expect("one of ours")
}

/// A key owned by a node that does not lead Raft (its leave then needs no leadership handover).
fn key_on_follower(nodes: &[Cluster], prefix: &str) -> (String, usize) {
    let leader = nodes[0].status().leader.expect("a leader");
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find_map(|k| {
            let owner = nodes[0].owner(nodes[0].shard_for(&k)?)?;
            (owner.to_string() != leader).then(|| (k, index_of(nodes, owner)))
        })
        .expect("some key lives on a follower")
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn messages_queued_when_the_lease_is_lost_never_run() {
    let _turn = ONE_AT_A_TIME.lock().await;
    logs();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(dir.path(), "fence-a", Duration::from_secs(2)).await;
    let (key, a) = key_on_follower(&nodes, "queued");
    let id = nodes[a].node_id();
    let sa = nodes[a].sharded::<Slow>();

    tracing::info!("--- a long handler runs on the owner; five messages queue behind it");
    let (s, k) = (sa.clone(), key.clone());
    let block = actix_rt::spawn(async move { s.send(&k, Block(3000)).await });
    wait_for("the long handler to start", || BLOCKING.load(Ordering::SeqCst)).await;
    let mut queued = Vec::new();
    for _ in 0..5 {
        let mut f = Box::pin({
            let (s, k) = (sa.clone(), key.clone());
            async move { s.send(&k, Count).await }
        });
        // One poll puts the message in the instance's inbox.
        assert!(futures::poll!(&mut f).is_pending());
        queued.push(actix_rt::spawn(f));
    }

    tracing::info!("--- the owner is cut off: its lease runs out while the handler still runs");
    cut(&nodes, a, true);
    nodes[a].wait_until(T, "the owner to lose its lease", |s| !s.ownership.lease_valid).await.unwrap();
    assert!(BLOCKING.load(Ordering::SeqCst), "the handler outlasted the lease");
    let answer = block.await.unwrap().map_err(SendError::from);
    assert!(
        matches!(answer, Err(SendError::Route(RouteError::Refused(Refusal::Indeterminate { .. })))),
        "the answer of a handler that ended without a lease is withheld: {answer:?}"
    );
    for q in queued {
        let _ = q.await; // retried elsewhere or timed out: either way not run here
    }
    let counted: Vec<_> = seen_of("count", &key).into_iter().filter(|(n, _)| *n == id).collect();
    assert!(counted.is_empty(), "messages queued before the lease ran out ran on the old owner: {counted:?}");

    cut(&nodes, a, false);
    settled(&nodes, 3, T).await.unwrap();
    for n in &nodes {
        n.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_handoff_is_confirmed_only_after_the_entities_stopped() {
    let _turn = ONE_AT_A_TIME.lock().await;
    logs();
    let dir = tempfile::tempdir().unwrap();
    // A hook budget far shorter than the handler: stopping the entity overruns it.
    let nodes = start(dir.path(), "fence-b", Duration::from_millis(200)).await;
    let (key, a) = key_on_follower(&nodes, "handoff");
    let old = nodes[a].node_id();
    let b = (a + 1) % nodes.len();

    tracing::info!("--- a 2.5 s handler runs on the owner, which then leaves");
    let (s, k) = (nodes[a].sharded::<Slow>(), key.clone());
    let block = actix_rt::spawn(async move { s.send(&k, Block(2500)).await });
    wait_for("the long handler to start", || BLOCKING.load(Ordering::SeqCst)).await;
    let leaving = nodes[a].clone();
    let leave = actix_rt::spawn(async move { leaving.leave(T).await });

    tracing::info!("--- once the move began, another node sends to the key: it reaches the new owner");
    let shard = nodes[b].shard_for(&key).unwrap();
    wait_for("the handoff to begin", || nodes[b].owner(shard) != Some(old)).await;
    assert!(BLOCKING.load(Ordering::SeqCst), "the handoff began while the handler still ran");
    nodes[b].sharded::<Slow>().send(&key, Count).await.unwrap();
    let ended = seen_of("block-ended", &key);
    let created: Vec<_> = seen_of("created", &key).into_iter().filter(|(n, _)| *n != old).collect();
    assert_eq!(ended.len(), 1, "the long handler ended once");
    assert_eq!(created.len(), 1, "one instance on the new owner");
    assert!(
        created[0].1 > ended[0].1,
        "the new owner's instance started {} ms before the old one's handler ended",
        (ended[0].1 - created[0].1) / 1_000_000
    );
    leave.await.unwrap().unwrap();
    let _ = block.await;
    let rest: Vec<Cluster> = nodes.iter().filter(|c| c.node_id() != old).cloned().collect();
    settled(&rest, 2, T).await.unwrap();
    for n in &rest {
        n.shutdown().await;
    }
}

#[actix_rt::test]
async fn an_envelope_whose_shard_is_not_its_keys_is_refused_and_its_sender_dropped() {
    let _turn = ONE_AT_A_TIME.lock().await;
    logs();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(dir.path(), "fence-c", Duration::from_secs(2)).await;
    let (key, a) = key_on_follower(&nodes, "wrong");
    let right = nodes[a].shard_for(&key).unwrap();
    // Another shard the same node owns: the ownership check passes, the key check must not.
    let map = nodes[a].shard_map();
    let wrong = (0..map.shard_count()).map(ShardId).find(|s| *s != right && map.owner(*s) == Some(nodes[a].node_id()));
    let wrong = wrong.expect("the owner has more than one shard");
    let sender = &nodes[(a + 1) % nodes.len()];
    let id = |name: &str| xxhash_rust::xxh3::xxh3_64(name.as_bytes());
    let env = Envelope {
        // Default wire names: the type names without their module path.
        entity: id("Slow"),
        message: id("Count"),
        shard: wrong,
        key: rmp_serde::to_vec(&key).unwrap(),
        payload: rmp_serde::to_vec(&Count).unwrap(),
        epoch: map.shard_epoch(wrong),
        replica: false,
        trace: None,
    };
    let before = nodes[a].status().traffic.malformed;
    let answer = sender.router().request_to(nodes[a].node_id(), &env).await;
    assert!(
        matches!(answer, Err(RouteError::Refused(Refusal::WrongShard { claimed, actual })) if claimed == wrong && actual == right)
            || matches!(answer, Err(RouteError::Unreachable { .. } | RouteError::Timeout { .. })),
        "{answer:?}"
    );
    assert!(seen_of("created", &key).is_empty(), "no instance of the key was made under the wrong shard");
    wait_for("the refusal to be counted as malformed (and the sender dropped)", || {
        nodes[a].status().traffic.malformed == before + 1
    })
    .await;
    for n in &nodes {
        n.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_dropped_send_frees_its_pending_slot() {
    let _turn = ONE_AT_A_TIME.lock().await;
    logs();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(dir.path(), "fence-d", Duration::from_secs(2)).await;
    let (key, a) = key_on_follower(&nodes, "dropped");
    let sender = &nodes[(a + 1) % nodes.len()];
    let sharded = sender.sharded::<Slow>();
    // The entity takes 1 s to answer; the caller gives up after 100 ms (the future is dropped).
    let gave_up = tokio::time::timeout(Duration::from_millis(100), sharded.send(&key, Block(1000))).await;
    assert!(gave_up.is_err(), "the caller gave up first");
    assert_eq!(sender.router().pending_requests(), 0, "the dropped request still holds its slot");
    wait_for("the handler to end", || !BLOCKING.load(Ordering::SeqCst)).await;
    for n in &nodes {
        n.shutdown().await;
    }
}
