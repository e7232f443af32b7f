//! Issue #11, part 3: no request from the network exhausts a sidecar or
//! turns it against its fleet. Each test reproduces one finding against the
//! real binary (or the library's client against a stand-in) and asserts the
//! fixed behaviour: the tracker keyed by peer id and address, announce
//! floods, `POST /poll` floods, `torrent_url` and redirects off the
//! master's origin, huge bodies from the master, symlinks swapped into a
//! published snapshot, and republishing a retired snapshot.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexswarm::metainfo::InfoHash;
use indexswarm::tracker::protocol::url_bytes;
use indexswarm::tracker::{announce, AnnounceRequest, AnnounceResponse, Event};

use crate::common::*;
use crate::replica::{spawn_replica, Replica};

// ---------------------------------------------------------------- tracker

/// An HTTP client whose connections come from `ip` (any 127/8 address
/// works on loopback).
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(ip))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client")
}

fn announce_req(
    hash: InfoHash,
    id: [u8; 20],
    port: u16,
    left: u64,
    event: Event,
) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: hash,
        peer_id: id,
        port,
        uploaded: 0,
        downloaded: 0,
        left,
        event,
        compact: true,
        no_peer_id: false,
        numwant: Some(50),
        ip: None,
    }
}

async fn must_announce(
    http: &reqwest::Client,
    url: &str,
    req: &AnnounceRequest,
) -> AnnounceResponse {
    announce(http, url, req)
        .await
        .unwrap_or_else(|e| panic!("announce of {:?} refused: {e}", &req.peer_id[..4]))
}

fn listed(r: &AnnounceResponse) -> Vec<SocketAddr> {
    r.peers.iter().map(|p| p.addr).collect()
}

fn peer_id(tag: u8, n: u32) -> [u8; 20] {
    let mut id = *b"-XX0000-000000000000";
    id[1] = tag;
    id[12..16].copy_from_slice(&n.to_be_bytes());
    id
}

/// A replica's peer id announced from another address neither moves its
/// entry nor, with `event=stopped`, evicts it; and no reply names a peer id
/// (the dictionary model included), so nobody can learn one to try.
#[test]
fn a_peer_id_announced_from_another_address_neither_moves_nor_evicts_the_replica() {
    let d = test_dir("hijack");
    let (_tracker, url) = start_tracker(&d.path().join("logs"), &[]);
    let hash = InfoHash([0x11; 20]);
    let local = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let stranger = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = peer_id(b'A', 1);
        let a_addr: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        must_announce(&local, &url, &announce_req(hash, a, 40001, 0, Event::Started)).await;

        // The stranger claims the replica's peer id from its own address...
        must_announce(&stranger, &url, &announce_req(hash, a, 40999, 0, Event::Started)).await;
        let mut b = announce_req(hash, peer_id(b'B', 2), 40002, 100, Event::Started);
        let seen = must_announce(&local, &url, &b).await;
        assert!(
            listed(&seen).contains(&a_addr),
            "after a stranger announced the replica's peer id from 127.0.0.2, \
             the replica's own entry is gone: {:?}",
            listed(&seen)
        );
        // ...and stops it.
        let mut stop = announce_req(hash, a, 40999, 0, Event::Stopped);
        stop.numwant = Some(0);
        must_announce(&stranger, &url, &stop).await;
        b.event = Event::None;
        b.compact = false;
        let seen = must_announce(&local, &url, &b).await;
        assert!(
            listed(&seen).contains(&a_addr),
            "event=stopped from 127.0.0.2 evicted the replica announced from 127.0.0.1: {:?}",
            listed(&seen)
        );
        assert!(
            seen.peers.iter().all(|p| p.peer_id.is_none()),
            "a dictionary-model reply names peer ids: {:?}",
            seen.peers
        );
        // The same in the raw reply, whatever `no_peer_id` says.
        let q = format!(
            "{url}?info_hash={}&peer_id={}&port=40002&uploaded=0&downloaded=0&left=100&compact=0&no_peer_id=0",
            url_bytes(&hash.0),
            url_bytes(&b.peer_id)
        );
        let raw = local.get(q).send().await.unwrap().bytes().await.unwrap();
        assert!(
            !raw.windows(9).any(|w| w == b"7:peer id"),
            "the reply names peer ids: {}",
            String::from_utf8_lossy(&raw)
        );
        // The replica itself still stops its own entry.
        let mut own_stop = announce_req(hash, a, 40001, 0, Event::Stopped);
        own_stop.numwant = Some(0);
        must_announce(&local, &url, &own_stop).await;
        let seen = must_announce(&local, &url, &b).await;
        assert!(
            !listed(&seen).contains(&a_addr),
            "the replica's own stopped removes it: {:?}",
            listed(&seen)
        );
    });
}

/// How many peers the tracker holds for `hash` (its scrape's complete + incomplete).
async fn tracked(http: &reqwest::Client, url: &str, hash: InfoHash) -> u64 {
    let q = format!(
        "{}?info_hash={}",
        url.replace("/announce", "/scrape"),
        url_bytes(&hash.0)
    );
    let body = http.get(q).send().await.unwrap().bytes().await.unwrap();
    let count = |key: &[u8]| -> u64 {
        let Some(at) = body.windows(key.len()).position(|w| w == key) else {
            return 0;
        };
        let digits: String = body[at + key.len()..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|b| *b as char)
            .collect();
        digits.parse().unwrap_or(0)
    };
    count(b"8:completei") + count(b"10:incompletei")
}

/// `n` announces (`started`, distinct peer ids) spread over `ips`, eight at a time.
async fn flood(url: &str, hash: InfoHash, ips: &[Ipv4Addr], n: u32, tag: u8) {
    let clients: Vec<reqwest::Client> = ips.iter().map(|ip| client_from(*ip)).collect();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (clients, next, url) = (clients.clone(), next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let c = &clients[i as usize % clients.len()];
                let port = 10_000 + (i % 50_000) as u16;
                let req = announce_req(hash, peer_id(tag, i), port, 100, Event::Started);
                announce(c, &url, &req).await.expect("a fake announce");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// 10,050 fake announces used to fill a torrent's 10,000-peer cap, after
/// which real replicas were never listed to each other. Now one address
/// holds at most `MAX_PEERS_PER_ADDRESS` entries, and a torrent filled from
/// 201 addresses makes room by dropping its newest strangers, never the
/// members (peers that have announced for a while): replicas keep finding
/// each other, and a new one joins.
#[test]
fn announce_floods_do_not_keep_replicas_from_finding_each_other() {
    use indexswarm::tracker::server::MAX_PEERS_PER_ADDRESS;
    let d = test_dir("announce-flood");
    let (_tracker, url) = start_tracker(&d.path().join("logs"), &[]);
    let hash = InfoHash([0x22; 20]);
    let local = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 10,050 fakes from one address.
        flood(&url, hash, &[Ipv4Addr::new(127, 0, 0, 2)], 10_050, b'F').await;
        let held = tracked(&local, &url, hash).await;
        assert!(
            held <= MAX_PEERS_PER_ADDRESS as u64,
            "10,050 announces from one address hold {held} entries \
             (at most {MAX_PEERS_PER_ADDRESS} per address)"
        );

        // Two replicas join; each learns of the other.
        let a_addr: SocketAddr = "127.0.0.1:41001".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:41002".parse().unwrap();
        let mut a = announce_req(hash, peer_id(b'A', 1), 41001, 0, Event::Started);
        let mut b = announce_req(hash, peer_id(b'B', 2), 41002, 100, Event::Started);
        must_announce(&local, &url, &a).await;
        let seen = must_announce(&local, &url, &b).await;
        assert!(
            listed(&seen).contains(&a_addr),
            "a replica is not listed to the next one after 10,050 fake announces: {} peers tracked",
            tracked(&local, &url, hash).await
        );
        a.event = Event::None;
        b.event = Event::None;
        let seen = must_announce(&local, &url, &a).await;
        assert!(
            listed(&seen).contains(&b_addr),
            "the seeder learns of the leecher"
        );
        // A few more intervals: both are members now.
        for _ in 0..2 {
            must_announce(&local, &url, &a).await;
            must_announce(&local, &url, &b).await;
        }

        // 10,050 more fakes from 201 addresses fill the torrent.
        let ips: Vec<Ipv4Addr> = (3..=203).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
        flood(&url, hash, &ips, 10_050, b'G').await;
        let held = tracked(&local, &url, hash).await;
        assert!(held <= 10_000, "the torrent's cap holds: {held}");
        let seen = must_announce(&local, &url, &b).await;
        assert!(
            listed(&seen).contains(&a_addr),
            "a member is dropped or unlisted once strangers fill the torrent: {:?}",
            listed(&seen).len()
        );

        // A new replica joins the full torrent and learns of both members...
        let c_addr: SocketAddr = "127.0.0.1:41003".parse().unwrap();
        let mut c = announce_req(hash, peer_id(b'C', 3), 41003, 100, Event::Started);
        let seen = must_announce(&local, &url, &c).await;
        assert!(
            listed(&seen).contains(&a_addr) && listed(&seen).contains(&b_addr),
            "a new replica in a full torrent is not told of the members: {:?}",
            listed(&seen)
        );
        // ...and once it has announced for a few intervals, they learn of it.
        c.event = Event::None;
        for _ in 0..2 {
            must_announce(&local, &url, &c).await;
        }
        let seen = must_announce(&local, &url, &a).await;
        assert!(
            listed(&seen).contains(&c_addr),
            "the new replica stayed a stranger to the others: {:?}",
            listed(&seen)
        );
    });
}

// ---------------------------------------------------------------- a stand-in master

/// What the stand-in answers to one request.
enum Answer {
    /// A status and a JSON body.
    Json(u16, String),
    /// A torrent file.
    Torrent(Vec<u8>),
    /// `302 Found` to this URL.
    Redirect(String),
    /// 200 with this many bytes of JSON-looking filler, written as fast as
    /// the client reads them (until it hangs up); with a `Content-Length`
    /// when `declared`, else delimited by closing the connection.
    Endless { len: u64, declared: bool },
    /// The answer after this long (a long poll the master holds).
    Later(Duration, Box<Answer>),
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    method: String,
    /// Path and query.
    target: String,
}

type Handler = Arc<dyn Fn(&Hit) -> Answer + Send + Sync>;

/// A plain HTTP/1.1 server on loopback that records every request and
/// answers as `handler` says, one thread per connection (`Connection:
/// close`). It stands in for a master (or anything else) whose answers a
/// test must control: bodies that never end, redirects, foreign URLs.
struct StandIn {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    stop: Arc<AtomicBool>,
}

impl StandIn {
    fn start(handler: Handler) -> StandIn {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(s) = s else { continue };
                let (h, st, handler) = (h.clone(), st.clone(), handler.clone());
                std::thread::spawn(move || serve_one(s, &h, &st, &*handler));
            }
        });
        StandIn { url, hits, stop }
    }

    /// Requests whose target starts with `prefix`.
    fn hits_of(&self, prefix: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.target.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn targets(&self) -> Vec<String> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .map(|h| format!("{} {}", h.method, h.target))
            .collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn serve_one(
    mut s: TcpStream,
    hits: &Mutex<Vec<Hit>>,
    stop: &AtomicBool,
    handler: &dyn Fn(&Hit) -> Answer,
) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.lines().next().unwrap_or_default().split(' ');
    let hit = Hit {
        at: Instant::now(),
        method: first.next().unwrap_or_default().to_string(),
        target: first.next().unwrap_or_default().to_string(),
    };
    // A request body (a report) is read and dropped.
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 4);
    let want: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut have = head.len() - end;
    while have < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    hits.lock().unwrap().push(hit.clone());
    let mut answer = handler(&hit);
    while let Answer::Later(after, then) = answer {
        let until = Instant::now() + after;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        answer = *then;
    }
    let reply = |s: &mut TcpStream, status: u16, extra: &str, ctype: &str, body: &[u8]| {
        let _ = write!(
            s,
            "HTTP/1.1 {status} X\r\n{extra}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(body);
    };
    match answer {
        Answer::Json(status, body) => {
            reply(&mut s, status, "", "application/json", body.as_bytes())
        }
        Answer::Torrent(bytes) => reply(&mut s, 200, "", "application/x-bittorrent", &bytes),
        Answer::Redirect(to) => reply(
            &mut s,
            302,
            &format!("Location: {to}\r\n"),
            "text/plain",
            b"",
        ),
        Answer::Endless { len, declared } => {
            let length = if declared {
                format!("Content-Length: {len}\r\n")
            } else {
                String::new()
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n"
            );
            let mut chunk = vec![b' '; 1 << 16];
            chunk[0] = b'[';
            let mut sent = 0u64;
            while sent < len && !stop.load(Ordering::SeqCst) {
                let n = chunk.len().min((len - sent) as usize);
                if s.write_all(&chunk[..n]).is_err() {
                    return;
                }
                chunk[0] = b' ';
                sent += n as u64;
            }
        }
        Answer::Later(..) => unreachable!(),
    }
}

/// A rollout view naming nothing to do: the replica long-polls it.
fn idle_view(generation: u64) -> String {
    format!(
        r#"{{"index":"default","policy":"independent","generation":{generation},"paused":false,"pinned":false,"ready":[],"active":[],"laggards":[]}}"#
    )
}

fn not_found() -> Answer {
    Answer::Json(404, r#"{"error":"not found"}"#.into())
}

/// The query parameter `key` of a request target.
fn query_param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    target
        .split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Starts a replica following `master` (no regular polls within a test:
/// the interval is a minute).
fn replica_of(master: &str, root: &std::path::Path, name: &str) -> Replica {
    let r = spawn_replica(
        master,
        &root.join("logs"),
        &root.join(name),
        name,
        &["--poll-interval-secs", "60"],
        &[],
    );
    wait_until(Duration::from_secs(30), "the replica's /healthz", || {
        request("GET", &format!("{}/healthz", r.url), None, None).status == 200
    });
    r
}

// ---------------------------------------------------------------- POST /poll floods

/// `POST /poll` from a few threads as fast as the replica answers, for `secs`.
fn flood_polls(replica: &str, secs: u64) -> (Instant, Instant, u64) {
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, sent) = (format!("{replica}/poll"), sent.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let c = reqwest::Client::new();
                    while Instant::now() < until {
                        if c.post(&url).send().await.is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (start, Instant::now(), sent.load(Ordering::Relaxed))
}

fn hits_between(hits: &[Hit], from: Instant, to: Instant) -> usize {
    hits.iter().filter(|h| h.at >= from && h.at <= to).count()
}

/// 41,160 `POST /poll` in 10 s caused 21,984 requests to the master. Polls
/// asked for over HTTP are coalesced: one at a time, at most one a second
/// (`POLL_GAP`). Against a master with rollouts (the long poll is cut for
/// a prompt answer, then resumed) and against one without.
#[test]
fn a_flood_of_post_poll_is_coalesced_into_at_most_one_poll_a_second() {
    let d = test_dir("poll-flood");
    // 0: a master with rollouts (long polls held 30 s); 1: an older master.
    let mode = Arc::new(AtomicU8::new(0));
    let m = mode.clone();
    let master = StandIn::start(Arc::new(move |h: &Hit| {
        let rollouts = m.load(Ordering::SeqCst) == 0;
        if h.target.starts_with("/rollout") && rollouts {
            return match query_param(&h.target, "wait") {
                Some(_) => Answer::Later(
                    Duration::from_secs(30),
                    Box::new(Answer::Json(200, idle_view(1))),
                ),
                None => Answer::Json(200, idle_view(1)),
            };
        }
        not_found()
    }));
    let r = replica_of(&master.url, d.path(), "replica");
    let long_polls = || {
        master
            .hits_of("/rollout")
            .iter()
            .filter(|h| query_param(&h.target, "wait").is_some())
            .count()
    };
    let short_polls = |hits: &[Hit]| {
        hits.iter()
            .filter(|h| query_param(&h.target, "wait").is_none())
            .count()
    };
    wait_until(
        Duration::from_secs(30),
        "the replica's first long poll",
        || long_polls() >= 1,
    );

    // One POST /poll cuts the long poll short at once.
    let before = short_polls(&master.hits_of("/rollout"));
    let asked = Instant::now();
    assert_eq!(
        request("POST", &format!("{}/poll", r.url), None, None).status,
        202
    );
    wait_until(Duration::from_secs(5), "a poll after POST /poll", || {
        short_polls(&master.hits_of("/rollout")) > before
    });
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "POST /poll took {took:?} to reach the master"
    );

    let secs = 4;
    let (from, to, sent) = flood_polls(&r.url, secs);
    let hits = master.hits_of("/rollout");
    let during: Vec<Hit> = hits
        .iter()
        .filter(|h| h.at >= from && h.at <= to)
        .cloned()
        .collect();
    let bound = 2 * (secs as usize + 2);
    eprintln!(
        "{sent} POST /poll in {secs} s: {} requests to the master",
        during.len()
    );
    assert!(sent > 100, "the flood was a flood: {sent} requests");
    assert!(
        during.len() <= bound,
        "{sent} POST /poll in {secs} s made {} requests to the master (at most {bound}: \
         a poll a second, each a short poll and a new long poll)",
        during.len()
    );
    assert!(
        short_polls(&during) >= 2,
        "polls asked for during the flood still happen, once a second: {:?}",
        master.targets()
    );

    // An older master: each poll is GET /rollout (404) + GET /versions/latest.
    mode.store(1, Ordering::SeqCst);
    assert_eq!(
        request("POST", &format!("{}/poll", r.url), None, None).status,
        202
    );
    wait_until(Duration::from_secs(5), "a poll of /versions/latest", || {
        !master.hits_of("/versions/latest").is_empty()
    });
    let (from, to, sent) = flood_polls(&r.url, secs);
    let polls = hits_between(&master.hits_of("/versions/latest"), from, to);
    let all = hits_between(&master.hits_of("/"), from, to);
    eprintln!("{sent} POST /poll in {secs} s: {polls} polls, {all} requests to an older master");
    assert!(
        polls <= secs as usize + 2,
        "{sent} POST /poll in {secs} s polled an older master {polls} times (at most {})",
        secs + 2
    );
    assert!(all <= 2 * (secs as usize + 2) + 1, "{all} requests in all");
    drop(r);
}

// ---------------------------------------------------------------- torrent_url and redirects

/// A version object as the master lists it.
fn version_json(n: u64, info_hash: &str, torrent_url: &str) -> String {
    serde_json::json!({
        "version": n,
        "name": format!("snap.{n}"),
        "info_hash": info_hash,
        "torrent_url": torrent_url,
        "epoch": "e0e0e0e0",
    })
    .to_string()
}

/// A small torrent: its bytes and info-hash.
fn small_torrent(dir: &std::path::Path) -> (Vec<u8>, String) {
    write_tree(&dir.join("snap"), &[("a", 40_000), ("b", 3)], 7);
    let t = dir.join("snap.torrent");
    let mut c = cmd();
    c.arg("create").arg(dir.join("snap")).arg("-o").arg(&t);
    let hash = stdout_last_line(&run_ok(c));
    (std::fs::read(&t).unwrap(), hash)
}

/// Waits until the replica's last cycle failed with an error; returns it.
fn wait_failed(r: &Replica) -> String {
    let mut error = String::new();
    r.wait_status(Duration::from_secs(30), "a failed cycle", |s| {
        error = s["last_error"].as_str().unwrap_or_default().to_string();
        s["times_failed"].as_u64() >= Some(1) && !error.is_empty()
    });
    error
}

/// A master that names a `torrent_url` on another host made the replica
/// fetch it: a server elsewhere saw `GET /internal/admin?secret=1`. Only
/// the master's origin (scheme, host and port of `master_url`) is fetched.
#[test]
fn a_torrent_url_off_the_masters_origin_is_never_fetched() {
    let d = test_dir("foreign-torrent-url");
    let elsewhere = StandIn::start(Arc::new(|_: &Hit| Answer::Json(200, "{}".into())));
    let target = format!("{}/internal/admin?secret=1", elsewhere.url);
    let hash = "ab".repeat(20);
    let master = StandIn::start(Arc::new(move |h: &Hit| {
        if h.target == "/versions/latest" {
            Answer::Json(200, version_json(1, &hash, &target))
        } else {
            not_found()
        }
    }));
    let r = replica_of(&master.url, d.path(), "replica");
    let error = wait_failed(&r);
    eprintln!("last_error: {error}");
    assert!(
        elsewhere.targets().is_empty(),
        "the replica fetched a torrent_url on another host: {:?}",
        elsewhere.targets()
    );
    assert!(
        error.contains("not on the master's origin") && error.contains(&master.url),
        "/status last_error does not say why: {error}"
    );
}

/// Redirects were followed anywhere. None may leave the master's origin
/// (for the torrent, or for the JSON the replica reads); one that stays
/// on it is followed.
#[test]
fn no_redirect_leaves_the_masters_origin() {
    let d = test_dir("redirects");
    let elsewhere = StandIn::start(Arc::new(|_: &Hit| Answer::Json(200, "{}".into())));
    let target = format!("{}/internal/admin?secret=1", elsewhere.url);
    let (torrent, hash) = small_torrent(d.path());
    // 0: the torrent redirects elsewhere; 1: /versions/latest redirects
    // elsewhere; 2: the torrent redirects to another path of the master.
    let mode = Arc::new(AtomicU8::new(0));
    let own_url = Arc::new(std::sync::OnceLock::<String>::new());
    let (m, own) = (mode.clone(), own_url.clone());
    let master = StandIn::start(Arc::new(move |h: &Hit| {
        let mode = m.load(Ordering::SeqCst);
        let torrent_url = format!("{}/versions/1/torrent", own.get().unwrap());
        match h.target.as_str() {
            "/versions/latest" if mode == 1 => Answer::Redirect(target.clone()),
            "/versions/latest" => Answer::Json(200, version_json(1, &hash, &torrent_url)),
            "/versions/1/torrent" if mode == 2 => Answer::Redirect("/real/1.torrent".into()),
            "/versions/1/torrent" => Answer::Redirect(target.clone()),
            "/real/1.torrent" => Answer::Torrent(torrent.clone()),
            _ => not_found(),
        }
    }));
    own_url.set(master.url.clone()).unwrap();
    let r = replica_of(&master.url, d.path(), "replica");

    // The torrent redirects to another host.
    let error = wait_failed(&r);
    eprintln!("last_error: {error}");
    assert!(
        elsewhere.targets().is_empty(),
        "the replica followed the torrent's redirect to another host: {:?}",
        elsewhere.targets()
    );
    assert!(
        error.contains("redirect") && error.contains("another origin"),
        "/status last_error does not say why: {error}"
    );

    // /versions/latest redirects to another host.
    mode.store(1, Ordering::SeqCst);
    let polls = master.hits_of("/versions/latest").len();
    assert_eq!(
        request("POST", &format!("{}/poll", r.url), None, None).status,
        202
    );
    let mut error = String::new();
    r.wait_status(Duration::from_secs(30), "the next cycle's error", |s| {
        error = s["last_error"].as_str().unwrap_or_default().to_string();
        master.hits_of("/versions/latest").len() > polls && error.contains("/versions/latest")
    });
    assert!(
        elsewhere.targets().is_empty(),
        "the replica followed /versions/latest's redirect to another host: {:?}",
        elsewhere.targets()
    );
    eprintln!("last_error: {error}");
    assert!(error.contains("another origin"), "{error}");

    // A redirect within the master's origin is followed.
    mode.store(2, Ordering::SeqCst);
    assert_eq!(
        request("POST", &format!("{}/poll", r.url), None, None).status,
        202
    );
    r.wait_status(Duration::from_secs(30), "version 1 downloading", |s| {
        s["target_version"] == 1 && s["state"] == "downloading"
    });
    assert_eq!(master.hits_of("/real/1.torrent").len(), 1);
    assert!(elsewhere.targets().is_empty(), "{:?}", elsewhere.targets());
}

// ---------------------------------------------------------------- huge bodies

/// The peak resident set of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// A `/versions/latest` body of 256 MiB took the replica to 533 MB RSS (an
/// older build). Every body read from the master is capped: the rollout
/// long poll, `/versions/latest`, the torrent, the report's answer; and a
/// body that declares a length over its cap is refused before it is read.
#[test]
fn huge_bodies_from_the_master_are_cut_off_and_reported() {
    const HUGE: u64 = 256 << 20;
    const LIMIT: u64 = 100 << 20;
    let d = test_dir("huge-bodies");
    // 0: the rollout view is huge; 1: /versions/latest; 2 and 3: the
    // torrent. Lengths declared in 0 and 2, not in 1 and 3 (the
    // connection's end delimits the body).
    let mode = Arc::new(AtomicU8::new(0));
    let own_url = Arc::new(std::sync::OnceLock::<String>::new());
    let (m, own) = (mode.clone(), own_url.clone());
    let master = StandIn::start(Arc::new(move |h: &Hit| {
        let mode = m.load(Ordering::SeqCst);
        let hash = "cd".repeat(20);
        let torrent_url = format!("{}/versions/1/torrent", own.get().unwrap());
        let huge = |declared| Answer::Endless {
            len: HUGE,
            declared,
        };
        match (mode, h.target.split('?').next().unwrap_or_default()) {
            (_, "/replicas/report") => huge(false),
            (0, "/rollout") => huge(true),
            (1, "/versions/latest") => huge(false),
            (2 | 3, "/versions/latest") => Answer::Json(200, version_json(1, &hash, &torrent_url)),
            (2, "/versions/1/torrent") => huge(true),
            (3, "/versions/1/torrent") => huge(false),
            _ => not_found(),
        }
    }));
    own_url.set(master.url.clone()).unwrap();
    let r = replica_of(&master.url, d.path(), "replica");
    let pid = r.proc.pid();
    let mut before = peak_rss(pid);
    for (phase, route) in [
        (0, "/rollout"),
        (1, "/versions/latest"),
        (2, "/versions/1/torrent"),
        (3, "/versions/1/torrent"),
    ] {
        mode.store(phase, Ordering::SeqCst);
        let hits = master.hits_of(route).len();
        assert_eq!(
            request("POST", &format!("{}/poll", r.url), None, None).status,
            202
        );
        let mut error = String::new();
        r.wait_status(
            Duration::from_secs(60),
            &format!("the huge {route} reported"),
            |s| {
                error = s["last_error"].as_str().unwrap_or_default().to_string();
                master.hits_of(route).len() > hits
                    && error.contains(route)
                    && error.contains("larger than")
            },
        );
        let peak = peak_rss(pid);
        eprintln!("phase {phase}: {error}; VmHWM {} MiB", peak >> 20);
        assert!(
            peak < LIMIT,
            "a huge {route} took the replica to {} MiB (VmHWM)",
            peak >> 20
        );
        if phase == 2 {
            // 32 MiB is a torrent's cap: one declared larger is not read.
            let grew = peak.saturating_sub(before);
            assert!(
                grew < 16 << 20,
                "a torrent declaring {HUGE} bytes was read up to the cap: VmHWM grew {} MiB",
                grew >> 20
            );
        }
        before = peak;
    }
    // The reports' answers were huge all along.
    assert!(!master.hits_of("/replicas/report").is_empty());
    let peak = peak_rss(pid);
    assert!(peak < LIMIT, "VmHWM {} MiB", peak >> 20);
}

// ---------------------------------------------------------------- symlinks in published snapshots

/// Where file `path` starts in `meta`'s piece space: its piece.
fn first_piece_of(meta: &indexswarm::metainfo::Metainfo, path: &str) -> u32 {
    let mut offset = 0u64;
    for f in &meta.files {
        if f.path.join("/") == path {
            assert_eq!(offset % meta.piece_length, 0, "{path} starts a piece");
            return (offset / meta.piece_length) as u32;
        }
        offset += f.length;
    }
    panic!("{path} is not in the torrent")
}

/// Asks the peer at `port` for the first block of `piece` as a plain
/// BitTorrent leecher; returns the bytes it sent (empty when it sent none
/// before closing, refusing or 20 s passing).
fn request_block(port: u16, info_hash: [u8; 20], num_pieces: u32, piece: u32) -> Vec<u8> {
    use futures::{SinkExt, StreamExt};
    use indexswarm::peer::{BlockRef, Handshake, Message, PeerCodec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("the master's peer port");
        let mut id = *b"-TS0001-000000000000";
        id[8] = piece as u8;
        s.write_all(&Handshake::new(info_hash, id).to_bytes())
            .await
            .unwrap();
        let mut reply = [0u8; 68];
        if tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut reply))
            .await
            .ok()
            .and_then(Result::ok)
            .is_none()
        {
            return Vec::new();
        }
        let mut peer = tokio_util::codec::Framed::new(s, PeerCodec::new(num_pieces));
        peer.send(Message::Interested).await.unwrap();
        let block = BlockRef {
            piece,
            begin: 0,
            len: 16 * 1024,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let next = tokio::time::timeout_at(deadline, peer.next()).await;
            match next {
                Ok(Some(Ok(Message::Unchoke))) => {
                    if peer.send(Message::Request(block)).await.is_err() {
                        return Vec::new();
                    }
                }
                Ok(Some(Ok(Message::Piece { data, .. }))) => return data.to_vec(),
                Ok(Some(Ok(Message::Reject(_)))) => return Vec::new(),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return Vec::new(),
            }
        }
    })
}

/// The master's read-only storage followed symlinks: a published file
/// swapped for a symlink to a secret elsewhere had the secret served to
/// any peer. Published files are opened with `O_NOFOLLOW`.
#[test]
fn a_published_file_swapped_for_a_symlink_is_never_served() {
    let d = test_dir("symlink-swap");
    let mut m = crate::replica::Master::start(d.path(), &[]);
    m.publish("s1", |dir| {
        write_tree(dir, &[("other.fdt", 300_000), ("seg.cfs", 300_000)], 11)
    });
    let meta = indexswarm::metainfo::Metainfo::from_bytes(&m.torrent_bytes(1)).unwrap();
    let n = meta.num_pieces();
    let ih = meta.info_hash.0;

    // The raw peer gets a block of an untouched file (it works).
    let other = first_piece_of(&meta, "other.fdt");
    let got = request_block(m.peer_port, ih, n, other);
    let published = std::fs::read(m.snapshot(1).join("other.fdt")).unwrap();
    assert!(
        !got.is_empty() && published.starts_with(&got),
        "the master serves a published block: got {} bytes",
        got.len()
    );

    // seg.cfs becomes a symlink to a secret of the same size.
    let secret = d.path().join("secret.bin");
    let pattern = b"TOP-SECRET-PAYROLL ";
    let bytes: Vec<u8> = pattern.iter().cycle().take(300_000).copied().collect();
    std::fs::write(&secret, &bytes).unwrap();
    let seg = m.snapshot(1).join("seg.cfs");
    let link = m.snapshot(1).join(".seg.cfs.swap");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    std::fs::rename(&link, &seg).unwrap();

    let got = request_block(m.peer_port, ih, n, first_piece_of(&meta, "seg.cfs"));
    assert!(
        !got.windows(pattern.len()).any(|w| w == pattern),
        "the master served the symlink's target: {:?}",
        String::from_utf8_lossy(&got[..got.len().min(60)])
    );
    assert!(
        got.is_empty(),
        "nothing of seg.cfs is served: {} bytes",
        got.len()
    );

    // And the master withdraws the version.
    crate::replica::wait_or(
        Duration::from_secs(60),
        "version 1 withdrawn",
        || {
            get_json(&format!("{}/versions", m.url))
                .is_some_and(|v| v.as_array().is_some_and(|a| a.is_empty()))
        },
        || {
            format!(
                "{}\n{}",
                get_json(&format!("{}/status", m.url)).unwrap_or_default(),
                tail(&m.proc.stderr_text())
            )
        },
    );
    eprintln!("{}", tail(&m.proc.stderr_text()));
}

// ---------------------------------------------------------------- republishing a retired snapshot

/// Anyone who could `POST /snapshot {"path": "<a retired snapshot>"}` rolled
/// the fleet back to it: it became the newest version. Republishing a
/// retired snapshot now takes `"force": true`; without it the answer is 409
/// and nothing changes.
#[test]
fn republishing_a_retired_snapshot_needs_force() {
    let d = test_dir("republish-retired");
    let mut m = crate::replica::Master::start(d.path(), &["--keep-versions", "1"]);
    for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
        m.publish(name, |dir| {
            write_tree(dir, &[("seg", 50_000)], 40 + i as u64)
        });
    }
    let versions = || -> Vec<(u64, String)> {
        get_json(&format!("{}/versions", m.url))
            .and_then(|v| {
                v.as_array().map(|a| {
                    a.iter()
                        .map(|v| {
                            let name = v["name"].as_str().unwrap_or_default().to_string();
                            (v["version"].as_u64().unwrap_or(0), name)
                        })
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(30), "s1 retired", || {
        !versions().iter().any(|(_, n)| n == "s1")
    });
    let listed = versions();
    let snapshot = format!("{}/snapshot", m.url);

    let r = request("POST", &snapshot, Some(r#"{"path": "s1"}"#), None);
    assert_eq!(
        r.status,
        409,
        "POST /snapshot of a retired snapshot without force: {} {}",
        r.status,
        r.text()
    );
    let message = r.error_message();
    assert!(
        message.contains("retired") && message.contains("\"force\": true"),
        "{message}"
    );
    assert_eq!(versions(), listed, "nothing was published");

    // Unknown fields are still refused; force must be a boolean.
    let r = request(
        "POST",
        &snapshot,
        Some(r#"{"path": "s1", "forse": true}"#),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text());

    let r = request(
        "POST",
        &snapshot,
        Some(r#"{"path": "s1", "force": true}"#),
        None,
    );
    assert_eq!(r.status, 201, "with force: {}", r.text());
    let v = r.json();
    assert_eq!(v["name"], "s1");
    assert!(v["version"].as_u64() > listed.iter().map(|(n, _)| *n).max());
    // Published again: a second request (with or without force) names it.
    let r = request("POST", &snapshot, Some(r#"{"path": "s1"}"#), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], v["version"]);
}
