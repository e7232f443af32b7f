//! `bench freshness` (#9): how long after a snapshot is complete (its
//! marker file written) every replica serves it, for a ~1% delta over the
//! index, with replicas that long-poll the master (the default) and, in
//! the same run on the same master and data directories, with replicas
//! that poll every interval instead (`--long-poll false`).
//!
//! The end of each measurement is the latest `last_swap_at` of the
//! replicas (their own clock, milliseconds), not the moment this program
//! noticed it. Before each marker the bench waits 2 s plus a random part
//! of the poll interval, so that the marker falls anywhere in the interval
//! pollers' cycles, as a real snapshot's does.

use std::time::Duration;

use anyhow::Result;
use indexswarm::units::human_bytes;
use rand::Rng;

use crate::cluster::{loadavg, median_of, print_load};
use crate::common::{data, dir_bytes, header};
use crate::fleet::{load1, others_busy, spread, Fleet};
use crate::Cli;

struct Run {
    mode: &'static str,
    n: usize,
    version: u64,
    changed: u64,
    visible: f64,
    first: f64,
    median: f64,
    last: f64,
    downloaded: f64,
    load: String,
    busy: String,
}

pub(crate) fn bench_freshness(
    cli: &Cli,
    size: u64,
    replicas: usize,
    change_pct: f64,
    repeat: usize,
    interval: u64,
) -> Result<()> {
    let load = loadavg();
    let base = data(&cli.work, size)?.join("snap");
    let total = dir_bytes(&base);
    let new_bytes = (total as f64 * change_pct / 100.0) as u64;
    let iv = interval.to_string();
    let long: Vec<&str> = vec!["--poll-interval-secs", &iv];
    let polled: Vec<&str> = vec!["--poll-interval-secs", &iv, "--long-poll", "false"];

    let mut f = Fleet::start(&cli.work, "freshness", &base, replicas, &[], &long)?;
    let m = f.publish(0)?;
    let swaps = f.wait_all_on(m.version, Duration::from_secs(3600))?;
    let v1 = (spread(&swaps.iter().map(|s| s.at_ms).collect::<Vec<_>>()).2 - m.marker_ms) / 1000.0;
    eprintln!(
        "version 1 ({}) on all {replicas} replicas {v1:.2} s after its marker",
        human_bytes(total)
    );

    let mut runs = Vec::new();
    for (mode, flags) in [("long poll", &long), ("interval poll", &polled)] {
        if mode == "interval poll" {
            f.stop_replicas();
            f.start_replicas(replicas, flags)?;
            f.wait_live(f.version, Duration::from_secs(120))?;
        }
        for n in 1..=repeat.max(1) {
            let pause = 2.0 + rand::thread_rng().gen_range(0.0..interval as f64);
            std::thread::sleep(Duration::from_secs_f64(pause));
            let busy = others_busy();
            let load = load1();
            let m = f.publish(new_bytes)?;
            let swaps = f.wait_all_on(m.version, Duration::from_secs(600))?;
            let visible = f.visible_ms(m.version, Duration::from_secs(10))?;
            let rel: Vec<f64> = swaps
                .iter()
                .map(|s| (s.at_ms - m.marker_ms) / 1000.0)
                .collect();
            let (first, median, last) = spread(&rel);
            let downloaded = median_of(
                &swaps
                    .iter()
                    .map(|s| s.downloaded as f64)
                    .collect::<Vec<_>>(),
            );
            eprintln!(
                "{mode} {n}: version {} on all replicas {last:.2} s after its marker",
                m.version
            );
            runs.push(Run {
                mode,
                n,
                version: m.version,
                changed: m.changed,
                visible: (visible - m.marker_ms) / 1000.0,
                first,
                median,
                last,
                downloaded,
                load,
                busy,
            });
        }
    }
    drop(f);

    header(&format!(
        "freshness: marker file → all {replicas} replicas serve a {change_pct:.1}% delta over {}, long poll against polling every {interval} s ±20%, {} runs each",
        human_bytes(total),
        repeat.max(1)
    ));
    print_load(&load);
    println!(
        "Version 1 (everything downloaded) served by all {replicas} replicas {v1:.2} s after its marker.\n"
    );
    println!("| replicas | run | version | new bytes | marker → visible on the master (s) | marker → first replica swapped (s) | median replica (s) | **last replica** (s) | downloaded per replica (median) | load (1 min) | also running at the start (CPU over 0.5 s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | **{:.2}** | {} | {} | {} |",
            r.mode,
            r.n,
            r.version,
            human_bytes(r.changed),
            r.visible,
            r.first,
            r.median,
            r.last,
            human_bytes(r.downloaded as u64),
            r.load,
            r.busy
        );
    }
    let med = |mode: &str| {
        median_of(
            &runs
                .iter()
                .filter(|r| r.mode == mode)
                .map(|r| r.last)
                .collect::<Vec<_>>(),
        )
    };
    let (lp, ip) = (med("long poll"), med("interval poll"));
    println!(
        "\nMedian freshness (marker → the last of {replicas} replicas serving it): long poll {lp:.2} s, polling every {interval} s {ip:.2} s; long poll / interval poll = {:.3} ({:.1}× sooner).",
        lp / ip,
        ip / lp
    );
    Ok(())
}
