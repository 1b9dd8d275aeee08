//! Bad input on the proxy path: an unknown message type and an oversized message get a typed
//! error at the sender and a counted refusal (or nothing sent); the connection and nodes go on.

use std::time::Duration;

use actix::prelude::*;
use clusterfunk::{Cluster, EntityInfo, Refusal, RouteError, SendError, ShardedActor};
use serde::{Deserialize, Serialize};

struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

impl ShardedActor for Echo {
    type Key = u64;
    type Messages = (Bytes, OnlyOnA);
    fn from_key(_: &u64, _: EntityInfo) -> Self {
        Echo
    }
}

/// `Echo` as an older build has it, under the same wire name: without `OnlyOnA`.
struct OldEcho;

impl Actor for OldEcho {
    type Context = Context<Self>;
}

impl ShardedActor for OldEcho {
    type Key = u64;
    type Messages = (Bytes,);
    fn from_key(_: &u64, _: EntityInfo) -> Self {
        OldEcho
    }
}

impl Handler<Bytes> for OldEcho {
    type Result = usize;
    fn handle(&mut self, Bytes(b): Bytes, _: &mut Context<Self>) -> usize {
        b.len()
    }
}

#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "usize")]
struct Bytes(Vec<u8>);

impl Handler<Bytes> for Echo {
    type Result = usize;
    fn handle(&mut self, Bytes(b): Bytes, _: &mut Context<Self>) -> usize {
        b.len()
    }
}

#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
struct OnlyOnA;

impl Handler<OnlyOnA> for Echo {
    type Result = ();
    fn handle(&mut self, _: OnlyOnA, _: &mut Context<Self>) {}
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[actix_rt::test]
async fn unknown_and_oversized_messages_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let seed = format!("127.0.0.1:{}", free_port());
    let base = |d: &str, listen: String| {
        Cluster::builder()
            .name("badmsg")
            .env("test")
            .data_dir(dir.path().join(d))
            .listen(listen)
            .shards(16)
            .voters(1)
            .mdns(false)
    };
    // a accepts OnlyOnA from other nodes; b, an older build of the entity, does not know it.
    let a = base("a", seed.clone()).bootstrap(true).entity::<Echo>().build().unwrap().start().await.unwrap();
    let b = base("b", format!("127.0.0.1:{}", free_port()))
        .join(seed)
        .entity_with::<OldEcho>(|e| e.named("Echo"))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let both = |s: &clusterfunk::ClusterStatus| s.shard_map.owners.len() == 2 && s.shard_map.unassigned == 0;
    a.wait_until(Duration::from_secs(30), "both own shards", both).await.unwrap();
    b.wait_until(Duration::from_secs(30), "b has the map", |s| {
        both(s) && s.shard_map.epoch == a.status().shard_map.epoch
    })
    .await
    .unwrap();
    let key_on_b = (0u64..).find(|k| a.owner(a.shard_for(k).unwrap()) == Some(b.node_id())).unwrap();
    let echo = a.sharded::<Echo>();

    let failed_before = b.status().traffic.failed;
    let err = echo.send(&key_on_b, OnlyOnA).await.unwrap_err();
    assert!(matches!(err.error(), SendError::Route(RouteError::Refused(Refusal::UnknownMessage(_)))), "{err:?}");
    assert!(err.unsent().is_some(), "refused before any handler ran: the message comes back");
    assert_eq!(b.status().traffic.failed, failed_before + 1, "the receiver counted the refusal");

    let err = echo.send(&key_on_b, Bytes(vec![7; 5 << 20])).await.unwrap_err();
    assert!(matches!(err.error(), SendError::Route(RouteError::TooLarge { .. })), "{err:?}");
    assert!(err.into_unsent().is_some(), "never sent: the message comes back");

    // The link and both nodes go on.
    assert_eq!(echo.send(&key_on_b, Bytes(vec![1, 2, 3])).await.unwrap(), 3);
    assert_eq!(b.status().traffic.malformed, 0);
    a.shutdown().await;
    b.shutdown().await;
}
