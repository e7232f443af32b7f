//! rqbit (a Rust client; `.ci/run` builds it into the tools cache) trading
//! with us both ways, on torrents with and without BEP 47 padding.
//!
//! rqbit 9 understands padding: it seeds an aligned torrent without padding
//! files on disk and writes none when it downloads one, so neither case
//! needs `materialise_pads`. It runs stateless (`rqbit download`), with DHT,
//! LSD, UPnP and its HTTP API off and any state it keeps under the test's
//! directory. As a seeder it is found through our tracker (our announce
//! path); as a leecher it is given our seeder directly (`--initial-peers`).
//! rqbit 9.1 announces port 4240 (its server's default) rather than the
//! port `download` listens on unless `--announce-port` says otherwise: then
//! our fetch dials a closed port and only gets the data ~10 s later, when
//! rqbit dials it back after its next announce. The seeder is told to
//! announce once an hour, so it never learns of our fetch from the tracker:
//! the test holds only if our fetch finds and dials it.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{fetch_ok, loopback, our_fetch, our_seed, Fixture};
use crate::common::*;

/// A few MB on loopback take well under a second; the rest is start-up.
const LIMIT: Duration = Duration::from_secs(60);

/// `rqbit [global] … download` listening on 127.0.0.1:`port`, isolated from
/// the network and from the user's rqbit state.
fn rqbit(f: &Fixture, port: u16, global: &[&str]) -> Command {
    let mut c = Command::new(tool("rqbit"));
    let state = f.path("rqbit-state");
    for var in ["XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"] {
        c.env(var, &state);
    }
    c.args([
        "--disable-dht",
        "--disable-dht-persistence",
        "--disable-lsd",
        "--disable-upnp-port-forward",
        "--listen-ip",
        "127.0.0.1",
        "--listen-port",
        &port.to_string(),
        "--announce-port",
        &port.to_string(),
    ])
    .args(global)
    .args(["download", "--disable-http-api"]);
    c
}

#[test]
fn rqbit_seeder_to_our_fetch() {
    for align in [false, true] {
        let d = test_dir("tr");
        let (_tracker, url) = start_tracker(&d.path().join("logs"), &[]);
        let f = Fixture::new(&format!("rqbit-fetch-{align}"), align, Some(&url));
        let started = Instant::now();
        let mut c = rqbit(&f, free_port(), &["--tracker-refresh-interval", "1h"]);
        c.args(["--overwrite", "-o"])
            .arg(&f.src_parent)
            .arg(&f.torrent);
        let mut rq = Proc::spawn("rqbit-seed", c, &f.logs());
        wait_until(LIMIT, "rqbit to check the data it seeds", || {
            let out = rq.stdout_text();
            assert!(rq.try_status().is_none(), "rqbit exited:\n{}", tail(&out));
            out.contains("Initial check results")
        });
        assert!(
            rq.stdout_text().contains("needed 0,"),
            "rqbit does not find the data complete (align {align}):\n{}",
            tail(&rq.stdout_text())
        );
        let hash = f.info_hash();
        wait_until(LIMIT, "rqbit to announce itself as a seeder", || {
            tracker_seeders(&url, &hash) >= Some(1)
        });
        let dst = f.path("ours");
        let summary = fetch_ok(&f, "fetch", our_fetch(&f, &dst, &[], &[]));
        assert!(summary["downloaded"].as_u64().unwrap() > 0);
        assert_same_tree(&f.src(), &dst.join("snap"));
        let secs = started.elapsed();
        assert!(secs < LIMIT, "rqbit → us took {secs:?} (align {align})");
        eprintln!("rqbit → us, align {align}: {secs:?}");
    }
}

#[test]
fn our_seeder_to_rqbit() {
    for align in [false, true] {
        let f = Fixture::new(&format!("seed-rqbit-{align}"), align, None);
        let port = free_port();
        let _seed = our_seed(&f, port, &[]);
        let started = Instant::now();
        let out = f.path("rqbit");
        let mut c = rqbit(&f, free_port(), &[]);
        c.arg("--exit-on-finish")
            .arg("--initial-peers")
            .arg(loopback(port).to_string())
            .arg("-o")
            .arg(&out)
            .arg(&f.torrent);
        let mut rq = Proc::spawn("rqbit-leech", c, &f.logs());
        let status = rq.wait(LIMIT);
        assert!(
            status.success(),
            "rqbit failed (align {align}): {}",
            tail(&rq.stdout_text())
        );
        assert_same_tree(&f.src(), &out.join("snap"));
        eprintln!("us → rqbit, align {align}: {:?}", started.elapsed());
    }
}
