//! Issue #6, finding 8: absurd settings are startup errors, never panics.
//!
//! `announce_interval_secs = 18446744073709551615` used to make every
//! announce panic ("overflow when multiplying duration"), and a poll interval
//! of 10^12 seconds made the replica panic while formatting `next_poll_at`.
//! Each case here starts the real binary with such values through flags and
//! the environment and expects exit 1 with one line naming every bad
//! setting, and no panic.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

const U64_MAX: &str = "18446744073709551615";
const TEN_TO_12: &str = "1000000000000";

/// `indexswarm <args>` with no INDEXSWARM_* variable leaking in, plus `env`.
fn isw(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = cmd();
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("INDEXSWARM_") {
            c.env_remove(k);
        }
    }
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs a command that must refuse to start: exit 1 within a deadline, one
/// non-empty line on stderr, no panic. Returns that line.
fn refuses(label: &str, c: Command) -> String {
    let d = test_dir(label);
    let mut p = Proc::spawn(label, c, &d.path().join("logs"));
    let st = p.wait(Duration::from_secs(20));
    let err = p.stderr_text();
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{label}: a panic instead of an error message:\n{err}"
    );
    assert_eq!(st.code(), Some(1), "{label}: exit status {st}\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{label}: one line on stderr:\n{err}");
    lines[0].to_string()
}

fn assert_names(line: &str, settings: &[&str]) {
    for s in settings {
        assert!(line.contains(s), "the error should name {s}: {line}");
    }
}

#[test]
fn master_with_absurd_durations_and_rates_exits_1_naming_each() {
    let d = test_dir("b-master");
    let snaps = d.path().join("snaps");
    let hl = format!("127.0.0.1:{}", free_port());
    let pl = format!("127.0.0.1:{}", free_port());
    let c = isw(
        &[
            "master",
            "--snapshots-dir",
            snaps.to_str().unwrap(),
            "--http-listen",
            &hl,
            "--peer-listen",
            &pl,
            "--announce-interval-secs",
            U64_MAX,
            "--settle-secs",
            TEN_TO_12,
        ],
        &[
            ("INDEXSWARM_MASTER_RESCAN_SECS", U64_MAX),
            ("INDEXSWARM_MASTER_UPLOAD_LIMIT", "16T"),
            ("INDEXSWARM_MASTER_VERIFY_RATE", "16T"),
        ],
    );
    let line = refuses("b-master", c);
    assert_names(
        &line,
        &[
            "announce_interval_secs",
            "settle_secs",
            "rescan_secs",
            "upload_limit",
            "verify_rate",
        ],
    );
}

#[test]
fn replica_with_absurd_durations_and_rates_exits_1_naming_each() {
    let d = test_dir("b-replica");
    let hl = format!("127.0.0.1:{}", free_port());
    let pl = format!("127.0.0.1:{}", free_port());
    // Nothing listens on the master URL: the old code panicked on its first
    // failed poll, formatting a next_poll_at 10^12 seconds away.
    let master = format!("http://127.0.0.1:{}", free_port());
    let c = isw(
        &[
            "replica",
            "--master-url",
            &master,
            "--data-dir",
            d.path().join("data").to_str().unwrap(),
            "--http-listen",
            &hl,
            "--peer-listen",
            &pl,
            "--poll-interval-secs",
            TEN_TO_12,
        ],
        &[
            ("INDEXSWARM_REPLICA_SEED_OLD_SECS", U64_MAX),
            ("INDEXSWARM_REPLICA_DOWNLOAD_LIMIT", "16T"),
            ("INDEXSWARM_REPLICA_UPLOAD_LIMIT", "16T"),
        ],
    );
    let line = refuses("b-replica", c);
    assert_names(
        &line,
        &[
            "poll_interval_secs",
            "seed_old_secs",
            "download_limit",
            "upload_limit",
        ],
    );
}

#[test]
fn master_config_file_with_absurd_interval_exits_1() {
    let d = test_dir("b-file");
    let cfg = d.path().join("master.toml");
    std::fs::write(
        &cfg,
        format!(
            // TOML integers stop at i64::MAX, which is absurd enough.
            "[master]\nsnapshots_dir = {:?}\nannounce_interval_secs = {}\nrescan_secs = {TEN_TO_12}\n",
            d.path().join("snaps"),
            i64::MAX
        ),
    )
    .unwrap();
    let hl = format!("127.0.0.1:{}", free_port());
    let pl = format!("127.0.0.1:{}", free_port());
    let c = isw(
        &[
            "master",
            "--config",
            cfg.to_str().unwrap(),
            "--http-listen",
            &hl,
            "--peer-listen",
            &pl,
        ],
        &[],
    );
    let line = refuses("b-file", c);
    assert_names(&line, &["announce_interval_secs", "rescan_secs"]);
}

#[test]
fn toolkit_commands_refuse_absurd_intervals_sizes_and_rates() {
    let listen = format!("127.0.0.1:{}", free_port());
    let line = refuses(
        "b-tracker",
        isw(
            &["tracker", "--listen", &listen, "--interval", U64_MAX],
            &[],
        ),
    );
    assert_names(&line, &["--interval"]);

    let d = test_dir("b-create");
    write_tree(&d.path().join("snap"), &[("a", 1000)], 1);
    let out = d.path().join("x.torrent");
    let line = refuses(
        "b-create",
        isw(
            &[
                "create",
                d.path().join("snap").to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--piece-length",
                "1T",
            ],
            &[],
        ),
    );
    assert_names(&line, &["piece length"]);

    // The rates are checked before the torrent is even looked at.
    let line = refuses(
        "b-fetch",
        isw(
            &[
                "fetch",
                "/nonexistent.torrent",
                "--dir",
                d.path().to_str().unwrap(),
                "--download-limit",
                "16T",
                "--upload-limit",
                "16T",
            ],
            &[],
        ),
    );
    assert_names(&line, &["--download-limit", "--upload-limit"]);
    let line = refuses(
        "b-seed",
        isw(
            &[
                "seed",
                "/nonexistent.torrent",
                "--dir",
                d.path().to_str().unwrap(),
                "--upload-limit",
                "16T",
            ],
            &[],
        ),
    );
    assert_names(&line, &["--upload-limit"]);
}
