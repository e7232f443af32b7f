//! Durable file operations. Every step that must survive a crash is
//! followed by the fsync that makes it durable: file contents before the
//! rename that publishes them, the directory after a rename or link.
//!
//! Temporary names are recognisable (`*.indexswarm-tmp`, `*.indexswarm-copy`)
//! so that recovery after a crash can remove them without guessing.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::crash;

/// Suffix of the temporary files of [`write_atomic`].
pub const TMP_SUFFIX: &str = ".indexswarm-tmp";
/// Suffix of the temporary files of [`link_or_copy`] and [`private_copy`].
pub const COPY_SUFFIX: &str = ".indexswarm-copy";

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `path` with `suffix` appended to its file name (`a.cfs` → `a.cfs.x`;
/// `with_extension` would turn both `_0.cfs` and `_0.si` into `_0.x`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Opens `path` for reading, refusing a symbolic link (`O_NOFOLLOW`: the
/// open fails with `ELOOP`). Data we publish, seed or verify is only ever
/// regular files: a file swapped for a symlink after publication must
/// not make us read (and serve) whatever it points at.
pub fn open_no_follow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// fsyncs a directory so that entries created, renamed or removed in it
/// are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` atomically and durably: temporary file,
/// fsync, rename, fsync of the directory. A crash leaves the old contents
/// or the new ones, never a mix. The file is made readable by all (0644).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_traced(path, bytes, None)
}

/// [`write_atomic`] with a crash point after each step, named
/// `<tag>_tmp_written`, `<tag>_tmp_synced`, `<tag>_renamed`, `<tag>_dir_synced`.
pub fn write_atomic_traced(path: &Path, bytes: &[u8], tag: Option<&str>) -> io::Result<()> {
    let step = |s: &str| {
        if let Some(t) = tag {
            crash::point_in(t, s);
        }
    };
    let dir = parent_of(path);
    let prefix = format!(
        ".{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TMP_SUFFIX)
        .tempfile_in(dir)?;
    // tempfile creates 0600; state files and torrents are meant to be readable.
    std::fs::set_permissions(tmp.path(), PermissionsExt::from_mode(0o644))?;
    tmp.write_all(bytes)?;
    step("tmp_written");
    tmp.as_file().sync_all()?;
    step("tmp_synced");
    tmp.persist(path).map_err(|e| e.error)?;
    step("renamed");
    sync_dir(dir)?;
    step("dir_synced");
    Ok(())
}

/// Copies `src` to `dst` through `dst.indexswarm-copy`, fsyncing the copy
/// before the rename that names it `dst`. The copy is writable by its owner.
fn copy_durably(src: &Path, dst: &Path) -> io::Result<()> {
    let tmp = with_suffix(dst, COPY_SUFFIX);
    let _ = std::fs::remove_file(&tmp); // left by a crash mid-copy
    std::fs::copy(src, &tmp)?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .or_else(|_| {
            // A read-only source gives a read-only copy: make it ours first.
            std::fs::set_permissions(&tmp, PermissionsExt::from_mode(0o644))?;
            std::fs::OpenOptions::new().write(true).open(&tmp)
        })?;
    let mode = f.metadata()?.mode();
    f.set_permissions(PermissionsExt::from_mode((mode | 0o200) & 0o7777))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dst)
}

/// Makes `dst` a hard link to `src`, or (another filesystem, links not
/// allowed) a durable copy of it. Returns `true` if it linked.
pub fn link_or_copy(src: &Path, dst: &Path) -> io::Result<bool> {
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(true);
    }
    copy_durably(src, dst)?;
    Ok(false)
}

/// Does `path` need a private copy before anyone writes into it: is it
/// shared with another directory (more than one link) or read-only?
pub fn is_shared_or_read_only(path: &Path) -> io::Result<bool> {
    let md = std::fs::metadata(path)?;
    Ok(md.nlink() > 1 || md.permissions().readonly())
}

/// Replaces `path` by a private, writable copy of itself (copy to a temp
/// name, fsync, rename over `path`), so that writing into it cannot reach
/// the other names of the same file. The directory is not fsynced: callers
/// fsync it before the data matters (as `Storage::finalize` does).
pub fn private_copy(path: &Path) -> io::Result<()> {
    copy_durably(path, path)
}

/// Bytes free for an unprivileged writer on the filesystem holding `path`
/// (`statvfs`: blocks available × fragment size), or `None` if it cannot
/// be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable
    // memory of the right size; statvfs fills it on success only.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    // The field types are u64 here but narrower on some targets.
    #[allow(clippy::useless_conversion)]
    u64::from(st.f_bavail).checked_mul(u64::from(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn open_no_follow_reads_files_and_refuses_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"data").unwrap();
        std::os::unix::fs::symlink(d.path().join("f"), d.path().join("l")).unwrap();
        let mut text = String::new();
        use std::io::Read;
        open_no_follow(&d.path().join("f"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "data");
        let e = open_no_follow(&d.path().join("l")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn suffix_keeps_the_extension() {
        assert_eq!(
            with_suffix(Path::new("a/_0.cfs"), COPY_SUFFIX),
            Path::new("a/_0.cfs.indexswarm-copy")
        );
    }

    #[test]
    fn private_copy_detaches_a_hard_link_and_a_read_only_file() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("live");
        let staged = d.path().join("staged");
        std::fs::write(&live, b"live bytes").unwrap();
        std::fs::set_permissions(&live, PermissionsExt::from_mode(0o444)).unwrap();
        assert!(link_or_copy(&live, &staged).unwrap());
        assert!(is_shared_or_read_only(&staged).unwrap());
        private_copy(&staged).unwrap();
        assert!(!is_shared_or_read_only(&staged).unwrap());
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_ne!(ino(&live), ino(&staged));
        std::fs::write(&staged, b"new bytes!").unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"live bytes");
        assert!(!with_suffix(&staged, COPY_SUFFIX).exists());
    }
}
