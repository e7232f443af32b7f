//! The master's fleet routes: replica reports, the fleet list, the rollout
//! (with its long poll), the active version, and the operator's levers
//! (activate, pause, resume), which need the API token.
//!
//! Each route exists unprefixed (the default index, or the only one) and
//! under `/indexes/{name}`; `POST /rollout/pause|resume` unprefixed act on
//! every index, since pausing replication during heavy indexing is a
//! node-wide decision.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::Filter;

use super::master::{authorized, pick, read_body, BodyError};
use super::{error, json, Reply};
use crate::api::{Report, MAX_REPORT_BYTES};
use crate::master::{Index, Master, MAX_WAIT};
use crate::util::now_unix_ms;

type Query = HashMap<String, String>;

/// A query parameter as a number: `Ok(None)` when absent, a 400 reply when
/// it is not one.
fn number(q: &Query, key: &str) -> Result<Option<u64>, Box<Reply>> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("{key}={v:?} must be a non-negative integer"),
            ))
        }),
    }
}

/// `wait=SECS`, at most [`MAX_WAIT`].
fn wait_of(q: &Query) -> Result<Duration, Box<Reply>> {
    Ok(Duration::from_secs(number(q, "wait")?.unwrap_or(0)).min(MAX_WAIT))
}

fn unauthorized() -> Reply {
    error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
}

/// `POST /replicas/report`.
async fn report(
    m: Arc<Master>,
    remote: Option<SocketAddr>,
    body: Result<Bytes, BodyError>,
) -> Result<Reply, warp::Rejection> {
    let body = match body {
        Ok(b) if b.len() <= MAX_REPORT_BYTES => b,
        Ok(_) | Err(BodyError::TooLarge) => {
            return Ok(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a report is at most {MAX_REPORT_BYTES} bytes"),
            ))
        }
        Err(BodyError::Read(e)) => return Ok(error(StatusCode::BAD_REQUEST, e)),
    };
    let report = match serde_json::from_slice::<Report>(&body)
        .map_err(|e| e.to_string())
        .and_then(Report::validate)
    {
        Ok(r) => r,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, format!("bad report: {e}"))),
    };
    let Some(idx) = m.index(&report.index).cloned() else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            format!("no index named {:?}", report.index),
        ));
    };
    let changed = match m
        .shared()
        .fleet
        .lock()
        .record(report, remote, now_unix_ms())
    {
        Ok(c) => c,
        Err(full) => return Ok(error(StatusCode::SERVICE_UNAVAILABLE, full.to_string())),
    };
    if changed {
        idx.drive_rollout();
    }
    // The answer carries the active version, so a paused replica (which
    // does not poll) still knows how far behind it is (`/readyz`).
    let answer = serde_json::json!({
        "accepted": true,
        "active_version": idx.active_version(),
        "generation": idx.generation(),
    });
    if changed {
        // A replica that moved on may free a version for retention.
        tokio::spawn(async move { idx.apply_retention().await });
    }
    Ok(json(StatusCode::OK, &answer))
}

/// `GET /replicas[?index=NAME]` and `GET /indexes/{name}/replicas`.
fn replicas(m: &Master, index: Option<&str>) -> Reply {
    if let Some(i) = index {
        if m.index(i).is_none() {
            return error(StatusCode::NOT_FOUND, format!("no index named {i:?}"));
        }
    }
    let active_of = |name: &str| m.index(name).and_then(|i| i.active_version());
    let rows = m
        .shared()
        .fleet
        .lock()
        .rows(index, now_unix_ms(), active_of);
    json(StatusCode::OK, &rows)
}

/// `GET /rollout[?id=ID&generation=G&wait=SECS]`: answers when the
/// generation differs from G, or after SECS with the same view.
async fn rollout(idx: Arc<Index>, q: Query) -> Reply {
    let (generation, wait) = match (number(&q, "generation"), wait_of(&q)) {
        (Ok(g), Ok(w)) => (g, w),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    if let Some(g) = generation {
        idx.wait_change(g, wait).await;
    }
    json(
        StatusCode::OK,
        &idx.rollout_view(q.get("id").map(String::as_str)),
    )
}

/// `GET /versions/latest?after=N&wait=SECS`: at once if a version newer
/// than N is published, else when one is, or 304 after SECS.
async fn latest(idx: Arc<Index>, q: Query) -> Reply {
    let (after, wait) = match (number(&q, "after"), wait_of(&q)) {
        (Ok(a), Ok(w)) => (a, w),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let seen = idx.generation();
        let newest = idx.versions().into_iter().next();
        match (newest, after) {
            (Some(v), None) => return json(StatusCode::OK, &v),
            (Some(v), Some(a)) if v.version > a => return json(StatusCode::OK, &v),
            (None, None) => return error(StatusCode::NOT_FOUND, "no version published yet"),
            _ => {}
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return warp::http::Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .body(Vec::new())
                .unwrap_or_default();
        }
        idx.wait_change(seen, left).await;
    }
}

/// `GET /tracker/members?info_hash=HEX`: the addresses that announced
/// (with the swarm token, in a closed swarm) and have not expired; the
/// replicas' peer gates ask it (`replica/gate.rs`).
fn members(m: &Master, q: &Query) -> Reply {
    let hash = q
        .get("info_hash")
        .and_then(|h| h.parse::<crate::metainfo::InfoHash>().ok());
    let Some(hash) = hash else {
        return error(StatusCode::BAD_REQUEST, "info_hash must be 40 hex digits");
    };
    let mut addresses: Vec<std::net::IpAddr> = m
        .tracker()
        .peers(&hash)
        .iter()
        .map(|p| p.addr.ip())
        .collect();
    addresses.sort();
    addresses.dedup();
    json(
        StatusCode::OK,
        &serde_json::json!({ "addresses": addresses }),
    )
}

/// `GET /versions/active`.
fn active(idx: &Index) -> Reply {
    let v = idx
        .active_version()
        .and_then(|a| idx.versions().into_iter().find(|v| v.version == a));
    match v {
        Some(v) => json(StatusCode::OK, &v),
        None => error(StatusCode::NOT_FOUND, "no active version"),
    }
}

/// `POST /versions/{n}/activate`.
fn activate(m: &Master, index: Option<&str>, n: u64, auth: Option<&str>) -> Reply {
    if !authorized(m, auth) {
        return unauthorized();
    }
    let idx = match pick(m, index) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    match idx.activate(n) {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// `POST /rollout/{pause,resume}`: one index, or every index unprefixed.
fn lever(m: &Master, index: Option<&str>, action: &str, auth: Option<&str>) -> Reply {
    if !authorized(m, auth) {
        return unauthorized();
    }
    let targets: Vec<Arc<Index>> = match index {
        Some(_) => match pick(m, index) {
            Ok(i) => vec![i],
            Err(r) => return *r,
        },
        None => m.indexes().to_vec(),
    };
    for i in &targets {
        match action {
            "pause" => i.pause_rollout(),
            _ => i.resume_rollout(),
        }
    }
    let views: Vec<_> = targets.iter().map(|i| i.rollout_view(None)).collect();
    match index {
        Some(_) => json(StatusCode::OK, &views[0]),
        None => json(StatusCode::OK, &views),
    }
}

type MasterFilter = warp::filters::BoxedFilter<(Arc<Master>,)>;

/// The index a route names, or the default; an error reply otherwise.
fn index_of(m: &Master, name: Option<String>) -> Result<Arc<Index>, Box<Reply>> {
    pick(m, name.as_deref())
}

/// A route's two paths as one: unprefixed (`None`: the default index) or
/// under `/indexes/{name}` (`Some(name)`).
fn either_index(
    plain: warp::filters::BoxedFilter<()>,
    indexed: warp::filters::BoxedFilter<(String,)>,
) -> warp::filters::BoxedFilter<(Option<String>,)> {
    plain.map(|| None).or(indexed.map(Some)).unify().boxed()
}

/// Reads: the fleet, the rollout (long poll), active and latest versions.
fn reads(m: MasterFilter) -> warp::filters::BoxedFilter<(Reply,)> {
    let get = warp::get();
    let q = warp::query::<Query>();
    let replicas_all = warp::path!("replicas")
        .and(get)
        .and(m.clone())
        .and(q)
        .map(|m: Arc<Master>, q: Query| replicas(&m, q.get("index").map(String::as_str)));
    let replicas_of = warp::path!("indexes" / String / "replicas")
        .and(get)
        .and(m.clone())
        .map(|i: String, m: Arc<Master>| replicas(&m, Some(&i)));
    // Each route unprefixed (the default index) and under /indexes/{name}.
    let rollout_route = either_index(
        warp::path!("rollout").boxed(),
        warp::path!("indexes" / String / "rollout").boxed(),
    )
    .and(get)
    .and(m.clone())
    .and(q)
    .then(|i: Option<String>, m: Arc<Master>, q: Query| async move {
        match index_of(&m, i) {
            Ok(idx) => rollout(idx, q).await,
            Err(r) => *r,
        }
    });
    let latest_route = either_index(
        warp::path!("versions" / "latest").boxed(),
        warp::path!("indexes" / String / "versions" / "latest").boxed(),
    )
    .and(get)
    .and(m.clone())
    .and(q)
    .then(|i: Option<String>, m: Arc<Master>, q: Query| async move {
        match index_of(&m, i) {
            Ok(idx) => latest(idx, q).await,
            Err(r) => *r,
        }
    });
    let active_route = either_index(
        warp::path!("versions" / "active").boxed(),
        warp::path!("indexes" / String / "versions" / "active").boxed(),
    )
    .and(get)
    .and(m.clone())
    .map(|i: Option<String>, m: Arc<Master>| match index_of(&m, i) {
        Ok(idx) => active(&idx),
        Err(r) => *r,
    });
    let members_route = warp::path!("tracker" / "members")
        .and(get)
        .and(m.clone())
        .and(q)
        .map(|m: Arc<Master>, q: Query| members(&m, &q));
    replicas_all
        .or(replicas_of)
        .unify()
        .or(members_route)
        .unify()
        .or(rollout_route)
        .unify()
        .or(latest_route)
        .unify()
        .or(active_route)
        .unify()
        .boxed()
}

/// Writes: reports, activation, pause and resume.
fn writes(m: MasterFilter) -> warp::filters::BoxedFilter<(Reply,)> {
    let post = warp::post();
    let auth = warp::header::optional::<String>("authorization");
    let report_route = warp::path!("replicas" / "report")
        .and(post)
        .and(m.clone())
        .and(
            warp::ext::optional::<crate::util::net::RemoteAddr>()
                .map(|r: Option<crate::util::net::RemoteAddr>| r.map(|r| r.0)),
        )
        .and(warp::body::stream().then(read_body))
        .and_then(report);
    let activate_route = warp::path!("versions" / u64 / "activate")
        .and(post)
        .and(m.clone())
        .and(auth)
        .map(|n: u64, m: Arc<Master>, a: Option<String>| activate(&m, None, n, a.as_deref()));
    let activate_of = warp::path!("indexes" / String / "versions" / u64 / "activate")
        .and(post)
        .and(m.clone())
        .and(auth)
        .map(|i: String, n: u64, m: Arc<Master>, a: Option<String>| {
            activate(&m, Some(&i), n, a.as_deref())
        });
    let lever_all = warp::path!("rollout" / String)
        .and(post)
        .and(m.clone())
        .and(auth)
        .and_then(
            |action: String, m: Arc<Master>, a: Option<String>| async move {
                match action.as_str() {
                    "pause" | "resume" => Ok(lever(&m, None, &action, a.as_deref())),
                    _ => Err(warp::reject::not_found()),
                }
            },
        );
    let lever_of = warp::path!("indexes" / String / "rollout" / String)
        .and(post)
        .and(m)
        .and(auth)
        .and_then(
            |i: String, action: String, m: Arc<Master>, a: Option<String>| async move {
                match action.as_str() {
                    "pause" | "resume" => Ok(lever(&m, Some(&i), &action, a.as_deref())),
                    _ => Err(warp::reject::not_found()),
                }
            },
        );
    report_route
        .or(activate_route)
        .unify()
        .or(activate_of)
        .unify()
        .or(lever_all)
        .unify()
        .or(lever_of)
        .unify()
        .boxed()
}

/// Every fleet route.
pub fn routes(master: Arc<Master>) -> warp::filters::BoxedFilter<(Reply,)> {
    let m = warp::any().map(move || master.clone()).boxed();
    reads(m.clone()).or(writes(m)).unify().boxed()
}
