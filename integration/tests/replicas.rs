//! Replica messages (replica factor 2, three nodes in process): the shard's leader sends to its
//! follower with `send_to_replicas`, stamped with the shard's epoch; the follower keeps a replica
//! instance; a node that is not a follower, and a stamp older than the follower's, are refused;
//! when the owner is lost the follower is promoted and its replica instance serves on with what it
//! was sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterfunk::{ClusterEvent, Epoch, RouteError, SendError};
use clusterfunk_actors::proxy::{Envelope, Refusal};
use clusterfunk_integration::http_with_token;
use clusterfunk_integration::inproc::{cluster, Fence, Inc, Read, Tally};

#[actix_rt::test]
async fn followers_take_replica_messages_and_serve_on_when_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), "replicas", 3, 3, |b, _| b.replica_factor(2).entity::<Tally>())
        .await
        .expect("three nodes, two copies of each shard");
    let by_id = |id: clusterfunk::NodeId| nodes.iter().find(|n| n.node_id() == id).expect("one of ours");

    // A key whose owner is not the Raft leader (so losing it later is a plain owner loss).
    let leader = nodes[0].status().leader.unwrap();
    let key = (0u64..)
        .find(|k| {
            let s = nodes[0].shard_for(k).unwrap();
            nodes[0].owner(s).is_some_and(|o| o.to_string() != leader)
        })
        .unwrap();
    let shard = nodes[0].shard_for(&key).unwrap();
    let set = nodes[0].replica_set(shard);
    let (owner, follower) = (by_id(set.leader.unwrap()), by_id(set.followers[0]));
    let bystander = nodes.iter().find(|n| n.node_id() != owner.node_id() && n.node_id() != follower.node_id()).unwrap();

    // The leader's write, then its replication: the follower's replica instance counts too.
    let tallies = owner.sharded::<Tally>();
    assert_eq!(tallies.send(&key, Inc).await.unwrap(), 1);
    let answers = tallies.send_to_replicas(&key, Inc).await;
    assert_eq!(answers.len(), 1, "one follower at replica factor 2");
    assert_eq!(answers[0].0, follower.node_id());
    assert_eq!(answers[0].1.as_ref().unwrap(), &1, "the follower's replica instance counted it");
    assert_eq!(tallies.send(&key, Inc).await.unwrap(), 2);
    assert_eq!(*tallies.send_to_replicas(&key, Inc).await[0].1.as_ref().unwrap(), 2);
    let e = set.epoch.0;
    assert_eq!(
        tallies.send(&key, Fence).await.unwrap(),
        (e, Some(e)),
        "the owner's instance runs under the shard's epoch"
    );
    let replica = tallies.send_to_replicas(&key, Fence).await;
    assert_eq!(replica[0].1.as_ref().unwrap(), &(e, Some(e)), "a replica instance knows the epoch it follows");

    // Only the shard's leader replicates: a follower or a bystander is refused before anything is sent.
    for not_leader in [follower, bystander] {
        let answers = not_leader.sharded::<Tally>().send_to_replicas(&key, Inc).await;
        assert!(
            answers
                .iter()
                .all(|(_, a)| matches!(a, Err(SendError::Route(RouteError::Refused(Refusal::NotOwner { .. }))))),
            "{answers:?}"
        );
    }
    assert_eq!(
        *tallies.send_to_replicas(&key, Read).await[0].1.as_ref().unwrap(),
        2,
        "nothing more reached the follower"
    );

    // Refused: a node that is not a follower of the shard, and a stamp older than the epoch the
    // follower has seen. (The check comes before dispatch: the type ids do not matter.)
    let env = |epoch: Epoch| Envelope {
        entity: 0,
        message: 0,
        shard,
        key: rmp_serde::to_vec(&key).unwrap(),
        payload: rmp_serde::to_vec(&Inc).unwrap(),
        epoch,
        replica: true,
        trace: None,
    };
    let r = owner.router().request_to(bystander.node_id(), &env(set.epoch)).await;
    assert!(matches!(r, Err(RouteError::Refused(Refusal::NotOwner { .. }))), "a non-follower refuses: {r:?}");
    let stale = Epoch(set.epoch.0 - 1);
    let r = owner.router().request_to(follower.node_id(), &env(stale)).await;
    match r {
        Err(RouteError::Refused(Refusal::NotOwner { epoch, .. })) => {
            assert_eq!(epoch, set.epoch, "names the newer epoch")
        }
        other => panic!("a stale replica write must be refused: {other:?}"),
    }
    assert!(follower.status().ownership.rejected_stale >= 1);

    // The owner is lost: the follower is promoted and its replica instance serves on.
    owner.shutdown().await;
    let promoted = follower.sharded::<Tally>();
    follower
        .wait_until(Duration::from_secs(10), "the follower to be promoted", |_| follower.is_owner(shard))
        .await
        .unwrap();
    let read = promoted.send(&key, Read).await;
    assert_eq!(read.unwrap(), 2, "the promoted follower's instance has the replicated count");
    let after: Result<u64, SendError> = promoted.send(&key, Inc).await.map_err(SendError::from);
    assert_eq!(after.unwrap(), 3);
    let now = follower.shard_epoch(shard).expect("the promoted follower serves the shard");
    assert!(now.0 > e);
    assert_eq!(
        promoted.send(&key, Fence).await.unwrap(),
        (e, Some(now.0)),
        "the kept replica instance runs under the new epoch, not the one it was created at"
    );
    for n in [follower, bystander] {
        n.shutdown().await;
    }
}

/// Every event a node's hooks were given, in order.
type Seen = Arc<Mutex<Vec<ClusterEvent>>>;

/// The replica hooks, with the nodes they name: a follower is told it follows a shard and who
/// leads it; when the leader is lost the follower is told it leads now, and the node that
/// becomes the new follower is told so with the new leader; a node that leaves is told each
/// shard it no longer follows.
#[actix_rt::test]
async fn replica_and_leadership_hooks_name_the_shard_and_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let seen: Vec<Seen> = (0..3).map(|_| Seen::default()).collect();
    let hooks = seen.clone();
    let nodes = cluster(dir.path(), "replicahooks", 3, 3, move |b, i| {
        let seen = hooks[i].clone();
        b.replica_factor(2).entity::<Tally>().on_event(move |e| {
            seen.lock().unwrap().push(e);
            async {}
        })
    })
    .await
    .expect("three nodes, two copies of each shard");
    let nodes = &nodes;
    let at = |id: clusterfunk::NodeId| nodes.iter().position(|n| n.node_id() == id).expect("one of ours");
    let leader = nodes[0].status().leader.unwrap();
    let shard = (0u32..256)
        .map(clusterfunk::ShardId)
        .find(|s| nodes[0].owner(*s).is_some_and(|o| o.to_string() != leader))
        .expect("a shard owned by a node that does not lead Raft");
    let set = nodes[0].replica_set(shard);
    let (owner, follower) = (at(set.leader.unwrap()), at(set.followers[0]));
    let bystander = (0..3).find(|i| *i != owner && *i != follower).unwrap();
    let wait_for = |i: usize, what: &'static str, pred: Box<dyn Fn(&ClusterEvent) -> bool>| {
        let seen = seen[i].clone();
        async move {
            nodes[i]
                .wait_until(Duration::from_secs(15), what, |_| seen.lock().unwrap().iter().any(&pred))
                .await
                .unwrap_or_else(|e| panic!("{e}: {:?}", seen.lock().unwrap()));
        }
    };
    let owner_id = nodes[owner].node_id();
    wait_for(
        follower,
        "ReplicaAdded naming the leader",
        Box::new(move |e| {
            matches!(e, ClusterEvent::ReplicaAdded { shard: s, leader: Some(l), .. } if *s == shard && *l == owner_id)
        }),
    )
    .await;
    assert!(
        !seen[bystander]
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, ClusterEvent::ReplicaAdded { shard: s, .. } if *s == shard)),
        "only the follower is told it follows the shard"
    );

    // The owner is lost: the follower leads, and the bystander becomes the shard's follower.
    nodes[owner].shutdown().await;
    wait_for(
        follower,
        "ShardLeadershipGained",
        Box::new(move |e| matches!(e, ClusterEvent::ShardLeadershipGained { shard: s, .. } if *s == shard)),
    )
    .await;
    {
        let f = seen[follower].lock().unwrap();
        let assigned = f.iter().position(|e| matches!(e, ClusterEvent::ShardAssigned { shard: s, .. } if *s == shard));
        let gained =
            f.iter().position(|e| matches!(e, ClusterEvent::ShardLeadershipGained { shard: s, .. } if *s == shard));
        assert!(assigned.is_some() && assigned < gained, "ShardAssigned, then ShardLeadershipGained: {f:?}");
    }
    let follower_id = nodes[follower].node_id();
    wait_for(
        bystander,
        "ReplicaAdded naming the promoted leader",
        Box::new(move |e| {
            matches!(e, ClusterEvent::ReplicaAdded { shard: s, leader: Some(l), .. } if *s == shard && *l == follower_id)
        }),
    )
    .await;

    // The new follower leaves: it is told it no longer follows the shard.
    let _ = nodes[bystander].leave(Duration::from_secs(10)).await;
    let removed = seen[bystander]
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, ClusterEvent::ReplicaRemoved { shard: s, .. } if *s == shard));
    assert!(removed, "ReplicaRemoved when leaving: {:?}", seen[bystander].lock().unwrap());
    nodes[follower].shutdown().await;
}

/// An owner that hands its shard to its follower and stays its follower is told, in order,
/// `ShardLeadershipLost`, `ShardUnassigned`, and once the handoff landed `ReplicaAdded` with the
/// new leader; the follower `ShardAssigned` then `ShardLeadershipGained`. Driven by the management API (`PUT /cluster/shards/{shard}` pins
/// the shard to its follower); with two nodes and two copies the old owner must follow it.
#[actix_rt::test]
async fn an_owner_that_stays_a_follower_is_told_it_lost_the_lead() {
    const TOKEN: &str = "hooks-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let seen: Vec<Seen> = (0..2).map(|_| Seen::default()).collect();
    let hooks = seen.clone();
    let nodes = cluster(dir.path(), "leadlost", 2, 1, move |b, i| {
        let seen = hooks[i].clone();
        b.replica_factor(2).dashboard("127.0.0.1:0").management_token(TOKEN).entity::<Tally>().on_event(move |e| {
            seen.lock().unwrap().push(e);
            async {}
        })
    })
    .await
    .expect("two nodes, two copies of each shard");
    let shard = clusterfunk::ShardId(0);
    let set = nodes[0].replica_set(shard);
    let at = |id: clusterfunk::NodeId| nodes.iter().position(|n| n.node_id() == id).expect("one of ours");
    let (owner, follower) = (at(set.leader.unwrap()), at(set.followers[0]));
    let dash = nodes[0].dashboard_addr().expect("a dashboard").to_string();
    let body = format!("{{\"to\": \"{}\"}}", nodes[follower].node_id());
    // Off this thread: the nodes run on it, and the request needs them.
    let put = move || http_with_token(&dash, "PUT", "/cluster/shards/0", &body, Some(TOKEN));
    let (code, answer) = actix_rt::task::spawn_blocking(put).await.unwrap().unwrap();
    assert_eq!(code, 200, "pin shard 0 to its follower: {answer}");

    let position = |i: usize, pred: &dyn Fn(&ClusterEvent) -> bool| seen[i].lock().unwrap().iter().position(pred);
    let lost = |e: &ClusterEvent| matches!(e, ClusterEvent::ShardLeadershipLost { shard: s, .. } if *s == shard);
    let unassigned = |e: &ClusterEvent| matches!(e, ClusterEvent::ShardUnassigned { shard: s, .. } if *s == shard);
    let assigned = |e: &ClusterEvent| matches!(e, ClusterEvent::ShardAssigned { shard: s, .. } if *s == shard);
    let gained = |e: &ClusterEvent| matches!(e, ClusterEvent::ShardLeadershipGained { shard: s, .. } if *s == shard);
    let t = Duration::from_secs(15);
    nodes[owner]
        .wait_until(t, "the old owner told it lost the lead, then unassigned", |_| {
            position(owner, &unassigned).is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", seen[owner].lock().unwrap()));
    let (l, u) = (position(owner, &lost), position(owner, &unassigned));
    assert!(l.is_some() && l < u, "ShardLeadershipLost, then ShardUnassigned: {:?}", seen[owner].lock().unwrap());
    nodes[follower]
        .wait_until(t, "the follower told it leads", |_| position(follower, &gained).is_some())
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", seen[follower].lock().unwrap()));
    let (a, g) = (position(follower, &assigned), position(follower, &gained));
    assert!(a.is_some() && a < g, "ShardAssigned, then ShardLeadershipGained: {:?}", seen[follower].lock().unwrap());
    assert!(position(follower, &lost).is_none(), "the new owner lost nothing");
    let new_leader = nodes[follower].node_id();
    let follows = move |e: &ClusterEvent| matches!(e, ClusterEvent::ReplicaAdded { shard: s, leader: Some(l), .. } if *s == shard && *l == new_leader);
    nodes[owner]
        .wait_until(t, "the old owner follows the shard, told so with its new leader", |_| {
            nodes[owner].is_replica(shard) && position(owner, &follows).is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", seen[owner].lock().unwrap()));
    assert!(u < position(owner, &follows), "ReplicaAdded once the handoff landed");
    for n in &nodes {
        n.shutdown().await;
    }
}

/// What a node declares about itself (endpoints, metadata) reaches every member, typed:
/// `members()`, `owner_node(shard)`; `is_replica` says which node follows a shard; and a
/// non-member `Client` learns the owner's endpoints and metadata with the map.
#[actix_rt::test]
async fn endpoints_and_metadata_reach_every_member_typed() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), "endpoints", 2, 1, |b, i| {
        b.replica_factor(2)
            .entity::<Tally>()
            .endpoint("grpc", format!("10.0.0.{i}:9000"))
            .metadata("rack", format!("r{i}"))
    })
    .await
    .expect("two nodes");
    let declared = |m: &clusterfunk::Member, i: usize| {
        m.endpoint("grpc") == Some(format!("10.0.0.{i}:9000").as_str())
            && m.metadata.get("rack").map(String::as_str) == Some(format!("r{i}").as_str())
    };
    for n in &nodes {
        n.wait_until(Duration::from_secs(15), "every member's endpoints", |_| {
            let members = n.members();
            members.len() == 2 && (0..2).all(|i| members.iter().any(|m| m.id == nodes[i].node_id() && declared(m, i)))
        })
        .await
        .unwrap();
        let status = n.status();
        assert!(
            status.members.iter().all(|m| m.endpoints.contains_key("grpc")),
            "and in the status: {:?}",
            status.members
        );
    }
    let shard = clusterfunk::ShardId(0);
    let owner = nodes[0].owner_node(shard).expect("an owner");
    let i = nodes.iter().position(|n| n.node_id() == owner.id).unwrap();
    assert!(declared(&owner, i), "{owner:?}");
    let role = if i == 0 { clusterfunk::Role::Voter } else { clusterfunk::Role::Learner };
    assert_eq!(owner.role, role, "one voter: the first node");
    assert!(!nodes[i].is_replica(shard) && nodes[1 - i].is_replica(shard), "the other node follows the shard");

    // A non-member client is told the same: where to call a shard's owner over its own protocol.
    let me = nodes[0].member(nodes[0].node_id()).expect("itself");
    let port = me.addrs.iter().find_map(|a| a.strip_prefix("/ip4/127.0.0.1/tcp/")).expect("a loopback address");
    let client = clusterfunk::Client::builder()
        .name("endpoints")
        .env("test")
        .seed(format!("127.0.0.1:{port}"))
        .entity::<Tally>()
        .connect()
        .await
        .expect("a client");
    let want = format!("10.0.0.{i}:9000");
    let t0 = std::time::Instant::now();
    while client.owner(shard).and_then(|o| client.endpoint(o, "grpc")).as_deref() != Some(want.as_str()) {
        assert!(t0.elapsed() < Duration::from_secs(15), "the client never learnt the owner's grpc endpoint");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.metadata(owner.id).get("rack").map(String::as_str), Some(format!("r{i}").as_str()));
    assert_eq!(client.endpoint(owner.id, "nope"), None);
    drop(client);
    for n in &nodes {
        n.shutdown().await;
    }
}
