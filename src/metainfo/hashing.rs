//! Hashing pieces of files on disk, on every core.
//!
//! Both `create` (hash everything) and resume/seed checks (compare against the
//! torrent) read pieces the same way, so they share this code. Each worker
//! thread pulls the next piece index from an atomic counter, reads the piece
//! with positional reads into its own buffer and hashes it: memory is one
//! piece per worker, whatever the torrent's size, and the reading is spread
//! over the workers instead of funnelled through one reader thread.
//!
//! We read with `pread` rather than `mmap`: a snapshot file truncated while we
//! hash it must become an I/O error, not a SIGBUS that kills the process.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use sha1::{Digest, Sha1};

use super::layout::{piece_len, spans};
use super::FileEntry;

/// Where the bytes of each torrent file live on disk.
pub struct PieceSource<'a> {
    pub files: &'a [FileEntry],
    /// One path per entry of `files`; ignored for padding files.
    pub paths: Vec<PathBuf>,
    pub piece_length: u64,
    pub total_length: u64,
}

/// A worker's open file, kept between pieces (pieces mostly stay in one file).
struct OpenFile {
    index: usize,
    file: File,
}

impl PieceSource<'_> {
    pub fn num_pieces(&self) -> u32 {
        self.total_length.div_ceil(self.piece_length) as u32
    }

    fn read_piece(
        &self,
        index: u32,
        buf: &mut Vec<u8>,
        open: &mut Option<OpenFile>,
    ) -> io::Result<()> {
        let len = piece_len(self.piece_length, self.total_length, index) as usize;
        buf.resize(len, 0);
        let start = index as u64 * self.piece_length;
        for span in spans(self.files, start, len as u64) {
            let out = &mut buf[span.buf_offset as usize..(span.buf_offset + span.len) as usize];
            if self.files[span.file].pad {
                out.fill(0);
                continue;
            }
            if open.as_ref().map(|o| o.index) != Some(span.file) {
                // A symlink put in a file's place is refused, not followed.
                let file =
                    crate::util::fs::open_no_follow(&self.paths[span.file]).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("{}: {e}", self.paths[span.file].display()),
                        )
                    })?;
                *open = Some(OpenFile {
                    index: span.file,
                    file,
                });
            }
            if let Some(o) = open.as_ref() {
                o.file.read_exact_at(out, span.file_offset).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("{}: {e}", self.paths[span.file].display()),
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Runs `f(piece, bytes)` for every piece in `todo` (every piece when
/// `None`) on `threads` workers and returns the results in piece order, with
/// `T::default()` for the pieces not in `todo`. `f` gets `Err` for a piece it
/// could not read. Stops early (returning `None`) when `cancel` is set.
fn map_pieces<T, F>(
    src: &PieceSource,
    todo: Option<&[u32]>,
    threads: usize,
    progress: &AtomicU64,
    cancel: &AtomicBool,
    f: F,
) -> Option<Vec<T>>
where
    T: Send + Default + Clone,
    F: Fn(u32, io::Result<&[u8]>) -> T + Sync,
{
    let n = src.num_pieces();
    let results = Mutex::new(vec![T::default(); n as usize]);
    let count = todo.map_or(n, |t| t.len() as u32);
    let next = AtomicU32::new(0);
    let threads = threads.clamp(1, 64).min(count.max(1) as usize);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buf = Vec::new();
                let mut open = None;
                let mut local = Vec::new();
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= count {
                        break;
                    }
                    let i = todo.map_or(k, |t| t[k as usize]);
                    let read = src.read_piece(i, &mut buf, &mut open);
                    let r = f(
                        i,
                        read.as_ref()
                            .map(|_| &buf[..])
                            .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                    );
                    progress.fetch_add(
                        piece_len(src.piece_length, src.total_length, i),
                        Ordering::Relaxed,
                    );
                    local.push((i, r));
                    if local.len() >= 64 {
                        let mut res = results.lock().unwrap_or_else(|p| p.into_inner());
                        for (i, r) in local.drain(..) {
                            res[i as usize] = r;
                        }
                    }
                }
                let mut res = results.lock().unwrap_or_else(|p| p.into_inner());
                for (i, r) in local.drain(..) {
                    res[i as usize] = r;
                }
            });
        }
    });
    if cancel.load(Ordering::Relaxed) {
        return None;
    }
    Some(results.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Hashes every piece. Any read error (a missing or short file) fails the whole run.
pub fn hash_pieces(
    src: &PieceSource,
    threads: usize,
    progress: &AtomicU64,
) -> io::Result<Vec<[u8; 20]>> {
    hash_missing(
        src,
        vec![None; src.num_pieces() as usize],
        threads,
        progress,
    )
}

/// Hashes the pieces whose hash `known` does not already give (one entry
/// per piece), and returns every piece's hash. Any read error fails the run.
pub fn hash_missing(
    src: &PieceSource,
    known: Vec<Option<[u8; 20]>>,
    threads: usize,
    progress: &AtomicU64,
) -> io::Result<Vec<[u8; 20]>> {
    if known.len() != src.num_pieces() as usize {
        return Err(io::Error::other(
            "known hashes do not match the piece count",
        ));
    }
    let todo: Vec<u32> = (0..src.num_pieces())
        .filter(|&i| known[i as usize].is_none())
        .collect();
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    let hashes = map_pieces(
        src,
        Some(&todo),
        threads,
        progress,
        &failed,
        |_, data| match data {
            Ok(bytes) => <[u8; 20]>::from(Sha1::digest(bytes)),
            Err(e) => {
                let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(e);
                failed.store(true, Ordering::Relaxed);
                [0u8; 20]
            }
        },
    );
    match hashes {
        Some(h) => Ok(h
            .into_iter()
            .zip(known)
            .map(|(hashed, known)| known.unwrap_or(hashed))
            .collect()),
        None => Err(first_error
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(|| io::Error::other("hashing failed"))),
    }
}

/// Checks every piece against `expected`; a piece that cannot be read is simply
/// not valid. Returns one flag per piece, or `None` if cancelled.
pub fn verify_pieces(
    src: &PieceSource,
    expected: &[[u8; 20]],
    threads: usize,
    progress: &AtomicU64,
    cancel: &AtomicBool,
) -> Option<Vec<bool>> {
    map_pieces(src, None, threads, progress, cancel, |i, data| match data {
        Ok(bytes) => expected
            .get(i as usize)
            .is_some_and(|h| *h == <[u8; 20]>::from(Sha1::digest(bytes))),
        Err(_) => false,
    })
}
