//! Bytes → [`Metainfo`]: first a loose parse that only checks bencode types,
//! then `validate`, which applies every safety rule. Nothing in this file may
//! panic on any input; `tests::never_panics_on_mutations` feeds it garbage.

use std::collections::HashSet;

use bendy::decoding::{Decoder, Object};
use sha1::{Digest, Sha1};

use super::{
    FileEntry, InfoHash, Metainfo, MetainfoError, MAX_FILES, MAX_PIECE_LENGTH, MAX_TORRENT_BYTES,
};

/// Real torrents nest at most five deep (torrent → info → files → file → path);
/// hybrid v2 torrents carry a `file tree` one level per directory. 64 is ample.
const MAX_DEPTH: usize = 64;
/// Deepest directory nesting we accept inside a torrent.
const MAX_PATH_COMPONENTS: usize = 64;
/// Longest single path component (the usual filesystem limit).
const MAX_COMPONENT_BYTES: usize = 255;
/// Largest `ssl-cert` (a PEM root certificate is 1–2 KiB).
const MAX_SSL_CERT: usize = 64 * 1024;
/// Longest list of strings (a path, an announce tier) we read at all.
const MAX_LIST_ITEMS: usize = 1024;

type Result<T> = std::result::Result<T, MetainfoError>;

fn bencode_err(e: bendy::decoding::Error) -> MetainfoError {
    MetainfoError::Bencode(e.to_string())
}

/// The torrent as written, types checked, nothing else.
#[derive(Default)]
struct RawTorrent<'a> {
    announce: Option<&'a [u8]>,
    announce_list: Vec<Vec<&'a [u8]>>,
    info: Option<&'a [u8]>,
}

#[derive(Default)]
struct RawInfo<'a> {
    name: Option<&'a [u8]>,
    piece_length: Option<i64>,
    pieces: Option<&'a [u8]>,
    length: Option<i64>,
    files: Option<Vec<RawFile<'a>>>,
    ssl_cert: Option<&'a [u8]>,
}

#[derive(Default)]
struct RawFile<'a> {
    length: Option<i64>,
    path: Option<Vec<&'a [u8]>>,
    attr: Option<&'a [u8]>,
}

fn int(obj: Object, field: &'static str) -> Result<i64> {
    match obj {
        Object::Integer(s) => s
            .parse::<i64>()
            .map_err(|_| MetainfoError::Invalid(format!("{field} is not a 64-bit integer"))),
        _ => Err(MetainfoError::WrongType(field)),
    }
}

fn bytes<'a>(obj: Object<'_, 'a>, field: &'static str) -> Result<&'a [u8]> {
    match obj {
        Object::Bytes(b) => Ok(b),
        _ => Err(MetainfoError::WrongType(field)),
    }
}

fn bytes_list<'a>(obj: Object<'_, 'a>, field: &'static str) -> Result<Vec<&'a [u8]>> {
    let Object::List(mut list) = obj else {
        return Err(MetainfoError::WrongType(field));
    };
    let mut out = Vec::new();
    while let Some(item) = list.next_object().map_err(bencode_err)? {
        if out.len() >= MAX_LIST_ITEMS {
            return Err(MetainfoError::TooLarge(format!(
                "{field} has too many entries"
            )));
        }
        out.push(bytes(item, field)?);
    }
    Ok(out)
}

fn parse_outer(input: &[u8]) -> Result<RawTorrent<'_>> {
    let mut dec = Decoder::new(input).with_max_depth(MAX_DEPTH);
    let mut raw = RawTorrent::default();
    {
        let Some(obj) = dec.next_object().map_err(bencode_err)? else {
            return Err(MetainfoError::Bencode("empty input".into()));
        };
        let Object::Dict(mut dict) = obj else {
            return Err(MetainfoError::Bencode(
                "top level is not a dictionary".into(),
            ));
        };
        while let Some((key, value)) = dict.next_pair().map_err(bencode_err)? {
            match key {
                b"announce" => raw.announce = Some(bytes(value, "announce")?),
                b"announce-list" => {
                    let Object::List(mut tiers) = value else {
                        return Err(MetainfoError::WrongType("announce-list"));
                    };
                    while let Some(tier) = tiers.next_object().map_err(bencode_err)? {
                        if raw.announce_list.len() >= 64 {
                            return Err(MetainfoError::TooLarge(
                                "announce-list has too many tiers".into(),
                            ));
                        }
                        raw.announce_list.push(bytes_list(tier, "announce-list")?);
                    }
                }
                b"info" => {
                    let Object::Dict(info) = value else {
                        return Err(MetainfoError::WrongType("info"));
                    };
                    raw.info = Some(info.into_raw().map_err(bencode_err)?);
                }
                _ => {} // unknown keys are allowed and skipped
            }
        }
    }
    // Anything after the top-level dictionary is garbage.
    if dec.next_object().map_err(bencode_err)?.is_some() {
        return Err(MetainfoError::Bencode(
            "trailing data after the torrent".into(),
        ));
    }
    Ok(raw)
}

fn parse_info(info: &[u8]) -> Result<RawInfo<'_>> {
    let mut dec = Decoder::new(info).with_max_depth(MAX_DEPTH);
    let mut raw = RawInfo::default();
    let Some(Object::Dict(mut dict)) = dec.next_object().map_err(bencode_err)? else {
        return Err(MetainfoError::WrongType("info"));
    };
    while let Some((key, value)) = dict.next_pair().map_err(bencode_err)? {
        match key {
            b"name" => raw.name = Some(bytes(value, "info.name")?),
            b"piece length" => raw.piece_length = Some(int(value, "info.piece length")?),
            b"pieces" => raw.pieces = Some(bytes(value, "info.pieces")?),
            b"length" => raw.length = Some(int(value, "info.length")?),
            b"ssl-cert" => raw.ssl_cert = Some(bytes(value, "info.ssl-cert")?),
            b"files" => {
                let Object::List(mut list) = value else {
                    return Err(MetainfoError::WrongType("info.files"));
                };
                let mut files = Vec::new();
                while let Some(item) = list.next_object().map_err(bencode_err)? {
                    if files.len() >= MAX_FILES {
                        return Err(MetainfoError::TooLarge(format!(
                            "more than {MAX_FILES} files"
                        )));
                    }
                    let Object::Dict(mut fd) = item else {
                        return Err(MetainfoError::WrongType("info.files[]"));
                    };
                    let mut f = RawFile::default();
                    while let Some((k, v)) = fd.next_pair().map_err(bencode_err)? {
                        match k {
                            b"length" => f.length = Some(int(v, "info.files[].length")?),
                            b"path" => f.path = Some(bytes_list(v, "info.files[].path")?),
                            b"attr" => f.attr = Some(bytes(v, "info.files[].attr")?),
                            _ => {}
                        }
                    }
                    files.push(f);
                }
                raw.files = Some(files);
            }
            _ => {}
        }
    }
    Ok(raw)
}

/// Checks one path component (or the torrent name) and returns it as a string.
pub(crate) fn validate_component(c: &[u8], what: &str) -> Result<String> {
    let unsafe_path = |why: &str| {
        MetainfoError::UnsafePath(format!("{what} {:?}: {why}", String::from_utf8_lossy(c)))
    };
    if c.is_empty() {
        return Err(unsafe_path("empty component"));
    }
    if c == b"." || c == b".." {
        return Err(unsafe_path("relative component"));
    }
    if c.contains(&b'/') || c.contains(&b'\\') {
        return Err(unsafe_path("contains a path separator"));
    }
    if c.contains(&0) {
        return Err(unsafe_path("contains a NUL byte"));
    }
    if c.len() > MAX_COMPONENT_BYTES {
        return Err(unsafe_path("component longer than 255 bytes"));
    }
    // A drive prefix ("C:") would make the path absolute on Windows.
    if c.len() >= 2 && c[1] == b':' && c[0].is_ascii_alphabetic() {
        return Err(unsafe_path("looks like a drive letter"));
    }
    String::from_utf8(c.to_vec()).map_err(|_| unsafe_path("not valid UTF-8"))
}

fn non_negative(v: i64, field: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| MetainfoError::Invalid(format!("{field} is negative ({v})")))
}

fn validate(raw: RawTorrent, info_bytes: &[u8], info: RawInfo) -> Result<Metainfo> {
    let name = validate_component(
        info.name.ok_or(MetainfoError::Missing("info.name"))?,
        "torrent name",
    )?;

    let piece_length = non_negative(
        info.piece_length
            .ok_or(MetainfoError::Missing("info.piece length"))?,
        "piece length",
    )?;
    if piece_length == 0 || piece_length > MAX_PIECE_LENGTH {
        return Err(MetainfoError::Invalid(format!(
            "piece length {piece_length} is outside 1 byte – 64 MiB"
        )));
    }

    let (files, single_file) = match (info.length, info.files) {
        (Some(_), Some(_)) => {
            return Err(MetainfoError::Invalid(
                "info has both length and files".into(),
            ));
        }
        (None, None) => return Err(MetainfoError::Missing("info.length or info.files")),
        (Some(len), None) => {
            let length = non_negative(len, "length")?;
            (
                vec![FileEntry {
                    path: vec![name.clone()],
                    length,
                    offset: 0,
                    pad: false,
                }],
                true,
            )
        }
        (None, Some(raw_files)) => {
            let mut files = Vec::with_capacity(raw_files.len());
            let mut offset: u64 = 0;
            for f in raw_files {
                let length = non_negative(
                    f.length
                        .ok_or(MetainfoError::Missing("info.files[].length"))?,
                    "file length",
                )?;
                let comps = f.path.ok_or(MetainfoError::Missing("info.files[].path"))?;
                if comps.is_empty() {
                    return Err(MetainfoError::UnsafePath("a file has an empty path".into()));
                }
                if comps.len() > MAX_PATH_COMPONENTS {
                    return Err(MetainfoError::UnsafePath(format!(
                        "a path nests deeper than {MAX_PATH_COMPONENTS} directories"
                    )));
                }
                let path = comps
                    .iter()
                    .map(|c| validate_component(c, "path component"))
                    .collect::<Result<Vec<_>>>()?;
                let pad = f.attr.is_some_and(|a| a.contains(&b'p'));
                files.push(FileEntry {
                    path,
                    length,
                    offset,
                    pad,
                });
                offset = offset
                    .checked_add(length)
                    .ok_or_else(|| MetainfoError::Invalid("total length overflows".into()))?;
            }
            if files.is_empty() {
                return Err(MetainfoError::Invalid("torrent lists no files".into()));
            }
            (files, false)
        }
    };
    let total_length = files.last().map(|f| f.offset + f.length).unwrap_or(0);
    if total_length == 0 {
        return Err(MetainfoError::Invalid(
            "torrent holds no data (total length 0)".into(),
        ));
    }
    if total_length > i64::MAX as u64 {
        return Err(MetainfoError::Invalid("total length overflows".into()));
    }
    check_paths(&files)?;

    let pieces_raw = info.pieces.ok_or(MetainfoError::Missing("info.pieces"))?;
    if pieces_raw.len() % 20 != 0 {
        return Err(MetainfoError::Invalid(format!(
            "pieces is {} bytes, not a multiple of 20",
            pieces_raw.len()
        )));
    }
    let expected = total_length.div_ceil(piece_length);
    if pieces_raw.len() as u64 / 20 != expected {
        return Err(MetainfoError::Invalid(format!(
            "pieces lists {} hashes but {} bytes at piece length {} need {}",
            pieces_raw.len() / 20,
            total_length,
            piece_length,
            expected
        )));
    }
    if expected > u32::MAX as u64 {
        return Err(MetainfoError::TooLarge("too many pieces".into()));
    }
    let pieces = pieces_raw
        .chunks_exact(20)
        .map(|c| {
            let mut h = [0u8; 20];
            h.copy_from_slice(c);
            h
        })
        .collect();

    let mut announce = Vec::new();
    let mut push = |u: &[u8]| {
        if let Ok(s) = std::str::from_utf8(u) {
            let s = s.trim();
            if !s.is_empty() && !announce.iter().any(|a: &String| a == s) {
                announce.push(s.to_string());
            }
        }
    };
    if let Some(a) = raw.announce {
        push(a);
    }
    for tier in &raw.announce_list {
        for u in tier {
            push(u);
        }
    }

    let ssl_cert = match info.ssl_cert {
        None => None,
        Some(c) if c.len() > MAX_SSL_CERT => {
            return Err(MetainfoError::TooLarge(format!(
                "ssl-cert of {} bytes (at most {MAX_SSL_CERT})",
                c.len()
            )))
        }
        Some(c) => Some(
            String::from_utf8(c.to_vec())
                .map_err(|_| MetainfoError::Invalid("ssl-cert is not PEM text".into()))?,
        ),
    };
    let info_hash = InfoHash(Sha1::digest(info_bytes).into());
    Ok(Metainfo {
        ssl_cert,
        info_hash,
        name,
        piece_length,
        pieces,
        files,
        total_length,
        single_file,
        announce,
    })
}

/// Rejects duplicate paths and a path used both as a file and as a directory.
/// Padding files are virtual and never touch the disk, so they are exempt.
fn check_paths(files: &[FileEntry]) -> Result<()> {
    let mut seen: HashSet<&[String]> = HashSet::new();
    for f in files.iter().filter(|f| !f.pad) {
        if !seen.insert(&f.path[..]) {
            return Err(MetainfoError::DuplicatePath(f.display_path()));
        }
    }
    for f in files.iter().filter(|f| !f.pad) {
        for depth in 1..f.path.len() {
            if seen.contains(&f.path[..depth]) {
                return Err(MetainfoError::PathConflict(f.path[..depth].join("/")));
            }
        }
    }
    Ok(())
}

pub(crate) fn parse(input: &[u8]) -> Result<Metainfo> {
    if input.len() > MAX_TORRENT_BYTES {
        return Err(MetainfoError::TooLarge(format!(
            "{} bytes (the limit is {MAX_TORRENT_BYTES})",
            input.len()
        )));
    }
    let raw = parse_outer(input)?;
    let info_bytes = raw.info.ok_or(MetainfoError::Missing("info"))?;
    let info = parse_info(info_bytes)?;
    validate(raw, info_bytes, info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A tiny bencode writer for hand-made hostile torrents.
    enum B {
        I(i64),
        S(Vec<u8>),
        L(Vec<B>),
        D(Vec<(&'static str, B)>),
    }
    fn s(v: &str) -> B {
        B::S(v.as_bytes().to_vec())
    }
    fn enc(b: &B, out: &mut Vec<u8>) {
        match b {
            B::I(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            B::S(v) => {
                out.extend_from_slice(format!("{}:", v.len()).as_bytes());
                out.extend_from_slice(v);
            }
            B::L(l) => {
                out.push(b'l');
                l.iter().for_each(|x| enc(x, out));
                out.push(b'e');
            }
            B::D(d) => {
                out.push(b'd');
                for (k, v) in d {
                    enc(&s(k), out);
                    enc(v, out);
                }
                out.push(b'e');
            }
        }
    }
    fn torrent(
        files: Vec<(Vec<&str>, i64)>,
        piece_length: i64,
        npieces: usize,
        name: &str,
    ) -> Vec<u8> {
        let files = B::L(
            files
                .into_iter()
                .map(|(p, l)| {
                    B::D(vec![
                        ("length", B::I(l)),
                        ("path", B::L(p.into_iter().map(s).collect())),
                    ])
                })
                .collect(),
        );
        let t = B::D(vec![(
            "info",
            B::D(vec![
                ("files", files),
                ("name", s(name)),
                ("piece length", B::I(piece_length)),
                ("pieces", B::S(vec![7u8; 20 * npieces])),
            ]),
        )]);
        let mut out = Vec::new();
        enc(&t, &mut out);
        out
    }

    #[test]
    fn accepts_a_good_torrent() {
        let m = parse(&torrent(
            vec![(vec!["a", "b"], 10), (vec!["c"], 6)],
            8,
            2,
            "x",
        ))
        .unwrap();
        assert_eq!(m.total_length, 16);
        assert_eq!(m.files[1].offset, 10);
        assert_eq!(m.num_pieces(), 2);
        assert!(!m.single_file);
    }

    fn rejects(bytes: Vec<u8>, needle: &str) {
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(
            err.contains(needle),
            "error {err:?} should mention {needle:?}"
        );
    }

    #[test]
    fn rejects_unsafe_components() {
        rejects(
            torrent(vec![(vec!["", "a"], 1)], 8, 1, "x"),
            "empty component",
        );
        rejects(torrent(vec![(vec!["."], 1)], 8, 1, "x"), "relative");
        rejects(
            torrent(vec![(vec!["..", "etc", "passwd"], 1)], 8, 1, "x"),
            "relative",
        );
        rejects(
            torrent(vec![(vec!["/etc/passwd"], 1)], 8, 1, "x"),
            "separator",
        );
        rejects(torrent(vec![(vec!["a/b"], 1)], 8, 1, "x"), "separator");
        rejects(torrent(vec![(vec!["a\\b"], 1)], 8, 1, "x"), "separator");
        rejects(torrent(vec![(vec!["a\0b"], 1)], 8, 1, "x"), "NUL");
        rejects(torrent(vec![(vec!["C:"], 1)], 8, 1, "x"), "drive");
        rejects(torrent(vec![(vec![], 1)], 8, 1, "x"), "empty path");
        let deep: Vec<&str> = std::iter::repeat_n("d", 65).collect();
        rejects(torrent(vec![(deep, 1)], 8, 1, "x"), "nests deeper");
    }

    #[test]
    fn rejects_unsafe_names() {
        rejects(torrent(vec![(vec!["a"], 1)], 8, 1, ".."), "torrent name");
        rejects(torrent(vec![(vec!["a"], 1)], 8, 1, "/abs"), "torrent name");
        rejects(torrent(vec![(vec!["a"], 1)], 8, 1, ""), "torrent name");
        rejects(torrent(vec![(vec!["a"], 1)], 8, 1, "a\0"), "torrent name");
    }

    #[test]
    fn rejects_duplicates_and_conflicts() {
        rejects(
            torrent(vec![(vec!["a"], 1), (vec!["a"], 1)], 8, 1, "x"),
            "twice",
        );
        rejects(
            torrent(vec![(vec!["a"], 1), (vec!["a", "b"], 1)], 8, 1, "x"),
            "both as a file",
        );
    }

    #[test]
    fn rejects_bad_pieces() {
        let mut t = torrent(vec![(vec!["a"], 16)], 8, 2, "x");
        // Make pieces 39 bytes: rewrite the length prefix and drop one byte.
        let pos = t.windows(6).position(|w| w == b"40:\x07\x07\x07").unwrap();
        t.splice(pos..pos + 3, b"39:".iter().copied());
        t.remove(pos + 3);
        rejects(t, "not a multiple of 20");
        rejects(torrent(vec![(vec!["a"], 16)], 8, 3, "x"), "need 2");
        rejects(torrent(vec![(vec!["a"], 16)], 8, 1, "x"), "need 2");
    }

    #[test]
    fn rejects_bad_lengths() {
        rejects(torrent(vec![(vec!["a"], 16)], 0, 0, "x"), "piece length");
        rejects(
            torrent(vec![(vec!["a"], 16)], 128 << 20, 1, "x"),
            "piece length",
        );
        rejects(torrent(vec![(vec!["a"], -1)], 8, 1, "x"), "negative");
        rejects(torrent(vec![(vec!["a"], 16)], -8, 1, "x"), "negative");
        rejects(
            torrent(
                vec![
                    (vec!["a"], i64::MAX),
                    (vec!["b"], i64::MAX),
                    (vec!["c"], i64::MAX),
                ],
                1 << 20,
                1,
                "x",
            ),
            "overflows",
        );
        rejects(torrent(vec![(vec!["a"], 0)], 8, 0, "x"), "no data");
    }

    #[test]
    fn rejects_deep_nesting() {
        let mut t = b"d1:x".to_vec();
        t.extend(std::iter::repeat_n(b'l', 100_000));
        rejects(t, "bencode");
    }

    #[test]
    fn rejects_trailing_data_and_garbage() {
        let mut t = torrent(vec![(vec!["a"], 16)], 8, 2, "x");
        t.extend_from_slice(b"i1e");
        rejects(t, "trailing");
        rejects(b"".to_vec(), "empty");
        rejects(b"le".to_vec(), "not a dictionary");
        rejects(b"d4:infoi3ee".to_vec(), "wrong type");
    }

    #[test]
    fn info_hash_uses_raw_bytes() {
        let t = torrent(vec![(vec!["a"], 16)], 8, 2, "x");
        let m = parse(&t).unwrap();
        let start = t.windows(6).position(|w| w == b"4:info").unwrap() + 6;
        let info = &t[start..t.len() - 1];
        assert_eq!(m.info_hash.0, <[u8; 20]>::from(Sha1::digest(info)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&data);
        }

        #[test]
        fn never_panics_on_mutations(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
        ) {
            let mut t = torrent(vec![(vec!["dir", "a"], 20_000), (vec!["b"], 5)], 16384, 2, "name");
            for (idx, byte, op) in edits {
                if t.is_empty() { break; }
                let i = idx.index(t.len());
                match op {
                    0 => t[i] = byte,
                    1 => { t.remove(i); }
                    _ => t.insert(i, byte),
                }
            }
            let _ = parse(&t);
        }
    }
}
