//! The HTTP tracker: an in-memory registry of swarms and the warp routes that
//! serve `/announce` and `/scrape`.
//!
//! One `parking_lot::Mutex` guards the registry. An announce holds it for a
//! hash-map lookup and a small random sample of peers, microseconds, so a
//! single lock outperforms sharding at the request rates a tracker for a
//! fleet of replicas sees (see BENCHMARKS.md for the load test).
//!
//! Memory is bounded: `numwant` is capped, each swarm holds at most
//! `max_peers_per_torrent` peers, and in open mode at most `max_torrents`
//! swarms exist. Peers that miss two announce intervals expire.
//!
//! Nobody can take a peer's place or crowd it out:
//! - an entry is a peer id *at an address*: the same id announced from
//!   elsewhere is another entry, and `stopped` removes only the entry of
//!   the address it comes from; replies never carry peer ids;
//! - one address (an IPv6 /64) holds at most [`MAX_PEERS_PER_ADDRESS`]
//!   entries of a torrent; beyond that its newest stranger makes way;
//! - a full torrent makes room by dropping the newest stranger of the
//!   address holding the most strangers, never a member (an entry that has
//!   announced [`MEMBER_ANNOUNCES`] times, or downloaded and said so), and
//!   replies list members first, so a flood of new entries can neither
//!   evict the fleet nor hide it from a replica that joins.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;
use rand::seq::IteratorRandom;
use warp::http::{header, Response, StatusCode};
use warp::Filter;

use super::protocol::{
    encode_announce, encode_scrape, failure_body, scrape_hashes, AnnounceRequest, AnnounceResponse,
    Event, PeerInfo, ScrapeEntry,
};
use crate::metainfo::InfoHash;

/// Longest announce interval the tracker hands out.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Entries one address (an IPv4 address, an IPv6 /64) may hold in one
/// torrent. One host runs one replica, a few with containers or a NAT;
/// 64 leaves room for those, while a torrent's 10,000 slots take at least
/// 157 addresses to fill. Not a setting: nobody has needed another value.
pub const MAX_PEERS_PER_ADDRESS: usize = 64;

#[derive(Debug, Clone)]
pub struct TrackerConfig {
    pub interval: Duration,
    pub min_interval: Duration,
    /// Only registered info-hashes are tracked (the default when embedded in the master).
    pub whitelist_only: bool,
    /// Honour the `ip` parameter of announces (only behind a trusted proxy).
    pub trust_ip_param: bool,
    pub default_numwant: u32,
    pub max_numwant: u32,
    pub max_peers_per_torrent: usize,
    pub max_torrents: usize,
    /// Closed swarm: announces and scrapes must carry this token, as
    /// `Authorization: Bearer <token>` or in the path (`/announce/<token>`,
    /// for clients that cannot set headers); others get a `failure reason`.
    pub token: Option<String>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            interval: Duration::from_secs(60),
            min_interval: Duration::from_secs(10),
            whitelist_only: true,
            trust_ip_param: false,
            default_numwant: 50,
            max_numwant: 200,
            max_peers_per_torrent: 10_000,
            max_torrents: 100_000,
            token: None,
        }
    }
}

/// What the tracker knows of one peer.
#[derive(Debug, Clone)]
pub struct PeerRecord {
    pub peer_id: [u8; 20],
    pub addr: SocketAddr,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub last_seen: Instant,
    /// When this entry was made (its first announce).
    pub first_seen: Instant,
    /// Announces of this entry, its first included.
    pub announces: u32,
    /// It announced `completed` after its first announce.
    pub completed: bool,
    /// How many replies listed this peer: the subset logic evens it out.
    pub handed_out: u64,
}

/// Announces after which an entry is a member rather than a stranger.
pub const MEMBER_ANNOUNCES: u32 = 3;

impl PeerRecord {
    /// A member has announced again and again (or downloaded and said so
    /// on a later announce): a peer that has stayed in the swarm. A new
    /// entry is a stranger. Members are listed first and are never dropped
    /// to make room for anyone.
    pub fn is_member(&self) -> bool {
        self.announces >= MEMBER_ANNOUNCES || (self.completed && self.announces >= 2)
    }
}

/// An entry is one peer id at one address: announcing a peer id from
/// another address makes another entry, so nobody can move or stop a peer
/// whose id they learned.
type PeerKey = ([u8; 20], IpAddr);

/// The addresses one party holds as one: an IPv4 address, or an IPv6 /64
/// (what one host or one customer is usually given).
fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(seg.into())
        }
    }
}

#[derive(Default)]
struct Swarm {
    peers: HashMap<PeerKey, PeerRecord>,
    seeders: usize,
    /// Announces with `event=completed`.
    downloaded: u64,
}

impl Swarm {
    fn remove(&mut self, key: &PeerKey) -> Option<PeerRecord> {
        let old = self.peers.remove(key)?;
        if old.left == 0 {
            self.seeders -= 1;
        }
        Some(old)
    }

    fn expire(&mut self, cutoff: Option<Instant>) {
        let Some(cutoff) = cutoff else { return };
        let before = self.peers.len();
        self.peers.retain(|_, p| p.last_seen >= cutoff);
        if self.peers.len() != before {
            self.seeders = self.peers.values().filter(|p| p.left == 0).count();
        }
    }

    /// The newest stranger among `group`'s entries.
    fn newest_stranger(&self, group: IpAddr) -> Option<PeerKey> {
        self.peers
            .iter()
            .filter(|(k, p)| !p.is_member() && address_group(k.1) == group)
            .max_by_key(|(_, p)| p.first_seen)
            .map(|(k, _)| *k)
    }

    /// The address group holding the most strangers.
    fn most_strangers(&self) -> Option<IpAddr> {
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for (k, p) in &self.peers {
            if !p.is_member() {
                *counts.entry(address_group(k.1)).or_default() += 1;
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(g, _)| g)
    }

    /// Room for a new entry from `ip`: nothing to do while its address
    /// holds fewer than [`MAX_PEERS_PER_ADDRESS`] entries and the torrent
    /// fewer than `cap`; else the newest stranger of that address (or, for
    /// a full torrent, of the address holding the most strangers) goes.
    /// `false` when only members hold the slots: the newcomer is answered
    /// but not listed.
    fn make_room(&mut self, ip: IpAddr, cap: usize) -> bool {
        let group = address_group(ip);
        let same = self
            .peers
            .keys()
            .filter(|k| address_group(k.1) == group)
            .count();
        let victim = if same >= MAX_PEERS_PER_ADDRESS {
            self.newest_stranger(group)
        } else if self.peers.len() >= cap {
            self.most_strangers().and_then(|g| self.newest_stranger(g))
        } else {
            return true;
        };
        match victim {
            Some(k) => self.remove(&k).is_some(),
            None => false,
        }
    }
}

/// Up to `room` peers for `req`'s reply: a uniform random sample of twice
/// that many, members first (strangers fill what members leave), of which
/// the members, then the ones listed least often so far. Random samples
/// make the peer graph connected with high probability at any size; the
/// "least often" order keeps early joiners from being listed to everyone
/// (and dialed by everyone) while late joiners go unlisted; members first
/// keep a swarm flooded with strangers findable. A seeder gets no seeders,
/// nobody gets their own peer id.
fn well_spread(swarm: &mut Swarm, req: &AnnounceRequest, room: usize) -> Vec<SocketAddr> {
    let pool = room.saturating_mul(2);
    let eligible = |p: &&PeerRecord| p.peer_id != req.peer_id && !(req.left == 0 && p.left == 0);
    let mut rng = rand::thread_rng();
    let mut sample: Vec<&PeerRecord> = swarm
        .peers
        .values()
        .filter(eligible)
        .filter(|p| p.is_member())
        .choose_multiple(&mut rng, pool);
    if sample.len() < pool {
        let more = pool - sample.len();
        sample.extend(
            swarm
                .peers
                .values()
                .filter(eligible)
                .filter(|p| !p.is_member())
                .choose_multiple(&mut rng, more),
        );
    }
    // The sample's order is random, so equal counts stay in random order.
    sample.sort_by_key(|p| (!p.is_member(), p.handed_out));
    let chosen: Vec<PeerKey> = sample
        .into_iter()
        .take(room)
        .map(|p| (p.peer_id, p.addr.ip()))
        .collect();
    chosen
        .iter()
        .filter_map(|k| {
            let p = swarm.peers.get_mut(k)?;
            p.handed_out = p.handed_out.saturating_add(1);
            Some(p.addr)
        })
        .collect()
}

/// A seeder listed without announcing: its peer id and address.
type StaticSeed = ([u8; 20], SocketAddr);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TrackerStats {
    pub announces: AtomicU64,
    pub scrapes: AtomicU64,
    pub failures: AtomicU64,
}

/// The tracker registry. Cheap to clone a handle (`Arc<Tracker>`).
pub struct Tracker {
    config: TrackerConfig,
    swarms: Mutex<HashMap<InfoHash, Swarm>>,
    /// Info-hashes allowed in whitelist mode.
    allowed: Mutex<HashSet<InfoHash>>,
    /// Seeders we list without their announcing (the master's own engine):
    /// peer id and address.
    statics: Mutex<HashMap<InfoHash, Vec<StaticSeed>>>,
    pub stats: TrackerStats,
}

impl Tracker {
    /// The intervals are clamped to 1 s – 1 day (what clients accept from a
    /// reply anyway), so no time computed from them can overflow.
    pub fn new(mut config: TrackerConfig) -> Arc<Tracker> {
        config.interval = config.interval.clamp(Duration::from_secs(1), MAX_INTERVAL);
        config.min_interval = config.min_interval.min(config.interval);
        Arc::new(Tracker {
            config,
            swarms: Mutex::new(HashMap::new()),
            allowed: Mutex::new(HashSet::new()),
            statics: Mutex::new(HashMap::new()),
            stats: TrackerStats::default(),
        })
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Allows an info-hash (whitelist mode).
    pub fn register(&self, h: InfoHash) {
        self.allowed.lock().insert(h);
    }

    /// Forgets an info-hash and its swarm.
    pub fn unregister(&self, h: &InfoHash) {
        self.allowed.lock().remove(h);
        self.swarms.lock().remove(h);
        self.statics.lock().remove(h);
    }

    /// Lists `addr` as a seeder of `h` in every reply, without it announcing.
    /// The master seeds through its own engine and registers that way, so
    /// replicas learn its public address rather than whatever address a
    /// loopback self-announce would show.
    pub fn add_static_seed(&self, h: InfoHash, peer_id: [u8; 20], addr: SocketAddr) {
        let mut st = self.statics.lock();
        let list = st.entry(h).or_default();
        list.retain(|p| p.1 != addr);
        list.push((peer_id, addr));
    }

    pub fn is_registered(&self, h: &InfoHash) -> bool {
        self.allowed.lock().contains(h)
    }

    /// The peers currently listed for `h`.
    pub fn peers(&self, h: &InfoHash) -> Vec<PeerRecord> {
        self.swarms
            .lock()
            .get(h)
            .map(|s| s.peers.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Handles an announce from `remote`. `Err` is the `failure reason`.
    pub fn announce(
        &self,
        req: &AnnounceRequest,
        remote: IpAddr,
    ) -> Result<AnnounceResponse, String> {
        self.stats.announces.fetch_add(1, Ordering::Relaxed);
        if self.config.whitelist_only && !self.is_registered(&req.info_hash) {
            return Err("unregistered torrent".into());
        }
        let ip = match (self.config.trust_ip_param, req.ip) {
            (true, Some(ip)) => ip,
            _ => remote,
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let now = Instant::now();
        let cutoff = self.expiry_cutoff(now);
        let mut swarms = self.swarms.lock();
        if !swarms.contains_key(&req.info_hash) && swarms.len() >= self.config.max_torrents {
            return Err("tracker is full".into());
        }
        let swarm = swarms.entry(req.info_hash).or_default();
        swarm.expire(cutoff);
        let key = (req.peer_id, ip);
        let known = swarm.remove(&key);
        let was_known = known.is_some();
        if req.event == Event::Completed {
            swarm.downloaded = swarm.downloaded.saturating_add(1);
        }
        if req.event != Event::Stopped
            && (was_known || swarm.make_room(ip, self.config.max_peers_per_torrent))
        {
            if req.left == 0 {
                swarm.seeders += 1;
            }
            let (first_seen, announces, completed, handed_out) = known
                .map_or((now, 0, false, 0), |p| {
                    (p.first_seen, p.announces, p.completed, p.handed_out)
                });
            swarm.peers.insert(
                key,
                PeerRecord {
                    peer_id: req.peer_id,
                    addr: SocketAddr::new(ip, req.port),
                    uploaded: req.uploaded,
                    downloaded: req.downloaded,
                    left: req.left,
                    last_seen: now,
                    first_seen,
                    announces: announces.saturating_add(1),
                    completed: completed || (was_known && req.event == Event::Completed),
                    handed_out,
                },
            );
        }
        let want = req
            .numwant
            .unwrap_or(self.config.default_numwant)
            .min(self.config.max_numwant) as usize;
        let statics = self
            .statics
            .lock()
            .get(&req.info_hash)
            .cloned()
            .unwrap_or_default();
        // A seeder has no use for other seeders.
        let peers = if req.event == Event::Stopped {
            Vec::new()
        } else {
            let mut peers: Vec<PeerInfo> = if req.left == 0 {
                Vec::new()
            } else {
                statics
                    .iter()
                    .filter(|(id, _)| *id != req.peer_id)
                    .take(want)
                    .map(|(_, addr)| PeerInfo {
                        addr: *addr,
                        peer_id: None,
                    })
                    .collect()
            };
            // Peer ids are never handed out: knowing one is all it took to
            // impersonate a replica to a tracker keyed by id alone.
            let room = want - peers.len();
            peers.extend(
                well_spread(swarm, req, room)
                    .into_iter()
                    .map(|addr| PeerInfo {
                        addr,
                        peer_id: None,
                    }),
            );
            peers
        };
        Ok(AnnounceResponse {
            interval: self.config.interval,
            min_interval: Some(self.config.min_interval),
            complete: (swarm.seeders + statics.len()) as u64,
            incomplete: (swarm.peers.len() - swarm.seeders) as u64,
            peers,
            warning: None,
        })
    }

    /// Counts for the named torrents (all tracked ones when `hashes` is empty).
    pub fn scrape(&self, hashes: &[InfoHash]) -> Vec<(InfoHash, ScrapeEntry)> {
        self.stats.scrapes.fetch_add(1, Ordering::Relaxed);
        let swarms = self.swarms.lock();
        let entry = |s: &Swarm| ScrapeEntry {
            complete: s.seeders as u64,
            downloaded: s.downloaded,
            incomplete: (s.peers.len() - s.seeders) as u64,
        };
        if hashes.is_empty() {
            return swarms
                .iter()
                .take(1000)
                .map(|(h, s)| (*h, entry(s)))
                .collect();
        }
        hashes
            .iter()
            .take(1000)
            .filter(|h| !self.config.whitelist_only || self.is_registered(h))
            .map(|h| (*h, swarms.get(h).map(entry).unwrap_or_default()))
            .collect()
    }

    /// Peers last seen before this missed two intervals; `None` while the
    /// clock has not run that long (nobody can have missed them yet).
    fn expiry_cutoff(&self, now: Instant) -> Option<Instant> {
        now.checked_sub(self.config.interval.saturating_mul(2))
    }

    /// Drops expired peers and empty unregistered swarms.
    pub fn sweep(&self) {
        let now = Instant::now();
        let cutoff = self.expiry_cutoff(now);
        let allowed = self.allowed.lock().clone();
        self.swarms.lock().retain(|h, s| {
            s.expire(cutoff);
            !s.peers.is_empty() || allowed.contains(h)
        });
    }

    /// Runs `sweep` every interval until `shutdown` fires.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.config.interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }
}

fn bencode_reply(body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// `GET /announce` and `GET /scrape`, to mount on any warp server.
pub fn routes(
    tracker: Arc<Tracker>,
) -> impl Filter<Extract = (Response<Vec<u8>>,), Error = warp::Rejection> + Clone {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    // The HTTP server puts the client's address in each request.
    let remote = warp::ext::optional::<crate::util::net::RemoteAddr>()
        .map(|r: Option<crate::util::net::RemoteAddr>| r.map(|r| r.0));

    // The token, from the header or from the path's last segment.
    let auth = warp::header::optional::<String>("authorization");
    let in_path = warp::path::param::<String>()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();

    let t = tracker.clone();
    let announce = warp::path("announce")
        .and(in_path)
        .and(warp::path::end())
        .and(warp::get())
        .and(raw_query)
        .and(remote)
        .and(auth)
        .map(
            move |path_token: Option<String>,
                  q: String,
                  remote: Option<SocketAddr>,
                  auth: Option<String>| {
                if !t.token_ok(auth.as_deref(), path_token.as_deref()) {
                    t.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return bencode_reply(failure_body(CLOSED));
                }
                bencode_reply(announce_body(&t, &q, remote))
            },
        );

    let t = tracker;
    let scrape = warp::path("scrape")
        .and(in_path)
        .and(warp::path::end())
        .and(warp::get())
        .and(raw_query)
        .and(auth)
        .map(
            move |path_token: Option<String>, q: String, auth: Option<String>| {
                if !t.token_ok(auth.as_deref(), path_token.as_deref()) {
                    return bencode_reply(failure_body(CLOSED));
                }
                let body = match scrape_hashes(&q) {
                    Ok(hashes) => encode_scrape(&t.scrape(&hashes)),
                    Err(reason) => failure_body(&reason),
                };
                bencode_reply(body)
            },
        );

    announce.or(scrape).unify()
}

/// The `failure reason` for a request without the swarm's token.
const CLOSED: &str = "this swarm is closed: announce with its token \
                      (Authorization: Bearer <token>, or /announce/<token>)";

/// The reply to an announce that passed the token check.
fn announce_body(t: &Tracker, q: &str, remote: Option<SocketAddr>) -> Vec<u8> {
    match AnnounceRequest::from_query(q) {
        Ok(req) => {
            let ip = remote
                .map(|r| r.ip())
                .unwrap_or(IpAddr::from([127, 0, 0, 1]));
            match t.announce(&req, ip) {
                Ok(resp) => encode_announce(&resp, req.compact, req.no_peer_id),
                Err(reason) => {
                    t.stats.failures.fetch_add(1, Ordering::Relaxed);
                    failure_body(&reason)
                }
            }
        }
        Err(reason) => {
            t.stats.failures.fetch_add(1, Ordering::Relaxed);
            failure_body(&reason)
        }
    }
}

impl Tracker {
    /// Does a request carry the swarm's token (when there is one)?
    fn token_ok(&self, auth: Option<&str>, in_path: Option<&str>) -> bool {
        let Some(token) = &self.config.token else {
            return in_path.is_none();
        };
        let given = auth
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
            .or(in_path);
        given.is_some_and(|g| crate::util::net::same_secret(g.as_bytes(), token.as_bytes()))
    }

    /// Addresses that announced (with the token, in a closed swarm) and
    /// have not expired: who may connect to the peer port for `h`.
    pub fn announced_from(&self, h: &InfoHash, ip: IpAddr) -> bool {
        self.peers(h).iter().any(|p| p.addr.ip() == ip)
    }
}

/// A 404 for anything else, so a standalone tracker answers every request.
pub fn not_found() -> Response<Vec<u8>> {
    let mut r = Response::new(b"not found\n".to_vec());
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

#[cfg(test)]
mod tests;
