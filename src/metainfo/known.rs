//! Piece hashes the master already holds, found again by a proof that a
//! file is the very file it hashed before.
//!
//! Publishing should cost what changed. A Solr snapshot (and `cp -al`)
//! hard-links the segment files that did not change, so most files of a
//! new snapshot *are* files of the previous one: the same device and inode.
//! Same inode + same size + same mtime (to the nanosecond) is the proof
//! this module accepts; the piece hashes of such a file are copied from the
//! earlier torrent instead of being recomputed.
//!
//! Only whole pieces are reused, so a file qualifies only where it owns its
//! pieces outright: it starts on a piece boundary and its last piece holds
//! nothing of another file. With `align_files` (the default) every file
//! does. The last piece of a file is zero-padded when a BEP 47 pad follows
//! it, and short when the file ends the torrent: its hash differs between
//! the two, so that is part of the key.
//!
//! Rejected: name + size + the Lucene codec footer's checksum for copies.
//! Two different files can share a name, size and footer (the footer's
//! CRC32 is 32 bits, and a restore or a truncation bug can preserve it);
//! checking them by hashing before the version is visible costs exactly
//! the hashing this module exists to avoid. Copied files are rehashed.

use std::collections::HashMap;

use super::{FileEntry, Metainfo};

/// How a file's last piece ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tail {
    /// The file's length is a multiple of the piece length, or zeros pad
    /// its last piece to the boundary.
    Full,
    /// The file ends the torrent in a short last piece.
    Short,
}

/// What identifies a file's bytes without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub length: u64,
    pub mtime_ns: u128,
}

impl FileId {
    /// `None` where nothing proves identity (no inode or mtime recorded).
    pub fn usable(self) -> Option<FileId> {
        (self.ino != 0 && self.mtime_ns != 0 && self.length > 0).then_some(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    id: FileId,
    piece_length: u64,
    tail: Tail,
}

/// Piece hashes by file identity.
#[derive(Debug, Default, Clone)]
pub struct KnownPieces {
    map: HashMap<Key, Vec<[u8; 20]>>,
    /// The piece length of the torrent learned last (the newest version):
    /// an automatic piece length stays there while it is not much worse,
    /// since another length shares no piece with what was published.
    piece_length: Option<u64>,
}

/// The pieces file `i` of `files` owns outright, and how its last one ends;
/// `None` if it shares a piece with another file.
pub(crate) fn owned_pieces(
    files: &[FileEntry],
    i: usize,
    piece_length: u64,
) -> Option<(std::ops::Range<usize>, Tail)> {
    let f = &files[i];
    if f.pad || f.length == 0 || !f.offset.is_multiple_of(piece_length) {
        return None;
    }
    let end = f.offset.checked_add(f.length)?;
    let tail = if end % piece_length == 0 {
        Tail::Full
    } else {
        // What follows decides: zeros up to the boundary, nothing, or data.
        let mut rest = files[i + 1..].iter().filter(|g| g.length > 0);
        match rest.next() {
            None => Tail::Short,
            Some(g) if g.pad && end.checked_add(g.length)? % piece_length == 0 => Tail::Full,
            Some(_) => return None,
        }
    };
    let first = usize::try_from(f.offset / piece_length).ok()?;
    let last = usize::try_from(end.div_ceil(piece_length)).ok()?;
    Some((first..last, tail))
}

impl KnownPieces {
    /// Learns the pieces of every file of `meta` that `id_of` can identify.
    pub fn learn(&mut self, meta: &Metainfo, id_of: impl Fn(&FileEntry) -> Option<FileId>) {
        self.piece_length = Some(meta.piece_length);
        for i in 0..meta.files.len() {
            let Some((range, tail)) = owned_pieces(&meta.files, i, meta.piece_length) else {
                continue;
            };
            let Some(id) = id_of(&meta.files[i]).and_then(FileId::usable) else {
                continue;
            };
            if id.length != meta.files[i].length {
                continue;
            }
            let Some(hashes) = meta.pieces.get(range) else {
                continue;
            };
            let key = Key {
                id,
                piece_length: meta.piece_length,
                tail,
            };
            self.map.insert(key, hashes.to_vec());
        }
    }

    /// The piece hashes of a file with this identity, cut at `piece_length`
    /// and ending as `tail` says.
    pub fn get(&self, id: FileId, piece_length: u64, tail: Tail) -> Option<&[[u8; 20]]> {
        let key = Key {
            id: id.usable()?,
            piece_length,
            tail,
        };
        self.map.get(&key).map(Vec::as_slice)
    }

    /// The piece length of the torrent learned last.
    pub fn piece_length(&self) -> Option<u64> {
        self.piece_length
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, offset: u64, length: u64, pad: bool) -> FileEntry {
        FileEntry {
            path: vec![path.into()],
            length,
            offset,
            pad,
        }
    }

    /// ```text
    /// piece:  |  0  |  1  |  2  |  3  |  4  |
    /// a:      |aaaaa|aaaaa|     .     .     .   owns 0..2, full
    /// b:      .     .     |bbb--|           .   owns 2..3, padded (--)
    /// c:      .     .     .     |ccccc|cc   .   owns 3..5, short (ends the torrent)
    /// ```
    #[test]
    fn a_file_owns_its_pieces_only_when_aligned_and_alone_in_them() {
        let pl = 10;
        let files = vec![
            entry("a", 0, 20, false),
            entry("b", 20, 3, false),
            entry("pad", 23, 7, true),
            entry("c", 30, 17, false),
        ];
        assert_eq!(owned_pieces(&files, 0, pl), Some((0..2, Tail::Full)));
        assert_eq!(owned_pieces(&files, 1, pl), Some((2..3, Tail::Full)));
        assert_eq!(owned_pieces(&files, 2, pl), None, "padding owns nothing");
        assert_eq!(owned_pieces(&files, 3, pl), Some((3..5, Tail::Short)));
        // Unaligned: x's last piece holds the start of y.
        let unaligned = vec![entry("x", 0, 15, false), entry("y", 15, 5, false)];
        assert_eq!(owned_pieces(&unaligned, 0, pl), None);
        assert_eq!(owned_pieces(&unaligned, 1, pl), None, "y starts mid-piece");
    }

    #[test]
    fn identity_needs_an_inode_and_an_mtime() {
        let id = FileId {
            dev: 1,
            ino: 0,
            length: 5,
            mtime_ns: 7,
        };
        assert_eq!(id.usable(), None);
        let known = KnownPieces::default();
        assert!(known.get(id, 10, Tail::Full).is_none());
    }
}
