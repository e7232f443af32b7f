//! Transmission 3.00 (Debian's `transmission-daemon`) trading with us both
//! ways, on torrents with and without BEP 47 padding.
//!
//! As a leecher Transmission ignores tracker peers on 127/8, so each test
//! builds a lab (`netns::Lab`) of two hosts: ours at `10.78.N.10` (our
//! tracker and our peer) and Transmission's at `10.78.N.11`. Keeping our
//! processes in a namespace too means that the cleanup of an interrupted
//! run finds and kills them as well. Facts measured here that shape the
//! tests:
//! - Transmission keeps one peer per IP address (its peer records are keyed
//!   by address, not port): with a stale and a live peer on one address it
//!   may dial only the stale one. So every run gets a fresh tracker and
//!   shows Transmission exactly one peer of ours.
//! - Transmission 3.00 predates BEP 47: padding files are ordinary files to
//!   it. It writes them when it downloads (`tree` ignores `.pad`) and needs
//!   them on disk to seed an aligned torrent, as aria2 does.
//! - Transmission 3.00 never creates zero-length files (transmission#417,
//!   fixed in 4.x), so what it downloads is compared without them.
//! - It decides whom it is interested in and whom it unchokes every 10 s
//!   (its rechoke pulse), and its request pipeline grows with its measured
//!   rate: a few MB take 10–17 s whatever the link. So each test trades
//!   both torrents (aligned or not) at once, with one daemon: its peer
//!   records are per torrent, so our two peers on one address are fine.
//!
//! Namespaces need root; CI runs as root. The lab removes what an
//! interrupted earlier run left under its prefix, and its drop removes its
//! namespaces and every process still in them, pass or fail.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use super::{fetch_summary, materialise_pads, our_fetch_in, our_seed_in, Fixture};
use crate::common::*;
use crate::netns::{self, Host, Lab};

/// Start-up, verification and Transmission's slow ramp on a few MB.
const LIMIT: Duration = Duration::from_secs(90);
/// Transmission's RPC, inside its namespace (nothing else listens there).
const RPC: &str = "127.0.0.1:9091";
/// Every test covers a torrent without BEP 47 padding and one with.
const ALIGNS: [bool; 2] = [false, true];

/// A test's lab: our host and Transmission's. Dropped last, it removes both
/// namespaces and whatever still runs in them.
struct Net {
    ours: Host,
    theirs: Host,
    _lab: Lab,
}

/// Builds the lab `prefix` on 10.78.`subnet`.0/24, after checking that
/// namespaces and Transmission can be used (failing loudly if not).
fn net(prefix: &str, subnet: u8) -> Net {
    assert!(
        netns::is_root(),
        "the Transmission interop tests build network namespaces and must run as root \
         (CI does): Transmission ignores peers on 127/8"
    );
    need("ip");
    need("transmission-daemon");
    need("transmission-remote");
    let mut lab = Lab::new(prefix, [78, subnet]).expect("build the lab network");
    let ours = lab.add_host(None).expect("add our namespace");
    let theirs = lab.add_host(None).expect("add Transmission's namespace");
    Net {
        ours,
        theirs,
        _lab: lab,
    }
}

/// One `transmission-daemon` in `host`'s namespace, killed on drop.
struct Transmission {
    host: Host,
    daemon: Proc,
}

impl Transmission {
    /// Starts the daemon with DHT, LSD, PEX, uTP, port mapping and
    /// encryption preference off, and waits for its RPC.
    fn start(host: &Host, conf: &Path, logs: &Path) -> Transmission {
        fs::create_dir_all(conf).unwrap();
        let settings = serde_json::json!({
            "bind-address-ipv4": host.ip.to_string(),
            "dht-enabled": false,
            "lpd-enabled": false,
            "pex-enabled": false,
            "utp-enabled": false,
            "port-forwarding-enabled": false,
            "encryption": 0,
            "peer-port": 51413,
            "peer-port-random-on-start": false,
            "rpc-enabled": true,
            "rpc-bind-address": "127.0.0.1",
            "rpc-port": 9091,
            "rpc-authentication-required": false,
            "rpc-whitelist-enabled": false,
            "rpc-host-whitelist-enabled": false,
            "download-dir": conf.join("downloads"),
            "incomplete-dir-enabled": false,
            "watch-dir-enabled": false,
            "start-added-torrents": true,
            "ratio-limit-enabled": false,
            "speed-limit-up-enabled": false,
            "speed-limit-down-enabled": false,
        });
        fs::write(conf.join("settings.json"), settings.to_string()).unwrap();
        let mut c = host.command("transmission-daemon");
        c.args(["--foreground", "--log-info", "--config-dir"])
            .arg(conf);
        let t = Transmission {
            host: host.clone(),
            daemon: Proc::spawn(&format!("transmission-{}", host.ns), c, logs),
        };
        wait_until(
            Duration::from_secs(20),
            "Transmission's RPC to answer",
            || t.remote(&["--list"]).status.success(),
        );
        t
    }

    fn remote(&self, args: &[&str]) -> Output {
        let mut c = self.host.command("transmission-remote");
        c.arg(RPC).args(args);
        run(c)
    }

    /// Adds `torrent`, its data in (or going to) `parent`/name.
    fn add(&self, torrent: &Path, parent: &Path) {
        let path = torrent.to_str().expect("a UTF-8 test path");
        let parent = parent.to_str().expect("a UTF-8 test path");
        // `--download-dir` after `--add` applies to that torrent.
        let out = self.remote(&["--add", path, "--download-dir", parent]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("success"),
            "Transmission refused {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `--info` of one torrent, for the percentage and for failure reports.
    fn info(&self, hash: &str) -> String {
        let out = self.remote(&["--torrent", hash, "--info", "--info-peers"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until Transmission holds all of every torrent in `hashes`; on
    /// timeout, panics with its view of the first one it lacks and the tail
    /// of its log.
    fn wait_complete(&self, hashes: &[String], limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let lacking = hashes
                .iter()
                .map(|h| self.info(h))
                .find(|info| percent_done(info) != Some(100.0));
            let Some(info) = lacking else { return };
            if Instant::now() > deadline {
                panic!(
                    "timed out after {limit:?} waiting for {what}\n{info}\nlog:\n{}",
                    tail(&self.daemon.stderr_text())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the daemon gently (it flushes its write cache on the way out).
    fn stop(mut self) {
        self.daemon.signal("TERM");
        self.daemon.wait(Duration::from_secs(30));
    }
}

/// The `Percent Done: 44.0%` line of `transmission-remote --info`.
fn percent_done(info: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("Percent Done:"))
        .and_then(|v| v.trim().trim_end_matches('%').parse().ok())
}

/// `assert_same_tree`, except that zero-length files of `expected` may be
/// missing from `actual` (Transmission 3.00 does not create them).
fn assert_same_tree_but_empty_files(expected: &Path, actual: &Path) {
    let got = tree(actual);
    let want: Vec<_> = tree(expected)
        .into_iter()
        .filter(|(name, data)| !data.is_empty() || got.iter().any(|(n, _)| n == name))
        .collect();
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&want),
        names(&got),
        "file lists differ (besides empty files): {} vs {}",
        expected.display(),
        actual.display()
    );
    for ((n, x), (_, y)) in want.iter().zip(got.iter()) {
        assert!(
            x == y,
            "{n} differs between {} and {}",
            expected.display(),
            actual.display()
        );
    }
}

#[test]
fn our_seeder_to_transmission() {
    let net = net("iswtl", 1);
    let d = test_dir("tr");
    let logs = d.path().join("logs");
    let (_tracker, url) = start_tracker_in(cmd_in(&net.ours), net.ours.ip, &logs, &[]);
    let fixtures = ALIGNS.map(|a| Fixture::new(&format!("seed-transmission-{a}"), a, Some(&url)));
    let _seeds = fixtures.each_ref().map(|f| {
        let listen = SocketAddr::from((net.ours.ip, free_port()));
        our_seed_in(cmd_in(&net.ours), f, listen, &[])
    });
    let started = Instant::now();
    let tr = Transmission::start(&net.theirs, &d.path().join("tr-conf"), &logs);
    let hashes = fixtures.each_ref().map(|f| {
        tr.add(&f.torrent, &f.path("transmission"));
        f.info_hash()
    });
    tr.wait_complete(&hashes, LIMIT, "Transmission to download from our seeders");
    tr.stop();
    for f in &fixtures {
        assert_same_tree_but_empty_files(&f.src(), &f.path("transmission/snap"));
    }
    eprintln!("us → Transmission, both torrents: {:?}", started.elapsed());
}

#[test]
fn transmission_seeder_to_our_fetch() {
    let net = net("iswts", 2);
    let d = test_dir("tr");
    let logs = d.path().join("logs");
    let (_tracker, url) = start_tracker_in(cmd_in(&net.ours), net.ours.ip, &logs, &[]);
    let fixtures = ALIGNS.map(|a| Fixture::new(&format!("transmission-fetch-{a}"), a, Some(&url)));
    materialise_pads(&fixtures[1]);
    let started = Instant::now();
    let tr = Transmission::start(&net.theirs, &d.path().join("tr-conf"), &logs);
    let hashes = fixtures.each_ref().map(|f| {
        tr.add(&f.torrent, &f.src_parent);
        f.info_hash()
    });
    tr.wait_complete(&hashes, LIMIT, "Transmission to verify the data it seeds");
    wait_until(LIMIT, "Transmission to announce itself as a seeder", || {
        hashes.iter().all(|h| tracker_seeders(&url, h) >= Some(1))
    });
    let mut fetches = fixtures.each_ref().map(|f| {
        let listen = SocketAddr::from((net.ours.ip, free_port()));
        let c = our_fetch_in(cmd_in(&net.ours), f, &f.path("ours"), listen, &[], &[]);
        Proc::spawn("fetch", c, &f.logs())
    });
    for (f, p) in fixtures.iter().zip(fetches.iter_mut()) {
        let summary = fetch_summary(p);
        assert!(summary["downloaded"].as_u64().unwrap() > 0);
        assert_same_tree(&f.src(), &f.path("ours/snap"));
    }
    let secs = started.elapsed();
    assert!(secs < LIMIT, "Transmission → us took {secs:?}");
    eprintln!("Transmission → us, both torrents: {secs:?}");
}

#[test]
fn percent_done_reads_transmission_remote_info() {
    let info = "TRANSFER\n  State: Downloading\n  Percent Done: 44.0%\n  ETA: 2 sec";
    assert_eq!(percent_done(info), Some(44.0));
    assert_eq!(percent_done("  Percent Done: 100%\n"), Some(100.0));
    assert_eq!(percent_done("no torrent"), None);
}
