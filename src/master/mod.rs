//! The master sidecar: publishes each complete snapshot of each index as
//! a numbered version (torrent + tracker + seeding), keeps the newest
//! `keep_versions` per index, and serves the API (`http::master`).
//!
//! ```text
//! index A: snapshots_dir ──watcher──▶ publisher ──▶ registry (versions.json)
//! index B: snapshots_dir ──watcher──▶ publisher ──▶ registry   │
//!                                        │  ├──▶ tracker.register + static seed
//!                                        │  └──▶ engine (seed, read-only)
//!                                        ▼
//!                          /indexes/{name}/versions/latest ◀── replicas poll
//! ```
//!
//! Each index (`index.rs`) owns its directories, versions, epoch, retention
//! and verifier; they share one engine (one peer port), one tracker and one
//! HTTP port ([`Shared`]). The unprefixed routes of the first release serve
//! the index named `default`, or the only index.

mod activation;
pub mod fleet;
mod gate;
mod index;
mod publisher;
pub mod registry;
pub mod rollout;
mod status;
mod verifier;
pub mod watcher;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use activation::{ActivateError, MAX_WAIT};
pub use index::Index;
pub use publisher::{PublishError, PublishStats, SeedError};
pub use verifier::VerifyStatus;

use crate::config::{MasterConfig, DEFAULT_INDEX};
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
    /// The random id of the index's state: version numbers are only
    /// comparable within one epoch.
    pub epoch: String,
    /// The index the version belongs to.
    #[serde(default)]
    pub index: String,
    /// `published`, `active` (what the fleet runs), `retired` or `withdrawn`.
    #[serde(default)]
    pub state: &'static str,
}

/// Counters and histograms the master updates as things happen, each with
/// an `index` label.
pub struct MasterMetrics {
    pub published: prometheus::IntCounterVec,
    pub publish_seconds: prometheus::HistogramVec,
    pub verified_bytes: prometheus::IntCounterVec,
    pub verify_failures: prometheus::IntCounterVec,
    pub verify_passes: prometheus::IntCounterVec,
    pub hashed_bytes: prometheus::IntCounterVec,
    pub reused_bytes: prometheus::IntCounterVec,
}

impl MasterMetrics {
    fn new(m: &Metrics) -> MasterMetrics {
        MasterMetrics {
            published: m.counter_vec(
                "indexswarm_versions_published_total",
                "Versions published since start",
            ),
            publish_seconds: m.histogram_vec(
                "indexswarm_publish_duration_seconds",
                "Time from a settled snapshot to its version being visible",
            ),
            verified_bytes: m.counter_vec(
                "indexswarm_verified_bytes_total",
                "Published bytes re-read and found to match their torrent",
            ),
            verify_failures: m.counter_vec(
                "indexswarm_verify_failures_total",
                "Versions withdrawn because re-verification found changed data",
            ),
            verify_passes: m.counter_vec(
                "indexswarm_verify_passes_total",
                "Completed re-verification passes over every published version",
            ),
            hashed_bytes: m.counter_vec(
                "indexswarm_publish_hashed_bytes_total",
                "Bytes read and hashed to publish versions",
            ),
            reused_bytes: m.counter_vec(
                "indexswarm_publish_reused_bytes_total",
                "Bytes published with piece hashes reused from an earlier version (hard links)",
            ),
        }
    }

    /// Creates every series of `index` at zero, so that a counter is on
    /// /metrics before its first event (Prometheus's advice: a missing
    /// series and a zero one alert differently).
    fn register_index(&self, index: &str) {
        for c in [
            &self.published,
            &self.verified_bytes,
            &self.verify_failures,
            &self.verify_passes,
            &self.hashed_bytes,
            &self.reused_bytes,
        ] {
            c.with_label_values(&[index]);
        }
        self.publish_seconds.with_label_values(&[index]);
    }
}

/// What every index of the master shares.
pub struct Shared {
    pub cfg: MasterConfig,
    pub engine: Engine,
    pub tracker: Arc<Tracker>,
    /// The address replicas should dial for the master's own seeding.
    pub peer_addr: SocketAddr,
    pub metrics: MasterMetrics,
    pub registry_metrics: Metrics,
    /// The replicas heard from, for every index.
    pub fleet: Mutex<fleet::Fleet>,
    /// The deployment CA (PEM) put in every published torrent as
    /// `ssl-cert` when the master has `tls_ca` and its own `tls_cert`:
    /// peers then speak TLS.
    pub ssl_cert: Option<String>,
    /// One budget for every index's verifier: `verify_rate` in total.
    pub(crate) throttle: Mutex<verifier::Throttle>,
    started: std::time::Instant,
}

pub struct Master {
    shared: Arc<Shared>,
    /// In name order.
    indexes: Vec<Arc<Index>>,
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
    #[error("tls_cert / tls_key: {0}")]
    Tls(#[from] crate::tls::TlsError),
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

/// The address replicas dial for the master's seeding: the peer listen
/// address, or the public URL's host when listening on 0.0.0.0.
async fn peer_addr(cfg: &MasterConfig, port: u16) -> Result<SocketAddr, MasterError> {
    if !cfg.peer_listen.ip().is_unspecified() {
        return Ok(SocketAddr::new(cfg.peer_listen.ip(), port));
    }
    let host = url_host(&cfg.public_url).unwrap_or_else(|| "127.0.0.1".into());
    let mut addrs = tokio::net::lookup_host(format!("{host}:{port}"))
        .await
        .map_err(|e| MasterError::Resolve(host.clone(), e.to_string()))?;
    addrs
        .find(|a| a.is_ipv4())
        .ok_or_else(|| MasterError::Resolve(host, "no IPv4 address".into()))
}

impl Master {
    /// Locks and opens every index's state, binds the peer port and restores
    /// published versions.
    pub async fn start(cfg: MasterConfig) -> Result<Arc<Master>, MasterError> {
        // First of all: no second master on the same state.
        let locked = cfg
            .indexes
            .iter()
            .map(|c| Index::lock(c.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let tracker = Tracker::new(TrackerConfig {
            interval: cfg.announce_interval,
            min_interval: Duration::from_secs(1),
            whitelist_only: true,
            token: cfg.security.swarm_token.clone(),
            ..TrackerConfig::default()
        });
        let gate = gate::TrackerGate {
            tracker: tracker.clone(),
            security: cfg.security.clone(),
        };
        let engine = Engine::start(EngineConfig {
            listen: cfg.peer_listen,
            upload_limit: cfg.upload_limit,
            download_limit: 0,
            max_connections: cfg.limits.max_connections,
            gate: Some(Arc::new(gate)),
            swarm_token: cfg.security.swarm_token.clone(),
            http_roots: Vec::new(),
            identity: cfg.security.identity()?,
        })
        .await?;
        let peer_addr = peer_addr(&cfg, engine.local_addr().port()).await?;
        let registry_metrics = Metrics::new();
        let metrics = MasterMetrics::new(&registry_metrics);
        for i in &cfg.indexes {
            metrics.register_index(&i.name);
        }
        let ssl_cert = match (&cfg.security.tls_ca, &cfg.security.tls) {
            (Some(ca), Some(_)) => Some(
                std::fs::read_to_string(ca)
                    .map_err(|e| MasterError::StateDir(ca.display().to_string(), e))?,
            ),
            _ => None,
        };
        let shared = Arc::new(Shared {
            ssl_cert,
            fleet: Mutex::new(fleet::Fleet::default()),
            throttle: Mutex::new(verifier::Throttle::new(cfg.verify_rate)),
            metrics,
            registry_metrics,
            cfg,
            engine,
            tracker,
            peer_addr,
            started: std::time::Instant::now(),
        });
        let indexes: Vec<Arc<Index>> = locked
            .into_iter()
            .map(|l| Arc::new(Index::new(l, shared.clone())))
            .collect();
        for i in &indexes {
            i.start().await;
        }
        info!(
            indexes = indexes.len(),
            public_url = %shared.cfg.public_url,
            peer = %shared.peer_addr,
            "master ready"
        );
        Ok(Arc::new(Master { shared, indexes }))
    }

    /// What every index shares (the fleet's reports among it).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn cfg(&self) -> &MasterConfig {
        &self.shared.cfg
    }

    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.shared.tracker
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr
    }

    pub fn indexes(&self) -> &[Arc<Index>] {
        &self.indexes
    }

    /// The index called `name`.
    pub fn index(&self, name: &str) -> Option<&Arc<Index>> {
        self.indexes.iter().find(|i| i.name == name)
    }

    /// The index the unprefixed routes serve: `default`, or the only one.
    pub fn default_index(&self) -> Option<&Arc<Index>> {
        self.index(DEFAULT_INDEX)
            .or_else(|| (self.indexes.len() == 1).then(|| &self.indexes[0]))
    }

    /// Watches and publishes every index until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(self.shared.tracker.clone().run_sweeper(shutdown.clone()));
        let runs: Vec<_> = self
            .indexes
            .iter()
            .map(|i| {
                let span = tracing::info_span!("index", index = %i.name);
                tokio::spawn(tracing::Instrument::instrument(
                    i.clone().run(shutdown.clone()),
                    span,
                ))
            })
            .collect();
        for r in runs {
            let _ = r.await;
        }
        self.shared.engine.shutdown().await;
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
        let idx = first.default_index().unwrap();
        assert_eq!(idx.epoch().len(), 32);
        match Master::start(config(d.path())).await {
            Err(MasterError::Locked(crate::util::LockError::Busy { pid, what, .. })) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(what, "state directory");
            }
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a second master started on the same state directory"),
        }
        // The version objects carry the epoch.
        assert!(idx.versions().iter().all(|v| v.epoch == idx.epoch()));
    }
}
