//! The operator's levers and the read side: activation (rollback moves no
//! bytes), the token, a master killed mid-activation, `/readyz`, the long
//! poll, and a bounded, checked report route.

use super::*;

#[test]
fn rollback_to_a_version_on_disk_moves_no_bytes_and_resume_rolls_forward() {
    let d = test_dir("rollback");
    let mut m = Master::start(d.path(), &["--rollout", "fleet", "--api-token", TOKEN]);
    let rs = replicas(&m, d.path(), 4, &[]);
    wait_reported(&m, 4);
    let v1 = m.publish_new("snapshot.20260305000000000", 6 * MB, 71);
    all_on(&rs, v1);
    let v2 = m.publish_next(v1, "snapshot.20260305000100000", 2 * MB, 72);
    all_on(&rs, v2);

    let url = format!("{}/versions/{v1}/activate", m.url);
    assert_eq!(post(&url, None).status, 401, "no token");
    assert_eq!(post(&url, Some("wrong")).status, 401, "wrong token");
    assert_eq!(
        post(&format!("{}/versions/99/activate", m.url), Some(TOKEN)).status,
        404
    );
    let r = post(&url, Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.text());
    all_on(&rs, v1);
    for r in &rs {
        let s = r.status();
        assert_eq!(
            s["bytes_downloaded"], 0,
            "{}: rollback moved bytes: {s}",
            r.proc.name
        );
        assert_eq!(s["bytes_reused"], s["bytes_total"], "{s}");
        assert_same_tree(m.snapshot(v1), &r.data.join("current"));
    }
    let ro = wait_rollout(&m, REPLICATE, "v1 pinned and done", |r| {
        r["phase"] == "done"
    });
    assert_eq!(
        (ro["active_version"].as_u64(), ro["pinned"].as_bool()),
        (Some(v1), Some(true))
    );
    assert_eq!(
        get_json(&format!("{}/versions/active", m.url)).unwrap()["version"],
        v1
    );

    // Pause and resume need the token too; resume unpins: forward to v2.
    assert_eq!(post(&format!("{}/rollout/pause", m.url), None).status, 401);
    assert_eq!(
        post(&format!("{}/rollout/pause", m.url), Some(TOKEN)).status,
        200
    );
    assert_eq!(rollout(&m)["phase"], "paused");
    let r = post(&format!("{}/rollout/resume", m.url), Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.text());
    all_on(&rs, v2);
    for r in &rs {
        assert_eq!(r.status()["bytes_downloaded"], 0, "v2 was still on disk");
    }
}

#[test]
fn a_master_killed_during_activation_leaves_the_fleet_on_one_listed_version() {
    let d = test_dir("kill-activation");
    let mut m = Master::start(d.path(), &["--rollout", "fleet"]);
    let rs = replicas(&m, d.path(), 4, &[]);
    wait_reported(&m, 4);
    let v1 = m.publish_new("snapshot.20260306000000000", 4 * MB, 81);
    all_on(&rs, v1);
    let v2 = m.publish_next(v1, "snapshot.20260306000100000", MB, 82);
    // Kill -9 as soon as the activation is decided.
    wait_or(
        REPLICATE,
        "v2 activated",
        || get_json(&format!("{}/rollout", m.url)).is_some_and(|r| r["active_version"] == v2),
        String::new,
    );
    m.proc.signal("KILL");
    let _ = m.proc.wait(Duration::from_secs(10));
    m.restart();
    let listed: Vec<u64> = get_json(&format!("{}/versions", m.url))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    all_on(&rs, v2);
    assert!(listed.contains(&v2), "{listed:?}");
    wait_rollout(&m, REPLICATE, "the rollout done after the restart", |r| {
        r["phase"] == "done" && r["active_version"] == v2
    });
}

#[test]
fn readyz_in_each_state() {
    let d = test_dir("readyz");
    let mut m = Master::start(d.path(), &[]);
    let r = start_replica(
        &m,
        &d.path().join("r"),
        "r",
        &["--id", "r", "--max-lag-versions", "0"],
        &[],
    );
    let readyz = || request("GET", &format!("{}/readyz", r.url), None, None);
    let nothing = readyz();
    assert_eq!(nothing.status, 503);
    assert!(
        nothing.text().contains("no version is live"),
        "{}",
        nothing.text()
    );
    let v1 = m.publish_new("snapshot.20260307000000000", 2 * MB, 91);
    r.wait_version(v1, REPLICATE);
    wait_until(START, "ready on v1", || readyz().status == 200);
    // Paused while the master moves on: lagging, not ready.
    assert_eq!(post(&format!("{}/pause", r.url), None).status, 200);
    let v2 = m.publish_next(v1, "snapshot.20260307000100000", MB, 92);
    wait_until(START, "not ready while lagging", || readyz().status == 503);
    let lag = readyz().text();
    assert!(
        lag.contains(&format!("behind the master's active version {v2}")),
        "{lag}"
    );
    assert_eq!(r.status()["current_version"], v1, "paused: no swap");
    assert_eq!(post(&format!("{}/resume", r.url), None).status, 200);
    r.wait_version(v2, REPLICATE);
    wait_until(START, "ready again", || readyz().status == 200);
}

#[test]
fn abort_drops_the_download_and_keeps_its_pieces() {
    let d = test_dir("abort");
    let mut m = Master::start(d.path(), &[]);
    // Slow enough to abort mid-way: 1 MiB/s for 8 MiB.
    let r = start_replica(
        &m,
        &d.path().join("r"),
        "r",
        &["--id", "r", "--download-limit", "1M"],
        &[],
    );
    let v1 = m.publish_new("snapshot.20260308000000000", 8 * MB, 95);
    r.wait_status(REPLICATE, "downloading", |s| {
        s["state"] == "downloading" && s["bytes_downloaded"].as_u64() > Some(MB)
    });
    assert_eq!(post(&format!("{}/pause", r.url), None).status, 200);
    r.wait_status(START, "the download ended", |s| s["state"] != "downloading");
    let partial = r.data.join(format!("versions/{v1}.partial"));
    assert!(partial.is_dir(), "the partial download is kept");
    let had = r.status()["bytes_downloaded"].as_u64().unwrap();
    assert_eq!(post(&format!("{}/resume", r.url), None).status, 200);
    r.wait_version(v1, REPLICATE);
    let s = r.status();
    assert!(
        s["bytes_downloaded"].as_u64().unwrap() < 8 * MB,
        "the second attempt resumed ({had} bytes before): {s}"
    );
    assert_same_tree(m.snapshot(v1), &r.data.join("current"));
}

#[test]
fn long_poll_answers_at_once_on_a_new_version_or_304_after_the_wait() {
    let d = test_dir("long-poll");
    let mut m = Master::start(d.path(), &[]);
    let base = m.url.clone();
    let latest = |q: &str| request("GET", &format!("{base}/versions/latest?{q}"), None, None);
    assert_eq!(latest("wait=abc").status, 400);
    assert_eq!(latest("after=0&wait=1").status, 304, "nothing published");
    let v1 = m.publish_new("snapshot.20260309000000000", MB, 97);
    assert_eq!(latest("after=0").json()["version"], v1);
    assert_eq!(latest(&format!("after={v1}&wait=1")).status, 304);
    // A waiting poll is answered by the publication, not by its timeout.
    let url = format!("{}/versions/latest?after={v1}&wait=120", m.url);
    let waiter = std::thread::spawn(move || request("GET", &url, None, None));
    let v2 = m.publish_next(v1, "snapshot.20260309000100000", MB, 98);
    let r = waiter.join().unwrap();
    assert_eq!((r.status, r.json()["version"].as_u64()), (200, Some(v2)));
}

#[test]
fn reports_are_bounded_and_checked() {
    let d = test_dir("reports");
    let m = Master::start(d.path(), &[]);
    let url = format!("{}/replicas/report", m.url);
    let big = format!(
        r#"{{"id":"a","index":"default","last_error":"{}"}}"#,
        "x".repeat(40_000)
    );
    assert_eq!(request("POST", &url, Some(&big), None).status, 413);
    for bad in [
        r#"{"id":"a b","index":"default"}"#,
        r#"{"index":"default"}"#,
        "not json",
    ] {
        assert_eq!(request("POST", &url, Some(bad), None).status, 400, "{bad}");
    }
    assert_eq!(
        request("POST", &url, Some(r#"{"id":"a","index":"nope"}"#), None).status,
        404
    );
    let ok = request(
        "POST",
        &url,
        Some(r#"{"id":"a","index":"default","state":"idle"}"#),
        None,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(replicas_of(&m)[0]["id"], "a");
}
