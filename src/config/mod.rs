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

/// The host name replicas can use to reach this machine when a listen
/// address is unspecified (0.0.0.0).
pub(crate) fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into())
}
