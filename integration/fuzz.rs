//! The fuzz targets of `fuzz/targets.rs`, a bounded number of cases each
//! (`INDEXSWARM_FUZZ_CASES`, default 10,000) so that CI stays quick;
//! `cargo run --release --example fuzz` runs the same targets for longer.
//! A failure prints the minimal input proptest shrank it to.

#[path = "fuzz/targets.rs"]
mod targets;

use std::cell::Cell;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("INDEXSWARM_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

/// Runs `target` on `cases()` inputs of `strategy`; panics name the
/// (shrunk) input. Both outcomes must occur: some inputs accepted, some
/// refused, else the generator misses half of the decoder.
fn fuzz<S: Strategy>(strategy: S, target: impl Fn(S::Value) -> bool) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let (accepted, refused) = (Cell::new(0u32), Cell::new(0u32));
    let result = runner.run(&strategy, |v| {
        let counter = if target(v) { &accepted } else { &refused };
        counter.set(counter.get() + 1);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (a, r) = (accepted.get(), refused.get());
    assert!(a > 0 && r > 0, "{a} inputs accepted, {r} refused");
}

#[test]
fn the_wire_codec_never_panics_and_round_trips() {
    fuzz(targets::wire_input(), |(n, s)| targets::wire(n, &s));
}

#[test]
fn handshakes_and_extension_payloads_never_panic() {
    fuzz(targets::payload_input(), |(h, p)| {
        targets::peer_payloads(&h, &p)
    });
}

#[test]
fn the_tracker_query_decoder_never_panics_and_round_trips() {
    fuzz(targets::query_input(), |q| targets::tracker_query(&q));
}

#[test]
fn tracker_replies_never_panic_and_stay_in_range() {
    fuzz(targets::reply_input(), |b| targets::tracker_reply(&b));
}

#[test]
fn torrents_never_panic_and_parse_consistently() {
    fuzz(targets::torrent_input(), |b| targets::metainfo(&b));
}

#[test]
fn the_versions_json_a_replica_reads_never_panics() {
    fuzz(targets::versions_input(), |b| targets::versions_json(&b));
}

#[test]
fn replica_reports_never_panic_and_validate_into_range() {
    fuzz(targets::report_input(), |b| targets::report_json(&b));
}

#[test]
fn the_config_loader_never_panics() {
    fuzz(targets::config_input(), |t| targets::config(&t));
}
