//! The master sidecar: watches the snapshots directory, publishes each
//! complete snapshot as a numbered version (torrent + tracker + seeding),
//! keeps the newest `keep_versions`, and serves the API (`http::master`).
//!
//! ```text
//! snapshots_dir ──watcher──▶ publisher ──▶ registry (versions.json)
//!                               │  ├──▶ tracker.register + static seed
//!                               │  └──▶ engine (seed, read-only)
//!                               ▼
//!                        /versions/latest  ◀── replicas poll
//! ```

mod publisher;
pub mod registry;
mod verifier;
pub mod watcher;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use publisher::PublishError;
use registry::{Registry, VersionRecord};
pub use verifier::VerifyStatus;
use watcher::{list_dirs, Observation, Settler};

use crate::config::MasterConfig;
use crate::swarm::{Engine, EngineConfig};
use crate::telemetry::Metrics;
use crate::tracker::{Tracker, TrackerConfig};

/// The API's view of a version (INTERFACE.md).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    pub name: String,
    pub info_hash: crate::metainfo::InfoHash,
    pub torrent_url: String,
    pub files: usize,
    pub bytes: u64,
    pub piece_length: u64,
    pub created_at: String,
    /// The random id of the master's state: version numbers are only
    /// comparable within one epoch.
    pub epoch: String,
}

pub struct MasterMetrics {
    pub published: prometheus::IntCounter,
    pub publish_seconds: prometheus::Histogram,
    pub verified_bytes: prometheus::IntCounter,
    pub verify_failures: prometheus::IntCounter,
    pub verify_passes: prometheus::IntCounter,
}

pub struct Master {
    pub cfg: MasterConfig,
    pub engine: Engine,
    pub tracker: Arc<Tracker>,
    registry: Mutex<Registry>,
    publish_lock: tokio::sync::Mutex<()>,
    settler: Mutex<Settler>,
    /// The address replicas should dial for the master's own seeding.
    peer_addr: SocketAddr,
    pub metrics: MasterMetrics,
    pub registry_metrics: Metrics,
    /// Last error of the watcher, publisher or verifier, for `/status`.
    last_error: Mutex<Option<String>>,
    started: std::time::Instant,
    /// Bumped whenever a version is published, retired or withdrawn (wakes the verifier).
    changes: tokio::sync::watch::Sender<u64>,
    verify: Mutex<VerifyStatus>,
    /// The state's epoch (fixed for the life of the process).
    epoch: String,
    /// Held for the life of the process: one master per state directory.
    _lock: crate::util::DirLock,
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("snapshots directory {0}: {1}")]
    SnapshotsDir(String, std::io::Error),
    #[error("state directory: {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("state directory {0}: {1}")]
    StateDir(String, std::io::Error),
    #[error(transparent)]
    Locked(#[from] crate::util::LockError),
    #[error("{0}")]
    Engine(#[from] crate::swarm::EngineError),
    #[error("cannot resolve the public host {0:?}: {1}")]
    Resolve(String, String),
}

/// The host part of a URL (`http://host:port/...`).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?.to_string()
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
            .to_string()
    };
    (!host.is_empty()).then_some(host)
}

/// A timer period from a setting, kept within 1 s – 1 day: `MasterConfig`
/// can be built without validation (the demo, tests), and tokio's interval
/// panics on a period that overflows the clock.
fn timer_period(d: Duration) -> Duration {
    d.clamp(
        Duration::from_secs(1),
        Duration::from_secs(crate::config::MAX_SECS),
    )
}

impl Master {
    /// Opens the state, binds the peer port and restores published versions.
    pub async fn start(cfg: MasterConfig) -> Result<Arc<Master>, MasterError> {
        std::fs::create_dir_all(&cfg.snapshots_dir)
            .map_err(|e| MasterError::SnapshotsDir(cfg.snapshots_dir.display().to_string(), e))?;
        // First of all: no second master on the same state.
        let state_err = |e| MasterError::StateDir(cfg.state_dir.display().to_string(), e);
        std::fs::create_dir_all(&cfg.state_dir).map_err(state_err)?;
        let state_dir = cfg.state_dir.canonicalize().map_err(state_err)?;
        let lock = crate::util::DirLock::acquire(&state_dir, "state directory")?;
        let registry = Registry::open(&cfg.state_dir)?;
        let epoch = registry.epoch().to_string();
        let engine = Engine::start(EngineConfig {
            listen: cfg.peer_listen,
            upload_limit: cfg.upload_limit,
            download_limit: 0,
            max_connections: cfg.limits.max_connections,
        })
        .await?;
        let port = engine.local_addr().port();
        let peer_ip = if !cfg.peer_listen.ip().is_unspecified() {
            cfg.peer_listen.ip()
        } else {
            let host = url_host(&cfg.public_url).unwrap_or_else(|| "127.0.0.1".into());
            let looked_up = tokio::net::lookup_host(format!("{host}:{port}")).await;
            match looked_up {
                Ok(mut addrs) => match addrs.find(|a| a.is_ipv4()) {
                    Some(a) => a.ip(),
                    None => return Err(MasterError::Resolve(host, "no IPv4 address".into())),
                },
                Err(e) => return Err(MasterError::Resolve(host, e.to_string())),
            }
        };
        let tracker = Tracker::new(TrackerConfig {
            interval: cfg.announce_interval,
            min_interval: Duration::from_secs(1),
            whitelist_only: true,
            ..TrackerConfig::default()
        });
        let registry_metrics = Metrics::new();
        let metrics = MasterMetrics {
            published: registry_metrics.counter(
                "indexswarm_versions_published_total",
                "Versions published since start",
            ),
            publish_seconds: registry_metrics.histogram(
                "indexswarm_publish_duration_seconds",
                "Time from a settled snapshot to its version being visible",
            ),
            verified_bytes: registry_metrics.counter(
                "indexswarm_verified_bytes_total",
                "Published bytes re-read and found to match their torrent",
            ),
            verify_failures: registry_metrics.counter(
                "indexswarm_verify_failures_total",
                "Versions withdrawn because re-verification found changed data",
            ),
            verify_passes: registry_metrics.counter(
                "indexswarm_verify_passes_total",
                "Completed re-verification passes over every published version",
            ),
        };
        let master = Arc::new(Master {
            settler: Mutex::new(Settler::new(cfg.settle, cfg.marker_file.is_some())),
            cfg,
            engine,
            tracker,
            registry: Mutex::new(registry),
            publish_lock: tokio::sync::Mutex::new(()),
            peer_addr: SocketAddr::new(peer_ip, port),
            metrics,
            registry_metrics,
            last_error: Mutex::new(None),
            started: std::time::Instant::now(),
            changes: tokio::sync::watch::channel(0).0,
            verify: Mutex::new(VerifyStatus::default()),
            epoch,
            _lock: lock,
        });
        master.restore().await;
        info!(
            snapshots = %master.cfg.snapshots_dir.display(),
            public_url = %master.cfg.public_url,
            peer = %master.peer_addr,
            versions = master.registry.lock().published().len(),
            "master ready"
        );
        Ok(master)
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn version_info(&self, r: &VersionRecord) -> VersionInfo {
        VersionInfo {
            version: r.version,
            name: r.name.clone(),
            info_hash: r.info_hash,
            torrent_url: format!("{}/versions/{}/torrent", self.cfg.public_url, r.version),
            files: r.files,
            bytes: r.bytes,
            piece_length: r.piece_length,
            created_at: r.created_at.clone(),
            epoch: self.epoch.clone(),
        }
    }

    /// The random id of this master's state.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Published versions, newest first.
    pub fn versions(&self) -> Vec<VersionInfo> {
        self.registry
            .lock()
            .published()
            .iter()
            .map(|r| self.version_info(r))
            .collect()
    }

    /// The `.torrent` of a published version.
    pub fn torrent(&self, version: u64) -> Option<Vec<u8>> {
        let reg = self.registry.lock();
        let rec = reg.get(version)?;
        if rec.state != registry::VersionState::Published {
            return None;
        }
        std::fs::read(reg.torrent_path(version)).ok()
    }

    /// The newest complete subdirectory, for `POST /snapshot` without a body:
    /// one with the marker file, or (without a marker) one in which nothing
    /// changed for the settle interval. A directory still being written is
    /// never picked.
    pub fn newest_dir(&self) -> Option<String> {
        let dirs = list_dirs(&self.cfg.snapshots_dir);
        dirs.into_iter()
            .filter(|n| self.cfg.snapshots_dir.join(n) != self.cfg.state_dir)
            .filter(|n| {
                let dir = self.cfg.snapshots_dir.join(n);
                match &self.cfg.marker_file {
                    Some(m) => dir.join(m).exists(),
                    None => watcher::fingerprint(&dir).is_some_and(|fp| {
                        !fp.is_empty() && watcher::quiet_for(&fp) >= self.cfg.settle
                    }),
                }
            })
            .max_by_key(|n| {
                let mtime = std::fs::metadata(self.cfg.snapshots_dir.join(n))
                    .and_then(|m| m.modified())
                    .ok();
                (watcher::solr_timestamp(n), mtime, n.clone())
            })
    }

    /// One scan: observe candidates, publish the ready ones in order.
    async fn scan(self: &Arc<Self>) {
        let known: std::collections::HashSet<String> = self
            .registry
            .lock()
            .all()
            .iter()
            .map(|v| v.name.clone())
            .collect();
        let root = self.cfg.snapshots_dir.clone();
        let state_dir = self.cfg.state_dir.clone();
        let marker = self.cfg.marker_file.clone();
        let observations = tokio::task::spawn_blocking(move || {
            list_dirs(&root)
                .into_iter()
                .filter(|n| !known.contains(n) && root.join(n) != state_dir)
                .map(|n| {
                    let dir = root.join(&n);
                    Observation {
                        fingerprint: watcher::fingerprint(&dir),
                        has_marker: marker.as_ref().is_some_and(|m| dir.join(m).is_file()),
                        name: n,
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let ready = self
            .settler
            .lock()
            .observe(tokio::time::Instant::now(), observations);
        for name in ready {
            match self.publish(&name).await {
                Ok(_) => {}
                Err(e) => {
                    warn!(%name, "not published: {e}");
                    *self.last_error.lock() = Some(format!("{name}: {e}"));
                    self.settler.lock().reset(&name);
                }
            }
        }
    }

    /// Watches and publishes until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.try_send(());
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => match w.watch(&self.cfg.snapshots_dir, notify::RecursiveMode::Recursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    warn!("inotify unavailable ({e}); relying on the periodic rescan");
                    None
                }
            },
            Err(e) => {
                warn!("inotify unavailable ({e}); relying on the periodic rescan");
                None
            }
        };
        tokio::spawn(self.tracker.clone().run_sweeper(shutdown.clone()));
        let verifier = tokio::spawn(self.clone().run_verifier(shutdown.clone()));
        let mut rescan = tokio::time::interval(timer_period(self.cfg.rescan.min(self.cfg.settle)));
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut integrity = tokio::time::interval(Duration::from_secs(10));
        integrity.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = rescan.tick() => self.scan().await,
                Some(()) = rx.recv() => {
                    debug!("filesystem event");
                    // Let a burst of events pass before looking.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while rx.try_recv().is_ok() {}
                    self.scan().await;
                }
                _ = integrity.tick() => self.check_published().await,
            }
        }
        let _ = verifier.await;
        self.engine.shutdown().await;
    }

    /// `/status`.
    pub fn status(&self) -> serde_json::Value {
        let reg = self.registry.lock();
        let mut versions = Vec::new();
        let mut uploaded_total = 0u64;
        let mut upload_rate = 0u64;
        let mut hash_to_version = HashMap::new();
        for r in reg.published() {
            hash_to_version.insert(r.info_hash, r.version);
            let p = self.engine.get(&r.info_hash).map(|s| s.snapshot());
            let peers = self.tracker.peers(&r.info_hash);
            uploaded_total += p.as_ref().map(|p| p.uploaded).unwrap_or(0);
            upload_rate += p.as_ref().map(|p| p.upload_rate).unwrap_or(0);
            versions.push(serde_json::json!({
                "version": r.version,
                "name": r.name,
                "info_hash": r.info_hash,
                "seeding": p.as_ref().is_some_and(|p| p.complete),
                "connected_peers": p.as_ref().map(|p| p.peers).unwrap_or(0),
                "tracked_peers": peers.len(),
                "uploaded": p.as_ref().map(|p| p.uploaded).unwrap_or(0),
                "upload_rate": p.as_ref().map(|p| p.upload_rate).unwrap_or(0),
            }));
        }
        let withdrawn: Vec<serde_json::Value> = reg
            .all()
            .iter()
            .filter(|r| r.state == registry::VersionState::Modified)
            .map(|r| serde_json::json!({"version": r.version, "name": r.name, "reason": r.note}))
            .collect();
        // Replicas heard from through announces: the newest version each holds.
        let mut replicas: HashMap<[u8; 20], serde_json::Map<String, serde_json::Value>> =
            HashMap::new();
        for (hash, version) in &hash_to_version {
            for p in self.tracker.peers(hash) {
                let e = replicas.entry(p.peer_id).or_default();
                e.insert(
                    "peer_id".into(),
                    String::from_utf8_lossy(&p.peer_id[..8]).into_owned().into(),
                );
                e.insert("addr".into(), p.addr.to_string().into());
                let key = if p.left == 0 {
                    "current_version"
                } else {
                    "downloading_version"
                };
                let newer = e
                    .get(key)
                    .and_then(|v| v.as_u64())
                    .is_none_or(|v| v < *version);
                if newer {
                    e.insert(key.into(), (*version).into());
                }
                e.insert(
                    "last_seen_secs".into(),
                    p.last_seen.elapsed().as_secs().into(),
                );
            }
        }
        let pending: Vec<serde_json::Value> = self
            .settler
            .lock()
            .pending(tokio::time::Instant::now())
            .into_iter()
            .map(|(n, d)| serde_json::json!({"name": n, "settles_in_secs": d.as_secs_f64()}))
            .collect();
        serde_json::json!({
            "versions": versions,
            "latest_version": reg.published().first().map(|r| r.version),
            "epoch": self.epoch,
            "withdrawn": withdrawn,
            "pending_snapshots": pending,
            "uploaded": uploaded_total,
            "upload_rate": upload_rate,
            "replicas": replicas.into_values().collect::<Vec<_>>(),
            "peer_addr": self.peer_addr,
            "last_error": *self.last_error.lock(),
            "verify": *self.verify.lock(),
            "uptime_secs": self.started.elapsed().as_secs(),
        })
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics_text(&self) -> String {
        let m = &self.registry_metrics;
        let published = self.registry.lock().published();
        let mut uploaded = 0;
        let mut peers = 0;
        for r in &published {
            if let Some(s) = self.engine.get(&r.info_hash) {
                let p = s.snapshot();
                uploaded += p.uploaded;
                peers += p.peers;
            }
        }
        m.set_counter(
            "indexswarm_uploaded_bytes_total",
            "Payload bytes uploaded to peers",
            uploaded,
        );
        m.set_gauge(
            "indexswarm_peers",
            "Connected peers across seeded versions",
            peers as i64,
        );
        m.set_gauge(
            "indexswarm_versions",
            "Published versions",
            published.len() as i64,
        );
        m.set_gauge(
            "indexswarm_latest_version",
            "Newest published version number",
            published.first().map(|r| r.version as i64).unwrap_or(0),
        );
        let s = &self.tracker.stats;
        use std::sync::atomic::Ordering::Relaxed;
        m.set_counter(
            "indexswarm_tracker_announces_total",
            "Announces received",
            s.announces.load(Relaxed),
        );
        m.set_counter(
            "indexswarm_tracker_scrapes_total",
            "Scrapes received",
            s.scrapes.load(Relaxed),
        );
        m.set_counter(
            "indexswarm_tracker_failures_total",
            "Announces refused",
            s.failures.load(Relaxed),
        );
        m.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> MasterConfig {
        crate::config::RawMaster {
            snapshots_dir: Some(dir.join("snaps")),
            http_listen: Some("127.0.0.1:0".into()),
            peer_listen: Some("127.0.0.1:0".into()),
            public_url: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    #[tokio::test]
    async fn a_second_master_on_the_same_state_is_refused_with_the_holders_pid() {
        let d = tempfile::tempdir().unwrap();
        let first = Master::start(config(d.path())).await.unwrap();
        assert_eq!(first.epoch().len(), 32);
        match Master::start(config(d.path())).await {
            Err(MasterError::Locked(crate::util::LockError::Busy { pid, what, .. })) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(what, "state directory");
            }
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a second master started on the same state directory"),
        }
        // The version objects carry the epoch.
        assert!(first.versions().iter().all(|v| v.epoch == first.epoch()));
    }
}
