//! Network namespaces joined by a Linux bridge, for tests that need real separate hosts (mDNS,
//! partitions). Root only; everything made here is removed on drop.

use std::process::Command;

use anyhow::{bail, Context};

/// Why namespace tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("needs root to create network namespaces".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs the `ip` command (iproute2)".into());
    }
    None
}

/// Runs `cmd` with `args` to completion; returns its stdout, or an error carrying its stderr.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("{cmd} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("{cmd} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args).map(drop)
}

/// A bridge with `n` namespaces on it, host `i` at `10.213.<net>.<i+1>/24`; the host itself is at
/// `.254` so tests can reach every namespace's dashboard.
pub struct Lab {
    tag: String,
    /// Namespace names.
    pub hosts: Vec<String>,
    /// Each host's IP.
    pub ips: Vec<String>,
}

/// Runs `ip` with `args`; an error carries its stderr.
pub fn ip_cmd(args: &[&str]) -> anyhow::Result<()> {
    ip(args)
}

impl Lab {
    /// Creates the bridge and `n` namespaces, each with loopback up and a multicast route (mDNS).
    pub fn new(n: usize) -> anyhow::Result<Lab> {
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        // Unique per lab in this process (interface names are at most 15 bytes).
        let k = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
        let tag = format!("{:04x}{k:x}", pid % 0xffff);
        let net = 1 + pid % 250;
        let mut lab = Lab { tag: tag.clone(), hosts: Vec::new(), ips: Vec::new() };
        let br = lab.bridge();
        // Leftovers of a run killed hard with the same pid-derived names.
        let _ = ip(&["link", "del", &br]);
        for i in 0..n {
            let _ = ip(&["link", "del", &format!("cfv{i}-{tag}")]);
            let _ = ip(&["netns", "del", &format!("cf{i}-{tag}")]);
        }
        crate::cleanup::register(crate::cleanup::Resource::Link(br.clone()));
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["link", "set", &br, "up"])?;
        ip(&["addr", "add", &format!("10.213.{net}.254/24"), "dev", &br])?;
        for i in 0..n {
            let ns = format!("cf{i}-{tag}");
            let veth = format!("cfv{i}-{tag}");
            let addr = format!("10.213.{net}.{}", i + 1);
            crate::cleanup::register(crate::cleanup::Resource::Netns(ns.clone()));
            ip(&["netns", "add", &ns])?;
            lab.hosts.push(ns.clone());
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            lab.ips.push(addr);
        }
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("cfbr-{}", self.tag)
    }

    /// Brings host `i`'s bridge port down (`false`: it is cut off from every other host, both
    /// ways) or up again.
    pub fn set_port(&self, i: usize, up: bool) -> anyhow::Result<()> {
        ip(&["link", "set", &format!("cfv{i}-{}", self.tag), if up { "up" } else { "down" }])
    }

    /// One-way loss: host `from` sends its packets for host `to` to a MAC address nobody has (a
    /// permanent bogus neighbour entry), while `to` still reaches `from`. `false` removes it.
    pub fn set_one_way_loss(&self, from: usize, to: usize, lossy: bool) -> anyhow::Result<()> {
        let ns = &self.hosts[from];
        if lossy {
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                &self.ips[to],
                "lladdr",
                "02:00:de:ad:be:ef",
                "nud",
                "permanent",
                "dev",
                "eth0",
            ])
        } else {
            ip(&["-n", ns, "neigh", "del", &self.ips[to], "dev", "eth0"])
        }
    }

    /// The command prefix that runs a program in host `i`.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.hosts[i].clone()]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (i, ns) in self.hosts.iter().enumerate() {
            // The host end first: a namespace's links go away asynchronously after `netns del`.
            let _ = ip(&["link", "del", &format!("cfv{i}-{}", self.tag)]);
            let _ = ip(&["netns", "del", ns]);
            crate::cleanup::forget(&crate::cleanup::Resource::Netns(ns.clone()));
        }
        let _ = ip(&["link", "del", &self.bridge()]);
        crate::cleanup::forget(&crate::cleanup::Resource::Link(self.bridge()));
    }
}
