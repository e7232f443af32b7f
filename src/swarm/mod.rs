//! The swarm: one [`Engine`] per process (the listening socket, our peer id,
//! process-wide rate limits, a hashing semaphore) running one [`Session`]
//! per torrent (its peers, piece picker, choker and announce loop).
//!
//! Data flows one way: connections (`peer_task.rs`) report messages to the
//! session, which updates its state under one lock and tells connections
//! what to send through their writer channels. Disk work and hashing run on
//! blocking threads, never on the async executor. Invariants: `STATE.md`.

mod admission;
mod bans;
mod bitfield;
mod choker;
mod peer_task;
mod picker;
mod session;
mod smartban;
mod stall;

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
pub use session::{
    PeerError, PeerStat, Progress, Session, SessionError, SessionFailure, SessionState,
};

use crate::metainfo::{InfoHash, Metainfo};
use crate::peer::connection::{
    accept_finish, accept_prefix, limiter, tune, ConnectError, Limiter, HANDSHAKE_TIMEOUT,
};
use crate::peer::stream::PeerStream;

/// The first byte of a TLS record carrying a handshake (a ClientHello);
/// a BitTorrent handshake starts with 19.
const TLS_HANDSHAKE: u8 = 0x16;

/// An incoming connection read up to its torrent: the stream, the session,
/// the handshake's reserved bytes and info-hash.
type Incoming = (PeerStream, Arc<Session>, [u8; 8], [u8; 20]);
pub use crate::storage::Mode;

#[derive(Clone)]
pub struct EngineConfig {
    /// Where to accept peer connections (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Process-wide limits in bytes/s (0 = unlimited).
    pub upload_limit: u64,
    pub download_limit: u64,
    /// Peer connections across every torrent of the process.
    pub max_connections: usize,
    /// Who may connect to the peer port, decided per torrent after the
    /// peer names it and before we answer (`None`: anyone).
    pub gate: Option<Arc<dyn PeerGate>>,
    /// A closed swarm's token, sent with every announce.
    pub swarm_token: Option<String>,
    /// Extra roots for `https://` trackers and masters (the deployment CA).
    pub http_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// This node's certificate for SSL torrents (`tls_cert`, `tls_key`).
    pub identity: Option<Arc<crate::peer::tls::PeerIdentity>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen: "0.0.0.0:6881".parse().expect("valid literal"),
            upload_limit: 0,
            download_limit: 0,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            gate: None,
            swarm_token: None,
            http_roots: Vec::new(),
            identity: None,
        }
    }
}

/// Decides whether `ip` may exchange data for `info_hash` (a closed swarm:
/// only peers that announced with the token, plus an allow-list). Asked
/// once per incoming connection, after the peer's handshake names the
/// torrent and before we send anything: a refused stranger gets no
/// handshake, no bitfield, no piece.
pub trait PeerGate: Send + Sync {
    fn admits(
        &self,
        info_hash: InfoHash,
        ip: std::net::IpAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
}

/// An HTTP client for trackers and masters: our user agent, the system's
/// roots plus `extra` (a deployment CA), no redirects off the first host.
pub fn http_client(extra: &[rustls_pki_types::CertificateDer<'static>]) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("indexswarm/", env!("CARGO_PKG_VERSION")))
        .redirect(crate::source::same_origin_redirects())
        .use_rustls_tls();
    for c in extra {
        if let Ok(cert) = reqwest::Certificate::from_der(c) {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().unwrap_or_default()
}

/// Defaults of the connection limits (documented in `config/*.toml`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 500;
pub const DEFAULT_MAX_PEERS: usize = 60;
/// Per torrent. On loopback every peer shares 127.0.0.1: large loopback
/// swarms need more; across hosts one or two per address is normal.
pub const DEFAULT_MAX_PEERS_PER_IP: usize = 16;
pub const DEFAULT_STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// Incoming connections still handshaking: a stranger opening sockets and
/// saying nothing holds at most this many descriptors (10 s each).
const MAX_HANDSHAKING: usize = 64;

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
    /// Connections from one IP address (see [`DEFAULT_MAX_PEERS_PER_IP`]).
    pub max_peers_per_ip: usize,
    /// A download that verifies nothing this long reports a stall (with
    /// the reason) and recovers; `None` never checks.
    pub stall_after: Option<std::time::Duration>,
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
            max_peers: DEFAULT_MAX_PEERS,
            max_peers_per_ip: DEFAULT_MAX_PEERS_PER_IP,
            stall_after: Some(DEFAULT_STALL),
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
    #[error(
        "torrent {0} is an SSL torrent: peers speak TLS, so this node needs tls_cert and tls_key"
    )]
    NeedsIdentity(InfoHash),
    #[error("torrent {hash}: its ssl-cert is unusable: {source}")]
    SslCert {
        hash: InfoHash,
        source: crate::tls::TlsError,
    },
}

pub(crate) struct EngineInner {
    pub peer_id: [u8; 20],
    pub local_addr: SocketAddr,
    pub sessions: Mutex<HashMap<InfoHash, Arc<Session>>>,
    pub up: Option<Arc<Limiter>>,
    pub down: Option<Arc<Limiter>>,
    pub http: reqwest::Client,
    pub gate: Option<Arc<dyn PeerGate>>,
    pub swarm_token: Option<String>,
    pub identity: Option<Arc<crate::peer::tls::PeerIdentity>>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub hash_sem: Arc<Semaphore>,
    pub hash_threads: usize,
    /// Peer connections registered in sessions, and the cap on them.
    pub connections: std::sync::atomic::AtomicUsize,
    pub max_connections: usize,
    /// Permits for incoming connections that are still handshaking.
    pub handshakes: Arc<Semaphore>,
    /// Payload moved by sessions that have since stopped, so totals survive them.
    pub retired_uploaded: std::sync::atomic::AtomicU64,
    pub retired_downloaded: std::sync::atomic::AtomicU64,
}

impl EngineInner {
    /// Is there room for one more connection under `max_connections`?
    pub(crate) fn has_room(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.connections.load(Relaxed) < self.max_connections
    }
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
            http: http_client(&cfg.http_roots),
            gate: cfg.gate.clone(),
            swarm_token: cfg.swarm_token.clone(),
            identity: cfg.identity.clone(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            hash_sem: Arc::new(Semaphore::new(cores)),
            hash_threads: cores,
            connections: Default::default(),
            max_connections: cfg.max_connections.max(1),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKING)),
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
                    Ok((stream, addr)) => self.on_incoming(stream, addr),
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }

    /// An incoming connection: handshake (bounded in number and time),
    /// find its torrent, ask the gate, make room under the process-wide
    /// cap, hand it over.
    fn on_incoming(&self, stream: tokio::net::TcpStream, addr: SocketAddr) {
        let Ok(permit) = self.inner.handshakes.clone().try_acquire_owned() else {
            debug!(peer = %addr, "too many connections handshaking; closed");
            return;
        };
        let e = self.clone();
        self.inner.tasks.spawn(async move {
            let opened =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, e.open_incoming(stream, addr)).await;
            let (ps, session, reserved, ih) = match opened {
                Ok(Ok(Some(v))) => v,
                Ok(Ok(None)) => return,
                Ok(Err(err)) => {
                    debug!(peer = %addr, "incoming handshake failed: {err}");
                    return;
                }
                Err(_) => {
                    debug!(peer = %addr, "incoming handshake timed out");
                    return;
                }
            };
            if !session.accepting() || !e.make_room() {
                return;
            }
            let r = accept_finish(ps, addr, reserved, ih, e.inner.peer_id).await;
            drop(permit);
            match r {
                Ok(conn) => session.start_peer(conn, None),
                Err(err) => debug!(peer = %addr, "incoming handshake failed: {err}"),
            }
        });
    }

    /// Reads an incoming connection up to the torrent it asks for: TLS
    /// (an SSL torrent, named in SNI) when it opens with a ClientHello,
    /// else a plain BitTorrent handshake. `None` when it is refused: an
    /// unknown torrent, plaintext for an SSL torrent, or the gate's no.
    async fn open_incoming(
        &self,
        stream: tokio::net::TcpStream,
        addr: SocketAddr,
    ) -> Result<Option<Incoming>, ConnectError> {
        let _ = tune(&stream);
        let mut first = [0u8; 1];
        stream.peek(&mut first).await?;
        if first[0] != TLS_HANDSHAKE {
            let mut ps = PeerStream::Plain(stream);
            let (reserved, ih) = accept_prefix(&mut ps).await?;
            let Some(session) = self.known_session(ih, addr, false) else {
                return Ok(None);
            };
            if !self.admits(ih, addr).await {
                return Ok(None);
            }
            return Ok(Some((ps, session, reserved, ih)));
        }
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await
                .map_err(ConnectError::Tls)?;
        let named = start.client_hello().server_name().and_then(|n| {
            let mut ih = [0u8; 20];
            hex::decode_to_slice(n, &mut ih).ok().map(|()| ih)
        });
        let Some(ih) = named else {
            debug!(peer = %addr, "TLS without a torrent's info-hash in SNI; closed");
            return Ok(None);
        };
        let Some(session) = self.known_session(ih, addr, true) else {
            return Ok(None);
        };
        if !self.admits(ih, addr).await {
            return Ok(None);
        }
        let Some(tls) = session.tls().cloned() else {
            return Ok(None);
        };
        let s = start
            .into_stream(tls.server.clone())
            .await
            .map_err(ConnectError::Tls)?;
        let mut ps = PeerStream::Server(Box::new(s));
        let (reserved, asked) = accept_prefix(&mut ps).await?;
        if asked != ih {
            return Err(ConnectError::WrongInfoHash);
        }
        Ok(Some((ps, session, reserved, ih)))
    }

    /// The session for `ih` if it runs and speaks TLS exactly when `tls`.
    fn known_session(&self, ih: [u8; 20], addr: SocketAddr, tls: bool) -> Option<Arc<Session>> {
        let session = self.inner.sessions.lock().get(&InfoHash(ih)).cloned();
        match session {
            None => {
                debug!(peer = %addr, info_hash = %hex::encode(ih), "incoming peer wants an unknown torrent");
                None
            }
            Some(s) if s.tls().is_some() != tls => {
                debug!(peer = %addr, info_hash = %hex::encode(ih), tls, "wrong transport for this torrent (SSL torrents are TLS only); closed");
                None
            }
            Some(s) => Some(s),
        }
    }

    /// The gate's decision (anyone when there is none).
    async fn admits(&self, ih: [u8; 20], addr: SocketAddr) -> bool {
        let Some(gate) = &self.inner.gate else {
            return true;
        };
        let ok = gate.admits(InfoHash(ih), addr.ip()).await;
        if !ok {
            debug!(peer = %addr, info_hash = %hex::encode(ih), "not a member of this closed swarm; closed before answering");
        }
        ok
    }

    /// At the process-wide cap, closes the least useful evictable
    /// connection of any torrent. False when nothing can go.
    fn make_room(&self) -> bool {
        if self.inner.has_room() {
            return true;
        }
        let sessions = self.sessions();
        let candidates: Vec<_> = sessions
            .iter()
            .filter_map(|s| s.eviction_candidate().map(|(v, _)| (s, v)))
            .collect();
        // Each candidate is its torrent's least useful evictable peer.
        let Some((session, v)) = candidates.iter().min_by_key(|(_, v)| v.usefulness()) else {
            debug!(
                max = self.inner.max_connections,
                "connection refused: max_connections reached"
            );
            return false;
        };
        debug!(peer_ip = %v.ip, "evicting an idle peer (max_connections)");
        session.evict(v.key);
        true
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
        let tls = match &meta.ssl_cert {
            None => None,
            Some(ca) => {
                let id = self
                    .inner
                    .identity
                    .as_ref()
                    .ok_or(EngineError::NeedsIdentity(meta.info_hash))?;
                let t = crate::peer::tls::torrent_tls(ca, id).map_err(|source| {
                    EngineError::SslCert {
                        hash: meta.info_hash,
                        source,
                    }
                })?;
                Some(Arc::new(t))
            }
        };
        let s = Session::start(self.inner.clone(), meta, parent, opts, tls);
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
