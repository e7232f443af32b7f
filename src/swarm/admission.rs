//! Admission: who gets a connection slot when slots are scarce.
//!
//! Without this, anyone who completes a handshake and sends keep-alives
//! holds a slot for as long as they like: sixty such connections once kept
//! a new replica away from the master for minutes. The rules:
//!
//! - at most `max_peers_per_ip` connections per remote IP per torrent;
//! - at most `max_peers` per torrent (and `max_connections` per process,
//!   checked by the engine with the same ranking);
//! - when a limit is reached, the newcomer takes the slot of the *least
//!   useful* evictable peer, if there is one: connected for at least
//!   [`GRACE`] and nothing in flight either way; then either interested in
//!   nothing either way (since [`GRACE`]), or silent for [`IDLE`] and not
//!   waiting for us to unchoke it (an interested peer we choke is a replica
//!   queueing for the master, not a squatter). Among evictable peers, those
//!   interested in nothing go first, then the longest idle.
//!
//! Honest, busy peers are therefore never evicted; a stranger can at worst
//! evict another idle stranger. Pure functions over [`PeerView`]s.

use std::net::IpAddr;
use std::time::Duration;

use super::picker::PeerKey;

/// A new connection is never evicted before it had a chance to be useful.
pub const GRACE: Duration = Duration::from_secs(10);
/// No payload for this long makes a connection evictable.
pub const IDLE: Duration = Duration::from_secs(30);

/// What admission needs to know of a connected peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerView {
    pub key: PeerKey,
    pub ip: IpAddr,
    /// Since the connection was established.
    pub age: Duration,
    /// Since the last block either way (or since connecting).
    pub idle: Duration,
    /// Blocks requested from it, or its requests queued with us.
    pub busy: bool,
    pub we_interested: bool,
    pub they_interested: bool,
    pub we_choke_them: bool,
    /// Already being closed: does not count against any limit.
    pub leaving: bool,
}

impl PeerView {
    fn evictable(&self) -> bool {
        if self.leaving || self.busy || self.age < GRACE {
            return false;
        }
        let wanted = self.we_interested || self.they_interested;
        // Interested in nothing either way: useless as soon as the grace
        // period is over. Otherwise only after a long silence, and never
        // while it waits for us to unchoke it.
        (!wanted && self.idle >= GRACE)
            || (self.idle >= IDLE && !(self.they_interested && self.we_choke_them))
    }

    /// Lower is evicted first.
    pub fn usefulness(&self) -> (bool, std::cmp::Reverse<Duration>) {
        (
            self.we_interested || self.they_interested,
            std::cmp::Reverse(self.idle),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_peers: usize,
    pub max_peers_per_ip: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The torrent has `max_peers` connections and none is evictable.
    Full,
    /// This IP has `max_peers_per_ip` connections and none is evictable.
    PerIp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Admit after closing this peer.
    Evict(PeerKey),
    No(Refusal),
}

/// The least useful evictable peer of `peers`.
pub fn least_useful<'a>(peers: impl IntoIterator<Item = &'a PeerView>) -> Option<&'a PeerView> {
    peers
        .into_iter()
        .filter(|p| p.evictable())
        .min_by_key(|p| p.usefulness())
}

/// May a newcomer from `ip` join `peers` under `limits`?
pub fn admit(peers: &[PeerView], ip: IpAddr, limits: Limits) -> Admit {
    let live = || peers.iter().filter(|p| !p.leaving);
    let same_ip = live().filter(|p| p.ip == ip).count();
    if same_ip >= limits.max_peers_per_ip {
        return match least_useful(peers.iter().filter(|p| p.ip == ip)) {
            Some(v) => Admit::Evict(v.key),
            None => Admit::No(Refusal::PerIp),
        };
    }
    if live().count() >= limits.max_peers {
        return match least_useful(peers) {
            Some(v) => Admit::Evict(v.key),
            None => Admit::No(Refusal::Full),
        };
    }
    Admit::Yes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(key: PeerKey, last: u8) -> PeerView {
        PeerView {
            key,
            ip: IpAddr::from([127, 0, 0, last]),
            age: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            busy: false,
            we_interested: false,
            they_interested: false,
            we_choke_them: true,
            leaving: false,
        }
    }

    const LIMITS: Limits = Limits {
        max_peers: 3,
        max_peers_per_ip: 2,
    };

    #[test]
    fn room_means_yes() {
        assert_eq!(
            admit(&[view(1, 1)], [127, 0, 0, 2].into(), LIMITS),
            Admit::Yes
        );
    }

    #[test]
    fn a_full_torrent_evicts_the_idle_squatter_not_the_busy_peer() {
        let mut busy = view(1, 1);
        busy.busy = true;
        busy.idle = Duration::ZERO;
        let mut waiting = view(2, 2);
        waiting.they_interested = true; // we choke it: it queues for a slot
        let squatter = view(3, 3);
        let peers = [busy, waiting, squatter];
        assert_eq!(admit(&peers, [10, 0, 0, 1].into(), LIMITS), Admit::Evict(3));
        // Without the squatter nobody can go.
        assert_eq!(
            admit(
                &peers[..2],
                [10, 0, 0, 1].into(),
                Limits {
                    max_peers: 2,
                    ..LIMITS
                }
            ),
            Admit::No(Refusal::Full)
        );
    }

    #[test]
    fn young_and_leaving_connections_are_not_evicted_and_leaving_ones_do_not_count() {
        let mut young = view(1, 1);
        young.age = Duration::from_secs(1);
        let mut leaving = view(2, 2);
        leaving.leaving = true;
        let mut idle_unchoked = view(3, 3);
        idle_unchoked.they_interested = true;
        idle_unchoked.we_choke_them = false; // unchoked, asks for nothing
        let peers = [young, leaving, idle_unchoked];
        // Two live peers of three allowed: room.
        assert_eq!(admit(&peers, [10, 0, 0, 1].into(), LIMITS), Admit::Yes);
        let full = Limits {
            max_peers: 2,
            ..LIMITS
        };
        assert_eq!(admit(&peers, [10, 0, 0, 1].into(), full), Admit::Evict(3));
    }

    #[test]
    fn a_peer_interested_in_nothing_goes_after_the_grace_period_others_after_silence() {
        let mut bored = view(1, 1);
        bored.idle = GRACE;
        let mut keen = bored;
        keen.key = 2;
        keen.we_interested = true;
        assert!(bored.evictable());
        assert!(!keen.evictable(), "interested and silent only {GRACE:?}");
        keen.idle = IDLE;
        assert!(keen.evictable());
    }

    #[test]
    fn per_ip_cap_only_evicts_from_the_same_ip() {
        let a = view(1, 9);
        let mut b = view(2, 9);
        b.busy = true;
        let c = view(3, 4);
        let peers = [a, b, c];
        assert_eq!(
            admit(&peers, [127, 0, 0, 9].into(), LIMITS),
            Admit::Evict(1)
        );
        let mut a2 = a;
        a2.busy = true;
        assert_eq!(
            admit(&[a2, b, c], [127, 0, 0, 9].into(), LIMITS),
            Admit::No(Refusal::PerIp)
        );
    }

    #[test]
    fn uninterested_peers_go_before_interested_ones() {
        let mut interested = view(1, 1);
        interested.we_interested = true;
        interested.idle = Duration::from_secs(500);
        let plain = view(2, 2);
        assert_eq!(least_useful(&[interested, plain]).map(|p| p.key), Some(2));
    }
}
