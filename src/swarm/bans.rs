//! Bans: which peers we refuse, and until when.
//!
//! A ban names a peer by its peer id and by the address it accepts
//! connections on (never by bare IP: on loopback, in containers and behind
//! NAT, many honest peers share one IP). Bans expire: a wrong ban of the
//! only honest source must cost a minute, not the rest of the download. A
//! peer banned again is banned for twice as long, up to [`BAN_MAX`]; its
//! record is forgotten once it has behaved for [`FORGET_AFTER`].
//!
//! Pure bookkeeping with explicit instants, so tests need no clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// The first ban of a peer.
pub const BAN_BASE: Duration = Duration::from_secs(60);
/// The longest ban, however often a peer offends.
pub const BAN_MAX: Duration = Duration::from_secs(30 * 60);
/// A peer's offences are forgotten this long after its last ban ends.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Entries kept per table: a stranger inventing peer ids cannot grow it
/// without bound (the entries nearest their end are dropped first).
const MAX_ENTRIES: usize = 4096;

/// Who sent a block: enough to recognise the peer after it reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerIdent {
    pub peer_id: [u8; 20],
    /// The address it accepts connections on, when known.
    pub listen: Option<SocketAddr>,
    /// The address the connection came from.
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    until: Instant,
    offences: u32,
}

#[derive(Debug, Default)]
pub struct BanList {
    by_id: HashMap<[u8; 20], Ban>,
    by_addr: HashMap<SocketAddr, Ban>,
}

fn ban_length(offences: u32) -> Duration {
    let doublings = offences.saturating_sub(1).min(16);
    BAN_BASE
        .checked_mul(1u32 << doublings)
        .unwrap_or(BAN_MAX)
        .min(BAN_MAX)
}

fn add<K: std::hash::Hash + Eq + Copy>(
    table: &mut HashMap<K, Ban>,
    key: K,
    now: Instant,
) -> Duration {
    let offences = table
        .get(&key)
        .map(|b| b.offences.saturating_add(1))
        .unwrap_or(1);
    let length = ban_length(offences);
    table.insert(
        key,
        Ban {
            until: now + length,
            offences,
        },
    );
    if table.len() > MAX_ENTRIES {
        let soonest = table.iter().min_by_key(|(_, b)| b.until).map(|(k, _)| *k);
        if let Some(k) = soonest {
            table.remove(&k);
        }
    }
    length
}

impl BanList {
    /// Bans `who` (its peer id and its listen address). Returns for how long.
    pub fn ban(&mut self, who: &PeerIdent, now: Instant) -> Duration {
        let length = add(&mut self.by_id, who.peer_id, now);
        if let Some(a) = who.listen {
            add(&mut self.by_addr, a, now);
        }
        length
    }

    pub fn id_banned(&self, id: &[u8; 20], now: Instant) -> bool {
        self.by_id.get(id).is_some_and(|b| b.until > now)
    }

    pub fn addr_banned(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.by_addr.get(addr).is_some_and(|b| b.until > now)
    }

    /// Bans in force now.
    pub fn active(&self, now: Instant) -> usize {
        self.by_id.values().filter(|b| b.until > now).count()
    }

    /// Forgets peers whose last ban ended long ago. Returns how many bans
    /// ended since they were imposed (lifted, in the log's words).
    pub fn lift_expired(&mut self, now: Instant) -> usize {
        let forget = |b: &Ban| b.until + FORGET_AFTER > now;
        self.by_id.retain(|_, b| forget(b));
        self.by_addr.retain(|_, b| forget(b));
        self.by_id.values().filter(|b| b.until <= now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: u8) -> PeerIdent {
        PeerIdent {
            peer_id: [n; 20],
            listen: Some(([127, 0, 0, 1], 6000 + n as u16).into()),
            addr: ([127, 0, 0, 1], 50000 + n as u16).into(),
        }
    }

    #[test]
    fn bans_expire_and_repeat_offenders_wait_longer() {
        let t0 = Instant::now();
        let mut b = BanList::default();
        assert_eq!(b.ban(&who(1), t0), BAN_BASE);
        assert!(b.id_banned(&[1; 20], t0));
        assert!(b.addr_banned(&who(1).listen.unwrap(), t0));
        assert!(!b.id_banned(&[2; 20], t0), "only the offender");
        let t1 = t0 + BAN_BASE;
        assert!(!b.id_banned(&[1; 20], t1), "expired");
        assert_eq!(b.ban(&who(1), t1), BAN_BASE * 2, "second offence");
        let mut t = t1;
        for _ in 0..40 {
            t += BAN_MAX;
            assert!(b.ban(&who(1), t) <= BAN_MAX);
        }
        assert_eq!(b.active(t), 1);
    }

    #[test]
    fn old_offences_are_forgotten_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut b = BanList::default();
        b.ban(&who(1), t0);
        let later = t0 + BAN_BASE + FORGET_AFTER + Duration::from_secs(1);
        b.lift_expired(later);
        assert_eq!(b.ban(&who(1), later), BAN_BASE, "a first offence again");
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            let mut w = who(0);
            w.peer_id[..4].copy_from_slice(&i.to_be_bytes());
            w.listen = None;
            b.ban(&w, t0);
        }
        assert!(b.by_id.len() <= MAX_ENTRIES);
    }
}
