//! Entity lifecycle on one node: a panic fails only that call and the next message gets a fresh
//! instance; an entity that stops itself is re-created; registering a type twice is refused.

use std::time::Duration;

use actix::prelude::*;
use clusterfunk::{Cluster, ConfigError, EntityInfo, SendError, ShardedActor};
use serde::{Deserialize, Serialize};

struct Fragile(u64);

impl Actor for Fragile {
    type Context = Context<Self>;
}

impl ShardedActor for Fragile {
    type Key = String;
    type Messages = (Inc, Boom, Passivate, Hold);
    fn from_key(_: &String, _: EntityInfo) -> Self {
        Fragile(0)
    }
}

#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "u64")]
struct Inc;

impl Handler<Inc> for Fragile {
    type Result = u64;
    fn handle(&mut self, _: Inc, _: &mut Context<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
struct Boom;

impl Handler<Boom> for Fragile {
    type Result = ();
    fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
        panic!("entity panics on purpose (test)");
    }
}

#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
struct Passivate;

impl Handler<Passivate> for Fragile {
    type Result = ();
    fn handle(&mut self, _: Passivate, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Waits 100 ms inside the context (an `AtomicResponse`), then sets the count to 100: no other
/// message may run meanwhile.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "u64")]
struct Hold;

impl Handler<Hold> for Fragile {
    type Result = AtomicResponse<Self, u64>;
    fn handle(&mut self, _: Hold, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(
            actix::fut::wrap_future::<_, Self>(tokio::time::sleep(Duration::from_millis(100))).map(|_, act, _| {
                act.0 = 100;
                act.0
            }),
        ))
    }
}

fn builder(dir: &std::path::Path) -> clusterfunk::Builder {
    Cluster::builder()
        .name("lifecycle")
        .env("test")
        .data_dir(dir)
        .listen("127.0.0.1:0")
        .shards(8)
        .voters(1)
        .mdns(false)
        .bootstrap(true)
}

/// A one-node cluster hosting `Fragile`, once it has a complete map.
async fn start(dir: &std::path::Path) -> Cluster {
    let c = builder(dir).entity::<Fragile>().build().unwrap().start().await.unwrap();
    c.wait_until(Duration::from_secs(30), "a complete map", |s| s.shard_map.epoch > 0 && s.shard_map.unassigned == 0)
        .await
        .unwrap();
    c
}

#[actix_rt::test]
async fn panic_fails_one_call_and_the_next_gets_a_fresh_instance() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let f = c.sharded::<Fragile>();
    let k = "k".to_string();
    assert_eq!(f.send(&k, Inc).await.unwrap(), 1);
    assert_eq!(f.send(&k, Inc).await.unwrap(), 2);
    let boom = f.send(&k, Boom).await.unwrap_err();
    assert!(matches!(boom.error(), SendError::EntityFailed));
    assert!(boom.unsent().is_none(), "a message whose handler ran is not handed back");
    assert_eq!(f.send(&k, Inc).await.unwrap(), 1, "a fresh instance after the panic");
    f.send(&k, Passivate).await.unwrap();
    // A message reaching the old mailbox while the instance finishes stopping fails with
    // EntityFailed (documented); a few at most, then a fresh instance answers.
    let mut failed = 0;
    let after = loop {
        match f.send(&k, Inc).await.map_err(SendError::from) {
            Ok(v) => break v,
            Err(SendError::EntityFailed) if failed < 3 => failed += 1,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(after, 1, "re-created after stopping itself");
    assert!(c.status().traffic.activations >= 3);
    c.shutdown().await;
}

#[actix_rt::test]
async fn a_waiting_handler_holds_back_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let c = builder(dir.path()).entity::<Fragile>().build().unwrap().start().await.unwrap();
    c.wait_until(Duration::from_secs(30), "a complete map", |s| s.shard_map.epoch > 0 && s.shard_map.unassigned == 0)
        .await
        .unwrap();
    let f = c.sharded::<Fragile>();
    let k = "w".to_string();
    let (hold, inc) = futures::join!(f.send(&k, Hold), f.send(&k, Inc));
    assert_eq!(hold.unwrap(), 100);
    assert_eq!(inc.unwrap(), 101, "the next message ran only after the atomic handler finished");
    c.shutdown().await;
}

#[actix_rt::test]
async fn a_per_call_timeout_bounds_the_send_and_tell_waits_for_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let f = c.sharded::<Fragile>();
    let k = "t".to_string();
    // Hold takes 100 ms: a 20 ms deadline ends the send with Timeout, and the message, queued to
    // the entity and maybe handled, is not handed back.
    let late = f.send_timeout(&k, Hold, Duration::from_millis(20)).await.unwrap_err();
    assert!(matches!(late.error(), SendError::Route(clusterfunk::RouteError::Timeout { .. })), "{late}");
    assert!(late.unsent().is_none());
    // tell returns once the handler ran: the next answer counts it.
    f.tell(&k, Inc).await.unwrap();
    assert_eq!(f.send_timeout(&k, Inc, Duration::from_secs(5)).await.unwrap(), 102, "Hold set 100, then two Incs");
    c.shutdown().await;
}

#[test]
fn registering_a_type_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = builder(dir.path()).entity::<Fragile>().entity::<Fragile>().build().unwrap_err();
    assert!(matches!(err, ConfigError::DuplicateEntity(name) if name.ends_with("Fragile")), "{err}");
    // Under another wire name it is still one type: two hosts would make one key live twice.
    let err = builder(dir.path())
        .entity::<Fragile>()
        .entity_with::<Fragile>(|e| e.named("fragile.again"))
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::DuplicateEntity(name) if name.ends_with("Fragile")), "{err}");
}

/// An entity with two message types named `Inc` (one in another module): the same default
/// wire name.
struct Twin(u64);

impl Actor for Twin {
    type Context = Context<Self>;
}

impl ShardedActor for Twin {
    type Key = String;
    type Messages = (Inc, other::Inc);
    fn from_key(_: &String, _: EntityInfo) -> Self {
        Twin(0)
    }
}

impl Handler<Inc> for Twin {
    type Result = u64;
    fn handle(&mut self, _: Inc, _: &mut Context<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

mod other {
    use actix::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Message, Serialize, Deserialize)]
    #[rtype(result = "u64")]
    pub struct Inc;

    impl Handler<Inc> for super::Twin {
        type Result = u64;
        fn handle(&mut self, _: Inc, _: &mut Context<Self>) -> u64 {
            self.0 += 10;
            self.0
        }
    }
}

#[test]
fn two_types_under_one_wire_name_are_refused_until_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = builder(dir.path()).entity::<Twin>().build().unwrap_err();
    assert!(matches!(err, ConfigError::WireIdCollision { .. }), "{err}");
    assert!(err.to_string().contains("message_named"), "the error says how: {err}");
    builder(dir.path())
        .entity_with::<Twin>(|e| e.message_named::<other::Inc, _>("other.inc"))
        .build()
        .expect("named apart, both are accepted");
}

#[actix::test]
async fn a_message_named_by_its_registration_is_delivered_under_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let c = builder(dir.path())
        .entity_with::<Twin>(|e| e.named("lifecycle.twin").message_named::<other::Inc, _>("other.inc"))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let f = c.sharded::<Twin>();
    c.wait_until(Duration::from_secs(10), "a shard map", |s| s.shard_map.epoch > 0).await.unwrap();
    assert_eq!(f.send(&"k".to_string(), other::Inc).await.unwrap(), 10);
    assert_eq!(f.send(&"k".to_string(), Inc).await.unwrap(), 11, "the other Inc, under its default name");
    c.shutdown().await;
}
