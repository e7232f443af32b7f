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
