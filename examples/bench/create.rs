//! `bench create`: `indexswarm create` against `mktorrent -t 2` and the SHA-1 limit.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::common::{best_of, create_torrent, data, dir_bytes, header, mb, run_ok};
use crate::Cli;

pub(crate) fn bench_create(cli: &Cli, size: u64) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let snap = dir.join("snap");
    let total = dir_bytes(&snap);
    let largest = walkdir::WalkDir::new(&snap)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .context("data")?;
    let largest_len = largest.metadata()?.len();
    let single = |tool: &'static [&'static str]| {
        best_of(cli.runs, || {
            let t = Instant::now();
            let mut c = Command::new(tool[0]);
            c.args(&tool[1..]).arg(largest.path()).stdout(Stdio::null());
            run_ok(c)?;
            Ok(t.elapsed().as_secs_f64())
        })
    };
    let sha1sum = single(&["sha1sum"])?;
    let openssl = single(&["openssl", "dgst", "-sha1"])?;
    // The faster single-core hasher sets the limit (openssl uses SHA-NI; sha1sum may not).
    let one_core = mb(largest_len, sha1sum.min(openssl));
    let ours = |extra: &'static [&'static str]| {
        best_of(cli.runs, || {
            let t = Instant::now();
            create_torrent(
                &cli.work,
                &snap,
                "bench-create.torrent",
                &[&["--piece-length", "512K"][..], extra].concat(),
            )?;
            Ok(t.elapsed().as_secs_f64())
        })
    };
    let ours_plain = ours(&[])?;
    let ours_aligned = ours(&["--align-files"])?;
    let mk = best_of(cli.runs, || {
        let out = cli.work.join("bench-mk.torrent");
        let _ = std::fs::remove_file(&out);
        let t = Instant::now();
        let mut c = Command::new("mktorrent");
        c.args([
            "-l",
            "19",
            "-t",
            "2",
            "-a",
            "http://127.0.0.1:1/announce",
            "-o",
        ])
        .arg(&out)
        .arg(&snap);
        c.stdout(Stdio::null());
        run_ok(c)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    header(&format!(
        "create: {} in {} files (best of {})",
        indexswarm::units::human_bytes(total),
        walkdir::WalkDir::new(&snap).into_iter().count() - 1,
        cli.runs
    ));
    let limit = 2.0 * one_core;
    println!(
        "| tool | seconds | MB/s | speed vs mktorrent -t 2 | share of the limit (2 × the faster one-core hasher = {limit:.0} MB/s) |"
    );
    println!("|---|---|---|---|---|");
    for (name, secs) in [
        ("indexswarm create", ours_plain),
        ("indexswarm create --align-files", ours_aligned),
        ("mktorrent -t 2", mk),
    ] {
        let r = mb(total, secs);
        println!(
            "| {name} | {secs:.3} | {r:.0} | {:.2} | {:.0}% |",
            mk / secs,
            r / limit * 100.0
        );
    }
    println!(
        "\nOne core, on the largest file ({}): sha1sum {:.0} MB/s, openssl dgst -sha1 {:.0} MB/s; the limit is twice the faster.",
        indexswarm::units::human_bytes(largest_len),
        mb(largest_len, sha1sum),
        mb(largest_len, openssl)
    );
    Ok(())
}
