//! When a version goes live, and where: the rollout of one index, as a
//! state machine that takes the fleet's reports and the clock and says
//! which version each replica should stage and run.
//!
//! ```text
//!  published ──▶ staging ──every live replica staged──▶ canary ──canary_secs,──▶ activating ──all live──▶ done
//!  (fleet)         │        (or ≥ min_ready of them       │      canaries healthy       ▲
//!                  │         after ready_timeout_secs)     │                            │
//!                  ▼                                       ▼                            │
//!                stuck ───── every replica staged ────────────────────────────────────┘
//!                              canary failed ──▶ rolled_back (canaries back on the previous version)
//!  POST /versions/{n}/activate: pinned to n, activating ──▶ done; POST /rollout/resume unpins
//!  POST /rollout/pause: no transition until resume (phase shows "paused")
//! ```
//!
//! `independent` indexes have no staging: the newest version is active as
//! soon as it is published, and each replica swaps when it has it.
//!
//! This file is pure: no I/O, no clock of its own (`now` is milliseconds
//! since the Unix epoch, given by the caller), so every transition is unit
//! tested. The state is saved by the caller (`rollout.json`) after every
//! change, so a master killed mid-activation resumes where it was and the
//! fleet ends on one version.

use crate::api::{Phase, Policy};
use crate::config::Rollout as Settings;

/// What the rollout knows of one replica of the index (from its reports).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    /// The version it runs, if the master lists it under that info-hash.
    pub live: Option<u64>,
    /// The version it staged, likewise.
    pub staged: Option<u64>,
    /// It reports an error, or its health check fails.
    pub failing: bool,
    /// Silent for three of its intervals.
    pub stale: bool,
    pub paused: bool,
    /// When it last swapped (ms since the epoch).
    pub swapped_at: Option<u64>,
}

/// One index's rollout; saved as `rollout.json` in its state directory.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    /// The version being (or last) rolled out.
    pub version: Option<u64>,
    pub phase: Option<Phase>,
    /// What the fleet runs.
    pub active: Option<u64>,
    /// What it ran before this rollout (where a failed canary goes back).
    pub previous: Option<u64>,
    pub paused: bool,
    pub pinned: bool,
    pub started_at: Option<u64>,
    pub canary_at: Option<u64>,
    pub activated_at: Option<u64>,
    pub done_at: Option<u64>,
    pub swap_skew_ms: Option<u64>,
    pub note: Option<String>,
}

/// Who stands where in the rollout of `version` (for `/rollout`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    pub ready: Vec<String>,
    pub active: Vec<String>,
    pub laggards: Vec<String>,
}

fn elapsed(now: u64, since: Option<u64>) -> u64 {
    since.map_or(0, |s| now.saturating_sub(s))
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Rollout {
    /// The phase `/rollout` shows: `paused` while paused.
    pub fn shown_phase(&self) -> Option<Phase> {
        if self.paused && self.version.is_some() {
            Some(Phase::Paused)
        } else {
            self.phase
        }
    }

    /// Who has the version staged or live, who runs it, who holds it up
    /// (live, unpaused replicas without it).
    pub fn standing(&self, members: &[Member]) -> Standing {
        let Some(v) = self.version else {
            return Standing::default();
        };
        let mut s = Standing::default();
        for m in members.iter().filter(|m| !m.stale) {
            let runs = m.live == Some(v);
            if runs || m.staged == Some(v) {
                s.ready.push(m.id.clone());
            } else {
                s.laggards.push(m.id.clone());
            }
            if runs {
                s.active.push(m.id.clone());
            }
        }
        s
    }

    /// A new version was published. Returns whether anything changed.
    pub fn on_published(&mut self, v: u64, settings: &Settings, now: u64) -> bool {
        if self.pinned || self.version.is_some_and(|cur| cur >= v) {
            return false;
        }
        self.note = None;
        self.version = Some(v);
        self.started_at = Some(now);
        self.canary_at = None;
        self.done_at = None;
        self.swap_skew_ms = None;
        match settings.policy {
            Policy::Independent => {
                self.activate_now(v, now);
                self.phase = Some(Phase::Done);
                self.done_at = Some(now);
            }
            Policy::Fleet => {
                self.activated_at = None;
                self.phase = Some(Phase::Staging);
            }
        }
        true
    }

    fn activate_now(&mut self, v: u64, now: u64) {
        if self.active != Some(v) {
            self.previous = self.active.or(self.previous);
        }
        self.active = Some(v);
        self.activated_at = Some(now);
        self.phase = Some(Phase::Activating);
    }

    /// `POST /versions/{n}/activate`: the fleet runs `n` (newer or older)
    /// until another activation or a resume.
    pub fn pin(&mut self, n: u64, now: u64) {
        self.pinned = true;
        self.paused = false;
        self.version = Some(n);
        self.started_at = Some(now);
        self.canary_at = None;
        self.done_at = None;
        self.swap_skew_ms = None;
        self.note = None;
        self.activate_now(n, now);
    }

    pub fn pause(&mut self) -> bool {
        !std::mem::replace(&mut self.paused, true)
    }

    /// Lifts a pause and a pin; a newer `latest` then starts its rollout.
    pub fn resume(&mut self, latest: Option<u64>, settings: &Settings, now: u64) -> bool {
        let changed = self.paused || self.pinned;
        self.paused = false;
        self.pinned = false;
        match latest {
            Some(l) if self.active.is_none_or(|a| l > a) && self.version != Some(l) => {
                self.on_published(l, settings, now) || changed
            }
            _ => changed,
        }
    }

    /// A version the master no longer lists cannot stay active or be
    /// rolled out: the fleet goes to `fallback` (the newest listed).
    pub fn forget_unlisted(&mut self, listed: &[u64], fallback: Option<u64>, now: u64) -> bool {
        let gone = |v: Option<u64>| v.is_some_and(|v| !listed.contains(&v));
        let mut changed = false;
        if gone(self.previous) {
            self.previous = None;
            changed = true;
        }
        if gone(self.active) || gone(self.version) {
            self.active = None;
            self.pinned = false;
            self.version = None;
            self.phase = None;
            if let Some(f) = fallback {
                self.version = Some(f);
                self.started_at = Some(now);
                self.activate_now(f, now);
            }
            changed = true;
        }
        changed
    }

    /// One look at the fleet: moves the rollout on if it can. Returns
    /// whether anything changed.
    pub fn step(&mut self, members: &[Member], settings: &Settings, now: u64) -> bool {
        if self.paused {
            return false;
        }
        match self.phase {
            Some(Phase::Staging | Phase::Stuck) => self.step_staging(members, settings, now),
            Some(Phase::Canary) => self.step_canary(members, settings, now),
            Some(Phase::Activating) => self.step_activating(members, now),
            _ => false,
        }
    }

    fn step_staging(&mut self, members: &[Member], settings: &Settings, now: u64) -> bool {
        let Some(v) = self.version else { return false };
        let st = self.standing(members);
        let total = st.ready.len() + st.laggards.len();
        if st.laggards.is_empty() {
            return self.after_staging(v, members, settings, now);
        }
        if elapsed(now, self.started_at) < ms(settings.ready_timeout) {
            return false;
        }
        // Ratio of staged replicas; the cast is exact for any fleet size.
        let share = st.ready.len() as f64 / total as f64;
        if !st.ready.is_empty() && share >= settings.min_ready {
            self.note = Some(format!(
                "activated with {} of {} replicas staged after ready_timeout_secs; laggards: {}",
                st.ready.len(),
                total,
                st.laggards.join(", ")
            ));
            return self.after_staging(v, members, settings, now);
        }
        let note = format!(
            "stuck: {} of {} replicas staged version {v} within ready_timeout_secs \
             (min_ready = {}); waiting for {}",
            st.ready.len(),
            total,
            settings.min_ready,
            st.laggards.join(", ")
        );
        let changed = self.phase != Some(Phase::Stuck) || self.note.as_ref() != Some(&note);
        self.phase = Some(Phase::Stuck);
        self.note = Some(note);
        changed
    }

    /// Staged: canaries first if any canary is in the fleet, else everyone.
    fn after_staging(&mut self, v: u64, members: &[Member], settings: &Settings, now: u64) -> bool {
        let has_canary = members
            .iter()
            .any(|m| !m.stale && settings.canary.contains(&m.id));
        if has_canary {
            self.phase = Some(Phase::Canary);
            self.canary_at = Some(now);
        } else {
            self.activate_now(v, now);
        }
        true
    }

    fn step_canary(&mut self, members: &[Member], settings: &Settings, now: u64) -> bool {
        let Some(v) = self.version else { return false };
        let canaries: Vec<&Member> = members
            .iter()
            .filter(|m| !m.stale && settings.canary.contains(&m.id))
            .collect();
        if let Some(bad) = canaries.iter().find(|m| m.failing && m.live == Some(v)) {
            return self.roll_back(format!(
                "canary {} failed on version {v} (error or failed health check)",
                bad.id
            ));
        }
        let waited = elapsed(now, self.canary_at);
        if waited < ms(settings.canary_secs) {
            return false;
        }
        if canaries.iter().all(|m| m.live == Some(v) && !m.failing) {
            self.activate_now(v, now);
            return true;
        }
        if waited >= ms(settings.canary_secs).saturating_add(ms(settings.ready_timeout)) {
            let late: Vec<&str> = canaries
                .iter()
                .filter(|m| m.live != Some(v))
                .map(|m| m.id.as_str())
                .collect();
            return self.roll_back(format!(
                "canaries did not run version {v} in time: {}",
                late.join(", ")
            ));
        }
        false
    }

    fn roll_back(&mut self, why: String) -> bool {
        self.phase = Some(Phase::RolledBack);
        self.note = Some(why);
        true
    }

    fn step_activating(&mut self, members: &[Member], now: u64) -> bool {
        let Some(v) = self.version else { return false };
        let waiting = members
            .iter()
            .any(|m| !m.stale && !m.paused && m.live != Some(v));
        if waiting {
            return false;
        }
        self.phase = Some(Phase::Done);
        self.done_at = Some(now);
        // Skew over the swaps this activation caused.
        let since = self.activated_at.unwrap_or(0).saturating_sub(1000);
        let times: Vec<u64> = members
            .iter()
            .filter(|m| !m.stale && m.live == Some(v))
            .filter_map(|m| m.swapped_at)
            .filter(|&t| t >= since)
            .collect();
        if let (Some(lo), Some(hi)) = (times.iter().min(), times.iter().max()) {
            self.swap_skew_ms = Some(hi - lo);
        }
        true
    }

    /// The version replica `id` should run.
    pub fn target_for(&self, id: &str, settings: &Settings) -> Option<u64> {
        match (self.phase, self.version) {
            (Some(Phase::Canary), Some(v))
                if !self.paused && settings.canary.iter().any(|c| c == id) =>
            {
                Some(v)
            }
            _ => self.active,
        }
    }

    /// The version replica `id` should download and stage, if any.
    pub fn stage_for(&self) -> Option<u64> {
        match self.phase {
            Some(Phase::Staging | Phase::Stuck | Phase::Canary | Phase::Activating) => {
                self.version.filter(|v| Some(*v) != self.active)
            }
            _ => None,
        }
    }

    /// Versions retention must keep: the active one, the one rolled out,
    /// and, while the rollout can still go back, the previous one.
    pub fn protected(&self) -> Vec<u64> {
        let may_go_back = !matches!(self.phase, None | Some(Phase::Done));
        [
            self.active,
            self.version,
            self.previous.filter(|_| may_go_back || self.paused),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fleet(canary: &[&str]) -> Settings {
        Settings {
            policy: Policy::Fleet,
            canary: canary.iter().map(|s| s.to_string()).collect(),
            canary_secs: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(60),
            min_ready: 1.0,
        }
    }

    fn m(id: &str, live: Option<u64>, staged: Option<u64>) -> Member {
        Member {
            id: id.into(),
            live,
            staged,
            failing: false,
            stale: false,
            paused: false,
            swapped_at: None,
        }
    }

    #[test]
    fn independent_versions_are_active_at_once() {
        let s = Settings::default();
        let mut r = Rollout::default();
        assert!(r.on_published(1, &s, 0));
        assert_eq!((r.active, r.phase), (Some(1), Some(Phase::Done)));
        assert_eq!(r.target_for("x", &s), Some(1));
        assert_eq!(r.stage_for(), None);
    }

    #[test]
    fn fleet_activates_only_when_every_live_replica_staged() {
        let s = fleet(&[]);
        let mut r = Rollout::default();
        r.on_published(1, &s, 0);
        let mut ms = vec![m("a", None, Some(1)), m("b", None, None)];
        assert!(!r.step(&ms, &s, 1000));
        assert_eq!(r.target_for("a", &s), None, "nothing active yet");
        assert_eq!(r.stage_for(), Some(1));
        assert_eq!(r.standing(&ms).laggards, ["b"]);
        ms[1].staged = Some(1);
        assert!(r.step(&ms, &s, 2000));
        assert_eq!((r.active, r.phase), (Some(1), Some(Phase::Activating)));
        ms[0].live = Some(1);
        ms[0].swapped_at = Some(2010);
        assert!(!r.step(&ms, &s, 2100), "b has not swapped");
        ms[1].live = Some(1);
        ms[1].swapped_at = Some(2050);
        assert!(r.step(&ms, &s, 2200));
        assert_eq!(r.phase, Some(Phase::Done));
        assert_eq!(r.swap_skew_ms, Some(40));
        // A stale replica does not hold a rollout up.
        r.on_published(2, &s, 3000);
        ms[1].stale = true;
        ms[0].staged = Some(2);
        assert!(r.step(&ms, &s, 3100));
        assert_eq!(r.active, Some(2));
    }

    #[test]
    fn ready_timeout_then_min_ready_decides_and_names_the_laggards() {
        let mut s = fleet(&[]);
        s.min_ready = 0.5;
        let mut r = Rollout::default();
        r.on_published(1, &s, 0);
        let ms = vec![
            m("a", None, Some(1)),
            m("b", None, None),
            m("c", None, None),
        ];
        assert!(!r.step(&ms, &s, 59_000));
        assert!(r.step(&ms, &s, 60_000));
        assert_eq!(r.phase, Some(Phase::Stuck), "1 of 3 < 0.5");
        assert!(r.note.as_ref().unwrap().contains("b, c"), "{:?}", r.note);
        assert_eq!(r.active, None, "stuck activates nothing");
        let ms = vec![
            m("a", None, Some(1)),
            m("b", None, Some(1)),
            m("c", None, None),
        ];
        assert!(r.step(&ms, &s, 61_000));
        assert_eq!(r.active, Some(1), "2 of 3 ≥ 0.5");
        assert!(r.note.as_ref().unwrap().contains("laggards: c"));
    }

    #[test]
    fn canaries_first_then_the_rest_and_a_failing_canary_rolls_back() {
        let s = fleet(&["a"]);
        let mut r = Rollout::default();
        r.on_published(1, &s, 0);
        let mut ms = vec![m("a", None, Some(1)), m("b", None, Some(1))];
        assert!(r.step(&ms, &s, 0));
        assert_eq!(r.phase, Some(Phase::Canary));
        ms[0].live = Some(1);
        assert!(
            r.step(&ms, &s, 10_000),
            "canary_secs over, the canary runs it"
        );
        assert_eq!((r.active, r.phase), (Some(1), Some(Phase::Activating)));
        ms[1].live = Some(1);
        assert!(r.step(&ms, &s, 10_100));
        assert_eq!(r.phase, Some(Phase::Done));

        r.on_published(2, &s, 30_000);
        ms[0].staged = Some(2);
        ms[1].staged = Some(2);
        assert!(r.step(&ms, &s, 30_100));
        assert_eq!(r.phase, Some(Phase::Canary));
        assert_eq!(r.target_for("a", &s), Some(2), "the canary goes first");
        assert_eq!(r.target_for("b", &s), Some(1), "the rest wait");
        ms[0].live = Some(2);
        assert!(!r.step(&ms, &s, 35_000), "canary_secs not over");
        assert!(r.step(&ms, &s, 40_100));
        assert_eq!(r.target_for("b", &s), Some(2));

        // Version 3: the canary fails.
        r.step(&[m("a", Some(2), None), m("b", Some(2), None)], &s, 41_000);
        r.on_published(3, &s, 50_000);
        let mut ms = vec![m("a", Some(2), Some(3)), m("b", Some(2), Some(3))];
        r.step(&ms, &s, 50_100);
        ms[0].live = Some(3);
        ms[0].failing = true;
        assert!(r.step(&ms, &s, 51_000));
        assert_eq!(r.phase, Some(Phase::RolledBack));
        assert_eq!(r.target_for("a", &s), Some(2), "the canary goes back");
        assert_eq!(r.target_for("b", &s), Some(2));
        assert_eq!(r.stage_for(), None);
    }

    #[test]
    fn pins_pause_and_resume() {
        let s = fleet(&[]);
        let mut r = Rollout::default();
        r.pin(1, 0);
        assert_eq!((r.active, r.pinned), (Some(1), true));
        assert!(!r.on_published(2, &s, 10), "pinned: no rollout");
        assert!(r.resume(Some(2), &s, 20));
        assert_eq!((r.version, r.phase), (Some(2), Some(Phase::Staging)));
        assert!(r.pause());
        assert_eq!(r.shown_phase(), Some(Phase::Paused));
        assert!(!r.step(&[m("a", None, Some(2))], &s, 30), "paused");
        r.resume(Some(2), &s, 40);
        assert!(r.step(&[m("a", None, Some(2))], &s, 50));
        assert_eq!(r.active, Some(2));
        // Rolling back: pin an older version.
        r.pin(1, 60);
        assert_eq!((r.active, r.previous), (Some(1), Some(2)));
        assert_eq!(r.protected(), vec![1, 1, 2]);
    }

    #[test]
    fn an_unlisted_version_is_never_the_target() {
        let s = fleet(&[]);
        let mut r = Rollout::default();
        r.pin(3, 0);
        assert!(r.forget_unlisted(&[4, 5], Some(5), 10));
        assert_eq!((r.active, r.pinned), (Some(5), false));
        assert_eq!(r.target_for("a", &s), Some(5));
    }
}
