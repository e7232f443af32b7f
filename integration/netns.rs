//! Hosts on one machine: network namespaces with their own 10.x addresses.
//!
//! Why: some reference peers refuse loopback peers (Transmission drops
//! tracker peers on 127/8), and a benchmark wants each node behind its own
//! capped link. A [`Lab`] is a bridge in the root namespace holding
//! `10.A.B.1` (the gateway) and, per [`Host`], a namespace `PREFIX<i>` whose
//! `eth0` is one end of a veth pair (the other end, `PREFIXv<i>`, sits in
//! the bridge) with the address `10.A.B.(10+i)`. Processes left in the root
//! namespace reach every host through the gateway address, so a tracker or
//! a peer can stay outside; a host reaches them at the gateway.
//!
//! Everything a lab creates carries its prefix. A new lab first removes what
//! an interrupted run left under the same prefix (the processes still inside
//! its namespaces, the namespaces, the links), and dropping a lab removes the
//! same set, so a failed or killed test never poisons the next run. Labs
//! that run at the same time need distinct prefixes and subnets (`bench`
//! uses `isw<i>` and 10.77.0.0/24).
//!
//! Needs root and the `ip` tool (`tc` to cap a link). Std only, so the
//! benchmark harness can include this file with `#[path]`.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest prefix: `PREFIX` + `v` + three digits must fit Linux's 15-byte
/// interface names.
const MAX_PREFIX: usize = 8;
/// Host `i` gets `10.A.B.(FIRST_HOST + i)`; `.1` is the gateway.
const FIRST_HOST: u8 = 10;

/// A bridge and the namespaces attached to it, all named `PREFIX…`.
pub struct Lab {
    prefix: String,
    net: [u8; 2],
    hosts: usize,
}

/// One namespace of a lab: its name and address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// True when the process runs as root (namespaces need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            // Real, effective, saved, filesystem: the effective one decides.
            line.split_whitespace().nth(2).map(|uid| uid == "0")
        })
        .unwrap_or(false)
}

impl Lab {
    /// Builds the bridge `PREFIXbr` at `10.net[0].net[1].1/24`, after
    /// removing whatever an earlier run left under `prefix`.
    pub fn new(prefix: &str, net: [u8; 2]) -> io::Result<Lab> {
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX
            && prefix.bytes().all(|b| b.is_ascii_lowercase());
        if !valid {
            return Err(io::Error::other(format!(
                "lab prefix {prefix:?}: 1 to {MAX_PREFIX} lowercase letters"
            )));
        }
        remove_stale(prefix);
        // Built before the first command, so a failure half-way is undone
        // by the drop.
        let lab = Lab {
            prefix: prefix.to_string(),
            net,
            hosts: 0,
        };
        let br = lab.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", lab.gateway()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        Ok(lab)
    }

    /// The bridge's address: how hosts reach processes in the root namespace.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net[0], self.net[1], 1)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// Adds a namespace with its address, loopback up and, if given, its
    /// upload capped (`tc tbf`) at `upload_mbit` Mbit/s.
    pub fn add_host(&mut self, upload_mbit: Option<u64>) -> io::Result<Host> {
        let i = self.hosts;
        let last = u8::try_from(i)
            .ok()
            .and_then(|i| i.checked_add(FIRST_HOST))
            .filter(|&o| o < 255);
        let Some(octet) = last else {
            return Err(io::Error::other("a lab holds at most 245 hosts"));
        };
        self.hosts += 1;
        let ns = format!("{}{i}", self.prefix);
        let veth = format!("{}v{i}", self.prefix);
        let addr = Ipv4Addr::new(10, self.net[0], self.net[1], octet);
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &veth, "master", &self.bridge()])?;
        ip(&["link", "set", &veth, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let host = Host { ns, ip: addr };
        if let Some(mbit) = upload_mbit {
            let mut c = host.command("tc");
            c.args(["qdisc", "add", "dev", "eth0", "root", "tbf", "rate"])
                .arg(format!("{mbit}mbit"))
                .args(["burst", "512kb", "latency", "100ms"]);
            check(c)?;
        }
        Ok(host)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        remove_stale(&self.prefix);
    }
}

impl Host {
    /// `program` run inside this host's namespace (`ip netns exec` execs
    /// it, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Pids of the processes living in this namespace.
    pub fn pids(&self) -> Vec<u32> {
        netns_pids(&self.ns)
    }
}

/// Removes every namespace `PREFIX<digits>` (killing the processes still in
/// it first) and every link `PREFIXbr` or `PREFIXv<digits>`.
pub fn remove_stale(prefix: &str) {
    for ns in listed(&["netns", "list"], prefix) {
        kill_all(&ns);
        let _ = ip(&["netns", "del", &ns]);
    }
    // Deleting a namespace takes its veth end, and with it the pair; what
    // remains is the bridge and veths whose namespace was already gone.
    for link in listed(&["-o", "link", "show"], prefix) {
        let _ = ip(&["link", "del", &link]);
    }
}

/// Names owned by `prefix` in the output of `ip ARGS` (one object a line:
/// `NAME (id: 3)` for namespaces, `7: NAME@if2: <…>` for links).
fn listed(args: &[&str], prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(args).stderr(Stdio::null()).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let l = match l.split_once(": ") {
                Some((index, rest)) if index.bytes().all(|b| b.is_ascii_digit()) => rest,
                _ => l,
            };
            let name = l.split([' ', ':', '@']).next()?;
            owned_by(name, prefix).then(|| name.to_string())
        })
        .collect()
}

/// `PREFIX<digits>`, `PREFIXv<digits>` or `PREFIXbr`: not a longer prefix's.
fn owned_by(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    rest == "br" || digits(rest) || rest.strip_prefix('v').is_some_and(digits)
}

fn netns_pids(ns: &str) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    })
    .unwrap_or_default()
}

/// SIGKILLs every process in `ns` and waits (up to 10 s) until they are gone,
/// so their open files and ports are released before the next run.
fn kill_all(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = netns_pids(ns);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let mut c = Command::new("ip");
    c.args(args);
    check(c)
}

/// Runs `c`; an error carries the command and its stderr.
fn check(mut c: Command) -> io::Result<()> {
    let out = c.stdout(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{c:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_owned_by_a_prefix() {
        assert!(owned_by("iswtl0", "iswtl"));
        assert!(owned_by("iswtl12", "iswtl"));
        assert!(owned_by("iswtlv3", "iswtl"));
        assert!(owned_by("iswtlbr", "iswtl"));
        assert!(!owned_by("iswtl", "iswtl"));
        assert!(!owned_by("iswtlx0", "iswtl"));
        assert!(!owned_by("iswtlv", "iswtl"));
        assert!(
            !owned_by("isw0", "iswtl"),
            "the bench's namespaces are not ours"
        );
        assert!(!owned_by("iswtl0", "isw"), "nor ours the bench's");
    }
}
