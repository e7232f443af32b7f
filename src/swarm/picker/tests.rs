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
