//! A client of the sharded KV store that is not a member of its cluster: it follows the shard
//! map the nodes push and sends each operation straight to the node owning the key.
//!
//! ```text
//! kv-client --seed 127.0.0.1:7000 put greeting hello
//! kv-client --seed 127.0.0.1:7000 get greeting
//! kv-client --seed 127.0.0.1:7000 delete greeting
//! kv-client --seed 127.0.0.1:7000 fill 1000      # puts key-0 .. key-999, prints a figure
//! ```
//!
//! Each answer is printed as one JSON line (the reply names the node and shard that served it).

use std::time::Instant;

use clap::{Parser, Subcommand};
use clusterfunk::Client;
use clusterfunk_kv::{Delete, Get, Kv, Put};

#[derive(Parser)]
#[command(name = "kv-client", about = "A client of the clusterfunk KV store (not a cluster member)")]
struct Args {
    /// A node's listen address (host:port); give several to try each.
    #[arg(long = "seed", required = true)]
    seeds: Vec<String>,
    /// Cluster key.
    #[arg(short = 'k', long, default_value = "demo")]
    name: String,
    /// Cluster environment.
    #[arg(short = 'e', long, default_value = "dev")]
    env: String,
    /// Send through the node the client follows instead of straight to each owner.
    #[arg(long)]
    gateway: bool,
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// Prints the key's value.
    Get { key: String },
    /// Sets the key's value.
    Put { key: String, value: String },
    /// Removes the key.
    Delete { key: String },
    /// Puts `n` keys one after another and prints how long they took.
    Fill { n: u32 },
}

fn main() {
    clusterfunk::logging::init("warn", clusterfunk::logging::Output::Stderr);
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut b = Client::builder().name(&args.name).env(&args.env).gateway(args.gateway).entity::<Kv>();
    for s in &args.seeds {
        b = b.seed(s);
    }
    if let Ok(secret) = std::env::var("CLUSTERFUNK_SECRET") {
        b = b.secret(secret.trim());
    }
    let client = b.connect().await?;
    let kv = client.sharded::<Kv>();
    let reply = match args.op {
        Op::Get { key } => kv.send(&key, Get).await?,
        Op::Put { key, value } => kv.send(&key, Put(value)).await?,
        Op::Delete { key } => kv.send(&key, Delete).await?,
        Op::Fill { n } => {
            let t = Instant::now();
            for i in 0..n {
                kv.send(&format!("key-{i}"), Put(i.to_string())).await?;
            }
            let s = t.elapsed().as_secs_f64();
            println!("{{\"puts\":{n},\"seconds\":{s:.3},\"per_second\":{:.0}}}", f64::from(n) / s);
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string(&reply)?);
    Ok(())
}
