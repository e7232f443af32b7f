//! Issue #11: a closed swarm. With a swarm token, a stranger (here a
//! client bound to 127.0.0.2: loopback takes any 127/8 source address)
//! cannot read versions or torrents, gets a `failure reason` from the
//! tracker, and gets nothing from the master's or a replica's peer port,
//! while the replicas that hold the token converge. `/metrics` takes its
//! own token; mutations need the API token.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use indexswarm::metainfo::Metainfo;

use crate::common::*;
use crate::replica::{start_replica, Master, MB, REPLICATE};

mod tls;

const SWARM: &str = "swarm-secret-1";
const API: &str = "api-secret-2";
const METRICS: &str = "metrics-secret-3";

/// A TCP connection from 127.0.0.2 to `to`.
fn stranger(to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// A raw HTTP/1.0 GET from 127.0.0.2: (status, body).
fn stranger_get(base: &str, path: &str, auth: Option<&str>) -> (u16, Vec<u8>) {
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut s = stranger(addr);
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| raw[i + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

/// Sends a BitTorrent handshake for `info_hash` from 127.0.0.2 and returns
/// every byte the peer answered before closing.
fn stranger_handshake(peer: SocketAddr, info_hash: [u8; 20]) -> Vec<u8> {
    let mut s = stranger(peer);
    let mut hs = vec![19u8];
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0; 8]);
    hs.extend_from_slice(&info_hash);
    hs.extend_from_slice(b"-XX0001-strangerpeer");
    s.write_all(&hs).unwrap();
    // Ask for a piece too, as if the handshake had been answered.
    let _ = s.write_all(&[
        0, 0, 0, 1, 2, 0, 0, 0, 13, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0,
    ]);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn a_stranger_gets_nothing_while_token_holders_converge() {
    let d = test_dir("closed");
    let mut m = Master::start(
        d.path(),
        &[
            "--swarm-token",
            SWARM,
            "--api-token",
            API,
            "--metrics-token",
            METRICS,
        ],
    );
    m.read_token = Some(SWARM.to_string());
    let token = ["--swarm-token", SWARM];
    let rs: Vec<_> = (1..=2)
        .map(|i| {
            let id = format!("r{i}");
            let mut args = vec!["--id", id.as_str()];
            args.extend_from_slice(&token);
            start_replica(&m, &d.path().join(&id), &id, &args, &[])
        })
        .collect();
    let v1 = m.publish_new("snapshot.20260501000000000", 4 * MB, 7);
    for r in &rs {
        r.wait_version(v1, REPLICATE);
        assert_same_tree(m.snapshot(v1), &r.data.join("current"));
    }
    let torrent = {
        let r = request(
            "GET",
            &format!("{}/versions/{v1}/torrent", m.url),
            None,
            Some(&format!("Bearer {SWARM}")),
        );
        assert_eq!(r.status, 200);
        Metainfo::from_bytes(&r.body).unwrap()
    };

    // Reads: 401 without the token, from anywhere; the token opens them.
    for path in [
        "/versions",
        "/versions/latest",
        &format!("/versions/{v1}/torrent"),
        "/indexes",
        "/replicas",
        "/rollout",
        "/status",
        "/events",
    ] {
        let (code, _) = stranger_get(&m.url, path, None);
        assert_eq!(code, 401, "{path} without the token");
        let (code, _) = stranger_get(&m.url, path, Some("wrong"));
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    assert_eq!(stranger_get(&m.url, "/versions/latest", Some(SWARM)).0, 200);
    assert_eq!(
        stranger_get(&m.url, "/healthz", None).0,
        200,
        "health stays open"
    );
    assert_eq!(stranger_get(&m.url, "/metrics", None).0, 401);
    assert_eq!(stranger_get(&m.url, "/metrics", Some(METRICS)).0, 200);
    // Mutations need the API token, not the swarm's.
    let post = |auth: &str| {
        request(
            "POST",
            &format!("{}/rollout/pause", m.url),
            None,
            Some(&format!("Bearer {auth}")),
        )
        .status
    };
    assert_eq!(post(SWARM), 401);
    assert_eq!(post(API), 200);

    // The tracker: a failure reason without the token, peers with it.
    let ih = torrent.info_hash;
    let q = format!(
        "/announce?info_hash={}&peer_id=-XX0001-strangerpeer&port=7000&uploaded=0&downloaded=0&left=1&compact=1",
        percent(&ih.0)
    );
    let (code, body) = stranger_get(&m.url, &q, None);
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("failure reason"), "{text}");
    assert!(!text.contains("5:peers"), "no peers for a stranger: {text}");
    let (_, body) = stranger_get(
        &m.url,
        &format!("/announce/{SWARM}{}", &q["/announce".len()..]),
        None,
    );
    assert!(
        String::from_utf8_lossy(&body).contains("5:peers"),
        "the token in the path opens it: {}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn strangers_on_the_peer_port_get_no_handshake_bitfield_or_piece() {
    let d = test_dir("closed-peer");
    let mut m = Master::start(d.path(), &["--swarm-token", SWARM]);
    m.read_token = Some(SWARM.to_string());
    let r = start_replica(
        &m,
        &d.path().join("r1"),
        "r1",
        &["--id", "r1", "--swarm-token", SWARM],
        &[],
    );
    let v1 = m.publish_new("snapshot.20260502000000000", 2 * MB, 8);
    r.wait_version(v1, REPLICATE);
    let t = request(
        "GET",
        &format!("{}/versions/{v1}/torrent", m.url),
        None,
        Some(&format!("Bearer {SWARM}")),
    );
    let ih = Metainfo::from_bytes(&t.body).unwrap().info_hash.0;
    for (who, port) in [("master", m.peer_port), ("replica", r.peer_port)] {
        let got = stranger_handshake(SocketAddr::from(([127, 0, 0, 1], port)), ih);
        assert!(
            got.is_empty(),
            "{who} answered a stranger with {} bytes",
            got.len()
        );
    }
    // The replica still serves its members: a second member fetches from it.
    let r2 = start_replica(
        &m,
        &d.path().join("r2"),
        "r2",
        &["--id", "r2", "--swarm-token", SWARM],
        &[],
    );
    r2.wait_version(v1, REPLICATE);
}

/// Percent-encodes bytes for a query string.
fn percent(b: &[u8]) -> String {
    b.iter().map(|c| format!("%{c:02X}")).collect()
}

/// Opens `n` connections from 127.0.0.2 that send half a request, to be
/// trickled a byte at a time: a slowloris. Returns the streams.
fn half_sent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = stranger(addr);
            s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
            s.write_all(b"GET /versions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .ok()?;
            Some(s)
        })
        .collect()
}

#[test]
fn half_sent_requests_are_cut_and_the_api_keeps_answering() {
    let d = test_dir("slowloris");
    let m = Master::start(d.path(), &[]);
    let addr: SocketAddr = m.url.trim_start_matches("http://").parse().unwrap();
    // More than the per-address cap (128): the rest are closed at once. A
    // client from another address is not affected.
    let mut slow = half_sent(addr, 300);
    let started = std::time::Instant::now();
    // While they trickle, a normal client still gets its answer.
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(8) {
        for s in slow.iter_mut() {
            let _ = s.write_all(b"a");
        }
        let r = request("GET", &format!("{}/healthz", m.url), None, None);
        if r.status == 200 {
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(served > 0, "/healthz never answered during the flood");
    // Within the header timeout (10 s) every trickler is closed.
    wait_until(
        Duration::from_secs(30),
        "every half-sent request closed",
        || {
            slow.iter_mut().all(|s| {
                let _ = s.write_all(b"a");
                let mut b = [0u8; 512];
                matches!(s.read(&mut b), Ok(0) | Err(_)) && s.write_all(b"a").is_err()
                    || matches!(s.read(&mut b), Ok(0))
            })
        },
    );
    assert_eq!(
        request("GET", &format!("{}/healthz", m.url), None, None).status,
        200
    );
    // Cutting them is routine, not a warning: hyper's own "read header
    // from client timeout" WARN fired for every idle keep-alive client
    // too, every 10 s, in every sidecar's log.
    let log = m.proc.stderr_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("read header")),
        "{log}"
    );
}
