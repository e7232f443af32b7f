//! Network namespaces with capped uplinks, for the benchmarks that model
//! separate hosts on one machine (`swarm`, `replicate`; root needed).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

/// N network namespaces, each with a veth into one bridge and its upload capped.
pub(crate) struct Netns {
    n: usize,
}

pub(crate) const BRIDGE: &str = "iswbr0";

pub(crate) fn sh(cmd: &str) -> Result<()> {
    let st = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !st.success() {
        bail!("`{cmd}` failed");
    }
    Ok(())
}

impl Netns {
    pub(crate) fn up(n: usize, mbit: u64) -> Result<Netns> {
        Self::cleanup_stale();
        // The kernel's ARP table is shared by every namespace, and its
        // default hard limit (gc_thresh3 = 1024 entries) is smaller than a
        // full mesh of 65 namespaces (65 × 64 neighbours): past it, a
        // namespace cannot resolve anyone new and its packets are dropped
        // before they leave ("neighbor table overflow" in dmesg). That, not
        // the tracker, made announces time out at 64 leechers.
        let mesh = (n + 1) * (n + 1);
        sh(&format!(
            "sysctl -qw net.ipv4.neigh.default.gc_thresh1={} net.ipv4.neigh.default.gc_thresh2={} net.ipv4.neigh.default.gc_thresh3={}",
            mesh.max(128),
            (2 * mesh).max(512),
            (4 * mesh).max(1024)
        ))?;
        sh(&format!("ip link add {BRIDGE} type bridge && ip addr add 10.77.0.1/24 dev {BRIDGE} && ip link set {BRIDGE} up"))?;
        for i in 0..n {
            let ip = format!("10.77.0.{}", 10 + i);
            sh(&format!(
                "ip netns add isw{i} && ip link add iswv{i} type veth peer name eth0 netns isw{i} && \
                 ip link set iswv{i} master {BRIDGE} && ip link set iswv{i} up && \
                 ip netns exec isw{i} ip addr add {ip}/24 dev eth0 && ip netns exec isw{i} ip link set eth0 up && \
                 ip netns exec isw{i} ip link set lo up && \
                 ip netns exec isw{i} tc qdisc add dev eth0 root tbf rate {mbit}mbit burst 512kb latency 100ms"
            ))?;
        }
        Ok(Netns { n })
    }

    /// Removes every `isw*` namespace and the bridge a killed run left.
    pub(crate) fn cleanup_stale() {
        let list = Command::new("ip").args(["netns", "list"]).output();
        let text = list
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for name in text.lines().filter_map(|l| l.split_whitespace().next()) {
            let ours = name
                .strip_prefix("isw")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if ours {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
        Self::cleanup(0);
    }

    pub(crate) fn cleanup(n: usize) {
        for i in 0..n {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("isw{i}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", BRIDGE])
            .stderr(Stdio::null())
            .status();
    }

    pub(crate) fn ip(i: usize) -> String {
        format!("10.77.0.{}", 10 + i)
    }

    pub(crate) fn cmd(i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("isw{i}")]).arg(program);
        c
    }

    /// Bytes sent by namespace `i` (its egress qdisc).
    pub(crate) fn sent(i: usize) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("isw{i}"),
                "tc",
                "-s",
                "qdisc",
                "show",
                "dev",
                "eth0",
            ])
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.split_whitespace()
            .skip_while(|w| *w != "Sent")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Self::cleanup(self.n);
    }
}

pub(crate) fn kumar_ross(size: u64, n: usize, u: f64) -> f64 {
    let f = size as f64;
    (f / u).max(n as f64 * f / (u * (n as f64 + 1.0)))
}
