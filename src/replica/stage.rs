//! Staging: make `versions/<slot>` hold a version's verified content, with
//! its manifest, so that the swap can point at it.
//!
//! In order of cost:
//! 1. the directory is already there and its manifest vouches for it (a
//!    rollback, or a crash after finalizing): nothing to do;
//! 2. the live version has the same info-hash (a new epoch renumbered the
//!    same bytes): its files are hard-linked under the new name;
//! 3. otherwise the swarm session runs in `versions/<slot>.partial/`: a
//!    directory that failed its manifest check is moved back there and
//!    checked piece by piece, unchanged files of the live version are
//!    hard-linked in, and whatever does not verify is downloaded.
//!
//! Finalizing: fsync (the session's), rename `.partial` to the slot, fsync
//! `versions/`, write the manifest, make the files read-only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::error::{io_at, CycleError};
use super::layout::{self, SlotPaths};
use super::manifest::{self, Manifest, Mismatch};
use super::plan::RemoteVersion;
use super::status::State;
use super::{fetcher, load_torrent, swapper, Replica};
use crate::config::SwapMode;
use crate::metainfo::Metainfo;
use crate::swarm::{SessionOptions, SessionState};
use crate::util::{crash, sync_dir, write_atomic};

/// Runs blocking file work off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CycleError> + Send + 'static,
) -> Result<T, CycleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CycleError::Task(e.to_string()))?
}

fn remove_dir(p: &Path) -> Result<(), CycleError> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_at(p)(e)),
        _ => Ok(()),
    }
}

fn remove_file(p: &Path) -> Result<(), CycleError> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_at(p)(e)),
        _ => Ok(()),
    }
}

impl Replica {
    /// Slots nothing may write into: the live one, and whatever `current`
    /// points at (which may be a live version that failed its check).
    fn taken_slots(&self) -> Vec<String> {
        let mut taken: Vec<String> = self.live.lock().iter().map(|l| l.slot.clone()).collect();
        if let SwapMode::Symlink = self.cfg.mode {
            taken.extend(swapper::read_current(&self.cfg.data_dir));
        }
        taken
    }

    /// Makes the slot for `target` hold its verified content; returns the slot.
    pub(super) async fn stage(
        self: &Arc<Self>,
        target: &RemoteVersion,
        meta: Arc<Metainfo>,
        torrent: &[u8],
    ) -> Result<String, CycleError> {
        let slot = layout::choose_slot(target.version, &meta.info_hash, &self.taken_slots());
        let p = layout::slot_paths(&self.cfg.data_dir, &slot);
        // An old version still seeded from that directory stops first: the
        // directory may be checked, moved or removed.
        self.stop_seeding(|s| s.slot == slot).await;
        let (m, pp) = (meta.clone(), layout::slot_paths(&self.cfg.data_dir, &slot));
        let ready = blocking(move || check_finalized(&pp, &m)).await?;
        let tpath = p.torrent.clone();
        let (m, t) = (meta.clone(), torrent.to_vec());
        blocking(move || {
            if load_torrent(&tpath).map(|x| x.info_hash) != Some(m.info_hash) {
                write_atomic(&tpath, &t).map_err(io_at(&tpath))?;
            }
            Ok(())
        })
        .await?;
        if ready {
            info!(
                version = target.version,
                slot, "on disk and vouched for by its manifest; no download"
            );
            self.status.lock().bytes_reused = meta.data_length();
            return Ok(slot);
        }
        let live = self.live.lock().clone();
        let adopted = match live.filter(|l| l.meta.info_hash == meta.info_hash) {
            Some(l) => {
                let (m, partial) = (meta.clone(), p.partial.clone());
                blocking(move || adopt(&l.dir, &l.slot, &l.meta, &m, &partial)).await?
            }
            None => false,
        };
        if adopted {
            info!(
                version = target.version,
                slot, "the live version's bytes under a new number; linked, no download"
            );
            self.status.lock().bytes_reused = meta.data_length();
        } else {
            self.prepare_partial(target.version, &meta, &p.partial)
                .await?;
            self.download(target, meta.clone(), &p.partial).await?;
        }
        let epoch = target.epoch.clone();
        let version = target.version;
        blocking(move || finalize(&p, &meta, epoch, version)).await?;
        Ok(slot)
    }

    /// Creates the staging directory (or keeps what an earlier attempt left
    /// there), drops files the torrent does not list, and links in the
    /// live version's unchanged files.
    async fn prepare_partial(
        self: &Arc<Self>,
        version: u64,
        meta: &Arc<Metainfo>,
        partial: &Path,
    ) -> Result<(), CycleError> {
        let live = self.live.lock().clone();
        let (m, s) = (meta.clone(), partial.to_path_buf());
        let reused = blocking(move || {
            std::fs::create_dir_all(&s).map_err(io_at(&s))?;
            let strays = layout::prune_strays(&s, &m).map_err(io_at(&s))?;
            if strays > 0 {
                info!(
                    strays,
                    "removed files the torrent does not list from the staging directory"
                );
            }
            match live {
                Some(l) => fetcher::reuse_files(&l.meta, &l.dir, &m, &s).map_err(io_at(&s)),
                None => Ok(Vec::new()),
            }
        })
        .await?;
        let bytes: u64 = reused.iter().map(|r| r.bytes).sum();
        if !reused.is_empty() {
            info!(
                version,
                files = reused.len(),
                bytes,
                "reused unchanged files from the live version"
            );
        }
        self.status.lock().bytes_reused = bytes;
        Ok(())
    }

    /// Downloads into `staging` with the swarm, updating `/status` as it goes.
    async fn download(
        self: &Arc<Self>,
        target: &RemoteVersion,
        meta: Arc<Metainfo>,
        staging: &Path,
    ) -> Result<(), CycleError> {
        let version = target.version;
        if self.is_paused() {
            return Err(CycleError::Aborted(version));
        }
        if let Some(old) = self.engine.get(&meta.info_hash) {
            self.stop_session(&old).await;
        }
        *self.downloading.lock() = Some(meta.info_hash);
        let opts = SessionOptions {
            content_dir: Some(staging.to_path_buf()),
            max_peers: self.cfg.limits.max_peers,
            max_peers_per_ip: self.cfg.limits.max_peers_per_ip,
            stall_after: Some(self.cfg.stall),
            ..SessionOptions::default()
        };
        let session = self.engine.add(meta.clone(), staging.to_path_buf(), opts)?;
        let mut progress = session.progress();
        // The master may hang (or be frozen): asking it whether the version
        // is still listed runs beside this loop, never in it, so /status
        // keeps following the download whatever the master does.
        let mut retired = self.watch_retirement(meta.info_hash);
        let mut aborted = self.abort.subscribe();
        aborted.mark_unchanged();
        let result = loop {
            {
                let p = progress.borrow_and_update().clone();
                self.show_progress(&p);
                if p.complete {
                    break Ok(());
                }
                if let SessionState::Failed(e) = &p.state {
                    break Err(CycleError::Download {
                        version,
                        source: e.clone(),
                    });
                }
            }
            tokio::select! {
                r = progress.changed() => if r.is_err() {
                    break Err(CycleError::SessionEnded(version));
                },
                Some(()) = retired.recv() => break Err(CycleError::Retired(version)),
                _ = aborted.changed() => break Err(CycleError::Aborted(version)),
            }
        };
        retired.close();
        let failed = u64::from(progress.borrow().hash_failures);
        self.hash_failures_before
            .fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
        if result.is_ok() {
            crash::point("download_complete");
        }
        self.stop_session(&session).await;
        *self.downloading.lock() = None;
        match result {
            Ok(()) => crash::point("session_stopped"),
            Err(CycleError::Retired(_)) => {
                let _ = std::fs::remove_dir_all(staging);
            }
            Err(_) => {}
        }
        result
    }
}

impl Replica {
    /// Checks every poll interval whether the master still lists `hash`;
    /// sends once when it does not. Ends when the receiver is dropped.
    fn watch_retirement(
        self: &Arc<Self>,
        hash: crate::metainfo::InfoHash,
    ) -> tokio::sync::mpsc::Receiver<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let me = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(me.cfg.poll_interval.max(Duration::from_secs(1)));
            every.tick().await;
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = every.tick() => {}
                }
                let listed = tokio::select! {
                    _ = tx.closed() => return,
                    l = me.list() => l.ok(),
                };
                if listed.is_some_and(|l| !l.iter().any(|v| v.info_hash == hash)) {
                    let _ = tx.send(()).await;
                    return;
                }
            }
        });
        rx
    }

    fn show_progress(&self, p: &crate::swarm::Progress) {
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
        st.hash_failures = self
            .hash_failures_before
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_add(u64::from(p.hash_failures));
        // A stall is reported while it lasts (INTERFACE: `stalled: <why>`),
        // then cleared by the next verified piece.
        st.last_error = p.stalled.as_ref().map(|why| format!("stalled: {why}"));
    }
}

/// Is `versions/<slot>` a finalized copy of `meta` (manifest checked)? If it
/// is there but unproven, it goes back to `.partial` to be checked piece by
/// piece; if its manifest names another torrent, it is removed.
fn check_finalized(p: &SlotPaths, meta: &Metainfo) -> Result<bool, CycleError> {
    if !p.dir.is_dir() {
        return Ok(false);
    }
    match manifest::verify(&p.manifest, &p.dir, &meta.info_hash, false) {
        Ok(_) => {
            // A crash may have come between the manifest and the chmod.
            manifest::make_read_only(&p.dir, meta).map_err(io_at(&p.dir))?;
            return Ok(true);
        }
        Err(Mismatch::OtherTorrent(other)) => {
            info!(dir = %p.dir.display(), %other, "holds another torrent; removing it");
            remove_file(&p.manifest)?;
            remove_dir(&p.dir)?;
        }
        Err(why) => {
            info!(dir = %p.dir.display(), "{why}; checking it piece by piece");
            remove_file(&p.manifest)?;
            remove_dir(&p.partial)?;
            std::fs::rename(&p.dir, &p.partial).map_err(io_at(&p.partial))?;
        }
    }
    let vdir = p.dir.parent().unwrap_or(Path::new("."));
    sync_dir(vdir).map_err(io_at(vdir))?;
    Ok(false)
}

/// The live version's bytes under another number: links its files into
/// `partial`, if its manifest still vouches for them. Returns false (and
/// the caller downloads) otherwise.
fn adopt(
    live_dir: &Path,
    live_slot: &str,
    live_meta: &Metainfo,
    meta: &Metainfo,
    partial: &Path,
) -> Result<bool, CycleError> {
    let data = live_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let mpath = layout::slot_paths(data, live_slot).manifest;
    if manifest::verify(&mpath, live_dir, &live_meta.info_hash, false).is_err() {
        return Ok(false);
    }
    remove_dir(partial)?;
    let mut dirs = std::collections::BTreeSet::new();
    for f in meta.files.iter().filter(|f| !f.pad) {
        let rel = layout::rel_path(f);
        let dst = partial.join(&rel);
        let parent = dst.parent().unwrap_or(partial).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io_at(&parent))?;
        crate::util::link_or_copy(&live_dir.join(&rel), &dst).map_err(io_at(&dst))?;
        dirs.insert(parent);
    }
    dirs.insert(partial.to_path_buf());
    for d in dirs {
        sync_dir(&d).map_err(io_at(&d))?;
    }
    Ok(true)
}

/// `.partial` → slot, then the manifest, then read-only files.
fn finalize(
    p: &SlotPaths,
    meta: &Metainfo,
    epoch: Option<String>,
    version: u64,
) -> Result<(), CycleError> {
    crash::point("before_rename_partial");
    std::fs::rename(&p.partial, &p.dir).map_err(io_at(&p.dir))?;
    crash::point("after_rename_partial");
    let vdir = p.dir.parent().unwrap_or(Path::new("."));
    sync_dir(vdir).map_err(io_at(vdir))?;
    crash::point("versions_dir_synced");
    Manifest::describe(&p.dir, meta, epoch, version)
        .and_then(|m| m.save(&p.manifest))
        .map_err(io_at(&p.manifest))?;
    manifest::make_read_only(&p.dir, meta).map_err(io_at(&p.dir))?;
    Ok(())
}
