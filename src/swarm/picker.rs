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
//! Memory: each active piece owns one buffer, as long as the piece's bytes
//! up to its trailing BEP 47 padding (padding is virtual zeros: hashed as
//! zeros, never stored; see `storage`). The bytes of those buffers are
//! counted against a byte budget, and so is the slack an otherwise idle
//! peer may use: memory depends on the budget, not on the piece length or
//! the torrent's size.

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
/// A peer that would otherwise sit idle may open pieces past the budget, by
/// at most this many pieces ...
const SLACK_PIECES: u64 = 8;
/// ... and at most this share of the budget (at 8 MiB pieces, eight
/// pieces would be 64 MiB past a 24 MiB budget).
const SLACK_DIVISOR: u64 = 3;

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
    /// The piece's bytes up to its trailing padding (none of it is stored).
    data: Vec<u8>,
    /// Bytes of memory the buffer holds, counted in `Picker::buffered`
    /// until the verdict (also while the verifier has the buffer).
    held: u64,
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
    /// Bytes of the pieces in `have`, kept as pieces verify (summing them
    /// for every progress report is quadratic over a download).
    have_bytes: u64,
    availability: Vec<u32>,
    active: HashMap<u32, Active>,
    /// Pieces neither had nor active: what a new piece is chosen from.
    /// A piece leaves it once, when it becomes active (a failed piece
    /// stays active), so it only ever shrinks.
    wanted: Bitfield,
    /// Bytes of piece buffers new pieces may take.
    budget: u64,
    /// How far past `budget` a peer with nothing else to do may go.
    slack: u64,
    /// Bytes held by the buffers of active pieces (verifying ones included).
    buffered: u64,
    /// Whole-piece buffers of finished pieces, kept for reuse (a fresh
    /// buffer costs page faults) while they fit in the budget.
    spare: Vec<Vec<u8>>,
    /// Bytes held by `spare`.
    spare_bytes: u64,
    /// Byte ranges inside the torrent that are padding, sorted, adjacent
    /// ones merged: never requested, never buffered when they end a piece.
    pads: Vec<(u64, u64)>,
    /// A block is duplicated in endgame only after waiting this long.
    endgame_after: Duration,
}

impl Picker {
    pub fn new(meta: &Metainfo, have: Bitfield, budget_bytes: u64) -> Picker {
        let n = meta.num_pieces();
        // Files are in offset order, so the ranges come out sorted.
        let mut pads: Vec<(u64, u64)> = Vec::new();
        for f in meta.files.iter().filter(|f| f.pad && f.length > 0) {
            let (s, e) = (f.offset, f.offset + f.length);
            match pads.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => pads.push((s, e)),
            }
        }
        let have_bytes = have
            .ones()
            .map(|i| Metainfo::piece_len_of(meta.piece_length, meta.total_length, i))
            .sum();
        let mut wanted = Bitfield::new(n);
        for p in (0..n).filter(|&p| !have.get(p)) {
            wanted.set(p);
        }
        Picker {
            piece_length: meta.piece_length,
            total_length: meta.total_length,
            num_pieces: n,
            wanted,
            have,
            have_bytes,
            availability: vec![0; n as usize],
            active: HashMap::new(),
            budget: budget_bytes,
            slack: (SLACK_PIECES * meta.piece_length).min(budget_bytes / SLACK_DIVISOR),
            buffered: 0,
            spare: Vec::new(),
            spare_bytes: 0,
            pads,
            endgame_after: ENDGAME_AFTER,
        }
    }

    /// Bytes of the pieces we have.
    pub fn have_bytes(&self) -> u64 {
        self.have_bytes
    }

    /// Bytes held in piece buffers: active pieces and spares.
    #[cfg(test)]
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered + self.spare_bytes
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

    /// The padding range holding torrent offset `at`, if any.
    fn pad_at(&self, at: u64) -> Option<(u64, u64)> {
        let i = self.pads.partition_point(|&(s, _)| s <= at);
        i.checked_sub(1)
            .map(|i| self.pads[i])
            .filter(|&(_, e)| at < e)
    }

    /// True when the block lies entirely in padding.
    fn is_pad(&self, b: &BlockRef) -> bool {
        let start = b.piece as u64 * self.piece_length + b.begin as u64;
        let end = start + b.len as u64;
        self.pad_at(start).is_some_and(|(_, e)| end <= e)
    }

    /// The bytes of `piece` that need a buffer: all of it but the padding
    /// that runs to its end.
    fn buffer_len(&self, piece: u32) -> u64 {
        let start = piece as u64 * self.piece_length;
        let end = start + self.piece_len(piece);
        match self.pad_at(end - 1) {
            Some((s, e)) if e >= end => s.max(start) - start,
            _ => end - start,
        }
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
        // 2. New pieces, rarest first, while their buffers fit the budget.
        // A peer with nothing to do may go past it by the slack; one piece
        // may always be active, however large.
        while out.len() - start_len < want {
            let limit = if out.len() == start_len {
                self.budget + self.slack
            } else {
                self.budget
            };
            if self.buffered > 0 && self.buffered >= limit {
                break;
            }
            let Some(p) = self.rarest_new(has) else { break };
            if self.buffered > 0 && self.buffered + self.buffer_len(p) > limit {
                break;
            }
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
        if self.num_pieces == 0 {
            return None;
        }
        // A random start spreads peers over pieces of equal rarity.
        let start = rand::thread_rng().gen_range(0..self.num_pieces);
        let mut best: Option<(u32, u32)> = None;
        for p in self.wanted.ones_in_both_from(has, start) {
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
        let need = self.buffer_len(piece) as usize;
        // A spare (a whole piece's buffer) for a piece that fills most of
        // one; a buffer of its own size for the rest.
        let mut data = match self.spare.pop() {
            Some(b) if need as u64 * 2 > self.piece_length => {
                self.spare_bytes -= b.capacity() as u64;
                b
            }
            other => {
                self.spare.extend(other);
                Vec::new()
            }
        };
        if data.capacity() == 0 {
            // Zeroed by the allocator: untouched pages cost nothing yet.
            data = vec![0u8; need];
        } else {
            data.resize(need, 0);
        }
        let held = data.capacity() as u64;
        self.buffered += held;
        self.trim_spares();
        let nblocks = self.blocks_in(piece);
        let mut a = Active {
            blocks: vec![Block::Open; nblocks as usize],
            open: nblocks,
            received: 0,
            data,
            held,
            verifying: false,
            owner: None,
        };
        self.mark_padding(piece, &mut a);
        self.wanted.clear(piece);
        self.active.insert(piece, a);
    }

    /// Marks the padding blocks of a piece received (never requested):
    /// those past its buffer hold nothing, those inside it (padding before
    /// more data, which only unusual torrents have) are zeroed.
    fn mark_padding(&self, piece: u32, a: &mut Active) {
        let stored = a.data.len() as u64;
        for i in 0..a.blocks.len() {
            let r = self.block_ref(piece, i as u32);
            let past = r.begin as u64 >= stored;
            if past || self.is_pad(&r) {
                if !past {
                    a.data[r.begin as usize..(r.begin + r.len) as usize].fill(0);
                }
                if a.blocks[i] == Block::Open {
                    a.open -= 1;
                }
                a.blocks[i] = Block::Received(0);
                a.received += 1;
            }
        }
    }

    /// Drops spare buffers that would take the picker past its budget and slack.
    fn trim_spares(&mut self) {
        while self.buffered + self.spare_bytes > self.budget + self.slack {
            let Some(b) = self.spare.pop() else { break };
            self.spare_bytes -= b.capacity() as u64;
        }
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
        // The part of a block that lies in the piece's trailing padding is
        // not stored: it is hashed as the zeros it must be.
        let begin = block.begin as usize;
        let end = (begin + data.len()).min(a.data.len());
        if begin >= end {
            return BlockOutcome::Unwanted;
        }
        a.data[begin..end].copy_from_slice(&data[..end - begin]);
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
            if let Some(a) = self.active.remove(&piece) {
                self.buffered -= a.held;
            }
            self.have.set(piece);
            self.have_bytes += self.piece_len(piece);
            // Keep a whole-piece buffer for the next piece while it fits
            // (freeing and allocating again costs page faults, and with
            // buffers freed on other threads than they were allocated on,
            // resident memory that the allocator keeps).
            let cap = buf.capacity() as u64;
            let room = self.budget + self.slack;
            if cap == self.piece_length && self.buffered + self.spare_bytes + cap <= room {
                buf.clear();
                self.spare.push(buf);
                self.spare_bytes += cap;
            }
        } else {
            a.data = buf;
            a.verifying = false;
            a.owner = None;
            a.received = 0;
            a.open = a.blocks.len() as u32;
            a.blocks.fill(Block::Open);
            // Padding blocks stay received.
            if let Some(mut a) = self.active.remove(&piece) {
                self.mark_padding(piece, &mut a);
                self.active.insert(piece, a);
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
        let held: u64 = self.active.values().map(|a| a.held).sum();
        assert_eq!(held, self.buffered, "buffered bytes");
        for p in 0..self.num_pieces {
            let wanted = !self.have.get(p) && !self.active.contains_key(&p);
            assert_eq!(self.wanted.get(p), wanted, "piece {p} wanted");
        }
        let spare: u64 = self.spare.iter().map(|b| b.capacity() as u64).sum();
        assert_eq!(spare, self.spare_bytes, "spare bytes");
        assert!(
            self.buffered + self.spare_bytes <= self.budget + self.slack
                || (self.active.len() == 1 && self.spare.is_empty()),
            "{} bytes buffered and {} spare, past the budget {} + slack {}",
            self.buffered,
            self.spare_bytes,
            self.budget,
            self.slack
        );
        for (p, a) in &self.active {
            if !a.verifying {
                assert_eq!(
                    a.data.len() as u64,
                    self.buffer_len(*p),
                    "piece {p} buffers its bytes up to its trailing padding"
                );
            }
            assert!(!self.have.get(*p), "piece {p} both had and active");
            assert!(!self.wanted.get(*p), "piece {p} both wanted and active");
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
mod tests;
