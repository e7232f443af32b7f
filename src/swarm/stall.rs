//! Stalls: a download that verified no piece for a while says why, in one
//! line an operator can act on, instead of sitting at the same progress.
//!
//! The session gathers [`StallFacts`] once it has made no progress for the
//! stall interval and turns them into a reason with [`diagnose`]; it then
//! re-announces, redials known peers and lifts expired bans. The reasons are
//! ordered by what explains the stall best: pieces that keep failing their
//! hash mean the source itself is wrong (a snapshot edited after
//! publication), which no amount of retrying fixes.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

/// Pieces tracked in [`Failures`] (enough to describe the problem).
const MAX_FAILED_PIECES: usize = 64;

/// Hash failures since the last verified piece.
#[derive(Debug, Default, Clone)]
pub struct Failures {
    pieces: HashMap<u32, (u32, BTreeSet<SocketAddr>)>,
    total: u32,
}

impl Failures {
    pub fn record(&mut self, piece: u32, from: impl IntoIterator<Item = SocketAddr>) {
        self.total = self.total.saturating_add(1);
        if !self.pieces.contains_key(&piece) && self.pieces.len() >= MAX_FAILED_PIECES {
            return;
        }
        let e = self.pieces.entry(piece).or_default();
        e.0 = e.0.saturating_add(1);
        for a in from {
            if e.1.len() < 8 {
                e.1.insert(a);
            }
        }
    }

    /// `piece` verified: its earlier failures are explained (a liar, now
    /// banned, or a source that since got it right). Other pieces' failures
    /// stand: a piece passing says nothing about another that failed.
    pub fn passed(&mut self, piece: u32) {
        if let Some((n, _)) = self.pieces.remove(&piece) {
            self.total = self.total.saturating_sub(n);
        }
    }

    #[cfg(test)]
    pub fn clear(&mut self) {
        self.pieces.clear();
        self.total = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The piece that failed most often: (piece, times, senders).
    fn worst(&self) -> Option<(u32, u32, &BTreeSet<SocketAddr>)> {
        self.pieces
            .iter()
            .max_by_key(|(p, (n, _))| (*n, std::cmp::Reverse(**p)))
            .map(|(p, (n, from))| (*p, *n, from))
    }
}

/// What the session knows when it notices a stall.
#[derive(Debug, Default, Clone)]
pub struct StallFacts {
    /// How long since the last verified piece.
    pub idle: Duration,
    pub peers: usize,
    /// Connected peers that have at least one piece we lack.
    pub useful_peers: usize,
    /// ... of which are not choking us.
    pub unchoked_by: usize,
    /// Addresses known (tracker, PEX, configured) and bans in force.
    pub known: usize,
    pub banned: usize,
    pub tracker_error: Option<String>,
    pub failures: Failures,
}

fn list(addrs: &BTreeSet<SocketAddr>) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kind of a stall: the log line repeats only when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallKind {
    /// Pieces keep failing their hash: the source's data is wrong.
    SourceMismatch,
    NoPeers,
    NothingUseful,
    Choked,
    Slow,
}

/// One line: why nothing arrived, and its kind. The replica reports the
/// line as `stalled: <reason>`.
pub fn diagnose(f: &StallFacts) -> (StallKind, String) {
    let kind = kind_of(f);
    (kind, describe(kind, f))
}

fn kind_of(f: &StallFacts) -> StallKind {
    if !f.failures.is_empty() {
        StallKind::SourceMismatch
    } else if f.peers == 0 {
        StallKind::NoPeers
    } else if f.useful_peers == 0 {
        StallKind::NothingUseful
    } else if f.unchoked_by == 0 {
        StallKind::Choked
    } else {
        StallKind::Slow
    }
}

fn describe(kind: StallKind, f: &StallFacts) -> String {
    let secs = f.idle.as_secs();
    if let (StallKind::SourceMismatch, Some((piece, times, from))) = (kind, f.failures.worst()) {
        let others = f.failures.total.saturating_sub(times);
        let mut s =
            format!(
            "the source's data does not match the torrent: piece {piece} failed its hash check \
             {times} time{} (sent by {})",
            if times == 1 { "" } else { "s" },
            if from.is_empty() { "unknown".to_string() } else { list(from) }
        );
        if others > 0 {
            s.push_str(&format!("; {others} other failure(s)"));
        }
        return s;
    }
    if f.peers == 0 {
        let why = match &f.tracker_error {
            Some(e) => format!("the tracker is failing: {e}"),
            None if f.known == 0 => "the tracker lists no other peer".to_string(),
            None => format!("none of {} known peers accepted a connection", f.known),
        };
        let banned = if f.banned > 0 {
            format!(" ({} banned)", f.banned)
        } else {
            String::new()
        };
        return format!("no peers for {secs}s: {why}{banned}");
    }
    if f.useful_peers == 0 {
        return format!(
            "none of the {} connected peers has a missing piece (for {secs}s)",
            f.peers
        );
    }
    if f.unchoked_by == 0 {
        return format!(
            "all {} peers that have missing pieces are choking us (for {secs}s)",
            f.useful_peers
        );
    }
    format!(
        "no piece verified for {secs}s from {} unchoked peer(s)",
        f.unchoked_by
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> StallFacts {
        StallFacts {
            idle: Duration::from_secs(30),
            ..StallFacts::default()
        }
    }

    #[test]
    fn failing_hashes_name_the_source() {
        let mut f = facts();
        f.peers = 1;
        f.useful_peers = 1;
        let master: SocketAddr = ([10, 0, 0, 1], 6881).into();
        f.failures.record(3, [master]);
        f.failures.record(3, [master]);
        f.failures.record(9, [master]);
        let (kind, r) = diagnose(&f);
        assert_eq!(kind, StallKind::SourceMismatch);
        assert!(
            r.starts_with("the source's data does not match the torrent: piece 3 failed its hash check 2 times (sent by 10.0.0.1:6881)"),
            "{r}"
        );
        assert!(r.contains("1 other"), "{r}");
    }

    #[test]
    fn each_situation_has_its_reason() {
        let mut f = facts();
        f.tracker_error = Some("connect timed out".into());
        assert!(diagnose(&f)
            .1
            .contains("tracker is failing: connect timed out"));
        f.tracker_error = None;
        assert!(diagnose(&f).1.contains("lists no other peer"));
        f.known = 3;
        f.banned = 1;
        assert!(diagnose(&f).1.contains("none of 3 known peers accepted"));
        assert!(diagnose(&f).1.contains("(1 banned)"));
        f.peers = 2;
        assert!(diagnose(&f).1.contains("has a missing piece"));
        f.useful_peers = 2;
        assert!(diagnose(&f).1.contains("choking us"));
        f.unchoked_by = 1;
        assert!(diagnose(&f).1.contains("no piece verified for 30s"));
    }

    #[test]
    fn a_piece_that_passes_clears_only_its_own_failures() {
        let mut f = Failures::default();
        let a: SocketAddr = ([10, 0, 0, 1], 1).into();
        f.record(4, [a]);
        f.record(5, [a]);
        f.passed(5);
        assert!(!f.is_empty(), "piece 4 still failed");
        f.passed(4);
        assert!(f.is_empty());
    }

    #[test]
    fn failure_memory_is_bounded() {
        let mut f = Failures::default();
        for p in 0..1000 {
            f.record(p, [([127, 0, 0, 1], p as u16).into()]);
        }
        assert!(f.pieces.len() <= MAX_FAILED_PIECES);
        assert_eq!(f.total, 1000);
        f.clear();
        assert!(f.is_empty());
    }
}
