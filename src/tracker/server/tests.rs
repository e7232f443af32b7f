use super::*;

fn req(id: u8, left: u64, event: Event) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: InfoHash([9; 20]),
        peer_id: [id; 20],
        port: 6000 + id as u16,
        uploaded: 0,
        downloaded: 0,
        left,
        event,
        compact: true,
        no_peer_id: false,
        numwant: None,
        ip: None,
    }
}
const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// 1,000 leechers join one at a time asking for 20 peers each, then
/// re-announce once (as they do every interval). The graph of "was
/// listed to" edges is connected, and no peer is listed far more often
/// than the average (without the spreading, the first joiners are
/// listed to nearly everyone).
#[test]
fn replies_build_a_connected_evenly_spread_peer_graph() {
    let t = Tracker::new(TrackerConfig {
        whitelist_only: false,
        max_numwant: 20,
        ..Default::default()
    });
    let n = 1000u32;
    let id = |i: u32| {
        let mut id = [0u8; 20];
        id[..4].copy_from_slice(&i.to_be_bytes());
        id
    };
    let mut edges: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
    for round in 0..2 {
        for i in 0..n {
            let mut r = req(
                0,
                100,
                if round == 0 {
                    Event::Started
                } else {
                    Event::None
                },
            );
            r.peer_id = id(i);
            r.port = 1024 + (i as u16);
            r.numwant = Some(20);
            for p in t.announce(&r, LOCAL).unwrap().peers {
                let j = (p.addr.port() - 1024) as u32;
                edges[i as usize].push(j);
                edges[j as usize].push(i);
            }
        }
    }
    let mut seen = vec![false; n as usize];
    let mut stack = vec![0u32];
    seen[0] = true;
    while let Some(i) = stack.pop() {
        for &j in &edges[i as usize] {
            if !seen[j as usize] {
                seen[j as usize] = true;
                stack.push(j);
            }
        }
    }
    assert!(seen.iter().all(|s| *s), "the peer graph is connected");
    let listed: Vec<u64> = t
        .peers(&InfoHash([9; 20]))
        .iter()
        .map(|p| p.handed_out)
        .collect();
    let mean = listed.iter().sum::<u64>() as f64 / listed.len() as f64;
    let max = *listed.iter().max().unwrap() as f64;
    assert!(
        max <= 2.0 * mean,
        "listed at most {max} times against a mean of {mean:.1}"
    );
}

const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

#[test]
fn an_id_from_another_address_is_another_entry_and_replies_carry_no_ids() {
    let t = Tracker::new(TrackerConfig {
        whitelist_only: false,
        ..Default::default()
    });
    t.announce(&req(1, 0, Event::Started), LOCAL).unwrap();
    let mut hijack = req(1, 0, Event::Started);
    hijack.port = 9999;
    t.announce(&hijack, OTHER).unwrap();
    hijack.event = Event::Stopped;
    t.announce(&hijack, OTHER).unwrap();
    let r = t.announce(&req(2, 100, Event::Started), LOCAL).unwrap();
    assert_eq!(
        r.peers.iter().map(|p| p.addr.port()).collect::<Vec<_>>(),
        vec![6001],
        "the replica's entry neither moved nor went"
    );
    assert!(r.peers.iter().all(|p| p.peer_id.is_none()));
    // The same id and address again updates the entry (a new port).
    let mut moved = req(1, 0, Event::None);
    moved.port = 7001;
    t.announce(&moved, LOCAL).unwrap();
    let ports: Vec<u16> = t
        .peers(&InfoHash([9; 20]))
        .iter()
        .map(|p| p.addr.port())
        .collect();
    assert!(ports.contains(&7001) && !ports.contains(&6001), "{ports:?}");
}

fn numbered(i: u32, left: u64) -> AnnounceRequest {
    let mut r = req(0, left, Event::Started);
    r.peer_id[..4].copy_from_slice(&i.to_be_bytes());
    r.port = 1024 + (i % 60_000) as u16;
    r
}

#[test]
fn one_address_holds_at_most_its_share_and_its_newest_stranger_makes_way() {
    let t = Tracker::new(TrackerConfig {
        whitelist_only: false,
        ..Default::default()
    });
    for i in 0..1000 {
        t.announce(&numbered(i, 100), OTHER).unwrap();
    }
    let held = t.peers(&InfoHash([9; 20]));
    assert_eq!(held.len(), MAX_PEERS_PER_ADDRESS);
    assert!(
        held.iter().any(|p| p.addr.port() == 1024 + 999),
        "the newest announce is listed: its predecessor made way"
    );
    // Another address is not affected.
    let r = t.announce(&req(1, 100, Event::Started), LOCAL).unwrap();
    assert!(!r.peers.is_empty());
    assert_eq!(t.peers(&InfoHash([9; 20])).len(), MAX_PEERS_PER_ADDRESS + 1);
    // IPv6: one /64 is one address.
    let v6 = |i: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i));
    for i in 0..200u32 {
        t.announce(&numbered(10_000 + i, 100), v6(i as u16))
            .unwrap();
    }
    assert_eq!(
        t.peers(&InfoHash([9; 20])).len(),
        2 * MAX_PEERS_PER_ADDRESS + 1
    );
}

#[test]
fn a_full_torrent_drops_its_newest_strangers_never_its_members() {
    let t = Tracker::new(TrackerConfig {
        whitelist_only: false,
        max_peers_per_torrent: 100,
        ..Default::default()
    });
    let h = InfoHash([9; 20]);
    // Two members: three announces each.
    for event in [Event::Started, Event::None, Event::None] {
        t.announce(&req(1, 0, event), LOCAL).unwrap();
        t.announce(&req(2, 100, event), LOCAL).unwrap();
    }
    assert!(t.peers(&h).iter().all(PeerRecord::is_member));
    // 1,000 strangers from 50 addresses.
    for i in 0..1000u32 {
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, (i % 50) as u8));
        t.announce(&numbered(100 + i, 100), ip).unwrap();
    }
    let held = t.peers(&h);
    assert_eq!(held.len(), 100);
    assert_eq!(
        held.iter().filter(|p| p.is_member()).count(),
        2,
        "members stay"
    );
    // A newcomer gets in, and is told of the members first.
    let mut newcomer = req(3, 100, Event::Started);
    newcomer.numwant = Some(5);
    let r = t
        .announce(&newcomer, IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 9, 9)))
        .unwrap();
    let ports: Vec<u16> = r.peers.iter().map(|p| p.addr.port()).collect();
    assert!(ports.contains(&6001) && ports.contains(&6002), "{ports:?}");
    assert!(t.peers(&h).iter().any(|p| p.addr.port() == 6003));
    assert_eq!(t.peers(&h).len(), 100);
    // Only members: a newcomer is answered but not listed.
    let t = Tracker::new(TrackerConfig {
        whitelist_only: false,
        max_peers_per_torrent: 2,
        ..Default::default()
    });
    for event in [Event::Started, Event::None, Event::None] {
        t.announce(&req(1, 0, event), LOCAL).unwrap();
        t.announce(&req(2, 100, event), LOCAL).unwrap();
    }
    let r = t.announce(&req(3, 100, Event::Started), OTHER).unwrap();
    assert_eq!(r.peers.len(), 2, "told of both members");
    assert_eq!(t.peers(&h).len(), 2);
    assert!(t.peers(&h).iter().all(|p| p.addr.port() != 6003));
}

#[test]
fn completed_after_a_first_announce_makes_a_member() {
    let t = Tracker::new(TrackerConfig {
        whitelist_only: false,
        ..Default::default()
    });
    let h = InfoHash([9; 20]);
    t.announce(&req(1, 0, Event::Completed), LOCAL).unwrap();
    assert!(
        !t.peers(&h)[0].is_member(),
        "completed on a first announce proves nothing"
    );
    t.announce(&req(2, 100, Event::Started), LOCAL).unwrap();
    t.announce(&req(2, 0, Event::Completed), LOCAL).unwrap();
    let two = t
        .peers(&h)
        .into_iter()
        .find(|p| p.addr.port() == 6002)
        .unwrap();
    assert!(two.is_member());
}

#[test]
fn whitelist_refuses_unknown_hashes() {
    let t = Tracker::new(TrackerConfig::default());
    assert_eq!(
        t.announce(&req(1, 0, Event::Started), LOCAL).unwrap_err(),
        "unregistered torrent"
    );
    t.register(InfoHash([9; 20]));
    assert!(t.announce(&req(1, 0, Event::Started), LOCAL).is_ok());
}

#[test]
fn lists_others_counts_and_forgets_stopped() {
    let t = Tracker::new(TrackerConfig {
        whitelist_only: false,
        ..Default::default()
    });
    t.announce(&req(1, 0, Event::Started), LOCAL).unwrap();
    let r = t.announce(&req(2, 100, Event::Started), LOCAL).unwrap();
    assert_eq!(r.peers.len(), 1);
    assert_eq!(r.peers[0].addr.port(), 6001);
    assert_eq!((r.complete, r.incomplete), (1, 1));
    // A seeder is not told about other seeders, but is told about leechers.
    let r = t.announce(&req(3, 0, Event::Started), LOCAL).unwrap();
    assert_eq!(
        r.peers.iter().map(|p| p.addr.port()).collect::<Vec<_>>(),
        vec![6002]
    );
    t.announce(&req(2, 0, Event::Completed), LOCAL).unwrap();
    t.announce(&req(1, 0, Event::Stopped), LOCAL).unwrap();
    let s = t.scrape(&[InfoHash([9; 20])]);
    assert_eq!(
        s[0].1,
        ScrapeEntry {
            complete: 2,
            downloaded: 1,
            incomplete: 0
        }
    );
}

#[test]
fn caps_numwant_peers_and_torrents() {
    let cfg = TrackerConfig {
        whitelist_only: false,
        max_numwant: 3,
        max_peers_per_torrent: 5,
        max_torrents: 1,
        ..Default::default()
    };
    let t = Tracker::new(cfg);
    for id in 0..10 {
        t.announce(&req(id, 1, Event::Started), LOCAL).unwrap();
    }
    assert_eq!(t.peers(&InfoHash([9; 20])).len(), 5);
    let mut r = req(50, 1, Event::None);
    r.numwant = Some(1000);
    assert_eq!(t.announce(&r, LOCAL).unwrap().peers.len(), 3);
    let mut other = req(1, 1, Event::Started);
    other.info_hash = InfoHash([1; 20]);
    assert_eq!(t.announce(&other, LOCAL).unwrap_err(), "tracker is full");
}

#[test]
fn static_seeds_are_listed_to_leechers_only() {
    let t = Tracker::new(TrackerConfig::default());
    let h = InfoHash([9; 20]);
    t.register(h);
    t.add_static_seed(h, [0xaa; 20], "10.0.0.1:6881".parse().unwrap());
    let r = t.announce(&req(1, 100, Event::Started), LOCAL).unwrap();
    assert_eq!(
        r.peers
            .iter()
            .map(|p| p.addr.to_string())
            .collect::<Vec<_>>(),
        vec!["10.0.0.1:6881"]
    );
    assert_eq!(r.complete, 1);
    let seed = t.announce(&req(2, 0, Event::Started), LOCAL).unwrap();
    assert!(
        seed.peers.iter().all(|p| p.addr.port() != 6881),
        "a seeder is not sent to seeders"
    );
    t.unregister(&h);
    t.register(h);
    let r = t.announce(&req(3, 100, Event::Started), LOCAL).unwrap();
    assert!(
        r.peers.iter().all(|p| p.addr.port() != 6881),
        "unregister forgets the static seed"
    );
}

#[test]
fn absurd_intervals_are_clamped_and_never_panic() {
    let t = Tracker::new(TrackerConfig {
        whitelist_only: false,
        interval: Duration::MAX,
        min_interval: Duration::MAX,
        ..Default::default()
    });
    let r = t.announce(&req(1, 0, Event::Started), LOCAL).unwrap();
    assert_eq!(r.interval, MAX_INTERVAL);
    assert!(r.min_interval.unwrap_or_default() <= MAX_INTERVAL);
    t.sweep();
    assert_eq!(t.peers(&InfoHash([9; 20])).len(), 1, "not expired at once");
    let zero = Tracker::new(TrackerConfig {
        interval: Duration::ZERO,
        ..Default::default()
    });
    assert_eq!(zero.config().interval, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn peers_expire_after_two_intervals() {
    let t = Tracker::new(TrackerConfig {
        whitelist_only: false,
        interval: Duration::from_secs(10),
        ..Default::default()
    });
    t.announce(&req(1, 0, Event::Started), LOCAL).unwrap();
    tokio::time::advance(Duration::from_secs(15)).await;
    t.sweep();
    assert_eq!(t.peers(&InfoHash([9; 20])).len(), 1);
    tokio::time::advance(Duration::from_secs(10)).await;
    t.sweep();
    assert_eq!(t.peers(&InfoHash([9; 20])).len(), 0);
}
