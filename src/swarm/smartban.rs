//! Smart ban: blame a failed piece on the peer whose block was wrong, not
//! on everyone who contributed to it (the idea of libtorrent's smart-ban
//! plugin).
//!
//! When a piece made of several peers' blocks fails its hash, we cannot
//! tell whose block was bad, and banning them all lets one liar get every
//! honest source banned. So we remember a digest of each block and who sent
//! it. The piece is fetched again; when it finally verifies, every block
//! whose earlier digest differs from the good one was a lie, and only its
//! sender is banned. A piece that failed with a single contributor needs
//! none of this: that peer alone sent it (the session bans it directly).
//!
//! Memory is bounded: at most [`MAX_PIECES`] pieces are watched (the oldest
//! is dropped) and each keeps at most [`MAX_RECORDS_PER_PIECE`] records.

use std::collections::{HashMap, VecDeque};

use sha1::{Digest as _, Sha1};

use super::bans::PeerIdent;
use crate::metainfo::BLOCK_SIZE;

pub type Digest = [u8; 20];

const MAX_PIECES: usize = 512;
const MAX_RECORDS_PER_PIECE: usize = 4096;

#[derive(Debug, Clone)]
struct Record {
    block: u32,
    who: PeerIdent,
    digest: Digest,
}

#[derive(Debug, Default)]
pub struct SmartBan {
    pieces: HashMap<u32, Vec<Record>>,
    order: VecDeque<u32>,
}

/// The SHA-1 of each 16 KiB block of a piece's data.
pub fn block_digests(data: &[u8]) -> Vec<Digest> {
    data.chunks(BLOCK_SIZE as usize)
        .map(|c| Sha1::digest(c).into())
        .collect()
}

impl SmartBan {
    /// Is `piece` under watch (its next verdict needs block digests)?
    pub fn watching(&self, piece: u32) -> bool {
        self.pieces.contains_key(&piece)
    }

    #[cfg(test)]
    pub fn watched(&self) -> usize {
        self.pieces.len()
    }

    /// A piece failed: remember who sent which block (`sources[i]` sent
    /// block `i`; `None` is padding) and what it held.
    pub fn on_failed(&mut self, piece: u32, sources: &[Option<PeerIdent>], digests: &[Digest]) {
        if !self.pieces.contains_key(&piece) {
            if self.order.len() >= MAX_PIECES {
                if let Some(old) = self.order.pop_front() {
                    self.pieces.remove(&old);
                }
            }
            self.order.push_back(piece);
        }
        let records = self.pieces.entry(piece).or_default();
        for (i, (who, digest)) in sources.iter().zip(digests).enumerate() {
            let Some(who) = who else { continue };
            if records.len() >= MAX_RECORDS_PER_PIECE {
                break;
            }
            records.push(Record {
                block: i as u32,
                who: *who,
                digest: *digest,
            });
        }
    }

    /// The piece verified with these block digests: returns each peer that
    /// once sent a block of it that differed (each once), and stops watching.
    pub fn on_passed(&mut self, piece: u32, good: &[Digest]) -> Vec<PeerIdent> {
        let Some(records) = self.pieces.remove(&piece) else {
            return Vec::new();
        };
        self.order.retain(|p| *p != piece);
        let mut culprits: Vec<PeerIdent> = Vec::new();
        for r in records {
            let lied = good.get(r.block as usize).is_some_and(|g| *g != r.digest);
            if lied && !culprits.contains(&r.who) {
                culprits.push(r.who);
            }
        }
        culprits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: u8) -> PeerIdent {
        PeerIdent {
            peer_id: [n; 20],
            listen: None,
            addr: ([127, 0, 0, n], 1000).into(),
        }
    }

    #[test]
    fn only_the_peer_whose_block_differed_is_blamed() {
        let good: Vec<u8> = (0..4 * BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
        let mut bad = good.clone();
        bad[2 * BLOCK_SIZE as usize + 5] ^= 0xff; // block 2 was a lie
        let mut sb = SmartBan::default();
        // Honest peer 1 sent blocks 0, 1, 3; liar 2 sent block 2.
        let sources = [Some(who(1)), Some(who(1)), Some(who(2)), Some(who(1))];
        sb.on_failed(7, &sources, &block_digests(&bad));
        assert!(sb.watching(7));
        assert_eq!(sb.on_passed(7, &block_digests(&good)), vec![who(2)]);
        assert!(!sb.watching(7), "settled");
        assert!(sb.on_passed(7, &block_digests(&good)).is_empty());
    }

    #[test]
    fn several_failures_blame_each_liar_once_and_padding_is_nobody() {
        let good = vec![1u8; 3 * BLOCK_SIZE as usize];
        let mut bad1 = good.clone();
        bad1[0] = 0;
        let mut bad2 = good.clone();
        bad2[BLOCK_SIZE as usize] = 0;
        let mut sb = SmartBan::default();
        sb.on_failed(
            1,
            &[Some(who(3)), Some(who(1)), None],
            &block_digests(&bad1),
        );
        sb.on_failed(
            1,
            &[Some(who(3)), Some(who(3)), None],
            &block_digests(&bad2),
        );
        let blamed = sb.on_passed(1, &block_digests(&good));
        assert_eq!(blamed, vec![who(3)]);
    }

    #[test]
    fn watch_list_is_bounded() {
        let mut sb = SmartBan::default();
        let d = block_digests(&[0u8; 10]);
        for p in 0..(MAX_PIECES as u32 + 50) {
            sb.on_failed(p, &[Some(who(1))], &d);
        }
        assert_eq!(sb.watched(), MAX_PIECES);
        assert!(!sb.watching(0), "the oldest was dropped");
        assert!(sb.watching(MAX_PIECES as u32 + 49));
    }
}
