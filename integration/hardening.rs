//! Issue #11, part 3: no request from the network exhausts a sidecar or
//! turns it against its fleet. Each test reproduces one finding against the
//! real binary (or the library's client against a stand-in) and asserts the
//! fixed behaviour: the tracker keyed by peer id and address, announce
//! floods, `POST /poll` floods, `torrent_url` and redirects off the
//! master's origin, huge bodies from the master, symlinks swapped into a
//! published snapshot, and republishing a retired snapshot.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use indexswarm::metainfo::InfoHash;
use indexswarm::tracker::protocol::url_bytes;
use indexswarm::tracker::{announce, AnnounceRequest, AnnounceResponse, Event};

use crate::common::*;

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
