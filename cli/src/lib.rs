//! `clusterfunk`: operate a cluster through any node's management API (docs/operations.md).
//!
//! ```text
//! clusterfunk --node 10.0.0.5:8080 members
//! CLUSTERFUNK_TOKEN=... clusterfunk member replace 1f2e3d4c5b6a7988 --by 0a1b2c3d4e5f6071
//! ```
//!
//! The binary is `clusterfunk`; this library is its whole code ([`main`]).
//!
//! Exit codes: 0 done, 1 refused or failed (the reason on stderr), 2 usage, 3 node unreachable.

use std::io::{BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(name = "clusterfunk", about = "Operate a clusterfunk cluster through any node's management API")]
struct Cli {
    /// The node to talk to (its dashboard `host:port`).
    #[arg(long, global = true, env = "CLUSTERFUNK_NODE", default_value = "127.0.0.1:8080")]
    node: String,
    /// A file holding the management token (mutations need it; `CLUSTERFUNK_TOKEN` works too).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The answering node's view: leader, term, members, shard map.
    Status,
    /// Every member: Raft role, liveness, drain, shards owned.
    Members,
    /// Change membership (leader-side, through Raft; relayed by the node you talk to).
    Member {
        #[command(subcommand)]
        op: MemberCmd,
    },
    /// Raft leadership.
    Leader {
        #[command(subcommand)]
        op: LeaderCmd,
    },
    /// Hand off all of a node's shards; it stays a member and gets none until `undrain`.
    Drain {
        /// Node id or host:port.
        #[arg(value_name = "NODE")]
        target: String,
    },
    /// End a drain.
    Undrain {
        /// Node id or host:port.
        #[arg(value_name = "NODE")]
        target: String,
    },
    /// The shard map as of now (the same answer from any node), with owners, replicas, epochs
    /// and handoffs in progress.
    Shards {
        /// Only the shards this node owns, follows or hands off (`--node` names the node to talk
        /// to).
        #[arg(long = "of", value_name = "NODE")]
        only: Option<String>,
    },
    /// Move or pin one shard.
    Shard {
        #[command(subcommand)]
        op: ShardCmd,
    },
    /// The allocator's plan, and carrying it out.
    Rebalance {
        #[command(subcommand)]
        op: RebalanceCmd,
    },
    /// Follow the node's cluster events (joins, leaves, leader changes, rebalances, shards moving
    /// to or from it) until interrupted.
    Events {
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    /// Admit a node the cluster sees as a learner (by id, or the host:port it listens on).
    Add {
        /// Node id or host:port.
        #[arg(value_name = "NODE")]
        target: String,
    },
    /// Take a node out of the cluster (refused if it would leave no quorum of live voters).
    Remove {
        /// Node id or host:port.
        #[arg(value_name = "NODE")]
        target: String,
    },
    /// Make a learner a voter.
    Promote {
        /// Node id or host:port.
        #[arg(value_name = "NODE")]
        target: String,
    },
    /// Make a voter a learner.
    Demote {
        /// Node id or host:port.
        #[arg(value_name = "NODE")]
        target: String,
    },
    /// Give a (dead) voter's seat to another node in one step, and remove it.
    Replace {
        /// The voter to replace.
        #[arg(value_name = "OLD")]
        old: String,
        /// The node taking its seat (added as a learner first if it is not one).
        #[arg(long)]
        by: String,
    },
}

#[derive(Subcommand, Debug)]
enum ShardCmd {
    /// Pin a shard to a node: it moves there by graceful handoff and stays there while the node
    /// is a member that is not draining.
    Move {
        /// The shard number.
        #[arg(value_name = "SHARD")]
        shard: u32,
        /// Node id or host:port.
        #[arg(long, value_name = "NODE")]
        to: String,
    },
    /// Unpin a shard: the allocator places it again.
    Unpin {
        /// The shard number.
        #[arg(value_name = "SHARD")]
        shard: u32,
    },
    /// Set a shard's weight (1 to 1000000; 1 is the default): a hot shard counts more in its
    /// owner's load, and the allocator balances the total weight per node.
    Weight {
        /// The shard number.
        #[arg(value_name = "SHARD")]
        shard: u32,
        /// Its weight.
        #[arg(value_name = "WEIGHT")]
        weight: u32,
    },
}

#[derive(Subcommand, Debug)]
enum RebalanceCmd {
    /// Which shards would move now, from where, to where and why (moves nothing).
    Plan,
    /// Carry out the plan with this id (refused if the cluster changed since).
    Commit {
        /// The id `rebalance plan` printed.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Send the handoffs in flight back to their old owners; rebalancing becomes manual.
    Abort,
    /// `manual`: moves that only balance load wait for a commit; `auto`: they happen on their
    /// own (failover, drains and pins are always automatic).
    Mode {
        /// `auto` or `manual`.
        #[arg(value_name = "MODE", value_parser = ["auto", "manual"])]
        mode: String,
    },
}

#[derive(Subcommand, Debug)]
enum LeaderCmd {
    /// Hand Raft leadership to the most caught-up other voter.
    StepDown,
}

/// Why a command did not succeed, with its exit code.
enum Failure {
    /// The node answered with a refusal or error (exit 1).
    Refused(String),
    /// The node could not be reached (exit 3).
    Unreachable(String),
}

/// Parses the process arguments, runs the command and returns the exit code: 0 done, 1 refused
/// or failed, 2 usage (clap exits with it itself), 3 node unreachable.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => 0,
        Err(Failure::Refused(why)) => {
            eprintln!("clusterfunk: {why}");
            1
        }
        Err(Failure::Unreachable(why)) => {
            eprintln!("clusterfunk: {why}");
            3
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let api = Api { node: cli.node.clone(), token: token(cli)? };
    let path_of = |node: &str| format!("/cluster/members/{}", encode(node));
    let answer = match &cli.command {
        Cmd::Status => {
            let s = api.call("GET", "/api/cluster", None)?;
            if cli.json {
                return print_json(&s);
            }
            return print_status(&s);
        }
        Cmd::Members => {
            let m = api.call("GET", "/cluster/members", None)?;
            if cli.json {
                return print_json(&m);
            }
            return print_members(&m);
        }
        Cmd::Member { op: MemberCmd::Add { target } } => {
            api.call("POST", "/cluster/members", Some(serde_json::json!({ "node": target })))?
        }
        Cmd::Member { op: MemberCmd::Remove { target } } => api.call("DELETE", &path_of(target), None)?,
        Cmd::Member { op: MemberCmd::Promote { target } } => api.put_op(&path_of(target), "promote", None)?,
        Cmd::Member { op: MemberCmd::Demote { target } } => api.put_op(&path_of(target), "demote", None)?,
        Cmd::Member { op: MemberCmd::Replace { old, by } } => api.put_op(&path_of(old), "replace", Some(by))?,
        Cmd::Drain { target } => api.put_op(&path_of(target), "drain", None)?,
        Cmd::Undrain { target } => api.put_op(&path_of(target), "undrain", None)?,
        Cmd::Leader { op: LeaderCmd::StepDown } => api.call("POST", "/cluster/leader/step-down", None)?,
        Cmd::Shards { only } => {
            let path = match only {
                Some(n) => format!("/cluster/shards?node={}", encode(n)),
                None => "/cluster/shards".to_string(),
            };
            let m = api.call("GET", &path, None)?;
            if cli.json {
                return print_json(&m);
            }
            return print_shards(&m);
        }
        Cmd::Events { limit } => return api.follow("/cluster/events", *limit, cli.json),
        Cmd::Shard { op: ShardCmd::Move { shard, to } } => {
            api.call("PUT", &format!("/cluster/shards/{shard}"), Some(serde_json::json!({ "to": to })))?
        }
        Cmd::Shard { op: ShardCmd::Unpin { shard } } => {
            api.call("PUT", &format!("/cluster/shards/{shard}"), Some(serde_json::json!({ "to": null })))?
        }
        Cmd::Shard { op: ShardCmd::Weight { shard, weight } } => {
            api.call("PUT", &format!("/cluster/shards/{shard}/weight"), Some(serde_json::json!({ "weight": weight })))?
        }
        Cmd::Rebalance { op } => {
            let answer = match op {
                RebalanceCmd::Plan => api.call("POST", "/cluster/rebalance/plan", None)?,
                RebalanceCmd::Commit { id } => {
                    api.call("POST", "/cluster/rebalance/commit", Some(serde_json::json!({ "id": id })))?
                }
                RebalanceCmd::Abort => api.call("POST", "/cluster/rebalance/abort", None)?,
                RebalanceCmd::Mode { mode } => {
                    api.call("PUT", "/cluster/rebalance", Some(serde_json::json!({ "mode": mode })))?
                }
            };
            if cli.json {
                return print_json(&answer);
            }
            if answer["plan"].is_object() {
                return print_plan(&answer["plan"], matches!(op, RebalanceCmd::Commit { .. }));
            }
            answer
        }
    };
    if cli.json {
        return print_json(&answer);
    }
    match answer["leader"].as_str() {
        Some(l) => println!("done (leader {l})"),
        None => println!("done"),
    }
    Ok(())
}

/// A plan as a table: its id, then one row per move.
fn print_plan(p: &Value, committed: bool) -> Result<(), Failure> {
    let moves = p["moves"].as_array().cloned().unwrap_or_default();
    let verb = if committed { "committed" } else { "plan" };
    println!(
        "{verb} {} at epoch {} ({} moves of weight {}, {} replica changes, rebalancing {})",
        p["id"].as_str().unwrap_or("?"),
        p["epoch"],
        moves.len(),
        text(&p["moved_weight"]),
        p["replica_changes"],
        p["mode"].as_str().unwrap_or("?"),
    );
    let loads: Vec<Vec<String>> = p["loads"]
        .as_array()
        .map(|a| {
            a.iter().map(|l| vec![text(&l["node"]), text(&l["quota"]), text(&l["before"]), text(&l["after"])]).collect()
        })
        .unwrap_or_default();
    if !loads.is_empty() {
        table(&["NODE", "QUOTA", "LOAD NOW", "LOAD AFTER"], loads);
    }
    if moves.is_empty() {
        return Ok(());
    }
    println!("{:>6}  {:>7}  {:<16}  {:<16}  {:<11}  PROMOTED", "SHARD", "WEIGHT", "FROM", "TO", "WHY");
    for m in moves {
        println!(
            "{:>6}  {:>7}  {:<16}  {:<16}  {:<11}  {}",
            m["shard"],
            text(&m["weight"]),
            m["from"].as_str().unwrap_or("-"),
            m["to"].as_str().unwrap_or("-"),
            m["reason"].as_str().unwrap_or("?"),
            if m["promoted"] == true { "yes" } else { "no" },
        );
    }
    if !committed {
        println!("commit with: clusterfunk rebalance commit {}", p["id"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// The token from `--token-file` or `CLUSTERFUNK_TOKEN` (never a command-line value: other users
/// of the machine can read command lines).
fn token(cli: &Cli) -> Result<Option<String>, Failure> {
    if let Some(path) = &cli.token_file {
        let t = std::fs::read_to_string(path)
            .map_err(|e| Failure::Refused(format!("--token-file {}: {e}", path.display())))?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("CLUSTERFUNK_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

/// Percent-encodes what is not safe in a path segment (a host:port's colon is).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads an HTTP body that may be chunked, handing each piece to `f` as it arrives; `f`
/// returns false to stop.
fn read_body(r: &mut impl std::io::BufRead, chunked: bool, mut f: impl FnMut(&str) -> bool) -> std::io::Result<()> {
    let mut line = String::new();
    if !chunked {
        while r.read_line(&mut line)? > 0 {
            if !f(&line) {
                return Ok(());
            }
            line.clear();
        }
        return Ok(());
    }
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            return Ok(());
        }
        let mut buf = vec![0; size + 2];
        r.read_exact(&mut buf)?;
        if !f(&String::from_utf8_lossy(&buf[..size])) {
            return Ok(());
        }
    }
}

/// The node's HTTP API.
struct Api {
    node: String,
    token: Option<String>,
}

impl Api {
    fn put_op(&self, path: &str, operation: &str, by: Option<&String>) -> Result<Value, Failure> {
        let mut body = serde_json::json!({ "operation": operation });
        if let Some(by) = by {
            body["by"] = Value::String(by.clone());
        }
        self.call("PUT", path, Some(body))
    }

    /// Follows a server-sent event stream, printing each event (`kind {json}`, or the JSON with
    /// its kind under `--json`), until it ends or `limit` events were printed.
    fn follow(&self, path: &str, limit: Option<u64>, json: bool) -> Result<(), Failure> {
        let unreachable = |e: &dyn std::fmt::Display| self.unreachable(e);
        let mut s = self.connect()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", self.node)
            .map_err(|e| unreachable(&e))?;
        let mut r = std::io::BufReader::new(s);
        let mut chunked = false;
        let mut status = 0u16;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(|e| unreachable(&e))? == 0 || line == "\r\n" {
                break;
            }
            if status == 0 {
                status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            }
            chunked |= line.to_ascii_lowercase().starts_with("transfer-encoding: chunked");
        }
        if status != 200 {
            return Err(Failure::Refused(format!("{path} answered {status}")));
        }
        let (mut pending, mut printed) = (String::new(), 0u64);
        let (mut kind, mut data) = (String::new(), String::new());
        read_body(&mut r, chunked, |piece| {
            pending.push_str(piece);
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                let line = line.trim_end();
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_string();
                } else if line.is_empty() && !kind.is_empty() {
                    if json {
                        let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                        println!("{}", serde_json::json!({ "event": kind, "data": v }));
                    } else {
                        println!("{kind} {data}");
                    }
                    let _ = std::io::stdout().flush();
                    kind.clear();
                    data.clear();
                    printed += 1;
                    if limit.is_some_and(|l| printed >= l) {
                        return false;
                    }
                }
            }
            true
        })
        .map_err(|e| unreachable(&e))
    }

    /// The node could not be reached (exit 3), and why.
    fn unreachable(&self, e: &dyn std::fmt::Display) -> Failure {
        Failure::Unreachable(format!("node {} unreachable: {e}", self.node))
    }

    /// A connection to the node.
    fn connect(&self) -> Result<TcpStream, Failure> {
        let addr = self
            .node
            .to_socket_addrs()
            .map_err(|e| self.unreachable(&e))?
            .next()
            .ok_or_else(|| self.unreachable(&"resolves to no address"))?;
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| self.unreachable(&e))
    }

    /// One request; a non-2xx answer is a refusal with the node's reason.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let unreachable = |e: &dyn std::fmt::Display| self.unreachable(e);
        let mut s = self.connect()?;
        // Membership steps wait for learners to catch up (10 s) and for the lock (15 s).
        s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| unreachable(&e))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: {}\r\n", self.node, body.len());
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).map_err(|e| unreachable(&e))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).map_err(|e| unreachable(&e))?;
        let resp = String::from_utf8_lossy(&resp);
        let (head, body) = resp.split_once("\r\n\r\n").ok_or_else(|| unreachable(&"no HTTP answer"))?;
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| unreachable(&"no status code"))?;
        let json: Value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.trim().to_string()));
        if !(200..300).contains(&code) {
            let why = json["error"].as_str().map(str::to_string).unwrap_or_else(|| json.to_string());
            return Err(Failure::Refused(match code {
                401 => format!("{why} (set CLUSTERFUNK_TOKEN or --token-file)"),
                _ => why,
            }));
        }
        Ok(json)
    }
}

fn print_shards(m: &Value) -> Result<(), Failure> {
    println!(
        "epoch {}, {} shards, replica factor {}, rebalancing {} (applied index {})",
        text(&m["epoch"]),
        text(&m["shards"]),
        text(&m["replica_factor"]),
        text(&m["rebalance"]),
        text(&m["applied_index"])
    );
    let rows = m["assignments"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let replicas: Vec<String> =
                        r["replicas"].as_array().map(|v| v.iter().map(text).collect()).unwrap_or_default();
                    let handoff = match &r["handoff"] {
                        Value::Null => "-".to_string(),
                        h => format!("{} -> {}", text(&h["from"]), text(&h["to"])),
                    };
                    let replicas = if replicas.is_empty() { "-".to_string() } else { replicas.join(",") };
                    let pinned = if r["pinned"].is_null() { "-".to_string() } else { text(&r["pinned"]) };
                    vec![
                        text(&r["shard"]),
                        text(&r["owner"]),
                        replicas,
                        text(&r["epoch"]),
                        text(&r["weight"]),
                        handoff,
                        pinned,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["SHARD", "OWNER", "REPLICAS", "EPOCH", "WEIGHT", "HANDOFF", "PINNED"], rows);
    Ok(())
}

fn print_json(v: &Value) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().zip(&width).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn print_members(m: &Value) -> Result<(), Failure> {
    let rows = m
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let mut role = text(&m["role"]);
                    if m["leader"].as_bool() == Some(true) {
                        role.push_str(" (leader)");
                    }
                    let drain = if m["drained"].as_bool() == Some(true) {
                        "drained"
                    } else if m["draining"].as_bool() == Some(true) {
                        "leaving"
                    } else {
                        "-"
                    };
                    let (id, state, shards, addr, wire) =
                        (text(&m["id"]), text(&m["state"]), text(&m["shards"]), text(&m["addr"]), text(&m["wire"]));
                    let workers = match (m["worker_first"].as_u64(), m["workers"].as_u64()) {
                        (Some(first), Some(n)) if n > 0 => format!("{first}-{}", first.saturating_add(n - 1)),
                        _ => "-".into(),
                    };
                    vec![id, text(&m["name"]), role, state, drain.into(), shards, workers, wire, addr]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["ID", "NAME", "ROLE", "STATE", "DRAIN", "SHARDS", "WORKERS", "WIRE", "ADDRESS"], rows);
    Ok(())
}

fn print_status(s: &Value) -> Result<(), Failure> {
    match s["node_name"].as_str() {
        Some(name) => println!("node      {} ({name})", text(&s["node_id"])),
        None => println!("node      {}", text(&s["node_id"])),
    }
    let w = &s["workers"];
    println!(
        "workers   index {} count {} of {} (epoch {})",
        text(&w["index"]),
        text(&w["count"]),
        text(&w["total"]),
        text(&w["epoch"])
    );
    println!("cluster   {}/{}", text(&s["cluster"]["name"]), text(&s["cluster"]["env"]));
    println!("leader    {} (term {})", text(&s["leader"]), text(&s["term"]));
    println!("raft      {} applied {}", text(&s["raft"]["state"]), text(&s["raft"]["last_applied"]));
    let m = &s["shard_map"];
    println!(
        "shards    {} (epoch {}, replica factor {}, unassigned {})",
        text(&m["shards"]),
        text(&m["epoch"]),
        text(&m["replica_factor"]),
        text(&m["unassigned"])
    );
    let members = s["members"].as_array().map_or(0, |a| a.len());
    println!("members   {members}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        // Clap checks its definitions only for the subcommand a run uses: check them all.
        super::Cli::command().debug_assert();
    }
}
