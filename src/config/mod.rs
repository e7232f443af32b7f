//! Settings for the sidecars: a TOML file, overridden by environment
//! variables (`INDEXSWARM_<SECTION>_<KEY>`), overridden by flags of the same
//! name (`snapshots_dir` → `--snapshots-dir`).
//!
//! The raw structs (every field an `Option`) double as the clap flag set and
//! the serde shape of a file section, so a setting is declared once. They are
//! merged, then validated into `MasterConfig` / `ReplicaConfig`, which report
//! every bad setting at once rather than the first.

mod master;
mod replica;

use std::path::Path;

pub use master::{MasterConfig, RawMaster};
pub use replica::{RawReplica, ReplicaConfig, SolrConfig, SwapMode};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// The whole file: `[master]` and/or `[replica]` sections.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub master: RawMaster,
    #[serde(default)]
    pub replica: RawReplica,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().replace('\n', " "),
        })
    }
}

/// `Some(b)` wins over `a`: the overlay rule for every setting.
pub(crate) fn pick<T>(a: Option<T>, b: Option<T>) -> Option<T> {
    b.or(a)
}

/// Parses a listen address, collecting the error.
pub(crate) fn addr(name: &str, v: &str, errors: &mut Vec<String>) -> std::net::SocketAddr {
    match v.parse() {
        Ok(a) => a,
        Err(_) => {
            errors.push(format!(
                "{name} = {v:?} is not an address like 0.0.0.0:7070"
            ));
            ([0, 0, 0, 0], 0).into()
        }
    }
}

/// Connection limits of a sidecar's engine (`max_peers`,
/// `max_peers_per_ip`, `max_connections`; defaults in `swarm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    pub max_peers: usize,
    pub max_peers_per_ip: usize,
    pub max_connections: usize,
}

/// Validates the connection limits, collecting errors.
pub(crate) fn peer_limits(
    max_peers: Option<usize>,
    per_ip: Option<usize>,
    max_connections: Option<usize>,
    errors: &mut Vec<String>,
) -> PeerLimits {
    let mut check = |name: &str, v: Option<usize>, default: usize, max: usize| {
        let v = v.unwrap_or(default);
        if v == 0 || v > max {
            errors.push(format!("{name} = {v} must be between 1 and {max}"));
        }
        v.clamp(1, max)
    };
    PeerLimits {
        max_peers: check(
            "max_peers",
            max_peers,
            crate::swarm::DEFAULT_MAX_PEERS,
            10_000,
        ),
        max_peers_per_ip: check(
            "max_peers_per_ip",
            per_ip,
            crate::swarm::DEFAULT_MAX_PEERS_PER_IP,
            10_000,
        ),
        max_connections: check(
            "max_connections",
            max_connections,
            crate::swarm::DEFAULT_MAX_CONNECTIONS,
            100_000,
        ),
    }
}

/// The host name replicas can use to reach this machine when a listen
/// address is unspecified (0.0.0.0).
pub(crate) fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into())
}

#[cfg(test)]
mod tests {
    use clap::Args as _;

    /// Every flag of a section, as its config key (`--stall-secs` → `stall_secs`).
    fn keys(cmd: clap::Command) -> Vec<String> {
        cmd.get_arguments()
            .filter_map(|a| a.get_long())
            .map(|l| l.replace('-', "_"))
            .collect()
    }

    fn documents(file: &str, key: &str) -> bool {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
                .unwrap();
        text.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} ="))
        })
    }

    /// The annotated examples in `config/` document every setting there is.
    #[test]
    fn example_configs_document_every_key() {
        for key in keys(super::RawMaster::augment_args(clap::Command::new("m"))) {
            assert!(
                documents("config/master.toml", &key),
                "config/master.toml lacks {key}"
            );
        }
        for key in keys(super::RawReplica::augment_args(clap::Command::new("r"))) {
            // [replica.solr] keys are flags named --solr-<key>.
            let key = key.strip_prefix("solr_").unwrap_or(&key).to_string();
            assert!(
                documents("config/replica.toml", &key),
                "config/replica.toml lacks {key}"
            );
        }
    }
}
