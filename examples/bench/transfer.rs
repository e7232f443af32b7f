//! `bench transfer`: one seeder to one leecher over loopback, against aria2 and libtorrent.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::common::{
    cpu_secs, create_torrent, data, dir_bytes, free_port, header, indexswarm, lt_peer, mb,
    start_tracker, wait_for, Sampler, P,
};
use crate::Cli;

pub(crate) struct Run {
    name: &'static str,
    secs: f64,
    cpu: f64,
    seed_rss: u64,
    leech_rss: u64,
}

pub(crate) fn bench_transfer(cli: &Cli, size: u64) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let tport = free_port();
    let _tracker = start_tracker(&logs, ([127, 0, 0, 1], tport).into())?;
    let announce = format!("http://127.0.0.1:{tport}/announce");
    let t = create_torrent(
        &cli.work,
        &dir.join("snap"),
        "transfer.torrent",
        &["--piece-length", "512K", "--announce", &announce],
    )?;
    let total = dir_bytes(&dir.join("snap"));
    let out = cli.work.join("transfer-out");
    let mut runs = Vec::new();
    for pair in ["indexswarm", "aria2", "libtorrent"] {
        for _ in 0..cli.runs {
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out)?;
            let _ = std::fs::remove_file(dir.join("snap.aria2"));
            let (sport, lport) = (free_port(), free_port());
            let mut seed = match pair {
                "indexswarm" => {
                    let mut c = Command::new(indexswarm());
                    c.arg("seed")
                        .arg(&t)
                        .arg("--dir")
                        .arg(&dir)
                        .args(["--listen", &format!("127.0.0.1:{sport}")]);
                    let p = P::spawn("seed", c, &logs)?;
                    wait_for(Duration::from_secs(120), "our seeder", || {
                        std::fs::read_to_string(logs.join("seed.out"))
                            .map(|s| s.trim().len() == 40)
                            .unwrap_or(false)
                    })?;
                    p
                }
                "aria2" => {
                    let mut c = Command::new("aria2c");
                    c.args(["-V", "--bt-seed-unverified=true", "--seed-ratio=0.0", "-d"])
                        .arg(&dir);
                    c.args([
                        "--enable-dht=false",
                        "--enable-dht6=false",
                        "--bt-enable-lpd=false",
                        "--enable-peer-exchange=false",
                    ]);
                    c.args([
                        &format!("--listen-port={sport}"),
                        "--file-allocation=none",
                        "--summary-interval=0",
                    ])
                    .arg(&t);
                    let p = P::spawn("seed", c, &logs)?;
                    std::thread::sleep(Duration::from_secs(2));
                    p
                }
                _ => {
                    let mut c = Command::new("/usr/bin/python3");
                    c.arg(lt_peer()).args(["seed"]).arg(&t).arg(&dir).args([
                        "--port",
                        &sport.to_string(),
                        "--seed-mode",
                    ]);
                    let p = P::spawn("seed", c, &logs)?;
                    wait_for(Duration::from_secs(60), "libtorrent seeder", || {
                        std::fs::read_to_string(logs.join("seed.out"))
                            .map(|s| s.contains("listening"))
                            .unwrap_or(false)
                    })?;
                    p
                }
            };
            let start = Instant::now();
            let mut leech = match pair {
                "indexswarm" => {
                    let mut c = Command::new(indexswarm());
                    c.arg("fetch").arg(&t).arg("--dir").arg(&out);
                    c.args([
                        "--listen",
                        &format!("127.0.0.1:{lport}"),
                        "--peer",
                        &format!("127.0.0.1:{sport}"),
                    ]);
                    P::spawn("leech", c, &logs)?
                }
                "aria2" => {
                    let mut c = Command::new("aria2c");
                    c.args(["--seed-time=0", "-d"]).arg(&out);
                    c.args([
                        "--enable-dht=false",
                        "--enable-dht6=false",
                        "--bt-enable-lpd=false",
                        "--enable-peer-exchange=false",
                    ]);
                    c.args([
                        &format!("--listen-port={lport}"),
                        "--file-allocation=none",
                        "--summary-interval=0",
                    ])
                    .arg(&t);
                    P::spawn("leech", c, &logs)?
                }
                _ => {
                    let mut c = Command::new("/usr/bin/python3");
                    c.arg(lt_peer()).args(["leech"]).arg(&t).arg(&out);
                    c.args([
                        "--port",
                        &lport.to_string(),
                        "--peer",
                        &format!("127.0.0.1:{sport}"),
                        "--timeout",
                        "600",
                    ]);
                    P::spawn("leech", c, &logs)?
                }
            };
            let seed_cpu0 = cpu_secs(seed.pid());
            let sampler = Sampler::start(vec![seed.pid(), leech.pid()]);
            wait_for(Duration::from_secs(900), "the leecher to finish", || {
                leech.done().is_some()
            })?;
            let secs = start.elapsed().as_secs_f64();
            let peaks = sampler.finish();
            if leech.done() != Some(true) {
                bail!(
                    "{pair} leecher failed; see {}",
                    logs.join("leech.log").display()
                );
            }
            let seed_cpu = cpu_secs(seed.pid()) - seed_cpu0;
            let leech_cpu = peaks.get(&leech.pid()).map(|p| p.1).unwrap_or(0.0);
            let _ = seed.done();
            let name = match pair {
                "indexswarm" => "indexswarm → indexswarm",
                "aria2" => "aria2c → aria2c",
                _ => "libtorrent → libtorrent",
            };
            eprintln!("{name}: {secs:.2}s");
            runs.push(Run {
                name,
                secs,
                cpu: seed_cpu + leech_cpu,
                seed_rss: peaks.get(&seed.pid()).map(|p| p.0).unwrap_or(0),
                leech_rss: peaks.get(&leech.pid()).map(|p| p.0).unwrap_or(0),
            });
            drop(seed);
        }
    }
    let best = |n: &str| {
        runs.iter()
            .filter(|r| r.name == n)
            .min_by(|a, b| a.secs.partial_cmp(&b.secs).unwrap())
    };
    let best_ref = runs
        .iter()
        .filter(|r| !r.name.starts_with("indexswarm"))
        .map(|r| r.secs)
        .fold(f64::MAX, f64::min);
    header(&format!(
        "transfer: one seeder → one leecher, {} over loopback, best of {}",
        indexswarm::units::human_bytes(total),
        cli.runs
    ));
    println!("| pair | seconds | MB/s | speed vs fastest reference | CPU s per GiB (both) | peak RssAnon seeder / leecher MiB |");
    println!("|---|---|---|---|---|---|");
    for n in [
        "indexswarm → indexswarm",
        "aria2c → aria2c",
        "libtorrent → libtorrent",
    ] {
        if let Some(r) = best(n) {
            println!(
                "| {n} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} / {:.1} |",
                r.secs,
                mb(total, r.secs),
                best_ref / r.secs,
                r.cpu / (total as f64 / (1u64 << 30) as f64),
                r.seed_rss as f64 / 1024.0,
                r.leech_rss as f64 / 1024.0
            );
        }
    }
    let all: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {:.2}s", r.name, r.secs))
        .collect();
    println!("\nAll runs: {}.", all.join(", "));
    Ok(())
}
