//! The one shard map every reader takes (docs/architecture.md §6): the map inside the applied
//! state. The state machine revokes moved shards in the serving table, then publishes the applied
//! state (map included) in one step ([`super::StateMachine`]); the map is shared copy-on-write
//! (`Arc`), so a reader costs one reference count and no entry copies the map unless it changes it.

use std::sync::Arc;

use tokio::sync::watch;

use super::AppliedState;
use crate::shard::ShardMap;

/// A view of the committed shard map, changing with the applied state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MapView {
    applied: watch::Receiver<Arc<AppliedState>>,
    seen: Option<Arc<ShardMap>>,
}

/// The applied state is gone (the node stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node stopped")]
pub struct Closed;

impl MapView {
    /// A view over the applied-state watch.
    pub fn new(applied: watch::Receiver<Arc<AppliedState>>) -> MapView {
        MapView { applied, seen: None }
    }

    /// The current map.
    pub fn borrow(&self) -> Arc<ShardMap> {
        self.applied.borrow().state.shard_map.clone()
    }

    /// The current map, remembered as seen by [`Self::changed`].
    pub fn borrow_and_update(&mut self) -> Arc<ShardMap> {
        let map = self.applied.borrow_and_update().state.shard_map.clone();
        self.seen = Some(map.clone());
        map
    }

    /// Waits until the map differs from the one last seen through this view (returns at once
    /// if none was seen yet). Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            let cur = self.applied.borrow_and_update().state.shard_map.clone();
            if self.seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &cur)) {
                self.seen = Some(cur);
                return Ok(());
            }
            self.applied.changed().await.map_err(|_| Closed)?;
        }
    }

    /// Waits until `ready(map)` holds and returns that map. Cancel-safe.
    pub async fn wait_for(&mut self, mut ready: impl FnMut(&ShardMap) -> bool) -> Result<Arc<ShardMap>, Closed> {
        loop {
            let cur = self.applied.borrow_and_update().state.shard_map.clone();
            if ready(&cur) {
                self.seen = Some(cur.clone());
                return Ok(cur);
            }
            self.applied.changed().await.map_err(|_| Closed)?;
        }
    }
}
