//! The session's state driven without sockets: messages go in through the
//! dispatcher, what we would send comes out of each peer's writer channel,
//! and `check_invariants` (STATE.md) runs after every event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::messages::{PeerError, VerifyJob};
use super::progress::SessionState;
use super::state::{PeerState, SwarmState};
use crate::metainfo::{build, BuildOptions, Metainfo, BLOCK_SIZE};
use crate::peer::codec::{BlockRef, Message};
use crate::peer::connection::{Outgoing, WriterCounters};
use crate::swarm::bitfield::Bitfield;
use crate::swarm::picker::{PeerKey, Picker};
use crate::swarm::smartban::block_digests;

/// A torrent of `pieces` pieces of 32 KiB (two blocks each) and its data.
fn torrent(pieces: usize) -> (tempfile::TempDir, Arc<Metainfo>, Vec<u8>) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("t");
    std::fs::create_dir_all(&root).unwrap();
    let data: Vec<u8> = (0..pieces * 32768).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("f"), &data).unwrap();
    let opts = BuildOptions {
        piece_length: Some(32768),
        ..Default::default()
    };
    let meta = build(&root, &opts, &std::sync::atomic::AtomicU64::new(0))
        .unwrap()
        .meta;
    (t, Arc::new(meta), data)
}

fn downloading(meta: &Arc<Metainfo>, now: Instant) -> SwarmState {
    let mut st = SwarmState::new(meta.clone(), 4, now);
    st.picker = Some(Picker::new(meta, Bitfield::new(meta.num_pieces()), 1 << 20));
    st.state = SessionState::Downloading;
    st
}

fn connect(st: &mut SwarmState, key: PeerKey, now: Instant) -> mpsc::UnboundedReceiver<Outgoing> {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr: SocketAddr = ([127, 0, 0, 1], 40000 + key as u16).into();
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(&key.to_be_bytes());
    let p = PeerState::new(
        addr,
        Some(([127, 0, 0, 1], 6000 + key as u16).into()),
        id,
        true,
        tx,
        CancellationToken::new(),
        Arc::new(WriterCounters::default()),
        st.meta.num_pieces(),
        now,
    );
    st.by_id.insert(id, key);
    st.peers.insert(key, p);
    rx
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<Outgoing> {
    let mut out = Vec::new();
    while let Ok(o) = rx.try_recv() {
        out.push(o);
    }
    out
}

fn requests(out: &[Outgoing]) -> Vec<BlockRef> {
    out.iter()
        .flat_map(|o| match o {
            Outgoing::Requests(r) => r.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn piece_msg(data: &[u8], b: BlockRef) -> Message {
    let start = b.piece as usize * 32768 + b.begin as usize;
    Message::Piece {
        piece: b.piece,
        begin: b.begin,
        data: Bytes::copy_from_slice(&data[start..start + b.len as usize]),
    }
}

/// What the verifier would decide for a job, applied to the state.
fn judge(st: &mut SwarmState, meta: &Metainfo, job: VerifyJob, now: Instant) -> bool {
    let ok = super::verify::piece_digest(&job.data, meta.piece_len(job.piece))
        == meta.pieces[job.piece as usize];
    let digests = (!ok || job.watched).then(|| block_digests(&job.data));
    st.on_verdict(job.piece, ok, job.data, digests, now);
    ok
}

/// Small files padded to 32 KiB pieces (BEP 47): the padding is never
/// asked for nor buffered, and every piece verifies with it hashed as the
/// zeros it is.
#[test]
fn padded_pieces_verify_with_their_padding_hashed_as_zeros() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("t");
    std::fs::create_dir_all(&root).unwrap();
    for (i, n) in [10_000usize, 40_000, 5_000, 16_384, 20_000]
        .iter()
        .enumerate()
    {
        let bytes: Vec<u8> = (0..*n).map(|j| (j * 7 + i) as u8 | 1).collect();
        std::fs::write(root.join(format!("f{i}")), bytes).unwrap();
    }
    let opts = BuildOptions {
        piece_length: Some(32768),
        align_files: true,
        ..Default::default()
    };
    let meta = Arc::new(
        build(&root, &opts, &std::sync::atomic::AtomicU64::new(0))
            .unwrap()
            .meta,
    );
    assert!(meta.files.iter().any(|f| f.pad));
    // The torrent's bytes, padding included.
    let mut data = Vec::new();
    for f in &meta.files {
        if f.pad {
            data.resize(data.len() + f.length as usize, 0);
        } else {
            data.extend(std::fs::read(root.join(&f.path[0])).unwrap());
        }
    }
    let now = Instant::now();
    let mut st = downloading(&meta, now);
    let mut rx = connect(&mut st, 1, now);
    st.on_message(1, Message::HaveAll, now).unwrap();
    st.on_message(1, Message::Unchoke, now).unwrap();
    let (mut asked, mut buffered) = (0u64, 0u64);
    loop {
        let reqs = requests(&drain(&mut rx));
        if reqs.is_empty() {
            break;
        }
        for b in reqs {
            asked += b.len as u64;
            if let Some(job) = st.on_message(1, piece_msg(&data, b), now).unwrap() {
                buffered += job.data.len() as u64;
                assert!(judge(&mut st, &meta, job, now), "piece {}", b.piece);
            }
            st.check_invariants();
        }
    }
    let picker = st.picker.as_ref().unwrap();
    assert!(picker.is_complete());
    assert_eq!(picker.have_bytes(), meta.total_length);
    assert_eq!(st.hash_failures, 0);
    assert_eq!(
        buffered,
        meta.data_length(),
        "only the files' bytes were buffered"
    );
    assert!(
        asked < meta.total_length,
        "padding-only blocks never asked for"
    );
}

#[test]
fn a_seed_gets_interest_and_requests_after_it_unchokes() {
    let (_t, meta, _) = torrent(4);
    let now = Instant::now();
    let mut st = downloading(&meta, now);
    let mut rx = connect(&mut st, 1, now);
    st.on_message(1, Message::HaveAll, now).unwrap();
    let out = drain(&mut rx);
    assert!(out
        .iter()
        .any(|o| matches!(o, Outgoing::Msg(Message::Interested))));
    assert!(requests(&out).is_empty(), "nothing requested while choked");
    st.on_message(1, Message::Unchoke, now).unwrap();
    assert!(!requests(&drain(&mut rx)).is_empty());
    st.check_invariants();
}

#[test]
fn an_unrequested_block_is_waste_and_touches_no_piece() {
    let (_t, meta, data) = torrent(2);
    let now = Instant::now();
    let mut st = downloading(&meta, now);
    let mut honest = connect(&mut st, 1, now);
    let _stranger = connect(&mut st, 2, now);
    st.on_message(1, Message::HaveAll, now).unwrap();
    st.on_message(1, Message::Unchoke, now).unwrap();
    let asked = requests(&drain(&mut honest));
    let b = asked[0];
    // The stranger sends the very block we asked the honest peer for.
    let job = st
        .on_message(2, piece_msg(&vec![0xee; data.len()], b), now)
        .unwrap();
    assert!(job.is_none());
    assert_eq!(st.wasted, b.len as u64);
    assert!(
        st.picker.as_ref().unwrap().is_requested_by(&b, 1),
        "still the honest peer's"
    );
    st.check_invariants();
}

#[test]
fn a_flood_of_unrequested_blocks_closes_the_connection() {
    let (_t, meta, data) = torrent(2);
    let now = Instant::now();
    let mut st = downloading(&meta, now);
    let _rx = connect(&mut st, 2, now);
    let b = BlockRef {
        piece: 0,
        begin: 0,
        len: BLOCK_SIZE,
    };
    let mut result = Ok(None);
    for _ in 0..1000 {
        result = st.on_message(2, piece_msg(&data, b), now);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result.unwrap_err(), PeerError::Unrequested);
}

#[test]
fn a_choke_gives_back_every_request() {
    let (_t, meta, _) = torrent(4);
    let now = Instant::now();
    let mut st = downloading(&meta, now);
    let mut rx = connect(&mut st, 1, now);
    st.on_message(1, Message::HaveAll, now).unwrap();
    st.on_message(1, Message::Unchoke, now).unwrap();
    assert!(!requests(&drain(&mut rx)).is_empty());
    st.on_message(1, Message::Choke, now).unwrap();
    assert!(st.peers[&1].inflight.is_empty());
    st.check_invariants();
}

#[test]
fn protocol_violations_close_the_connection() {
    let (_t, meta, _) = torrent(2);
    let now = Instant::now();
    let mut st = downloading(&meta, now);
    let _rx = connect(&mut st, 1, now);
    assert_eq!(
        st.on_message(1, Message::Have(9), now).unwrap_err(),
        PeerError::HaveOutOfRange {
            piece: 9,
            pieces: 2
        }
    );
    let b = BlockRef {
        piece: 0,
        begin: 32768,
        len: 1,
    };
    assert_eq!(
        st.on_message(1, Message::Request(b), now).unwrap_err(),
        PeerError::InvalidRequest(b)
    );
    assert_eq!(
        st.on_message(7, Message::KeepAlive, now).unwrap_err(),
        PeerError::Gone
    );
}

#[test]
fn the_smart_ban_blames_only_the_peer_whose_block_was_wrong() {
    let (_t, meta, data) = torrent(1);
    let t0 = Instant::now();
    let mut st = downloading(&meta, t0);
    let mut honest = connect(&mut st, 1, t0);
    let mut liar = connect(&mut st, 2, t0);
    st.on_message(1, Message::HaveAll, t0).unwrap();
    st.on_message(1, Message::Unchoke, t0).unwrap();
    let asked = requests(&drain(&mut honest));
    assert_eq!(asked.len(), 2, "both blocks of the only piece");
    // The honest peer delivers block 0 and rejects block 1...
    assert!(st
        .on_message(1, piece_msg(&data, asked[0]), t0)
        .unwrap()
        .is_none());
    st.on_message(1, Message::Reject(asked[1]), t0).unwrap();
    // ...which the liar then fills with garbage.
    st.on_message(2, Message::HaveAll, t0).unwrap();
    st.on_message(2, Message::Unchoke, t0).unwrap();
    let to_liar = requests(&drain(&mut liar));
    assert_eq!(to_liar, vec![asked[1]]);
    let job = st
        .on_message(2, piece_msg(&vec![0x55; data.len()], asked[1]), t0)
        .unwrap()
        .expect("the piece is complete");
    assert!(!judge(&mut st, &meta, job, t0), "garbage fails");
    assert!(st.bans.active(t0) == 0, "two senders: nobody is banned yet");
    // Refetched (the liar is choked meanwhile): the honest peer sends both.
    st.on_message(2, Message::Choke, t0).unwrap();
    let t1 = t0 + Duration::from_secs(5);
    st.refill(1, t1);
    let again = requests(&drain(&mut honest));
    assert_eq!(again.len(), 2);
    let mut job = None;
    for b in again {
        job = st.on_message(1, piece_msg(&data, b), t1).unwrap().or(job);
    }
    let job = job.expect("complete again");
    assert!(job.watched, "the smart ban watches the piece");
    assert!(judge(&mut st, &meta, job, t1));
    assert!(st.bans.id_banned(&st_id(2), t1), "the liar is banned");
    assert!(!st.bans.id_banned(&st_id(1), t1), "the honest peer is not");
    assert!(
        st.peers[&2].leaving,
        "the liar's connection is being closed"
    );
}

fn st_id(key: PeerKey) -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(&key.to_be_bytes());
    id
}

#[test]
fn a_piece_from_one_peer_that_fails_bans_that_peer_until_the_ban_expires() {
    let (_t, meta, data) = torrent(1);
    let t0 = Instant::now();
    let mut st = downloading(&meta, t0);
    let mut rx = connect(&mut st, 1, t0);
    st.on_message(1, Message::HaveAll, t0).unwrap();
    st.on_message(1, Message::Unchoke, t0).unwrap();
    let mut job = None;
    for b in requests(&drain(&mut rx)) {
        job = st
            .on_message(1, piece_msg(&vec![1; data.len()], b), t0)
            .unwrap()
            .or(job);
    }
    assert!(!judge(&mut st, &meta, job.unwrap(), t0));
    assert!(st.bans.id_banned(&st_id(1), t0));
    let later = t0 + crate::swarm::bans::BAN_BASE;
    assert!(!st.bans.id_banned(&st_id(1), later), "bans expire");
    // The stall check names the failing source.
    assert!(st.check_stall(later, Duration::from_secs(30), None));
    let why = st.stalled.clone().unwrap();
    assert!(
        why.starts_with("the source's data does not match the torrent"),
        "{why}"
    );
}

#[test]
fn a_download_without_peers_reports_a_stall_with_the_tracker_error() {
    let (_t, meta, _) = torrent(1);
    let t0 = Instant::now();
    let mut st = downloading(&meta, t0);
    let after = Duration::from_secs(30);
    assert!(
        !st.check_stall(t0 + Duration::from_secs(10), after, None),
        "not yet"
    );
    assert!(st.check_stall(
        t0 + after,
        after,
        Some("tracker http://m/announce: connection refused".into())
    ));
    assert!(st
        .stalled
        .as_deref()
        .unwrap()
        .contains("connection refused"));
    assert!(
        !st.check_stall(t0 + after, after, None),
        "once per interval"
    );
}

// ------------------------------------------------------------ the property test

#[derive(Debug, Clone)]
enum Event {
    Connect,
    Have(u8, u32),
    Bitfield(u8, Vec<bool>),
    HaveAll(u8),
    Unchoke(u8),
    Choke(u8),
    /// A block: one it was asked for (by index), or any if none.
    Piece {
        peer: u8,
        pick: usize,
        corrupt: bool,
    },
    Reject(u8, usize),
    Disconnect(u8),
    Tick(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Connect),
        (0u8..6, 0u32..8).prop_map(|(p, i)| Event::Have(p, i)),
        (0u8..6, proptest::collection::vec(any::<bool>(), 6))
            .prop_map(|(p, b)| Event::Bitfield(p, b)),
        (0u8..6).prop_map(Event::HaveAll),
        (0u8..6).prop_map(Event::Unchoke),
        (0u8..6).prop_map(Event::Choke),
        (0u8..6, 0usize..64, prop::bool::weighted(0.15)).prop_map(|(peer, pick, corrupt)| {
            Event::Piece {
                peer,
                pick,
                corrupt,
            }
        }),
        (0u8..6, 0usize..64).prop_map(|(p, i)| Event::Reject(p, i)),
        (0u8..6).prop_map(Event::Disconnect),
        (1u64..40).prop_map(Event::Tick),
    ]
}

struct Sim {
    st: SwarmState,
    meta: Arc<Metainfo>,
    data: Vec<u8>,
    keys: Vec<PeerKey>,
    rxs: Vec<mpsc::UnboundedReceiver<Outgoing>>,
    next: PeerKey,
    now: Instant,
}

impl Sim {
    fn key(&self, p: u8) -> Option<PeerKey> {
        (!self.keys.is_empty()).then(|| self.keys[p as usize % self.keys.len()])
    }

    fn send(&mut self, key: PeerKey, msg: Message) {
        match self.st.on_message(key, msg, self.now) {
            Ok(Some(job)) => {
                judge(&mut self.st, &self.meta, job, self.now);
            }
            Ok(None) => {}
            Err(_) => self.disconnect(key),
        }
    }

    fn disconnect(&mut self, key: PeerKey) {
        self.st.forget_peer(key, self.now);
        if let Some(i) = self.keys.iter().position(|k| *k == key) {
            self.keys.remove(i);
            self.rxs.remove(i);
        }
    }

    fn apply(&mut self, e: Event) {
        let n = self.meta.num_pieces();
        match e {
            Event::Connect => {
                self.next += 1;
                let rx = connect(&mut self.st, self.next, self.now);
                self.keys.push(self.next);
                self.rxs.push(rx);
            }
            Event::Have(p, i) => {
                if let Some(k) = self.key(p) {
                    self.send(k, Message::Have(i % n));
                }
            }
            Event::Bitfield(p, bits) => {
                if let Some(k) = self.key(p) {
                    let mut b = Bitfield::new(n);
                    for (i, on) in bits.iter().enumerate().take(n as usize) {
                        if *on {
                            b.set(i as u32);
                        }
                    }
                    self.send(k, Message::Bitfield(Bytes::copy_from_slice(b.as_bytes())));
                }
            }
            Event::HaveAll(p) => {
                if let Some(k) = self.key(p) {
                    self.send(k, Message::HaveAll);
                }
            }
            Event::Unchoke(p) => {
                if let Some(k) = self.key(p) {
                    self.send(k, Message::Unchoke);
                }
            }
            Event::Choke(p) => {
                if let Some(k) = self.key(p) {
                    self.send(k, Message::Choke);
                }
            }
            Event::Piece {
                peer,
                pick,
                corrupt,
            } => {
                let Some(k) = self.key(peer) else { return };
                let inflight: Vec<BlockRef> = self.st.peers[&k].inflight.iter().copied().collect();
                let b = if inflight.is_empty() {
                    BlockRef {
                        piece: (pick as u32) % n,
                        begin: (pick as u32 % 2) * BLOCK_SIZE,
                        len: BLOCK_SIZE,
                    }
                } else {
                    inflight[pick % inflight.len()]
                };
                let src = if corrupt {
                    vec![0xab; self.data.len()]
                } else {
                    self.data.clone()
                };
                self.send(k, piece_msg(&src, b));
            }
            Event::Reject(p, pick) => {
                let Some(k) = self.key(p) else { return };
                let inflight: Vec<BlockRef> = self.st.peers[&k].inflight.iter().copied().collect();
                if !inflight.is_empty() {
                    self.send(k, Message::Reject(inflight[pick % inflight.len()]));
                }
            }
            Event::Disconnect(p) => {
                if let Some(k) = self.key(p) {
                    self.disconnect(k);
                }
            }
            Event::Tick(secs) => {
                self.now += Duration::from_secs(secs);
                self.st.refill_all(self.now);
            }
        }
        for rx in &mut self.rxs {
            drain(rx);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random peers doing random things never break STATE.md's invariants,
    /// and every verified piece is the right data.
    #[test]
    fn random_peer_events_keep_the_invariants(events in proptest::collection::vec(event(), 1..80)) {
        let (_t, meta, data) = torrent(6);
        let now = Instant::now();
        let mut sim = Sim {
            st: downloading(&meta, now),
            meta: meta.clone(),
            data,
            keys: Vec::new(),
            rxs: Vec::new(),
            next: 0,
            now,
        };
        for e in events {
            sim.apply(e);
            sim.st.check_invariants();
        }
        let have = sim.st.picker.as_ref().unwrap().have().count();
        prop_assert!(have <= meta.num_pieces());
    }
}
