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
mod tests {
    use super::*;
    use crate::metainfo::{build, BuildOptions, FileEntry};
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

    const MIB: u64 = 1 << 20;

    /// A torrent laid out without data: `files` are (length, padding?).
    fn layout(piece_length: u64, files: &[(u64, bool)]) -> Metainfo {
        let mut offset = 0;
        let files: Vec<FileEntry> = files
            .iter()
            .enumerate()
            .map(|(i, &(length, pad))| {
                let f = FileEntry {
                    path: vec![format!("f{i}")],
                    length,
                    offset,
                    pad,
                };
                offset += length;
                f
            })
            .collect();
        Metainfo {
            info_hash: crate::metainfo::InfoHash([0; 20]),
            name: "t".into(),
            piece_length,
            pieces: vec![[0; 20]; offset.div_ceil(piece_length) as usize],
            files,
            total_length: offset,
            single_file: false,
            announce: Vec::new(),
            ssl_cert: None,
        }
    }

    /// Every peer tops its pipeline up to `depth` blocks, `rounds` times.
    fn refill(
        p: &mut Picker,
        has: &Bitfield,
        inflight: &mut HashMap<PeerKey, Vec<BlockRef>>,
        peers: u64,
        depth: usize,
        rounds: usize,
    ) {
        for _ in 0..rounds {
            for k in 1..=peers {
                let v = inflight.entry(k).or_default();
                let mut out = Vec::new();
                p.pick(k, has, v.len(), depth.saturating_sub(v.len()), &mut out);
                v.extend(out);
            }
        }
    }

    /// #8: at 8 MiB pieces the replicas held 147–179 MiB, because the
    /// slack for idle peers was eight *pieces* past a budget of four.
    #[test]
    fn piece_buffers_stay_within_the_byte_budget_at_8_mib_pieces() {
        let m = layout(8 * MIB, &[(12 * 8 * MIB, false)]);
        let budget = 24 * MIB;
        let limit = budget + 8 * MIB;
        let mut p = Picker::new(&m, Bitfield::new(m.num_pieces()), budget);
        let seed = Bitfield::full(m.num_pieces());
        for _ in 0..3 {
            p.peer_added(&seed);
        }
        // Eight peers with 1024-block pipelines (16 MiB each) asking again
        // and again, delivering nothing.
        let mut inflight = HashMap::new();
        refill(&mut p, &seed, &mut inflight, 8, 1024, 4);
        p.check_invariants(&inflight);
        assert!(
            p.buffered_bytes() <= limit,
            "{} MiB of piece buffers for a 24 MiB budget",
            p.buffered_bytes() / MIB
        );
        let busy = inflight.values().filter(|v| !v.is_empty()).count();
        assert!(busy >= 3, "the budget feeds several peers ({busy})");
        // Deliver everything: finished pieces make room for new ones, and
        // the bound holds at every step.
        let mut delivered = 0u64;
        while !p.is_complete() {
            let keys: Vec<PeerKey> = inflight.keys().copied().collect();
            for k in keys {
                for b in std::mem::take(inflight.get_mut(&k).unwrap()) {
                    let data = vec![1u8; b.len as usize];
                    if let BlockOutcome::Stored { complete: true, .. } = p.on_block(k, &b, &data) {
                        let buf = p.take_data(b.piece);
                        p.verified(b.piece, true, buf);
                    }
                    delivered += b.len as u64;
                }
            }
            refill(&mut p, &seed, &mut inflight, 8, 1024, 1);
            p.check_invariants(&inflight);
            assert!(p.buffered_bytes() <= limit, "{}", p.buffered_bytes());
        }
        assert_eq!(delivered, m.total_length);
        assert_eq!(p.have_bytes(), m.total_length);
    }

    /// A piece larger than the whole budget still downloads, one at a time.
    #[test]
    fn a_piece_larger_than_the_budget_is_fetched_alone() {
        let m = layout(32 * MIB, &[(3 * 32 * MIB, false)]);
        let mut p = Picker::new(&m, Bitfield::new(3), 24 * MIB);
        let seed = Bitfield::full(3);
        let mut inflight = HashMap::new();
        refill(&mut p, &seed, &mut inflight, 4, 4096, 2);
        p.check_invariants(&inflight);
        let pieces: std::collections::HashSet<u32> =
            inflight.values().flatten().map(|b| b.piece).collect();
        assert_eq!(pieces.len(), 1, "one piece at a time");
        assert_eq!(p.buffered_bytes(), 32 * MIB);
    }

    /// Padding is virtual zeros: a small file padded to an 8 MiB piece
    /// takes a buffer of its own size, not of the piece's.
    #[test]
    fn padding_takes_no_buffer_space() {
        let mut files = Vec::new();
        for _ in 0..5 {
            files.push((9_000, false));
            files.push((8 * MIB - 9_000, true));
        }
        files.push((9_000, false));
        let m = layout(8 * MIB, &files);
        assert_eq!(m.num_pieces(), 6);
        let mut p = Picker::new(&m, Bitfield::new(6), 24 * MIB);
        let seed = Bitfield::full(6);
        let mut out = Vec::new();
        p.pick(1, &seed, 0, 1024, &mut out);
        assert_eq!(out.len(), 6, "one block a piece: {out:?}");
        assert_eq!(p.buffered_bytes(), 6 * 9_000, "no byte for padding");
        let mut inflight = HashMap::new();
        inflight.insert(1, out.clone());
        p.check_invariants(&inflight);
        for b in &out {
            // The block carries the file's bytes and, past them, zeros.
            let mut data = vec![0u8; b.len as usize];
            data[..9_000].fill(7);
            assert_eq!(
                p.on_block(1, b, &data),
                BlockOutcome::Stored {
                    complete: true,
                    cancel: vec![]
                }
            );
            assert_eq!(p.take_data(b.piece), vec![7u8; 9_000]);
        }
    }

    /// Padding ranges, merged and found by binary search (a linear scan per
    /// block made picking O(pieces × files): a quarter of the replica's CPU
    /// at 50,000 files).
    #[test]
    fn padding_lookup_is_exact_and_fast_with_many_files() {
        let n = 50_000;
        let piece = 256 * 1024;
        let mut files = Vec::new();
        for i in 0..n {
            let len = 1_000 + (i as u64 % 15) * 1_000;
            files.push((len, false));
            if i + 1 < n {
                // Two pads back to back, merged into one range.
                files.push((1_000, true));
                files.push((piece - len - 1_000, true));
            }
        }
        let m = layout(piece, &files);
        let started = std::time::Instant::now();
        let mut p = Picker::new(&m, Bitfield::new(m.num_pieces()), 24 * MIB);
        assert_eq!(p.pads.len(), n - 1, "adjacent pads merged");
        assert!(!p.is_pad(&p.block_ref(0, 0)), "data first");
        assert!(p.is_pad(&p.block_ref(0, 1)));
        assert_eq!(p.buffer_len(0), 1_000);
        assert_eq!(p.buffer_len(n as u32 - 1), m.piece_len(n as u32 - 1));
        let seed = Bitfield::full(m.num_pieces());
        let mut bytes = 0;
        while !p.is_complete() {
            let mut out = Vec::new();
            p.pick(1, &seed, 0, 1024, &mut out);
            for b in out {
                let data = vec![0u8; b.len as usize];
                if let BlockOutcome::Stored { complete: true, .. } = p.on_block(1, &b, &data) {
                    let buf = p.take_data(b.piece);
                    p.verified(b.piece, true, buf);
                    // What every progress report reads.
                    bytes = p.have_bytes();
                }
            }
        }
        assert_eq!(bytes, m.total_length);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "{n} padded files took {took:?}"
        );
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
