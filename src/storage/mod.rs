//! Storage: a torrent's pieces on disk, as the files the torrent lists.
//!
//! Deliberately synchronous: every method here blocks and is called from
//! `spawn_blocking` (or a hashing thread), never from an async task. Reads
//! and writes are positional (`pread`/`pwrite`) on shared file handles, so
//! no lock is held during I/O; the per-file mutex only guards opening.
//!
//! Files are created on first write, sized to their final length (sparse).
//! Padding files (BEP 47) are virtual: reads return zeros, writes skip them,
//! nothing is ever created for them. Empty files hold no piece and are
//! created by [`Storage::finalize`].
//!
//! Reads open with `O_NOFOLLOW`: a published (or staged) file replaced by a
//! symbolic link is an error, never the link's target.
//!
//! Copy-on-write: a file we did not create may be a hard link into a live
//! version (the replica reuses unchanged files that way) or a read-only file
//! of a finalized version. Before the first write into a file that has
//! other links or is read-only, it is replaced by a private copy (copy to a
//! temp name, fsync, rename over it), and only the copy is written. Reads
//! never open a file for writing, so checking and seeding such files costs
//! nothing.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::metainfo::{verify_pieces, Metainfo, PieceSource};
use crate::peer::codec::BlockRef;
use crate::peer::connection::BlockReader;

/// Open file handles beyond this are closed when idle (Lucene indexes can
/// have thousands of files; the default descriptor limit is 1024).
const MAX_OPEN_FILES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Seed existing data; never create or modify anything.
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("storage is read-only")]
    ReadOnly,
    #[error("read past the end of the torrent")]
    OutOfRange,
    #[error("storage is closed")]
    Closed,
}

impl StorageError {
    /// True for errors that retrying will not fix soon (a full disk, no permission).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

/// An open file and whether it was opened for writing.
struct Handle {
    file: Arc<File>,
    writable: bool,
}

/// One entry of the torrent's file list. Its path, length and padding flag
/// come from the metainfo when needed: a torrent of 50,000 files (and as
/// many padding entries) costs 32 bytes a slot, not a path each.
#[derive(Default)]
struct Slot {
    handle: Mutex<Option<Handle>>,
    /// Written since the last sync.
    dirty: AtomicBool,
}

pub struct Storage {
    meta: Arc<Metainfo>,
    root: PathBuf,
    mode: Mode,
    slots: Vec<Slot>,
    open: AtomicUsize,
    /// Set by `close_all`: no file is opened (let alone created) afterwards,
    /// so nothing late can recreate a directory that was renamed or deleted.
    closed: AtomicBool,
}

impl Storage {
    /// Storage for `meta` under `parent` (data lives at `parent/<name>`,
    /// the usual BitTorrent layout).
    pub fn new(meta: Arc<Metainfo>, parent: &Path, mode: Mode) -> Storage {
        let root = meta.root_path(parent);
        Self::with_root(meta, &root, mode)
    }

    /// Storage whose files live directly in `root` (the replica stages a
    /// version as `versions/<n>.partial/` with the index files at its top).
    /// A single-file torrent's file is `root/<name>`.
    pub fn with_root(meta: Arc<Metainfo>, root: &Path, mode: Mode) -> Storage {
        let slots = meta.files.iter().map(|_| Slot::default()).collect();
        Storage {
            meta,
            root: root.to_path_buf(),
            mode,
            slots,
            open: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    pub fn meta(&self) -> &Arc<Metainfo> {
        &self.meta
    }

    /// The directory that holds the torrent's files.
    pub fn root(&self) -> PathBuf {
        self.root.clone()
    }

    /// Where file `index` lives (padding: nowhere; never opened).
    fn path(&self, index: usize) -> PathBuf {
        if self.meta.single_file {
            self.root.join(&self.meta.name)
        } else {
            let mut p = self.root.clone();
            p.extend(&self.meta.files[index].path);
            p
        }
    }

    fn is_pad(&self, index: usize) -> bool {
        self.meta.files[index].pad
    }

    fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
        move |source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An I/O error on file `index`, naming its path.
    fn file_err(&self, index: usize) -> impl FnOnce(io::Error) -> StorageError + '_ {
        move |source| StorageError::Io {
            path: self.path(index),
            source,
        }
    }

    fn handle(&self, index: usize, write: bool) -> Result<Arc<File>, StorageError> {
        let slot = &self.slots[index];
        let mut guard = slot.handle.lock();
        if let Some(h) = guard.as_ref() {
            if h.writable || !write {
                return Ok(h.file.clone());
            }
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let path = self.path(index);
        let file = match (self.mode, write) {
            (Mode::ReadOnly, true) => return Err(StorageError::ReadOnly),
            // A read only ever targets data we wrote or found: never create
            // for it, never open for writing (the file may be shared), and
            // never follow a symlink put in its place.
            (_, false) => crate::util::fs::open_no_follow(&path).map_err(Self::io_err(&path))?,
            (Mode::ReadWrite, true) => Self::open_for_write(&path, self.meta.files[index].length)?,
        };
        let file = Arc::new(file);
        // Readers still holding the old (read-only) handle keep reading the
        // same bytes: a private copy has the contents of the original.
        let upgraded = guard
            .replace(Handle {
                file: file.clone(),
                writable: write,
            })
            .is_some();
        drop(guard);
        if !upgraded && self.open.fetch_add(1, Ordering::Relaxed) + 1 > MAX_OPEN_FILES {
            self.close_idle();
        }
        Ok(file)
    }

    /// Opens (creating if needed) a file for writing, sized to its length,
    /// after replacing it by a private copy if it is shared or read-only.
    fn open_for_write(path: &Path, length: u64) -> Result<File, StorageError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Self::io_err(dir))?;
        }
        match crate::util::fs::is_shared_or_read_only(path) {
            Ok(true) => crate::util::fs::private_copy(path).map_err(Self::io_err(path))?,
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Self::io_err(path)(e)),
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Self::io_err(path))?;
        let len = f.metadata().map_err(Self::io_err(path))?.len();
        if len != length {
            f.set_len(length).map_err(Self::io_err(path))?;
        }
        Ok(f)
    }

    /// Closes handles nobody is using right now.
    fn close_idle(&self) {
        for slot in &self.slots {
            if let Some(mut g) = slot.handle.try_lock() {
                if g.as_ref().is_some_and(|h| Arc::strong_count(&h.file) == 1) {
                    *g = None;
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Reads `buf.len()` bytes at torrent offset `offset` (padding reads as zeros).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        if offset + buf.len() as u64 > self.meta.total_length {
            return Err(StorageError::OutOfRange);
        }
        for span in self.meta.spans(offset, buf.len() as u64) {
            let out = &mut buf[span.buf_offset as usize..(span.buf_offset + span.len) as usize];
            if self.is_pad(span.file) {
                out.fill(0);
                continue;
            }
            let h = self.handle(span.file, false)?;
            h.read_exact_at(out, span.file_offset)
                .map_err(self.file_err(span.file))?;
        }
        Ok(())
    }

    /// Writes a verified piece, or its bytes up to its trailing padding
    /// (which is never written): one `pwrite` per file it touches.
    pub fn write_piece(&self, piece: u32, data: &[u8]) -> Result<(), StorageError> {
        if self.mode == Mode::ReadOnly {
            return Err(StorageError::ReadOnly);
        }
        let offset = piece as u64 * self.meta.piece_length;
        for span in self.meta.spans(offset, data.len() as u64) {
            if self.is_pad(span.file) {
                continue;
            }
            let h = self.handle(span.file, true)?;
            let part = &data[span.buf_offset as usize..(span.buf_offset + span.len) as usize];
            h.write_all_at(part, span.file_offset)
                .map_err(self.file_err(span.file))?;
            self.slots[span.file].dirty.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Which pieces on disk match the torrent. Uses `threads` hashing threads.
    pub fn verify(
        &self,
        threads: usize,
        progress: &AtomicU64,
        cancel: &AtomicBool,
    ) -> Option<Vec<bool>> {
        let src = PieceSource {
            files: &self.meta.files,
            paths: (0..self.slots.len())
                .map(|i| {
                    if self.is_pad(i) {
                        PathBuf::new()
                    } else {
                        self.path(i)
                    }
                })
                .collect(),
            piece_length: self.meta.piece_length,
            total_length: self.meta.total_length,
        };
        verify_pieces(&src, &self.meta.pieces, threads, progress, cancel)
    }

    /// Creates empty files, then fsyncs every written file and the
    /// directories that hold them. After this returns, a crash cannot lose
    /// the data.
    pub fn finalize(&self) -> Result<(), StorageError> {
        if self.mode == Mode::ReadOnly {
            return Ok(());
        }
        let mut dirs = std::collections::BTreeSet::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if self.is_pad(i) {
                continue;
            }
            let path = self.path(i);
            if self.meta.files[i].length == 0 || !path.exists() {
                // Creates the file at its length (and empties an empty file:
                // it holds no piece, so no check would notice bytes in it).
                self.handle(i, true)?;
            }
            // Every file, not only those written in this run: pieces found on
            // disk at start (a resumed download, a reused file) may still be
            // in the page cache only. Files with nothing dirty sync cheaply.
            // A read handle is enough to fsync, and opening a shared file
            // for writing would copy it for nothing.
            slot.dirty.store(false, Ordering::Relaxed);
            let h = self.handle(i, false)?;
            h.sync_all().map_err(Self::io_err(&path))?;
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in dirs {
            crate::util::sync_dir(&d).map_err(Self::io_err(&d))?;
        }
        Ok(())
    }

    /// Drops every open handle and refuses to open any again (before the
    /// directory is renamed or deleted).
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in &self.slots {
            if slot.handle.lock().take().is_some() {
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl BlockReader for Storage {
    fn read_block(&self, block: &BlockRef, dst: &mut [u8]) -> io::Result<()> {
        let offset = block.piece as u64 * self.meta.piece_length + block.begin as u64;
        self.read(offset, dst).map_err(|e| match e {
            StorageError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{build, BuildOptions};

    #[test]
    fn writes_pieces_reads_back_and_never_writes_padding() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src/snap");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("a"), vec![1u8; 20_000]).unwrap();
        std::fs::write(src.join("d/b"), vec![2u8; 40_000]).unwrap();
        std::fs::write(src.join("e"), b"").unwrap();
        let opts = BuildOptions {
            piece_length: Some(16384),
            align_files: true,
            ..Default::default()
        };
        let built = build(&src, &opts, &AtomicU64::new(0)).unwrap();
        let meta = Arc::new(built.meta);

        let reader = Storage::new(meta.clone(), &tmp.path().join("src"), Mode::ReadOnly);
        let dst = tmp.path().join("dst");
        let writer = Storage::new(meta.clone(), &dst, Mode::ReadWrite);
        let mut buf = vec![0u8; meta.piece_length as usize];
        for p in 0..meta.num_pieces() {
            let len = meta.piece_len(p) as usize;
            reader
                .read(p as u64 * meta.piece_length, &mut buf[..len])
                .unwrap();
            writer.write_piece(p, &buf[..len]).unwrap();
        }
        writer.finalize().unwrap();
        assert_eq!(
            std::fs::read(dst.join("snap/a")).unwrap(),
            vec![1u8; 20_000]
        );
        assert_eq!(
            std::fs::read(dst.join("snap/d/b")).unwrap(),
            vec![2u8; 40_000]
        );
        assert_eq!(std::fs::read(dst.join("snap/e")).unwrap(), b"");
        assert!(!dst.join("snap/.pad").exists());
        let ok = writer
            .verify(2, &AtomicU64::new(0), &AtomicBool::new(false))
            .unwrap();
        assert!(ok.iter().all(|&b| b));
        assert!(matches!(
            reader.write_piece(0, &buf),
            Err(StorageError::ReadOnly)
        ));
    }

    /// A staged file that is a hard link into the live version, or read-only,
    /// is copied before the first write: the live file keeps its bytes.
    #[test]
    fn writes_never_reach_a_shared_or_read_only_file() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("snap");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a"), vec![7u8; 40_000]).unwrap();
        std::fs::write(src.join("b"), vec![8u8; 40_000]).unwrap();
        let opts = BuildOptions {
            piece_length: Some(16384),
            align_files: true,
            ..Default::default()
        };
        let meta = Arc::new(build(&src, &opts, &AtomicU64::new(0)).unwrap().meta);

        // The live version: a damaged "a" (read-only) and a read-only "b".
        let live = tmp.path().join("live");
        std::fs::create_dir_all(&live).unwrap();
        let mut damaged = vec![7u8; 40_000];
        damaged[20_000] = 0;
        std::fs::write(live.join("a"), &damaged).unwrap();
        std::fs::write(live.join("b"), vec![8u8; 40_000]).unwrap();
        for f in ["a", "b"] {
            let p = live.join(f);
            std::fs::set_permissions(&p, PermissionsExt::from_mode(0o444)).unwrap();
        }
        // Staging: "a" reused by hard link, "b" a private read-only file.
        let staging = tmp.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::hard_link(live.join("a"), staging.join("a")).unwrap();
        std::fs::copy(live.join("b"), staging.join("b")).unwrap();
        std::fs::set_permissions(staging.join("b"), PermissionsExt::from_mode(0o444)).unwrap();

        let st = Storage::with_root(meta.clone(), &staging, Mode::ReadWrite);
        let have = st
            .verify(1, &AtomicU64::new(0), &AtomicBool::new(false))
            .unwrap();
        assert_eq!(
            have.iter().filter(|ok| !**ok).count(),
            1,
            "one damaged piece"
        );
        let bad = have.iter().position(|ok| !ok).unwrap() as u32;
        let mut piece = vec![0u8; meta.piece_len(bad) as usize];
        Storage::with_root(meta.clone(), &src, Mode::ReadOnly)
            .read(bad as u64 * meta.piece_length, &mut piece)
            .unwrap();
        st.write_piece(bad, &piece).unwrap();
        st.write_piece(4, &vec![8u8; 16384]).unwrap(); // a piece inside "b"
        st.finalize().unwrap();

        assert_eq!(
            std::fs::read(live.join("a")).unwrap(),
            damaged,
            "live untouched"
        );
        assert_eq!(std::fs::read(staging.join("a")).unwrap(), vec![7u8; 40_000]);
        let md = |p: &Path| std::fs::metadata(p).unwrap();
        assert_ne!(md(&live.join("a")).ino(), md(&staging.join("a")).ino());
        assert_eq!(md(&live.join("a")).nlink(), 1);
        assert!(!md(&staging.join("b")).permissions().readonly());
        assert_eq!(std::fs::read(staging.join("b")).unwrap(), vec![8u8; 40_000]);
    }

    /// Checking and fsyncing reused files does not copy them.
    #[test]
    fn verifying_and_finalizing_keep_reused_links() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("snap");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a"), vec![1u8; 30_000]).unwrap();
        let meta = Arc::new(
            build(&src, &BuildOptions::default(), &AtomicU64::new(0))
                .unwrap()
                .meta,
        );
        let staging = tmp.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::hard_link(src.join("a"), staging.join("a")).unwrap();
        let st = Storage::with_root(meta, &staging, Mode::ReadWrite);
        let have = st
            .verify(1, &AtomicU64::new(0), &AtomicBool::new(false))
            .unwrap();
        assert!(have.iter().all(|ok| *ok));
        let mut buf = vec![0u8; 100];
        st.read(0, &mut buf).unwrap();
        st.finalize().unwrap();
        assert_eq!(std::fs::metadata(staging.join("a")).unwrap().nlink(), 2);
    }
}
