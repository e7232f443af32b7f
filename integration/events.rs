//! Issue #10, the server side: `GET /` serves the dashboard on both
//! sidecars, `GET /events` streams the whole state on connect and then
//! what changes (a new version, a replica reaching it), `/metrics` has the
//! fleet's gauges, and `indexswarm demo --serve` keeps publishing until it
//! is stopped.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::replica::{start_replica, Master, MB, REPLICATE, START};

/// A raw `GET /events` connection, read line by line.
struct Feed {
    lines: BufReader<TcpStream>,
}

impl Feed {
    fn open(base: &str) -> Feed {
        let addr = base.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        use std::io::Write;
        write!(
            s,
            "GET /events HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut lines = BufReader::new(s);
        let mut status = String::new();
        lines.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "GET /events: {status}");
        Feed { lines }
    }

    /// The next event (name, data), skipping keep-alives and chunk sizes;
    /// `None` at the deadline.
    fn next(&mut self, deadline: Instant) -> Option<(String, Value)> {
        let mut name = None;
        while Instant::now() < deadline {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(_) => continue,
            }
            let line = line.trim_end();
            if let Some(n) = line.strip_prefix("event:") {
                name = Some(n.trim().to_string());
            } else if let Some(d) = line.strip_prefix("data:") {
                if let (Some(n), Ok(v)) = (name.take(), serde_json::from_str(d.trim())) {
                    return Some((n, v));
                }
            }
        }
        None
    }

    /// Reads events until `want` accepts one.
    fn until(&mut self, limit: Duration, what: &str, mut want: impl FnMut(&str, &Value) -> bool) {
        let deadline = Instant::now() + limit;
        while let Some((n, v)) = self.next(deadline) {
            if want(&n, &v) {
                return;
            }
        }
        panic!("no event: {what} within {limit:?}");
    }
}

#[test]
fn the_event_stream_sends_the_state_then_each_change() {
    let d = test_dir("events");
    let mut m = Master::start(d.path(), &[]);
    let r = start_replica(&m, &d.path().join("r1"), "r1", &["--id", "r1"], &[]);
    let v1 = m.publish_new("snapshot.20260401000000000", 2 * MB, 5);
    r.wait_version(v1, REPLICATE);

    // Both pages are HTML and fetch nothing from elsewhere.
    for url in [&m.url, &r.url] {
        let page = request("GET", &format!("{url}/"), None, None);
        assert_eq!(page.status, 200);
        assert!(
            page.content_type.starts_with("text/html"),
            "{}",
            page.content_type
        );
        let text = page.text();
        assert!(text.contains("<html"), "{url}/");
        for far in ["http://", "https://", "src=\"//", "href=\"//"] {
            assert!(!text.contains(far), "{url}/ refers elsewhere ({far})");
        }
    }

    let mut feed = Feed::open(&m.url);
    let mut seen = std::collections::BTreeSet::new();
    feed.until(START, "the initial state", |n, v| {
        match n {
            "version" if v["latest_version"] == v1 => seen.insert("version"),
            "replica" if v["id"] == "r1" && v["live_version"] == v1 => seen.insert("replica"),
            "rollout" if v["active_version"] == v1 => seen.insert("rollout"),
            "traffic" if v["master_uploaded"].as_u64() > Some(0) => seen.insert("traffic"),
            _ => false,
        };
        seen.len() == 4
    });
    // A new version, then the replica on it: both arrive as events.
    let v2 = m.publish_next(v1, "snapshot.20260401000100000", MB, 6);
    feed.until(REPLICATE, "version 2", |n, v| {
        n == "version" && v["latest_version"] == v2
    });
    feed.until(REPLICATE, "r1 on version 2", |n, v| {
        n == "replica" && v["id"] == "r1" && v["live_version"] == v2
    });

    // The fleet's gauges.
    let metrics = request("GET", &format!("{}/metrics", m.url), None, None).text();
    for line in [
        "indexswarm_fleet_replicas{index=\"default\",state=\"idle\"} 1",
        "indexswarm_replica_lag_versions{index=\"default\",replica=\"r1\"} 0",
        &format!("indexswarm_active_version{{index=\"default\"}} {v2}"),
        "indexswarm_rollout_stuck{index=\"default\"} 0",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
    assert!(metrics.contains("indexswarm_peer_to_peer_ratio{index=\"default\"}"));
    let rm = request("GET", &format!("{}/metrics", r.url), None, None).text();
    for name in [
        "indexswarm_ready{index=\"default\"} 1",
        "indexswarm_hash_failures_total{index=\"default\"} 0",
        "indexswarm_free_disk_bytes{index=\"default\"}",
    ] {
        assert!(rm.contains(name), "replica /metrics lacks {name}:\n{rm}");
    }
}

#[test]
fn demo_serve_keeps_publishing_until_stopped() {
    let d = test_dir("demo-serve");
    let mut c = cmd();
    c.args([
        "demo",
        "--size",
        "4M",
        "--replicas",
        "2",
        "--serve",
        "--every",
        "1",
        "--dir",
    ])
    .arg(d.path().join("work"));
    c.stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + REPLICATE;
    let mut url = None;
    while url.is_none() && Instant::now() < deadline {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        url = line
            .strip_prefix("dashboard: ")
            .and_then(|l| l.split_whitespace().next())
            .map(|u| u.trim_end_matches('/').to_string());
    }
    let url = url.expect("the demo prints the dashboard's URL");
    assert_eq!(request("GET", &format!("{url}/"), None, None).status, 200);
    wait_until(REPLICATE, "version 4 published and rolled out", || {
        get_json(&format!("{url}/rollout"))
            .is_some_and(|r| r["active_version"].as_u64() >= Some(4) && r["phase"] == "done")
    });
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert!(
        status.success(),
        "demo --serve after SIGTERM: {status}\n{rest}"
    );
    assert!(rest.contains("stopping at version"), "{rest}");
}

#[test]
fn an_open_event_stream_does_not_keep_the_master_from_stopping() {
    let d = test_dir("events-stop");
    let mut m = Master::start(d.path(), &[]);
    let mut feed = Feed::open(&m.url);
    feed.until(START, "the first event", |n, _| {
        n == "rollout" || n == "traffic"
    });
    let stopped = Instant::now();
    m.proc.signal("TERM");
    let status = m.proc.wait(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM: {status}");
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "the master took {:?} to stop with a dashboard open",
        stopped.elapsed()
    );
}
