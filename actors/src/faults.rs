//! Message-level fault injection (docs/architecture.md §11): delay, drop, duplication and reordering of what a
//! node sends: Raft RPCs (lease renewals and forwarded commands included), gossip, and proxy
//! requests. netem is not in the kernel of our hosts; this is where the lab gets those faults.
//!
//! Off unless a [`FaultPlan`] is set, and then the cost per message is one atomic load. The
//! decision ([`MessageFaults::fate`]) is pure given the plan's seeded generator, so a run is
//! reproducible as far as the order of sends is.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What to do to each message a node sends. Parsed from
/// `delay=2ms..20ms,drop=0.01,dup=0.05,reorder=0.05,seed=7` (every part optional).
///
/// ```
/// use clusterfunk_actors::faults::FaultPlan;
/// let plan: FaultPlan = "delay=1ms..30ms,dup=0.1,reorder=0.1".parse().unwrap();
/// assert_eq!(plan.duplicate, 0.1);
/// assert!("drop=2".parse::<FaultPlan>().unwrap_err().to_string().contains("drop"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Every message waits a uniformly random time in `delay_min..=delay_max` before it is sent.
    pub delay_min: Duration,
    /// See `delay_min`.
    pub delay_max: Duration,
    /// Probability that a message is never sent (the sender sees a timeout).
    pub drop: f64,
    /// Probability that a message is sent twice, the copy after an extra random delay (so it
    /// may arrive after later messages).
    pub duplicate: f64,
    /// Probability that a message is held back long enough (`2·delay_max + 5 ms`) for messages
    /// sent after it to overtake it.
    pub reorder: f64,
    /// Seed of the generator that decides.
    pub seed: u64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            delay_min: Duration::ZERO,
            delay_max: Duration::ZERO,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            seed: 0,
        }
    }
}

/// Why a fault plan was refused: the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fault plan field `{field}`: {reason}")]
pub struct FaultPlanError {
    /// The field (`delay`, `drop`, `dup`, `reorder`, `seed`, or the unknown name).
    pub field: String,
    /// Why.
    pub reason: String,
}

fn plan_error(field: &str, reason: impl Into<String>) -> FaultPlanError {
    FaultPlanError { field: field.to_string(), reason: reason.into() }
}

fn parse_duration(field: &str, s: &str) -> Result<Duration, FaultPlanError> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| plan_error(field, format!("`{s}` is not a duration like 20ms")))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "us" => Ok(Duration::from_micros(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(plan_error(field, format!("`{s}`: the unit must be us, ms or s"))),
    }
}

fn parse_probability(field: &str, s: &str) -> Result<f64, FaultPlanError> {
    s.trim().parse::<f64>().map_err(|_| plan_error(field, format!("`{s}` is not a number")))
}

impl FaultPlan {
    /// Refuses probabilities outside `0..=1` (drop below 1: a plan that drops everything is a
    /// partition, see `Faults::isolate`) and a delay range that is empty or over 10 s.
    pub fn validate(&self) -> Result<(), FaultPlanError> {
        for (field, p) in [("dup", self.duplicate), ("reorder", self.reorder)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(plan_error(field, format!("{p} is not a probability in 0..=1")));
            }
        }
        if !(0.0..1.0).contains(&self.drop) {
            return Err(plan_error("drop", format!("{} is not a probability in 0..1", self.drop)));
        }
        if self.delay_min > self.delay_max {
            return Err(plan_error("delay", "the minimum is above the maximum"));
        }
        if self.delay_max > Duration::from_secs(10) {
            return Err(plan_error("delay", "over 10 s: every RPC would time out"));
        }
        Ok(())
    }

    /// Whether the plan does anything.
    pub fn is_active(&self) -> bool {
        !self.delay_max.is_zero() || self.drop > 0.0 || self.duplicate > 0.0 || self.reorder > 0.0
    }

    fn hold_back(&self) -> Duration {
        self.delay_max * 2 + Duration::from_millis(5)
    }
}

impl FromStr for FaultPlan {
    type Err = FaultPlanError;

    fn from_str(s: &str) -> Result<FaultPlan, FaultPlanError> {
        let mut plan = FaultPlan::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) =
                part.split_once('=').ok_or_else(|| plan_error(part, "expected name=value, e.g. drop=0.01"))?;
            match name.trim() {
                "delay" => {
                    let (lo, hi) = value.split_once("..").unwrap_or((value, value));
                    plan.delay_min = parse_duration("delay", lo)?;
                    plan.delay_max = parse_duration("delay", hi)?;
                }
                "drop" => plan.drop = parse_probability("drop", value)?,
                "dup" => plan.duplicate = parse_probability("dup", value)?,
                "reorder" => plan.reorder = parse_probability("reorder", value)?,
                "seed" => {
                    plan.seed =
                        value.trim().parse().map_err(|_| plan_error("seed", format!("`{value}` is not a number")))?
                }
                other => return Err(plan_error(other, "unknown; expected delay, drop, dup, reorder or seed")),
            }
        }
        plan.validate()?;
        Ok(plan)
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay={}us..{}us,drop={},dup={},reorder={},seed={}",
            self.delay_min.as_micros(),
            self.delay_max.as_micros(),
            self.drop,
            self.duplicate,
            self.reorder,
            self.seed
        )
    }
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Never sent.
    Drop,
    /// Sent after `delay`, and once more after `duplicate` if set.
    Send {
        /// Wait before sending.
        delay: Duration,
        /// Wait before sending the copy, if there is one.
        duplicate: Option<Duration>,
    },
}

/// Counters of what the injector did.
#[derive(Debug, Default, Serialize)]
pub struct FaultStats {
    /// Messages never sent.
    pub dropped: AtomicU64,
    /// Messages sent twice.
    pub duplicated: AtomicU64,
    /// Messages held back for later ones to overtake.
    pub reordered: AtomicU64,
    /// Messages delayed (any delay above zero).
    pub delayed: AtomicU64,
}

/// The injector one node's transport and proxy share.
#[derive(Debug, Default)]
pub struct MessageFaults {
    on: AtomicBool,
    state: Mutex<Option<(FaultPlan, StdRng)>>,
    stats: FaultStats,
}

impl MessageFaults {
    /// An injector with `plan` set (or none).
    pub fn new(plan: Option<FaultPlan>) -> MessageFaults {
        let f = MessageFaults::default();
        f.set(plan);
        f
    }

    /// Sets the plan (`None`, or one that does nothing, turns injection off).
    pub fn set(&self, plan: Option<FaultPlan>) {
        let plan = plan.filter(FaultPlan::is_active);
        let mut state = self.state.lock().expect("fault state lock is never poisoned");
        self.on.store(plan.is_some(), Ordering::Release);
        *state = plan.map(|p| {
            let rng = StdRng::seed_from_u64(p.seed);
            (p, rng)
        });
    }

    /// The plan in force, if any.
    pub fn plan(&self) -> Option<FaultPlan> {
        self.state.lock().expect("fault state lock is never poisoned").as_ref().map(|(p, _)| p.clone())
    }

    /// The counters.
    pub fn stats(&self) -> &FaultStats {
        &self.stats
    }

    /// What happens to the next message: `None` to send it now, once (injection off, or the
    /// plan left this one alone).
    #[inline]
    pub fn fate(&self) -> Option<Fate> {
        if !self.on.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.state.lock().expect("fault state lock is never poisoned");
        let (plan, rng) = state.as_mut()?;
        let (fate, held) = decide(plan, rng);
        drop(state);
        if fate == (Fate::Send { delay: Duration::ZERO, duplicate: None }) {
            return None;
        }
        let bump = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        match fate {
            Fate::Drop => bump(&self.stats.dropped),
            Fate::Send { delay, duplicate } => {
                if duplicate.is_some() {
                    bump(&self.stats.duplicated);
                }
                if !delay.is_zero() {
                    bump(&self.stats.delayed);
                }
                if held {
                    bump(&self.stats.reordered);
                }
            }
        }
        Some(fate)
    }
}

/// Runs `send` after `delay` on a task of its own, so messages sent after it may overtake it.
pub(crate) fn later(delay: Duration, send: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        send.await;
    });
}

/// One decision under `plan`, and whether the message is held back to be overtaken. Pure given
/// the generator's state.
fn decide(plan: &FaultPlan, rng: &mut StdRng) -> (Fate, bool) {
    if plan.drop > 0.0 && rng.gen_bool(plan.drop) {
        return (Fate::Drop, false);
    }
    let mut delay =
        if plan.delay_max.is_zero() { Duration::ZERO } else { rng.gen_range(plan.delay_min..=plan.delay_max) };
    let held = plan.reorder > 0.0 && rng.gen_bool(plan.reorder);
    if held {
        delay += plan.hold_back();
    }
    let duplicate = (plan.duplicate > 0.0 && rng.gen_bool(plan.duplicate))
        .then(|| delay + rng.gen_range(Duration::ZERO..=plan.hold_back()));
    (Fate::Send { delay, duplicate }, held)
}

/// Storage fault injection (tests and the chaos lab): the Raft store fails its `n`-th durable
/// write from now on as a failed fsync would, which must end the process with exit code 70.
/// Never in production. Default: off.
#[derive(Debug, Default)]
pub struct DiskFaults {
    /// Durable writes left before one fails; `u64::MAX` = off.
    left: AtomicU64,
    /// The next durable write stalls this many milliseconds before its fsync (0 = none).
    stall_ms: AtomicU64,
}

impl DiskFaults {
    /// No fault.
    pub fn off() -> DiskFaults {
        DiskFaults { left: AtomicU64::new(u64::MAX), stall_ms: AtomicU64::new(0) }
    }

    /// The write after the next `n` fails.
    pub fn fail_after(n: u64) -> DiskFaults {
        DiskFaults { left: AtomicU64::new(n), stall_ms: AtomicU64::new(0) }
    }

    /// The next durable write stalls for `d` before it commits, as a disk that stops answering
    /// would (the writer, and openraft's core waiting on it, are parked meanwhile).
    pub fn stall_next(&self, d: Duration) {
        self.stall_ms.store(d.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// The stall the current write must suffer, once.
    pub fn take_stall(&self) -> Option<Duration> {
        let ms = self.stall_ms.swap(0, Ordering::Relaxed);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Called before every durable write: whether this one fails (and every one after it: the
    /// disk stays failed).
    pub fn write_fails(&self) -> bool {
        match self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| (v != u64::MAX && v > 0).then(|| v - 1))
        {
            Ok(_) => false,
            Err(v) => v == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_with_the_field() {
        let p: FaultPlan = "delay=2ms..20ms, drop=0.01,dup=0.05,reorder=0.1,seed=9".parse().unwrap();
        assert_eq!(p.delay_min, Duration::from_millis(2));
        assert_eq!(p.delay_max, Duration::from_millis(20));
        assert_eq!((p.drop, p.duplicate, p.reorder, p.seed), (0.01, 0.05, 0.1, 9));
        assert_eq!(p.to_string().parse::<FaultPlan>().unwrap(), p, "Display round-trips");
        assert_eq!("delay=5ms".parse::<FaultPlan>().unwrap().delay_min, Duration::from_millis(5));
        for (bad, field) in [
            ("drop=1", "drop"),
            ("dup=-0.1", "dup"),
            ("reorder=x", "reorder"),
            ("delay=20ms..2ms", "delay"),
            ("delay=5 minutes", "delay"),
            ("delay=11s", "delay"),
            ("loss=0.1", "loss"),
            ("drop", "drop"),
        ] {
            let e = bad.parse::<FaultPlan>().unwrap_err();
            assert_eq!(e.field, field, "{bad}: {e}");
        }
    }

    #[test]
    fn off_by_default_and_when_inactive() {
        let f = MessageFaults::default();
        assert_eq!(f.fate(), None);
        f.set(Some(FaultPlan::default()));
        assert_eq!(f.fate(), None, "a plan that does nothing is off");
        assert_eq!(f.plan(), None);
        f.set(Some("dup=0.01".parse().unwrap()));
        assert!((0..100).filter_map(|_| f.fate()).count() < 10, "a message left alone is sent now: None");
    }

    #[test]
    fn rates_match_the_plan_and_are_reproducible() {
        let plan: FaultPlan = "delay=1ms..3ms,drop=0.1,dup=0.2,reorder=0.1,seed=42".parse().unwrap();
        let run = || {
            let f = MessageFaults::new(Some(plan.clone()));
            (0..10_000).map(|_| f.fate().unwrap()).collect::<Vec<_>>()
        };
        let fates = run();
        assert_eq!(fates, run(), "same seed, same decisions");
        let f = MessageFaults::new(Some(plan.clone()));
        for _ in 0..1000 {
            let _ = f.fate();
        }
        let reordered = f.stats().reordered.load(Ordering::Relaxed);
        assert!((40..160).contains(&reordered), "counted: {reordered}");
        let dropped = fates.iter().filter(|f| **f == Fate::Drop).count();
        let sent: Vec<_> = fates
            .iter()
            .filter_map(|f| match f {
                Fate::Send { delay, duplicate } => Some((*delay, *duplicate)),
                Fate::Drop => None,
            })
            .collect();
        let dups = sent.iter().filter(|(_, d)| d.is_some()).count();
        let held = sent.iter().filter(|(d, _)| *d > Duration::from_millis(3)).count();
        assert!((800..1200).contains(&dropped), "drop ≈ 10%: {dropped}");
        assert!((1500..2100).contains(&dups), "dup ≈ 20% of the sent: {dups}");
        assert!((600..1200).contains(&held), "reorder ≈ 10% of the sent: {held}");
        assert!(sent.iter().all(|(d, _)| *d >= Duration::from_millis(1)));
        assert!(sent.iter().all(|(d, c)| c.is_none_or(|c| c >= *d)), "a copy never precedes its original");
    }
}
