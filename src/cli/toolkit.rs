//! The BitTorrent toolkit's commands: `create`, `inspect`, `tracker`,
//! `seed` and `fetch` (the sidecars, `master` and `replica`, are in the
//! parent module).

use crate::metainfo::{self, BuildOptions, InfoHash, Metainfo};
use crate::swarm::{Engine, EngineConfig, Mode, SessionOptions};
use crate::tracker::{Tracker, TrackerConfig};
use crate::units::ByteSize;
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// Resolves `HOST:PORT` strings (names allowed) to socket addresses.
async fn resolve_peers(peers: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for p in peers {
        let addrs = tokio::net::lookup_host(p.as_str())
            .await
            .with_context(|| format!("cannot resolve peer {p:?} (expected HOST:PORT)"))?;
        out.extend(addrs.take(1));
    }
    Ok(out)
}

/// Starts the engine on `listen`, or on 0.0.0.0:6881 falling back to any free port.
async fn start_engine(
    listen: Option<SocketAddr>,
    up: u64,
    down: u64,
    limits: &PeerLimits,
    tls: &PeerTlsArgs,
) -> Result<Engine> {
    let identity = tls.identity()?;
    let cfg = |listen| EngineConfig {
        listen,
        upload_limit: up,
        download_limit: down,
        max_connections: limits.max_connections,
        identity: identity.clone(),
        ..EngineConfig::default()
    };
    match listen {
        Some(l) => Ok(Engine::start(cfg(l)).await?),
        None => match Engine::start(cfg(([0, 0, 0, 0], 6881).into())).await {
            Ok(e) => Ok(e),
            Err(_) => {
                tracing::info!("port 6881 is taken; using a free port");
                Ok(Engine::start(cfg(([0, 0, 0, 0], 0).into())).await?)
            }
        },
    }
}

/// Refuses rates the limiters cannot honour, naming every bad flag at once.
fn check_rates(rates: &[(&str, ByteSize)]) -> Result<()> {
    let max = ByteSize(crate::config::MAX_RATE);
    let bad: Vec<String> = rates
        .iter()
        .filter(|(_, r)| *r > max)
        .map(|(flag, r)| format!("{flag} {r} is above the largest rate, {max} per second"))
        .collect();
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

pub(super) async fn seed(a: SeedArgs) -> Result<()> {
    check_rates(&[("--upload-limit", a.upload_limit)])?;
    let shutdown = crate::shutdown::on_signal();
    let http = reqwest::Client::new();
    let (_, meta) = crate::source::load_torrent(&http, &a.torrent).await?;
    let root = meta.root_path(&a.dir);
    if !root.exists() {
        bail!("{} does not exist: nothing to seed", root.display());
    }
    let peers = resolve_peers(&a.peers).await?;
    let engine = start_engine(a.listen, a.upload_limit.0, 0, &a.limits, &a.tls).await?;
    let meta = Arc::new(meta);
    let opts = SessionOptions {
        peers,
        max_peers: a.limits.max_peers,
        max_peers_per_ip: a.limits.max_peers_per_ip,
        require_complete: true,
        mode: Mode::ReadOnly,
        ..SessionOptions::default()
    };
    let session = engine.add(meta.clone(), a.dir.clone(), opts)?;
    tracing::info!("checking {} against {}", root.display(), meta.info_hash);
    tokio::select! {
        r = session.wait_checked() => if let Err(e) = r {
            engine.shutdown().await;
            bail!("refusing to seed {}: {e}", root.display());
        },
        _ = shutdown.cancelled() => { engine.shutdown().await; return Ok(()); }
    }
    tracing::info!(
        port = engine.local_addr().port(),
        "seeding {} ({})",
        meta.name,
        meta.info_hash
    );
    println!("{}", meta.info_hash);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                let p = session.progress().borrow().clone();
                tracing::info!(peers = p.peers, uploaded = p.uploaded, rate = p.upload_rate, "seeding");
            }
        }
    }
    engine.shutdown().await;
    Ok(())
}

pub(super) async fn fetch(a: FetchArgs) -> Result<()> {
    check_rates(&[
        ("--download-limit", a.download_limit),
        ("--upload-limit", a.upload_limit),
    ])?;
    let shutdown = crate::shutdown::on_signal();
    let http = reqwest::Client::new();
    let (_, meta) = crate::source::load_torrent(&http, &a.torrent).await?;
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let peers = resolve_peers(&a.peers).await?;
    if peers.is_empty() && !meta.announce.iter().any(|u| u.starts_with("http")) {
        bail!("the torrent names no HTTP tracker; give peers with --peer HOST:PORT");
    }
    let engine = start_engine(
        a.listen,
        a.upload_limit.0,
        a.download_limit.0,
        &a.limits,
        &a.tls,
    )
    .await?;
    let meta = Arc::new(meta);
    let opts = SessionOptions {
        peers,
        max_peers: a.limits.max_peers,
        max_peers_per_ip: a.limits.max_peers_per_ip,
        stall_after: (a.stall_secs > 0).then(|| Duration::from_secs(a.stall_secs)),
        ..SessionOptions::default()
    };
    let session = engine.add(meta.clone(), a.dir.clone(), opts)?;
    let started = std::time::Instant::now();
    let display = FetchDisplay::start(session.progress());
    let outcome = tokio::select! {
        r = session.wait_complete() => r.map_err(anyhow::Error::from),
        _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    display.finish().await;
    let p = session.progress().borrow().clone();
    match outcome {
        Ok(()) => {
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                "complete: {} in {:.1}s ({:.1} MB/s), {} received over the network, {} hash failures",
                meta.root_path(&a.dir).display(),
                secs,
                p.downloaded as f64 / secs.max(1e-9) / 1e6,
                crate::units::human_bytes(p.downloaded),
                p.hash_failures
            );
            println!(
                "{}",
                serde_json::json!({
                    "info_hash": meta.info_hash,
                    "path": meta.root_path(&a.dir),
                    "bytes_total": p.bytes_total,
                    "bytes_resumed": p.bytes_resumed,
                    "downloaded": p.downloaded,
                    "seconds": secs,
                    "hash_failures": p.hash_failures,
                })
            );
            if a.seed {
                tracing::info!("seeding until interrupted");
                shutdown.cancelled().await;
            }
            engine.shutdown().await;
            Ok(())
        }
        Err(e) => {
            engine.shutdown().await;
            Err(e.context(format!(
                "download incomplete ({} of {} pieces verified; run again to resume)",
                p.pieces_have, p.pieces_total
            )))
        }
    }
}

/// Progress of a download: a bar on a terminal, a log line every 5 s otherwise.
struct FetchDisplay {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl FetchDisplay {
    fn start(mut rx: tokio::sync::watch::Receiver<crate::swarm::Progress>) -> FetchDisplay {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let total = rx.borrow().bytes_total;
            let bar = tty.then(|| {
                let b = indicatif::ProgressBar::new(total);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b
            });
            let mut last_log = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    r = rx.changed() => if r.is_err() { break },
                }
                let p = rx.borrow_and_update().clone();
                if let Some(b) = &bar {
                    b.set_position(p.bytes_have);
                    b.set_message(match &p.stalled {
                        Some(why) => format!("stalled: {why}"),
                        None => format!("{} peers", p.peers),
                    });
                } else if last_log.elapsed() >= Duration::from_secs(5) {
                    last_log = std::time::Instant::now();
                    tracing::info!(
                        "{:?}: {} of {} ({:.0}%), {}/s, {} peers",
                        p.state,
                        crate::units::human_bytes(p.bytes_have),
                        crate::units::human_bytes(p.bytes_total),
                        p.bytes_have as f64 * 100.0 / p.bytes_total.max(1) as f64,
                        crate::units::human_bytes(p.download_rate),
                        p.peers
                    );
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        FetchDisplay { stop, task }
    }

    async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A progress bar on a terminal, periodic log lines otherwise. Stops when
/// the returned guard is dropped.
pub(crate) struct Progress {
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn bytes(total: u64, label: &'static str, counter: Arc<AtomicU64>) -> Progress {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            if std::io::stderr().is_terminal() {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(label);
                while !s.is_cancelled() {
                    bar.set_position(counter.load(Ordering::Relaxed));
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                bar.finish_and_clear();
            } else {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = s.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let v = counter.load(Ordering::Relaxed);
                    tracing::info!(
                        "{label}: {} of {} ({:.0}%)",
                        crate::units::human_bytes(v),
                        crate::units::human_bytes(total),
                        v as f64 * 100.0 / total.max(1) as f64
                    );
                }
            }
        });
        Progress {
            stop,
            task: Some(task),
        }
    }

    /// Stops and clears the display.
    pub(crate) async fn finish(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(super) async fn create(a: CreateArgs) -> Result<()> {
    let opts = BuildOptions {
        announce: a.announce.clone(),
        piece_length: a.piece_length.map(|s| s.0),
        name: a.name.clone(),
        align_files: a.align_files,
        threads: a.threads,
        comment: None,
        known: None,
        ssl_cert: match &a.ssl_cert {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            ),
            None => None,
        },
    };
    let path = a.path.clone();
    // Size the progress bar from a quick scan (metadata only).
    let total: u64 = if path.is_dir() {
        metainfo::scan(&path)
            .map(|v| v.iter().map(|f| f.length).sum())
            .unwrap_or(0)
    } else {
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
    };
    let progress = Arc::new(AtomicU64::new(0));
    let bar = Progress::bytes(total, "hashing", progress.clone());
    let started = std::time::Instant::now();
    let p2 = progress.clone();
    let built = tokio::task::spawn_blocking(move || metainfo::build(&path, &opts, &p2))
        .await
        .context("hashing task failed")?
        .with_context(|| format!("cannot create a torrent of {}", a.path.display()))?;
    bar.finish().await;
    let out = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.torrent", built.meta.name)));
    crate::util::write_atomic(&out, &built.bytes)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "wrote {}: {} files, {}, {} pieces of {}, hashed in {:.2}s ({:.0} MB/s)",
        out.display(),
        built.meta.data_files(),
        crate::units::human_bytes(built.meta.data_length()),
        built.meta.num_pieces(),
        crate::units::human_bytes(built.meta.piece_length),
        secs,
        built.meta.data_length() as f64 / secs.max(1e-9) / 1e6
    );
    println!("{}", built.meta.info_hash);
    Ok(())
}

#[derive(serde::Serialize)]
struct InspectFile {
    path: Vec<String>,
    length: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pad: bool,
}

#[derive(serde::Serialize)]
struct InspectOut {
    name: String,
    info_hash: InfoHash,
    piece_length: u64,
    pieces: u32,
    total_length: u64,
    files: Vec<InspectFile>,
    announce: Vec<String>,
}

fn inspect_out(m: &Metainfo) -> InspectOut {
    InspectOut {
        name: m.name.clone(),
        info_hash: m.info_hash,
        piece_length: m.piece_length,
        pieces: m.num_pieces(),
        total_length: m.total_length,
        files: m
            .files
            .iter()
            .map(|f| InspectFile {
                path: f.path.clone(),
                length: f.length,
                pad: f.pad,
            })
            .collect(),
        announce: m.announce.clone(),
    }
}

pub(super) async fn inspect(a: InspectArgs) -> Result<()> {
    let http = reqwest::Client::new();
    let (_, meta) = crate::source::load_torrent(&http, &a.torrent).await?;
    println!("{}", serde_json::to_string_pretty(&inspect_out(&meta))?);
    Ok(())
}

fn read_whitelist(path: &std::path::Path) -> Result<Vec<InfoHash>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read whitelist {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, l)| {
            l.parse::<InfoHash>()
                .with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

pub(super) async fn tracker(a: TrackerArgs) -> Result<()> {
    let max = crate::config::MAX_SECS;
    if !(1..=max).contains(&a.interval) {
        bail!(
            "--interval {} must be from 1 to {max} seconds (one day)",
            a.interval
        );
    }
    let cfg = TrackerConfig {
        whitelist_only: a.whitelist.is_some(),
        interval: Duration::from_secs(a.interval),
        min_interval: Duration::from_secs(a.interval.min(10)),
        trust_ip_param: a.trust_ip_param,
        ..TrackerConfig::default()
    };
    let tracker = Tracker::new(cfg);
    if let Some(path) = &a.whitelist {
        for h in read_whitelist(path)? {
            tracker.register(h);
        }
    }
    let shutdown = crate::shutdown::on_signal();
    if let Some(path) = a.whitelist.clone() {
        let t = tracker.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = hup.recv() => match read_whitelist(&path) {
                        Ok(list) => {
                            for h in &list { t.register(*h); }
                            tracing::info!(entries = list.len(), "whitelist reloaded");
                        }
                        Err(e) => tracing::warn!("whitelist not reloaded: {e:#}"),
                    },
                }
            }
        });
    }
    tokio::spawn(tracker.clone().run_sweeper(shutdown.clone()));
    let routes =
        crate::tracker::routes(tracker).or(warp::any().map(crate::tracker::server::not_found));
    use warp::Filter;
    let (addr, server) = crate::http::serve(routes, a.listen, None, shutdown.clone())?;
    tracing::info!("tracker listening on http://{addr}/announce");
    server.await;
    Ok(())
}
