//! Two nodes in one process: a burst of 100,000 messages to entities on the other node. Every
//! message is delivered or returned as an error — the test counts both — and each entity's final
//! count equals the messages delivered to it: none vanished, none doubled.

use std::collections::HashMap;

use clusterfunk_integration::inproc::{keys_on, pair, Inc, Read, Tally};
use futures::StreamExt;

#[actix_rt::test]
async fn burst_of_100k_to_remote_entities_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path(), "burst").await.unwrap();
    let keys = keys_on(&a, b.node_id(), 0, 200);
    let tallies = a.sharded::<Tally>();
    const N: usize = 100_000;
    let results: Vec<(u64, Result<u64, clusterfunk::SendError>)> = futures::stream::iter(0..N)
        .map(|i| {
            let (t, key) = (tallies.clone(), keys[i % keys.len()]);
            async move { (key, t.send(&key, Inc).await.map_err(clusterfunk::SendError::from)) }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let delivered = results.iter().filter(|(_, r)| r.is_ok()).count();
    let errored = results.iter().filter(|(_, r)| r.is_err()).count();
    eprintln!("burst_100k_delivered={delivered} burst_100k_errored={errored}");
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
    assert_eq!(st.traffic.local, 0, "all went over the proxy: {:?}", st.traffic);
    // At least once each; a message refused before it ran (the receiver's lease lapsing for a
    // moment on a loaded machine: queued messages are refused, never run late) is sent again.
    assert!(st.traffic.forwarded as usize >= N + keys.len(), "all went over the proxy: {:?}", st.traffic);
    a.shutdown().await;
    b.shutdown().await;
}
