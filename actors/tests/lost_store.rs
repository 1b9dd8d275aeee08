//! A node key that survived next to a lost Raft store would bring back a node id without the
//! votes it cast (it could vote twice in one term): the node refuses to start and says how out.

mod common;

use clusterfunk_actors::node::{Node, StartError};

#[actix_rt::test]
async fn a_key_without_its_store_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(common::node_config(dir.path(), "lost")).await.expect("first start");
    let id = node.id;
    node.shutdown().await;
    std::fs::remove_file(dir.path().join("raft.redb")).expect("the store file is where the node keeps it");

    let mut cfg = common::node_config(dir.path(), "lost");
    cfg.bootstrap = false;
    let err = match Node::start(cfg).await {
        Ok(n) => panic!("node {} started on a lost store (it was {id})", n.id),
        Err(e) => e,
    };
    assert!(matches!(err, StartError::LostStore(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("raft.redb") && msg.contains("new data_dir"), "the error says what and how out: {msg}");
    assert!(!dir.path().join("raft.redb").exists(), "nothing was recreated");

    // A first start in an empty directory is not a lost store.
    let fresh = tempfile::tempdir().unwrap();
    let n = Node::start(common::node_config(fresh.path(), "lost")).await.expect("a fresh data dir starts");
    n.shutdown().await;
}
