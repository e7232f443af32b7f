//! The closed-swarm settings both sidecars share: `swarm_token`,
//! `metrics_token`, `peer_allow`, `tls_cert`, `tls_key`, `tls_ca`.
//!
//! Off by default, except the peer allow-list: without a swarm token, the
//! peer port takes connections from loopback, private and link-local
//! addresses only (`util::net::private_networks`), unless `peer_allow`
//! says otherwise (`0.0.0.0/0, ::/0` opens it to all); with a swarm token,
//! only from peers that announced with it, plus `peer_allow`.

use std::path::PathBuf;

use crate::util::net::Cidr;

/// Longest token accepted (it travels in a header).
const MAX_TOKEN: usize = 256;
/// Most CIDR blocks in `peer_allow`.
const MAX_BLOCKS: usize = 1024;

/// The settings as given (each sidecar's raw section holds these fields).
#[derive(Debug, Clone, Default)]
pub struct RawSecurity {
    pub swarm_token: Option<String>,
    pub metrics_token: Option<String>,
    pub peer_allow: Option<Vec<String>>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
}

/// A certificate chain and its key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Validated closed-swarm settings.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub swarm_token: Option<String>,
    pub metrics_token: Option<String>,
    /// `None`: the default rule (see the module comment).
    pub peer_allow: Option<Vec<Cidr>>,
    /// This node's certificate: HTTPS for its API, and TLS for SSL torrents.
    pub tls: Option<TlsFiles>,
    /// The CA that signs the deployment's certificates: trusted for
    /// `https://` master URLs, and put in torrents as `ssl-cert`.
    pub tls_ca: Option<PathBuf>,
}

fn token(name: &str, t: Option<String>, errors: &mut Vec<String>) -> Option<String> {
    let t = t.filter(|t| !t.is_empty())?;
    if t.len() > MAX_TOKEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        errors.push(format!(
            "{name} must be 1-{MAX_TOKEN} printable characters without spaces"
        ));
        return None;
    }
    Some(t)
}

impl RawSecurity {
    pub fn validate(self, errors: &mut Vec<String>) -> Security {
        let peer_allow = self.peer_allow.map(|list| {
            if list.len() > MAX_BLOCKS {
                errors.push(format!("peer_allow lists more than {MAX_BLOCKS} blocks"));
            }
            list.iter()
                .filter(|s| !s.trim().is_empty())
                .filter_map(|s| match s.parse::<Cidr>() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.push(format!("peer_allow: {e}"));
                        None
                    }
                })
                .collect()
        });
        let empty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let tls = match (empty(self.tls_cert), empty(self.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                errors.push("tls_cert and tls_key go together: give both or neither".into());
                None
            }
        };
        Security {
            swarm_token: token("swarm_token", self.swarm_token, errors),
            metrics_token: token("metrics_token", self.metrics_token, errors),
            peer_allow,
            tls,
            tls_ca: empty(self.tls_ca),
        }
    }
}

impl Security {
    /// This node's certificate for SSL torrents, when `tls_cert` is set.
    pub fn identity(
        &self,
    ) -> Result<Option<std::sync::Arc<crate::peer::tls::PeerIdentity>>, crate::tls::TlsError> {
        self.tls
            .as_ref()
            .map(|f| crate::peer::tls::PeerIdentity::load(&f.cert, &f.key).map(std::sync::Arc::new))
            .transpose()
    }

    /// May `ip` open a peer connection without having announced with the
    /// swarm token?
    pub fn peer_allowed_by_list(&self, ip: std::net::IpAddr) -> bool {
        match (&self.peer_allow, &self.swarm_token) {
            (Some(list), _) => list.iter().any(|c| c.contains(ip)),
            (None, None) => crate::util::net::private_networks()
                .iter()
                .any(|c| c.contains(ip)),
            (None, Some(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_tokens_and_lists() {
        let mut errors = Vec::new();
        let open = RawSecurity::default().validate(&mut errors);
        assert!(open.peer_allowed_by_list("10.1.2.3".parse().unwrap()));
        assert!(!open.peer_allowed_by_list("8.8.8.8".parse().unwrap()));
        let closed = RawSecurity {
            swarm_token: Some("s".into()),
            ..Default::default()
        }
        .validate(&mut errors);
        assert!(
            !closed.peer_allowed_by_list("127.0.0.2".parse().unwrap()),
            "members only"
        );
        let listed = RawSecurity {
            swarm_token: Some("s".into()),
            peer_allow: Some(vec!["10.9.0.0/16".into()]),
            ..Default::default()
        }
        .validate(&mut errors);
        assert!(listed.peer_allowed_by_list("10.9.1.1".parse().unwrap()));
        assert!(errors.is_empty(), "{errors:?}");
        let bad = RawSecurity {
            swarm_token: Some("has space".into()),
            peer_allow: Some(vec!["10.0.0.0/99".into()]),
            tls_cert: Some("/c.pem".into()),
            ..Default::default()
        }
        .validate(&mut errors);
        assert!(bad.swarm_token.is_none());
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}
