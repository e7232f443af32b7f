//! The session's clock, once a second: rates and pipeline depths, snubbed
//! peers, a rechoke every ten seconds, and the stall check with its
//! recovery (re-announce, redial, lift expired bans).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::progress::SessionState;
use super::state::{AddrState, SwarmState, MAX_DEPTH, MIN_DEPTH};
use super::Session;
use crate::metainfo::BLOCK_SIZE;
use crate::peer::codec::{BlockRef, Message};
use crate::peer::connection::Outgoing;
use crate::swarm::choker::{self, Candidate};
use crate::swarm::picker::PeerKey;
use crate::swarm::stall::{diagnose, StallFacts};

/// Keep this many seconds' worth of the peer's rate in flight.
const QUEUE_SECS: f64 = 0.5;
/// A peer that owes us blocks and sends none for this long is snubbed.
const SNUB_AFTER: Duration = Duration::from_secs(30);
const RECHOKE_EVERY: u64 = 10;
const OPTIMISTIC_EVERY: u64 = 30;

fn per_sec(delta: u64, secs: f64) -> u64 {
    (delta as f64 / secs) as u64
}

impl SwarmState {
    /// Rates, adaptive pipeline depths; returns the peers to snub.
    fn measure(&mut self, uploaded: u64, secs: f64, now: Instant) -> Vec<PeerKey> {
        self.download_rate = per_sec(self.downloaded.saturating_sub(self.prev_down), secs);
        self.upload_rate = per_sec(uploaded.saturating_sub(self.prev_up), secs);
        self.prev_down = self.downloaded;
        self.prev_up = uploaded;
        let mut snubbed = Vec::new();
        for (k, p) in self.peers.iter_mut() {
            p.down_rate = per_sec(p.down_total.saturating_sub(p.down_prev), secs);
            p.down_prev = p.down_total;
            let u = p.writer.uploaded.load(Ordering::Relaxed);
            p.up_rate = per_sec(u.saturating_sub(p.up_prev), secs);
            p.up_prev = u;
            if p.down_rate > 0 {
                let want = (p.down_rate as f64 * QUEUE_SECS / BLOCK_SIZE as f64) as usize;
                p.depth = want.clamp(MIN_DEPTH, MAX_DEPTH);
            }
            if !p.inflight.is_empty() && now.saturating_duration_since(p.last_block) > SNUB_AFTER {
                snubbed.push(*k);
            }
        }
        snubbed
    }

    /// A snubbed peer's requests go back to the pool; it gets one at a time.
    fn snub(&mut self, key: PeerKey, now: Instant) {
        let SwarmState { picker, peers, .. } = self;
        let (Some(p), Some(picker)) = (peers.get_mut(&key), picker.as_mut()) else {
            return;
        };
        debug!(peer = %p.addr, "snubbed: no data for {}s", SNUB_AFTER.as_secs());
        let blocks: Vec<BlockRef> = p.inflight.drain().collect();
        for b in &blocks {
            picker.release(key, b);
        }
        p.send(Outgoing::Cancels(blocks));
        p.depth = 1;
        p.last_block = now;
    }

    pub fn rechoke(&mut self, rotate: bool) {
        let seeding = self.picker.as_ref().is_some_and(|p| p.is_complete());
        let cands: Vec<Candidate> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.leaving)
            .map(|(k, p)| Candidate {
                key: *k,
                interested: p.peer_interested,
                rate: if seeding { p.up_rate } else { p.down_rate },
            })
            .collect();
        let (unchoke, opt) = choker::choose(&cands, self.upload_slots, self.optimistic, rotate);
        self.optimistic = opt;
        for (k, p) in self.peers.iter_mut() {
            let want_unchoked = unchoke.contains(k);
            if want_unchoked && p.am_choking {
                p.am_choking = false;
                p.send(Outgoing::Msg(Message::Unchoke));
            } else if !want_unchoked && !p.am_choking {
                p.am_choking = true;
                p.send(Outgoing::Choke { reject: p.fast });
            }
        }
    }

    fn stall_facts(&self, now: Instant, tracker_error: Option<String>) -> StallFacts {
        let live = || self.peers.values().filter(|p| !p.leaving);
        StallFacts {
            idle: now.saturating_duration_since(self.last_progress),
            peers: live().count(),
            useful_peers: live().filter(|p| p.interesting > 0).count(),
            unchoked_by: live()
                .filter(|p| p.interesting > 0 && !p.peer_choking)
                .count(),
            known: self
                .known
                .values()
                .filter(|k| k.state != AddrState::Ourselves)
                .count(),
            banned: self.bans.active(now),
            tracker_error,
            failures: self.failures.clone(),
        }
    }

    /// While downloading with nothing verified for `after`: records why in
    /// `stalled` and returns true (once per `after`) so the caller recovers.
    pub fn check_stall(
        &mut self,
        now: Instant,
        after: Duration,
        tracker_error: Option<String>,
    ) -> bool {
        if self.state != SessionState::Downloading
            || now.saturating_duration_since(self.last_progress) < after
            || now.saturating_duration_since(self.last_stall_check) < after
        {
            return false;
        }
        self.last_stall_check = now;
        let reason = diagnose(&self.stall_facts(now, tracker_error));
        if self.stalled.as_deref() != Some(reason.as_str()) {
            warn!("download stalled: {reason}");
        }
        self.stalled = Some(reason);
        true
    }

    /// Stall recovery: every known address may be dialed at once, and bans
    /// that ran out are lifted (the tracker is asked again by the caller).
    pub fn recover_from_stall(&mut self, now: Instant) {
        for k in self.known.values_mut() {
            if k.state == AddrState::Idle {
                k.next_try = None;
                k.failures = 0;
            }
        }
        let lifted = self.bans.lift_expired(now);
        debug!(lifted, "stall recovery: redialing known peers");
    }

    fn tick(&mut self, uploaded: u64, dt: Duration, now: Instant) {
        self.ticks += 1;
        let snubbed = self.measure(uploaded, dt.as_secs_f64().max(0.001), now);
        for k in snubbed {
            self.snub(k, now);
        }
        if self.ticks % RECHOKE_EVERY == 1 {
            self.rechoke(self.ticks % OPTIMISTIC_EVERY == 1);
        }
        self.send_pex(now);
        self.refill_all(now);
    }
}

impl Session {
    /// Once a second.
    pub(super) fn on_tick(self: &Arc<Self>, dt: Duration) {
        let now = Instant::now();
        let uploaded = self.uploaded.load(Ordering::Relaxed);
        let tracker_error = self.announce.last_error();
        let recover = {
            let mut st = self.state.lock();
            st.tick(uploaded, dt, now);
            let stalled = self
                .opts
                .stall_after
                .is_some_and(|after| st.check_stall(now, after, tracker_error));
            if stalled {
                st.recover_from_stall(now);
            }
            stalled
        };
        if recover {
            self.announce.now.notify_one();
        }
        self.publish();
    }
}
