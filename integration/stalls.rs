//! Issue #6, findings 1 and 7 as an operator sees them: a download that
//! stops moving says so in the replica's `/status` (`last_error` starts
//! with `stalled:` and gives the reason) and recovers by itself once the
//! cause is gone; a master whose data no longer matches its torrent is
//! named as the cause instead of the replica stalling silently.

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use crate::common::*;
use crate::replica::{start_replica, Master, REPLICATE};

fn last_error(s: &serde_json::Value) -> String {
    s["last_error"].as_str().unwrap_or_default().to_string()
}

/// The master freezes (SIGSTOP) mid-download: the replica reports the
/// stall within the stall interval, and once the master thaws the download
/// finishes and the report is gone.
#[test]
fn a_frozen_source_is_reported_as_stalled_and_the_replica_recovers() {
    let d = test_dir("stall");
    let mut m = Master::start(d.path(), &["--upload-limit", "1M", "--verify-rate", "0"]);
    let v = m.publish_new("snap-1", 8 << 20, 5);
    let r = start_replica(
        &m,
        &d.path().join("r"),
        "replica",
        &["--stall-secs", "2"],
        &[],
    );
    r.wait_status(Duration::from_secs(30), "the download under way", |s| {
        s["state"] == "downloading" && s["progress"].as_f64().unwrap_or(0.0) > 0.05
    });
    m.proc.signal("STOP");
    r.wait_status(Duration::from_secs(20), "a stall report", |s| {
        s["state"] == "downloading" && last_error(s).starts_with("stalled: ")
    });
    m.proc.signal("CONT");
    r.wait_version(v, REPLICATE);
    let s = r.status();
    assert!(
        s["last_error"].is_null(),
        "the stall report is cleared: {s}"
    );
    crate::replica::assert_live_is_complete(&m, &r.data, "after the stall");
}

/// A published file edited with its size and mtime kept (the master's
/// re-verification is off here, so it keeps serving the wrong bytes): the
/// replica names the cause instead of stalling without a word.
#[test]
fn a_source_whose_data_does_not_match_is_named_as_the_cause() {
    let d = test_dir("mismatch");
    let m = {
        let mut m = Master::start(d.path(), &["--verify-rate", "0"]);
        m.publish_new("snap-1", 4 << 20, 6);
        m
    };
    let snap = m.snapshot(1).to_path_buf();
    // The largest file, one byte flipped, its mtime put back.
    let victim = walk_files(&snap)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    let mtime = fs::metadata(&victim).unwrap().modified().unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&victim)
        .unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let r = start_replica(
        &m,
        &d.path().join("r"),
        "replica",
        &["--stall-secs", "3"],
        &[],
    );
    r.wait_status(Duration::from_secs(40), "the cause in last_error", |s| {
        last_error(s).starts_with("stalled: the source's data does not match the torrent")
    });
    let s = r.status();
    assert!(
        s["current_version"].is_null(),
        "nothing wrong went live: {s}"
    );
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
