//! Directory → torrent.
//!
//! Files are listed sorted by their path bytes (components joined with `/`),
//! so the same directory always yields the same torrent and the same
//! info-hash, whoever builds it. With `align_files`, BEP 47 padding files are
//! inserted so that every file starts on a piece boundary; a file then owns
//! its pieces outright, which lets a replica reuse an unchanged segment file
//! by comparing piece hashes alone.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bendy::encoding::{Encoder, SingleItemEncoder};

use super::hashing::{hash_missing, PieceSource};
use super::known::{owned_pieces, FileId, KnownPieces};
use super::parse::validate_component;
use super::{FileEntry, Metainfo, MetainfoError};

const MIN_AUTO_PIECE: u64 = 256 * 1024;
const MAX_AUTO_PIECE: u64 = 16 * 1024 * 1024;
/// Auto piece length grows until a torrent has at most this many pieces.
const TARGET_MAX_PIECES: u64 = 4000;
/// With aligned files, a smaller piece than the size-based one is chosen
/// (never below the automatic minimum, 256 KiB: the contract's range)
/// while the padding it saves outweighs what a piece costs beyond its
/// bytes: its hash in every torrent and in memory, a `have` to every
/// peer, a verify job and a write on every replica. About the time it
/// takes to hash 64 KiB.
const PIECE_COST: u64 = 64 * 1024;
/// A piece length the previous version used is kept while it costs at most
/// this many times the best one: a new length shares no piece hash with
/// the published versions, so switching rehashes and resends everything.
const KEEP_PREVIOUS: u64 = 2;
/// ... and while the torrent keeps at most this many pieces (2.5 MiB of
/// hashes; a replica keeps about 30 bytes a piece).
const MAX_ALIGNED_PIECES: u128 = 1 << 17;

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub announce: Vec<String>,
    /// Must be a power of two between 16 KiB and 64 MiB; chosen automatically when `None`.
    pub piece_length: Option<u64>,
    /// Overrides the torrent name (default: the directory's file name).
    pub name: Option<String>,
    pub align_files: bool,
    /// Hashing threads; 0 means one per core.
    pub threads: usize,
    pub comment: Option<String>,
    /// Piece hashes of files hashed before, reused for a file proven to be
    /// the same one (`known.rs`) instead of reading it again.
    pub known: Option<Arc<KnownPieces>>,
    /// A root certificate (PEM) for `info.ssl-cert`: an SSL torrent.
    pub ssl_cert: Option<String>,
}

/// A file found while scanning, with what we saw of it (the master records
/// size and mtime to notice later changes without rehashing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: Vec<String>,
    pub length: u64,
    pub mtime: Option<SystemTime>,
    /// Device and inode: with size and mtime, the proof that a file is one
    /// hashed before (a hard link of it).
    pub dev: u64,
    pub ino: u64,
}

impl SourceFile {
    fn from_metadata(path: Vec<String>, md: &std::fs::Metadata) -> SourceFile {
        SourceFile {
            path,
            length: md.len(),
            mtime: md.modified().ok(),
            dev: md.dev(),
            ino: md.ino(),
        }
    }

    /// Modification time in nanoseconds since the epoch (0 if unknown).
    pub fn mtime_ns(&self) -> u128 {
        self.mtime
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
            length: self.length,
            mtime_ns: self.mtime_ns(),
        }
    }
}

/// A torrent built from disk.
#[derive(Debug, Clone)]
pub struct Built {
    /// The `.torrent` file.
    pub bytes: Vec<u8>,
    pub meta: Metainfo,
    /// The data files as scanned, in torrent order (no padding).
    pub sources: Vec<SourceFile>,
    /// Bytes read and hashed, and bytes whose hashes came from `known`.
    pub hashed_bytes: u64,
    pub reused_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0} holds no data to share")]
    Empty(PathBuf),
    #[error("{0}")]
    Metainfo(#[from] MetainfoError),
}

/// Smallest power of two ≥ 256 KiB that keeps the piece count ≤ 4,000, capped at 16 MiB.
pub fn auto_piece_length(total: u64) -> u64 {
    let mut p = MIN_AUTO_PIECE;
    while p < MAX_AUTO_PIECE && total.div_ceil(p) > TARGET_MAX_PIECES {
        p *= 2;
    }
    p
}

/// What a torrent of files of `lengths` (in torrent order), each padded to
/// a piece boundary but the last, costs at piece length `p`: the bytes
/// hashed (data and padding) plus [`PIECE_COST`] a piece.
/// `None` past [`MAX_ALIGNED_PIECES`].
fn aligned_cost(lengths: &[u64], p: u64) -> Option<u128> {
    let last = lengths.iter().rposition(|&l| l > 0);
    let mut bytes = 0u128;
    let mut pieces = 0u128;
    for (i, &l) in lengths.iter().enumerate() {
        let n = l.div_ceil(p) as u128;
        pieces += n;
        bytes += if Some(i) == last {
            l as u128
        } else {
            n * p as u128
        };
    }
    (pieces <= MAX_ALIGNED_PIECES).then_some(bytes + pieces * PIECE_COST as u128)
}

/// The automatic piece length of a torrent whose files are aligned to
/// pieces (BEP 47 padding): of the powers of two from 256 KiB (the
/// contract's automatic range) up to [`auto_piece_length`] of the data, the one that costs least (padding is
/// hashed, verified and, for small files, most of the torrent: 5,000 files
/// of 430 KiB padded to 8 MiB pieces hash 57 GiB for 20 GiB of data), or
/// `previous` (the newest published version's) while it costs at most
/// [`KEEP_PREVIOUS`] times that, so that versions keep sharing pieces.
pub fn aligned_piece_length(lengths: &[u64], previous: Option<u64>) -> u64 {
    let total: u64 = lengths.iter().sum();
    let upper = auto_piece_length(total);
    // Too many files for any length to stay under the piece cap: the
    // fewest pieces.
    let Some(mut cost) = aligned_cost(lengths, upper) else {
        return upper;
    };
    let mut best = upper;
    let mut p = upper / 2;
    while p >= MIN_AUTO_PIECE {
        // Smaller pieces are more pieces: past the cap, all of them are.
        let Some(c) = aligned_cost(lengths, p) else {
            break;
        };
        if c < cost {
            (best, cost) = (p, c);
        }
        p /= 2;
    }
    match previous {
        Some(prev)
            if (MIN_AUTO_PIECE..=MAX_AUTO_PIECE).contains(&prev)
                && prev.is_power_of_two()
                && aligned_cost(lengths, prev)
                    .is_some_and(|c| c <= cost * KEEP_PREVIOUS as u128) =>
        {
            prev
        }
        _ => best,
    }
}

/// Lists the regular files under `root`, sorted by path bytes. Symbolic links
/// are not followed (a snapshot never needs them, and following them could
/// publish files from outside the directory).
pub fn scan(root: &Path) -> Result<Vec<SourceFile>, BuildError> {
    let io_err = |path: &Path, source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            BuildError::Io {
                path,
                source: e.into(),
            }
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .map_err(|_| BuildError::Invalid("walk left the root".into()))?;
        let mut path = Vec::new();
        for c in rel.components() {
            let c = c.as_os_str().to_str().ok_or_else(|| {
                BuildError::Invalid(format!(
                    "{}: file names must be UTF-8",
                    entry.path().display()
                ))
            })?;
            path.push(validate_component(c.as_bytes(), "file name")?);
        }
        let md = entry
            .metadata()
            .map_err(|e| io_err(entry.path(), e.into()))?;
        out.push(SourceFile::from_metadata(path, &md));
    }
    out.sort_by(|a, b| a.path.join("/").as_bytes().cmp(b.path.join("/").as_bytes()));
    Ok(out)
}

/// Builds a torrent of `path` (a directory, or a single file).
pub fn build(path: &Path, opts: &BuildOptions, progress: &AtomicU64) -> Result<Built, BuildError> {
    let io_err = |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    };
    let md = std::fs::metadata(path).map_err(io_err)?;
    // What a symlink given on the command line names: the files are read
    // without following links.
    let real = path.canonicalize().map_err(io_err)?;
    let default_name = real
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            BuildError::Invalid(format!("{}: cannot derive a torrent name", path.display()))
        })?;
    let name = validate_component(
        opts.name.as_deref().unwrap_or(&default_name).as_bytes(),
        "torrent name",
    )?;

    let single = md.is_file();
    let sources = if single {
        vec![SourceFile::from_metadata(vec![name.clone()], &md)]
    } else {
        scan(path)?
    };
    let total_data: u64 = sources.iter().map(|s| s.length).sum();
    if total_data == 0 {
        return Err(BuildError::Empty(path.to_path_buf()));
    }

    let piece_length = match opts.piece_length {
        Some(p) if !(16 * 1024..=super::MAX_PIECE_LENGTH).contains(&p) || !p.is_power_of_two() => {
            return Err(BuildError::Invalid(format!(
                "piece length {p} must be a power of two between 16K and 64M"
            )))
        }
        Some(p) => p,
        None if opts.align_files && !single => {
            let lengths: Vec<u64> = sources.iter().map(|s| s.length).collect();
            let previous = opts.known.as_deref().and_then(KnownPieces::piece_length);
            aligned_piece_length(&lengths, previous)
        }
        None => auto_piece_length(total_data),
    };

    // Lay the files out, with padding after every file that does not end on a
    // piece boundary (except the last).
    let mut files = Vec::new();
    let mut paths = Vec::new();
    // For each entry of `files`, its index in `sources` (none for padding).
    let mut source_of = Vec::new();
    let mut offset = 0u64;
    let real_count = sources.iter().filter(|s| s.length > 0).count();
    let mut real_seen = 0;
    for (si, s) in sources.iter().enumerate() {
        source_of.push(Some(si));
        files.push(FileEntry {
            path: s.path.clone(),
            length: s.length,
            offset,
            pad: false,
        });
        paths.push(if single {
            real.clone()
        } else {
            s.path.iter().fold(path.to_path_buf(), |p, c| p.join(c))
        });
        offset += s.length;
        if s.length > 0 {
            real_seen += 1;
        }
        let rem = offset % piece_length;
        if opts.align_files && !single && rem != 0 && real_seen < real_count {
            let pad = piece_length - rem;
            files.push(FileEntry {
                path: vec![".pad".into(), pad.to_string()],
                length: pad,
                offset,
                pad: true,
            });
            paths.push(PathBuf::new());
            source_of.push(None);
            offset += pad;
        }
    }
    let total_length = offset;

    let src = PieceSource {
        files: &files,
        paths,
        piece_length,
        total_length,
    };
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        opts.threads
    };
    let known = reusable_hashes(&files, &source_of, &sources, &src, opts.known.as_deref());
    let reused_pieces: Vec<u32> = (0..src.num_pieces())
        .filter(|&i| known[i as usize].is_some())
        .collect();
    let reused_bytes: u64 = reused_pieces
        .iter()
        .map(|&i| super::layout::piece_len(piece_length, total_length, i))
        .sum();
    let pieces = hash_missing(&src, known, threads, progress).map_err(|e| BuildError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;

    let info = encode_info(
        &name,
        piece_length,
        &pieces,
        &files,
        single,
        opts.ssl_cert.as_deref(),
    )?;
    let bytes = encode_torrent(&info, opts)?;
    let meta = Metainfo::from_bytes(&bytes)?;
    Ok(Built {
        bytes,
        meta,
        sources,
        hashed_bytes: total_length - reused_bytes,
        reused_bytes,
    })
}

/// One entry per piece: its hash where `known` proves the file that owns
/// it is one hashed before, else `None` (to be hashed).
fn reusable_hashes(
    files: &[FileEntry],
    source_of: &[Option<usize>],
    sources: &[SourceFile],
    src: &PieceSource,
    known: Option<&KnownPieces>,
) -> Vec<Option<[u8; 20]>> {
    let mut out = vec![None; src.num_pieces() as usize];
    let Some(known) = known.filter(|k| !k.is_empty()) else {
        return out;
    };
    for (i, s) in source_of.iter().enumerate() {
        let Some(s) = s.map(|s| &sources[s]) else {
            continue;
        };
        let Some((range, tail)) = owned_pieces(files, i, src.piece_length) else {
            continue;
        };
        let Some(hashes) = known.get(s.id(), src.piece_length, tail) else {
            continue;
        };
        if let Some(slots) = out.get_mut(range) {
            if slots.len() == hashes.len() {
                for (slot, h) in slots.iter_mut().zip(hashes) {
                    *slot = Some(*h);
                }
            }
        }
    }
    out
}

fn enc_err(e: bendy::encoding::Error) -> BuildError {
    BuildError::Invalid(format!("encoding the torrent failed: {e}"))
}

/// The info dictionary, keys in sorted order as bencode requires.
fn encode_info(
    name: &str,
    piece_length: u64,
    pieces: &[[u8; 20]],
    files: &[FileEntry],
    single: bool,
    ssl_cert: Option<&str>,
) -> Result<Vec<u8>, BuildError> {
    let flat: Vec<u8> = pieces.concat();
    let mut e = Encoder::new();
    e.emit_with(|e: SingleItemEncoder| {
        e.emit_dict(|mut d| {
            if single {
                d.emit_pair(b"length", files[0].length)?;
            } else {
                d.emit_pair_with(b"files", |e| {
                    e.emit_list(|l| {
                        for f in files {
                            l.emit_with(|e| {
                                e.emit_dict(|mut fd| {
                                    if f.pad {
                                        fd.emit_pair(b"attr", "p")?;
                                    }
                                    fd.emit_pair(b"length", f.length)?;
                                    fd.emit_pair_with(b"path", |e| {
                                        e.emit_list(|pl| {
                                            for c in &f.path {
                                                pl.emit_str(c)?;
                                            }
                                            Ok(())
                                        })
                                    })
                                })
                            })?;
                        }
                        Ok(())
                    })
                })?;
            }
            d.emit_pair(b"name", name)?;
            d.emit_pair(b"piece length", piece_length)?;
            d.emit_pair_with(b"pieces", |e| e.emit_bytes(&flat))?;
            // "ssl-cert" sorts after "pieces", as bencode wants.
            if let Some(cert) = ssl_cert {
                d.emit_pair(b"ssl-cert", cert)?;
            }
            Ok(())
        })
    })
    .map_err(enc_err)?;
    e.get_output().map_err(enc_err)
}

/// The whole torrent. `info` comes last in key order, so we encode the outer
/// keys with bendy and splice the info bytes in verbatim: the info-hash is then
/// computed over exactly the bytes in the file.
fn encode_torrent(info: &[u8], opts: &BuildOptions) -> Result<Vec<u8>, BuildError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut e = Encoder::new();
    e.emit_with(|e: SingleItemEncoder| {
        e.emit_dict(|mut d| {
            if let Some(first) = opts.announce.first() {
                d.emit_pair(b"announce", first.as_str())?;
            }
            if opts.announce.len() > 1 {
                d.emit_pair_with(b"announce-list", |e| {
                    e.emit_list(|l| {
                        for url in &opts.announce {
                            l.emit_with(|e| e.emit_list(|t| t.emit_str(url)))?;
                        }
                        Ok(())
                    })
                })?;
            }
            if let Some(c) = &opts.comment {
                d.emit_pair(b"comment", c.as_str())?;
            }
            d.emit_pair(
                b"created by",
                concat!("indexswarm/", env!("CARGO_PKG_VERSION")),
            )?;
            d.emit_pair(b"creation date", now)
        })
    })
    .map_err(enc_err)?;
    let mut out = e.get_output().map_err(enc_err)?;
    // Replace the closing 'e' of the outer dict with "4:info<info>e".
    out.pop();
    out.extend_from_slice(b"4:info");
    out.extend_from_slice(info);
    out.push(b'e');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_piece_length_targets_piece_count() {
        assert_eq!(auto_piece_length(1), 256 * 1024);
        assert_eq!(auto_piece_length(1 << 30), 512 * 1024);
        assert_eq!(auto_piece_length(10 << 30), 4 << 20);
        assert_eq!(auto_piece_length(1 << 40), 16 << 20);
        for total in [1u64 << 20, 3 << 30, 50 << 30] {
            let p = auto_piece_length(total);
            assert!(p.is_power_of_two());
            assert!(total.div_ceil(p) <= 4000);
        }
    }

    /// The shape of `demo::generate_index`: four big segments (90%), many
    /// small files sharing the rest, a commit point.
    fn lucene(size: u64, files: u64) -> Vec<u64> {
        let mut v: Vec<u64> = [40, 25, 15, 10].iter().map(|p| size * p / 100).collect();
        let small = files - 5;
        let weight = |i: u64| 1 + (i * 7919) % 97;
        let weights: u64 = (0..small).map(weight).sum();
        v.extend((0..small).map(|i| (size / 10 * weight(i) / weights).max(1)));
        v.push(1500);
        v
    }

    fn padded_total(lengths: &[u64], p: u64) -> u64 {
        let n = lengths.len();
        lengths[..n - 1]
            .iter()
            .map(|l| l.div_ceil(p) * p)
            .sum::<u64>()
            + lengths[n - 1]
    }

    /// #8: with `align_files`, the piece length was sized from the data
    /// alone: 20 GiB in 5,000 files got 8 MiB pieces and hashed 57 GiB.
    /// (50,000 files of 1–16 KiB still get 256 KiB pieces and hash 12.2
    /// GiB for 415 MiB: automatic lengths stay within 256 KiB – 16 MiB, and
    /// `piece_length = "16K"` is the operator's choice for such an index.)
    #[test]
    fn aligned_piece_length_counts_the_padding() {
        let big = lucene(20 << 30, 5000);
        let p = aligned_piece_length(&big, None);
        assert_eq!(p, 512 << 10);
        let hashed = padded_total(&big, p);
        assert!(hashed < (20u64 << 30) * 11 / 10, "{hashed}");
        assert_eq!(padded_total(&big, 8 << 20) >> 30, 57, "what it was");

        let small: Vec<u64> = (0..50_000u64)
            .map(|i| 1024 + (i * 7919) % (15 * 1024))
            .collect();
        assert_eq!(
            aligned_piece_length(&small, None),
            256 << 10,
            "never below the automatic range, 256 KiB – 16 MiB"
        );

        // A few big files: padding is noise, the size-based length stays.
        for (size, files) in [(10u64 << 30, 66), (1 << 30, 66), (256 << 20, 30)] {
            let l = lucene(size, files);
            let total: u64 = l.iter().sum();
            assert_eq!(aligned_piece_length(&l, None), auto_piece_length(total));
        }
        // One file: nothing is padded.
        assert_eq!(aligned_piece_length(&[1 << 30], None), 512 << 10);
        // More files than the piece cap allows at any length: the fewest pieces.
        let many = vec![1u64; 200_000];
        assert_eq!(
            aligned_piece_length(&many, None),
            auto_piece_length(200_000)
        );
    }

    /// A new piece length shares no piece with the published versions: the
    /// previous one stays while it costs at most twice the best.
    #[test]
    fn aligned_piece_length_keeps_the_previous_one_unless_far_worse() {
        let big = lucene(20 << 30, 5000);
        assert_eq!(aligned_piece_length(&big, Some(1 << 20)), 1 << 20);
        assert_eq!(aligned_piece_length(&big, Some(256 << 10)), 256 << 10);
        assert_eq!(
            aligned_piece_length(&big, Some(8 << 20)),
            512 << 10,
            "57 GiB against 21: switch"
        );
        assert_eq!(aligned_piece_length(&big, Some(1000)), 512 << 10, "invalid");
        // Below the automatic range, a previous length is not kept either.
        assert_eq!(aligned_piece_length(&big, Some(16 << 10)), 512 << 10);
    }

    #[test]
    fn aligned_small_files_stay_in_the_automatic_range() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("snap");
        for i in 0..40 {
            write(&root, &format!("_{i}.si"), 1000 + i * 300, i as u8);
        }
        let opts = BuildOptions {
            align_files: true,
            ..Default::default()
        };
        let built = build(&root, &opts, &AtomicU64::new(0)).unwrap();
        assert_eq!(built.meta.piece_length, 256 << 10);
        let unaligned = BuildOptions::default();
        let built = build(&root, &unaligned, &AtomicU64::new(0)).unwrap();
        assert_eq!(built.meta.piece_length, 256 << 10, "no padding, no change");
    }

    fn write(dir: &Path, rel: &str, len: usize, seed: u8) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        std::fs::write(p, data).unwrap();
    }

    #[test]
    fn builds_sorted_aligned_and_verifiable() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("snap");
        write(&root, "b/z.bin", 40_000, 1);
        write(&root, "a.txt", 10, 2);
        write(&root, "b.dat", 70_000, 3);
        write(&root, "empty", 0, 4);
        let opts = BuildOptions {
            piece_length: Some(16384),
            align_files: true,
            ..Default::default()
        };
        let built = build(&root, &opts, &AtomicU64::new(0)).unwrap();
        let m = &built.meta;
        let names: Vec<String> = m
            .files
            .iter()
            .filter(|f| !f.pad)
            .map(|f| f.display_path())
            .collect();
        // "b.dat" < "b/z.bin" because '.' (0x2e) < '/' (0x2f)
        assert_eq!(names, ["a.txt", "b.dat", "b/z.bin", "empty"]);
        for f in m.files.iter().filter(|f| !f.pad && f.length > 0) {
            assert_eq!(f.offset % 16384, 0, "{} is aligned", f.display_path());
        }
        // Same directory, same info-hash.
        let again = build(&root, &opts, &AtomicU64::new(0)).unwrap();
        assert_eq!(again.meta.info_hash, m.info_hash);
        // Every piece verifies against the data.
        let src = PieceSource {
            files: &m.files,
            paths: (0..m.files.len())
                .map(|i| m.file_path(tmp.path(), i))
                .collect(),
            piece_length: m.piece_length,
            total_length: m.total_length,
        };
        let ok = super::super::verify_pieces(
            &src,
            &m.pieces,
            2,
            &AtomicU64::new(0),
            &Default::default(),
        )
        .unwrap();
        assert!(ok.iter().all(|&v| v));
    }

    #[test]
    fn refuses_empty_directory_and_bad_piece_length() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            build(tmp.path(), &BuildOptions::default(), &AtomicU64::new(0)),
            Err(BuildError::Empty(_))
        ));
        write(tmp.path(), "x", 1, 0);
        let opts = BuildOptions {
            piece_length: Some(1000),
            ..Default::default()
        };
        assert!(matches!(
            build(tmp.path(), &opts, &AtomicU64::new(0)),
            Err(BuildError::Invalid(_))
        ));
    }
}
