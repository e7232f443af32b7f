//! Peer exchange (BEP 11, `ut_pex` over the BEP 10 extension protocol):
//! peers tell each other which addresses they are connected to, so a swarm
//! keeps growing its graph while the tracker is down or slow.
//!
//! A message is a bencoded dictionary: `added` (compact IPv4 `ip:port`, six
//! bytes each), `added.f` (one flag byte per added peer), `dropped`, and the
//! same three keys with a `6` for IPv6 (eighteen bytes each). Pure bytes
//! here; the session decides whom to tell what, and how often (BEP 11: at
//! most once a minute per peer, at most 50 added and 50 dropped).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bendy::decoding::{Decoder, Object};
use bendy::encoding::{Encoder, SingleItemEncoder};
use bytes::Bytes;

/// The id we ask peers to use for `ut_pex` messages to us (our extension
/// handshake's `m` dictionary).
pub const OUR_PEX_ID: u8 = 1;
/// Addresses per list in one message, both ways (BEP 11's limit).
pub const MAX_PEX_PEERS: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pex {
    pub added: Vec<SocketAddr>,
    pub dropped: Vec<SocketAddr>,
}

fn compact(addrs: &[SocketAddr], v6: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for a in addrs.iter().take(MAX_PEX_PEERS) {
        match (a.ip(), v6) {
            (IpAddr::V4(ip), false) => out.extend_from_slice(&ip.octets()),
            (IpAddr::V6(ip), true) => out.extend_from_slice(&ip.octets()),
            _ => continue,
        }
        out.extend_from_slice(&a.port().to_be_bytes());
    }
    out
}

fn parse_compact(bytes: &[u8], v6: bool, out: &mut Vec<SocketAddr>) {
    let width = if v6 { 18 } else { 6 };
    for chunk in bytes.chunks_exact(width).take(MAX_PEX_PEERS) {
        let (ip, port) = chunk.split_at(width - 2);
        let ip: IpAddr = if v6 {
            let o: [u8; 16] = ip.try_into().unwrap_or([0; 16]);
            Ipv6Addr::from(o).into()
        } else {
            let o: [u8; 4] = ip.try_into().unwrap_or([0; 4]);
            Ipv4Addr::from(o).into()
        };
        let port = u16::from_be_bytes([port[0], port[1]]);
        if port != 0 && !ip.is_unspecified() {
            out.push(SocketAddr::new(ip, port));
        }
    }
}

/// Encodes a `ut_pex` payload (at most [`MAX_PEX_PEERS`] per list and family).
pub fn encode(pex: &Pex) -> Bytes {
    let added4 = compact(&pex.added, false);
    let added6 = compact(&pex.added, true);
    let flags4 = vec![0u8; added4.len() / 6];
    let flags6 = vec![0u8; added6.len() / 18];
    let dropped4 = compact(&pex.dropped, false);
    let dropped6 = compact(&pex.dropped, true);
    let mut e = Encoder::new();
    let r = e.emit_with(|e: SingleItemEncoder| {
        e.emit_dict(|mut d| {
            // Keys in sorted (byte) order, as bencode requires.
            d.emit_pair(b"added", bendy::encoding::AsString(&added4))?;
            d.emit_pair(b"added.f", bendy::encoding::AsString(&flags4))?;
            d.emit_pair(b"added6", bendy::encoding::AsString(&added6))?;
            d.emit_pair(b"added6.f", bendy::encoding::AsString(&flags6))?;
            d.emit_pair(b"dropped", bendy::encoding::AsString(&dropped4))?;
            d.emit_pair(b"dropped6", bendy::encoding::AsString(&dropped6))
        })
    });
    match r.and_then(|_| e.get_output()) {
        Ok(v) => Bytes::from(v),
        Err(_) => Bytes::from_static(b"de"),
    }
}

/// Decodes a `ut_pex` payload. Malformed input yields what could be read
/// (a peer's bad message costs it nothing but is never a crash); each list
/// is capped at [`MAX_PEX_PEERS`].
pub fn decode(payload: &[u8]) -> Pex {
    let mut out = Pex::default();
    let mut dec = Decoder::new(payload).with_max_depth(2);
    let Ok(Some(Object::Dict(mut d))) = dec.next_object() else {
        return out;
    };
    while let Ok(Some((k, v))) = d.next_pair() {
        let Object::Bytes(b) = v else { continue };
        match k {
            b"added" => parse_compact(b, false, &mut out.added),
            b"added6" => parse_compact(b, true, &mut out.added),
            b"dropped" => parse_compact(b, false, &mut out.dropped),
            b"dropped6" => parse_compact(b, true, &mut out.dropped),
            _ => {}
        }
    }
    out.added.truncate(2 * MAX_PEX_PEERS);
    out.dropped.truncate(2 * MAX_PEX_PEERS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        let pex = Pex {
            added: vec![
                "10.0.0.1:6881".parse().unwrap(),
                "[2001:db8::1]:6882".parse().unwrap(),
            ],
            dropped: vec!["10.0.0.9:7000".parse().unwrap()],
        };
        assert_eq!(decode(&encode(&pex)), pex);
    }

    #[test]
    fn caps_and_garbage_never_panic() {
        let many: Vec<SocketAddr> = (0..200u16)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 1000 + i)))
            .collect();
        let enc = encode(&Pex {
            added: many,
            dropped: vec![],
        });
        assert_eq!(decode(&enc).added.len(), MAX_PEX_PEERS);
        for bad in [
            &b""[..],
            b"de",
            b"d5:added3:abce",
            b"i42e",
            b"d5:addedi1ee",
            &[0xff; 40],
        ] {
            let _ = decode(bad);
        }
        // A truncated entry and a zero port are skipped.
        let mut d = b"d5:added9:".to_vec();
        d.extend_from_slice(&[10, 0, 0, 1, 0, 0, 10, 0, 0]);
        d.push(b'e');
        assert!(decode(&d).added.is_empty());
    }

    #[test]
    fn reads_a_libtorrent_style_message() {
        // What libtorrent sends: added with flags, empty dropped.
        let mut msg = b"d5:added6:".to_vec();
        msg.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1]);
        msg.extend_from_slice(b"7:added.f1:");
        msg.push(0x10);
        msg.extend_from_slice(b"7:dropped0:e");
        let pex = decode(&msg);
        assert_eq!(pex.added, vec!["127.0.0.1:6881".parse().unwrap()]);
        assert!(pex.dropped.is_empty());
    }
}
