//! The long fuzz run (#11): the targets `cargo test` runs ten thousand cases
//! of, for as long as asked, round-robin, each batch on fresh random
//! inputs. Stops at the first failure with the input shrunk to its
//! smallest form.
//!
//! ```sh
//! cargo run --release --example fuzz -- 600        # seconds (default 60)
//! ```

#[path = "../integration/fuzz/targets.rs"]
mod targets;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const BATCH: u32 = 20_000;

/// One batch of `target` on `strategy`: how many inputs were accepted, or
/// the failure.
fn batch<S: Strategy>(strategy: S, target: impl Fn(S::Value) -> bool) -> Result<u64, String> {
    let mut runner = TestRunner::new(Config {
        cases: BATCH,
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0u64);
    runner
        .run(&strategy, |v| {
            accepted.set(accepted.get() + u64::from(target(v)));
            Ok(())
        })
        .map(|()| accepted.get())
        .map_err(|e| e.to_string())
}

type Target = (&'static str, fn() -> Result<u64, String>);

const TARGETS: &[Target] = &[
    ("wire codec", || {
        batch(targets::wire_input(), |(n, s)| targets::wire(n, &s))
    }),
    ("extension payloads", || {
        batch(targets::payload_input(), |(h, p)| {
            targets::peer_payloads(&h, &p)
        })
    }),
    ("tracker query", || {
        batch(targets::query_input(), |q| targets::tracker_query(&q))
    }),
    ("tracker reply", || {
        batch(targets::reply_input(), |b| targets::tracker_reply(&b))
    }),
    ("metainfo", || {
        batch(targets::torrent_input(), |b| targets::metainfo(&b))
    }),
    ("versions json", || {
        batch(targets::versions_input(), |b| targets::versions_json(&b))
    }),
    ("report json", || {
        batch(targets::report_input(), |b| targets::report_json(&b))
    }),
    ("config", || {
        batch(targets::config_input(), |t| targets::config(&t))
    }),
];

fn main() {
    let secs: u64 = match std::env::args().nth(1).map(|s| s.parse()) {
        None => 60,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            eprintln!("usage: fuzz [SECONDS]   (default 60)");
            std::process::exit(2);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut batches = 0u64;
    let mut accepted = vec![0u64; TARGETS.len()];
    while Instant::now() < deadline {
        batches += 1;
        for (i, (name, run)) in TARGETS.iter().enumerate() {
            match run() {
                Ok(n) => accepted[i] += n,
                Err(e) => {
                    eprintln!("fuzz: {name}: {e}");
                    std::process::exit(1);
                }
            }
        }
        let total = batches * u64::from(BATCH) * TARGETS.len() as u64;
        eprintln!("fuzz: {total} cases, no failure");
    }
    let cases = batches * u64::from(BATCH);
    for ((name, _), n) in TARGETS.iter().zip(&accepted) {
        println!("{name:>20}: {cases} cases, {n} accepted by the decoder");
    }
}
