//! A headless Chromium driven over the Chrome DevTools Protocol (a WebSocket to the page): the
//! dashboard tests load a page once and then watch it change, as an operator would, without a
//! reload; they evaluate expressions in it and take screenshots.
//!
//! Real time, not `--virtual-time-budget`: under virtual time the page's clock runs ahead of the
//! wall clock, so rates computed from two fetches a virtual second apart (but a few real
//! milliseconds apart) read as 0, and every retry paid a browser start.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// The Chromium binary on this machine, if there is one.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// `GET /json/list` of the DevTools HTTP endpoint (which keeps the connection open whatever
/// the request says, so the body is read by its `Content-Length`).
fn targets(host: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /json/list HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(String::from_utf8(body)?)
}

/// One headless browser with one page.
pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `binary` headless on `url` with a `width`×`height` window and connects to the page.
    pub fn open(binary: &str, url: &str, width: u32, height: u32) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(binary)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .args(["--disable-quic", "--hide-scrollbars", "--mute-audio"])
            .args(["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        crate::cleanup::register(crate::cleanup::Resource::Pid(child.id()));
        // Chromium says where it listens on stderr; the rest of stderr is drained so a full
        // pipe never blocks it.
        let stderr = child.stderr.take().context("chromium's stderr")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(ws) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                    let _ = tx.send(ws.to_string());
                }
            }
        });
        let browser_ws =
            rx.recv_timeout(Duration::from_secs(60)).context("chromium never said where DevTools listens")?;
        let host = browser_ws.trim_start_matches("ws://").split('/').next().context("a DevTools address")?.to_string();
        let page = crate::wait_until(Duration::from_secs(30), "the page target", || {
            let list: Value = serde_json::from_str(&targets(&host).ok()?).ok()?;
            list.as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
        })?;
        let stream = TcpStream::connect(&host)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (ws, _) =
            tungstenite::client(page.as_str(), stream).map_err(|e| anyhow::anyhow!("DevTools WebSocket: {e}"))?;
        let mut b = Browser { child, ws, next: 0, _profile: profile };
        b.call("Runtime.enable", json!({}))?;
        b.wait_for(
            Duration::from_secs(60),
            "the page to load",
            "document.readyState === 'complete' && location.href !== 'about:blank'",
        )?;
        Ok(b)
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next += 1;
        let id = self.next;
        self.ws.send(Message::text(json!({ "id": id, "method": method, "params": params }).to_string()))?;
        loop {
            let msg = self.ws.read().with_context(|| format!("waiting for the answer to {method}"))?;
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str())?;
            if v["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(e) = v.get("error") {
                bail!("{method}: {e}");
            }
            return Ok(v["result"].clone());
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expr: &str) -> anyhow::Result<Value> {
        let r =
            self.call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }))?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expr}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits (at most `timeout`) until `expr` evaluates to something other than `null`,
    /// `false` or `undefined`, and returns it.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, expr: &str) -> anyhow::Result<Value> {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = Value::Null;
        while std::time::Instant::now() < deadline {
            last = self.eval(expr)?;
            if !(last.is_null() || last == Value::Bool(false)) {
                return Ok(last);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("timed out after {timeout:?} waiting for {what} (last: {last})")
    }

    /// A PNG of the whole page, written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> anyhow::Result<PathBuf> {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }))?;
        let data = r["data"].as_str().context("screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(path.to_path_buf())
    }

    /// The browser's process id (for CPU figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::cleanup::forget(&crate::cleanup::Resource::Pid(self.child.id()));
    }
}
