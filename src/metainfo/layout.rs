//! Pieces ↔ file spans. Pure arithmetic, no I/O.
//!
//! A torrent's files are concatenated in order into one byte stream that is
//! cut into pieces. A piece can cover the tail of one file, several small
//! files whole, and the head of the next:
//!
//! ```text
//! offset  0        4        8        12       16
//! files   |a.bin---------|b|c-----------------|
//! pieces  |piece 0 |piece 1 |piece 2 |piece 3 |
//!
//! piece 1 = a.bin[4..7] + b[0..1]
//! piece 2 = c[0..4]
//! ```
//! (That picture is the `spans_match_the_picture` test below.)
//!
//! Empty files occupy no bytes and therefore appear in no span.

use super::FileEntry;

/// A run of bytes inside one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Index into the torrent's file list.
    pub file: usize,
    /// Offset inside that file.
    pub file_offset: u64,
    pub len: u64,
    /// Offset of this span inside the requested range.
    pub buf_offset: u64,
}

pub(crate) fn piece_len(piece_length: u64, total: u64, index: u32) -> u64 {
    let start = index as u64 * piece_length;
    total.saturating_sub(start).min(piece_length)
}

pub(crate) fn spans(files: &[FileEntry], offset: u64, len: u64) -> impl Iterator<Item = Span> + '_ {
    let end = offset.saturating_add(len);
    // First file whose end lies beyond `offset`.
    let first = files.partition_point(|f| f.offset + f.length <= offset);
    files[first..]
        .iter()
        .enumerate()
        .take_while(move |(_, f)| f.offset < end)
        .filter(|(_, f)| f.length > 0)
        .map(move |(i, f)| {
            let s = offset.max(f.offset);
            let e = end.min(f.offset + f.length);
            Span {
                file: first + i,
                file_offset: s - f.offset,
                len: e - s,
                buf_offset: s - offset,
            }
        })
}

pub(crate) fn file_pieces(f: &FileEntry, piece_length: u64) -> std::ops::Range<u32> {
    if f.length == 0 {
        return 0..0;
    }
    let first = f.offset / piece_length;
    let last = (f.offset + f.length - 1) / piece_length;
    first as u32..last as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, offset: u64, length: u64) -> FileEntry {
        FileEntry {
            path: vec![name.into()],
            length,
            offset,
            pad: false,
        }
    }

    #[test]
    fn spans_match_the_picture() {
        let files = vec![
            file("a.bin", 0, 7),
            file("b", 7, 1),
            file("empty", 8, 0),
            file("c", 8, 8),
        ];
        let piece = |i: u64| spans(&files, i * 4, 4).collect::<Vec<_>>();
        assert_eq!(
            piece(0),
            vec![Span {
                file: 0,
                file_offset: 0,
                len: 4,
                buf_offset: 0
            }]
        );
        assert_eq!(
            piece(1),
            vec![
                Span {
                    file: 0,
                    file_offset: 4,
                    len: 3,
                    buf_offset: 0
                },
                Span {
                    file: 1,
                    file_offset: 0,
                    len: 1,
                    buf_offset: 3
                },
            ]
        );
        assert_eq!(
            piece(2),
            vec![Span {
                file: 3,
                file_offset: 0,
                len: 4,
                buf_offset: 0
            }]
        );
        assert_eq!(
            piece(3),
            vec![Span {
                file: 3,
                file_offset: 4,
                len: 4,
                buf_offset: 0
            }]
        );
        assert_eq!(file_pieces(&files[0], 4), 0..2);
        assert_eq!(file_pieces(&files[1], 4), 1..2);
        assert_eq!(file_pieces(&files[2], 4), 0..0);
        assert_eq!(file_pieces(&files[3], 4), 2..4);
    }

    #[test]
    fn last_piece_is_short() {
        assert_eq!(piece_len(4, 10, 0), 4);
        assert_eq!(piece_len(4, 10, 2), 2);
        assert_eq!(piece_len(4, 10, 3), 0);
    }

    #[test]
    fn span_lengths_add_up() {
        let files = vec![
            file("a", 0, 5),
            file("b", 5, 0),
            file("c", 5, 11),
            file("d", 16, 3),
        ];
        for off in 0..19u64 {
            for len in 0..(19 - off) {
                let total: u64 = spans(&files, off, len).map(|s| s.len).sum();
                assert_eq!(total, len, "offset {off} len {len}");
            }
        }
    }
}
