//! The fault transport's delay, duplication and reordering (docs/architecture.md §11), in process: three nodes
//! that each delay, duplicate and reorder everything they send (Raft RPCs, lease renewals,
//! gossip, proxy requests) still form one cluster with one map, and every request runs exactly
//! once: per key, sequential increments answer 1, 2, 3, … with no repeat and no gap, and the
//! final count equals the acknowledged increments. Then drops are added: a request may fail
//! (the caller gets an error), but an acknowledged one is never lost or doubled.

use clusterfunk::FaultPlan;
use clusterfunk_integration::inproc::{cluster, keys_on, Inc, Read, Tally};

fn plan(spec: &str) -> FaultPlan {
    spec.parse().expect("a valid fault plan")
}

#[actix_rt::test]
async fn duplicated_and_reordered_messages_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), "mfaults", 3, 3, |b, i| {
        b.entity::<Tally>().message_faults(plan(&format!("delay=0ms..4ms,dup=0.3,reorder=0.2,seed={i}")))
    })
    .await
    .expect("a cluster forms while every message may be delayed, doubled or overtaken");

    let a = &nodes[0];
    let mut keys = keys_on(a, nodes[1].node_id(), 0, 6);
    keys.extend(keys_on(a, nodes[2].node_id(), 0, 6));
    let tallies = a.sharded::<Tally>();
    const PER_KEY: u64 = 40;
    let runs = keys.iter().map(|k| {
        let t = tallies.clone();
        let k = *k;
        async move {
            let mut answers = Vec::new();
            for _ in 0..PER_KEY {
                answers.push(t.send(&k, Inc).await.map_err(|e| format!("key {k}: {e}"))?);
            }
            Ok::<_, String>((k, answers))
        }
    });
    for r in futures::future::join_all(runs).await {
        let (k, answers) = r.expect("with no drops every increment is answered");
        let want: Vec<u64> = (1..=PER_KEY).collect();
        assert_eq!(answers, want, "key {k}: each increment ran once, in order");
        assert_eq!(tallies.send(&k, Read).await.unwrap(), PER_KEY, "key {k}");
    }
    let st = a.status();
    let f = st.transport.faults.as_ref().expect("the plan shows in the status");
    assert!(f.duplicated > 0 && f.reordered > 0 && f.delayed > 0, "the injector did its work: {f:?}");
    let repeats: u64 = nodes[1..].iter().map(|n| n.status().traffic.duplicates).sum();
    assert!(repeats > 0, "the owners saw repeated requests and ran them once");
    eprintln!("message_faults duplicated={} reordered={} repeats_refused={repeats}", f.duplicated, f.reordered);

    // Now drop 5% as well: requests may fail, none acknowledged is lost or doubled.
    for n in &nodes {
        n.faults().messages(Some(plan("delay=0ms..4ms,drop=0.03,dup=0.2,reorder=0.2,seed=7")));
    }
    let runs = keys.iter().map(|k| {
        let (t, k) = (tallies.clone(), *k);
        async move {
            let (mut acked, mut failed) = (0u64, 0u64);
            for _ in 0..30 {
                match t.send(&k, Inc).await {
                    Ok(v) => {
                        acked += 1;
                        assert!(
                            v >= PER_KEY + acked,
                            "key {k}: an acknowledged increment is lost: {v} after {acked} acks"
                        );
                    }
                    Err(_) => failed += 1,
                }
            }
            (k, acked, failed)
        }
    });
    let outcomes = futures::future::join_all(runs).await;
    for n in &nodes {
        n.faults().messages(None);
    }
    let (mut all_acked, mut all_failed) = (0, 0);
    for (k, acked, failed) in outcomes {
        let count = tallies.send(&k, Read).await.unwrap();
        // A dropped request never ran; a dropped answer ran without an ack: the count is at
        // least the acks and at most acks + failures: never more (nothing ran twice).
        assert!(
            (PER_KEY + acked..=PER_KEY + acked + failed).contains(&count),
            "key {k}: count {count}, acked {acked}, failed {failed}"
        );
        all_acked += acked;
        all_failed += failed;
    }
    eprintln!("message_faults with drops: acked={all_acked} failed={all_failed}");
    assert!(all_acked > all_failed * 4, "most requests get through: {all_acked} acked, {all_failed} failed");
    for n in &nodes {
        n.shutdown().await;
    }
}
