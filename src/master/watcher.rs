//! Deciding when a snapshot directory is complete.
//!
//! Solr writes a `snapshot.<yyyyMMddHHmmssSSS>` directory in place, with no
//! completion marker, so a name alone never means "complete". A candidate is
//! ready when a configured marker file appears in it, or, without a marker,
//! when its fingerprint (every file's path, size and mtime) has stayed the
//! same for the settle interval. `notify` events only make us look sooner;
//! the periodic rescan is what decides, because inotify can drop events
//! under load and does not work on some network file systems.
//!
//! This file holds the pure bookkeeping (`Settler`, tested with explicit
//! instants) and the filesystem reads it needs.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use tokio::time::Instant;

/// Every file's relative path, size and mtime (ns), sorted.
pub type Fingerprint = Vec<(String, u64, u128)>;

/// Reads a directory's fingerprint; `None` if it vanished or cannot be read.
pub fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let e = e.ok()?;
        if !e.file_type().is_file() {
            continue;
        }
        let md = e.metadata().ok()?;
        let mtime = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let rel = e
            .path()
            .strip_prefix(dir)
            .ok()?
            .to_string_lossy()
            .into_owned();
        out.push((rel, md.len(), mtime));
    }
    out.sort();
    Some(out)
}

/// How long since anything in a fingerprint last changed (its newest mtime).
pub fn quiet_for(fp: &Fingerprint) -> std::time::Duration {
    let newest = fp.iter().map(|f| f.2).max().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::time::Duration::from_nanos(now.saturating_sub(newest).min(u64::MAX as u128) as u64)
}

/// Names we never treat as snapshots: hidden entries and temporaries, and
/// the live parts of a Solr data directory (`index`, `index.<timestamp>`,
/// `tlog`, `snapshot_metadata`), because Solr writes its `snapshot.*`
/// backups into that same directory by default.
pub fn ignored(name: &str) -> bool {
    let solr_internal = matches!(name, "index" | "tlog" | "snapshot_metadata")
        || name
            .strip_prefix("index.")
            .is_some_and(|ts| !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit()));
    name.starts_with('.')
        || name.ends_with(".tmp")
        || name.ends_with(".partial")
        || name.ends_with('~')
        || solr_internal
}

/// The timestamp in a Solr snapshot name (`snapshot.20261124133000123`).
pub fn solr_timestamp(name: &str) -> Option<u64> {
    let ts = name.strip_prefix("snapshot.")?;
    (ts.len() >= 14 && ts.bytes().all(|b| b.is_ascii_digit()))
        .then(|| ts.parse().ok())
        .flatten()
}

/// Direct subdirectories of `dir` that are snapshot candidates.
pub fn list_dirs(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !ignored(n))
        .collect();
    out.sort();
    out
}

/// One look at a candidate directory.
#[derive(Debug, Clone)]
pub struct Observation {
    pub name: String,
    /// `None`: vanished or unreadable.
    pub fingerprint: Option<Fingerprint>,
    pub has_marker: bool,
}

struct Candidate {
    fingerprint: Fingerprint,
    since: Instant,
}

/// Tracks candidates between scans and says which became ready.
pub struct Settler {
    settle: Duration,
    marker: bool,
    candidates: HashMap<String, Candidate>,
}

impl Settler {
    pub fn new(settle: Duration, marker: bool) -> Settler {
        Settler {
            settle,
            marker,
            candidates: HashMap::new(),
        }
    }

    /// Feeds one scan; returns the names ready to publish, oldest first
    /// (Solr timestamp when the name has one, then name).
    pub fn observe(&mut self, now: Instant, seen: Vec<Observation>) -> Vec<String> {
        let present: std::collections::HashSet<&str> =
            seen.iter().map(|o| o.name.as_str()).collect();
        self.candidates
            .retain(|name, _| present.contains(name.as_str()));
        let mut ready = Vec::new();
        for o in seen {
            let Some(fp) = o.fingerprint else {
                // Vanished before it settled: forget it, no error.
                self.candidates.remove(&o.name);
                continue;
            };
            if fp.is_empty() {
                self.candidates.remove(&o.name);
                continue;
            }
            if self.marker {
                if o.has_marker {
                    ready.push(o.name);
                }
                continue;
            }
            match self.candidates.get_mut(&o.name) {
                Some(c) if c.fingerprint == fp => {
                    if now.duration_since(c.since) >= self.settle {
                        ready.push(o.name);
                    }
                }
                Some(c) => {
                    c.fingerprint = fp;
                    c.since = now;
                }
                None => {
                    self.candidates.insert(
                        o.name,
                        Candidate {
                            fingerprint: fp,
                            since: now,
                        },
                    );
                }
            }
        }
        ready.sort_by(|a, b| (solr_timestamp(a), a).cmp(&(solr_timestamp(b), b)));
        ready
    }

    /// Starts a candidate's settle clock again (its publication failed or it changed while hashing).
    pub fn reset(&mut self, name: &str) {
        self.candidates.remove(name);
    }

    /// Candidates still settling, with how long until they could be ready.
    pub fn pending(&self, now: Instant) -> Vec<(String, Duration)> {
        let mut v: Vec<(String, Duration)> = self
            .candidates
            .iter()
            .map(|(n, c)| {
                (
                    n.clone(),
                    self.settle.saturating_sub(now.duration_since(c.since)),
                )
            })
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(name: &str, files: &[(&str, u64)]) -> Observation {
        Observation {
            name: name.into(),
            fingerprint: Some(files.iter().map(|(p, s)| (p.to_string(), *s, 1)).collect()),
            has_marker: false,
        }
    }

    #[test]
    fn ready_only_after_unchanged_for_the_settle_interval() {
        let t0 = Instant::now();
        let s5 = Duration::from_secs(5);
        let mut s = Settler::new(s5, false);
        assert!(s.observe(t0, vec![obs("a", &[("x", 1)])]).is_empty());
        // A file grows: the clock restarts.
        assert!(s
            .observe(t0 + Duration::from_secs(4), vec![obs("a", &[("x", 2)])])
            .is_empty());
        assert!(s
            .observe(t0 + Duration::from_secs(8), vec![obs("a", &[("x", 2)])])
            .is_empty());
        assert_eq!(
            s.observe(t0 + Duration::from_secs(9), vec![obs("a", &[("x", 2)])]),
            vec!["a"]
        );
    }

    #[test]
    fn vanished_and_empty_directories_are_dropped() {
        let t0 = Instant::now();
        let mut s = Settler::new(Duration::from_secs(1), false);
        s.observe(t0, vec![obs("a", &[("x", 1)]), obs("e", &[])]);
        let gone = Observation {
            name: "a".into(),
            fingerprint: None,
            has_marker: false,
        };
        assert!(s
            .observe(t0 + Duration::from_secs(5), vec![gone, obs("e", &[])])
            .is_empty());
        assert!(s.pending(t0).is_empty());
    }

    #[test]
    fn marker_mode_waits_for_the_marker_only() {
        let t0 = Instant::now();
        let mut s = Settler::new(Duration::from_secs(5), true);
        assert!(s.observe(t0, vec![obs("a", &[("x", 1)])]).is_empty());
        let mut o = obs("a", &[("x", 1)]);
        o.has_marker = true;
        assert_eq!(s.observe(t0, vec![o]), vec!["a"]);
    }

    #[test]
    fn solr_snapshots_settling_together_publish_in_timestamp_order() {
        let t0 = Instant::now();
        let mut s = Settler::new(Duration::from_secs(1), false);
        let names = [
            "snapshot.20261124133000123",
            "snapshot.20261124120000000",
            "other",
        ];
        let scan = || {
            names
                .iter()
                .map(|n| obs(n, &[("f", 1)]))
                .collect::<Vec<_>>()
        };
        s.observe(t0, scan());
        let ready = s.observe(t0 + Duration::from_secs(2), scan());
        assert_eq!(
            ready,
            vec![
                "other",
                "snapshot.20261124120000000",
                "snapshot.20261124133000123"
            ]
        );
        assert_eq!(
            solr_timestamp("snapshot.20261124133000123"),
            Some(20261124133000123)
        );
        assert_eq!(solr_timestamp("snapshot.x"), None);
        assert!(ignored(".hidden") && ignored("x.tmp") && !ignored("snapshot.1"));
        for solr in [
            "index",
            "tlog",
            "snapshot_metadata",
            "index.20261124133000123",
        ] {
            assert!(
                ignored(solr),
                "{solr} is part of a live Solr data directory"
            );
        }
        assert!(!ignored("index.v2") && !ignored("indexes"));
    }
}
