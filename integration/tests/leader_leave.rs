//! A Raft leader that leaves on purpose (`Cluster::leave`, what SIGTERM does) hands off its shards
//! *and* its leadership: when `leave` returns, another voter already leads (the group did not
//! wait out an election timeout for it), it is the one the old leader chose, and the survivors
//! serve every shard.

use std::time::{Duration, Instant};

use clusterfunk_integration::inproc::{cluster, settled};

#[actix_rt::test]
async fn a_leaving_leader_hands_over_leadership() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), "lleave", 3, 3, |b, _| b).await.expect("three voters");
    let leader_id = nodes[0].status().leader.expect("a leader");
    let li = nodes.iter().position(|n| n.node_id().to_string() == leader_id).expect("the leader is ours");
    let survivors: Vec<_> = nodes.iter().enumerate().filter(|(i, _)| *i != li).map(|(_, n)| n.clone()).collect();

    let started = Instant::now();
    nodes[li].leave(Duration::from_secs(10)).await.expect("the leader leaves cleanly");
    let took = started.elapsed();

    // At once, without waiting: some survivor already leads, and it knows it.
    let leaders: Vec<String> = survivors
        .iter()
        .filter_map(|n| {
            let s = n.status();
            (s.leader.as_deref() == Some(s.node_id.as_str())).then_some(s.node_id)
        })
        .collect();
    assert_eq!(leaders.len(), 1, "one survivor leads as soon as leave() returns: {leaders:?}");
    assert_ne!(leaders[0], leader_id);
    eprintln!("leader leave (shards + leadership handed over) took {took:?}; new leader {}", leaders[0]);

    // The other survivor follows it, and the two serve every shard.
    for n in &survivors {
        n.wait_until(Duration::from_secs(5), "the survivors to agree on the new leader", |s| {
            s.leader.as_deref() == Some(leaders[0].as_str())
        })
        .await
        .unwrap();
    }
    settled(&survivors, 2, Duration::from_secs(30)).await.unwrap();
    for n in &survivors {
        n.shutdown().await;
    }
}
