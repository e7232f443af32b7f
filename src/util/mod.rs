//! Helpers that several modules need, kept in one leaf so that nobody
//! borrows them from a sibling (the replica used to import the master's
//! `write_atomic`). Nothing here imports from the rest of the crate.
//!
//! - [`fs`]: durable file operations: atomic replace, directory fsync,
//!   hard link or copy, private copies of shared files.
//! - [`time`]: RFC 3339 timestamps with milliseconds, as every API shows them.
//! - [`lock`]: one process per data or state directory (`flock`).
//! - [`crash`]: named crash points for fault-injection tests (debug builds only).

pub mod crash;
pub mod fs;
pub mod lock;
pub mod time;

pub use self::fs::{link_or_copy, sync_dir, write_atomic};
pub use self::lock::{DirLock, LockError};
pub use self::time::{now_rfc3339, rfc3339_in};
