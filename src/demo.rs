//! `indexswarm demo`: the whole system in one process on loopback.
//!
//! A master and three replicas (each its own engine, ports and data
//! directory) replicate a generated index snapshot shaped like a Lucene
//! index, then a second snapshot that adds a segment and rewrites the small
//! metadata files, exactly as a commit would. It prints what moved where and
//! exits 0 only if every replica verified and swapped to both versions with
//! files identical to the master's.
//!
//! The snapshot generator is public: benchmarks and tests build their data
//! with it too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::master::Master;
use crate::replica::{Replica, ReplicaSet};
use crate::units::human_bytes;

/// Deterministic incompressible bytes (xorshift64), fast enough for GiBs.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a Lucene-shaped index of about `size` bytes into `dir`: three
/// large merged segments, eight small flushed segments of several files
/// each, and a `segments_1` commit point.
pub fn generate_snapshot(dir: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let big = [0.45, 0.25, 0.15];
    for (i, share) in big.iter().enumerate() {
        let len = (size as f64 * share) as usize;
        std::fs::write(
            dir.join(format!("_{i}.cfs")),
            pseudo_random(seed + i as u64, len),
        )?;
        std::fs::write(
            dir.join(format!("_{i}.cfe")),
            pseudo_random(seed + 100 + i as u64, 400),
        )?;
        std::fs::write(
            dir.join(format!("_{i}.si")),
            pseudo_random(seed + 200 + i as u64, 380),
        )?;
    }
    let small_total = (size as f64 * 0.15) as usize;
    for s in 0..8u64 {
        let name = format!("_{}", s + 3);
        let per = small_total / 8;
        let parts = [
            ("fdt", per / 2),
            ("fdx", per / 16),
            ("tim", per / 4),
            ("tip", per / 32),
            ("doc", per / 8),
        ];
        for (j, (ext, len)) in parts.iter().enumerate() {
            std::fs::write(
                dir.join(format!("{name}.{ext}")),
                pseudo_random(seed * 31 + s * 7 + j as u64, *len),
            )?;
        }
        std::fs::write(
            dir.join(format!("{name}.si")),
            pseudo_random(seed + 300 + s, 360),
        )?;
        std::fs::write(
            dir.join(format!("{name}.fnm")),
            pseudo_random(seed + 400 + s, 1200),
        )?;
    }
    std::fs::write(dir.join("segments_1"), pseudo_random(seed + 999, 1500))?;
    Ok(())
}

/// The next commit: every segment of `prev` kept (hard links), one new
/// segment of `new_bytes`, and the commit point rewritten.
pub fn next_snapshot(prev: &Path, dir: &Path, new_bytes: u64, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(prev)? {
        let e = e?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n.starts_with("segments_") {
            continue;
        }
        let target = dir.join(&name);
        if std::fs::hard_link(e.path(), &target).is_err() {
            std::fs::copy(e.path(), &target)?;
        }
    }
    std::fs::write(dir.join("_n.cfs"), pseudo_random(seed, new_bytes as usize))?;
    std::fs::write(dir.join("_n.cfe"), pseudo_random(seed + 1, 420))?;
    std::fs::write(dir.join("_n.si"), pseudo_random(seed + 2, 390))?;
    std::fs::write(dir.join("segments_2"), pseudo_random(seed + 3, 1600))?;
    Ok(())
}

/// What generated file bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Incompressible (xorshift64), as a real index's segments nearly are.
    Random,
    /// Every 4 KiB block starts with 16 bytes unique to the file and the
    /// block, then repeats a fixed text: no two blocks (so no two pieces)
    /// are equal, yet a compressing filesystem stores a tiny fraction.
    /// Lets a benchmark move tens of GiB through a disk that cannot hold
    /// them; every byte is still read, hashed, sent and written.
    Compressible,
}

/// Writes `len` bytes of `fill` to `path`, streamed in 1 MiB chunks (no
/// buffer the size of the file), and fsyncs it.
pub fn write_generated(path: &Path, len: u64, seed: u64, fill: Fill) -> std::io::Result<()> {
    use std::io::Write;
    const CHUNK: u64 = 1 << 20;
    const FILLER: &[u8] = b"indexswarm compressible filler, unique per block by its header. ";
    let mut f = std::io::BufWriter::with_capacity(CHUNK as usize, std::fs::File::create(path)?);
    let mut block = vec![0u8; 4096];
    for (i, b) in block.iter_mut().enumerate().skip(16) {
        *b = FILLER[i % FILLER.len()];
    }
    let mut written = 0u64;
    let mut chunk_no = 0u64;
    while written < len {
        let n = (len - written).min(CHUNK);
        match fill {
            Fill::Random => f.write_all(&pseudo_random(
                seed.wrapping_mul(0x1_0000_0001).wrapping_add(chunk_no),
                n as usize,
            ))?,
            Fill::Compressible => {
                let mut left = n;
                let mut block_no = written / 4096;
                while left > 0 {
                    block[..8].copy_from_slice(&seed.to_le_bytes());
                    block[8..16].copy_from_slice(&block_no.to_le_bytes());
                    let m = left.min(4096) as usize;
                    f.write_all(&block[..m])?;
                    left -= m as u64;
                    block_no += 1;
                }
            }
        }
        written += n;
        chunk_no += 1;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Lucene's segment names: `_0` … `_9`, `_a` … `_z`, `_10` … (base 36).
pub fn segment_name(n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let (mut n, mut s) = (n, Vec::new());
    loop {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.push(b'_');
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// The files of small flushed segments, eight to a segment.
const SMALL_SEGMENT_FILES: [&str; 8] = ["fdt", "fdx", "tim", "tip", "doc", "pos", "si", "fnm"];

/// Writes a Lucene-shaped index of `files` files and about `size` bytes
/// into `dir`: four huge merged segments (`_0.cfs` … `_3.cfs`, 90% of the
/// bytes), then `files - 5` files of small flushed segments (eight files
/// each, 10% of the bytes, sizes varying from file to file) and a
/// `segments_1` commit point. Files are streamed, so any size fits in
/// memory. Returns the bytes written.
pub fn generate_index(
    dir: &Path,
    size: u64,
    files: usize,
    seed: u64,
    fill: Fill,
) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let files = files.max(6);
    let big = [0.40, 0.25, 0.15, 0.10];
    let mut total = 0u64;
    for (i, share) in big.iter().enumerate() {
        let len = (size as f64 * share) as u64;
        write_generated(&dir.join(format!("_{i}.cfs")), len, seed + i as u64, fill)?;
        total += len;
    }
    let small = files - 5;
    let weight = |i: usize| 1 + (i as u64 * 7919) % 97;
    let weights: u64 = (0..small).map(weight).sum();
    let small_bytes = size.saturating_sub(total);
    for i in 0..small {
        let name = format!(
            "{}.{}",
            segment_name(4 + (i / SMALL_SEGMENT_FILES.len()) as u64),
            SMALL_SEGMENT_FILES[i % SMALL_SEGMENT_FILES.len()]
        );
        let len = (small_bytes * weight(i) / weights).max(1);
        write_generated(&dir.join(name), len, seed + 1000 + i as u64, fill)?;
        total += len;
    }
    write_generated(&dir.join("segments_1"), 1500, seed + 999, fill)?;
    Ok(total + 1500)
}

/// Writes `count` small files (1 to 16 KiB, random bytes) named like the
/// files of Lucene's flushed segments, plus a `segments_1` commit point:
/// the shape of an index that flushes often and merges rarely. Returns the
/// bytes written.
pub fn generate_small_files(dir: &Path, count: usize, seed: u64) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut total = 0u64;
    for i in 0..count.saturating_sub(1) {
        let name = format!(
            "{}.{}",
            segment_name((i / SMALL_SEGMENT_FILES.len()) as u64),
            SMALL_SEGMENT_FILES[i % SMALL_SEGMENT_FILES.len()]
        );
        let len = 1024 + (i as u64 * 7919) % (15 * 1024);
        std::fs::write(dir.join(name), pseudo_random(seed + i as u64, len as usize))?;
        total += len;
    }
    std::fs::write(dir.join("segments_1"), pseudo_random(seed + 999, 1500))?;
    Ok(total + 1500)
}

#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Size of the generated index (the second version adds about 5%).
    #[arg(long, default_value = "256M")]
    pub size: crate::units::ByteSize,
    /// Number of replicas.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Work here instead of a temporary directory, and keep it afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// After the story, keep everything running with a fleet rollout per
    /// version, print the dashboard's URL, and publish a new version every
    /// --every seconds until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
    /// With --serve: seconds between new versions.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub every: u64,
}

/// The demo runs every node in one process on one machine: more replicas
/// than this, or a bigger index, is a typo rather than a demonstration.
const MAX_DEMO_REPLICAS: usize = 32;
const MAX_DEMO_SIZE: u64 = 64 << 30;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Node {
    name: String,
    set: Arc<ReplicaSet>,
    /// The set's one index.
    replica: Arc<Replica>,
}

/// Compares two directory trees file by file.
fn same_tree(a: &Path, b: &Path) -> std::io::Result<bool> {
    let list = |root: &Path| -> std::io::Result<Vec<(PathBuf, u64)>> {
        let mut v = Vec::new();
        for e in walkdir::WalkDir::new(root).follow_links(true).min_depth(1) {
            let e = e.map_err(std::io::Error::other)?;
            if e.file_type().is_file() {
                v.push((
                    e.path()
                        .strip_prefix(root)
                        .unwrap_or(e.path())
                        .to_path_buf(),
                    e.metadata().map_err(std::io::Error::other)?.len(),
                ));
            }
        }
        v.sort();
        Ok(v)
    };
    let (la, lb) = (list(a)?, list(b)?);
    if la != lb {
        return Ok(false);
    }
    for (p, _) in la {
        if std::fs::read(a.join(&p))? != std::fs::read(b.join(&p))? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn wait_for_version(nodes: &[Node], version: u64, limit: Duration) -> Result<Vec<f64>> {
    let start = Instant::now();
    let mut done: Vec<Option<f64>> = vec![None; nodes.len()];
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if done[i].is_none() && n.replica.live_version() == Some(version) {
                done[i] = Some(start.elapsed().as_secs_f64());
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(done.into_iter().flatten().collect());
        }
        if start.elapsed() > limit {
            let states: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let s = n.replica.status();
                    format!(
                        "{}: {:?} v{:?} {:.0}% {}",
                        n.name,
                        s.state,
                        s.current_version,
                        s.progress * 100.0,
                        s.last_error.unwrap_or_default()
                    )
                })
                .collect();
            bail!(
                "version {version} did not reach every replica within {limit:?}: {}",
                states.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post_snapshot(http: &reqwest::Client, base: &str, name: &str) -> Result<u64> {
    let r = http
        .post(format!("{base}/snapshot"))
        .json(&serde_json::json!({ "path": name }))
        .send()
        .await
        .context("POST /snapshot")?;
    let status = r.status();
    let body: serde_json::Value = r.json().await.context("POST /snapshot reply")?;
    if !status.is_success() {
        bail!("POST /snapshot answered {status}: {body}");
    }
    body["version"]
        .as_u64()
        .context("version number in the reply")
}

/// Runs the demo; returns an error (exit 1) if any replica failed.
pub async fn run(opts: DemoOptions) -> Result<()> {
    if !(1..=MAX_DEMO_REPLICAS).contains(&opts.replicas) || opts.size.0 > MAX_DEMO_SIZE {
        bail!(
            "--replicas must be from 1 to {MAX_DEMO_REPLICAS} and --size at most {} (got {} and {})",
            crate::units::ByteSize(MAX_DEMO_SIZE),
            opts.replicas,
            opts.size
        );
    }
    let tmp;
    let root = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("indexswarm-demo-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let size = opts.size.0.max(1 << 20);
    println!(
        "indexswarm demo: 1 master + {} replicas on loopback, in {}",
        opts.replicas,
        root.display()
    );

    let snapshots = root.join("master/snapshots");
    let staging = root.join("master/staging");
    let http_port = free_port()?;
    let public_url = format!("http://127.0.0.1:{http_port}");
    // Built through the same validation as the command line, so every
    // setting not named here takes its documented default.
    let mcfg = crate::config::RawMaster {
        snapshots_dir: Some(snapshots.clone()),
        state_dir: Some(root.join("master/state")),
        http_listen: Some(format!("127.0.0.1:{http_port}")),
        peer_listen: Some("127.0.0.1:0".into()),
        public_url: Some(public_url.clone()),
        // The demo publishes explicitly, with POST /snapshot.
        settle_secs: Some(3600),
        rescan_secs: Some(3600),
        announce_interval_secs: Some(5),
        // The demo lasts seconds and measures transfers: no re-verification.
        verify_rate: Some(crate::units::ByteSize(0)),
        // Served, it shows rollouts on the dashboard, and runs for hours.
        rollout: opts.serve.then(|| "fleet".to_string()),
        delete_old_snapshots: Some(opts.serve),
        ..Default::default()
    }
    .validate()?;
    let shutdown = CancellationToken::new();
    // Replicas stop first so their `stopped` announces still reach the master.
    let replicas_shutdown = CancellationToken::new();
    let master = Master::start(mcfg.clone())
        .await
        .context("starting the master")?;
    let (_, server) = crate::http::serve(
        crate::http::master::routes(master.clone()),
        mcfg.http_listen,
        None,
        shutdown.clone(),
    )?;
    tokio::spawn(server);
    tokio::spawn(master.clone().run(shutdown.clone()));

    let mut nodes = Vec::new();
    for i in 1..=opts.replicas {
        let cfg = crate::config::RawReplica {
            master_url: Some(public_url.clone()),
            data_dir: Some(root.join(format!("replica-{i}"))),
            http_listen: Some(format!("127.0.0.1:{}", free_port()?)),
            peer_listen: Some("127.0.0.1:0".into()),
            poll_interval_secs: Some(1),
            seed_old_secs: Some(60),
            id: Some(format!("replica-{i}")),
            zone: Some(format!("zone-{}", if i % 2 == 1 { "a" } else { "b" })),
            ..Default::default()
        }
        .validate()?;
        let set = ReplicaSet::start(cfg.clone())
            .await
            .with_context(|| format!("starting replica {i}"))?;
        let (_, server) = crate::http::serve(
            crate::http::replica::routes(set.clone()),
            cfg.http_listen,
            None,
            replicas_shutdown.clone(),
        )?;
        tokio::spawn(server);
        tokio::spawn(set.clone().run(replicas_shutdown.clone()));
        nodes.push(Node {
            name: format!("replica-{i}"),
            replica: set.replicas()[0].clone(),
            set,
        });
    }
    let http = reqwest::Client::new();
    let limit = Duration::from_secs(600);

    // Version 1.
    let t = Instant::now();
    let name1 = "snapshot.20261124120000000";
    generate_snapshot(&staging.join(name1), size, 1)?;
    std::fs::rename(staging.join(name1), snapshots.join(name1))?;
    println!(
        "\ngenerated {name1}: {} in {:.1}s",
        human_bytes(dir_size(&snapshots.join(name1))),
        t.elapsed().as_secs_f64()
    );
    let mut report = Report::default();
    let v1 = post_snapshot(&http, &public_url, name1).await?;
    report
        .phase(&master, &nodes, v1, name1, &snapshots, limit)
        .await?;

    // Version 2: a new segment (~5%) and a rewritten commit point.
    let name2 = "snapshot.20261124121500000";
    next_snapshot(&snapshots.join(name1), &staging.join(name2), size / 20, 2)?;
    std::fs::rename(staging.join(name2), snapshots.join(name2))?;
    let v2 = post_snapshot(&http, &public_url, name2).await?;
    report
        .phase(&master, &nodes, v2, name2, &snapshots, limit)
        .await?;

    if opts.serve {
        let last = Published {
            dir: snapshots.join(name2),
            version: v2,
        };
        serve(&opts, &http, &public_url, &staging, &snapshots, size, last).await?;
    }
    replicas_shutdown.cancel();
    futures::future::join_all(nodes.iter().map(|n| n.set.engine.shutdown())).await;
    shutdown.cancel();
    master.engine().shutdown().await;
    println!("\nall {} replicas verified and swapped to versions {v1} and {v2}; files identical to the master's", nodes.len());
    if opts.dir.is_some() {
        println!("kept {}", root.display());
    }
    Ok(())
}

/// The newest version the demo published, and its directory.
struct Published {
    dir: PathBuf,
    version: u64,
}

/// `demo --serve`: a new version every `opts.every` seconds until Ctrl-C,
/// for the dashboard to show. Each adds about 1% and rewrites the commit
/// point, as an hourly Solr commit would.
async fn serve(
    opts: &DemoOptions,
    http: &reqwest::Client,
    url: &str,
    staging: &Path,
    snapshots: &Path,
    size: u64,
    mut last: Published,
) -> Result<()> {
    let stop = crate::shutdown::on_signal();
    println!(
        "
dashboard: {url}/   (replicas: /replicas, rollout: /rollout)"
    );
    println!(
        "a new version every {} s, rolled out to the fleet; Ctrl-C to stop",
        opts.every
    );
    let mut n: u64 = 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(opts.every)) => {}
        }
        let name = format!("snapshot.demo{n:06}");
        let dst = staging.join(&name);
        let prev = last.dir.clone();
        let new_bytes = (size / 100).max(64 << 10);
        tokio::task::spawn_blocking(move || next_snapshot(&prev, &dst, new_bytes, n))
            .await
            .context("generating a snapshot")??;
        std::fs::rename(staging.join(&name), snapshots.join(&name))?;
        let version = post_snapshot(http, url, &name).await?;
        println!("published version {version} ({name}); the fleet stages and activates it");
        last = Published {
            dir: snapshots.join(&name),
            version,
        };
        n += 1;
    }
    println!("stopping at version {}", last.version);
    Ok(())
}

/// Bytes in the regular files under `p`.
pub fn dir_size(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[derive(Default)]
struct Report {
    uploaded_before: Vec<u64>,
}

impl Report {
    async fn phase(
        &mut self,
        master: &Arc<Master>,
        nodes: &[Node],
        version: u64,
        name: &str,
        snapshots: &Path,
        limit: Duration,
    ) -> Result<()> {
        let uploaded = |master: &Arc<Master>, nodes: &[Node]| -> Vec<u64> {
            let m = master.engine().totals().0;
            std::iter::once(m)
                .chain(nodes.iter().map(|n| n.replica.status().bytes_uploaded))
                .collect()
        };
        if self.uploaded_before.is_empty() {
            self.uploaded_before = vec![0; nodes.len() + 1];
        }
        let before = self.uploaded_before.clone();
        let total = dir_size(&snapshots.join(name));
        println!(
            "\nversion {version} ({name}, {}) published; replicating…",
            human_bytes(total)
        );
        let times = wait_for_version(nodes, version, limit).await?;
        let now = uploaded(master, nodes);
        // Session counters of retired sessions vanish; never report negative deltas.
        let served: Vec<u64> = now
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        self.uploaded_before = now;
        println!(
            "  {:<10} {:>12} {:>12} {:>10} {:>10}",
            "replica", "downloaded", "reused", "time", "identical"
        );
        let mut network = 0;
        for (n, secs) in nodes.iter().zip(&times) {
            let s = n.replica.status();
            let path = PathBuf::from(s.current_path.clone().unwrap_or_default());
            let same = same_tree(&snapshots.join(name), &path).unwrap_or(false);
            if !same {
                bail!(
                    "{}: version {version} differs from the master's snapshot",
                    n.name
                );
            }
            network += s.bytes_downloaded;
            println!(
                "  {:<10} {:>12} {:>12} {:>9.2}s {:>10}",
                n.name,
                human_bytes(s.bytes_downloaded),
                human_bytes(s.bytes_reused),
                secs,
                if same { "yes" } else { "NO" }
            );
        }
        println!(
            "  moved over the network: {} for {} replicas ({} per replica)",
            human_bytes(network),
            nodes.len(),
            human_bytes(network / nodes.len() as u64)
        );
        println!("  who served it:");
        let names: Vec<String> = std::iter::once("master".to_string())
            .chain(nodes.iter().map(|n| n.name.clone()))
            .collect();
        let sum: u64 = served.iter().sum::<u64>().max(1);
        for (n, b) in names.iter().zip(&served) {
            println!(
                "    {:<10} {:>12}  ({:>3.0}%)",
                n,
                human_bytes(*b),
                *b as f64 * 100.0 / sum as f64
            );
        }
        Ok(())
    }
}
