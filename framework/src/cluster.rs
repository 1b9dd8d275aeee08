//! The running cluster member and what a service asks of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clusterfunk_actors::node::{Node, StartError};
use clusterfunk_actors::shard::{shard_for, ShardKey, ShardMap};
use clusterfunk_actors::types::{ClusterName, NodeId, ShardId};
use tracing::info;

use crate::config::{Builder, ClusterConfig, ConfigError};
use crate::status::{self, ClusterStatus};

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The node could not start (data directory, listen address, Raft).
    #[error("cannot start the node: {0}")]
    Start(#[from] StartError),
    /// The dashboard address could not be bound.
    #[error("dashboard: cannot listen on {addr}: {source}")]
    Dashboard {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

pub(crate) struct Inner {
    pub(crate) node: Node,
    pub(crate) cluster: ClusterName,
}

impl Inner {
    pub(crate) fn status(&self) -> ClusterStatus {
        status::collect(&self.node, &self.cluster)
    }
}

/// A running member of a cluster: the handle `main` keeps.
///
/// ```no_run
/// # async fn run() -> Result<(), clusterfunk::Error> {
/// let cluster = clusterfunk::Cluster::builder()
///     .name("shop")
///     .env("dev")
///     .bootstrap(true)
///     .data_dir("/var/lib/shop")
///     .dashboard("127.0.0.1:8080")
///     .build()?
///     .start()
///     .await?;
/// if let Some(shard) = cluster.shard_for("user-42") {
///     println!("user-42 lives in shard {shard}, owned by {:?}", cluster.owner(shard));
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    dashboard: Option<SocketAddr>,
}

impl Cluster {
    /// A builder with every setting at its default.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node.id
    }

    /// The current committed shard map: an immutable snapshot, swapped whole on change.
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.inner.node.map.borrow().clone()
    }

    /// The shard `key` maps to (xxh3 of its bytes modulo the shard count), or `None` until this
    /// node has the cluster's state (the shard count is the cluster's, fixed at its creation).
    pub fn shard_for<K: ShardKey + ?Sized>(&self, key: &K) -> Option<ShardId> {
        let n = self.inner.node.map.borrow().shard_count();
        (n > 0).then(|| shard_for(key, n))
    }

    /// The node owning `shard`, if it has one.
    pub fn owner(&self, shard: ShardId) -> Option<NodeId> {
        self.inner.node.map.borrow().owner(shard)
    }

    /// This node's view of the cluster (what `GET /api/cluster` serves).
    pub fn status(&self) -> ClusterStatus {
        self.inner.status()
    }

    /// The address the dashboard is bound to, if it runs.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.dashboard
    }

    /// Waits until `ready(&status)` holds, checking whenever the shard map, membership view or
    /// Raft metrics change, for at most `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &'static str,
        mut ready: impl FnMut(&ClusterStatus) -> bool,
    ) -> Result<ClusterStatus, Error> {
        let node = &self.inner.node;
        let (mut map, mut view, mut metrics) = (node.map.clone(), node.view.clone(), node.raft.metrics());
        let wait = async {
            loop {
                let s = self.status();
                if ready(&s) {
                    return s;
                }
                tokio::select! {
                    _ = map.changed() => {}
                    _ = view.changed() => {}
                    _ = metrics.changed() => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| Error::Timeout(timeout, what))
    }

    /// Stops this node: Raft, the transport and the dashboard.
    pub async fn shutdown(&self) {
        self.inner.node.shutdown().await;
    }
}

impl ClusterConfig {
    /// Starts the node (and its dashboard, if configured). Must run inside an actix `System`
    /// (`#[actix::main]` or `actix_rt::System::new().block_on(..)`).
    pub async fn start(self) -> Result<Cluster, Error> {
        let node = Node::start(self.node.clone()).await?;
        let inner = Arc::new(Inner { node, cluster: self.node.cluster.clone() });
        let mut dashboard = None;
        if let Some(addr) = self.dashboard {
            let (server, bound) =
                crate::dashboard::serve(addr, inner.clone()).map_err(|source| Error::Dashboard { addr, source })?;
            actix_rt::spawn(server);
            info!(url = %format!("http://{bound}/"), "dashboard");
            dashboard = Some(bound);
        }
        Ok(Cluster { inner, dashboard })
    }
}
