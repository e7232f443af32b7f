//! Publishing: directory → torrent → tracker → seeding → visible version,
//! in that order, so `/versions/latest` never names a version nobody seeds.
//! Also the reverse paths: retention, withdrawal of modified snapshots, and
//! restoring seeding after a restart.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::registry::{SourceRecord, VersionRecord, VersionState};
use super::watcher::{fingerprint, ignored};
use super::Index;
use crate::metainfo::{build, BuildOptions, FileId, KnownPieces, Metainfo};
use crate::swarm::{Check, Mode, SessionOptions};
use crate::util::{now_rfc3339, write_atomic};

/// Why a snapshot was not published: the first four are the caller's
/// (HTTP 400, 404, 409, 409), the rest the master's (HTTP 500, with the cause).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    BadPath(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0} changed while it was being hashed; it will be published once it settles")]
    Changed(String),
    #[error(
        "{name} was version {version} and is retired; publishing it again would roll the \
         replicas back to it: send {{\"path\": \"{name}\", \"force\": true}} to do that"
    )]
    Retired { name: String, version: u64 },
    #[error("cannot build a torrent of {name}")]
    Build {
        name: String,
        #[source]
        source: crate::metainfo::BuildError,
    },
    #[error("cannot store {}", path.display())]
    Store {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot seed {name}")]
    Seed {
        name: String,
        #[source]
        source: SeedError,
    },
    #[error("cannot record the new version")]
    Registry(#[from] super::registry::RegistryError),
    #[error("a blocking task of the publisher failed")]
    Task,
}

/// What the last publication cost (`/status` `last_publish`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublishStats {
    pub version: u64,
    pub seconds: f64,
    /// Bytes read and hashed.
    pub hashed_bytes: u64,
    /// Bytes whose piece hashes were reused from an earlier version.
    pub reused_bytes: u64,
}

/// Why seeding a version could not start.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Engine(#[from] crate::swarm::EngineError),
    #[error("its data did not check out")]
    Check(#[from] crate::swarm::SessionError),
}

impl PublishError {
    /// The caller's mistake (4xx) rather than the master's (5xx)?
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            PublishError::BadPath(_)
                | PublishError::NotFound(_)
                | PublishError::Changed(_)
                | PublishError::Retired { .. }
        )
    }
}

fn seed_options(limits: &crate::config::PeerLimits) -> SessionOptions {
    SessionOptions {
        max_peers: limits.max_peers,
        max_peers_per_ip: limits.max_peers_per_ip,
        // The tracker lists the master itself (a static seed): no announces.
        announce: Some(Vec::new()),
        mode: Mode::ReadOnly,
        check: Check::AssumeComplete,
        require_complete: true,
        ..SessionOptions::default()
    }
}

impl Index {
    /// Publishes the snapshot directory `name` (a direct child of the
    /// snapshots directory). Returns the version and whether it is new.
    /// A retired snapshot is published again (as the newest version, which
    /// rolls replicas back to it) only with `force`.
    pub async fn publish(
        self: &Arc<Self>,
        name: &str,
        force: bool,
    ) -> Result<(VersionRecord, bool), PublishError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." || ignored(name) {
            return Err(PublishError::BadPath(format!(
                "{name:?} is not a snapshot directory name"
            )));
        }
        let _guard = self.publish_lock.lock().await;
        if let Some(v) = self.registry.lock().by_name(name) {
            match v.state {
                VersionState::Published => return Ok((v.clone(), false)),
                VersionState::Retired if !force => {
                    return Err(PublishError::Retired {
                        name: name.to_string(),
                        version: v.version,
                    })
                }
                _ => {}
            }
        }
        let dir = self.cfg.snapshots_dir.join(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Err(PublishError::BadPath(format!("{name} is not a directory"))),
            Err(_) => {
                return Err(PublishError::NotFound(format!(
                    "{name} does not exist in the snapshots directory"
                )))
            }
        }
        if let Some(marker) = &self.cfg.marker_file {
            if !dir.join(marker).exists() {
                return Err(PublishError::BadPath(format!(
                    "{name} is not complete: it has no {marker} marker file"
                )));
            }
        }
        let started = Instant::now();
        let me = self.clone();
        let known = tokio::task::spawn_blocking(move || me.known_pieces())
            .await
            .map_err(|_| PublishError::Task)?;
        let opts = BuildOptions {
            announce: vec![format!("{}/announce", self.shared.cfg.public_url)],
            piece_length: self.cfg.piece_length,
            name: Some(name.to_string()),
            align_files: self.cfg.align_files,
            threads: 0,
            comment: Some(format!("indexswarm snapshot {name}")),
            known: Some(Arc::new(known)),
            ssl_cert: self.shared.ssl_cert.clone(),
        };
        let d2 = dir.clone();
        let built = tokio::task::spawn_blocking(move || build(&d2, &opts, &AtomicU64::new(0)))
            .await
            .map_err(|_| PublishError::Task)?
            .map_err(|source| PublishError::Build {
                name: name.to_string(),
                source,
            })?;
        // Half-written directories are never published: the files must not
        // have moved while we hashed them.
        let d3 = dir.clone();
        let after = tokio::task::spawn_blocking(move || fingerprint(&d3))
            .await
            .ok()
            .flatten();
        let sources: Vec<SourceRecord> = built
            .sources
            .iter()
            .map(SourceRecord::from_source)
            .collect();
        if after.as_ref().map(|fp| same_files(fp, &sources)) != Some(true) {
            return Err(PublishError::Changed(name.to_string()));
        }

        let version = self.registry.lock().next_version();
        let torrent_path = self.registry.lock().torrent_path(version);
        let bytes = built.bytes.clone();
        let tp = torrent_path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&tp, &bytes))
            .await
            .map_err(|_| PublishError::Task)?
            .map_err(|source| PublishError::Store {
                path: torrent_path.clone(),
                source,
            })?;

        let meta = Arc::new(built.meta);
        self.start_seeding(meta.clone(), Check::AssumeComplete)
            .await
            .map_err(|source| PublishError::Seed {
                name: name.to_string(),
                source,
            })?;

        let rec = VersionRecord {
            version,
            name: name.to_string(),
            info_hash: meta.info_hash,
            files: meta.data_files(),
            bytes: meta.data_length(),
            piece_length: meta.piece_length,
            created_at: now_rfc3339(),
            state: VersionState::Published,
            note: None,
            sources,
        };
        self.registry.lock().push(rec.clone())?;
        self.rollout_published(version);
        self.registry_changed();
        let secs = started.elapsed().as_secs_f64();
        self.shared
            .metrics
            .publish_seconds
            .with_label_values(&[&self.name])
            .observe(secs);
        self.shared
            .metrics
            .published
            .with_label_values(&[&self.name])
            .inc();
        let m = &self.shared.metrics;
        m.hashed_bytes
            .with_label_values(&[&self.name])
            .inc_by(built.hashed_bytes);
        m.reused_bytes
            .with_label_values(&[&self.name])
            .inc_by(built.reused_bytes);
        *self.last_publish.lock() = Some(PublishStats {
            version,
            seconds: secs,
            hashed_bytes: built.hashed_bytes,
            reused_bytes: built.reused_bytes,
        });
        info!(
            version,
            name,
            info_hash = %meta.info_hash,
            files = rec.files,
            bytes = rec.bytes,
            hashed = built.hashed_bytes,
            reused = built.reused_bytes,
            secs = format!("{secs:.2}"),
            "published"
        );
        self.apply_retention().await;
        Ok((rec, true))
    }

    /// The piece hashes of every published version's files, by identity
    /// (device, inode, size, mtime), for the next build to reuse.
    fn known_pieces(&self) -> KnownPieces {
        let published = self.registry.lock().published();
        let mut known = KnownPieces::default();
        for rec in published.iter().rev() {
            let path = self.registry.lock().torrent_path(rec.version);
            let Some(meta) = std::fs::read(&path)
                .ok()
                .and_then(|b| Metainfo::from_bytes(&b).ok())
            else {
                continue;
            };
            let ids: HashMap<&str, FileId> = rec
                .sources
                .iter()
                .map(|s| (s.path.as_str(), s.id()))
                .collect();
            known.learn(&meta, |f| ids.get(f.display_path().as_str()).copied());
        }
        known
    }

    /// Registers with the tracker and starts the seeding session.
    pub(super) async fn start_seeding(
        &self,
        meta: Arc<Metainfo>,
        check: Check,
    ) -> Result<(), SeedError> {
        self.shared.tracker.register(meta.info_hash);
        self.shared.tracker.add_static_seed(
            meta.info_hash,
            self.shared.engine.peer_id(),
            self.shared.peer_addr,
        );
        if self.shared.engine.get(&meta.info_hash).is_some() {
            return Ok(());
        }
        let opts = SessionOptions {
            check,
            ..seed_options(&self.shared.cfg.limits)
        };
        let session = self
            .shared
            .engine
            .add(meta, self.cfg.snapshots_dir.clone(), opts)?;
        Ok(session.wait_checked().await?)
    }

    async fn stop_seeding(&self, rec: &VersionRecord) {
        self.shared.tracker.unregister(&rec.info_hash);
        if let Some(s) = self.shared.engine.get(&rec.info_hash) {
            s.stop().await;
        }
    }

    /// Retires published versions beyond `keep_versions`, then forgets
    /// what no longer needs remembering (`Registry::prune`).
    pub async fn apply_retention(&self) {
        self.retire_old().await;
        let root = self.cfg.snapshots_dir.clone();
        let exists = |name: &str| std::fs::symlink_metadata(root.join(name)).is_ok();
        if let Err(e) = self.registry.lock().prune(exists) {
            warn!("cannot prune the version registry: {e}");
        }
    }

    /// Published versions beyond `keep_versions`, but never one the rollout
    /// or a live replica still needs (active, rolled out, previous, staged).
    async fn retire_old(&self) {
        let protected = self.protected_versions();
        let old: Vec<Arc<VersionRecord>> = self
            .registry
            .lock()
            .published()
            .into_iter()
            .skip(self.cfg.keep_versions)
            .filter(|r| !protected.contains(&r.version))
            .collect();
        for rec in old {
            info!(version = rec.version, name = %rec.name, "retiring version beyond keep_versions");
            self.stop_seeding(&rec).await;
            let torrent = self.registry.lock().torrent_path(rec.version);
            let _ = std::fs::remove_file(torrent);
            if let Err(e) = self
                .registry
                .lock()
                .set_state(rec.version, VersionState::Retired, None)
            {
                warn!("cannot record retirement of version {}: {e}", rec.version);
            }
            self.registry_changed();
            if self.cfg.delete_old_snapshots {
                let dir = self.cfg.snapshots_dir.join(&rec.name);
                // Only a real directory directly inside the snapshots directory.
                if std::fs::symlink_metadata(&dir)
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
                {
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => info!(name = %rec.name, "deleted old snapshot directory"),
                        Err(e) => {
                            warn!(name = %rec.name, "cannot delete old snapshot directory: {e}")
                        }
                    }
                }
            }
        }
    }

    /// Withdraws a published version whose directory no longer matches what we hashed.
    pub(super) async fn withdraw(&self, rec: &VersionRecord, why: &str) {
        warn!(version = rec.version, name = %rec.name, "withdrawing version: {why}");
        self.stop_seeding(rec).await;
        if let Err(e) = self.registry.lock().set_state(
            rec.version,
            VersionState::Modified,
            Some(why.to_string()),
        ) {
            warn!("cannot record withdrawal of version {}: {e}", rec.version);
        }
        self.registry_changed();
    }

    /// Wakes whoever follows the set of published versions (the verifier).
    fn registry_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        self.bump_generation();
    }

    /// After a restart: seed every published version again, trusting files
    /// whose size and mtime are as recorded and rehashing the others.
    pub(super) async fn restore(self: &Arc<Self>) {
        let published = self.registry.lock().published();
        for rec in published.into_iter().rev() {
            let torrent = self.registry.lock().torrent_path(rec.version);
            let meta = match std::fs::read(&torrent)
                .map_err(|e| e.to_string())
                .and_then(|b| Metainfo::from_bytes(&b).map_err(|e| e.to_string()))
            {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    self.withdraw(&rec, &format!("torrent file unusable: {e}"))
                        .await;
                    continue;
                }
            };
            let dir = self.cfg.snapshots_dir.join(&rec.name);
            let d2 = dir.clone();
            let fp = tokio::task::spawn_blocking(move || fingerprint(&d2))
                .await
                .ok()
                .flatten();
            let check = match &fp {
                None if gone(&dir) => {
                    self.withdraw(&rec, "snapshot directory is gone").await;
                    continue;
                }
                Some(fp) if same_files(fp, &rec.sources) => Check::AssumeComplete,
                _ => {
                    info!(
                        version = rec.version,
                        "files changed since publication (or could not be listed); rehashing"
                    );
                    Check::Verify
                }
            };
            match self.start_seeding(meta, check).await {
                Ok(()) => {
                    info!(version = rec.version, name = %rec.name, "seeding again after restart");
                    // The data verified: what is on disk now is what we vouch for.
                    if let (Check::Verify, Some(fp)) = (check, fp) {
                        let sources = fp
                            .iter()
                            .map(|(path, length, mtime_ns)| SourceRecord {
                                path: path.clone(),
                                length: *length,
                                mtime_ns: *mtime_ns,
                                // Unknown: this version's files are not
                                // offered for reuse by the next one.
                                dev: 0,
                                ino: 0,
                            })
                            .collect();
                        if let Err(e) = self.registry.lock().set_sources(rec.version, sources) {
                            warn!("cannot record the files of version {}: {e}", rec.version);
                        }
                    }
                }
                Err(e) => {
                    self.withdraw(&rec, &format!("data no longer matches the torrent: {e}"))
                        .await
                }
            }
        }
    }

    /// Compares every published directory with what was hashed.
    pub(super) async fn check_published(self: &Arc<Self>) {
        let published = self.registry.lock().published();
        for rec in published {
            let dir = self.cfg.snapshots_dir.join(&rec.name);
            let d2 = dir.clone();
            let fp = tokio::task::spawn_blocking(move || fingerprint(&d2))
                .await
                .ok()
                .flatten();
            match fp {
                None if gone(&dir) => {
                    self.withdraw(&rec, "snapshot directory vanished after publication")
                        .await
                }
                // Listing failed for another reason (descriptors, permissions):
                // look again next time rather than withdraw a good version.
                None => warn!(
                    version = rec.version,
                    "cannot list {}; will look again",
                    dir.display()
                ),
                Some(fp) if !same_files(&fp, &rec.sources) => {
                    self.withdraw(&rec, "snapshot directory was modified after publication")
                        .await
                }
                Some(_) => {}
            }
        }
    }
}

/// Is the directory really gone (as opposed to unreadable for a moment)?
fn gone(dir: &std::path::Path) -> bool {
    matches!(std::fs::symlink_metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Does a fingerprint match the recorded sources (path, size, mtime)?
pub(super) fn same_files(fp: &super::watcher::Fingerprint, sources: &[SourceRecord]) -> bool {
    let mut a: Vec<(&str, u64, u128)> = fp.iter().map(|(p, l, m)| (p.as_str(), *l, *m)).collect();
    let mut b: Vec<(&str, u64, u128)> = sources
        .iter()
        .map(|s| (s.path.as_str(), s.length, s.mtime_ns))
        .collect();
    a.sort();
    b.sort();
    a == b
}
