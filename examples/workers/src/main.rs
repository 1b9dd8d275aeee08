//! `workers`: libcluster's `cluster-test` on clusterfunk. Each instance declares a worker count
//! and prints its place in the cluster-wide worker index whenever it changes:
//!
//! ```text
//! instance index: 2
//! instance thread count: 1
//! total thread count: 7
//! epoch: 14
//! ```
//!
//! Three instances `-i node1 -n 2`, `-i node2`, `-i node3 -n 4` get indices 0, 2 and 3 of 7;
//! when node2 leaves (Ctrl-C), it prints index -1, node3 moves to 2 and the total drops to 6.
//! With `-I INDEX -T TOTAL` the index is static: taken from the flags, no coordination.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clusterfunk::{Cluster, ClusterEvent, WorkerIndex};

#[derive(Parser, Debug)]
#[command(name = "workers", about = "Print this instance's place in the cluster-wide worker index")]
struct Args {
    /// Cluster key.
    #[arg(short = 'k', long = "key", default_value = "workers")]
    key: String,
    /// Environment.
    #[arg(short = 'e', long = "env", default_value = "dev")]
    env: String,
    /// The instance id: names this node for people and orders the worker ranges.
    #[arg(short = 'i', long = "id")]
    id: Option<String>,
    /// Worker threads this instance runs.
    #[arg(short = 'n', long = "count", default_value_t = 1)]
    count: u32,
    /// Log what the node does (to stderr).
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Static mode: this instance's first worker index (with -T).
    #[arg(short = 'I', long = "index", requires = "total")]
    index: Option<u64>,
    /// Static mode: the total worker count (with -I).
    #[arg(short = 'T', long = "total", requires = "index")]
    total: Option<u64>,
    /// host:port to listen on for other nodes.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: String,
    /// A seed host:port to join (repeatable).
    #[arg(long = "join")]
    join: Vec<String>,
    /// Where this instance keeps its key, Raft log and instance id.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// host:port for the dashboard and API.
    #[arg(long)]
    dashboard: Option<String>,
    /// Create a new cluster with this instance as its first member.
    #[arg(long)]
    bootstrap: bool,
    /// Turn off mDNS discovery.
    #[arg(long)]
    no_mdns: bool,
}

fn print(w: &WorkerIndex) {
    let mut out = std::io::stdout().lock();
    let index = w.index.map_or(-1, |i| i as i64);
    let _ = writeln!(
        out,
        "instance index: {index}\ninstance thread count: {}\ntotal thread count: {}\nepoch: {}",
        w.count, w.total, w.epoch
    );
    let _ = out.flush();
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut b = Cluster::builder()
        .name(&args.key)
        .env(&args.env)
        .listen(&args.listen)
        .workers(args.count)
        .shards(64)
        .bootstrap(args.bootstrap)
        .mdns(!args.no_mdns);
    for j in &args.join {
        b = b.join(j);
    }
    if let Some(id) = &args.id {
        b = b.instance_id(id);
    }
    if let Some(dir) = &args.data_dir {
        b = b.data_dir(dir);
    }
    if let Some(d) = &args.dashboard {
        b = b.dashboard(d);
    }
    if let (Some(index), Some(total)) = (args.index, args.total) {
        b = b.static_workers(index, total);
    }
    // Refused membership (another instance holds this instance id): say why and stop.
    let (refused_tx, mut refused) = tokio::sync::watch::channel(None::<String>);
    let refused_tx = std::sync::Arc::new(refused_tx);
    b = b.on_event(move |ev| {
        let tx = refused_tx.clone();
        async move {
            if let ClusterEvent::MembershipRefused(reason) = ev {
                tx.send_replace(Some(reason));
            }
        }
    });
    let cluster = b.build()?.start().await?;
    // Every change is printed as it comes, during the leave too (the instance is out of the
    // index as soon as it starts to leave).
    let last = std::rc::Rc::new(std::cell::Cell::new(None));
    let mut watch = cluster.watch_workers();
    let printed = last.clone();
    let printer = actix_rt::spawn(async move {
        while let Some(w) = watch.changed().await {
            print(&w);
            printed.set(Some(w));
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        Ok(reason) = refused.wait_for(Option::is_some) => {
            let reason = reason.clone().unwrap_or_default();
            printer.abort();
            cluster.shutdown().await;
            anyhow::bail!("refused: {reason}");
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if let Err(e) = cluster.leave(Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "left without a complete handoff");
    }
    printer.abort();
    let now = cluster.workers();
    if last.get() != Some(now) {
        print(&now);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The index goes to standard output, the log to standard error.
    let level = if args.verbose { "info,openraft=warn,libp2p=warn" } else { "warn,openraft=warn,libp2p=error" };
    clusterfunk::logging::init(level, clusterfunk::logging::Output::Stderr);
    actix_rt::System::new().block_on(run(args))
}
