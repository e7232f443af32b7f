//! The swarm: one [`Engine`] per process (the listening socket, our peer id,
//! process-wide rate limits, a hashing semaphore) running one [`Session`]
//! per torrent (its peers, piece picker, choker and announce loop).
//!
//! Data flows one way: connections (`peer_task.rs`) report messages to the
//! session, which updates its state under one lock and tells connections
//! what to send through their writer channels. Disk work and hashing run on
//! blocking threads, never on the async executor. Invariants: `STATE.md`.

mod bitfield;
mod choker;
mod peer_task;
mod picker;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

pub use bitfield::Bitfield;
pub use session::{PeerStat, Progress, Session, SessionState};

use crate::metainfo::{InfoHash, Metainfo};
use crate::peer::connection::{accept_finish, accept_prefix, limiter, Limiter};
pub use crate::storage::Mode;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where to accept peer connections (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Process-wide limits in bytes/s (0 = unlimited).
    pub upload_limit: u64,
    pub download_limit: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen: "0.0.0.0:6881".parse().expect("valid literal"),
            upload_limit: 0,
            download_limit: 0,
        }
    }
}

/// How a session learns what it already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Hash whatever is on disk (resume).
    Verify,
    /// Trust that every piece is present (the master restarting over files
    /// whose size and mtime it recorded).
    AssumeComplete,
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Tracker URLs; `None` uses the torrent's own announce list.
    pub announce: Option<Vec<String>>,
    /// Peers to dial without a tracker.
    pub peers: Vec<SocketAddr>,
    pub check: Check,
    /// Fail unless every piece verifies (seeding existing data).
    pub require_complete: bool,
    pub mode: Mode,
    pub upload_limit: u64,
    pub download_limit: u64,
    /// Regular unchoke slots (one optimistic slot comes on top).
    pub upload_slots: usize,
    pub max_peers: usize,
    /// Bytes of piece buffers in flight.
    pub memory_budget: u64,
    /// Keep the files directly in this directory instead of `parent/<name>`.
    pub content_dir: Option<PathBuf>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            announce: None,
            peers: Vec::new(),
            check: Check::Verify,
            require_complete: false,
            mode: Mode::ReadWrite,
            upload_limit: 0,
            download_limit: 0,
            upload_slots: 8,
            max_peers: 60,
            memory_budget: 24 << 20,
            content_dir: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot listen for peers on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("torrent {0} is already running")]
    Duplicate(InfoHash),
    #[error("engine is shut down")]
    Stopped,
}

pub(crate) struct EngineInner {
    pub peer_id: [u8; 20],
    pub local_addr: SocketAddr,
    pub sessions: Mutex<HashMap<InfoHash, Arc<Session>>>,
    pub up: Option<Arc<Limiter>>,
    pub down: Option<Arc<Limiter>>,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub hash_sem: Arc<Semaphore>,
    pub hash_threads: usize,
    /// Payload moved by sessions that have since stopped, so totals survive them.
    pub retired_uploaded: std::sync::atomic::AtomicU64,
    pub retired_downloaded: std::sync::atomic::AtomicU64,
}

/// The process's BitTorrent engine. Clone freely.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

/// `-IS0100-` followed by 12 random bytes (Azureus-style client id).
fn new_peer_id() -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-IS0100-");
    rand::thread_rng().fill(&mut id[8..]);
    id
}

impl Engine {
    /// Binds the peer port and starts accepting connections.
    pub async fn start(cfg: EngineConfig) -> Result<Engine, EngineError> {
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| EngineError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| EngineError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let inner = Arc::new(EngineInner {
            peer_id: new_peer_id(),
            local_addr,
            sessions: Mutex::new(HashMap::new()),
            up: limiter(cfg.upload_limit),
            down: limiter(cfg.download_limit),
            http: reqwest::Client::builder()
                .user_agent(concat!("indexswarm/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            hash_sem: Arc::new(Semaphore::new(cores)),
            hash_threads: cores,
            retired_uploaded: Default::default(),
            retired_downloaded: Default::default(),
        });
        let engine = Engine { inner };
        let e = engine.clone();
        engine.inner.tasks.spawn(
            async move { e.accept_loop(listener).await }
                .instrument(tracing::info_span!("listener", addr = %local_addr)),
        );
        info!(addr = %local_addr, "listening for peers");
        Ok(engine)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn peer_id(&self) -> [u8; 20] {
        self.inner.peer_id
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    async fn accept_loop(&self, listener: TcpListener) {
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((mut stream, addr)) => {
                        let e = self.clone();
                        self.inner.tasks.spawn(async move {
                            let (reserved, ih) = match accept_prefix(&mut stream).await {
                                Ok(v) => v,
                                Err(err) => { debug!(peer = %addr, "incoming handshake failed: {err}"); return; }
                            };
                            let session = e.inner.sessions.lock().get(&InfoHash(ih)).cloned();
                            let Some(session) = session else {
                                debug!(peer = %addr, info_hash = %hex::encode(ih), "incoming peer wants an unknown torrent");
                                return;
                            };
                            if !session.accepting() {
                                return;
                            }
                            match accept_finish(stream, addr, reserved, ih, e.inner.peer_id).await {
                                Ok(conn) => session.start_peer(conn, None),
                                Err(err) => debug!(peer = %addr, "incoming handshake failed: {err}"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }

    /// Starts a session for `meta` with data under `parent` (at `parent/<name>`).
    pub fn add(
        &self,
        meta: Arc<Metainfo>,
        parent: PathBuf,
        opts: SessionOptions,
    ) -> Result<Arc<Session>, EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::Stopped);
        }
        let mut sessions = self.inner.sessions.lock();
        if sessions.contains_key(&meta.info_hash) {
            return Err(EngineError::Duplicate(meta.info_hash));
        }
        let s = Session::start(self.inner.clone(), meta, parent, opts);
        sessions.insert(s.info_hash(), s.clone());
        Ok(s)
    }

    /// The running session for `h`, if any.
    pub fn get(&self, h: &InfoHash) -> Option<Arc<Session>> {
        self.inner.sessions.lock().get(h).cloned()
    }

    /// Payload bytes (uploaded, downloaded) over the engine's life, stopped sessions included.
    pub fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let live = self
            .sessions()
            .iter()
            .map(|s| s.snapshot())
            .fold((0, 0), |a, p| (a.0 + p.uploaded, a.1 + p.downloaded));
        (
            live.0 + self.inner.retired_uploaded.load(Relaxed),
            live.1 + self.inner.retired_downloaded.load(Relaxed),
        )
    }

    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.inner.sessions.lock().values().cloned().collect()
    }

    /// Stops every session (with `stopped` announces) and the listener.
    pub async fn shutdown(&self) {
        let sessions: Vec<_> = self.inner.sessions.lock().values().cloned().collect();
        futures::future::join_all(sessions.iter().map(|s| s.stop())).await;
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.inner.tasks.wait()).await;
    }
}
