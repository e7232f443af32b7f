//! `bench swarm`: one seeder, N leechers in namespaces with capped uplinks,
//! against the Kumar–Ross bound.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::common::{
    create_torrent, data, dir_bytes, free_port, header, indexswarm, lt_peer, median, start_tracker,
    wait_for, P,
};
use crate::netns::{kumar_ross, Netns};
use crate::Cli;

/// One swarm run of `client`: each leecher's finishing time (s) and the
/// seeder's share of all bytes sent.
pub(crate) fn swarm_run(
    cli: &Cli,
    dir: &Path,
    logs: &Path,
    client: &str,
    leechers: usize,
    mbit: u64,
) -> Result<(Vec<f64>, f64)> {
    let net = Netns::up(leechers + 1, mbit)?;
    let tport = free_port();
    let _tracker = start_tracker(logs, format!("10.77.0.1:{tport}").parse()?)?;
    let t = create_torrent(
        &cli.work,
        &dir.join("snap"),
        "swarm.torrent",
        &[
            "--piece-length",
            "256K",
            "--announce",
            &format!("http://10.77.0.1:{tport}/announce"),
        ],
    )?;
    let out = cli.work.join("swarm-out");
    let _ = std::fs::remove_dir_all(&out);
    let mut procs = Vec::new();
    let seed = match client {
        "indexswarm" => {
            let mut c = Netns::cmd(0, &indexswarm());
            c.arg("seed")
                .arg(&t)
                .arg("--dir")
                .arg(dir)
                .args(["--listen", &format!("{}:6881", Netns::ip(0))]);
            let p = P::spawn("swarm-seed", c, logs)?;
            wait_for(Duration::from_secs(120), "seeder", || {
                std::fs::read_to_string(logs.join("swarm-seed.out"))
                    .map(|s| s.trim().len() == 40)
                    .unwrap_or(false)
            })?;
            p
        }
        _ => {
            let mut c = Netns::cmd(0, Path::new("/usr/bin/python3"));
            c.arg(lt_peer()).arg("seed").arg(&t).arg(dir).args([
                "--port",
                "6881",
                "--bind",
                &Netns::ip(0),
                "--seed-mode",
            ]);
            let p = P::spawn("swarm-seed", c, logs)?;
            wait_for(Duration::from_secs(60), "seeder", || {
                std::fs::read_to_string(logs.join("swarm-seed.out"))
                    .map(|s| s.contains("listening"))
                    .unwrap_or(false)
            })?;
            p
        }
    };
    // Let the seeder's first announce land so every leecher finds it at once.
    std::thread::sleep(Duration::from_secs(1));
    let sent0: Vec<u64> = (0..=leechers).map(Netns::sent).collect();
    let start = Instant::now();
    for i in 1..=leechers {
        let d = out.join(i.to_string());
        std::fs::create_dir_all(&d)?;
        let c = match client {
            "indexswarm" => {
                let mut c = Netns::cmd(i, &indexswarm());
                c.arg("fetch").arg(&t).arg("--dir").arg(&d).args([
                    "--listen",
                    &format!("{}:6881", Netns::ip(i)),
                    "--seed",
                ]);
                c
            }
            _ => {
                let mut c = Netns::cmd(i, Path::new("/usr/bin/python3"));
                c.arg(lt_peer()).arg("leech").arg(&t).arg(&d);
                c.args([
                    "--port",
                    "6881",
                    "--bind",
                    &Netns::ip(i),
                    "--timeout",
                    "900",
                    "--seed-after",
                ]);
                c
            }
        };
        procs.push(P::spawn(&format!("swarm-leech-{i}"), c, logs)?);
    }
    let mut finished: Vec<Option<f64>> = vec![None; leechers];
    wait_for(Duration::from_secs(900), "every leecher", || {
        for (i, f) in finished.iter_mut().enumerate() {
            if f.is_none() {
                let text = std::fs::read_to_string(logs.join(format!("swarm-leech-{}.out", i + 1)))
                    .unwrap_or_default();
                if text.contains("bytes_total") || text.contains("\"complete\": true") {
                    *f = Some(start.elapsed().as_secs_f64());
                }
            }
        }
        finished.iter().all(Option::is_some)
    })?;
    let secs = finished.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    let sent: Vec<u64> = (0..=leechers).map(|i| Netns::sent(i) - sent0[i]).collect();
    let all: u64 = sent.iter().sum();
    eprintln!("{client}: {secs:.1}s, seeder sent {} of {}", sent[0], all);
    drop(procs);
    drop(seed);
    drop(net);
    let f: Vec<f64> = finished.into_iter().flatten().collect();
    Ok((f, sent[0] as f64 / all as f64))
}

pub(crate) fn bench_swarm(
    cli: &Cli,
    size: u64,
    leechers: usize,
    mbit: u64,
    no_lt: bool,
    repeat: usize,
) -> Result<()> {
    let dir = data(&cli.work, size)?;
    let logs = cli.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let total = dir_bytes(&dir.join("snap"));
    let u = mbit as f64 * 1e6 / 8.0;
    let bound = kumar_ross(total, leechers, u);
    let mut rows = Vec::new();
    for client in ["indexswarm", "libtorrent"] {
        if client == "libtorrent" && no_lt {
            continue;
        }
        let mut runs = Vec::new();
        for _ in 0..repeat.max(1) {
            let (mut f, share) = swarm_run(cli, &dir, &logs, client, leechers, mbit)?;
            f.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            runs.push((f, share));
        }
        // The median run by its last leecher.
        runs.sort_by(|a, b| {
            let (x, y) = (
                a.0.last().copied().unwrap_or(0.0),
                b.0.last().copied().unwrap_or(0.0),
            );
            x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal)
        });
        let all: Vec<f64> = runs
            .iter()
            .map(|r| r.0.last().copied().unwrap_or(0.0))
            .collect();
        let mid = runs.len() / 2;
        rows.push((client, runs.swap_remove(mid), all));
    }
    header(&format!(
        "swarm: one seeder → {leechers} leechers, {}; every node's upload capped at {mbit} Mbit/s by tc tbf in its own network namespace{}",
        indexswarm::units::human_bytes(total),
        if repeat > 1 { format!(", median of {repeat} runs") } else { String::new() }
    ));
    println!("Kumar–Ross bound max(F/u, N·F/(u_seed + Σu)) = {bound:.1} s.\n");
    println!("| client | last leecher (s) | vs bound | seeder share of bytes sent | first / median / last leecher (s) | every run's last leecher (s) |");
    println!("|---|---|---|---|---|---|");
    for (client, (mut f, share), all) in rows {
        let last = f.last().copied().unwrap_or(0.0);
        let first = f.first().copied().unwrap_or(0.0);
        let med = median(&mut f);
        let all: Vec<String> = all.iter().map(|s| format!("{s:.1}")).collect();
        println!(
            "| {client} | {last:.1} | {:.2} | {:.0}% | {first:.1} / {med:.1} / {last:.1} | {} |",
            last / bound,
            share * 100.0,
            all.join(", ")
        );
    }
    Ok(())
}
