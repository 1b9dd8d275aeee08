//! Nodes inside the test process (the framework keeps no process-global state), with a counting
//! entity, for the burst test and the proxy benchmark.

use std::time::Duration;

use actix::prelude::*;
use clusterfunk::{Cluster, ClusterStatus, EntityInfo, ShardedActor};
use serde::{Deserialize, Serialize};

/// Counts the [`Inc`]s it received.
pub struct Tally(u64, EntityInfo);

impl Actor for Tally {
    type Context = Context<Self>;
}

impl ShardedActor for Tally {
    type Key = u64;
    type Messages = (Inc, Read, Fence, Traced);
    fn from_key(_: &u64, info: EntityInfo) -> Self {
        Tally(0, info)
    }
}

/// Adds one; answers the new count.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "u64")]
pub struct Inc;

impl Handler<Inc> for Tally {
    type Result = u64;
    fn handle(&mut self, _: Inc, _: &mut Context<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// Answers the count.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "u64")]
pub struct Read;

impl Handler<Read> for Tally {
    type Result = u64;
    fn handle(&mut self, _: Read, _: &mut Context<Self>) -> u64 {
        self.0
    }
}

/// Answers the epoch the instance was created under and the one the message runs under
/// ([`clusterfunk::fencing_epoch`]).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "(u64, Option<u64>)")]
pub struct Fence;

impl Handler<Fence> for Tally {
    type Result = MessageResult<Fence>;
    fn handle(&mut self, _: Fence, _: &mut Context<Self>) -> MessageResult<Fence> {
        MessageResult((self.1.epoch.0, clusterfunk::fencing_epoch().map(|e| e.0)))
    }
}

/// Answers the W3C trace context the handler runs under ([`clusterfunk::traceparent`]).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Option<String>")]
pub struct Traced;

impl Handler<Traced> for Tally {
    type Result = Option<String>;
    fn handle(&mut self, _: Traced, _: &mut Context<Self>) -> Option<String> {
        clusterfunk::traceparent()
    }
}

/// Starts a node of cluster `name` listening on `listen`: it bootstraps when `join` is `None`.
pub async fn node(dir: &std::path::Path, name: &str, listen: String, join: Option<String>) -> anyhow::Result<Cluster> {
    let b = Cluster::builder()
        .name(name)
        .env("test")
        .data_dir(dir)
        .listen(listen)
        .shards(1024)
        .voters(1)
        .mdns(false)
        .passivate_after(Duration::from_secs(3600))
        .entity::<Tally>();
    let b = match join {
        Some(j) => b.join(j),
        None => b.bootstrap(true),
    };
    Ok(b.build()?.start().await?)
}

/// Two nodes of cluster `name` sharing one complete map.
pub async fn pair(dir: &std::path::Path, name: &str) -> anyhow::Result<(Cluster, Cluster)> {
    pair_at(dir, name).await.map(|(a, b, _)| (a, b))
}

/// [`pair`], and the first node's listen address.
pub async fn pair_at(dir: &std::path::Path, name: &str) -> anyhow::Result<(Cluster, Cluster, String)> {
    let ports = crate::free_ports(2);
    let seed = format!("127.0.0.1:{}", ports[0]);
    let a = node(&dir.join("a"), name, seed.clone(), None).await?;
    let b = node(&dir.join("b"), name, format!("127.0.0.1:{}", ports[1]), Some(seed.clone())).await?;
    let both = |s: &ClusterStatus| s.shard_map.owners.len() == 2 && s.shard_map.unassigned == 0;
    a.wait_until(Duration::from_secs(30), "both nodes own shards", both).await?;
    b.wait_until(Duration::from_secs(30), "b has a's map", |s| {
        both(s) && s.shard_map.epoch == a.status().shard_map.epoch
    })
    .await?;
    Ok((a, b, seed))
}

/// The first `n` keys (counting from `from`) whose shard `owner` owns in `c`'s map.
pub fn keys_on(c: &Cluster, owner: clusterfunk::NodeId, from: u64, n: usize) -> Vec<u64> {
    (from..).filter(|k| c.shard_for(k).and_then(|s| c.owner(s)) == Some(owner)).take(n).collect()
}

/// `n` nodes of cluster `name` (`voters` Raft voters), each built from the default test builder
/// passed through `tweak(builder, i)`; node 0 bootstraps, the others join it. Returns once every
/// node serves and all share one complete map.
pub async fn cluster(
    dir: &std::path::Path,
    name: &str,
    n: usize,
    voters: usize,
    tweak: impl Fn(clusterfunk::Builder, usize) -> clusterfunk::Builder,
) -> anyhow::Result<Vec<Cluster>> {
    let ports = crate::free_ports(n);
    let seed = format!("127.0.0.1:{}", ports[0]);
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let b = Cluster::builder()
            .name(name)
            .env("test")
            .data_dir(dir.join(format!("n{i}")))
            .listen(format!("127.0.0.1:{port}"))
            .shards(256)
            .voters(voters)
            .mdns(false)
            .passivate_after(Duration::from_secs(3600));
        let b = if i == 0 { b.bootstrap(true) } else { b.join(seed.clone()) };
        nodes.push(tweak(b, i).build()?.start().await?);
    }
    settled(&nodes, n, Duration::from_secs(30)).await?;
    Ok(nodes)
}

/// Waits until `owners` nodes own shards, no shard is unassigned or handing off, every node has
/// the same map and each serves exactly the shards it owns.
pub async fn settled(nodes: &[Cluster], owners: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let st: Vec<ClusterStatus> = nodes.iter().map(|c| c.status()).collect();
        let epoch = st[0].shard_map.epoch;
        let ok = st.iter().all(|s| {
            let owned = s.shard_map.owners.get(&s.node_id).copied().unwrap_or(0) as u64;
            s.shard_map.epoch == epoch
                && s.shard_map.owners.len() == owners
                && s.shard_map.unassigned == 0
                && s.ownership.handoffs_pending == 0
                && s.ownership.serving == owned
        });
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let summary: Vec<String> = st
                .iter()
                .map(|s| {
                    format!(
                        "{} epoch={} owners={:?} {:?}",
                        s.node_id, s.shard_map.epoch, s.shard_map.owners, s.ownership
                    )
                })
                .collect();
            anyhow::bail!("cluster did not settle within {timeout:?}:\n{}", summary.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cuts node `x` off from every other node of `nodes` (both directions), or heals the cut.
pub fn cut(nodes: &[Cluster], x: usize, cut: bool) {
    nodes[x].faults().isolate(cut);
    for (i, n) in nodes.iter().enumerate() {
        if i != x {
            n.faults().block(nodes[x].node_id(), cut);
        }
    }
}

/// Logs of in-process tests go to the test's output (`RUST_LOG` filters them).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
