//! One torrent's session: its peers, picker, choker, announce loop and the
//! path from a received block to a verified piece on disk.
//!
//! All mutable swarm state sits in one [`SwarmState`] behind a
//! `parking_lot::Mutex`. Handlers hold it for bookkeeping and a 16 KiB copy,
//! never across an `.await`, so a std-style lock beats an async one here
//! (the same reasoning as mini-redis's `db.rs`).
//!
//! The files, by job:
//! - `mod.rs` (here): the [`Session`] handle (start, wait, stop, progress)
//!   and the task that checks existing data, then runs the announce loop,
//!   the dialer and the clock;
//! - `state.rs`: [`SwarmState`] and per-peer state, bookkeeping only;
//! - `messages.rs`: one handler per peer message behind a short dispatcher;
//! - `dialer.rs`: addresses, dials, admission, disconnects;
//! - `verify.rs`: hashing, writing, the smart ban, finalize;
//! - `tick.rs`: rates, snubs, rechoke, stall detection and recovery;
//! - `progress.rs`: what a session reports.

mod dialer;
mod messages;
mod pex;
mod progress;
mod state;
mod tick;
mod verify;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, Instrument};

pub use messages::PeerError;
pub use progress::{PeerStat, Progress, SessionError, SessionFailure, SessionState};
pub(crate) use state::SwarmState;

use super::bitfield::Bitfield;
use super::picker::{PeerKey, Picker};
use super::{Check, EngineInner, SessionOptions};
use crate::metainfo::{InfoHash, Metainfo, BLOCK_SIZE};
use crate::peer::codec::Message;
use crate::peer::connection::Limiter;
use crate::storage::Storage;
use crate::tracker::{run_announce_loop, AnnounceConfig, AnnounceSignals, TransferStats};

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
    cancel: CancellationToken,
    tasks: TaskTracker,
    up_limiters: Vec<Arc<Limiter>>,
    down_limiters: Vec<Arc<Limiter>>,
    next_key: AtomicU64,
    finalizing: AtomicBool,
    /// Shared with the announce loop: "announce now" and its last error.
    announce: Arc<AnnounceSignals>,
    /// An SSL torrent's TLS (its `ssl-cert` as the only root, our identity).
    tls: Option<Arc<crate::peer::tls::TorrentTls>>,
}

fn limiters(own: u64, engine: &Option<Arc<Limiter>>) -> Vec<Arc<Limiter>> {
    crate::peer::connection::limiter(own)
        .into_iter()
        .chain(engine.clone())
        .collect()
}

impl Session {
    /// An SSL torrent's TLS, if this is one.
    pub(crate) fn tls(&self) -> Option<&Arc<crate::peer::tls::TorrentTls>> {
        self.tls.as_ref()
    }
}

impl Session {
    pub(crate) fn start(
        engine: Arc<EngineInner>,
        meta: Arc<Metainfo>,
        parent: PathBuf,
        opts: SessionOptions,
        tls: Option<Arc<crate::peer::tls::TorrentTls>>,
    ) -> Arc<Session> {
        let storage = Arc::new(match &opts.content_dir {
            Some(root) => Storage::with_root(meta.clone(), root, opts.mode),
            None => Storage::new(meta.clone(), &parent, opts.mode),
        });
        let total = meta.total_length;
        let (progress_tx, _) = watch::channel(Progress::initial(meta.num_pieces(), total));
        let (stats_tx, _) = watch::channel(TransferStats {
            uploaded: 0,
            downloaded: 0,
            left: total,
        });
        let cancel = engine.shutdown.child_token();
        let s = Arc::new(Session {
            tls,
            up_limiters: limiters(opts.upload_limit, &engine.up),
            down_limiters: limiters(opts.download_limit, &engine.down),
            engine,
            meta: meta.clone(),
            storage,
            state: Mutex::new(SwarmState::new(
                meta.clone(),
                opts.upload_slots,
                Instant::now(),
            )),
            opts,
            progress_tx,
            stats_tx,
            uploaded: Arc::new(AtomicU64::new(0)),
            cancel,
            tasks: TaskTracker::new(),
            next_key: AtomicU64::new(1),
            finalizing: AtomicBool::new(false),
            announce: Arc::new(AnnounceSignals::default()),
        });
        let span =
            tracing::info_span!("torrent", info_hash = %meta.info_hash.short(), name = %meta.name);
        let s2 = s.clone();
        s.tasks
            .spawn(async move { s2.run().await }.instrument(span));
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

    /// Waits until `done` holds for the progress; `Err` if the session
    /// failed or stopped first.
    async fn wait_for(&self, done: impl Fn(&Progress) -> bool) -> Result<(), SessionError> {
        let mut rx = self.progress();
        loop {
            {
                let p = rx.borrow_and_update();
                if done(&p) {
                    return Ok(());
                }
                match &p.state {
                    SessionState::Failed(e) => return Err(e.clone().into()),
                    SessionState::Stopped => return Err(SessionError::Stopped),
                    _ => {}
                }
            }
            if rx.changed().await.is_err() {
                return Err(SessionError::Stopped);
            }
        }
    }

    /// Waits until every piece is verified and synced.
    pub async fn wait_complete(&self) -> Result<(), SessionError> {
        self.wait_for(|p| p.complete).await
    }

    /// Waits until the initial check is done.
    pub async fn wait_checked(&self) -> Result<(), SessionError> {
        self.wait_for(|p| matches!(p.state, SessionState::Downloading | SessionState::Seeding))
            .await
    }

    /// How many times each piece was served, as a histogram: index k counts
    /// the pieces served k times (the last bucket: k or more).
    pub fn upload_redundancy(&self) -> [u32; 5] {
        let st = self.state.lock();
        let mut h = [0u32; 5];
        for (i, c) in st.served_blocks.iter().enumerate() {
            let blocks = self.meta.piece_len(i as u32).div_ceil(BLOCK_SIZE as u64) as u32;
            let times = c.div_ceil(blocks.max(1)) as usize;
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
        let downloaded = {
            let mut st = self.state.lock();
            if !matches!(st.state, SessionState::Failed(_)) {
                st.state = SessionState::Stopped;
            }
            let left = st.peers.len();
            st.peers.clear();
            self.engine.connections.fetch_sub(left, Ordering::Relaxed);
            st.downloaded
        };
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
                .fetch_add(downloaded, Ordering::Relaxed);
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

    /// The least useful evictable connection of this torrent, for the
    /// engine's process-wide cap: (its view, and how to close it).
    pub(crate) fn eviction_candidate(
        &self,
    ) -> Option<(super::admission::PeerView, CancellationToken)> {
        let st = self.state.lock();
        let views = st.views(Instant::now());
        let v = *super::admission::least_useful(&views)?;
        st.peers.get(&v.key).map(|p| (v, p.kill.clone()))
    }

    pub(crate) fn evict(&self, key: PeerKey) {
        self.state.lock().close(key);
    }

    fn fail(&self, reason: SessionFailure) {
        tracing::warn!("session failed: {reason}");
        self.state.lock().state = SessionState::Failed(reason);
        self.publish();
        self.cancel.cancel();
    }

    fn publish(&self) {
        let st = self.state.lock();
        let (have, bytes_have) = match &st.picker {
            Some(p) => (p.have().count(), p.have_bytes()),
            None => (0, 0),
        };
        let p = Progress {
            state: st.state.clone(),
            pieces_have: have,
            pieces_total: self.meta.num_pieces(),
            bytes_have,
            bytes_total: self.meta.total_length,
            downloaded: st.downloaded,
            uploaded: self.uploaded.load(Ordering::Relaxed),
            wasted: st.wasted,
            download_rate: st.download_rate,
            upload_rate: st.upload_rate,
            peers: st.live_peers(),
            hash_failures: st.hash_failures,
            complete: st.state == SessionState::Seeding,
            bytes_resumed: st.resumed,
            stalled: st.stalled.clone(),
        };
        drop(st);
        self.stats_tx.send_replace(TransferStats {
            uploaded: p.uploaded,
            downloaded: p.downloaded,
            left: p.bytes_total - p.bytes_have,
        });
        self.progress_tx.send_replace(p);
    }

    /// Handles one message from peer `key`. `Err` closes the connection.
    pub(crate) fn on_message(
        self: &Arc<Self>,
        key: PeerKey,
        msg: Message,
    ) -> Result<(), PeerError> {
        let job = self.state.lock().on_message(key, msg, Instant::now())?;
        if let Some(job) = job {
            self.spawn_verify(job);
        }
        Ok(())
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

    /// What is on disk already: everything (trusted), or what verifies.
    async fn check_existing(&self) -> Option<Bitfield> {
        let n = self.meta.num_pieces();
        if self.opts.check == Check::AssumeComplete {
            return Some(Bitfield::full(n));
        }
        let storage = self.storage.clone();
        let threads = self.engine.hash_threads;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let started = std::time::Instant::now();
        let job = tokio::task::spawn_blocking(move || {
            storage.verify(threads, &AtomicU64::new(0), &stop2)
        });
        let res = tokio::select! {
            _ = self.cancel.cancelled() => { stop.store(true, Ordering::Relaxed); return None; }
            r = job => r,
        };
        let Ok(Some(v)) = res else {
            self.fail(SessionFailure::Check);
            return None;
        };
        let b = Bitfield::from_bools(&v);
        let secs = format!("{:.2}", started.elapsed().as_secs_f64());
        info!(have = b.count(), pieces = n, secs, "checked existing data");
        Some(b)
    }

    /// Installs the picker once the check is done. `false` ends the session.
    async fn become_ready(&self, have: Bitfield) -> bool {
        let n = self.meta.num_pieces();
        if self.opts.require_complete && !have.is_full() {
            let missing = n - have.count();
            self.fail(SessionFailure::Incomplete { missing, total: n });
            return false;
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
            st.last_progress = Instant::now();
        }
        if complete && self.opts.mode == crate::storage::Mode::ReadWrite {
            // Make sure empty files exist even when everything else was already there.
            let storage = self.storage.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || storage.finalize()).await {
                self.fail(SessionFailure::Finalize(e.to_string()));
                return false;
            }
        }
        self.publish();
        true
    }

    /// Starts the announce loop when the torrent (or the options) name
    /// HTTP trackers; peers it learns arrive on the returned channel.
    fn start_announcing(&self) -> mpsc::Receiver<Vec<SocketAddr>> {
        let (peers_tx, peers_rx) = mpsc::channel::<Vec<SocketAddr>>(16);
        let urls: Vec<String> = self
            .opts
            .announce
            .clone()
            .unwrap_or_else(|| self.meta.announce.clone())
            .into_iter()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .collect();
        if !urls.is_empty() {
            let cfg = AnnounceConfig {
                urls,
                info_hash: self.meta.info_hash,
                peer_id: self.engine.peer_id,
                port: self.engine.local_addr.port(),
                numwant: 80,
                token: self.engine.swarm_token.clone(),
            };
            let http = self.engine.http.clone();
            let stats = self.stats_tx.subscribe();
            let fut = run_announce_loop(
                http,
                cfg,
                stats,
                peers_tx,
                self.cancel.clone(),
                self.announce.clone(),
            );
            self.tasks.spawn(fut.in_current_span());
        }
        peers_rx
    }

    /// Check data, then run the announce loop, the connector and the ticker.
    async fn run(self: Arc<Self>) {
        let Some(have) = self.check_existing().await else {
            return;
        };
        if !self.become_ready(have).await {
            return;
        }
        let mut peers_rx = self.start_announcing();
        self.learn(&self.opts.peers);
        self.dial_more();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(addrs) = peers_rx.recv() => { self.learn(&addrs); self.dial_more(); }
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
}
