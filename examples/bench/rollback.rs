//! `bench rollback` (#9): a fleet rollout (`--rollout fleet`, with an API
//! token) has N replicas on version 2; `POST /versions/1/activate` pins
//! them back to version 1, which every replica still keeps on disk. The
//! time is from the request being sent to the last replica's
//! `last_swap_at`; every replica's `bytes_downloaded` for that cycle must
//! stay 0. Then `POST /versions/2/activate` rolls forward again (also on
//! disk), and the pair is repeated. References in the same run: version 1
//! downloaded afresh by the whole fleet, and version 2 (the delta) rolled
//! out by publication.
//!
//! `bytes_downloaded` is per cycle, and in a fleet rollout the download
//! happens in the staging cycle while the activation's swap cycle reuses
//! the staged copy (0 downloaded even for a new version). So the bench
//! also counts what crossed the network: the payload the master and every
//! replica uploaded during each step. A replica that had to fetch version
//! 1 again would show in both.

use std::time::Duration;

use anyhow::{bail, Result};
use indexswarm::units::human_bytes;

use crate::cluster::{loadavg, median_of, print_load};
use crate::common::{data, dir_bytes, header, metric};
use crate::fleet::{load1, now_ms, others_busy, spread, Fleet, Swap};
use crate::Cli;

const TOKEN: &str = "bench-api-token";

struct Run {
    what: String,
    first: f64,
    last: f64,
    skew_ms: f64,
    /// Payload uploaded by the master and every replica during the step:
    /// every byte that crossed the network, whoever fetched it.
    moved: u64,
    downloaded: u64,
    nonzero: usize,
    reused_all: bool,
    load: String,
    busy: String,
}

/// Payload bytes uploaded so far by the master and every replica
/// (`indexswarm_uploaded_bytes_total`, `/status` `bytes_uploaded`).
fn uploaded(f: &Fleet) -> Result<u64> {
    let text = f.api.text(&format!("{}/metrics", f.master.base), None)?;
    let mut sum = metric(&text, "indexswarm_uploaded_bytes_total").unwrap_or(0.0) as u64;
    for r in &f.replicas {
        sum += f.api.get(&format!("{}/status", r.node.base))["bytes_uploaded"]
            .as_u64()
            .unwrap_or(0);
    }
    Ok(sum)
}

/// Seconds from `t0` to the first and the last swap, and the swaps' bytes.
fn timed(what: String, t0: f64, swaps: &[Swap], moved: u64, load: String, busy: String) -> Run {
    let at: Vec<f64> = swaps.iter().map(|s| s.at_ms).collect();
    let (lo, _, hi) = spread(&at);
    Run {
        what,
        first: (lo - t0) / 1000.0,
        last: (hi - t0) / 1000.0,
        skew_ms: hi - lo,
        moved,
        downloaded: swaps.iter().map(|s| s.downloaded).sum(),
        nonzero: swaps.iter().filter(|s| s.downloaded > 0).count(),
        reused_all: swaps.iter().all(|s| s.reused == s.total && s.total > 0),
        load,
        busy,
    }
}

pub(crate) fn bench_rollback(
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
    let mut f = Fleet::start(
        &cli.work,
        "rollback",
        &base,
        replicas,
        &["--rollout", "fleet", "--api-token", TOKEN],
        &[],
    )?;
    let mut runs = Vec::new();

    // References: version 1 afresh, version 2 by publication (from the
    // moment it is visible on the master, as an activation starts).
    for (bytes, what) in [
        (0, "version 1 downloaded afresh (published → all swapped)"),
        (
            new_bytes,
            "version 2, a delta, rolled out (published → all swapped)",
        ),
    ] {
        std::thread::sleep(Duration::from_secs(2));
        let (busy, load) = (others_busy(), load1());
        let up0 = uploaded(&f)?;
        let m = f.publish(bytes)?;
        let swaps = f.wait_all_on(m.version, Duration::from_secs(3600))?;
        let visible = f.visible_ms(m.version, Duration::from_secs(10))?;
        f.rollout_done(m.version, Duration::from_secs(15));
        let moved = uploaded(&f)?.saturating_sub(up0);
        runs.push(timed(what.to_string(), visible, &swaps, moved, load, busy));
    }
    let url = |v: u64| format!("{}/versions/{v}/activate", f.master.base);
    let refused = f.api.call("POST", &url(1), None, None)?.0;
    if refused != 401 {
        bail!("activation without the API token answered {refused}, not 401");
    }

    for n in 1..=repeat.max(1) {
        for (v, what) in [(1u64, "rollback to version 1"), (2, "forward to version 2")] {
            std::thread::sleep(Duration::from_secs(2));
            let (busy, load) = (others_busy(), load1());
            let up0 = uploaded(&f)?;
            let t0 = now_ms();
            let (status, body) = f.api.call("POST", &url(v), Some(TOKEN), None)?;
            if status != 200 {
                bail!("POST {} answered {status}: {body}", url(v));
            }
            let swaps = f.wait_all_on(v, Duration::from_secs(120))?;
            f.rollout_done(v, Duration::from_secs(15));
            let moved = uploaded(&f)?.saturating_sub(up0);
            let r = timed(format!("{what} ({n})"), t0, &swaps, moved, load, busy);
            eprintln!(
                "{}: last replica {:.3} s after the request, {} bytes downloaded, {} moved",
                r.what, r.last, r.downloaded, r.moved
            );
            runs.push(r);
        }
    }
    drop(f);

    header(&format!(
        "rollback: {replicas} replicas on loopback (`--rollout fleet`), `POST /versions/N/activate` to a version on disk; {} index, {change_pct:.1}% delta; {} rollbacks",
        human_bytes(total),
        repeat.max(1)
    ));
    print_load(&load);
    println!("| what | from → first replica swapped (s) | **→ last replica swapped** (s) | swap skew (ms) | bytes on the network (uploads of master + replicas) | `bytes_downloaded` of the swap cycle, all replicas | replicas with `bytes_downloaded` > 0 | every replica's `bytes_reused` = `bytes_total` | load (1 min) | also running at the start (CPU over 0.5 s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.3} | **{:.3}** | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.what,
            r.first,
            r.last,
            r.skew_ms,
            human_bytes(r.moved),
            human_bytes(r.downloaded),
            r.nonzero,
            if r.reused_all { "yes" } else { "no" },
            r.load,
            r.busy
        );
    }
    let med = |p: &str| {
        median_of(
            &runs
                .iter()
                .filter(|r| r.what.starts_with(p))
                .map(|r| r.last)
                .collect::<Vec<_>>(),
        )
    };
    let (back, fwd, fresh) = (
        med("rollback"),
        med("forward"),
        runs.first().map(|r| r.last).unwrap_or(f64::NAN),
    );
    let levers = || {
        runs.iter()
            .filter(|r| r.what.starts_with("rollback") || r.what.starts_with("forward"))
    };
    let moved: u64 = levers().map(|r| r.moved + r.downloaded).sum();
    println!(
        "\nMedian rollback {back:.3} s (target < 1 s: {}), forward activation {fwd:.3} s; downloading version 1 afresh took {fresh:.2} s, {:.0}× the rollback. Bytes moved or downloaded by every activation together: {moved} (target 0: {}). Activation without the token: 401.",
        if back < 1.0 { "met" } else { "missed" },
        fresh / back,
        if moved == 0 { "met" } else { "missed" }
    );
    Ok(())
}
