//! Choking: who may download from us.
//!
//! Every rechoke (10 s) the `slots` interested peers with the best rate get
//! a regular slot: the rate they send to us while we are leeching (tit for
//! tat), the rate we send to them while seeding (favouring peers that can
//! take data fast, which finishes them sooner so they can seed in turn).
//! One more slot, the optimistic unchoke, goes to a random choked interested
//! peer and rotates every 30 s, so newcomers with nothing to trade get a
//! start. Pure functions: the session applies the result.

use std::collections::HashSet;

use rand::seq::SliceRandom;

use super::picker::PeerKey;

#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub key: PeerKey,
    pub interested: bool,
    /// Bytes/s: from them when we leech, to them when we seed.
    pub rate: u64,
}

/// Chooses who is unchoked. `optimistic` is the current optimistic peer,
/// kept unless `rotate` (or it lost interest).
pub fn choose(
    candidates: &[Candidate],
    slots: usize,
    optimistic: Option<PeerKey>,
    rotate: bool,
) -> (HashSet<PeerKey>, Option<PeerKey>) {
    let mut interested: Vec<&Candidate> = candidates.iter().filter(|c| c.interested).collect();
    // Stable order for equal rates: by key, so results do not flap.
    interested.sort_by(|a, b| b.rate.cmp(&a.rate).then(a.key.cmp(&b.key)));
    let mut unchoked: HashSet<PeerKey> = interested.iter().take(slots).map(|c| c.key).collect();
    let rest: Vec<PeerKey> = interested.iter().skip(slots).map(|c| c.key).collect();
    let keep = optimistic.filter(|o| !rotate && rest.contains(o));
    let opt = keep.or_else(|| rest.choose(&mut rand::thread_rng()).copied());
    if let Some(o) = opt {
        unchoked.insert(o);
    }
    (unchoked, opt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: PeerKey, interested: bool, rate: u64) -> Candidate {
        Candidate {
            key,
            interested,
            rate,
        }
    }

    #[test]
    fn fastest_interested_get_slots_plus_one_optimistic() {
        let cands = [
            c(1, true, 10),
            c(2, true, 50),
            c(3, false, 999),
            c(4, true, 30),
            c(5, true, 1),
        ];
        let (u, opt) = choose(&cands, 2, None, true);
        assert!(u.contains(&2) && u.contains(&4));
        assert!(!u.contains(&3), "uninterested peers are not unchoked");
        let o = opt.unwrap();
        assert!(o == 1 || o == 5);
        assert_eq!(u.len(), 3);
    }

    #[test]
    fn optimistic_is_kept_until_rotation() {
        let cands = [c(1, true, 100), c(2, true, 0), c(3, true, 0), c(4, true, 0)];
        let (_, opt) = choose(&cands, 1, None, true);
        for _ in 0..20 {
            let (_, again) = choose(&cands, 1, opt, false);
            assert_eq!(again, opt);
        }
    }

    #[test]
    fn everyone_fits_when_slots_suffice() {
        let cands = [c(1, true, 0), c(2, true, 0)];
        let (u, opt) = choose(&cands, 4, None, true);
        assert_eq!(u.len(), 2);
        assert_eq!(opt, None);
    }
}
