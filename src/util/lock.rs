//! One process per directory: an exclusive `flock` on a lock file inside
//! the replica's data directory or the master's state directory, held for
//! the life of the process (the kernel drops it when the process dies, even
//! by kill -9, so there is nothing stale to clean up). The file holds the
//! holder's pid, so that the second process can say who is in the way.
//!
//! `flock` through `libc` rather than `File::try_lock` (Rust 1.89; the crate
//! keeps its 1.85 MSRV). The descriptor is close-on-exec, so an `on_swap`
//! hook that outlives us cannot keep the directory locked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock file inside the locked directory.
pub const LOCK_FILE: &str = ".indexswarm.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{what} {} is in use by another indexswarm ({})", dir.display(), holder(*pid))]
    Busy {
        what: &'static str,
        dir: PathBuf,
        /// The holder's pid, if it had written it yet.
        pid: Option<u32>,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".to_string(),
    }
}

/// Held for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist) or says who holds it.
    /// `what` names the directory in the message ("data directory").
    pub fn acquire(dir: &Path, what: &'static str) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(io(err));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Busy {
                what,
                dir: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(d.path(), "data directory").unwrap();
        let second = DirLock::acquire(d.path(), "data directory");
        match &second {
            Err(LockError::Busy { pid, what, dir }) => {
                assert_eq!(*pid, Some(std::process::id()));
                assert_eq!(*what, "data directory");
                assert_eq!(dir, d.path());
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        let msg = second.unwrap_err().to_string();
        assert!(
            msg.ends_with(&format!(
                "is in use by another indexswarm (pid {})",
                std::process::id()
            )),
            "{msg}"
        );
        drop(first);
        DirLock::acquire(d.path(), "data directory").expect("free again once dropped");
    }
}
