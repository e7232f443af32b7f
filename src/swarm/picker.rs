//! Piece picking: which blocks to ask a peer for next.
//!
//! Policy, in order:
//! 1. blocks of pieces in progress that this peer owns (it took their first
//!    block) or that nobody owns any more: finish what is started, sooner
//!    `have`s, fewer buffers. A piece owned by another peer is left to it
//!    until endgame. That keeps every peer's pipeline on pieces it alone was
//!    asked for: a seeder's scarce upload goes to pieces only it has (the
//!    rarest), instead of to blocks of pieces other leechers are already
//!    serving; and a piece that fails its hash names one culprit;
//! 2. a new piece, the rarest among those the peer has, scanning from a
//!    random start so that peers with equal views still spread out (never in
//!    order: in-order picking makes every leecher want the same pieces from
//!    the seeder and leaves them nothing to trade);
//! 3. in endgame (nothing left unrequested), blocks already requested from
//!    others, at most [`ENDGAME_DUPLICATES`] requesters per block.
//!
//! The invariants (also in `STATE.md`): a piece is either had, active
//! (buffer allocated, blocks open/requested/received), or wanted-idle; a
//! block's requester list holds exactly the peers whose in-flight set holds
//! that block. `check_invariants` asserts them in tests.
//!
//! Memory: each active piece owns one piece-sized buffer; the number of
//! active pieces is bounded by `max_active` (from a byte budget), so memory
//! depends on the piece length and the budget, not on the torrent's size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;

use super::bitfield::Bitfield;
use crate::metainfo::{Metainfo, BLOCK_SIZE};
use crate::peer::codec::BlockRef;

/// A connection's identity inside a session.
pub type PeerKey = u64;

pub const ENDGAME_DUPLICATES: usize = 2;
/// In endgame a peer takes duplicate requests only while it has fewer than
/// this many blocks in flight: duplicates exist to rescue the last blocks
/// from a slow peer, not to download everything twice.
pub const ENDGAME_IDLE: usize = 4;
/// ... and only blocks outstanding at least this long: on a fast link most
/// "last blocks" are already on their way, and duplicating them only wastes.
pub const ENDGAME_AFTER: Duration = Duration::from_millis(2000);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Open,
    /// Requesters, and when the block was first requested.
    Requested(Vec<PeerKey>, Instant),
    Received(PeerKey),
}

#[derive(Debug)]
struct Active {
    blocks: Vec<Block>,
    open: u32,
    received: u32,
    data: Vec<u8>,
    verifying: bool,
    /// The peer that took the piece's first open block; others leave it alone.
    owner: Option<PeerKey>,
}

impl Active {
    /// Does `peer` still have blocks of this piece requested? An owner that
    /// has none (all delivered or rejected) no longer holds the piece back.
    fn has_requests_from(&self, peer: PeerKey) -> bool {
        self.blocks
            .iter()
            .any(|b| matches!(b, Block::Requested(by, _) if by.contains(&peer)))
    }
}

/// What became of a received block.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Stored. `complete` carries the piece when this was its last block;
    /// `cancel` lists other peers that had requested the same block.
    Stored {
        complete: bool,
        cancel: Vec<PeerKey>,
    },
    /// We already had it, or did not want it.
    Unwanted,
}

pub struct Picker {
    piece_length: u64,
    total_length: u64,
    num_pieces: u32,
    have: Bitfield,
    availability: Vec<u32>,
    active: HashMap<u32, Active>,
    max_active: usize,
    /// Buffers of finished pieces, kept for reuse (a fresh buffer costs page faults).
    spare: Vec<Vec<u8>>,
    /// Byte ranges inside the torrent that are padding: never requested.
    pads: Vec<(u64, u64)>,
    /// A block is duplicated in endgame only after waiting this long.
    endgame_after: Duration,
}

impl Picker {
    pub fn new(meta: &Metainfo, have: Bitfield, budget_bytes: u64) -> Picker {
        let n = meta.num_pieces();
        let max_active = (budget_bytes / meta.piece_length).max(4) as usize;
        let pads = meta
            .files
            .iter()
            .filter(|f| f.pad && f.length > 0)
            .map(|f| (f.offset, f.offset + f.length))
            .collect();
        Picker {
            piece_length: meta.piece_length,
            total_length: meta.total_length,
            num_pieces: n,
            have,
            availability: vec![0; n as usize],
            active: HashMap::new(),
            max_active,
            spare: Vec::new(),
            pads,
            endgame_after: ENDGAME_AFTER,
        }
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    fn piece_len(&self, piece: u32) -> u64 {
        crate::metainfo::Metainfo::piece_len_of(self.piece_length, self.total_length, piece)
    }

    fn blocks_in(&self, piece: u32) -> u32 {
        (self.piece_len(piece)).div_ceil(BLOCK_SIZE as u64) as u32
    }

    fn block_ref(&self, piece: u32, block: u32) -> BlockRef {
        let begin = block * BLOCK_SIZE;
        let len = (self.piece_len(piece) - begin as u64).min(BLOCK_SIZE as u64) as u32;
        BlockRef { piece, begin, len }
    }

    /// True when the block lies entirely in padding.
    fn is_pad(&self, b: &BlockRef) -> bool {
        let start = b.piece as u64 * self.piece_length + b.begin as u64;
        let end = start + b.len as u64;
        self.pads.iter().any(|&(s, e)| s <= start && end <= e)
    }

    #[cfg(test)]
    pub fn peer_added(&mut self, has: &Bitfield) {
        for i in has.ones() {
            self.availability[i as usize] += 1;
        }
    }

    pub fn peer_has(&mut self, piece: u32) {
        if let Some(a) = self.availability.get_mut(piece as usize) {
            *a += 1;
        }
    }

    pub fn peer_removed(&mut self, has: &Bitfield) {
        for i in has.ones() {
            let a = &mut self.availability[i as usize];
            *a = a.saturating_sub(1);
        }
    }

    /// Are we in endgame: every missing piece active and nothing left open?
    pub fn endgame(&self) -> bool {
        self.active.len() as u32 == self.num_pieces - self.have.count()
            && self.active.values().all(|a| a.open == 0)
    }

    /// Appends up to `want` blocks for `peer` (which has pieces `has` and
    /// `inflight` blocks requested already) to `out`.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        has: &Bitfield,
        inflight: usize,
        want: usize,
        out: &mut Vec<BlockRef>,
    ) {
        if want == 0 {
            return;
        }
        let start_len = out.len();
        // 1. Pieces in progress that are this peer's (or nobody's), its own first.
        let mut candidates: Vec<u32> = self
            .active
            .iter()
            .filter(|(&p, a)| {
                !a.verifying
                    && a.open > 0
                    && has.get(p)
                    && a.owner.is_none_or(|o| o == peer || !a.has_requests_from(o))
            })
            .map(|(&p, _)| p)
            .collect();
        candidates.sort_by_key(|p| {
            let a = &self.active[p];
            let mine = a.owner == Some(peer);
            (!mine, self.availability[*p as usize], *p)
        });
        for p in candidates {
            self.take_open(p, peer, want - (out.len() - start_len), out);
            if out.len() - start_len >= want {
                return;
            }
        }
        // 2. New pieces, rarest first.
        while out.len() - start_len < want {
            // A peer with nothing to do may open a few pieces past the budget.
            let hard_max = self.max_active + 8;
            if self.active.len() >= self.max_active
                && (out.len() > start_len || self.active.len() >= hard_max)
            {
                break;
            }
            let Some(p) = self.rarest_new(has) else { break };
            self.activate(p);
            self.take_open(p, peer, want - (out.len() - start_len), out);
        }
        if out.len() > start_len {
            return;
        }
        // 3. Endgame duplicates, a few at a time for a nearly idle peer.
        let want = want.min(ENDGAME_IDLE.saturating_sub(inflight));
        if want > 0 && self.endgame() {
            let mut pieces: Vec<u32> = self
                .active
                .keys()
                .copied()
                .filter(|&p| has.get(p))
                .collect();
            pieces.sort_unstable();
            for p in pieces {
                let refs: Vec<(usize, BlockRef)> = {
                    let a = &self.active[&p];
                    if a.verifying {
                        continue;
                    }
                    a.blocks
                        .iter()
                        .enumerate()
                        .filter_map(|(i, b)| match b {
                            Block::Requested(by, at)
                                if by.len() < ENDGAME_DUPLICATES
                                    && !by.contains(&peer)
                                    && at.elapsed() >= self.endgame_after =>
                            {
                                Some((i, self.block_ref(p, i as u32)))
                            }
                            _ => None,
                        })
                        .collect()
                };
                for (i, r) in refs {
                    if out.len() - start_len >= want {
                        return;
                    }
                    if let Some(a) = self.active.get_mut(&p) {
                        if let Block::Requested(by, _) = &mut a.blocks[i] {
                            by.push(peer);
                            out.push(r);
                        }
                    }
                }
            }
        }
    }

    fn rarest_new(&self, has: &Bitfield) -> Option<u32> {
        let n = self.num_pieces;
        if n == 0 {
            return None;
        }
        let start = rand::thread_rng().gen_range(0..n);
        let mut best: Option<(u32, u32)> = None;
        for k in 0..n {
            let p = (start + k) % n;
            if self.have.get(p) || !has.get(p) || self.active.contains_key(&p) {
                continue;
            }
            let avail = self.availability[p as usize];
            if best.is_none_or(|(_, a)| avail < a) {
                best = Some((p, avail));
                if avail <= 1 {
                    break;
                }
            }
        }
        best.map(|(p, _)| p)
    }

    fn activate(&mut self, piece: u32) {
        let len = self.piece_len(piece) as usize;
        let mut data = self.spare.pop().unwrap_or_default();
        data.resize(len, 0);
        let nblocks = self.blocks_in(piece);
        let mut blocks = vec![Block::Open; nblocks as usize];
        let mut open = nblocks;
        let mut received = 0;
        for (i, b) in blocks.iter_mut().enumerate() {
            let r = self.block_ref(piece, i as u32);
            if self.is_pad(&r) {
                data[r.begin as usize..(r.begin + r.len) as usize].fill(0);
                *b = Block::Received(0);
                open -= 1;
                received += 1;
            }
        }
        self.active.insert(
            piece,
            Active {
                blocks,
                open,
                received,
                data,
                verifying: false,
                owner: None,
            },
        );
    }

    fn take_open(&mut self, piece: u32, peer: PeerKey, want: usize, out: &mut Vec<BlockRef>) {
        let Some(a) = self.active.get(&piece) else {
            return;
        };
        let idx: Vec<usize> = a
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == Block::Open)
            .map(|(i, _)| i)
            .take(want)
            .collect();
        let refs: Vec<BlockRef> = idx
            .iter()
            .map(|&i| self.block_ref(piece, i as u32))
            .collect();
        if let Some(a) = self.active.get_mut(&piece) {
            for (&i, r) in idx.iter().zip(refs) {
                a.blocks[i] = Block::Requested(vec![peer], Instant::now());
                a.open -= 1;
                out.push(r);
            }
            if !idx.is_empty() && a.owner.is_none() {
                a.owner = Some(peer);
            }
        }
    }

    /// `peer` will not deliver `block` (choked, rejected, gone, too slow).
    pub fn release(&mut self, peer: PeerKey, block: &BlockRef) {
        let idx = (block.begin / BLOCK_SIZE) as usize;
        if let Some(a) = self.active.get_mut(&block.piece) {
            if let Some(Block::Requested(by, _)) = a.blocks.get_mut(idx) {
                by.retain(|&k| k != peer);
                if by.is_empty() {
                    a.blocks[idx] = Block::Open;
                    a.open += 1;
                }
            }
            if a.owner == Some(peer) && !a.has_requests_from(peer) {
                a.owner = None;
            }
        }
    }

    /// Stores a block's data. The caller has checked `data.len() == block.len`
    /// bounds against the piece.
    pub fn on_block(&mut self, peer: PeerKey, block: &BlockRef, data: &[u8]) -> BlockOutcome {
        let idx = (block.begin / BLOCK_SIZE) as usize;
        let Some(a) = self.active.get_mut(&block.piece) else {
            return BlockOutcome::Unwanted;
        };
        if a.verifying || !block.begin.is_multiple_of(BLOCK_SIZE) {
            return BlockOutcome::Unwanted;
        }
        // Only a peer we asked may fill a block: an unrequested block is
        // waste, whatever it holds (a stranger spraying garbage must never
        // reach a piece, or its hash failure would be blamed on the peers
        // that sent the honest blocks).
        let cancel = match a.blocks.get(idx) {
            Some(Block::Requested(by, _)) if by.contains(&peer) => {
                by.iter().copied().filter(|&k| k != peer).collect()
            }
            _ => return BlockOutcome::Unwanted,
        };
        let end = block.begin as usize + data.len();
        if end > a.data.len() {
            return BlockOutcome::Unwanted;
        }
        a.data[block.begin as usize..end].copy_from_slice(data);
        a.blocks[idx] = Block::Received(peer);
        a.received += 1;
        let complete = a.received as usize == a.blocks.len();
        if complete {
            a.verifying = true;
        }
        BlockOutcome::Stored { complete, cancel }
    }

    /// Hands a complete piece's buffer to the verifier.
    pub fn take_data(&mut self, piece: u32) -> Vec<u8> {
        self.active
            .get_mut(&piece)
            .map(|a| std::mem::take(&mut a.data))
            .unwrap_or_default()
    }

    /// The verdict on a piece. Returns who sent each of its blocks, in
    /// block order (`None` for padding), for the smart ban.
    pub fn verified(&mut self, piece: u32, ok: bool, mut buf: Vec<u8>) -> Vec<Option<PeerKey>> {
        let Some(a) = self.active.get_mut(&piece) else {
            return Vec::new();
        };
        let sources: Vec<Option<PeerKey>> = a
            .blocks
            .iter()
            .map(|b| match b {
                Block::Received(k) if *k != 0 => Some(*k),
                _ => None,
            })
            .collect();
        if ok {
            self.active.remove(&piece);
            self.have.set(piece);
            if self.spare.len() < self.max_active {
                buf.clear();
                self.spare.push(buf);
            }
        } else {
            a.data = buf;
            a.verifying = false;
            a.owner = None;
            a.received = 0;
            a.open = 0;
            let n = a.blocks.len();
            for i in 0..n {
                a.blocks[i] = Block::Open;
                a.open += 1;
            }
            // Padding blocks stay received.
            for i in 0..n {
                let r = BlockRef {
                    piece,
                    begin: i as u32 * BLOCK_SIZE,
                    len: (self.piece_len(piece) - (i as u64 * BLOCK_SIZE as u64))
                        .min(BLOCK_SIZE as u64) as u32,
                };
                if self.is_pad(&r) {
                    if let Some(a) = self.active.get_mut(&piece) {
                        a.data[r.begin as usize..(r.begin + r.len) as usize].fill(0);
                        a.blocks[i] = Block::Received(0);
                        a.open -= 1;
                        a.received += 1;
                    }
                }
            }
        }
        sources
    }

    /// Is `block` requested from `peer`? (For the session's invariants.)
    #[cfg(test)]
    pub fn is_requested_by(&self, block: &BlockRef, peer: PeerKey) -> bool {
        let idx = (block.begin / BLOCK_SIZE) as usize;
        self.active.get(&block.piece).is_some_and(
            |a| matches!(a.blocks.get(idx), Some(Block::Requested(by, _)) if by.contains(&peer)),
        )
    }

    #[cfg(test)]
    pub fn check_invariants(&self, inflight: &HashMap<PeerKey, Vec<BlockRef>>) {
        for (p, a) in &self.active {
            assert!(!self.have.get(*p), "piece {p} both had and active");
            let open = a.blocks.iter().filter(|b| **b == Block::Open).count() as u32;
            assert_eq!(open, a.open, "open count of {p}");
            for (i, b) in a.blocks.iter().enumerate() {
                if let Block::Requested(by, _) = b {
                    for k in by {
                        let r = self.block_ref(*p, i as u32);
                        assert!(
                            inflight.get(k).is_some_and(|v| v.contains(&r)),
                            "{k} requested {r:?}"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{build, BuildOptions};
    use std::sync::atomic::AtomicU64;

    fn meta(sizes: &[usize], align: bool) -> (tempfile::TempDir, Metainfo) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        std::fs::create_dir_all(&root).unwrap();
        for (i, s) in sizes.iter().enumerate() {
            std::fs::write(root.join(format!("f{i}")), vec![i as u8; *s]).unwrap();
        }
        let opts = BuildOptions {
            piece_length: Some(32768),
            align_files: align,
            ..Default::default()
        };
        let m = build(&root, &opts, &AtomicU64::new(0)).unwrap().meta;
        (tmp, m)
    }

    #[test]
    fn downloads_everything_once_from_one_peer() {
        let (_t, m) = meta(&[100_000, 5_000, 70_000], false);
        let mut p = Picker::new(&m, Bitfield::new(m.num_pieces()), 1 << 20);
        let seed = Bitfield::full(m.num_pieces());
        p.peer_added(&seed);
        let mut got = std::collections::HashSet::new();
        loop {
            let mut out = Vec::new();
            p.pick(1, &seed, 0, 3, &mut out);
            if out.is_empty() {
                break;
            }
            let mut inflight = HashMap::new();
            inflight.insert(1, out.clone());
            p.check_invariants(&inflight);
            for b in out {
                assert!(got.insert(b), "{b:?} picked twice");
                let data = vec![0u8; b.len as usize];
                if let BlockOutcome::Stored { complete: true, .. } = p.on_block(1, &b, &data) {
                    let buf = p.take_data(b.piece);
                    p.verified(b.piece, true, buf);
                }
            }
        }
        assert!(p.is_complete());
        assert_eq!(
            got.iter().map(|b| b.len as u64).sum::<u64>(),
            m.total_length
        );
    }

    #[test]
    fn padding_is_never_requested() {
        let (_t, m) = meta(&[10_000, 10_000], true);
        assert!(m.files.iter().any(|f| f.pad));
        let mut p = Picker::new(&m, Bitfield::new(m.num_pieces()), 1 << 20);
        let seed = Bitfield::full(m.num_pieces());
        let mut out = Vec::new();
        p.pick(1, &seed, 0, 100, &mut out);
        let requested: u64 = out.iter().map(|b| b.len as u64).sum();
        // Each 10 000-byte file needs one 16 KiB block: the pad-only blocks are skipped.
        assert_eq!(out.len(), 2);
        assert!(requested < m.total_length);
    }

    #[test]
    fn prefers_rare_pieces_and_spreads_out() {
        let (_t, m) = meta(&[32768 * 8], false);
        let mut p = Picker::new(&m, Bitfield::new(8), 1 << 20);
        let seed = Bitfield::full(8);
        let mut common = Bitfield::new(8);
        for i in 0..7 {
            common.set(i);
        }
        p.peer_added(&seed);
        p.peer_added(&common);
        // Piece 7 is held only by the seed: it is the rarest.
        let mut out = Vec::new();
        p.pick(1, &seed, 0, 1, &mut out);
        assert_eq!(out[0].piece, 7);
    }

    #[test]
    fn endgame_duplicates_and_cancels() {
        let (_t, m) = meta(&[16384], false);
        let mut p = Picker::new(&m, Bitfield::new(1), 1 << 20);
        p.endgame_after = Duration::ZERO;
        let seed = Bitfield::full(1);
        let mut a = Vec::new();
        p.pick(1, &seed, 0, 10, &mut a);
        assert_eq!(a.len(), 1);
        assert!(p.endgame());
        let mut b = Vec::new();
        p.pick(2, &seed, 0, 10, &mut b);
        assert_eq!(a, b, "endgame requests the same block from another peer");
        let mut c = Vec::new();
        p.pick(3, &seed, 0, 10, &mut c);
        assert!(c.is_empty(), "at most {ENDGAME_DUPLICATES} requesters");
        let out = p.on_block(2, &b[0], &vec![0; 16384]);
        assert_eq!(
            out,
            BlockOutcome::Stored {
                complete: true,
                cancel: vec![1]
            }
        );
        assert_eq!(
            p.on_block(1, &a[0], &vec![0; 16384]),
            BlockOutcome::Unwanted
        );
    }

    #[test]
    fn endgame_waits_before_duplicating() {
        let (_t, m) = meta(&[16384], false);
        let mut p = Picker::new(&m, Bitfield::new(1), 1 << 20);
        let seed = Bitfield::full(1);
        let mut a = Vec::new();
        p.pick(1, &seed, 0, 10, &mut a);
        let mut b = Vec::new();
        p.pick(2, &seed, 0, 10, &mut b);
        assert!(b.is_empty(), "a fresh request is not duplicated");
        p.endgame_after = Duration::ZERO;
        p.pick(2, &seed, ENDGAME_IDLE, 10, &mut b);
        assert!(b.is_empty(), "a busy peer takes no duplicates");
    }

    #[test]
    fn pieces_are_owned_and_a_failed_piece_is_refetched_from_one_peer() {
        let (_t, m) = meta(&[65536], false);
        let mut p = Picker::new(&m, Bitfield::new(2), 1 << 20);
        let seed = Bitfield::full(2);
        let mut a = Vec::new();
        p.pick(1, &seed, 0, 2, &mut a);
        assert_eq!(a.len(), 2, "both blocks of one piece");
        let mut b = Vec::new();
        p.pick(2, &seed, 0, 1, &mut b);
        assert_ne!(a[0].piece, b[0].piece, "another peer's piece is left to it");
        // Peer 1 delivers one block and is choked: the other block goes back
        // to the pool, the piece has no owner, and peer 3 finishes it.
        p.on_block(1, &a[0], &vec![0; a[0].len as usize]);
        p.release(1, &a[1]);
        let mut c = Vec::new();
        p.pick(3, &seed, 0, 1, &mut c);
        assert_eq!(c, vec![a[1]]);
        assert!(matches!(
            p.on_block(3, &c[0], &vec![0; c[0].len as usize]),
            BlockOutcome::Stored { complete: true, .. }
        ));
        let buf = p.take_data(a[0].piece);
        assert_eq!(
            p.verified(a[0].piece, false, buf),
            vec![Some(1), Some(3)],
            "who sent each block"
        );
        // Refetched from one peer: once peer 1 owns it, peer 3 gets nothing of it.
        let mut a2 = Vec::new();
        p.pick(1, &seed, 0, 1, &mut a2);
        assert_eq!(a2[0].piece, a[0].piece);
        let mut c2 = Vec::new();
        p.pick(3, &seed, 0, 4, &mut c2);
        assert!(c2.iter().all(|r| r.piece != a[0].piece), "{c2:?}");
    }

    #[test]
    fn an_owner_with_nothing_requested_does_not_hold_its_piece_back() {
        let (_t, m) = meta(&[65536], false);
        let mut p = Picker::new(&m, Bitfield::new(2), 1 << 20);
        let seed = Bitfield::full(2);
        let mut a = Vec::new();
        p.pick(1, &seed, 0, 2, &mut a);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].piece, a[1].piece);
        // Peer 1 has one block rejected (it still owns the piece: the other
        // is in flight), then delivers the other: it owns the piece but asks
        // for nothing of it any more, so peer 2 may finish it.
        p.release(1, &a[1]);
        p.on_block(1, &a[0], &vec![0; a[0].len as usize]);
        let mut b = Vec::new();
        p.pick(2, &seed, 0, 1, &mut b);
        assert_eq!(b, vec![a[1]]);
    }

    #[test]
    fn a_block_nobody_asked_that_peer_for_is_unwanted() {
        let (_t, m) = meta(&[32768], false);
        let mut p = Picker::new(&m, Bitfield::new(1), 1 << 20);
        let seed = Bitfield::full(1);
        let mut a = Vec::new();
        p.pick(1, &seed, 0, 1, &mut a);
        assert_eq!(a.len(), 1);
        let other = BlockRef {
            begin: a[0].begin ^ BLOCK_SIZE,
            ..a[0]
        };
        // Peer 2 was asked for nothing; peer 1 was not asked for `other`.
        assert_eq!(p.on_block(2, &a[0], &[7; 16384]), BlockOutcome::Unwanted);
        assert_eq!(p.on_block(1, &other, &[7; 16384]), BlockOutcome::Unwanted);
        // The open block is still open and the requested one still requested.
        let mut inflight = HashMap::new();
        inflight.insert(1, a.clone());
        p.check_invariants(&inflight);
        assert!(matches!(
            p.on_block(1, &a[0], &[0; 16384]),
            BlockOutcome::Stored {
                complete: false,
                ..
            }
        ));
    }

    #[test]
    fn release_reopens_blocks() {
        let (_t, m) = meta(&[32768], false);
        let mut p = Picker::new(&m, Bitfield::new(1), 1 << 20);
        let seed = Bitfield::full(1);
        let mut a = Vec::new();
        p.pick(1, &seed, 0, 2, &mut a);
        for b in &a {
            p.release(1, b);
        }
        let mut again = Vec::new();
        p.pick(2, &seed, 0, 2, &mut again);
        assert_eq!(a, again);
    }
}
