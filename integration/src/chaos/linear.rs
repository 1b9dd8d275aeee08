//! Per-key linearizability of a recorded history (Wing & Gong's search with Lowe's memoisation),
//! with a time limit that answers "unknown" rather than "pass".
//!
//! The model is the KV example's: per key a register (read, write, compare-and-set) or an
//! append-only set, held in the memory of the entity on the shard's owner. With replica factor 1
//! a shard that changes hands (a new epoch) starts empty, so the model lets the state reset when
//! an operation answered at a *higher* epoch is linearized, or one answered by a new incarnation of
//! the entity (a restarted process) — and never lets an operation answered at a lower epoch come
//! after it. A reset only ever empties the state, so a stale value (two owners serving one key at
//! once, or an old incarnation answering late) still shows up as a violation.
//! Operations whose outcome is unknown may take effect at any point after their invocation, or
//! never; failed ones (never sent) are ignored.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::workload::{Op, Outcome, Record};

/// The verdict for a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history has a linearization.
    Yes,
    /// Some key's history has none.
    No,
    /// The search ran out of time on some key (and found no violation elsewhere).
    Unknown,
}

impl Verdict {
    /// `yes`, `no` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Yes => "yes",
            Verdict::No => "no",
            Verdict::Unknown => "unknown",
        }
    }
}

/// What the checker found.
#[derive(Clone, Debug)]
pub struct Report {
    /// Overall verdict.
    pub verdict: Verdict,
    /// Keys checked.
    pub keys: usize,
    /// Operations considered (answered, or unknown writes).
    pub ops: usize,
    /// The keys without a linearization, with their operation count.
    pub violations: Vec<(String, usize)>,
    /// The keys the search gave up on.
    pub timed_out: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Value {
    Reg(Option<String>),
    Set(BTreeSet<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    value: Value,
    epoch: u64,
    instance: Option<String>,
}

struct Entry<'a> {
    rec: &'a Record,
    invoke: u64,
    complete: u64,
    required: bool,
}

fn step(st: &State, r: &Record) -> Option<State> {
    let mut next = st.clone();
    if let Some(e) = r.epoch.filter(|_| r.result == Outcome::Ok) {
        if e < st.epoch {
            return None;
        }
        // A new epoch, or a new incarnation of the entity (its process restarted), starts empty.
        if e > st.epoch || (r.instance.is_some() && r.instance != st.instance) {
            next.epoch = e;
            next.instance = r.instance.clone();
            next.value = match st.value {
                Value::Reg(_) => Value::Reg(None),
                Value::Set(_) => Value::Set(BTreeSet::new()),
            };
        }
    }
    let known = r.result == Outcome::Ok;
    match (&r.op, &mut next.value) {
        (Op::Read, Value::Reg(v)) => (*v == r.read).then_some(next),
        (Op::Write { value }, Value::Reg(v)) => {
            *v = Some(value.clone());
            Some(next)
        }
        (Op::Cas { expect, value }, Value::Reg(v)) => {
            let matches = v == expect;
            match (known, r.cas_ok) {
                (true, Some(true)) if matches => {
                    *v = Some(value.clone());
                    Some(next)
                }
                (true, Some(false)) if !matches && *v == r.read => Some(next),
                (true, _) => None,
                // Unknown: it did what its comparison says.
                (false, _) => {
                    if matches {
                        *v = Some(value.clone());
                    }
                    Some(next)
                }
            }
        }
        (Op::Append { elem }, Value::Set(s)) => {
            s.insert(elem.clone());
            Some(next)
        }
        (Op::ReadSet, Value::Set(s)) => {
            let seen: BTreeSet<String> = r.set.clone().unwrap_or_default().into_iter().collect();
            (*s == seen).then_some(next)
        }
        _ => None,
    }
}

enum Search {
    Found,
    None,
    OutOfTime,
}

struct Ctx<'a> {
    ops: Vec<Entry<'a>>,
    done: Vec<u64>,
    required_left: usize,
    memo: HashSet<(Vec<u64>, State)>,
    deadline: Instant,
    steps: u64,
}

impl Ctx<'_> {
    fn is_done(&self, i: usize) -> bool {
        self.done[i / 64] & (1 << (i % 64)) != 0
    }
    fn flip(&mut self, i: usize) {
        self.done[i / 64] ^= 1 << (i % 64);
    }

    fn search(&mut self, st: &State) -> Search {
        if self.required_left == 0 {
            return Search::Found;
        }
        self.steps += 1;
        if self.steps.is_multiple_of(1024) && Instant::now() > self.deadline {
            return Search::OutOfTime;
        }
        // Candidates: not yet linearized, invoked before the earliest completion among those.
        let min_complete = (0..self.ops.len()).filter(|i| !self.is_done(*i)).map(|i| self.ops[i].complete).min();
        let Some(min_complete) = min_complete else { return Search::Found };
        for i in 0..self.ops.len() {
            if self.is_done(i) {
                continue;
            }
            if self.ops[i].invoke > min_complete {
                break; // sorted by invoke
            }
            let Some(next) = step(st, self.ops[i].rec) else { continue };
            self.flip(i);
            let required = self.ops[i].required;
            if required {
                self.required_left -= 1;
            }
            let key = (self.done.clone(), next.clone());
            let fresh = self.memo.insert(key);
            let r = if fresh { self.search(&next) } else { Search::None };
            if required {
                self.required_left += 1;
            }
            self.flip(i);
            match r {
                Search::None => {}
                other => return other,
            }
        }
        Search::None
    }
}

/// Checks every key's history within `limit` in all.
pub fn check(history: &[Record], limit: Duration) -> Report {
    let mut by_key: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in history {
        let keep = match r.result {
            Outcome::Ok => true,
            Outcome::Fail => false,
            // A read that did not answer observed nothing.
            Outcome::Unknown => !matches!(r.op, Op::Read | Op::ReadSet),
        };
        if keep {
            by_key.entry(&r.key).or_default().push(r);
        }
    }
    let deadline = Instant::now() + limit;
    let mut report =
        Report { verdict: Verdict::Yes, keys: by_key.len(), ops: 0, violations: Vec::new(), timed_out: Vec::new() };
    let mut keys: Vec<_> = by_key.into_iter().collect();
    keys.sort_by_key(|(k, _)| k.to_string());
    for (key, mut recs) in keys {
        recs.sort_by_key(|r| r.invoke);
        report.ops += recs.len();
        let set = matches!(recs[0].op, Op::Append { .. } | Op::ReadSet);
        let ops: Vec<Entry> = recs
            .iter()
            .map(|r| Entry { rec: r, invoke: r.invoke, complete: r.complete, required: r.result == Outcome::Ok })
            .collect();
        let required_left = ops.iter().filter(|e| e.required).count();
        let words = ops.len().div_ceil(64);
        let mut ctx = Ctx { ops, done: vec![0; words], required_left, memo: HashSet::new(), deadline, steps: 0 };
        let start =
            State { value: if set { Value::Set(BTreeSet::new()) } else { Value::Reg(None) }, epoch: 0, instance: None };
        // The search recurses once per operation: run it on a thread with room for that.
        let outcome = std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(512 << 20)
                .spawn_scoped(s, move || match ctx.search(&start) {
                    Search::Found => 0,
                    Search::None => 1,
                    Search::OutOfTime => 2,
                })
                .expect("spawn the checker thread")
                .join()
                .expect("the checker does not panic")
        });
        match outcome {
            0 => {}
            1 => report.violations.push((key.to_string(), recs.len())),
            _ => report.timed_out.push(key.to_string()),
        }
    }
    report.verdict = if !report.violations.is_empty() {
        Verdict::No
    } else if !report.timed_out.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Yes
    };
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, op: Op, t: (u64, u64), result: Outcome, read: Option<&str>, epoch: u64) -> Record {
        Record {
            client: 0,
            id,
            key: "k".into(),
            op,
            invoke: t.0,
            complete: if result == Outcome::Unknown { u64::MAX } else { t.1 },
            result,
            cas_ok: None,
            read: read.map(str::to_string),
            set: None,
            responder: None,
            shard: Some(0),
            epoch: Some(epoch),
            instance: Some("i1".into()),
            via: 0,
        }
    }
    fn w(v: &str) -> Op {
        Op::Write { value: v.into() }
    }
    const OK: Outcome = Outcome::Ok;
    const LIMIT: Duration = Duration::from_secs(5);

    #[test]
    fn sequential_and_concurrent_histories() {
        let h = vec![rec(1, w("a"), (0, 10), OK, None, 5), rec(2, Op::Read, (20, 30), OK, Some("a"), 5)];
        assert_eq!(check(&h, LIMIT).verdict, Verdict::Yes);
        // A stale read after the write completed.
        let h = vec![
            rec(1, w("a"), (0, 10), OK, None, 5),
            rec(2, w("b"), (20, 30), OK, None, 5),
            rec(3, Op::Read, (40, 50), OK, Some("a"), 5),
        ];
        assert_eq!(check(&h, LIMIT).verdict, Verdict::No);
        // Concurrent write and read: either order.
        let h = vec![rec(1, w("a"), (0, 30), OK, None, 5), rec(2, Op::Read, (10, 20), OK, None, 5)];
        assert_eq!(check(&h, LIMIT).verdict, Verdict::Yes);
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        let h = vec![
            rec(1, w("a"), (0, 0), Outcome::Unknown, None, 5),
            rec(2, Op::Read, (20, 30), OK, None, 5),
            rec(3, Op::Read, (40, 50), OK, Some("a"), 5),
        ];
        assert_eq!(check(&h, LIMIT).verdict, Verdict::Yes);
        let h = vec![
            rec(1, w("a"), (0, 0), Outcome::Unknown, None, 5),
            rec(3, Op::Read, (40, 50), OK, Some("a"), 5),
            rec(4, Op::Read, (60, 70), OK, None, 5),
        ];
        assert_eq!(check(&h, LIMIT).verdict, Verdict::No, "it cannot un-happen within one epoch");
    }

    #[test]
    fn a_new_epoch_may_start_empty_but_an_old_epoch_never_comes_back() {
        let h = vec![
            rec(1, w("a"), (0, 10), OK, None, 5),
            rec(2, Op::Read, (20, 30), OK, None, 7), // moved: empty
            rec(3, w("b"), (40, 50), OK, None, 7),
        ];
        assert_eq!(check(&h, LIMIT).verdict, Verdict::Yes);
        // Split brain: the old owner answers after the new one did.
        let h = vec![
            rec(1, w("a"), (0, 10), OK, None, 5),
            rec(2, w("b"), (20, 30), OK, None, 7),
            rec(3, Op::Read, (40, 50), OK, Some("a"), 5),
        ];
        assert_eq!(check(&h, LIMIT).verdict, Verdict::No);
    }

    #[test]
    fn sets_and_cas() {
        let mut a = rec(1, Op::Append { elem: "x".into() }, (0, 10), OK, None, 3);
        a.key = "s".into();
        let mut r = rec(2, Op::ReadSet, (20, 30), OK, None, 3);
        r.key = "s".into();
        r.set = Some(vec![]);
        assert_eq!(check(&[a.clone(), r.clone()], LIMIT).verdict, Verdict::No, "an acknowledged append is lost");
        r.set = Some(vec!["x".into()]);
        assert_eq!(check(&[a, r], LIMIT).verdict, Verdict::Yes);
        let mut c = rec(3, Op::Cas { expect: Some("a".into()), value: "b".into() }, (20, 30), OK, None, 5);
        c.cas_ok = Some(true);
        let h = vec![rec(1, w("a"), (0, 10), OK, None, 5), c.clone(), rec(4, Op::Read, (40, 50), OK, Some("b"), 5)];
        assert_eq!(check(&h, LIMIT).verdict, Verdict::Yes);
        let h = vec![rec(1, w("z"), (0, 10), OK, None, 5), c];
        assert_eq!(check(&h, LIMIT).verdict, Verdict::No, "a CAS cannot match a value that is not there");
    }

    #[test]
    fn the_time_limit_answers_unknown() {
        // Many concurrent unknown writes and reads that force a deep search.
        let mut h = Vec::new();
        for i in 0..200u64 {
            h.push(rec(i, w(&format!("v{i}")), (i, 0), Outcome::Unknown, None, 1));
        }
        h.push(rec(999, Op::Read, (500, 600), OK, Some("nope"), 1));
        assert_eq!(check(&h, Duration::from_millis(200)).verdict, Verdict::Unknown);
    }
}
