//! Issue 2: the tracker and announce client against real peers and a real
//! tracker.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn two_aria2_peers_find_each_other_through_our_tracker() {
    need("aria2c");
    let d = test_dir("aria-tracker");
    let logs = d.path().join("logs");
    let seed_dir = d.path().join("seed");
    interop_tree(&seed_dir.join("snap"), 4);
    let (_tracker, url) = start_tracker(&logs, &[]);
    let t = d.path().join("t.torrent");
    let mut c = cmd();
    c.arg("create")
        .arg(seed_dir.join("snap"))
        .arg("-o")
        .arg(&t)
        .args(["--announce", &url]);
    run_ok(c);

    let mut seeder = Command::new("aria2c");
    seeder
        .args(["-V", "--seed-ratio=0.0", "-d"])
        .arg(&seed_dir)
        .args(aria2_common(free_port()))
        .arg(&t);
    let _seeder = Proc::spawn("aria2-seed", seeder, &logs);

    let out_dir = d.path().join("leech");
    let mut leech = Command::new("aria2c");
    leech
        .args(["--seed-time=0", "-d"])
        .arg(&out_dir)
        .args(aria2_common(free_port()))
        .arg(&t);
    let mut leech = Proc::spawn("aria2-leech", leech, &logs);
    let status = leech.wait(Duration::from_secs(120));
    assert!(
        status.success(),
        "aria2 leech failed: {}",
        tail(&leech.stdout_text())
    );
    assert_same_tree(&seed_dir.join("snap"), &out_dir.join("snap"));
}

/// opentracker as Debian builds it: whitelist-only, refuses root, chroots.
fn start_opentracker(dir: &std::path::Path, info_hash: &str) -> (Proc, String) {
    need("opentracker");
    let root = dir.join("ot");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("whitelist.txt"), format!("{info_hash}\n")).unwrap();
    let port = free_port();
    let conf = root.join("ot.conf");
    std::fs::write(
        &conf,
        format!("listen.tcp_udp 127.0.0.1:{port}\ntracker.rootdir {}\naccess.whitelist /whitelist.txt\n", root.display()),
    )
    .unwrap();
    // nobody must be able to read the chroot and the path down to it.
    let _ = Command::new("chmod").args(["-R", "a+rX"]).arg(dir).status();
    let mut p = dir.to_path_buf();
    while let Some(parent) = p.parent() {
        let _ = Command::new("chmod").arg("a+x").arg(parent).status();
        p = parent.to_path_buf();
    }
    let mut c = Command::new("opentracker");
    c.arg("-f").arg(&conf).args(["-u", "nobody"]);
    let proc = Proc::spawn("opentracker", c, &dir.join("logs"));
    wait_until(Duration::from_secs(20), "opentracker to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (proc, format!("http://127.0.0.1:{port}/announce"))
}

#[test]
fn our_announce_client_gets_peers_from_opentracker() {
    use indexswarm::metainfo::InfoHash;
    use indexswarm::tracker::{announce, AnnounceRequest, Event};

    let d = test_dir("opentracker");
    let hash = InfoHash([0x5a; 20]);
    let (_ot, url) = start_opentracker(d.path(), &hash.hex());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let req = |id: u8, port: u16| AnnounceRequest {
            info_hash: hash,
            peer_id: [id; 20],
            port,
            uploaded: 0,
            downloaded: 0,
            left: 100,
            event: Event::Started,
            compact: true,
            no_peer_id: true,
            numwant: Some(50),
            ip: None,
        };
        let first = announce(&http, &url, &req(1, 40001))
            .await
            .expect("first announce");
        assert!(first.interval.as_secs() > 0);
        let second = announce(&http, &url, &req(2, 40002))
            .await
            .expect("second announce");
        let ports: Vec<u16> = second.peers.iter().map(|p| p.addr.port()).collect();
        assert!(
            ports.contains(&40001),
            "opentracker lists the first peer: {ports:?}"
        );
        // An unlisted torrent is refused with a failure reason we surface.
        let mut other = req(3, 40003);
        other.info_hash = InfoHash([0x11; 20]);
        assert!(
            announce(&http, &url, &other).await.is_err(),
            "non-whitelisted hash is refused"
        );
    });
}

#[test]
fn our_tracker_answers_announce_and_scrape_over_http() {
    use indexswarm::metainfo::InfoHash;
    use indexswarm::tracker::{announce, AnnounceRequest, Event};

    let d = test_dir("http-tracker");
    let hash = InfoHash([0xab; 20]);
    let wl = d.path().join("whitelist");
    std::fs::write(&wl, format!("# test\n{}\n", hash.hex())).unwrap();
    let (_t, url) = start_tracker(
        &d.path().join("logs"),
        &["--whitelist", wl.to_str().unwrap()],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let mut req = AnnounceRequest {
            info_hash: hash,
            peer_id: [7; 20],
            port: 5555,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event: Event::Started,
            compact: false,
            no_peer_id: false,
            numwant: None,
            ip: None,
        };
        announce(&http, &url, &req).await.unwrap();
        req.peer_id = [8; 20];
        req.left = 10;
        // Dictionary form, without peer ids (the tracker never reveals them).
        let r = announce(&http, &url, &req).await.unwrap();
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].peer_id, None);
        assert_eq!((r.complete, r.incomplete), (1, 1));
        // Unknown hash: failure reason.
        req.info_hash = InfoHash([1; 20]);
        let e = announce(&http, &url, &req).await.unwrap_err().to_string();
        assert!(e.contains("unregistered"), "{e}");
        // Scrape (BEP 48) with a binary hash in the query.
        let scrape_url = url.replace("/announce", "/scrape");
        let body = http
            .get(format!(
                "{scrape_url}?info_hash={}",
                indexswarm::tracker::protocol::url_bytes(&hash.0)
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("8:completei1e") && text.contains("10:incompletei1e"),
            "{text}"
        );
        // Malformed announce: failure reason, not a crash.
        let bad = http
            .get(format!("{url}?info_hash=short"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(bad.contains("failure reason"), "{bad}");
    });
}
