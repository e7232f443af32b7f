//! Who may connect to a replica's peer port. The master's tracker knows
//! who announced with the swarm token; a replica asks it
//! (`GET /tracker/members?info_hash=…`, with the token) when an address it
//! has not seen connects, at most once a second per torrent, and caches
//! the answer. `peer_allow` (or, without a swarm token, the private
//! networks) is admitted without asking.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::security::Security;
use crate::metainfo::InfoHash;
use crate::swarm::PeerGate;

/// How often the member list of one torrent may be fetched.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Most torrents whose member lists are cached.
const MAX_CACHED: usize = 64;
/// Largest member list read.
const MAX_REPLY: usize = 1 << 20;

#[derive(serde::Deserialize)]
struct Members {
    addresses: Vec<IpAddr>,
}

pub(crate) struct MemberGate {
    pub http: reqwest::Client,
    pub master_url: String,
    pub security: Security,
    cache: Mutex<HashMap<InfoHash, (Instant, HashSet<IpAddr>)>>,
}

impl MemberGate {
    pub fn new(http: reqwest::Client, master_url: String, security: Security) -> MemberGate {
        MemberGate {
            http,
            master_url,
            security,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The member list of `h` from the master; `None` if it cannot say.
    async fn fetch(&self, h: &InfoHash) -> Option<HashSet<IpAddr>> {
        let url = format!("{}/tracker/members?info_hash={}", self.master_url, h.hex());
        let mut req = self.http.get(url).timeout(Duration::from_secs(5));
        if let Some(t) = &self.security.swarm_token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let mut body = Vec::new();
        while let Some(c) = resp.chunk().await.ok()? {
            if body.len() + c.len() > MAX_REPLY {
                return None;
            }
            body.extend_from_slice(&c);
        }
        let m: Members = serde_json::from_slice(&body).ok()?;
        Some(m.addresses.into_iter().collect())
    }

    async fn member(&self, h: InfoHash, ip: IpAddr) -> bool {
        let stale = {
            let cache = self.cache.lock();
            match cache.get(&h) {
                Some((_, set)) if set.contains(&ip) => return true,
                Some((at, _)) => at.elapsed() >= REFRESH_EVERY,
                None => true,
            }
        };
        if !stale {
            return false;
        }
        let Some(set) = self.fetch(&h).await else {
            return false;
        };
        let ok = set.contains(&ip);
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED && !cache.contains_key(&h) {
            cache.clear();
        }
        cache.insert(h, (Instant::now(), set));
        ok
    }
}

impl PeerGate for MemberGate {
    fn admits(
        &self,
        info_hash: InfoHash,
        ip: IpAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            if self.security.peer_allowed_by_list(ip) {
                return true;
            }
            self.security.swarm_token.is_some() && self.member(info_hash, ip).await
        })
    }
}
