//! Issue #6, finding 7 (master side): a published file edited in place
//! with its mtime put back (as `touch -r` or `rsync -a` leave it) is caught
//! by the background re-verification and the version is withdrawn. The
//! path/size/mtime check alone never notices such an edit.

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::*;

/// Slow enough that the throttle is what sets the pace (a pass over the
/// ~350 KB snapshot takes about 1.4 s), fast enough for a quick test.
const RATE: u64 = 256 * 1024;

/// Flips one byte of `path` at `offset`, then sets the mtime back to what
/// it was: the size, name and mtime all stay the same.
fn edit_keeping_mtime(path: &Path, offset: u64) {
    let before = fs::metadata(path).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], offset).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(before.modified().unwrap()))
        .unwrap();
    drop(f);
    let after = fs::metadata(path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap()),
        "the edit keeps size and mtime"
    );
}

#[test]
fn master_withdraws_a_version_edited_with_its_mtime_preserved() {
    let d = test_dir("m-verify");
    let rate = RATE.to_string();
    let args = [
        "--settle-secs",
        "1",
        "--piece-length",
        "16K",
        "--verify-rate",
        rate.as_str(),
    ];
    let mut m = start_master("master", d.path(), &args);
    small_snapshot(&m.snaps.join("v1"), 3);
    let v1 = m.wait_published("v1");
    let published_at = Instant::now();
    let bytes = v1["bytes"].as_u64().unwrap();

    // Intact data passes, at the configured rate.
    let verify = m.wait_for(PUBLISH, "a full re-verification pass", |m| {
        let v = m.status()["verify"].clone();
        (v["passes"].as_u64() >= Some(1)).then_some(v)
    });
    let took = published_at.elapsed().as_secs_f64();
    let floor = (bytes - 16 * 1024) as f64 / RATE as f64 * 0.8;
    assert!(
        took >= floor,
        "a pass over {bytes} bytes at {RATE} B/s took {took:.2}s: not throttled"
    );
    assert_eq!(verify["rate"], RATE, "{verify}");
    let measured = verify["bytes_per_sec"].as_u64().unwrap();
    assert!(
        measured <= RATE * 5 / 4,
        "measured {measured} B/s against a rate of {RATE}: {verify}"
    );
    assert!(verify["last_full_pass_at"].is_string(), "{verify}");
    assert_eq!(m.version_numbers(), vec![1], "intact data stays published");
    assert!(m.metric("indexswarm_verified_bytes_total") >= Some(bytes as f64));

    edit_keeping_mtime(&m.snaps.join("v1/_0.cfs"), 100_000);
    let s = m.wait_for(PUBLISH, "the edited version to be withdrawn", |m| {
        let s = m.status();
        (m.versions().is_empty() && s["last_error"].is_string()).then_some(s)
    });
    let err = s["last_error"].as_str().unwrap();
    for needle in ["version 1", "re-verification", "piece", "_0.cfs"] {
        assert!(
            err.contains(needle),
            "last_error should say {needle:?}: {err}"
        );
    }
    let withdrawn = &s["withdrawn"][0];
    assert_eq!(withdrawn["version"], 1, "{s}");
    assert!(
        withdrawn["reason"]
            .as_str()
            .is_some_and(|r| r.contains("_0.cfs")),
        "{s}"
    );
    assert_eq!(s["verify"]["failures"], 1, "{s}");
    assert_eq!(m.metric("indexswarm_verify_failures_total"), Some(1.0));
    assert_eq!(m.get("/versions/1/torrent").status, 404);
    assert_eq!(m.get("/versions/latest").status, 404);
}

#[test]
fn master_verifier_leaves_a_retired_version_and_shutdown_at_once() {
    let d = test_dir("m-verify-retire");
    // At 1 KiB/s each 16 KiB piece costs 16 s: any wait the verifier does
    // not cut short shows.
    let args = [
        "--settle-secs",
        "1",
        "--piece-length",
        "16K",
        "--verify-rate",
        "1K",
        "--keep-versions",
        "1",
    ];
    let mut m = start_master("master", d.path(), &args);
    small_snapshot(&m.snaps.join("v1"), 1);
    m.wait_published("v1");
    m.wait_for(PUBLISH, "the verifier to start on version 1", |m| {
        (m.status()["verify"]["version"] == 1).then_some(())
    });
    small_snapshot(&m.snaps.join("v2"), 2);
    m.wait_published("v2");
    // Retention runs just after the new version becomes visible.
    m.wait_for(Duration::from_secs(10), "v1 to be retired", |m| {
        (m.version_numbers() == vec![2]).then_some(())
    });
    m.wait_for(
        Duration::from_secs(5),
        "the verifier to leave the retired version 1 for version 2",
        |m| (m.status()["verify"]["version"] == 2).then_some(()),
    );
    assert_eq!(m.status()["verify"]["failures"], 0);

    let asked = Instant::now();
    m.proc.signal("TERM");
    let st = m.proc.wait(Duration::from_secs(10));
    assert!(st.success(), "SIGTERM ends the master cleanly: {st}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} on the verifier's throttle",
        asked.elapsed()
    );
}

/// #8: the verifier re-reads a published version through the seeding
/// session's parsed torrent; it used to parse the stored torrent again
/// into a second copy of every file entry (at 50,000 files, tens of
/// megabytes). With the stored torrent gone it still completes passes.
#[test]
fn master_verifier_shares_the_seeding_sessions_torrent() {
    let d = test_dir("m-verify-shared");
    let args = [
        "--settle-secs",
        "1",
        "--piece-length",
        "16K",
        "--verify-rate",
        "8M",
    ];
    let mut m = start_master("master", d.path(), &args);
    small_snapshot(&m.snaps.join("v1"), 2);
    m.wait_published("v1");
    let torrent = m.snaps.join(".indexswarm/torrents/1.torrent");
    fs::remove_file(&torrent).unwrap();
    // A pass under way may have opened the version before the removal: the
    // one after it cannot have.
    let before = m.status()["verify"]["passes"].as_u64().unwrap_or(0);
    let v = m.wait_for(PUBLISH, "two more passes without the stored torrent", |m| {
        let v = m.status()["verify"].clone();
        (v["passes"].as_u64() >= Some(before + 2)).then_some(v)
    });
    assert_eq!(v["failures"], 0, "{v}");
    assert_eq!(m.version_numbers(), vec![1], "still published");
}
