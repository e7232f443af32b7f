//! Issue #9: fleet rollouts. A real master and 4–5 real replicas on
//! loopback: in `fleet` mode nobody swaps before everybody staged; a
//! laggard holds the rollout until `ready_timeout_secs`, then `min_ready`
//! decides and `/rollout` names it; canaries go first and a failing one
//! rolls back; a rollback to a version on disk moves no bytes; a master
//! killed mid-activation leaves one version; `/readyz` and `/replicas`
//! say what the contract says; the long poll answers at once or 304.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::replica::{start_replica, wait_or, Master, Replica, MB, REPLICATE, START};

mod fleet;
mod levers;

const TOKEN: &str = "t0ken";

/// `n` replicas `r1`..`rn` following `m`, with `extra` flags each.
fn replicas(m: &Master, root: &Path, n: usize, extra: &[&str]) -> Vec<Replica> {
    (1..=n)
        .map(|i| {
            let id = format!("r{i}");
            let mut args = vec!["--id", id.as_str(), "--zone", "z1"];
            args.extend_from_slice(extra);
            start_replica(m, &root.join(&id), &id, &args, &[])
        })
        .collect()
}

fn rollout(m: &Master) -> Value {
    get_json(&format!("{}/rollout", m.url)).expect("GET /rollout")
}

fn replicas_of(m: &Master) -> Vec<Value> {
    match get_json(&format!("{}/replicas", m.url)) {
        Some(Value::Array(rows)) => rows,
        other => panic!("GET /replicas: {other:?}"),
    }
}

/// Waits until `/rollout` satisfies `ok`.
fn wait_rollout(m: &Master, limit: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_or(
        limit,
        what,
        || {
            last = rollout(m);
            ok(&last)
        },
        || format!("rollout: {}", rollout(m)),
    );
    last
}

/// Waits until every replica runs `v` and is idle.
fn all_on(rs: &[Replica], v: u64) {
    for r in rs {
        r.wait_version(v, REPLICATE);
    }
}

/// Waits until the master has heard from all `n` replicas.
fn wait_reported(m: &Master, n: usize) {
    wait_or(
        START,
        &format!("{n} replicas in /replicas"),
        || replicas_of(m).len() == n,
        || format!("{:?}", replicas_of(m)),
    );
}

/// A POST with `Authorization: Bearer <token>` when given.
fn post(url: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    request("POST", url, None, auth.as_deref())
}

fn ms(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    indexswarm::util::parse_rfc3339_ms(s).unwrap_or_else(|| panic!("not RFC 3339: {s}"))
}
