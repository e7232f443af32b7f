//! `bench files` (#8): publish and replicate time, memory and descriptors
//! as the number of (small) files grows, one master and N replicas on
//! loopback, beside two references on the same data in the same run:
//! `indexswarm create --align-files` (the master's hashing alone) and
//! `cp -r` (creating that many files on this disk).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use indexswarm::units::human_bytes;

use crate::cluster::{
    loadavg, median_of, poke, print_load, publish_first, rss_mib, start_master, start_replica,
    time_cmd, wait_replicas, FdWatch,
};
use crate::common::{cpu_secs, dir_bytes, header, indexswarm};
use crate::Cli;

struct Run {
    publish: f64,
    replica_cpu: f64,
    fsync_copy: f64,
    master_publish: f64,
    hashed: u64,
    replicate: f64,
    create: f64,
    copy: f64,
    master_hwm: f64,
    replica_hwm: f64,
    master_fds: usize,
    replica_fds: usize,
}

/// Copies every file of `src` into `dst` and fsyncs each, then the
/// directory: the least a crash-safe replica must do with these files.
fn copy_and_fsync(src: &Path, dst: &Path) -> Result<f64> {
    let t = Instant::now();
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let data = std::fs::read(e.path())?;
        let mut f = std::fs::File::create(dst.join(e.file_name()))?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    indexswarm::util::sync_dir(dst)?;
    Ok(t.elapsed().as_secs_f64())
}

fn one_run(cli: &Cli, n: usize, replicas: usize, rep: usize) -> Result<Run> {
    let logs = cli.work.join("logs");
    let root = cli.work.join(format!("files-{n}"));
    let snaps = root.join("snaps");
    let snap = snaps.join("snapshot.1");
    if !snap.join("segments_1").exists() {
        eprintln!("generating {n} small files in {}", snap.display());
        let _ = std::fs::remove_dir_all(&snaps);
        indexswarm::demo::generate_small_files(&snap, n, 42)?;
    }
    // Warm the page cache, as for every benchmark here.
    for e in walkdir::WalkDir::new(&snap).into_iter().flatten() {
        if e.file_type().is_file() {
            let _ = std::fs::read(e.path());
        }
    }
    let run = root.join(format!("run-{rep}"));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run)?;

    // References on the same files.
    let mut c = Command::new(indexswarm());
    c.arg("create")
        .arg(&snap)
        .arg("-o")
        .arg(run.join("ref.torrent"))
        .arg("--align-files");
    let create = time_cmd(c)?;
    let mut c = Command::new("cp");
    c.arg("-r").arg(&snap).arg(run.join("copy"));
    let copy = time_cmd(c)?;
    std::fs::remove_dir_all(run.join("copy"))?;
    let fsync_copy = copy_and_fsync(&snap, &run.join("copy"))?;
    std::fs::remove_dir_all(run.join("copy"))?;

    let state = run.join("state");
    let master = start_master(
        &logs,
        &format!("files-master-{n}"),
        &snaps,
        &[
            "--state-dir",
            &state.display().to_string(),
            "--settle-secs",
            "3600",
        ],
    )?;
    let mut reps = Vec::new();
    for i in 0..replicas {
        reps.push(start_replica(
            &logs,
            &format!("files-replica-{n}-{i}"),
            &master.base,
            &run.join(format!("replica-{i}")),
        )?);
    }
    let mut pids = vec![master.pid()];
    pids.extend(reps.iter().map(|r| r.pid()));
    let fds = FdWatch::start(pids);
    let publish = publish_first(&master)?;
    let t = Instant::now();
    for r in &reps {
        poke(r);
    }
    let replicate = wait_replicas(&reps, 1, t)?.into_iter().fold(0.0, f64::max);
    let lp = master.status()["last_publish"].clone();
    let run_out = Run {
        publish,
        replica_cpu: reps.iter().map(|r| cpu_secs(r.pid())).fold(0.0, f64::max),
        fsync_copy,
        master_publish: lp["seconds"].as_f64().unwrap_or(f64::NAN),
        hashed: lp["hashed_bytes"].as_u64().unwrap_or(0),
        replicate,
        create,
        copy,
        master_hwm: rss_mib(master.pid()).1,
        replica_hwm: reps.iter().map(|r| rss_mib(r.pid()).1).fold(0.0, f64::max),
        master_fds: fds.peak(master.pid()),
        replica_fds: reps.iter().map(|r| fds.peak(r.pid())).max().unwrap_or(0),
    };
    drop(fds);
    drop(reps);
    drop(master);
    let _ = std::fs::remove_dir_all(&run);
    eprintln!(
        "{n} files, run {rep}: publish {publish:.2} s (create {create:.2} s), replicate {replicate:.2} s (cp -r {copy:.2} s, copy + fsync {fsync_copy:.2} s)"
    );
    Ok(run_out)
}

pub(crate) fn bench_files(
    cli: &Cli,
    counts: &[usize],
    replicas: usize,
    repeat: usize,
) -> Result<()> {
    let load = loadavg();
    std::fs::create_dir_all(cli.work.join("logs"))?;
    let mut rows = Vec::new();
    for &n in counts {
        let mut runs = Vec::new();
        for rep in 0..repeat.max(1) {
            runs.push(one_run(cli, n, replicas, rep)?);
        }
        let bytes = dir_bytes(&cli.work.join(format!("files-{n}/snaps/snapshot.1")));
        rows.push((n, bytes, runs));
    }
    header(&format!(
        "files: publish and replicate as the file count grows (files of 1–16 KiB), master + {replicas} replica(s) on loopback{}",
        if repeat > 1 { format!(", median of {repeat} runs") } else { String::new() }
    ));
    print_load(&load);
    println!("| files | data | publish (s) | master's publish (s) | hashed (with padding) | `create --align-files` (s) | publish / create | replicate (s) | replica CPU (s) | `cp -r` (s) | copy + fsync each file (s) | replicate / copy + fsync | publish µs per file | replicate µs per file | peak RSS master / replica (MiB) | max fds master / replica |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut prev: Option<(usize, f64, f64)> = None;
    let mut growth = Vec::new();
    for (n, bytes, runs) in &rows {
        let m = |f: fn(&Run) -> f64| median_of(&runs.iter().map(f).collect::<Vec<_>>());
        let (p, r) = (m(|r| r.publish), m(|r| r.replicate));
        let hashed = runs.iter().map(|r| r.hashed).max().unwrap_or(0);
        let mfds = runs.iter().map(|r| r.master_fds).max().unwrap_or(0);
        let rfds = runs.iter().map(|r| r.replica_fds).max().unwrap_or(0);
        println!(
            "| {n} | {} | {p:.2} | {:.2} | {} | {:.2} | {:.2} | {r:.2} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} / {:.1} | {mfds} / {rfds} |",
            human_bytes(*bytes),
            m(|r| r.master_publish),
            human_bytes(hashed),
            m(|r| r.create),
            p / m(|r| r.create),
            m(|r| r.replica_cpu),
            m(|r| r.copy),
            m(|r| r.fsync_copy),
            r / m(|r| r.fsync_copy),
            p * 1e6 / *n as f64,
            r * 1e6 / *n as f64,
            m(|r| r.master_hwm),
            m(|r| r.replica_hwm),
        );
        if let Some((pn, pp, pr)) = prev {
            growth.push(format!(
                "{pn} → {n} files (×{:.0}): publish ×{:.1}, replicate ×{:.1}",
                *n as f64 / pn as f64,
                p / pp,
                r / pr
            ));
        }
        prev = Some((*n, p, r));
    }
    println!("\nGrowth: {}.", growth.join("; "));
    let all: Vec<String> = rows
        .iter()
        .map(|(n, _, runs)| {
            let v: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.2}/{:.2}/{:.2}", r.publish, r.replicate, r.fsync_copy))
                .collect();
            format!("{n}: {}", v.join(", "))
        })
        .collect();
    println!(
        "\nEvery run (publish / replicate / copy + fsync, s): {}.",
        all.join("; ")
    );
    Ok(())
}
