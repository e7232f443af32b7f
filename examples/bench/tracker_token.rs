//! `bench tracker-token` (#11): the load of `bench tracker` (200 torrents,
//! 5,000 peers; capacity with 64 closed-loop clients, then latency at a
//! fixed rate) against the tracker embedded in a real `indexswarm master`
//! in a closed swarm (`--swarm-token`: every announce carries
//! `Authorization: Bearer <token>`), the same master without a token,
//! the standalone `indexswarm tracker`, and opentracker, in rounds, in one
//! invocation. The masters track only what they published, so each
//! publishes 200 small snapshot directories (`keep_versions` 200) and the
//! load announces their info-hashes; the standalone tracker and
//! opentracker whitelist the same hashes. A bencoded `failure reason`
//! counts as an error, not as an announce served.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use indexswarm::demo::{write_generated, Fill};

use crate::cluster::{cp_al, loadavg, median_of, print_load, start_master, Node};
use crate::common::{cpu_secs, header, status_kb};
use crate::fleet::{load1, others_busy, Api};
use crate::tracker::{pct, refused, start_opentracker, start_whitelisted, tracker_load};
use crate::Cli;

const TOKEN: &str = "bench-swarm-token";
const SNAPSHOTS: u64 = 200;

/// A tracker under load: its announce URL, the info-hashes it tracks,
/// the token its announces carry, and its process.
struct Target<'a> {
    name: &'static str,
    url: &'a str,
    hashes: &'a [[u8; 20]],
    token: Option<&'a str>,
    pid: u32,
}

struct Row {
    name: &'static str,
    round: usize,
    capacity: f64,
    lat: Vec<f64>,
    errors: u64,
    cpu: f64,
    rss_mib: f64,
    load: String,
    busy: String,
}

/// A master that publishes every directory of `snaps` on request only
/// (no marker, a day to settle), keeps them all, and its info-hashes.
fn master_with_versions(
    logs: &Path,
    name: &str,
    snaps: &Path,
    token: Option<&str>,
    api: &Api,
) -> Result<(Node, Vec<[u8; 20]>)> {
    // The verifier is off: with 200 tiny versions it re-reads them round
    // after round and takes a quarter to a half of a core while idle (its
    // rate caps bytes, and these versions have few), which would tax the
    // other trackers of the run. The tracker is what is measured here.
    let mut flags = vec![
        "--keep-versions",
        "200",
        "--settle-secs",
        "86400",
        "--verify-rate",
        "0",
    ];
    if let Some(t) = token {
        flags.extend_from_slice(&["--swarm-token", t]);
    }
    let m = start_master(logs, name, snaps, &flags)?;
    for i in 0..SNAPSHOTS {
        let body = format!("{{\"path\": \"{}\"}}", snap_name(i));
        let (status, reply) =
            api.call("POST", &format!("{}/snapshot", m.base), None, Some(&body))?;
        if !(200..300).contains(&status) {
            bail!("{name}: POST /snapshot {body} answered {status}: {reply}");
        }
    }
    let (_, list) = api.call("GET", &format!("{}/versions", m.base), token, None)?;
    let hashes: Vec<[u8; 20]> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v["info_hash"].as_str())
                .filter_map(|h| hex::decode(h).ok())
                .filter_map(|b| b.try_into().ok())
                .collect()
        })
        .unwrap_or_default();
    if hashes.len() != SNAPSHOTS as usize {
        bail!("{name} lists {} versions, not {SNAPSHOTS}", hashes.len());
    }
    Ok((m, hashes))
}

fn snap_name(i: u64) -> String {
    format!("snapshot.{:017}", 20261201000000000 + i)
}

/// One announce of `hashes[0]`: does the tracker serve it (not refuse it)?
fn served(api: &Api, url: &str, hash: &[u8; 20], token: Option<&str>) -> Result<bool> {
    use indexswarm::tracker::protocol::url_bytes;
    let q = format!(
        "{url}?info_hash={}&peer_id={}&port=9999&uploaded=0&downloaded=0&left=1&compact=1",
        url_bytes(hash),
        url_bytes(b"-CHECK0-000000000000")
    );
    let body = api.text(&q, token)?;
    Ok(!refused(body.as_bytes()))
}

pub(crate) fn bench_tracker_token(cli: &Cli, rate: u64, seconds: u64, rounds: usize) -> Result<()> {
    let load = loadavg();
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let root = cli.work.join("tracker-token");
    let _ = std::fs::remove_dir_all(&root);
    let (snaps_a, snaps_b) = (root.join("snaps-token"), root.join("snaps-open"));
    std::fs::create_dir_all(&snaps_a)?;
    for i in 0..SNAPSHOTS {
        let d = snaps_a.join(snap_name(i));
        std::fs::create_dir_all(&d)?;
        write_generated(&d.join("_0.cfs"), 4096, 500 + i, Fill::Random)?;
        write_generated(&d.join("segments_1"), 300, 900 + i, Fill::Random)?;
    }
    cp_al(&snaps_a, &snaps_b)?;
    let api = Api::new()?;
    let (token_master, hashes) =
        master_with_versions(&logs, "tt-master-token", &snaps_a, Some(TOKEN), &api)?;
    let (open_master, open_hashes) =
        master_with_versions(&logs, "tt-master-open", &snaps_b, None, &api)?;

    // The standalone tracker and opentracker whitelist the same hashes.
    let (standalone, standalone_url) = start_whitelisted(&logs, "tt-tracker", &root, &hashes)?;
    let (ot, ot_url) = start_opentracker(&logs, "tt-opentracker", &root, &hashes, &cli.work)?;

    let token_url = format!("{}/announce", token_master.base);
    let open_url = format!("{}/announce", open_master.base);
    // The closed swarm is closed, and everyone serves what they should.
    if served(&api, &token_url, &hashes[0], None)? {
        bail!("the master with a swarm token served an announce without it");
    }
    for (url, h, t) in [
        (&token_url, &hashes[0], Some(TOKEN)),
        (&open_url, &open_hashes[0], None),
        (&standalone_url, &hashes[0], None),
        (&ot_url, &hashes[0], None),
    ] {
        if !served(&api, url, h, t)? {
            bail!("{url} refused an announce it should serve");
        }
    }

    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for round in 1..=rounds.max(1) {
        let targets = [
            Target {
                name: "master, swarm token (Bearer)",
                url: &token_url,
                hashes: &hashes,
                token: Some(TOKEN),
                pid: token_master.pid(),
            },
            Target {
                name: "master, no token",
                url: &open_url,
                hashes: &open_hashes,
                token: None,
                pid: open_master.pid(),
            },
            Target {
                name: "`indexswarm tracker` (no token)",
                url: &standalone_url,
                hashes: &hashes,
                token: None,
                pid: standalone.pid(),
            },
            Target {
                name: "opentracker",
                url: &ot_url,
                hashes: &hashes,
                token: None,
                pid: ot.pid(),
            },
        ];
        for Target {
            name,
            url,
            hashes: hs,
            token,
            pid,
        } in targets
        {
            std::thread::sleep(Duration::from_secs(1));
            let busy = others_busy();
            let load = load1();
            let before = cpu_secs(pid);
            let (capacity, lat, errors) =
                rt.block_on(tracker_load(url, hs, rate, seconds, token))?;
            eprintln!("round {round}, {name}: {capacity:.0} announces/s, {errors} errors");
            rows.push(Row {
                name,
                round,
                capacity,
                lat,
                errors,
                cpu: cpu_secs(pid) - before,
                rss_mib: status_kb(pid, "VmHWM:") as f64 / 1024.0,
                load,
                busy,
            });
        }
    }
    drop((token_master, open_master, standalone, ot));
    let _ = std::fs::remove_dir_all(&root);

    header(&format!(
        "tracker-token: 200 torrents, 5,000 peers; capacity with 64 closed-loop clients, latency at {rate} announces/s for {seconds} s; {} rounds",
        rounds.max(1)
    ));
    print_load(&load);
    println!("| tracker | round | capacity (announces/s) | vs opentracker, same round | p50 ms | p99 ms | max ms | errors | server CPU s | peak RSS MiB | load (1 min) | also running at the start (CPU over 0.5 s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let ot_cap = |round: usize| {
        rows.iter()
            .find(|r| r.round == round && r.name == "opentracker")
            .map(|r| r.capacity)
            .unwrap_or(f64::NAN)
    };
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {} | {} |",
            r.name,
            r.round,
            r.capacity,
            r.capacity / ot_cap(r.round),
            pct(&r.lat, 0.5),
            pct(&r.lat, 0.99),
            pct(&r.lat, 1.0),
            r.errors,
            r.cpu,
            r.rss_mib,
            r.load,
            r.busy
        );
    }
    println!("\n| tracker | median capacity (announces/s) | median ratio to opentracker (per round) | median p99 ms |");
    println!("|---|---|---|---|");
    for name in [
        "master, swarm token (Bearer)",
        "master, no token",
        "`indexswarm tracker` (no token)",
        "opentracker",
    ] {
        let of: Vec<&Row> = rows.iter().filter(|r| r.name == name).collect();
        let cap = median_of(&of.iter().map(|r| r.capacity).collect::<Vec<_>>());
        let ratio = median_of(
            &of.iter()
                .map(|r| r.capacity / ot_cap(r.round))
                .collect::<Vec<_>>(),
        );
        let p99 = median_of(&of.iter().map(|r| pct(&r.lat, 0.99)).collect::<Vec<_>>());
        println!("| {name} | {cap:.0} | {ratio:.2} | {p99:.2} |");
    }
    Ok(())
}
