//! What the dashboard costs a node, printed as `name=value` lines: five real node processes on
//! loopback with 10,000 shards (demo traffic on), and node 0's CPU measured over alternating
//! windows without and with its dashboard open in headless Chromium (the page polling as it
//! does for an operator). The figure is the difference, in percent of one core.
//!
//! ```text
//! cargo build --release -p clusterfunk-integration --bins && target/release/dashboard_cpu [--window-secs 20] [--rounds 3]
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use clusterfunk_integration::browser::{chromium, Browser};
use clusterfunk_integration::{start_cluster, wait_formed};

const SHARDS: u64 = 10_000;
const NODES: usize = 5;

/// CPU seconds (user + system) the process `pid` used so far, its threads included.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces, so split after its `)`).
    let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f[11].parse()?, f[12].parse()?);
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / tick)
}

/// CPU of `pid` over `window`, in percent of one core.
fn cpu_over(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let (c0, t0) = (cpu_seconds(pid)?, Instant::now());
    std::thread::sleep(window);
    Ok((cpu_seconds(pid)? - c0) / t0.elapsed().as_secs_f64() * 100.0)
}

fn arg(name: &str, default: u64) -> anyhow::Result<u64> {
    std::env::args().skip_while(|a| a != name).nth(1).map_or(Ok(default), |v| Ok(v.parse()?))
}

fn main() -> anyhow::Result<()> {
    let window = Duration::from_secs(arg("--window-secs", 20)?);
    let rounds = arg("--rounds", 3)?;
    let binary = chromium().context("chromium is not installed (apt-get install chromium)")?;
    let exe = std::env::current_exe()?.with_file_name("cf-node");
    anyhow::ensure!(exe.exists(), "{} not found: build the package first", exe.display());
    let dir = tempfile::tempdir()?;
    let shards = SHARDS.to_string();
    let started = Instant::now();
    let nodes = start_cluster(&exe, dir.path(), NODES, &["--name", "dashcpu", "--no-mdns", "--shards", &shards])?;
    wait_formed(&nodes, SHARDS, Duration::from_secs(120))?;
    println!("formed_ms={}", started.elapsed().as_millis());
    let pid = nodes[0].pid().context("node 0 runs")?;
    let url = format!("http://{}/", nodes[0].dashboard);
    // Let the first rebalance's handoffs settle before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let (mut off, mut on, mut page, mut polls) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        off.push(cpu_over(pid, window)?);
        let mut b = Browser::open(binary, &url, 1400, 1500)?;
        b.wait_for(
            Duration::from_secs(60),
            "the grid drawn",
            "document.getElementById('grid').dataset.drawn === '10000'",
        )?;
        let (browser_pid, c0) = (b.pid(), Instant::now());
        let b0 = browser_tree_cpu(browser_pid);
        let r0 = b.eval("refreshes")?.as_u64().unwrap_or(0);
        on.push(cpu_over(pid, window)?);
        page.push((browser_tree_cpu(browser_pid) - b0) / c0.elapsed().as_secs_f64() * 100.0);
        polls.push(b.eval("refreshes")?.as_u64().unwrap_or(0) - r0);
        drop(b);
        eprintln!("round {round}: without {:.2} %, with {:.2} %", off[off.len() - 1], on[on.len() - 1]);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("node_cpu_without_page_pct={:.2}", mean(&off));
    println!("node_cpu_with_page_pct={:.2}", mean(&on));
    println!("dashboard_cost_pct_of_core={:.2}", mean(&on) - mean(&off));
    println!("browser_cpu_pct={:.1}", mean(&page));
    println!("page_polls_per_window={polls:?}");
    println!("window_s={} rounds={rounds} nodes={NODES} shards={SHARDS}", window.as_secs());
    Ok(())
}

/// CPU seconds of the browser and every process below it (renderer, GPU, utility).
fn browser_tree_cpu(root: u32) -> f64 {
    let mut total = 0.0;
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        total += cpu_seconds(pid).unwrap_or(0.0);
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
    }
    total
}
