//! Settings for the sidecars: a TOML file, overridden by environment
//! variables (`INDEXSWARM_<SECTION>_<KEY>`), overridden by flags of the same
//! name (`snapshots_dir` → `--snapshots-dir`).
//!
//! The raw structs (every field an `Option`) double as the clap flag set and
//! the serde shape of a file section, so a setting is declared once. They are
//! merged, then validated into `MasterConfig` / `ReplicaConfig`, which report
//! every bad setting at once rather than the first.

pub mod index;
mod master;
mod replica;
pub mod security;

use std::path::Path;
use std::time::Duration;

use crate::units::ByteSize;

pub use index::{RawIndex, DEFAULT_INDEX};
pub use master::{MasterConfig, MasterIndex, RawMaster, Rollout};
pub use replica::{
    FleetIdentity, RawReplica, ReplicaConfig, ReplicaSetConfig, SolrConfig, SwapMode,
};

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
    /// `[index.<name>]` tables.
    #[serde(default)]
    pub index: std::collections::BTreeMap<String, RawIndex>,
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

/// Longest wait any `*_secs` setting accepts: one day. Nothing in a
/// replication fleet needs to wait longer, and every time computed from a
/// setting (`now + interval`, `interval × 2`, a timestamp for `/status`)
/// then stays far from overflowing.
pub const MAX_SECS: u64 = 24 * 3600;

/// Highest rate a limit accepts, in bytes/s: 2 GiB/s (17 Gbit/s). The token
/// buckets count in 32 bits, so much more could not be honoured; `0` means
/// unlimited for the transfer limits.
pub const MAX_RATE: u64 = 2 << 30;

/// A `*_secs` setting: `default` when unset, an error unless within
/// `min..=MAX_SECS`.
pub(crate) fn secs(
    name: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    errors: &mut Vec<String>,
) -> Duration {
    let v = v.unwrap_or(default);
    if !(min..=MAX_SECS).contains(&v) {
        errors.push(format!(
            "{name} = {v} must be from {min} to {MAX_SECS} (one day)"
        ));
        return Duration::from_secs(default);
    }
    Duration::from_secs(v)
}

/// A rate setting in bytes/s: `default` when unset, an error above `MAX_RATE`.
pub(crate) fn rate(name: &str, v: Option<ByteSize>, default: u64, errors: &mut Vec<String>) -> u64 {
    let v = v.map_or(default, |b| b.0);
    if v > MAX_RATE {
        errors.push(format!(
            "{name} = {} is above the largest rate, {} per second",
            ByteSize(v),
            ByteSize(MAX_RATE)
        ));
        return default;
    }
    v
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
    use super::*;
    use clap::Args as _;

    const MAX: u64 = u64::MAX;

    fn master(f: impl FnOnce(&mut RawMaster)) -> Result<MasterConfig, ConfigError> {
        let mut raw = RawMaster {
            snapshots_dir: Some("/snap".into()),
            ..Default::default()
        };
        f(&mut raw);
        raw.validate()
    }

    fn replica(f: impl FnOnce(&mut RawReplica)) -> Result<ReplicaSetConfig, ConfigError> {
        let mut raw = RawReplica {
            master_url: Some("http://m:7070".into()),
            data_dir: Some("/d".into()),
            ..Default::default()
        };
        f(&mut raw);
        raw.validate()
    }

    /// Checks one setting at a value: `Ok` or an error naming the setting.
    fn check<T>(name: &str, r: Result<T, ConfigError>, ok: bool) {
        match (r, ok) {
            (Ok(_), true) => {}
            (Err(ConfigError::Invalid(errs)), false) => {
                assert_eq!(errs.len(), 1, "{name}: {errs:?}");
                assert!(errs[0].starts_with(name), "{name}: {errs:?}");
            }
            (Ok(_), false) => panic!("{name} should be refused"),
            (Err(e), _) => panic!("{name}: unexpected {e}"),
        }
    }

    #[test]
    fn every_duration_and_rate_has_bounds() {
        let day = MAX_SECS;
        let secs: &[(&str, u64, bool)] = &[
            ("settle_secs", 0, true),
            ("settle_secs", day, true),
            ("settle_secs", day + 1, false),
            ("settle_secs", MAX, false),
            ("rescan_secs", day, true),
            ("rescan_secs", 1_000_000_000_000, false),
            ("announce_interval_secs", 0, false),
            ("announce_interval_secs", day, true),
            ("announce_interval_secs", MAX, false),
            ("poll_interval_secs", 0, false),
            ("poll_interval_secs", day, true),
            ("poll_interval_secs", 1_000_000_000_000, false),
            ("seed_old_secs", 0, true),
            ("seed_old_secs", MAX, false),
        ];
        for &(name, v, ok) in secs {
            match name {
                "settle_secs" => check(name, master(|r| r.settle_secs = Some(v)), ok),
                "rescan_secs" => check(name, master(|r| r.rescan_secs = Some(v)), ok),
                "announce_interval_secs" => {
                    check(name, master(|r| r.announce_interval_secs = Some(v)), ok)
                }
                "poll_interval_secs" => {
                    check(name, replica(|r| r.poll_interval_secs = Some(v)), ok)
                }
                "seed_old_secs" => check(name, replica(|r| r.seed_old_secs = Some(v)), ok),
                _ => unreachable!(),
            }
        }
        for (v, ok) in [
            (0, true),
            (MAX_RATE, true),
            (MAX_RATE + 1, false),
            (MAX, false),
        ] {
            let b = Some(ByteSize(v));
            check("upload_limit", master(|r| r.upload_limit = b), ok);
            check("verify_rate", master(|r| r.verify_rate = b), ok);
            check("upload_limit", replica(|r| r.upload_limit = b), ok);
            check("download_limit", replica(|r| r.download_limit = b), ok);
        }
    }

    #[test]
    fn bad_bounds_are_reported_together() {
        let err = master(|r| {
            r.settle_secs = Some(MAX);
            r.announce_interval_secs = Some(MAX);
            r.verify_rate = Some(ByteSize(MAX));
        })
        .unwrap_err()
        .to_string();
        for name in ["settle_secs", "announce_interval_secs", "verify_rate"] {
            assert!(err.contains(name), "{err}");
        }
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn verify_rate_defaults_and_zero_turns_it_off() {
        assert_eq!(master(|_| {}).unwrap().verify_rate, 32 << 20);
        let c = master(|r| r.verify_rate = Some("0".parse().unwrap())).unwrap();
        assert_eq!(c.verify_rate, 0);
        let c = master(|r| r.verify_rate = Some("10M".parse().unwrap())).unwrap();
        assert_eq!(c.verify_rate, 10 << 20);
    }

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
