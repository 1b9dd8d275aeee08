//! A deterministic simulation of single ownership: N nodes, each with the real serving
//! [`Core`], serving table ([`Ownership`]) and lease [`Holder`], under one leader running the real
//! shard-manager core and lease [`Table`], all on simulated clocks that drift within ρ. A seeded
//! schedule lags appliers, delays and drops messages, cuts nodes off, pauses them (SIGSTOP),
//! drains them and changes the leader. After every step the invariants are checked:
//!
//! - no shard is served (lease valid and active in the table) on two nodes at one instant;
//! - acknowledged executions of one shard on two nodes never overlap, and their epochs never
//!   go back;
//! - an epoch never goes back on a node;
//! - a handoff is confirmed only when no entity of the shard runs on the node.
//!
//! Mutations (a clock outside ρ, a shell that confirms before it stops entities, a state
//! machine that forgets to revoke) are run too: the checkers must catch them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::core::{Core, Effect, Input};
use super::Ownership;
use crate::lease::{self, Clock, Holder, Table};
use crate::shard_manager::{self, Decision};
use crate::state::{ClusterState, Command};
use crate::types::{ClusterName, Epoch, NodeId, NodeMeta, ShardId};

const MS: u64 = 1_000_000;
/// The force-stop time of the simulated shell: shorter than the longest handlers.
const FORCE_STOP: u64 = 150 * MS;

/// A node's clock: true simulated time times its rate.
struct SimClock {
    base: Instant,
    t: Arc<AtomicU64>,
    rate: f64,
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos((self.t.load(Ordering::Relaxed) as f64 * self.rate) as u64)
    }
}

/// What a run may get wrong on purpose, to show the checkers fail.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Mutation {
    /// One node's clock runs this much slower than true time (beyond ρ when > ρ).
    slow_clock: Option<f64>,
    /// The shell confirms a handoff before the shard's entities stopped.
    confirm_first: bool,
    /// A node uses a lease grant before it applied the leader's log up to the grant's index.
    ignore_min_applied: bool,
    /// Handlers are acknowledged even when the lease ran out while they ran.
    ack_always: bool,
    /// A confirmed handoff does not mark the shard released in the table (so a handler whose
    /// stop was abandoned after the force-stop time is still acknowledged).
    no_release_mark: bool,
}

enum Msg {
    Renew {
        node: usize,
        sent: Instant,
    },
    Granted {
        node: usize,
        sent: Instant,
        min_applied: u64,
    },
    Confirm {
        node: usize,
        shards: Vec<(ShardId, Epoch)>,
    },
    /// A confirmation that never arrived, reported back to its node (its proposal timed out).
    ConfirmFailed {
        node: usize,
        shards: Vec<(ShardId, Epoch)>,
    },
}

struct Exec {
    shard: ShardId,
    epoch: Epoch,
    start: u64,
    end: u64,
    /// The lease token read when the message was admitted.
    token: u64,
}

struct SimNode {
    id: NodeId,
    clock: Arc<SimClock>,
    own: Arc<Ownership>,
    core: Core,
    holder: Holder,
    applied: usize,
    next_renew: Instant,
    queue: VecDeque<Effect>,
    busy_until: u64,
    paused_until: u64,
    cut_until: u64,
    /// Admitted messages waiting to run: (shard, admitted epoch, run at, lease token).
    admitted: Vec<(ShardId, Epoch, u64, u64)>,
    running: Vec<Exec>,
    /// Entity stops waiting for running handlers of these shards, since when.
    stopping: Vec<ShardId>,
    stop_began: u64,
    /// Shards whose stop was abandoned after the force-stop time (their handlers still run).
    abandoned: Vec<ShardId>,
    last_epoch: BTreeMap<ShardId, Epoch>,
    /// How likely it applies the next entry in a step (a slow follower is low).
    apply_p: f64,
    /// What it observed last: the shell observes again only when this changes.
    observed: Option<(usize, Option<Instant>)>,
}

struct Leader {
    clock: Arc<SimClock>,
    table: Table,
    sm: shard_manager::Core,
    next_tick: u64,
    term: u64,
}

struct World {
    rng: StdRng,
    t: Arc<AtomicU64>,
    base: Instant,
    cfg: lease::Config,
    mutation: Mutation,
    log: Vec<ClusterState>,
    leader: Leader,
    nodes: Vec<SimNode>,
    net: Vec<(u64, Msg)>,
    /// Acknowledged executions per shard: (start, end, node, epoch).
    acked: BTreeMap<ShardId, Vec<(u64, u64, usize, Epoch)>>,
    violations: Vec<String>,
}

impl World {
    fn new(seed: u64, mutation: Mutation) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = lease::Config::default();
        let t = Arc::new(AtomicU64::new(0));
        let base = Instant::now();
        let n = rng.gen_range(3..=5);
        let shards = rng.gen_range(4..=12);
        let mut st = ClusterState::default();
        st.apply(&Command::Init { name: ClusterName::new("sim", "test"), shards, replica_factor: 1 }, 1);
        let mut log = vec![st.clone()];
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut rate = 1.0 + rng.gen_range(-cfg.drift..=cfg.drift);
            if i == 0 {
                if let Some(slow) = mutation.slow_clock {
                    rate = 1.0 - slow;
                }
            }
            let clock = Arc::new(SimClock { base, t: t.clone(), rate });
            let id = NodeId(i as u64 + 1);
            let own = Arc::new(Ownership::new(id, clock.clone(), None));
            st.apply(
                &Command::RegisterMember { meta: NodeMeta { id, weight: 1, workers: 1, ..NodeMeta::default() } },
                0,
            );
            log.push(st.clone());
            nodes.push(SimNode {
                id,
                next_renew: clock.now(),
                clock,
                own,
                core: Core::new(id),
                holder: Holder::new(cfg.clone()),
                applied: 0,
                queue: VecDeque::new(),
                busy_until: 0,
                paused_until: 0,
                cut_until: 0,
                admitted: Vec::new(),
                running: Vec::new(),
                stopping: Vec::new(),
                stop_began: 0,
                abandoned: Vec::new(),
                last_epoch: BTreeMap::new(),
                apply_p: rng.gen_range(0.02..0.7),
                observed: None,
            });
        }
        let leader_clock = Arc::new(SimClock { base, t: t.clone(), rate: 1.0 + rng.gen_range(-cfg.drift..=cfg.drift) });
        let leader = Leader::new(leader_clock, cfg.clone(), 1);
        World {
            rng,
            t,
            base,
            cfg,
            mutation,
            log,
            leader,
            nodes,
            net: Vec::new(),
            acked: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.t.load(Ordering::Relaxed)
    }

    fn send(&mut self, msg: Msg) {
        let delay = self.rng.gen_range(0..25 * MS);
        let at = self.now() + delay;
        self.net.push((at, msg));
    }

    fn commit(&mut self, cmd: &Command) {
        let mut st = self.log.last().expect("the log starts with Init").clone();
        let index = self.log.len() as u64 + 1;
        st.apply(cmd, index);
        self.log.push(st);
    }

    fn run(&mut self, duration: u64) {
        while self.now() < duration && self.violations.is_empty() {
            let dt = self.rng.gen_range(MS / 2..4 * MS);
            self.t.fetch_add(dt, Ordering::Relaxed);
            self.nemesis();
            self.deliver();
            self.leader_tick();
            for i in 0..self.nodes.len() {
                self.step_node(i);
            }
            self.check();
        }
        self.check_acked();
    }

    fn nemesis(&mut self) {
        let now = self.now();
        let n = self.nodes.len();
        let r: f64 = self.rng.gen();
        if r < 0.002 {
            let i = self.rng.gen_range(0..n);
            self.nodes[i].cut_until = now + self.rng.gen_range(50 * MS..2000 * MS);
        } else if r < 0.003 {
            let i = self.rng.gen_range(0..n);
            self.nodes[i].paused_until = now + self.rng.gen_range(50 * MS..1500 * MS);
        } else if r < 0.004 {
            let id = self.nodes[self.rng.gen_range(0..n)].id;
            let draining = !self.log.last().expect("log").draining.contains(&id);
            self.commit(&Command::SetDraining { id, draining });
        } else if r < 0.0045 {
            // A new leader: it knows no renewals and waits out every lease an earlier one granted.
            let term = self.leader.term + 1;
            let rate = 1.0 + self.rng.gen_range(-self.cfg.drift..=self.cfg.drift);
            let clock = Arc::new(SimClock { base: self.base, t: self.t.clone(), rate });
            self.leader = Leader::new(clock, self.cfg.clone(), term);
        }
    }

    fn deliver(&mut self) {
        let now = self.now();
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            let to = match &self.net[i].1 {
                Msg::Granted { node, .. } | Msg::ConfirmFailed { node, .. } => Some(*node),
                _ => None,
            };
            // A paused node reads its socket when it resumes.
            let waiting = to.is_some_and(|n| self.nodes[n].paused_until > now);
            if self.net[i].0 <= now && !waiting {
                due.push(self.net.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        for msg in due {
            match msg {
                Msg::Renew { node, sent } => {
                    if self.nodes[node].cut_until > now {
                        continue;
                    }
                    let id = self.nodes[node].id;
                    if self.leader.table.is_fenced(id) {
                        continue;
                    }
                    self.leader.table.renewed(id, self.leader.clock.now());
                    let min_applied = self.log.len() as u64;
                    self.send(Msg::Granted { node, sent, min_applied });
                }
                Msg::Granted { node, sent, min_applied } => {
                    if self.nodes[node].cut_until <= now {
                        let min_applied = if self.mutation.ignore_min_applied { 0 } else { min_applied };
                        self.nodes[node].holder.granted(sent, min_applied);
                    }
                }
                Msg::Confirm { node, shards } => {
                    if self.nodes[node].cut_until <= now {
                        self.commit(&Command::Released { node: self.nodes[node].id, shards });
                    } else {
                        self.net.push((now + 100 * MS, Msg::ConfirmFailed { node, shards }));
                    }
                }
                Msg::ConfirmFailed { node, shards } => {
                    self.nodes[node].core.handle(Input::ConfirmFailed(shards));
                    self.nodes[node].observed = None;
                }
            }
        }
    }

    fn leader_tick(&mut self) {
        let now = self.now();
        if now < self.leader.next_tick {
            return;
        }
        self.leader.next_tick = now + 50 * MS;
        let lnow = self.leader.clock.now();
        let state = self.log.last().expect("log").clone();
        let expired: Vec<NodeId> =
            state.members.keys().copied().filter(|n| self.leader.table.expired(*n, lnow)).collect();
        for n in &expired {
            self.leader.table.fence(*n);
        }
        let led = self.leader.table.leader_for(lnow);
        let decision = self.leader.sm.tick(lnow, led, &state, |n| expired.contains(&n));
        if let Decision::Commit(cmd, _) = decision {
            self.commit(&cmd);
            self.leader.sm.committed();
        }
        for n in expired {
            self.leader.table.unfence(n);
        }
    }

    fn step_node(&mut self, i: usize) {
        let now = self.now();
        if self.nodes[i].paused_until > now {
            return;
        }
        // Apply some of the log (the state machine revokes before it publishes); a node cut off
        // from the leader receives no entries either.
        let apply_p = self.nodes[i].apply_p;
        while self.nodes[i].cut_until <= now && self.nodes[i].applied < self.log.len() && self.rng.gen_bool(apply_p) {
            let idx = self.nodes[i].applied;
            self.nodes[i].own.revoke(&self.log[idx].shard_map);
            self.nodes[i].applied += 1;
        }
        // Renew every L/3.
        let local = self.nodes[i].clock.now();
        if local >= self.nodes[i].next_renew {
            self.nodes[i].next_renew = local + self.cfg.renew_every();
            if self.nodes[i].cut_until <= now {
                self.send(Msg::Renew { node: i, sent: local });
            }
        }
        let applied = self.nodes[i].applied as u64;
        let until = self.nodes[i].holder.serving_until(applied).filter(|u| *u > local);
        self.nodes[i].own.set_lease(until);
        self.executions(i);
        self.effects(i, until);
    }

    fn executions(&mut self, i: usize) {
        let now = self.now();
        let node = &mut self.nodes[i];
        // Handlers that end now: answered only under a lease that never ran out meanwhile.
        let (done, running): (Vec<Exec>, Vec<Exec>) = node.running.drain(..).partition(|e| e.end <= now);
        node.running = running;
        for e in done {
            if self.mutation.ack_always || node.own.may_answer(e.shard, e.epoch, e.token) {
                self.acked.entry(e.shard).or_default().push((e.start, e.end, i, e.epoch));
            }
        }
        // Queued messages whose turn came: checked at execution.
        let (due, waiting): (Vec<_>, Vec<_>) = node.admitted.drain(..).partition(|(_, _, at, _)| *at <= now);
        node.admitted = waiting;
        for (shard, epoch, _, token) in due {
            if node.own.fence(shard, epoch).is_ok() {
                let long = self.rng.gen_bool(0.05);
                let len = if long { self.rng.gen_range(50 * MS..400 * MS) } else { self.rng.gen_range(0..5 * MS) };
                node.running.push(Exec { shard, epoch, start: now, end: now + len, token });
            }
        }
        // New messages admitted under the epoch served now.
        let shards = node.own.applied_map().map_or(0, |m| m.shard_count());
        if shards > 0 && self.rng.gen_bool(0.5) {
            let s = ShardId(self.rng.gen_range(0..shards));
            if let Some(e) = node.own.serving_epoch(s) {
                let at = now + self.rng.gen_range(0..20 * MS);
                node.admitted.push((s, e, at, node.own.lease_token()));
            }
        }
    }

    fn effects(&mut self, i: usize, until: Option<Instant>) {
        let now = self.now();
        if self.nodes[i].busy_until > now {
            return;
        }
        // An entity stop ends when no handler of its shards runs any more, or is abandoned after
        // the force-stop time (scaled down here so handlers outlast it).
        if !self.nodes[i].stopping.is_empty() {
            let node = &mut self.nodes[i];
            if node.running.iter().any(|e| node.stopping.contains(&e.shard)) {
                if now < node.stop_began + FORCE_STOP {
                    return;
                }
                let stopping = node.stopping.clone();
                node.abandoned.extend(stopping);
            }
            node.stopping.clear();
        }
        let seen = Some((self.nodes[i].applied, until));
        if self.nodes[i].queue.is_empty() && self.nodes[i].observed != seen {
            self.nodes[i].observed = seen;
            let state = &self.log[self.nodes[i].applied.max(1) - 1];
            let local = self.nodes[i].clock.now();
            let mut effects: VecDeque<Effect> =
                self.nodes[i].core.handle(Input::Observe { lease_until: until, state, now: local }).into();
            if self.mutation.confirm_first {
                if let Some(p) = effects.iter().position(|e| matches!(e, Effect::ConfirmReleased(_))) {
                    let c = effects.remove(p).expect("found");
                    effects.push_front(c);
                }
            }
            self.nodes[i].queue = effects;
        }
        while let Some(effect) = self.nodes[i].queue.pop_front() {
            match effect {
                Effect::Deactivate { shards, ran_out } => {
                    for s in shards {
                        self.nodes[i].own.deactivate(s, ran_out);
                    }
                }
                Effect::StopEntities(shards) => {
                    self.nodes[i].stopping = shards;
                    self.nodes[i].stop_began = now;
                    self.nodes[i].busy_until = now + self.rng.gen_range(0..10 * MS);
                    return;
                }
                Effect::Hooks(_) => {
                    self.nodes[i].busy_until = now + self.rng.gen_range(0..30 * MS);
                    return;
                }
                Effect::ConfirmReleased(shards) => {
                    let node = &self.nodes[i];
                    for (s, e) in &shards {
                        if !self.mutation.no_release_mark {
                            node.own.mark_released(*s, *e);
                        }
                        if node.running.iter().any(|e| e.shard == *s) && !node.abandoned.contains(s) {
                            self.violations.push(format!(
                                "t={}ms node {} confirmed the handoff of shard {s} while a handler of it ran",
                                now / MS,
                                node.id
                            ));
                        }
                    }
                    self.send(Msg::Confirm { node: i, shards });
                }
                Effect::Activate(starts) => {
                    let results =
                        starts.into_iter().map(|(s, e)| (s, e, self.nodes[i].own.activate_if_owned(s, e))).collect();
                    let state = self.log[self.nodes[i].applied.max(1) - 1].clone();
                    let more = self.nodes[i].core.handle(Input::Activated { results, state: &state });
                    for e in more.into_iter().rev() {
                        self.nodes[i].queue.push_front(e);
                    }
                }
            }
        }
    }

    fn check(&mut self) {
        let now = self.now();
        let shards = self.log.last().expect("log").shard_map.shard_count();
        for s in (0..shards).map(ShardId) {
            let serving: Vec<(NodeId, Epoch)> =
                self.nodes.iter().filter_map(|n| n.own.serving_epoch(s).map(|e| (n.id, e))).collect();
            if serving.len() > 1 {
                self.violations.push(format!("t={}ms shard {s} served on {serving:?} at once", now / MS));
            }
        }
        for n in &mut self.nodes {
            for s in (0..shards).map(ShardId) {
                if let Some(e) = n.own.active_epoch(s) {
                    let last = n.last_epoch.entry(s).or_default();
                    if e < *last {
                        self.violations.push(format!(
                            "t={}ms node {} went back to epoch {e} of shard {s}",
                            now / MS,
                            n.id
                        ));
                    }
                    *last = e;
                }
            }
        }
    }

    /// Acknowledged handlers of one shard on two nodes never overlap; epochs never go back.
    fn check_acked(&mut self) {
        for (s, execs) in &self.acked {
            let mut execs = execs.clone();
            execs.sort();
            let mut last_end: BTreeMap<usize, u64> = BTreeMap::new();
            let mut max_epoch = Epoch(0);
            for (start, end, node, epoch) in execs {
                for (other, other_end) in &last_end {
                    if *other != node && *other_end > start {
                        self.violations.push(format!(
                            "shard {s}: acknowledged handlers overlap on nodes {other} and {node} at {}ms",
                            start / MS
                        ));
                    }
                }
                if epoch < max_epoch {
                    self.violations.push(format!("shard {s}: epoch went back from {max_epoch} to {epoch}"));
                }
                max_epoch = max_epoch.max(epoch);
                let e = last_end.entry(node).or_default();
                *e = (*e).max(end);
            }
        }
    }
}

impl Leader {
    fn new(clock: Arc<SimClock>, cfg: lease::Config, term: u64) -> Leader {
        let mut table = Table::new(cfg.clone());
        table.set_leader(Some(term), clock.now());
        let sm = shard_manager::Core::new(shard_manager::Config {
            takeover: cfg.takeover_after(),
            ..shard_manager::Config::default()
        });
        Leader { clock, table, sm, next_tick: 0, term }
    }
}

/// Runs `seeds` seeds; returns the first violation found, with its seed.
fn explore(seeds: std::ops::Range<u64>, mutation: Mutation, duration: u64) -> Option<(u64, String)> {
    for seed in seeds {
        let mut w = World::new(seed, mutation);
        w.run(duration);
        if let Some(v) = w.violations.first() {
            return Some((seed, v.clone()));
        }
    }
    None
}

fn seeds() -> u64 {
    std::env::var("CF_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000)
}

#[test]
fn single_ownership_holds_on_thousands_of_seeds() {
    let n = seeds();
    // Two halves on two threads: the machine has two cores.
    let a = std::thread::spawn(move || explore(0..n / 2, Mutation::default(), 4000 * MS));
    let b = explore(n / 2..n, Mutation::default(), 4000 * MS);
    let a = a.join().expect("simulation thread");
    assert_eq!(a.or(b), None, "a seed broke an invariant (rerun it with World::new(seed, ..))");
}

#[test]
fn the_simulation_serves_and_moves_shards() {
    // The invariants must not hold because nothing happens: shards are served, acknowledged,
    // and moved between nodes in a typical run.
    let mut w = World::new(7, Mutation::default());
    w.run(4000 * MS);
    assert!(w.violations.is_empty(), "{:?}", w.violations);
    let acked: usize = w.acked.values().map(|v| v.len()).sum();
    let nodes_serving: std::collections::BTreeSet<usize> = w.acked.values().flatten().map(|e| e.2).collect();
    assert!(acked > 100, "only {acked} acknowledged executions");
    assert!(nodes_serving.len() > 1, "one node served everything");
    assert!(w.log.len() > w.nodes.len() + 2, "no map was ever committed");
}

#[test]
fn a_clock_outside_rho_is_caught() {
    let found = explore(0..300, Mutation { slow_clock: Some(0.5), ..Mutation::default() }, 4000 * MS);
    assert!(found.is_some(), "a node whose clock runs at half speed must end up serving beside its successor");
}

#[test]
fn confirming_before_entities_stop_is_caught() {
    let found = explore(0..300, Mutation { confirm_first: true, ..Mutation::default() }, 4000 * MS);
    let (_, v) = found.expect("a shell that confirms first must be caught");
    assert!(v.contains("confirmed the handoff"), "{v}");
}

#[test]
fn a_node_that_serves_before_catching_up_is_caught() {
    let found = explore(0..300, Mutation { ignore_min_applied: true, ..Mutation::default() }, 4000 * MS);
    assert!(found.is_some(), "a node back from a partition serving from its old map must be caught");
}

#[test]
fn acknowledging_after_a_lease_lapse_is_caught() {
    let found = explore(0..600, Mutation { ack_always: true, ..Mutation::default() }, 4000 * MS);
    let (_, v) = found.expect("an answer given after the lease ran out must be caught");
    assert!(v.contains("overlap"), "{v}");
}

#[test]
fn acknowledging_an_abandoned_handler_after_its_handoff_is_caught() {
    let found = explore(0..600, Mutation { no_release_mark: true, ..Mutation::default() }, 4000 * MS);
    let (_, v) = found.expect("a handler abandoned by its stop and answered after the handoff must be caught");
    assert!(v.contains("overlap"), "{v}");
}
