//! The rollout of an index, wired to the rest of the master: reports in,
//! decisions out, state saved, replicas woken.
//!
//! [`Rollout`](super::rollout::Rollout) decides; this file feeds it the
//! fleet's reports and the published versions (`drive`), saves it to
//! `rollout.json` after every change (atomic write), and bumps the index's
//! generation, which answers every long poll waiting on it
//! (`GET /rollout?generation=G&wait=S`, `GET /versions/latest?after=N&wait=S`).
//! That is how an activation reaches every staged replica within
//! milliseconds: they are all parked on the same generation.

use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::index::Index;
use super::registry::VersionState;
use super::rollout::Rollout;
use super::VersionInfo;
use crate::api::{RolloutView, VersionRef};
use crate::util::{now_unix_ms, rfc3339_at_ms, write_atomic};

/// Longest long poll a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Why an operator's lever was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("version {0} is not published (only listed versions can be activated)")]
    NotPublished(u64),
}

/// `rollout.json` in `state_dir`: the saved rollout, or a fresh one (a
/// corrupt file is reported and replaced: the fleet's reports rebuild what
/// matters within an interval).
pub(super) fn load(state_dir: &Path) -> Option<Rollout> {
    let path = state_dir.join("rollout.json");
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(
                "{} is corrupt ({e}); starting the rollout afresh",
                path.display()
            );
            None
        }
    }
}

impl Index {
    fn save_rollout(&self, r: &Rollout) {
        let path = self.cfg.state_dir.join("rollout.json");
        let bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
        if let Err(e) = write_atomic(&path, &bytes) {
            warn!("cannot save {}: {e}", path.display());
        }
    }

    /// Wakes every long poll of this index.
    pub(super) fn bump_generation(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Waits until the generation differs from `seen` or `wait` passes.
    pub async fn wait_change(&self, seen: u64, wait: Duration) {
        let mut rx = self.generation.subscribe();
        let changed = async {
            while *rx.borrow_and_update() == seen {
                if rx.changed().await.is_err() {
                    // The index is gone: nothing will change; wait out the timeout.
                    std::future::pending::<()>().await;
                }
            }
        };
        let _ = tokio::time::timeout(wait.min(MAX_WAIT), changed).await;
    }

    /// Applies `f` to the rollout; saves and wakes the long polls if it says
    /// something changed.
    fn change_rollout(&self, f: impl FnOnce(&mut Rollout) -> bool) -> bool {
        let mut r = self.rollout.lock();
        let before = r.clone();
        if !f(&mut r) || *r == before {
            return false;
        }
        self.save_rollout(&r);
        let (phase, version, active) = (r.shown_phase(), r.version, r.active);
        drop(r);
        info!(?phase, ?version, ?active, "rollout");
        self.bump_generation();
        true
    }

    /// After a restart (or the first start): a rollout for the newest
    /// published version if none was saved, so the fleet has an active one.
    pub(super) fn init_rollout(&self) {
        let latest = self.latest_version();
        self.change_rollout(|r| match latest {
            Some(l) if r.active.is_none() && r.version.is_none() => {
                // Replicas of a master from before rollouts run its newest.
                r.pin(l, now_unix_ms());
                r.pinned = false;
                true
            }
            _ => false,
        });
    }

    /// A version was just published.
    pub(super) fn rollout_published(&self, version: u64) {
        let settings = self.cfg.rollout.clone();
        self.change_rollout(|r| r.on_published(version, &settings, now_unix_ms()));
    }

    /// One look at the fleet: forgets unlisted versions, moves the rollout on.
    pub fn drive_rollout(&self) -> bool {
        let now = now_unix_ms();
        let published = self.registry.lock().published();
        let listed: Vec<u64> = published.iter().map(|r| r.version).collect();
        let members = {
            let hash_of = |v: u64| {
                published
                    .iter()
                    .find(|r| r.version == v)
                    .map(|r| r.info_hash)
            };
            self.shared.fleet.lock().members(&self.name, now, hash_of)
        };
        let settings = self.cfg.rollout.clone();
        self.change_rollout(|r| {
            let forgot = r.forget_unlisted(&listed, listed.first().copied(), now);
            r.step(&members, &settings, now) || forgot
        })
    }

    /// `POST /versions/{n}/activate`: the fleet runs `n`.
    pub fn activate(&self, n: u64) -> Result<VersionInfo, ActivateError> {
        let rec = self
            .registry
            .lock()
            .get(n)
            .filter(|r| r.state == VersionState::Published)
            .cloned()
            .ok_or(ActivateError::NotPublished(n))?;
        info!(version = n, "activated by the operator");
        self.change_rollout(|r| {
            r.pin(n, now_unix_ms());
            true
        });
        Ok(self.version_info(&rec))
    }

    pub fn pause_rollout(&self) {
        self.change_rollout(Rollout::pause);
    }

    pub fn resume_rollout(&self) {
        let latest = self.latest_version();
        let settings = self.cfg.rollout.clone();
        self.change_rollout(|r| r.resume(latest, &settings, now_unix_ms()));
        self.drive_rollout();
    }

    /// The fleet's active version.
    pub fn active_version(&self) -> Option<u64> {
        self.rollout.lock().active
    }

    /// Versions retention must keep: the rollout's and those live replicas
    /// run or staged.
    pub(super) fn protected_versions(&self) -> Vec<u64> {
        let mut v = self.rollout.lock().protected();
        v.extend(self.shared.fleet.lock().in_use(&self.name, now_unix_ms()));
        v
    }

    fn version_ref(&self, v: Option<u64>) -> Option<VersionRef> {
        let reg = self.registry.lock();
        let rec = reg.get(v?)?;
        (rec.state == VersionState::Published).then(|| {
            let info = self.version_info(rec);
            VersionRef {
                version: info.version,
                info_hash: info.info_hash,
                torrent_url: info.torrent_url,
                epoch: Some(info.epoch),
            }
        })
    }

    /// `GET /rollout` (with `id`: what that replica should stage and run).
    pub fn rollout_view(&self, id: Option<&str>) -> RolloutView {
        let now = now_unix_ms();
        let r = self.rollout.lock().clone();
        let published = self.registry.lock().published();
        let members = {
            let hash_of = |v: u64| {
                published
                    .iter()
                    .find(|p| p.version == v)
                    .map(|p| p.info_hash)
            };
            self.shared.fleet.lock().members(&self.name, now, hash_of)
        };
        let standing = r.standing(&members);
        let at = |t: Option<u64>| t.map(rfc3339_at_ms);
        let (target, stage) = match id {
            Some(id) => (
                self.version_ref(r.target_for(id, &self.cfg.rollout)),
                self.version_ref(r.stage_for()),
            ),
            None => (None, None),
        };
        RolloutView {
            index: self.name.clone(),
            policy: self.cfg.rollout.policy,
            generation: self.generation(),
            version: r.version,
            phase: r.shown_phase(),
            active_version: r.active,
            latest_version: published.first().map(|p| p.version),
            paused: r.paused,
            pinned: r.pinned,
            ready: standing.ready,
            active: standing.active,
            laggards: standing.laggards,
            started_at: at(r.started_at),
            canary_at: at(r.canary_at),
            activated_at: at(r.activated_at),
            done_at: at(r.done_at),
            swap_skew_seconds: r.swap_skew_ms.map(|ms| ms as f64 / 1000.0),
            note: r.note.clone(),
            target,
            stage,
        }
    }
}
