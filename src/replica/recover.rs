//! Startup: clear what a crash left behind and find the live version, as
//! proven by the bytes on disk rather than by a name.
//!
//! The live version is what the search server reads: `current` in symlink
//! mode, the `index.<ts>` directory `index.properties` names in Solr mode
//! (recognised by inode: it is a tree of hard links to one version's files,
//! which that version's manifest records; `live-version` is only a hint when
//! links were impossible). It is trusted when its manifest vouches for it;
//! otherwise every piece is checked in place, read-only. If that fails,
//! there is no live version as far as `/status` is concerned (its
//! `current_info_hash` stays null rather than naming bytes that are not
//! there), `last_error` says why, and the next cycle replaces it.
//!
//! Partial downloads are kept: the next cycle resumes the one it needs and
//! retention removes the others after the next swap.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use tracing::{info, warn};

use super::layout::{self, slot_paths};
use super::manifest::{self, Manifest};
use super::{load_torrent, swapper, Live, Replica};
use crate::config::{SolrConfig, SwapMode};
use crate::metainfo::Metainfo;
use crate::storage::{Mode, Storage};
use crate::util::fs::TMP_SUFFIX;

/// What recovery found to be live.
enum Found {
    Nothing,
    Live(Live),
    /// Something is live on disk, but it is not provably any version.
    Unproven(String),
}

impl Replica {
    pub(super) async fn recover(self: &Arc<Self>) {
        let data = self.cfg.data_dir.clone();
        let mode = self.cfg.mode.clone();
        let found = tokio::task::spawn_blocking(move || {
            clean_temporaries(&data, &mode);
            find_live(&data, &mode)
        })
        .await
        .unwrap_or_else(|e| Found::Unproven(format!("recovery failed: {e}")));
        match found {
            Found::Nothing => {}
            Found::Live(l) => {
                info!(version = l.version, slot = %l.slot, info_hash = %l.meta.info_hash, "live version found");
                self.start_seeding(&l, None);
                *self.live.lock() = Some(l);
            }
            Found::Unproven(why) => {
                warn!("{why}");
                *self.swap_warning.lock() = Some(why.clone());
                self.status.lock().last_error = Some(why);
            }
        }
        self.refresh_disk_status();
    }
}

/// Removes temporary names only a crash leaves: `current.tmp`, atomic-write
/// temporaries, and Solr link trees that were never renamed into place.
fn clean_temporaries(data: &Path, mode: &SwapMode) {
    let _ = std::fs::remove_file(data.join("current.tmp"));
    for dir in [data.to_path_buf(), layout::versions_dir(data)] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_file = e.file_type().is_ok_and(|t| t.is_file());
            if is_file && (name.ends_with(TMP_SUFFIX) || name.ends_with(".tmp")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let SwapMode::Solr(s) = mode {
        for e in std::fs::read_dir(&s.core_data_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("index.") && name.ends_with(TMP_SUFFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            } else if name.ends_with(TMP_SUFFIX) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn find_live(data: &Path, mode: &SwapMode) -> Found {
    match mode {
        SwapMode::Symlink => match swapper::read_current(data) {
            Some(slot) => {
                let dir = slot_paths(data, &slot).dir;
                prove(data, &slot, &dir, false)
            }
            None if std::fs::symlink_metadata(data.join("current")).is_ok() => Found::Unproven(
                "current does not point at a version directory; it will be replaced".into(),
            ),
            None => Found::Nothing,
        },
        SwapMode::Solr(s) => find_solr_live(data, s),
    }
}

/// Solr: the slot whose manifest matches the index directory by inode,
/// else the `live-version` hint checked piece by piece.
fn find_solr_live(data: &Path, s: &SolrConfig) -> Found {
    let Some(index) = swapper::solr_current_index(&s.core_data_dir) else {
        return Found::Nothing;
    };
    let path = s.core_data_dir.join(&index);
    for slot in layout::list_slots(data).into_iter().rev() {
        let p = slot_paths(data, &slot);
        let Some(meta) = load_torrent(&p.torrent) else {
            continue;
        };
        if manifest::verify(&p.manifest, &path, &meta.info_hash, true).is_ok() {
            return prove(data, &slot, &path, true);
        }
    }
    let hint = std::fs::read_to_string(data.join(layout::LIVE_VERSION_FILE)).unwrap_or_default();
    let slot = hint.trim();
    if layout::slot_version(slot).is_none() {
        return Found::Unproven(format!(
            "{} is not a version this replica placed; it will be replaced",
            path.display()
        ));
    }
    prove(data, slot, &path, true)
}

/// Is `path` (what the search server reads) the version in `slot`? By
/// manifest, else by checking every piece.
fn prove(data: &Path, slot: &str, path: &Path, solr: bool) -> Found {
    let p = slot_paths(data, slot);
    let version = layout::slot_version(slot).unwrap_or(0);
    let Some(meta) = load_torrent(&p.torrent) else {
        return Found::Unproven(format!(
            "the live version {slot} has no torrent on disk; it will be fetched again"
        ));
    };
    let meta = Arc::new(meta);
    let live = |dir: PathBuf| {
        Found::Live(Live {
            version,
            slot: slot.to_string(),
            meta: meta.clone(),
            dir,
            path: path.to_path_buf(),
        })
    };
    // Seed from the version directory when its own manifest holds.
    let seed_dir = || {
        let strict = manifest::verify(&p.manifest, &p.dir, &meta.info_hash, false).is_ok();
        if strict {
            p.dir.clone()
        } else {
            path.to_path_buf()
        }
    };
    if manifest::verify(&p.manifest, path, &meta.info_hash, solr).is_ok() {
        return live(seed_dir());
    }
    info!(slot, path = %path.display(), "the live version has no valid manifest; checking every piece");
    // Lengths and extra files first: pieces cannot show either. Solr may
    // keep files of its own in the index directory.
    let misfits = layout::misfits(path, &meta).unwrap_or_else(|_| vec![path.to_path_buf()]);
    let wrong: Vec<&PathBuf> = misfits
        .iter()
        .filter(|p| {
            !solr
                || meta
                    .files
                    .iter()
                    .any(|f| path.join(layout::rel_path(f)) == **p)
        })
        .collect();
    if let Some(first) = wrong.first() {
        return Found::Unproven(format!(
            "the live version {slot} ({}) does not match its torrent ({} has the wrong \
             length or is not part of it); it will be replaced",
            path.display(),
            first.display()
        ));
    }
    let storage = Storage::with_root(meta.clone(), path, Mode::ReadOnly);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let have = storage
        .verify(threads, &AtomicU64::new(0), &AtomicBool::new(false))
        .unwrap_or_default();
    let bad = have.iter().filter(|ok| !**ok).count();
    if have.len() != meta.pieces.len() || bad > 0 {
        return Found::Unproven(format!(
            "the live version {slot} ({}) does not match its torrent ({bad} of {} pieces \
             missing or different); it will be replaced",
            path.display(),
            meta.pieces.len()
        ));
    }
    if !solr {
        write_manifest(&p.manifest, path, &meta, version);
    }
    live(seed_dir())
}

/// Records a manifest for a directory that was just checked piece by piece.
fn write_manifest(at: &Path, dir: &Path, meta: &Metainfo, version: u64) {
    let epoch = layout::read_epoch(dir.parent().and_then(Path::parent).unwrap_or(dir));
    let r = Manifest::describe(dir, meta, epoch, version)
        .and_then(|m| m.save(at))
        .and_then(|()| manifest::make_read_only(dir, meta));
    if let Err(e) = r {
        warn!("cannot record the manifest of {}: {e}", dir.display());
    }
}
