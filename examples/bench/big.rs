//! `bench big` (#8): a big index of thousands of files (a few huge
//! segments, thousands of small files) published by a master and
//! replicated to N replicas on loopback, each swapping to it; time against
//! the loopback throughput measured in the same run, peak RSS and open
//! descriptors of every process.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use indexswarm::demo::Fill;
use indexswarm::units::human_bytes;

use crate::cluster::{
    count_files, loadavg, poke, print_load, publish_first, rss_mib, start_master, start_replica,
    time_cmd, wait_replicas, FdWatch,
};
use crate::common::{dir_bytes, header, indexswarm};
use crate::Cli;

/// One TCP stream over loopback, `bytes` through it: bytes per second.
fn loopback_rate(bytes: u64) -> Result<f64> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let r = s.read(&mut buf)?;
            if r == 0 {
                return Ok(n);
            }
            n += r as u64;
        }
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let buf = indexswarm::demo::pseudo_random(5, 1 << 20);
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    drop(s);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(got as f64 / t.elapsed().as_secs_f64())
}

pub(crate) fn bench_big(
    cli: &Cli,
    size: u64,
    files: usize,
    replicas: usize,
    compressible: bool,
) -> Result<()> {
    let load = loadavg();
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let root = cli.work.join("big");
    let snaps = root.join("snaps");
    let snap = snaps.join("snapshot.1");
    let fill = if compressible {
        Fill::Compressible
    } else {
        Fill::Random
    };
    if !snap.join("segments_1").exists() {
        let _ = std::fs::remove_dir_all(&root);
        eprintln!(
            "generating {} in {files} files ({fill:?}) in {}",
            human_bytes(size),
            snap.display()
        );
        let t = Instant::now();
        indexswarm::demo::generate_index(&snap, size, files, 42, fill)?;
        eprintln!("generated in {:.0} s", t.elapsed().as_secs_f64());
    }
    for d in std::fs::read_dir(&root)?.flatten() {
        if d.file_name() != "snaps" {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
    let _ = std::fs::remove_dir_all(snaps.join(".indexswarm"));
    let total = dir_bytes(&snap);
    let nfiles = count_files(&snap);
    let df = Command::new("df")
        .arg("-h")
        .arg(&cli.work)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    eprintln!("{df}");

    // References, same run: one loopback TCP stream, and the hashing the
    // master does (`create --align-files` of the same directory).
    let lo = loopback_rate(8 << 30)?;
    eprintln!("loopback: {:.0} MB/s", lo / 1e6);
    let mut c = Command::new(indexswarm());
    c.arg("create")
        .arg(&snap)
        .arg("-o")
        .arg(root.join("ref.torrent"))
        .arg("--align-files");
    let create = time_cmd(c)?;
    eprintln!("create --align-files: {create:.1} s");

    let master = start_master(&logs, "big-master", &snaps, &["--settle-secs", "3600"])?;
    let mut reps = Vec::new();
    for i in 0..replicas {
        reps.push(start_replica(
            &logs,
            &format!("big-replica-{i}"),
            &master.base,
            &root.join(format!("replica-{i}")),
        )?);
    }
    let mut pids = vec![master.pid()];
    pids.extend(reps.iter().map(|r| r.pid()));
    let fds = FdWatch::start(pids);
    let publish = publish_first(&master)?;
    let lp = master.status()["last_publish"].clone();
    eprintln!("published in {publish:.1} s: {lp}");
    let t = Instant::now();
    for r in &reps {
        poke(r);
    }
    let done = wait_replicas(&reps, 1, t)?;
    let replicate = done.iter().copied().fold(0.0, f64::max);
    std::thread::sleep(Duration::from_secs(1));
    let mut rows = Vec::new();
    for (i, r) in reps.iter().enumerate() {
        let s = r.status();
        let data = root.join(format!("replica-{i}"));
        let current = std::fs::read_link(data.join("current"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "none".into());
        rows.push((
            format!("replica {}", i + 1),
            rss_mib(r.pid()).1,
            fds.peak(r.pid()),
            format!(
                "v{} in {:.1} s, `current` → {current}, {} files, {} downloaded",
                s["current_version"],
                done[i],
                count_files(&data.join("current/")),
                human_bytes(s["bytes_downloaded"].as_u64().unwrap_or(0))
            ),
        ));
    }
    let master_row = (
        "master".to_string(),
        rss_mib(master.pid()).1,
        fds.peak(master.pid()),
        format!(
            "published in {publish:.1} s ({} hashed, {} reused)",
            human_bytes(lp["hashed_bytes"].as_u64().unwrap_or(0)),
            human_bytes(lp["reused_bytes"].as_u64().unwrap_or(0))
        ),
    );
    drop(fds);
    drop(reps);
    drop(master);

    let floor = replicas as f64 * total as f64 / lo;
    header(&format!(
        "big: {} in {nfiles} files ({} data) published and replicated to {replicas} replicas on loopback",
        human_bytes(total),
        if compressible {
            "compressible-but-unique"
        } else {
            "random"
        }
    ));
    print_load(&load);
    println!("| | seconds | vs reference |");
    println!("|---|---|---|");
    println!("| `indexswarm create --align-files` of the same directory | {create:.1} | 1.00 |");
    println!(
        "| publish (POST /snapshot → version visible) | {publish:.1} | {:.2}× create |",
        publish / create
    );
    println!(
        "| one TCP stream over loopback, {replicas} × {} | {floor:.1} | 1.00 ({:.0} MB/s) |",
        human_bytes(total),
        lo / 1e6
    );
    println!(
        "| hashing bound: {replicas} × the `create` above (every replica verifies every piece, padding included, on the same two cores) | {:.1} | 1.00 |",
        replicas as f64 * create
    );
    println!(
        "| replicate: version visible → every replica swapped | {replicate:.1} | {:.2}× loopback, {:.2}× the hashing bound |",
        replicate / floor,
        replicate / (replicas as f64 * create)
    );
    println!("\n| process | peak RSS (VmHWM, MiB) | max open fds | |");
    println!("|---|---|---|---|");
    for (name, hwm, fd, note) in std::iter::once(master_row).chain(rows) {
        println!("| {name} | {hwm:.1} | {fd} | {note} |");
    }
    println!(
        "\n`df -h` of the work directory before the run:\n\n```text\n{}```",
        df
    );
    Ok(())
}
