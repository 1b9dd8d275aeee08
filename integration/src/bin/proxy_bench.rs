//! Proxy and entity figures, measured side by side in one run, printed as `name=value` lines:
//!
//! ```text
//! cargo run --release -p clusterfunk-integration --bin proxy_bench
//! ```
//!
//! Two nodes run in this process on loopback (real libp2p connections between them).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use clusterfunk::{Cluster, EntityInfo, ShardedActor};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

struct Tally(u64);

impl Actor for Tally {
    type Context = Context<Self>;
}

impl ShardedActor for Tally {
    type Key = u64;
    fn from_key(_: &u64, _: EntityInfo) -> Self {
        Tally(0)
    }
}

#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "u64")]
struct Inc;

impl Handler<Inc> for Tally {
    type Result = u64;
    fn handle(&mut self, _: Inc, _: &mut Context<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "u64")]
struct Read;

impl Handler<Read> for Tally {
    type Result = u64;
    fn handle(&mut self, _: Read, _: &mut Context<Self>) -> u64 {
        self.0
    }
}

/// The plain-actix baseline: the same counter, no framework.
struct Plain(u64);

impl Actor for Plain {
    type Context = Context<Self>;
}

impl Handler<Inc> for Plain {
    type Result = u64;
    fn handle(&mut self, _: Inc, _: &mut Context<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

async fn node(dir: &std::path::Path, listen: String, join: Option<String>) -> anyhow::Result<Cluster> {
    let b = Cluster::builder()
        .name("bench")
        .env("proxy")
        .data_dir(dir)
        .listen(listen)
        .shards(1024)
        .voters(1)
        .mdns(false)
        .passivate_after(Duration::from_secs(3600))
        .entity::<Tally>(|e| e.handles::<Inc>().handles::<Read>());
    let b = match join {
        Some(j) => b.join(j),
        None => b.bootstrap(true),
    };
    Ok(b.build()?.start().await?)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn keys_on(c: &Cluster, owner: clusterfunk::NodeId, n: usize) -> Vec<u64> {
    (0u64..).filter(|k| c.shard_for(k).and_then(|s| c.owner(s)) == Some(owner)).take(n).collect()
}

fn main() -> anyhow::Result<()> {
    actix_rt::System::new().block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let seed = format!("127.0.0.1:{}", free_port());
    let a = node(&dir.path().join("a"), seed.clone(), None).await?;
    let b = node(&dir.path().join("b"), format!("127.0.0.1:{}", free_port()), Some(seed)).await?;
    let both = |s: &clusterfunk::ClusterStatus| s.shard_map.owners.len() == 2 && s.shard_map.unassigned == 0;
    a.wait_until(Duration::from_secs(30), "both nodes own shards", both).await?;
    b.wait_until(Duration::from_secs(30), "b has the map", |s| {
        both(s) && s.shard_map.epoch == a.status().shard_map.epoch
    })
    .await?;
    let tallies = a.sharded::<Tally>();

    // Local delivery vs plain actix, both to an actor on another arbiter.
    const LOCAL: u64 = 200_000;
    let local_key = keys_on(&a, a.node_id(), 1)[0];
    tallies.send(&local_key, Inc).await?;
    let t = Instant::now();
    for _ in 0..LOCAL {
        tallies.send(&local_key, Inc).await?;
    }
    let framework_rate = LOCAL as f64 / t.elapsed().as_secs_f64();
    let plain = Plain::start_in_arbiter(&Arbiter::new().handle(), |_| Plain(0));
    plain.send(Inc).await?;
    let t = Instant::now();
    for _ in 0..LOCAL {
        plain.send(Inc).await?;
    }
    let actix_rate = LOCAL as f64 / t.elapsed().as_secs_f64();
    println!("local_framework_msgs_per_s={framework_rate:.0}");
    println!("local_actix_msgs_per_s={actix_rate:.0}");
    println!("local_vs_actix_ratio={:.2}", framework_rate / actix_rate);

    // Remote asks: sequential latency, then 64 in flight.
    let remote = keys_on(&a, b.node_id(), 256);
    for k in &remote {
        tallies.send(k, Inc).await?;
    }
    let mut lat: Vec<f64> = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let t = Instant::now();
        tallies.send(&remote[i % remote.len()], Inc).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    println!("remote_ask_seq_p50_us={:.1}", lat[lat.len() / 2]);
    println!("remote_ask_seq_p99_us={:.1}", lat[lat.len() * 99 / 100]);
    const PIPE: usize = 200_000;
    let t = Instant::now();
    let ok = futures::stream::iter(0..PIPE)
        .map(|i| {
            let (t, k) = (tallies.clone(), remote[i % remote.len()]);
            async move { t.send(&k, Inc).await.is_ok() }
        })
        .buffer_unordered(64)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    println!("remote_ask_64_msgs_per_s={:.0}", ok as f64 / t.elapsed().as_secs_f64());

    // A burst of 100k to remote entities; "lost" compares what was acknowledged with what the
    // entities counted (both directions).
    let before: HashMap<u64, u64> = {
        let mut m = HashMap::new();
        for k in &remote {
            m.insert(*k, tallies.send(k, Read).await?);
        }
        m
    };
    const BURST: usize = 100_000;
    let results: Vec<(u64, bool)> = futures::stream::iter(0..BURST)
        .map(|i| {
            let (t, k) = (tallies.clone(), remote[i % remote.len()]);
            async move { (k, t.send(&k, Inc).await.is_ok()) }
        })
        .buffer_unordered(1024)
        .collect()
        .await;
    let delivered = results.iter().filter(|r| r.1).count();
    let errored = results.len() - delivered;
    let mut acked: HashMap<u64, u64> = HashMap::new();
    for (k, ok) in &results {
        if *ok {
            *acked.entry(*k).or_default() += 1;
        }
    }
    let mut lost = BURST - results.len();
    for k in &remote {
        let counted = tallies.send(k, Read).await? - before[k];
        lost += counted.abs_diff(acked.get(k).copied().unwrap_or(0)) as usize;
    }
    println!("burst_100k_delivered={delivered}");
    println!("burst_100k_errored={errored}");
    println!("burst_100k_lost={lost}");

    // Entity activations and memory per idle entity, on this node.
    const ENTITIES: usize = 100_000;
    let fresh: Vec<u64> = (1_000_000u64..)
        .filter(|k| a.shard_for(k).and_then(|s| a.owner(s)) == Some(a.node_id()))
        .take(ENTITIES)
        .collect();
    let rss0 = rss_bytes();
    let t = Instant::now();
    let made = futures::stream::iter(fresh)
        .map(|k| {
            let t = tallies.clone();
            async move { t.send(&k, Inc).await.is_ok() }
        })
        .buffer_unordered(256)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let rate = made as f64 / t.elapsed().as_secs_f64();
    let rss1 = rss_bytes();
    println!("entity_activations_per_s={rate:.0}");
    println!("entity_rss_bytes={}", rss1.saturating_sub(rss0) / made.max(1) as u64);
    a.shutdown().await;
    b.shutdown().await;
    System::current().stop();
    Ok(())
}
