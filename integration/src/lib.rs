//! Test harness for multi-node tests: node processes, a small HTTP client for their API, and
//! waiting on observable state with a timeout.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod browser;
pub mod chaos;
pub mod cleanup;
pub mod inproc;
pub mod journal;
pub mod netns;
pub mod spans;

use anyhow::{bail, Context};
use serde_json::Value;

/// A test that cannot run here (no root, no chromium) says why and returns; under CI
/// (`CI=true`), where everything it needs is installed, the same condition fails the test: a
/// skipped safety test must never read as a pass.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test} cannot run under CI: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// `n` distinct free TCP ports on loopback, below the kernel's ephemeral range: a port the OS
/// hands out (`:0`) may be taken by any outgoing connection before the node binds it, which
/// made tests running side by side fail with "address in use". Each port is handed out once per
/// process; the race with other processes is accepted in tests.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, ephemeral.clamp(12_000, 32_768));
    let span = hi - lo;
    // Processes started one after another begin at different places.
    let base = std::process::id().wrapping_mul(7919) % span;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(k < span, "no free port left in {lo}..{hi}");
        let port = (lo + (base + k) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    out
}

/// One free TCP port on loopback.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `GET path` on `addr`; returns the status code and body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    http(addr, "GET", path, "")
}

/// Runs the `clusterfunk` CLI at `exe` against `node` (with `--token-file token` when given)
/// with `args`, for at most 90 s; returns its exit code (-1 if killed) and output.
pub fn run_cli(exe: &Path, node: &str, token: Option<&Path>, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--node", node];
    let file;
    if let Some(t) = token {
        file = t.to_string_lossy().to_string();
        all.extend(["--token-file", file.as_str()]);
    }
    all.extend(args);
    let (code, out) = run_to_exit(exe, &all, Duration::from_secs(90)).expect("the cli runs");
    (code.unwrap_or(-1), out)
}

/// An HTTP/1.0 request with a body; returns the status code and body.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    http_with_token(addr, method, path, body, None)
}

/// [`http`] with `Authorization: Bearer <token>` (the management API's mutations).
pub fn http_with_token(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    // A body is JSON (the examples' mutating routes refuse anything else).
    let ct = if method == "GET" { "" } else { "Content-Type: application/json\r\n" };
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}{ct}Content-Length: {}\r\n\r\n{body}", body.len())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code = head.split_whitespace().nth(1).context("no status code")?.parse()?;
    Ok((code, body.to_string()))
}

/// A node's `/api/cluster`.
pub fn cluster_status(addr: &str) -> anyhow::Result<Value> {
    let (code, body) = http_get(addr, "/api/cluster")?;
    if code != 200 {
        bail!("/api/cluster answered {code}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    wait_every(Duration::from_millis(100), timeout, what, check)
}

/// [`wait_until`], polling every `every` (a driver that must not load what it measures).
pub fn wait_every<T>(
    every: Duration,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// One node process of the demo binary.
pub struct NodeProc {
    /// The binary.
    pub exe: PathBuf,
    /// The arguments it was started with.
    pub args: Vec<String>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its dashboard `host:port`.
    pub dashboard: String,
    /// Its p2p `host:port`.
    pub listen: String,
    /// Its service's own HTTP `host:port` (`--http`), when given with [`NodeProc::with_http`].
    pub http: Option<String>,
    child: Option<Child>,
    /// An optional wrapper (`ip netns exec NAME`).
    pub prefix: Vec<String>,
}

impl NodeProc {
    /// A node to be started with `extra` flags besides `--data-dir`, `--listen`, `--dashboard`.
    pub fn new(exe: &Path, data_dir: PathBuf, listen: String, dashboard: String, extra: &[&str]) -> NodeProc {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--listen".into(), listen.clone(), "--dashboard".into(), dashboard.clone()]);
        NodeProc {
            exe: exe.to_path_buf(),
            args,
            data_dir,
            dashboard,
            listen,
            http: None,
            child: None,
            prefix: Vec::new(),
        }
    }

    /// Serves the app's own HTTP routes (the counter or KV API) on `addr` (`--http`).
    pub fn with_http(mut self, addr: String) -> NodeProc {
        self.args.extend(["--http".into(), addr.clone()]);
        self.http = Some(addr);
        self
    }

    /// Where the app's own HTTP routes are served: the `--http` address given with
    /// [`with_http`](Self::with_http), else the one its status reports (`--http host:0`).
    pub fn service(&self) -> anyhow::Result<String> {
        if let Some(a) = self.http.as_ref().filter(|a| !a.ends_with(":0")) {
            return Ok(a.clone());
        }
        let s = self.status()?;
        s["http"].as_str().map(str::to_string).context("the node serves no --http routes")
    }

    /// Starts (or restarts) the process; its output goes to `<data_dir>.log`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_with(&[])
    }

    /// Starts with `more` flags this time only.
    pub fn start_with(&mut self, more: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let (program, pre): (&Path, &[String]) = match self.prefix.split_first() {
            Some((p, rest)) => (Path::new(p), rest),
            None => (self.exe.as_path(), &[]),
        };
        let mut cmd = Command::new(program);
        if !self.prefix.is_empty() {
            cmd.args(pre).arg(&self.exe);
        }
        cmd.args(&self.args).args(more).arg("--data-dir").arg(&self.data_dir);
        cmd.stdout(log.try_clone()?).stderr(log).stdin(Stdio::null());
        // The node starts with no signal blocked: a harness that blocks SIGINT/SIGTERM to wait
        // for them (`cleanup::on_signal`) would otherwise hand its mask down, and the node
        // would never see the SIGTERM that makes it leave.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", self.exe.display()))?;
        cleanup::register(cleanup::Resource::Pid(child.id()));
        self.child = Some(child);
        Ok(())
    }

    /// Where the node's output goes.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    /// The tail of the node's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// kill -9 and reap (a stopped process is continued first, so it dies at once).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.signal_pid(c.id(), libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
            cleanup::forget(&cleanup::Resource::Pid(c.id()));
        }
    }

    fn signal_pid(&self, pid: u32, sig: i32) {
        // SAFETY: kill(2) on a child this handle started and has not reaped.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, SIGTERM...) to the running process; false if none runs.
    pub fn signal(&mut self, sig: i32) -> bool {
        match &self.child {
            Some(c) => {
                self.signal_pid(c.id(), sig);
                true
            }
            None => false,
        }
    }

    /// Whether a process was started and not killed (it may have exited on its own).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process has exited; its exit code if so.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).map(|s| s.code())
    }

    /// This node's `/api/cluster`.
    pub fn status(&self) -> anyhow::Result<Value> {
        cluster_status(&self.dashboard)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the binary to completion (for refusal tests) and returns its exit code and output.
pub fn run_to_exit(exe: &Path, args: &[&str], timeout: Duration) -> anyhow::Result<(Option<i32>, String)> {
    let mut child =
        Command::new(exe).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn()?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            child.stdout.take().map(|mut s| s.read_to_string(&mut out));
            child.stderr.take().map(|mut s| s.read_to_string(&mut out));
            return Ok((status.code(), out));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            bail!("{} did not exit within {timeout:?}", exe.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Field helpers over `/api/cluster` JSON.
pub mod view {
    use serde_json::Value;

    /// The leader id, if any.
    pub fn leader(s: &Value) -> Option<String> {
        s["leader"].as_str().map(str::to_string)
    }

    /// Ids of members in `state` (`up`, `suspect`, `down`).
    pub fn members_in(s: &Value, state: &str) -> Vec<String> {
        let mut v: Vec<String> = s["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["state"] == state)
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// The shard map's `(epoch, owners)`.
    pub fn map(s: &Value) -> (u64, Value) {
        (s["shard_map"]["epoch"].as_u64().unwrap_or(0), s["shard_map"]["owners"].clone())
    }

    /// Owner ids in the shard map and the sum of their shard counts.
    pub fn owners(s: &Value) -> (Vec<String>, u64) {
        let o = s["shard_map"]["owners"].as_object().cloned().unwrap_or_default();
        let mut ids: Vec<String> = o.keys().cloned().collect();
        ids.sort();
        (ids, o.values().filter_map(Value::as_u64).sum())
    }
}

/// Starts `n` node processes of `exe` on loopback with static seeds: node 0 bootstraps, the
/// others join it. `args` go to every node (besides listen, dashboard, data dir and join).
pub fn start_cluster(exe: &Path, dir: &Path, n: usize, args: &[&str]) -> anyhow::Result<Vec<NodeProc>> {
    start_cluster_each(exe, dir, n, args, |_| Vec::new())
}

/// [`start_cluster`], node `i` also getting the flags `each(i)` (a file of its own, say).
pub fn start_cluster_each(
    exe: &Path,
    dir: &Path,
    n: usize,
    args: &[&str],
    each: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<Vec<NodeProc>> {
    let ports = free_ports(2 * n);
    let seed = format!("127.0.0.1:{}", ports[0]);
    let mut nodes: Vec<NodeProc> = (0..n)
        .map(|i| {
            let mut all = args.to_vec();
            if i > 0 {
                all.extend(["--join", seed.as_str()]);
            }
            let (listen, dash) = (format!("127.0.0.1:{}", ports[i]), format!("127.0.0.1:{}", ports[n + i]));
            let mut node = NodeProc::new(exe, dir.join(format!("n{i}")), listen, dash, &all);
            node.args.extend(each(i));
            node
        })
        .collect();
    nodes[0].start_with(&["--bootstrap"])?;
    for node in &mut nodes[1..] {
        node.start()?;
    }
    Ok(nodes)
}

/// The tails of every node's log, for failure messages.
pub fn logs(nodes: &[NodeProc]) -> String {
    nodes.iter().map(|n| n.log_tail(25)).collect::<Vec<_>>().join("\n-----\n")
}

/// Waits until every node sees the same complete map over `n` owners; returns the nodes' ids in
/// node order.
pub fn wait_formed(nodes: &[NodeProc], shards: u64, timeout: Duration) -> anyhow::Result<Vec<String>> {
    wait_until(timeout, "all nodes sharing one complete map", || {
        let ss: Vec<Value> = nodes.iter().map(|n| n.status().ok()).collect::<Option<_>>()?;
        let ids: Vec<String> = ss.iter().map(|s| s["node_id"].as_str().map(str::to_string)).collect::<Option<_>>()?;
        let mut sorted = ids.clone();
        sorted.sort();
        ss.iter()
            .all(|s| view::owners(s) == (sorted.clone(), shards) && view::map(s) == view::map(&ss[0]))
            .then_some(ids)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(nodes)))
}
