//! Fleet mode: staging, activation, laggards, canaries.

use super::*;

#[test]
fn in_fleet_mode_nobody_swaps_before_every_replica_staged() {
    let d = test_dir("fleet-staged");
    let mut m = Master::start(d.path(), &["--rollout", "fleet", "--api-token", TOKEN]);
    let rs = replicas(&m, d.path(), 5, &[]);
    wait_reported(&m, 5);
    let v1 = m.publish_new("snapshot.20260301000000000", 6 * MB, 31);
    all_on(&rs, v1);
    let v2 = m.publish_next(v1, "snapshot.20260301000100000", MB, 32);
    all_on(&rs, v2);

    // Every swap to v2 came after the last replica staged it.
    let st: Vec<Value> = rs.iter().map(Replica::status).collect();
    let last_staged = st.iter().map(|s| ms(&s["staged_at"])).max().unwrap();
    for (r, s) in rs.iter().zip(&st) {
        assert!(
            ms(&s["last_swap_at"]) >= last_staged,
            "{} swapped at {} before the last replica staged at {last_staged}: {s}",
            r.proc.name,
            s["last_swap_at"]
        );
        assert_same_tree(m.snapshot(v2), &r.data.join("current"));
    }
    let ro = wait_rollout(&m, REPLICATE, "the rollout of v2 done", |r| {
        r["phase"] == "done" && r["version"] == v2
    });
    assert_eq!(ro["active_version"], v2, "{ro}");
    assert_eq!(ro["active"].as_array().unwrap().len(), 5, "{ro}");
    assert!(ro["laggards"].as_array().unwrap().is_empty(), "{ro}");
    assert!(ro["swap_skew_seconds"].as_f64().is_some(), "{ro}");
    for k in ["started_at", "activated_at", "done_at"] {
        ms(&ro[k]);
    }
    // Version objects carry their state; /versions/active is v2.
    let active = get_json(&format!("{}/versions/active", m.url)).unwrap();
    assert_eq!(
        (active["version"].as_u64(), active["state"].as_str()),
        (Some(v2), Some("active"))
    );
    let list = get_json(&format!("{}/versions", m.url)).unwrap();
    let v1_state = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == v1)
        .map(|v| v["state"].clone());
    assert_eq!(v1_state, Some(Value::from("published")));

    // /replicas: every field of the contract, for every replica.
    let rows = replicas_of(&m);
    assert_eq!(rows.len(), 5);
    for row in &rows {
        for k in [
            "id",
            "zone",
            "address",
            "index",
            "live_version",
            "staged_version",
            "state",
            "progress",
            "download_rate",
            "upload_rate",
            "lag_versions",
            "last_seen",
            "last_error",
            "paused",
        ] {
            assert!(row.get(k).is_some(), "/replicas lacks {k}: {row}");
        }
        assert_eq!(row["zone"], "z1");
        assert_eq!(row["index"], "default");
        assert_eq!(row["live_version"], v2, "{row}");
        assert_eq!(row["lag_versions"], 0, "{row}");
        assert_eq!(row["paused"], false);
        assert_eq!(row["state"], "idle", "{row}");
        ms(&row["last_seen"]);
        let addr: std::net::SocketAddr = row["address"].as_str().unwrap().parse().unwrap();
        let id = row["id"].as_str().unwrap();
        let r = rs.iter().find(|r| r.proc.name == id).unwrap();
        assert_eq!(r.url, format!("http://{addr}"), "the replica's API address");
    }
    // The replica's own /status says who and where it is.
    let s = rs[0].status();
    assert_eq!(
        (s["id"].as_str(), s["zone"].as_str()),
        (Some("r1"), Some("z1"))
    );
    assert_eq!(s["paused"], false);
    assert!(s["staged_version"].is_null(), "v2 is live, not staged: {s}");
}

#[test]
fn a_laggard_holds_the_rollout_until_ready_timeout_then_min_ready_decides() {
    let d = test_dir("fleet-laggard");
    let mut m = Master::start(
        d.path(),
        &[
            "--rollout",
            "fleet",
            "--ready-timeout-secs",
            "4",
            "--min-ready",
            "0.7",
        ],
    );
    let rs = replicas(&m, d.path(), 4, &[]);
    wait_reported(&m, 4);
    let v1 = m.publish_new("snapshot.20260302000000000", 4 * MB, 41);
    all_on(&rs, v1);
    let (code, _) = crate::replica::http("POST", &format!("{}/pause", rs[3].url), None).unwrap();
    assert_eq!(code, 200);
    rs[3].wait_status(START, "paused", |s| s["paused"] == true);

    let v2 = m.publish_next(v1, "snapshot.20260302000100000", MB, 42);
    let ro = wait_rollout(&m, REPLICATE, "three replicas staged, r4 lagging", |r| {
        r["version"] == v2 && r["ready"].as_array().is_some_and(|a| a.len() == 3)
    });
    // Held: nobody runs v2 while r4 has not staged it (unless the timeout
    // already passed on a slow machine: then min_ready has activated).
    if ro["phase"] == "staging" {
        assert_eq!(ro["laggards"], serde_json::json!(["r4"]), "{ro}");
        for r in &rs {
            assert_eq!(
                r.status()["current_version"],
                v1,
                "{} swapped early",
                r.proc.name
            );
        }
    }
    // After ready_timeout_secs: 3 of 4 ≥ 0.7, so v2 goes live without r4.
    let ro = wait_rollout(&m, REPLICATE, "activation with min_ready", |r| {
        r["active_version"] == v2
    });
    assert!(
        ro["note"].as_str().unwrap_or("").contains("r4"),
        "the note names the laggard: {ro}"
    );
    all_on(&rs[..3], v2);
    assert_eq!(rs[3].status()["current_version"], v1, "paused r4 stays");
    let row = replicas_of(&m)
        .into_iter()
        .find(|r| r["id"] == "r4")
        .unwrap();
    assert_eq!(
        (row["paused"].as_bool(), row["lag_versions"].as_u64()),
        (Some(true), Some(1))
    );

    // Resumed, r4 catches up and the rollout completes.
    crate::replica::http("POST", &format!("{}/resume", rs[3].url), None).unwrap();
    rs[3].wait_version(v2, REPLICATE);
    wait_rollout(&m, REPLICATE, "the rollout done", |r| r["phase"] == "done");
}

#[test]
fn with_min_ready_one_a_laggard_makes_the_rollout_stuck_and_it_is_named() {
    let d = test_dir("fleet-stuck");
    let mut m = Master::start(
        d.path(),
        &["--rollout", "fleet", "--ready-timeout-secs", "2"],
    );
    let rs = replicas(&m, d.path(), 2, &[]);
    wait_reported(&m, 2);
    let v1 = m.publish_new("snapshot.20260303000000000", 4 * MB, 51);
    all_on(&rs, v1);
    crate::replica::http("POST", &format!("{}/pause", rs[1].url), None).unwrap();
    rs[1].wait_status(START, "paused", |s| s["paused"] == true);
    let v2 = m.publish_next(v1, "snapshot.20260303000100000", MB, 52);
    let ro = wait_rollout(&m, REPLICATE, "the rollout stuck", |r| {
        r["phase"] == "stuck"
    });
    assert_eq!(ro["laggards"], serde_json::json!(["r2"]), "{ro}");
    assert!(ro["note"].as_str().unwrap().contains("r2"), "{ro}");
    assert_eq!(ro["active_version"], v1, "stuck activates nothing: {ro}");
    assert_eq!(rs[0].status()["current_version"], v1);
    assert_eq!(rs[0].status()["staged_version"], v2);
    assert_eq!(rs[0].status()["state"], "staged");
    // The laggard stages it: the rollout goes on by itself.
    crate::replica::http("POST", &format!("{}/resume", rs[1].url), None).unwrap();
    all_on(&rs, v2);
    wait_rollout(&m, REPLICATE, "the rollout done", |r| r["phase"] == "done");
}

#[test]
fn canaries_go_first_and_a_failing_canary_rolls_back() {
    let d = test_dir("fleet-canary");
    let mut m = Master::start(
        d.path(),
        &["--rollout", "fleet", "--canary", "r1", "--canary-secs", "2"],
    );
    // The canary's health check fails on a version holding BAD.
    let check = "test ! -e \"$INDEXSWARM_PATH/BAD\"";
    let mut rs = vec![start_replica(
        &m,
        &d.path().join("r1"),
        "r1",
        &["--id", "r1", "--health-check", check],
        &[],
    )];
    rs.extend(
        ["r2", "r3"]
            .iter()
            .map(|id| start_replica(&m, &d.path().join(id), id, &["--id", id], &[])),
    );
    wait_reported(&m, 3);
    let v1 = m.publish_new("snapshot.20260304000000000", 4 * MB, 61);
    all_on(&rs, v1);
    let ro = wait_rollout(&m, REPLICATE, "v1 done", |r| r["phase"] == "done");
    let (canary_at, activated_at) = (ms(&ro["canary_at"]), ms(&ro["activated_at"]));
    assert!(
        activated_at >= canary_at + 2000,
        "canary_secs respected: {ro}"
    );
    let swap = |r: &Replica| ms(&r.status()["last_swap_at"]);
    assert!(swap(&rs[0]) < activated_at, "the canary ran v1 first");
    for r in &rs[1..] {
        assert!(
            swap(r) >= activated_at,
            "{} waited for the canary",
            r.proc.name
        );
    }

    // v2 holds BAD: the canary runs it, fails its check, and goes back.
    let times: Vec<u64> = rs[1..]
        .iter()
        .map(|r| r.status()["times_replicated"].as_u64().unwrap())
        .collect();
    let from = m.snapshot(v1).to_path_buf();
    let v2 = m.publish("snapshot.20260304000100000", |dst| {
        indexswarm::demo::next_snapshot(&from, dst, MB, 62).unwrap();
        std::fs::write(dst.join("BAD"), b"bad").unwrap();
    });
    let ro = wait_rollout(&m, REPLICATE, "the canary rolled back", |r| {
        r["phase"] == "rolled_back"
    });
    assert!(ro["note"].as_str().unwrap().contains("r1"), "{ro}");
    assert_eq!(ro["active_version"], v1, "{ro}");
    rs[0].wait_version(v1, REPLICATE);
    for (r, t) in rs[1..].iter().zip(times) {
        let s = r.status();
        assert_eq!(s["current_version"], v1, "{}: {s}", r.proc.name);
        assert_eq!(
            s["times_replicated"], t,
            "{} never swapped to v{v2}",
            r.proc.name
        );
    }
}
