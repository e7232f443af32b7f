//! `bench publish`: a settled snapshot to a visible version, and the
//! master's memory while seeding.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::common::{
    best_of, create_torrent, data, dir_bytes, free_port, header, http_json, http_text, indexswarm,
    metric, status_kb, wait_for, Sampler, P,
};
use crate::Cli;

pub(crate) fn bench_publish(cli: &Cli, size: u64, leechers: usize) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let root = cli.work.join("publish");
    let _ = std::fs::remove_dir_all(&root);
    let snaps = root.join("snaps");
    std::fs::create_dir_all(&snaps)?;
    // The hashing limit on this data, measured now: our own `create`.
    let create = best_of(cli.runs, || {
        let t = Instant::now();
        create_torrent(
            &cli.work,
            &dir.join("snap"),
            "publish-ref.torrent",
            &["--align-files"],
        )?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let (http, peer) = (free_port(), free_port());
    let mut c = Command::new(indexswarm());
    c.args(["master", "--snapshots-dir"]).arg(&snaps);
    c.args([
        "--http-listen",
        &format!("127.0.0.1:{http}"),
        "--peer-listen",
        &format!("127.0.0.1:{peer}"),
        "--settle-secs",
        "1",
    ]);
    let master = P::spawn("publish-master", c, &logs)?;
    let base = format!("http://127.0.0.1:{http}");
    wait_for(Duration::from_secs(20), "master", || {
        http_text(&format!("{base}/healthz")).is_ok()
    })?;
    let mut publish_secs = Vec::new();
    for v in 1..=3u64 {
        let name = format!("snapshot.2026112412{v:02}00000");
        let staging = root.join(&name);
        // A hard-linked copy plus one new file: the master hashes every byte each time.
        std::fs::create_dir_all(&staging)?;
        for e in std::fs::read_dir(dir.join("snap"))? {
            let e = e?;
            std::fs::hard_link(e.path(), staging.join(e.file_name()))?;
        }
        std::fs::write(
            staging.join(format!("segments_{}", v + 1)),
            indexswarm::demo::pseudo_random(v, 2000),
        )?;
        std::fs::rename(&staging, snaps.join(&name))?;
        wait_for(Duration::from_secs(300), "the version", || {
            http_json("GET", &format!("{base}/versions/latest"), None)
                .map(|j| j["version"] == v)
                .unwrap_or(false)
        })?;
        let m = http_text(&format!("{base}/metrics"))?;
        let sum = metric(&m, "indexswarm_publish_duration_seconds_sum").unwrap_or(f64::NAN);
        publish_secs.push(sum - publish_secs.iter().sum::<f64>());
    }
    // Memory while seeding three versions to `leechers` leechers.
    let sampler = Sampler::start(vec![master.pid()]);
    let out = root.join("leechers");
    let mut procs = Vec::new();
    for i in 0..leechers {
        let v = (i % 3) + 1;
        let mut c = Command::new(indexswarm());
        c.arg("fetch")
            .arg(format!("{base}/versions/{v}/torrent"))
            .arg("--dir")
            .arg(out.join(i.to_string()));
        c.args(["--listen", &format!("127.0.0.1:{}", free_port())]);
        procs.push(P::spawn(&format!("publish-leech-{i}"), c, &logs)?);
    }
    let start = Instant::now();
    wait_for(Duration::from_secs(1200), "the leechers", || {
        procs.iter_mut().all(|p| p.done().is_some())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let ok = procs
        .iter_mut()
        .map(|p| p.done())
        .filter(|d| *d == Some(true))
        .count();
    let peaks = sampler.finish();
    let hwm = status_kb(master.pid(), "VmHWM:");
    let anon = peaks.get(&master.pid()).map(|p| p.0).unwrap_or(0);
    header(&format!(
        "publish: {} snapshot directory → visible version (master on loopback)",
        indexswarm::units::human_bytes(dir_bytes(&dir.join("snap")))
    ));
    println!("| | seconds |");
    println!("|---|---|");
    println!("| hashing limit: `indexswarm create --align-files` on the same data | {create:.2} |");
    for (i, s) in publish_secs.iter().enumerate() {
        println!("| version {}: settled → visible (master's publish duration) | {s:.2} ({:.2}× the limit) |", i + 1, s / create);
    }
    println!(
        "\nMaster seeding 3 versions to {leechers} concurrent leechers ({ok} finished, {:.1} s, {} moved): peak RssAnon {:.1} MiB, peak RSS (VmHWM, counts page cache mapped by nobody but includes heap) {:.1} MiB.",
        secs,
        indexswarm::units::human_bytes(dir_bytes(&out)),
        anon as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}
