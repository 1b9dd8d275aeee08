//! The lab: N node processes of the release `cf-kv` binary, each in its own network namespace on
//! one bridge, with its own data dir and ownership journal; and the nemesis acting on them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

use crate::cleanup::{self, Resource};
use crate::netns::{self, run, Lab};
use crate::{view, wait_until, NodeProc};

/// The p2p port every node listens on (in its own namespace).
pub const P2P_PORT: u16 = 7100;
/// The dashboard port.
pub const HTTP_PORT: u16 = 8100;
/// The KV API port (the app's own server, `--http`).
pub const SERVICE_PORT: u16 = 8101;

const SECRET_A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const SECRET_B: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";

/// How the lab's cluster is made.
#[derive(Clone, Debug)]
pub struct LabOpts {
    /// Nodes.
    pub nodes: usize,
    /// Shards.
    pub shards: u32,
    /// Voters.
    pub voters: usize,
    /// Nodes whose data dir is a small tmpfs of this many MiB (disk-full scenario).
    pub tmpfs_mib: Option<(usize, u32)>,
    /// The last node gets another cluster secret and is not started with the others.
    pub intruder: bool,
    /// A message fault plan every node runs with from the start (`--faults`; node i adds
    /// `seed=i`).
    pub faults: Option<&'static str>,
    /// Every node runs with the cluster secret.
    pub secret: bool,
    /// Node `.0`'s lease clock runs at rate `.1` of true time.
    pub clock_rate: Option<(usize, f64)>,
}

impl Default for LabOpts {
    fn default() -> LabOpts {
        LabOpts {
            nodes: 3,
            shards: 64,
            voters: 3,
            tmpfs_mib: None,
            intruder: false,
            faults: None,
            secret: false,
            clock_rate: None,
        }
    }
}

/// The lab's cluster secret (`LabOpts::secret`, and every node but the intruder).
pub const SECRET: &str = SECRET_A;

/// A running lab; everything is torn down on drop (and on Ctrl-C through [`cleanup`]).
pub struct ChaosLab {
    /// The namespaces and bridge.
    pub net: Lab,
    /// The node processes, in namespace order.
    pub nodes: Vec<NodeProc>,
    /// Each node's ownership journal.
    pub journals: Vec<PathBuf>,
    /// The options it was made with.
    pub opts: LabOpts,
    mounts: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl ChaosLab {
    /// Creates the namespaces and the (not yet started) nodes running `exe`.
    pub fn new(exe: &Path, opts: LabOpts) -> anyhow::Result<ChaosLab> {
        if let Some(why) = netns::unavailable() {
            bail!("the lab cannot run here: {why}");
        }
        let net = Lab::new(opts.nodes)?;
        let mut dir = tempfile::Builder::new().prefix("cf-chaos-").tempdir()?;
        // CF_CHAOS_KEEP=1 keeps the lab's data dirs, logs and journals for a post-mortem.
        if std::env::var_os("CF_CHAOS_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("  keeping {}", dir.path().display());
        }
        let seed = format!("{}:{P2P_PORT}", net.ips[0]);
        let mut nodes = Vec::new();
        let mut journals = Vec::new();
        let mut mounts = Vec::new();
        for i in 0..opts.nodes {
            let data = dir.path().join(format!("n{i}"));
            if let Some((who, mib)) = opts.tmpfs_mib {
                if who == i {
                    std::fs::create_dir_all(&data)?;
                    let m = data.display().to_string();
                    cleanup::register(Resource::Mount(m.clone()));
                    run("mount", &["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs", &m])?;
                    mounts.push(data.clone());
                }
            }
            let journal = dir.path().join(format!("journal-n{i}.jsonl"));
            let shards = opts.shards.to_string();
            let voters = opts.voters.to_string();
            let mut args = vec![
                "--name",
                "chaos",
                "--env",
                "lab",
                "--no-mdns",
                "--traffic",
                "0",
                "--shards",
                &shards,
                "--voters",
                &voters,
            ];
            let journal_s = journal.display().to_string();
            args.extend(["--journal", &journal_s]);
            if opts.intruder {
                args.extend(["--secret", if i + 1 == opts.nodes { SECRET_B } else { SECRET_A }]);
            } else if opts.secret {
                args.extend(["--secret", SECRET_A]);
            }
            // Each node watches its own file for a disk stall to inject ([`ChaosLab::stall_disk`]).
            let stall = dir.path().join(format!("stall-n{i}")).display().to_string();
            args.extend(["--stall-disk-trigger", &stall]);
            let rate = opts.clock_rate.filter(|(who, _)| *who == i).map(|(_, r)| r.to_string());
            if let Some(r) = &rate {
                args.extend(["--lease-clock-rate", r]);
            }
            let plan = opts.faults.map(|p| format!("{p},seed={i}"));
            if let Some(p) = &plan {
                args.extend(["--faults", p]);
            }
            if i > 0 {
                args.extend(["--join", &seed]);
            }
            let listen = format!("{}:{P2P_PORT}", net.ips[i]);
            let dash = format!("{}:{HTTP_PORT}", net.ips[i]);
            let service = format!("{}:{SERVICE_PORT}", net.ips[i]);
            let mut node = NodeProc::new(exe, data, listen, dash, &args).with_http(service);
            node.prefix = net.exec_prefix(i);
            nodes.push(node);
            journals.push(journal);
        }
        Ok(ChaosLab { net, nodes, journals, opts, mounts, _dir: dir })
    }

    /// Starts every node with `--bootstrap` at the same instant, node 0 joining node 1 and the
    /// others node 0 (so each can discover the others), and waits until they share one map.
    pub fn start_all_bootstrapping(&mut self) -> anyhow::Result<Vec<String>> {
        let seed1 = format!("{}:{P2P_PORT}", self.net.ips[1]);
        let (first, rest) = self.nodes.split_at_mut(1);
        first[0].start_with(&["--bootstrap", "--join", &seed1])?;
        for n in rest {
            n.start_with(&["--bootstrap"])?;
        }
        self.wait_formed(Duration::from_secs(60))
    }

    /// Starts every node (node 0 bootstraps) and waits until they share one complete map.
    pub fn start(&mut self) -> anyhow::Result<Vec<String>> {
        let members = if self.opts.intruder { self.nodes.len() - 1 } else { self.nodes.len() };
        self.nodes[0].start_with(&["--bootstrap"])?;
        for n in &mut self.nodes[1..members] {
            n.start()?;
        }
        self.wait_formed(Duration::from_secs(60))
    }

    /// Waits until every running node sees the same complete map over all running nodes.
    pub fn wait_formed(&self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let live: Vec<&NodeProc> = self.nodes.iter().filter(|n| n.is_started()).collect();
        let shards = self.opts.shards as u64;
        wait_until(timeout, "all running nodes sharing one complete map", || {
            let ss: Vec<Value> = live.iter().map(|n| n.status().ok()).collect::<Option<_>>()?;
            let ids: Vec<String> =
                ss.iter().map(|s| s["node_id"].as_str().map(str::to_string)).collect::<Option<_>>()?;
            let mut sorted = ids.clone();
            sorted.sort();
            ss.iter()
                .all(|s| view::owners(s) == (sorted.clone(), shards) && view::map(s) == view::map(&ss[0]))
                .then_some(ids)
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }

    /// Waits until the running nodes other than `except` serve every shard between them
    /// (`ownership.serving` sums to the shard count) and agree on one leader.
    pub fn wait_serving(&self, except: &[usize], timeout: Duration) -> anyhow::Result<()> {
        let shards = self.opts.shards as u64;
        wait_until(timeout, "every shard served", || {
            let ss: Vec<Value> = (0..self.nodes.len())
                .filter(|i| !except.contains(i) && self.nodes[*i].is_started())
                .map(|i| self.nodes[i].status().ok())
                .collect::<Option<_>>()?;
            let serving: u64 = ss.iter().map(|s| s["ownership"]["serving"].as_u64().unwrap_or(0)).sum();
            let leaders: Vec<Option<String>> = ss.iter().map(view::leader).collect();
            (serving == shards && leaders.iter().all(|l| l.is_some() && *l == leaders[0])).then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }

    /// Index of the node the running nodes agree leads Raft.
    pub fn leader(&self) -> anyhow::Result<usize> {
        wait_until(Duration::from_secs(20), "a leader", || {
            let ss: Vec<Option<Value>> = self.nodes.iter().map(|n| n.status().ok()).collect();
            let l = ss.iter().flatten().find_map(view::leader)?;
            ss.iter().position(|s| s.as_ref().and_then(|s| s["node_id"].as_str()) == Some(l.as_str()))
        })
    }

    /// Index of a running node other than the leader (the leader if it runs alone). Once the map
    /// is formed every node owns shards, so this is a shard owner that does not lead Raft.
    pub fn owner_not_leader(&self) -> anyhow::Result<usize> {
        let l = self.leader()?;
        Ok((0..self.nodes.len()).find(|i| *i != l && self.nodes[*i].is_started()).unwrap_or(l))
    }

    /// The HTTP addresses of the nodes (the workload's targets).
    pub fn http_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.http.clone().expect("lab nodes serve the KV API")).collect()
    }

    /// The tails of every node's log.
    pub fn logs(&self) -> String {
        crate::logs(&self.nodes)
    }

    // --- the nemesis ---

    /// kill -9; its journal gets a `stopped` mark (the process is gone from now on).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
        self.mark_stopped(i);
    }

    /// Notes in node `i`'s journal that its process is gone now.
    pub fn mark_stopped(&self, i: usize) {
        if let Err(e) = crate::journal::mark_stopped(&self.journals[i]) {
            eprintln!("cannot mark n{i}'s journal: {e}");
        }
    }

    /// Waits up to `d` for node `i` to exit on its own, polling every 10 ms so its journal's
    /// `stopped` mark is close to the real exit; returns its exit code if it did.
    pub fn watch_exit(&mut self, i: usize, d: Duration) -> Option<Option<i32>> {
        let start = std::time::Instant::now();
        while start.elapsed() < d {
            if let Some(code) = self.nodes[i].exited() {
                self.mark_stopped(i);
                return Some(code);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Restarts node `i` on its data dir.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.nodes[i].start()
    }

    /// SIGSTOP (`true`) or SIGCONT.
    pub fn pause(&mut self, i: usize, stop: bool) {
        self.nodes[i].signal(if stop { libc::SIGSTOP } else { libc::SIGCONT });
    }

    /// Cuts node `i` off from every other node (its bridge port down), or heals it.
    pub fn isolate(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        self.net.set_port(i, !cut)
    }

    /// Node `from`'s packets to node `to` are lost (one way), or no longer.
    pub fn one_way(&self, from: usize, to: usize, lossy: bool) -> anyhow::Result<()> {
        self.net.set_one_way_loss(from, to, lossy)
    }

    /// Fills node `i`'s tmpfs data dir (returns the filler file), or frees it.
    pub fn fill_disk(&self, i: usize) -> anyhow::Result<PathBuf> {
        let filler = self.nodes[i].data_dir.join("filler");
        // dd stops with "no space left on device": that is the point, not an error.
        let _ = run("dd", &["if=/dev/zero", &format!("of={}", filler.display()), "bs=1M", "count=100000"]);
        Ok(filler)
    }

    /// Stalls node `i`'s next durable write for `d` (and, if it leads, makes it write
    /// `writes` entries).
    pub fn stall_disk(&self, i: usize, d: Duration, writes: u32) -> anyhow::Result<()> {
        let path = self._dir.path().join(format!("stall-n{i}"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {writes}", d.as_millis()))?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// The raft store file of node `i`.
    pub fn store_file(&self, i: usize) -> PathBuf {
        self.nodes[i].data_dir.join("raft.redb")
    }
}

impl Drop for ChaosLab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for m in &self.mounts {
            let s = m.display().to_string();
            let _ = run("umount", &["-l", &s]);
            cleanup::forget(&Resource::Mount(s));
        }
    }
}
