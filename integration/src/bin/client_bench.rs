//! Client figures, printed as `name=value` lines: a [`clusterfunk::Client`] sending straight to
//! each key's owner, against the same client sending through a gateway node that does not own
//! the key (client → wrong node → proxy → owner, what a client that only round-robins gets):
//!
//! ```text
//! cargo run --release -p clusterfunk-integration --bin client_bench
//! ```
//!
//! Two nodes run in this process on loopback (real libp2p connections); each client runs its
//! own swarm on its own thread, as a client process would.

use std::time::{Duration, Instant};

use clusterfunk::{Client, Cluster, Sharded};
use clusterfunk_integration::inproc::{keys_on, pair, Inc, Tally};
use futures::StreamExt;

fn main() -> anyhow::Result<()> {
    actix_rt::System::new().block_on(run())
}

async fn client(seed: &Cluster, gateway: bool) -> anyhow::Result<Client> {
    let me = seed.node_id().to_string();
    let status = seed.status();
    let addr = status
        .members
        .iter()
        .find(|m| m.id == me)
        .and_then(|m| m.addr.clone())
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    Ok(Client::builder()
        .name("client-bench")
        .env("test")
        .seed(addr)
        .gateway(gateway)
        .entity::<Tally>()
        .connect()
        .await?)
}

/// 10,000 sends one after another: p50 and p99 latency.
async fn sequential(name: &str, tallies: &Sharded<Tally>, keys: &[u64]) -> anyhow::Result<()> {
    let mut lat: Vec<f64> = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let t = Instant::now();
        tallies.send(&keys[i % keys.len()], Inc).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    println!("{name}_seq_p50_us={:.1}", lat[lat.len() / 2]);
    println!("{name}_seq_p99_us={:.1}", lat[lat.len() * 99 / 100]);
    Ok(())
}

async fn measure(name: &str, c: &Client, keys: &[u64]) -> anyhow::Result<()> {
    let tallies = c.sharded::<Tally>();
    for k in keys {
        tallies.send(k, Inc).await?;
    }
    sequential(name, &tallies, keys).await?;
    const PIPE: usize = 200_000;
    let t = Instant::now();
    let ok = futures::stream::iter(0..PIPE)
        .map(|i| {
            let (t, k) = (tallies.clone(), keys[i % keys.len()]);
            async move { t.send(&k, Inc).await.is_ok() }
        })
        .buffer_unordered(64)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    println!("{name}_64_msgs_per_s={:.0}", ok as f64 / t.elapsed().as_secs_f64());
    println!("{name}_64_failed={}", PIPE - ok);
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = pair(dir.path(), "client-bench").await?;
    // Keys owned by b: the direct client sends them to b; the gateway client to a, which
    // forwards them to b.
    let keys = keys_on(&a, b.node_id(), 0, 256);
    let direct = client(&b, false).await?;
    let gateway = client(&a, true).await?;
    direct.wait_for_map(Duration::from_secs(10), "the map", |m| m.epoch().0 == a.status().shard_map.epoch).await?;
    assert_eq!(gateway.following(), Some(a.node_id()), "the gateway client follows a");
    measure("client_direct", &direct, &keys).await?;
    measure("client_via_wrong_node", &gateway, &keys).await?;
    // The member's own path for comparison: a's router forwarding to b (one hop).
    sequential("member_remote", &a.sharded::<Tally>(), &keys).await?;
    let s = direct.stats();
    println!("client_direct_not_owner={}", s.not_owner);
    drop((direct, gateway));
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
