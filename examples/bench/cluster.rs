//! Real `indexswarm master` and `indexswarm replica` processes on loopback
//! for the #8 benchmarks, and what /proc and the HTTP APIs say about them:
//! peak RSS (VmHWM), open descriptors sampled during a run, tracker
//! registrations, files on disk.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::common::{free_port, http_json, http_text, indexswarm, status_kb, wait_for, P};

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

/// Starts `c` (an `indexswarm master` or `replica` command) on two free
/// loopback ports, then `extra` flags, and waits for its `/healthz`.
fn start_node(logs: &Path, name: &str, mut c: Command, extra: &[&str]) -> Result<Node> {
    let (http, peer) = (free_port(), free_port());
    c.args([
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

/// Starts `indexswarm master` on loopback ports; `extra` are more flags.
pub(crate) fn start_master(logs: &Path, name: &str, snaps: &Path, extra: &[&str]) -> Result<Node> {
    let mut c = Command::new(indexswarm());
    c.args(["master", "--snapshots-dir"]).arg(snaps);
    start_node(logs, name, c, extra)
}

/// Starts `indexswarm replica` following `master`, polling every second.
pub(crate) fn start_replica(logs: &Path, name: &str, master: &str, data: &Path) -> Result<Node> {
    start_replica_with(logs, name, master, data, &["--poll-interval-secs", "1"])
}

/// Starts `indexswarm replica` following `master` on loopback ports;
/// `extra` are more flags (the poll interval among them, else the default).
pub(crate) fn start_replica_with(
    logs: &Path,
    name: &str,
    master: &str,
    data: &Path,
    extra: &[&str],
) -> Result<Node> {
    let mut c = Command::new(indexswarm());
    c.args(["replica", "--master-url", master, "--data-dir"])
        .arg(data);
    start_node(logs, name, c, extra)
}

/// `POST /snapshot` of `snapshot.1` on a master with nothing published:
/// the seconds until it answered with version 1.
pub(crate) fn publish_first(master: &Node) -> Result<f64> {
    let t = Instant::now();
    let r = http_json(
        "POST",
        &format!("{}/snapshot", master.base),
        Some("{\"path\": \"snapshot.1\"}"),
    )?;
    if r["version"] != 1 {
        bail!("publish answered {r}");
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Waits until every replica serves `version`: the seconds from `since`
/// to each one's swap, as seen by polling them all together (waiting on
/// one after the other gave the later ones the earlier ones' times).
pub(crate) fn wait_replicas(replicas: &[Node], version: u64, since: Instant) -> Result<Vec<f64>> {
    let mut done: Vec<Option<f64>> = vec![None; replicas.len()];
    wait_for(Duration::from_secs(3600), "the replicas", || {
        for (r, d) in replicas.iter().zip(done.iter_mut()) {
            if d.is_none() && r.status()["current_version"] == version {
                *d = Some(since.elapsed().as_secs_f64());
            }
        }
        done.iter().all(Option::is_some)
    })?;
    Ok(done.into_iter().flatten().collect())
}

/// Asks a replica to poll now (instead of within its poll interval).
pub(crate) fn poke(replica: &Node) {
    let _ = http_json("POST", &format!("{}/poll", replica.base), None);
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

/// Waits until the replica's live version is `version`; seconds from `since`.
pub(crate) fn wait_replica(replica: &Node, version: u64, since: Instant) -> Result<f64> {
    wait_for(Duration::from_secs(3600), "the replica", || {
        replica.status()["current_version"] == version
    })?;
    Ok(since.elapsed().as_secs_f64())
}

/// Open file descriptors of a process.
pub(crate) fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory now and at its peak (VmRSS, VmHWM), MiB.
pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    (
        status_kb(pid, "VmRSS:") as f64 / 1024.0,
        status_kb(pid, "VmHWM:") as f64 / 1024.0,
    )
}

/// The highest open-descriptor count seen per process.
pub(crate) struct FdWatch {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<HashMap<u32, usize>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl FdWatch {
    /// Samples `ls /proc/PID/fd | wc -l` of each pid every 50 ms.
    pub(crate) fn start(pids: Vec<u32>) -> FdWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(HashMap::new()));
        let (s, p) = (stop.clone(), peaks.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for &pid in &pids {
                    let n = fd_count(pid);
                    let mut g = p.lock().unwrap();
                    let e = g.entry(pid).or_insert(0);
                    *e = (*e).max(n);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        FdWatch {
            stop,
            peaks,
            handle: Some(handle),
        }
    }

    pub(crate) fn peak(&self, pid: u32) -> usize {
        self.peaks
            .lock()
            .unwrap()
            .get(&pid)
            .copied()
            .unwrap_or(0)
            .max(fd_count(pid))
    }
}

impl Drop for FdWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn scrape_count(url: &str) -> Result<usize> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(async { reqwest::get(url).await?.bytes().await })?;
    // One `complete` key per torrent in the reply's `files` dictionary.
    Ok(body.windows(10).filter(|w| w == b"8:complete").count())
}

/// How many of `hashes` (hex) the master's tracker has registered: a
/// scrape naming them answers only for registered ones (whitelist mode).
pub(crate) fn registered(master: &Node, hashes: &[String]) -> Result<usize> {
    use indexswarm::tracker::protocol::url_bytes;
    let mut n = 0;
    for chunk in hashes.chunks(200) {
        let q: Vec<String> = chunk
            .iter()
            .filter_map(|h| hex::decode(h).ok())
            .map(|h| format!("info_hash={}", url_bytes(&h)))
            .collect();
        n += scrape_count(&format!("{}/scrape?{}", master.base, q.join("&")))?;
    }
    Ok(n)
}

/// Swarms the master's tracker holds (a scrape naming none lists them all).
pub(crate) fn swarms(master: &Node) -> Result<usize> {
    scrape_count(&format!("{}/scrape", master.base))
}

/// Regular files under `dir`, recursively.
pub(crate) fn count_files(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .count()
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
