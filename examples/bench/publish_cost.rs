//! `bench publish-cost` (#8): publishing a version that adds ~1% to a big
//! index whose other files are hard links of the published version, against
//! hashing the changed bytes and against a full rehash of the same snapshot,
//! all in one run. Time is measured from the marker file appearing to
//! `/versions/latest` naming the version, on a real `indexswarm master`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use indexswarm::demo::{write_generated, Fill};
use indexswarm::units::human_bytes;

use crate::cluster::{
    cp_al, loadavg, median_of, print_load, rss_mib, start_master, time_cmd, wait_published, Node,
};
use crate::common::{data, dir_bytes, header, indexswarm};
use crate::Cli;

pub(crate) const MARKER: &str = "READY";

/// One snapshot: `snapshot.<n>`, built as `<name>.tmp` (which the watcher
/// ignores) from a hard-linked copy of `prev` without its marker and
/// commit point, plus `new_bytes` in a new segment and a new commit point.
/// Returns the directory (renamed into place, marker not yet written) and
/// the new files.
pub(crate) fn next_snapshot(
    snaps: &Path,
    prev: &Path,
    n: u64,
    new_bytes: u64,
) -> Result<(PathBuf, Vec<PathBuf>)> {
    let name = format!("snapshot.{:017}", 20261201000000000 + n);
    let tmp = snaps.join(format!("{name}.tmp"));
    cp_al(prev, &tmp)?;
    for e in std::fs::read_dir(&tmp)? {
        let e = e?;
        let f = e.file_name().to_string_lossy().into_owned();
        if f == MARKER || (new_bytes > 0 && f.starts_with("segments_")) {
            std::fs::remove_file(e.path())?;
        }
    }
    let mut new = Vec::new();
    if new_bytes > 0 {
        for (ext, len) in [("cfs", new_bytes), ("cfe", 420), ("si", 390)] {
            let p = tmp.join(format!("_n{n}.{ext}"));
            write_generated(&p, len, 7000 + n * 10 + len % 7, Fill::Random)?;
            new.push(p);
        }
        let p = tmp.join(format!("segments_{}", n + 1));
        write_generated(&p, 1600, 9000 + n, Fill::Random)?;
        new.push(p);
    }
    let dir = snaps.join(&name);
    std::fs::rename(&tmp, &dir)?;
    indexswarm::util::sync_dir(snaps)?;
    let new = new
        .into_iter()
        .map(|p| dir.join(p.file_name().unwrap_or_default()))
        .collect();
    Ok((dir, new))
}

/// Writes the marker and waits for `version` at `/versions/latest`:
/// seconds from the marker to the version being visible.
fn mark_and_wait(master: &Node, dir: &Path, version: u64) -> Result<f64> {
    // Let the scan that the rename's inotify events started finish, so the
    // marker is noticed by its own event, as a marker written after a
    // finished snapshot is.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    std::fs::File::create(dir.join(MARKER))?;
    wait_published(master, version, t0)
}

fn last_publish(master: &Node) -> (f64, u64, u64) {
    let s = master.status();
    let lp = &s["last_publish"];
    (
        lp["seconds"].as_f64().unwrap_or(f64::NAN),
        lp["hashed_bytes"].as_u64().unwrap_or(0),
        lp["reused_bytes"].as_u64().unwrap_or(0),
    )
}

struct Rep {
    links: f64,
    links_master: (f64, u64, u64),
    full: f64,
    full_master: (f64, u64, u64),
    openssl: f64,
    create: f64,
    changed: u64,
}

pub(crate) fn bench_publish_cost(
    cli: &Cli,
    size: u64,
    change_pct: f64,
    repeat: usize,
) -> Result<()> {
    let load = loadavg();
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let base = data(&cli.work, size)?.join("snap");
    let total = dir_bytes(&base);
    let root = cli.work.join("publish-cost");
    let _ = std::fs::remove_dir_all(&root);
    let snaps = root.join("snaps");
    std::fs::create_dir_all(&snaps)?;
    let new_bytes = (total as f64 * change_pct / 100.0) as u64;
    let marker = ["--marker-file", MARKER];

    let master = start_master(&logs, "pc-master", &snaps, &marker)?;
    let (mut prev, _) = next_snapshot(&snaps, &base, 0, 0)?;
    let first = mark_and_wait(&master, &prev, 1)?;
    let first_master = last_publish(&master);
    eprintln!("version 1 ({}): {first:.2} s", human_bytes(total));

    let mut reps = Vec::new();
    for k in 1..=repeat.max(1) as u64 {
        let (dir, new) = next_snapshot(&snaps, &prev, k, new_bytes)?;
        let changed: u64 = new
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        let links = mark_and_wait(&master, &dir, k + 1)?;
        let links_master = last_publish(&master);

        // The raw cost of hashing the changed bytes, on the same files.
        let mut openssl = f64::MAX;
        let mut create = f64::MAX;
        let only = root.join(format!("changed-{k}"));
        std::fs::create_dir_all(&only)?;
        for p in &new {
            std::fs::hard_link(p, only.join(p.file_name().unwrap_or_default()))?;
        }
        for _ in 0..3 {
            let mut c = Command::new("openssl");
            c.args(["dgst", "-sha1"]).args(&new);
            openssl = openssl.min(time_cmd(c)?);
            let mut c = Command::new(indexswarm());
            c.arg("create")
                .arg(&only)
                .arg("-o")
                .arg(root.join("changed.torrent"))
                .arg("--align-files");
            create = create.min(time_cmd(c)?);
        }

        // Full rehash: the same snapshot (hard links to the same inodes, so
        // the same page cache) published by a master with a fresh state.
        let fresh = root.join(format!("fresh-{k}"));
        std::fs::create_dir_all(&fresh)?;
        let other = start_master(&logs, "pc-fresh", &fresh, &marker)?;
        let (fdir, _) = next_snapshot(&fresh, &dir, 0, 0)?;
        let full = mark_and_wait(&other, &fdir, 1)?;
        let full_master = last_publish(&other);
        drop(other);
        let _ = std::fs::remove_dir_all(&fresh);
        let _ = std::fs::remove_dir_all(&only);
        eprintln!(
            "run {k}: hard links {links:.2} s, full rehash {full:.2} s, openssl {openssl:.3} s, create {create:.3} s"
        );
        reps.push(Rep {
            links,
            links_master,
            full,
            full_master,
            openssl,
            create,
            changed,
        });
        prev = dir;
    }
    let master_hwm = rss_mib(master.pid()).1;
    drop(master);

    header(&format!(
        "publish-cost: a {:.1}% change over {}, unchanged files hard links (`cp -al`), marker file → `/versions/latest`, {} runs",
        change_pct,
        human_bytes(total),
        reps.len()
    ));
    print_load(&load);
    println!(
        "Version 1 (everything hashed, empty state): {first:.2} s from the marker, master's own publish {:.2} s, {} hashed.\n",
        first_master.0,
        human_bytes(first_master.1)
    );
    println!("| run | changed bytes | hard links: marker → visible (s) | master's publish (s) | hashed / reused | full rehash, fresh state (s) | its hashed bytes | `openssl dgst -sha1` of the changed files (s) | `indexswarm create --align-files` of the changed files (s) | hard links vs full rehash | target 1.5 × hash + 0.5 s (s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in reps.iter().enumerate() {
        let hash = r.openssl.min(r.create);
        println!(
            "| {} | {} | {:.2} | {:.2} | {} / {} | {:.2} | {} | {:.3} | {:.3} | {:.3} | {:.2} |",
            i + 1,
            human_bytes(r.changed),
            r.links,
            r.links_master.0,
            human_bytes(r.links_master.1),
            human_bytes(r.links_master.2),
            r.full,
            human_bytes(r.full_master.1),
            r.openssl,
            r.create,
            r.links / r.full,
            1.5 * hash + 0.5
        );
    }
    let med = |f: fn(&Rep) -> f64| median_of(&reps.iter().map(f).collect::<Vec<_>>());
    let (links, full) = (med(|r| r.links), med(|r| r.full));
    let hash = med(|r| r.openssl.min(r.create));
    println!(
        "\nMedians: hard links {links:.2} s, full rehash {full:.2} s ({:.1}× faster), hashing the changed bytes {hash:.3} s; target ≤ {:.2} s: {}.",
        full / links,
        1.5 * hash + 0.5,
        if links <= 1.5 * hash + 0.5 { "met" } else { "missed" }
    );
    println!(
        "\nPeak RSS (VmHWM) of the master over the run (version 1 and {} more, verifier on): {master_hwm:.1} MiB.",
        reps.len()
    );
    Ok(())
}
