//! Background re-verification: re-hash published data, withdraw what no
//! longer matches.
//!
//! The integrity check in `publisher.rs` compares each published
//! directory's paths, sizes and mtimes every 10 s. That is cheap but blind
//! to an edit that keeps the mtime (`touch -r`, `rsync -a`, a restore from
//! backup): the master would go on vouching for bytes that fail their
//! hashes, and replicas would ban it. So one task re-reads every published
//! version, piece by piece, over and over, at `verify_rate` bytes/s, and
//! withdraws a version whose data no longer matches its torrent.
//!
//! Why it is shaped this way:
//! - One piece at a time, read with positional reads (`Storage::read`) on a
//!   blocking thread: the runtime never waits on the disk, memory is one
//!   piece, and a truncated file is an error rather than a SIGBUS (no mmap).
//! - Paced by [`Throttle`]: a piece may start only once the bytes before it
//!   fit the rate, so the average never exceeds `verify_rate` and the
//!   largest burst is one piece. The multi-threaded `verify_pieces` was
//!   rejected: it takes every core for as long as a pass lasts.
//! - A fresh `Storage` (fresh file handles) for every visit of a version, so
//!   a file replaced by a rename is read at its new inode; over the seeding
//!   session's parsed torrent (one `Metainfo` per version, not two), which
//!   it reads from the state directory only when nothing seeds the version.
//! - It checks between pieces that the version is still published, and the
//!   registry's change counter wakes it from a throttle sleep, so a retired
//!   or withdrawn version is dropped at once; shutdown likewise.

use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::registry::VersionRecord;
use super::Index;
use crate::metainfo::Metainfo;
use crate::storage::{Mode, Storage, StorageError};
use crate::util::now_rfc3339;

/// How late a read may start and still keep its booked slot: bursts stay
/// within 50 ms of traffic (plus one piece).
const SLACK: Duration = Duration::from_millis(50);

/// Wait before another pass when a version could not be read.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Paces reads to `rate` bytes/s: each read is admitted no earlier than the
/// time at which the bytes admitted before it have been "paid for".
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    next: Option<Instant>,
}

impl Throttle {
    /// `rate` in bytes/s; 0 is treated as 1 (the caller does not run at 0).
    pub fn new(rate: u64) -> Throttle {
        Throttle {
            rate: rate.max(1),
            next: None,
        }
    }

    /// Books `bytes` and returns when reading them may start. A caller a
    /// little late (timers fire on millisecond ticks, a read took a while)
    /// keeps its booked slot, so lateness does not add up and the long-run
    /// rate is the configured one; idle time beyond `SLACK` earns nothing.
    pub fn admit(&mut self, now: Instant, bytes: u64) -> Instant {
        let start = match self.next {
            Some(n) if n.checked_add(SLACK).is_some_and(|late| now <= late) => n,
            _ => now,
        };
        let nanos = (bytes as u128 * 1_000_000_000) / self.rate as u128;
        let cost = Duration::from_nanos(nanos.min(u64::MAX as u128) as u64);
        // A start this far in the future cannot overflow the clock (cost is
        // at most 64 MiB at 1 byte/s, under three years).
        self.next = Some(start.checked_add(cost).unwrap_or(start));
        start
    }
}

/// Bytes per second over windows of about a second, for `/status`.
struct RateMeter {
    since: Instant,
    bytes: u64,
    last: u64,
}

impl RateMeter {
    fn new() -> RateMeter {
        RateMeter {
            since: Instant::now(),
            bytes: 0,
            last: 0,
        }
    }

    fn add(&mut self, bytes: u64) -> u64 {
        self.bytes += bytes;
        let secs = self.since.elapsed().as_secs_f64();
        if secs >= 1.0 {
            self.last = (self.bytes as f64 / secs) as u64;
            self.since = Instant::now();
            self.bytes = 0;
        }
        self.last
    }
}

/// The verifier's progress, shown as `verify` in the master's `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyStatus {
    /// The configured rate, bytes/s (0: re-verification is off).
    pub rate: u64,
    /// The version being re-verified now.
    pub version: Option<u64>,
    pub pieces_checked: u32,
    pub pieces_total: u32,
    /// Completed passes over every published version.
    pub passes: u64,
    pub last_full_pass_at: Option<String>,
    /// Measured over the last second or so.
    pub bytes_per_sec: u64,
    pub bytes_verified: u64,
    /// Versions withdrawn because their data no longer matched.
    pub failures: u64,
}

/// How a visit of one version ended.
#[derive(Debug)]
enum Visit {
    /// Every piece matched.
    Verified,
    /// It stopped being published meanwhile (retired or withdrawn).
    Dropped,
    /// Its data no longer matches: withdrawn.
    Withdrawn,
    /// Could not be read for a reason that may pass (logged); next pass.
    Skipped,
    Shutdown,
}

/// What reading one piece found.
enum PieceCheck {
    Matches,
    Differs,
    /// A file is missing or shorter than the torrent says.
    Gone(String),
    Unreadable(String),
}

impl Index {
    /// Re-verifies every published version, round after round, until
    /// `shutdown`. Does nothing when `verify_rate` is 0.
    pub(super) async fn run_verifier(self: Arc<Self>, shutdown: CancellationToken) {
        let rate = self.shared.cfg.verify_rate;
        self.verify.lock().rate = rate;
        if rate == 0 {
            return;
        }
        let mut changes = self.changes.subscribe();
        let mut meter = RateMeter::new();
        info!(rate, "re-verifying published versions in the background");
        loop {
            let published = self.registry.lock().published();
            if published.is_empty() {
                self.verify.lock().bytes_per_sec = 0;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = changes.changed() => if r.is_err() { return },
                }
                continue;
            }
            let mut skipped = false;
            for rec in &published {
                let mut pacing = Pacing {
                    throttle: &self.shared.throttle,
                    meter: &mut meter,
                    changes: &mut changes,
                    shutdown: &shutdown,
                };
                match self.verify_version(rec, &mut pacing).await {
                    Visit::Shutdown => return,
                    Visit::Skipped => skipped = true,
                    v => debug!(version = rec.version, outcome = ?v, "re-verified"),
                }
            }
            self.verify.lock().version = None;
            if skipped {
                // Something could not be read: not a full pass, and no
                // point in spinning on it. Look again later.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
                continue;
            }
            let mut st = self.verify.lock();
            st.passes += 1;
            st.last_full_pass_at = Some(now_rfc3339());
            self.shared
                .metrics
                .verify_passes
                .with_label_values(&[&self.name])
                .inc();
        }
    }

    /// Reads and hashes every piece of one version at the throttled rate.
    async fn verify_version(&self, rec: &VersionRecord, pace: &mut Pacing<'_>) -> Visit {
        let Some(storage) = self.open_version(rec).await else {
            return Visit::Skipped;
        };
        let meta = storage.meta().clone();
        {
            let mut st = self.verify.lock();
            st.version = Some(rec.version);
            st.pieces_checked = 0;
            st.pieces_total = meta.num_pieces();
        }
        let mut buf = Vec::new();
        for piece in 0..meta.num_pieces() {
            let len = meta.piece_len(piece);
            if let Some(visit) = pace.wait_turn(self, rec.version, len).await {
                return visit;
            }
            let (b, check) = read_piece(storage.clone(), piece, buf).await;
            buf = b;
            match check {
                PieceCheck::Matches => {
                    let rate = pace.meter.add(len);
                    self.shared
                        .metrics
                        .verified_bytes
                        .with_label_values(&[&self.name])
                        .inc_by(len);
                    let mut st = self.verify.lock();
                    st.pieces_checked = piece + 1;
                    st.bytes_verified += len;
                    st.bytes_per_sec = rate;
                }
                PieceCheck::Differs => {
                    let why = format!(
                        "piece {piece} of {} ({}) no longer matches the torrent: \
                         the data changed after publication",
                        meta.num_pieces(),
                        files_of_piece(&meta, piece)
                    );
                    return self.withdraw_modified(rec, &why).await;
                }
                PieceCheck::Gone(e) => {
                    let why = format!("piece {piece} cannot be read any more: {e}");
                    return self.withdraw_modified(rec, &why).await;
                }
                PieceCheck::Unreadable(e) => {
                    warn!(
                        version = rec.version,
                        "cannot re-verify piece {piece}: {e}; will try again next pass"
                    );
                    return Visit::Skipped;
                }
            }
        }
        Visit::Verified
    }

    /// The version's torrent, checked against its record, as read-only storage.
    async fn open_version(&self, rec: &VersionRecord) -> Option<Arc<Storage>> {
        let parent = self.cfg.snapshots_dir.clone();
        // The seeding session's parsed torrent, shared: parsing it again
        // would hold a second copy of every file entry (tens of megabytes
        // at 50,000 files). The same info-hash is the same info dictionary.
        if let Some(session) = self.shared.engine.get(&rec.info_hash) {
            let meta = session.meta().clone();
            return Some(Arc::new(Storage::new(meta, &parent, Mode::ReadOnly)));
        }
        let path = self.registry.lock().torrent_path(rec.version);
        let loaded = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Metainfo::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match loaded {
            Ok(meta) if meta.info_hash == rec.info_hash => Some(Arc::new(Storage::new(
                Arc::new(meta),
                &parent,
                Mode::ReadOnly,
            ))),
            Ok(_) => {
                warn!(
                    version = rec.version,
                    "its torrent file no longer has its info-hash; not re-verified"
                );
                None
            }
            Err(e) => {
                // Retired between listing and now, or a state-directory problem.
                if self.is_published(rec.version) {
                    warn!(
                        version = rec.version,
                        "cannot load its torrent to re-verify: {e}"
                    );
                }
                None
            }
        }
    }

    /// Withdraws `rec` (if still published) and says so in `/status`.
    async fn withdraw_modified(&self, rec: &VersionRecord, why: &str) -> Visit {
        if !self.is_published(rec.version) {
            return Visit::Dropped;
        }
        self.withdraw(rec, why).await;
        self.shared
            .metrics
            .verify_failures
            .with_label_values(&[&self.name])
            .inc();
        self.verify.lock().failures += 1;
        *self.last_error.lock() = Some(format!(
            "version {} ({}) withdrawn by re-verification: {why}",
            rec.version, rec.name
        ));
        Visit::Withdrawn
    }
}

/// The verifier's pacing state, lent to one version's visit.
struct Pacing<'a> {
    /// Shared by every index's verifier: one budget in total.
    throttle: &'a parking_lot::Mutex<Throttle>,
    meter: &'a mut RateMeter,
    changes: &'a mut tokio::sync::watch::Receiver<u64>,
    shutdown: &'a CancellationToken,
}

impl Pacing<'_> {
    /// Waits until `bytes` may be read. `Some` when the visit must end:
    /// shutdown, or the version stopped being published.
    async fn wait_turn(&mut self, master: &Index, version: u64, bytes: u64) -> Option<Visit> {
        if !master.is_published(version) {
            return Some(Visit::Dropped);
        }
        let start = self.throttle.lock().admit(Instant::now(), bytes);
        let sleep = tokio::time::sleep_until(start);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Some(Visit::Shutdown),
                _ = &mut sleep => return None,
                r = self.changes.changed() => {
                    if r.is_err() || !master.is_published(version) {
                        return Some(Visit::Dropped);
                    }
                }
            }
        }
    }
}

/// Reads and hashes one piece on a blocking thread; hands the buffer back.
async fn read_piece(storage: Arc<Storage>, piece: u32, mut buf: Vec<u8>) -> (Vec<u8>, PieceCheck) {
    let joined = tokio::task::spawn_blocking(move || {
        let meta = storage.meta();
        let len = meta.piece_len(piece) as usize;
        buf.resize(len, 0);
        let check = match storage.read(piece as u64 * meta.piece_length, &mut buf) {
            Ok(()) => {
                let hash = <[u8; 20]>::from(Sha1::digest(&buf));
                if meta.pieces.get(piece as usize) == Some(&hash) {
                    PieceCheck::Matches
                } else {
                    PieceCheck::Differs
                }
            }
            Err(StorageError::Io { path, source })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                PieceCheck::Gone(format!("{}: {source}", path.display()))
            }
            Err(e) => PieceCheck::Unreadable(e.to_string()),
        };
        (buf, check)
    })
    .await;
    joined.unwrap_or_else(|e| (Vec::new(), PieceCheck::Unreadable(e.to_string())))
}

/// The real files a piece covers, for the withdrawal note.
fn files_of_piece(meta: &Metainfo, piece: u32) -> String {
    let files: Vec<String> = meta
        .spans(piece as u64 * meta.piece_length, meta.piece_len(piece))
        .filter(|s| !meta.files[s.file].pad)
        .map(|s| meta.files[s.file].display_path())
        .collect();
    match files.len() {
        1 => format!("file {}", files[0]),
        _ => format!("files {}", files.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `pieces` pieces of `piece` bytes through the throttle, on the
    /// paused clock, and returns the virtual time it took.
    async fn paced(rate: u64, piece: u64, pieces: u64) -> Duration {
        let t0 = Instant::now();
        let mut th = Throttle::new(rate);
        for _ in 0..pieces {
            let start = th.admit(Instant::now(), piece);
            tokio::time::sleep_until(start).await;
        }
        t0.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_holds_the_rate() {
        // 100 pieces of 64 KiB at 1 MiB/s: the 100th starts after 99 have
        // been paid for, 99/16 s.
        let took = paced(1 << 20, 64 << 10, 100).await;
        let expected = Duration::from_secs_f64(99.0 / 16.0);
        assert!(
            took >= expected && took < expected + Duration::from_millis(5),
            "{took:?} vs {expected:?}"
        );
        // Over a long run the average never exceeds the rate.
        for (rate, piece) in [(10 << 20, 4 << 20), (32 << 20, 16 << 10), (1000, 16 << 10)] {
            let pieces = 50;
            let took = paced(rate, piece, pieces).await;
            let bytes_before_last = (pieces - 1) * piece;
            let r = bytes_before_last as f64 / took.as_secs_f64();
            assert!(
                r <= rate as f64 * 1.0001 && r >= rate as f64 * 0.99,
                "rate {rate}: measured {r:.0} B/s"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_is_not_banked_into_a_burst() {
        let mut th = Throttle::new(1 << 20);
        let t0 = Instant::now();
        assert_eq!(th.admit(t0, 1 << 20), t0);
        // A long pause (a version with nothing to do, a slow disk) earns
        // no credit: the next read after it still waits its own cost.
        tokio::time::advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        assert_eq!(th.admit(now, 1 << 20), now);
        assert_eq!(th.admit(now, 1 << 20), now + Duration::from_secs(1));
    }
}
