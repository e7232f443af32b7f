//! After a swap: which versions stay on disk and which are still seeded.
//!
//! The live version plus the newest `keep_versions` others stay (newest by
//! the time their manifest was written, not by number: numbers restart in a
//! new epoch). Whatever `current` points at is never removed. Partial
//! downloads are removed but the newest of a version newer than the live
//! one (an aborted or paused download, resumed later), and so are torrents
//! and manifests left without their directory. A version's
//! manifest goes before its directory, so a removal cut short by a crash
//! leaves a directory nothing vouches for, never a manifest over half a
//! directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::layout::{self, slot_paths};
use super::manifest::Manifest;
use super::{swapper, Replica, Seeding};
use crate::config::SwapMode;
use crate::swarm::{Session, SessionState};
use crate::util::crash;

impl Replica {
    /// Stops the seeding sessions `pred` selects.
    pub(super) async fn stop_seeding(&self, pred: impl Fn(&Seeding) -> bool) {
        let gone: Vec<Arc<Session>> = {
            let mut s = self.seeding.lock();
            let (gone, stay): (Vec<Seeding>, Vec<Seeding>) = s.drain(..).partition(|x| pred(x));
            *s = stay;
            gone.into_iter().map(|x| x.session).collect()
        };
        for s in gone {
            self.stop_session(&s).await;
        }
    }

    /// Stops seeding old versions whose time is up.
    pub(super) async fn retire_old_seeds(&self) {
        let now = Instant::now();
        self.stop_seeding(|x| x.until.is_some_and(|u| u <= now))
            .await;
        self.seeding
            .lock()
            .retain(|s| !matches!(s.session.progress().borrow().state, SessionState::Stopped));
    }

    /// Keeps the live version and `keep_versions` older ones; deletes the
    /// rest. Crash points `retention_start`, `retention_removed_one`,
    /// `retention_done`.
    pub(super) async fn apply_retention(&self) {
        crash::point("retention_start");
        let data = self.cfg.data_dir.clone();
        let mut keep: Vec<String> = self.live.lock().iter().map(|l| l.slot.clone()).collect();
        // A staged version waits for its activation.
        keep.extend(self.staged_slot());
        if let SwapMode::Symlink = self.cfg.mode {
            keep.extend(swapper::read_current(&data));
        }
        let mut old: Vec<(String, String)> = layout::list_slots(&data)
            .into_iter()
            .filter(|s| !keep.contains(s))
            .map(|s| {
                let at = Manifest::load(&slot_paths(&data, &s).manifest)
                    .map(|m| m.finalized_at)
                    .unwrap_or_default();
                (at, s)
            })
            .collect();
        // Newest first; RFC 3339 with a fixed width sorts as text.
        old.sort_unstable_by(|a, b| b.cmp(a));
        for (_, slot) in old.into_iter().skip(self.cfg.keep_versions) {
            self.stop_seeding(|s| s.slot == slot).await;
            info!(
                slot,
                "removing old version (keep_versions = {})", self.cfg.keep_versions
            );
            let p = slot_paths(&data, &slot);
            let _ = std::fs::remove_file(&p.manifest);
            let _ = std::fs::remove_dir_all(&p.dir);
            let _ = std::fs::remove_file(&p.torrent);
            crash::point("retention_removed_one");
        }
        let live_version = self.live.lock().as_ref().map(|l| l.version);
        remove_partials_and_orphans(&data, live_version);
        if let SwapMode::Solr(s) = &self.cfg.mode {
            self.remove_old_solr_indexes(&s.core_data_dir);
        }
        crash::point("retention_done");
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

    pub(super) fn refresh_disk_status(&self) {
        let mut on_disk: Vec<u64> = layout::list_slots(&self.cfg.data_dir)
            .iter()
            .filter_map(|s| layout::slot_version(s))
            .collect();
        on_disk.sort_unstable();
        let live = self.live.lock().clone();
        let mut st = self.status.lock();
        st.versions_on_disk = on_disk;
        st.current_version = live.as_ref().map(|l| l.version);
        st.current_info_hash = live.as_ref().map(|l| l.meta.info_hash.hex());
        st.current_path = live.as_ref().map(|l| l.path.display().to_string());
    }
}

/// Removes the `.partial` directories but the newest one of a version
/// newer than `live` (a download that `POST /abort` or `/pause` cut short:
/// its verified pieces are what the next cycle resumes from, so at most
/// one stays), and torrents and manifests whose version directory is gone.
fn remove_partials_and_orphans(data: &Path, live: Option<u64>) {
    let vdir = layout::versions_dir(data);
    let partials: Vec<(u64, String)> = std::fs::read_dir(&vdir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = layout::slot_version(name.strip_suffix(".partial")?)?;
            Some((version, name))
        })
        .collect();
    let keep = partials
        .iter()
        .filter(|(v, _)| live.is_none_or(|l| *v > l))
        .max()
        .map(|(_, name)| name.clone());
    for (_, name) in partials {
        if Some(&name) != keep.as_ref() {
            info!(partial = %name, "removing a partial download no longer needed");
            let _ = std::fs::remove_dir_all(vdir.join(&name));
        }
    }
    for e in std::fs::read_dir(&vdir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let slot = name
            .strip_suffix(".torrent")
            .or_else(|| name.strip_suffix(".manifest"));
        if let Some(slot) = slot.filter(|s| layout::slot_version(s).is_some()) {
            if !vdir.join(slot).is_dir() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partials(data: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(layout::versions_dir(data))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        v.sort();
        v
    }

    /// A swap used to remove every partial download, including the one
    /// `POST /abort` had just kept for later: its pieces were fetched again.
    #[test]
    fn the_newest_partial_newer_than_the_live_version_survives_a_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let vdir = layout::versions_dir(tmp.path());
        for name in [
            "2.partial",
            "3.partial",
            "5.partial",
            "4-0a1b2c3d.partial",
            "junk.partial",
        ] {
            std::fs::create_dir_all(vdir.join(name)).unwrap();
            std::fs::write(vdir.join(name).join("piece"), b"verified").unwrap();
        }
        remove_partials_and_orphans(tmp.path(), Some(3));
        assert_eq!(partials(tmp.path()), ["5.partial", "junk.partial"]);
        assert!(vdir.join("5.partial/piece").is_file());

        // Nothing newer than the live version: no partial stays.
        remove_partials_and_orphans(tmp.path(), Some(5));
        assert_eq!(partials(tmp.path()), ["junk.partial"]);

        // No live version yet: the newest partial stays.
        for name in ["6.partial", "7.partial"] {
            std::fs::create_dir_all(vdir.join(name)).unwrap();
        }
        remove_partials_and_orphans(tmp.path(), None);
        assert_eq!(partials(tmp.path()), ["7.partial", "junk.partial"]);
    }
}
