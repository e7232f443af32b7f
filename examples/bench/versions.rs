//! `bench versions` (#8): many versions published in a row with a small
//! retention, one replica following each, and what must stay flat: memory,
//! descriptors, tracker registrations, torrents and files on disk, the
//! size of versions.json. Each version is a `cp -al` of the previous one
//! with a new small segment and commit point, and the segment added ten
//! versions earlier merged away, so the file count stays level as in a
//! real index.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use indexswarm::demo::{write_generated, Fill};
use indexswarm::units::human_bytes;

use crate::cluster::{
    count_files, cp_al, fd_count, latest, loadavg, poke, print_load, registered, rss_mib,
    start_master, start_replica, swarms, wait_published, wait_replica, FdWatch, Node,
};
use crate::common::{data, dir_bytes, header};
use crate::Cli;

const MARKER: &str = "READY";

struct Point {
    version: u64,
    master_rss: (f64, f64),
    replica_rss: (f64, f64),
    master_fds: usize,
    replica_fds: usize,
    registered: usize,
    swarms: usize,
    torrents: usize,
    versions_json: u64,
    snapshot_dirs: usize,
    replica_files: usize,
    replica_slots: usize,
    publish: f64,
    replicate: f64,
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn build(snaps: &Path, prev: &Path, v: u64, seg_bytes: u64) -> Result<std::path::PathBuf> {
    let name = format!("snapshot.{:017}", 20261201000000000 + v);
    let tmp = snaps.join(format!("{name}.tmp"));
    cp_al(prev, &tmp)?;
    if v > 1 {
        let merged = format!("_v{}.", v.saturating_sub(10));
        for e in std::fs::read_dir(&tmp)? {
            let e = e?;
            let f = e.file_name().to_string_lossy().into_owned();
            if f == MARKER || f.starts_with("segments_") || f.starts_with(&merged) {
                std::fs::remove_file(e.path())?;
            }
        }
        write_generated(
            &tmp.join(format!("_v{v}.cfs")),
            seg_bytes,
            v * 3,
            Fill::Random,
        )?;
        write_generated(&tmp.join(format!("_v{v}.si")), 390, v * 3 + 1, Fill::Random)?;
        write_generated(
            &tmp.join(format!("segments_{v}")),
            1600,
            v * 3 + 2,
            Fill::Random,
        )?;
    }
    let dir = snaps.join(name);
    std::fs::rename(&tmp, &dir)?;
    Ok(dir)
}

#[allow(clippy::too_many_arguments)]
fn point(
    master: &Node,
    replica: &Node,
    hashes: &[String],
    snaps: &Path,
    data: &Path,
    version: u64,
    publish: f64,
    replicate: f64,
) -> Result<Point> {
    // Let the replica's swap, retention and the master's retirement finish.
    std::thread::sleep(Duration::from_secs(2));
    let state = snaps.join(".indexswarm");
    Ok(Point {
        version,
        master_rss: rss_mib(master.pid()),
        replica_rss: rss_mib(replica.pid()),
        master_fds: fd_count(master.pid()),
        replica_fds: fd_count(replica.pid()),
        registered: registered(master, hashes)?,
        swarms: swarms(master)?,
        torrents: entries(&state.join("torrents")),
        versions_json: std::fs::metadata(state.join("versions.json"))
            .map(|m| m.len())
            .unwrap_or(0),
        snapshot_dirs: std::fs::read_dir(snaps)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot."))
                    .count()
            })
            .unwrap_or(0),
        replica_files: count_files(data),
        replica_slots: std::fs::read_dir(data.join("versions"))
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0),
        publish,
        replicate,
    })
}

pub(crate) fn bench_versions(
    cli: &Cli,
    versions: u64,
    keep: usize,
    size: u64,
    seg_bytes: u64,
    checkpoints: &[u64],
    keep_snapshots: bool,
) -> Result<()> {
    let load = loadavg();
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let base = data(&cli.work, size)?.join("snap");
    let root = cli.work.join("versions");
    let _ = std::fs::remove_dir_all(&root);
    let snaps = root.join("snaps");
    std::fs::create_dir_all(&snaps)?;
    let keep_s = keep.to_string();
    let mut flags = vec!["--marker-file", MARKER, "--keep-versions", &keep_s];
    if !keep_snapshots {
        flags.extend(["--delete-old-snapshots", "true"]);
    }
    let master = start_master(&logs, "ver-master", &snaps, &flags)?;
    let data_dir = root.join("replica");
    let replica = start_replica(&logs, "ver-replica", &master.base, &data_dir)?;
    let fds = FdWatch::start(vec![master.pid(), replica.pid()]);
    let mut hashes = Vec::new();
    let mut points = Vec::new();
    let mut times = Vec::new();
    let mut prev = base.clone();
    let started = Instant::now();
    for v in 1..=versions {
        let dir = build(&snaps, &prev, v, seg_bytes)?;
        let t0 = Instant::now();
        std::fs::File::create(dir.join(MARKER))?;
        let publish = wait_published(&master, v, t0)?;
        if let Some((_, h)) = latest(&master) {
            hashes.push(h);
        }
        let t1 = Instant::now();
        poke(&replica);
        let replicate = wait_replica(&replica, v, t1)?;
        times.push((publish, replicate));
        if checkpoints.contains(&v) {
            let p = point(
                &master, &replica, &hashes, &snaps, &data_dir, v, publish, replicate,
            )?;
            eprintln!(
                "version {v}: master RSS {:.1} MiB, replica RSS {:.1} MiB, fds {}/{}, registered {}, torrents {}, versions.json {} B, replica files {}",
                p.master_rss.0, p.replica_rss.0, p.master_fds, p.replica_fds, p.registered, p.torrents, p.versions_json, p.replica_files
            );
            points.push(p);
        }
        prev = dir;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let peak_fds = (fds.peak(master.pid()), fds.peak(replica.pid()));
    drop(fds);
    drop(replica);
    drop(master);

    header(&format!(
        "versions: {versions} versions in a row, keep_versions = {keep}{}, one replica following every version; {} snapshot, each version `cp -al` + a {} segment",
        if keep_snapshots { "" } else { ", delete_old_snapshots = true" },
        human_bytes(dir_bytes(&base)),
        human_bytes(seg_bytes)
    ));
    print_load(&load);
    println!("| at version | master RSS now / peak (MiB) | replica RSS now / peak (MiB) | open fds master / replica | tracker: registered of all versions / swarms held | torrents in the state dir | versions.json (bytes) | snapshot dirs | replica: files under its data dir / version dirs | this version: publish / replicate (s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for p in &points {
        println!(
            "| {} | {:.1} / {:.1} | {:.1} / {:.1} | {} / {} | {} / {} | {} | {} | {} | {} / {} | {:.2} / {:.2} |",
            p.version,
            p.master_rss.0,
            p.master_rss.1,
            p.replica_rss.0,
            p.replica_rss.1,
            p.master_fds,
            p.replica_fds,
            p.registered,
            p.swarms,
            p.torrents,
            p.versions_json,
            p.snapshot_dirs,
            p.replica_files,
            p.replica_slots,
            p.publish,
            p.replicate
        );
    }
    let q = |from: usize, to: usize, f: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = times[from.min(times.len())..to.min(times.len())]
            .iter()
            .map(f)
            .collect();
        if v.is_empty() {
            return f64::NAN;
        }
        crate::common::median(&mut v)
    };
    let n = times.len();
    println!(
        "\nMedian publish / replicate time, versions 2–20: {:.2} / {:.2} s; the last 20: {:.2} / {:.2} s. Highest open fds sampled every 50 ms over the whole run: master {}, replica {}. The run took {elapsed:.0} s.",
        q(1, 20, |t| t.0),
        q(1, 20, |t| t.1),
        q(n.saturating_sub(20), n, |t| t.0),
        q(n.saturating_sub(20), n, |t| t.1),
        peak_fds.0,
        peak_fds.1
    );
    Ok(())
}
