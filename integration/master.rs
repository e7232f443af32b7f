//! Issue 4: the master sidecar as a real process on loopback. Snapshot
//! directories are published once and only once they are complete; the
//! API answers as INTERFACE.md says; versions survive kill -9; retention
//! drops the oldest; aria2 and our own fetch download a published version
//! from nothing but its torrent URL.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use indexswarm::metainfo::Metainfo;
use serde_json::Value;

use crate::common::*;

mod publish_cost;
mod verify;

/// Startup (the binary, a bound port, a restored registry).
const START: Duration = Duration::from_secs(30);
/// A few MB settling and being hashed on a busy 2-core machine.
const PUBLISH: Duration = Duration::from_secs(30);
/// A download of a few MB on loopback.
const DOWNLOAD: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- HTTP

/// `(status, body)` of a request.
fn http(method: &str, url: &str, body: Option<&str>, auth: Option<&str>) -> (u16, String) {
    let r = request(method, url, body, auth);
    (r.status, r.text())
}

// ---------------------------------------------------------------- the master

struct MasterProc {
    proc: Proc,
    url: String,
    snaps: PathBuf,
}

/// Starts `indexswarm master` on `http_port`/`peer_port` and waits for
/// `/healthz`. `--settle-secs` and the rest come from `extra`.
fn start_master_on(
    label: &str,
    root: &Path,
    snaps: &Path,
    http_port: u16,
    peer_port: u16,
    extra: &[&str],
) -> MasterProc {
    let mut c = master_cmd();
    c.arg("--snapshots-dir")
        .arg(snaps)
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .args(["--peer-listen", &format!("127.0.0.1:{peer_port}")])
        .args(extra);
    let proc = Proc::spawn(label, c, &root.join("logs"));
    let mut m = MasterProc {
        proc,
        url: format!("http://127.0.0.1:{http_port}"),
        snaps: snaps.to_path_buf(),
    };
    m.wait_for(START, "the master to answer /healthz", |m| {
        (m.get("/healthz").status == 200).then_some(())
    });
    m
}

fn start_master(label: &str, root: &Path, extra: &[&str]) -> MasterProc {
    let snaps = root.join("snaps");
    fs::create_dir_all(&snaps).unwrap();
    start_master_on(label, root, &snaps, free_port(), free_port(), extra)
}

/// `indexswarm master`, with no INDEXSWARM_* variable leaking in from the
/// environment the tests run in.
fn master_cmd() -> Command {
    let mut c = cmd();
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("INDEXSWARM_") {
            c.env_remove(k);
        }
    }
    c.arg("master");
    c
}

impl MasterProc {
    fn get(&self, path: &str) -> Resp {
        request("GET", &format!("{}{path}", self.url), None, None)
    }

    fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    fn post_snapshot(&self, body: Option<&str>, auth: Option<&str>) -> Resp {
        request("POST", &format!("{}/snapshot", self.url), body, auth)
    }

    /// `/versions`, newest first.
    fn versions(&self) -> Vec<Value> {
        match self.get_json("/versions") {
            Value::Array(v) => v,
            other => panic!("/versions is not a list: {other}"),
        }
    }

    fn version_numbers(&self) -> Vec<u64> {
        self.versions()
            .iter()
            .map(|v| v["version"].as_u64().expect("a version number"))
            .collect()
    }

    fn status(&self) -> Value {
        self.get_json("/status")
    }

    /// Polls `f` every 50 ms until it yields a value; panics with the
    /// master's log if `limit` passes or the master exits meanwhile.
    fn wait_for<T>(
        &mut self,
        limit: Duration,
        what: &str,
        mut f: impl FnMut(&MasterProc) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if let Some(s) = self.proc.try_status() {
                panic!(
                    "the master exited ({s}) while we waited for {what}\nstderr:\n{}",
                    tail(&self.proc.stderr_text())
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {limit:?} waiting for {what}\nmaster stderr:\n{}",
                    tail(&self.proc.stderr_text())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/versions` lists `name`; returns its version object.
    fn wait_published(&mut self, name: &str) -> Value {
        self.wait_for(PUBLISH, &format!("{name} to be published"), |m| {
            m.versions().into_iter().find(|v| v["name"] == name)
        })
    }

    /// Asserts `ok` holds on every look for `window` (things that must not
    /// happen, like a second publication, need a window to not happen in).
    fn holds_for(&mut self, window: Duration, what: &str, mut ok: impl FnMut(&MasterProc) -> bool) {
        let end = Instant::now() + window;
        while Instant::now() < end {
            assert!(
                ok(self),
                "{what} stopped holding\nmaster stderr:\n{}",
                tail(&self.proc.stderr_text())
            );
            assert!(
                self.proc.try_status().is_none(),
                "the master exited\nstderr:\n{}",
                tail(&self.proc.stderr_text())
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The sample of `name`: unlabelled, or the `default` index's (#8
    /// labels the per-index metrics with `index`).
    fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics").text();
        let labelled = format!("{name}{{index=\"default\"}}");
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name || k == labelled)
                .then(|| v.trim().parse().ok())
                .flatten()
        })
    }
}

/// Sorted (relative path, length) of every regular file under `root`.
fn disk_files(root: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = tree(root)
        .into_iter()
        .map(|(p, data)| (p, data.len() as u64))
        .collect();
    v.sort();
    v
}

/// Sorted (path, length) of the real (non-padding) files of a torrent.
fn torrent_files(meta: &Metainfo) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = meta
        .files
        .iter()
        .filter(|f| !f.pad)
        .map(|f| (f.display_path(), f.length))
        .collect();
    v.sort();
    v
}

fn fetch_torrent(url: &str) -> Metainfo {
    let r = request("GET", url, None, None);
    assert_eq!(r.status, 200, "GET {url}: {}", r.text());
    assert_eq!(r.content_type, "application/x-bittorrent", "GET {url}");
    Metainfo::from_bytes(&r.body).unwrap_or_else(|e| panic!("{url} is not a torrent: {e}"))
}

fn is_hex40(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A small multi-file snapshot, different for each seed.
fn small_snapshot(dir: &Path, seed: u64) {
    write_tree(
        dir,
        &[
            ("segments_2", 200),
            ("_0.cfs", 300_000 + seed as usize * 1000),
            ("_0.si", 400),
            ("sub/_1.fdt", 50_000),
        ],
        seed,
    );
}

// ---------------------------------------------------------------- watcher

#[test]
fn slowly_written_directory_is_published_once_after_it_settles() {
    let d = test_dir("m-slow");
    let mut m = start_master("master", d.path(), &["--settle-secs", "2"]);
    let dir = m.snaps.join("slow");
    fs::create_dir(&dir).unwrap();
    // 12 files, one every 300 ms: 3.6 s of writing, much longer than the
    // settle interval, but never 2 s without a change.
    let mut last_write = Instant::now();
    for i in 0..12u64 {
        let size = 10_000 + i as usize * 37_000;
        fs::write(dir.join(format!("_{i}.seg")), fill(i + 1, size)).unwrap();
        last_write = Instant::now();
        assert!(
            m.versions().is_empty(),
            "a version was published while file {i} of 12 was still being written"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let v = m.wait_published("slow");
    let waited = last_write.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "published {waited:?} after the last write, before the 2 s settle interval"
    );
    let expected = disk_files(&dir);
    assert_eq!(expected.len(), 12);
    assert_eq!(v["version"], 1);
    assert_eq!(v["files"], 12, "{v}");
    assert_eq!(
        v["bytes"].as_u64(),
        Some(expected.iter().map(|f| f.1).sum::<u64>()),
        "{v}"
    );
    // The torrent holds exactly the complete directory.
    let meta = fetch_torrent(v["torrent_url"].as_str().expect("torrent_url"));
    assert_eq!(torrent_files(&meta), expected);
    // Exactly once: through a few more rescans and settle intervals.
    m.holds_for(Duration::from_secs(5), "exactly one version", |m| {
        m.versions().len() == 1
    });
    assert_eq!(m.metric("indexswarm_versions_published_total"), Some(1.0));
}

#[test]
fn solr_named_snapshots_are_published_with_every_field() {
    let d = test_dir("m-solr");
    let snaps = d.path().join("snaps");
    // Two Solr snapshots already there when the master starts: they settle
    // together and are numbered in timestamp order (the newer written first).
    let newer = "snapshot.20261124133000123";
    let older = "snapshot.20261124120000000";
    interop_tree(&snaps.join(newer), 21);
    small_snapshot(&snaps.join(older), 3);
    let before = time::OffsetDateTime::now_utc();
    let mut m = start_master_on(
        "master",
        d.path(),
        &snaps,
        free_port(),
        free_port(),
        &["--settle-secs", "1"],
    );
    let v = m.wait_published(newer);
    let first = m.wait_published(older);
    assert_eq!(first["version"], 1, "the older snapshot first: {first}");
    assert_eq!(v["version"], 2, "{v}");

    let obj = v.as_object().expect("a version object");
    for key in [
        "version",
        "name",
        "info_hash",
        "torrent_url",
        "files",
        "bytes",
        "piece_length",
        "created_at",
    ] {
        assert!(obj.contains_key(key), "version object lacks {key}: {v}");
    }
    assert_eq!(v["name"], newer);
    let hash = v["info_hash"].as_str().expect("info_hash is a string");
    assert!(is_hex40(hash), "info_hash {hash:?} is not 40 lowercase hex");
    assert_eq!(
        v["torrent_url"].as_str(),
        Some(format!("{}/versions/2/torrent", m.url).as_str())
    );
    let expected = disk_files(&snaps.join(newer));
    assert_eq!(expected.len(), 7, "interop tree has 7 files (one empty)");
    assert_eq!(v["files"].as_u64(), Some(expected.len() as u64), "{v}");
    assert_eq!(
        v["bytes"].as_u64(),
        Some(expected.iter().map(|f| f.1).sum::<u64>()),
        "{v}"
    );
    let pl = v["piece_length"]
        .as_u64()
        .expect("piece_length is a number");
    assert!(pl.is_power_of_two() && pl >= 16 * 1024, "piece_length {pl}");
    let created = v["created_at"].as_str().expect("created_at is a string");
    let t = time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("created_at {created:?} is not RFC 3339: {e}"));
    let now = time::OffsetDateTime::now_utc();
    assert!(
        t >= before - time::Duration::seconds(2) && t <= now + time::Duration::seconds(2),
        "created_at {created} is not between the start of the test and now"
    );

    // /versions/latest is the same object; the torrent matches it.
    assert_eq!(m.get_json("/versions/latest"), v);
    assert_eq!(m.versions()[0], v, "/versions is newest first");
    let meta = fetch_torrent(v["torrent_url"].as_str().unwrap());
    assert_eq!(meta.info_hash.to_string(), hash);
    assert_eq!(meta.name, newer);
    assert_eq!(meta.piece_length, pl);
    assert_eq!(torrent_files(&meta), expected);
    assert_eq!(meta.announce, vec![format!("{}/announce", m.url)]);
    // Piece-aligned by default: every real file starts on a piece boundary.
    let mut offset = 0;
    for f in &meta.files {
        if !f.pad && f.length > 0 {
            assert_eq!(offset % pl, 0, "{} is not piece-aligned", f.display_path());
        }
        offset += f.length;
    }
}

#[test]
fn directory_removed_before_settling_is_never_published() {
    let d = test_dir("m-vanish");
    let mut m = start_master("master", d.path(), &["--settle-secs", "4"]);
    let doomed = m.snaps.join("doomed");
    let created = Instant::now();
    small_snapshot(&doomed, 1);
    // The watcher has seen it (it is settling) ...
    m.wait_for(Duration::from_secs(10), "doomed to be pending", |m| {
        let s = m.status();
        s["pending_snapshots"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["name"] == "doomed"))
            .then_some(())
    });
    // ... and it goes away after about a second, well before its 4 s are up.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(created.elapsed()));
    fs::remove_dir_all(&doomed).unwrap();
    assert!(
        created.elapsed() < Duration::from_secs(3),
        "the test was too slow to remove the directory before it settled ({:?})",
        created.elapsed()
    );
    let keeper = m.snaps.join("keeper");
    small_snapshot(&keeper, 2);
    let v = m.wait_published("keeper");
    assert_eq!(v["version"], 1, "doomed must not have taken a number: {v}");
    let names: Vec<Value> = m.versions().iter().map(|v| v["name"].clone()).collect();
    assert_eq!(names, vec![Value::from("keeper")]);
    let s = m.status();
    assert!(
        s["last_error"].is_null(),
        "a vanished directory is not an error: {}",
        s["last_error"]
    );
    assert!(
        !s["pending_snapshots"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["name"] == "doomed")),
        "doomed is still pending: {s}"
    );
}

// ---------------------------------------------------------------- POST /snapshot

/// Sets every file's mtime under `dir` two hours back.
fn age_files(dir: &Path) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find '{}' -type f -exec touch -d '2 hours ago' {{}} +",
            dir.display()
        ))
        .status()
        .expect("find runs");
    assert!(st.success());
}

#[test]
fn post_snapshot_without_a_body_never_picks_a_directory_still_changing() {
    let d = test_dir("m-post-fresh");
    let snaps = d.path().join("snaps");
    small_snapshot(&snaps.join("old"), 1);
    age_files(&snaps);
    small_snapshot(&snaps.join("snapshot.20260105000000000"), 2); // just written
    let m = start_master_on(
        "master",
        d.path(),
        &snaps,
        free_port(),
        free_port(),
        &["--settle-secs", "3600"],
    );
    let r = m.post_snapshot(None, None);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["name"],
        "old",
        "the fresh directory is not complete yet"
    );
    // Named explicitly, the caller vouches for it.
    let r = m.post_snapshot(Some(r#"{"path": "snapshot.20260105000000000"}"#), None);
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn post_snapshot_with_and_without_a_body_and_bad_paths() {
    let d = test_dir("m-post");
    let snaps = d.path().join("snaps");
    let older = "snapshot.20260101000000000";
    let newer = "snapshot.20260102000000000";
    small_snapshot(&snaps.join(older), 1);
    small_snapshot(&snaps.join(newer), 2);
    small_snapshot(&snaps.join("plain"), 3);
    small_snapshot(&snaps.join(".hidden"), 4);
    let outside = d.path().join("outside");
    small_snapshot(&outside, 5);
    std::os::unix::fs::symlink(&outside, snaps.join("escape")).unwrap();
    // Written "two hours ago": complete for POST /snapshot without a body
    // (nothing changed for settle_secs), while the watcher, which must see
    // a directory unchanged for an hour itself, publishes nothing.
    age_files(&snaps);
    // An hour to settle: only POST /snapshot publishes here.
    let m = start_master_on(
        "master",
        d.path(),
        &snaps,
        free_port(),
        free_port(),
        &["--settle-secs", "3600"],
    );
    assert!(m.versions().is_empty());

    // No body: the newest complete subdirectory.
    let r = m.post_snapshot(None, None);
    assert_eq!(r.status, 201, "{}", r.text());
    let v1 = r.json();
    assert_eq!(
        (v1["version"].as_u64(), v1["name"].as_str()),
        (Some(1), Some(newer))
    );
    let r = m.post_snapshot(None, None);
    assert_eq!(r.status, 200, "already published: {}", r.text());
    assert_eq!(r.json(), v1);

    // A body naming a directory.
    let body = format!(r#"{{"path": "{older}"}}"#);
    let r = m.post_snapshot(Some(&body), None);
    assert_eq!(r.status, 201, "{}", r.text());
    let v2 = r.json();
    assert_eq!(
        (v2["version"].as_u64(), v2["name"].as_str()),
        (Some(2), Some(older))
    );
    let r = m.post_snapshot(Some(&body), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), v2);

    // An absolute path inside the snapshots directory is fine too.
    let abs = serde_json::json!({ "path": snaps.join("plain") }).to_string();
    let r = m.post_snapshot(Some(&abs), None);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "plain");

    // Bad and missing paths.
    let cases: Vec<(String, u16)> = vec![
        (r#"{"path": "../x"}"#.into(), 400),
        (r#"{"path": "../outside"}"#.into(), 400),
        (serde_json::json!({ "path": outside }).to_string(), 400),
        (r#"{"path": "/etc"}"#.into(), 400),
        (r#"{"path": "escape"}"#.into(), 400),
        (r#"{"path": "plain/sub"}"#.into(), 400),
        (r#"{"path": ".hidden"}"#.into(), 400),
        (r#"{"path": "."}"#.into(), 400),
        (r#"{"path": ""}"#.into(), 400),
        (r#"not json"#.into(), 400),
        (r#"{"dir": "plain"}"#.into(), 400),
        (r#"{"path": "snapshot.20990101000000000"}"#.into(), 404),
        (
            serde_json::json!({ "path": snaps.join("missing") }).to_string(),
            404,
        ),
    ];
    for (body, want) in &cases {
        let r = m.post_snapshot(Some(body), None);
        assert_eq!(r.status, *want, "POST /snapshot {body}: {}", r.text());
        let msg = r.error_message();
        assert!(!msg.contains("panicked"), "{body}: {msg}");
    }
    let huge = format!(r#"{{"path": "{}"}}"#, "x".repeat(100_000));
    let r = m.post_snapshot(Some(&huge), None);
    assert_eq!(r.status, 413, "a 100 KB body: {}", r.text());
    r.error_message();
    assert_eq!(
        m.version_numbers(),
        vec![3, 2, 1],
        "refused requests published nothing"
    );
    assert!(
        outside.exists() && snaps.join("escape").exists(),
        "nothing outside was touched"
    );
}

#[test]
fn post_snapshot_needs_the_token_when_one_is_configured() {
    let d = test_dir("m-token");
    let snaps = d.path().join("snaps");
    small_snapshot(&snaps.join("a"), 1);
    age_files(&snaps);
    let m = start_master_on(
        "master",
        d.path(),
        &snaps,
        free_port(),
        free_port(),
        &["--settle-secs", "3600", "--api-token", "secret"],
    );
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("secret"),
        Some("Basic secret"),
        Some("Bearer "),
        Some("Bearer secretsecret"),
    ] {
        let r = m.post_snapshot(None, auth);
        assert_eq!(r.status, 401, "Authorization {auth:?}: {}", r.text());
        r.error_message();
        let r = m.post_snapshot(Some(r#"{"path": "a"}"#), auth);
        assert_eq!(
            r.status,
            401,
            "Authorization {auth:?} with a body: {}",
            r.text()
        );
    }
    assert!(
        m.versions().is_empty(),
        "nothing published without the token"
    );
    // The GET routes stay open.
    assert_eq!(m.get("/versions/latest").status, 404);
    let r = m.post_snapshot(Some(r#"{"path": "a"}"#), Some("Bearer secret"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "a");
    let r = m.post_snapshot(None, Some("Bearer secret"));
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---------------------------------------------------------------- restart

/// Waits until both ports can be bound again (the killed master's sockets gone).
fn wait_ports_free(ports: &[u16]) {
    wait_until(Duration::from_secs(20), "the old ports to be free", || {
        ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
    });
}

#[test]
fn versions_survive_kill_9_and_seeding_resumes() {
    let d = test_dir("m-restart");
    let snaps = d.path().join("snaps");
    fs::create_dir_all(&snaps).unwrap();
    let (hp, pp) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{hp}");
    let args = ["--settle-secs", "1", "--public-url", public.as_str()];
    let mut m = start_master_on("master-1", d.path(), &snaps, hp, pp, &args);
    interop_tree(&snaps.join("v1"), 31);
    let v1 = m.wait_published("v1");
    assert_eq!(v1["version"], 1);

    m.proc.signal("KILL");
    let st = m.proc.wait(Duration::from_secs(10));
    assert!(!st.success(), "kill -9 ends the master: {st}");
    drop(m);
    wait_ports_free(&[hp, pp]);

    let mut m = start_master_on("master-2", d.path(), &snaps, hp, pp, &args);
    assert_eq!(
        m.versions(),
        vec![v1.clone()],
        "version 1 is listed after the restart, unchanged"
    );
    let s = m.status();
    let seeded = s["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["version"] == 1))
        .unwrap_or_else(|| panic!("/status does not list version 1: {s}"));
    assert_eq!(seeded["seeding"], true, "version 1 is seeded again: {s}");
    assert!(
        !m.proc.stderr_text().contains("rehashing"),
        "unchanged files are not rehashed after a restart"
    );

    // Our fetch, with only the torrent URL: the tracker in it finds the master.
    let out = d.path().join("fetched");
    let mut c = cmd();
    c.arg("fetch")
        .arg(v1["torrent_url"].as_str().unwrap())
        .arg("--dir")
        .arg(&out)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    let mut f = Proc::spawn("fetch", c, &d.path().join("logs"));
    let st = f.wait(DOWNLOAD);
    assert!(
        st.success(),
        "fetch after the restart failed ({st}):\n{}\nmaster:\n{}",
        tail(&f.stderr_text()),
        tail(&m.proc.stderr_text())
    );
    assert_same_tree(&snaps.join("v1"), &out.join("v1"));

    // Numbering goes on from where it was.
    small_snapshot(&snaps.join("v2"), 9);
    let v2 = m.wait_published("v2");
    assert_eq!(v2["version"], 2, "{v2}");
    assert_ne!(v2["info_hash"], v1["info_hash"]);
    assert_eq!(m.version_numbers(), vec![2, 1]);
}

// ---------------------------------------------------------------- retention

/// Publishes s1, s2, s3 one after the other through the watcher.
fn publish_three(m: &mut MasterProc) {
    for i in 1..=3u64 {
        let name = format!("s{i}");
        small_snapshot(&m.snaps.join(&name), i);
        let v = m.wait_published(&name);
        assert_eq!(v["version"].as_u64(), Some(i), "{v}");
    }
}

#[test]
fn retention_keeps_the_newest_versions_and_leaves_directories_alone() {
    let d = test_dir("m-keep");
    let mut m = start_master(
        "master",
        d.path(),
        &["--settle-secs", "1", "--keep-versions", "2"],
    );
    publish_three(&mut m);
    m.wait_for(Duration::from_secs(10), "version 1 to be retired", |m| {
        (m.version_numbers() == vec![3, 2]).then_some(())
    });
    let r = m.get("/versions/1/torrent");
    assert_eq!(r.status, 404, "{}", r.text());
    r.error_message();
    fetch_torrent(&format!("{}/versions/2/torrent", m.url));
    fetch_torrent(&format!("{}/versions/3/torrent", m.url));
    let s = m.status();
    let seeded: Vec<u64> = s["versions"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x["version"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(seeded, vec![3, 2], "only kept versions are seeded: {s}");
    // delete_old_snapshots defaults to false: the directory stays, intact.
    assert_eq!(disk_files(&m.snaps.join("s1")).len(), 4);
    // And the retired directory is not published again as a new version.
    m.holds_for(Duration::from_secs(4), "versions [3, 2]", |m| {
        m.version_numbers() == vec![3, 2]
    });
}

#[test]
fn retention_deletes_retired_directories_when_asked() {
    let d = test_dir("m-delete");
    let mut m = start_master(
        "master",
        d.path(),
        &[
            "--settle-secs",
            "1",
            "--keep-versions",
            "2",
            "--delete-old-snapshots",
            "true",
        ],
    );
    publish_three(&mut m);
    let s1 = m.snaps.join("s1");
    m.wait_for(Duration::from_secs(10), "s1 to be deleted", |_| {
        (!s1.exists()).then_some(())
    });
    assert_eq!(m.version_numbers(), vec![3, 2]);
    assert!(
        m.snaps.join("s2").is_dir() && m.snaps.join("s3").is_dir(),
        "kept versions' directories stay"
    );
    assert_eq!(m.get("/versions/1/torrent").status, 404);
    // A retired version whose directory is gone is not a failure.
    m.holds_for(Duration::from_secs(3), "versions [3, 2], no error", |m| {
        m.version_numbers() == vec![3, 2] && m.status()["last_error"].is_null()
    });
}

// ---------------------------------------------------------------- aria2

#[test]
fn aria2_downloads_a_version_from_its_torrent_url_alone() {
    need("aria2c");
    let d = test_dir("m-aria2");
    let mut m = start_master("master", d.path(), &["--settle-secs", "1"]);
    interop_tree(&m.snaps.join("snap"), 41);
    let v = m.wait_published("snap");
    let url = v["torrent_url"].as_str().expect("torrent_url").to_string();
    let out = d.path().join("aria");
    let mut c = Command::new("aria2c");
    // The URL is all aria2 gets: it downloads the .torrent, announces to the
    // tracker named in it, and finds the master there.
    c.args(["--seed-time=0", "--follow-torrent=mem", "-d"])
        .arg(&out)
        .args(aria2_common(free_port()))
        .arg(&url);
    let mut a = Proc::spawn("aria2", c, &d.path().join("logs"));
    let st = a.wait(DOWNLOAD);
    assert!(
        st.success(),
        "aria2 failed ({st}):\n{}\n{}\nmaster:\n{}",
        tail(&a.stdout_text()),
        tail(&a.stderr_text()),
        tail(&m.proc.stderr_text())
    );
    assert_same_tree(&m.snaps.join("snap"), &out.join("snap"));
    // Everything came from the master.
    let bytes = v["bytes"].as_u64().unwrap();
    m.wait_for(
        Duration::from_secs(10),
        "/status to count the upload",
        |m| (m.status()["uploaded"].as_u64() >= Some(bytes)).then_some(()),
    );
}

// ---------------------------------------------------------------- API basics

#[test]
fn health_metrics_status_and_latest_before_and_after_the_first_version() {
    let d = test_dir("m-api");
    let mut m = start_master("master", d.path(), &["--settle-secs", "1"]);
    let r = m.get("/healthz");
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    let r = m.get("/versions/latest");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    r.error_message();
    assert_eq!(m.get_json("/versions"), serde_json::json!([]));
    let r = m.get("/versions/1/torrent");
    assert_eq!(r.status, 404);
    r.error_message();
    let r = m.get("/no/such/route");
    assert_eq!(r.status, 404);
    r.error_message();
    let r = m.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("indexswarm_versions_published_total"),
        "{}",
        r.text()
    );
    assert_eq!(m.metric("indexswarm_versions_published_total"), Some(0.0));
    let s = m.status();
    assert!(s["versions"].is_array(), "{s}");
    assert!(s["replicas"].is_array(), "{s}");
    assert!(s["uploaded"].is_u64(), "{s}");

    small_snapshot(&m.snaps.join("first"), 1);
    let v = m.wait_published("first");
    assert_eq!(m.get_json("/versions/latest"), v);
    assert_eq!(m.metric("indexswarm_versions_published_total"), Some(1.0));
    assert_eq!(m.status()["versions"].as_array().map(Vec::len), Some(1));
    // The tracker shares the port and tracks the published info-hash.
    let ih: Vec<u8> = hex::decode(v["info_hash"].as_str().unwrap()).unwrap();
    let ih_q: String = ih.iter().map(|b| format!("%{b:02x}")).collect();
    let r = m.get(&format!("/scrape?info_hash={ih_q}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.body.windows(5).any(|w| w == b"files"),
        "scrape answers with a files dictionary: {}",
        r.text()
    );
}

// ---------------------------------------------------------------- configuration

#[test]
fn example_config_file_is_valid_and_lists_every_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/master.toml");
    let text = fs::read_to_string(&example).expect("config/master.toml exists");
    for key in [
        "snapshots_dir",
        "state_dir",
        "http_listen",
        "peer_listen",
        "public_url",
        "settle_secs",
        "marker_file",
        "keep_versions",
        "delete_old_snapshots",
        "upload_limit",
        "api_token",
        "piece_length",
        "align_files",
        "rescan_secs",
        "announce_interval_secs",
        "verify_rate",
    ] {
        assert!(
            text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} ="))
            }),
            "config/master.toml does not document {key}"
        );
    }
    let d = test_dir("m-config");
    let snaps = d.path().join("snaps");
    fs::create_dir_all(&snaps).unwrap();
    let hp = free_port();
    let mut c = master_cmd();
    c.arg("--config")
        .arg(&example)
        .arg("--snapshots-dir")
        .arg(&snaps)
        .args(["--http-listen", &format!("127.0.0.1:{hp}")])
        .args(["--peer-listen", &format!("127.0.0.1:{}", free_port())]);
    let mut p = Proc::spawn("master", c, &d.path().join("logs"));
    wait_until(
        START,
        "the example-configured master to answer /healthz",
        || {
            if let Some(s) = p.try_status() {
                panic!(
                    "master --config config/master.toml exited ({s}):\n{}",
                    tail(&p.stderr_text())
                );
            }
            http("GET", &format!("http://127.0.0.1:{hp}/healthz"), None, None).0 == 200
        },
    );
    // state_dir defaults to <snapshots_dir>/.indexswarm.
    assert!(snaps.join(".indexswarm").is_dir());
}

/// Runs `indexswarm master` expecting it to fail at once; returns (code, stderr).
fn master_fails(d: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = master_cmd();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut p = Proc::spawn("master-fails", c, &d.join("logs"));
    let st = p.wait(Duration::from_secs(20));
    let err = p.stderr_text();
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "a panic instead of an error message:\n{err}"
    );
    (st.code().expect("an exit code, not a signal"), err)
}

#[test]
fn bad_environment_value_fails_with_a_clear_message() {
    let d = test_dir("m-env");
    let snaps = d.path().join("snaps");
    let (code, err) = master_fails(
        d.path(),
        &[
            "--snapshots-dir",
            snaps.to_str().unwrap(),
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--peer-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[("INDEXSWARM_MASTER_SETTLE_SECS", "abc")],
    );
    assert!(code == 2 || code == 1, "exit code {code}:\n{err}");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("settle") && lower.contains("abc"),
        "the message names the setting and the bad value:\n{err}"
    );
}

#[test]
fn missing_snapshots_dir_is_a_one_line_error() {
    let d = test_dir("m-nodir");
    let (code, err) = master_fails(
        d.path(),
        &[
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--peer-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{err}");
    assert!(lines[0].contains("snapshots_dir"), "{err}");
}

#[test]
fn a_typo_in_the_config_file_is_refused() {
    let d = test_dir("m-typo");
    let cfg = d.path().join("master.toml");
    fs::write(
        &cfg,
        format!(
            "[master]\nsnapshots_dir = {:?}\nsettle_second = 5\n",
            d.path().join("snaps")
        ),
    )
    .unwrap();
    let (code, err) = master_fails(
        d.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--peer-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("settle_second"),
        "names the unknown key:\n{err}"
    );
    let lines = err.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(lines, 1, "one line on stderr:\n{err}");
}
