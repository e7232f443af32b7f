//! Issue 5: the replica sidecar end to end. The real `indexswarm master` and
//! several `indexswarm replica` processes on loopback replicate Lucene-shaped
//! snapshots (built with `indexswarm::demo`): byte-identical `current` trees,
//! reuse of unchanged files, the `/status` contract, kill -9 at many points
//! (download and swap), the master killed mid-download, a corrupt peer in the
//! swarm, `solr` mode against an HTTP stand-in, and aria2 as an extra leecher.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexswarm::metainfo::Metainfo;
use serde_json::Value;

use crate::common::*;
use crate::hostile::{spawn_hostile, Misbehaviour};

/// Startup of a process (binary, bound ports).
pub(crate) const START: Duration = Duration::from_secs(30);
/// A snapshot settling and being hashed by the master on a busy machine.
pub(crate) const PUBLISH: Duration = Duration::from_secs(30);
/// Tens of MB replicated on loopback (some tests rate-limit on purpose).
pub(crate) const REPLICATE: Duration = Duration::from_secs(60);

pub(crate) const MB: u64 = 1 << 20;

// ---------------------------------------------------------------- HTTP

/// One request; `None` when nothing answered.
pub(crate) fn http(method: &str, url: &str, body: Option<&str>) -> Option<(u16, Vec<u8>)> {
    let r = request(method, url, body, None);
    (r.status != 0).then_some((r.status, r.body))
}

/// Polls `ok` like `wait_until`, but a timeout panics with `diag()` (the
/// replica's status and log), which says far more than "timed out".
pub(crate) fn wait_or(
    limit: Duration,
    what: &str,
    mut ok: impl FnMut() -> bool,
    diag: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}\n{}", diag());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two distinct ports that were free a moment ago (`free_port()` twice can
/// hand out the same port: the first socket is closed before the second bind).
pub(crate) fn two_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

// ---------------------------------------------------------------- the master

pub(crate) struct Master {
    pub(crate) proc: Proc,
    pub(crate) http_port: u16,
    pub(crate) peer_port: u16,
    pub(crate) url: String,
    pub(crate) snaps: PathBuf,
    pub(crate) staging: PathBuf,
    pub(crate) logs: PathBuf,
    pub(crate) extra: Vec<String>,
    pub(crate) starts: usize,
    /// version → the snapshot directory it was published from.
    pub(crate) versions: BTreeMap<u64, PathBuf>,
    /// The swarm token, when the master's reads need one.
    pub(crate) read_token: Option<String>,
}

pub(crate) fn master_proc(
    snaps: &Path,
    logs: &Path,
    http_port: u16,
    peer_port: u16,
    extra: &[String],
    n: usize,
) -> Proc {
    let mut c = cmd();
    c.args(["master", "--snapshots-dir"]).arg(snaps);
    c.args([
        "--http-listen",
        &format!("127.0.0.1:{http_port}"),
        "--peer-listen",
        &format!("127.0.0.1:{peer_port}"),
        "--settle-secs",
        "1",
    ]);
    c.args(extra);
    Proc::spawn(&format!("master-{n}"), c, logs)
}

impl Master {
    pub(crate) fn start(root: &Path, extra: &[&str]) -> Master {
        let snaps = root.join("snapshots");
        let staging = root.join("staging");
        fs::create_dir_all(&snaps).unwrap();
        fs::create_dir_all(&staging).unwrap();
        let logs = root.join("logs");
        let (http_port, peer_port) = two_ports();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let proc = master_proc(&snaps, &logs, http_port, peer_port, &extra, 0);
        let m = Master {
            proc,
            http_port,
            peer_port,
            url: format!("http://127.0.0.1:{http_port}"),
            snaps,
            staging,
            logs,
            extra,
            starts: 1,
            versions: BTreeMap::new(),
            read_token: None,
        };
        m.wait_healthy();
        m
    }

    pub(crate) fn wait_healthy(&self) {
        wait_or(
            START,
            "the master's /healthz",
            || http("GET", &format!("{}/healthz", self.url), None).is_some_and(|r| r.0 == 200),
            || tail(&self.proc.stderr_text()),
        );
    }

    /// The same directories and ports, a new process.
    pub(crate) fn restart(&mut self) {
        self.proc = master_proc(
            &self.snaps,
            &self.logs,
            self.http_port,
            self.peer_port,
            &self.extra,
            self.starts,
        );
        self.starts += 1;
        self.wait_healthy();
    }

    pub(crate) fn latest(&self) -> Option<Value> {
        self.get(&format!("{}/versions/latest", self.url))
    }

    /// A GET of the master's JSON, with the swarm token when it needs one.
    pub(crate) fn get(&self, url: &str) -> Option<Value> {
        let auth = self.read_token.as_ref().map(|t| format!("Bearer {t}"));
        let r = request("GET", url, None, auth.as_deref());
        (r.status == 200).then(|| r.json())
    }

    /// Builds a snapshot in the staging directory, renames it into the
    /// snapshots directory (so the master never sees it half-written) and
    /// waits until it is published. Returns its version number.
    pub(crate) fn publish(&mut self, name: &str, build: impl FnOnce(&Path)) -> u64 {
        let staged = self.staging.join(name);
        build(&staged);
        let dir = self.snaps.join(name);
        fs::rename(&staged, &dir).unwrap();
        let mut found = None;
        wait_or(
            PUBLISH,
            &format!("the master to publish {name}"),
            || {
                found = self
                    .get(&format!("{}/versions", self.url))
                    .and_then(|list| {
                        list.as_array()?
                            .iter()
                            .find(|v| v["name"] == name)
                            .and_then(|v| v["version"].as_u64())
                    });
                found.is_some()
            },
            || tail(&self.proc.stderr_text()),
        );
        let v = found.unwrap();
        self.versions.insert(v, dir);
        v
    }

    /// A generated Lucene-shaped snapshot of about `size` bytes.
    pub(crate) fn publish_new(&mut self, name: &str, size: u64, seed: u64) -> u64 {
        self.publish(name, |d| {
            indexswarm::demo::generate_snapshot(d, size, seed).unwrap()
        })
    }

    /// The next commit after version `prev`: one new segment, a new commit point.
    pub(crate) fn publish_next(&mut self, prev: u64, name: &str, new_bytes: u64, seed: u64) -> u64 {
        let from = self.versions[&prev].clone();
        self.publish(name, |d| {
            indexswarm::demo::next_snapshot(&from, d, new_bytes, seed).unwrap()
        })
    }

    pub(crate) fn snapshot(&self, v: u64) -> &Path {
        &self.versions[&v]
    }

    pub(crate) fn torrent_bytes(&self, v: u64) -> Vec<u8> {
        let (status, body) = http("GET", &format!("{}/versions/{v}/torrent", self.url), None)
            .expect("the master answers");
        assert_eq!(status, 200, "GET /versions/{v}/torrent");
        body
    }
}

// ---------------------------------------------------------------- replicas

pub(crate) struct Replica {
    pub(crate) proc: Proc,
    pub(crate) url: String,
    pub(crate) data: PathBuf,
    /// Where it accepts peer connections.
    pub(crate) peer_port: u16,
}

/// Starts `indexswarm replica` on fresh ports and waits for `/healthz`.
pub(crate) fn start_replica(
    m: &Master,
    data: &Path,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Replica {
    let mut r = spawn_replica(&m.url, &m.logs, data, name, extra, env);
    let url = format!("{}/healthz", r.url);
    let deadline = Instant::now() + START;
    loop {
        if http("GET", &url, None).is_some_and(|r| r.0 == 200) {
            break;
        }
        if let Some(s) = r.proc.try_status() {
            panic!("{name} exited with {s}:\n{}", tail(&r.proc.stderr_text()));
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no /healthz within {START:?}:\n{}",
            tail(&r.proc.stderr_text())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    r
}

/// Starts `indexswarm replica` following `master_url` on fresh ports,
/// without waiting for anything (it may be meant to exit at once).
pub(crate) fn spawn_replica(
    master_url: &str,
    logs: &Path,
    data: &Path,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Replica {
    let (http_port, peer_port) = two_ports();
    let mut c = cmd();
    c.args(["replica", "--master-url", master_url, "--data-dir"])
        .arg(data);
    c.args([
        "--http-listen",
        &format!("127.0.0.1:{http_port}"),
        "--peer-listen",
        &format!("127.0.0.1:{peer_port}"),
    ]);
    if !extra.contains(&"--poll-interval-secs") {
        c.args(["--poll-interval-secs", "1"]);
    }
    c.args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    Replica {
        proc: Proc::spawn(name, c, logs),
        url: format!("http://127.0.0.1:{http_port}"),
        data: data.to_path_buf(),
        peer_port,
    }
}

impl Replica {
    pub(crate) fn try_status(&self) -> Option<Value> {
        get_json(&format!("{}/status", self.url))
    }

    pub(crate) fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("{}: no /status\n{}", self.proc.name, self.diag()))
    }

    pub(crate) fn diag(&self) -> String {
        format!(
            "{} status: {}\nstderr:\n{}",
            self.proc.name,
            self.try_status()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "(none)".into()),
            tail(&self.proc.stderr_text())
        )
    }

    pub(crate) fn wait_status(
        &self,
        limit: Duration,
        what: &str,
        mut ok: impl FnMut(&Value) -> bool,
    ) {
        wait_or(
            limit,
            &format!("{}: {what}", self.proc.name),
            || self.try_status().is_some_and(|s| ok(&s)),
            || self.diag(),
        );
    }

    pub(crate) fn wait_version(&self, v: u64, limit: Duration) {
        self.wait_status(limit, &format!("version {v} live"), |s| {
            s["current_version"] == v && s["state"] == "idle"
        });
    }

    /// kill -9; says where it landed (the last status seen) on stderr.
    pub(crate) fn kill(&mut self) {
        let seen = self.try_status();
        self.proc.signal("KILL");
        if let Some(s) = seen {
            eprintln!(
                "{}: killed in state {} at progress {:.2} (live {})",
                self.proc.name, s["state"], s["progress"], s["current_version"]
            );
        }
        self.proc.wait(Duration::from_secs(10));
    }

    /// kill -9 without a status request first (for kills timed to the millisecond).
    pub(crate) fn kill_now(&mut self) {
        // Child::kill is SIGKILL, sent directly (no `kill` process to start).
        let _ = self.proc.child.kill();
        self.proc.wait(Duration::from_secs(10));
        let live = fs::read_link(self.data.join("current")).ok();
        eprintln!("{}: killed at once (current -> {live:?})", self.proc.name);
    }
}

/// The crash-safety invariant: `DATA/current` does not exist, or it is a
/// symlink to `versions/<n>`, that directory exists, and its files are
/// byte-identical to the master's snapshot of version n. Returns n.
pub(crate) fn assert_live_is_complete(m: &Master, data: &Path, when: &str) -> Option<u64> {
    let cur = data.join("current");
    match fs::symlink_metadata(&cur) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{when}: {}: {e}", cur.display()),
        Ok(md) => assert!(
            md.file_type().is_symlink(),
            "{when}: current is not a symlink"
        ),
    }
    let target = fs::read_link(&cur).unwrap();
    let n: u64 = target
        .strip_prefix("versions")
        .ok()
        .and_then(|rest| rest.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{when}: current -> {}", target.display()));
    let dir = data.join("versions").join(n.to_string());
    assert!(
        dir.is_dir(),
        "{when}: current -> {} which does not exist",
        target.display()
    );
    assert_same_tree(m.snapshot(n), &dir);
    Some(n)
}

/// Names under `DATA` and `DATA/versions` that only a crash leaves behind.
pub(crate) fn leftovers(data: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in [data.to_path_buf(), data.join("versions")] {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".partial") || n.ends_with(".tmp") || n.contains("indexswarm-copy") {
                out.push(format!("{}/{n}", d.display()));
            }
        }
    }
    out
}

pub(crate) fn is_hex40(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(crate) fn is_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
    })
}

// ---------------------------------------------------------------- 1. two versions, three replicas

#[test]
fn three_replicas_replicate_two_versions_reusing_unchanged_files() {
    let d = test_dir("rep-two-versions");
    let mut m = Master::start(d.path(), &[]);
    let hook_log = d.path().join("hook.log");
    let hook = format!(
        "echo $INDEXSWARM_VERSION $INDEXSWARM_PATH >> {}",
        hook_log.display()
    );
    let replicas: Vec<Replica> = (0..3)
        .map(|i| {
            start_replica(
                &m,
                &d.path().join(format!("r{i}")),
                &format!("replica-{i}"),
                &["--on-swap", &hook],
                &[],
            )
        })
        .collect();

    let v1 = m.publish_new("snapshot.20260101000000000", 24 * MB, 11);
    assert_eq!(v1, 1);
    for r in &replicas {
        r.wait_version(1, REPLICATE);
    }
    for r in &replicas {
        assert_live_is_complete(&m, &r.data, "after version 1");
        assert_same_tree(m.snapshot(1), &r.data.join("current"));
    }

    let v2 = m.publish_next(1, "snapshot.20260102000000000", 3 * MB / 2, 12);
    assert_eq!(v2, 2);
    for r in &replicas {
        r.wait_version(2, REPLICATE);
    }
    let hooks = fs::read_to_string(&hook_log).unwrap_or_default();
    for r in &replicas {
        assert_eq!(
            fs::read_link(r.data.join("current")).unwrap(),
            Path::new("versions/2")
        );
        assert_same_tree(m.snapshot(2), &r.data.join("current"));
        let s = r.status();
        let total = s["bytes_total"].as_u64().unwrap();
        let down = s["bytes_downloaded"].as_u64().unwrap();
        let reused = s["bytes_reused"].as_u64().unwrap();
        assert!(total > 20 * MB, "bytes_total {total}: {s}");
        assert!(
            down < total / 4,
            "version 2 moved {down} of {total} bytes over the network: {s}"
        );
        assert!(
            reused * 10 > total * 7,
            "only {reused} of {total} bytes were reused: {s}"
        );
        assert_eq!(s["times_replicated"], 2, "{s}");
        assert_eq!(s["times_failed"], 0, "{s}");
        // The hook ran once per version, with the version and an absolute path.
        let data = r.data.canonicalize().unwrap();
        for v in [1u64, 2] {
            let expected = data.join("versions").join(v.to_string());
            let hits: Vec<&str> = hooks
                .lines()
                .filter(|l| {
                    let (ver, path) = l.split_once(' ').unwrap_or_default();
                    ver == v.to_string()
                        && Path::new(path).is_absolute()
                        && Path::new(path).canonicalize().ok().as_deref()
                            == Some(expected.as_path())
                })
                .collect();
            assert_eq!(
                hits.len(),
                1,
                "on_swap for version {v} of {}:\n{hooks}",
                r.proc.name
            );
        }
    }
    assert_eq!(hooks.lines().count(), 6, "{hooks}");
}

// ---------------------------------------------------------------- 2. the API

#[test]
fn status_has_every_field_and_post_poll_fetches_at_once() {
    let d = test_dir("rep-status");
    let mut m = Master::start(d.path(), &[]);
    let r = start_replica(
        &m,
        &d.path().join("r"),
        "replica",
        &["--poll-interval-secs", "3600"],
        &[],
    );
    // The first poll (at start) found nothing; the next one is an hour away.
    r.wait_status(START, "first poll done", |s| {
        s["state"] == "idle" && s["next_poll_at"].is_string()
    });
    let s = r.status();
    for k in ["current_version", "current_info_hash", "current_path"] {
        assert!(s[k].is_null(), "{k} before any version: {s}");
    }
    let next = time::OffsetDateTime::parse(
        s["next_poll_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        next > time::OffsetDateTime::now_utc() + Duration::from_secs(1800),
        "next poll should be ~1 h away: {s}"
    );

    let v = m.publish_new("snapshot.20260201000000000", 10 * MB, 21);
    let (code, body) = http("POST", &format!("{}/poll", r.url), None).unwrap();
    assert!(
        (200..300).contains(&code),
        "POST /poll: {code} {}",
        String::from_utf8_lossy(&body)
    );
    // Promptly: far sooner than the hour the interval would take.
    r.wait_version(v, Duration::from_secs(30));
    assert_same_tree(m.snapshot(v), &r.data.join("current"));

    let s = r.status();
    let obj = s.as_object().expect("a JSON object");
    for k in [
        "state",
        "current_version",
        "current_info_hash",
        "current_path",
        "target_version",
        "progress",
        "bytes_total",
        "bytes_downloaded",
        "bytes_reused",
        "bytes_uploaded",
        "download_rate",
        "upload_rate",
        "peers",
        "last_swap_at",
        "last_cycle_seconds",
        "times_replicated",
        "times_failed",
        "next_poll_at",
        "last_error",
    ] {
        assert!(obj.contains_key(k), "/status lacks {k}: {s}");
    }
    assert!(
        ["idle", "downloading", "verifying", "swapping", "error"]
            .contains(&s["state"].as_str().unwrap()),
        "{s}"
    );
    assert_eq!(s["state"], "idle");
    assert_eq!(s["current_version"], v);
    let latest = m.latest().unwrap();
    assert!(is_hex40(&s["current_info_hash"]), "{s}");
    assert_eq!(s["current_info_hash"], latest["info_hash"]);
    let path = PathBuf::from(s["current_path"].as_str().unwrap());
    assert!(path.is_absolute(), "{s}");
    assert_eq!(
        path.canonicalize().unwrap(),
        r.data.join("versions/1").canonicalize().unwrap()
    );
    assert!(s["target_version"].is_null(), "{s}");
    let progress = s["progress"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&progress), "{s}");
    assert_eq!(progress, 1.0);
    assert_eq!(s["bytes_total"], latest["bytes"], "{s}");
    let total = s["bytes_total"].as_u64().unwrap();
    assert!(s["bytes_downloaded"].as_u64().unwrap() >= total, "{s}");
    assert_eq!(s["bytes_reused"], 0, "nothing to reuse for a first version");
    for k in ["bytes_uploaded", "download_rate", "upload_rate", "peers"] {
        assert!(s[k].is_u64(), "{k}: {s}");
    }
    assert!(is_rfc3339(&s["last_swap_at"]), "{s}");
    assert!(is_rfc3339(&s["next_poll_at"]), "{s}");
    let cycle = s["last_cycle_seconds"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&cycle), "{s}");
    assert_eq!(s["times_replicated"], 1);
    assert_eq!(s["times_failed"], 0);
    assert!(s["last_error"].is_null(), "{s}");

    let (code, body) = http("GET", &format!("{}/healthz", r.url), None).unwrap();
    assert_eq!(code, 200);
    assert_eq!(String::from_utf8_lossy(&body).trim(), "ok");
    let (code, body) = http("GET", &format!("{}/metrics", r.url), None).unwrap();
    assert_eq!(code, 200);
    let metrics = String::from_utf8_lossy(&body).into_owned();
    assert!(
        metrics
            .lines()
            .any(|l| l.trim() == format!("indexswarm_current_version{{index=\"default\"}} {v}")),
        "{metrics}"
    );

    // A master that is down shows in /status, and the live version stays.
    m.proc.signal("KILL");
    m.proc.wait(Duration::from_secs(10));
    http("POST", &format!("{}/poll", r.url), None).unwrap();
    r.wait_status(Duration::from_secs(30), "the failed poll reported", |s| {
        s["state"] == "error"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("unreachable"))
            && s["times_failed"].as_u64() >= Some(1)
    });
    let s = r.status();
    assert_eq!(s["current_version"], v, "{s}");
    assert_same_tree(m.snapshot(v), &r.data.join("current"));
}

// ---------------------------------------------------------------- 3. kill -9

#[test]
fn replica_killed_at_many_points_never_exposes_a_partial_version() {
    let d = test_dir("rep-crash");
    let mut m = Master::start(d.path(), &[]);
    let data = d.path().join("r");
    let slow = ["--download-limit", "4M"];
    let v1 = m.publish_new("snapshot.20260301000000000", 16 * MB, 31);

    // Version 1, nothing live yet: kill while staging, while downloading at
    // several depths, and right as the finished copy is renamed and swapped.
    let mut n = 0usize;
    let mut next_name = || {
        n += 1;
        format!("replica-{n}")
    };
    let partial1 = data.join("versions/1.partial");
    let points: [(&str, f64); 4] = [
        ("staged", 0.0),
        ("downloading", 0.0),
        ("progress", 0.3),
        ("progress", 0.65),
    ];
    for (i, (what, p)) in points.iter().enumerate() {
        let mut r = start_replica(&m, &data, &next_name(), &slow, &[]);
        match *what {
            "staged" => wait_or(
                REPLICATE,
                "versions/1.partial",
                || partial1.exists(),
                || r.diag(),
            ),
            "downloading" => {
                r.wait_status(REPLICATE, "downloading", |s| s["state"] == "downloading");
                std::thread::sleep(Duration::from_millis(100 * i as u64));
            }
            _ => r.wait_status(REPLICATE, &format!("progress > {p}"), |s| {
                s["progress"].as_f64().unwrap_or(0.0) > *p
            }),
        }
        r.kill();
        let live = assert_live_is_complete(&m, &data, &format!("kill {i} ({what})"));
        assert_eq!(live, None, "version 1 cannot be live yet (kill {i})");
    }
    // Around the swap: kill the moment the verified copy appears.
    {
        let mut r = start_replica(&m, &data, &next_name(), &slow, &[]);
        let done = data.join("versions/1");
        let deadline = Instant::now() + REPLICATE;
        while !done.is_dir() {
            assert!(Instant::now() < deadline, "versions/1\n{}", r.diag());
            std::thread::sleep(Duration::from_millis(1));
        }
        r.kill_now();
        assert_live_is_complete(&m, &data, "kill as version 1 was swapped");
    }
    let r = start_replica(&m, &data, &next_name(), &slow, &[]);
    r.wait_version(v1, REPLICATE);
    drop(r);
    assert_eq!(
        assert_live_is_complete(&m, &data, "version 1 live"),
        Some(1)
    );

    // Version 2 while version 1 is live: current must stay on a complete version.
    let v2 = m.publish_next(v1, "snapshot.20260302000000000", 10 * MB, 32);
    let partial2 = data.join("versions/2.partial");
    for k in 0..3u64 {
        let mut r = start_replica(&m, &data, &next_name(), &slow, &[]);
        wait_or(
            REPLICATE,
            "versions/2.partial",
            || partial2.exists(),
            || r.diag(),
        );
        r.wait_status(REPLICATE, "downloading", |s| {
            s["state"] == "downloading" || s["current_version"] == 2
        });
        std::thread::sleep(Duration::from_millis(50 + 300 * k));
        r.kill();
        let live = assert_live_is_complete(&m, &data, &format!("kill {k} during version 2"));
        assert!(matches!(live, Some(1) | Some(2)), "live {live:?}");
    }
    {
        let mut r = start_replica(&m, &data, &next_name(), &slow, &[]);
        let done = data.join("versions/2");
        // Tight: the rename of the finished copy, then the swap, microseconds apart.
        let deadline = Instant::now() + REPLICATE;
        while !done.is_dir() {
            assert!(Instant::now() < deadline, "versions/2\n{}", r.diag());
            std::thread::sleep(Duration::from_millis(1));
        }
        r.kill_now();
        let live = assert_live_is_complete(&m, &data, "kill as version 2 was swapped");
        assert!(matches!(live, Some(1) | Some(2)), "live {live:?}");
    }

    // Version 3, killed while its on_swap hook runs (just after the swap).
    let v3 = m.publish_next(v2, "snapshot.20260303000000000", 2 * MB, 33);
    let marker = d.path().join("hook-started");
    let hook = format!("touch {}; sleep 5", marker.display());
    {
        let mut r = start_replica(&m, &data, &next_name(), &["--on-swap", &hook], &[]);
        wait_or(
            REPLICATE,
            "the on_swap hook",
            || marker.exists(),
            || r.diag(),
        );
        r.kill();
        assert_eq!(
            assert_live_is_complete(&m, &data, "kill during on_swap"),
            Some(3)
        );
    }

    // Unlimited, uninterrupted: converges, and nothing of the crashes remains.
    let r = start_replica(&m, &data, &next_name(), &[], &[]);
    r.wait_version(v3, REPLICATE);
    assert_eq!(assert_live_is_complete(&m, &data, "final"), Some(3));
    assert_same_tree(m.snapshot(v3), &data.join("current"));
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));
    let s = r.status();
    assert!(s["last_error"].is_null(), "{s}");
}

// ---------------------------------------------------------------- 4. master restart

#[test]
fn master_killed_mid_download_then_restarted_replica_converges() {
    let d = test_dir("rep-master-restart");
    let mut m = Master::start(d.path(), &[]);
    let v = m.publish_new("snapshot.20260401000000000", 20 * MB, 41);
    let r = start_replica(
        &m,
        &d.path().join("r"),
        "replica",
        &["--download-limit", "4M"],
        &[],
    );
    r.wait_status(REPLICATE, "a fifth downloaded", |s| {
        s["state"] == "downloading" && s["progress"].as_f64().unwrap_or(0.0) > 0.2
    });
    m.proc.signal("KILL");
    m.proc.wait(Duration::from_secs(10));
    // The replica notices the seeder is gone; nothing half-done goes live.
    r.wait_status(Duration::from_secs(30), "no peers left", |s| {
        s["peers"] == 0
    });
    let s = r.status();
    assert!(s["progress"].as_f64().unwrap() < 1.0, "{s}");
    assert!(s["current_version"].is_null(), "{s}");
    assert_eq!(assert_live_is_complete(&m, &r.data, "master gone"), None);

    m.restart();
    r.wait_version(v, REPLICATE);
    assert_same_tree(m.snapshot(v), &r.data.join("current"));
    assert!(leftovers(&r.data).is_empty(), "{:?}", leftovers(&r.data));
    // What arrived before the master died was kept, not fetched again.
    let s = r.status();
    let total = s["bytes_total"].as_u64().unwrap();
    assert!(
        s["bytes_downloaded"].as_u64().unwrap() < total + 2 * MB,
        "{s}"
    );
}

// ---------------------------------------------------------------- 5. corrupt peer

#[test]
fn corrupt_peer_in_the_swarm_is_banned_and_replicas_converge() {
    let d = test_dir("rep-corrupt");
    // A slow master, so the replicas ask the corrupt peer for much of the data.
    let mut m = Master::start(d.path(), &["--upload-limit", "2M"]);
    let v = m.publish_new("snapshot.20260501000000000", 12 * MB, 51);
    let meta = Metainfo::from_bytes(&m.torrent_bytes(v)).unwrap();
    let evil = spawn_hostile(meta.clone(), Misbehaviour::Corrupt);
    // Listed by the master's own tracker as a seeder.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let req = indexswarm::tracker::protocol::AnnounceRequest {
        info_hash: meta.info_hash,
        peer_id: *b"-EVIL00-evilevilevil",
        port: evil,
        uploaded: 0,
        downloaded: 0,
        left: 0,
        event: indexswarm::tracker::protocol::Event::Started,
        compact: true,
        no_peer_id: true,
        numwant: None,
        ip: None,
    };
    let announce_url = format!("{}/announce", m.url);
    rt.block_on(indexswarm::tracker::client::announce(
        &reqwest::Client::new(),
        &announce_url,
        &req,
    ))
    .expect("the master's tracker accepts the corrupt peer");

    let replicas: Vec<Replica> = (0..3)
        .map(|i| {
            start_replica(
                &m,
                &d.path().join(format!("r{i}")),
                &format!("replica-{i}"),
                &[],
                &[("RUST_LOG", "indexswarm=info")],
            )
        })
        .collect();
    for r in &replicas {
        r.wait_version(v, REPLICATE);
    }
    for r in &replicas {
        assert_same_tree(m.snapshot(v), &r.data.join("current"));
    }
    let banned: Vec<&str> = replicas
        .iter()
        .filter(|r| r.proc.stderr_text().contains("banning peer"))
        .map(|r| r.proc.name.as_str())
        .collect();
    assert!(
        !banned.is_empty(),
        "no replica banned the corrupt peer:\n{}",
        replicas
            .iter()
            .map(|r| r.diag())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let wasted: u64 = replicas
        .iter()
        .map(|r| r.status()["bytes_wasted"].as_u64().unwrap_or(0))
        .sum();
    eprintln!("banned by {banned:?}; {wasted} bytes wasted in all");
}

// ---------------------------------------------------------------- 6. solr mode

/// An HTTP stand-in for Solr's core-admin API: records every request line
/// and answers with the status code set in `status`. (No Solr server is in
/// reach of these tests; the contract is the URL the replica calls.)
pub(crate) struct StandIn {
    pub(crate) port: u16,
    pub(crate) requests: Arc<Mutex<Vec<String>>>,
    pub(crate) status: Arc<AtomicU16>,
}

pub(crate) fn start_standin() -> StandIn {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let status = Arc::new(AtomicU16::new(200));
    let (reqs, st) = (requests.clone(), status.clone());
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
            let text = String::from_utf8_lossy(&head);
            reqs.lock()
                .unwrap()
                .push(text.lines().next().unwrap_or_default().to_string());
            let code = st.load(Ordering::SeqCst);
            let body = if code == 200 {
                r#"{"responseHeader":{"status":0,"QTime":12}}"#
            } else {
                r#"{"error":{"msg":"core reload failed","code":500}}"#
            };
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    StandIn {
        port,
        requests,
        status,
    }
}

pub(crate) fn solr_index_dir(core: &Path) -> Option<String> {
    let text = fs::read_to_string(core.join("index.properties")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("index="))
        .map(str::to_string)
}

pub(crate) fn is_solr_index_name(n: &str) -> bool {
    n.strip_prefix("index.")
        .is_some_and(|ts| ts.len() == 17 && ts.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn solr_mode_writes_index_properties_and_reloads_the_core() {
    let d = test_dir("rep-solr");
    let mut m = Master::start(d.path(), &[]);
    let solr = start_standin();
    let core = d.path().join("solr/products/data");
    let admin = format!("http://127.0.0.1:{}/solr/admin/cores", solr.port);
    let core_arg = core.to_str().unwrap().to_string();
    let r = start_replica(
        &m,
        &d.path().join("r"),
        "replica",
        &[
            "--mode",
            "solr",
            "--solr-core-data-dir",
            &core_arg,
            "--solr-core",
            "products",
            "--solr-core-admin-url",
            &admin,
        ],
        &[],
    );

    let v1 = m.publish_new("snapshot.20260601000000000", 10 * MB, 61);
    r.wait_version(v1, REPLICATE);
    let first = solr_index_dir(&core).expect("index.properties names an index dir");
    assert!(is_solr_index_name(&first), "index={first}");
    assert_same_tree(m.snapshot(v1), &core.join(&first));
    let s = r.status();
    assert_eq!(
        PathBuf::from(s["current_path"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        core.join(&first).canonicalize().unwrap(),
        "{s}"
    );
    assert!(s["last_error"].is_null(), "{s}");
    {
        let reqs = solr.requests.lock().unwrap();
        assert!(
            reqs.iter().any(|l| l.starts_with("GET /solr/admin/cores?")
                && l.contains("action=RELOAD")
                && l.contains("core=products")),
            "no RELOAD of core products: {reqs:?}"
        );
    }

    // Solr refuses the reload: the files are swapped anyway (they are
    // consistent), and /status says the reload failed.
    solr.status.store(500, Ordering::SeqCst);
    let before = solr.requests.lock().unwrap().len();
    let v2 = m.publish_next(v1, "snapshot.20260602000000000", MB, 62);
    r.wait_status(REPLICATE, "version 2 swapped", |s| {
        s["current_version"] == v2
    });
    let second = solr_index_dir(&core).unwrap();
    assert!(is_solr_index_name(&second), "index={second}");
    assert_ne!(first, second, "index.properties points at a new directory");
    assert_same_tree(m.snapshot(v2), &core.join(&second));
    assert!(
        solr.requests.lock().unwrap()[before..]
            .iter()
            .any(|l| l.contains("action=RELOAD") && l.contains("core=products")),
        "the reload of version 2 was attempted"
    );
    // It stays reported (not just for an instant) while the replica goes on
    // polling: watch two more polls go by (next_poll_at moves on each time).
    let check = |s: &Value| {
        let err = s["last_error"].as_str().unwrap_or_default();
        assert!(
            err.contains("RELOAD") && err.contains("500"),
            "last_error should report the failed RELOAD: {s}"
        );
    };
    let mut polls = vec![r.status()["next_poll_at"].clone()];
    r.wait_status(Duration::from_secs(20), "two more polls", |s| {
        if s["state"] == "idle" {
            check(s);
            if polls.last() != Some(&s["next_poll_at"]) {
                polls.push(s["next_poll_at"].clone());
            }
        }
        polls.len() >= 3
    });
    let s = r.status();
    check(&s);
    assert_eq!(s["current_version"], v2);
}

// ---------------------------------------------------------------- 7. aria2

#[test]
fn aria2_joins_the_swarm_as_an_extra_leecher() {
    need("aria2c");
    let d = test_dir("rep-aria2");
    let mut m = Master::start(d.path(), &[]);
    let v = m.publish_new("snapshot.20260701000000000", 12 * MB, 71);
    let replicas: Vec<Replica> = (0..2)
        .map(|i| {
            start_replica(
                &m,
                &d.path().join(format!("r{i}")),
                &format!("replica-{i}"),
                &[],
                &[],
            )
        })
        .collect();
    for r in &replicas {
        r.wait_version(v, REPLICATE);
    }
    let torrent = d.path().join("v.torrent");
    fs::write(&torrent, m.torrent_bytes(v)).unwrap();
    let meta = Metainfo::from_bytes(&fs::read(&torrent).unwrap()).unwrap();
    let out = d.path().join("aria");
    let mut c = std::process::Command::new("aria2c");
    c.args(["--seed-time=0", "-d"])
        .arg(&out)
        .args(aria2_common(free_port()))
        .arg(&torrent);
    let mut a = Proc::spawn("aria2-leech", c, &m.logs);
    let st = a.wait(REPLICATE);
    assert!(st.success(), "aria2 failed: {}", tail(&a.stdout_text()));
    assert_same_tree(m.snapshot(v), &out.join(&meta.name));
    // The replicas saw aria2 as a peer (it asked the swarm, not only the master).
    let uploaded: u64 = replicas
        .iter()
        .map(|r| r.status()["bytes_uploaded"].as_u64().unwrap())
        .sum();
    eprintln!("replicas uploaded {uploaded} bytes to aria2");
}

// ---------------------------------------------------------------- config

#[test]
fn example_config_starts_a_replica_and_master_url_is_required() {
    let d = test_dir("rep-config");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/replica.toml");
    let (http_port, peer_port) = two_ports();
    let mut c = cmd();
    c.args(["replica", "--config"]).arg(&example);
    c.args([
        "--master-url",
        &format!("http://127.0.0.1:{}", free_port()),
        "--data-dir",
    ])
    .arg(d.path().join("data"));
    c.args([
        "--http-listen",
        &format!("127.0.0.1:{http_port}"),
        "--peer-listen",
        &format!("127.0.0.1:{peer_port}"),
    ]);
    let mut p = Proc::spawn("replica-config", c, &d.path().join("logs"));
    let url = format!("http://127.0.0.1:{http_port}/healthz");
    let errf = p.stderr.clone();
    wait_or(
        START,
        "/healthz of a replica started from config/replica.toml",
        || {
            assert!(
                p.try_status().is_none(),
                "exited:\n{}",
                tail(&p.stderr_text())
            );
            http("GET", &url, None).is_some_and(|r| r.0 == 200)
        },
        || tail(&fs::read_to_string(&errf).unwrap_or_default()),
    );

    for args in [vec![], vec!["--data-dir", "/nonexistent-isw"]] {
        let mut c = cmd();
        c.arg("replica").args(&args);
        for (k, _) in std::env::vars() {
            if k.starts_with("INDEXSWARM_") {
                c.env_remove(k);
            }
        }
        let out = run(c);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected: {err}");
        assert!(lines[0].contains("master_url"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Mounts a tmpfs of `mib` MiB at `dir` (root only); unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, mib: u64) -> Option<SmallDisk> {
        fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    fn grow(&self, mib: u64) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.dir)
            .status()
            .expect("mount runs");
        assert!(st.success(), "remount {} to {mib} MiB", self.dir.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[test]
fn a_full_disk_fails_the_cycle_without_touching_the_live_version_and_recovers() {
    // A real full disk: the replica's data directory on a 12 MiB tmpfs
    // (mounting needs root, as CI and this machine have).
    let d = test_dir("rep-full-disk");
    let Some(disk) = SmallDisk::mount(&d.path().join("data"), 12) else {
        panic!("cannot mount a tmpfs: this test needs root (CI runs as root)");
    };
    let mut m = Master::start(d.path(), &[]);
    let mut r = start_replica(&m, &disk.dir.join("r"), "replica-full", &[], &[]);
    let v1 = m.publish_new("snapshot.20260101000000000", 4 * MB, 31);
    r.wait_version(v1, REPLICATE);
    let v1_tree = tree(&r.data.join("current"));

    // Version 2 is new data of 16 MiB: it cannot fit.
    let v2 = m.publish_new("snapshot.20260102000000000", 16 * MB, 32);
    r.wait_status(REPLICATE, "a failed cycle reporting the full disk", |s| {
        s["times_failed"].as_u64().unwrap_or(0) > 0
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("No space left"))
    });
    let s = r.status();
    assert_eq!(s["current_version"], v1, "the live version stays: {s}");
    assert_eq!(
        fs::read_link(r.data.join("current")).unwrap(),
        Path::new("versions/1")
    );
    assert!(
        tree(&r.data.join("current")) == v1_tree,
        "live files untouched"
    );
    assert!(r.proc.try_status().is_none(), "the replica keeps running");

    // Room again: the next cycle resumes and swaps.
    disk.grow(64);
    r.wait_version(v2, REPLICATE);
    assert_same_tree(m.snapshot(v2), &r.data.join("current"));
}
