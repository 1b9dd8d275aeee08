//! A node key that survived next to a lost Raft store would bring back a node id without the
//! votes it cast (it could vote twice in one term), and a store without its key would become a
//! new node on another's votes: the node refuses to start in either case and says how out.

mod common;

use clusterfunk_actors::consensus::store::Store;
use clusterfunk_actors::node::{Node, StartError};
use clusterfunk_actors::types::NodeId;

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

    // An emptied store (a crash, a repaired file system): as lost, and it stays unwritten.
    std::fs::write(dir.path().join("raft.redb"), b"").unwrap();
    let mut cfg = common::node_config(dir.path(), "lost");
    cfg.bootstrap = false;
    let err = Node::start(cfg).await.err().expect("refused");
    assert!(matches!(err, StartError::LostStore(_)), "{err:?}");
    assert_eq!(std::fs::metadata(dir.path().join("raft.redb")).unwrap().len(), 0);

    // The other way round: a store with a vote in it, and no key.
    let other = tempfile::tempdir().unwrap();
    let cluster = common::node_config(other.path(), "lost").cluster;
    {
        use openraft::storage::RaftLogStorage;
        let store = Store::open(other.path(), &cluster).expect("a store");
        store.log_store().save_vote(&openraft::Vote::new(3, NodeId(1))).await.expect("a vote saved");
    }
    let mut cfg = common::node_config(other.path(), "lost");
    cfg.bootstrap = false;
    let err = Node::start(cfg).await.err().expect("refused");
    assert!(matches!(err, StartError::LostKey(_)), "{err:?}");
    assert!(err.to_string().contains("node.key"), "{err}");
    assert!(!other.path().join("node.key").exists(), "no new identity was made on those votes");

    // A first start in an empty directory is not a lost store.
    let fresh = tempfile::tempdir().unwrap();
    let n = Node::start(common::node_config(fresh.path(), "lost")).await.expect("a fresh data dir starts");
    n.shutdown().await;
}
