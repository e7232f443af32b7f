//! One TCP connection to a peer: dialing, the handshake, the extension
//! handshake, and the writer half. It knows bytes and timeouts, nothing of
//! pieces or choking policy: the swarm decides *what* to send, this file
//! decides *how* (batched, rate-limited, with disk reads off the runtime).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bendy::decoding::{Decoder as BDecoder, Object};
use bendy::encoding::{Encoder as BEncoder, SingleItemEncoder};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::codec::{put_piece_header, BlockRef, Handshake, Message, HANDSHAKE_LEN};
use super::stream::{PeerStream, PeerWriter};
use crate::metainfo::BLOCK_SIZE;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that sends nothing at all (not even keep-alives) for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(150);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upload batch: at most this many bytes of blocks are read from disk per
/// blocking call and written with one syscall (fast links)...
const UPLOAD_BATCH_BYTES: usize = 1024 * 1024;
/// ...and at least this many (slow links, where a big batch would delay the
/// control messages queued behind it).
const MIN_UPLOAD_BATCH: usize = 64 * 1024;
/// Unsent bytes the kernel may hold per socket (TCP_NOTSENT_LOWAT). Without
/// it a capped uplink buffers megabytes of piece data, and our `request` and
/// `have` messages to that peer wait seconds behind them: pipelines starve.
const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Socket options for peer connections.
pub fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Best effort: not every kernel has it.
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("not a BitTorrent handshake")]
    BadProtocol,
    #[error("peer is serving another torrent")]
    WrongInfoHash,
    #[error("connected to ourselves")]
    OwnPeerId,
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// An established, handshaken connection.
pub struct Connected {
    pub stream: PeerStream,
    pub addr: SocketAddr,
    pub remote: Handshake,
}

/// Dials `addr` and exchanges handshakes for `info_hash`; over TLS (an
/// SSL torrent) when `tls` is given, naming the torrent in SNI.
pub async fn dial(
    addr: SocketAddr,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Connected, ConnectError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::ConnectTimeout)??;
    tune(&tcp)?;
    let mut stream = match tls {
        None => PeerStream::Plain(tcp),
        Some(cfg) => {
            let connect =
                tokio_rustls::TlsConnector::from(cfg).connect(super::tls::sni(&info_hash), tcp);
            let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
                .await
                .map_err(|_| ConnectError::HandshakeTimeout)?
                .map_err(ConnectError::Tls)?;
            PeerStream::Client(Box::new(s))
        }
    };
    let ours = Handshake::new(info_hash, peer_id);
    let remote = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        stream.write_all(&ours.to_bytes()).await?;
        stream.flush().await?;
        let mut buf = [0u8; HANDSHAKE_LEN];
        stream.read_exact(&mut buf).await?;
        Ok::<_, io::Error>(buf)
    })
    .await
    .map_err(|_| ConnectError::HandshakeTimeout)??;
    let prefix: [u8; 48] = remote[..48]
        .try_into()
        .map_err(|_| ConnectError::BadProtocol)?;
    let (reserved, ih) = Handshake::parse_prefix(&prefix).ok_or(ConnectError::BadProtocol)?;
    if ih != info_hash {
        return Err(ConnectError::WrongInfoHash);
    }
    let mut remote_id = [0u8; 20];
    remote_id.copy_from_slice(&remote[48..]);
    if remote_id == peer_id {
        return Err(ConnectError::OwnPeerId);
    }
    Ok(Connected {
        stream,
        addr,
        remote: Handshake {
            reserved,
            info_hash: ih,
            peer_id: remote_id,
        },
    })
}

/// Reads the first 48 bytes of an incoming handshake (up to the info-hash).
pub async fn accept_prefix<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<([u8; 8], [u8; 20]), ConnectError> {
    let mut buf = [0u8; 48];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .map_err(|_| ConnectError::HandshakeTimeout)??;
    Handshake::parse_prefix(&buf).ok_or(ConnectError::BadProtocol)
}

/// Answers an incoming handshake whose prefix was read with [`accept_prefix`].
pub async fn accept_finish(
    mut stream: PeerStream,
    addr: SocketAddr,
    reserved: [u8; 8],
    info_hash: [u8; 20],
    peer_id: [u8; 20],
) -> Result<Connected, ConnectError> {
    let remote_id = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        stream
            .write_all(&Handshake::new(info_hash, peer_id).to_bytes())
            .await?;
        stream.flush().await?;
        let mut id = [0u8; 20];
        stream.read_exact(&mut id).await?;
        Ok::<_, io::Error>(id)
    })
    .await
    .map_err(|_| ConnectError::HandshakeTimeout)??;
    if remote_id == peer_id {
        return Err(ConnectError::OwnPeerId);
    }
    Ok(Connected {
        stream,
        addr,
        remote: Handshake {
            reserved,
            info_hash,
            peer_id: remote_id,
        },
    })
}

/// What we learn from a BEP 10 extension handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// How many outstanding requests the peer will queue.
    pub reqq: Option<u32>,
    pub client: Option<String>,
    pub listen_port: Option<u16>,
    /// The id the peer wants for `ut_pex` (BEP 11) messages, if it speaks it.
    pub ut_pex: Option<u8>,
}

pub fn encode_ext_handshake(listen_port: u16, reqq: u32) -> Bytes {
    let mut e = BEncoder::new();
    let r = e.emit_with(|e: SingleItemEncoder| {
        e.emit_dict(|mut d| {
            d.emit_pair_with(b"m", |e| {
                e.emit_dict(|mut m| m.emit_pair(b"ut_pex", super::pex::OUR_PEX_ID))
            })?;
            d.emit_pair(b"p", listen_port)?;
            d.emit_pair(b"reqq", reqq)?;
            d.emit_pair(b"v", concat!("indexswarm ", env!("CARGO_PKG_VERSION")))
        })
    });
    match r.and_then(|_| e.get_output()) {
        Ok(v) => Bytes::from(v),
        Err(_) => Bytes::from_static(b"de"),
    }
}

/// Parses the fields we use; anything malformed simply yields defaults.
pub fn decode_ext_handshake(payload: &[u8]) -> ExtHandshake {
    let mut out = ExtHandshake::default();
    let mut dec = BDecoder::new(payload).with_max_depth(4);
    let Ok(Some(Object::Dict(mut d))) = dec.next_object() else {
        return out;
    };
    while let Ok(Some((k, v))) = d.next_pair() {
        match (k, v) {
            (b"reqq", Object::Integer(s)) => out.reqq = s.parse::<u32>().ok(),
            (b"v", Object::Bytes(b)) => {
                out.client = Some(String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned())
            }
            (b"p", Object::Integer(s)) => out.listen_port = s.parse::<u16>().ok(),
            (b"m", Object::Dict(mut m)) => {
                while let Ok(Some((name, id))) = m.next_pair() {
                    if let (b"ut_pex", Object::Integer(id)) = (name, id) {
                        // 0 means "disabled" (BEP 10).
                        out.ut_pex = id.parse::<u8>().ok().filter(|i| *i != 0);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Reads blocks for uploads. Called on a blocking thread.
pub trait BlockReader: Send + Sync + 'static {
    fn read_block(&self, block: &BlockRef, dst: &mut [u8]) -> io::Result<()>;
}

/// A token bucket shared by whoever must respect it (a session, the whole process).
pub type Limiter = governor::DefaultDirectRateLimiter;

/// Builds a limiter for `bytes_per_sec` (None when 0 = unlimited). The burst
/// is 1/10 s of traffic but at least a few blocks, so small rates still move.
pub fn limiter(bytes_per_sec: u64) -> Option<Arc<Limiter>> {
    if bytes_per_sec == 0 {
        return None;
    }
    let rate = NonZeroU32::new(bytes_per_sec.min(u32::MAX as u64) as u32)?;
    let burst = (bytes_per_sec / 10).clamp(4 * BLOCK_SIZE as u64, u32::MAX as u64) as u32;
    let quota = governor::Quota::per_second(rate).allow_burst(NonZeroU32::new(burst)?);
    Some(Arc::new(governor::RateLimiter::direct(quota)))
}

/// Waits until every limiter allows `n` bytes (in burst-sized steps).
pub async fn throttle(limiters: &[Arc<Limiter>], mut n: u32) {
    while n > 0 {
        let step = n.min(4 * BLOCK_SIZE);
        if let Some(step_nz) = NonZeroU32::new(step) {
            for l in limiters {
                let _ = l.until_n_ready(step_nz).await;
            }
        }
        n -= step;
    }
}

/// Instructions for the writer half.
#[derive(Debug)]
pub enum Outgoing {
    Msg(Message),
    Requests(Vec<BlockRef>),
    Cancels(Vec<BlockRef>),
    /// The peer asked for a block; queue it for upload.
    Upload(BlockRef),
    /// The peer cancelled a block it asked for.
    CancelUpload(BlockRef),
    /// Choke the peer and drop its queued requests (rejecting each one when
    /// the fast extension is on).
    Choke {
        reject: bool,
    },
}

/// Per-connection counters the writer updates.
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub uploaded: AtomicU64,
    /// Requests the peer made that are still queued here.
    pub queued_uploads: AtomicU64,
    /// Items handed to the writer and not yet taken from its channel. A peer
    /// that sends requests and cancels but never reads its socket makes this
    /// grow; the session drops it past a bound.
    pub pending: AtomicU64,
}

/// Drains `rx` into the socket until the channel closes or a write fails.
/// Uploads are read from disk in batches on a blocking thread and written out
/// with one syscall per batch. The batch adapts to the link: it doubles (up
/// to 1 MiB) while writes complete at once and halves (down to 64 KiB) while
/// they wait, so control messages never queue behind seconds of data.
/// Returns at once when `stop` fires, dropping whatever is still queued: a
/// stopped session must not keep reading its files for a peer.
pub async fn run_writer(
    w: PeerWriter,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    reader: Arc<dyn BlockReader>,
    limiters: Vec<Arc<Limiter>>,
    counters: Arc<WriterCounters>,
    session_uploaded: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> io::Result<()> {
    tokio::select! {
        _ = stop.cancelled() => Ok(()),
        r = write_loop(w, rx, reader, limiters, counters, session_uploaded) => r,
    }
}

async fn write_loop(
    mut w: PeerWriter,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    reader: Arc<dyn BlockReader>,
    limiters: Vec<Arc<Limiter>>,
    counters: Arc<WriterCounters>,
    session_uploaded: Arc<AtomicU64>,
) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(UPLOAD_BATCH_BYTES + 64 * 1024);
    let mut queue: VecDeque<BlockRef> = VecDeque::new();
    let mut batch_limit = UPLOAD_BATCH_BYTES;
    loop {
        if out.is_empty() && queue.is_empty() {
            match tokio::time::timeout(KEEPALIVE_INTERVAL, rx.recv()).await {
                Err(_) => Message::KeepAlive.encode_into(&mut out),
                Ok(None) => return Ok(()),
                Ok(Some(item)) => handle(item, &mut out, &mut queue, &counters),
            }
        }
        for _ in 0..4096 {
            match rx.try_recv() {
                Ok(item) => handle(item, &mut out, &mut queue, &counters),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if out.is_empty() {
                        return Ok(());
                    }
                    break;
                }
            }
        }
        if !queue.is_empty() {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while let Some(b) = queue.front() {
                if bytes > 0 && bytes + b.len as usize > batch_limit {
                    break;
                }
                bytes += b.len as usize;
                batch.push(*b);
                queue.pop_front();
            }
            counters
                .queued_uploads
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            throttle(&limiters, bytes as u32).await;
            let r = reader.clone();
            let (buf, res) = tokio::task::spawn_blocking(move || {
                let mut out = out;
                for b in &batch {
                    put_piece_header(&mut out, b.piece, b.begin, b.len);
                    let start = out.len();
                    out.resize(start + b.len as usize, 0);
                    if let Err(e) = r.read_block(b, &mut out[start..]) {
                        return (out, Err(e));
                    }
                }
                (out, Ok(()))
            })
            .await
            .map_err(io::Error::other)?;
            out = buf;
            res?;
            counters.uploaded.fetch_add(bytes as u64, Ordering::Relaxed);
            session_uploaded.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if !out.is_empty() {
            let started = std::time::Instant::now();
            let was_batch = out.len() >= MIN_UPLOAD_BATCH;
            // The flush matters for TLS only: tokio-rustls keeps the records
            // a full socket did not take and sends them on the next write or
            // flush, and after the last piece there may be no next write.
            let write = async {
                w.write_all(&out).await?;
                w.flush().await
            };
            tokio::time::timeout(WRITE_TIMEOUT, write)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
            if was_batch {
                let took = started.elapsed();
                if took > std::time::Duration::from_millis(40) {
                    batch_limit = (batch_limit / 2).max(MIN_UPLOAD_BATCH);
                } else if took < std::time::Duration::from_millis(5) {
                    batch_limit = (batch_limit * 2).min(UPLOAD_BATCH_BYTES);
                }
            }
            out.clear();
            // Keep the buffer from growing without bound after a burst of control messages.
            if out.capacity() > 4 * UPLOAD_BATCH_BYTES {
                out = BytesMut::with_capacity(UPLOAD_BATCH_BYTES + 64 * 1024);
            }
        }
    }
}

fn handle(
    item: Outgoing,
    out: &mut BytesMut,
    queue: &mut VecDeque<BlockRef>,
    counters: &WriterCounters,
) {
    let _ = counters
        .pending
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    match item {
        Outgoing::Msg(m) => m.encode_into(out),
        Outgoing::Requests(bs) => bs
            .into_iter()
            .for_each(|b| Message::Request(b).encode_into(out)),
        Outgoing::Cancels(bs) => bs
            .into_iter()
            .for_each(|b| Message::Cancel(b).encode_into(out)),
        Outgoing::Upload(b) => queue.push_back(b),
        Outgoing::CancelUpload(b) => {
            if let Some(pos) = queue.iter().position(|q| *q == b) {
                queue.remove(pos);
                counters.queued_uploads.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Outgoing::Choke { reject } => {
            Message::Choke.encode_into(out);
            counters
                .queued_uploads
                .fetch_sub(queue.len() as u64, Ordering::Relaxed);
            for b in queue.drain(..) {
                if reject {
                    Message::Reject(b).encode_into(out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_handshake_round_trips() {
        let e = decode_ext_handshake(&encode_ext_handshake(6881, 2048));
        assert_eq!(e.reqq, Some(2048));
        assert_eq!(e.listen_port, Some(6881));
        assert_eq!(e.ut_pex, Some(crate::peer::pex::OUR_PEX_ID));
        assert!(e.client.unwrap().starts_with("indexswarm"));
        assert_eq!(decode_ext_handshake(b"garbage"), ExtHandshake::default());
    }

    #[tokio::test]
    async fn handshake_rejects_wrong_hash_and_self() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..2 {
                let (s, a) = listener.accept().await.unwrap();
                let mut s = PeerStream::Plain(s);
                let (reserved, _ih) = accept_prefix(&mut s).await.unwrap();
                // Answer with a different info-hash the first time, our own id the second.
                let _ = accept_finish(s, a, reserved, [9; 20], [1; 20]).await;
            }
        });
        assert!(matches!(
            dial(addr, [1; 20], [2; 20], None).await,
            Err(ConnectError::WrongInfoHash)
        ));
        assert!(matches!(
            dial(addr, [9; 20], [1; 20], None).await,
            Err(ConnectError::OwnPeerId)
        ));
    }
}
