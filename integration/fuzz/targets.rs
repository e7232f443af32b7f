//! Fuzz targets (#11) for every decoder of input a sidecar takes from the
//! network or from an operator: the peer wire codec and the extension
//! payloads, the tracker's announce query and a tracker's reply,
//! bencode/metainfo, the master's JSON a replica reads, a replica's report,
//! and the config file. Each target takes any input, must not panic, and
//! checks what the decoder promises beyond that (a decoded message encodes
//! back to itself, an accepted announce survives its own query string, a
//! parsed torrent is consistent, ...). Each returns whether the decoder
//! accepted its input, so that a run can show it reached both the accept
//! and the refuse paths: a generator that only ever produced garbage
//! would test the first check and nothing else.
//!
//! Shared by the bounded run in `cargo test` (`integration/fuzz.rs`) and
//! the long one (`cargo run --release --example fuzz`), so both exercise
//! the same properties. Plain proptest, stable Rust.

#![allow(dead_code)] // each includer runs the targets its own way

use bytes::BytesMut;
use indexswarm::api::{Report, VersionRef};
use indexswarm::config::ConfigFile;
use indexswarm::metainfo::Metainfo;
use indexswarm::peer::codec::{Handshake, Message, PeerCodec};
use indexswarm::peer::{connection, pex};
use indexswarm::replica::plan;
use indexswarm::tracker::protocol::{decode_announce, scrape_hashes, url_bytes};
use indexswarm::tracker::AnnounceRequest;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// Decodes a byte stream as a peer sends it: frame after frame until the
/// stream ends or a frame is refused. Every decoded message, encoded
/// again, is the same frame, and decodes to the same message.
pub fn wire(num_pieces: u32, stream: &[u8]) -> bool {
    let mut codec = PeerCodec::new(num_pieces);
    let mut src = BytesMut::from(stream);
    let mut decoded = false;
    while let Ok(Some(msg)) = codec.decode(&mut src) {
        decoded = true;
        let mut again = BytesMut::new();
        msg.encode_into(&mut again);
        let back = PeerCodec::new(num_pieces).decode(&mut again);
        match (&msg, back) {
            // An unknown id's payload is skipped, not kept.
            (Message::Unknown(id), Ok(Some(Message::Unknown(b)))) => assert_eq!(*id, b),
            (_, Ok(Some(b))) => assert_eq!(msg, b),
            (_, other) => panic!("{msg:?} re-encoded decodes to {other:?}"),
        }
        assert!(again.is_empty(), "{msg:?} re-encoded left bytes over");
    }
    decoded
}

/// The 68-byte handshake's fixed prefix, and the BEP 10 and BEP 11
/// payloads a peer sends after it.
pub fn peer_payloads(prefix: &[u8; 48], payload: &[u8]) -> bool {
    let handshake = Handshake::parse_prefix(prefix);
    if let Some((_, info_hash)) = handshake {
        let bytes = Handshake::new(info_hash, [7; 20]).to_bytes();
        let mut again = [0u8; 48];
        again.copy_from_slice(&bytes[..48]);
        let (_, hash) = Handshake::parse_prefix(&again).expect("our own handshake parses");
        assert_eq!(hash, info_hash);
    }
    let ext = connection::decode_ext_handshake(payload);
    if let Some(c) = &ext.client {
        assert!(
            c.len() <= 4 * 64,
            "client name kept whole: {} bytes",
            c.len()
        );
    }
    let p = pex::decode(payload);
    assert!(p.added.len() <= 2 * pex::MAX_PEX_PEERS);
    assert!(p.dropped.len() <= 2 * pex::MAX_PEX_PEERS);
    assert!(p.added.iter().chain(&p.dropped).all(|a| a.port() != 0));
    handshake.is_some() && (ext != Default::default() || !p.added.is_empty())
}

/// An announce's query string, as the tracker reads it. An accepted
/// announce, written out by our client, reads back the same.
pub fn tracker_query(raw: &str) -> bool {
    let announce = AnnounceRequest::from_query(raw);
    if let Ok(req) = &announce {
        let again = AnnounceRequest::from_query(&req.to_query()).expect("our own query parses");
        // `ip` is never sent by our client.
        assert_eq!(
            AnnounceRequest {
                ip: req.ip,
                ..again
            },
            *req
        );
    }
    if let Ok(hashes) = scrape_hashes(raw) {
        // Every hash came from an `info_hash=` pair of the query.
        assert!(hashes.len() <= raw.matches("info_hash=").count());
    }
    announce.is_ok()
}

/// A tracker's reply, as our client reads it.
pub fn tracker_reply(body: &[u8]) -> bool {
    let reply = decode_announce(body);
    if let Ok(r) = &reply {
        // The announce loop sleeps this long: it must stay sane.
        assert!(
            r.interval.as_secs() <= 24 * 3600,
            "interval {:?}",
            r.interval
        );
        assert!(r.peers.len() <= body.len() / 6 + 1);
    }
    reply.is_ok()
}

/// A torrent file. An accepted one is consistent: pieces cover the
/// content, files lie end to end.
pub fn metainfo(bytes: &[u8]) -> bool {
    let Ok(m) = Metainfo::from_bytes(bytes) else {
        return false;
    };
    assert!(m.piece_length > 0 && m.piece_length <= indexswarm::metainfo::MAX_PIECE_LENGTH);
    let pieces = m.total_length.div_ceil(m.piece_length);
    assert_eq!(pieces, m.pieces.len() as u64);
    let mut offset = 0u64;
    for f in &m.files {
        assert_eq!(f.offset, offset);
        offset = offset.checked_add(f.length).expect("file offsets overflow");
        assert!(f
            .path
            .iter()
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('/')));
    }
    assert_eq!(offset, m.total_length);
    true
}

/// What a replica reads from the master: `GET /versions` and
/// `GET /versions/latest`, then the decision it makes on them.
pub fn versions_json(body: &[u8]) -> bool {
    let list: Vec<VersionRef> = match serde_json::from_slice(body) {
        Ok(l) => l,
        Err(_) => match serde_json::from_slice::<VersionRef>(body) {
            Ok(v) => vec![v],
            Err(_) => return false,
        },
    };
    let mut acted = false;
    for v in &list {
        if v.check().is_err() {
            continue;
        }
        acted = true;
        let live = plan::LiveId {
            version: v.version.wrapping_add(1),
            info_hash: v.info_hash,
        };
        let _ = plan::first(Some(&live), v.epoch.as_deref(), v);
        let _ = plan::first(None, None, v);
        let (plan::Behind::Stay(s) | plan::Behind::Follow(s)) = plan::behind(&live, v, &list);
        assert!(s.len() < 1024, "a report of {} bytes", s.len());
    }
    acted
}

/// `POST /replicas/report`, as the master reads it: after validation,
/// the names are plain and short, the numbers in range, the text cut.
pub fn report_json(body: &[u8]) -> bool {
    let Ok(r) = serde_json::from_slice::<Report>(body) else {
        return false;
    };
    let Ok(r) = r.validate() else {
        return false;
    };
    assert!(indexswarm::api::plain_name(&r.id, 128));
    assert!((0.0..=1.0).contains(&r.progress));
    assert!(r
        .last_error
        .as_ref()
        .is_none_or(|e| e.chars().count() <= 1024));
    true
}

/// The config file: parsed and validated for both roles, every bad
/// setting an error, never a panic.
pub fn config(text: &str) -> bool {
    let Ok(file) = toml::from_str::<ConfigFile>(text) else {
        return false;
    };
    let master = file.master.validate_with(&file.index);
    let replica = file.replica.validate_with(&file.index);
    master.is_ok() || replica.is_ok()
}

// ---- inputs: raw bytes, and valid input with a few bytes changed ----

/// Raw bytes, or a valid `seed` with a few bytes overwritten, cut or
/// repeated: malformed input that gets past the first check.
pub fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..6);
    (Just(seed), edits).prop_map(|(mut v, edits)| {
        for (at, byte, op) in edits {
            if v.is_empty() {
                v.push(byte);
                continue;
            }
            let i = at.index(v.len());
            match op {
                0 => v[i] = byte,
                1 => v.truncate(i),
                2 => v.insert(i, byte),
                _ => {
                    let tail = v[i..].to_vec();
                    v.extend_from_slice(&tail[..tail.len().min(64)]);
                }
            }
        }
        v
    })
}

fn raw(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn message() -> impl Strategy<Value = Message> {
    use indexswarm::peer::BlockRef;
    let block = (0u32..64, 0u32..(1 << 20), 0u32..(1 << 15))
        .prop_map(|(piece, begin, len)| BlockRef { piece, begin, len });
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::Unchoke),
        Just(Message::Interested),
        Just(Message::HaveAll),
        any::<u32>().prop_map(Message::Have),
        block.clone().prop_map(Message::Request),
        block.clone().prop_map(Message::Reject),
        (any::<u32>(), any::<u32>(), raw(64)).prop_map(|(piece, begin, d)| Message::Piece {
            piece,
            begin,
            data: d.into()
        }),
        (any::<u8>(), raw(64)).prop_map(|(id, p)| Message::Extended {
            id,
            payload: p.into()
        }),
        (0u8..=255).prop_map(Message::Unknown),
    ]
}

/// A stream of frames: valid messages, then a few bytes changed.
pub fn wire_input() -> impl Strategy<Value = (u32, Vec<u8>)> {
    let frames = prop::collection::vec(message(), 0..6).prop_map(|msgs| {
        let mut b = BytesMut::new();
        for m in msgs {
            m.encode_into(&mut b);
        }
        b.to_vec()
    });
    (
        0u32..100,
        prop_oneof![raw(256), frames.prop_flat_map(mutated)],
    )
}

/// A handshake's first 48 bytes (half of them starting as a real one
/// does), and a bencoded dictionary shaped like the extension handshake
/// or PEX.
pub fn payload_input() -> impl Strategy<Value = ([u8; 48], Vec<u8>)> {
    let ext = b"d1:md6:ut_pexi1ee1:pi6881e4:reqqi250e1:v5:isw/1e".to_vec();
    let pex = b"d5:added12:\x7f\x00\x00\x01\x1a\xe1\x0a\x00\x00\x01\x00\x507:added.f2:\x00\x007:dropped0:e".to_vec();
    let prefix = (any::<[u8; 32]>(), any::<[u8; 16]>(), any::<bool>()).prop_map(|(a, b, real)| {
        let mut p = [0u8; 48];
        p[..32].copy_from_slice(&a);
        p[32..].copy_from_slice(&b);
        if real {
            p[..20].copy_from_slice(b"\x13BitTorrent protocol");
        }
        p
    });
    (prefix, prop_oneof![raw(128), mutated(ext), mutated(pex)])
}

/// Query strings made of the announce's keys with random values.
pub fn query_input() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "info_hash",
        "peer_id",
        "port",
        "uploaded",
        "downloaded",
        "left",
        "event",
        "compact",
        "numwant",
        "ip",
        "no_peer_id",
        "key",
        "",
    ]);
    let value = prop_oneof![
        raw(24).prop_map(|v| url_bytes(&v)),
        any::<u64>().prop_map(|n| n.to_string()),
        "-?[0-9]{0,25}",
        prop::sample::select(vec![
            "started",
            "stopped",
            "completed",
            "1",
            "%",
            "%zz",
            "%4"
        ])
        .prop_map(String::from),
    ];
    let pairs = prop::collection::vec((keys, value), 0..12);
    let good = (raw(20), raw(20), 1u16..).prop_map(|(h, p, port)| {
        let mut h20 = [0u8; 20];
        let mut p20 = [0u8; 20];
        h20[..h.len()].copy_from_slice(&h);
        p20[..p.len()].copy_from_slice(&p);
        format!(
            "info_hash={}&peer_id={}&port={port}",
            url_bytes(&h20),
            url_bytes(&p20)
        )
    });
    (good, pairs, any::<bool>()).prop_map(|(good, pairs, keep)| {
        let mut q = if keep { good } else { String::new() };
        for (k, v) in pairs {
            q.push('&');
            q.push_str(k);
            q.push('=');
            q.push_str(&v);
        }
        q
    })
}

/// Tracker replies: dictionary and compact forms, failures, mutated.
pub fn reply_input() -> impl Strategy<Value = Vec<u8>> {
    let compact =
        b"d8:completei1e10:incompletei2e8:intervali1800e5:peers6:\x7f\x00\x00\x01\x1a\xe1e"
            .to_vec();
    let dict = b"d8:intervali99999999999999999999e5:peersld2:ip9:127.0.0.14:porti6881eeee".to_vec();
    let fail = b"d14:failure reason4:nopee".to_vec();
    prop_oneof![raw(128), mutated(compact), mutated(dict), mutated(fail)]
}

/// A small valid multi-file torrent, mutated.
pub fn torrent_input() -> impl Strategy<Value = Vec<u8>> {
    let bstr = |s: &[u8]| [format!("{}:", s.len()).as_bytes(), s].concat();
    let t = [
        &b"d8:announce"[..],
        &bstr(b"http://tracker.invalid/announce"),
        b"4:infod5:filesld6:lengthi5e4:pathl1:aeed6:lengthi3e4:pathl1:b1:ceee",
        b"4:name4:snap12:piece lengthi16384e6:pieces",
        &bstr(&[0xab; 20]),
        b"ee",
    ]
    .concat();
    assert!(Metainfo::from_bytes(&t).is_ok(), "the seed torrent parses");
    prop_oneof![raw(256), mutated(t)]
}

/// JSON in the shape of `GET /versions`, with numbers, strings and
/// types at their edges.
pub fn versions_input() -> impl Strategy<Value = Vec<u8>> {
    // Mostly plausible values, so that whole lists get past serde and
    // reach the checks and decisions; edge cases the rest of the time.
    let version = prop_oneof![
        6 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just("-1".to_string()),
        1 => Just("1e999".to_string()),
        1 => Just("null".to_string()),
        1 => Just("\"7\"".to_string()),
    ];
    let hash = prop_oneof![4 => "[0-9a-f]{40}", 1 => "[0-9A-Fa-fxz]{0,44}"]
        .prop_map(|h| format!("\"{h}\""));
    let epoch = prop_oneof![
        2 => Just("null".to_string()),
        2 => "[a-zA-Z0-9]{0,70}".prop_map(|e| format!("\"{e}\"")),
        1 => "\\PC{0,8}".prop_map(|e| serde_json::to_string(&e).unwrap()),
    ];
    let one = (version, hash, epoch, "\\PC{0,40}").prop_map(|(v, h, e, url)| {
        format!(
            r#"{{"version":{v},"info_hash":{h},"torrent_url":{},"epoch":{e},"extra":[1,{{}}]}}"#,
            serde_json::to_string(&url).unwrap()
        )
    });
    let list =
        prop::collection::vec(one, 0..5).prop_map(|l| format!("[{}]", l.join(",")).into_bytes());
    prop_oneof![
        1 => raw(64),
        2 => list.clone(),
        2 => list.prop_flat_map(mutated),
    ]
}

/// JSON in the shape of a replica's report.
pub fn report_input() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![4 => "[a-z0-9_.:-]{1,70}", 1 => "\\PC{0,10}"]
        .prop_map(|s| serde_json::to_string(&s).unwrap());
    let number = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap_or("1e308".into())),
        Just("-0.5".to_string()),
    ];
    (name.clone(), name.clone(), name, number.clone(), number, "\\PC{0,64}")
        .prop_map(|(id, zone, index, progress, n, err)| {
            format!(
                r#"{{"id":{id},"zone":{zone},"index":{index},"state":"staged","progress":{progress},"bytes_total":{n},"live_version":{n},"last_error":{},"last_swap_at":"2026-13-01T00:00:00Z","interval_secs":{n}}}"#,
                serde_json::to_string(&err).unwrap()
            )
            .into_bytes()
        })
        .prop_flat_map(|r| prop_oneof![Just(r.clone()), mutated(r)])
}

/// Config files from the real keys with values of every type.
pub fn config_input() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec!["master", "replica", "index.main", "index.Bad Name"]);
    let key = prop::sample::select(vec![
        "snapshots_dir",
        "data_dir",
        "master_url",
        "http_listen",
        "peer_listen",
        "keep_versions",
        "poll_interval_secs",
        "settle_secs",
        "marker_file",
        "piece_length",
        "rollout",
        "min_ready",
        "ready_timeout_secs",
        "canary",
        "canary_secs",
        "swap_mode",
        "swarm_token",
        "peer_allow",
        "tls_cert",
        "upload_limit",
        "download_limit",
        "max_peers",
        "id",
        "zone",
        "api_token",
        "public_url",
        "keep",
        "unknown_key",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "[ -~]{0,16}".prop_map(|s| toml::Value::String(s).to_string()),
        Just(r#"["10.0.0.0/8", "::1/129", "x"]"#.to_string()),
        Just("\"1T\"".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("true".to_string()),
    ];
    let entries = prop::collection::vec((section, key, value), 0..10);
    (entries, any::<bool>()).prop_map(|(entries, base)| {
        // One table per section and one value per key: else TOML itself
        // refuses the file and the loader's checks are never reached.
        let mut tables = std::collections::BTreeMap::<_, std::collections::BTreeMap<_, _>>::new();
        if base {
            // Half the files start from a valid master and replica, so
            // that one bad value is what the loader must catch.
            let quoted = |s: &str| toml::Value::String(s.into()).to_string();
            tables
                .entry("master")
                .or_default()
                .insert("snapshots_dir", quoted("/srv/snapshots"));
            let replica = tables.entry("replica").or_default();
            replica.insert("master_url", quoted("http://127.0.0.1:7070"));
            replica.insert("data_dir", quoted("/srv/index"));
        }
        for (section, key, value) in entries {
            tables.entry(section).or_default().insert(key, value);
        }
        let mut text = String::new();
        for (section, keys) in tables {
            text.push_str(&format!("[{section}]\n"));
            for (key, value) in keys {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    })
}
