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

/// Command-line flags of a demo node.
#[derive(Parser, Debug, Clone)]
#[command(name = "demo", about = "A clusterfunk demo node")]
pub struct Args {
    /// Cluster key.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Environment.
    #[arg(long, default_value = "dev")]
    pub env: String,
    /// Create a new cluster with this node as its first member.
    #[arg(long)]
    pub bootstrap: bool,
    /// Where this node keeps its key and Raft log (default `clusterfunk-data/<name>-<env>`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// host:port to listen on for other nodes.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub listen: String,
    /// A seed host:port to join (repeatable).
    #[arg(long = "join")]
    pub join: Vec<String>,
    /// host:port for the dashboard and API.
    #[arg(long)]
    pub dashboard: Option<String>,
    /// Number of shards (fixed when the cluster is created).
    #[arg(long, default_value_t = 1024)]
    pub shards: u32,
    /// This node's weight.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// Worker threads this node declares.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Voters to keep (1, 3, 5, 7).
    #[arg(long, default_value_t = 3)]
    pub voters: usize,
    /// Pre-shared cluster secret, 64 hex characters. Prefer `--secret-file` or
    /// `CLUSTERFUNK_SECRET`: a command line is visible to every user of the machine.
    #[arg(long, env = "CLUSTERFUNK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file holding the cluster secret (64 hex characters).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// How nodes become members: `dev` (every node that finds the cluster joins) or
    /// `production` (only by command or `--member`).
    #[arg(long, default_value = "dev", value_parser = ["dev", "production"])]
    pub mode: String,
    /// Production mode: a node id admitted as a member without a command (repeatable).
    #[arg(long = "member")]
    pub members: Vec<String>,
    /// A file holding the management token that mutations (`clusterfunk member ..`) must
    /// carry; `CLUSTERFUNK_TOKEN` works too. Without one this node accepts no mutation.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Turn off mDNS discovery.
    #[arg(long)]
    pub no_mdns: bool,
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
    /// Demo traffic: messages per second this node sends to random counters (0 = none).
    #[arg(long, default_value_t = 50)]
    pub traffic: u32,
}

fn parse_faults(s: &str) -> Result<clusterfunk::FaultPlan, String> {
    s.parse().map_err(|e: clusterfunk::FaultPlanError| e.to_string())
}

/// What a service built on the demo node adds: its entity types and its HTTP routes.
#[derive(Clone, Copy)]
pub struct App {
    /// Registers the service's entity types on the builder.
    pub register: fn(clusterfunk::Builder) -> clusterfunk::Builder,
    /// The service's HTTP routes, served beside the dashboard.
    pub routes: fn(&mut actix_web::web::ServiceConfig),
    /// Background load for `--traffic`, if the service has one.
    pub traffic: Option<fn(Cluster, u32) -> futures::future::LocalBoxFuture<'static, ()>>,
}

/// The demo: a counter per key.
pub const DEMO: App = App {
    register: |b| b.entity::<counter::Counter>(|e| e.handles::<counter::Add>()),
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,libp2p=warn"));
    // Colours only on a terminal: a node's output in a log file stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
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
    let mut b = Cluster::builder()
        .name(&args.name)
        .env(&args.env)
        .bootstrap(args.bootstrap)
        .listen(&args.listen)
        .shards(args.shards)
        .weight(args.weight)
        .workers(args.workers)
        .voters(args.voters)
        .mdns(!args.no_mdns);
    b = (app.register)(b);
    if let Some(d) = &args.data_dir {
        b = b.data_dir(d);
    }
    if let Some(d) = &args.dashboard {
        b = b.dashboard(d);
    }
    if let Some(j) = &args.journal {
        b = b.journal(j);
    }
    if let Some(path) = &args.secret_file {
        let s = std::fs::read_to_string(path).with_context(|| format!("--secret-file {}", path.display()))?;
        b = b.secret(s.trim());
    } else if let Some(s) = &args.secret {
        if std::env::var_os("CLUSTERFUNK_SECRET").is_none() {
            tracing::warn!("--secret on the command line is visible to every user of this machine; use --secret-file or CLUSTERFUNK_SECRET");
        }
        b = b.secret(s);
    }
    if args.mode == "production" {
        b = b.mode(clusterfunk::Mode::Production);
    }
    for m in &args.members {
        b = b.member(m);
    }
    if let Some(path) = &args.token_file {
        let t = std::fs::read_to_string(path).with_context(|| format!("--token-file {}", path.display()))?;
        b = b.management_token(t.trim());
    } else if let Ok(t) = std::env::var("CLUSTERFUNK_TOKEN") {
        b = b.management_token(t.trim());
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
    for j in &args.join {
        b = b.join(j);
    }
    let cluster = b.build()?.start_with_routes(app.routes).await?;
    if let (Some(load), true) = (app.traffic, args.traffic > 0) {
        actix_rt::spawn(load(cluster.clone(), args.traffic));
    }
    match cluster.dashboard_addr() {
        Some(addr) => info!(node = %cluster.node_id(), "node running; dashboard at http://{addr}/"),
        None => info!(node = %cluster.node_id(), "node running (no dashboard: pass --dashboard host:port)"),
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

/// Starts `n` nodes as child processes on loopback and waits for Ctrl-C.
fn run_local(args: &Args, n: u32) -> anyhow::Result<()> {
    anyhow::ensure!((1..=16).contains(&n), "--local: {n} is not between 1 and 16");
    let exe = std::env::current_exe().context("cannot find the demo executable")?;
    let tmp;
    let base: &Path = match &args.data_dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new().prefix("clusterfunk-demo-").tempdir()?;
            tmp.path()
        }
    };
    let ports: Vec<(u16, u16)> = (0..n).map(|_| Ok((free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
    let seed = format!("127.0.0.1:{}", ports[0].0);
    let mut children: Vec<Child> = Vec::new();
    for (i, (p2p, http)) in ports.iter().enumerate() {
        let dir = base.join(format!("node-{i}"));
        let mut cmd = Command::new(&exe);
        cmd.args(["--name", &args.name, "--env", &args.env, "--no-mdns"])
            .args(["--listen", &format!("127.0.0.1:{p2p}"), "--dashboard", &format!("127.0.0.1:{http}")])
            .args(["--shards", &args.shards.to_string(), "--voters", &args.voters.to_string()])
            .args(["--traffic", &args.traffic.to_string()])
            .arg("--data-dir")
            .arg(&dir);
        if i == 0 && !dir.join("raft.redb").exists() {
            cmd.arg("--bootstrap");
        }
        if i > 0 {
            cmd.args(["--join", &seed]);
        }
        children.push(cmd.spawn().with_context(|| format!("cannot start node {i}"))?);
        println!("node {i}: dashboard http://127.0.0.1:{http}/  (data {})", dir.display());
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
