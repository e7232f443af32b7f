//! The session's state: every peer, every address we know, the picker, the
//! bans, all behind the session's one lock (`STATE.md` lists the
//! invariants). The methods here are bookkeeping only: no sockets, no
//! clocks of their own, no tasks, so tests drive them directly and a
//! message to a peer is an item on its writer channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::progress::SessionState;
use crate::metainfo::Metainfo;
use crate::peer::codec::{BlockRef, Message};
use crate::peer::connection::{Outgoing, WriterCounters};
use crate::swarm::admission::PeerView;
use crate::swarm::bans::{BanList, PeerIdent};
use crate::swarm::bitfield::Bitfield;
use crate::swarm::picker::{PeerKey, Picker};
use crate::swarm::smartban::SmartBan;
use crate::swarm::stall::Failures;

/// Our default request pipeline depth before we know a peer's rate.
pub(super) const INITIAL_DEPTH: usize = 128;
pub(super) const MIN_DEPTH: usize = 16;
pub(super) const MAX_DEPTH: usize = 1024;
/// Identities of disconnected peers kept so a late verdict on a piece they
/// helped fill can still name them (smart ban).
const MAX_DEPARTED: usize = 4096;

pub(crate) struct PeerState {
    pub addr: SocketAddr,
    /// The address the peer accepts connections on, when known.
    pub listen_addr: Option<SocketAddr>,
    pub peer_id: [u8; 20],
    pub client: Option<String>,
    pub tx: mpsc::UnboundedSender<Outgoing>,
    pub kill: CancellationToken,
    pub has: Bitfield,
    pub fast: bool,
    pub am_choking: bool,
    pub am_interested: bool,
    pub peer_choking: bool,
    pub peer_interested: bool,
    pub inflight: HashSet<BlockRef>,
    pub depth: usize,
    pub reqq: usize,
    /// Pieces it has that we lack (we are interested exactly when > 0).
    pub interesting: u32,
    pub down_total: u64,
    pub down_prev: u64,
    pub down_rate: u64,
    pub up_prev: u64,
    pub up_rate: u64,
    pub writer: Arc<WriterCounters>,
    /// The snub clock: the last requested block it delivered.
    pub last_block: Instant,
    /// The last block either way (eviction looks at it).
    pub last_payload: Instant,
    pub connected_at: Instant,
    /// Duplicates and late blocks it sent.
    pub wasted: u64,
    /// Blocks it sent that nobody asked it for.
    pub unrequested: u64,
    /// Pieces this peer rejected, not asked of it again until the instant.
    pub avoid: HashMap<u32, Instant>,
    /// Bitfields and have-alls received: each costs a pass over all pieces.
    pub piece_maps: u32,
    /// Being closed (evicted or banned): counts against no limit.
    pub leaving: bool,
    /// Its id for our `ut_pex` messages, when it speaks PEX.
    pub ut_pex: Option<u8>,
    /// What we last told it (addresses it knows from us), and when.
    pub pex_sent: HashSet<SocketAddr>,
    pub pex_sent_at: Option<Instant>,
    /// When it last told us something.
    pub pex_heard: Option<Instant>,
}

impl PeerState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        addr: SocketAddr,
        listen_addr: Option<SocketAddr>,
        peer_id: [u8; 20],
        fast: bool,
        tx: mpsc::UnboundedSender<Outgoing>,
        kill: CancellationToken,
        writer: Arc<WriterCounters>,
        num_pieces: u32,
        now: Instant,
    ) -> PeerState {
        PeerState {
            addr,
            listen_addr,
            peer_id,
            client: None,
            tx,
            kill,
            has: Bitfield::new(num_pieces),
            fast,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            inflight: HashSet::new(),
            depth: INITIAL_DEPTH,
            reqq: 250,
            interesting: 0,
            down_total: 0,
            down_prev: 0,
            down_rate: 0,
            up_prev: 0,
            up_rate: 0,
            writer,
            last_block: now,
            last_payload: now,
            connected_at: now,
            wasted: 0,
            unrequested: 0,
            avoid: HashMap::new(),
            piece_maps: 0,
            leaving: false,
            ut_pex: None,
            pex_sent: HashSet::new(),
            pex_sent_at: None,
            pex_heard: None,
        }
    }

    pub fn send(&self, o: Outgoing) {
        self.writer.pending.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(o);
    }

    pub fn ident(&self) -> PeerIdent {
        PeerIdent {
            peer_id: self.peer_id,
            listen: self.listen_addr,
            addr: self.addr,
        }
    }

    pub fn view(&self, key: PeerKey, now: Instant) -> PeerView {
        PeerView {
            key,
            ip: self.addr.ip(),
            age: now.saturating_duration_since(self.connected_at),
            idle: now.saturating_duration_since(self.last_payload),
            busy: !self.inflight.is_empty()
                || self.writer.queued_uploads.load(Ordering::Relaxed) > 0,
            we_interested: self.am_interested,
            they_interested: self.peer_interested,
            we_choke_them: self.am_choking,
            leaving: self.leaving,
        }
    }
}

/// Where we are with an address we know (from the tracker, PEX or the
/// command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum AddrState {
    /// Not connected; dial when `next_try` allows.
    #[default]
    Idle,
    Dialing,
    Connected,
    /// It is us (our own peer id answered): never dial again.
    Ourselves,
}

#[derive(Debug, Default)]
pub(crate) struct Known {
    pub state: AddrState,
    pub next_try: Option<Instant>,
    pub failures: u32,
    /// Disconnected because we both seed: not worth redialing while we seed.
    pub seed: bool,
}

#[derive(Default)]
pub(crate) struct Totals {
    pub addr: Option<SocketAddr>,
    pub client: Option<String>,
    pub down: u64,
    pub up: u64,
}

pub(crate) struct SwarmState {
    pub meta: Arc<Metainfo>,
    pub upload_slots: usize,
    pub picker: Option<Picker>,
    pub peers: HashMap<PeerKey, PeerState>,
    pub by_id: HashMap<[u8; 20], PeerKey>,
    pub bans: BanList,
    pub smartban: SmartBan,
    departed: HashMap<PeerKey, PeerIdent>,
    departed_order: VecDeque<PeerKey>,
    pub known: HashMap<SocketAddr, Known>,
    pub totals: HashMap<[u8; 20], Totals>,
    pub optimistic: Option<PeerKey>,
    /// While seeding: the piece → the peer we are serving it to first, and since when.
    pub serving: HashMap<u32, (PeerKey, Instant)>,
    /// Blocks queued for upload, per piece (a seeder serving a piece many
    /// times is feeding duplicates).
    pub served_blocks: Vec<u32>,
    pub ticks: u64,
    pub state: SessionState,
    pub hash_failures: u32,
    pub resumed: u64,
    pub downloaded: u64,
    pub wasted: u64,
    pub download_rate: u64,
    pub upload_rate: u64,
    pub prev_down: u64,
    pub prev_up: u64,
    /// The last verified piece (or the start of the download).
    pub last_progress: Instant,
    /// Hash failures since `last_progress`.
    pub failures: Failures,
    pub stalled: Option<String>,
    pub last_stall_check: Instant,
}

impl SwarmState {
    pub fn new(meta: Arc<Metainfo>, upload_slots: usize, now: Instant) -> SwarmState {
        let n = meta.num_pieces() as usize;
        SwarmState {
            meta,
            upload_slots,
            picker: None,
            peers: HashMap::new(),
            by_id: HashMap::new(),
            bans: BanList::default(),
            smartban: SmartBan::default(),
            departed: HashMap::new(),
            departed_order: VecDeque::new(),
            known: HashMap::new(),
            totals: HashMap::new(),
            optimistic: None,
            serving: HashMap::new(),
            served_blocks: vec![0; n],
            ticks: 0,
            state: SessionState::Checking,
            hash_failures: 0,
            resumed: 0,
            downloaded: 0,
            wasted: 0,
            download_rate: 0,
            upload_rate: 0,
            prev_down: 0,
            prev_up: 0,
            last_progress: now,
            failures: Failures::default(),
            stalled: None,
            last_stall_check: now,
        }
    }

    /// The peer behind a key, connected or recently gone.
    pub fn ident_of(&self, key: PeerKey) -> Option<PeerIdent> {
        self.peers
            .get(&key)
            .map(PeerState::ident)
            .or_else(|| self.departed.get(&key).copied())
    }

    /// Peer `key` has `piece`: availability and interest follow.
    pub fn note_has(&mut self, key: PeerKey, piece: u32) {
        let SwarmState { picker, peers, .. } = self;
        let (Some(picker), Some(p)) = (picker.as_mut(), peers.get_mut(&key)) else {
            return;
        };
        if p.has.set(piece) {
            picker.peer_has(piece);
            if !picker.have().get(piece) {
                p.interesting += 1;
            }
        }
    }

    /// Peer `key` choked us: everything requested from it goes back.
    pub fn set_choked(&mut self, key: PeerKey) {
        let SwarmState { picker, peers, .. } = self;
        let Some(p) = peers.get_mut(&key) else { return };
        p.peer_choking = true;
        if let Some(picker) = picker.as_mut() {
            for b in p.inflight.drain() {
                picker.release(key, &b);
            }
        }
    }

    /// We are interested in a peer exactly when it has a piece we lack.
    pub fn update_interest(&mut self, key: PeerKey) {
        if let Some(p) = self.peers.get_mut(&key) {
            let want = p.interesting > 0;
            if want != p.am_interested {
                p.am_interested = want;
                p.send(Outgoing::Msg(if want {
                    Message::Interested
                } else {
                    Message::NotInterested
                }));
            }
        }
    }

    /// Unchokes an interested peer at once when a slot is free, rather than
    /// making it wait for the next rechoke.
    pub fn maybe_unchoke(&mut self, key: PeerKey) {
        let unchoked = self.peers.values().filter(|p| !p.am_choking).count();
        let optimistic = self.optimistic;
        if let Some(p) = self.peers.get_mut(&key) {
            if p.peer_interested && p.am_choking && unchoked < self.upload_slots {
                p.am_choking = false;
                p.send(Outgoing::Msg(Message::Unchoke));
            } else if !p.peer_interested && !p.am_choking && optimistic != Some(key) {
                // Keep the slot for someone who wants it.
                p.am_choking = true;
                p.send(Outgoing::Choke { reject: p.fast });
            }
        }
    }

    /// Tops up a peer's request pipeline.
    pub fn refill(&mut self, key: PeerKey, now: Instant) {
        let SwarmState { picker, peers, .. } = self;
        let (Some(picker), Some(p)) = (picker.as_mut(), peers.get_mut(&key)) else {
            return;
        };
        if p.peer_choking || !p.am_interested || p.leaving {
            return;
        }
        let depth = p.depth.min(p.reqq).max(1);
        let have = p.inflight.len();
        if have >= depth {
            return;
        }
        let deficit = depth - have;
        // Batch small top-ups: picking has a fixed cost.
        if have > 0 && deficit < (depth / 8).max(1) {
            return;
        }
        let mut out = Vec::with_capacity(deficit);
        if p.avoid.is_empty() {
            picker.pick(key, &p.has, have, deficit, &mut out);
        } else {
            p.avoid.retain(|_, until| *until > now);
            let mut has = p.has.clone();
            for piece in p.avoid.keys() {
                has.clear(*piece);
            }
            picker.pick(key, &has, have, deficit, &mut out);
        }
        if out.is_empty() {
            return;
        }
        if p.inflight.is_empty() {
            // The snub clock measures waiting for requested data only.
            p.last_block = now;
        }
        p.inflight.extend(out.iter().copied());
        p.send(Outgoing::Requests(out));
    }

    pub fn refill_all(&mut self, now: Instant) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.refill(k, now);
        }
    }

    /// Views of every peer for admission decisions.
    pub fn views(&self, now: Instant) -> Vec<PeerView> {
        self.peers.iter().map(|(k, p)| p.view(*k, now)).collect()
    }

    /// Marks a peer as leaving and closes its connection; its task then
    /// calls `forget_peer`.
    pub fn close(&mut self, key: PeerKey) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.leaving = true;
            p.kill.cancel();
        }
    }

    /// A connection ended: give back its blocks and forget it (keeping its
    /// identity for late smart-ban verdicts and its totals for reports).
    pub fn forget_peer(&mut self, key: PeerKey, now: Instant) -> Option<PeerState> {
        let p = self.peers.remove(&key)?;
        if self.by_id.get(&p.peer_id) == Some(&key) {
            self.by_id.remove(&p.peer_id);
        }
        self.departed.insert(key, p.ident());
        self.departed_order.push_back(key);
        while self.departed_order.len() > MAX_DEPARTED {
            if let Some(old) = self.departed_order.pop_front() {
                self.departed.remove(&old);
            }
        }
        let up = p.writer.uploaded.load(Ordering::Relaxed);
        let t = self.totals.entry(p.peer_id).or_default();
        t.down += p.down_total;
        t.up += up;
        if t.client.is_none() {
            t.client = p.client.clone();
        }
        if self.optimistic == Some(key) {
            self.optimistic = None;
        }
        self.serving.retain(|_, e| e.0 != key);
        if let Some(k) = p.listen_addr.and_then(|a| self.known.get_mut(&a)) {
            k.state = AddrState::Idle;
            k.seed = p.has.is_full();
            k.next_try = Some(now + std::time::Duration::from_secs(5));
        }
        if let Some(picker) = self.picker.as_mut() {
            for b in &p.inflight {
                picker.release(key, b);
            }
            picker.peer_removed(&p.has);
        }
        p.kill.cancel();
        self.refill_all(now);
        Some(p)
    }

    /// Live connections (not being closed).
    pub fn live_peers(&self) -> usize {
        self.peers.values().filter(|p| !p.leaving).count()
    }

    /// `STATE.md`'s invariants 1–3 and 7, for tests after every event.
    #[cfg(test)]
    pub fn check_invariants(&self) {
        let Some(picker) = self.picker.as_ref() else {
            return;
        };
        let inflight: HashMap<PeerKey, Vec<BlockRef>> = self
            .peers
            .iter()
            .map(|(k, p)| (*k, p.inflight.iter().copied().collect()))
            .collect();
        picker.check_invariants(&inflight);
        for (k, p) in &self.peers {
            let lacking = p.has.ones().filter(|i| !picker.have().get(*i)).count() as u32;
            assert_eq!(p.interesting, lacking, "peer {k}: interesting count");
            for b in &p.inflight {
                assert!(
                    picker.is_requested_by(b, *k),
                    "peer {k} has {b:?} in flight but the picker does not"
                );
            }
            if p.peer_choking {
                assert!(
                    p.inflight.is_empty(),
                    "peer {k} chokes us with requests in flight"
                );
            }
        }
    }
}
