//! Issue 3: hostile peers (a small test program speaking just enough of the
//! protocol to misbehave) next to an honest seeder. Our side drops or bans
//! them, says why in its log, and still completes from the honest peer.
//! Also: a download killed with SIGKILL resumes and fetches only what is
//! missing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use indexswarm::metainfo::Metainfo;
use indexswarm::peer::codec::{Handshake, Message, PeerCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::FramedRead;

use crate::common::*;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Misbehaviour {
    /// Has every piece, unchokes, answers every request with garbage.
    Corrupt,
    /// Announces a 256 MiB message.
    Oversize,
    /// A bitfield of the wrong length.
    BadBitfield,
    /// Accepts the connection and never says a word.
    Silent,
}

/// Runs the hostile peer on a background thread; returns its port.
pub(crate) fn spawn_hostile(meta: Metainfo, mode: Misbehaviour) -> u16 {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = std_listener.local_addr().unwrap().port();
    std_listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let meta = meta.clone();
                tokio::spawn(async move {
                    if let Misbehaviour::Silent = mode {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let mut hs = [0u8; 68];
                    if s.read_exact(&mut hs).await.is_err() {
                        return;
                    }
                    let mut reply = Handshake::new(meta.info_hash.0, *b"-EVIL00-evilevilevil");
                    reply.reserved = [0; 8];
                    let _ = s.write_all(&reply.to_bytes()).await;
                    let n = meta.num_pieces();
                    let mut out = BytesMut::new();
                    match mode {
                        Misbehaviour::Oversize => {
                            out.put_u32(256 << 20);
                            out.put_u8(7);
                            out.put_slice(&[0u8; 64]);
                        }
                        Misbehaviour::BadBitfield => {
                            Message::Bitfield(vec![0xff; n.div_ceil(8) as usize + 5].into())
                                .encode_into(&mut out);
                        }
                        _ => {
                            let mut bits = vec![0xffu8; n.div_ceil(8) as usize];
                            let spare = bits.len() * 8 - n as usize;
                            if let Some(last) = bits.last_mut() {
                                *last &= 0xffu8 << spare;
                            }
                            Message::Bitfield(bits.into()).encode_into(&mut out);
                            Message::Unchoke.encode_into(&mut out);
                        }
                    }
                    let _ = s.write_all(&out).await;
                    let (r, mut w) = s.into_split();
                    let mut frames = FramedRead::new(r, PeerCodec::new(n));
                    while let Some(Ok(msg)) = frames.next().await {
                        if let Message::Request(b) = msg {
                            let mut out = BytesMut::new();
                            let data = fill(b.piece as u64 * 7 + b.begin as u64, b.len as usize);
                            Message::Piece {
                                piece: b.piece,
                                begin: b.begin,
                                data: data.into(),
                            }
                            .encode_into(&mut out);
                            if w.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    port
}

fn setup(name: &str, size: usize) -> (tempfile::TempDir, std::path::PathBuf, Metainfo) {
    let d = test_dir(name);
    let src = d.path().join("src/snap");
    write_tree(
        &src,
        &[("a.bin", size), ("dir/b.bin", size / 3), ("small", 100)],
        77,
    );
    let t = d.path().join("t.torrent");
    let mut c = cmd();
    c.arg("create")
        .arg(&src)
        .arg("-o")
        .arg(&t)
        .args(["--piece-length", "64K", "--align-files"]);
    run_ok(c);
    let meta = Metainfo::from_bytes(&std::fs::read(&t).unwrap()).unwrap();
    (d, t, meta)
}

fn start_seed(d: &Path, t: &Path, limit: &str) -> (Proc, u16) {
    let port = free_port();
    let mut c = cmd();
    c.arg("seed").arg(t).arg("--dir").arg(d.join("src"));
    c.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--upload-limit",
        limit,
    ]);
    let p = Proc::spawn(&format!("seed-{port}"), c, &d.join("logs"));
    wait_until(Duration::from_secs(60), "seeder ready", || {
        p.stdout_text().trim().len() == 40
    });
    (p, port)
}

fn fetch_with(d: &Path, t: &Path, peers: &[u16], name: &str) -> Proc {
    let mut c = cmd();
    c.env("RUST_LOG", "indexswarm=debug");
    c.arg("fetch").arg(t).arg("--dir").arg(d.join(name));
    c.args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    for p in peers {
        c.args(["--peer", &format!("127.0.0.1:{p}")]);
    }
    Proc::spawn(name, c, &d.join("logs"))
}

fn hostile_case(mode: Misbehaviour, expect_in_log: &str, size: usize, honest_rate: &str) {
    let (d, t, meta) = setup(&format!("hostile-{mode:?}"), size);
    // The honest seeder is slow so the hostile peer gets its chance.
    let (_seed, honest) = start_seed(d.path(), &t, honest_rate);
    let evil = spawn_hostile(meta, mode);
    let mut f = fetch_with(d.path(), &t, &[evil, honest], "dst");
    let status = f.wait(Duration::from_secs(120));
    let log = f.stderr_text();
    assert!(status.success(), "{mode:?}: fetch failed:\n{}", tail(&log));
    assert_same_tree(&d.path().join("src/snap"), &d.path().join("dst/snap"));
    assert!(
        log.contains(expect_in_log),
        "{mode:?}: log should say {expect_in_log:?}:\n{}",
        tail(&log)
    );
    assert!(!log.contains("panicked"));
}

#[test]
fn corrupt_peer_is_banned_and_download_completes() {
    hostile_case(Misbehaviour::Corrupt, "banning peer", 6_000_000, "3M");
}

#[test]
fn oversize_message_closes_the_connection() {
    hostile_case(Misbehaviour::Oversize, "exceeds the limit", 6_000_000, "3M");
}

#[test]
fn wrong_length_bitfield_closes_the_connection() {
    hostile_case(Misbehaviour::BadBitfield, "bitfield of", 6_000_000, "3M");
}

#[test]
fn silent_peer_does_not_stop_the_download() {
    // Slow enough (about 15 s) that the 10 s handshake timeout fires first.
    hostile_case(
        Misbehaviour::Silent,
        "handshake timed out",
        11_000_000,
        "1M",
    );
}

fn allocated(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().map(|m| m.blocks() * 512).unwrap_or(0))
        .sum()
}

#[test]
fn killed_fetch_resumes_and_downloads_only_what_is_missing() {
    let (d, t, meta) = setup("resume", 24_000_000);
    let (_seed, port) = start_seed(d.path(), &t, "4M");
    let dst = d.path().join("dst");
    let mut first = fetch_with(d.path(), &t, &[port], "dst");
    let total = meta.total_length;
    wait_until(
        Duration::from_secs(60),
        "a third of the data on disk",
        || allocated(&dst) > total / 3,
    );
    first.signal("KILL");
    first.wait(Duration::from_secs(10));
    let on_disk = allocated(&dst);
    assert!(on_disk < total, "killed part-way");

    let mut second = fetch_with(d.path(), &t, &[port], "dst");
    assert!(
        second.wait(Duration::from_secs(120)).success(),
        "{}",
        tail(&second.stderr_text())
    );
    assert_same_tree(&d.path().join("src/snap"), &dst.join("snap"));
    let s: serde_json::Value =
        serde_json::from_str(second.stdout_text().lines().last().unwrap()).unwrap();
    let resumed = s["bytes_resumed"].as_u64().unwrap();
    let downloaded = s["downloaded"].as_u64().unwrap();
    assert!(resumed >= total / 4, "resumed {resumed} of {total}");
    // Only the missing part crosses the network again (padding is never
    // requested, a few endgame duplicates are allowed).
    assert!(
        downloaded <= total - resumed + (1 << 20),
        "downloaded {downloaded}, but only {} were missing",
        total - resumed
    );
}
