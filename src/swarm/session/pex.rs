//! Peer exchange in the session: tell each peer that speaks `ut_pex` which
//! addresses we are connected to (first right after its extension
//! handshake, then at most once a minute, only the changes), and learn the
//! addresses it tells us. This keeps the peer graph growing when the
//! tracker is down or slow; `learn` bounds what a peer can make us remember.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::state::SwarmState;
use crate::peer::codec::Message;
use crate::peer::connection::Outgoing;
use crate::peer::pex::{self, Pex, MAX_PEX_PEERS};
use crate::swarm::picker::PeerKey;

/// BEP 11: at most one message a minute to each peer.
const PEX_EVERY: Duration = Duration::from_secs(60);

impl SwarmState {
    /// A `ut_pex` message from `key`: remember the added addresses.
    pub fn on_pex(&mut self, key: PeerKey, payload: &[u8]) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        // One message a minute is the rule; more often is ignored.
        if p.pex_heard.is_some_and(|t| t.elapsed() < PEX_EVERY / 2) {
            return;
        }
        p.pex_heard = Some(Instant::now());
        let msg = pex::decode(payload);
        let own = p.listen_addr;
        let added: Vec<SocketAddr> = msg.added.into_iter().filter(|a| Some(*a) != own).collect();
        tracing::debug!(peer = %p.addr, ?added, dropped = msg.dropped.len(), "peer exchange");
        self.learn(&added);
    }

    /// The listen addresses of the live peers we could tell others about.
    fn pex_addresses(&self) -> HashSet<SocketAddr> {
        self.peers
            .values()
            .filter(|p| !p.leaving)
            .filter_map(|p| p.listen_addr)
            .collect()
    }

    /// Sends each due peer the changes since its last message.
    pub fn send_pex(&mut self, now: Instant) {
        let current = self.pex_addresses();
        for p in self.peers.values_mut() {
            let Some(id) = p.ut_pex else { continue };
            if p.leaving
                || p.pex_sent_at
                    .is_some_and(|t| now.saturating_duration_since(t) < PEX_EVERY)
            {
                continue;
            }
            let own = p.listen_addr;
            let added: Vec<SocketAddr> = current
                .iter()
                .filter(|a| Some(**a) != own && !p.pex_sent.contains(a))
                .take(MAX_PEX_PEERS)
                .copied()
                .collect();
            let dropped: Vec<SocketAddr> = p
                .pex_sent
                .iter()
                .filter(|a| !current.contains(a))
                .take(MAX_PEX_PEERS)
                .copied()
                .collect();
            if added.is_empty() && dropped.is_empty() {
                continue;
            }
            for a in &dropped {
                p.pex_sent.remove(a);
            }
            p.pex_sent.extend(added.iter().copied());
            p.pex_sent_at = Some(now);
            let payload = pex::encode(&Pex { added, dropped });
            p.send(Outgoing::Msg(Message::Extended { id, payload }));
        }
    }
}
