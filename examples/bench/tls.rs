//! `bench tls` (#11): the 1→1 transfer of `bench transfer` (our seeder,
//! our `fetch`, loopback, 512 KiB pieces) of the same data as a plain
//! torrent and as an SSL torrent (`create --ssl-cert ca.pem`: the peer
//! wire runs over TLS, both sides with certificates from `indexswarm ca`),
//! alternating plain and TLS runs in one invocation. Time is the leecher's
//! wall time with process start, as in `bench transfer`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::cluster::{loadavg, median_of, print_load};
use crate::common::{
    cpu_secs, create_torrent, data, dir_bytes, free_port, header, indexswarm, mb, run_ok,
    start_tracker, wait_for, Sampler, P,
};
use crate::fleet::{load1, others_busy};
use crate::Cli;

struct Run {
    tls: bool,
    secs: f64,
    cpu: f64,
    seed_rss: u64,
    leech_rss: u64,
    load: String,
    busy: String,
}

fn cert_args(certs: &Path, node: &str) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        certs.join(format!("{node}.pem")).display().to_string(),
        "--tls-key".into(),
        certs.join(format!("{node}.key")).display().to_string(),
    ]
}

/// One transfer of `torrent` from a fresh seeder to a fresh leecher.
fn one(cli: &Cli, torrent: &Path, dir: &Path, certs: Option<&Path>) -> Result<Run> {
    let logs = cli.work.join("logs");
    let out = cli.work.join("tls-out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let (sport, lport) = (free_port(), free_port());
    let mut c = Command::new(indexswarm());
    c.arg("seed")
        .arg(torrent)
        .arg("--dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{sport}")]);
    if let Some(d) = certs {
        c.args(cert_args(d, "seeder"));
    }
    let seed = P::spawn("tls-seed", c, &logs)?;
    wait_for(Duration::from_secs(120), "our seeder", || {
        std::fs::read_to_string(logs.join("tls-seed.out"))
            .map(|s| s.trim().len() == 40)
            .unwrap_or(false)
    })?;
    let busy = others_busy();
    let load = load1();
    let start = Instant::now();
    let mut c = Command::new(indexswarm());
    c.arg("fetch").arg(torrent).arg("--dir").arg(&out).args([
        "--listen",
        &format!("127.0.0.1:{lport}"),
        "--peer",
        &format!("127.0.0.1:{sport}"),
    ]);
    if let Some(d) = certs {
        c.args(cert_args(d, "leecher"));
    }
    let mut leech = P::spawn("tls-leech", c, &logs)?;
    let seed_cpu0 = cpu_secs(seed.pid());
    let sampler = Sampler::start(vec![seed.pid(), leech.pid()]);
    wait_for(Duration::from_secs(900), "the leecher to finish", || {
        leech.done().is_some()
    })?;
    let secs = start.elapsed().as_secs_f64();
    let peaks = sampler.finish();
    if leech.done() != Some(true) {
        bail!(
            "the leecher failed; see {}",
            logs.join("tls-leech.log").display()
        );
    }
    let seed_cpu = cpu_secs(seed.pid()) - seed_cpu0;
    let leech_cpu = peaks.get(&leech.pid()).map(|p| p.1).unwrap_or(0.0);
    Ok(Run {
        tls: certs.is_some(),
        secs,
        cpu: seed_cpu + leech_cpu,
        seed_rss: peaks.get(&seed.pid()).map(|p| p.0).unwrap_or(0),
        leech_rss: peaks.get(&leech.pid()).map(|p| p.0).unwrap_or(0),
        load,
        busy,
    })
}

pub(crate) fn bench_tls(cli: &Cli, size: u64) -> Result<()> {
    let load = loadavg();
    let dir = data(&cli.work, size)?;
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let certs = cli.work.join("tls-ca");
    let _ = std::fs::remove_dir_all(&certs);
    let mut c = Command::new(indexswarm());
    c.args(["ca", "init", "--dir"]).arg(&certs);
    run_ok(c)?;
    for node in ["seeder", "leecher"] {
        let mut c = Command::new(indexswarm());
        c.args(["ca", "issue", node, "--dir"]).arg(&certs);
        run_ok(c)?;
    }
    let tport = free_port();
    let _tracker = start_tracker(&logs, ([127, 0, 0, 1], tport).into())?;
    let announce = format!("http://127.0.0.1:{tport}/announce");
    let common = ["--piece-length", "512K", "--announce", &announce];
    let plain = create_torrent(&cli.work, &dir.join("snap"), "tls-plain.torrent", &common)?;
    let ca = certs.join("ca.pem").display().to_string();
    let mut ssl_args = common.to_vec();
    ssl_args.extend_from_slice(&["--ssl-cert", &ca]);
    let ssl = create_torrent(&cli.work, &dir.join("snap"), "tls-ssl.torrent", &ssl_args)?;
    let total = dir_bytes(&dir.join("snap"));

    let mut runs = Vec::new();
    for i in 0..cli.runs.max(1) {
        for tls in [false, true] {
            let r = if tls {
                one(cli, &ssl, &dir, Some(&certs))?
            } else {
                one(cli, &plain, &dir, None)?
            };
            eprintln!(
                "run {}: {} {:.2} s",
                i + 1,
                if tls { "TLS" } else { "plain" },
                r.secs
            );
            runs.push(r);
        }
    }
    let _ = std::fs::remove_dir_all(cli.work.join("tls-out"));

    header(&format!(
        "tls: one seeder → one leecher, {} over loopback, plain torrent against SSL torrent (TLS peer wire), {} runs each, alternating",
        indexswarm::units::human_bytes(total),
        cli.runs.max(1)
    ));
    print_load(&load);
    println!("| run | peer wire | seconds | MB/s | CPU s per GiB (both) | peak RssAnon seeder / leecher MiB | load (1 min) | also running at the start (CPU over 0.5 s) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.1} / {:.1} | {} | {} |",
            i / 2 + 1,
            if r.tls { "TLS (SSL torrent)" } else { "plain" },
            r.secs,
            mb(total, r.secs),
            r.cpu / (total as f64 / (1u64 << 30) as f64),
            r.seed_rss as f64 / 1024.0,
            r.leech_rss as f64 / 1024.0,
            r.load,
            r.busy
        );
    }
    let med = |tls: bool, f: fn(&Run) -> f64| {
        median_of(
            &runs
                .iter()
                .filter(|r| r.tls == tls)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let (p, t) = (med(false, |r| r.secs), med(true, |r| r.secs));
    let best = |tls: bool| {
        runs.iter()
            .filter(|r| r.tls == tls)
            .map(|r| r.secs)
            .fold(f64::MAX, f64::min)
    };
    let gib = total as f64 / (1u64 << 30) as f64;
    println!(
        "\nMedian: plain {p:.2} s ({:.0} MB/s), TLS {t:.2} s ({:.0} MB/s); TLS / plain throughput = {:.2} (best runs: {:.2}); target ≥ 0.7: {}. CPU per GiB, both processes: plain {:.2} s, TLS {:.2} s.",
        mb(total, p),
        mb(total, t),
        p / t,
        best(false) / best(true),
        if p / t >= 0.7 { "met" } else { "missed" },
        med(false, |r| r.cpu) / gib,
        med(true, |r| r.cpu) / gib
    );
    Ok(())
}
