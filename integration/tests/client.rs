//! `clusterfunk::Client` against three real node processes while the cluster changes under it:
//! a fourth node joins (shards move to it), then the node the client follows leaves (its shards
//! move away and the client must follow another node's map), then the fourth is killed (failover).
//!
//! A second client sends through a gateway node, which routes each message on to its owner.
//!
//! Every request ends in an answer or a typed error, and none is misrouted: each answer names
//! the node and shard that handled it, and the ownership journals must show that node serving
//! that shard at some instant between the send and the answer (and no shard served twice).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterfunk::{Client, SendError};
use clusterfunk_actors::lease::monotonic_ns;
use clusterfunk_demo::counter::{Add, Counter};
use clusterfunk_integration::{journal, logs, start_cluster_each, wait_formed, wait_until, NodeProc};

const T: Duration = Duration::from_secs(60);
const SHARDS: u64 = 64;

/// One request: its key, when it was sent and answered, and the outcome.
struct Sent {
    key: String,
    t0: u64,
    t1: u64,
    result: Result<(String, u32), SendError>,
}

/// The process tests run one at a time: each starts 3 or 4 nodes on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn journal_of(dir: &Path, i: usize) -> String {
    dir.join(format!("journal-{i}.jsonl")).to_string_lossy().to_string()
}

#[test]
fn a_client_routes_to_owners_through_a_join_a_leave_and_a_kill_and_none_is_misrouted() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir()?;
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let shards = SHARDS.to_string();
    let args = ["--name", "client", "--no-mdns", "--shards", &shards];
    let d = dir.path().to_path_buf();
    let nodes = start_cluster_each(exe, dir.path(), 3, &args, |i| vec!["--journal".into(), journal_of(&d, i)])?;
    let fail = |nodes: &[NodeProc], e: anyhow::Error| anyhow::anyhow!("{e}\n{}", logs(nodes));
    let ids = wait_formed(&nodes, SHARDS, T).map_err(|e| fail(&nodes, e))?;
    // A fourth node, started later: it joins the first.
    let ports = clusterfunk_integration::free_ports(2);
    let fourth = NodeProc::new(
        exe,
        dir.path().join("n3"),
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
        &[&args[..], &["--join", &nodes[0].listen, "--journal", &journal_of(dir.path(), 3)]].concat(),
    );

    eprintln!("--- formed: {ids:?}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = rt
        .block_on(Client::builder().name("client").seed(nodes[1].listen.clone()).entity::<Counter>().connect())
        .map_err(|e| fail(&nodes, e.into()))?;
    eprintln!("--- client connected");
    assert_eq!(client.shard_map().shard_count() as u64, SHARDS);
    let first = client.following().expect("the client follows a node");
    assert!(ids.contains(&first.to_string()), "it follows one of the nodes: {first}");

    // Through a gateway: every message goes to the node the client follows, which routes it on
    // (for a client that reaches only some nodes). Answered by each key's owner all the same.
    rt.block_on(async {
        let gw = Client::builder()
            .name("client")
            .seed(nodes[2].listen.clone())
            .gateway(true)
            .entity::<Counter>()
            .connect()
            .await?;
        let via = gw.following().expect("a gateway").to_string();
        let (mut forwarded, counters) = (0, gw.sharded::<Counter>());
        for i in 0..60 {
            let key = format!("gw-{i}");
            let owner = gw.owner(gw.shard_for(&key)).expect("an owner").to_string();
            let added = counters.send(&key, Add(1)).await?;
            assert_eq!(added.node, owner, "{key} answered by its owner");
            forwarded += usize::from(owner != via);
        }
        assert!(forwarded > 0, "some keys were owned by another node than the gateway");
        // The rest of the calling surface, from a client: tell, and a per-call timeout.
        counters.tell(&"gw-0".to_string(), Add(1)).await?;
        let n = counters.send_timeout(&"gw-0".to_string(), Add(1), Duration::from_secs(2)).await?;
        assert_eq!(n.value, 3, "send, tell, send: three additions");
        anyhow::Ok(())
    })
    .map_err(|e| fail(&nodes, e))?;

    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    // The cluster changes on a thread of its own while the client sends.
    let steps = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let ids = ids.clone();
        let client = client.clone();
        std::thread::spawn(move || -> anyhow::Result<(Vec<NodeProc>, NodeProc, Vec<&'static str>)> {
            let (mut nodes, mut fourth) = (nodes, fourth);
            let answered = |n: usize| {
                wait_until(T, "answers", || {
                    (sent.lock().unwrap().iter().filter(|s| s.result.is_ok()).count() >= n).then_some(())
                })
            };
            let mut done = Vec::new();
            answered(200)?;
            // A node joins: shards move to it.
            fourth.start()?;
            let mut all: Vec<&NodeProc> = nodes.iter().collect();
            all.push(&fourth);
            wait_until(T, "four owners", || {
                let s = fourth.status().ok()?;
                (clusterfunk_integration::view::owners(&s).0.len() == 4).then_some(())
            })?;
            let moved_to_fourth =
                client.wait_for_map(T, "the client's map naming the fourth node", |m| m.owner_counts().len() == 4);
            rt_block(moved_to_fourth)?;
            done.push("joined");
            eprintln!("--- joined");
            let n = sent.lock().unwrap().len();
            answered(n / 2 + 400)?;
            // The node the client follows leaves (SIGTERM: drains, then exits).
            let followed = client.following().expect("following").to_string();
            let leaver = ids.iter().position(|id| *id == followed).expect("it follows one of the first three");
            nodes[leaver].signal(libc::SIGTERM);
            wait_until(T, "the followed node to exit", || nodes[leaver].exited())?;
            let alive: Vec<usize> = (0..3).filter(|i| *i != leaver).collect();
            wait_until(T, "three owners without the leaver", || {
                let s = nodes[alive[0]].status().ok()?;
                let (owners, total) = clusterfunk_integration::view::owners(&s);
                (owners.len() == 3 && total == SHARDS && !owners.contains(&followed)).then_some(())
            })?;
            wait_until(T, "the client to follow another node", || {
                client.following().filter(|f| f.to_string() != followed).map(|_| ())
            })?;
            done.push("left");
            eprintln!("--- left");
            let n = sent.lock().unwrap().len();
            answered(n / 2 + 400)?;
            // A node is killed: its shards fail over once its lease runs out. The fourth node,
            // a learner: the leaver kept its voter seat (a leave never changes the voter set,
            // docs/architecture.md §8), so killing one of the two live voters would stop Raft.
            fourth.kill();
            journal::mark_stopped(Path::new(&journal_of(&d, 3)))?;
            wait_until(T, "the killed node's shards served elsewhere", || {
                let s = nodes[alive[0]].status().ok()?;
                let (owners, total) = clusterfunk_integration::view::owners(&s);
                (owners.len() == 2 && total == SHARDS).then_some(())
            })?;
            done.push("killed");
            eprintln!("--- killed");
            let n = sent.lock().unwrap().len();
            answered(n / 2 + 400)?;
            stop.store(true, Ordering::Release);
            Ok((nodes, fourth, done))
        })
    };

    // Four senders, each over its own keys, until the steps are done.
    rt.block_on(async {
        let senders = (0..4).map(|w| {
            let (client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
            async move {
                let counters = client.sharded::<Counter>();
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let key = format!("k{w}-{}", i % 97);
                    i += 1;
                    let t0 = monotonic_ns();
                    let r = counters.send(&key, Add(1)).await;
                    let t1 = monotonic_ns();
                    let result = r.map(|a| (a.node, a.shard)).map_err(SendError::from);
                    sent.lock().unwrap().push(Sent { key, t0, t1, result });
                }
            }
        });
        futures::future::join_all(senders).await;
    });
    let (mut nodes, mut fourth, done) = match steps.join().expect("the steps thread") {
        Ok(r) => r,
        Err(e) => {
            stop.store(true, Ordering::Release);
            return Err(e);
        }
    };
    assert_eq!(done, ["joined", "left", "killed"]);
    let stats = client.stats();
    drop(client);
    for n in nodes.iter_mut().chain(std::iter::once(&mut fourth)) {
        n.signal(libc::SIGTERM);
    }
    for n in nodes.iter_mut().chain(std::iter::once(&mut fourth)) {
        let _ = wait_until(T, "exit", || n.exited().or_else(|| (!n.is_started()).then_some(None)));
    }

    let records: Vec<journal::Record> =
        (0..4).flat_map(|i| journal::read(Path::new(&journal_of(dir.path(), i))).unwrap()).collect();
    let overlaps = journal::overlaps(&records);
    assert!(overlaps.is_empty(), "a shard was active on two nodes at once: {:?}", &overlaps[..overlaps.len().min(5)]);
    let twice = journal::service_overlaps(&records);
    assert!(twice.is_empty(), "two nodes ran handlers of one shard interleaved: {:?}", &twice[..twice.len().min(5)]);
    let serves = Serves::of(&records);
    let sent = sent.lock().unwrap();
    let (mut ok, mut errors) = (0usize, std::collections::BTreeMap::<String, usize>::new());
    for s in sent.iter() {
        match &s.result {
            Ok(_) => {
                ok += 1;
                if let Some(wrong) = serves.misrouted(s) {
                    panic!("{wrong}");
                }
            }
            Err(e) => {
                // Typed errors of routing only: nothing failed in an entity, nothing was refused
                // as malformed, unknown or for the wrong shard.
                if !matches!(e, SendError::Route(_)) {
                    panic!("{} failed other than in routing: {e}", s.key);
                }
                let kind: String = format!("{e:?}").chars().take_while(|c| *c != '{' && *c != ' ').collect();
                assert!(
                    !kind.contains("Malformed") && !kind.contains("Unknown") && !kind.contains("WrongShard"),
                    "{}: {e}",
                    s.key
                );
                *errors.entry(kind).or_default() += 1;
            }
        }
    }
    // The check can fail: the same history with one answer credited to another node (or to
    // another shard) is caught.
    let first_ok = sent.iter().find(|s| s.result.is_ok()).expect("an answer");
    let (node, shard) = first_ok.result.clone().unwrap();
    let other = ids.iter().find(|id| **id != node).expect("another node").clone();
    let forged = Sent { key: first_ok.key.clone(), t0: first_ok.t0, t1: first_ok.t1, result: Ok((other, shard)) };
    assert!(serves.misrouted(&forged).is_some(), "an answer from a node that ran no handler is caught");
    let forged = Sent { result: Ok((node, (shard + 1) % SHARDS as u32)), ..forged };
    assert!(serves.misrouted(&forged).is_some(), "an answer for another shard than the key's is caught");
    eprintln!(
        "client: {} requests, {ok} answered, errors {errors:?}; not_owner={} maps={} switches={}",
        sent.len(),
        stats.not_owner,
        stats.maps,
        stats.switches
    );
    assert!(ok as f64 >= 0.95 * sent.len() as f64, "answered {ok} of {}: {errors:?}", sent.len());
    assert!(stats.switches >= 1, "the client followed another node after the leave");
    Ok(())
}

/// A node that stops answering without closing its connections (SIGSTOP: its kernel still
/// acknowledges every byte, as a host whose process hangs does): the client following it must
/// notice (pings), follow another node, and reach the frozen node's shards at their new owners.
/// Without the pings it would wait on that node's silent stream, and its map, for good.
#[test]
fn a_client_leaves_a_frozen_node_and_reaches_its_shards_elsewhere() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The client's own decisions (pings, switches), in the test's output on failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("clusterfunk_actors::client=debug,libp2p_ping=debug")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir()?;
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let shards = SHARDS.to_string();
    let args = ["--name", "frozen", "--no-mdns", "--shards", &shards];
    let mut nodes = clusterfunk_integration::start_cluster(exe, dir.path(), 3, &args)?;
    let fail = |nodes: &[NodeProc], e: anyhow::Error| anyhow::anyhow!("{e}\n{}", logs(nodes));
    let ids = wait_formed(&nodes, SHARDS, T).map_err(|e| fail(&nodes, e))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = rt
        .block_on(Client::builder().name("frozen").seed(nodes[1].listen.clone()).entity::<Counter>().connect())
        .map_err(|e| fail(&nodes, e.into()))?;
    let followed = client.following().expect("following").to_string();
    let frozen = ids.iter().position(|id| *id == followed).expect("one of the three");
    let counters = client.sharded::<Counter>();
    let keys: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    let on_frozen = keys
        .iter()
        .filter(|k| client.owner(client.shard_for(*k)).map(|o| o.to_string()) == Some(followed.clone()))
        .count();
    assert!(on_frozen > 0, "some keys are owned by the node to freeze");
    for k in &keys {
        rt.block_on(counters.send(k, Add(1))).map_err(|e| fail(&nodes, SendError::from(e).into()))?;
    }

    let froze = std::time::Instant::now();
    assert!(nodes[frozen].signal(libc::SIGSTOP), "SIGSTOP sent");
    let alive: Vec<usize> = (0..3).filter(|i| *i != frozen).collect();
    let result = (|| -> anyhow::Result<()> {
        wait_until(T, "the client to follow another node", || {
            client.following().filter(|f| f.to_string() != followed).map(|_| ())
        })?;
        let left_after = froze.elapsed();
        wait_until(T, "the frozen node's shards served elsewhere", || {
            let s = nodes[alive[0]].status().ok()?;
            let (owners, total) = clusterfunk_integration::view::owners(&s);
            (owners.len() == 2 && total == SHARDS && !owners.contains(&followed)).then_some(())
        })?;
        rt_block(client.wait_for_map(T, "the client's map without the frozen node", |m| {
            m.owner_counts().keys().all(|n| n.to_string() != followed) && !m.has_unassigned()
        }))?;
        for k in &keys {
            let added = rt.block_on(counters.send(k, Add(1))).map_err(SendError::from)?;
            assert_ne!(added.node, followed, "{k} answered by a live owner");
        }
        eprintln!("client left the frozen node after {left_after:?}; stats {:?}", client.stats());
        Ok(())
    })();
    nodes[frozen].kill();
    for i in &alive {
        nodes[*i].signal(libc::SIGTERM);
    }
    result.map_err(|e| fail(&nodes, e))
}

/// A client's envelope whose shard is not its key's, sent through a gateway: the gateway refuses
/// it and drops the client. Routed on, the owner would take it for the gateway's own bad frame
/// and drop the gateway, a member: one client could cut the cluster's links.
#[actix_rt::test]
async fn a_wrong_shard_through_a_gateway_drops_the_client_not_the_member() -> anyhow::Result<()> {
    use clusterfunk_actors::client::{Client as Raw, Config};
    use clusterfunk_actors::proxy::{Envelope, Error, Refusal};
    use clusterfunk_integration::inproc;
    let dir = tempfile::tempdir()?;
    let (a, b, seed) = inproc::pair_at(dir.path(), "wrongshard").await?;
    let key = inproc::keys_on(&a, b.node_id(), 0, 1)[0];
    let shard = a.shard_for(&key).expect("a map");
    let mut cfg = Config::new(clusterfunk_actors::types::ClusterName::new("wrongshard", "test"), vec![seed]);
    cfg.gateway = true;
    let client = Raw::connect(cfg).await?;
    let wire = |name: &str| xxhash_rust::xxh3::xxh3_64(name.as_bytes());
    let env = |shard| Envelope {
        entity: wire("Tally"),
        message: wire("Inc"),
        shard,
        key: rmp_serde::to_vec(&key).unwrap(),
        payload: rmp_serde::to_vec_named(&inproc::Inc).unwrap(),
        epoch: clusterfunk_actors::types::Epoch(0),
        replica: false,
        trace: None,
    };
    // Well-formed through the gateway: answered by the owner.
    client.request(env(shard), Some(Duration::from_secs(10))).await?;
    let (a_bad, b_bad) = (a.status().traffic.malformed, b.status().traffic.malformed);
    let wrong = clusterfunk::ShardId((shard.0 + 1) % 1024);
    match client.request(env(wrong), Some(Duration::from_secs(10))).await {
        Err(Error::Refused(Refusal::WrongShard { claimed, actual })) => assert_eq!((claimed, actual), (wrong, shard)),
        // Dropped right after the answer was queued: it may not have been written.
        Err(Error::ConnectionLost { .. }) => {}
        other => panic!("a wrong shard was not refused: {other:?}"),
    }
    assert_eq!(a.status().traffic.malformed, a_bad + 1, "the gateway dropped the client");
    assert_eq!(b.status().traffic.malformed, b_bad, "the owner saw nothing wrong from the gateway");
    // The members' link is whole: a sends to b's key at once.
    let n = a.sharded::<inproc::Tally>().send_timeout(&key, inproc::Inc, Duration::from_secs(5)).await?;
    assert!(n >= 2, "the first Inc and this one: {n}");
    drop(client);
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// Every handler run in the journals, by node and shard, in time order.
struct Serves(std::collections::HashMap<(String, u32), Vec<u64>>);

impl Serves {
    fn of(records: &[journal::Record]) -> Serves {
        let mut serves: std::collections::HashMap<(String, u32), Vec<u64>> = Default::default();
        for r in records.iter().filter(|r| r.event == "serve") {
            serves.entry((r.node.clone(), r.shard)).or_default().push(r.t_ns);
        }
        serves.values_mut().for_each(|v| v.sort_unstable());
        Serves(serves)
    }

    /// Why an answer was misrouted, if it was: its shard is not its key's, or the node that
    /// answered journalled no handler run of that shard (as its owner) between send and answer.
    fn misrouted(&self, s: &Sent) -> Option<String> {
        let Ok((node, shard)) = &s.result else { return None };
        let keys = clusterfunk_actors::shard::shard_for(&s.key, SHARDS as u32).0;
        if *shard != keys {
            return Some(format!("{} was answered for shard {shard}, not its key's {keys}", s.key));
        }
        let runs = self.0.get(&(node.clone(), *shard)).map(Vec::as_slice).unwrap_or_default();
        let at = runs.partition_point(|t| *t < s.t0);
        runs.get(at)
            .is_none_or(|t| *t > s.t1)
            .then(|| format!("{} was answered by {node}, which ran no handler of shard {shard} in between", s.key))
    }
}

/// Runs a future to completion on a runtime of this thread's own.
fn rt_block<T>(f: impl std::future::Future<Output = Result<T, clusterfunk::Error>>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(rt.block_on(f)?)
}
