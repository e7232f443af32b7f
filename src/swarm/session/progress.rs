//! What a session reports: its lifecycle, a progress snapshot for displays
//! and `/status`, per-peer totals, and why it failed.

use std::net::SocketAddr;

/// Why a session failed: what the caller can act on (a full disk is not a
/// corrupt source), with the detail as text for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum SessionFailure {
    #[error("checking existing data failed")]
    Check,
    #[error("data does not match the torrent: {missing} of {total} pieces are missing or corrupt")]
    Incomplete { missing: u32, total: u32 },
    #[error("cannot write piece {piece}: {message}")]
    Write {
        piece: u32,
        message: String,
        disk_full: bool,
    },
    #[error("cannot sync files: {0}")]
    Sync(String),
    #[error("cannot finalize files: {0}")]
    Finalize(String),
    #[error("{0} task crashed")]
    Crashed(&'static str),
}

impl SessionFailure {
    /// True when the disk is full: retrying helps only once space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            SessionFailure::Write {
                disk_full: true,
                ..
            }
        )
    }
}

/// Why waiting on a session ended without the awaited state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Failed(#[from] SessionFailure),
    #[error("the session was stopped")]
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Checking,
    Downloading,
    Seeding,
    Stopped,
    Failed(SessionFailure),
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
    /// Set while a download has verified nothing for the stall interval:
    /// why (no peers, a failing tracker, a source whose data is wrong...).
    pub stalled: Option<String>,
}

impl Progress {
    pub(crate) fn initial(pieces_total: u32, bytes_total: u64) -> Progress {
        Progress {
            state: SessionState::Checking,
            pieces_have: 0,
            pieces_total,
            bytes_have: 0,
            bytes_resumed: 0,
            bytes_total,
            downloaded: 0,
            uploaded: 0,
            wasted: 0,
            download_rate: 0,
            upload_rate: 0,
            peers: 0,
            hash_failures: 0,
            complete: false,
            stalled: None,
        }
    }
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
