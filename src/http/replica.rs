//! The replica's API (INTERFACE.md): status, readiness, poll-now, the
//! operator's levers (pause, resume, abort), health, metrics. Levers act
//! on every index, or on one under `/indexes/{name}/...`.

use std::sync::Arc;

use warp::http::StatusCode;
use warp::Filter;

use super::{error, json, text, Reply};
use crate::replica::{Lever, ReplicaSet as Replica};

/// `GET /readyz`: 200 when every index has a live version no more than
/// `max_lag_versions` behind the master's active one; 503 with the reasons.
fn readyz(r: &Replica) -> Reply {
    match r.readiness() {
        Ok(()) => text(StatusCode::OK, "text/plain", "ready\n"),
        Err(why) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"ready": false, "error": why.join("; ")}),
        ),
    }
}

fn lever(r: &Replica, index: Option<&str>, action: &str) -> Reply {
    let which = match action {
        "pause" => Lever::Pause,
        "resume" => Lever::Resume,
        _ => Lever::Abort,
    };
    match r.lever(index, which) {
        Ok(aborted) => {
            let st = r.status();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "paused": st.indexes.values().any(|s| s.paused),
                    "aborted": aborted,
                }),
            )
        }
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

fn is_lever(action: &str) -> bool {
    matches!(action, "pause" | "resume" | "abort")
}

pub fn routes(
    replica: Arc<Replica>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    let sec = replica.security().clone();
    let access = super::auth::Access {
        swarm_token: sec.swarm_token,
        api_token: None,
        metrics_token: sec.metrics_token,
    };
    super::auth::guard(access, super::auth::replica_need)
        .and(
            super::events::replica_page()
                .or(api_routes(replica).map(|r: Reply| warp::Reply::into_response(r)))
                .unify(),
        )
        .recover(super::recover_response)
        .unify()
}

fn api_routes(
    replica: Arc<Replica>,
) -> impl Filter<Extract = (Reply,), Error = std::convert::Infallible> + Clone {
    let r = warp::any().map(move || replica.clone());
    let status = warp::path!("status")
        .and(warp::get())
        .and(r.clone())
        .map(|r: Arc<Replica>| json(StatusCode::OK, &r.status()));
    let ready = warp::path!("readyz")
        .and(warp::get())
        .and(r.clone())
        .map(|r: Arc<Replica>| readyz(&r));
    let poll = warp::path!("poll")
        .and(warp::post())
        .and(r.clone())
        .map(|r: Arc<Replica>| {
            r.poll_now();
            json(StatusCode::ACCEPTED, &serde_json::json!({"polling": true}))
        });
    let levers = warp::path!(String)
        .and(warp::post())
        .and(r.clone())
        .and_then(|action: String, r: Arc<Replica>| async move {
            if is_lever(&action) {
                Ok(lever(&r, None, &action))
            } else {
                Err(warp::reject::not_found())
            }
        });
    let index_levers = warp::path!("indexes" / String / String)
        .and(warp::post())
        .and(r.clone())
        .and_then(
            |index: String, action: String, r: Arc<Replica>| async move {
                if is_lever(&action) {
                    Ok(lever(&r, Some(&index), &action))
                } else {
                    Err(warp::reject::not_found())
                }
            },
        );
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(r)
        .map(|r: Arc<Replica>| {
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                r.metrics_text(),
            )
        });
    status
        .or(ready)
        .unify()
        .or(poll)
        .unify()
        .or(levers)
        .unify()
        .or(index_levers)
        .unify()
        .or(metrics)
        .unify()
        .or(super::healthz())
        .unify()
        .recover(super::recover)
        .unify()
}
