//! What `/status` reports (INTERFACE.md), kept up to date by the replica's loop.

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Idle,
    Downloading,
    Verifying,
    Swapping,
    /// A version is downloaded, verified and ready to swap (fleet rollouts).
    Staged,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Downloading => "downloading",
            State::Verifying => "verifying",
            State::Swapping => "swapping",
            State::Staged => "staged",
            State::Error => "error",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub state: State,
    pub current_version: Option<u64>,
    pub current_info_hash: Option<String>,
    pub current_path: Option<String>,
    pub target_version: Option<u64>,
    pub progress: f64,
    pub bytes_total: u64,
    /// Over the network, this cycle.
    pub bytes_downloaded: u64,
    /// From disk (files identical to the live version), this cycle.
    pub bytes_reused: u64,
    /// Downloaded bytes we could not use (duplicates, unrequested), this cycle.
    pub bytes_wasted: u64,
    pub bytes_uploaded: u64,
    pub download_rate: u64,
    pub upload_rate: u64,
    pub peers: usize,
    pub last_swap_at: Option<String>,
    pub last_cycle_seconds: Option<f64>,
    pub times_replicated: u64,
    pub times_failed: u64,
    pub next_poll_at: Option<String>,
    pub last_error: Option<String>,
    /// Versions kept on disk (the live one included).
    pub versions_on_disk: Vec<u64>,
    /// Versions being seeded to other replicas.
    pub seeding: Vec<u64>,
    pub master_url: String,
    /// This replica's id and zone, as the master's /replicas shows them.
    pub id: String,
    pub zone: Option<String>,
    /// Downloaded and verified, waiting for the master to activate it.
    pub staged_version: Option<u64>,
    /// When the staged version was ready to swap.
    pub staged_at: Option<String>,
    /// `POST /pause`: no polling, no downloading until `POST /resume`.
    pub paused: bool,
    /// The master's active version, as last heard.
    pub active_version: Option<u64>,
    /// The `health_check` passed (true when there is none).
    pub healthy: bool,
    /// Pieces that failed verification, since start.
    pub hash_failures: u64,
}

impl Status {
    pub fn new(master_url: String, id: String, zone: Option<String>) -> Status {
        Status {
            state: State::Idle,
            current_version: None,
            current_info_hash: None,
            current_path: None,
            target_version: None,
            progress: 0.0,
            bytes_total: 0,
            bytes_downloaded: 0,
            bytes_reused: 0,
            bytes_wasted: 0,
            bytes_uploaded: 0,
            download_rate: 0,
            upload_rate: 0,
            peers: 0,
            last_swap_at: None,
            last_cycle_seconds: None,
            times_replicated: 0,
            times_failed: 0,
            next_poll_at: None,
            last_error: None,
            versions_on_disk: Vec::new(),
            seeding: Vec::new(),
            master_url,
            id,
            zone,
            staged_version: None,
            staged_at: None,
            paused: false,
            active_version: None,
            healthy: true,
            hash_failures: 0,
        }
    }
}
