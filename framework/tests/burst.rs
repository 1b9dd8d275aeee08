//! Two nodes in one process (no process-global state): a burst of 100,000 messages to entities
//! on the other node. Every message is delivered or returned as an error — the test counts both —
//! and each entity's final count equals the messages delivered to it: none vanished, none doubled.

use std::collections::HashMap;
use std::time::Duration;

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn node(dir: &std::path::Path, listen: String, join: Option<String>) -> Cluster {
    let mut b = Cluster::builder()
        .name("burst")
        .env("test")
        .data_dir(dir)
        .listen(listen)
        .shards(64)
        .voters(1)
        .mdns(false)
        .entity::<Tally>(|e| e.handles::<Inc>().handles::<Read>());
    b = match join {
        Some(j) => b.join(j),
        None => b.bootstrap(true),
    };
    b.build().unwrap().start().await.unwrap()
}

#[actix_rt::test]
async fn burst_of_100k_to_remote_entities_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let seed = format!("127.0.0.1:{}", free_port());
    let a = node(&dir.path().join("a"), seed.clone(), None).await;
    let b = node(&dir.path().join("b"), format!("127.0.0.1:{}", free_port()), Some(seed)).await;
    let (ida, idb) = (a.node_id().to_string(), b.node_id().to_string());
    let both = |s: &clusterfunk::ClusterStatus| s.shard_map.owners.len() == 2 && s.shard_map.unassigned == 0;
    a.wait_until(Duration::from_secs(30), "both nodes own shards", both).await.unwrap();
    b.wait_until(Duration::from_secs(30), "the same map on b", |s| {
        both(s) && s.shard_map.epoch == a.status().shard_map.epoch
    })
    .await
    .unwrap();

    // 200 keys owned by b, sent from a.
    let keys: Vec<u64> = (0u64..).filter(|k| a.owner(a.shard_for(k).unwrap()) == Some(b.node_id())).take(200).collect();
    let tallies = a.sharded::<Tally>();
    const N: usize = 100_000;
    let results: Vec<(u64, Result<u64, clusterfunk::SendError>)> = futures::stream::iter(0..N)
        .map(|i| {
            let (t, key) = (tallies.clone(), keys[i % keys.len()]);
            async move { (key, t.send(&key, Inc).await) }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let delivered = results.iter().filter(|(_, r)| r.is_ok()).count();
    let errored = results.iter().filter(|(_, r)| r.is_err()).count();
    eprintln!("burst_100k_delivered={delivered} burst_100k_errored={errored} (a={ida} b={idb})");
    assert_eq!(delivered + errored, N, "every message is delivered or an error");
    let mut per_key: HashMap<u64, u64> = HashMap::new();
    for (k, r) in &results {
        if r.is_ok() {
            *per_key.entry(*k).or_default() += 1;
        }
    }
    for k in &keys {
        let counted = tallies.send(k, Read).await.unwrap();
        assert_eq!(counted, per_key.get(k).copied().unwrap_or(0), "key {k}: entity count equals messages delivered");
    }
    let st = a.status();
    assert_eq!(st.traffic.forwarded as usize, N + keys.len(), "all went over the proxy: {:?}", st.traffic);
    a.shutdown().await;
    b.shutdown().await;
}
