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

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().with_context(|| format!("ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
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

impl Lab {
    /// Creates the bridge and `n` namespaces, each with loopback up and a multicast route (mDNS).
    pub fn new(n: usize) -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let tag = format!("{:x}", pid % 0xffff);
        let net = 1 + pid % 250;
        let mut lab = Lab { tag: tag.clone(), hosts: Vec::new(), ips: Vec::new() };
        let br = lab.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["link", "set", &br, "up"])?;
        ip(&["addr", "add", &format!("10.213.{net}.254/24"), "dev", &br])?;
        for i in 0..n {
            let ns = format!("cf{i}-{tag}");
            let veth = format!("cfv{i}-{tag}");
            let addr = format!("10.213.{net}.{}", i + 1);
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

    /// The command prefix that runs a program in host `i`.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.hosts[i].clone()]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
