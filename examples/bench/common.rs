//! What every benchmark shares: the binaries under test, child processes
//! killed on drop, /proc sampling, the generated data, HTTP helpers and
//! the Markdown header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indexswarm::units::ByteSize;

pub(crate) fn exe_dir() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    // target/release/examples/bench → target/release
    me.parent()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .expect("target dir")
}

pub(crate) fn indexswarm() -> PathBuf {
    exe_dir().join("indexswarm")
}

pub(crate) fn lt_peer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/peers/lt_peer.py")
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let sha = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.contains(" sha_ni"))
        .unwrap_or(false);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!(
        "{cpu}, {cores} cores{}, {mem} GiB RAM",
        if sha { ", SHA-NI" } else { "" }
    )
}

pub(crate) fn header(title: &str) {
    let now = time::OffsetDateTime::now_utc();
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("\n### {title}\n");
    println!("- machine: {}", machine());
    println!(
        "- date: {}",
        now.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
    println!("- command: `bench {}`\n", args.join(" "));
}

/// A child killed on drop.
pub(crate) struct P {
    child: Child,
    name: String,
}

impl P {
    pub(crate) fn spawn(name: &str, mut c: Command, log: &Path) -> Result<P> {
        let f = std::fs::File::create(log.join(format!("{name}.log")))?;
        let out = log.join(format!("{name}.out"));
        c.stdout(std::fs::File::create(&out)?)
            .stderr(f)
            .stdin(Stdio::null());
        let child = c.spawn().with_context(|| format!("starting {name}"))?;
        Ok(P {
            child,
            name: name.into(),
        })
    }
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
    pub(crate) fn done(&mut self) -> Option<bool> {
        self.child.try_wait().ok().flatten().map(|s| s.success())
    }
}

impl Drop for P {
    fn drop(&mut self) {
        // SIGTERM first so peers announce `stopped` and flush; then SIGKILL.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

pub(crate) fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

pub(crate) fn run_ok(mut c: Command) -> Result<std::process::Output> {
    let desc = format!("{c:?}");
    let out = c.output().with_context(|| desc.clone())?;
    if !out.status.success() {
        bail!("{desc} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// user+system CPU seconds of a live process.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

pub(crate) fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples peak RssAnon and CPU time of processes every 20 ms.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<HashMap<u32, (u64, f64)>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub(crate) fn start(pids: Vec<u32>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: Arc<Mutex<HashMap<u32, (u64, f64)>>> = Arc::new(Mutex::new(HashMap::new()));
        let (s, p) = (stop.clone(), peaks.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for &pid in &pids {
                    let rss = status_kb(pid, "RssAnon:");
                    let cpu = cpu_secs(pid);
                    let mut g = p.lock().unwrap();
                    let e = g.entry(pid).or_insert((0, 0.0));
                    e.0 = e.0.max(rss);
                    if cpu > 0.0 {
                        e.1 = cpu;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            peaks,
            handle: Some(handle),
        }
    }
    /// (peak RssAnon KiB, last CPU seconds) per pid.
    pub(crate) fn finish(mut self) -> HashMap<u32, (u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peaks.lock().unwrap().clone()
    }
}

pub(crate) fn data(work: &Path, size: u64) -> Result<PathBuf> {
    let dir = work.join(format!("data-{}", ByteSize(size)));
    let snap = dir.join("snap");
    if !snap.join("segments_1").exists() {
        eprintln!(
            "generating {} of Lucene-shaped data in {}",
            ByteSize(size),
            snap.display()
        );
        let _ = std::fs::remove_dir_all(&snap);
        indexswarm::demo::generate_snapshot(&snap, size, 42)?;
    }
    // Warm the page cache so every tool reads from memory alike.
    for e in walkdir::WalkDir::new(&snap).into_iter().flatten() {
        if e.file_type().is_file() {
            let _ = std::fs::read(e.path());
        }
    }
    Ok(dir)
}

pub(crate) fn dir_bytes(p: &Path) -> u64 {
    indexswarm::demo::dir_size(p)
}

pub(crate) fn best_of(runs: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..runs.max(1) {
        best = best.min(f()?);
    }
    Ok(best)
}

pub(crate) fn mb(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

pub(crate) fn create_torrent(
    work: &Path,
    snap: &Path,
    name: &str,
    extra: &[&str],
) -> Result<PathBuf> {
    let t = work.join(name);
    let mut c = Command::new(indexswarm());
    c.arg("create").arg(snap).arg("-o").arg(&t).args(extra);
    run_ok(c)?;
    Ok(t)
}

pub(crate) fn start_tracker(logs: &Path, listen: SocketAddr) -> Result<P> {
    let mut c = Command::new(indexswarm());
    c.args([
        "tracker",
        "--listen",
        &listen.to_string(),
        "--interval",
        "10",
    ]);
    let p = P::spawn(&format!("tracker-{}", listen.port()), c, logs)?;
    wait_for(Duration::from_secs(10), "tracker", || {
        std::net::TcpStream::connect(listen).is_ok()
    })?;
    Ok(p)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub(crate) fn http_json(method: &str, url: &str, body: Option<&str>) -> Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let c = reqwest::Client::new();
        let req = match method {
            "POST" => c.post(url).body(body.unwrap_or("").to_string()),
            _ => c.get(url),
        };
        let r = req.timeout(Duration::from_secs(600)).send().await?;
        Ok(r.json::<serde_json::Value>().await?)
    })
}

pub(crate) fn http_text(url: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async { Ok(reqwest::get(url).await?.text().await?) })
}

pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
