//! The peer wire protocol (BEP 3, the Fast extension of BEP 6 and the
//! extension handshake of BEP 10) as a `tokio_util` codec. Pure bytes.
//!
//! A partial frame is "need more bytes" (`Ok(None)`), never an error. Every
//! length prefix is checked against the largest legal message *before*
//! anything is allocated, and every fixed-size message must have exactly its
//! size: a peer that lies about lengths is cut off, not accommodated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::metainfo::BLOCK_SIZE;

pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
pub const HANDSHAKE_LEN: usize = 68;
/// Largest extension message we accept (BEP 10 handshakes are a few hundred bytes).
pub const MAX_EXTENDED_LEN: usize = 64 * 1024;

/// A request, cancel or reject: one block of one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    pub piece: u32,
    pub begin: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Bytes),
    Request(BlockRef),
    Piece {
        piece: u32,
        begin: u32,
        data: Bytes,
    },
    Cancel(BlockRef),
    Port(u16),
    // BEP 6
    Suggest(u32),
    HaveAll,
    HaveNone,
    Reject(BlockRef),
    AllowedFast(u32),
    // BEP 10
    Extended {
        id: u8,
        payload: Bytes,
    },
    /// An id we do not know; skipped.
    Unknown(u8),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("message of {0} bytes exceeds the limit of {1}")]
    TooLong(usize, usize),
    #[error("message id {id} with wrong length {len}")]
    BadLength { id: u8, len: usize },
    #[error("bitfield of {got} bytes, expected {expected}")]
    BadBitfield { got: usize, expected: usize },
    #[error("bitfield has spare bits set")]
    SpareBits,
    #[error("block of {0} bytes is larger than {BLOCK_SIZE}")]
    BlockTooLarge(u32),
    #[error("i/o: {0}")]
    Io(String),
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        CodecError::Io(e.to_string())
    }
}

/// Frames messages for one connection to a torrent with `num_pieces` pieces.
#[derive(Debug, Clone)]
pub struct PeerCodec {
    num_pieces: u32,
    max_len: usize,
}

impl PeerCodec {
    pub fn new(num_pieces: u32) -> PeerCodec {
        let bitfield = (num_pieces as usize).div_ceil(8) + 1;
        let piece = 9 + BLOCK_SIZE as usize;
        PeerCodec {
            num_pieces,
            max_len: bitfield.max(piece).max(MAX_EXTENDED_LEN + 2),
        }
    }

    pub fn bitfield_len(&self) -> usize {
        (self.num_pieces as usize).div_ceil(8)
    }
}

fn block(b: &mut BytesMut) -> BlockRef {
    BlockRef {
        piece: b.get_u32(),
        begin: b.get_u32(),
        len: b.get_u32(),
    }
}

impl Decoder for PeerCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_len {
            return Err(CodecError::TooLong(len, self.max_len));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        if len == 0 {
            return Ok(Some(Message::KeepAlive));
        }
        let mut body = src.split_to(len);
        let id = body.get_u8();
        let n = len - 1;
        let want = |expected: usize| {
            if n == expected {
                Ok(())
            } else {
                Err(CodecError::BadLength { id, len })
            }
        };
        let msg = match id {
            0 => want(0).map(|_| Message::Choke)?,
            1 => want(0).map(|_| Message::Unchoke)?,
            2 => want(0).map(|_| Message::Interested)?,
            3 => want(0).map(|_| Message::NotInterested)?,
            4 => {
                want(4)?;
                Message::Have(body.get_u32())
            }
            5 => {
                let expected = self.bitfield_len();
                if n != expected {
                    return Err(CodecError::BadBitfield { got: n, expected });
                }
                let spare = expected * 8 - self.num_pieces as usize;
                if spare > 0 && body[n - 1] & ((1u8 << spare) - 1) != 0 {
                    return Err(CodecError::SpareBits);
                }
                Message::Bitfield(body.freeze())
            }
            6 => {
                want(12)?;
                let b = block(&mut body);
                if b.len > BLOCK_SIZE {
                    return Err(CodecError::BlockTooLarge(b.len));
                }
                Message::Request(b)
            }
            7 => {
                if n < 8 {
                    return Err(CodecError::BadLength { id, len });
                }
                if n - 8 > BLOCK_SIZE as usize {
                    return Err(CodecError::BlockTooLarge((n - 8) as u32));
                }
                let piece = body.get_u32();
                let begin = body.get_u32();
                Message::Piece {
                    piece,
                    begin,
                    data: body.freeze(),
                }
            }
            8 => {
                want(12)?;
                Message::Cancel(block(&mut body))
            }
            9 => {
                want(2)?;
                Message::Port(body.get_u16())
            }
            13 => {
                want(4)?;
                Message::Suggest(body.get_u32())
            }
            14 => want(0).map(|_| Message::HaveAll)?,
            15 => want(0).map(|_| Message::HaveNone)?,
            16 => {
                want(12)?;
                Message::Reject(block(&mut body))
            }
            17 => {
                want(4)?;
                Message::AllowedFast(body.get_u32())
            }
            20 => {
                if n < 1 {
                    return Err(CodecError::BadLength { id, len });
                }
                let ext = body.get_u8();
                Message::Extended {
                    id: ext,
                    payload: body.freeze(),
                }
            }
            other => Message::Unknown(other),
        };
        Ok(Some(msg))
    }
}

impl Message {
    /// Appends the framed message to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        let simple = |dst: &mut BytesMut, id: u8| {
            dst.put_u32(1);
            dst.put_u8(id);
        };
        let u32msg = |dst: &mut BytesMut, id: u8, v: u32| {
            dst.put_u32(5);
            dst.put_u8(id);
            dst.put_u32(v);
        };
        let blockmsg = |dst: &mut BytesMut, id: u8, b: &BlockRef| {
            dst.put_u32(13);
            dst.put_u8(id);
            dst.put_u32(b.piece);
            dst.put_u32(b.begin);
            dst.put_u32(b.len);
        };
        match self {
            Message::KeepAlive => dst.put_u32(0),
            Message::Choke => simple(dst, 0),
            Message::Unchoke => simple(dst, 1),
            Message::Interested => simple(dst, 2),
            Message::NotInterested => simple(dst, 3),
            Message::Have(i) => u32msg(dst, 4, *i),
            Message::Bitfield(b) => {
                dst.put_u32(1 + b.len() as u32);
                dst.put_u8(5);
                dst.put_slice(b);
            }
            Message::Request(b) => blockmsg(dst, 6, b),
            Message::Piece { piece, begin, data } => {
                put_piece_header(dst, *piece, *begin, data.len() as u32);
                dst.put_slice(data);
            }
            Message::Cancel(b) => blockmsg(dst, 8, b),
            Message::Port(p) => {
                dst.put_u32(3);
                dst.put_u8(9);
                dst.put_u16(*p);
            }
            Message::Suggest(i) => u32msg(dst, 13, *i),
            Message::HaveAll => simple(dst, 14),
            Message::HaveNone => simple(dst, 15),
            Message::Reject(b) => blockmsg(dst, 16, b),
            Message::AllowedFast(i) => u32msg(dst, 17, *i),
            Message::Extended { id, payload } => {
                dst.put_u32(2 + payload.len() as u32);
                dst.put_u8(20);
                dst.put_u8(*id);
                dst.put_slice(payload);
            }
            Message::Unknown(id) => simple(dst, *id),
        }
    }
}

/// The 13-byte header of a `piece` message carrying `len` bytes.
pub fn put_piece_header(dst: &mut BytesMut, piece: u32, begin: u32, len: u32) {
    dst.put_u32(9 + len);
    dst.put_u8(7);
    dst.put_u32(piece);
    dst.put_u32(begin);
}

impl Encoder<Message> for PeerCodec {
    type Error = CodecError;
    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode_into(dst);
        Ok(())
    }
}

/// Reserved-bit flags we care about.
pub mod reserved {
    /// BEP 10 extension protocol: byte 5, bit 0x10.
    pub const EXTENSION: (usize, u8) = (5, 0x10);
    /// BEP 6 fast extension: byte 7, bit 0x04.
    pub const FAST: (usize, u8) = (7, 0x04);

    pub fn has(reserved: &[u8; 8], flag: (usize, u8)) -> bool {
        reserved[flag.0] & flag.1 != 0
    }
}

/// A parsed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20]) -> Handshake {
        let mut reserved = [0u8; 8];
        reserved[reserved::EXTENSION.0] |= reserved::EXTENSION.1;
        reserved[reserved::FAST.0] |= reserved::FAST.1;
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    pub fn to_bytes(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = 19;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Parses the first 48 bytes (everything up to the peer id), which is what
    /// an accepting side needs to pick the torrent before answering.
    pub fn parse_prefix(b: &[u8; 48]) -> Option<([u8; 8], [u8; 20])> {
        if b[0] != 19 || &b[1..20] != PROTOCOL {
            return None;
        }
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&b[20..28]);
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&b[28..48]);
        Some((reserved, info_hash))
    }

    pub fn supports(&self, flag: (usize, u8)) -> bool {
        reserved::has(&self.reserved, flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(num_pieces: u32, m: Message) {
        let mut buf = BytesMut::new();
        m.encode_into(&mut buf);
        let mut codec = PeerCodec::new(num_pieces);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(m));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_message_round_trips() {
        let b = BlockRef {
            piece: 3,
            begin: 16384,
            len: 16384,
        };
        for m in [
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(7),
            Message::Bitfield(Bytes::from_static(&[0xff, 0x80])),
            Message::Request(b),
            Message::Piece {
                piece: 1,
                begin: 0,
                data: Bytes::from(vec![9u8; 100]),
            },
            Message::Cancel(b),
            Message::Port(6881),
            Message::Suggest(2),
            Message::HaveAll,
            Message::HaveNone,
            Message::Reject(b),
            Message::AllowedFast(4),
            Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"de"),
            },
        ] {
            roundtrip(9, m);
        }
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let mut full = BytesMut::new();
        Message::Have(5).encode_into(&mut full);
        let mut codec = PeerCodec::new(10);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(codec.decode(&mut part).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            PeerCodec::new(10).decode(&mut buf),
            Err(CodecError::TooLong(..))
        ));
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn bitfields_are_checked() {
        let mut codec = PeerCodec::new(9);
        let mut buf = BytesMut::new();
        Message::Bitfield(Bytes::from_static(&[0xff])).encode_into(&mut buf);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::BadBitfield {
                got: 1,
                expected: 2
            })
        ));
        let mut buf = BytesMut::new();
        Message::Bitfield(Bytes::from_static(&[0xff, 0xc0])).encode_into(&mut buf);
        assert_eq!(codec.decode(&mut buf), Err(CodecError::SpareBits));
    }

    #[test]
    fn fixed_sizes_and_block_limit_are_enforced() {
        let mut codec = PeerCodec::new(9);
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 4, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::BadLength { id: 4, .. })
        ));
        let mut buf = BytesMut::new();
        Message::Request(BlockRef {
            piece: 0,
            begin: 0,
            len: 32768,
        })
        .encode_into(&mut buf);
        assert_eq!(
            codec.decode(&mut buf),
            Err(CodecError::BlockTooLarge(32768))
        );
    }

    #[test]
    fn unknown_ids_are_skipped() {
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 99, 1, 2][..]);
        Message::Have(1).encode_into(&mut buf);
        let mut codec = PeerCodec::new(9);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Message::Unknown(99)));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Message::Have(1)));
    }

    #[test]
    fn handshake_round_trips() {
        let h = Handshake::new([1; 20], [2; 20]);
        let bytes = h.to_bytes();
        let prefix: [u8; 48] = bytes[..48].try_into().unwrap();
        let (reserved, ih) = Handshake::parse_prefix(&prefix).unwrap();
        assert_eq!(ih, [1; 20]);
        assert!(reserved::has(&reserved, reserved::FAST));
        assert!(reserved::has(&reserved, reserved::EXTENSION));
        let mut bad = prefix;
        bad[3] = b'x';
        assert!(Handshake::parse_prefix(&bad).is_none());
    }
}
