//! Telling the master where this replica stands (`POST /replicas/report`),
//! checking its own health, and answering `/readyz`.
//!
//! A report goes out as soon as something the rollout looks at changes
//! (state, live or staged version, pause, health, error; checked every
//! 100 ms, which costs a lock and a comparison) and at least once per poll
//! interval, so the master can tell a silent replica (stale after three
//! intervals) from a quiet one. A master that does not know the route (an
//! older release) gets one report per interval, not one per change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Replica;
use crate::api::Report;

/// How often the reporter looks for a change.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// Longest a report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// What makes a new report worth sending at once.
type Signature = (String, Option<u64>, Option<u64>, bool, bool, Option<String>);

/// Why `/readyz` says 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    NoLiveVersion,
    Lagging {
        live: u64,
        active: u64,
        max_lag: u64,
    },
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::NoLiveVersion => f.write_str("no version is live"),
            NotReady::Lagging {
                live,
                active,
                max_lag,
            } => write!(
                f,
                "version {live} is live, {} behind the master's active version {active} \
                 (max_lag_versions = {max_lag})",
                active - live
            ),
        }
    }
}

impl Replica {
    /// The report for the master, from `/status` and what is on disk.
    pub(super) fn report(&self) -> Report {
        let st = self.status();
        let live = self
            .live
            .lock()
            .as_ref()
            .map(|l| (l.version, l.meta.info_hash));
        let staged = self
            .staged
            .lock()
            .as_ref()
            .map(|s| (s.version.version, s.meta.info_hash));
        Report {
            id: self.cfg.fleet.id.clone(),
            zone: self.cfg.fleet.zone.clone(),
            index: self.cfg.index.clone(),
            address: Some(self.cfg.http_listen.to_string()),
            live_version: live.map(|l| l.0),
            live_info_hash: live.map(|l| l.1),
            staged_version: staged.map(|s| s.0),
            staged_info_hash: staged.map(|s| s.1),
            state: st.state.as_str().to_string(),
            progress: st.progress,
            bytes_total: st.bytes_total,
            bytes_downloaded: st.bytes_downloaded,
            download_rate: st.download_rate,
            upload_rate: st.upload_rate,
            bytes_uploaded: st.bytes_uploaded,
            peers: st.peers as u64,
            last_error: st.last_error.clone(),
            free_disk: crate::util::free_bytes(&self.cfg.data_dir),
            paused: st.paused,
            healthy: st.healthy,
            last_swap_at: st.last_swap_at.clone(),
            interval_secs: Some(self.cfg.poll_interval.as_secs().max(1)),
            epoch: self.epoch.lock().clone(),
        }
    }

    fn signature(r: &Report) -> Signature {
        (
            r.state.clone(),
            r.live_version,
            r.staged_version,
            r.paused,
            r.healthy,
            r.last_error.clone(),
        )
    }

    /// Sends one report; `Ok(false)` when the master does not take reports.
    /// The answer's `active_version` keeps `/readyz` honest while paused.
    async fn send_report(&self, r: &Report) -> Result<bool, reqwest::Error> {
        #[derive(serde::Deserialize)]
        struct Answer {
            active_version: Option<u64>,
        }
        let url = format!("{}/replicas/report", self.cfg.master_url);
        let mut post = self.http.post(url).json(r).timeout(REPORT_TIMEOUT);
        if let Some(t) = &self.cfg.security.swarm_token {
            post = post.bearer_auth(t);
        }
        let resp = post.send().await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        // A short answer; anything longer is not read past 4 KiB.
        let mut resp = resp;
        let body = match crate::source::read_capped(&mut resp, 4096).await {
            Ok(body) => body,
            Err(crate::source::BodyError::TooLarge { .. }) => return Ok(true),
            Err(crate::source::BodyError::Http(e)) => return Err(e),
        };
        if let Ok(Answer {
            active_version: Some(a),
        }) = serde_json::from_slice::<Answer>(&body)
        {
            self.status.lock().active_version = Some(a);
        }
        Ok(true)
    }

    /// Reports until `shutdown`, and runs the health check every interval.
    pub async fn run_reporter(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.cfg.poll_interval.max(Duration::from_secs(1));
        let mut last: Option<(Signature, Instant)> = None;
        let mut health_at = Instant::now();
        let mut supported = true;
        let mut warned = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
            if health_at.elapsed() >= interval {
                health_at = Instant::now();
                self.check_health().await;
            }
            let r = self.report();
            let sig = Self::signature(&r);
            let due = match &last {
                None => true,
                Some((_, at)) if at.elapsed() >= interval => true,
                Some((s, _)) => supported && *s != sig,
            };
            if !due {
                continue;
            }
            last = Some((sig, Instant::now()));
            match self.send_report(&r).await {
                Ok(ok) => supported = ok,
                Err(e) if !warned => {
                    warned = true;
                    warn!(
                        "cannot report to the master: {}",
                        crate::util::error_chain(&e)
                    );
                }
                Err(e) => debug!("cannot report to the master: {e}"),
            }
        }
    }

    /// Runs the `health_check` against the live version; records the result.
    pub(super) async fn check_health(&self) {
        let Some(check) = self.cfg.fleet.health_check.clone() else {
            return;
        };
        let live = self
            .live
            .lock()
            .as_ref()
            .map(|l| (l.version, l.path.clone()));
        let Some((version, path)) = live else { return };
        let result = health_check(&check, &self.http, version, &path).await;
        if let Err(e) = &result {
            warn!(version, "health check failed: {e}");
        }
        let mut st = self.status.lock();
        st.healthy = result.is_ok();
        *self.health_error.lock() = result.err().map(|e| format!("health check failed: {e}"));
    }

    /// `/readyz`: a version is live and at most `max_lag_versions` behind
    /// the master's active one (as last heard; a master that cannot be
    /// reached does not take a serving replica out of its load balancer).
    pub fn readiness(&self) -> Result<u64, NotReady> {
        let live = self
            .live
            .lock()
            .as_ref()
            .map(|l| l.version)
            .ok_or(NotReady::NoLiveVersion)?;
        let active = self.status.lock().active_version;
        let max_lag = self.cfg.fleet.max_lag_versions;
        match active {
            Some(a) if a.saturating_sub(live) > max_lag => Err(NotReady::Lagging {
                live,
                active: a,
                max_lag,
            }),
            _ => Ok(live),
        }
    }
}

/// A command (exit 0) or an http(s) URL (2xx), with the live version's
/// number and path in the command's environment.
async fn health_check(
    check: &str,
    http: &reqwest::Client,
    version: u64,
    path: &std::path::Path,
) -> Result<(), String> {
    if check.starts_with("http://") || check.starts_with("https://") {
        return match http.get(check).timeout(HEALTH_TIMEOUT).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{check}: HTTP {}", r.status().as_u16())),
            Err(e) => Err(format!("{check}: {}", crate::util::error_chain(&e))),
        };
    }
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(check)
        .env("INDEXSWARM_VERSION", version.to_string())
        .env("INDEXSWARM_PATH", path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(HEALTH_TIMEOUT, cmd.status()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("{check:?} exited with {s}")),
        Ok(Err(e)) => Err(format!("{check:?} could not run: {e}")),
        Err(_) => Err(format!("{check:?} took longer than {HEALTH_TIMEOUT:?}")),
    }
}
