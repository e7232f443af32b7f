//! `[replica]` and `[replica.solr]` settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{addr, pick, rate, secs, ConfigError};
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
        }
    }

    pub fn validate(self) -> Result<ReplicaConfig, ConfigError> {
        let mut errors = Vec::new();
        let master_url = match self.master_url.filter(|s| !s.trim().is_empty()) {
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
        let data_dir = self
            .data_dir
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| {
                errors.push("data_dir is required (--data-dir or [replica] data_dir)".into());
                PathBuf::new()
            });
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
        let poll_interval = secs(
            "poll_interval_secs",
            self.poll_interval_secs,
            10,
            1,
            &mut errors,
        );
        let seed_old = secs("seed_old_secs", self.seed_old_secs, 300, 0, &mut errors);
        let download_limit = rate("download_limit", self.download_limit, 0, &mut errors);
        let upload_limit = rate("upload_limit", self.upload_limit, 0, &mut errors);
        let mode = match self.mode.as_deref().unwrap_or("symlink") {
            "symlink" => SwapMode::Symlink,
            "solr" => {
                let core_data_dir = self.solr.core_data_dir.clone().unwrap_or_else(|| {
                    errors.push("mode = \"solr\" needs [replica.solr] core_data_dir".into());
                    PathBuf::new()
                });
                let core = self
                    .solr
                    .core
                    .clone()
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| {
                        errors.push("mode = \"solr\" needs [replica.solr] core".into());
                        String::new()
                    });
                SwapMode::Solr(SolrConfig {
                    core_data_dir,
                    core_admin_url: self
                        .solr
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
        };
        let stall = secs("stall_secs", self.stall_secs, 60, 1, &mut errors);
        let limits = super::peer_limits(
            self.max_peers,
            self.max_peers_per_ip,
            self.max_connections,
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(ReplicaConfig {
            stall,
            limits,
            master_url,
            data_dir,
            http_listen,
            peer_listen,
            poll_interval,
            keep_versions: self.keep_versions.unwrap_or(2),
            mode,
            on_swap: self.on_swap.filter(|s| !s.trim().is_empty()),
            download_limit,
            upload_limit,
            seed_old,
        })
    }
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

/// Validated replica settings.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
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
        let c = f.replica.validate().unwrap();
        assert_eq!(c.master_url, "http://m:7070");
        assert_eq!(c.download_limit, 10 << 20);
        assert!(matches!(c.mode, SwapMode::Solr(ref s) if s.core == "c1"));
    }
}
