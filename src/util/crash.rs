//! Named crash points for the fault-injection tests of the swap path.
//!
//! In a debug build (what `cargo test` builds), `point("after_rename_partial")`
//! kills the process with SIGKILL, at once and without unwinding or flushing
//! anything, when the environment variable `INDEXSWARM_CRASH_AT` names that
//! point: as close to `kill -9` at that instruction as a test can get. In a
//! release build every point compiles to nothing.
//!
//! Every name is listed in [`POINTS`] (a debug assertion checks it), so the
//! test can loop over all of them and a point cannot be forgotten.

/// Environment variable naming the crash point.
pub const ENV: &str = "INDEXSWARM_CRASH_AT";

/// Every crash point, in the order a replication passes them.
pub const POINTS: &[&str] = &[
    "download_complete",
    "session_stopped",
    "before_rename_partial",
    "after_rename_partial",
    "versions_dir_synced",
    "manifest_tmp_written",
    "manifest_tmp_synced",
    "manifest_renamed",
    "manifest_dir_synced",
    "chmod_half",
    "chmod_done",
    "symlink_tmp_created",
    "current_renamed",
    "current_dir_synced",
    "solr_link_tree_done",
    "solr_index_renamed",
    "solr_core_dir_synced",
    "solr_properties_renamed",
    "solr_reload_done",
    "live_version_renamed",
    "epoch_tmp_written",
    "epoch_renamed",
    "hook_start",
    "hook_end",
    "seeding_started",
    "retention_start",
    "retention_removed_one",
    "retention_done",
];

#[cfg(debug_assertions)]
fn wanted() -> Option<&'static str> {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    AT.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Dies here, by SIGKILL, if `INDEXSWARM_CRASH_AT` names `name`.
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    debug_assert!(
        POINTS.contains(&name),
        "crash point {name} is not in POINTS"
    );
    if wanted() == Some(name) {
        eprintln!("crash point {name}: SIGKILL");
        // SAFETY: signals ourselves; does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}

/// A no-op in release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}

/// The point `<tag>_<step>` (used by helpers that several callers share),
/// only if it is one of [`POINTS`]: not every step of every tag is a point.
pub fn point_in(tag: &str, step: &str) {
    if cfg!(debug_assertions) {
        let name = format!("{tag}_{step}");
        if POINTS.contains(&name.as_str()) {
            point(&name);
        }
    }
}
