//! The HTTP server of both sidecars: hyper 0.14 driven connection by
//! connection, with warp's filters as the service, so that no request from
//! the network can exhaust the process.
//!
//! - At most [`MAX_CONNECTIONS`] connections, and [`MAX_PER_IP`] from one
//!   address; further ones are closed at once. This budget is apart from
//!   the peer port's.
//! - A client must send complete request headers within
//!   [`HEADER_TIMEOUT`] of connecting (hyper's own header timeout covers a
//!   request trickled byte by byte; the watchdog here covers one that never
//!   starts), and a keep-alive connection idle for [`IDLE_TIMEOUT`] with no
//!   request in flight is closed. A request in flight (a long poll, the
//!   event stream) is never cut: its handler bounds itself.
//! - Optional TLS (`tls_cert`, `tls_key`), the handshake also within
//!   [`HEADER_TIMEOUT`].
//!
//! Every request carries the client's address as a [`RemoteAddr`]
//! extension for the routes that need it (the tracker, reports).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warp::Filter;

use crate::util::net::RemoteAddr;

/// Open HTTP connections, in all.
pub const MAX_CONNECTIONS: usize = 512;
/// Open HTTP connections from one address.
pub const MAX_PER_IP: usize = 128;
/// Time to send a request's headers (and to finish a TLS handshake).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection with nothing in flight is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections per client address, and in all.
#[derive(Default)]
struct Budget {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
}

/// One admitted connection; gives its place back when dropped.
struct Admitted {
    budget: Arc<Budget>,
    ip: IpAddr,
}

impl Budget {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut per_ip = self.per_ip.lock();
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= MAX_PER_IP || self.total.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            budget: self.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self.budget.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.budget.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the watchdog of one connection looks at.
struct Activity {
    /// Milliseconds since the connection was accepted, at the last byte.
    last_io: AtomicU64,
    /// Requests whose response has not been produced yet.
    in_flight: AtomicUsize,
    /// Requests received in all.
    requests: AtomicU64,
    started: Instant,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_io.load(Ordering::Relaxed)))
    }
}

/// A stream that tells its [`Activity`] about every byte.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves when the connection has overstayed: no complete request within
/// [`HEADER_TIMEOUT`] of connecting, or idle with nothing in flight for
/// [`IDLE_TIMEOUT`].
async fn watchdog(a: Arc<Activity>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if a.in_flight.load(Ordering::Relaxed) > 0 {
            continue;
        }
        let never_asked = a.requests.load(Ordering::Relaxed) == 0;
        if never_asked && a.started.elapsed() >= HEADER_TIMEOUT {
            return;
        }
        if a.idle_for() >= IDLE_TIMEOUT {
            return;
        }
    }
}

/// Serves `routes` on an accepted connection until it ends or overstays.
async fn serve_connection<F, R, S>(
    routes: F,
    io: S,
    remote: SocketAddr,
    activity: Arc<Activity>,
    shutdown: CancellationToken,
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: warp::Reply,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = warp::service(routes);
    let a = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::Body>| {
        req.extensions_mut().insert(RemoteAddr(remote));
        a.requests.fetch_add(1, Ordering::Relaxed);
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut svc = svc.clone();
        let a = a.clone();
        async move {
            let r = hyper::service::Service::call(&mut svc, req).await;
            a.in_flight.fetch_sub(1, Ordering::Relaxed);
            a.touch();
            r
        }
    });
    let io = Watched {
        inner: io,
        activity: activity.clone(),
    };
    let conn = hyper::server::conn::Http::new()
        .http1_only(true)
        .http1_keep_alive(true)
        .http1_header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(client = %remote, "HTTP connection ended: {e}");
            }
        }
        _ = watchdog(activity) => debug!(client = %remote, "HTTP connection overstayed; closed"),
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// A bound server, ready to run.
pub struct Bound<F> {
    listener: TcpListener,
    routes: F,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
}

impl<F, R> Bound<F>
where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: warp::Reply,
{
    /// Accepts and serves until `shutdown`.
    pub async fn run(self) {
        let budget = Arc::new(Budget::default());
        loop {
            let (stream, remote) = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        warn!("HTTP accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let Some(admitted) = budget.admit(remote.ip()) else {
                debug!(client = %remote, "HTTP connection refused: over the connection caps");
                continue;
            };
            let (routes, tls, shutdown) =
                (self.routes.clone(), self.tls.clone(), self.shutdown.clone());
            tokio::spawn(async move {
                let _admitted = admitted;
                handle(routes, tls, stream, remote, shutdown).await;
            });
        }
    }
}

/// One accepted connection: TLS first if configured, then HTTP.
async fn handle<F, R>(
    routes: F,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stream: TcpStream,
    remote: SocketAddr,
    shutdown: CancellationToken,
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: warp::Reply,
{
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity {
        last_io: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        started: Instant::now(),
    });
    match tls {
        None => serve_connection(routes, stream, remote, activity, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => serve_connection(routes, s, remote, activity, shutdown).await,
                Ok(Err(e)) => debug!(client = %remote, "TLS handshake failed: {e}"),
                Err(_) => debug!(client = %remote, "TLS handshake timed out"),
            }
        }
    }
}

/// Binds `addr` (plain HTTP, or HTTPS with `tls`) for `routes`.
pub fn bind<F, R>(
    routes: F,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, Bound<F>)>
where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: warp::Reply,
{
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let listener = TcpListener::from_std(std_listener)?;
    Ok((
        local,
        Bound {
            listener,
            routes,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            shutdown,
        },
    ))
}
