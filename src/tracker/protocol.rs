//! The HTTP tracker protocol (BEP 3, BEP 23 compact peers, BEP 7 `peers6`,
//! BEP 48 scrape), as pure functions over bytes: no sockets here.
//!
//! Query strings carry binary values (`info_hash`, `peer_id`) as
//! percent-encoded bytes, so we split and decode the raw query ourselves:
//! a form decoder would turn invalid UTF-8 into replacement characters and
//! corrupt the hash.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bendy::decoding::{Decoder, Object};
use bendy::encoding::{Encoder, SingleItemEncoder};
use percent_encoding::{percent_decode, percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::metainfo::InfoHash;

/// Longest query string we look at (a scrape of many hashes is the largest legitimate one).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Event {
    #[default]
    None,
    Started,
    Completed,
    Stopped,
}

impl Event {
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }
}

/// A decoded `GET /announce`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    pub compact: bool,
    pub no_peer_id: bool,
    pub numwant: Option<u32>,
    /// The `ip` parameter; the server uses it only when configured to trust it.
    pub ip: Option<IpAddr>,
}

/// Splits a raw query string into percent-decoded byte pairs.
/// A decoded query: (key, value) byte pairs.
pub type QueryPairs = Vec<(Vec<u8>, Vec<u8>)>;

pub fn decode_query(raw: &str) -> Result<QueryPairs, String> {
    if raw.len() > MAX_QUERY_BYTES {
        return Err("query string too long".into());
    }
    Ok(raw
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                percent_decode(k.as_bytes()).collect(),
                percent_decode(v.as_bytes()).collect(),
            )
        })
        .collect())
}

fn twenty(v: &[u8], what: &str) -> Result<[u8; 20], String> {
    v.try_into()
        .map_err(|_| format!("{what} must be 20 bytes, got {}", v.len()))
}

fn number<T: std::str::FromStr>(v: &[u8], what: &str) -> Result<T, String> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("invalid {what}"))
}

impl AnnounceRequest {
    pub fn from_query(raw: &str) -> Result<AnnounceRequest, String> {
        let mut info_hash = None;
        let mut peer_id = None;
        let mut port = None;
        let mut req = AnnounceRequest {
            info_hash: InfoHash([0; 20]),
            peer_id: [0; 20],
            port: 0,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event: Event::None,
            compact: false,
            no_peer_id: false,
            numwant: None,
            ip: None,
        };
        let mut left = None;
        for (k, v) in decode_query(raw)? {
            match &k[..] {
                b"info_hash" => info_hash = Some(InfoHash(twenty(&v, "info_hash")?)),
                b"peer_id" => peer_id = Some(twenty(&v, "peer_id")?),
                b"port" => port = Some(number::<u16>(&v, "port")?),
                b"uploaded" => req.uploaded = number(&v, "uploaded")?,
                b"downloaded" => req.downloaded = number(&v, "downloaded")?,
                b"left" => left = Some(number(&v, "left")?),
                b"compact" => req.compact = v == b"1",
                b"no_peer_id" => req.no_peer_id = v == b"1",
                b"numwant" => req.numwant = Some(number(&v, "numwant")?),
                b"ip" => req.ip = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()),
                b"event" => {
                    req.event = match &v[..] {
                        b"started" => Event::Started,
                        b"completed" => Event::Completed,
                        b"stopped" => Event::Stopped,
                        b"" | b"empty" | b"paused" => Event::None,
                        _ => return Err("invalid event".into()),
                    }
                }
                _ => {}
            }
        }
        req.info_hash = info_hash.ok_or("missing info_hash")?;
        req.peer_id = peer_id.ok_or("missing peer_id")?;
        req.port = port.ok_or("missing port")?;
        if req.port == 0 && req.event != Event::Stopped {
            return Err("invalid port".into());
        }
        req.left = left.unwrap_or(0);
        Ok(req)
    }

    /// The query string a client sends (without the leading `?`).
    pub fn to_query(&self) -> String {
        let mut q = format!(
            "info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact={}",
            url_bytes(&self.info_hash.0),
            url_bytes(&self.peer_id),
            self.port,
            self.uploaded,
            self.downloaded,
            self.left,
            if self.compact { 1 } else { 0 },
        );
        if let Some(e) = self.event.as_str() {
            q.push_str("&event=");
            q.push_str(e);
        }
        if let Some(n) = self.numwant {
            q.push_str(&format!("&numwant={n}"));
        }
        if self.no_peer_id {
            q.push_str("&no_peer_id=1");
        }
        q
    }
}

/// Unreserved characters (RFC 3986) stay literal; everything else is `%XX`.
const QUERY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn url_bytes(b: &[u8]) -> String {
    percent_encode(b, QUERY_ESCAPE).to_string()
}

/// Info-hashes named in a `GET /scrape` query (none means "all").
pub fn scrape_hashes(raw: &str) -> Result<Vec<InfoHash>, String> {
    decode_query(raw)?
        .into_iter()
        .filter(|(k, _)| k == b"info_hash")
        .map(|(_, v)| twenty(&v, "info_hash").map(InfoHash))
        .collect()
}

/// A peer in an announce reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub peer_id: Option<[u8; 20]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceResponse {
    pub interval: Duration,
    pub min_interval: Option<Duration>,
    pub complete: u64,
    pub incomplete: u64,
    pub peers: Vec<PeerInfo>,
    pub warning: Option<String>,
}

fn enc_fail(e: bendy::encoding::Error) -> Vec<u8> {
    // Encoding our own well-formed values cannot fail; if it ever does, say so in-protocol.
    failure_body(&format!("internal error: {e}"))
}

/// `d14:failure reason…e`
pub fn failure_body(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(reason.len() + 24);
    out.extend_from_slice(b"d14:failure reason");
    out.extend_from_slice(format!("{}:", reason.len()).as_bytes());
    out.extend_from_slice(reason.as_bytes());
    out.push(b'e');
    out
}

/// Encodes an announce reply, compact (BEP 23, plus `peers6` for IPv6) or as a list of dictionaries.
pub fn encode_announce(resp: &AnnounceResponse, compact: bool, no_peer_id: bool) -> Vec<u8> {
    let mut e = Encoder::new();
    let r = e.emit_with(|e: SingleItemEncoder| {
        e.emit_dict(|mut d| {
            d.emit_pair(b"complete", resp.complete)?;
            d.emit_pair(b"incomplete", resp.incomplete)?;
            d.emit_pair(b"interval", resp.interval.as_secs())?;
            if let Some(mi) = resp.min_interval {
                d.emit_pair(b"min interval", mi.as_secs())?;
            }
            if compact {
                let mut v4 = Vec::new();
                let mut v6 = Vec::new();
                for p in &resp.peers {
                    match p.addr {
                        SocketAddr::V4(a) => {
                            v4.extend_from_slice(&a.ip().octets());
                            v4.extend_from_slice(&a.port().to_be_bytes());
                        }
                        SocketAddr::V6(a) => {
                            v6.extend_from_slice(&a.ip().octets());
                            v6.extend_from_slice(&a.port().to_be_bytes());
                        }
                    }
                }
                d.emit_pair_with(b"peers", |e| e.emit_bytes(&v4))?;
                if !v6.is_empty() {
                    d.emit_pair_with(b"peers6", |e| e.emit_bytes(&v6))?;
                }
            } else {
                d.emit_pair_with(b"peers", |e| {
                    e.emit_list(|l| {
                        for p in &resp.peers {
                            l.emit_with(|e| {
                                e.emit_dict(|mut pd| {
                                    pd.emit_pair(b"ip", p.addr.ip().to_string().as_str())?;
                                    if let (false, Some(id)) = (no_peer_id, p.peer_id) {
                                        pd.emit_pair_with(b"peer id", |e| e.emit_bytes(&id))?;
                                    }
                                    pd.emit_pair(b"port", p.addr.port())
                                })
                            })?;
                        }
                        Ok(())
                    })
                })?;
            }
            if let Some(w) = &resp.warning {
                d.emit_pair(b"warning message", w.as_str())?;
            }
            Ok(())
        })
    });
    match r.and_then(|_| e.get_output()) {
        Ok(v) => v,
        Err(err) => enc_fail(err),
    }
}

/// Counts for one torrent in a scrape reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrapeEntry {
    pub complete: u64,
    pub downloaded: u64,
    pub incomplete: u64,
}

pub fn encode_scrape(entries: &[(InfoHash, ScrapeEntry)]) -> Vec<u8> {
    let mut sorted: Vec<_> = entries.to_vec();
    sorted.sort_by_key(|a| a.0);
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut e = Encoder::new();
    let r = e.emit_with(|e: SingleItemEncoder| {
        e.emit_dict(|mut d| {
            d.emit_pair_with(b"files", |e| {
                e.emit_dict(|mut fd| {
                    for (h, s) in &sorted {
                        fd.emit_pair_with(&h.0, |e| {
                            e.emit_dict(|mut sd| {
                                sd.emit_pair(b"complete", s.complete)?;
                                sd.emit_pair(b"downloaded", s.downloaded)?;
                                sd.emit_pair(b"incomplete", s.incomplete)
                            })
                        })?;
                    }
                    Ok(())
                })
            })
        })
    });
    match r.and_then(|_| e.get_output()) {
        Ok(v) => v,
        Err(err) => enc_fail(err),
    }
}

/// A reply that a tracker client could not use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("tracker refused: {0}")]
    Failure(String),
    #[error("malformed tracker reply: {0}")]
    Malformed(String),
}

/// Longest tracker reply we parse (a few thousand peers fit easily).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A bencoded integer's digits as a `u64`: negatives become 0 and values
/// past `u64::MAX` become `u64::MAX` (a tracker's absurd `interval` is
/// clamped by the caller, not refused); `None` if it is not a number.
fn saturating_int(s: &str) -> Option<u64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match (negative, digits.parse::<u64>()) {
        (true, _) => 0,
        (false, Ok(v)) => v,
        (false, Err(_)) => u64::MAX,
    })
}

/// Parses an announce reply in either peer-list form.
pub fn decode_announce(body: &[u8]) -> Result<AnnounceResponse, ResponseError> {
    let bad = |m: &str| ResponseError::Malformed(m.to_string());
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(bad("reply too large"));
    }
    let mut dec = Decoder::new(body).with_max_depth(8);
    let mut resp = AnnounceResponse {
        interval: Duration::from_secs(1800),
        min_interval: None,
        complete: 0,
        incomplete: 0,
        peers: Vec::new(),
        warning: None,
    };
    let Some(Object::Dict(mut d)) = dec.next_object().map_err(|e| bad(&e.to_string()))? else {
        return Err(bad("not a dictionary"));
    };
    let int = |o: Object| -> Result<u64, ResponseError> {
        match o {
            Object::Integer(s) => saturating_int(s).ok_or_else(|| bad("bad integer")),
            _ => Err(bad("expected an integer")),
        }
    };
    let mut failure = None;
    while let Some((k, v)) = d.next_pair().map_err(|e| bad(&e.to_string()))? {
        match k {
            b"failure reason" => {
                if let Object::Bytes(b) = v {
                    failure = Some(String::from_utf8_lossy(b).into_owned());
                }
            }
            b"warning message" => {
                if let Object::Bytes(b) = v {
                    resp.warning = Some(String::from_utf8_lossy(b).into_owned());
                }
            }
            b"interval" => resp.interval = Duration::from_secs(int(v)?.clamp(1, 24 * 3600)),
            b"min interval" => {
                resp.min_interval = Some(Duration::from_secs(int(v)?.min(24 * 3600)))
            }
            b"complete" => resp.complete = int(v)?,
            b"incomplete" => resp.incomplete = int(v)?,
            b"peers" => match v {
                Object::Bytes(b) => {
                    for c in b.chunks_exact(6) {
                        let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
                        let port = u16::from_be_bytes([c[4], c[5]]);
                        resp.peers.push(PeerInfo {
                            addr: SocketAddr::new(ip.into(), port),
                            peer_id: None,
                        });
                    }
                }
                Object::List(mut l) => {
                    while let Some(item) = l.next_object().map_err(|e| bad(&e.to_string()))? {
                        let Object::Dict(mut pd) = item else { continue };
                        let (mut ip, mut port, mut id) = (None, None, None);
                        while let Some((pk, pv)) =
                            pd.next_pair().map_err(|e| bad(&e.to_string()))?
                        {
                            match (pk, pv) {
                                (b"ip", Object::Bytes(b)) => {
                                    ip = std::str::from_utf8(b)
                                        .ok()
                                        .and_then(|s| s.parse::<IpAddr>().ok())
                                }
                                (b"port", Object::Integer(s)) => port = s.parse::<u16>().ok(),
                                (b"peer id", Object::Bytes(b)) => id = b.try_into().ok(),
                                _ => {}
                            }
                        }
                        if let (Some(ip), Some(port)) = (ip, port) {
                            resp.peers.push(PeerInfo {
                                addr: SocketAddr::new(ip, port),
                                peer_id: id,
                            });
                        }
                    }
                }
                _ => return Err(bad("peers has the wrong type")),
            },
            b"peers6" => {
                if let Object::Bytes(b) = v {
                    for c in b.chunks_exact(18) {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(&c[..16]);
                        let port = u16::from_be_bytes([c[16], c[17]]);
                        resp.peers.push(PeerInfo {
                            addr: SocketAddr::new(Ipv6Addr::from(o).into(), port),
                            peer_id: None,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(f) = failure {
        return Err(ResponseError::Failure(f));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: InfoHash(*b"\x00\xff %&+=?/abcdefghijk"),
            peer_id: *b"-IS0100-\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c",
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Event::Started,
            compact: true,
            no_peer_id: false,
            numwant: Some(30),
            ip: None,
        }
    }

    #[test]
    fn binary_hashes_round_trip_through_the_query() {
        let req = sample();
        assert_eq!(AnnounceRequest::from_query(&req.to_query()).unwrap(), req);
    }

    #[test]
    fn rejects_malformed_announces() {
        assert!(AnnounceRequest::from_query("port=1")
            .unwrap_err()
            .contains("info_hash"));
        let q = sample().to_query().replace("port=6881", "port=70000");
        assert!(AnnounceRequest::from_query(&q)
            .unwrap_err()
            .contains("port"));
        let q = sample().to_query().replace("info_hash=", "info_hash=%00");
        assert!(AnnounceRequest::from_query(&q)
            .unwrap_err()
            .contains("20 bytes"));
        let q = sample().to_query().replace("event=started", "event=bogus");
        assert!(AnnounceRequest::from_query(&q).is_err());
        assert!(AnnounceRequest::from_query(&"a".repeat(MAX_QUERY_BYTES + 1)).is_err());
    }

    #[test]
    fn compact_and_dict_replies_decode_alike() {
        let resp = AnnounceResponse {
            interval: Duration::from_secs(30),
            min_interval: Some(Duration::from_secs(10)),
            complete: 2,
            incomplete: 1,
            peers: vec![
                PeerInfo {
                    addr: "10.0.0.1:6881".parse().unwrap(),
                    peer_id: Some([1; 20]),
                },
                PeerInfo {
                    addr: "[::1]:7000".parse().unwrap(),
                    peer_id: Some([2; 20]),
                },
            ],
            warning: None,
        };
        let compact = decode_announce(&encode_announce(&resp, true, false)).unwrap();
        let dict = decode_announce(&encode_announce(&resp, false, false)).unwrap();
        let addrs = |r: &AnnounceResponse| r.peers.iter().map(|p| p.addr).collect::<Vec<_>>();
        assert_eq!(addrs(&compact), addrs(&resp));
        assert_eq!(addrs(&dict), addrs(&resp));
        assert_eq!(dict.peers[0].peer_id, Some([1; 20]));
        assert_eq!(compact.interval, Duration::from_secs(30));
        assert_eq!(compact.min_interval, Some(Duration::from_secs(10)));
        assert_eq!((compact.complete, compact.incomplete), (2, 1));
    }

    #[test]
    fn failure_reason_is_an_error() {
        assert_eq!(
            decode_announce(&failure_body("unregistered torrent")),
            Err(ResponseError::Failure("unregistered torrent".into()))
        );
        assert!(matches!(
            decode_announce(b"garbage"),
            Err(ResponseError::Malformed(_))
        ));
    }

    #[test]
    fn absurd_intervals_in_a_reply_are_clamped_not_refused() {
        let day = Duration::from_secs(24 * 3600);
        let reply =
            b"d8:intervali99999999999999999999999e12:min intervali18446744073709551615e5:peers0:e";
        let r = decode_announce(reply).unwrap();
        assert_eq!((r.interval, r.min_interval), (day, Some(day)));
        let r = decode_announce(b"d8:intervali-5e5:peers0:e").unwrap();
        assert_eq!(r.interval, Duration::from_secs(1));
        assert!(decode_announce(b"d8:intervali1x2e5:peers0:e").is_err());
        assert_eq!(saturating_int("-"), None);
        assert_eq!(saturating_int("007"), Some(7));
    }
}
