//! One handler per peer message. [`SwarmState::on_message`] only routes;
//! each handler updates the state and queues what to send. A handler's
//! `Err` closes that connection, with the reason in the log.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::state::{SwarmState, MAX_DEPTH, MIN_DEPTH};
use crate::metainfo::BLOCK_SIZE;
use crate::peer::codec::{BlockRef, Message};
use crate::peer::connection::Outgoing;
use crate::swarm::bitfield::Bitfield;
use crate::swarm::picker::{BlockOutcome, PeerKey};

/// Items queued for one connection's writer before we give up on the peer
/// (it sends, but does not read what we send back).
const MAX_PENDING_WRITES: u64 = 16_384;
/// Piece maps (bitfield, have-all) we accept from one peer: aria2 sends a
/// late second one; more than a few is abuse.
const MAX_PIECE_MAPS: u32 = 4;
/// Requests we queue for one peer before refusing more.
pub(crate) const MAX_PEER_REQUESTS: u64 = 2048;
/// Duplicates and late blocks we tolerate from one peer before dropping it.
const MAX_WASTE: u64 = 32 << 20;
/// Blocks nobody asked a peer for. A few arrive honestly (a block already
/// on the wire when we cancelled it or the peer choked us); a stranger
/// spraying garbage reaches this quickly and is dropped.
const MAX_UNREQUESTED: u64 = 8 << 20;
/// A seeder serves a piece to one peer at a time for this long: a second
/// peer asking for it meanwhile is rejected (fast extension) and fetches it
/// from the first once that one has it. Without this, leechers that pick the
/// same rare piece at once make the seeder, the scarcest uplink, send it
/// twice (measured: a quarter of a seeder's bytes with eight leechers).
const SERVE_EXCLUSIVE: Duration = Duration::from_secs(5);
/// How long we leave a piece alone after a peer rejected it.
const AVOID_AFTER_REJECT: Duration = Duration::from_secs(3);

/// Why we close a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("the session is not ready")]
    NotReady,
    #[error("the connection is no longer registered")]
    Gone,
    #[error("peer does not read what we send")]
    NotReading,
    #[error("fast-extension message without the fast extension")]
    FastWithoutFast,
    #[error("keeps resending its piece map")]
    PieceMapResent,
    #[error("have for piece {piece} of {pieces}")]
    HaveOutOfRange { piece: u32, pieces: u32 },
    #[error("invalid request {0:?}")]
    InvalidRequest(BlockRef),
    #[error("too many outstanding requests")]
    TooManyRequests,
    #[error("piece message outside the torrent ({piece}, {begin}, {len})")]
    PieceOutside { piece: u32, begin: u32, len: u32 },
    #[error("too much duplicate or late data")]
    TooMuchWaste,
    #[error("too many blocks nobody asked it for")]
    Unrequested,
    #[error("both are seeds")]
    BothSeeds,
}

/// A piece whose last block arrived: hash it (and keep block digests when
/// the smart ban watches it).
#[derive(Debug)]
pub struct VerifyJob {
    pub piece: u32,
    pub data: Vec<u8>,
    pub watched: bool,
}

/// Messages that cannot change what we want from or give to a peer: they
/// skip the interest, choke and pipeline updates after handling.
fn changes_state(msg: &Message) -> bool {
    !matches!(
        msg,
        Message::KeepAlive
            | Message::Port(_)
            | Message::Suggest(_)
            | Message::AllowedFast(_)
            | Message::Unknown(_)
            | Message::Extended { .. }
            | Message::Request(_)
            | Message::Cancel(_)
    )
}

impl SwarmState {
    /// Routes one message from peer `key` to its handler.
    pub fn on_message(
        &mut self,
        key: PeerKey,
        msg: Message,
        now: Instant,
    ) -> Result<Option<VerifyJob>, PeerError> {
        if self.picker.is_none() {
            return Err(PeerError::NotReady);
        }
        let p = self.peers.get(&key).ok_or(PeerError::Gone)?;
        if p.writer.pending.load(Ordering::Relaxed) > MAX_PENDING_WRITES {
            return Err(PeerError::NotReading);
        }
        let refresh = changes_state(&msg);
        let mut job = None;
        match msg {
            Message::KeepAlive
            | Message::Port(_)
            | Message::Suggest(_)
            | Message::AllowedFast(_)
            | Message::Unknown(_)
            | Message::HaveNone => self.require_fast_for(key, &msg)?,
            Message::Bitfield(bytes) => self.on_bitfield(key, &bytes)?,
            Message::HaveAll => self.on_have_all(key)?,
            Message::Have(piece) => self.on_have(key, piece)?,
            Message::Choke => self.set_choked(key),
            Message::Unchoke => self.on_unchoke(key, now),
            Message::Interested => self.set_peer_interested(key, true),
            Message::NotInterested => self.set_peer_interested(key, false),
            Message::Request(b) => self.on_request(key, b, now)?,
            Message::Cancel(b) => self.on_cancel(key, b),
            Message::Reject(b) => self.on_reject(key, b, now),
            Message::Extended { id: 0, payload } => self.on_ext_handshake(key, &payload),
            Message::Extended {
                id: crate::peer::pex::OUR_PEX_ID,
                payload,
            } => self.on_pex(key, &payload),
            Message::Extended { .. } => {}
            Message::Piece { piece, begin, data } => {
                job = self.on_piece(key, piece, begin, data, now)?;
            }
        }
        self.after_message(key, refresh, now)?;
        Ok(job)
    }

    fn after_message(
        &mut self,
        key: PeerKey,
        refresh: bool,
        now: Instant,
    ) -> Result<(), PeerError> {
        let we_complete = self.picker.as_ref().is_some_and(|p| p.is_complete());
        if let Some(p) = self.peers.get(&key) {
            if we_complete && p.has.is_full() {
                if let Some(k) = p.listen_addr.and_then(|a| self.known.get_mut(&a)) {
                    k.seed = true;
                }
                return Err(PeerError::BothSeeds);
            }
        }
        if refresh {
            self.update_interest(key);
            self.maybe_unchoke(key);
            self.refill(key, now);
        }
        Ok(())
    }

    fn require_fast_for(&self, key: PeerKey, msg: &Message) -> Result<(), PeerError> {
        let fast = self.peers.get(&key).is_some_and(|p| p.fast);
        if matches!(msg, Message::HaveNone) && !fast {
            return Err(PeerError::FastWithoutFast);
        }
        Ok(())
    }

    fn count_piece_map(&mut self, key: PeerKey) -> Result<(), PeerError> {
        let p = self.peers.get_mut(&key).ok_or(PeerError::Gone)?;
        // BEP 3 wants the piece map first, but aria2 sends `have`s and then
        // a bitfield; merging keeps us interoperable.
        if p.piece_maps >= MAX_PIECE_MAPS {
            return Err(PeerError::PieceMapResent);
        }
        p.piece_maps += 1;
        Ok(())
    }

    fn on_bitfield(&mut self, key: PeerKey, bytes: &Bytes) -> Result<(), PeerError> {
        self.count_piece_map(key)?;
        let incoming = Bitfield::from_bytes(bytes, self.meta.num_pieces());
        for i in incoming.ones() {
            self.note_has(key, i);
        }
        Ok(())
    }

    fn on_have_all(&mut self, key: PeerKey) -> Result<(), PeerError> {
        if !self.peers.get(&key).is_some_and(|p| p.fast) {
            return Err(PeerError::FastWithoutFast);
        }
        self.count_piece_map(key)?;
        for i in 0..self.meta.num_pieces() {
            self.note_has(key, i);
        }
        Ok(())
    }

    fn on_have(&mut self, key: PeerKey, piece: u32) -> Result<(), PeerError> {
        let pieces = self.meta.num_pieces();
        if piece >= pieces {
            return Err(PeerError::HaveOutOfRange { piece, pieces });
        }
        self.note_has(key, piece);
        // The peer we served it to has it: others can fetch it there.
        if self.serving.get(&piece).is_some_and(|e| e.0 == key) {
            self.serving.remove(&piece);
        }
        Ok(())
    }

    fn on_unchoke(&mut self, key: PeerKey, now: Instant) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.peer_choking = false;
            // The snub clock starts now, not at our last block.
            p.last_block = now;
        }
    }

    fn set_peer_interested(&mut self, key: PeerKey, interested: bool) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.peer_interested = interested;
        }
    }

    /// While seeding, is `b` a piece we are serving to another peer first?
    fn served_elsewhere(&self, key: PeerKey, b: &BlockRef) -> bool {
        match self.serving.get(&b.piece) {
            Some(&(first, since)) => {
                first != key
                    && since.elapsed() < SERVE_EXCLUSIVE
                    && self.peers.get(&first).is_some_and(|o| !o.has.get(b.piece))
            }
            None => false,
        }
    }

    fn on_request(&mut self, key: PeerKey, b: BlockRef, now: Instant) -> Result<(), PeerError> {
        let n = self.meta.num_pieces();
        let valid = b.piece < n
            && b.len > 0
            && b.begin as u64 + b.len as u64 <= self.meta.piece_len(b.piece);
        if !valid {
            return Err(PeerError::InvalidRequest(b));
        }
        let (have, complete) = self
            .picker
            .as_ref()
            .map(|p| (p.have().get(b.piece), p.is_complete()))
            .unwrap_or((false, false));
        let redundant = complete && self.served_elsewhere(key, &b);
        let p = self.peers.get_mut(&key).ok_or(PeerError::Gone)?;
        if p.am_choking || !have || (redundant && p.fast) {
            if p.fast {
                p.send(Outgoing::Msg(Message::Reject(b)));
            }
            return Ok(());
        }
        if p.writer.queued_uploads.load(Ordering::Relaxed) >= MAX_PEER_REQUESTS {
            if !p.fast {
                return Err(PeerError::TooManyRequests);
            }
            p.send(Outgoing::Msg(Message::Reject(b)));
            return Ok(());
        }
        p.writer.queued_uploads.fetch_add(1, Ordering::Relaxed);
        p.last_payload = now;
        p.send(Outgoing::Upload(b));
        if let Some(c) = self.served_blocks.get_mut(b.piece as usize) {
            *c = c.saturating_add(1);
        }
        if complete {
            self.serving.entry(b.piece).or_insert((key, now));
        }
        Ok(())
    }

    fn on_cancel(&mut self, key: PeerKey, b: BlockRef) {
        if let Some(p) = self.peers.get(&key) {
            p.send(Outgoing::CancelUpload(b));
        }
    }

    fn on_reject(&mut self, key: PeerKey, b: BlockRef, now: Instant) {
        let SwarmState { picker, peers, .. } = self;
        let (Some(picker), Some(p)) = (picker.as_mut(), peers.get_mut(&key)) else {
            return;
        };
        if p.inflight.remove(&b) {
            picker.release(key, &b);
            p.avoid.insert(b.piece, now + AVOID_AFTER_REJECT);
        }
    }

    fn on_ext_handshake(&mut self, key: PeerKey, payload: &[u8]) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let ext = crate::peer::connection::decode_ext_handshake(payload);
        if let Some(q) = ext.reqq {
            p.reqq = (q as usize).clamp(1, MAX_DEPTH);
        }
        if let (Some(port), None) = (ext.listen_port, p.listen_addr) {
            if port != 0 {
                p.listen_addr = Some(SocketAddr::new(p.addr.ip(), port));
            }
        }
        p.client = ext.client;
        p.ut_pex = ext.ut_pex;
    }

    /// A block arrived. Only a block we asked this peer for is stored; any
    /// other is waste, counted and dropped.
    fn on_piece(
        &mut self,
        key: PeerKey,
        piece: u32,
        begin: u32,
        data: Bytes,
        now: Instant,
    ) -> Result<Option<VerifyJob>, PeerError> {
        let len = data.len() as u32;
        if piece >= self.meta.num_pieces()
            || len == 0
            || begin as u64 + len as u64 > self.meta.piece_len(piece)
        {
            return Err(PeerError::PieceOutside { piece, begin, len });
        }
        let block = BlockRef { piece, begin, len };
        self.downloaded += len as u64;
        let p = self.peers.get_mut(&key).ok_or(PeerError::Gone)?;
        p.down_total += len as u64;
        if !p.inflight.remove(&block) {
            tracing::debug!(?block, "unrequested block dropped");
            p.unrequested += len as u64;
            self.wasted += len as u64;
            return if p.unrequested > MAX_UNREQUESTED {
                Err(PeerError::Unrequested)
            } else {
                Ok(None)
            };
        }
        p.last_block = now;
        p.last_payload = now;
        if p.depth < 4 {
            p.depth = MIN_DEPTH; // no longer snubbed
        }
        self.store_block(key, block, &data)
    }

    fn store_block(
        &mut self,
        key: PeerKey,
        block: BlockRef,
        data: &[u8],
    ) -> Result<Option<VerifyJob>, PeerError> {
        let SwarmState {
            meta,
            picker,
            peers,
            smartban,
            wasted,
            ..
        } = self;
        let Some(picker) = picker.as_mut() else {
            return Err(PeerError::NotReady);
        };
        let piece = block.piece;
        let expected_len =
            (meta.piece_len(piece) - block.begin as u64).min(BLOCK_SIZE as u64) as u32;
        let outcome = if block.len == expected_len {
            picker.on_block(key, &block, data)
        } else {
            BlockOutcome::Unwanted
        };
        match outcome {
            BlockOutcome::Stored { complete, cancel } => {
                for k in cancel {
                    if let Some(other) = peers.get_mut(&k) {
                        if other.inflight.remove(&block) {
                            other.send(Outgoing::Cancels(vec![block]));
                        }
                    }
                }
                Ok(complete.then(|| VerifyJob {
                    piece,
                    data: picker.take_data(piece),
                    watched: smartban.watching(piece),
                }))
            }
            BlockOutcome::Unwanted => {
                *wasted += block.len as u64;
                let p = peers.get_mut(&key).ok_or(PeerError::Gone)?;
                p.wasted += block.len as u64;
                if p.wasted > MAX_WASTE {
                    return Err(PeerError::TooMuchWaste);
                }
                Ok(None)
            }
        }
    }
}
