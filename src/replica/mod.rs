//! The replica sidecar: poll the master, fetch each newer version from the
//! whole swarm (reusing unchanged files), verify, swap atomically, keep
//! seeding, and keep a few old versions for rollback.
//!
//! One cycle (`cycle.rs`): poll → decide by epoch and info-hash (`plan.rs`)
//! → torrent → stage (`stage.rs`: reuse a finalized directory its manifest
//! vouches for, or download into `versions/<slot>.partial/` with unchanged
//! files hard-linked from the live version) → fsync → rename `.partial` →
//! manifest → read-only → swap (`swapper.rs`) → `on_swap` → seed →
//! retention (`retention.rs`). Startup recovery is `recover.rs`; the names
//! on disk and the rule that picks a version's directory are in
//! `layout.rs`, what a manifest proves in `manifest.rs`.
//!
//! The invariants:
//! - `current` only ever moves to a directory that was complete, verified
//!   and fsynced before the rename that created it, and whose manifest was
//!   written, so no kill -9 can leave it pointing at anything partial;
//! - nothing writes into the live version: it is never a staging directory,
//!   its files are read-only, and storage copies a shared file before
//!   writing into it;
//! - `/status` `current_info_hash` is the info-hash of the bytes `current`
//!   points at, proven by manifest or by checking every piece, else null.
//!
//! When a newer version appears mid-download, the download in progress is
//! finished and swapped first, then the replica moves straight to the newest
//! (versions in between are skipped). The exception: a version the master no
//! longer lists (retired) is abandoned at once, since its seeders are going.

mod cycle;
pub mod error;
pub mod fetcher;
mod follow;
mod gate;
pub mod layout;
pub mod manifest;
pub mod plan;
mod poll;
mod recover;
mod report;
mod retention;
pub mod sidecar;
mod stage;
pub mod status;
pub mod swapper;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::ReplicaConfig;
use crate::metainfo::{InfoHash, Metainfo};
use crate::swarm::{Check, Engine, Session, SessionOptions};
use crate::util::{rfc3339_in, DirLock};
pub use error::CycleError;
pub use report::NotReady;
pub use sidecar::{Lever, ReplicaSet, SetStatus};
pub use status::{State, Status};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error(transparent)]
    Locked(#[from] crate::util::LockError),
    #[error("{0}")]
    Engine(#[from] crate::swarm::EngineError),
    #[error("tls_ca: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The live version.
#[derive(Clone)]
struct Live {
    version: u64,
    /// Its directory's name under `versions/` (see `layout.rs`).
    slot: String,
    meta: Arc<Metainfo>,
    /// The verified directory it is seeded from.
    dir: PathBuf,
    /// What the search server reads (the version dir, or the Solr index dir).
    path: PathBuf,
}

impl Live {
    fn id(&self) -> plan::LiveId {
        plan::LiveId {
            version: self.version,
            info_hash: self.meta.info_hash,
        }
    }
}

struct Seeding {
    info_hash: InfoHash,
    slot: String,
    session: Arc<Session>,
    /// Stop seeding after this instant (old versions); `None` for the live one.
    until: Option<Instant>,
}

pub struct Replica {
    pub cfg: ReplicaConfig,
    pub engine: Engine,
    http: reqwest::Client,
    status: Mutex<Status>,
    live: Mutex<Option<Live>>,
    /// The epoch of the master the live version came from.
    epoch: Mutex<Option<String>>,
    seeding: Mutex<Vec<Seeding>>,
    /// What went wrong after the last swap (core RELOAD, on_swap hook), or
    /// at startup (a live version that did not verify): kept in `/status`
    /// `last_error` until the next swap, not wiped by the next poll.
    swap_warning: Mutex<Option<String>>,
    /// `POST /poll` (and `resume`): one permit, however many asked.
    poll_now: Notify,
    /// Keeps asked-for polls `poll::POLL_GAP` apart.
    poll_gate: poll::PollGate,
    /// Pieces that failed verification in downloads that have ended.
    hash_failures_before: std::sync::atomic::AtomicU64,
    /// Payload uploaded by this index's sessions that have since stopped.
    uploaded_before: std::sync::atomic::AtomicU64,
    /// The torrent being downloaded now, if any.
    downloading: Mutex<Option<InfoHash>>,
    /// A version downloaded and verified, waiting for activation (fleet).
    staged: Mutex<Option<follow::Staged>>,
    /// The master's rollout generation last seen (for the long poll).
    generation: Mutex<Option<u64>>,
    /// The master's last rollout view (readiness reads it).
    view: Mutex<Option<crate::api::RolloutView>>,
    /// Why the last health check failed (None: passed, or none configured).
    health_error: Mutex<Option<String>>,
    /// `POST /pause` until `POST /resume`.
    paused: std::sync::atomic::AtomicBool,
    /// Wakes the loop out of a pause, and a download out of its wait.
    resumed: Notify,
    /// Bumped to end the download in progress (`POST /abort`, `POST /pause`);
    /// a download watches for a change from the value it started with.
    abort: tokio::sync::watch::Sender<u64>,
    /// Held for the life of the process: one replica per data directory.
    _lock: DirLock,
}

/// How a cycle ended well.
enum Outcome {
    UpToDate,
    Replicated,
    /// A version was staged (fleet): poll again at once for its activation.
    Staged,
    /// The master is behind this replica; the message says how.
    Behind(String),
}

/// A data directory, locked and canonical, before the engine starts.
pub struct LockedDir {
    cfg: ReplicaConfig,
    lock: DirLock,
}

impl Replica {
    /// Creates and locks the data directory: before anything else starts,
    /// so that a second replica on the same directory is turned away naming
    /// the first one's pid.
    pub fn lock(mut cfg: ReplicaConfig) -> Result<LockedDir, ReplicaError> {
        let vdir = layout::versions_dir(&cfg.data_dir);
        std::fs::create_dir_all(&vdir)
            .map_err(|e| ReplicaError::DataDir(vdir.display().to_string(), e))?;
        // Absolute paths for /status, the on_swap hook and the lock message.
        cfg.data_dir = cfg
            .data_dir
            .canonicalize()
            .map_err(|e| ReplicaError::DataDir(cfg.data_dir.display().to_string(), e))?;
        let lock = DirLock::acquire(&cfg.data_dir, "data directory")?;
        Ok(LockedDir { cfg, lock })
    }

    /// Recovers the data directory (crash leftovers) and seeds the live
    /// version again on the sidecar's engine.
    pub async fn start(locked: LockedDir, engine: Engine) -> Arc<Replica> {
        let LockedDir { cfg, lock } = locked;
        let http = engine.http().clone();
        let replica = Arc::new(Replica {
            status: Mutex::new(Status::new(
                cfg.master_url.clone(),
                cfg.fleet.id.clone(),
                cfg.fleet.zone.clone(),
            )),
            epoch: Mutex::new(layout::read_epoch(&cfg.data_dir)),
            cfg,
            engine,
            http,
            live: Mutex::new(None),
            seeding: Mutex::new(Vec::new()),
            swap_warning: Mutex::new(None),
            poll_now: Notify::new(),
            poll_gate: poll::PollGate::default(),
            uploaded_before: Default::default(),
            hash_failures_before: Default::default(),
            downloading: Mutex::new(None),
            staged: Mutex::new(None),
            generation: Mutex::new(None),
            view: Mutex::new(None),
            paused: Default::default(),
            health_error: Mutex::new(None),
            resumed: Notify::new(),
            abort: tokio::sync::watch::channel(0).0,
            _lock: lock,
        });
        replica.recover().await;
        replica
    }

    /// A URL of this index's routes on the master: the unprefixed ones for
    /// `default` (every master has them), `/indexes/<name>/...` otherwise.
    pub(crate) fn api(&self, path: &str) -> String {
        if self.cfg.index == crate::config::DEFAULT_INDEX {
            format!("{}{path}", self.cfg.master_url)
        } else {
            format!("{}/indexes/{}{path}", self.cfg.master_url, self.cfg.index)
        }
    }

    /// Stops one of this index's sessions, keeping what it uploaded in the
    /// index's total.
    pub(crate) async fn stop_session(&self, s: &Session) {
        let up = s.snapshot().uploaded;
        s.stop().await;
        self.uploaded_before
            .fetch_add(up, std::sync::atomic::Ordering::Relaxed);
    }

    fn start_seeding(&self, l: &Live, until: Option<Instant>) {
        if self.engine.get(&l.meta.info_hash).is_some() {
            return;
        }
        let opts = SessionOptions {
            max_peers: self.cfg.limits.max_peers,
            max_peers_per_ip: self.cfg.limits.max_peers_per_ip,
            check: Check::AssumeComplete,
            content_dir: Some(l.dir.clone()),
            mode: crate::storage::Mode::ReadOnly,
            ..SessionOptions::default()
        };
        match self.engine.add(l.meta.clone(), l.dir.clone(), opts) {
            Ok(session) => self.seeding.lock().push(Seeding {
                info_hash: l.meta.info_hash,
                slot: l.slot.clone(),
                session,
                until,
            }),
            Err(e) => warn!(version = l.version, "cannot seed: {e}"),
        }
    }

    /// Asks the loop to poll the master now: at once, or once
    /// `poll::POLL_GAP` has passed since the last poll asked for; asking
    /// again meanwhile adds nothing.
    pub fn poll_now(&self) {
        self.poll_now.notify_one();
    }

    /// Resolves when a poll was asked for and may go out: the gap since
    /// the last one has passed. A caller that drops it while it waits for
    /// the gap loses nothing (the request is taken only when it resolves).
    async fn asked_to_poll(&self) {
        let gap = self.poll_gate.wait(Instant::now());
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        self.poll_now.notified().await;
        self.poll_gate.mark(Instant::now());
    }

    pub fn live_version(&self) -> Option<u64> {
        self.live.lock().as_ref().map(|l| l.version)
    }

    /// The wait before the next poll: the interval ± 20 %, doubled per
    /// failure (at most 32 times, and at most a minute unless the interval
    /// is longer). Never panics, whatever the interval.
    fn next_wait(&self, failures: u32) -> Duration {
        let base = self.cfg.poll_interval.as_secs_f64();
        let backoff = base * 2f64.powi(failures.min(5) as i32);
        let secs = backoff.min(base.max(60.0)) * rand::thread_rng().gen_range(0.8..1.2);
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }

    /// Polls and replicates until `shutdown`. Against a master with
    /// rollouts each cycle is a long poll (the master answers as soon as
    /// something changes), so the loop itself waits only after a failure
    /// or against an older master.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut immediate = true;
        loop {
            if self.is_paused() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.resumed.notified() => {}
                }
                continue;
            }
            let long_poll = self.cfg.long_poll && self.generation.lock().is_some() && failures == 0;
            let wait = if immediate || long_poll {
                Duration::ZERO
            } else {
                self.next_wait(failures)
            };
            // The master may hold a long poll for one poll interval.
            let hold = if immediate || !long_poll {
                Duration::ZERO
            } else {
                self.cfg.poll_interval
            };
            // When the replica asks next at the latest: a long poll is
            // answered at once on any change, else when it times out.
            let next = if long_poll && !immediate { hold } else { wait };
            self.status.lock().next_poll_at = Some(rfc3339_in(next));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.asked_to_poll() => {}
                _ = self.resumed.notified() => {}
            }
            self.retire_old_seeds().await;
            let started = Instant::now();
            let r = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.cycle(hold) => r,
            };
            immediate = matches!(r, Ok(Outcome::Replicated | Outcome::Staged));
            failures = if r.is_err() {
                failures.saturating_add(1)
            } else {
                0
            };
            self.record_outcome(r, started.elapsed());
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `POST /pause`: stop polling and downloading (a download in progress
    /// ends; its verified pieces stay for later).
    pub fn pause(&self) {
        self.paused
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.status.lock().paused = true;
        self.abort.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `POST /resume`.
    pub fn resume(&self) {
        self.paused
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.status.lock().paused = false;
        self.resumed.notify_waiters();
        self.poll_now();
    }

    /// `POST /abort`: end the download in progress, keeping its verified
    /// pieces in `.partial` for the next attempt. Returns whether one ran.
    pub fn abort(&self) -> bool {
        let running = self.downloading.lock().is_some();
        self.abort.send_modify(|n| *n = n.wrapping_add(1));
        running
    }

    /// Puts a cycle's outcome into `/status`.
    fn record_outcome(&self, r: Result<Outcome, CycleError>, took: Duration) {
        let warning = self.swap_warning.lock().clone();
        let mut st = self.status.lock();
        match r {
            Ok(Outcome::UpToDate) => {
                if st.state != State::Error {
                    st.state = if st.staged_version.is_some() {
                        State::Staged
                    } else {
                        State::Idle
                    };
                }
            }
            Ok(Outcome::Behind(message)) => {
                st.state = State::Idle;
                st.last_error = Some(match warning {
                    Some(w) => format!("{message}; {w}"),
                    None => message,
                });
            }
            Ok(Outcome::Staged) => {
                st.state = State::Staged;
                st.last_error = warning;
                st.last_cycle_seconds = Some(took.as_secs_f64());
            }
            Ok(Outcome::Replicated) => {
                // Something newer may already be waiting.
                st.state = State::Idle;
                st.last_error = warning;
                st.last_cycle_seconds = Some(took.as_secs_f64());
            }
            Err(e) => {
                warn!("replication cycle failed: {e}");
                st.state = State::Error;
                // A standing warning (a failed RELOAD, a live version that
                // did not verify) stays visible behind the new error.
                st.last_error = Some(match warning {
                    Some(w) => format!("{e}; {w}"),
                    None => e.to_string(),
                });
                st.times_failed += 1;
                st.last_cycle_seconds = Some(took.as_secs_f64());
            }
        }
    }

    /// This index's sessions: what it seeds, and the download in progress.
    fn sessions(&self) -> Vec<Arc<Session>> {
        let mut out: Vec<Arc<Session>> = self
            .seeding
            .lock()
            .iter()
            .map(|s| s.session.clone())
            .collect();
        let downloading = *self.downloading.lock();
        if let Some(h) = downloading {
            if let Some(s) = self.engine.get(&h) {
                if !out.iter().any(|o| o.info_hash() == h) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// `/status`.
    pub fn status(&self) -> Status {
        let (mut up_rate, mut peers, mut up) = (0, 0, 0);
        for s in self.sessions() {
            let p = s.snapshot();
            up_rate += p.upload_rate;
            peers += p.peers;
            up += p.uploaded;
        }
        let seeding: Vec<u64> = self
            .seeding
            .lock()
            .iter()
            .filter_map(|s| layout::slot_version(&s.slot))
            .collect();
        let mut st = self.status.lock().clone();
        st.bytes_uploaded = up
            + self
                .uploaded_before
                .load(std::sync::atomic::Ordering::Relaxed);
        st.upload_rate = up_rate;
        if st.state == State::Idle || st.state == State::Error {
            st.peers = peers;
            st.download_rate = 0;
        }
        st.seeding = seeding;
        if st.last_error.is_none() {
            st.last_error = self.health_error.lock().clone();
        }
        st
    }

    /// This index's metrics, labelled with its name, into `m`.
    pub fn render_metrics(&self, m: &crate::telemetry::Metrics) {
        let s = self.status();
        let l = self.cfg.index.as_str();
        let version = i64::try_from(s.current_version.unwrap_or(0)).unwrap_or(i64::MAX);
        m.set_gauge_for("indexswarm_current_version", "Live version", l, version);
        m.set_counter_for(
            "indexswarm_replications_total",
            "Versions swapped in",
            l,
            s.times_replicated,
        );
        m.set_counter_for(
            "indexswarm_replication_failures_total",
            "Failed cycles",
            l,
            s.times_failed,
        );
        m.set_gauge_for(
            "indexswarm_cycle_downloaded_bytes",
            "Bytes downloaded over the network by the current or last cycle",
            l,
            i64::try_from(s.bytes_downloaded).unwrap_or(i64::MAX),
        );
        m.set_gauge_for(
            "indexswarm_cycle_reused_bytes",
            "Bytes reused from disk by the current or last cycle",
            l,
            i64::try_from(s.bytes_reused).unwrap_or(i64::MAX),
        );
        m.set_counter_for(
            "indexswarm_hash_failures_total",
            "Pieces that failed verification (corrupt or hostile peers)",
            l,
            s.hash_failures,
        );
        let free = crate::util::free_bytes(&self.cfg.data_dir).unwrap_or(0);
        m.set_gauge_for(
            "indexswarm_free_disk_bytes",
            "Free bytes on the data directory's filesystem",
            l,
            i64::try_from(free).unwrap_or(i64::MAX),
        );
        m.set_gauge_for(
            "indexswarm_ready",
            "1 when /readyz answers 200 for this index",
            l,
            i64::from(self.readiness().is_ok()),
        );
        m.set_gauge_for(
            "indexswarm_staged_version",
            "Version downloaded and waiting for activation (0: none)",
            l,
            i64::try_from(s.staged_version.unwrap_or(0)).unwrap_or(i64::MAX),
        );
        m.set_gauge_for(
            "indexswarm_paused",
            "1 while replication is paused (POST /pause)",
            l,
            i64::from(s.paused),
        );
        m.set_counter_for(
            "indexswarm_uploaded_bytes_total",
            "Payload bytes uploaded to peers",
            l,
            s.bytes_uploaded,
        );
        m.set_gauge_for("indexswarm_peers", "Connected peers", l, s.peers as i64);
    }
}

fn load_torrent(p: &std::path::Path) -> Option<Metainfo> {
    Metainfo::from_bytes(&std::fs::read(p).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_replica_on_the_same_data_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let cfg = crate::config::RawReplica {
            master_url: Some("http://127.0.0.1:1".into()),
            data_dir: Some(d.path().join("data")),
            http_listen: Some("127.0.0.1:0".into()),
            peer_listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let _first = ReplicaSet::start(cfg.clone()).await.unwrap();
        match ReplicaSet::start(cfg).await {
            Err(ReplicaError::Locked(crate::util::LockError::Busy { pid, what, dir })) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(what, "data directory");
                assert_eq!(dir, d.path().join("data").canonicalize().unwrap());
            }
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a second replica started on the same data directory"),
        }
    }
}
