//! A peer connection's bytes: plain TCP, or TLS for SSL torrents (as
//! client when we dialled, as server when we accepted), and its two halves.
//!
//! A plain stream splits into tokio's owned TCP halves (no lock between
//! reader and writer, as before TLS existed); a TLS stream splits through
//! `tokio::io::split`, since both directions share one session state.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub enum PeerStream {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

pub enum PeerReader {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<PeerStream>),
}

pub enum PeerWriter {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<PeerStream>),
}

impl PeerStream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, PeerStream::Plain(_))
    }

    pub fn split(self) -> (PeerReader, PeerWriter) {
        match self {
            PeerStream::Plain(s) => {
                let (r, w) = s.into_split();
                (PeerReader::Plain(r), PeerWriter::Plain(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (PeerReader::Tls(r), PeerWriter::Tls(w))
            }
        }
    }
}

/// Forwards an `AsyncRead`/`AsyncWrite` method to whichever stream is inside.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr, $($v:path),+) => {
        match $self.get_mut() {
            $($v($s) => $e,)+
        }
    };
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf),
            PeerStream::Plain, PeerStream::Client, PeerStream::Server)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, b),
            PeerStream::Plain, PeerStream::Client, PeerStream::Server)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx),
            PeerStream::Plain, PeerStream::Client, PeerStream::Server)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx),
            PeerStream::Plain, PeerStream::Client, PeerStream::Server)
    }
}

impl AsyncRead for PeerReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf), PeerReader::Plain, PeerReader::Tls)
    }
}

impl AsyncWrite for PeerWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, b), PeerWriter::Plain, PeerWriter::Tls)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx), PeerWriter::Plain, PeerWriter::Tls)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx), PeerWriter::Plain, PeerWriter::Tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::connection::{run_writer, BlockReader, Outgoing, WriterCounters};
    use crate::peer::{BlockRef, Message};
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    struct NoBlocks;
    impl BlockReader for NoBlocks {
        fn read_block(&self, _: &BlockRef, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::other("no uploads here"))
        }
    }

    /// A TLS connection over loopback with tiny socket buffers: the
    /// accepted (server) side as a `PeerStream`, and the client's stream.
    async fn tls_pair() -> (PeerStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::ca_init(dir.path()).unwrap();
        crate::tls::ca_issue(dir.path(), "node", &[]).unwrap();
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let id = crate::peer::tls::PeerIdentity::load(
            &dir.path().join("node.pem"),
            &dir.path().join("node.key"),
        )
        .unwrap();
        let tls = crate::peer::tls::torrent_tls(&ca, &id).unwrap();
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_send_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = listener.listen(1).unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let (accepted, connected) = tokio::join!(
            async {
                let (s, _) = listener.accept().await.unwrap();
                tokio_rustls::TlsAcceptor::from(tls.server.clone())
                    .accept(s)
                    .await
                    .unwrap()
            },
            async {
                let s = client.connect(addr).await.unwrap();
                tokio_rustls::TlsConnector::from(tls.client.clone())
                    .connect(crate::peer::tls::sni(&[3; 20]), s)
                    .await
                    .unwrap()
            }
        );
        (PeerStream::Server(Box::new(accepted)), connected)
    }

    /// The writer's last bytes reached the peer although nothing was
    /// written after them. tokio-rustls keeps records the socket did not
    /// take yet and sends them on the next write or flush: without a
    /// flush, the end of a transfer waited in our process until the peer
    /// gave up on it (a 1 GiB SSL torrent stalled 30 s on its last piece,
    /// one run in twenty).
    #[tokio::test]
    async fn a_tls_writer_delivers_its_last_bytes_without_another_write() {
        let (server, mut client) = tls_pair().await;
        let (_reader, writer) = server.split();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // More than the socket buffers hold, less than what rustls buffers.
        let payload = vec![7u8; 4000];
        let messages = 15;
        for _ in 0..messages {
            tx.send(Outgoing::Msg(Message::Extended {
                id: 1,
                payload: payload.clone().into(),
            }))
            .unwrap();
        }
        drop(tx);
        let mut w = tokio::spawn(run_writer(
            writer,
            rx,
            Arc::new(NoBlocks),
            Vec::new(),
            Arc::new(WriterCounters::default()),
            Arc::new(AtomicU64::new(0)),
            tokio_util::sync::CancellationToken::new(),
        ));
        // Let the writer finish (the bug) or block on the full socket.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut w).await;
        let want = messages * (4 + 2 + payload.len());
        let mut got = vec![0u8; want];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("the last bytes never arrived")
            .unwrap();
        assert!(got
            .chunks(want / messages)
            .all(|m| m[6..].iter().all(|&b| b == 7)));
    }
}
