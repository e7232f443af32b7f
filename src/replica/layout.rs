//! Names in the data directory, and the rule that picks a version's
//! directory.
//!
//! ```text
//! DATA/
//!   .indexswarm.lock                  flock: one replica per data directory
//!   current -> versions/7             the live version (symlink mode)
//!   master-epoch                      epoch of the master the live version came from
//!   live-version                      solr mode: the slot placed in the core (a hint)
//!   versions/<slot>/                  a finalized version: files read-only
//!   versions/<slot>.manifest          what <slot> holds: info-hash, epoch, every
//!                                     file's path, length, mtime and inode
//!   versions/<slot>.torrent           its torrent
//!   versions/<slot>.partial/          being downloaded or checked (resumed after a crash)
//! ```
//!
//! A version's directory (its "slot") is named `<n>`, the master's number,
//! unless that name is taken by the live version (or whatever `current`
//! points at) with other content: then it is `<n>-<first 8 hex digits of
//! the info-hash>`. That happens only when a master that lost its state
//! reuses the number of the live version for other bytes; the live
//! directory is never written into, renamed or deleted while live. Every
//! reader parses both forms.
//!
//! The name says nothing about the content: only the manifest, checked
//! against the files (`manifest.rs`), lets a directory be reused as a
//! version without checking every piece.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::metainfo::{InfoHash, Metainfo};

/// `DATA/master-epoch`.
pub const EPOCH_FILE: &str = "master-epoch";
/// `DATA/live-version` (solr mode).
pub const LIVE_VERSION_FILE: &str = "live-version";

pub fn versions_dir(data: &Path) -> PathBuf {
    data.join("versions")
}

/// The version number of a slot name (`7` or `7-0a1b2c3d`), if it is one.
pub fn slot_version(name: &str) -> Option<u64> {
    let (num, tag) = match name.split_once('-') {
        Some((n, t)) => (n, Some(t)),
        None => (name, None),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(t) = tag {
        if t.len() != 8 || !t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
    }
    num.parse().ok()
}

/// The slot for version `version` with `hash`, avoiding `taken` (the live
/// slot and the one `current` points at).
pub fn choose_slot(version: u64, hash: &InfoHash, taken: &[String]) -> String {
    let plain = version.to_string();
    if !taken.contains(&plain) {
        return plain;
    }
    let tagged = format!("{version}-{}", hash.short());
    if !taken.contains(&tagged) {
        return tagged;
    }
    // Both taken (the live slot and `current` differ, and one has this very
    // tag): the next 8 hex digits of the info-hash.
    format!("{version}-{}", &hash.hex()[8..16])
}

/// Paths of one slot.
pub struct SlotPaths {
    pub dir: PathBuf,
    pub partial: PathBuf,
    pub torrent: PathBuf,
    pub manifest: PathBuf,
}

pub fn slot_paths(data: &Path, slot: &str) -> SlotPaths {
    let v = versions_dir(data);
    SlotPaths {
        dir: v.join(slot),
        partial: v.join(format!("{slot}.partial")),
        torrent: v.join(format!("{slot}.torrent")),
        manifest: v.join(format!("{slot}.manifest")),
    }
}

/// The finalized slots on disk (directories named `<n>` or `<n>-<tag>`).
pub fn list_slots(data: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(versions_dir(data))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| slot_version(n).is_some())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// Path of file `f` (relative to the version directory), as components.
pub fn rel_path(f: &crate::metainfo::FileEntry) -> PathBuf {
    f.path.iter().collect()
}

/// Files under `dir` that `meta` does not list (or that are not regular
/// files where it lists one), and listed files whose length is wrong.
/// Checking pieces cannot see either: bytes past a file's end belong to no
/// piece, and an empty file has none.
pub fn misfits(dir: &Path, meta: &Metainfo) -> std::io::Result<Vec<PathBuf>> {
    let wanted: HashMap<PathBuf, u64> = meta
        .files
        .iter()
        .filter(|f| !f.pad)
        .map(|f| (rel_path(f), f.length))
        .collect();
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let e = e.map_err(std::io::Error::other)?;
        if e.file_type().is_dir() {
            continue;
        }
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
        let fits = match wanted.get(rel) {
            Some(len) => {
                e.file_type().is_file()
                    && e.metadata().map_err(std::io::Error::other)?.len() == *len
            }
            None => false,
        };
        if !fits {
            out.push(e.path().to_path_buf());
        }
    }
    Ok(out)
}

/// Removes the [`misfits`] of a staging directory (left by another torrent,
/// a crash mid-copy or a hand), so that a finished version holds exactly
/// the torrent's files. Unlinking never touches the live version, even for
/// a hard link into it. Returns how many.
pub fn prune_strays(dir: &Path, meta: &Metainfo) -> std::io::Result<usize> {
    let strays = misfits(dir, meta)?;
    for p in &strays {
        std::fs::remove_file(p)?;
    }
    Ok(strays.len())
}

/// The epoch recorded with the live version.
pub fn read_epoch(data: &Path) -> Option<String> {
    let s = std::fs::read_to_string(data.join(EPOCH_FILE)).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Records the epoch of the master the live version came from.
pub fn write_epoch(data: &Path, epoch: &str) -> std::io::Result<()> {
    crate::util::fs::write_atomic_traced(
        &data.join(EPOCH_FILE),
        format!("{epoch}\n").as_bytes(),
        Some("epoch"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_parse() {
        assert_eq!(slot_version("7"), Some(7));
        assert_eq!(slot_version("18446744073709551615"), Some(u64::MAX));
        assert_eq!(slot_version("7-0a1b2c3d"), Some(7));
        for bad in [
            "",
            "7.partial",
            "7.torrent",
            "7-0A1B2C3D",
            "7-0a1b",
            "-0a1b2c3d",
            "x",
            "18446744073709551616",
        ] {
            assert_eq!(slot_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn strays_and_wrong_lengths_are_pruned_from_staging() {
        use crate::metainfo::{build, BuildOptions};
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("a"), vec![1u8; 1000]).unwrap();
        std::fs::write(src.join("d/b"), b"").unwrap();
        std::fs::write(src.join("c"), b"same").unwrap();
        let meta = build(
            &src,
            &BuildOptions::default(),
            &std::sync::atomic::AtomicU64::new(0),
        )
        .unwrap()
        .meta;
        let st = t.path().join("staging");
        std::fs::create_dir_all(st.join("d")).unwrap();
        std::fs::write(st.join("a"), vec![1u8; 1001]).unwrap(); // one byte too long
        std::fs::write(st.join("d/b"), b"x").unwrap(); // should be empty
        std::fs::write(st.join("c"), b"same").unwrap(); // fits
        std::fs::write(st.join("other"), b"x").unwrap(); // not listed
        assert_eq!(prune_strays(&st, &meta).unwrap(), 3);
        assert!(st.join("c").exists());
        assert!(misfits(&st, &meta).unwrap().is_empty());
    }

    #[test]
    fn the_live_slot_is_never_chosen() {
        let mut bytes = [0xab; 20];
        bytes[4..8].copy_from_slice(&[0xcd; 4]);
        let h = InfoHash(bytes);
        assert_eq!(choose_slot(2, &h, &[]), "2");
        assert_eq!(choose_slot(2, &h, &["1".into()]), "2");
        let taken = vec!["2".to_string()];
        let s = choose_slot(2, &h, &taken);
        assert_eq!(s, "2-abababab");
        assert_eq!(slot_version(&s), Some(2));
        let taken = vec!["2".to_string(), "2-abababab".to_string()];
        assert_eq!(choose_slot(2, &h, &taken), "2-cdcdcdcd");
    }
}
