//! One replication cycle: ask the master, decide (`plan.rs`), fetch the
//! torrent, stage the version (`stage.rs`), then install it: swap, record
//! the epoch, run the hook, seed, apply retention.
//!
//! Replies from the master are bounded in size, and their version numbers
//! are only compared, never computed with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::error::{io_at, CycleError};
use super::layout;
use super::plan::{self, Behind, First, RemoteVersion};
use super::status::State;
use super::swapper;
use super::{Live, Outcome, Replica};
use crate::config::SwapMode;
use crate::metainfo::Metainfo;
use crate::util::fs::write_atomic_traced;
use crate::util::{crash, now_rfc3339};

/// Largest JSON reply accepted from the master (a version list of a few
/// hundred entries is a few hundred KiB).
const MAX_REPLY: usize = 4 << 20;

impl Replica {
    /// GETs `url` as JSON: `None` on 404.
    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<Option<T>, CycleError> {
        self.get_json_within(url, Duration::from_secs(20)).await
    }

    /// GETs `url` as JSON within `limit` (a long poll needs longer): `None` on 404.
    pub(super) async fn get_json_within<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        limit: Duration,
    ) -> Result<Option<T>, CycleError> {
        let mut get = self.http.get(url).timeout(limit);
        if let Some(t) = &self.cfg.security.swarm_token {
            get = get.bearer_auth(t);
        }
        let mut r = get
            .send()
            .await
            .map_err(|e| CycleError::Unreachable(crate::util::error_chain(&e)))?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(CycleError::Http {
                url: url.to_string(),
                status: r.status().as_u16(),
            });
        }
        let malformed = |message: String| CycleError::Malformed {
            url: url.to_string(),
            message,
        };
        let body = crate::source::read_capped(&mut r, MAX_REPLY)
            .await
            .map_err(|e| malformed(e.to_string()))?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| malformed(e.to_string()))
    }

    /// The master's published versions.
    pub(super) async fn list(&self) -> Result<Vec<RemoteVersion>, CycleError> {
        Ok(self
            .get_json(&self.api("/versions"))
            .await?
            .unwrap_or_default())
    }

    /// One poll, and a replication if the master has something to follow:
    /// the rollout's long poll (`follow.rs`), or `/versions/latest` from a
    /// master without rollouts. `wait` is how long the master may hold the
    /// long poll.
    pub(super) async fn cycle(self: &Arc<Self>, wait: Duration) -> Result<Outcome, CycleError> {
        match self.fetch_view(wait).await? {
            Some(view) => self.follow_view(view).await,
            None => self.legacy_cycle().await,
        }
    }

    /// A master without `/rollout`: poll `/versions/latest`.
    async fn legacy_cycle(self: &Arc<Self>) -> Result<Outcome, CycleError> {
        let latest: Option<RemoteVersion> = self.get_json(&self.api("/versions/latest")).await?;
        self.clear_error();
        if let Some(l) = &latest {
            self.status.lock().active_version = Some(l.version);
        }
        match latest {
            Some(l) => self.follow_latest(l).await,
            None => Ok(Outcome::UpToDate),
        }
    }

    /// A new cycle starts clean: the last cycle's error goes (a standing
    /// warning stays).
    pub(super) fn clear_error(&self) {
        let warning = self.swap_warning.lock().clone();
        let mut st = self.status.lock();
        if st.state == State::Error {
            st.state = State::Idle;
        }
        st.last_error = warning;
    }

    /// Follows the master's newest version, as `plan.rs` decides.
    pub(super) async fn follow_latest(
        self: &Arc<Self>,
        latest: RemoteVersion,
    ) -> Result<Outcome, CycleError> {
        let url = self.api("/versions/latest");
        latest
            .check()
            .map_err(|message| CycleError::Malformed { url, message })?;
        let live = self.live.lock().as_ref().map(Live::id);
        let epoch = self.epoch.lock().clone();
        match plan::first(live.as_ref(), epoch.as_deref(), &latest) {
            First::UpToDate => {
                // The same bytes under the same number in a new epoch.
                if let Err(e) = self.remember_epoch(latest.epoch.as_deref(), false) {
                    warn!("cannot record the master's epoch: {e}");
                }
                return Ok(Outcome::UpToDate);
            }
            First::Follow => {}
            First::Behind => {
                let list = self.list().await?;
                let Some(live) = live else {
                    return Ok(Outcome::UpToDate);
                };
                match plan::behind(&live, &latest, &list) {
                    Behind::Stay(message) => {
                        info!("{message}");
                        return Ok(Outcome::Behind(message));
                    }
                    Behind::Follow(message) => {
                        warn!("{message}");
                        self.status.lock().last_error = Some(message);
                    }
                }
            }
        }
        let (meta, bytes) = self.fetch_torrent(&latest).await?;
        self.replicate(&latest, Arc::new(meta), bytes).await?;
        Ok(Outcome::Replicated)
    }

    pub(super) async fn fetch_torrent(
        &self,
        v: &RemoteVersion,
    ) -> Result<(Metainfo, Vec<u8>), CycleError> {
        self.on_masters_origin(v)?;
        let torrent_err = |message: String| CycleError::Torrent {
            version: v.version,
            message,
        };
        let token = self.cfg.security.swarm_token.as_deref();
        let bytes = crate::source::fetch_bytes(&self.http, &v.torrent_url, token)
            .await
            .map_err(|e| torrent_err(e.to_string()))?;
        let meta = Metainfo::from_bytes(&bytes).map_err(|e| torrent_err(e.to_string()))?;
        if meta.info_hash != v.info_hash {
            return Err(CycleError::WrongTorrent {
                version: v.version,
                expected: v.info_hash,
            });
        }
        Ok((meta, bytes))
    }

    /// Refuses a `torrent_url` off the origin (scheme, host, port) of
    /// `master_url`: a master's answer must not send the replica anywhere
    /// else (redirects are held to their origin by the HTTP client).
    fn on_masters_origin(&self, v: &RemoteVersion) -> Result<(), CycleError> {
        let origin = |u: &str| reqwest::Url::parse(u).map(|u| u.origin());
        let master = origin(&self.cfg.master_url);
        match (&master, origin(&v.torrent_url)) {
            (Ok(m), Ok(t)) if *m == t && t.is_tuple() => Ok(()),
            _ => Err(CycleError::OffOrigin {
                version: v.version,
                url: v.torrent_url.chars().take(200).collect(),
                origin: master
                    .map_or_else(|_| self.cfg.master_url.clone(), |m| m.ascii_serialization()),
            }),
        }
    }

    /// Records `epoch` (if the master has one) in `DATA/master-epoch`;
    /// `always` rewrites it even if unchanged (every swap does, so the file
    /// always goes with the live version).
    pub(super) fn remember_epoch(&self, epoch: Option<&str>, always: bool) -> std::io::Result<()> {
        let Some(e) = epoch else { return Ok(()) };
        if !always && self.epoch.lock().as_deref() == Some(e) {
            return Ok(());
        }
        layout::write_epoch(&self.cfg.data_dir, e)?;
        *self.epoch.lock() = Some(e.to_string());
        Ok(())
    }

    /// `/status` at the start of staging `target`.
    pub(super) fn begin_cycle(&self, target: &RemoteVersion, meta: &Metainfo) {
        let mut st = self.status.lock();
        st.state = State::Verifying;
        st.target_version = Some(target.version);
        st.bytes_total = meta.data_length();
        st.bytes_downloaded = 0;
        st.bytes_reused = 0;
        st.bytes_wasted = 0;
        st.progress = 0.0;
    }

    pub(super) async fn replicate(
        self: &Arc<Self>,
        target: &RemoteVersion,
        meta: Arc<Metainfo>,
        torrent: Vec<u8>,
    ) -> Result<(), CycleError> {
        let started = Instant::now();
        self.begin_cycle(target, &meta);
        info!(version = target.version, info_hash = %meta.info_hash, bytes = meta.data_length(), "replicating");
        let slot = self.stage(target, meta.clone(), &torrent).await?;
        self.install(target, &slot, meta, started).await
    }

    /// Swaps the finalized `slot` in, then hook, seeding and retention.
    async fn install(
        self: &Arc<Self>,
        target: &RemoteVersion,
        slot: &str,
        meta: Arc<Metainfo>,
        started: Instant,
    ) -> Result<(), CycleError> {
        let data = &self.cfg.data_dir;
        let dir = layout::slot_paths(data, slot).dir;
        self.status.lock().state = State::Swapping;
        let (path, reload_error) = match &self.cfg.mode {
            SwapMode::Symlink => (swapper::swap_symlink(data, slot)?, None),
            SwapMode::Solr(s) => {
                let r = swapper::swap_solr(s, &dir, &self.http).await?;
                (r.index_dir, r.reload_error)
            }
        };
        // The swap is done: from here on /status describes the new version.
        let new_live = Live {
            version: target.version,
            slot: slot.to_string(),
            meta,
            dir,
            path,
        };
        let old = self.live.lock().replace(new_live.clone());
        self.unstage(&new_live);
        info!(version = target.version, slot, path = %new_live.path.display(), secs = format!("{:.2}", started.elapsed().as_secs_f64()), "swapped");
        {
            let mut st = self.status.lock();
            st.times_replicated += 1;
            st.last_swap_at = Some(now_rfc3339());
            st.current_version = Some(new_live.version);
            st.current_info_hash = Some(new_live.meta.info_hash.hex());
            st.current_path = Some(new_live.path.display().to_string());
            st.target_version = None;
            st.progress = 1.0;
        }
        let mut warnings: Vec<String> = reload_error.into_iter().collect();
        warnings.extend(self.after_swap(target, &new_live).await);
        for w in &warnings {
            warn!("{w}");
        }
        let warning = (!warnings.is_empty()).then(|| warnings.join("; "));
        *self.swap_warning.lock() = warning.clone();
        self.status.lock().last_error = warning;
        self.check_health().await;
        self.hand_over_seeding(old, &new_live).await;
        self.apply_retention().await;
        Ok(())
    }

    /// What follows a swap and cannot undo it: the `live-version` hint
    /// (Solr mode), the master's epoch, the `on_swap` hook. Returns what
    /// went wrong, for `/status`.
    async fn after_swap(&self, target: &RemoteVersion, live: &Live) -> Vec<String> {
        let mut warnings = Vec::new();
        if let SwapMode::Solr(_) = &self.cfg.mode {
            // Only a hint for recovery (which identifies the index by inode).
            let p = self.cfg.data_dir.join(layout::LIVE_VERSION_FILE);
            let r = write_atomic_traced(&p, live.slot.as_bytes(), Some("live_version"));
            if let Err(e) = r.map_err(io_at(&p)) {
                warnings.push(e.to_string());
            }
        }
        if let Err(e) = self.remember_epoch(target.epoch.as_deref(), true) {
            warnings.push(format!("cannot record the master's epoch: {e}"));
        }
        if let Some(hook) = &self.cfg.on_swap {
            crash::point("hook_start");
            let hash = live.meta.info_hash.hex();
            let r = swapper::run_hook(hook, &self.http, live.version, &live.path, &hash).await;
            crash::point("hook_end");
            if let Err(e) = r {
                warnings.push(e.to_string());
            }
        }
        warnings
    }

    /// Keeps serving: the new version for as long as it is live, the old one
    /// for `seed_old` more (replicas behind us may still need it). The same
    /// bytes under a new number are seeded from their new directory.
    async fn hand_over_seeding(&self, old: Option<Live>, new: &Live) {
        let hash = new.meta.info_hash;
        if old.as_ref().is_some_and(|o| o.meta.info_hash == hash) {
            self.stop_seeding(|s| s.info_hash == hash).await;
        }
        self.start_seeding(new, None);
        crash::point("seeding_started");
        let Some(o) = old.filter(|o| o.meta.info_hash != hash) else {
            return;
        };
        // A setting too large to add means "for as long as we run".
        let until = Instant::now()
            .checked_add(self.cfg.seed_old)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(10 * 365 * 86400));
        for s in self
            .seeding
            .lock()
            .iter_mut()
            .filter(|s| s.info_hash == o.meta.info_hash)
        {
            s.until = Some(until);
        }
    }
}
