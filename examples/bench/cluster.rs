//! Real `indexswarm master` and `indexswarm replica` processes on loopback
//! for the #8 benchmarks, and what /proc and the HTTP APIs say about them:
//! peak RSS (VmHWM), open descriptors sampled during a run, tracker
//! registrations, files on disk.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::common::{free_port, http_json, http_text, indexswarm, status_kb, P};

/// A master or replica process and its HTTP base URL.
pub(crate) struct Node {
    pub(crate) p: P,
    pub(crate) base: String,
}

impl Node {
    pub(crate) fn pid(&self) -> u32 {
        self.p.pid()
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        http_json("GET", &format!("{}/status", self.base), None).unwrap_or_default()
    }
}

fn wait_healthy(base: &str, p: &mut P, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_text(&format!("{base}/healthz")).is_err() {
        if p.done().is_some() {
            bail!("{what} exited at start; see its log");
        }
        if Instant::now() > deadline {
            bail!("{what} did not answer /healthz within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts `indexswarm master` on loopback ports; `extra` are more flags.
pub(crate) fn start_master(logs: &Path, name: &str, snaps: &Path, extra: &[&str]) -> Result<Node> {
    let (http, peer) = (free_port(), free_port());
    let mut c = Command::new(indexswarm());
    c.args(["master", "--snapshots-dir"]).arg(snaps).args([
        "--http-listen",
        &format!("127.0.0.1:{http}"),
        "--peer-listen",
        &format!("127.0.0.1:{peer}"),
    ]);
    c.args(extra);
    let mut p = P::spawn(name, c, logs)?;
    let base = format!("http://127.0.0.1:{http}");
    wait_healthy(&base, &mut p, name)?;
    Ok(Node { p, base })
}

/// The master's newest version: its number and info-hash (hex).
pub(crate) fn latest(master: &Node) -> Option<(u64, String)> {
    let j = http_json("GET", &format!("{}/versions/latest", master.base), None).ok()?;
    Some((j["version"].as_u64()?, j["info_hash"].as_str()?.to_string()))
}

/// Waits until the master's newest version is `version`, polling every
/// 5 ms; returns the seconds from `since`.
pub(crate) fn wait_published(master: &Node, version: u64, since: Instant) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        if latest(master).is_some_and(|(v, _)| v == version) {
            return Ok(since.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("version {version} never appeared at /versions/latest");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Resident memory now and at its peak (VmRSS, VmHWM), MiB.
pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    (
        status_kb(pid, "VmRSS:") as f64 / 1024.0,
        status_kb(pid, "VmHWM:") as f64 / 1024.0,
    )
}

/// `cp -al src dst`: what Solr's snapshots and `cp -al` do, hard links.
pub(crate) fn cp_al(src: &Path, dst: &Path) -> Result<()> {
    let st = Command::new("cp").arg("-al").arg(src).arg(dst).status()?;
    if !st.success() {
        bail!("cp -al {} {} failed", src.display(), dst.display());
    }
    Ok(())
}

/// Seconds a command takes (it must succeed).
pub(crate) fn time_cmd(mut c: Command) -> Result<f64> {
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let t = Instant::now();
    let st = c.status()?;
    if !st.success() {
        bail!("{c:?} failed");
    }
    Ok(t.elapsed().as_secs_f64())
}

pub(crate) fn median_of(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    crate::common::median(&mut v)
}

/// The 1, 5 and 15 minute load averages: the machine is shared, and a run
/// records how busy it was.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
}

/// The line every #8 benchmark prints under its header.
pub(crate) fn print_load(start: &str) {
    println!(
        "- load average (1 / 5 / 15 min) at the start: {start}; at the end: {}\n",
        loadavg()
    );
}
