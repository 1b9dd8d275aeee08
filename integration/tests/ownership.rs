//! Single ownership (docs/architecture.md §7) with the framework's fault injection, three nodes in one process,
//! each with an ownership journal:
//! (a) the leader cut off with a minority stops serving, the majority serves again after the
//!     lease wait, and no shard is active on two nodes at any instant;
//! (b) a planned rebalance (a node joins, then leaves gracefully) under steady traffic loses no
//!     message and doubles none;
//! (c) hooks arrive in the documented order with the right epochs;
//! (d) an old owner that comes back after being cut off is refused by the new owner's epoch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use clusterfunk::{Cluster, ClusterEvent, EntityInfo, NodeId, Refusal, RouteError, ShardId, ShardedActor};
use clusterfunk_actors::lease::monotonic_ns;
use clusterfunk_actors::proxy::Envelope;
use clusterfunk_integration::inproc::{cluster, cut, logs, settled};
use clusterfunk_integration::journal;
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(30);

/// Deliveries per key, across every node of the process: an entity on any node records here.
static LEDGER: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

struct Ledger(String);

impl Actor for Ledger {
    type Context = Context<Self>;
}

impl ShardedActor for Ledger {
    type Key = String;
    type Messages = (Record,);
    fn from_key(key: &String, _: EntityInfo) -> Self {
        Ledger(key.clone())
    }
}

#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
struct Record;

impl Handler<Record> for Ledger {
    type Result = ();
    fn handle(&mut self, _: Record, _: &mut Context<Self>) {
        *LEDGER.lock().unwrap().get_or_insert_with(HashMap::new).entry(self.0.clone()).or_default() += 1;
    }
}

type Events = Arc<Mutex<Vec<(usize, u64, ClusterEvent)>>>;

fn journal_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("journal-{i}.jsonl"))
}

/// The tests here time leases and failovers: three 3-node clusters at once would starve a
/// 2-core machine, so they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(dir: &Path, name: &str, n: usize, events: &Events) -> anyhow::Result<Vec<Cluster>> {
    cluster(dir, name, n, 3, |b, i| node_builder(b, dir, i, events)).await
}

fn node_builder(b: clusterfunk::Builder, dir: &Path, i: usize, events: &Events) -> clusterfunk::Builder {
    let ev = events.clone();
    b.journal(journal_path(dir, i)).entity::<Ledger>().on_event(move |e| {
        let ev = ev.clone();
        async move { ev.lock().unwrap().push((i, monotonic_ns(), e)) }
    })
}

fn journals(dir: &Path, n: usize) -> Vec<journal::Record> {
    (0..n).flat_map(|i| journal::read(&journal_path(dir, i)).unwrap()).collect()
}

fn leader_of(nodes: &[Cluster]) -> usize {
    let leader = nodes[0].status().leader.expect("a leader");
    nodes.iter().position(|c| c.node_id().to_string() == leader).expect("the leader is one of ours")
}

async fn shutdown(nodes: &[Cluster]) {
    for n in nodes {
        n.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_leader_cut_off_with_a_minority_stops_serving_and_no_shard_is_served_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    logs();
    let dir = tempfile::tempdir().unwrap();
    let events = Events::default();
    let nodes = start(dir.path(), "own-a", 3, &events).await.unwrap();
    let li = leader_of(&nodes);
    let old = nodes[li].node_id();
    let owned_before = nodes[li].status().ownership.serving;
    assert!(owned_before > 0);

    let t_cut = monotonic_ns();
    cut(&nodes, li, true);
    nodes[li]
        .wait_until(T, "the cut-off leader to stop serving", |s| s.ownership.serving == 0 && !s.ownership.lease_valid)
        .await
        .unwrap();
    let majority: Vec<&Cluster> = nodes.iter().filter(|c| c.node_id() != old).collect();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let st: Vec<_> = majority.iter().map(|c| c.status()).collect();
        let serving: u64 = st.iter().map(|s| s.ownership.serving).sum();
        let new_leader = st.iter().all(|s| s.leader.as_deref().is_some_and(|l| l != old.to_string()));
        if serving == 256 && new_leader {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the majority never served every shard: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t_served = monotonic_ns();

    cut(&nodes, li, false);
    settled(&nodes, 3, T).await.unwrap();
    shutdown(&nodes).await;

    let records = journals(dir.path(), 3);
    let overlaps = journal::overlaps(&records);
    assert!(overlaps.is_empty(), "a shard was active on two nodes at once: {:?}", &overlaps[..overlaps.len().min(5)]);
    assert!(journal::moved_shards(&records) as u64 >= owned_before, "the old leader's shards moved");
    // The cut-off leader kept serving at most until its last self-granted lease ran out: L after
    // a grant it made while its quorum ack was younger than election_timeout_max (docs/architecture.md §7.2).
    let stopped_after = records
        .iter()
        .filter(|r| r.node == old.to_string() && r.event == "deactivate" && r.t_ns > t_cut)
        .map(|r| r.t_ns - t_cut)
        .min()
        .expect("the old leader deactivated its shards");
    eprintln!(
        "minority_stopped_serving_ms={} majority_served_all_ms={}",
        stopped_after / 1_000_000,
        (t_served - t_cut) / 1_000_000
    );
    let bound = Duration::from_millis(500 + 300 + 250).as_nanos() as u64;
    assert!(stopped_after <= bound, "stopped {} ms after the cut", stopped_after / 1_000_000);
}

#[actix_rt::test]
async fn planned_rebalance_under_traffic_loses_nothing_and_hooks_come_in_order() {
    let _turn = ONE_AT_A_TIME.lock().await;
    logs();
    let dir = tempfile::tempdir().unwrap();
    let events = Events::default();
    let mut nodes = start(dir.path(), "own-b", 2, &events).await.unwrap();

    // Steady traffic from node 0 to 300 keys spread over both nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let acked: Arc<Mutex<HashMap<String, u64>>> = Default::default();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (c, stop, ok, failed, acked) =
            (nodes[0].sharded::<Ledger>(), stop.clone(), ok.clone(), failed.clone(), acked.clone());
        workers.push(actix_rt::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("b-{}", i % 300);
                match c.send(&key, Record).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        *acked.lock().unwrap().entry(key).or_default() += 1;
                    }
                    Err(e) => {
                        eprintln!("send {key}: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 8;
            }
        }));
    }
    let at_least = |n: u64| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + n;
            while ok.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    at_least(500).await;

    // A third node joins: shards move to it by graceful handoff.
    let ports = clusterfunk_integration::free_ports(1);
    let seed = nodes[0].status().members.iter().find_map(|m| m.addr.clone()).unwrap();
    let b = Cluster::builder()
        .name("own-b")
        .env("test")
        .data_dir(dir.path().join("n2"))
        .listen(format!("127.0.0.1:{}", ports[0]))
        .shards(256)
        .voters(3)
        .mdns(false)
        .join(seed);
    let joined = node_builder(b, dir.path(), 2, &events).build().unwrap().start().await.unwrap();
    nodes.push(joined);
    settled(&nodes, 3, T).await.unwrap();
    at_least(500).await;

    // It leaves again, gracefully: its shards are handed back.
    let leaving = nodes.pop().unwrap();
    leaving.leave(T).await.unwrap();
    settled(&nodes, 2, T).await.unwrap();
    at_least(500).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    shutdown(&nodes).await;

    // (b) nothing lost, nothing doubled, no error beyond retries.
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rebalance_traffic_ok={ok} failed={failed}");
    assert_eq!(failed, 0, "clients saw errors during planned moves");
    let ledger = LEDGER.lock().unwrap().clone().unwrap_or_default();
    for (k, n) in acked.lock().unwrap().iter() {
        assert_eq!(ledger.get(k).copied().unwrap_or(0), *n, "key {k}: deliveries == acknowledgements");
    }

    // (c) hooks: for every move, the old owner's ShardUnassigned (after it stopped serving) comes
    // before the new owner's ShardAssigned (before it serves), with a newer epoch.
    let records = journals(dir.path(), 3);
    assert!(journal::overlaps(&records).is_empty(), "no shard active on two nodes");
    let evs = events.lock().unwrap().clone();
    let node_of = |i: usize| if i < 2 { nodes[i].node_id() } else { leaving.node_id() };
    let mut moves = 0;
    for (i, t_un, e) in &evs {
        let ClusterEvent::ShardUnassigned { shard, epoch, new_owner: Some(to) } = e else { continue };
        let j = (0..3).find(|j| node_of(*j) == *to).expect("the new owner is one of ours");
        let assigned = evs.iter().find(|(k, _, e)| {
            *k == j
                && matches!(e, ClusterEvent::ShardAssigned { shard: s, epoch: e2, previous_owner }
                    if s == shard && e2 > epoch && *previous_owner == Some(node_of(*i)))
        });
        let (_, t_as, ClusterEvent::ShardAssigned { epoch: e2, .. }) = assigned.unwrap_or_else(|| {
            let about: Vec<_> =
                evs.iter()
                    .filter(|(_, _, e)| match e {
                        ClusterEvent::ShardAssigned { shard: s, .. }
                        | ClusterEvent::ShardUnassigned { shard: s, .. } => s == shard,
                        _ => false,
                    })
                    .collect();
            panic!("no ShardAssigned on node {j} matching {e:?} on node {i}; events of the shard: {about:#?}")
        }) else {
            unreachable!()
        };
        assert!(t_un < t_as, "shard {shard}: unassigned on the old owner before assigned on the new");
        let node = |k: usize| node_of(k).to_string();
        let act = records
            .iter()
            .find(|r| r.node == node(j) && r.shard == shard.0 && r.event == "activate" && r.epoch == e2.0);
        assert!(
            act.expect("journalled activation").t_ns > *t_as,
            "shard {shard}: the assigned hook ran before serving"
        );
        let deact = records
            .iter()
            .filter(|r| r.node == node(*i) && r.shard == shard.0 && r.event == "deactivate" && r.epoch == epoch.0)
            .map(|r| r.t_ns)
            .max();
        assert!(deact.expect("journalled deactivation") < *t_un, "shard {shard}: unassigned ran after it stopped");
        moves += 1;
    }
    eprintln!("handoffs_checked={moves}");
    assert!(moves >= 100, "the join and the leave moved shards both ways: {moves}");
    for i in 0..3 {
        assert!(evs
            .iter()
            .any(|(k, _, e)| *k == i && matches!(e, ClusterEvent::LeaderChanged { leader: Some(_), .. })));
    }
    let started = evs.iter().filter(|(_, _, e)| matches!(e, ClusterEvent::RebalanceStarted(_))).count();
    let finished = evs.iter().filter(|(_, _, e)| matches!(e, ClusterEvent::RebalanceFinished(_))).count();
    assert!(started >= 2 && finished >= 2, "rebalances reported: {started} started, {finished} finished");
}

#[actix_rt::test]
async fn an_old_owner_coming_back_is_refused_by_the_new_epoch() {
    let _turn = ONE_AT_A_TIME.lock().await;
    logs();
    let dir = tempfile::tempdir().unwrap();
    let events = Events::default();
    let nodes = start(dir.path(), "own-d", 3, &events).await.unwrap();
    let li = leader_of(&nodes);
    let x = (li + 1) % 3;
    let map = nodes[x].shard_map();
    let shard = (0..256).map(ShardId).find(|s| map.owner(*s) == Some(nodes[x].node_id())).unwrap();
    let old_epoch = nodes[x].shard_epoch(shard).expect("x serves its shard");

    cut(&nodes, x, true);
    let deadline = tokio::time::Instant::now() + T;
    let (y, new_epoch) = loop {
        let owner = nodes[li].owner(shard);
        if let Some(yi) = nodes.iter().position(|c| Some(c.node_id()) == owner && c.node_id() != nodes[x].node_id()) {
            if let Some(e) = nodes[yi].shard_epoch(shard) {
                break (yi, e);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "shard {shard} never moved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(new_epoch > old_epoch);
    assert_eq!(nodes[x].shard_epoch(shard), None, "the cut-off owner no longer serves");

    // It comes back and sends with the epoch it had.
    cut(&nodes, x, false);
    let env = Envelope {
        entity: 0,
        message: 0,
        shard,
        key: vec![0xa1, b'k'],
        payload: vec![0xc0],
        epoch: old_epoch,
        replica: false,
        trace: None,
    };
    let deadline = tokio::time::Instant::now() + T;
    let refusal = loop {
        match nodes[x].router().request_to(nodes[y].node_id(), &env).await {
            Err(RouteError::Refused(r)) => break r,
            other if tokio::time::Instant::now() < deadline => {
                eprintln!("waiting for the link back: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("no refusal: {other:?}"),
        }
    };
    assert_eq!(refusal, Refusal::NotOwner { shard, epoch: new_epoch, owner: Some(nodes[y].node_id()) });
    settled(&nodes, 3, T).await.unwrap();
    shutdown(&nodes).await;
    let records = journals(dir.path(), 3);
    assert!(journal::overlaps(&records).is_empty());
    let y_id: NodeId = nodes[y].node_id();
    assert!(
        records.iter().any(|r| r.event == "reject_stale"
            && r.node == y_id.to_string()
            && r.shard == shard.0
            && r.msg_epoch == Some(old_epoch.0)),
        "the new owner journalled the stale message"
    );
}
