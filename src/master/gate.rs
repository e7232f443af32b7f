//! Who may connect to the master's peer port: the closed-swarm rule with
//! the master's own tracker as the membership list (an address that
//! announced with the swarm token for that torrent and has not expired,
//! i.e. within two announce intervals), plus `peer_allow`.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::security::Security;
use crate::metainfo::InfoHash;
use crate::swarm::PeerGate;
use crate::tracker::Tracker;

pub(super) struct TrackerGate {
    pub tracker: Arc<Tracker>,
    pub security: Security,
}

impl PeerGate for TrackerGate {
    fn admits(
        &self,
        info_hash: InfoHash,
        ip: IpAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        let member =
            self.security.swarm_token.is_some() && self.tracker.announced_from(&info_hash, ip);
        let ok = member || self.security.peer_allowed_by_list(ip);
        Box::pin(std::future::ready(ok))
    }
}
