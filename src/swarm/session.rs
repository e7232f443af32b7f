//! One torrent's session: its peers, picker, choker, announce loop and the
//! path from a received block to a verified piece on disk.
//!
//! All mutable swarm state sits in one `SwarmState` behind a
//! `parking_lot::Mutex`. Handlers hold it for bookkeeping and a 16 KiB copy,
//! never across an `.await`, so a std-style lock beats an async one here
//! (the same reasoning as mini-redis's `db.rs`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha1::{Digest, Sha1};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use super::bitfield::Bitfield;
use super::choker::{self, Candidate};
use super::picker::{BlockOutcome, PeerKey, Picker};
use super::{Check, EngineInner, SessionOptions};
use crate::metainfo::{InfoHash, Metainfo, BLOCK_SIZE};
use crate::peer::codec::{BlockRef, Message};
use crate::peer::connection::{dial, ConnectError, Connected, Limiter, Outgoing, WriterCounters};
use crate::storage::Storage;
use crate::tracker::{run_announce_loop, AnnounceConfig, TransferStats};

/// Items queued for one connection's writer before we give up on the peer
/// (it sends, but does not read what we send back).
const MAX_PENDING_WRITES: u64 = 16_384;
/// Piece maps (bitfield, have-all) we accept from one peer: aria2 sends a
/// late second one; more than a few is abuse.
const MAX_PIECE_MAPS: u32 = 4;
/// Requests we queue for one peer before refusing more.
pub(crate) const MAX_PEER_REQUESTS: u64 = 2048;
/// Our default request pipeline depth before we know a peer's rate.
const INITIAL_DEPTH: usize = 128;
const MIN_DEPTH: usize = 16;
const MAX_DEPTH: usize = 1024;
/// Keep this many seconds' worth of the peer's rate in flight.
const QUEUE_SECS: f64 = 0.5;
/// A peer that owes us blocks and sends none for this long is snubbed.
const SNUB_AFTER: Duration = Duration::from_secs(30);
/// Unrequested data we tolerate from one peer before dropping it.
const MAX_WASTE: u64 = 32 << 20;
const RECHOKE_EVERY: u64 = 10;
/// A seeder serves a piece to one peer at a time for this long: a second
/// peer asking for it meanwhile is rejected (fast extension) and fetches it
/// from the first once that one has it. Without this, leechers that pick the
/// same rare piece at once make the seeder, the scarcest uplink, send it
/// twice (measured: a quarter of a seeder's bytes with eight leechers).
const SERVE_EXCLUSIVE: Duration = Duration::from_secs(5);
/// How long we leave a piece alone after a peer rejected it.
const AVOID_AFTER_REJECT: Duration = Duration::from_secs(3);
const OPTIMISTIC_EVERY: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Checking,
    Downloading,
    Seeding,
    Stopped,
    Failed(String),
}

/// A snapshot of a session for progress displays and `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub state: SessionState,
    pub pieces_have: u32,
    pub pieces_total: u32,
    /// Verified bytes (pieces had × their length).
    pub bytes_have: u64,
    /// Verified bytes found on disk when the session started (resume).
    pub bytes_resumed: u64,
    pub bytes_total: u64,
    /// Payload received from the network (including duplicates and waste).
    pub downloaded: u64,
    pub uploaded: u64,
    pub wasted: u64,
    pub download_rate: u64,
    pub upload_rate: u64,
    pub peers: usize,
    pub hash_failures: u32,
    /// Every piece verified and every file fsynced.
    pub complete: bool,
}

/// What one remote peer (by peer id) gave and took, over this session.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStat {
    pub peer_id: String,
    pub addr: SocketAddr,
    pub client: Option<String>,
    pub downloaded_from: u64,
    pub uploaded_to: u64,
    pub connected: bool,
}

pub(crate) struct PeerState {
    addr: SocketAddr,
    /// The address the peer accepts connections on, when known.
    listen_addr: Option<SocketAddr>,
    peer_id: [u8; 20],
    client: Option<String>,
    tx: mpsc::UnboundedSender<Outgoing>,
    kill: CancellationToken,
    has: Bitfield,
    fast: bool,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    inflight: HashSet<BlockRef>,
    depth: usize,
    reqq: usize,
    interesting: u32,
    down_total: u64,
    down_prev: u64,
    down_rate: u64,
    up_prev: u64,
    up_rate: u64,
    writer: Arc<WriterCounters>,
    last_block: Instant,
    strikes: u32,
    wasted: u64,
    /// Pieces this peer rejected, not asked of it again until the instant.
    avoid: HashMap<u32, Instant>,
    /// Bitfields and have-alls received: each costs a pass over all pieces.
    piece_maps: u32,
}

impl PeerState {
    fn send(&self, o: Outgoing) {
        self.writer.pending.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(o);
    }
}

#[derive(Debug, Default)]
struct Known {
    next_try: Option<Instant>,
    failures: u32,
    connected: bool,
    dialing: bool,
    is_self: bool,
    /// Disconnected because we both seed: not worth redialing while we seed.
    seed: bool,
}

#[derive(Default)]
struct Totals {
    addr: Option<SocketAddr>,
    client: Option<String>,
    down: u64,
    up: u64,
}

pub(crate) struct SwarmState {
    picker: Option<Picker>,
    peers: HashMap<PeerKey, PeerState>,
    by_id: HashMap<[u8; 20], PeerKey>,
    banned_ids: HashSet<[u8; 20]>,
    banned_addrs: HashSet<SocketAddr>,
    known: HashMap<SocketAddr, Known>,
    totals: HashMap<[u8; 20], Totals>,
    optimistic: Option<PeerKey>,
    /// While seeding: the piece → the peer we are serving it to first, and since when.
    serving: HashMap<u32, (PeerKey, Instant)>,
    ticks: u64,
    state: SessionState,
    hash_failures: u32,
    resumed: u64,
    download_rate: u64,
    upload_rate: u64,
    prev_down: u64,
    prev_up: u64,
}

/// A running torrent. Obtain one from [`super::Engine::add`].
pub struct Session {
    engine: Arc<EngineInner>,
    meta: Arc<Metainfo>,
    storage: Arc<Storage>,
    opts: SessionOptions,
    state: Mutex<SwarmState>,
    progress_tx: watch::Sender<Progress>,
    stats_tx: watch::Sender<TransferStats>,
    uploaded: Arc<AtomicU64>,
    downloaded: AtomicU64,
    wasted: AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
    up_limiters: Vec<Arc<Limiter>>,
    down_limiters: Vec<Arc<Limiter>>,
    next_key: AtomicU64,
    addr_tx: mpsc::Sender<Vec<SocketAddr>>,
    finalizing: AtomicBool,
    /// Blocks queued for upload, per piece: how often we served each piece
    /// (a seeder serving a piece many times is feeding duplicates).
    served_blocks: Vec<std::sync::atomic::AtomicU32>,
}

impl Session {
    pub(crate) fn start(
        engine: Arc<EngineInner>,
        meta: Arc<Metainfo>,
        parent: PathBuf,
        opts: SessionOptions,
    ) -> Arc<Session> {
        let storage = Arc::new(match &opts.content_dir {
            Some(root) => Storage::with_root(meta.clone(), root, opts.mode),
            None => Storage::new(meta.clone(), &parent, opts.mode),
        });
        let total = meta.total_length;
        let (progress_tx, _) = watch::channel(Progress {
            state: SessionState::Checking,
            pieces_have: 0,
            pieces_total: meta.num_pieces(),
            bytes_have: 0,
            bytes_total: total,
            downloaded: 0,
            uploaded: 0,
            wasted: 0,
            download_rate: 0,
            upload_rate: 0,
            peers: 0,
            hash_failures: 0,
            complete: false,
            bytes_resumed: 0,
        });
        let (stats_tx, _) = watch::channel(TransferStats {
            uploaded: 0,
            downloaded: 0,
            left: total,
        });
        let (addr_tx, addr_rx) = mpsc::channel(64);
        let mut up_limiters: Vec<_> = crate::peer::connection::limiter(opts.upload_limit)
            .into_iter()
            .collect();
        up_limiters.extend(engine.up.clone());
        let mut down_limiters: Vec<_> = crate::peer::connection::limiter(opts.download_limit)
            .into_iter()
            .collect();
        down_limiters.extend(engine.down.clone());
        let cancel = engine.shutdown.child_token();
        let s = Arc::new(Session {
            engine,
            meta: meta.clone(),
            storage,
            state: Mutex::new(SwarmState {
                picker: None,
                peers: HashMap::new(),
                by_id: HashMap::new(),
                banned_ids: HashSet::new(),
                banned_addrs: HashSet::new(),
                known: HashMap::new(),
                totals: HashMap::new(),
                optimistic: None,
                serving: HashMap::new(),
                ticks: 0,
                state: SessionState::Checking,
                hash_failures: 0,
                resumed: 0,
                download_rate: 0,
                upload_rate: 0,
                prev_down: 0,
                prev_up: 0,
            }),
            opts,
            progress_tx,
            stats_tx,
            uploaded: Arc::new(AtomicU64::new(0)),
            downloaded: AtomicU64::new(0),
            wasted: AtomicU64::new(0),
            cancel,
            tasks: TaskTracker::new(),
            up_limiters,
            down_limiters,
            next_key: AtomicU64::new(1),
            addr_tx,
            finalizing: AtomicBool::new(false),
            served_blocks: (0..meta.num_pieces()).map(|_| Default::default()).collect(),
        });
        let span =
            tracing::info_span!("torrent", info_hash = %meta.info_hash.short(), name = %meta.name);
        let s2 = s.clone();
        s.tasks
            .spawn(async move { s2.run(addr_rx).await }.instrument(span));
        s
    }

    pub fn info_hash(&self) -> InfoHash {
        self.meta.info_hash
    }

    pub fn meta(&self) -> &Arc<Metainfo> {
        &self.meta
    }

    /// Where the data lives.
    pub fn root(&self) -> PathBuf {
        self.storage.root()
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress_tx.subscribe()
    }

    /// The current progress with live byte counters (rates are per tick).
    pub fn snapshot(&self) -> Progress {
        self.publish();
        self.progress_tx.borrow().clone()
    }

    pub(crate) fn accepting(&self) -> bool {
        !self.cancel.is_cancelled() && self.state.lock().picker.is_some()
    }

    /// Dial these peers (in addition to the tracker's).
    pub fn add_peers(&self, peers: Vec<SocketAddr>) {
        let _ = self.addr_tx.try_send(peers);
    }

    /// Waits until every piece is verified and synced; `Err` if the session
    /// failed or stopped first.
    pub async fn wait_complete(&self) -> Result<(), String> {
        let mut rx = self.progress();
        loop {
            {
                let p = rx.borrow_and_update();
                if p.complete {
                    return Ok(());
                }
                match &p.state {
                    SessionState::Failed(e) => return Err(e.clone()),
                    SessionState::Stopped => return Err("stopped".into()),
                    _ => {}
                }
            }
            if rx.changed().await.is_err() {
                return Err("session ended".into());
            }
        }
    }

    /// Waits until the initial check is done (`Err` if it failed).
    pub async fn wait_checked(&self) -> Result<(), String> {
        let mut rx = self.progress();
        loop {
            {
                let p = rx.borrow_and_update();
                match &p.state {
                    SessionState::Checking => {}
                    SessionState::Failed(e) => return Err(e.clone()),
                    SessionState::Stopped => return Err("stopped".into()),
                    _ => return Ok(()),
                }
            }
            if rx.changed().await.is_err() {
                return Err("session ended".into());
            }
        }
    }

    /// How many times each piece was served, as a histogram: index k counts
    /// the pieces served k times (the last bucket: k or more).
    pub fn upload_redundancy(&self) -> [u32; 5] {
        let mut h = [0u32; 5];
        for (i, c) in self.served_blocks.iter().enumerate() {
            let blocks = self.meta.piece_len(i as u32).div_ceil(BLOCK_SIZE as u64) as u32;
            let times = c.load(Ordering::Relaxed).div_ceil(blocks.max(1)) as usize;
            h[times.min(4)] += 1;
        }
        h
    }

    /// Stops the session: `stopped` announce, connections closed, files closed.
    pub async fn stop(&self) {
        let h = self.upload_redundancy();
        if h[1..].iter().any(|&n| n > 0) {
            debug!(
                never = h[0],
                once = h[1],
                twice = h[2],
                thrice = h[3],
                more = h[4],
                "pieces served"
            );
        }
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        {
            let mut st = self.state.lock();
            if !matches!(st.state, SessionState::Failed(_)) {
                st.state = SessionState::Stopped;
            }
            st.peers.clear();
        }
        self.publish();
        if self
            .engine
            .sessions
            .lock()
            .remove(&self.meta.info_hash)
            .is_some()
        {
            self.engine
                .retired_uploaded
                .fetch_add(self.uploaded.load(Ordering::Relaxed), Ordering::Relaxed);
            self.engine
                .retired_downloaded
                .fetch_add(self.downloaded.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.storage.close_all();
    }

    /// Per-peer totals, busiest first.
    pub fn peer_stats(&self) -> Vec<PeerStat> {
        let st = self.state.lock();
        let mut out: Vec<PeerStat> = st
            .totals
            .iter()
            .map(|(id, t)| {
                let live = st.by_id.get(id).and_then(|k| st.peers.get(k));
                let (ld, lu) = live
                    .map(|p| (p.down_total, p.writer.uploaded.load(Ordering::Relaxed)))
                    .unwrap_or((0, 0));
                PeerStat {
                    peer_id: String::from_utf8_lossy(&id[..8]).into_owned()
                        + &hex::encode(&id[8..]),
                    addr: live
                        .and_then(|p| p.listen_addr)
                        .or(t.addr)
                        .unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                    client: live.and_then(|p| p.client.clone()).or(t.client.clone()),
                    downloaded_from: t.down + ld,
                    uploaded_to: t.up + lu,
                    connected: live.is_some(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (b.downloaded_from + b.uploaded_to).cmp(&(a.downloaded_from + a.uploaded_to))
        });
        out
    }

    fn fail(&self, reason: String) {
        warn!("session failed: {reason}");
        self.state.lock().state = SessionState::Failed(reason);
        self.publish();
        self.cancel.cancel();
    }

    fn publish(&self) {
        let st = self.state.lock();
        let (have, bytes_have) = match &st.picker {
            Some(p) => {
                let h = p.have();
                let bytes: u64 = if h.is_full() {
                    self.meta.total_length
                } else {
                    h.ones().map(|i| self.meta.piece_len(i)).sum()
                };
                (h.count(), bytes)
            }
            None => (0, 0),
        };
        let p = Progress {
            state: st.state.clone(),
            pieces_have: have,
            pieces_total: self.meta.num_pieces(),
            bytes_have,
            bytes_total: self.meta.total_length,
            downloaded: self.downloaded.load(Ordering::Relaxed),
            uploaded: self.uploaded.load(Ordering::Relaxed),
            wasted: self.wasted.load(Ordering::Relaxed),
            download_rate: st.download_rate,
            upload_rate: st.upload_rate,
            peers: st.peers.len(),
            hash_failures: st.hash_failures,
            complete: st.state == SessionState::Seeding,
            bytes_resumed: st.resumed,
        };
        drop(st);
        self.stats_tx.send_replace(TransferStats {
            uploaded: p.uploaded,
            downloaded: p.downloaded,
            left: p.bytes_total - p.bytes_have,
        });
        self.progress_tx.send_replace(p);
    }

    /// Check data, then run the announce loop, the connector and the ticker.
    async fn run(self: Arc<Self>, mut addr_rx: mpsc::Receiver<Vec<SocketAddr>>) {
        let n = self.meta.num_pieces();
        let have = match self.opts.check {
            Check::AssumeComplete => Bitfield::full(n),
            Check::Verify => {
                let storage = self.storage.clone();
                let threads = self.engine.hash_threads;
                let cancel = Arc::new(AtomicBool::new(false));
                let c2 = cancel.clone();
                let started = std::time::Instant::now();
                let job = tokio::task::spawn_blocking(move || {
                    storage.verify(threads, &AtomicU64::new(0), &c2)
                });
                let res = tokio::select! {
                    _ = self.cancel.cancelled() => { cancel.store(true, Ordering::Relaxed); return; }
                    r = job => r,
                };
                match res {
                    Ok(Some(v)) => {
                        let b = Bitfield::from_bools(&v);
                        info!(
                            have = b.count(),
                            pieces = n,
                            secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                            "checked existing data"
                        );
                        b
                    }
                    _ => return self.fail("checking existing data failed".into()),
                }
            }
        };
        if self.opts.require_complete && !have.is_full() {
            return self.fail(format!(
                "data does not match the torrent: {} of {} pieces are missing or corrupt",
                n - have.count(),
                n
            ));
        }
        let complete = have.is_full();
        {
            let mut st = self.state.lock();
            st.resumed = have.ones().map(|i| self.meta.piece_len(i)).sum();
            st.picker = Some(Picker::new(&self.meta, have, self.opts.memory_budget));
            st.state = if complete {
                SessionState::Seeding
            } else {
                SessionState::Downloading
            };
        }
        if complete && self.opts.mode == crate::storage::Mode::ReadWrite {
            // Make sure empty files exist even when everything else was already there.
            let storage = self.storage.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || storage.finalize()).await {
                return self.fail(format!("cannot finalize files: {e}"));
            }
        }
        self.publish();

        let urls = self
            .opts
            .announce
            .clone()
            .unwrap_or_else(|| self.meta.announce.clone());
        let urls: Vec<String> = urls
            .into_iter()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .collect();
        let (peers_tx, mut peers_rx) = mpsc::channel::<Vec<SocketAddr>>(16);
        if !urls.is_empty() {
            let cfg = AnnounceConfig {
                urls,
                info_hash: self.meta.info_hash,
                peer_id: self.engine.peer_id,
                port: self.engine.local_addr.port(),
                numwant: 80,
            };
            let http = self.engine.http.clone();
            let stats = self.stats_tx.subscribe();
            let cancel = self.cancel.clone();
            self.tasks
                .spawn(run_announce_loop(http, cfg, stats, peers_tx, cancel).in_current_span());
        }
        self.learn(self.opts.peers.clone());
        self.dial_more();

        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(addrs) = peers_rx.recv() => { self.learn(addrs); self.dial_more(); }
                Some(addrs) = addr_rx.recv() => { self.learn(addrs); self.dial_more(); }
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.on_tick(now.duration_since(last));
                    last = now;
                    self.dial_more();
                }
            }
        }
        // Close every connection; their tasks end and release their state.
        let peers: Vec<CancellationToken> = self
            .state
            .lock()
            .peers
            .values()
            .map(|p| p.kill.clone())
            .collect();
        peers.iter().for_each(|k| k.cancel());
    }

    fn learn(&self, addrs: Vec<SocketAddr>) {
        let mut st = self.state.lock();
        for a in addrs {
            if a.port() == 0 {
                continue;
            }
            if st.known.len() >= 1000 && !st.known.contains_key(&a) {
                // Make room: forget addresses that keep failing.
                st.known
                    .retain(|_, k| k.connected || k.dialing || k.failures < 3);
                if st.known.len() >= 1000 {
                    continue;
                }
            }
            st.known.entry(a).or_default();
        }
    }

    /// Dials known peers we are not connected to, within the connection limit.
    fn dial_more(self: &Arc<Self>) {
        if self.cancel.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let mut to_dial = Vec::new();
        {
            let mut st = self.state.lock();
            if st.picker.is_none() {
                return;
            }
            let seeding = st.state == SessionState::Seeding;
            let connected: HashSet<SocketAddr> =
                st.peers.values().filter_map(|p| p.listen_addr).collect();
            let dialing = st.known.values().filter(|k| k.dialing).count();
            let mut room = self
                .opts
                .max_peers
                .saturating_sub(st.peers.len() + dialing)
                .min(20usize.saturating_sub(dialing));
            let banned = st.banned_addrs.clone();
            for (addr, k) in st.known.iter_mut() {
                if room == 0 {
                    break;
                }
                if k.connected
                    || k.dialing
                    || k.is_self
                    || (seeding && k.seed)
                    || connected.contains(addr)
                    || banned.contains(addr)
                {
                    continue;
                }
                if k.next_try.is_some_and(|t| t > now) {
                    continue;
                }
                k.dialing = true;
                room -= 1;
                to_dial.push(*addr);
            }
        }
        for addr in to_dial {
            let s = self.clone();
            self.tasks.spawn(
                async move {
                    let r = tokio::select! {
                        _ = s.cancel.cancelled() => return,
                        r = dial(addr, s.meta.info_hash.0, s.engine.peer_id) => r,
                    };
                    match r {
                        Ok(conn) => {
                            if let Some(k) = s.state.lock().known.get_mut(&addr) {
                                k.dialing = false;
                                k.failures = 0;
                            }
                            s.start_peer(conn, Some(addr));
                        }
                        Err(e) => {
                            debug!(peer = %addr, "dial failed: {e}");
                            let mut st = s.state.lock();
                            if let Some(k) = st.known.get_mut(&addr) {
                                k.dialing = false;
                                k.is_self |= matches!(e, ConnectError::OwnPeerId);
                                k.failures += 1;
                                let backoff =
                                    Duration::from_secs((2u64 << k.failures.min(7)).min(300));
                                k.next_try = Some(Instant::now() + backoff);
                            }
                        }
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// Registers a handshaken connection and starts its task.
    pub(crate) fn start_peer(self: &Arc<Self>, conn: Connected, listen_addr: Option<SocketAddr>) {
        let id = conn.remote.peer_id;
        let (tx, rx) = mpsc::unbounded_channel();
        let kill = self.cancel.child_token();
        let writer = Arc::new(WriterCounters::default());
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let fast = conn.remote.supports(crate::peer::codec::reserved::FAST);
        let ext = conn
            .remote
            .supports(crate::peer::codec::reserved::EXTENSION);
        let first = {
            let mut st = self.state.lock();
            let Some(picker) = st.picker.as_ref() else {
                return;
            };
            if self.cancel.is_cancelled()
                || st.banned_ids.contains(&id)
                || st.banned_addrs.contains(&conn.addr)
                || listen_addr.is_some_and(|a| st.banned_addrs.contains(&a))
                || st.by_id.contains_key(&id)
                || st.peers.len() >= self.opts.max_peers
            {
                debug!(peer = %conn.addr, "connection not needed");
                if let Some(k) = listen_addr.and_then(|a| st.known.get_mut(&a)) {
                    k.next_try = Some(Instant::now() + Duration::from_secs(60));
                }
                return;
            }
            let have = picker.have().clone();
            if let Some(k) = listen_addr.and_then(|a| st.known.get_mut(&a)) {
                k.connected = true;
            }
            st.by_id.insert(id, key);
            st.totals.entry(id).or_default().addr = listen_addr.or(Some(conn.addr));
            st.peers.insert(
                key,
                PeerState {
                    addr: conn.addr,
                    listen_addr,
                    peer_id: id,
                    client: None,
                    tx: tx.clone(),
                    kill: kill.clone(),
                    has: Bitfield::new(self.meta.num_pieces()),
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
                    writer: writer.clone(),
                    last_block: Instant::now(),
                    strikes: 0,
                    wasted: 0,
                    avoid: HashMap::new(),
                    piece_maps: 0,
                },
            );
            have
        };
        // Our piece map first, then the extension handshake.
        let msg = if first.is_full() && fast {
            Message::HaveAll
        } else if first.count() == 0 && fast {
            Message::HaveNone
        } else if first.count() == 0 {
            Message::KeepAlive
        } else {
            Message::Bitfield(bytes::Bytes::copy_from_slice(first.as_bytes()))
        };
        let _ = tx.send(Outgoing::Msg(msg));
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
            .spawn(super::peer_task::run(s, key, conn, rx, writer, kill).instrument(span));
        self.publish_peers();
    }

    fn publish_peers(&self) {
        let n = self.state.lock().peers.len();
        self.progress_tx.send_modify(|p| p.peers = n);
    }

    pub(crate) fn writer_inputs(&self) -> (Arc<Storage>, Vec<Arc<Limiter>>, Arc<AtomicU64>) {
        (
            self.storage.clone(),
            self.up_limiters.clone(),
            self.uploaded.clone(),
        )
    }

    pub(crate) fn down_limiters(&self) -> &[Arc<Limiter>] {
        &self.down_limiters
    }

    /// A connection ended: give back its blocks and forget it.
    pub(crate) fn remove_peer(self: &Arc<Self>, key: PeerKey, reason: &str) {
        let mut st = self.state.lock();
        let Some(p) = st.peers.remove(&key) else {
            return;
        };
        debug!(peer = %p.addr, "disconnected: {reason}");
        if st.by_id.get(&p.peer_id) == Some(&key) {
            st.by_id.remove(&p.peer_id);
        }
        let up = p.writer.uploaded.load(Ordering::Relaxed);
        let t = st.totals.entry(p.peer_id).or_default();
        t.down += p.down_total;
        t.up += up;
        if t.client.is_none() {
            t.client = p.client.clone();
        }
        if st.optimistic == Some(key) {
            st.optimistic = None;
        }
        st.serving.retain(|_, e| e.0 != key);
        if let Some(k) = p.listen_addr.and_then(|a| st.known.get_mut(&a)) {
            k.connected = false;
            k.seed = p.has.is_full();
            k.next_try = Some(Instant::now() + Duration::from_secs(5));
        }
        if let Some(picker) = st.picker.as_mut() {
            for b in &p.inflight {
                picker.release(key, b);
            }
            picker.peer_removed(&p.has);
        }
        p.kill.cancel();
        let others: Vec<PeerKey> = st.peers.keys().copied().collect();
        for k in others {
            self.refill(&mut st, k);
        }
        drop(st);
        self.publish_peers();
    }

    fn ban(&self, st: &mut SwarmState, key: PeerKey, why: &str) {
        if let Some(p) = st.peers.get(&key) {
            warn!(peer = %p.addr, "banning peer: {why}");
            st.banned_ids.insert(p.peer_id);
            if let Some(a) = p.listen_addr {
                st.banned_addrs.insert(a);
            }
            p.kill.cancel();
        }
    }

    /// Handles one message from peer `key`. `Err` closes the connection with that reason.
    pub(crate) fn on_message(self: &Arc<Self>, key: PeerKey, msg: Message) -> Result<(), String> {
        let mut verify: Option<(u32, Vec<u8>)> = None;
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            let n = self.meta.num_pieces();
            let Some(picker) = st.picker.as_mut() else {
                return Err("not ready".into());
            };
            let we_complete = picker.is_complete();
            let redundant = match &msg {
                Message::Request(b) if we_complete => match st.serving.get(&b.piece) {
                    Some(&(first, since)) => {
                        first != key
                            && since.elapsed() < SERVE_EXCLUSIVE
                            && st.peers.get(&first).is_some_and(|o| !o.has.get(b.piece))
                    }
                    None => false,
                },
                _ => false,
            };
            // Messages that cannot change what we want from or give to this peer
            // skip the interest, choke and pipeline updates below.
            let changes_state = !matches!(
                msg,
                Message::KeepAlive
                    | Message::Port(_)
                    | Message::Suggest(_)
                    | Message::AllowedFast(_)
                    | Message::Unknown(_)
                    | Message::Extended { .. }
                    | Message::Request(_)
                    | Message::Cancel(_)
            );
            let Some(p) = st.peers.get_mut(&key) else {
                return Err("gone".into());
            };
            if p.writer.pending.load(Ordering::Relaxed) > MAX_PENDING_WRITES {
                return Err("peer does not read what we send".into());
            }
            match msg {
                Message::KeepAlive
                | Message::Port(_)
                | Message::Suggest(_)
                | Message::AllowedFast(_)
                | Message::Unknown(_) => {}
                Message::HaveAll | Message::HaveNone if !p.fast => {
                    return Err("fast-extension message without the fast extension".into());
                }
                // BEP 3 wants the piece map first, but aria2 sends `have`s
                // and then a bitfield; merging keeps us interoperable.
                Message::Bitfield(_) | Message::HaveAll if p.piece_maps >= MAX_PIECE_MAPS => {
                    return Err("keeps resending its piece map".into());
                }
                Message::Bitfield(bytes) => {
                    p.piece_maps += 1;
                    let incoming = Bitfield::from_bytes(&bytes, n);
                    for i in incoming.ones() {
                        if p.has.set(i) {
                            picker.peer_has(i);
                            if !picker.have().get(i) {
                                p.interesting += 1;
                            }
                        }
                    }
                }
                Message::HaveAll => {
                    p.piece_maps += 1;
                    for i in 0..n {
                        if p.has.set(i) {
                            picker.peer_has(i);
                            if !picker.have().get(i) {
                                p.interesting += 1;
                            }
                        }
                    }
                }
                Message::HaveNone => {}
                Message::Have(i) => {
                    if i >= n {
                        return Err(format!("have for piece {i} of {n}"));
                    }
                    if p.has.set(i) {
                        picker.peer_has(i);
                        if !picker.have().get(i) {
                            p.interesting += 1;
                        }
                    }
                    // The peer we served it to has it: others can fetch it there.
                    if st.serving.get(&i).is_some_and(|e| e.0 == key) {
                        st.serving.remove(&i);
                    }
                }
                Message::Choke => {
                    p.peer_choking = true;
                    for b in p.inflight.drain() {
                        picker.release(key, &b);
                    }
                }
                Message::Unchoke => {
                    p.peer_choking = false;
                    // The snub clock starts now, not at our last block.
                    p.last_block = Instant::now();
                }
                Message::Interested => p.peer_interested = true,
                Message::NotInterested => p.peer_interested = false,
                Message::Request(b) => {
                    let valid = b.piece < n
                        && b.len > 0
                        && b.begin as u64 + b.len as u64 <= self.meta.piece_len(b.piece);
                    if !valid {
                        return Err(format!("invalid request {b:?}"));
                    }
                    if p.am_choking || !picker.have().get(b.piece) || (redundant && p.fast) {
                        if p.fast {
                            p.send(Outgoing::Msg(Message::Reject(b)));
                        }
                    } else if p.writer.queued_uploads.load(Ordering::Relaxed) >= MAX_PEER_REQUESTS {
                        if p.fast {
                            p.send(Outgoing::Msg(Message::Reject(b)));
                        } else {
                            return Err("too many outstanding requests".into());
                        }
                    } else {
                        p.writer.queued_uploads.fetch_add(1, Ordering::Relaxed);
                        self.served_blocks[b.piece as usize].fetch_add(1, Ordering::Relaxed);
                        p.send(Outgoing::Upload(b));
                        if we_complete {
                            st.serving.entry(b.piece).or_insert((key, Instant::now()));
                        }
                    }
                }
                Message::Cancel(b) => p.send(Outgoing::CancelUpload(b)),
                Message::Reject(b) => {
                    if p.inflight.remove(&b) {
                        picker.release(key, &b);
                        p.avoid.insert(b.piece, Instant::now() + AVOID_AFTER_REJECT);
                    }
                }
                Message::Extended { id: 0, payload } => {
                    let ext = crate::peer::connection::decode_ext_handshake(&payload);
                    if let Some(q) = ext.reqq {
                        p.reqq = (q as usize).clamp(1, MAX_DEPTH);
                    }
                    if let (Some(port), None) = (ext.listen_port, p.listen_addr) {
                        if port != 0 {
                            p.listen_addr = Some(SocketAddr::new(p.addr.ip(), port));
                        }
                    }
                    p.client = ext.client;
                }
                Message::Extended { .. } => {}
                Message::Piece { piece, begin, data } => {
                    let len = data.len() as u32;
                    if piece >= n
                        || len == 0
                        || begin as u64 + len as u64 > self.meta.piece_len(piece)
                    {
                        return Err(format!(
                            "piece message outside the torrent ({piece}, {begin}, {len})"
                        ));
                    }
                    let block = BlockRef { piece, begin, len };
                    let was_requested = p.inflight.remove(&block);
                    p.down_total += len as u64;
                    p.last_block = Instant::now();
                    if p.depth < 4 {
                        p.depth = MIN_DEPTH; // no longer snubbed
                    }
                    self.downloaded.fetch_add(len as u64, Ordering::Relaxed);
                    let expected_len =
                        (self.meta.piece_len(piece) - begin as u64).min(BLOCK_SIZE as u64) as u32;
                    let outcome = if len == expected_len {
                        picker.on_block(key, &block, &data)
                    } else {
                        BlockOutcome::Unwanted
                    };
                    match outcome {
                        BlockOutcome::Stored { complete, cancel } => {
                            for k in cancel {
                                if let Some(other) = st.peers.get_mut(&k) {
                                    if other.inflight.remove(&block) {
                                        other.send(Outgoing::Cancels(vec![block]));
                                    }
                                }
                            }
                            if complete {
                                if let Some(picker) = st.picker.as_mut() {
                                    verify = Some((piece, picker.take_data(piece)));
                                }
                            }
                        }
                        BlockOutcome::Unwanted => {
                            tracing::debug!(?block, was_requested, "unwanted block");
                            self.wasted.fetch_add(len as u64, Ordering::Relaxed);
                            if let Some(p) = st.peers.get_mut(&key) {
                                p.wasted += len as u64;
                                if p.wasted > MAX_WASTE {
                                    return Err("too much unrequested data".into());
                                }
                            }
                        }
                    }
                }
            }
            // Both seeds: nothing to trade.
            if let Some(p) = st.peers.get(&key) {
                if we_complete && p.has.is_full() {
                    if let Some(k) = p.listen_addr.and_then(|a| st.known.get_mut(&a)) {
                        k.seed = true;
                    }
                    return Err("both are seeds".into());
                }
            }
            if changes_state {
                self.update_interest(st, key);
                self.maybe_unchoke(st, key);
                self.refill(st, key);
            }
        }
        if let Some((piece, buf)) = verify {
            self.spawn_verify(piece, buf);
        }
        Ok(())
    }

    fn update_interest(&self, st: &mut SwarmState, key: PeerKey) {
        if let Some(p) = st.peers.get_mut(&key) {
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
    fn maybe_unchoke(&self, st: &mut SwarmState, key: PeerKey) {
        let unchoked = st.peers.values().filter(|p| !p.am_choking).count();
        if let Some(p) = st.peers.get_mut(&key) {
            if p.peer_interested && p.am_choking && unchoked < self.opts.upload_slots {
                p.am_choking = false;
                p.send(Outgoing::Msg(Message::Unchoke));
            } else if !p.peer_interested && !p.am_choking && st.optimistic != Some(key) {
                // Keep the slot for someone who wants it.
                p.am_choking = true;
                p.send(Outgoing::Choke { reject: p.fast });
            }
        }
    }

    /// Tops up a peer's request pipeline.
    fn refill(&self, st: &mut SwarmState, key: PeerKey) {
        let SwarmState { picker, peers, .. } = st;
        let (Some(picker), Some(p)) = (picker.as_mut(), peers.get_mut(&key)) else {
            return;
        };
        if p.peer_choking || !p.am_interested {
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
            let now = Instant::now();
            p.avoid.retain(|_, until| *until > now);
            let mut has = p.has.clone();
            for piece in p.avoid.keys() {
                has.clear(*piece);
            }
            picker.pick(key, &has, have, deficit, &mut out);
        }
        if out.is_empty() {
            tracing::trace!(
                inflight = have,
                active = picker.active_count(),
                "nothing to request"
            );
            return;
        }
        if p.inflight.is_empty() {
            // The snub clock measures waiting for requested data only.
            p.last_block = Instant::now();
        }
        p.inflight.extend(out.iter().copied());
        p.send(Outgoing::Requests(out));
    }

    fn spawn_verify(self: &Arc<Self>, piece: u32, buf: Vec<u8>) {
        let s = self.clone();
        self.tasks.spawn(
            async move {
                let t0 = std::time::Instant::now();
                let Ok(permit) = s.engine.hash_sem.clone().acquire_owned().await else {
                    return;
                };
                let t1 = t0.elapsed();
                let storage = s.storage.clone();
                let expected = s.meta.pieces[piece as usize];
                let r = tokio::task::spawn_blocking(move || {
                    let ok = <[u8; 20]>::from(Sha1::digest(&buf)) == expected;
                    let written = if ok {
                        storage.write_piece(piece, &buf)
                    } else {
                        Ok(())
                    };
                    (ok, written, buf)
                })
                .await;
                drop(permit);
                tracing::trace!(
                    piece,
                    wait_us = t1.as_micros() as u64,
                    total_us = t0.elapsed().as_micros() as u64,
                    "verified"
                );
                match r {
                    Ok((ok, Ok(()), buf)) => s.on_verified(piece, ok, buf),
                    Ok((_, Err(e), _)) => s.fail(format!("cannot write piece {piece}: {e}")),
                    Err(e) => s.fail(format!("verifier crashed: {e}")),
                }
            }
            .in_current_span(),
        );
    }

    fn on_verified(self: &Arc<Self>, piece: u32, ok: bool, buf: Vec<u8>) {
        let mut finished = false;
        {
            let mut guard = self.state.lock();
            let st = &mut *guard;
            let Some(picker) = st.picker.as_mut() else {
                return;
            };
            let contributors = picker.verified(piece, ok, buf);
            if ok {
                finished = picker.is_complete();
                for p in st.peers.values_mut() {
                    if p.has.get(piece) {
                        p.interesting = p.interesting.saturating_sub(1);
                    } else {
                        p.send(Outgoing::Msg(Message::Have(piece)));
                    }
                }
                // A finished piece frees a buffer: pipelines that stalled on
                // the active-piece limit can move again.
                let keys: Vec<PeerKey> = st.peers.keys().copied().collect();
                for k in keys {
                    self.update_interest(st, k);
                    self.refill(st, k);
                }
            } else {
                st.hash_failures += 1;
                warn!(
                    piece,
                    peers = contributors.len(),
                    "piece failed its hash check"
                );
                if contributors.len() == 1 {
                    self.ban(
                        st,
                        contributors[0],
                        &format!("sent piece {piece} that failed its hash check"),
                    );
                } else {
                    for k in &contributors {
                        let strikes = st.peers.get_mut(k).map(|p| {
                            p.strikes += 1;
                            p.strikes
                        });
                        if strikes.is_some_and(|s| s >= 3) {
                            self.ban(
                                st,
                                *k,
                                "took part in three pieces that failed their hash check",
                            );
                        }
                    }
                }
                let keys: Vec<PeerKey> = st.peers.keys().copied().collect();
                for k in keys {
                    self.refill(st, k);
                }
            }
        }
        if finished && !self.finalizing.swap(true, Ordering::SeqCst) {
            let s = self.clone();
            self.tasks.spawn(
                async move {
                    let storage = s.storage.clone();
                    match tokio::task::spawn_blocking(move || storage.finalize()).await {
                        Ok(Ok(())) => {
                            info!("download complete and synced to disk");
                            let seeds: Vec<CancellationToken> = {
                                let mut st = s.state.lock();
                                st.state = SessionState::Seeding;
                                st.peers
                                    .values()
                                    .filter(|p| p.has.is_full())
                                    .map(|p| p.kill.clone())
                                    .collect()
                            };
                            seeds.iter().for_each(|k| k.cancel());
                            s.publish();
                        }
                        Ok(Err(e)) => s.fail(format!("cannot sync files: {e}")),
                        Err(e) => s.fail(format!("sync task crashed: {e}")),
                    }
                }
                .in_current_span(),
            );
        } else {
            self.publish();
        }
    }

    /// Once a second: rates, pipeline depths, snubs; every 10 s a rechoke.
    fn on_tick(self: &Arc<Self>, dt: Duration) {
        let secs = dt.as_secs_f64().max(0.001);
        {
            let mut guard = self.state.lock();
            let st = &mut *guard;
            st.ticks += 1;
            let now = Instant::now();
            let down = self.downloaded.load(Ordering::Relaxed);
            let up = self.uploaded.load(Ordering::Relaxed);
            st.download_rate = ((down - st.prev_down) as f64 / secs) as u64;
            st.upload_rate = ((up - st.prev_up) as f64 / secs) as u64;
            st.prev_down = down;
            st.prev_up = up;
            let mut snubbed = Vec::new();
            for (k, p) in st.peers.iter_mut() {
                p.down_rate = ((p.down_total - p.down_prev) as f64 / secs) as u64;
                p.down_prev = p.down_total;
                let u = p.writer.uploaded.load(Ordering::Relaxed);
                p.up_rate = ((u - p.up_prev) as f64 / secs) as u64;
                p.up_prev = u;
                if p.down_rate > 0 {
                    let want = (p.down_rate as f64 * QUEUE_SECS / BLOCK_SIZE as f64) as usize;
                    p.depth = want.clamp(MIN_DEPTH, MAX_DEPTH);
                }
                tracing::trace!(
                    peer = %p.addr,
                    down_rate = p.down_rate,
                    up_rate = p.up_rate,
                    depth = p.depth,
                    inflight = p.inflight.len(),
                    queued_uploads = p.writer.queued_uploads.load(Ordering::Relaxed),
                    choked = p.peer_choking,
                    interested = p.am_interested,
                    "peer tick"
                );
                if !p.inflight.is_empty() && now.duration_since(p.last_block) > SNUB_AFTER {
                    snubbed.push(*k);
                }
            }
            for k in snubbed {
                if let (Some(p), Some(picker)) = (st.peers.get_mut(&k), st.picker.as_mut()) {
                    debug!(peer = %p.addr, "snubbed: no data for {}s", SNUB_AFTER.as_secs());
                    let blocks: Vec<BlockRef> = p.inflight.drain().collect();
                    for b in &blocks {
                        picker.release(k, b);
                    }
                    p.send(Outgoing::Cancels(blocks));
                    p.depth = 1;
                    p.last_block = now;
                }
            }
            if let Some(picker) = st.picker.as_ref() {
                tracing::trace!(
                    active = picker.active_count(),
                    have = picker.have().count(),
                    "session tick"
                );
            }
            if st.ticks % RECHOKE_EVERY == 1 {
                self.rechoke(st, st.ticks % OPTIMISTIC_EVERY == 1);
            }
            let keys: Vec<PeerKey> = st.peers.keys().copied().collect();
            for k in keys {
                self.refill(st, k);
            }
        }
        self.publish();
    }

    fn rechoke(&self, st: &mut SwarmState, rotate: bool) {
        let seeding = st.picker.as_ref().is_some_and(|p| p.is_complete());
        let cands: Vec<Candidate> = st
            .peers
            .iter()
            .map(|(k, p)| Candidate {
                key: *k,
                interested: p.peer_interested,
                rate: if seeding { p.up_rate } else { p.down_rate },
            })
            .collect();
        let (unchoke, opt) = choker::choose(&cands, self.opts.upload_slots, st.optimistic, rotate);
        st.optimistic = opt;
        for (k, p) in st.peers.iter_mut() {
            let want_unchoked = unchoke.contains(k);
            if want_unchoked && p.am_choking {
                p.am_choking = false;
                p.send(Outgoing::Msg(Message::Unchoke));
            } else if !want_unchoked && !p.am_choking {
                p.am_choking = true;
                p.send(Outgoing::Choke { reject: p.fast });
            }
        }
    }
}
