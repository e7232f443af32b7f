//! `bench tracker`: announces per second and latency against opentracker.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::common::{cpu_secs, free_port, header, indexswarm, status_kb, wait_for, P};
use crate::Cli;

pub(crate) async fn tracker_load(
    url: &str,
    hashes: &[[u8; 20]],
    rate: u64,
    seconds: u64,
    token: Option<&str>,
) -> Result<(f64, Vec<f64>, u64)> {
    use indexswarm::tracker::protocol::url_bytes;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))?,
        );
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .default_headers(headers)
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
                    // A bencoded refusal is an answer, not an announce served.
                    if r.bytes().await.is_ok_and(|b| !refused(&b)) {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
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
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) if !refused(&b) => {
                        l.lock().unwrap().push(due.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => {
                        e.fetch_add(1, Ordering::Relaxed);
                    }
                },
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

/// A tracker's bencoded `failure reason` (HTTP 200, but no announce served).
pub(crate) fn refused(body: &[u8]) -> bool {
    body.windows(14).any(|w| w == b"failure reason")
}

pub(crate) fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn bench_tracker(cli: &Cli, rate: u64, seconds: u64) -> Result<()> {
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let hashes: Vec<[u8; 20]> = (0..200u32)
        .map(|i| {
            indexswarm::demo::pseudo_random(i as u64 + 7, 20)
                .try_into()
                .unwrap()
        })
        .collect();
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    {
        let (p, url) = start_whitelisted(&logs, "bench-tracker", &cli.work, &hashes)?;
        let before = cpu_secs(p.pid());
        let r = rt.block_on(tracker_load(&url, &hashes, rate, seconds, None))?;
        rows.push((
            "indexswarm tracker",
            r,
            cpu_secs(p.pid()) - before,
            status_kb(p.pid(), "VmHWM:"),
        ));
    }
    {
        let (p, url) = start_opentracker(&logs, "opentracker", &cli.work, &hashes, &cli.work)?;
        let before = cpu_secs(p.pid());
        let r = rt.block_on(tracker_load(&url, &hashes, rate, seconds, None))?;
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

/// Writes `hashes` as `dir/whitelist.txt` and starts `indexswarm tracker`
/// with it on a free loopback port: the process and its announce URL.
pub(crate) fn start_whitelisted(
    logs: &Path,
    name: &str,
    dir: &Path,
    hashes: &[[u8; 20]],
) -> Result<(P, String)> {
    let wl = write_whitelist(dir, hashes)?;
    let port = free_port();
    let mut c = Command::new(indexswarm());
    c.args([
        "tracker",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--whitelist",
    ])
    .arg(&wl);
    let p = P::spawn(name, c, logs)?;
    wait_for(Duration::from_secs(10), "tracker", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })?;
    Ok((p, format!("http://127.0.0.1:{port}/announce")))
}

/// Starts opentracker (as `nobody`, rooted in `dir/ot`) whitelisting
/// `hashes` on a free loopback port: the process and its announce URL.
/// `readable` is made world-readable so that `nobody` can read its root.
pub(crate) fn start_opentracker(
    logs: &Path,
    name: &str,
    dir: &Path,
    hashes: &[[u8; 20]],
    readable: &Path,
) -> Result<(P, String)> {
    let root = dir.join("ot");
    write_whitelist(&root, hashes)?;
    let port = free_port();
    std::fs::write(
        root.join("ot.conf"),
        format!(
            "listen.tcp_udp 127.0.0.1:{port}\ntracker.rootdir {}\naccess.whitelist /whitelist.txt\n",
            root.display()
        ),
    )?;
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(readable)
        .status();
    let mut c = Command::new("opentracker");
    c.arg("-f").arg(root.join("ot.conf")).args(["-u", "nobody"]);
    let p = P::spawn(name, c, logs)?;
    wait_for(Duration::from_secs(10), "opentracker", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .context("opentracker (apt-get install opentracker)")?;
    Ok((p, format!("http://127.0.0.1:{port}/announce")))
}

fn write_whitelist(dir: &Path, hashes: &[[u8; 20]]) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let wl = dir.join("whitelist.txt");
    let lines: Vec<String> = hashes.iter().map(hex::encode).collect();
    std::fs::write(&wl, lines.join("\n") + "\n")?;
    Ok(wl)
}
