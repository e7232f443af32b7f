//! Indexes: one sidecar serves several (a Solr node's cores or shards).
//!
//! An index is named `[a-z0-9][a-z0-9_-]{0,63}` and comes from one of
//! three places, flags winning over the file:
//! - the single-index form of every earlier config (`[master]
//!   snapshots_dir`, `[replica] data_dir`): one index named `default`;
//! - a `[index.<name>]` table (master keys and replica keys may share it:
//!   each sidecar reads its own);
//! - `--index NAME=DIR` (repeatable; `INDEXSWARM_<SECTION>_INDEX` takes a
//!   comma-separated list).
//!
//! Settings a table leaves out come from the section (`[master]
//! settle_secs` is every index's default). Two indexes may not share a
//! directory: they would publish (or swap) each other's data.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::replica::RawSolr;
use crate::units::ByteSize;

/// The index of the single-index form.
pub const DEFAULT_INDEX: &str = "default";

/// `[index.<name>]`: every key optional; the master reads the first group,
/// the replica the second.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIndex {
    // master
    pub snapshots_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub settle_secs: Option<u64>,
    pub marker_file: Option<String>,
    pub delete_old_snapshots: Option<bool>,
    pub piece_length: Option<ByteSize>,
    pub align_files: Option<bool>,
    pub rollout: Option<String>,
    pub canary: Option<Vec<String>>,
    pub canary_secs: Option<u64>,
    pub ready_timeout_secs: Option<u64>,
    pub min_ready: Option<f64>,
    // both
    pub keep_versions: Option<usize>,
    // replica
    pub data_dir: Option<PathBuf>,
    pub mode: Option<String>,
    pub on_swap: Option<String>,
    #[serde(default)]
    pub solr: RawSolr,
}

/// Is `name` a valid index name?
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let head = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 64
        && head(b[0])
        && b[1..].iter().all(|&c| head(c) || c == b'_' || c == b'-')
}

/// Parses `NAME=DIR` flags into (name, dir), collecting errors.
pub fn parse_flags(
    flag: &str,
    given: &[String],
    errors: &mut Vec<String>,
) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for g in given {
        match g.split_once('=') {
            Some((name, dir)) if !dir.is_empty() => {
                out.push((name.to_string(), PathBuf::from(dir)))
            }
            _ => errors.push(format!("--{flag} {g:?} must be NAME=DIR")),
        }
    }
    out
}

/// The named tables with flags merged in (a flag's directory replaces the
/// table's), in name order; `dir_of` picks the directory key the caller
/// reads, `set_dir` writes a flag's directory there.
pub fn merge(
    tables: &BTreeMap<String, RawIndex>,
    flags: Vec<(String, PathBuf)>,
    set_dir: impl Fn(&mut RawIndex, PathBuf),
    errors: &mut Vec<String>,
) -> BTreeMap<String, RawIndex> {
    let mut out = tables.clone();
    for (name, dir) in flags {
        set_dir(out.entry(name).or_default(), dir);
    }
    for name in out.keys() {
        if !valid_name(name) {
            errors.push(format!(
                "index name {name:?} must match [a-z0-9][a-z0-9_-]{{0,63}}"
            ));
        }
    }
    out
}

/// Refuses two indexes with the same directory (after resolving `..` and
/// symlinks where the directory exists).
pub fn distinct_dirs<'a>(
    what: &str,
    dirs: impl IntoIterator<Item = (&'a str, &'a PathBuf)>,
    errors: &mut Vec<String>,
) {
    let mut seen: BTreeMap<PathBuf, &str> = BTreeMap::new();
    for (name, dir) in dirs {
        let key = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if let Some(other) = seen.insert(key, name) {
            errors.push(format!(
                "indexes {other:?} and {name:?} share the {what} {}",
                dir.display()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "default",
            "products",
            "a",
            "shard-1",
            "core_2",
            &"x".repeat(64),
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Products",
            "-a",
            "_a",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(65),
            "..",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn flags_parse_and_override_tables() {
        let mut errors = Vec::new();
        let flags = parse_flags(
            "index",
            &["a=/x".into(), "bad".into(), "b=".into()],
            &mut errors,
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        let mut tables = BTreeMap::new();
        tables.insert(
            "a".to_string(),
            RawIndex {
                snapshots_dir: Some("/old".into()),
                keep_versions: Some(7),
                ..Default::default()
            },
        );
        let merged = merge(
            &tables,
            flags,
            |t, d| t.snapshots_dir = Some(d),
            &mut errors,
        );
        assert_eq!(merged["a"].snapshots_dir, Some(PathBuf::from("/x")));
        assert_eq!(
            merged["a"].keep_versions,
            Some(7),
            "the table's other keys stay"
        );
    }

    #[test]
    fn shared_directories_are_refused() {
        let mut errors = Vec::new();
        let (a, b) = (PathBuf::from("/s/one"), PathBuf::from("/s/one"));
        distinct_dirs("snapshots directory", [("x", &a), ("y", &b)], &mut errors);
        assert!(errors[0].contains("\"x\" and \"y\" share"), "{errors:?}");
    }
}
