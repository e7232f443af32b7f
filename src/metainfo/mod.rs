//! Torrents: the `.torrent` file as the rest of indexswarm sees it.
//!
//! Bytes from disk or the network are first parsed (`parse.rs`) and then
//! validated into [`Metainfo`], the only type downstream code accepts: once you
//! hold one, every path is safe to join under a download directory, the piece
//! table matches the total length, and no arithmetic on lengths can overflow.
//!
//! The info-hash is the SHA-1 of the info dictionary's bytes exactly as they
//! appear in the file; we never re-encode a parsed dictionary to hash it, so a
//! torrent written by another tool with unusual (but valid) encoding keeps the
//! hash that tool reports.
//!
//! `layout.rs` maps pieces onto file spans (pure arithmetic), `hashing.rs`
//! hashes pieces of files on disk with every core, and `build.rs` turns a
//! directory into a torrent.

mod build;
mod hashing;
mod known;
mod layout;
mod parse;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use build::{auto_piece_length, build, scan, BuildError, BuildOptions, Built, SourceFile};
pub use hashing::{hash_missing, hash_pieces, verify_pieces, PieceSource};
pub use known::{FileId, KnownPieces, Tail};
pub use layout::Span;

/// The size of a block, the unit of a request on the wire.
pub const BLOCK_SIZE: u32 = 16 * 1024;
/// Largest piece length we accept from a torrent.
pub const MAX_PIECE_LENGTH: u64 = 64 * 1024 * 1024;
/// Largest `.torrent` file we are willing to read.
pub const MAX_TORRENT_BYTES: usize = 32 * 1024 * 1024;
/// Most files a torrent may list (a Lucene index has tens to thousands).
pub const MAX_FILES: usize = 1_000_000;

/// A torrent's v1 identity: SHA-1 of the bencoded info dictionary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Short form for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.hex())
    }
}

impl FromStr for InfoHash {
    type Err = MetainfoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 20];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| {
            MetainfoError::Invalid(format!("{s:?} is not a 40-digit hex info-hash"))
        })?;
        Ok(InfoHash(out))
    }
}

impl serde::Serialize for InfoHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for InfoHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One file of a torrent, in torrent order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components below the torrent's directory (for a single-file
    /// torrent: one component, the torrent name). Each is validated safe.
    pub path: Vec<String>,
    pub length: u64,
    /// Byte offset of the file in the torrent's concatenated data.
    pub offset: u64,
    /// A BEP 47 padding file: virtual zeros, never written to disk.
    pub pad: bool,
}

impl FileEntry {
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }
}

/// A parsed and validated torrent.
#[derive(Debug, Clone)]
pub struct Metainfo {
    pub info_hash: InfoHash,
    pub name: String,
    pub piece_length: u64,
    pub pieces: Vec<[u8; 20]>,
    pub files: Vec<FileEntry>,
    pub total_length: u64,
    /// True when the info dictionary has `length` instead of `files`.
    pub single_file: bool,
    /// Announce URLs, `announce` first, then `announce-list` in tier order, deduplicated.
    pub announce: Vec<String>,
    /// An SSL torrent's root certificate (PEM, `info.ssl-cert`): peers
    /// speak TLS and present certificates it signed (libtorrent's SSL torrents).
    pub ssl_cert: Option<String>,
}

impl Metainfo {
    /// Parses and validates a `.torrent` file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        parse::parse(bytes)
    }

    pub fn num_pieces(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// Length of piece `index` (the last one may be short).
    pub fn piece_len(&self, index: u32) -> u64 {
        layout::piece_len(self.piece_length, self.total_length, index)
    }

    /// Length of piece `index` for a torrent of `total` bytes cut at `piece_length`.
    pub fn piece_len_of(piece_length: u64, total: u64, index: u32) -> u64 {
        layout::piece_len(piece_length, total, index)
    }

    /// Where the data of this torrent lives under `parent`.
    pub fn root_path(&self, parent: &Path) -> PathBuf {
        parent.join(&self.name)
    }

    /// Full on-disk path of file `index` when the torrent is stored under `parent`.
    pub fn file_path(&self, parent: &Path, index: usize) -> PathBuf {
        if self.single_file {
            parent.join(&self.name)
        } else {
            let mut p = parent.join(&self.name);
            for c in &self.files[index].path {
                p.push(c);
            }
            p
        }
    }

    /// The file spans covering `len` bytes at torrent offset `offset`.
    pub fn spans(&self, offset: u64, len: u64) -> impl Iterator<Item = Span> + '_ {
        layout::spans(&self.files, offset, len)
    }

    /// The range of pieces that file `index` touches (empty for empty files).
    pub fn file_pieces(&self, index: usize) -> std::ops::Range<u32> {
        layout::file_pieces(&self.files[index], self.piece_length)
    }

    /// Bytes of real (non-padding) data.
    pub fn data_length(&self) -> u64 {
        self.files.iter().filter(|f| !f.pad).map(|f| f.length).sum()
    }

    /// Number of real (non-padding) files.
    pub fn data_files(&self) -> usize {
        self.files.iter().filter(|f| !f.pad).count()
    }
}

/// Why a torrent was refused. Every variant is a fault of the input.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MetainfoError {
    #[error("not a valid bencoded torrent: {0}")]
    Bencode(String),
    #[error("torrent is missing {0}")]
    Missing(&'static str),
    #[error("torrent field {0} has the wrong type")]
    WrongType(&'static str),
    #[error("unsafe path in torrent: {0}")]
    UnsafePath(String),
    #[error("torrent lists {0:?} twice")]
    DuplicatePath(String),
    #[error("torrent uses {0:?} both as a file and as a directory")]
    PathConflict(String),
    #[error("invalid torrent: {0}")]
    Invalid(String),
    #[error("torrent is too large: {0}")]
    TooLarge(String),
}
