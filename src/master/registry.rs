//! The master's version registry: which snapshot directories became which
//! version numbers, persisted as one JSON file written atomically (temp
//! file, fsync, rename, fsync of the directory), so a crash leaves either the
//! old state or the new one, never half of each.
//!
//! The state carries an `epoch`: a random id made when the state is created.
//! Version numbers only mean something within one epoch: a master whose
//! state directory was lost starts again at version 1 under a new epoch,
//! and replicas see from the epoch that "version 2" is not their version 2.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::metainfo::{FileId, InfoHash, SourceFile};
use crate::util::write_atomic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Listed and seeded.
    Published,
    /// Beyond `keep_versions`: no longer listed or seeded.
    Retired,
    /// The directory changed (or vanished) after publication: withdrawn.
    Modified,
}

/// What we saw of one file when we hashed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceRecord {
    pub path: String,
    pub length: u64,
    /// Modification time in nanoseconds since the epoch (0 if unknown).
    pub mtime_ns: u128,
    /// Device and inode when hashed (0: unknown, as in records written
    /// before they were kept); with size and mtime, the proof that lets a
    /// later snapshot's hard link reuse this file's piece hashes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ino: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SourceRecord {
    pub fn from_source(s: &SourceFile) -> SourceRecord {
        SourceRecord {
            path: s.path.join("/"),
            length: s.length,
            mtime_ns: s.mtime_ns(),
            dev: s.dev,
            ino: s.ino,
        }
    }

    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
            length: self.length,
            mtime_ns: self.mtime_ns,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    /// The snapshot directory's name inside the snapshots directory.
    pub name: String,
    pub info_hash: InfoHash,
    pub files: usize,
    pub bytes: u64,
    pub piece_length: u64,
    pub created_at: String,
    pub state: VersionState,
    #[serde(default)]
    pub note: Option<String>,
    pub sources: Vec<SourceRecord>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct RegistryFile {
    /// Random id of this state (32 hex digits); empty in files written
    /// before epochs existed, which get one when opened.
    #[serde(default)]
    epoch: String,
    next_version: u64,
    /// Shared: readers (`/versions/latest`, `/status`, `/metrics`, the
    /// integrity check, the verifier) take a reference, never a copy of a
    /// published version's file list (50,000 files are megabytes).
    #[serde(with = "shared_records")]
    versions: Vec<Arc<VersionRecord>>,
}

/// (De)serializes `Vec<Arc<VersionRecord>>` as the plain list it is on disk.
mod shared_records {
    use super::VersionRecord;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(v: &[Arc<VersionRecord>], s: S) -> Result<S::Ok, S::Error> {
        let plain: Vec<&VersionRecord> = v.iter().map(|r| &**r).collect();
        plain.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Arc<VersionRecord>>, D::Error> {
        Ok(Vec::<VersionRecord>::deserialize(d)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}

/// A new epoch: 16 random bytes as 32 lowercase hex digits.
fn new_epoch() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({message}); move it aside to start over")]
    Corrupt { path: PathBuf, message: String },
}

/// The registry's record, to change: a reader holding the old one keeps
/// it unchanged. `sources` replaces its file list (without copying the old
/// one when the record is shared).
fn edit(v: &mut Arc<VersionRecord>, sources: Option<Vec<SourceRecord>>) -> &mut VersionRecord {
    if Arc::get_mut(v).is_none() {
        let sources = match &sources {
            Some(_) => Vec::new(),
            None => v.sources.clone(),
        };
        *v = Arc::new(VersionRecord {
            version: v.version,
            name: v.name.clone(),
            info_hash: v.info_hash,
            files: v.files,
            bytes: v.bytes,
            piece_length: v.piece_length,
            created_at: v.created_at.clone(),
            state: v.state,
            note: v.note.clone(),
            sources,
        });
    }
    let rec = Arc::get_mut(v).expect("the registry's own record is not shared");
    if let Some(sources) = sources {
        rec.sources = sources;
    }
    rec
}

/// Withdrawn versions kept in the state (and in `/status`) for the operator.
const KEEP_WITHDRAWN: usize = 20;

pub struct Registry {
    dir: PathBuf,
    data: RegistryFile,
}

impl Registry {
    /// Opens (or creates) the registry in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Registry, RegistryError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Io { path, source }
        };
        std::fs::create_dir_all(state_dir.join("torrents")).map_err(io(state_dir))?;
        let file = state_dir.join("versions.json");
        let data = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                path: file.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistryFile {
                epoch: String::new(),
                next_version: 1,
                versions: Vec::new(),
            },
            Err(e) => {
                return Err(RegistryError::Io {
                    path: file,
                    source: e,
                })
            }
        };
        let mut reg = Registry {
            dir: state_dir.to_path_buf(),
            data,
        };
        if reg.data.epoch.is_empty() {
            // A new state, or one from before epochs: saved at once, so the
            // epoch is the same after a restart.
            reg.data.epoch = new_epoch();
            reg.save()?;
        }
        Ok(reg)
    }

    /// The random id of this state.
    pub fn epoch(&self) -> &str {
        &self.data.epoch
    }

    pub fn torrent_path(&self, version: u64) -> PathBuf {
        self.dir.join("torrents").join(format!("{version}.torrent"))
    }

    pub fn next_version(&self) -> u64 {
        self.data.next_version.max(1)
    }

    pub fn all(&self) -> &[Arc<VersionRecord>] {
        &self.data.versions
    }

    pub fn get(&self, version: u64) -> Option<&VersionRecord> {
        self.data
            .versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| &**v)
    }

    pub fn by_name(&self, name: &str) -> Option<&VersionRecord> {
        self.data
            .versions
            .iter()
            .rev()
            .find(|v| v.name == name)
            .map(|v| &**v)
    }

    /// Published versions, newest first: shared records, not copies.
    pub fn published(&self) -> Vec<Arc<VersionRecord>> {
        let mut v: Vec<Arc<VersionRecord>> = self
            .data
            .versions
            .iter()
            .filter(|v| v.state == VersionState::Published)
            .cloned()
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.version));
        v
    }

    /// The newest published version's number (without listing them all).
    pub fn latest_published(&self) -> Option<u64> {
        self.data
            .versions
            .iter()
            .filter(|v| v.state == VersionState::Published)
            .map(|v| v.version)
            .max()
    }

    /// Adds a version (numbered by the caller from `next_version`) and saves.
    pub fn push(&mut self, rec: VersionRecord) -> Result<(), RegistryError> {
        self.data.next_version = rec.version.saturating_add(1);
        self.data.versions.push(Arc::new(rec));
        self.save()
    }

    pub fn set_state(
        &mut self,
        version: u64,
        state: VersionState,
        note: Option<String>,
    ) -> Result<(), RegistryError> {
        if let Some(v) = self.data.versions.iter_mut().find(|v| v.version == version) {
            // Nothing reads an unpublished version's files again: keeping
            // thousands of file records per retired version would grow the
            // state with every publication.
            let keep = state == VersionState::Published;
            let v = edit(v, (!keep).then(Vec::new));
            v.state = state;
            v.note = note;
        }
        self.save()
    }

    /// Forgets versions nobody needs: retired ones whose directory is gone
    /// (while it exists, its name keeps the watcher from publishing it
    /// again), and all but the newest `KEEP_WITHDRAWN` withdrawn ones. Keeps
    /// the state's size flat however many versions are published.
    pub fn prune(&mut self, exists: impl Fn(&str) -> bool) -> Result<(), RegistryError> {
        let before = self.data.versions.len();
        let mut withdrawn = self
            .data
            .versions
            .iter()
            .filter(|v| v.state == VersionState::Modified)
            .count();
        self.data.versions.retain(|v| match v.state {
            VersionState::Published => true,
            VersionState::Retired => exists(&v.name),
            VersionState::Modified => {
                // Oldest first: drop until KEEP_WITHDRAWN remain.
                let keep = withdrawn <= KEEP_WITHDRAWN;
                withdrawn -= 1;
                keep
            }
        });
        if self.data.versions.len() == before {
            return Ok(());
        }
        self.save()
    }

    /// Records what a version's files look like now (after a rehash verified them).
    pub fn set_sources(
        &mut self,
        version: u64,
        sources: Vec<SourceRecord>,
    ) -> Result<(), RegistryError> {
        if let Some(v) = self.data.versions.iter_mut().find(|v| v.version == version) {
            edit(v, Some(sources));
        }
        self.save()
    }

    fn save(&self) -> Result<(), RegistryError> {
        let file = self.dir.join("versions.json");
        let bytes = serde_json::to_vec_pretty(&self.data).map_err(|e| RegistryError::Io {
            path: file.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&file, &bytes).map_err(|source| RegistryError::Io { path: file, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::now_rfc3339;

    fn rec(version: u64, name: &str) -> VersionRecord {
        VersionRecord {
            version,
            name: name.into(),
            info_hash: InfoHash([version as u8; 20]),
            files: 1,
            bytes: 10,
            piece_length: 16384,
            created_at: now_rfc3339(),
            state: VersionState::Published,
            note: None,
            sources: vec![],
        }
    }

    #[test]
    fn survives_reopen_and_numbers_monotonically() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Registry::open(d.path()).unwrap();
        assert_eq!(r.next_version(), 1);
        r.push(rec(1, "a")).unwrap();
        r.push(rec(2, "b")).unwrap();
        r.set_state(1, VersionState::Retired, None).unwrap();
        let r = Registry::open(d.path()).unwrap();
        assert_eq!(r.next_version(), 3);
        assert_eq!(
            r.published().iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(r.by_name("a").unwrap().state, VersionState::Retired);
    }

    #[test]
    fn retired_versions_shed_their_files_and_are_forgotten_once_their_directory_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Registry::open(d.path()).unwrap();
        for n in 1..=30 {
            let mut v = rec(n, &format!("s{n}"));
            v.sources = vec![SourceRecord {
                path: "f".into(),
                length: 1,
                mtime_ns: 1,
                dev: 0,
                ino: 0,
            }];
            r.push(v).unwrap();
        }
        for n in 1..=4 {
            r.set_state(n, VersionState::Retired, None).unwrap();
        }
        for n in 5..=29 {
            r.set_state(n, VersionState::Modified, Some("edited".into()))
                .unwrap();
        }
        assert!(r.get(1).unwrap().sources.is_empty(), "retired: no files");
        assert_eq!(r.get(30).unwrap().sources.len(), 1, "published keeps them");
        // s2's directory still exists: its name must stay known.
        r.prune(|name| name == "s2").unwrap();
        let r = Registry::open(d.path()).unwrap();
        let left: Vec<u64> = r.all().iter().map(|v| v.version).collect();
        let mut want = vec![2];
        want.extend(10..=30);
        assert_eq!(left, want, "the newest 20 withdrawn, s2, and the published");
        assert_eq!(r.next_version(), 31, "numbers are never reused");
    }

    /// #8: `/versions/latest`, `/status`, `/metrics`, the integrity check
    /// and the verifier each cloned every published record with its whole
    /// file list (megabytes at 50,000 files). They share it now.
    #[test]
    fn published_records_are_shared_not_copied() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Registry::open(d.path()).unwrap();
        for n in 1..=2 {
            let mut v = rec(n, &format!("s{n}"));
            v.sources = (0..1000)
                .map(|i| SourceRecord {
                    path: format!("_{i}.cfs"),
                    length: i,
                    mtime_ns: 1,
                    dev: 1,
                    ino: i + 1,
                })
                .collect();
            r.push(v).unwrap();
        }
        let a = r.published();
        let b = r.published();
        assert_eq!(a.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
        assert!(Arc::ptr_eq(&a[0], &b[0]) && Arc::ptr_eq(&a[1], &b[1]));
        assert_eq!(r.latest_published(), Some(2));
        // A change while a reader holds a record: the reader keeps what it
        // read, the registry has the new state.
        r.set_state(2, VersionState::Retired, None).unwrap();
        assert_eq!(a[0].state, VersionState::Published);
        assert_eq!(a[0].sources.len(), 1000);
        assert!(r.get(2).unwrap().sources.is_empty());
        assert_eq!(r.latest_published(), Some(1));
        let mut fresh = a[1].sources.clone();
        fresh.truncate(10);
        r.set_sources(1, fresh).unwrap();
        assert_eq!(a[1].sources.len(), 1000);
        drop((a, b));
        // On disk it is the plain list it always was.
        let r = Registry::open(d.path()).unwrap();
        assert_eq!(r.get(1).unwrap().sources.len(), 10);
        assert_eq!(r.get(2).unwrap().state, VersionState::Retired);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("versions.json")).unwrap())
                .unwrap();
        assert_eq!(json["versions"][0]["sources"][3]["path"], "_3.cfs");
    }

    #[test]
    fn the_epoch_is_made_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let e1 = Registry::open(d.path()).unwrap().epoch().to_string();
        assert_eq!(e1.len(), 32);
        assert!(e1.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            Registry::open(d.path()).unwrap().epoch(),
            e1,
            "saved at once"
        );
        // A state from before epochs gets one, and keeps its versions.
        let old = d.path().join("old");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(
            old.join("versions.json"),
            br#"{"next_version": 2, "versions": []}"#,
        )
        .unwrap();
        let r = Registry::open(&old).unwrap();
        let e2 = r.epoch().to_string();
        assert_eq!((e2.len(), r.next_version()), (32, 2));
        assert_ne!(e2, e1, "another state, another epoch");
        assert_eq!(Registry::open(&old).unwrap().epoch(), e2);
        // Losing the state means a new epoch.
        std::fs::remove_dir_all(d.path().join("torrents")).unwrap();
        std::fs::remove_file(d.path().join("versions.json")).unwrap();
        assert_ne!(Registry::open(d.path()).unwrap().epoch(), e1);
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_reset() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("versions.json"), b"{ not json").unwrap();
        assert!(matches!(
            Registry::open(d.path()),
            Err(RegistryError::Corrupt { .. })
        ));
    }
}
