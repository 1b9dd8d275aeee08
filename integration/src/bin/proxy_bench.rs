//! Proxy and entity figures, measured side by side in one run, printed as `name=value` lines:
//!
//! ```text
//! cargo run --release -p clusterfunk-integration --bin proxy_bench
//! ```
//!
//! Two nodes run in this process on loopback (real libp2p connections between them).

use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use clusterfunk_integration::inproc::{keys_on, pair, Inc, Read, Tally};
use futures::StreamExt;

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

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn main() -> anyhow::Result<()> {
    actix_rt::System::new().block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = pair(dir.path(), "bench").await?;
    let tallies = a.sharded::<Tally>();

    // Local delivery vs plain actix, both to an actor on another arbiter.
    const LOCAL: u64 = 200_000;
    let local_key = keys_on(&a, a.node_id(), 0, 1)[0];
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
    let remote = keys_on(&a, b.node_id(), 0, 256);
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
