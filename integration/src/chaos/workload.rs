//! The workload and recorder: client threads driving the KV example over HTTP — reads, writes
//! of unique values, compare-and-set, appends to append-only sets — recording every operation
//! with its invoke and complete time on `CLOCK_MONOTONIC` (the journals' clock).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterfunk_actors::lease::monotonic_ns;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

/// What an operation asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    /// `GET /kv/{key}`.
    Read,
    /// `PUT /kv/{key}` with a unique value.
    Write {
        /// The value.
        value: String,
    },
    /// `POST /kv/{key}/cas`.
    Cas {
        /// The value expected.
        expect: Option<String>,
        /// The value to set.
        value: String,
    },
    /// `POST /kv/{key}/append`.
    Append {
        /// The element.
        elem: String,
    },
    /// `GET /kv/{key}/set`.
    ReadSet,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered: it took effect (or, for a failed CAS, it observed the value).
    Ok,
    /// It surely did not take effect (the request never reached a node).
    Fail,
    /// It may or may not have taken effect (timeout, or an error after it was sent).
    Unknown,
}

/// One recorded operation.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Client number.
    pub client: usize,
    /// Operation id (unique in the history).
    pub id: u64,
    /// The key.
    pub key: String,
    /// What it asked.
    pub op: Op,
    /// Invoke time, ns on `CLOCK_MONOTONIC`.
    pub invoke: u64,
    /// Completion time (`u64::MAX` while unknown).
    pub complete: u64,
    /// How it ended.
    pub result: Outcome,
    /// For a CAS that answered: whether it matched.
    pub cas_ok: Option<bool>,
    /// The value it read (reads, failed CAS), `None` = absent.
    pub read: Option<String>,
    /// The set it read (set reads).
    pub set: Option<Vec<String>>,
    /// The node that answered.
    pub responder: Option<String>,
    /// The key's shard, from the answer.
    pub shard: Option<u32>,
    /// The shard's epoch on the responder.
    pub epoch: Option<u64>,
    /// The entity incarnation that answered.
    pub instance: Option<String>,
    /// The HTTP node the client talked to.
    pub via: usize,
}

/// A running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Record>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Register keys.
    pub keys: Vec<String>,
    /// Append-only set keys.
    pub sets: Vec<String>,
}

/// The workload's shape.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Client threads.
    pub clients: usize,
    /// Register keys.
    pub keys: usize,
    /// Set keys.
    pub sets: usize,
    /// Random seed.
    pub seed: u64,
    /// Pause between one client's operations.
    pub think: Duration,
    /// Network namespaces to run the clients in (client `c` in `namespaces[c % len]`, talking
    /// to target `c % len` half the time); empty: the clients run where the caller does.
    pub namespaces: Vec<String>,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape { clients: 6, keys: 8, sets: 4, seed: 1, think: Duration::from_millis(5), namespaces: Vec::new() }
    }
}

/// Connect and answer timeouts: a request not answered in `ANSWER` is "unknown" (the proxy
/// waits up to 5 s for an owner, so this is longer).
const CONNECT: Duration = Duration::from_millis(300);
const ANSWER: Duration = Duration::from_secs(7);

impl Workload {
    /// Starts `shape.clients` threads against `targets` (HTTP `host:port`), each operation
    /// through a random target (a dead or cut-off one fails fast or ends unknown: recorded).
    pub fn start(targets: Vec<String>, shape: Shape) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(Vec::new()));
        let keys: Vec<String> = (0..shape.keys).map(|k| format!("r{}-{k}", shape.seed)).collect();
        let sets: Vec<String> = (0..shape.sets).map(|k| format!("s{}-{k}", shape.seed)).collect();
        let mut threads = Vec::new();
        for c in 0..shape.clients {
            let (stop, history, targets, keys, sets) =
                (stop.clone(), history.clone(), targets.clone(), keys.clone(), sets.clone());
            let think = shape.think;
            let seed = shape.seed.wrapping_mul(1000).wrapping_add(c as u64);
            let home = (!shape.namespaces.is_empty()).then(|| c % shape.namespaces.len());
            let netns = home.map(|h| shape.namespaces[h].clone());
            threads.push(std::thread::spawn(move || {
                if let Some(ns) = &netns {
                    // setns(2) moves only this thread: its sockets are the namespace's.
                    if let Err(e) = enter_netns(ns) {
                        panic!("client {c}: cannot enter network namespace {ns}: {e}");
                    }
                }
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut seq = 0u64;
                let mut last_read: std::collections::HashMap<String, Option<String>> = Default::default();
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let id = ((c as u64) << 40) | seq;
                    let via = match home {
                        Some(h) if h < targets.len() && rng.gen_bool(0.5) => h,
                        _ => rng.gen_range(0..targets.len()),
                    };
                    let set_op = !sets.is_empty() && rng.gen_bool(0.3);
                    let (key, op) = if set_op {
                        let key = sets[rng.gen_range(0..sets.len())].clone();
                        let op =
                            if rng.gen_bool(0.7) { Op::Append { elem: format!("c{c}-{seq}") } } else { Op::ReadSet };
                        (key, op)
                    } else {
                        let key = keys[rng.gen_range(0..keys.len())].clone();
                        let value = format!("c{c}-{seq}");
                        let op = match rng.gen_range(0..10) {
                            0..=3 => Op::Read,
                            4..=6 => Op::Write { value },
                            _ => Op::Cas { expect: last_read.get(&key).cloned().flatten(), value },
                        };
                        (key, op)
                    };
                    let rec = invoke(c, id, &targets[via], via, &key, op);
                    if rec.result == Outcome::Ok && matches!(rec.op, Op::Read) {
                        last_read.insert(key.clone(), rec.read.clone());
                    }
                    history.lock().expect("history lock").push(rec);
                    std::thread::sleep(think);
                }
            }));
        }
        Workload { stop, history, threads, keys, sets }
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.history.lock().expect("history lock").len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the clients (each finishes its operation in flight) and returns the history.
    pub fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            // A client that died (a failed setns, say) would quietly shrink the workload.
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
        let mut h = std::mem::take(&mut *self.history.lock().expect("history lock"));
        h.sort_by_key(|r| r.invoke);
        h
    }
}

/// Performs one operation and records it.
pub fn invoke(client: usize, id: u64, addr: &str, via: usize, key: &str, op: Op) -> Record {
    let (method, path, body) = match &op {
        Op::Read => ("GET", format!("/kv/{key}"), String::new()),
        Op::Write { value } => ("PUT", format!("/kv/{key}"), serde_json::Value::from(value.as_str()).to_string()),
        Op::Cas { expect, value } => {
            ("POST", format!("/kv/{key}/cas"), serde_json::json!({"expect": expect, "value": value}).to_string())
        }
        Op::Append { elem } => {
            ("POST", format!("/kv/{key}/append"), serde_json::Value::from(elem.as_str()).to_string())
        }
        Op::ReadSet => ("GET", format!("/kv/{key}/set"), String::new()),
    };
    let mut rec = Record {
        client,
        id,
        key: key.to_string(),
        op,
        invoke: monotonic_ns(),
        complete: u64::MAX,
        result: Outcome::Unknown,
        cas_ok: None,
        read: None,
        set: None,
        responder: None,
        shard: None,
        epoch: None,
        instance: None,
        via,
    };
    let answer = request(addr, method, &path, &body);
    let now = monotonic_ns();
    let (code, v) = match answer {
        Answer::NotSent => {
            rec.result = Outcome::Fail;
            rec.complete = now;
            return rec;
        }
        Answer::Unknown => return rec,
        Answer::Got(code, body) => (code, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)),
    };
    rec.responder = v["node"].as_str().map(str::to_string);
    rec.shard = v["shard"].as_u64().map(|s| s as u32);
    rec.epoch = v["epoch"].as_u64();
    rec.instance = v["instance"].as_str().map(str::to_string);
    let ok = match (&rec.op, code) {
        (Op::Read, 200) => {
            rec.read = v["value"].as_str().map(str::to_string);
            true
        }
        (Op::Read, 404) => true,
        (Op::Write { .. } | Op::Append { .. }, 200) => true,
        (Op::ReadSet, 200) => {
            rec.set = Some(
                v["set"]
                    .as_array()
                    .map_or(Vec::new(), |a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()),
            );
            true
        }
        (Op::Cas { .. }, 200) => {
            rec.cas_ok = Some(true);
            true
        }
        (Op::Cas { .. }, 409) => {
            rec.cas_ok = Some(false);
            rec.read = v["value"].as_str().map(str::to_string);
            true
        }
        _ => false,
    };
    if ok && rec.epoch.is_some() {
        rec.result = Outcome::Ok;
        rec.complete = now;
    }
    // Anything else (503 after the request may have run, a malformed answer) stays unknown.
    rec
}

enum Answer {
    NotSent,
    Unknown,
    Got(u16, String),
}

fn request(addr: &str, method: &str, path: &str, body: &str) -> Answer {
    let Ok(sa) = addr.parse::<SocketAddr>() else { return Answer::NotSent };
    let Ok(mut s) = TcpStream::connect_timeout(&sa, CONNECT) else { return Answer::NotSent };
    let _ = s.set_read_timeout(Some(ANSWER));
    let _ = s.set_write_timeout(Some(ANSWER));
    let ct = if method == "GET" { "" } else { "Content-Type: application/json\r\n" };
    let req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{ct}Content-Length: {}\r\n\r\n{body}", body.len());
    if s.write_all(req.as_bytes()).is_err() {
        return Answer::Unknown;
    }
    let mut resp = String::new();
    if s.read_to_string(&mut resp).is_err() {
        return Answer::Unknown;
    }
    let Some((head, body)) = resp.split_once("\r\n\r\n") else { return Answer::Unknown };
    match head.split_whitespace().nth(1).and_then(|c| c.parse().ok()) {
        Some(code) => Answer::Got(code, body.to_string()),
        None => Answer::Unknown,
    }
}

/// Moves the calling thread into the named network namespace (`ip netns` names).
fn enter_netns(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: setns on a namespace file descriptor we hold open; it affects this thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
