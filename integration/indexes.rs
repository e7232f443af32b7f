//! Issue #8: several indexes in one master and one replica process. One
//! master publishes three indexes on one HTTP port and one peer port;
//! three replicas follow two, two and three of them (`--index NAME=DIR`),
//! each over one peer port. Versions, retention and swaps are per index;
//! bad names and shared directories are refused at start.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::replica::{http, two_ports, wait_or, Replica, PUBLISH, REPLICATE, START};

struct MultiMaster {
    /// Held for its `Drop`, which stops the master.
    _proc: Proc,
    url: String,
    root: PathBuf,
}

impl MultiMaster {
    fn start(root: &Path, indexes: &[&str], extra: &[&str]) -> MultiMaster {
        let (http_port, peer_port) = two_ports();
        let mut c = cmd();
        c.arg("master");
        for name in indexes {
            let dir = root.join("snaps").join(name);
            fs::create_dir_all(&dir).unwrap();
            c.arg("--index").arg(format!("{name}={}", dir.display()));
        }
        c.args(["--http-listen", &format!("127.0.0.1:{http_port}")]);
        c.args(["--peer-listen", &format!("127.0.0.1:{peer_port}")]);
        c.args(["--settle-secs", "1", "--keep-versions", "2"]);
        c.args(extra);
        let proc = Proc::spawn("master", c, &root.join("logs"));
        let m = MultiMaster {
            _proc: proc,
            url: format!("http://127.0.0.1:{http_port}"),
            root: root.to_path_buf(),
        };
        wait_until(START, "the master's /healthz", || {
            http("GET", &format!("{}/healthz", m.url), None).is_some_and(|r| r.0 == 200)
        });
        m
    }

    fn snapshot_dir(&self, index: &str, name: &str) -> PathBuf {
        self.root.join("snaps").join(index).join(name)
    }

    /// Writes a snapshot for `index` (built aside, renamed in) and publishes
    /// it with `POST /indexes/{index}/snapshot`; returns its version.
    fn publish(&self, index: &str, name: &str, seed: u64) -> u64 {
        let staged = self.root.join("staging").join(index).join(name);
        indexswarm::demo::generate_snapshot(&staged, 2 << 20, seed).unwrap();
        fs::create_dir_all(self.snapshot_dir(index, "x").parent().unwrap()).unwrap();
        fs::rename(&staged, self.snapshot_dir(index, name)).unwrap();
        let body = format!("{{\"path\": \"{name}\"}}");
        let mut version = None;
        wait_until(PUBLISH, &format!("{index}/{name} published"), || {
            let r = request(
                "POST",
                &format!("{}/indexes/{index}/snapshot", self.url),
                Some(&body),
                None,
            );
            if r.status == 201 || r.status == 200 {
                version = r.json()["version"].as_u64();
            }
            version.is_some()
        });
        version.unwrap()
    }

    fn get(&self, path: &str) -> Value {
        let r = request("GET", &format!("{}{path}", self.url), None, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }
}

/// `indexswarm replica` following `indexes` (NAME → its data directory).
fn start_follower(m: &MultiMaster, name: &str, indexes: &[&str]) -> Replica {
    let (http_port, peer_port) = two_ports();
    let mut c = cmd();
    c.args([
        "replica",
        "--master-url",
        &m.url,
        "--poll-interval-secs",
        "1",
    ]);
    for i in indexes {
        c.arg("--index")
            .arg(format!("{i}={}", m.root.join(name).join(i).display()));
    }
    c.args(["--http-listen", &format!("127.0.0.1:{http_port}")]);
    c.args(["--peer-listen", &format!("127.0.0.1:{peer_port}")]);
    let r = Replica {
        proc: Proc::spawn(name, c, &m.root.join("logs")),
        url: format!("http://127.0.0.1:{http_port}"),
        data: m.root.join(name),
        peer_port,
    };
    wait_until(START, &format!("{name}'s /healthz"), || {
        http("GET", &format!("{}/healthz", r.url), None).is_some_and(|x| x.0 == 200)
    });
    r
}

/// Waits until `r` has `version` of `index` live, then checks its bytes.
fn wait_index_version(m: &MultiMaster, r: &Replica, index: &str, version: u64, snapshot: &str) {
    wait_or(
        REPLICATE,
        &format!("{}: {index} at version {version}", r.proc.name),
        || {
            r.try_status().is_some_and(|s| {
                s["indexes"][index]["current_version"] == version
                    && s["indexes"][index]["state"] == "idle"
            })
        },
        || r.diag(),
    );
    let live = r.data.join(index).join("current");
    assert_same_tree(&m.snapshot_dir(index, snapshot), &live);
}

#[test]
fn one_master_three_indexes_three_replicas_each_following_its_own() {
    let d = test_dir("indexes");
    let m = MultiMaster::start(d.path(), &["alpha", "beta", "gamma"], &[]);
    let indexes = m.get("/indexes");
    let names: Vec<&str> = indexes
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    let r1 = start_follower(&m, "r1", &["alpha", "beta"]);
    let r2 = start_follower(&m, "r2", &["beta", "gamma"]);
    let r3 = start_follower(&m, "r3", &["alpha", "beta", "gamma"]);

    // Independent numbering: alpha gets two versions, beta one, gamma three.
    let a1 = m.publish("alpha", "snap-a1", 1);
    let b1 = m.publish("beta", "snap-b1", 2);
    let g1 = m.publish("gamma", "snap-g1", 3);
    assert_eq!((a1, b1, g1), (1, 1, 1), "each index numbers from 1");
    let a2 = m.publish("alpha", "snap-a2", 4);
    let g2 = m.publish("gamma", "snap-g2", 5);
    let g3 = m.publish("gamma", "snap-g3", 6);
    assert_eq!((a2, g2, g3), (2, 2, 3));

    for r in [&r1, &r3] {
        wait_index_version(&m, r, "alpha", 2, "snap-a2");
    }
    for r in [&r1, &r2, &r3] {
        wait_index_version(&m, r, "beta", 1, "snap-b1");
    }
    for r in [&r2, &r3] {
        wait_index_version(&m, r, "gamma", 3, "snap-g3");
    }
    // Each replica follows exactly its indexes.
    let keys = |r: &Replica| -> Vec<String> {
        r.status()["indexes"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(keys(&r1), ["alpha", "beta"]);
    assert_eq!(keys(&r2), ["beta", "gamma"]);
    assert!(!r1.data.join("gamma").exists(), "r1 never touched gamma");

    // Retention per index (keep_versions = 2): gamma retired its v1 only.
    let gamma: Vec<u64> = m
        .get("/indexes/gamma/versions")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(gamma, [3, 2]);
    let alpha: Vec<u64> = m
        .get("/indexes/alpha/versions")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(alpha, [2, 1]);
    assert_eq!(m.get("/indexes/beta/versions/latest")["version"], 1);
    let r = request(
        "GET",
        &format!("{}/indexes/gamma/versions/1/torrent", m.url),
        None,
        None,
    );
    assert_eq!(r.status, 404, "a retired version's torrent is gone");
    let t = request(
        "GET",
        &format!("{}/indexes/gamma/versions/3/torrent", m.url),
        None,
        None,
    );
    assert_eq!(t.status, 200);
    assert_eq!(t.content_type, "application/x-bittorrent");
    // /indexes gives each index's latest.
    for i in m.get("/indexes").as_array().unwrap() {
        let want = match i["name"].as_str().unwrap() {
            "alpha" => 2,
            "beta" => 1,
            _ => 3,
        };
        assert_eq!(i["latest_version"], want, "{i}");
    }
    // Without a default index, the unprefixed routes say how to ask.
    let r = request("GET", &format!("{}/versions/latest", m.url), None, None);
    assert_eq!(r.status, 404);
    assert!(r.error_message().contains("/indexes/"), "{}", r.text());
    // Metrics carry the index label, on both sides.
    let mm = request("GET", &format!("{}/metrics", m.url), None, None).text();
    assert!(
        mm.contains("indexswarm_latest_version{index=\"gamma\"} 3"),
        "{mm}"
    );
    let rm = request("GET", &format!("{}/metrics", r3.url), None, None).text();
    assert!(
        rm.contains("indexswarm_current_version{index=\"alpha\"} 2"),
        "{rm}"
    );
    // The replica's top level keeps the first release's fields (its first index).
    assert_eq!(r3.status()["current_version"], 2);
}

fn refused(args: &[&str], needle: &str) {
    let mut c = cmd();
    c.arg("master").args(args);
    c.args([
        "--http-listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
    ]);
    let started = Instant::now();
    let out = run(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?} should say {needle:?}: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn bad_index_names_and_shared_directories_are_refused_at_start() {
    let d = test_dir("bad-indexes");
    let a = d.path().join("a").display().to_string();
    let b = d.path().join("b").display().to_string();
    refused(&["--index", &format!("Products={a}")], "must match");
    refused(
        &["--index", &format!("x={a}"), "--index", &format!("y={a}")],
        "share the snapshots directory",
    );
    refused(&["--index", "noequals"], "must be NAME=DIR");
    refused(
        &["--snapshots-dir", &a, "--index", &format!("default={b}")],
        "names the index \"default\"",
    );
    // The replica too.
    let mut c = cmd();
    c.args(["replica", "--master-url", "http://127.0.0.1:9"]);
    c.args(["--index", &format!("p={a}"), "--index", &format!("q={a}")]);
    c.args([
        "--http-listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("share the data directory"));
}
