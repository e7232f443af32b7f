//! Following the master's rollout: the long poll on `GET /rollout`, and
//! what a replica does with the answer.
//!
//! The view says, for this replica's id, which version to run (`target`)
//! and which to download and stage (`stage`):
//!
//! | view | the replica |
//! |---|---|
//! | `target` ≠ live | swaps to it: at once if it is staged or on disk (no bytes move), else downloads it first |
//! | `stage` ≠ live, not staged | downloads, verifies, finalizes it, reports `staged`, does not swap |
//! | neither | nothing; the next long poll waits for the master's next change |
//!
//! An `independent` index without a pin is followed as before (the
//! master's newest, through `plan.rs`, which refuses to go back to an
//! older number by accident); a `fleet` index or a pin is obeyed by
//! info-hash, older or newer, since an operator asked for it.
//!
//! A master without `/rollout` (an older release) answers 404: the replica
//! then polls `/versions/latest` every interval as it always did.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::error::CycleError;
use super::plan::RemoteVersion;
use super::status::State;
use super::{Live, Outcome, Replica};
use crate::api::{Policy, RolloutView};
use crate::metainfo::Metainfo;

/// A version downloaded, verified and finalized, not yet live.
#[derive(Clone)]
pub(super) struct Staged {
    pub version: RemoteVersion,
    pub slot: String,
    pub meta: Arc<Metainfo>,
}

impl Replica {
    /// `GET /rollout` for this replica: at once, or (long poll) once the
    /// master's generation moves past the one last seen, at most `wait`.
    /// `None` from a master without rollouts. A `POST /poll` cuts the wait
    /// (at most once per `poll::POLL_GAP`).
    pub(super) async fn fetch_view(
        &self,
        wait: Duration,
    ) -> Result<Option<RolloutView>, CycleError> {
        let seen = *self.generation.lock();
        let url = |wait: Duration| {
            // The id is a plain name (config checks it): nothing to escape.
            let mut u = format!("{}?id={}", self.api("/rollout"), self.cfg.fleet.id);
            if let (Some(g), false) = (seen, wait.is_zero()) {
                u.push_str(&format!("&generation={g}&wait={}", wait.as_secs()));
            }
            u
        };
        let patience = wait + Duration::from_secs(20);
        let first = url(wait);
        // The cut long poll is dropped (its connection closed) before the
        // short one goes out: one request in flight at a time.
        let answered = tokio::select! {
            v = self.get_json_within::<RolloutView>(&first, patience) => Some(v?),
            _ = self.asked_to_poll() => None,
        };
        let view = match answered {
            Some(view) => view,
            None => {
                self.get_json_within::<RolloutView>(&url(Duration::ZERO), patience)
                    .await?
            }
        };
        // A master without rollouts (say, downgraded) has no generation:
        // the loop then polls every interval instead of long-polling a
        // route that answers 404 at once, over and over.
        *self.generation.lock() = view.as_ref().map(|v| v.generation);
        if let Some(v) = &view {
            self.status.lock().active_version = v.active_version;
        }
        *self.view.lock() = view.clone();
        Ok(view)
    }

    /// Acts on the view: swap to the target, or stage what is rolled out.
    pub(super) async fn follow_view(
        self: &Arc<Self>,
        view: RolloutView,
    ) -> Result<Outcome, CycleError> {
        self.clear_error();
        if let Some(t) = view.target.clone() {
            t.check().map_err(|message| CycleError::Malformed {
                url: self.api("/rollout"),
                message,
            })?;
            let obey = view.policy == Policy::Fleet || view.pinned;
            if !obey {
                return self.follow_latest(t).await;
            }
            if !self.runs(&t) {
                info!(version = t.version, "the master's target; swapping to it");
                let (meta, bytes) = self.fetch_torrent(&t).await?;
                self.replicate(&t, Arc::new(meta), bytes).await?;
                return Ok(Outcome::Replicated);
            }
            self.adopt_epoch(&t);
        }
        if let Some(s) = view.stage.clone() {
            if !self.runs(&s) && !self.has_staged(&s) {
                let (meta, bytes) = self.fetch_torrent(&s).await?;
                self.stage_only(&s, Arc::new(meta), &bytes).await?;
                return Ok(Outcome::Staged);
            }
        }
        Ok(Outcome::UpToDate)
    }

    /// Is `v` (number and bytes) what this replica runs?
    fn runs(&self, v: &RemoteVersion) -> bool {
        self.live
            .lock()
            .as_ref()
            .is_some_and(|l| l.version == v.version && l.meta.info_hash == v.info_hash)
    }

    fn has_staged(&self, v: &RemoteVersion) -> bool {
        self.staged
            .lock()
            .as_ref()
            .is_some_and(|s| s.version.info_hash == v.info_hash && s.version.version == v.version)
    }

    /// The same bytes and number under the master's epoch: remember it.
    fn adopt_epoch(&self, v: &RemoteVersion) {
        if let Err(e) = self.remember_epoch(v.epoch.as_deref(), false) {
            tracing::warn!("cannot record the master's epoch: {e}");
        }
    }

    /// Downloads, verifies and finalizes `v` without swapping to it.
    async fn stage_only(
        self: &Arc<Self>,
        v: &RemoteVersion,
        meta: Arc<Metainfo>,
        torrent: &[u8],
    ) -> Result<(), CycleError> {
        self.begin_cycle(v, &meta);
        info!(version = v.version, info_hash = %meta.info_hash, "staging (fleet rollout)");
        let slot = self.stage(v, meta.clone(), torrent).await?;
        *self.staged.lock() = Some(Staged {
            version: v.clone(),
            slot,
            meta,
        });
        let mut st = self.status.lock();
        st.state = State::Staged;
        st.staged_version = Some(v.version);
        st.staged_at = Some(crate::util::now_rfc3339());
        st.progress = 1.0;
        st.download_rate = 0;
        info!(
            version = v.version,
            "staged; waiting for the master to activate it"
        );
        Ok(())
    }

    /// After a swap: a staged version that is now live is no longer staged.
    pub(super) fn unstage(&self, live: &Live) {
        let mut staged = self.staged.lock();
        if staged
            .as_ref()
            .is_some_and(|s| s.meta.info_hash == live.meta.info_hash)
        {
            *staged = None;
        }
        self.status.lock().staged_version = staged.as_ref().map(|s| s.version.version);
    }

    /// The slot of the staged version (retention keeps it).
    pub(super) fn staged_slot(&self) -> Option<String> {
        self.staged.lock().as_ref().map(|s| s.slot.clone())
    }
}
