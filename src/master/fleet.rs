//! The replicas the master has heard from: their reports
//! (`POST /replicas/report`), kept per (index, id), for `GET /replicas`,
//! for the rollout's decisions and for retention.
//!
//! Bounded: at most [`MAX_ENTRIES`] replicas. When full, a report from a
//! new replica replaces the one silent longest if that one is stale, and
//! is refused otherwise, so a flood of invented ids cannot push real
//! replicas out. A replica silent for three of its poll intervals is
//! `stale`: it no longer holds a rollout up.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::rollout::Member;
use crate::api::Report;
use crate::metainfo::InfoHash;
use crate::util::rfc3339_at_ms;

/// Most replicas remembered, across indexes.
pub const MAX_ENTRIES: usize = 10_000;
/// The interval assumed for a replica that does not say.
const DEFAULT_INTERVAL_SECS: u64 = 10;

/// A report and when it came.
#[derive(Debug, Clone)]
struct Entry {
    report: Report,
    address: Option<String>,
    last_seen: u64,
}

impl Entry {
    fn stale(&self, now: u64) -> bool {
        let interval = self.report.interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS);
        now.saturating_sub(self.last_seen) > interval.saturating_mul(3000)
    }
}

/// One row of `GET /replicas`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaRow {
    pub id: String,
    pub zone: Option<String>,
    pub address: Option<String>,
    pub index: String,
    pub live_version: Option<u64>,
    pub live_info_hash: Option<InfoHash>,
    pub staged_version: Option<u64>,
    /// The replica's own state, or `stale` when it went silent.
    pub state: String,
    pub stale: bool,
    pub progress: f64,
    pub bytes_total: u64,
    pub bytes_downloaded: u64,
    pub download_rate: u64,
    pub upload_rate: u64,
    pub bytes_uploaded: u64,
    pub peers: u64,
    /// Versions between the live one and the index's active one.
    pub lag_versions: u64,
    pub last_seen: String,
    pub last_swap_at: Option<String>,
    pub last_error: Option<String>,
    pub healthy: bool,
    pub paused: bool,
    pub free_disk: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("the master already follows {MAX_ENTRIES} replicas, none of them stale")]
pub struct FleetFull;

#[derive(Default)]
pub struct Fleet {
    entries: HashMap<(String, String), Entry>,
}

/// The report's address, with the host the request came from when the
/// replica listens on every address (or did not say).
fn address(given: Option<&str>, remote: Option<SocketAddr>) -> Option<String> {
    let remote_ip = remote.map(|r| r.ip());
    match given.and_then(|a| a.parse::<SocketAddr>().ok()) {
        Some(a) if a.ip().is_unspecified() => {
            remote_ip.map(|ip| SocketAddr::new(ip, a.port()).to_string())
        }
        Some(a) => Some(a.to_string()),
        None => given
            .map(str::to_string)
            .or_else(|| remote_ip.map(|ip| ip.to_string())),
    }
}

impl Fleet {
    /// Stores a (validated) report. Returns whether what the rollout looks
    /// at changed (versions, state, health, pause).
    pub fn record(
        &mut self,
        report: Report,
        remote: Option<SocketAddr>,
        now: u64,
    ) -> Result<bool, FleetFull> {
        let key = (report.index.clone(), report.id.clone());
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_ENTRIES {
            self.evict_stale(now)?;
        }
        let address = address(report.address.as_deref(), remote);
        let changed = match self.entries.get(&key) {
            Some(old) => {
                let o = &old.report;
                (
                    o.live_version,
                    o.staged_version,
                    &o.state,
                    o.healthy,
                    o.paused,
                ) != (
                    report.live_version,
                    report.staged_version,
                    &report.state,
                    report.healthy,
                    report.paused,
                ) || old.stale(now)
            }
            None => true,
        };
        self.entries.insert(
            key,
            Entry {
                report,
                address,
                last_seen: now,
            },
        );
        Ok(changed)
    }

    fn evict_stale(&mut self, now: u64) -> Result<(), FleetFull> {
        let oldest = self
            .entries
            .iter()
            .filter(|(_, e)| e.stale(now))
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(k, _)| k.clone())
            .ok_or(FleetFull)?;
        self.entries.remove(&oldest);
        Ok(())
    }

    /// The replicas of `index` as the rollout sees them. A version counts
    /// only under the info-hash the master published it with (`hash_of`).
    pub fn members(
        &self,
        index: &str,
        now: u64,
        hash_of: impl Fn(u64) -> Option<InfoHash>,
    ) -> Vec<Member> {
        let vouched =
            |v: Option<u64>, h: Option<InfoHash>| v.filter(|v| h.is_none() || hash_of(*v) == h);
        let mut out: Vec<Member> = self
            .entries
            .iter()
            .filter(|((i, _), _)| i == index)
            .map(|(_, e)| {
                let r = &e.report;
                Member {
                    id: r.id.clone(),
                    live: vouched(r.live_version, r.live_info_hash),
                    staged: vouched(r.staged_version, r.staged_info_hash),
                    failing: r.state == "error" || !r.healthy,
                    stale: e.stale(now),
                    paused: r.paused,
                    swapped_at: r
                        .last_swap_at
                        .as_deref()
                        .and_then(crate::util::parse_rfc3339_ms),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// `GET /replicas` rows, for one index or all, sorted by index and id;
    /// `active_of` gives an index's active version (for `lag_versions`).
    pub fn rows(
        &self,
        index: Option<&str>,
        now: u64,
        active_of: impl Fn(&str) -> Option<u64>,
    ) -> Vec<ReplicaRow> {
        let mut out: Vec<ReplicaRow> = self
            .entries
            .iter()
            .filter(|((i, _), _)| index.is_none_or(|want| want == i))
            .map(|((i, _), e)| {
                let r = &e.report;
                let stale = e.stale(now);
                let lag = match (active_of(i), r.live_version) {
                    (Some(a), Some(l)) => a.saturating_sub(l),
                    (Some(a), None) => a,
                    (None, _) => 0,
                };
                ReplicaRow {
                    id: r.id.clone(),
                    zone: r.zone.clone().filter(|z| !z.is_empty()),
                    address: e.address.clone(),
                    index: i.clone(),
                    live_version: r.live_version,
                    live_info_hash: r.live_info_hash,
                    staged_version: r.staged_version,
                    state: if stale {
                        "stale".into()
                    } else {
                        r.state.clone()
                    },
                    stale,
                    progress: r.progress,
                    bytes_total: r.bytes_total,
                    bytes_downloaded: r.bytes_downloaded,
                    download_rate: r.download_rate,
                    upload_rate: r.upload_rate,
                    bytes_uploaded: r.bytes_uploaded,
                    peers: r.peers,
                    lag_versions: lag,
                    last_seen: rfc3339_at_ms(e.last_seen),
                    last_swap_at: r.last_swap_at.clone(),
                    last_error: r.last_error.clone(),
                    healthy: r.healthy,
                    paused: r.paused,
                    free_disk: r.free_disk,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.index, &a.id).cmp(&(&b.index, &b.id)));
        out
    }

    /// Versions of `index` that live replicas run or staged: retention keeps them.
    pub fn in_use(&self, index: &str, now: u64) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|((i, _), e)| i == index && !e.stale(now))
            .flat_map(|(_, e)| [e.report.live_version, e.report.staged_version])
            .flatten()
            .collect()
    }

    /// Bytes the replicas of `index` served to peers (as last reported).
    pub fn uploaded(&self, index: &str) -> u64 {
        self.entries
            .iter()
            .filter(|((i, _), _)| i == index)
            .fold(0u64, |sum, (_, e)| {
                sum.saturating_add(e.report.bytes_uploaded)
            })
    }

    /// Replicas of `index` by state (`stale` for silent ones).
    pub fn count_by_state(&self, index: &str, now: u64) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for ((i, _), e) in &self.entries {
            if i == index {
                let state = if e.stale(now) {
                    "stale"
                } else {
                    e.report.state.as_str()
                };
                *out.entry(state.to_string()).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, live: Option<u64>) -> Report {
        serde_json::from_value::<Report>(serde_json::json!({
            "id": id, "index": "default", "state": "idle",
            "live_version": live, "interval_secs": 1, "address": "0.0.0.0:7071"
        }))
        .unwrap()
    }

    #[test]
    fn rows_members_and_staleness() {
        let mut f = Fleet::default();
        let remote: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        assert!(f.record(report("a", Some(1)), Some(remote), 0).unwrap());
        assert!(!f.record(report("a", Some(1)), Some(remote), 500).unwrap());
        assert!(f.record(report("b", None), None, 1000).unwrap());
        let rows = f.rows(None, 1000, |_| Some(3));
        assert_eq!(rows[0].address.as_deref(), Some("10.0.0.5:7071"));
        assert_eq!((rows[0].lag_versions, rows[1].lag_versions), (2, 3));
        // Three intervals of silence: stale.
        let rows = f.rows(None, 3600, |_| None);
        assert_eq!((rows[0].state.as_str(), rows[0].stale), ("stale", true));
        let m = f.members("default", 3600, |_| None);
        assert!(m[0].stale && !m[1].stale);
        assert_eq!(
            f.in_use("default", 3600),
            Vec::<u64>::new(),
            "b runs nothing, a is stale"
        );
    }

    #[test]
    fn a_version_counts_only_under_its_published_info_hash() {
        let mut f = Fleet::default();
        let mut r = report("a", Some(2));
        r.live_info_hash = Some(InfoHash([9; 20]));
        f.record(r, None, 0).unwrap();
        assert_eq!(
            f.members("default", 0, |_| Some(InfoHash([1; 20])))[0].live,
            None
        );
        assert_eq!(
            f.members("default", 0, |_| Some(InfoHash([9; 20])))[0].live,
            Some(2)
        );
    }

    #[test]
    fn a_full_fleet_replaces_only_stale_replicas() {
        let mut f = Fleet::default();
        for i in 0..MAX_ENTRIES {
            f.record(report(&format!("r{i}"), None), None, 0).unwrap();
        }
        assert!(
            f.record(report("new", None), None, 1000).is_err(),
            "none stale"
        );
        assert!(
            f.record(report("new", None), None, 10_000).is_ok(),
            "stale ones go"
        );
        assert_eq!(f.len(), MAX_ENTRIES);
    }
}
