//! The replica sidecar: poll the master, fetch each newer version from the
//! whole swarm (reusing unchanged files), verify, swap atomically, keep
//! seeding, and keep a few old versions for rollback.
//!
//! ```text
//! DATA/
//!   current -> versions/7          the live version (symlink mode)
//!   versions/6/ 6.torrent          kept for rollback (keep_versions)
//!   versions/7/ 7.torrent          live, seeded to other replicas
//!   versions/8.partial/            being downloaded (resumed after a crash)
//! ```
//!
//! One cycle: poll → torrent → stage with reuse → download + verify → fsync →
//! rename `.partial` → swap → `on_swap` → seed → retention. `current` only
//! ever moves to a directory that was complete, verified and fsynced before
//! the rename that created it, so no kill -9 can leave it pointing at
//! anything partial.
//!
//! When a newer version appears mid-download, the download in progress is
//! finished and swapped first, then the replica moves straight to the newest
//! (versions in between are skipped). The exception: a version the master no
//! longer lists (retired) is abandoned at once, since its seeders are going.

pub mod fetcher;
pub mod status;
pub mod swapper;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ReplicaConfig, SwapMode};
use crate::master::VersionInfo;
use crate::metainfo::Metainfo;
use crate::swarm::{Check, Engine, EngineConfig, Session, SessionOptions, SessionState};
use crate::util::{now_rfc3339, rfc3339_in, write_atomic};
pub use status::{State, Status};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("{0}")]
    Engine(#[from] crate::swarm::EngineError),
}

/// The live version.
#[derive(Clone)]
struct Live {
    version: u64,
    meta: Arc<Metainfo>,
    dir: PathBuf,
    /// What the search server reads (the version dir, or the Solr index dir).
    path: PathBuf,
}

struct Seeding {
    version: u64,
    session: Arc<Session>,
    /// Stop seeding after this instant (old versions); `None` for the live one.
    until: Option<Instant>,
}

pub struct Replica {
    pub cfg: ReplicaConfig,
    pub engine: Engine,
    http: reqwest::Client,
    status: Mutex<Status>,
    live: Mutex<Option<Live>>,
    seeding: Mutex<Vec<Seeding>>,
    /// What went wrong after the last swap (core RELOAD, on_swap hook): kept
    /// in `/status` `last_error` until the next swap, not wiped by the next
    /// successful poll.
    swap_warning: Mutex<Option<String>>,
    poll_now: Notify,
    metrics: crate::telemetry::Metrics,
}

enum Outcome {
    UpToDate,
    Replicated,
}

fn versions_dir(data: &Path) -> PathBuf {
    data.join("versions")
}

impl Replica {
    /// Recovers the data directory (crash leftovers), binds the peer port and
    /// seeds the live version again.
    pub async fn start(mut cfg: ReplicaConfig) -> Result<Arc<Replica>, ReplicaError> {
        let vdir = versions_dir(&cfg.data_dir);
        std::fs::create_dir_all(&vdir)
            .map_err(|e| ReplicaError::DataDir(vdir.display().to_string(), e))?;
        // Absolute paths for /status and the on_swap hook.
        cfg.data_dir = cfg
            .data_dir
            .canonicalize()
            .map_err(|e| ReplicaError::DataDir(cfg.data_dir.display().to_string(), e))?;
        let engine = Engine::start(EngineConfig {
            listen: cfg.peer_listen,
            upload_limit: cfg.upload_limit,
            download_limit: cfg.download_limit,
        })
        .await?;
        let http = engine.http().clone();
        let replica = Arc::new(Replica {
            status: Mutex::new(Status::new(cfg.master_url.clone())),
            cfg,
            engine,
            http,
            live: Mutex::new(None),
            seeding: Mutex::new(Vec::new()),
            swap_warning: Mutex::new(None),
            poll_now: Notify::new(),
            metrics: crate::telemetry::Metrics::new(),
        });
        replica.recover().await;
        Ok(replica)
    }

    /// Startup: drop temp files, find the live version, discard stale
    /// partials, and resume seeding what we have.
    async fn recover(self: &Arc<Self>) {
        let data = &self.cfg.data_dir;
        let _ = std::fs::remove_file(data.join("current.tmp"));
        let current = match &self.cfg.mode {
            SwapMode::Symlink => swapper::read_current(data),
            SwapMode::Solr(_) => std::fs::read_to_string(data.join("live-version"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        };
        if let Some(v) = current {
            let dir = versions_dir(data).join(v.to_string());
            match load_torrent(&versions_dir(data).join(format!("{v}.torrent"))) {
                Some(meta) if dir.is_dir() => {
                    let path = match &self.cfg.mode {
                        SwapMode::Symlink => dir.clone(),
                        SwapMode::Solr(s) => swapper::solr_current_index(&s.core_data_dir)
                            .map(|n| s.core_data_dir.join(n))
                            .unwrap_or_else(|| dir.clone()),
                    };
                    info!(version = v, "live version found");
                    *self.live.lock() = Some(Live {
                        version: v,
                        meta: Arc::new(meta),
                        dir,
                        path,
                    });
                }
                _ => warn!(
                    version = v,
                    "live version is incomplete on disk; it will be fetched again"
                ),
            }
        }
        let live = self.live.lock().as_ref().map(|l| l.version).unwrap_or(0);
        // Stray copies and partials of versions we already passed.
        if let Ok(rd) = std::fs::read_dir(versions_dir(data)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(v) = name
                    .strip_suffix(".partial")
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    if v <= live {
                        info!(version = v, "removing a stale partial download");
                        let _ = std::fs::remove_dir_all(e.path());
                    } else {
                        info!(
                            version = v,
                            "found a partial download; it resumes when the master still offers it"
                        );
                    }
                } else if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if let Some(l) = self.live.lock().clone() {
            self.start_seeding(&l, None);
        }
        self.refresh_disk_status();
    }

    fn start_seeding(&self, l: &Live, until: Option<Instant>) {
        if self.engine.get(&l.meta.info_hash).is_some() {
            return;
        }
        let opts = SessionOptions {
            check: Check::AssumeComplete,
            content_dir: Some(l.dir.clone()),
            mode: crate::storage::Mode::ReadOnly,
            ..SessionOptions::default()
        };
        match self.engine.add(l.meta.clone(), l.dir.clone(), opts) {
            Ok(session) => self.seeding.lock().push(Seeding {
                version: l.version,
                session,
                until,
            }),
            Err(e) => warn!(version = l.version, "cannot seed: {e}"),
        }
    }

    /// Asks the loop to poll the master now.
    pub fn poll_now(&self) {
        self.poll_now.notify_one();
    }

    pub fn live_version(&self) -> Option<u64> {
        self.live.lock().as_ref().map(|l| l.version)
    }

    /// Polls and replicates until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut immediate = true;
        loop {
            let wait = if immediate {
                Duration::ZERO
            } else {
                let base = self.cfg.poll_interval.as_secs_f64();
                let backoff = base * 2f64.powi(failures.min(5) as i32);
                let secs = backoff.min(base.max(60.0)) * rand::thread_rng().gen_range(0.8..1.2);
                Duration::from_secs_f64(secs)
            };
            self.status.lock().next_poll_at = Some(rfc3339_in(wait));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.poll_now.notified() => {}
            }
            self.retire_old_seeds().await;
            let started = Instant::now();
            let r = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.cycle() => r,
            };
            match r {
                Ok(Outcome::UpToDate) => {
                    failures = 0;
                    immediate = false;
                    let mut st = self.status.lock();
                    if st.state != State::Error {
                        st.state = State::Idle;
                    }
                }
                Ok(Outcome::Replicated) => {
                    failures = 0;
                    // Something newer may already be waiting.
                    immediate = true;
                    let warning = self.swap_warning.lock().clone();
                    let mut st = self.status.lock();
                    st.state = State::Idle;
                    st.last_error = warning;
                    st.last_cycle_seconds = Some(started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    failures += 1;
                    immediate = false;
                    warn!("replication cycle failed: {e}");
                    let mut st = self.status.lock();
                    st.state = State::Error;
                    st.last_error = Some(e);
                    st.times_failed += 1;
                    st.last_cycle_seconds = Some(started.elapsed().as_secs_f64());
                }
            }
        }
        self.engine.shutdown().await;
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<Option<T>, String> {
        let r = self
            .http
            .get(url)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .map_err(|e| format!("master unreachable: {e}"))?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status().as_u16()));
        }
        let bytes = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{url}: malformed reply: {e}"))
    }

    /// One poll, and a replication if the master has something newer.
    async fn cycle(self: &Arc<Self>) -> Result<Outcome, String> {
        let latest: Option<VersionInfo> = self
            .get_json(&format!("{}/versions/latest", self.cfg.master_url))
            .await?;
        {
            let warning = self.swap_warning.lock().clone();
            let mut st = self.status.lock();
            if st.state == State::Error {
                st.state = State::Idle;
            }
            st.last_error = warning;
        }
        let Some(latest) = latest else {
            return Ok(Outcome::UpToDate);
        };
        if self.live_version().is_some_and(|v| v >= latest.version) {
            return Ok(Outcome::UpToDate);
        }
        let bytes = crate::source::fetch_bytes(&self.http, &latest.torrent_url)
            .await
            .map_err(|e| e.to_string())?;
        let meta = Metainfo::from_bytes(&bytes)
            .map_err(|e| format!("torrent of version {}: {e}", latest.version))?;
        if meta.info_hash != latest.info_hash {
            return Err(format!(
                "torrent of version {} does not match its info-hash",
                latest.version
            ));
        }
        self.replicate(latest.version, Arc::new(meta), bytes)
            .await?;
        Ok(Outcome::Replicated)
    }

    /// Is `version` still offered by the master? (`None` if we cannot tell.)
    async fn still_listed(&self, version: u64) -> Option<bool> {
        let list: Vec<VersionInfo> = self
            .get_json(&format!("{}/versions", self.cfg.master_url))
            .await
            .ok()
            .flatten()?;
        Some(list.iter().any(|v| v.version == version))
    }

    async fn replicate(
        self: &Arc<Self>,
        version: u64,
        meta: Arc<Metainfo>,
        torrent: Vec<u8>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let vdir = versions_dir(&self.cfg.data_dir);
        let staging = vdir.join(format!("{version}.partial"));
        let final_dir = vdir.join(version.to_string());
        {
            let mut st = self.status.lock();
            st.state = State::Verifying;
            st.target_version = Some(version);
            st.bytes_total = meta.data_length();
            st.bytes_downloaded = 0;
            st.bytes_reused = 0;
            st.bytes_wasted = 0;
            st.progress = 0.0;
        }
        info!(version, info_hash = %meta.info_hash, bytes = meta.data_length(), "replicating");
        // A finished copy from an earlier run that crashed before the swap.
        if !final_dir.is_dir() {
            std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
            let tpath = vdir.join(format!("{version}.torrent"));
            write_atomic(&tpath, &torrent).map_err(|e| format!("{}: {e}", tpath.display()))?;
            let live = self.live.lock().clone();
            if let Some(l) = live {
                let (m, s) = (meta.clone(), staging.clone());
                let reused = tokio::task::spawn_blocking(move || {
                    fetcher::reuse_files(&l.meta, &l.dir, &m, &s)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reusing files: {e}"))?;
                let bytes: u64 = reused.iter().map(|r| r.bytes).sum();
                info!(
                    version,
                    files = reused.len(),
                    bytes,
                    "reused unchanged files from the live version"
                );
                self.status.lock().bytes_reused = bytes;
            }
            self.download(version, meta.clone(), &staging).await?;
            std::fs::rename(&staging, &final_dir)
                .map_err(|e| format!("{}: {e}", final_dir.display()))?;
            crate::util::sync_dir(&vdir).map_err(|e| e.to_string())?;
        } else {
            let tpath = vdir.join(format!("{version}.torrent"));
            if !tpath.exists() {
                write_atomic(&tpath, &torrent).map_err(|e| format!("{}: {e}", tpath.display()))?;
            }
        }

        // Swap.
        self.status.lock().state = State::Swapping;
        let mut reload_error = None;
        let live_path = match &self.cfg.mode {
            SwapMode::Symlink => {
                swapper::swap_symlink(&self.cfg.data_dir, version).map_err(|e| e.to_string())?
            }
            SwapMode::Solr(s) => {
                let r = swapper::swap_solr(s, &final_dir, &self.http)
                    .await
                    .map_err(|e| e.to_string())?;
                write_atomic(
                    &self.cfg.data_dir.join("live-version"),
                    version.to_string().as_bytes(),
                )
                .map_err(|e| e.to_string())?;
                reload_error = r.reload_error;
                r.index_dir
            }
        };
        let new_live = Live {
            version,
            meta: meta.clone(),
            dir: final_dir.clone(),
            path: live_path.clone(),
        };
        let old = self.live.lock().replace(new_live.clone());
        info!(version, path = %live_path.display(), secs = format!("{:.2}", started.elapsed().as_secs_f64()), "swapped");
        {
            let mut st = self.status.lock();
            st.times_replicated += 1;
            st.last_swap_at = Some(now_rfc3339());
            st.current_version = Some(version);
            st.current_info_hash = Some(meta.info_hash.hex());
            st.current_path = Some(live_path.display().to_string());
            st.target_version = None;
            st.progress = 1.0;
        }
        *self.swap_warning.lock() = None;
        if let Some(e) = &reload_error {
            warn!("{e}");
            *self.swap_warning.lock() = Some(e.clone());
            self.status.lock().last_error = Some(e.clone());
        }
        if let Some(hook) = &self.cfg.on_swap {
            if let Err(e) =
                swapper::run_hook(hook, &self.http, version, &live_path, &meta.info_hash.hex())
                    .await
            {
                warn!("{e}");
                let both = match self.swap_warning.lock().take() {
                    Some(r) => format!("{r}; {e}"),
                    None => e,
                };
                *self.swap_warning.lock() = Some(both.clone());
                self.status.lock().last_error = Some(both);
            }
        }
        // Keep serving: the new version for as long as it is live, the old
        // one for a while (replicas behind us may still need it).
        self.start_seeding(&new_live, None);
        if let Some(o) = old {
            let until = Instant::now() + self.cfg.seed_old;
            for s in self
                .seeding
                .lock()
                .iter_mut()
                .filter(|s| s.version == o.version)
            {
                s.until = Some(until);
            }
        }
        self.apply_retention().await;
        Ok(())
    }

    /// Downloads into `staging` with the swarm, updating `/status` as it goes.
    async fn download(
        self: &Arc<Self>,
        version: u64,
        meta: Arc<Metainfo>,
        staging: &Path,
    ) -> Result<(), String> {
        if let Some(old) = self.engine.get(&meta.info_hash) {
            old.stop().await;
        }
        let opts = SessionOptions {
            content_dir: Some(staging.to_path_buf()),
            ..SessionOptions::default()
        };
        let session = self
            .engine
            .add(meta.clone(), staging.to_path_buf(), opts)
            .map_err(|e| e.to_string())?;
        let mut progress = session.progress();
        let mut listed_check =
            tokio::time::interval(self.cfg.poll_interval.max(Duration::from_secs(1)));
        listed_check.tick().await;
        let result = loop {
            {
                let p = progress.borrow_and_update().clone();
                let mut st = self.status.lock();
                st.state = if p.state == SessionState::Checking {
                    State::Verifying
                } else {
                    State::Downloading
                };
                st.bytes_downloaded = p.downloaded;
                st.bytes_wasted = p.wasted;
                st.progress = if p.bytes_total > 0 {
                    p.bytes_have as f64 / p.bytes_total as f64
                } else {
                    1.0
                };
                st.download_rate = p.download_rate;
                st.peers = p.peers;
                if p.complete {
                    break Ok(());
                }
                if let SessionState::Failed(e) = &p.state {
                    break Err(format!("download of version {version} failed: {e}"));
                }
            }
            tokio::select! {
                r = progress.changed() => if r.is_err() { break Err("session ended".into()); },
                _ = listed_check.tick() => {
                    if self.still_listed(version).await == Some(false) {
                        break Err(format!("version {version} was retired by the master before it arrived; moving on"));
                    }
                }
            }
        };
        session.stop().await;
        if let Err(e) = &result {
            if e.contains("retired") {
                let _ = std::fs::remove_dir_all(staging);
            }
        }
        result
    }

    async fn retire_old_seeds(&self) {
        let now = Instant::now();
        let due: Vec<Arc<Session>> = {
            let mut s = self.seeding.lock();
            let (due, keep): (Vec<Seeding>, Vec<Seeding>) =
                s.drain(..).partition(|x| x.until.is_some_and(|u| u <= now));
            *s = keep;
            due.into_iter().map(|x| x.session).collect()
        };
        for s in due {
            s.stop().await;
        }
        self.seeding
            .lock()
            .retain(|s| !matches!(s.session.progress().borrow().state, SessionState::Stopped));
    }

    /// Keeps the live version and `keep_versions` older ones; deletes the rest.
    async fn apply_retention(&self) {
        let vdir = versions_dir(&self.cfg.data_dir);
        let live = self.live_version();
        let mut versions: Vec<u64> = std::fs::read_dir(&vdir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
                    .collect()
            })
            .unwrap_or_default();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        // Partial downloads of versions we have passed will never be needed.
        if let (Some(live), Ok(rd)) = (live, std::fs::read_dir(&vdir)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name
                    .strip_suffix(".partial")
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v <= live)
                {
                    info!(partial = %name, "removing a partial download of a version already passed");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let keep: Vec<u64> = versions
            .iter()
            .copied()
            .filter(|v| Some(*v) != live)
            .take(self.cfg.keep_versions)
            .collect();
        for v in versions {
            if Some(v) == live || keep.contains(&v) {
                continue;
            }
            let sessions: Vec<Arc<Session>> = {
                let mut s = self.seeding.lock();
                let (gone, stay): (Vec<Seeding>, Vec<Seeding>) =
                    s.drain(..).partition(|x| x.version == v);
                *s = stay;
                gone.into_iter().map(|x| x.session).collect()
            };
            for s in sessions {
                s.stop().await;
            }
            info!(
                version = v,
                "removing old version (keep_versions = {})", self.cfg.keep_versions
            );
            let _ = std::fs::remove_dir_all(vdir.join(v.to_string()));
            let _ = std::fs::remove_file(vdir.join(format!("{v}.torrent")));
            if let SwapMode::Solr(s) = &self.cfg.mode {
                self.remove_old_solr_indexes(&s.core_data_dir);
            }
        }
        self.refresh_disk_status();
    }

    /// Removes `index.*` directories we placed that nothing points at, keeping
    /// as many as `keep_versions` besides the live one.
    fn remove_old_solr_indexes(&self, core: &Path) {
        let live = swapper::solr_current_index(core);
        let mut ours: Vec<String> = std::fs::read_dir(core)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.starts_with("index.") && n != "index.properties")
                    .collect()
            })
            .unwrap_or_default();
        ours.sort_unstable_by(|a, b| b.cmp(a));
        for n in ours
            .into_iter()
            .filter(|n| Some(n) != live.as_ref())
            .skip(self.cfg.keep_versions)
        {
            let _ = std::fs::remove_dir_all(core.join(n));
        }
    }

    fn refresh_disk_status(&self) {
        let mut on_disk: Vec<u64> = std::fs::read_dir(versions_dir(&self.cfg.data_dir))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        on_disk.sort_unstable();
        let live = self.live.lock().clone();
        let mut st = self.status.lock();
        st.versions_on_disk = on_disk;
        if let Some(l) = live {
            st.current_version = Some(l.version);
            st.current_info_hash = Some(l.meta.info_hash.hex());
            st.current_path = Some(l.path.display().to_string());
        }
    }

    /// `/status`.
    pub fn status(&self) -> Status {
        let sessions = self.engine.sessions();
        let (mut up_rate, mut peers) = (0, 0);
        for s in &sessions {
            let p = s.snapshot();
            up_rate += p.upload_rate;
            peers += p.peers;
        }
        let (up, _) = self.engine.totals();
        let seeding: Vec<u64> = self.seeding.lock().iter().map(|s| s.version).collect();
        let mut st = self.status.lock().clone();
        st.bytes_uploaded = up;
        st.upload_rate = up_rate;
        if st.state == State::Idle || st.state == State::Error {
            st.peers = peers;
            st.download_rate = 0;
        }
        st.seeding = seeding;
        st
    }

    /// Per-peer totals of every session, for the demo's "who served what".
    pub fn peer_stats(&self) -> Vec<crate::swarm::PeerStat> {
        self.engine
            .sessions()
            .iter()
            .flat_map(|s| s.peer_stats())
            .collect()
    }

    pub fn metrics_text(&self) -> String {
        let s = self.status();
        let m = &self.metrics;
        m.set_gauge(
            "indexswarm_current_version",
            "Live version",
            s.current_version.unwrap_or(0) as i64,
        );
        m.set_counter(
            "indexswarm_replications_total",
            "Versions swapped in",
            s.times_replicated,
        );
        m.set_counter(
            "indexswarm_replication_failures_total",
            "Failed cycles",
            s.times_failed,
        );
        m.set_gauge(
            "indexswarm_bytes_downloaded",
            "Bytes downloaded this cycle",
            s.bytes_downloaded as i64,
        );
        m.set_gauge(
            "indexswarm_bytes_reused",
            "Bytes reused from disk this cycle",
            s.bytes_reused as i64,
        );
        m.set_counter(
            "indexswarm_uploaded_bytes_total",
            "Payload bytes uploaded to peers",
            s.bytes_uploaded,
        );
        m.set_gauge("indexswarm_peers", "Connected peers", s.peers as i64);
        m.render()
    }
}

fn load_torrent(p: &Path) -> Option<Metainfo> {
    Metainfo::from_bytes(&std::fs::read(p).ok()?).ok()
}
