//! `[master]` settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::collections::BTreeMap;

use super::index::{self, RawIndex, DEFAULT_INDEX};
use super::{addr, local_host_name, pick, rate, secs, ConfigError};
use crate::api::Policy;
use crate::units::ByteSize;

/// Master settings as given (file, environment or flags); all optional.
#[derive(Debug, Clone, Default, serde::Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawMaster {
    /// Where snapshot directories appear (required).
    #[arg(long, env = "INDEXSWARM_MASTER_SNAPSHOTS_DIR")]
    pub snapshots_dir: Option<PathBuf>,
    /// Versions and torrents [default: <snapshots_dir>/.indexswarm].
    #[arg(long, env = "INDEXSWARM_MASTER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// API and tracker address [default: 0.0.0.0:7070].
    #[arg(long, env = "INDEXSWARM_MASTER_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// BitTorrent address [default: 0.0.0.0:6881].
    #[arg(long, env = "INDEXSWARM_MASTER_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// How replicas reach the API, e.g. http://master:7070 [default: derived from http_listen].
    #[arg(long, env = "INDEXSWARM_MASTER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A directory unchanged this long (seconds) is complete [default: 5].
    #[arg(long, env = "INDEXSWARM_MASTER_SETTLE_SECS")]
    pub settle_secs: Option<u64>,
    /// If set, a directory is complete when this file appears in it.
    #[arg(long, env = "INDEXSWARM_MASTER_MARKER_FILE")]
    pub marker_file: Option<String>,
    /// Versions kept published and seeded [default: 3].
    #[arg(long, env = "INDEXSWARM_MASTER_KEEP_VERSIONS")]
    pub keep_versions: Option<usize>,
    /// Delete snapshot directories of versions beyond keep_versions [default: false].
    #[arg(long, env = "INDEXSWARM_MASTER_DELETE_OLD_SNAPSHOTS")]
    pub delete_old_snapshots: Option<bool>,
    /// Upload limit in bytes/s, 0 = unlimited [default: 0].
    #[arg(long, env = "INDEXSWARM_MASTER_UPLOAD_LIMIT")]
    pub upload_limit: Option<ByteSize>,
    /// If set, POST /snapshot needs "Authorization: Bearer <token>".
    #[arg(long, env = "INDEXSWARM_MASTER_API_TOKEN")]
    pub api_token: Option<String>,
    /// Piece length of published torrents [default: automatic].
    #[arg(long, env = "INDEXSWARM_MASTER_PIECE_LENGTH")]
    pub piece_length: Option<ByteSize>,
    /// Pad files to piece boundaries so replicas can reuse unchanged files [default: true].
    #[arg(long, env = "INDEXSWARM_MASTER_ALIGN_FILES")]
    pub align_files: Option<bool>,
    /// Safety-net rescan of the snapshots directory, seconds [default: 2].
    #[arg(long, env = "INDEXSWARM_MASTER_RESCAN_SECS")]
    pub rescan_secs: Option<u64>,
    /// Announce interval the tracker asks of replicas, seconds [default: 30].
    #[arg(long, env = "INDEXSWARM_MASTER_ANNOUNCE_INTERVAL_SECS")]
    pub announce_interval_secs: Option<u64>,
    /// Peer connections per version; when full an idle peer is evicted [default: 60].
    #[arg(long, env = "INDEXSWARM_MASTER_MAX_PEERS")]
    pub max_peers: Option<usize>,
    /// Peer connections per remote IP per version [default: 16].
    #[arg(long, env = "INDEXSWARM_MASTER_MAX_PEERS_PER_IP")]
    pub max_peers_per_ip: Option<usize>,
    /// Peer connections in total, across versions [default: 500].
    #[arg(long, env = "INDEXSWARM_MASTER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Background re-verification of published data, bytes/s; 0 = off [default: 32M].
    #[arg(long, env = "INDEXSWARM_MASTER_VERIFY_RATE")]
    pub verify_rate: Option<ByteSize>,
    /// Publish another index: its name and snapshots directory (repeatable;
    /// the environment variable takes a comma-separated list). More
    /// settings per index go in [index.NAME] tables of the config file.
    #[arg(
        long = "index",
        value_name = "NAME=DIR",
        env = "INDEXSWARM_MASTER_INDEX",
        value_delimiter = ','
    )]
    #[serde(skip)]
    pub index: Vec<String>,
    /// "independent" (each replica swaps when it has a version) or "fleet"
    /// (replicas stage it; the master activates it for all) [default: independent].
    #[arg(long, env = "INDEXSWARM_MASTER_ROLLOUT")]
    pub rollout: Option<String>,
    /// Fleet rollouts: replica ids that run a new version first
    /// (comma-separated).
    #[arg(long, env = "INDEXSWARM_MASTER_CANARY", value_delimiter = ',')]
    pub canary: Option<Vec<String>>,
    /// Fleet rollouts: how long the canaries run it before the rest [default: 60].
    #[arg(long, env = "INDEXSWARM_MASTER_CANARY_SECS")]
    pub canary_secs: Option<u64>,
    /// Fleet rollouts: how long to wait for every replica to stage [default: 600].
    #[arg(long, env = "INDEXSWARM_MASTER_READY_TIMEOUT_SECS")]
    pub ready_timeout_secs: Option<u64>,
    /// Fleet rollouts: after ready_timeout_secs, activate if at least this
    /// fraction of replicas staged it, 0.0-1.0 [default: 1.0].
    #[arg(long, env = "INDEXSWARM_MASTER_MIN_READY")]
    pub min_ready: Option<f64>,
    /// Closed swarm: API reads, announces and peer connections need this
    /// token (Authorization: Bearer); off when unset.
    #[arg(long, env = "INDEXSWARM_MASTER_SWARM_TOKEN")]
    pub swarm_token: Option<String>,
    /// If set, GET /metrics needs "Authorization: Bearer <token>".
    #[arg(long, env = "INDEXSWARM_MASTER_METRICS_TOKEN")]
    pub metrics_token: Option<String>,
    /// Address blocks (CIDR, comma-separated) that may connect to the peer
    /// port [default: loopback and private networks without a swarm token;
    /// only announced members with one].
    #[arg(long, env = "INDEXSWARM_MASTER_PEER_ALLOW", value_delimiter = ',')]
    pub peer_allow: Option<Vec<String>>,
    /// This node's certificate (PEM): HTTPS for the API, TLS for SSL torrents.
    #[arg(long, env = "INDEXSWARM_MASTER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of tls_cert (PEM).
    #[arg(long, env = "INDEXSWARM_MASTER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The deployment's CA certificate (PEM): trusted for https:// URLs and
    /// put in published torrents as ssl-cert (peers then speak TLS).
    #[arg(long, env = "INDEXSWARM_MASTER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// Default `verify_rate`: SHA-1 runs at 500 MB/s or more on one core, so
/// 32 MiB/s of re-hashing keeps that core over 90% idle on a 2-core box,
/// and still re-reads a 10 GB index about every five minutes.
pub const DEFAULT_VERIFY_RATE: u64 = 32 << 20;

impl RawMaster {
    /// `other` overrides `self` field by field.
    pub fn overlay(self, other: RawMaster) -> RawMaster {
        RawMaster {
            snapshots_dir: pick(self.snapshots_dir, other.snapshots_dir),
            state_dir: pick(self.state_dir, other.state_dir),
            http_listen: pick(self.http_listen, other.http_listen),
            peer_listen: pick(self.peer_listen, other.peer_listen),
            public_url: pick(self.public_url, other.public_url),
            settle_secs: pick(self.settle_secs, other.settle_secs),
            marker_file: pick(self.marker_file, other.marker_file),
            keep_versions: pick(self.keep_versions, other.keep_versions),
            delete_old_snapshots: pick(self.delete_old_snapshots, other.delete_old_snapshots),
            upload_limit: pick(self.upload_limit, other.upload_limit),
            api_token: pick(self.api_token, other.api_token),
            piece_length: pick(self.piece_length, other.piece_length),
            align_files: pick(self.align_files, other.align_files),
            rescan_secs: pick(self.rescan_secs, other.rescan_secs),
            announce_interval_secs: pick(self.announce_interval_secs, other.announce_interval_secs),
            max_peers: pick(self.max_peers, other.max_peers),
            max_peers_per_ip: pick(self.max_peers_per_ip, other.max_peers_per_ip),
            max_connections: pick(self.max_connections, other.max_connections),
            verify_rate: pick(self.verify_rate, other.verify_rate),
            index: if other.index.is_empty() {
                self.index
            } else {
                other.index
            },
            rollout: pick(self.rollout, other.rollout),
            canary: pick(self.canary, other.canary),
            canary_secs: pick(self.canary_secs, other.canary_secs),
            ready_timeout_secs: pick(self.ready_timeout_secs, other.ready_timeout_secs),
            min_ready: pick(self.min_ready, other.min_ready),
            swarm_token: pick(self.swarm_token, other.swarm_token),
            metrics_token: pick(self.metrics_token, other.metrics_token),
            peer_allow: pick(self.peer_allow, other.peer_allow),
            tls_cert: pick(self.tls_cert, other.tls_cert),
            tls_key: pick(self.tls_key, other.tls_key),
            tls_ca: pick(self.tls_ca, other.tls_ca),
        }
    }

    /// The closed-swarm settings, for validation.
    fn raw_security(&self) -> super::security::RawSecurity {
        super::security::RawSecurity {
            swarm_token: self.swarm_token.clone(),
            metrics_token: self.metrics_token.clone(),
            peer_allow: self.peer_allow.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
        }
    }

    /// Validates the section alone (one index, from `snapshots_dir`).
    pub fn validate(self) -> Result<MasterConfig, ConfigError> {
        self.validate_with(&BTreeMap::new())
    }

    /// Validates the section with the file's `[index.<name>]` tables.
    pub fn validate_with(
        self,
        tables: &BTreeMap<String, RawIndex>,
    ) -> Result<MasterConfig, ConfigError> {
        let mut errors = Vec::new();
        let indexes = self.indexes(tables, &mut errors);
        let security = self.raw_security().validate(&mut errors);
        let http_listen = addr(
            "http_listen",
            self.http_listen.as_deref().unwrap_or("0.0.0.0:7070"),
            &mut errors,
        );
        let peer_listen = addr(
            "peer_listen",
            self.peer_listen.as_deref().unwrap_or("0.0.0.0:6881"),
            &mut errors,
        );
        let public_url = match self.public_url.filter(|s| !s.trim().is_empty()) {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_string()
            }
            Some(u) => {
                errors.push(format!(
                    "public_url = {u:?} must start with http:// or https://"
                ));
                String::new()
            }
            None => derive_url(http_listen, self.tls_cert.is_some()),
        };
        // 0 has always meant "as often as possible": one second.
        let rescan =
            secs("rescan_secs", self.rescan_secs, 2, 0, &mut errors).max(Duration::from_secs(1));
        let announce_interval = secs(
            "announce_interval_secs",
            self.announce_interval_secs,
            30,
            1,
            &mut errors,
        );
        let upload_limit = rate("upload_limit", self.upload_limit, 0, &mut errors);
        let limits = super::peer_limits(
            self.max_peers,
            self.max_peers_per_ip,
            self.max_connections,
            &mut errors,
        );
        let verify_rate = rate(
            "verify_rate",
            self.verify_rate,
            DEFAULT_VERIFY_RATE,
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(MasterConfig {
            limits,
            indexes,
            http_listen,
            peer_listen,
            public_url,
            upload_limit,
            api_token: self.api_token.filter(|t| !t.is_empty()),
            rescan,
            announce_interval,
            verify_rate,
            security,
        })
    }

    /// Every index: `default` from `snapshots_dir`, then the tables and
    /// `--index` flags; the section's settings are their defaults.
    fn indexes(
        &self,
        tables: &BTreeMap<String, RawIndex>,
        errors: &mut Vec<String>,
    ) -> Vec<MasterIndex> {
        let flags = index::parse_flags("index", &self.index, errors);
        let mut named = index::merge(tables, flags, |t, d| t.snapshots_dir = Some(d), errors);
        match &self.snapshots_dir {
            Some(d) if d.as_os_str().is_empty() => errors.push("snapshots_dir is empty".into()),
            Some(_) if named.contains_key(DEFAULT_INDEX) => errors.push(format!(
                "snapshots_dir names the index {DEFAULT_INDEX:?}, which an [index.{DEFAULT_INDEX}] table or --index flag names too"
            )),
            Some(d) => {
                named.insert(
                    DEFAULT_INDEX.to_string(),
                    RawIndex {
                        snapshots_dir: Some(d.clone()),
                        state_dir: self.state_dir.clone(),
                        ..Default::default()
                    },
                );
            }
            None if named.is_empty() => {
                errors.push(
                    "snapshots_dir is required (--snapshots-dir, [master] snapshots_dir, --index NAME=DIR or [index.NAME])"
                        .into(),
                );
                // Still check the section's per-index settings, so that one
                // run lists every bad setting.
                let probe = RawIndex {
                    snapshots_dir: Some(PathBuf::from(".")),
                    ..Default::default()
                };
                let _ = self.one_index(DEFAULT_INDEX.to_string(), probe, errors);
            }
            None => {}
        }
        let out: Vec<MasterIndex> = named
            .into_iter()
            .filter_map(|(name, t)| self.one_index(name, t, errors))
            .collect();
        index::distinct_dirs(
            "snapshots directory",
            out.iter().map(|i| (i.name.as_str(), &i.snapshots_dir)),
            errors,
        );
        index::distinct_dirs(
            "state directory",
            out.iter().map(|i| (i.name.as_str(), &i.state_dir)),
            errors,
        );
        nested_dirs(&out, errors);
        out
    }

    fn one_index(
        &self,
        name: String,
        t: RawIndex,
        errors: &mut Vec<String>,
    ) -> Option<MasterIndex> {
        let rollout = self.rollout_settings(&name, &t, errors);
        let Some(snapshots_dir) = t.snapshots_dir.filter(|d| !d.as_os_str().is_empty()) else {
            errors.push(format!("[index.{name}] needs snapshots_dir"));
            return None;
        };
        let settle = secs(
            "settle_secs",
            t.settle_secs.or(self.settle_secs),
            5,
            0,
            errors,
        );
        let keep_versions = t.keep_versions.or(self.keep_versions).unwrap_or(3);
        if keep_versions == 0 {
            errors.push(format!(
                "keep_versions of index {name:?} must be at least 1"
            ));
        }
        let piece_length = t.piece_length.or(self.piece_length);
        if let Some(p) = piece_length {
            if !(16 * 1024..=64 << 20).contains(&p.0) || !p.0.is_power_of_two() {
                errors.push(format!(
                    "piece_length = {p} must be a power of two from 16K to 64M"
                ));
            }
        }
        let marker_file = t
            .marker_file
            .or_else(|| self.marker_file.clone())
            .filter(|m| !m.is_empty());
        if let Some(m) = &marker_file {
            if m.contains('/') || m == "." || m == ".." {
                errors.push(format!("marker_file = {m:?} must be a plain file name"));
            }
        }
        Some(MasterIndex {
            state_dir: t
                .state_dir
                .unwrap_or_else(|| snapshots_dir.join(".indexswarm")),
            name,
            snapshots_dir,
            settle,
            marker_file,
            keep_versions,
            delete_old_snapshots: t
                .delete_old_snapshots
                .or(self.delete_old_snapshots)
                .unwrap_or(false),
            piece_length: piece_length.map(|p| p.0),
            align_files: t.align_files.or(self.align_files).unwrap_or(true),
            rollout,
        })
    }

    /// The index's rollout policy: its table's keys, else the section's.
    fn rollout_settings(&self, name: &str, t: &RawIndex, errors: &mut Vec<String>) -> Rollout {
        let policy = match t.rollout.as_deref().or(self.rollout.as_deref()) {
            None | Some("independent") => Policy::Independent,
            Some("fleet") => Policy::Fleet,
            Some(other) => {
                errors.push(format!(
                    "rollout = {other:?} (index {name:?}) must be \"independent\" or \"fleet\""
                ));
                Policy::Independent
            }
        };
        let canary: Vec<String> = t
            .canary
            .clone()
            .or_else(|| self.canary.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        if canary.len() > MAX_CANARIES {
            errors.push(format!("canary lists more than {MAX_CANARIES} replicas"));
        }
        let min_ready = t.min_ready.or(self.min_ready).unwrap_or(1.0);
        if !(0.0..=1.0).contains(&min_ready) {
            errors.push(format!("min_ready = {min_ready} must be from 0.0 to 1.0"));
        }
        Rollout {
            policy,
            canary,
            canary_secs: secs(
                "canary_secs",
                t.canary_secs.or(self.canary_secs),
                60,
                0,
                errors,
            ),
            ready_timeout: secs(
                "ready_timeout_secs",
                t.ready_timeout_secs.or(self.ready_timeout_secs),
                600,
                1,
                errors,
            ),
            min_ready: min_ready.clamp(0.0, 1.0),
        }
    }
}

/// One index's snapshots directory inside another's would be watched (and
/// published) by both.
fn nested_dirs(indexes: &[MasterIndex], errors: &mut Vec<String>) {
    for a in indexes {
        for b in indexes {
            if a.name != b.name
                && b.snapshots_dir.starts_with(&a.snapshots_dir)
                && a.snapshots_dir != b.snapshots_dir
            {
                errors.push(format!(
                    "the snapshots directory of index {:?} is inside that of index {:?}",
                    b.name, a.name
                ));
            }
        }
    }
}

fn derive_url(listen: SocketAddr, https: bool) -> String {
    let host = if listen.ip().is_unspecified() {
        local_host_name()
    } else {
        listen.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{host}:{}", listen.port())
}

/// Most replica ids a `canary` list may name.
const MAX_CANARIES: usize = 1000;

/// How an index's versions go live.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub policy: Policy,
    /// Replica ids that activate first (fleet).
    pub canary: Vec<String>,
    pub canary_secs: Duration,
    pub ready_timeout: Duration,
    /// Fraction of replicas staged for an activation after `ready_timeout`.
    pub min_ready: f64,
}

impl Default for Rollout {
    fn default() -> Rollout {
        Rollout {
            policy: Policy::Independent,
            canary: Vec::new(),
            canary_secs: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(600),
            min_ready: 1.0,
        }
    }
}

/// One index of the master, validated.
#[derive(Debug, Clone)]
pub struct MasterIndex {
    pub name: String,
    pub snapshots_dir: PathBuf,
    pub state_dir: PathBuf,
    pub settle: Duration,
    pub marker_file: Option<String>,
    pub keep_versions: usize,
    pub delete_old_snapshots: bool,
    pub piece_length: Option<u64>,
    pub align_files: bool,
    pub rollout: Rollout,
}

/// Validated master settings.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Tokens, the peer allow-list, TLS.
    pub security: super::security::Security,
    /// In name order; at least one.
    pub indexes: Vec<MasterIndex>,
    pub http_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    /// Base URL of the API, no trailing slash.
    pub public_url: String,
    pub upload_limit: u64,
    pub api_token: Option<String>,
    pub rescan: Duration,
    pub announce_interval: Duration,
    pub limits: super::PeerLimits,
    /// Bytes/s of background re-verification of published data; 0 = off.
    pub verify_rate: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overlay() {
        let file = RawMaster {
            snapshots_dir: Some("/snap".into()),
            settle_secs: Some(9),
            ..Default::default()
        };
        let flags = RawMaster {
            settle_secs: Some(1),
            http_listen: Some("127.0.0.1:9000".into()),
            ..Default::default()
        };
        let c = file.overlay(flags).validate().unwrap();
        assert_eq!(c.indexes.len(), 1);
        let i = &c.indexes[0];
        assert_eq!(i.name, "default");
        assert_eq!(i.settle, Duration::from_secs(1));
        assert_eq!(i.state_dir, PathBuf::from("/snap/.indexswarm"));
        assert_eq!(c.public_url, "http://127.0.0.1:9000");
        assert_eq!(i.keep_versions, 3);
        assert!(i.align_files);
    }

    #[test]
    fn index_tables_and_flags_with_section_defaults() {
        let f: crate::config::ConfigFile = toml::from_str(
            "[master]\nsettle_secs = 9\nkeep_versions = 4\n\
             [index.products]\nsnapshots_dir = \"/s/products\"\nkeep_versions = 2\n\
             [index.users]\nsnapshots_dir = \"/s/users\"\nmarker_file = \"DONE\"\n",
        )
        .unwrap();
        let flags = RawMaster {
            index: vec!["logs=/s/logs".into()],
            ..Default::default()
        };
        let c = f.master.overlay(flags).validate_with(&f.index).unwrap();
        let names: Vec<&str> = c.indexes.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["logs", "products", "users"]);
        let by = |n: &str| c.indexes.iter().find(|i| i.name == n).unwrap().clone();
        assert_eq!(by("products").keep_versions, 2);
        assert_eq!(by("users").keep_versions, 4, "the section's default");
        assert_eq!(by("users").marker_file.as_deref(), Some("DONE"));
        assert_eq!(by("logs").settle, Duration::from_secs(9));
        assert_eq!(by("logs").state_dir, PathBuf::from("/s/logs/.indexswarm"));
    }

    #[test]
    fn bad_names_shared_and_nested_directories_are_refused() {
        let raw = RawMaster {
            snapshots_dir: Some("/s".into()),
            index: vec![
                "Bad=/x".into(),
                "a=/s/a".into(),
                "b=/y".into(),
                "c=/y".into(),
            ],
            ..Default::default()
        };
        let err = raw.validate().unwrap_err().to_string();
        for needle in [
            "\"Bad\" must match",
            "share the snapshots directory /y",
            "index \"a\" is inside",
        ] {
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        let none = RawMaster::default().validate().unwrap_err().to_string();
        assert!(none.contains("snapshots_dir is required"), "{none}");
    }

    #[test]
    fn reports_every_bad_setting() {
        let raw = RawMaster {
            http_listen: Some("nope".into()),
            keep_versions: Some(0),
            public_url: Some("ftp://x".into()),
            ..Default::default()
        };
        let err = raw.validate().unwrap_err().to_string();
        for needle in [
            "snapshots_dir is required",
            "http_listen",
            "keep_versions",
            "public_url",
        ] {
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
