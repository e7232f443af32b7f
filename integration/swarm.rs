//! Issue #7: the swarm without its tracker. Leechers that lose the tracker
//! mid-download finish with the peers they know and the ones PEX (BEP 11)
//! tells them about, and re-announce within the retry cap once it is back;
//! PEX interoperates with libtorrent in both directions.

use std::path::Path;
use std::time::{Duration, Instant};

use indexswarm::metainfo::Metainfo;

use crate::common::*;

/// A torrent of `size` bytes announcing to `tracker` (its data under `d/src`).
fn setup(d: &Path, size: usize, tracker: &str) -> (std::path::PathBuf, Metainfo) {
    let src = d.join("src/snap");
    write_tree(&src, &[("a.bin", size), ("b.bin", size / 4)], 131);
    let t = d.join("t.torrent");
    let mut c = cmd();
    c.arg("create").arg(&src).arg("-o").arg(&t);
    c.args([
        "--piece-length",
        "64K",
        "--align-files",
        "--announce",
        tracker,
    ]);
    run_ok(c);
    let meta = Metainfo::from_bytes(&std::fs::read(&t).unwrap()).unwrap();
    (t, meta)
}

fn tracker_on(port: u16, logs: &Path, n: usize) -> Proc {
    let mut c = cmd();
    c.args([
        "tracker",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--interval",
        "2",
    ]);
    let p = Proc::spawn(&format!("tracker-{n}"), c, logs);
    wait_until(Duration::from_secs(20), "the tracker to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    p
}

fn fetch(d: &Path, t: &Path, port: u16, peers: &[u16], name: &str) -> Proc {
    let mut c = cmd();
    c.env("RUST_LOG", "indexswarm=debug");
    c.arg("fetch")
        .arg(t)
        .arg("--dir")
        .arg(d.join(name))
        .arg("--seed");
    c.args(["--listen", &format!("127.0.0.1:{port}")]);
    for p in peers {
        c.args(["--peer", &format!("127.0.0.1:{p}")]);
    }
    Proc::spawn(name, c, &d.join("logs"))
}

fn complete(p: &Proc) -> bool {
    p.stdout_text().contains("bytes_total")
}

/// Peers (incomplete + complete) the tracker lists for the torrent.
fn tracked(port: u16, meta: &Metainfo) -> u64 {
    let q: String = meta
        .info_hash
        .0
        .iter()
        .map(|b| format!("%{b:02x}"))
        .collect();
    let r = request(
        "GET",
        &format!("http://127.0.0.1:{port}/scrape?info_hash={q}"),
        None,
        None,
    );
    let body = r.body;
    // d5:filesd20:<hash>d8:completei<N>e10:downloadedi<N>e10:incompletei<N>eeee
    let text = String::from_utf8_lossy(&body);
    let num = |key: &str| {
        text.split(key)
            .nth(1)
            .and_then(|rest| rest.strip_prefix('i'))
            .and_then(|rest| rest.split('e').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    num("8:complete") + num("10:incomplete")
}

/// Parses a `Debug`-formatted duration ("15.2s", "812.3ms").
fn parse_debug_duration(v: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("µs") {
        (n, 1e-6)
    } else {
        (v.strip_suffix('s')?, 1.0)
    };
    num.parse::<f64>()
        .ok()
        .map(|x| Duration::from_secs_f64(x * scale))
}

/// The longest `retry_in` any "announce failed" line of `log` asked for.
fn longest_retry(log: &str) -> Duration {
    log.lines()
        .filter(|l| l.contains("announce failed"))
        .filter_map(|l| {
            let after = l.split("retry_in").nth(1)?;
            // Skip the ANSI colouring and '=' up to the number.
            let start = after.find(|c: char| c.is_ascii_digit())?;
            let value: String = after[start..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '\u{1b}')
                .collect();
            parse_debug_duration(&value)
        })
        .max()
        .unwrap_or_default()
}

#[test]
fn leechers_finish_through_a_tracker_outage_with_known_peers_and_pex() {
    let d = test_dir("outage");
    let logs = d.path().join("logs");
    let tport = free_port();
    let mut tracker = tracker_on(tport, &logs, 1);
    let (t, meta) = setup(
        d.path(),
        10_000_000,
        &format!("http://127.0.0.1:{tport}/announce"),
    );
    // A slow seeder (12.5 MB at 384 KiB/s: over 30 s), so the download
    // spans the outage.
    let seed_port = free_port();
    let mut c = cmd();
    c.arg("seed").arg(&t).arg("--dir").arg(d.path().join("src"));
    c.args([
        "--listen",
        &format!("127.0.0.1:{seed_port}"),
        "--upload-limit",
        "384K",
    ]);
    let seed = Proc::spawn("seed", c, &logs);
    wait_until(Duration::from_secs(60), "the seeder", || {
        seed.stdout_text().trim().len() == 40
    });
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut leechers: Vec<Proc> = (0..3)
        .map(|i| fetch(d.path(), &t, ports[i], &[], &format!("leech-{i}")))
        .collect();
    wait_until(Duration::from_secs(30), "three leechers tracked", || {
        tracked(tport, &meta) >= 4
    });
    tracker.signal("KILL");
    tracker.wait(Duration::from_secs(10));
    let down = Instant::now();
    // A latecomer knows one leecher, and only PEX can tell it of the others.
    leechers.push(fetch(d.path(), &t, ports[3], &[ports[0]], "leech-3"));
    let seed_addr = format!("127.0.0.1:{seed_port}");
    wait_until(
        Duration::from_secs(20),
        "the latecomer to reach the seeder through PEX",
        || {
            leechers[3]
                .stderr_text()
                .lines()
                .any(|l| l.contains("connected") && l.contains(&seed_addr))
        },
    );
    // Twenty seconds without a tracker, then it comes back on its port.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(down.elapsed()));
    let _tracker = tracker_on(tport, &logs, 2);
    let back = Instant::now();
    wait_until(
        Duration::from_secs(25),
        "every node announced to the new tracker",
        || tracked(tport, &meta) >= 5,
    );
    let took = back.elapsed();
    assert!(
        took <= indexswarm::tracker::client::RETRY_CAP.mul_f64(1.2) + Duration::from_secs(2),
        "re-announced {took:?} after the tracker came back"
    );
    wait_until(Duration::from_secs(120), "every leecher complete", || {
        leechers.iter().all(complete)
    });
    for (i, l) in leechers.iter().enumerate() {
        assert_same_tree(
            &d.path().join("src/snap"),
            &d.path().join(format!("leech-{i}/snap")),
        );
        let longest = longest_retry(&l.stderr_text());
        assert!(
            longest <= indexswarm::tracker::client::RETRY_CAP.mul_f64(1.2),
            "leech-{i} waited {longest:?} between announces"
        );
    }
}

/// libtorrent, told of one of our peers only, learns the rest from our PEX.
#[test]
fn libtorrent_finds_our_swarm_through_our_pex() {
    need_libtorrent();
    let d = test_dir("pex-lt-in");
    let (t, _) = setup(d.path(), 4_000_000, "http://127.0.0.1:9/announce");
    let seed_port = free_port();
    let mut c = cmd();
    c.arg("seed").arg(&t).arg("--dir").arg(d.path().join("src"));
    c.args([
        "--listen",
        &format!("127.0.0.1:{seed_port}"),
        "--upload-limit",
        "1M",
    ]);
    let seed = Proc::spawn("seed", c, &d.path().join("logs"));
    wait_until(Duration::from_secs(60), "the seeder", || {
        seed.stdout_text().trim().len() == 40
    });
    let ours = free_port();
    let _a = fetch(d.path(), &t, ours, &[seed_port], "ours");
    let lt_port = free_port();
    let mut c = lt_peer();
    c.arg("leech").arg(&t).arg(d.path().join("lt"));
    c.args([
        "--port",
        &lt_port.to_string(),
        "--peer",
        &format!("127.0.0.1:{ours}"),
    ]);
    c.args(["--report-peers", "--timeout", "90"]);
    std::fs::create_dir_all(d.path().join("lt")).unwrap();
    let mut lt = Proc::spawn("lt", c, &d.path().join("logs"));
    let seed_addr = format!("127.0.0.1:{seed_port}");
    wait_until(
        Duration::from_secs(60),
        "libtorrent to list our seeder as a PEX peer",
        || {
            lt.stdout_text().lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["peers"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|p| p["addr"] == seed_addr.as_str() && p["pex"] == true)
                    })
                })
            })
        },
    );
    assert!(
        lt.wait(Duration::from_secs(90)).success(),
        "{}",
        tail(&lt.stderr_text())
    );
    assert_same_tree(&d.path().join("src/snap"), &d.path().join("lt/snap"));
}

/// Our fetch, told of one libtorrent peer only, learns the libtorrent
/// seeder from libtorrent's PEX.
#[test]
fn we_find_a_libtorrent_swarm_through_its_pex() {
    need_libtorrent();
    let d = test_dir("pex-lt-out");
    let (t, _) = setup(d.path(), 4_000_000, "http://127.0.0.1:9/announce");
    let seed_port = free_port();
    let mut c = lt_peer();
    c.arg("seed").arg(&t).arg(d.path().join("src"));
    c.args([
        "--port",
        &seed_port.to_string(),
        "--seed-mode",
        "--upload-limit",
        "1048576",
    ]);
    let seed = Proc::spawn("lt-seed", c, &d.path().join("logs"));
    wait_until(Duration::from_secs(30), "the libtorrent seeder", || {
        seed.stdout_text().contains("listening")
    });
    let relay = free_port();
    let mut c = lt_peer();
    c.arg("leech").arg(&t).arg(d.path().join("relay"));
    c.args([
        "--port",
        &relay.to_string(),
        "--peer",
        &format!("127.0.0.1:{seed_port}"),
    ]);
    c.args(["--timeout", "120", "--seed-after"]);
    std::fs::create_dir_all(d.path().join("relay")).unwrap();
    let _relay = Proc::spawn("lt-relay", c, &d.path().join("logs"));
    let ours = fetch(d.path(), &t, free_port(), &[relay], "ours");
    let seed_addr = format!("127.0.0.1:{seed_port}");
    // libtorrent's PEX names its seeder to us (the seeder may also dial us
    // first: the relay's PEX told it our address).
    wait_until(
        Duration::from_secs(60),
        "libtorrent's PEX to name its seeder",
        || {
            ours.stderr_text()
                .lines()
                .any(|l| l.contains("peer exchange") && l.contains(&seed_addr))
        },
    );
    wait_until(Duration::from_secs(90), "our fetch complete", || {
        complete(&ours)
    });
    assert_same_tree(&d.path().join("src/snap"), &d.path().join("ours/snap"));
    ours.signal("TERM");
}
