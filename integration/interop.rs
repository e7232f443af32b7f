//! Issue 3: our engine trading with aria2 and libtorrent, both directions,
//! on multi-file torrents with nested directories, an empty file, a file
//! smaller than a block and one larger than several pieces; aligned or not.
//! The peers that need more set-up have their own files: `interop/rqbit.rs`
//! and `interop/transmission.rs` (in network namespaces).

mod rqbit;
mod ssl;
mod transmission;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(180);

struct Fixture {
    dir: tempfile::TempDir,
    src_parent: PathBuf,
    torrent: PathBuf,
}

impl Fixture {
    fn new(name: &str, align: bool, announce: Option<&str>) -> Fixture {
        let dir = test_dir(name);
        let src_parent = dir.path().join("src");
        interop_tree(&src_parent.join("snap"), 11);
        let torrent = dir.path().join("t.torrent");
        let mut c = cmd();
        c.arg("create")
            .arg(src_parent.join("snap"))
            .arg("-o")
            .arg(&torrent)
            .args(["--piece-length", "256K"]);
        if align {
            c.arg("--align-files");
        }
        if let Some(url) = announce {
            c.args(["--announce", url]);
        }
        run_ok(c);
        Fixture {
            dir,
            src_parent,
            torrent,
        }
    }
    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn src(&self) -> PathBuf {
        self.src_parent.join("snap")
    }
    /// The info-hash in hex, as `indexswarm inspect` reports it.
    fn info_hash(&self) -> String {
        let mut c = cmd();
        c.arg("inspect").arg(&self.torrent);
        let j: serde_json::Value = serde_json::from_slice(&run_ok(c).stdout).unwrap();
        j["info_hash"]
            .as_str()
            .expect("inspect prints the info_hash")
            .to_string()
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn our_seed(f: &Fixture, port: u16, extra: &[&str]) -> Proc {
    our_seed_in(cmd(), f, loopback(port), extra)
}

/// `indexswarm seed` from `c` (`cmd()` or `cmd_in(host)`), listening on `listen`.
fn our_seed_in(mut c: Command, f: &Fixture, listen: SocketAddr, extra: &[&str]) -> Proc {
    c.arg("seed")
        .arg(&f.torrent)
        .arg("--dir")
        .arg(&f.src_parent);
    c.args(["--listen", &listen.to_string()]).args(extra);
    let p = Proc::spawn(&format!("seed-{}", listen.port()), c, &f.logs());
    wait_until(
        Duration::from_secs(60),
        "our seeder to verify and print its info-hash",
        || p.stdout_text().trim().len() == 40,
    );
    p
}

fn our_fetch(f: &Fixture, dst: &Path, peers: &[u16], extra: &[&str]) -> Command {
    let peers: Vec<SocketAddr> = peers.iter().map(|&p| loopback(p)).collect();
    our_fetch_in(cmd(), f, dst, loopback(free_port()), &peers, extra)
}

/// `indexswarm fetch` from `c` (`cmd()` or `cmd_in(host)`), listening on `listen`.
fn our_fetch_in(
    mut c: Command,
    f: &Fixture,
    dst: &Path,
    listen: SocketAddr,
    peers: &[SocketAddr],
    extra: &[&str],
) -> Command {
    c.arg("fetch").arg(&f.torrent).arg("--dir").arg(dst);
    c.args(["--listen", &listen.to_string()]);
    for p in peers {
        c.args(["--peer", &p.to_string()]);
    }
    c.args(extra);
    c
}

fn fetch_ok(f: &Fixture, name: &str, c: Command) -> serde_json::Value {
    fetch_summary(&mut Proc::spawn(name, c, &f.logs()))
}

/// Waits (up to `LIMIT`) for a running fetch to succeed; its JSON summary.
fn fetch_summary(p: &mut Proc) -> serde_json::Value {
    let status = p.wait(LIMIT);
    assert!(
        status.success(),
        "{} failed:\n{}",
        p.name,
        tail(&p.stderr_text())
    );
    serde_json::from_str(p.stdout_text().lines().last().unwrap_or("{}"))
        .expect("fetch prints a JSON summary")
}

/// aria2 and Transmission 3.00 know nothing of BEP 47: to seed an aligned
/// torrent they need the padding files on disk, as they would have written
/// them themselves.
fn materialise_pads(f: &Fixture) {
    let mut c = cmd();
    c.arg("inspect").arg(&f.torrent);
    let j: serde_json::Value = serde_json::from_slice(&run_ok(c).stdout).unwrap();
    for file in j["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["pad"] == true)
    {
        let comps: Vec<&str> = file["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let p = comps.iter().fold(f.src(), |p, c| p.join(c));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![0u8; file["length"].as_u64().unwrap() as usize]).unwrap();
    }
}

#[test]
fn our_seeder_to_aria2() {
    need("aria2c");
    for align in [false, true] {
        let d = test_dir("tr");
        let logs = d.path().join("logs");
        let (_tracker, url) = start_tracker(&logs, &[]);
        let f = Fixture::new(&format!("seed-aria2-{align}"), align, Some(&url));
        let _seed = our_seed(&f, free_port(), &[]);
        let out = f.path("aria");
        let mut c = Command::new("aria2c");
        c.args(["--seed-time=0", "-d"])
            .arg(&out)
            .args(aria2_common(free_port()))
            .arg(&f.torrent);
        let mut a = Proc::spawn("aria2-leech", c, &f.logs());
        assert!(
            a.wait(LIMIT).success(),
            "aria2 failed (align {align}): {}",
            tail(&a.stdout_text())
        );
        assert_same_tree(&f.src(), &out.join("snap"));
    }
}

#[test]
fn our_seeder_to_libtorrent() {
    need_libtorrent();
    for align in [false, true] {
        let f = Fixture::new(&format!("seed-lt-{align}"), align, None);
        let port = free_port();
        let _seed = our_seed(&f, port, &[]);
        let out = f.path("lt");
        let mut c = lt_peer();
        c.arg("leech")
            .arg(&f.torrent)
            .arg(&out)
            .args(["--port", &free_port().to_string()]);
        c.args(["--peer", &format!("127.0.0.1:{port}"), "--timeout", "150"]);
        let mut p = Proc::spawn("lt-leech", c, &f.logs());
        assert!(
            p.wait(LIMIT).success(),
            "libtorrent did not finish (align {align}): {}",
            p.stdout_text()
        );
        assert_same_tree(&f.src(), &out.join("snap"));
    }
}

#[test]
fn aria2_seeder_to_our_fetch() {
    need("aria2c");
    for align in [false, true] {
        let d = test_dir("tr");
        let (_tracker, url) = start_tracker(&d.path().join("logs"), &[]);
        let f = Fixture::new(&format!("aria2-fetch-{align}"), align, Some(&url));
        if align {
            materialise_pads(&f);
        }
        let mut c = Command::new("aria2c");
        c.args(["-V", "--seed-ratio=0.0", "-d"])
            .arg(&f.src_parent)
            .args(aria2_common(free_port()))
            .arg(&f.torrent);
        let _aria = Proc::spawn("aria2-seed", c, &f.logs());
        let dst = f.path("ours");
        let summary = fetch_ok(&f, "fetch", our_fetch(&f, &dst, &[], &[]));
        assert!(summary["downloaded"].as_u64().unwrap() > 0);
        assert_same_tree(&f.src(), &dst.join("snap"));
        assert!(
            !dst.join("snap/.pad").exists(),
            "padding is never written by us"
        );
    }
}

#[test]
fn libtorrent_seeder_to_our_fetch() {
    need_libtorrent();
    for align in [false, true] {
        let f = Fixture::new(&format!("lt-fetch-{align}"), align, None);
        let port = free_port();
        let mut c = lt_peer();
        c.arg("seed")
            .arg(&f.torrent)
            .arg(&f.src_parent)
            .args(["--port", &port.to_string()]);
        let lt = Proc::spawn("lt-seed", c, &f.logs());
        wait_until(Duration::from_secs(30), "libtorrent seed to listen", || {
            lt.stdout_text().contains("listening")
        });
        let dst = f.path("ours");
        fetch_ok(&f, "fetch", our_fetch(&f, &dst, &[port], &[]));
        assert_same_tree(&f.src(), &dst.join("snap"));
    }
}

#[test]
fn mixed_swarm_through_our_tracker() {
    need_libtorrent();
    let d = test_dir("tr");
    let (_tracker, url) = start_tracker(&d.path().join("logs"), &[]);
    let f = Fixture::new("mixed", true, Some(&url));
    // The seeder is slow, so the leechers must also trade with each other.
    let _seed = our_seed(&f, free_port(), &["--upload-limit", "2M"]);
    let lt_out = f.path("lt");
    // libtorrent finds peers only through the tracker here.
    let mut c = lt_peer();
    c.arg("leech").arg(&f.torrent).arg(&lt_out);
    c.args([
        "--port",
        &free_port().to_string(),
        "--timeout",
        "150",
        "--seed-after",
    ]);
    let mut lt = Proc::spawn("lt-leech", c, &f.logs());
    let ours = f.path("ours");
    let mut fetch = Proc::spawn("fetch", our_fetch(&f, &ours, &[], &["--seed"]), &f.logs());
    wait_until(LIMIT, "both leechers to finish", || {
        lt.stdout_text().contains("\"complete\": true")
            && fetch.stdout_text().contains("bytes_total")
    });
    assert_same_tree(&f.src(), &ours.join("snap"));
    assert_same_tree(&f.src(), &lt_out.join("snap"));
    assert!(
        lt.try_status().is_none() && fetch.try_status().is_none(),
        "both keep seeding"
    );
}
