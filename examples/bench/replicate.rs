//! `bench replicate`: master + N replicas in namespaces, against the bound
//! and an HTTP fan-out.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::common::{data, dir_bytes, header, http_json, http_text, indexswarm, wait_for, P};
use crate::netns::{kumar_ross, Netns};
use crate::Cli;

pub(crate) fn bench_replicate(
    cli: &Cli,
    size: u64,
    replicas: usize,
    mbit: u64,
    no_http: bool,
) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let u = mbit as f64 * 1e6 / 8.0;
    let root = cli.work.join("replicate");
    let _ = std::fs::remove_dir_all(&root);
    let snaps = root.join("snaps");
    std::fs::create_dir_all(&snaps)?;
    let net = Netns::up(replicas + 1, mbit)?;
    let base = format!("http://{}:7070", Netns::ip(0));
    let mut c = Netns::cmd(0, &indexswarm());
    c.args(["master", "--snapshots-dir"]).arg(&snaps);
    c.args([
        "--http-listen",
        &format!("{}:7070", Netns::ip(0)),
        "--peer-listen",
        &format!("{}:6881", Netns::ip(0)),
    ]);
    c.args([
        "--public-url",
        &base,
        "--settle-secs",
        "3600",
        "--announce-interval-secs",
        "5",
    ]);
    let _master = P::spawn("rep-master", c, &logs)?;
    wait_for(Duration::from_secs(20), "master", || {
        http_text(&format!("{base}/healthz")).is_ok()
    })?;
    let mut procs = Vec::new();
    for i in 1..=replicas {
        let mut c = Netns::cmd(i, &indexswarm());
        c.args(["replica", "--master-url", &base, "--data-dir"])
            .arg(root.join(format!("r{i}")));
        c.args([
            "--http-listen",
            &format!("{}:7071", Netns::ip(i)),
            "--peer-listen",
            &format!("{}:6882", Netns::ip(i)),
        ]);
        c.args(["--poll-interval-secs", "1"]);
        procs.push(P::spawn(&format!("rep-replica-{i}"), c, &logs)?);
    }
    for i in 1..=replicas {
        wait_for(Duration::from_secs(20), "replica", || {
            http_text(&format!("http://{}:7071/healthz", Netns::ip(i))).is_ok()
        })?;
    }
    let status = |i: usize| {
        http_json("GET", &format!("http://{}:7071/status", Netns::ip(i)), None).unwrap_or_default()
    };
    let phase = |version: u64, name: &str| -> Result<(f64, Vec<serde_json::Value>, u64, u64)> {
        let sent0: Vec<u64> = (0..=replicas).map(Netns::sent).collect();
        let start = Instant::now();
        let r = http_json(
            "POST",
            &format!("{base}/snapshot"),
            Some(&format!("{{\"path\": \"{name}\"}}")),
        )?;
        if r["version"] != version {
            bail!("publish answered {r}");
        }
        let published = start.elapsed().as_secs_f64();
        let start = Instant::now();
        wait_for(Duration::from_secs(3600), "every replica", || {
            (1..=replicas).all(|i| status(i)["current_version"] == version)
        })?;
        let secs = start.elapsed().as_secs_f64();
        let sts: Vec<serde_json::Value> = (1..=replicas).map(status).collect();
        let sent: Vec<u64> = (0..=replicas).map(|i| Netns::sent(i) - sent0[i]).collect();
        eprintln!("version {version}: publish {published:.1}s, replication {secs:.1}s");
        Ok((secs, sts, sent[0], sent.iter().sum()))
    };
    // Version 1.
    let v1 = "snapshot.20261124120000000";
    std::fs::create_dir_all(snaps.join(v1))?;
    for e in std::fs::read_dir(dir.join("snap"))? {
        let e = e?;
        std::fs::hard_link(e.path(), snaps.join(v1).join(e.file_name()))?;
    }
    let f1 = dir_bytes(&snaps.join(v1));
    let (t1, _, seed1, all1) = phase(1, v1)?;
    // Version 2: a new segment of 5% and a rewritten commit point.
    let v2 = "snapshot.20261124121500000";
    let staging = root.join(v2);
    indexswarm::demo::next_snapshot(&snaps.join(v1), &staging, f1 / 20, 7)?;
    std::fs::rename(&staging, snaps.join(v2))?;
    let changed: u64 = ["_n.cfs", "_n.cfe", "_n.si", "segments_2"]
        .iter()
        .map(|f| {
            std::fs::metadata(snaps.join(v2).join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let (t2, sts2, _, _) = phase(2, v2)?;
    drop(procs);

    // Plain HTTP fan-out: every replica fetches every file from the master's host.
    let http_secs = if no_http {
        None
    } else {
        let mut c = Netns::cmd(0, Path::new("/usr/bin/python3"));
        c.args([
            "-m",
            "http.server",
            "8000",
            "--bind",
            &Netns::ip(0),
            "--directory",
        ])
        .arg(snaps.join(v1));
        let _srv = P::spawn("rep-http", c, &logs)?;
        wait_for(Duration::from_secs(20), "http server", || {
            std::net::TcpStream::connect((Netns::ip(0).as_str(), 8000)).is_ok()
        })?;
        let files: Vec<String> = std::fs::read_dir(snaps.join(v1))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let start = Instant::now();
        let mut clients = Vec::new();
        for i in 1..=replicas {
            let d = root.join(format!("http{i}"));
            std::fs::create_dir_all(&d)?;
            let script: String = files
                .iter()
                .map(|f| {
                    format!(
                        "curl -sf -o '{}/{f}' 'http://{}:8000/{f}' || exit 1; ",
                        d.display(),
                        Netns::ip(0)
                    )
                })
                .collect();
            let mut c = Netns::cmd(i, Path::new("/bin/sh"));
            c.arg("-c").arg(script);
            clients.push(P::spawn(&format!("rep-http-{i}"), c, &logs)?);
        }
        wait_for(Duration::from_secs(7200), "HTTP fan-out", || {
            clients.iter_mut().all(|c| c.done().is_some())
        })?;
        Some(start.elapsed().as_secs_f64())
    };
    drop(net);

    let bound = kumar_ross(f1, replicas, u);
    header(&format!(
        "replicate: master + {replicas} replicas, each in its own network namespace with upload capped at {mbit} Mbit/s ({:.1} MB/s)",
        u / 1e6
    ));
    println!("| | seconds | vs Kumar–Ross bound ({bound:.1} s) |");
    println!("|---|---|---|");
    println!(
        "| version 1 ({}) to every replica, indexswarm | {t1:.1} | {:.2} |",
        indexswarm::units::human_bytes(f1),
        t1 / bound
    );
    if let Some(h) = http_secs {
        println!("| version 1, plain HTTP fan-out (each replica GETs every file from the master's host) | {h:.1} | {:.2} |", h / bound);
        println!(
            "\nindexswarm is {:.1}× faster than the HTTP fan-out.",
            h / t1
        );
    }
    println!(
        "\nVersion 1: the master sent {:.0}% of all bytes on the wire.",
        seed1 as f64 * 100.0 / all1 as f64
    );
    println!(
        "\nVersion 2 changes {} ({:.1}% of {}); replicated in {t2:.1} s.\n",
        indexswarm::units::human_bytes(changed),
        changed as f64 * 100.0 / f1 as f64,
        indexswarm::units::human_bytes(f1)
    );
    println!("| replica | bytes downloaded | bytes reused | downloaded / changed |");
    println!("|---|---|---|---|");
    for (i, s) in sts2.iter().enumerate() {
        let d = s["bytes_downloaded"].as_u64().unwrap_or(0);
        println!(
            "| {} | {d} | {} | {:.3} |",
            i + 1,
            s["bytes_reused"].as_u64().unwrap_or(0),
            d as f64 / changed as f64
        );
    }
    std::io::stdout().flush()?;
    Ok(())
}
