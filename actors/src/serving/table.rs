//! The serving table: what this node serves right now, its lease and the shards it activated,
//! each with its epoch (docs/architecture.md §7.3). Read on every message without locks; written by
//! the state machine (revocations, before an applied state is published) and the serving shell
//! (activations, deactivations).
//!
//! The journal (optional) records every activation, deactivation, executed message and
//! stale-epoch refusal: an activation is written *before* the shard serves, a deactivation
//! *after* it stopped (for a lease that ran out, dated to the instant it ran out), and a `serve`
//! when a message passes the check at execution, so the checkers see service itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::journal::{Event, Journal, Record};
use crate::lease::Clock;
use crate::shard::ShardMap;
use crate::types::{Epoch, NodeId, Refusal, ShardId};

/// The serving table of one node.
pub struct Ownership {
    local: NodeId,
    clock: Arc<dyn Clock>,
    base: Instant,
    /// Nanoseconds after `base` until which the lease lets this node serve; 0 = no lease.
    lease_until: AtomicU64,
    /// How many times the lease ran out or was dropped before it was renewed: a handler that
    /// saw the same count at its start and its end ran under one continuous lease.
    lapses: AtomicU64,
    /// Per shard: the epoch it is active at here, 0 = not active.
    active: OnceLock<Box<[AtomicU64]>>,
    /// Per shard: the highest epoch seen (map or message).
    seen: OnceLock<Box<[AtomicU64]>>,
    /// Per shard: the highest handoff epoch this node confirmed (`Released`): a handler admitted
    /// under an older epoch that still runs then (abandoned after the force-stop time) is not
    /// acknowledged.
    released: OnceLock<Box<[AtomicU64]>>,
    journal: Option<Arc<dyn Journal>>,
    rejected: AtomicU64,
    /// Messages that showed this node serving a shard its own applied map gives another node
    /// at a newer epoch (`Ownership::check`): two owners. Must stay 0.
    double_owner: AtomicU64,
    /// The map of the last applied Raft entry; revocations (on apply) and activations take
    /// this lock, so a shard is never activated from a map older than the applied one.
    applied_map: Mutex<Option<Arc<ShardMap>>>,
}

/// Counters of the serving table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnershipStats {
    /// Messages refused for a stale epoch.
    pub rejected_stale: u64,
    /// Shards active now.
    pub active: u64,
}

impl Ownership {
    /// A table for node `local`, recording to `journal` if given.
    pub fn new(local: NodeId, clock: Arc<dyn Clock>, journal: Option<Arc<dyn Journal>>) -> Ownership {
        let base = clock.now();
        Ownership {
            local,
            clock,
            base,
            lease_until: AtomicU64::new(0),
            lapses: AtomicU64::new(0),
            active: OnceLock::new(),
            seen: OnceLock::new(),
            released: OnceLock::new(),
            journal,
            rejected: AtomicU64::new(0),
            double_owner: AtomicU64::new(0),
            applied_map: Mutex::new(None),
        }
    }

    /// This node.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The clock leases are measured on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn slots(cell: &OnceLock<Box<[AtomicU64]>>, shards: u32) -> &[AtomicU64] {
        cell.get_or_init(|| (0..shards).map(|_| AtomicU64::new(0)).collect())
    }

    /// Sizes the table for the cluster's shard count (fixed for its lifetime).
    pub fn init(&self, shards: u32) {
        Self::slots(&self.active, shards);
        Self::slots(&self.seen, shards);
        Self::slots(&self.released, shards);
    }

    /// This node is about to confirm the handoff of `shard` at `epoch`: from now on an answer
    /// for a message admitted under an older epoch is withheld ([`Self::may_answer`]).
    pub fn mark_released(&self, shard: ShardId, epoch: Epoch) {
        if let Some(slot) = self.released.get().and_then(|r| r.get(shard.0 as usize)) {
            slot.fetch_max(epoch.0, Ordering::AcqRel);
        }
    }

    /// Whether a handler of `shard` admitted under `admitted` with lease token `token` may be
    /// acknowledged now: the lease never ran out since (no takeover by the lease rule can have
    /// happened) and this node has not confirmed a handoff of the shard since (no planned move
    /// can have completed: that happens only when a stop was abandoned after the force-stop time).
    pub fn may_answer(&self, shard: ShardId, admitted: Epoch, token: u64) -> bool {
        let released =
            self.released.get().and_then(|r| r.get(shard.0 as usize)).map_or(0, |a| a.load(Ordering::Acquire));
        self.lease_held_since(token) && released <= admitted.0
    }

    /// Sets the end of the usable lease (`None`: no lease).
    pub fn set_lease(&self, until: Option<Instant>) {
        let v = until.map_or(0, |u| u.saturating_duration_since(self.base).as_nanos().max(1) as u64);
        let now = self.clock.now().saturating_duration_since(self.base).as_nanos() as u64;
        let prev = self.lease_until.load(Ordering::Acquire);
        // Counted before the new end is published: a reader that sees the renewed lease also
        // sees that it was not continuous. (One writer: the lease keeper.)
        if prev != 0 && (v == 0 || prev <= now) {
            self.lapses.fetch_add(1, Ordering::AcqRel);
        }
        self.lease_until.store(v, Ordering::Release);
    }

    /// A token for [`Self::lease_held_since`]: read it when a message is admitted.
    pub fn lease_token(&self) -> u64 {
        self.lapses.load(Ordering::Acquire)
    }

    /// Whether the lease is valid now and never ran out since `token` was read: then no other
    /// node can have been given this node's shards meanwhile (a takeover waits for the lease to
    /// run out), and a handler that ran in between may be acknowledged.
    pub fn lease_held_since(&self, token: u64) -> bool {
        self.lease_valid() && self.lapses.load(Ordering::Acquire) == token
    }

    /// Until when the lease lets this node serve.
    pub fn lease_until(&self) -> Option<Instant> {
        match self.lease_until.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.base + std::time::Duration::from_nanos(n)),
        }
    }

    /// Whether the lease is valid now.
    pub fn lease_valid(&self) -> bool {
        self.lease_until().is_some_and(|u| self.clock.now() < u)
    }

    /// The epoch `shard` is active at on this node, if it is.
    pub fn active_epoch(&self, shard: ShardId) -> Option<Epoch> {
        let e = self.active.get()?.get(shard.0 as usize)?.load(Ordering::Acquire);
        (e != 0).then_some(Epoch(e))
    }

    /// Whether this node may serve a message for `shard` stamped with `epoch` (`Epoch(0)`: not
    /// stamped, a local call): the lease is valid, the shard is active here, and `epoch` is not
    /// older than the highest epoch seen for it. Returns the active epoch. `map` is read only to
    /// name the owner in a refusal (an accepted message costs no map read).
    pub fn check(&self, shard: ShardId, epoch: Epoch, map: impl FnOnce() -> Arc<ShardMap>) -> Result<Epoch, Refusal> {
        let not_owner =
            |map: Arc<ShardMap>| Refusal::NotOwner { shard, epoch: map.shard_epoch(shard), owner: map.owner(shard) };
        // A stamp older than the highest epoch seen here is stale whatever else holds. (The
        // shard comes off the network: out of range is simply "never seen".)
        if epoch.0 != 0 {
            let seen = self.seen.get().and_then(|s| s.get(shard.0 as usize)).map_or(0, |a| a.load(Ordering::Acquire));
            if epoch.0 < seen {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.record(Event::RejectStale, shard, Epoch(seen), Some(epoch), None);
                let owner = if self.active_epoch(shard).is_some() { Some(self.local) } else { map().owner(shard) };
                return Err(Refusal::NotOwner { shard, epoch: Epoch(seen), owner });
            }
        }
        match self.serving_epoch(shard) {
            Some(active) if epoch.0 <= active.0 => Ok(active),
            // The sender knows of a newer assignment than the one active here: it retries. If
            // this node's own map already gives the shard to another node at that epoch while
            // the shard is still live here, two nodes serve it. (The map is published after the
            // revocation it caused, so the second look at the table sees that revocation.)
            Some(active) => {
                let map = map();
                let moved = map.shard_epoch(shard).0 >= epoch.0 && map.owner(shard) != Some(self.local);
                if moved && self.serving_epoch(shard) == Some(active) {
                    self.double_owner.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        %shard,
                        served_at = active.0,
                        stamped = epoch.0,
                        owner = ?map.owner(shard),
                        "double owner detected: this node serves a shard its map gives another node"
                    );
                }
                Err(not_owner(map))
            }
            None => Err(not_owner(map())),
        }
    }

    /// How many times [`Self::check`] found this node serving a shard its own map gives another
    /// node (`double_owner_detected`): 0 unless the safety rule broke.
    pub fn double_owner_detected(&self) -> u64 {
        self.double_owner.load(Ordering::Relaxed)
    }

    /// Whether this node may take a replica message (from the shard's leader to its followers)
    /// for `shard` stamped with `epoch`: the epoch is not older than the highest seen for the
    /// shard (a deposed leader is refused with the newer epoch), this node's lease is valid, and
    /// its applied map makes it a follower of `shard` at exactly `epoch` (a sender with an older
    /// or newer map is told what this node knows, and may retry). Raises the highest epoch seen.
    pub fn check_replica(&self, shard: ShardId, epoch: Epoch) -> Result<(), Refusal> {
        let map = self.applied_map.lock().expect("applied map lock is never poisoned").clone();
        let Some(map) = map.filter(|m| shard.0 < m.shard_count()) else {
            return Err(Refusal::NotOwner { shard, epoch: Epoch(0), owner: None });
        };
        let seen = Self::slots(&self.seen, map.shard_count())[shard.0 as usize].load(Ordering::Acquire);
        if epoch.0 < seen {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            self.record(Event::RejectStale, shard, Epoch(seen), Some(epoch), None);
            return Err(Refusal::NotOwner { shard, epoch: Epoch(seen), owner: map.owner(shard) });
        }
        let follower = map.shard_epoch(shard) == epoch && map.replicas(shard).contains(&self.local);
        if !follower || !self.lease_valid() {
            return Err(Refusal::NotOwner { shard, epoch: map.shard_epoch(shard), owner: map.owner(shard) });
        }
        Self::slots(&self.seen, map.shard_count())[shard.0 as usize].fetch_max(epoch.0, Ordering::AcqRel);
        Ok(())
    }

    /// The epoch `shard` is served at here now: the lease is valid and the shard active. The
    /// lease is read first: a lease that needs log index X is published after the entries up to
    /// X were applied and revoked what they took away ([`Self::revoke`]), so the active table
    /// read next is at least that new.
    #[inline]
    pub fn serving_epoch(&self, shard: ShardId) -> Option<Epoch> {
        if !self.lease_valid() {
            return None;
        }
        self.active_epoch(shard)
    }

    /// Called by the state machine with every applied map *before* the applied state is
    /// published: stops serving (journal `deactivate`) every active shard the map no longer gives
    /// this node at the epoch it is active at, and remembers the map for [`Self::activate_if_owned`].
    pub fn revoke(&self, map: &Arc<ShardMap>) {
        let mut cur = self.applied_map.lock().expect("applied map lock is never poisoned");
        if cur.as_ref().is_some_and(|m| m.epoch() == map.epoch() && m.shard_count() == map.shard_count()) {
            return;
        }
        if map.shard_count() > 0 {
            self.init(map.shard_count());
        }
        if let Some(active) = self.active.get() {
            for (i, slot) in active.iter().enumerate() {
                let e = slot.load(Ordering::Acquire);
                let shard = ShardId(i as u32);
                if e != 0 && (map.owner(shard) != Some(self.local) || map.shard_epoch(shard).0 != e) {
                    slot.store(0, Ordering::Release);
                    self.record(Event::Deactivate, shard, Epoch(e), None, None);
                }
            }
        }
        *cur = Some(map.clone());
    }

    /// Activates `shard` at `epoch` only if the lease is valid and the latest applied map gives
    /// it to this node at that epoch (journal first, then serving); returns whether it did.
    pub fn activate_if_owned(&self, shard: ShardId, epoch: Epoch) -> bool {
        if !self.lease_valid() {
            return false;
        }
        // Under the applied-map lock: a revocation cannot slip between the check and the store.
        let cur = self.applied_map.lock().expect("applied map lock is never poisoned");
        let Some(map) = cur.as_ref().filter(|m| m.owner(shard) == Some(self.local) && m.shard_epoch(shard) == epoch)
        else {
            return false;
        };
        let shards = map.shard_count();
        self.record(Event::Activate, shard, epoch, None, None);
        Self::slots(&self.seen, shards)[shard.0 as usize].fetch_max(epoch.0, Ordering::AcqRel);
        Self::slots(&self.active, shards)[shard.0 as usize].store(epoch.0, Ordering::Release);
        true
    }

    /// Stops serving `shard` (serving first, then the journal); `at` is when serving really
    /// ended if that was earlier (a lease that ran out).
    pub fn deactivate(&self, shard: ShardId, at: Option<Instant>) {
        let Some(slot) = self.active.get().and_then(|a| a.get(shard.0 as usize)) else { return };
        let prev = slot.swap(0, Ordering::AcqRel);
        if prev != 0 {
            self.record(Event::Deactivate, shard, Epoch(prev), None, at);
        }
    }

    /// The check **at execution** (docs/architecture.md §7.3): a message admitted for `shard` while
    /// it was served here at `admitted` runs only if the shard is still served here at that
    /// epoch (lease valid, shard active) at the moment its handler is about to run. Journals a
    /// `serve` when it passes; a refusal names the owner the applied map knows.
    pub fn fence(&self, shard: ShardId, admitted: Epoch) -> Result<(), Refusal> {
        if self.serving_epoch(shard) == Some(admitted) {
            self.record(Event::Serve, shard, admitted, None, None);
            return Ok(());
        }
        Err(self.not_owner(shard))
    }

    /// A `NotOwner` refusal for `shard`, naming what the applied map says.
    pub fn not_owner(&self, shard: ShardId) -> Refusal {
        let map = self.applied_map();
        match map.filter(|m| shard.0 < m.shard_count()) {
            Some(m) => Refusal::NotOwner { shard, epoch: m.shard_epoch(shard), owner: m.owner(shard) },
            None => Refusal::NotOwner { shard, epoch: Epoch(0), owner: None },
        }
    }

    /// The map of the last applied Raft entry, once there is one.
    pub fn applied_map(&self) -> Option<Arc<ShardMap>> {
        self.applied_map.lock().expect("applied map lock is never poisoned").clone()
    }

    /// The counters.
    pub fn stats(&self) -> OwnershipStats {
        let active = self.active.get().map_or(0, |a| a.iter().filter(|e| e.load(Ordering::Relaxed) != 0).count());
        OwnershipStats { rejected_stale: self.rejected.load(Ordering::Relaxed), active: active as u64 }
    }

    fn record(&self, event: Event, shard: ShardId, epoch: Epoch, msg_epoch: Option<Epoch>, at: Option<Instant>) {
        let Some(j) = &self.journal else { return };
        let ago = at.map_or(Duration::ZERO, |at| self.clock.now().saturating_duration_since(at));
        j.record(Record { event, node: self.local, shard, epoch, msg_epoch, ago });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::SystemClock;
    use crate::serving::journal::MemoryJournal;
    use crate::shard::Assignment;
    use std::time::Duration;

    fn owned_by(map: &mut ShardMap, shard: u32, node: u64, epoch: u64) {
        map.assign(ShardId(shard), &Assignment { owner: Some(NodeId(node)), replicas: vec![] }, Epoch(epoch));
    }

    #[test]
    fn a_shard_is_activated_only_from_the_applied_map_and_revoked_when_it_moves() {
        let journal = Arc::new(MemoryJournal::default());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let own = Ownership::new(NodeId(1), clock.clone(), Some(journal.clone()));
        let mut map = Arc::new(ShardMap::new(4, 1));
        owned_by(Arc::make_mut(&mut map), 2, 1, 10);
        own.revoke(&map);
        assert!(!own.activate_if_owned(ShardId(2), Epoch(10)), "no lease: no activation");
        own.set_lease(Some(clock.now() + Duration::from_secs(5)));
        assert!(!own.activate_if_owned(ShardId(1), Epoch(10)), "not ours in the applied map");
        assert!(!own.activate_if_owned(ShardId(2), Epoch(9)), "an older epoch than the applied map's");
        assert!(own.activate_if_owned(ShardId(2), Epoch(10)));
        assert_eq!(own.check(ShardId(2), Epoch(10), || map.clone()), Ok(Epoch(10)));
        assert_eq!(own.fence(ShardId(2), Epoch(10)), Ok(()), "checked again at execution");
        assert!(own.fence(ShardId(2), Epoch(9)).is_err(), "admitted under another epoch");

        // The shard moves: applying the map stops serving it before anyone can see the new state.
        owned_by(Arc::make_mut(&mut map), 2, 7, 12);
        own.revoke(&map);
        assert_eq!(own.active_epoch(ShardId(2)), None);
        assert!(own.check(ShardId(2), Epoch(10), || map.clone()).is_err());
        assert_eq!(
            own.fence(ShardId(2), Epoch(10)),
            Err(Refusal::NotOwner { shard: ShardId(2), epoch: Epoch(12), owner: Some(NodeId(7)) }),
            "a message queued before the move does not run after it"
        );
        assert!(!own.activate_if_owned(ShardId(2), Epoch(10)), "a decision from the old map is refused");

        let events: Vec<Event> = journal.records.lock().unwrap().iter().map(|r| r.event).collect();
        assert_eq!(events, [Event::Activate, Event::Serve, Event::Deactivate]);
    }

    #[test]
    fn a_message_showing_two_owners_is_counted_and_a_lagging_sender_is_not() {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let own = Ownership::new(NodeId(1), clock.clone(), None);
        let mut map = Arc::new(ShardMap::new(4, 1));
        owned_by(Arc::make_mut(&mut map), 2, 1, 10);
        own.revoke(&map);
        own.set_lease(Some(clock.now() + Duration::from_secs(5)));
        assert!(own.activate_if_owned(ShardId(2), Epoch(10)));
        // A sender ahead of this node's map (it knows epoch 12, this node's map does not yet):
        // refused so it retries, not a double owner.
        assert!(own.check(ShardId(2), Epoch(12), || map.clone()).is_err());
        assert_eq!(own.double_owner_detected(), 0);
        // A sender behind: stale, not a double owner either.
        owned_by(Arc::make_mut(&mut map), 3, 1, 11);
        assert!(own.check(ShardId(2), Epoch(10), || map.clone()).is_ok());
        assert_eq!(own.double_owner_detected(), 0);
        // The broken state the safety rule forbids, built by hand (the map moved the shard to
        // node 7 at epoch 12 and was never applied here, so the shard is still live): a message
        // stamped 12 shows it.
        let mut moved = (*map).clone();
        owned_by(&mut moved, 2, 7, 12);
        let moved = Arc::new(moved);
        assert!(own.check(ShardId(2), Epoch(12), || moved.clone()).is_err());
        assert_eq!(own.double_owner_detected(), 1, "the detector fires");
        // Applied as it should be, the move revokes first: the same message is not counted.
        own.revoke(&moved);
        assert!(own.check(ShardId(2), Epoch(12), || moved.clone()).is_err());
        assert_eq!(own.double_owner_detected(), 1);
    }
}
