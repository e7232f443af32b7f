//! `bench skew` (#9): the swap skew of a fleet, the last replica's swap
//! minus the first's (each replica's `last_swap_at`), with `rollout =
//! "independent"` (the default: each replica swaps when its download ends)
//! against `rollout = "fleet"` (replicas stage, the master activates once
//! all have, the activation reaches them through their long polls). Same
//! base data and the same deltas (same seeds) for both, one after the
//! other in one run; each gets its own master and replicas, started empty.

use std::time::Duration;

use anyhow::Result;
use indexswarm::units::human_bytes;

use crate::cluster::{loadavg, median_of, print_load};
use crate::common::{data, dir_bytes, header};
use crate::fleet::{load1, others_busy, spread, Fleet};
use crate::Cli;

struct Run {
    policy: &'static str,
    version: u64,
    changed: u64,
    skew_ms: f64,
    master_skew: Option<f64>,
    first: f64,
    last: f64,
    load: String,
    busy: String,
}

pub(crate) fn bench_skew(
    cli: &Cli,
    size: u64,
    replicas: usize,
    change_pct: f64,
    repeat: usize,
) -> Result<()> {
    let load = loadavg();
    let base = data(&cli.work, size)?.join("snap");
    let total = dir_bytes(&base);
    let new_bytes = (total as f64 * change_pct / 100.0) as u64;
    let mut runs = Vec::new();
    for policy in ["independent", "fleet"] {
        let tag = format!("skew-{policy}");
        let mut f = Fleet::start(
            &cli.work,
            &tag,
            &base,
            replicas,
            &["--rollout", policy],
            &[],
        )?;
        for k in 0..=repeat.max(1) {
            // Version 1 is everything; then the deltas.
            let bytes = if k == 0 { 0 } else { new_bytes };
            std::thread::sleep(Duration::from_secs(2));
            let busy = others_busy();
            let load = load1();
            let m = f.publish(bytes)?;
            let swaps = f.wait_all_on(m.version, Duration::from_secs(3600))?;
            let view = f.rollout_done(m.version, Duration::from_secs(15));
            let at: Vec<f64> = swaps.iter().map(|s| s.at_ms).collect();
            let (lo, _, hi) = spread(&at);
            eprintln!(
                "{policy}: version {} skew {:.0} ms, last replica {:.2} s after the marker",
                m.version,
                hi - lo,
                (hi - m.marker_ms) / 1000.0
            );
            runs.push(Run {
                policy,
                version: m.version,
                changed: if k == 0 { total } else { m.changed },
                skew_ms: hi - lo,
                master_skew: view["swap_skew_seconds"].as_f64(),
                first: (lo - m.marker_ms) / 1000.0,
                last: (hi - m.marker_ms) / 1000.0,
                load,
                busy,
            });
        }
        let root = f.root.clone();
        drop(f);
        let _ = std::fs::remove_dir_all(root);
    }

    header(&format!(
        "skew: swap skew across {replicas} replicas on loopback, `rollout = \"fleet\"` against `\"independent\"`, {} then {} deltas of {change_pct:.1}%",
        human_bytes(total),
        repeat.max(1)
    ));
    print_load(&load);
    println!("| rollout | version | new bytes | **swap skew** (ms): last `last_swap_at` − first | master's `/rollout` `swap_skew_seconds` | marker → first swap (s) | marker → last swap (s) | load (1 min) | also running at the start (CPU over 0.5 s) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {} | **{:.0}** | {} | {:.2} | {:.2} | {} | {} |",
            r.policy,
            r.version,
            human_bytes(r.changed),
            r.skew_ms,
            r.master_skew
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "—".into()),
            r.first,
            r.last,
            r.load,
            r.busy
        );
    }
    let med = |p: &str, f: fn(&Run) -> f64| {
        median_of(
            &runs
                .iter()
                .filter(|r| r.policy == p && r.version > 1)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let (ind, fleet) = (
        med("independent", |r| r.skew_ms),
        med("fleet", |r| r.skew_ms),
    );
    let (ind_last, fleet_last) = (med("independent", |r| r.last), med("fleet", |r| r.last));
    println!(
        "\nMedian over the deltas: swap skew fleet {fleet:.0} ms, independent {ind:.0} ms (fleet / independent = {:.3}); target ≤ 100 ms in fleet mode: {}. Marker → last swap: fleet {fleet_last:.2} s, independent {ind_last:.2} s.",
        fleet / ind,
        if fleet <= 100.0 { "met" } else { "missed" }
    );
    Ok(())
}
