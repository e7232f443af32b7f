//! Issue #6 (integrity), the replica's side: the real `indexswarm master`
//! and `indexswarm replica` processes on loopback, driven as an unlucky
//! operator or a confused master would drive them.
//!
//! - finding 3: a `versions/<n>` directory is swapped in only if it holds
//!   that info-hash's verified content (manual rollback, master state lost);
//! - finding 4: the master's epoch (state lost and restarted at version 1; a
//!   bogus version 18446744073709551615; a master behind the replica);
//! - finding 5: repairing a reused file never writes into the live version;
//! - finding 6: a second process on the same data or state directory exits 1;
//! - the swap path killed (SIGKILL) at every named crash point, in symlink
//!   and Solr mode: `current` is always a complete version, and the replica
//!   converges after a restart.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::replica::{
    http, solr_index_dir, spawn_replica, start_replica, start_standin, Master, Replica, MB,
    REPLICATE, START,
};

// ---------------------------------------------------------------- helpers

/// The directory `DATA/current` points at (`versions/<n>` or a variant).
fn current_dir(data: &Path) -> Option<PathBuf> {
    let target = fs::read_link(data.join("current")).ok()?;
    Some(data.join(target))
}

/// The version number in a version directory's name (`7`, `7-0a1b2c3d`).
fn slot_version(dir: &Path) -> u64 {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let num = name.split('-').next().unwrap_or_default();
    num.parse()
        .unwrap_or_else(|_| panic!("not a version directory: {}", dir.display()))
}

/// Points `DATA/current` at `versions/<v>` by hand, as an operator rolling
/// back would (with the replica stopped).
fn roll_back_by_hand(data: &Path, v: u64) {
    let tmp = data.join("rollback.tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("versions/{v}"), &tmp).unwrap();
    fs::rename(&tmp, data.join("current")).unwrap();
}

/// Flips one byte in the middle of `file` (writable or not: the operator is root).
fn flip_byte(file: &Path) {
    let len = fs::metadata(file).unwrap().len();
    assert!(len > 0, "{}", file.display());
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let at = len / 2;
    let mut b = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0x5a], at).unwrap();
    f.flush().unwrap();
}

/// The master loses its state directory (and its snapshots): killed, wiped,
/// started again on the same ports with nothing published.
fn lose_master_state(m: &mut Master) {
    m.proc.signal("KILL");
    m.proc.wait(Duration::from_secs(10));
    fs::remove_dir_all(&m.snaps).unwrap();
    fs::create_dir_all(&m.snaps).unwrap();
    m.versions.clear();
    m.restart();
    assert!(m.latest().is_none(), "the new master starts empty");
}

fn latest_hash(m: &Master) -> String {
    m.latest().unwrap()["info_hash"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Nudges a replica to poll now (after the master came back).
fn poll(r: &Replica) {
    let _ = http("POST", &format!("{}/poll", r.url), None);
}

// ---------------------------------------------------------------- finding 3

#[test]
fn rolled_back_replica_reuses_version_2_only_if_it_still_verifies() {
    let d = test_dir("int-rollback");
    let mut m = Master::start(d.path(), &[]);
    let data = d.path().join("r");
    let v1 = m.publish_new("snapshot.20260101000000000", 4 * MB, 1);
    let v2 = m.publish_next(v1, "snapshot.20260102000000000", MB, 2);
    let r = start_replica(&m, &data, "replica-1", &[], &[]);
    r.wait_version(v2, REPLICATE);
    drop(r);

    // A clean rollback and a restart: version 2 is still intact on disk, so
    // it goes live again without a byte over the network.
    roll_back_by_hand(&data, v1);
    let r = start_replica(&m, &data, "replica-2", &[], &[]);
    r.wait_version(v2, REPLICATE);
    assert_same_tree(m.snapshot(v2), &current_dir(&data).unwrap());
    assert_eq!(r.status()["bytes_downloaded"], 0, "{}", r.diag());
    drop(r);

    // Rolled back again, and a file only version 2 has is damaged meanwhile.
    roll_back_by_hand(&data, v1);
    let damaged = data.join("versions/2/_n.cfs");
    assert_eq!(fs::metadata(&damaged).unwrap().nlink(), 1, "not shared");
    flip_byte(&damaged);
    let r = start_replica(&m, &data, "replica-3", &[], &[]);
    r.wait_version(v2, REPLICATE);
    assert_same_tree(m.snapshot(v2), &current_dir(&data).unwrap());
    // Checked piece by piece: only the damaged piece came over the network.
    let s = r.status();
    let total = s["bytes_total"].as_u64().unwrap();
    let down = s["bytes_downloaded"].as_u64().unwrap();
    assert!(
        down > 0 && down < total / 4,
        "downloaded {down} of {total}: {s}"
    );
    assert_eq!(s["current_info_hash"], latest_hash(&m), "{s}");
}

#[test]
fn version_2_republished_after_the_master_lost_its_state_is_fetched_not_taken_from_disk() {
    let d = test_dir("int-republished-v2");
    let mut m = Master::start(d.path(), &[]);
    let data = d.path().join("r");
    let v1 = m.publish_new("snapshot.20260101000000000", 4 * MB, 1);
    let v2 = m.publish_next(v1, "snapshot.20260102000000000", MB, 2);
    let r = start_replica(&m, &data, "replica-1", &[], &[]);
    r.wait_version(v2, REPLICATE);
    let old_hash = r.status()["current_info_hash"].clone();
    drop(r);
    roll_back_by_hand(&data, v1);

    // The master loses its state and publishes different content as 1 and 2.
    lose_master_state(&mut m);
    assert_eq!(m.publish_new("snapshot.20270101000000000", 3 * MB, 7), 1);
    assert_eq!(m.publish_new("snapshot.20270102000000000", 3 * MB, 8), 2);
    let new_hash = latest_hash(&m);
    assert_ne!(Value::from(new_hash.clone()), old_hash);

    let r = start_replica(&m, &data, "replica-2", &[], &[]);
    r.wait_status(REPLICATE, "the republished version 2", |s| {
        s["state"] == "idle" && s["current_version"] == 2 && s["current_info_hash"] == new_hash
    });
    let live = current_dir(&data).unwrap();
    assert_same_tree(m.snapshot(2), &live);
    let s = r.status();
    assert_eq!(
        PathBuf::from(s["current_path"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        live.canonicalize().unwrap(),
        "{s}"
    );
}

#[test]
fn the_live_number_republished_with_other_bytes_is_staged_beside_the_live_directory() {
    let d = test_dir("int-same-number");
    let mut m = Master::start(d.path(), &[]);
    let data = d.path().join("r");
    let v1 = m.publish_new("snapshot.20260101000000000", 4 * MB, 1);
    let v2 = m.publish_next(v1, "snapshot.20260102000000000", MB, 2);
    let r = start_replica(&m, &data, "replica-1", &[], &[]);
    r.wait_version(v2, REPLICATE);
    drop(r);
    let old_live = tree(&data.join("versions/2"));

    // While the replica is down, the master loses its state and publishes
    // other bytes as 1 and 2: the new 2 cannot go into versions/2, the live
    // directory.
    lose_master_state(&mut m);
    assert_eq!(m.publish_new("snapshot.20270101000000000", 3 * MB, 7), 1);
    assert_eq!(m.publish_new("snapshot.20270102000000000", 3 * MB, 8), 2);
    let new_hash = latest_hash(&m);
    let r = start_replica(&m, &data, "replica-2", &[], &[]);
    r.wait_status(REPLICATE, "the new version 2", |s| {
        s["state"] == "idle" && s["current_version"] == 2 && s["current_info_hash"] == new_hash
    });
    let target = fs::read_link(data.join("current")).unwrap();
    assert_eq!(
        target,
        PathBuf::from(format!("versions/2-{}", &new_hash[..8])),
        "staged beside the live directory"
    );
    assert_same_tree(m.snapshot(2), &data.join(&target));
    assert!(
        tree(&data.join("versions/2")) == old_live,
        "the old live directory was never written into"
    );
    drop(r);

    // A restart recognises the live version by its manifest, under that name.
    let r = start_replica(&m, &data, "replica-3", &[], &[]);
    r.wait_status(START, "the live version after a restart", |s| {
        s["current_version"] == 2 && s["current_info_hash"] == new_hash
    });
    // And the next version goes on as usual.
    let v3 = m.publish_next(2, "snapshot.20270103000000000", MB, 9);
    r.wait_version(v3, REPLICATE);
    assert_same_tree(m.snapshot(v3), &current_dir(&data).unwrap());
    assert_eq!(r.status()["times_replicated"], 1, "{}", r.diag());
}

#[test]
fn a_live_version_without_a_manifest_is_checked_in_place_at_startup() {
    let d = test_dir("int-no-manifest");
    let mut m = Master::start(d.path(), &[]);
    let data = d.path().join("r");
    let v1 = m.publish_new("snapshot.20260101000000000", 4 * MB, 1);
    let r = start_replica(&m, &data, "replica-1", &[], &[]);
    r.wait_version(v1, REPLICATE);
    let hash = r.status()["current_info_hash"].clone();
    drop(r);
    // Started with no master in reach, a replica shows what recovery found.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let manifest = data.join("versions/1.manifest");

    // As after an upgrade from a replica without manifests: intact bytes
    // are checked piece by piece, trusted, and get a manifest again.
    fs::remove_file(&manifest).unwrap();
    let r = spawn_replica(&nobody, &m.logs, &data, "replica-2", &[], &[]);
    r.wait_status(START, "the live version proven in place", |s| {
        s["current_version"] == v1 && s["current_info_hash"] == hash
    });
    assert!(manifest.is_file(), "the manifest is written again");
    drop(r);

    // Damaged bytes and no manifest: no live version as far as /status
    // goes (it names no bytes that are not there), and it says why.
    fs::remove_file(&manifest).unwrap();
    flip_byte(&data.join("versions/1/_0.cfs"));
    let r = spawn_replica(&nobody, &m.logs, &data, "replica-3", &[], &[]);
    r.wait_status(START, "the damaged live version reported", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match its torrent"))
    });
    let s = r.status();
    assert!(s["current_version"].is_null(), "{s}");
    assert!(s["current_info_hash"].is_null(), "{s}");
    drop(r);

    // With the master: replaced beside it, never written into.
    let r = start_replica(&m, &data, "replica-4", &[], &[]);
    r.wait_status(REPLICATE, "version 1 fetched again", |s| {
        s["state"] == "idle" && s["current_version"] == v1 && s["current_info_hash"] == hash
    });
    let live = current_dir(&data).unwrap();
    assert_ne!(live, data.join("versions/1"), "{}", live.display());
    assert_same_tree(m.snapshot(v1), &live);
}

// ---------------------------------------------------------------- finding 4

#[test]
fn a_master_that_lost_its_state_and_restarted_at_version_1_is_followed() {
    let d = test_dir("int-epoch");
    let mut m = Master::start(d.path(), &[]);
    let data = d.path().join("r");
    let v1 = m.publish_new("snapshot.20260101000000000", 4 * MB, 1);
    let v2 = m.publish_next(v1, "snapshot.20260102000000000", MB, 2);
    let r = start_replica(&m, &data, "replica", &[], &[]);
    r.wait_version(v2, REPLICATE);
    let epoch = m.latest().unwrap()["epoch"].clone();

    lose_master_state(&mut m);
    assert_eq!(m.publish_new("snapshot.20270101000000000", 3 * MB, 9), 1);
    let latest = m.latest().unwrap();
    poll(&r);
    let hash = latest["info_hash"].clone();
    r.wait_status(REPLICATE, "version 1 of the new epoch", |s| {
        s["state"] == "idle" && s["current_version"] == 1 && s["current_info_hash"] == hash
    });
    assert_same_tree(m.snapshot(1), &current_dir(&data).unwrap());
    assert!(
        latest["epoch"]
            .as_str()
            .is_some_and(|e| e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())),
        "the version object carries a 32-hex epoch: {latest}"
    );
    assert_ne!(latest["epoch"], epoch, "a new state has a new epoch");
}

#[test]
fn the_same_bytes_renumbered_in_a_new_epoch_are_adopted_without_a_download() {
    let d = test_dir("int-adopt");
    let mut m = Master::start(d.path(), &[]);
    let data = d.path().join("r");
    let v1 = m.publish_new("snapshot.20260101000000000", 4 * MB, 1);
    let v2 = m.publish_next(v1, "snapshot.20260102000000000", MB, 2);
    let r = start_replica(&m, &data, "replica", &[], &[]);
    r.wait_version(v2, REPLICATE);
    let hash = r.status()["current_info_hash"].clone();

    // The master loses its state (not its snapshots) and the first
    // snapshot is gone: it publishes the second one again, as version 1.
    m.proc.signal("KILL");
    m.proc.wait(Duration::from_secs(10));
    fs::remove_dir_all(m.snaps.join(".indexswarm")).unwrap();
    fs::remove_dir_all(m.snapshot(v1)).unwrap();
    let second = m.snapshot(v2).to_path_buf();
    m.versions.clear();
    m.restart();
    wait_until(REPLICATE, "the master to publish it again", || {
        m.latest()
            .is_some_and(|v| v["version"] == 1 && v["info_hash"] == hash)
    });
    m.versions.insert(1, second);
    poll(&r);
    r.wait_status(REPLICATE, "the same bytes as version 1", |s| {
        s["state"] == "idle" && s["current_version"] == 1 && s["current_info_hash"] == hash
    });
    let s = r.status();
    assert_eq!(s["bytes_downloaded"], 0, "{s}");
    assert_eq!(
        fs::read_link(data.join("current")).unwrap(),
        Path::new("versions/1")
    );
    assert_same_tree(m.snapshot(1), &data.join("versions/1"));
    let epoch = m.latest().unwrap()["epoch"].as_str().unwrap().to_string();
    assert_eq!(
        fs::read_to_string(data.join("master-epoch"))
            .unwrap()
            .trim(),
        epoch
    );
}

/// What the stand-in answers for `/versions/latest` and `/versions`.
const PROXY: u8 = 0;
const BOGUS: u8 = 1;
const BEHIND: u8 = 2;

/// An HTTP stand-in for a confused master: it forwards every request to the
/// real master, except that in `BOGUS` mode it calls the real latest version
/// 18446744073709551615 and in `BEHIND` mode it offers version 1 as the
/// latest while still listing every version. Its JSON names its own
/// origin, never the real master's: a replica fetches torrents from the
/// origin of its `master_url` only.
fn start_confused_master(real: &str, mode: Arc<AtomicU8>) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let real = real.to_string();
    let own = url.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let mut parts = line.split(' ');
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
            let forward = || request(method, &format!("{real}{path}"), None, None);
            let json = |v: Value| {
                (
                    200u16,
                    "application/json".to_string(),
                    v.to_string().into_bytes(),
                )
            };
            let (code, ctype, body) = match (mode.load(Ordering::SeqCst), path) {
                // A master of the first release: no rollouts, no reports, so
                // the replica follows /versions/latest, which this one fakes.
                (_, p) if p.starts_with("/rollout") || p.starts_with("/replicas") => (
                    404,
                    "application/json".into(),
                    b"{\"error\":\"not found\"}".to_vec(),
                ),
                (BOGUS, "/versions/latest") | (BOGUS, "/versions") => {
                    match get_json(&format!("{real}/versions/latest")) {
                        Some(mut v) => {
                            v["version"] = Value::from(u64::MAX);
                            json(if path == "/versions" {
                                Value::from(vec![v])
                            } else {
                                v
                            })
                        }
                        None => (
                            404,
                            "application/json".into(),
                            b"{\"error\":\"none\"}".to_vec(),
                        ),
                    }
                }
                (BEHIND, "/versions/latest") => {
                    let list = get_json(&format!("{real}/versions")).unwrap();
                    json(list.as_array().unwrap().last().unwrap().clone())
                }
                _ => {
                    let r = forward();
                    (r.status, r.content_type, r.body)
                }
            };
            let body = if ctype.contains("json") {
                String::from_utf8_lossy(&body)
                    .replace(&real, &own)
                    .into_bytes()
            } else {
                body
            };
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    url
}

#[test]
fn a_bogus_huge_version_does_not_pin_the_replica_and_a_master_behind_is_reported() {
    let d = test_dir("int-bogus");
    let mut m = Master::start(d.path(), &[]);
    let mode = Arc::new(AtomicU8::new(BOGUS));
    let confused = start_confused_master(&m.url, mode.clone());
    let data = d.path().join("r");
    let v1 = m.publish_new("snapshot.20260101000000000", 4 * MB, 1);
    let r = spawn_replica(&confused, &m.logs, &data, "replica", &[], &[]);
    r.wait_status(START + REPLICATE, "the bogus version live", |s| {
        s["state"] == "idle" && s["current_version"] == u64::MAX
    });
    assert_same_tree(m.snapshot(v1), &current_dir(&data).unwrap());

    // The master comes to its senses and publishes version 2.
    mode.store(PROXY, Ordering::SeqCst);
    let v2 = m.publish_next(v1, "snapshot.20260102000000000", MB, 2);
    r.wait_version(v2, REPLICATE);
    assert_same_tree(m.snapshot(v2), &current_dir(&data).unwrap());
    assert_eq!(r.status()["current_info_hash"], latest_hash(&m));

    // Now it offers version 1 as its latest, though it still lists version
    // 2: reported, not obeyed.
    mode.store(BEHIND, Ordering::SeqCst);
    poll(&r);
    r.wait_status(REPLICATE, "the master reported behind", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("master is behind this replica"))
    });
    let seen = r.status()["next_poll_at"].clone();
    r.wait_status(Duration::from_secs(20), "another poll", |s| {
        s["next_poll_at"] != seen && s["state"] != "downloading"
    });
    let s = r.status();
    assert_eq!(s["current_version"], v2, "{s}");
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("master is behind this replica")),
        "{s}"
    );
    assert_same_tree(m.snapshot(v2), &current_dir(&data).unwrap());
}

// ---------------------------------------------------------------- finding 5

#[test]
fn repairing_a_reused_file_never_writes_into_the_live_version() {
    let d = test_dir("int-cow");
    let mut m = Master::start(d.path(), &[]);
    let data = d.path().join("r");
    let v1 = m.publish_new("snapshot.20260101000000000", 4 * MB, 1);
    let r = start_replica(&m, &data, "replica", &[], &[]);
    r.wait_version(v1, REPLICATE);

    // A bad sector in the live copy of a file version 2 will reuse.
    let live_file = data.join("versions/1/_0.cfs");
    flip_byte(&live_file);
    let before = tree(&data.join("versions/1"));

    let v2 = m.publish_next(v1, "snapshot.20260102000000000", MB, 2);
    r.wait_version(v2, REPLICATE);
    let new_dir = data.join("versions/2");
    assert_same_tree(m.snapshot(v2), &new_dir);
    assert!(
        tree(&data.join("versions/1")) == before,
        "the live version was written into while version 2 was staged"
    );
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_ne!(
        ino(&live_file),
        ino(&new_dir.join("_0.cfs")),
        "a private copy"
    );
    assert_eq!(
        ino(&data.join("versions/1/_1.cfs")),
        ino(&new_dir.join("_1.cfs")),
        "undamaged files are still reused by hard link"
    );
    for (name, _) in tree(&new_dir) {
        let mode = fs::metadata(new_dir.join(&name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o222,
            0,
            "{name} of a finalized version is read-only"
        );
    }
}

// ---------------------------------------------------------------- finding 6

/// Runs a second process that must exit 1 at once with one line naming `pid`.
fn assert_refused(mut p: Proc, dir: &Path, pid: u32) {
    let st = p.wait(START);
    let err = p.stderr_text();
    assert_eq!(st.code(), Some(1), "{}: {err}", p.name);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    assert!(
        lines[0].starts_with("error: ")
            && lines[0].contains(&format!(
                "{} is in use by another indexswarm (pid {pid})",
                dir.display()
            )),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_second_process_on_the_same_directory_exits_1_naming_the_holder() {
    let d = test_dir("int-lock");
    let mut m = Master::start(d.path(), &[]);
    let data = d.path().join("r");
    let r = start_replica(&m, &data, "replica-1", &[], &[]);

    let second = spawn_replica(&m.url, &m.logs, &data, "replica-2", &[], &[]);
    assert_refused(second.proc, &data, r.proc.pid());

    let (hp, pp) = crate::replica::two_ports();
    let mut c = cmd();
    c.args(["master", "--snapshots-dir"]).arg(&m.snaps).args([
        "--http-listen",
        &format!("127.0.0.1:{hp}"),
        "--peer-listen",
        &format!("127.0.0.1:{pp}"),
    ]);
    let second = Proc::spawn("master-2", c, &m.logs);
    assert_refused(second, &m.snaps.join(".indexswarm"), m.proc.pid());

    // The first ones are undisturbed.
    let v = m.publish_new("snapshot.20260101000000000", 2 * MB, 3);
    r.wait_version(v, REPLICATE);
}

// ---------------------------------------------------------------- crash points

/// Crash points only Solr mode passes.
const SOLR_ONLY: &[&str] = &[
    "solr_link_tree_done",
    "solr_index_renamed",
    "solr_core_dir_synced",
    "solr_properties_renamed",
    "solr_reload_done",
    "live_version_renamed",
];
/// Crash points only symlink mode passes.
const SYMLINK_ONLY: &[&str] = &[
    "symlink_tmp_created",
    "current_renamed",
    "current_dir_synced",
];

/// A master for the crash loops: versions are a shared base (hard links
/// into one generated snapshot) plus a small new segment each, published
/// at once through `POST /snapshot`.
struct Series {
    m: Master,
    base: PathBuf,
    next: u64,
}

impl Series {
    fn new(root: &Path) -> Series {
        let m = Master::start(root, &[]);
        let base = root.join("base");
        indexswarm::demo::generate_snapshot(&base, 2 * MB, 5).unwrap();
        Series { m, base, next: 0 }
    }

    fn publish(&mut self) -> u64 {
        self.next += 1;
        let k = self.next;
        let name = format!("snapshot.{}", 20260101000000000u64 + k * 1000);
        let staged = self.m.staging.join(&name);
        fs::create_dir_all(&staged).unwrap();
        for e in fs::read_dir(&self.base).unwrap().flatten() {
            fs::hard_link(e.path(), staged.join(e.file_name())).unwrap();
        }
        fs::write(staged.join(format!("_v{k}.cfs")), fill(1000 + k, 64 * 1024)).unwrap();
        fs::write(staged.join(format!("segments_{k}")), fill(2000 + k, 900)).unwrap();
        let dir = self.m.snaps.join(&name);
        fs::rename(&staged, &dir).unwrap();
        let body = format!("{{\"path\": \"{name}\"}}");
        let r = request(
            "POST",
            &format!("{}/snapshot", self.m.url),
            Some(&body),
            None,
        );
        assert!(
            r.status == 201 || r.status == 200,
            "POST /snapshot: {}",
            r.text()
        );
        let v = r.json()["version"].as_u64().unwrap();
        self.m.versions.insert(v, dir);
        v
    }

    fn hash(&self, v: u64) -> Value {
        let list = get_json(&format!("{}/versions", self.m.url)).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|x| x["version"] == v)
            .map(|x| x["info_hash"].clone())
            .unwrap()
    }
}

/// Waits for a replica started with a crash point to die by SIGKILL there.
fn assert_crashed_at(r: &mut Replica, point: &str) {
    let st = r.proc.wait(REPLICATE);
    assert_eq!(
        st.signal(),
        Some(9),
        "{} should have been killed at {point}: {st}\n{}",
        r.proc.name,
        tail(&r.proc.stderr_text())
    );
    assert!(
        r.proc
            .stderr_text()
            .contains(&format!("crash point {point}: SIGKILL")),
        "{}",
        tail(&r.proc.stderr_text())
    );
}

/// The loop shared by both modes: for each point, publish a version, start
/// a replica that dies there, check what is live, restart it without the
/// crash point and check that it converges and leaves nothing behind.
/// `live_now` checks that what the search server reads is one complete
/// version and returns it; `more_dirs` are searched for leftovers too.
fn crash_loop(
    s: &mut Series,
    data: &Path,
    extra: &[&str],
    points: &[&str],
    more_dirs: &[&Path],
    live_now: &dyn Fn(&Master) -> Option<u64>,
) {
    let started = Instant::now();
    let mut n = 0;
    for point in points {
        let v = s.publish();
        n += 1;
        let mut r = spawn_replica(
            &s.m.url,
            &s.m.logs,
            data,
            &format!("replica-{point}"),
            extra,
            &[("INDEXSWARM_CRASH_AT", point)],
        );
        assert_crashed_at(&mut r, point);
        // (a) what is live is a complete version, the one it claims to be.
        let live = live_now(&s.m);
        assert!(
            live == Some(v) || live == Some(v - 1),
            "after a kill at {point}: live {live:?}, expected {} or {v}",
            v - 1
        );
        // (b) restarted without the crash point, it converges.
        let r = start_replica(&s.m, data, &format!("replica-{point}-after"), extra, &[]);
        r.wait_version(v, REPLICATE);
        assert_eq!(live_now(&s.m), Some(v), "after the restart from {point}");
        let st = r.status();
        assert_eq!(st["current_info_hash"], s.hash(v), "{point}: {st}");
        assert!(st["last_error"].is_null(), "{point}: {st}");
        let mut dirs = vec![data.to_path_buf(), data.join("versions")];
        dirs.extend(more_dirs.iter().map(|d| d.to_path_buf()));
        let leftovers: Vec<String> = dirs
            .iter()
            .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.ends_with(".partial") || n.contains(".indexswarm-") || n.ends_with(".tmp")
            })
            .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
    }
    eprintln!(
        "{n} crash points in {:.1}s ({:.1}s each)",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() / n.max(1) as f64
    );
}

#[test]
fn swap_path_killed_at_every_crash_point_symlink_mode() {
    let points: Vec<&str> = indexswarm::util::crash::POINTS
        .iter()
        .copied()
        .filter(|p| !SOLR_ONLY.contains(p))
        .collect();
    assert!(points.len() >= 20, "{points:?}");
    let d = test_dir("int-crash");
    let mut s = Series::new(d.path());
    let data = d.path().join("r");
    // keep_versions = 1 and a hook: retention and the hook run every cycle.
    let extra = ["--keep-versions", "1", "--on-swap", "true"];
    // Two clean versions first, so every cycle has a live version to reuse
    // from and an old one to delete.
    for _ in 0..2 {
        let v = s.publish();
        let r = start_replica(&s.m, &data, &format!("replica-warm-{v}"), &extra, &[]);
        r.wait_version(v, REPLICATE);
    }
    let live_now = |m: &Master| -> Option<u64> {
        let dir = current_dir(&data)?;
        let v = slot_version(&dir);
        assert_same_tree(m.snapshot(v), &dir);
        Some(v)
    };
    crash_loop(&mut s, &data, &extra, &points, &[], &live_now);
}

#[test]
fn swap_path_killed_at_every_crash_point_solr_mode() {
    // The points both modes share are covered by the symlink loop.
    let points = SOLR_ONLY;
    for p in SOLR_ONLY.iter().chain(SYMLINK_ONLY) {
        assert!(indexswarm::util::crash::POINTS.contains(p), "{p}");
    }
    let d = test_dir("int-crash-solr");
    let mut s = Series::new(d.path());
    let data = d.path().join("r");
    let solr = start_standin();
    let core = d.path().join("solr/core/data");
    let admin = format!("http://127.0.0.1:{}/solr/admin/cores", solr.port);
    let core_arg = core.to_str().unwrap().to_string();
    let extra = [
        "--keep-versions",
        "1",
        "--on-swap",
        "true",
        "--mode",
        "solr",
        "--solr-core-data-dir",
        &core_arg,
        "--solr-core",
        "core",
        "--solr-core-admin-url",
        &admin,
    ];
    for _ in 0..2 {
        let v = s.publish();
        let r = start_replica(&s.m, &data, &format!("replica-warm-{v}"), &extra, &[]);
        r.wait_version(v, REPLICATE);
    }
    // What Solr reads: the index directory index.properties names, which
    // must be one complete version (identified by content).
    let live_now = |m: &Master| -> Option<u64> {
        let dir = core.join(solr_index_dir(&core)?);
        let found = tree(&dir);
        let v = m
            .versions
            .iter()
            .rev()
            .find(|(_, snap)| tree(snap) == found)
            .map(|(v, _)| *v);
        assert!(v.is_some(), "{} is no complete version", dir.display());
        v
    };
    crash_loop(&mut s, &data, &extra, points, &[&core], &live_now);
}
