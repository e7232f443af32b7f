//! A version on disk is identified by its info-hash, through a manifest.
//!
//! When a version is finalized (every piece verified, files and directories
//! fsynced, `.partial` renamed to its slot), `versions/<slot>.manifest` is
//! written atomically beside it: the info-hash, the master's epoch, and for
//! every file its path, length, mtime and inode. Then the files are made
//! read-only.
//!
//! A directory is trusted as that info-hash's verified content (for a swap,
//! as the live version at startup, for `/status` `current_info_hash`) only
//! while its manifest names that info-hash and every file still has the
//! recorded length, mtime and inode, with no file added. Anything else (no
//! manifest, another info-hash, a file edited, replaced or added) and the
//! directory is checked piece by piece or fetched again. Inodes also let
//! Solr mode recognise its `index.<ts>` directory: it is a tree of hard
//! links to a version's files.
//!
//! Rejected alternative: the info-hash in the directory name. It names the
//! content but cannot tell whether the files are still that content.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::metainfo::{InfoHash, Metainfo};
use crate::util::crash;

use super::layout::rel_path;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRecord {
    /// Relative to the version directory, components joined by `/`.
    pub path: String,
    pub length: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ino: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub info_hash: InfoHash,
    pub epoch: Option<String>,
    pub version: u64,
    pub finalized_at: String,
    pub files: Vec<FileRecord>,
}

/// Why a directory is not (provably) the version its manifest names.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    #[error("no manifest")]
    Missing,
    #[error("manifest unreadable: {0}")]
    Unreadable(String),
    #[error("manifest names another torrent ({0})")]
    OtherTorrent(InfoHash),
    #[error("{0} changed since the version was finalized")]
    Changed(String),
    #[error("{0} was added since the version was finalized")]
    Added(String),
}

fn record(dir: &Path, rel: &Path) -> std::io::Result<FileRecord> {
    let md = std::fs::symlink_metadata(dir.join(rel))?;
    Ok(FileRecord {
        path: rel.to_string_lossy().into_owned(),
        length: md.len(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        ino: md.ino(),
    })
}

impl Manifest {
    /// Describes the files of `meta` as they are now in `dir`.
    pub fn describe(
        dir: &Path,
        meta: &Metainfo,
        epoch: Option<String>,
        version: u64,
    ) -> std::io::Result<Manifest> {
        let files = meta
            .files
            .iter()
            .filter(|f| !f.pad)
            .map(|f| record(dir, &rel_path(f)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Manifest {
            info_hash: meta.info_hash,
            epoch,
            version,
            finalized_at: crate::util::now_rfc3339(),
            files,
        })
    }

    /// Writes it atomically (crash points `manifest_*`).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::util::fs::write_atomic_traced(path, &bytes, Some("manifest"))
    }

    pub fn load(path: &Path) -> Result<Manifest, Mismatch> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Mismatch::Missing),
            Err(e) => return Err(Mismatch::Unreadable(e.to_string())),
        };
        serde_json::from_slice(&bytes).map_err(|e| Mismatch::Unreadable(e.to_string()))
    }

    /// Does `dir` still hold exactly what this manifest recorded, for
    /// `hash`? With `others_allowed`, files the manifest does not list are
    /// tolerated (Solr adds its own to an index directory).
    pub fn check(&self, dir: &Path, hash: &InfoHash, others_allowed: bool) -> Result<(), Mismatch> {
        if self.info_hash != *hash {
            return Err(Mismatch::OtherTorrent(self.info_hash));
        }
        for f in &self.files {
            let now =
                record(dir, Path::new(&f.path)).map_err(|_| Mismatch::Changed(f.path.clone()))?;
            if now != *f {
                return Err(Mismatch::Changed(f.path.clone()));
            }
        }
        if others_allowed {
            return Ok(());
        }
        let known: HashSet<&Path> = self.files.iter().map(|f| Path::new(&f.path)).collect();
        for e in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
            let e = e.map_err(|e| Mismatch::Unreadable(e.to_string()))?;
            if e.file_type().is_dir() {
                continue;
            }
            let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
            if !known.contains(rel) {
                return Err(Mismatch::Added(rel.to_string_lossy().into_owned()));
            }
        }
        Ok(())
    }
}

/// Loads the manifest at `path` and checks `dir` against it for `hash`.
pub fn verify(
    path: &Path,
    dir: &Path,
    hash: &InfoHash,
    others_allowed: bool,
) -> Result<Manifest, Mismatch> {
    let m = Manifest::load(path)?;
    m.check(dir, hash, others_allowed)?;
    Ok(m)
}

/// Makes every file of `meta` in `dir` read-only (0444 and the like):
/// finalized versions are never written again, not even by us (storage
/// copies a read-only file before writing). Crash points `chmod_half`
/// (half done) and `chmod_done`.
pub fn make_read_only(dir: &Path, meta: &Metainfo) -> std::io::Result<()> {
    let files: Vec<PathBuf> = meta
        .files
        .iter()
        .filter(|f| !f.pad)
        .map(|f| dir.join(rel_path(f)))
        .collect();
    for (i, p) in files.iter().enumerate() {
        if i == files.len() / 2 {
            crash::point("chmod_half");
        }
        let mode = std::fs::metadata(p)?.permissions().mode();
        if mode & 0o222 != 0 {
            std::fs::set_permissions(p, PermissionsExt::from_mode(mode & !0o222 & 0o7777))?;
        }
    }
    crash::point("chmod_done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{build, BuildOptions};
    use std::sync::atomic::AtomicU64;

    fn setup() -> (tempfile::TempDir, PathBuf, Metainfo) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("v");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), vec![1u8; 20_000]).unwrap();
        std::fs::write(dir.join("sub/b"), b"bee").unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        let meta = build(&dir, &BuildOptions::default(), &AtomicU64::new(0))
            .unwrap()
            .meta;
        (t, dir, meta)
    }

    #[test]
    fn a_manifest_recognises_its_files_and_nothing_else() {
        let (t, dir, meta) = setup();
        let path = t.path().join("v.manifest");
        Manifest::describe(&dir, &meta, Some("e".into()), 3)
            .unwrap()
            .save(&path)
            .unwrap();
        make_read_only(&dir, &meta).unwrap();
        let h = meta.info_hash;
        let m = verify(&path, &dir, &h, false).unwrap();
        assert_eq!((m.version, m.files.len()), (3, 3));
        assert!(std::fs::metadata(dir.join("a"))
            .unwrap()
            .permissions()
            .readonly());

        // Another info-hash.
        assert!(matches!(
            verify(&path, &dir, &InfoHash([0; 20]), false),
            Err(Mismatch::OtherTorrent(_))
        ));
        // A file added (tolerated where others are allowed).
        std::fs::write(dir.join("write.lock"), b"").unwrap();
        assert!(matches!(
            verify(&path, &dir, &h, false),
            Err(Mismatch::Added(_))
        ));
        assert!(verify(&path, &dir, &h, true).is_ok());
        std::fs::remove_file(dir.join("write.lock")).unwrap();
        // A file replaced by another with the same bytes (new inode).
        std::fs::remove_file(dir.join("sub/b")).unwrap();
        std::fs::write(dir.join("sub/b"), b"bee").unwrap();
        assert!(
            matches!(verify(&path, &dir, &h, false), Err(Mismatch::Changed(p)) if p == "sub/b")
        );
        // No manifest at all.
        assert!(matches!(
            verify(&t.path().join("none"), &dir, &h, false),
            Err(Mismatch::Missing)
        ));
    }

    #[test]
    fn an_edited_file_does_not_match() {
        let (t, dir, meta) = setup();
        let path = t.path().join("v.manifest");
        Manifest::describe(&dir, &meta, None, 1)
            .unwrap()
            .save(&path)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.join("a"), vec![2u8; 20_000]).unwrap();
        assert!(matches!(
            verify(&path, &dir, &meta.info_hash, false),
            Err(Mismatch::Changed(p)) if p == "a"
        ));
    }

    #[test]
    fn hard_links_match_the_manifest_of_their_source() {
        let (t, dir, meta) = setup();
        let path = t.path().join("v.manifest");
        Manifest::describe(&dir, &meta, None, 1)
            .unwrap()
            .save(&path)
            .unwrap();
        let links = t.path().join("index.20260101000000000");
        for f in meta.files.iter().filter(|f| !f.pad) {
            let dst = links.join(rel_path(f));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::hard_link(dir.join(rel_path(f)), dst).unwrap();
        }
        assert!(verify(&path, &links, &meta.info_hash, true).is_ok());
    }
}
