//! Helpers that several modules need, kept in one leaf so that nobody
//! borrows them from a sibling (the replica used to import the master's
//! `write_atomic`). Nothing here imports from the rest of the crate.
//!
//! - [`fs`]: durable file operations: atomic replace, directory fsync,
//!   hard link or copy, private copies of shared files.
//! - [`time`]: RFC 3339 timestamps with milliseconds, as every API shows them.
//! - [`lock`]: one process per data or state directory (`flock`).
//! - [`errors`]: an error with its whole cause chain on one line.
//! - [`net`]: CIDR blocks, the client address of an HTTP request,
//!   constant-time secret comparison.
//! - [`crash`]: named crash points for fault-injection tests (debug builds only).

pub mod crash;
pub mod errors;
pub mod fs;
pub mod lock;
pub mod net;
pub mod time;

pub use self::errors::error_chain;
pub use self::fs::{free_bytes, link_or_copy, sync_dir, write_atomic};
pub use self::lock::{DirLock, LockError};
pub use self::time::{now_rfc3339, now_unix_ms, parse_rfc3339_ms, rfc3339_at_ms, rfc3339_in};

#[cfg(test)]
mod tests {
    /// util is a leaf: it must not import from the rest of the crate (the
    /// needle is split so that this test does not find itself).
    #[test]
    fn util_imports_nothing_from_the_crate() {
        let needle = concat!("crate", "::");
        for (name, text) in [
            ("mod.rs", include_str!("mod.rs")),
            ("crash.rs", include_str!("crash.rs")),
            ("errors.rs", include_str!("errors.rs")),
            ("fs.rs", include_str!("fs.rs")),
            ("lock.rs", include_str!("lock.rs")),
            ("net.rs", include_str!("net.rs")),
            ("time.rs", include_str!("time.rs")),
        ] {
            assert!(!text.contains(needle), "src/util/{name} uses the crate");
        }
    }
}
