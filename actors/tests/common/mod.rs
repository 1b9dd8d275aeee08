//! Shared by the actors crate's integration tests.

use clusterfunk_actors::node::Config;
use clusterfunk_actors::types::ClusterName;

/// A single-node bootstrap config on loopback, mDNS off.
pub fn node_config(dir: &std::path::Path, key: &str) -> Config {
    Config {
        cluster: ClusterName::new(key, "test"),
        data_dir: dir.to_path_buf(),
        listen: "/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr"),
        seeds: vec![],
        discovery: Default::default(),
        bootstrap: true,
        shards: 8,
        replica_factor: 1,
        voters: 1,
        auto_join: true,
        manual_rebalance: false,
        shard_weights: vec![],
        members: vec![],
        management_token: None,
        weight: 1,
        workers: 1,
        static_workers: None,
        name: None,
        zone: None,
        dashboard: None,
        endpoints: Default::default(),
        metadata: Default::default(),
        advertise: None,
        wire_version: None,
        secret: None,
        mdns: false,
        membership: Default::default(),
        raft: Default::default(),
        shard_manager: Default::default(),
        lease: Default::default(),
        journal: None,
        hook_budget: std::time::Duration::from_secs(2),
        faults: None,
        fail_disk_after: None,
        disk_stall_trigger: None,
        lease_clock_rate: None,
    }
}

/// The node's first listen address, once it has one.
#[allow(dead_code)] // not every test binary uses it
pub async fn listen_addr(node: &clusterfunk_actors::node::Node) -> clusterfunk_actors::Multiaddr {
    let mut view = node.view.clone();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Some(a) = view.borrow().members[&node.id].meta.addrs.first() {
                return a.parse().expect("own address parses");
            }
            view.changed().await.expect("membership runs");
        }
    })
    .await
    .expect("node listens")
}
