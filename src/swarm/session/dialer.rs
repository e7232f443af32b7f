//! Connections in and out: remembering addresses, dialing within the
//! limits, admitting handshaken connections (`admission.rs` decides who
//! gets a slot when slots are scarce) and forgetting closed ones.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use super::messages::MAX_PEER_REQUESTS;
use super::state::{AddrState, PeerState, SwarmState};
use super::Session;
use crate::peer::codec::Message;
use crate::peer::connection::{dial, ConnectError, Connected, Outgoing, WriterCounters};
use crate::swarm::admission::{self, Admit, Limits};
use crate::swarm::bitfield::Bitfield;
use crate::swarm::picker::PeerKey;

/// Addresses remembered per torrent.
const MAX_KNOWN: usize = 1000;
/// Dials in progress per torrent.
const MAX_DIALING: usize = 20;
/// A refused newcomer is not redialed for this long.
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);

impl SwarmState {
    /// Remembers addresses to dial (bounded; addresses that keep failing
    /// make room first).
    pub fn learn(&mut self, addrs: &[SocketAddr]) {
        for &a in addrs {
            if a.port() == 0 {
                continue;
            }
            if self.known.len() >= MAX_KNOWN && !self.known.contains_key(&a) {
                self.known
                    .retain(|_, k| k.state != AddrState::Idle || k.failures < 3);
                if self.known.len() >= MAX_KNOWN {
                    continue;
                }
            }
            self.known.entry(a).or_default();
        }
    }

    /// Addresses to dial now, at most `room`, each marked as dialing.
    fn pick_dials(&mut self, mut room: usize, now: Instant) -> Vec<SocketAddr> {
        let seeding = self.picker.as_ref().is_some_and(|p| p.is_complete());
        let connected: HashSet<SocketAddr> =
            self.peers.values().filter_map(|p| p.listen_addr).collect();
        let mut out = Vec::new();
        for (addr, k) in self.known.iter_mut() {
            if room == 0 {
                break;
            }
            let skip = k.state != AddrState::Idle
                || (seeding && k.seed)
                || connected.contains(addr)
                || self.bans.addr_banned(addr, now)
                || k.next_try.is_some_and(|t| t > now);
            if skip {
                continue;
            }
            k.state = AddrState::Dialing;
            room -= 1;
            out.push(*addr);
        }
        out
    }

    fn dial_failed(&mut self, addr: SocketAddr, e: &ConnectError, now: Instant) {
        if let Some(k) = self.known.get_mut(&addr) {
            k.state = if matches!(e, ConnectError::OwnPeerId) {
                AddrState::Ourselves
            } else {
                AddrState::Idle
            };
            k.failures = k.failures.saturating_add(1);
            let backoff = Duration::from_secs((2u64 << k.failures.min(7)).min(300));
            k.next_try = Some(now + backoff);
        }
    }

    /// Should this handshaken connection get a slot? Evicts a squatter to
    /// make room when admission says so.
    fn admit(
        &mut self,
        conn: &Connected,
        listen: Option<SocketAddr>,
        limits: Limits,
        now: Instant,
    ) -> bool {
        let id = conn.remote.peer_id;
        let banned =
            self.bans.id_banned(&id, now) || listen.is_some_and(|a| self.bans.addr_banned(&a, now));
        if banned || self.by_id.contains_key(&id) {
            debug!(peer = %conn.addr, banned, "connection not needed");
            return false;
        }
        match admission::admit(&self.views(now), conn.addr.ip(), limits) {
            Admit::Yes => true,
            Admit::Evict(victim) => {
                if let Some(v) = self.peers.get(&victim) {
                    debug!(peer = %v.addr, newcomer = %conn.addr, "evicting an idle peer to make room");
                }
                self.close(victim);
                true
            }
            Admit::No(why) => {
                debug!(peer = %conn.addr, ?why, "connection refused: no slot");
                false
            }
        }
    }
}

/// Our piece map for a newly connected peer.
fn piece_map(have: &Bitfield, fast: bool) -> Message {
    if have.is_full() && fast {
        Message::HaveAll
    } else if have.count() == 0 && fast {
        Message::HaveNone
    } else if have.count() == 0 {
        Message::KeepAlive
    } else {
        Message::Bitfield(bytes::Bytes::copy_from_slice(have.as_bytes()))
    }
}

impl Session {
    pub(super) fn learn(&self, addrs: &[SocketAddr]) {
        self.state.lock().learn(addrs);
    }

    /// Dials known peers we are not connected to, within the limits.
    pub(super) fn dial_more(self: &Arc<Self>) {
        if self.cancel.is_cancelled() || !self.engine.has_room() {
            return;
        }
        let now = Instant::now();
        let to_dial = {
            let mut st = self.state.lock();
            if st.picker.is_none() {
                return;
            }
            let dialing = st
                .known
                .values()
                .filter(|k| k.state == AddrState::Dialing)
                .count();
            let room = self
                .opts
                .max_peers
                .saturating_sub(st.live_peers() + dialing)
                .min(MAX_DIALING.saturating_sub(dialing));
            st.pick_dials(room, now)
        };
        for addr in to_dial {
            let s = self.clone();
            self.tasks
                .spawn(async move { s.dial_one(addr).await }.in_current_span());
        }
    }

    async fn dial_one(self: Arc<Self>, addr: SocketAddr) {
        let r = tokio::select! {
            _ = self.cancel.cancelled() => return,
            r = dial(
                addr,
                self.meta.info_hash.0,
                self.engine.peer_id,
                self.tls.as_ref().map(|t| t.client.clone()),
            ) => r,
        };
        match r {
            Ok(conn) => {
                if let Some(k) = self.state.lock().known.get_mut(&addr) {
                    k.state = AddrState::Idle;
                    k.failures = 0;
                }
                self.start_peer(conn, Some(addr));
            }
            Err(e) => {
                debug!(peer = %addr, "dial failed: {e}");
                self.state.lock().dial_failed(addr, &e, Instant::now());
            }
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_peers: self.opts.max_peers,
            max_peers_per_ip: self.opts.max_peers_per_ip,
        }
    }

    /// Registers a handshaken connection and starts its task.
    pub(crate) fn start_peer(self: &Arc<Self>, conn: Connected, listen_addr: Option<SocketAddr>) {
        let id = conn.remote.peer_id;
        let (tx, rx) = mpsc::unbounded_channel();
        let kill = self.cancel.child_token();
        let writer = Arc::new(WriterCounters::default());
        let key: PeerKey = self.next_key.fetch_add(1, Ordering::Relaxed);
        let fast = conn.remote.supports(crate::peer::codec::reserved::FAST);
        let ext = conn
            .remote
            .supports(crate::peer::codec::reserved::EXTENSION);
        let now = Instant::now();
        let have = {
            let mut st = self.state.lock();
            let Some(have) = st.picker.as_ref().map(|p| p.have().clone()) else {
                return;
            };
            if self.cancel.is_cancelled() || !st.admit(&conn, listen_addr, self.limits(), now) {
                if let Some(k) = listen_addr.and_then(|a| st.known.get_mut(&a)) {
                    k.next_try = Some(now + REFUSED_BACKOFF);
                }
                return;
            }
            if let Some(k) = listen_addr.and_then(|a| st.known.get_mut(&a)) {
                k.state = AddrState::Connected;
            }
            st.by_id.insert(id, key);
            st.totals.entry(id).or_default().addr = listen_addr.or(Some(conn.addr));
            let n = self.meta.num_pieces();
            let peer = PeerState::new(
                conn.addr,
                listen_addr,
                id,
                fast,
                tx.clone(),
                kill.clone(),
                writer.clone(),
                n,
                now,
            );
            st.peers.insert(key, peer);
            have
        };
        self.engine.connections.fetch_add(1, Ordering::Relaxed);
        debug!(peer = %conn.addr, outgoing = listen_addr.is_some(), "connected");
        // Our piece map first, then the extension handshake.
        let _ = tx.send(Outgoing::Msg(piece_map(&have, fast)));
        if ext {
            let payload = crate::peer::connection::encode_ext_handshake(
                self.engine.local_addr.port(),
                MAX_PEER_REQUESTS as u32,
            );
            let _ = tx.send(Outgoing::Msg(Message::Extended { id: 0, payload }));
        }
        let span = tracing::info_span!("peer", info_hash = %self.meta.info_hash.short(), peer = %conn.addr);
        let s = self.clone();
        self.tasks
            .spawn(crate::swarm::peer_task::run(s, key, conn, rx, writer, kill).instrument(span));
        self.publish_peers();
    }

    /// A connection ended: give back its blocks and forget it.
    pub(crate) fn remove_peer(self: &Arc<Self>, key: PeerKey, reason: &str) {
        let gone = self.state.lock().forget_peer(key, Instant::now());
        if let Some(p) = gone {
            debug!(peer = %p.addr, "disconnected: {reason}");
            self.engine.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.publish_peers();
    }

    fn publish_peers(&self) {
        let n = self.state.lock().live_peers();
        self.progress_tx.send_modify(|p| p.peers = n);
    }
}
