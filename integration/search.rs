//! Issue 5: a real search server (examples/searchd.rs, tantivy) beside each
//! replica. A query that matches only a document added in version 2 answers
//! on every replica once it swapped, because the replica's `on_swap` hook
//! tells searchd to reopen `current`.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;

/// `cargo test` builds the examples next to the binaries it tests.
fn searchd() -> PathBuf {
    let p = bin().parent().expect("target dir").join("examples/searchd");
    assert!(
        p.exists(),
        "{} missing: `cargo test` builds examples; run it from the workspace",
        p.display()
    );
    p
}

#[test]
fn query_for_a_version_2_document_answers_on_every_replica_after_the_swap() {
    let d = test_dir("search");
    let logs = d.path().join("logs");
    let snaps = d.path().join("snapshots");
    std::fs::create_dir_all(&snaps).unwrap();
    let (http, peer) = (free_port(), free_port());
    let master_url = format!("http://127.0.0.1:{http}");
    let mut c = cmd();
    c.args(["master", "--snapshots-dir"]).arg(&snaps);
    c.args([
        "--http-listen",
        &format!("127.0.0.1:{http}"),
        "--peer-listen",
        &format!("127.0.0.1:{peer}"),
    ]);
    c.args(["--settle-secs", "1"]);
    let _master = Proc::spawn("master", c, &logs);

    let mut procs = Vec::new();
    let mut search_urls = Vec::new();
    let mut status_urls = Vec::new();
    for i in 0..2 {
        let data = d.path().join(format!("replica-{i}"));
        let sport = free_port();
        let mut s = std::process::Command::new(searchd());
        s.args(["serve", "--index"]).arg(data.join("current"));
        s.args(["--listen", &format!("127.0.0.1:{sport}")]);
        procs.push(Proc::spawn(&format!("searchd-{i}"), s, &logs));
        let rport = free_port();
        let mut r = cmd();
        r.args(["replica", "--master-url", &master_url, "--data-dir"])
            .arg(&data);
        r.args([
            "--http-listen",
            &format!("127.0.0.1:{rport}"),
            "--peer-listen",
            &format!("127.0.0.1:{}", free_port()),
        ]);
        r.args([
            "--poll-interval-secs",
            "1",
            "--on-swap",
            &format!("http://127.0.0.1:{sport}/reload"),
        ]);
        procs.push(Proc::spawn(&format!("replica-{i}"), r, &logs));
        search_urls.push(format!("http://127.0.0.1:{sport}/search?q=zanzibar"));
        status_urls.push(format!("http://127.0.0.1:{rport}/status"));
    }

    let build = |args: &[&str]| {
        let mut c = std::process::Command::new(searchd());
        c.arg("build").args(args);
        run_ok(c);
    };
    let v1 = snaps.join("snapshot.20261124120000000");
    build(&["--docs", "3000", "--out", v1.to_str().unwrap()]);
    let total = |url: &str| get_json(url).and_then(|j| j["total"].as_u64());
    for url in &search_urls {
        wait_until(
            Duration::from_secs(90),
            "version 1 searchable on a replica",
            || total(url) == Some(0),
        );
    }

    let v2 = snaps.join("snapshot.20261124121500000");
    build(&[
        "--from",
        v1.to_str().unwrap(),
        "--add",
        "zanzibar appears only in version two",
        "--out",
        v2.to_str().unwrap(),
    ]);
    for url in &search_urls {
        wait_until(
            Duration::from_secs(90),
            "the version 2 document to be found",
            || total(url) == Some(1),
        );
    }
    for url in &status_urls {
        let s = get_json(url).expect("replica status");
        assert_eq!(s["current_version"], 2);
        assert!(
            s["bytes_reused"].as_u64().unwrap() > 0,
            "old segments are reused: {s}"
        );
        let hits = get_json(&search_urls[0]).unwrap();
        assert!(
            hits["index"].as_str().unwrap().ends_with("versions/2"),
            "{hits}"
        );
    }
}
