//! Why a replication cycle failed, typed by what the loop does about it:
//! every variant is reported in `/status` `last_error` and retried with
//! backoff; [`CycleError::Retired`] also discards the staging directory,
//! since the master stopped offering that version.

use std::path::PathBuf;

use crate::metainfo::InfoHash;

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("master unreachable: {0}")]
    Unreachable(String),
    #[error("{url}: HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("{url}: malformed reply: {message}")]
    Malformed { url: String, message: String },
    #[error("torrent of version {version}: {message}")]
    Torrent { version: u64, message: String },
    #[error(
        "version {version}'s torrent_url {url} is not on the master's origin {origin} \
         (master_url); not fetched. The master's public_url must be the address replicas use"
    )]
    OffOrigin {
        version: u64,
        url: String,
        origin: String,
    },
    #[error("torrent of version {version} does not match its info-hash {expected}")]
    WrongTorrent { version: u64, expected: InfoHash },
    #[error("version {0} was retired by the master before it arrived; moving on")]
    Retired(u64),
    #[error("download of version {version} failed: {source}")]
    Download {
        version: u64,
        source: crate::swarm::SessionFailure,
    },
    #[error(
        "download of version {0} aborted (POST /abort or /pause); its verified pieces are kept"
    )]
    Aborted(u64),
    #[error("download of version {0} ended: the session stopped")]
    SessionEnded(u64),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("swap: {0}")]
    Swap(#[from] super::swapper::SwapError),
    #[error("{0}")]
    Engine(#[from] crate::swarm::EngineError),
    #[error("a blocking task failed: {0}")]
    Task(String),
}

/// `map_err` helper: an I/O error at `path`.
pub fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CycleError + '_ {
    move |source| CycleError::Io {
        path: path.to_path_buf(),
        source,
    }
}
