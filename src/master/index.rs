//! One index of the master: its snapshots directory, its registry (version
//! numbers, epoch, retention), its watcher and its verifier. Every index
//! shares the master's engine, tracker and HTTP port ([`Shared`]).
//!
//! The publisher (`publisher.rs`) and the verifier (`verifier.rs`) are
//! `impl Index` blocks too; this file holds the state, the read side of the
//! API and the watch loop.

use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::registry::{self, Registry, VersionRecord};
use super::watcher::{self, list_dirs, Observation, Settler};
use super::{timer_period, MasterError, Shared, VerifyStatus, VersionInfo};
use crate::config::{MasterIndex, DEFAULT_INDEX};

/// An index's state, locked and loaded, before the engine starts.
pub(super) struct Locked {
    cfg: MasterIndex,
    registry: Registry,
    rollout: super::rollout::Rollout,
    lock: crate::util::DirLock,
}

pub struct Index {
    pub name: String,
    pub cfg: MasterIndex,
    pub(super) shared: Arc<Shared>,
    pub(super) registry: Mutex<Registry>,
    pub(super) publish_lock: tokio::sync::Mutex<()>,
    pub(super) settler: Mutex<Settler>,
    /// Last error of the watcher, publisher or verifier, for `/status`.
    pub(super) last_error: Mutex<Option<String>>,
    /// Bumped whenever a version is published, retired or withdrawn (wakes the verifier).
    pub(super) changes: tokio::sync::watch::Sender<u64>,
    pub(super) verify: Mutex<VerifyStatus>,
    /// When versions go live (`rollout.rs`), saved in `rollout.json`.
    pub(super) rollout: Mutex<super::rollout::Rollout>,
    /// Bumped on every change a long poll waits for (`activation.rs`).
    pub(super) generation: tokio::sync::watch::Sender<u64>,
    /// What the last publication cost, for `/status`.
    pub(super) last_publish: Mutex<Option<super::PublishStats>>,
    /// The state's epoch (fixed for the life of the process).
    pub(super) epoch: String,
    /// Held for the life of the process: one master per state directory.
    _lock: crate::util::DirLock,
}

impl Index {
    /// Opens (creating) the index's directories, locks its state and
    /// loads its registry: before anything else starts, so that a second
    /// master on the same state is turned away naming the first one's pid.
    pub(super) fn lock(cfg: MasterIndex) -> Result<Locked, MasterError> {
        std::fs::create_dir_all(&cfg.snapshots_dir)
            .map_err(|e| MasterError::SnapshotsDir(cfg.snapshots_dir.display().to_string(), e))?;
        let state_err = |e| MasterError::StateDir(cfg.state_dir.display().to_string(), e);
        std::fs::create_dir_all(&cfg.state_dir).map_err(state_err)?;
        let state_dir = cfg.state_dir.canonicalize().map_err(state_err)?;
        let lock = crate::util::DirLock::acquire(&state_dir, "state directory")?;
        let registry = Registry::open(&cfg.state_dir)?;
        let rollout = super::activation::load(&cfg.state_dir).unwrap_or_default();
        Ok(Locked {
            cfg,
            registry,
            rollout,
            lock,
        })
    }

    pub(super) fn new(l: Locked, shared: Arc<Shared>) -> Index {
        let Locked {
            cfg,
            registry,
            rollout,
            lock,
        } = l;
        Index {
            name: cfg.name.clone(),
            settler: Mutex::new(Settler::new(cfg.settle, cfg.marker_file.is_some())),
            epoch: registry.epoch().to_string(),
            cfg,
            shared,
            registry: Mutex::new(registry),
            publish_lock: tokio::sync::Mutex::new(()),
            last_error: Mutex::new(None),
            changes: tokio::sync::watch::channel(0).0,
            verify: Mutex::new(VerifyStatus::default()),
            last_publish: Mutex::new(None),
            rollout: Mutex::new(rollout),
            generation: tokio::sync::watch::channel(0).0,
            _lock: lock,
        }
    }

    /// The API prefix of this index's routes: `""` for `default`, which the
    /// unprefixed routes of every earlier release serve, else `/indexes/<name>`.
    pub fn route_prefix(&self) -> String {
        if self.name == DEFAULT_INDEX {
            String::new()
        } else {
            format!("/indexes/{}", self.name)
        }
    }

    pub fn version_info(&self, r: &VersionRecord) -> VersionInfo {
        VersionInfo {
            version: r.version,
            name: r.name.clone(),
            info_hash: r.info_hash,
            torrent_url: format!(
                "{}{}/versions/{}/torrent",
                self.shared.cfg.public_url,
                self.route_prefix(),
                r.version
            ),
            files: r.files,
            bytes: r.bytes,
            piece_length: r.piece_length,
            created_at: r.created_at.clone(),
            epoch: self.epoch.clone(),
            index: self.name.clone(),
            state: match r.state {
                registry::VersionState::Published
                    if self.rollout.lock().active == Some(r.version) =>
                {
                    "active"
                }
                registry::VersionState::Published => "published",
                registry::VersionState::Retired => "retired",
                registry::VersionState::Modified => "withdrawn",
            },
        }
    }

    /// The random id of this index's state.
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

    pub fn latest_version(&self) -> Option<u64> {
        self.registry.lock().published().first().map(|r| r.version)
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

    pub(super) fn is_published(&self, version: u64) -> bool {
        self.registry
            .lock()
            .get(version)
            .is_some_and(|r| r.state == registry::VersionState::Published)
    }

    /// Is `name` a directory this index never takes as a snapshot (its own
    /// state directory)?
    fn is_state_dir(&self, name: &str) -> bool {
        self.cfg.snapshots_dir.join(name) == self.cfg.state_dir
    }

    /// The newest complete subdirectory, for `POST /snapshot` without a body:
    /// one with the marker file, or (without a marker) one in which nothing
    /// changed for the settle interval. A directory still being written is
    /// never picked.
    pub fn newest_dir(&self) -> Option<String> {
        let root = &self.cfg.snapshots_dir;
        list_dirs(root)
            .into_iter()
            .filter(|n| !self.is_state_dir(n))
            .filter(|n| {
                let dir = root.join(n);
                match &self.cfg.marker_file {
                    Some(m) => dir.join(m).exists(),
                    None => watcher::fingerprint(&dir).is_some_and(|fp| {
                        !fp.is_empty() && watcher::quiet_for(&fp) >= self.cfg.settle
                    }),
                }
            })
            .max_by_key(|n| {
                let mtime = std::fs::metadata(root.join(n))
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
        let me = self.clone();
        let observations = tokio::task::spawn_blocking(move || {
            let root = &me.cfg.snapshots_dir;
            list_dirs(root)
                .into_iter()
                .filter(|n| !known.contains(n) && !me.is_state_dir(n))
                .map(|n| {
                    let dir = root.join(&n);
                    Observation {
                        fingerprint: watcher::fingerprint(&dir),
                        has_marker: me
                            .cfg
                            .marker_file
                            .as_ref()
                            .is_some_and(|m| dir.join(m).is_file()),
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
            if let Err(e) = self.publish(&name, false).await {
                let e = crate::util::error_chain(&e);
                warn!(%name, "not published: {e}");
                *self.last_error.lock() = Some(format!("{name}: {e}"));
                self.settler.lock().reset(&name);
            }
        }
    }

    /// Watches the snapshots directory and publishes until `shutdown`; runs
    /// the index's verifier beside it.
    pub(super) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let _watcher = self.watch_events(tx);
        let span = tracing::info_span!("verifier", index = %self.name);
        let verifier = tokio::spawn(self.clone().run_verifier(shutdown.clone()).instrument(span));
        let every = self.shared.cfg.rescan.min(self.cfg.settle);
        let mut rescan = tokio::time::interval(timer_period(every));
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut integrity = tokio::time::interval(Duration::from_secs(10));
        integrity.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Reports also drive the rollout as they arrive; this catches the
        // clock (timeouts, canary_secs, replicas going stale).
        let mut rollout = tokio::time::interval(Duration::from_millis(250));
        rollout.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                _ = integrity.tick() => {
                    self.check_published().await;
                    self.apply_retention().await;
                }
                _ = rollout.tick() => {
                    if self.drive_rollout() {
                        self.apply_retention().await;
                    }
                }
            }
        }
        let _ = verifier.await;
    }

    /// inotify nudges (the periodic rescan decides; this only makes us look sooner).
    fn watch_events(
        &self,
        tx: tokio::sync::mpsc::Sender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.try_send(());
            }
        });
        let watched = watcher.and_then(|mut w| {
            w.watch(&self.cfg.snapshots_dir, notify::RecursiveMode::Recursive)
                .map(|()| w)
        });
        match watched {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("inotify unavailable ({e}); relying on the periodic rescan");
                None
            }
        }
    }

    /// Restores seeding after a restart and says so.
    pub(super) async fn start(self: &Arc<Self>) {
        self.restore().await;
        self.init_rollout();
        info!(
            index = %self.name,
            snapshots = %self.cfg.snapshots_dir.display(),
            versions = self.registry.lock().published().len(),
            "index ready"
        );
    }
}
