//! The clusterfunk demo node: one node per process, or `--local N` for N nodes on this machine.
//!
//! ```text
//! cargo run -p clusterfunk-demo -- --local 3
//! ```

pub mod counter;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clusterfunk::Cluster;
use tracing::{error, info};

/// Command-line flags of a demo node. The node settings have the same names as the config
/// file's keys and the `CLUSTERFUNK_*` variables (docs/operations.md, "Configuration"); a flag
/// wins over the environment, which wins over the file.
#[derive(Parser, Debug, Clone)]
#[command(name = "demo", about = "A clusterfunk demo node")]
pub struct Args {
    /// A TOML file of settings (`CLUSTERFUNK_CONFIG` works too).
    #[arg(long, env = "CLUSTERFUNK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Cluster key [default: demo].
    #[arg(long)]
    pub name: Option<String>,
    /// Environment [default: dev].
    #[arg(long)]
    pub env: Option<String>,
    /// Create a new cluster with this node as its first member.
    #[arg(long)]
    pub bootstrap: bool,
    /// Where this node keeps its key and Raft log [default: clusterfunk-data/<name>-<env>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// host:port to listen on for other nodes [default: 0.0.0.0:0].
    #[arg(long)]
    pub listen: Option<String>,
    /// The host (or host:port) other nodes and dashboard links use for this node, when it is
    /// not what it listens on (behind NAT, in a container, listening on 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,
    /// A seed host:port to join (repeatable).
    #[arg(long = "join")]
    pub join: Vec<String>,
    /// host:port for the dashboard and API.
    #[arg(long)]
    pub dashboard: Option<String>,
    /// host:port for the service's own HTTP routes (the counter or KV API), on a server of
    /// their own (port 0: any free port; `GET /api/cluster` says which). Without it they are
    /// not served.
    #[arg(long)]
    pub http: Option<String>,
    /// Worker threads of the --http server [default: one per core].
    #[arg(long)]
    pub http_workers: Option<usize>,
    /// Number of shards, fixed when the cluster is created [default: 1024].
    #[arg(long)]
    pub shards: Option<u32>,
    /// Copies of each shard: an owner and followers [default: 1].
    #[arg(long)]
    pub replica_factor: Option<u32>,
    /// This node's weight [default: 1].
    #[arg(long)]
    pub weight: Option<u32>,
    /// Worker threads this node declares [default: 1].
    #[arg(long)]
    pub workers: Option<u32>,
    /// This node's failure zone (replicas go to distinct zones).
    #[arg(long)]
    pub zone: Option<String>,
    /// Voters to keep (1, 3, 5, 7) [default: 3].
    #[arg(long)]
    pub voters: Option<usize>,
    /// Pre-shared cluster secret, 64 hex characters. Prefer `--secret-file` or
    /// `CLUSTERFUNK_SECRET`: a command line is visible to every user of the machine.
    #[arg(long)]
    pub secret: Option<String>,
    /// A file holding the cluster secret (64 hex characters).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// How nodes become members: `dev` (every node that finds the cluster joins) or
    /// `production` (only by command or `--member`) [default: dev].
    #[arg(long, value_parser = ["dev", "production"])]
    pub mode: Option<String>,
    /// Production mode: a node id admitted as a member without a command (repeatable).
    #[arg(long = "member")]
    pub members: Vec<String>,
    /// A shard's weight in a new cluster, as SHARD=WEIGHT (repeatable): a hot shard counts more
    /// in its owner's load [default: every shard 1].
    #[arg(long = "shard-weight", value_name = "SHARD=WEIGHT", value_parser = clusterfunk::parse_shard_weight)]
    pub shard_weights: Vec<(u32, u32)>,
    /// A file holding the management token that mutations (`clusterfunk member ..`) must
    /// carry; `CLUSTERFUNK_TOKEN` works too. Without one this node accepts no mutation.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Turn off mDNS discovery.
    #[arg(long)]
    pub no_mdns: bool,
    /// Serve no clients outside the cluster (`clusterfunk::Client`).
    #[arg(long)]
    pub no_clients: bool,
    /// Timings and sizes (see docs/operations.md, "Configuration", for each default and its
    /// trade-off): durations with a unit, e.g. `250ms`, `2s`.
    #[command(flatten)]
    pub timings: Timings,
    /// Start N nodes on this machine (child processes) and print their dashboards.
    #[arg(long)]
    pub local: Option<u32>,
    /// Append this node's ownership journal (JSON lines, for the checkers) to this file.
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Fault injection for the chaos lab, never in production: delay, drop, duplicate and
    /// reorder what this node sends, e.g. `delay=1ms..20ms,drop=0.01,dup=0.05,reorder=0.05`.
    #[arg(long, value_parser = parse_faults)]
    pub faults: Option<clusterfunk::FaultPlan>,
    /// Fault injection for tests and the chaos lab, never in production: the Raft store fails
    /// its durable write after this many, and the node exits with code 70.
    #[arg(long, hide = true)]
    pub fail_disk_after: Option<u64>,
    /// Fault injection for the chaos lab: when this file appears, the Raft store's next durable
    /// write stalls for the milliseconds it holds.
    #[arg(long, hide = true)]
    pub stall_disk_trigger: Option<std::path::PathBuf>,
    /// Fault injection for the chaos lab: the lease clock runs at this rate of true time.
    #[arg(long, hide = true)]
    pub lease_clock_rate: Option<f64>,
    /// Upgrade tests: announce this wire protocol version, standing in for an older build.
    #[arg(long, hide = true)]
    pub announce_wire_version: Option<u32>,
    /// Demo traffic: messages per second this node sends to random counters (0 = none).
    #[arg(long, default_value_t = 50)]
    pub traffic: u32,
}

/// The timing and size flags (each also a config key and a `CLUSTERFUNK_*` variable).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Timings {
    /// Gossip heartbeat interval [default: 250ms].
    #[arg(long, value_parser = duration)]
    pub gossip_interval: Option<Duration>,
    /// Silence before a member is suspect [default: 1s].
    #[arg(long, value_parser = duration)]
    pub suspect_after: Option<Duration>,
    /// Silence before a member is down [default: 2s].
    #[arg(long, value_parser = duration)]
    pub down_after: Option<Duration>,
    /// Raft leader heartbeat [default: 50ms].
    #[arg(long, value_parser = duration)]
    pub raft_heartbeat: Option<Duration>,
    /// Raft election timeout, low end [default: 150ms].
    #[arg(long, value_parser = duration)]
    pub election_timeout_min: Option<Duration>,
    /// Raft election timeout, high end [default: 300ms].
    #[arg(long, value_parser = duration)]
    pub election_timeout_max: Option<Duration>,
    /// L, the node lease [default: 500ms].
    #[arg(long, value_parser = duration)]
    pub lease: Option<Duration>,
    /// ρ, the largest relative clock drift [default: 0.01].
    #[arg(long)]
    pub lease_drift: Option<f64>,
    /// G, extra wait before a silent node's shards move [default: 100ms].
    #[arg(long, value_parser = duration)]
    pub lease_grace: Option<Duration>,
    /// The rebalancing mode a new cluster starts in: `auto` or `manual` [default: auto].
    #[arg(long, value_parser = ["auto", "manual"])]
    pub rebalance: Option<String>,
    /// How long a needed rebalance waits, to batch a rolling start [default: 500ms].
    #[arg(long, value_parser = duration)]
    pub rebalance_debounce: Option<Duration>,
    /// How long a remote request may take [default: 5s].
    #[arg(long, value_parser = duration)]
    pub proxy_request_timeout: Option<Duration>,
    /// How long a message waits for its shard's owner [default: 5s].
    #[arg(long, value_parser = duration)]
    pub proxy_route_wait: Option<Duration>,
    /// Frames queued per peer before a send fails [default: 4096].
    #[arg(long)]
    pub proxy_queue: Option<usize>,
    /// Messages waiting for a route at once before a send fails [default: 10000].
    #[arg(long)]
    pub proxy_max_waiting: Option<usize>,
    /// Idle time before an entity stops [default: 120s].
    #[arg(long, value_parser = duration)]
    pub passivate_after: Option<Duration>,
    /// How long each lifecycle hook may run [default: 2s].
    #[arg(long, value_parser = duration)]
    pub hook_budget: Option<Duration>,
}

fn duration(s: &str) -> Result<Duration, String> {
    clusterfunk::parse_duration(s)
}

impl Args {
    /// The node settings the flags give (only those given).
    pub fn settings(&self) -> clusterfunk::Settings {
        let t = &self.timings;
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let mut s = clusterfunk::Settings::default();
        s.name = self.name.clone();
        s.env = self.env.clone();
        s.data_dir = self.data_dir.clone();
        s.listen = self.listen.clone();
        s.advertise = self.advertise.clone();
        s.join = list(&self.join);
        s.dashboard = self.dashboard.clone();
        s.http = self.http.clone();
        s.http_workers = self.http_workers;
        s.bootstrap = self.bootstrap.then_some(true);
        s.mdns = self.no_mdns.then_some(false);
        s.accept_clients = self.no_clients.then_some(false);
        s.shards = self.shards;
        s.replica_factor = self.replica_factor;
        s.voters = self.voters;
        s.weight = self.weight;
        s.workers = self.workers;
        s.zone = self.zone.clone();
        s.mode = self.mode.as_deref().map(|m| {
            if m == "production" {
                clusterfunk::Mode::Production
            } else {
                clusterfunk::Mode::Dev
            }
        });
        s.members = list(&self.members);
        s.shard_weights = (!self.shard_weights.is_empty()).then(|| self.shard_weights.clone());
        s.secret_file = self.secret_file.clone();
        s.secret = self.secret.clone();
        s.token_file = self.token_file.clone();
        s.passivate_after = t.passivate_after;
        s.hook_budget = t.hook_budget;
        s.gossip_interval = t.gossip_interval;
        s.suspect_after = t.suspect_after;
        s.down_after = t.down_after;
        s.raft_heartbeat = t.raft_heartbeat;
        s.election_timeout_min = t.election_timeout_min;
        s.election_timeout_max = t.election_timeout_max;
        s.lease = t.lease;
        s.lease_drift = t.lease_drift;
        s.lease_grace = t.lease_grace;
        s.rebalance_debounce = t.rebalance_debounce;
        s.rebalance = t.rebalance.as_deref().map(|m| {
            if m == "manual" {
                clusterfunk::Rebalance::Manual
            } else {
                clusterfunk::Rebalance::Auto
            }
        });
        s.proxy_request_timeout = t.proxy_request_timeout;
        s.proxy_route_wait = t.proxy_route_wait;
        s.proxy_queue = t.proxy_queue;
        s.proxy_max_waiting = t.proxy_max_waiting;
        s
    }

    /// The settings in force: the config file, the environment, then these flags.
    pub fn resolve(&self) -> Result<clusterfunk::Settings, clusterfunk::ConfigError> {
        clusterfunk::Settings::load(self.config.as_deref(), self.settings())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_passes_every_flag_but_the_ones_it_decides() {
        let args = [
            "--local",
            "3",
            "--mode",
            "production",
            "--listen=1.2.3.4:5",
            "--http",
            "1.2.3.4:6",
            "--zone",
            "a",
            "--bootstrap",
        ];
        let got = super::passed_to_children(args.iter().map(|s| s.to_string()));
        assert_eq!(got, ["--mode", "production", "--zone", "a"]);
    }
}

fn parse_faults(s: &str) -> Result<clusterfunk::FaultPlan, String> {
    s.parse().map_err(|e: clusterfunk::FaultPlanError| e.to_string())
}

/// What a service built on the demo node adds: its entity types and its HTTP routes.
#[derive(Clone, Copy)]
pub struct App {
    /// Registers the service's entity types on the builder.
    pub register: fn(clusterfunk::Builder) -> clusterfunk::Builder,
    /// The service's HTTP routes, served on the `--http` address by a server of their own.
    pub routes: fn(&mut actix_web::web::ServiceConfig),
    /// Background load for `--traffic`, if the service has one.
    pub traffic: Option<fn(Cluster, u32) -> futures::future::LocalBoxFuture<'static, ()>>,
}

/// The demo: a counter per key.
pub const DEMO: App = App {
    register: |b| b.entity::<counter::Counter>(),
    routes: counter::routes,
    traffic: Some(|c, rate| Box::pin(traffic(c, rate))),
};

/// Parses the process arguments and runs the demo; returns the process exit code.
pub fn main() -> i32 {
    main_with(DEMO)
}

/// Parses the process arguments and runs `app` (one node, or `--local N`); returns the exit code.
pub fn main_with(app: App) -> i32 {
    let args = Args::parse();
    clusterfunk::logging::init("info,openraft=warn,libp2p=warn", clusterfunk::logging::Output::Stdout);
    let result = match args.local {
        Some(n) => run_local(&args, n),
        None => actix_rt::System::new().block_on(run_node(args, app)),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let e = describe(&e);
            error!("{e}");
            eprintln!("error: {e}");
            2
        }
    }
}

/// Runs one node of `app` until Ctrl-C or SIGTERM.
pub async fn run_node(args: Args, app: App) -> anyhow::Result<()> {
    let settings = args.resolve()?;
    if args.secret.is_some() {
        tracing::warn!("--secret on the command line is visible to every user of this machine; use --secret-file or CLUSTERFUNK_SECRET");
    }
    let mut b = (app.register)(Cluster::builder().name("demo")).settings(&settings)?;
    if let Some(j) = &args.journal {
        b = b.journal(j);
    }
    if let Some(plan) = &args.faults {
        tracing::warn!(%plan, "message fault injection is on: this node delays, drops, duplicates and reorders what it sends");
        b = b.message_faults(plan.clone());
    }
    if let Some(n) = args.fail_disk_after {
        tracing::warn!(writes = n, "storage fault injection is on: the Raft store fails after this many writes");
        b = b.fail_disk_after(n);
    }
    if let Some(p) = &args.stall_disk_trigger {
        b = b.disk_stall_trigger(p.clone());
    }
    if let Some(rate) = args.lease_clock_rate {
        b = b.lease_clock_rate(rate);
    }
    if let Some(v) = args.announce_wire_version {
        tracing::warn!(wire = v, "announcing an older wire protocol version (an upgrade test)");
        b = b.announce_wire_version(v);
    }
    let config = b.build()?;
    let cluster = if settings.http.is_some() {
        config.start_with_http(app.routes).await?
    } else {
        info!("no --http: the service's own HTTP routes are not served");
        config.start().await?
    };
    if let (Some(load), true) = (app.traffic, args.traffic > 0) {
        actix_rt::spawn(load(cluster.clone(), args.traffic));
    }
    match cluster.dashboard_addr() {
        Some(addr) => info!(node = %cluster.node_id(), "node running; dashboard at http://{addr}/"),
        None => info!(node = %cluster.node_id(), "node running (no dashboard: pass --dashboard host:port)"),
    }
    if let Some(addr) = cluster.http_addr() {
        info!(node = %cluster.node_id(), "service at http://{addr}/");
    }
    wait_for_signal().await;
    info!("leaving the cluster: handing off shards");
    if let Err(e) = cluster.leave(Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "left without a complete handoff");
    }
    Ok(())
}

/// Keeps messages flowing to random counters so the dashboard shows a live service.
async fn traffic(cluster: Cluster, per_second: u32) {
    let counters = cluster.sharded::<counter::Counter>();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut errors = 0u64;
    loop {
        tick.tick().await;
        let key = format!("user-{}", rand::random::<u32>() % 1000);
        if let Err(e) = counters.send(&key, counter::Add(1)).await {
            errors += 1;
            if errors.is_power_of_two() {
                tracing::warn!(error = %e, errors, "demo traffic: a message failed");
            }
        }
    }
}

/// The error and its causes, each once: the library's errors already name their source in
/// their message, so `{:#}` would repeat it.
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The flags of a `--local` run that its children get too: all but those `--local` decides for
/// each child (with their values).
fn passed_to_children(args: impl Iterator<Item = String>) -> Vec<String> {
    const DECIDED: &[&str] = &["--local", "--listen", "--dashboard", "--http", "--data-dir", "--join", "--advertise"];
    const SWITCHES: &[&str] = &["--bootstrap", "--no-mdns", "--no-clients"];
    let mut out = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if SWITCHES.contains(&a.as_str()) {
            continue;
        }
        if let Some(flag) = DECIDED.iter().find(|f| a == **f || a.starts_with(&format!("{f}="))) {
            if a == *flag {
                args.next();
            }
            continue;
        }
        out.push(a);
    }
    out
}

/// Starts `n` nodes as child processes on loopback and waits for Ctrl-C.
fn run_local(args: &Args, n: u32) -> anyhow::Result<()> {
    anyhow::ensure!((1..=16).contains(&n), "--local: {n} is not between 1 and 16");
    let settings = args.resolve()?;
    let passed = passed_to_children(std::env::args().skip(1));
    let exe = std::env::current_exe().context("cannot find the demo executable")?;
    let tmp;
    let base: &Path = match &args.data_dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new().prefix("clusterfunk-demo-").tempdir()?;
            tmp.path()
        }
    };
    let ports: Vec<(u16, u16, u16)> =
        (0..n).map(|_| Ok((free_port()?, free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
    let seed = format!("127.0.0.1:{}", ports[0].0);
    let mut children: Vec<Child> = Vec::new();
    for (i, (p2p, dash, http)) in ports.iter().enumerate() {
        let dir = base.join(format!("node-{i}"));
        let mut cmd = Command::new(&exe);
        // The children read the same config file and environment, and get every flag given
        // here but the ones `--local` decides for each (its addresses, data dir, seed, who
        // bootstraps): those it sets itself.
        cmd.args(&passed)
            .args(["--no-mdns", "--listen", &format!("127.0.0.1:{p2p}"), "--dashboard", &format!("127.0.0.1:{dash}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .arg("--data-dir")
            .arg(&dir);
        if !passed.iter().any(|a| a == "--name" || a.starts_with("--name=")) {
            cmd.args(["--name", settings.name.as_deref().unwrap_or("demo")]);
        }
        if i == 0 && !dir.join("raft.redb").exists() {
            cmd.arg("--bootstrap");
        }
        if i > 0 {
            cmd.args(["--join", &seed]);
        }
        children.push(cmd.spawn().with_context(|| format!("cannot start node {i}"))?);
        println!(
            "node {i}: dashboard http://127.0.0.1:{dash}/  service http://127.0.0.1:{http}/  (data {})",
            dir.display()
        );
    }
    println!("{n} nodes running; press Ctrl-C to stop them");
    let rt = actix_rt::System::new();
    rt.block_on(async {
        loop {
            tokio::select! {
                _ = wait_for_signal() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Some((i, status)) = children.iter_mut().enumerate().find_map(|(i, c)| c.try_wait().ok().flatten().map(|s| (i, s))) {
                        println!("node {i} exited with {status}");
                        break;
                    }
                }
            }
        }
    });
    for c in &mut children {
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
    }
    for c in &mut children {
        let _ = c.wait();
    }
    Ok(())
}
