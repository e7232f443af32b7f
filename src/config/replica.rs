//! `[replica]` and `[replica.solr]` settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::collections::BTreeMap;

use super::index::{self, RawIndex, DEFAULT_INDEX};
use super::{addr, pick, rate, secs, ConfigError};
use crate::api::plain_name;
use crate::units::ByteSize;

/// `[replica.solr]`, for `mode = "solr"`.
#[derive(Debug, Clone, Default, serde::Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawSolr {
    /// The core's data directory (holds index.properties).
    #[arg(
        long = "solr-core-data-dir",
        env = "INDEXSWARM_REPLICA_SOLR_CORE_DATA_DIR"
    )]
    pub core_data_dir: Option<PathBuf>,
    /// Core-admin API [default: http://localhost:8983/solr/admin/cores].
    #[arg(
        long = "solr-core-admin-url",
        env = "INDEXSWARM_REPLICA_SOLR_CORE_ADMIN_URL"
    )]
    pub core_admin_url: Option<String>,
    /// The core to RELOAD after a swap.
    #[arg(long = "solr-core", env = "INDEXSWARM_REPLICA_SOLR_CORE")]
    pub core: Option<String>,
}

/// Replica settings as given; all optional.
#[derive(Debug, Clone, Default, serde::Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawReplica {
    /// The master's API, e.g. http://master:7070 (required).
    #[arg(long, env = "INDEXSWARM_REPLICA_MASTER_URL")]
    pub master_url: Option<String>,
    /// Holds current -> versions/<n> (required).
    #[arg(long, env = "INDEXSWARM_REPLICA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Status API address [default: 0.0.0.0:7071].
    #[arg(long, env = "INDEXSWARM_REPLICA_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// BitTorrent address [default: 0.0.0.0:6882].
    #[arg(long, env = "INDEXSWARM_REPLICA_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// Seconds between polls of the master, ±20% jitter [default: 10].
    #[arg(long, env = "INDEXSWARM_REPLICA_POLL_INTERVAL_SECS")]
    pub poll_interval_secs: Option<u64>,
    /// Old versions kept on disk for rollback [default: 2].
    #[arg(long, env = "INDEXSWARM_REPLICA_KEEP_VERSIONS")]
    pub keep_versions: Option<usize>,
    /// "symlink" or "solr" [default: symlink].
    #[arg(long, env = "INDEXSWARM_REPLICA_MODE")]
    pub mode: Option<String>,
    /// Run after each swap: a shell command, or an http(s):// URL to POST to.
    #[arg(long, env = "INDEXSWARM_REPLICA_ON_SWAP")]
    pub on_swap: Option<String>,
    /// Download limit in bytes/s, 0 = unlimited [default: 0].
    #[arg(long, env = "INDEXSWARM_REPLICA_DOWNLOAD_LIMIT")]
    pub download_limit: Option<ByteSize>,
    /// Upload limit in bytes/s, 0 = unlimited [default: 0].
    #[arg(long, env = "INDEXSWARM_REPLICA_UPLOAD_LIMIT")]
    pub upload_limit: Option<ByteSize>,
    /// Keep seeding a replaced version this many seconds [default: 300].
    #[arg(long, env = "INDEXSWARM_REPLICA_SEED_OLD_SECS")]
    pub seed_old_secs: Option<u64>,
    /// A download with no verified piece for this long reports `stalled: <why>`
    /// in /status and re-announces and redials [default: 60].
    #[arg(long, env = "INDEXSWARM_REPLICA_STALL_SECS")]
    pub stall_secs: Option<u64>,
    /// Peer connections per version; when full an idle peer is evicted [default: 60].
    #[arg(long, env = "INDEXSWARM_REPLICA_MAX_PEERS")]
    pub max_peers: Option<usize>,
    /// Peer connections per remote IP per version [default: 16].
    #[arg(long, env = "INDEXSWARM_REPLICA_MAX_PEERS_PER_IP")]
    pub max_peers_per_ip: Option<usize>,
    /// Peer connections in total, across versions [default: 500].
    #[arg(long, env = "INDEXSWARM_REPLICA_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    #[command(flatten)]
    #[serde(default)]
    pub solr: RawSolr,
    /// Follow another index of the master into its own data directory
    /// (repeatable; the environment variable takes a comma-separated list).
    /// More settings per index go in [index.NAME] tables.
    #[arg(
        long = "index",
        value_name = "NAME=DATA_DIR",
        env = "INDEXSWARM_REPLICA_INDEX",
        value_delimiter = ','
    )]
    #[serde(skip)]
    pub index: Vec<String>,
    /// This replica's name in the master's /replicas [default: the host name].
    #[arg(long, env = "INDEXSWARM_REPLICA_ID")]
    pub id: Option<String>,
    /// Where this replica runs (a rack, zone or data centre), for /replicas.
    #[arg(long, env = "INDEXSWARM_REPLICA_ZONE")]
    pub zone: Option<String>,
    /// /readyz answers 503 when the live version is more than this many
    /// versions behind the master's active one [default: 1].
    #[arg(long, env = "INDEXSWARM_REPLICA_MAX_LAG_VERSIONS")]
    pub max_lag_versions: Option<u64>,
    /// Checked after each swap and every poll interval: a shell command
    /// (exit 0 = healthy) or an http(s):// URL (2xx = healthy). A failing
    /// canary makes a fleet rollout roll back.
    #[arg(long, env = "INDEXSWARM_REPLICA_HEALTH_CHECK")]
    pub health_check: Option<String>,
    /// Wait for the master's changes with a long poll (answered the moment
    /// a version is published or activated); false polls every interval,
    /// for proxies that cut idle requests [default: true].
    #[arg(long, env = "INDEXSWARM_REPLICA_LONG_POLL")]
    pub long_poll: Option<bool>,
    /// Closed swarm: API reads, announces and peer connections need this
    /// token (Authorization: Bearer); off when unset.
    #[arg(long, env = "INDEXSWARM_REPLICA_SWARM_TOKEN")]
    pub swarm_token: Option<String>,
    /// If set, GET /metrics needs "Authorization: Bearer <token>".
    #[arg(long, env = "INDEXSWARM_REPLICA_METRICS_TOKEN")]
    pub metrics_token: Option<String>,
    /// Address blocks (CIDR, comma-separated) that may connect to the peer
    /// port [default: loopback and private networks without a swarm token;
    /// only announced members with one].
    #[arg(long, env = "INDEXSWARM_REPLICA_PEER_ALLOW", value_delimiter = ',')]
    pub peer_allow: Option<Vec<String>>,
    /// This node's certificate (PEM): HTTPS for the API, TLS for SSL torrents.
    #[arg(long, env = "INDEXSWARM_REPLICA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of tls_cert (PEM).
    #[arg(long, env = "INDEXSWARM_REPLICA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The deployment's CA certificate (PEM): trusted for https:// URLs and
    /// put in published torrents as ssl-cert (peers then speak TLS).
    #[arg(long, env = "INDEXSWARM_REPLICA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl RawReplica {
    pub fn overlay(self, o: RawReplica) -> RawReplica {
        RawReplica {
            master_url: pick(self.master_url, o.master_url),
            data_dir: pick(self.data_dir, o.data_dir),
            http_listen: pick(self.http_listen, o.http_listen),
            peer_listen: pick(self.peer_listen, o.peer_listen),
            poll_interval_secs: pick(self.poll_interval_secs, o.poll_interval_secs),
            keep_versions: pick(self.keep_versions, o.keep_versions),
            mode: pick(self.mode, o.mode),
            on_swap: pick(self.on_swap, o.on_swap),
            download_limit: pick(self.download_limit, o.download_limit),
            upload_limit: pick(self.upload_limit, o.upload_limit),
            seed_old_secs: pick(self.seed_old_secs, o.seed_old_secs),
            stall_secs: pick(self.stall_secs, o.stall_secs),
            max_peers: pick(self.max_peers, o.max_peers),
            max_peers_per_ip: pick(self.max_peers_per_ip, o.max_peers_per_ip),
            max_connections: pick(self.max_connections, o.max_connections),
            solr: RawSolr {
                core_data_dir: pick(self.solr.core_data_dir, o.solr.core_data_dir),
                core_admin_url: pick(self.solr.core_admin_url, o.solr.core_admin_url),
                core: pick(self.solr.core, o.solr.core),
            },
            index: if o.index.is_empty() {
                self.index
            } else {
                o.index
            },
            id: pick(self.id, o.id),
            zone: pick(self.zone, o.zone),
            max_lag_versions: pick(self.max_lag_versions, o.max_lag_versions),
            health_check: pick(self.health_check, o.health_check),
            long_poll: pick(self.long_poll, o.long_poll),
            swarm_token: pick(self.swarm_token, o.swarm_token),
            metrics_token: pick(self.metrics_token, o.metrics_token),
            peer_allow: pick(self.peer_allow, o.peer_allow),
            tls_cert: pick(self.tls_cert, o.tls_cert),
            tls_key: pick(self.tls_key, o.tls_key),
            tls_ca: pick(self.tls_ca, o.tls_ca),
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

    /// Validates the section alone (one index, from `data_dir`).
    pub fn validate(self) -> Result<ReplicaSetConfig, ConfigError> {
        self.validate_with(&BTreeMap::new())
    }

    /// Validates the section with the file's `[index.<name>]` tables.
    pub fn validate_with(
        self,
        tables: &BTreeMap<String, RawIndex>,
    ) -> Result<ReplicaSetConfig, ConfigError> {
        let mut errors = Vec::new();
        let master_url = match self.master_url.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_string()
            }
            Some(u) => {
                errors.push(format!(
                    "master_url = {u:?} must start with http:// or https://"
                ));
                String::new()
            }
            None => {
                errors.push("master_url is required (--master-url or [replica] master_url)".into());
                String::new()
            }
        };
        let http_listen = addr(
            "http_listen",
            self.http_listen.as_deref().unwrap_or("0.0.0.0:7071"),
            &mut errors,
        );
        let peer_listen = addr(
            "peer_listen",
            self.peer_listen.as_deref().unwrap_or("0.0.0.0:6882"),
            &mut errors,
        );
        let shared = Shared {
            master_url,
            poll_interval: secs(
                "poll_interval_secs",
                self.poll_interval_secs,
                10,
                1,
                &mut errors,
            ),
            seed_old: secs("seed_old_secs", self.seed_old_secs, 300, 0, &mut errors),
            stall: secs("stall_secs", self.stall_secs, 60, 1, &mut errors),
            long_poll: self.long_poll.unwrap_or(true),
            security: self.raw_security().validate(&mut errors),
            limits: super::peer_limits(
                self.max_peers,
                self.max_peers_per_ip,
                self.max_connections,
                &mut errors,
            ),
            http_listen,
            peer_listen,
            download_limit: rate("download_limit", self.download_limit, 0, &mut errors),
            upload_limit: rate("upload_limit", self.upload_limit, 0, &mut errors),
            fleet: self.fleet_identity(&mut errors),
        };
        let indexes = self.indexes(&shared, tables, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(ReplicaSetConfig {
            security: shared.security.clone(),
            http_listen,
            peer_listen,
            download_limit: shared.download_limit,
            upload_limit: shared.upload_limit,
            limits: shared.limits,
            indexes,
        })
    }

    /// Every index followed: `default` from `data_dir`, then the tables
    /// and `--index` flags, with the section's settings as defaults.
    fn indexes(
        &self,
        shared: &Shared,
        tables: &BTreeMap<String, RawIndex>,
        errors: &mut Vec<String>,
    ) -> Vec<ReplicaConfig> {
        let flags = index::parse_flags("index", &self.index, errors);
        let mut named = index::merge(tables, flags, |t, d| t.data_dir = Some(d), errors);
        match &self.data_dir {
            Some(d) if d.as_os_str().is_empty() => errors.push("data_dir is empty".into()),
            Some(_) if named.contains_key(DEFAULT_INDEX) => errors.push(format!(
                "data_dir names the index {DEFAULT_INDEX:?}, which an [index.{DEFAULT_INDEX}] table or --index flag names too"
            )),
            Some(d) => {
                named.insert(
                    DEFAULT_INDEX.to_string(),
                    RawIndex {
                        data_dir: Some(d.clone()),
                        ..Default::default()
                    },
                );
            }
            None if named.is_empty() => errors.push(
                "data_dir is required (--data-dir, [replica] data_dir, --index NAME=DATA_DIR or [index.NAME])"
                    .into(),
            ),
            None => {}
        }
        let out: Vec<ReplicaConfig> = named
            .into_iter()
            .filter_map(|(name, t)| self.one_index(shared, name, t, errors))
            .collect();
        index::distinct_dirs(
            "data directory",
            out.iter().map(|i| (i.index.as_str(), &i.data_dir)),
            errors,
        );
        out
    }

    fn one_index(
        &self,
        shared: &Shared,
        name: String,
        t: RawIndex,
        errors: &mut Vec<String>,
    ) -> Option<ReplicaConfig> {
        let Some(data_dir) = t.data_dir.filter(|d| !d.as_os_str().is_empty()) else {
            errors.push(format!("[index.{name}] needs data_dir"));
            return None;
        };
        // A table's own [index.NAME.solr] wins; the default index uses [replica.solr].
        let solr = if name == DEFAULT_INDEX && t.mode.is_none() {
            self.solr.clone()
        } else {
            t.solr.clone()
        };
        let mode = t.mode.clone().or_else(|| self.mode.clone());
        let mode = swap_mode(mode.as_deref(), &solr, &name, errors);
        Some(ReplicaConfig {
            index: name,
            master_url: shared.master_url.clone(),
            data_dir,
            http_listen: shared.http_listen,
            peer_listen: shared.peer_listen,
            poll_interval: shared.poll_interval,
            keep_versions: t.keep_versions.or(self.keep_versions).unwrap_or(2),
            mode,
            on_swap: t
                .on_swap
                .or_else(|| self.on_swap.clone())
                .filter(|s| !s.trim().is_empty()),
            download_limit: shared.download_limit,
            upload_limit: shared.upload_limit,
            seed_old: shared.seed_old,
            stall: shared.stall,
            limits: shared.limits,
            fleet: shared.fleet.clone(),
            long_poll: shared.long_poll,
            security: shared.security.clone(),
        })
    }
}

impl RawReplica {
    /// `id`, `zone`, `max_lag_versions` and `health_check`, checked.
    fn fleet_identity(&self, errors: &mut Vec<String>) -> FleetIdentity {
        let id = self
            .id
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| host_id(&super::local_host_name()));
        if !plain_name(&id, 128) {
            errors.push(format!(
                "id = {id:?} must be 1-128 letters, digits, '.', '_', '-' or ':'"
            ));
        }
        let zone = self.zone.clone().filter(|z| !z.is_empty());
        if let Some(z) = &zone {
            if !plain_name(z, 64) {
                errors.push(format!(
                    "zone = {z:?} must be 1-64 letters, digits, '.', '_', '-' or ':'"
                ));
            }
        }
        let max_lag_versions = self.max_lag_versions.unwrap_or(1);
        if max_lag_versions > 1_000_000 {
            errors.push(format!(
                "max_lag_versions = {max_lag_versions} must be at most 1000000"
            ));
        }
        FleetIdentity {
            id,
            zone,
            max_lag_versions,
            health_check: self.health_check.clone().filter(|h| !h.trim().is_empty()),
        }
    }
}

/// A host name as an id: characters an id may not hold become `-`.
fn host_id(host: &str) -> String {
    let id: String = host
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "replica".into()
    } else {
        id
    }
}

/// Who this replica is to the master, and when it counts as ready.
#[derive(Debug, Clone)]
pub struct FleetIdentity {
    pub id: String,
    pub zone: Option<String>,
    pub max_lag_versions: u64,
    pub health_check: Option<String>,
}

/// What every index of the replica shares.
struct Shared {
    master_url: String,
    poll_interval: Duration,
    seed_old: Duration,
    stall: Duration,
    limits: super::PeerLimits,
    http_listen: SocketAddr,
    peer_listen: SocketAddr,
    download_limit: u64,
    upload_limit: u64,
    fleet: FleetIdentity,
    long_poll: bool,
    security: super::security::Security,
}

fn swap_mode(
    mode: Option<&str>,
    solr: &RawSolr,
    index: &str,
    errors: &mut Vec<String>,
) -> SwapMode {
    let section = if index == DEFAULT_INDEX {
        "[replica.solr]".to_string()
    } else {
        format!("[index.{index}.solr]")
    };
    match mode.unwrap_or("symlink") {
        "symlink" => SwapMode::Symlink,
        "solr" => {
            let core_data_dir = solr.core_data_dir.clone().unwrap_or_else(|| {
                errors.push(format!("mode = \"solr\" needs {section} core_data_dir"));
                PathBuf::new()
            });
            let core = solr
                .core
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| {
                    errors.push(format!("mode = \"solr\" needs {section} core"));
                    String::new()
                });
            SwapMode::Solr(SolrConfig {
                core_data_dir,
                core_admin_url: solr
                    .core_admin_url
                    .clone()
                    .unwrap_or_else(|| "http://localhost:8983/solr/admin/cores".into()),
                core,
            })
        }
        other => {
            errors.push(format!("mode = {other:?} must be \"symlink\" or \"solr\""));
            SwapMode::Symlink
        }
    }
}

/// Validated replica settings: the sidecar's, and one [`ReplicaConfig`] per
/// index it follows.
#[derive(Debug, Clone)]
pub struct ReplicaSetConfig {
    /// Tokens, the peer allow-list, TLS.
    pub security: super::security::Security,
    pub http_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub download_limit: u64,
    pub upload_limit: u64,
    pub limits: super::PeerLimits,
    /// In name order; at least one.
    pub indexes: Vec<ReplicaConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolrConfig {
    pub core_data_dir: PathBuf,
    pub core_admin_url: String,
    pub core: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapMode {
    Symlink,
    Solr(SolrConfig),
}

/// One index's replica settings (the sidecar's shared ones included).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The index followed (`default`: the master's unprefixed routes).
    pub index: String,
    pub master_url: String,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub poll_interval: Duration,
    pub keep_versions: usize,
    pub mode: SwapMode,
    pub on_swap: Option<String>,
    pub download_limit: u64,
    pub upload_limit: u64,
    pub seed_old: Duration,
    pub stall: Duration,
    pub limits: super::PeerLimits,
    pub fleet: FleetIdentity,
    /// Follow the master by long poll (else every poll interval).
    pub long_poll: bool,
    pub security: super::security::Security,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solr_mode_needs_its_section() {
        let raw = RawReplica {
            master_url: Some("http://m:7070".into()),
            data_dir: Some("/d".into()),
            mode: Some("solr".into()),
            ..Default::default()
        };
        let err = raw.validate().unwrap_err().to_string();
        assert!(
            err.contains("core_data_dir") && err.contains("core"),
            "{err}"
        );
    }

    #[test]
    fn toml_sections_parse() {
        let f: crate::config::ConfigFile = toml::from_str(
            "[replica]\nmaster_url = \"http://m:7070/\"\ndata_dir = \"/d\"\nmode = \"solr\"\ndownload_limit = \"10M\"\n\
             [replica.solr]\ncore_data_dir = \"/var/solr/data/c1/data\"\ncore = \"c1\"\n",
        )
        .unwrap();
        let set = f.replica.validate_with(&f.index).unwrap();
        assert_eq!(set.download_limit, 10 << 20);
        let c = &set.indexes[0];
        assert_eq!(c.index, "default");
        assert_eq!(c.master_url, "http://m:7070");
        assert!(matches!(c.mode, SwapMode::Solr(ref s) if s.core == "c1"));
    }

    #[test]
    fn several_indexes_each_with_its_own_directory_and_swap() {
        let f: crate::config::ConfigFile = toml::from_str(
            "[replica]\nmaster_url = \"http://m:7070\"\nkeep_versions = 5\n\
             [index.products]\ndata_dir = \"/d/products\"\nmode = \"solr\"\n\
             [index.products.solr]\ncore_data_dir = \"/var/solr/p/data\"\ncore = \"p\"\n\
             [index.users]\ndata_dir = \"/d/users\"\nkeep_versions = 1\n",
        )
        .unwrap();
        let flags = RawReplica {
            index: vec!["logs=/d/logs".into()],
            ..Default::default()
        };
        let set = f.replica.overlay(flags).validate_with(&f.index).unwrap();
        let names: Vec<&str> = set.indexes.iter().map(|i| i.index.as_str()).collect();
        assert_eq!(names, ["logs", "products", "users"]);
        assert!(matches!(set.indexes[1].mode, SwapMode::Solr(ref s) if s.core == "p"));
        assert_eq!(set.indexes[2].keep_versions, 1);
        assert_eq!(set.indexes[0].keep_versions, 5, "the section's default");
        let shared = RawReplica {
            master_url: Some("http://m:7070".into()),
            index: vec!["a=/d/x".into(), "b=/d/x".into()],
            ..Default::default()
        };
        let err = shared.validate().unwrap_err().to_string();
        assert!(err.contains("share the data directory"), "{err}");
    }
}
