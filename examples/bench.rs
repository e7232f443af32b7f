//! Benchmarks: indexswarm side by side with reference clients on the same
//! data, in the same invocation. Results go to stdout as Markdown, with the
//! machine, the date and the command; BENCHMARKS.md records them.
//!
//! ```sh
//! cargo build --release && cargo build --release --example bench
//! sudo target/release/examples/bench create   --size 1G
//! sudo target/release/examples/bench tracker  --rate 5000
//! sudo target/release/examples/bench transfer --size 1G
//! sudo target/release/examples/bench swarm    --size 256M --leechers 8 --mbit 200
//! sudo target/release/examples/bench publish  --size 1G
//! sudo target/release/examples/bench replicate --size 1G --replicas 8 --mbit 128
//! ```
//!
//! `swarm` and `replicate` give every node its own network namespace, a veth
//! into one bridge and a `tc tbf` cap on its upload (root needed): the
//! faithful way to model separate hosts on one machine. The other
//! benchmarks run on loopback. Reference peers: aria2c, python3-libtorrent
//! (integration/peers/lt_peer.py), opentracker, mktorrent, sha1sum.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indexswarm::units::ByteSize;

#[derive(Parser)]
#[command(about = "indexswarm benchmarks beside aria2, libtorrent, opentracker and mktorrent")]
struct Cli {
    /// Scratch directory (data is generated once and reused).
    #[arg(long, default_value = "/tmp/isw-bench")]
    work: PathBuf,
    /// Repetitions for single-process timings (best is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// `create` against `mktorrent -t 2` and the SHA-1 limit.
    Create {
        #[arg(long, default_value = "1G")]
        size: ByteSize,
    },
    /// Announces per second and latency against opentracker.
    Tracker {
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// One seeder to one leecher over loopback: indexswarm, aria2, libtorrent.
    Transfer {
        #[arg(long, default_value = "1G")]
        size: ByteSize,
    },
    /// One seeder, N leechers, every node's upload capped: time against the Kumar–Ross bound.
    Swarm {
        #[arg(long, default_value = "256M")]
        size: ByteSize,
        #[arg(long, default_value_t = 8)]
        leechers: usize,
        /// Upload cap of every node, in Mbit/s.
        #[arg(long, default_value_t = 200)]
        mbit: u64,
        /// Skip the libtorrent run.
        #[arg(long)]
        no_libtorrent: bool,
        /// Runs per client; the median run (by the last leecher) is reported.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Master: settled snapshot to visible version, and memory while seeding.
    Publish {
        #[arg(long, default_value = "1G")]
        size: ByteSize,
        #[arg(long, default_value_t = 8)]
        leechers: usize,
    },
    /// Master + N replicas in namespaces: version 1 against the bound and HTTP fan-out, then a 5% version 2.
    Replicate {
        #[arg(long, default_value = "1G")]
        size: ByteSize,
        #[arg(long, default_value_t = 8)]
        replicas: usize,
        #[arg(long, default_value_t = 128)]
        mbit: u64,
        /// Skip the (slow) plain-HTTP fan-out run.
        #[arg(long)]
        no_http: bool,
    },
}

// ---------------------------------------------------------------- plumbing

fn exe_dir() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    // target/release/examples/bench → target/release
    me.parent()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .expect("target dir")
}

fn indexswarm() -> PathBuf {
    exe_dir().join("indexswarm")
}

fn lt_peer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/peers/lt_peer.py")
}

fn machine() -> String {
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

fn header(title: &str) {
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
struct P {
    child: Child,
    name: String,
}

impl P {
    fn spawn(name: &str, mut c: Command, log: &Path) -> Result<P> {
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
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn done(&mut self) -> Option<bool> {
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

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn run_ok(mut c: Command) -> Result<std::process::Output> {
    let desc = format!("{c:?}");
    let out = c.output().with_context(|| desc.clone())?;
    if !out.status.success() {
        bail!("{desc} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// user+system CPU seconds of a live process.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn status_kb(pid: u32, key: &str) -> u64 {
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
struct Sampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<HashMap<u32, (u64, f64)>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Sampler {
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
    fn finish(mut self) -> HashMap<u32, (u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peaks.lock().unwrap().clone()
    }
}

fn data(work: &Path, size: u64) -> Result<PathBuf> {
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

fn dir_bytes(p: &Path) -> u64 {
    indexswarm::demo::dir_size(p)
}

fn best_of(runs: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..runs.max(1) {
        best = best.min(f()?);
    }
    Ok(best)
}

fn mb(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn create_torrent(work: &Path, snap: &Path, name: &str, extra: &[&str]) -> Result<PathBuf> {
    let t = work.join(name);
    let mut c = Command::new(indexswarm());
    c.arg("create").arg(snap).arg("-o").arg(&t).args(extra);
    run_ok(c)?;
    Ok(t)
}

fn start_tracker(logs: &Path, listen: SocketAddr) -> Result<P> {
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

// ---------------------------------------------------------------- create

fn bench_create(cli: &Cli, size: u64) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let snap = dir.join("snap");
    let total = dir_bytes(&snap);
    let largest = walkdir::WalkDir::new(&snap)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .context("data")?;
    let largest_len = largest.metadata()?.len();
    let single = |tool: &'static [&'static str]| {
        best_of(cli.runs, || {
            let t = Instant::now();
            let mut c = Command::new(tool[0]);
            c.args(&tool[1..]).arg(largest.path()).stdout(Stdio::null());
            run_ok(c)?;
            Ok(t.elapsed().as_secs_f64())
        })
    };
    let sha1sum = single(&["sha1sum"])?;
    let openssl = single(&["openssl", "dgst", "-sha1"])?;
    // The faster single-core hasher sets the limit (openssl uses SHA-NI; sha1sum may not).
    let one_core = mb(largest_len, sha1sum.min(openssl));
    let ours = |extra: &'static [&'static str]| {
        best_of(cli.runs, || {
            let t = Instant::now();
            create_torrent(
                &cli.work,
                &snap,
                "bench-create.torrent",
                &[&["--piece-length", "512K"][..], extra].concat(),
            )?;
            Ok(t.elapsed().as_secs_f64())
        })
    };
    let ours_plain = ours(&[])?;
    let ours_aligned = ours(&["--align-files"])?;
    let mk = best_of(cli.runs, || {
        let out = cli.work.join("bench-mk.torrent");
        let _ = std::fs::remove_file(&out);
        let t = Instant::now();
        let mut c = Command::new("mktorrent");
        c.args([
            "-l",
            "19",
            "-t",
            "2",
            "-a",
            "http://127.0.0.1:1/announce",
            "-o",
        ])
        .arg(&out)
        .arg(&snap);
        c.stdout(Stdio::null());
        run_ok(c)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    header(&format!(
        "create: {} in {} files (best of {})",
        indexswarm::units::human_bytes(total),
        walkdir::WalkDir::new(&snap).into_iter().count() - 1,
        cli.runs
    ));
    let limit = 2.0 * one_core;
    println!(
        "| tool | seconds | MB/s | speed vs mktorrent -t 2 | share of the limit (2 × the faster one-core hasher = {limit:.0} MB/s) |"
    );
    println!("|---|---|---|---|---|");
    for (name, secs) in [
        ("indexswarm create", ours_plain),
        ("indexswarm create --align-files", ours_aligned),
        ("mktorrent -t 2", mk),
    ] {
        let r = mb(total, secs);
        println!(
            "| {name} | {secs:.3} | {r:.0} | {:.2} | {:.0}% |",
            mk / secs,
            r / limit * 100.0
        );
    }
    println!(
        "\nOne core, on the largest file ({}): sha1sum {:.0} MB/s, openssl dgst -sha1 {:.0} MB/s; the limit is twice the faster.",
        indexswarm::units::human_bytes(largest_len),
        mb(largest_len, sha1sum),
        mb(largest_len, openssl)
    );
    Ok(())
}

// ---------------------------------------------------------------- tracker

async fn tracker_load(
    url: &str,
    hashes: &[[u8; 20]],
    rate: u64,
    seconds: u64,
) -> Result<(f64, Vec<f64>, u64)> {
    use indexswarm::tracker::protocol::url_bytes;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let query = |i: u64| {
        let h = hashes[(i as usize) % hashes.len()];
        let mut pid = *b"-BENCH0-000000000000";
        let s = format!("{:012}", i % 5000);
        pid[8..].copy_from_slice(s.as_bytes());
        format!(
            "{url}?info_hash={}&peer_id={}&port={}&uploaded=0&downloaded=0&left={}&compact=1&numwant=50",
            url_bytes(&h),
            url_bytes(&pid),
            10000 + (i % 5000),
            i % 3
        )
    };
    // Closed loop: 64 clients back to back for 3 s → capacity.
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let (c, d) = (client.clone(), done.clone());
        let qs: Vec<String> = (0..2000).map(|i| query(w * 100_000 + i)).collect();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < stop_at {
                if let Ok(r) = c.get(&qs[i % qs.len()]).send().await {
                    let _ = r.bytes().await;
                    d.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let capacity = done.load(Ordering::Relaxed) as f64 / 3.0;

    // Open loop at `rate`: latency measured from the scheduled send time.
    let lat = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let total = rate * seconds;
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let (c, l, e, q) = (client.clone(), lat.clone(), errors.clone(), query(i));
        handles.push(tokio::spawn(async move {
            match c.get(&q).timeout(Duration::from_secs(5)).send().await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    l.lock().unwrap().push(due.elapsed().as_secs_f64() * 1000.0);
                }
                _ => {
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let mut v = lat.lock().unwrap().clone();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok((capacity, v, errors.load(Ordering::Relaxed)))
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn bench_tracker(cli: &Cli, rate: u64, seconds: u64) -> Result<()> {
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let hashes: Vec<[u8; 20]> = (0..200u32)
        .map(|i| {
            indexswarm::demo::pseudo_random(i as u64 + 7, 20)
                .try_into()
                .unwrap()
        })
        .collect();
    let wl = cli.work.join("whitelist.txt");
    std::fs::write(
        &wl,
        hashes
            .iter()
            .map(hex::encode)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    {
        let port = free_port();
        let mut c = Command::new(indexswarm());
        c.args([
            "tracker",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--whitelist",
        ])
        .arg(&wl);
        let p = P::spawn("bench-tracker", c, &logs)?;
        wait_for(Duration::from_secs(10), "tracker", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        let before = cpu_secs(p.pid());
        let r = rt.block_on(tracker_load(
            &format!("http://127.0.0.1:{port}/announce"),
            &hashes,
            rate,
            seconds,
        ))?;
        rows.push((
            "indexswarm tracker",
            r,
            cpu_secs(p.pid()) - before,
            status_kb(p.pid(), "VmHWM:"),
        ));
    }
    {
        let root = cli.work.join("ot");
        std::fs::create_dir_all(&root)?;
        std::fs::copy(&wl, root.join("whitelist.txt"))?;
        let port = free_port();
        std::fs::write(
            root.join("ot.conf"),
            format!("listen.tcp_udp 127.0.0.1:{port}\ntracker.rootdir {}\naccess.whitelist /whitelist.txt\n", root.display()),
        )?;
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&cli.work)
            .status();
        let mut c = Command::new("opentracker");
        c.arg("-f").arg(root.join("ot.conf")).args(["-u", "nobody"]);
        let p = P::spawn("opentracker", c, &logs)?;
        wait_for(Duration::from_secs(10), "opentracker", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        let before = cpu_secs(p.pid());
        let r = rt.block_on(tracker_load(
            &format!("http://127.0.0.1:{port}/announce"),
            &hashes,
            rate,
            seconds,
        ))?;
        rows.push((
            "opentracker",
            r,
            cpu_secs(p.pid()) - before,
            status_kb(p.pid(), "VmHWM:"),
        ));
    }
    header(&format!("tracker: 200 torrents, 5,000 peers; capacity with 64 closed-loop clients, latency at {rate} announces/s for {seconds} s"));
    let ot_cap = rows
        .iter()
        .find(|r| r.0 == "opentracker")
        .map(|r| r.1 .0)
        .unwrap_or(f64::NAN);
    println!("| tracker | capacity (announces/s) | vs opentracker | p50 ms | p99 ms | max ms | errors | server CPU s | peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, (cap, lat, errs), cpu, rss) in &rows {
        println!(
            "| {name} | {cap:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {errs} | {cpu:.1} | {:.1} |",
            cap / ot_cap,
            pct(lat, 0.5),
            pct(lat, 0.99),
            pct(lat, 1.0),
            *rss as f64 / 1024.0
        );
    }
    println!("\nThe load generator shares the two cores with the tracker under test; both trackers face the same client.");
    Ok(())
}

// ---------------------------------------------------------------- transfer

struct Run {
    name: &'static str,
    secs: f64,
    cpu: f64,
    seed_rss: u64,
    leech_rss: u64,
}

fn bench_transfer(cli: &Cli, size: u64) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let tport = free_port();
    let _tracker = start_tracker(&logs, ([127, 0, 0, 1], tport).into())?;
    let announce = format!("http://127.0.0.1:{tport}/announce");
    let t = create_torrent(
        &cli.work,
        &dir.join("snap"),
        "transfer.torrent",
        &["--piece-length", "512K", "--announce", &announce],
    )?;
    let total = dir_bytes(&dir.join("snap"));
    let out = cli.work.join("transfer-out");
    let mut runs = Vec::new();
    for pair in ["indexswarm", "aria2", "libtorrent"] {
        for _ in 0..cli.runs {
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out)?;
            let _ = std::fs::remove_file(dir.join("snap.aria2"));
            let (sport, lport) = (free_port(), free_port());
            let mut seed = match pair {
                "indexswarm" => {
                    let mut c = Command::new(indexswarm());
                    c.arg("seed")
                        .arg(&t)
                        .arg("--dir")
                        .arg(&dir)
                        .args(["--listen", &format!("127.0.0.1:{sport}")]);
                    let p = P::spawn("seed", c, &logs)?;
                    wait_for(Duration::from_secs(120), "our seeder", || {
                        std::fs::read_to_string(logs.join("seed.out"))
                            .map(|s| s.trim().len() == 40)
                            .unwrap_or(false)
                    })?;
                    p
                }
                "aria2" => {
                    let mut c = Command::new("aria2c");
                    c.args(["-V", "--bt-seed-unverified=true", "--seed-ratio=0.0", "-d"])
                        .arg(&dir);
                    c.args([
                        "--enable-dht=false",
                        "--enable-dht6=false",
                        "--bt-enable-lpd=false",
                        "--enable-peer-exchange=false",
                    ]);
                    c.args([
                        &format!("--listen-port={sport}"),
                        "--file-allocation=none",
                        "--summary-interval=0",
                    ])
                    .arg(&t);
                    let p = P::spawn("seed", c, &logs)?;
                    std::thread::sleep(Duration::from_secs(2));
                    p
                }
                _ => {
                    let mut c = Command::new("/usr/bin/python3");
                    c.arg(lt_peer()).args(["seed"]).arg(&t).arg(&dir).args([
                        "--port",
                        &sport.to_string(),
                        "--seed-mode",
                    ]);
                    let p = P::spawn("seed", c, &logs)?;
                    wait_for(Duration::from_secs(60), "libtorrent seeder", || {
                        std::fs::read_to_string(logs.join("seed.out"))
                            .map(|s| s.contains("listening"))
                            .unwrap_or(false)
                    })?;
                    p
                }
            };
            let start = Instant::now();
            let mut leech = match pair {
                "indexswarm" => {
                    let mut c = Command::new(indexswarm());
                    c.arg("fetch").arg(&t).arg("--dir").arg(&out);
                    c.args([
                        "--listen",
                        &format!("127.0.0.1:{lport}"),
                        "--peer",
                        &format!("127.0.0.1:{sport}"),
                    ]);
                    P::spawn("leech", c, &logs)?
                }
                "aria2" => {
                    let mut c = Command::new("aria2c");
                    c.args(["--seed-time=0", "-d"]).arg(&out);
                    c.args([
                        "--enable-dht=false",
                        "--enable-dht6=false",
                        "--bt-enable-lpd=false",
                        "--enable-peer-exchange=false",
                    ]);
                    c.args([
                        &format!("--listen-port={lport}"),
                        "--file-allocation=none",
                        "--summary-interval=0",
                    ])
                    .arg(&t);
                    P::spawn("leech", c, &logs)?
                }
                _ => {
                    let mut c = Command::new("/usr/bin/python3");
                    c.arg(lt_peer()).args(["leech"]).arg(&t).arg(&out);
                    c.args([
                        "--port",
                        &lport.to_string(),
                        "--peer",
                        &format!("127.0.0.1:{sport}"),
                        "--timeout",
                        "600",
                    ]);
                    P::spawn("leech", c, &logs)?
                }
            };
            let seed_cpu0 = cpu_secs(seed.pid());
            let sampler = Sampler::start(vec![seed.pid(), leech.pid()]);
            wait_for(Duration::from_secs(900), "the leecher to finish", || {
                leech.done().is_some()
            })?;
            let secs = start.elapsed().as_secs_f64();
            let peaks = sampler.finish();
            if leech.done() != Some(true) {
                bail!(
                    "{pair} leecher failed; see {}",
                    logs.join("leech.log").display()
                );
            }
            let seed_cpu = cpu_secs(seed.pid()) - seed_cpu0;
            let leech_cpu = peaks.get(&leech.pid()).map(|p| p.1).unwrap_or(0.0);
            let _ = seed.done();
            let name = match pair {
                "indexswarm" => "indexswarm → indexswarm",
                "aria2" => "aria2c → aria2c",
                _ => "libtorrent → libtorrent",
            };
            eprintln!("{name}: {secs:.2}s");
            runs.push(Run {
                name,
                secs,
                cpu: seed_cpu + leech_cpu,
                seed_rss: peaks.get(&seed.pid()).map(|p| p.0).unwrap_or(0),
                leech_rss: peaks.get(&leech.pid()).map(|p| p.0).unwrap_or(0),
            });
            drop(seed);
        }
    }
    let best = |n: &str| {
        runs.iter()
            .filter(|r| r.name == n)
            .min_by(|a, b| a.secs.partial_cmp(&b.secs).unwrap())
    };
    let best_ref = runs
        .iter()
        .filter(|r| !r.name.starts_with("indexswarm"))
        .map(|r| r.secs)
        .fold(f64::MAX, f64::min);
    header(&format!(
        "transfer: one seeder → one leecher, {} over loopback, best of {}",
        indexswarm::units::human_bytes(total),
        cli.runs
    ));
    println!("| pair | seconds | MB/s | speed vs fastest reference | CPU s per GiB (both) | peak RssAnon seeder / leecher MiB |");
    println!("|---|---|---|---|---|---|");
    for n in [
        "indexswarm → indexswarm",
        "aria2c → aria2c",
        "libtorrent → libtorrent",
    ] {
        if let Some(r) = best(n) {
            println!(
                "| {n} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} / {:.1} |",
                r.secs,
                mb(total, r.secs),
                best_ref / r.secs,
                r.cpu / (total as f64 / (1u64 << 30) as f64),
                r.seed_rss as f64 / 1024.0,
                r.leech_rss as f64 / 1024.0
            );
        }
    }
    let all: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {:.2}s", r.name, r.secs))
        .collect();
    println!("\nAll runs: {}.", all.join(", "));
    Ok(())
}

// ---------------------------------------------------------------- namespaces

/// N network namespaces, each with a veth into one bridge and its upload capped.
struct Netns {
    n: usize,
}

const BRIDGE: &str = "iswbr0";

fn sh(cmd: &str) -> Result<()> {
    let st = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !st.success() {
        bail!("`{cmd}` failed");
    }
    Ok(())
}

impl Netns {
    fn up(n: usize, mbit: u64) -> Result<Netns> {
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
    fn cleanup_stale() {
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

    fn cleanup(n: usize) {
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

    fn ip(i: usize) -> String {
        format!("10.77.0.{}", 10 + i)
    }

    fn cmd(i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("isw{i}")]).arg(program);
        c
    }

    /// Bytes sent by namespace `i` (its egress qdisc).
    fn sent(i: usize) -> u64 {
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

fn kumar_ross(size: u64, n: usize, u: f64) -> f64 {
    let f = size as f64;
    (f / u).max(n as f64 * f / (u * (n as f64 + 1.0)))
}

/// One swarm run of `client`: each leecher's finishing time (s) and the
/// seeder's share of all bytes sent.
fn swarm_run(
    cli: &Cli,
    dir: &Path,
    logs: &Path,
    client: &str,
    leechers: usize,
    mbit: u64,
) -> Result<(Vec<f64>, f64)> {
    let net = Netns::up(leechers + 1, mbit)?;
    let tport = free_port();
    let _tracker = start_tracker(logs, format!("10.77.0.1:{tport}").parse()?)?;
    let t = create_torrent(
        &cli.work,
        &dir.join("snap"),
        "swarm.torrent",
        &[
            "--piece-length",
            "256K",
            "--announce",
            &format!("http://10.77.0.1:{tport}/announce"),
        ],
    )?;
    let out = cli.work.join("swarm-out");
    let _ = std::fs::remove_dir_all(&out);
    let mut procs = Vec::new();
    let seed = match client {
        "indexswarm" => {
            let mut c = Netns::cmd(0, &indexswarm());
            c.arg("seed")
                .arg(&t)
                .arg("--dir")
                .arg(dir)
                .args(["--listen", &format!("{}:6881", Netns::ip(0))]);
            let p = P::spawn("swarm-seed", c, logs)?;
            wait_for(Duration::from_secs(120), "seeder", || {
                std::fs::read_to_string(logs.join("swarm-seed.out"))
                    .map(|s| s.trim().len() == 40)
                    .unwrap_or(false)
            })?;
            p
        }
        _ => {
            let mut c = Netns::cmd(0, Path::new("/usr/bin/python3"));
            c.arg(lt_peer()).arg("seed").arg(&t).arg(dir).args([
                "--port",
                "6881",
                "--bind",
                &Netns::ip(0),
                "--seed-mode",
            ]);
            let p = P::spawn("swarm-seed", c, logs)?;
            wait_for(Duration::from_secs(60), "seeder", || {
                std::fs::read_to_string(logs.join("swarm-seed.out"))
                    .map(|s| s.contains("listening"))
                    .unwrap_or(false)
            })?;
            p
        }
    };
    // Let the seeder's first announce land so every leecher finds it at once.
    std::thread::sleep(Duration::from_secs(1));
    let sent0: Vec<u64> = (0..=leechers).map(Netns::sent).collect();
    let start = Instant::now();
    for i in 1..=leechers {
        let d = out.join(i.to_string());
        std::fs::create_dir_all(&d)?;
        let c = match client {
            "indexswarm" => {
                let mut c = Netns::cmd(i, &indexswarm());
                c.arg("fetch").arg(&t).arg("--dir").arg(&d).args([
                    "--listen",
                    &format!("{}:6881", Netns::ip(i)),
                    "--seed",
                ]);
                c
            }
            _ => {
                let mut c = Netns::cmd(i, Path::new("/usr/bin/python3"));
                c.arg(lt_peer()).arg("leech").arg(&t).arg(&d);
                c.args([
                    "--port",
                    "6881",
                    "--bind",
                    &Netns::ip(i),
                    "--timeout",
                    "900",
                    "--seed-after",
                ]);
                c
            }
        };
        procs.push(P::spawn(&format!("swarm-leech-{i}"), c, logs)?);
    }
    let mut finished: Vec<Option<f64>> = vec![None; leechers];
    wait_for(Duration::from_secs(900), "every leecher", || {
        for (i, f) in finished.iter_mut().enumerate() {
            if f.is_none() {
                let text = std::fs::read_to_string(logs.join(format!("swarm-leech-{}.out", i + 1)))
                    .unwrap_or_default();
                if text.contains("bytes_total") || text.contains("\"complete\": true") {
                    *f = Some(start.elapsed().as_secs_f64());
                }
            }
        }
        finished.iter().all(Option::is_some)
    })?;
    let secs = finished.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    let sent: Vec<u64> = (0..=leechers).map(|i| Netns::sent(i) - sent0[i]).collect();
    let all: u64 = sent.iter().sum();
    eprintln!("{client}: {secs:.1}s, seeder sent {} of {}", sent[0], all);
    drop(procs);
    drop(seed);
    drop(net);
    let f: Vec<f64> = finished.into_iter().flatten().collect();
    Ok((f, sent[0] as f64 / all as f64))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn bench_swarm(
    cli: &Cli,
    size: u64,
    leechers: usize,
    mbit: u64,
    no_lt: bool,
    repeat: usize,
) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let total = dir_bytes(&dir.join("snap"));
    let u = mbit as f64 * 1e6 / 8.0;
    let bound = kumar_ross(total, leechers, u);
    let mut rows = Vec::new();
    for client in ["indexswarm", "libtorrent"] {
        if client == "libtorrent" && no_lt {
            continue;
        }
        let mut runs = Vec::new();
        for _ in 0..repeat.max(1) {
            let (mut f, share) = swarm_run(cli, &dir, &logs, client, leechers, mbit)?;
            f.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            runs.push((f, share));
        }
        // The median run by its last leecher.
        runs.sort_by(|a, b| {
            let (x, y) = (
                a.0.last().copied().unwrap_or(0.0),
                b.0.last().copied().unwrap_or(0.0),
            );
            x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal)
        });
        let all: Vec<f64> = runs
            .iter()
            .map(|r| r.0.last().copied().unwrap_or(0.0))
            .collect();
        let mid = runs.len() / 2;
        rows.push((client, runs.swap_remove(mid), all));
    }
    header(&format!(
        "swarm: one seeder → {leechers} leechers, {}; every node's upload capped at {mbit} Mbit/s by tc tbf in its own network namespace{}",
        indexswarm::units::human_bytes(total),
        if repeat > 1 { format!(", median of {repeat} runs") } else { String::new() }
    ));
    println!("Kumar–Ross bound max(F/u, N·F/(u_seed + Σu)) = {bound:.1} s.\n");
    println!("| client | last leecher (s) | vs bound | seeder share of bytes sent | first / median / last leecher (s) | every run's last leecher (s) |");
    println!("|---|---|---|---|---|---|");
    for (client, (mut f, share), all) in rows {
        let last = f.last().copied().unwrap_or(0.0);
        let first = f.first().copied().unwrap_or(0.0);
        let med = median(&mut f);
        let all: Vec<String> = all.iter().map(|s| format!("{s:.1}")).collect();
        println!(
            "| {client} | {last:.1} | {:.2} | {:.0}% | {first:.1} / {med:.1} / {last:.1} | {} |",
            last / bound,
            share * 100.0,
            all.join(", ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- publish

fn http_json(method: &str, url: &str, body: Option<&str>) -> Result<serde_json::Value> {
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

fn http_text(url: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async { Ok(reqwest::get(url).await?.text().await?) })
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn bench_publish(cli: &Cli, size: u64, leechers: usize) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let root = cli.work.join("publish");
    let _ = std::fs::remove_dir_all(&root);
    let snaps = root.join("snaps");
    std::fs::create_dir_all(&snaps)?;
    // The hashing limit on this data, measured now: our own `create`.
    let create = best_of(cli.runs, || {
        let t = Instant::now();
        create_torrent(
            &cli.work,
            &dir.join("snap"),
            "publish-ref.torrent",
            &["--align-files"],
        )?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let (http, peer) = (free_port(), free_port());
    let mut c = Command::new(indexswarm());
    c.args(["master", "--snapshots-dir"]).arg(&snaps);
    c.args([
        "--http-listen",
        &format!("127.0.0.1:{http}"),
        "--peer-listen",
        &format!("127.0.0.1:{peer}"),
        "--settle-secs",
        "1",
    ]);
    let master = P::spawn("publish-master", c, &logs)?;
    let base = format!("http://127.0.0.1:{http}");
    wait_for(Duration::from_secs(20), "master", || {
        http_text(&format!("{base}/healthz")).is_ok()
    })?;
    let mut publish_secs = Vec::new();
    for v in 1..=3u64 {
        let name = format!("snapshot.2026112412{v:02}00000");
        let staging = root.join(&name);
        // A hard-linked copy plus one new file: the master hashes every byte each time.
        std::fs::create_dir_all(&staging)?;
        for e in std::fs::read_dir(dir.join("snap"))? {
            let e = e?;
            std::fs::hard_link(e.path(), staging.join(e.file_name()))?;
        }
        std::fs::write(
            staging.join(format!("segments_{}", v + 1)),
            indexswarm::demo::pseudo_random(v, 2000),
        )?;
        std::fs::rename(&staging, snaps.join(&name))?;
        wait_for(Duration::from_secs(300), "the version", || {
            http_json("GET", &format!("{base}/versions/latest"), None)
                .map(|j| j["version"] == v)
                .unwrap_or(false)
        })?;
        let m = http_text(&format!("{base}/metrics"))?;
        let sum = metric(&m, "indexswarm_publish_duration_seconds_sum").unwrap_or(f64::NAN);
        publish_secs.push(sum - publish_secs.iter().sum::<f64>());
    }
    // Memory while seeding three versions to `leechers` leechers.
    let sampler = Sampler::start(vec![master.pid()]);
    let out = root.join("leechers");
    let mut procs = Vec::new();
    for i in 0..leechers {
        let v = (i % 3) + 1;
        let mut c = Command::new(indexswarm());
        c.arg("fetch")
            .arg(format!("{base}/versions/{v}/torrent"))
            .arg("--dir")
            .arg(out.join(i.to_string()));
        c.args(["--listen", &format!("127.0.0.1:{}", free_port())]);
        procs.push(P::spawn(&format!("publish-leech-{i}"), c, &logs)?);
    }
    let start = Instant::now();
    wait_for(Duration::from_secs(1200), "the leechers", || {
        procs.iter_mut().all(|p| p.done().is_some())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let ok = procs
        .iter_mut()
        .map(|p| p.done())
        .filter(|d| *d == Some(true))
        .count();
    let peaks = sampler.finish();
    let hwm = status_kb(master.pid(), "VmHWM:");
    let anon = peaks.get(&master.pid()).map(|p| p.0).unwrap_or(0);
    header(&format!(
        "publish: {} snapshot directory → visible version (master on loopback)",
        indexswarm::units::human_bytes(dir_bytes(&dir.join("snap")))
    ));
    println!("| | seconds |");
    println!("|---|---|");
    println!("| hashing limit: `indexswarm create --align-files` on the same data | {create:.2} |");
    for (i, s) in publish_secs.iter().enumerate() {
        println!("| version {}: settled → visible (master's publish duration) | {s:.2} ({:.2}× the limit) |", i + 1, s / create);
    }
    println!(
        "\nMaster seeding 3 versions to {leechers} concurrent leechers ({ok} finished, {:.1} s, {} moved): peak RssAnon {:.1} MiB, peak RSS (VmHWM, counts page cache mapped by nobody but includes heap) {:.1} MiB.",
        secs,
        indexswarm::units::human_bytes(dir_bytes(&out)),
        anon as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}

// ---------------------------------------------------------------- replicate

fn bench_replicate(cli: &Cli, size: u64, replicas: usize, mbit: u64, no_http: bool) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let u = mbit as f64 * 1e6 / 8.0;
    let root = cli.work.join("replicate");
    let _ = std::fs::remove_dir_all(&root);
    let snaps = root.join("snaps");
    std::fs::create_dir_all(&snaps)?;
    let net = Netns::up(replicas + 1, mbit)?;
    let base = format!("http://{}:7070", Netns::ip(0));
    let mut c = Netns::cmd(0, &indexswarm());
    c.args(["master", "--snapshots-dir"]).arg(&snaps);
    c.args([
        "--http-listen",
        &format!("{}:7070", Netns::ip(0)),
        "--peer-listen",
        &format!("{}:6881", Netns::ip(0)),
    ]);
    c.args([
        "--public-url",
        &base,
        "--settle-secs",
        "3600",
        "--announce-interval-secs",
        "5",
    ]);
    let _master = P::spawn("rep-master", c, &logs)?;
    wait_for(Duration::from_secs(20), "master", || {
        http_text(&format!("{base}/healthz")).is_ok()
    })?;
    let mut procs = Vec::new();
    for i in 1..=replicas {
        let mut c = Netns::cmd(i, &indexswarm());
        c.args(["replica", "--master-url", &base, "--data-dir"])
            .arg(root.join(format!("r{i}")));
        c.args([
            "--http-listen",
            &format!("{}:7071", Netns::ip(i)),
            "--peer-listen",
            &format!("{}:6882", Netns::ip(i)),
        ]);
        c.args(["--poll-interval-secs", "1"]);
        procs.push(P::spawn(&format!("rep-replica-{i}"), c, &logs)?);
    }
    for i in 1..=replicas {
        wait_for(Duration::from_secs(20), "replica", || {
            http_text(&format!("http://{}:7071/healthz", Netns::ip(i))).is_ok()
        })?;
    }
    let status = |i: usize| {
        http_json("GET", &format!("http://{}:7071/status", Netns::ip(i)), None).unwrap_or_default()
    };
    let phase = |version: u64, name: &str| -> Result<(f64, Vec<serde_json::Value>, u64, u64)> {
        let sent0: Vec<u64> = (0..=replicas).map(Netns::sent).collect();
        let start = Instant::now();
        let r = http_json(
            "POST",
            &format!("{base}/snapshot"),
            Some(&format!("{{\"path\": \"{name}\"}}")),
        )?;
        if r["version"] != version {
            bail!("publish answered {r}");
        }
        let published = start.elapsed().as_secs_f64();
        let start = Instant::now();
        wait_for(Duration::from_secs(3600), "every replica", || {
            (1..=replicas).all(|i| status(i)["current_version"] == version)
        })?;
        let secs = start.elapsed().as_secs_f64();
        let sts: Vec<serde_json::Value> = (1..=replicas).map(status).collect();
        let sent: Vec<u64> = (0..=replicas).map(|i| Netns::sent(i) - sent0[i]).collect();
        eprintln!("version {version}: publish {published:.1}s, replication {secs:.1}s");
        Ok((secs, sts, sent[0], sent.iter().sum()))
    };
    // Version 1.
    let v1 = "snapshot.20261124120000000";
    std::fs::create_dir_all(snaps.join(v1))?;
    for e in std::fs::read_dir(dir.join("snap"))? {
        let e = e?;
        std::fs::hard_link(e.path(), snaps.join(v1).join(e.file_name()))?;
    }
    let f1 = dir_bytes(&snaps.join(v1));
    let (t1, _, seed1, all1) = phase(1, v1)?;
    // Version 2: a new segment of 5% and a rewritten commit point.
    let v2 = "snapshot.20261124121500000";
    let staging = root.join(v2);
    indexswarm::demo::next_snapshot(&snaps.join(v1), &staging, f1 / 20, 7)?;
    std::fs::rename(&staging, snaps.join(v2))?;
    let changed: u64 = ["_n.cfs", "_n.cfe", "_n.si", "segments_2"]
        .iter()
        .map(|f| {
            std::fs::metadata(snaps.join(v2).join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let (t2, sts2, _, _) = phase(2, v2)?;
    drop(procs);

    // Plain HTTP fan-out: every replica fetches every file from the master's host.
    let http_secs = if no_http {
        None
    } else {
        let mut c = Netns::cmd(0, Path::new("/usr/bin/python3"));
        c.args([
            "-m",
            "http.server",
            "8000",
            "--bind",
            &Netns::ip(0),
            "--directory",
        ])
        .arg(snaps.join(v1));
        let _srv = P::spawn("rep-http", c, &logs)?;
        wait_for(Duration::from_secs(20), "http server", || {
            std::net::TcpStream::connect((Netns::ip(0).as_str(), 8000)).is_ok()
        })?;
        let files: Vec<String> = std::fs::read_dir(snaps.join(v1))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let start = Instant::now();
        let mut clients = Vec::new();
        for i in 1..=replicas {
            let d = root.join(format!("http{i}"));
            std::fs::create_dir_all(&d)?;
            let script: String = files
                .iter()
                .map(|f| {
                    format!(
                        "curl -sf -o '{}/{f}' 'http://{}:8000/{f}' || exit 1; ",
                        d.display(),
                        Netns::ip(0)
                    )
                })
                .collect();
            let mut c = Netns::cmd(i, Path::new("/bin/sh"));
            c.arg("-c").arg(script);
            clients.push(P::spawn(&format!("rep-http-{i}"), c, &logs)?);
        }
        wait_for(Duration::from_secs(7200), "HTTP fan-out", || {
            clients.iter_mut().all(|c| c.done().is_some())
        })?;
        Some(start.elapsed().as_secs_f64())
    };
    drop(net);

    let bound = kumar_ross(f1, replicas, u);
    header(&format!(
        "replicate: master + {replicas} replicas, each in its own network namespace with upload capped at {mbit} Mbit/s ({:.1} MB/s)",
        u / 1e6
    ));
    println!("| | seconds | vs Kumar–Ross bound ({bound:.1} s) |");
    println!("|---|---|---|");
    println!(
        "| version 1 ({}) to every replica, indexswarm | {t1:.1} | {:.2} |",
        indexswarm::units::human_bytes(f1),
        t1 / bound
    );
    if let Some(h) = http_secs {
        println!("| version 1, plain HTTP fan-out (each replica GETs every file from the master's host) | {h:.1} | {:.2} |", h / bound);
        println!(
            "\nindexswarm is {:.1}× faster than the HTTP fan-out.",
            h / t1
        );
    }
    println!(
        "\nVersion 1: the master sent {:.0}% of all bytes on the wire.",
        seed1 as f64 * 100.0 / all1 as f64
    );
    println!(
        "\nVersion 2 changes {} ({:.1}% of {}); replicated in {t2:.1} s.\n",
        indexswarm::units::human_bytes(changed),
        changed as f64 * 100.0 / f1 as f64,
        indexswarm::units::human_bytes(f1)
    );
    println!("| replica | bytes downloaded | bytes reused | downloaded / changed |");
    println!("|---|---|---|---|");
    for (i, s) in sts2.iter().enumerate() {
        let d = s["bytes_downloaded"].as_u64().unwrap_or(0);
        println!(
            "| {} | {d} | {} | {:.3} |",
            i + 1,
            s["bytes_reused"].as_u64().unwrap_or(0),
            d as f64 / changed as f64
        );
    }
    std::io::stdout().flush()?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.work)?;
    match &cli.cmd {
        Cmd::Create { size } => bench_create(&cli, size.0),
        Cmd::Tracker { rate, seconds } => bench_tracker(&cli, *rate, *seconds),
        Cmd::Transfer { size } => bench_transfer(&cli, size.0),
        Cmd::Swarm {
            size,
            leechers,
            mbit,
            no_libtorrent,
            repeat,
        } => bench_swarm(&cli, size.0, *leechers, *mbit, *no_libtorrent, *repeat),
        Cmd::Publish { size, leechers } => bench_publish(&cli, size.0, *leechers),
        Cmd::Replicate {
            size,
            replicas,
            mbit,
            no_http,
        } => bench_replicate(&cli, size.0, *replicas, *mbit, *no_http),
    }
}
