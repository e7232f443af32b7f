//! The JSON the master and the replicas exchange, in one place both import:
//! a version as the replica needs it, the replica's report
//! (`POST /replicas/report`) and the rollout view (`GET /rollout`).
//!
//! Everything read from the network is bounded and checked here before
//! anyone acts on it: a report is at most [`MAX_REPORT_BYTES`], its id and
//! zone are short plain names, its numbers are clamped, its error text is
//! cut. Unknown fields are ignored in both directions, so either side may
//! be newer than the other.

use crate::metainfo::InfoHash;

/// The fields of a master's version object a replica relies on (extra
/// fields are ignored, so masters may add more).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionRef {
    pub version: u64,
    pub info_hash: InfoHash,
    pub torrent_url: String,
    /// Absent from masters older than epochs.
    #[serde(default)]
    pub epoch: Option<String>,
}

impl VersionRef {
    /// Refuses an epoch that is not a short id (it is stored on disk and
    /// compared, nothing else; a hostile one must stay small).
    pub fn check(&self) -> Result<(), String> {
        match &self.epoch {
            Some(e)
                if e.is_empty()
                    || e.len() > 64
                    || !e.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Err(format!(
                    "version {}: epoch {:?} is not an id of 1 to 64 letters and digits",
                    self.version,
                    e.chars().take(80).collect::<String>()
                ))
            }
            _ => Ok(()),
        }
    }
}

/// How an index's versions go live (master setting `rollout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Each replica swaps as soon as it has the newest version.
    Independent,
    /// Replicas stage the new version; the master activates it for all.
    Fleet,
}

/// Where a rollout stands (`GET /rollout` `phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Replicas download and stage the version.
    Staging,
    /// The canaries run it; the rest wait for `canary_secs`.
    Canary,
    /// Every replica is told to swap.
    Activating,
    /// Every replica runs it.
    Done,
    /// Too few replicas staged it within `ready_timeout_secs`.
    Stuck,
    /// The operator paused the rollout.
    Paused,
    /// A canary failed; the canaries went back to the previous version.
    RolledBack,
}

/// Largest `POST /replicas/report` body the master reads.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Longest `last_error` kept from a report.
const MAX_ERROR_CHARS: usize = 1024;

/// What a replica tells the master about one index it follows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub id: String,
    #[serde(default)]
    pub zone: Option<String>,
    pub index: String,
    /// The replica's API, `host:port` (the master fills in the host when
    /// the replica listens on every address).
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub live_version: Option<u64>,
    #[serde(default)]
    pub live_info_hash: Option<InfoHash>,
    #[serde(default)]
    pub staged_version: Option<u64>,
    #[serde(default)]
    pub staged_info_hash: Option<InfoHash>,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub progress: f64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub bytes_downloaded: u64,
    #[serde(default)]
    pub download_rate: u64,
    #[serde(default)]
    pub upload_rate: u64,
    /// Payload bytes this replica served to its peers, in total.
    #[serde(default)]
    pub bytes_uploaded: u64,
    #[serde(default)]
    pub peers: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub free_disk: Option<u64>,
    #[serde(default)]
    pub paused: bool,
    /// The replica's `health_check` passed (true when it has none).
    #[serde(default = "yes")]
    pub healthy: bool,
    #[serde(default)]
    pub last_swap_at: Option<String>,
    /// The replica's poll interval: silent for three of them is stale.
    #[serde(default)]
    pub interval_secs: Option<u64>,
    #[serde(default)]
    pub epoch: Option<String>,
}

fn yes() -> bool {
    true
}

/// States a replica may report; anything else is stored as `unknown`.
const STATES: &[&str] = &[
    "idle",
    "downloading",
    "verifying",
    "swapping",
    "staged",
    "error",
];

/// A plain name: 1–`max` of letters, digits, `.`, `_`, `-`, `:` (replica
/// ids and zones, here and in the replica's config).
pub fn plain_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// The first `max` characters of `s`.
fn cut(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s,
    }
}

impl Report {
    /// Checks the names, clamps what is out of range, cuts long text.
    pub fn validate(mut self) -> Result<Report, String> {
        if !plain_name(&self.id, 128) {
            return Err("id must be 1-128 letters, digits, '.', '_', '-' or ':'".into());
        }
        if let Some(z) = &self.zone {
            if !z.is_empty() && !plain_name(z, 64) {
                return Err("zone must be 0-64 letters, digits, '.', '_', '-' or ':'".into());
            }
        }
        if !plain_name(&self.index, 64) {
            return Err("index must be an index name".into());
        }
        if let Some(a) = &self.address {
            if a.len() > 256 || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err("address must be host:port".into());
            }
        }
        if let Some(e) = &self.epoch {
            if !plain_name(e, 64) {
                return Err("epoch must be a short id".into());
            }
        }
        if !STATES.contains(&self.state.as_str()) {
            self.state = "unknown".into();
        }
        self.progress = if self.progress.is_finite() {
            self.progress.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.last_error = self.last_error.map(|e| cut(e, MAX_ERROR_CHARS));
        self.last_swap_at = self
            .last_swap_at
            .filter(|t| crate::util::parse_rfc3339_ms(t).is_some());
        self.interval_secs = self.interval_secs.map(|s| s.clamp(1, 86_400));
        Ok(self)
    }
}

/// `GET /rollout`: where an index's rollout stands; with `?id=`, also what
/// that replica should stage and have live.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RolloutView {
    pub index: String,
    pub policy: Policy,
    /// Changes whenever anything here changes; `?generation=G&wait=S`
    /// answers once it differs from G (or after S seconds).
    pub generation: u64,
    /// The version being (or last) rolled out.
    pub version: Option<u64>,
    pub phase: Option<Phase>,
    /// The version the fleet runs.
    pub active_version: Option<u64>,
    pub latest_version: Option<u64>,
    pub paused: bool,
    /// An operator activated a version: new versions wait for `resume`.
    pub pinned: bool,
    /// Replicas that staged (or run) the version.
    pub ready: Vec<String>,
    /// Replicas that run it.
    pub active: Vec<String>,
    /// Replicas holding the rollout up.
    pub laggards: Vec<String>,
    pub started_at: Option<String>,
    pub canary_at: Option<String>,
    pub activated_at: Option<String>,
    pub done_at: Option<String>,
    /// Last replica's swap minus the first's, for the last activation.
    pub swap_skew_seconds: Option<f64>,
    /// Why the rollout is stuck or was rolled back.
    pub note: Option<String>,
    /// For `?id=`: the version that replica should have live.
    #[serde(default)]
    pub target: Option<VersionRef>,
    /// For `?id=`: the version that replica should download and stage.
    #[serde(default)]
    pub stage: Option<VersionRef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(json: &str) -> Result<Report, String> {
        serde_json::from_str::<Report>(json)
            .map_err(|e| e.to_string())
            .and_then(Report::validate)
    }

    #[test]
    fn reports_are_checked_clamped_and_cut() {
        let r = report(r#"{"id":"r1","index":"default","state":"staged","progress":7}"#).unwrap();
        assert_eq!(
            (r.progress, r.state.as_str(), r.healthy),
            (1.0, "staged", true)
        );
        let r = report(&format!(
            r#"{{"id":"r1","index":"i","state":"dancing","last_error":"{}","interval_secs":0,"last_swap_at":"soon"}}"#,
            "x".repeat(5000)
        ))
        .unwrap();
        assert_eq!(r.state, "unknown");
        assert_eq!(r.last_error.unwrap().len(), MAX_ERROR_CHARS);
        assert_eq!(r.interval_secs, Some(1));
        assert_eq!(r.last_swap_at, None);
        for bad in [
            r#"{"id":"","index":"i"}"#,
            r#"{"id":"a b","index":"i"}"#,
            r#"{"id":"a","index":"i","zone":"z/1"}"#,
            r#"{"id":"a","index":"../x"}"#,
            r#"{"id":"a","index":"i","address":"h p"}"#,
        ] {
            assert!(report(bad).is_err(), "{bad}");
        }
        assert!(report(&format!(r#"{{"id":"{}","index":"i"}}"#, "a".repeat(129))).is_err());
    }
}
