//! The replica's API (INTERFACE.md): status, poll-now, health, metrics.

use std::sync::Arc;

use warp::http::StatusCode;
use warp::Filter;

use super::{json, text, Reply};
use crate::replica::ReplicaSet as Replica;

pub fn routes(
    replica: Arc<Replica>,
) -> impl Filter<Extract = (Reply,), Error = std::convert::Infallible> + Clone {
    let r = warp::any().map(move || replica.clone());
    let status = warp::path!("status")
        .and(warp::get())
        .and(r.clone())
        .map(|r: Arc<Replica>| json(StatusCode::OK, &r.status()));
    let poll = warp::path!("poll")
        .and(warp::post())
        .and(r.clone())
        .map(|r: Arc<Replica>| {
            r.poll_now();
            json(StatusCode::ACCEPTED, &serde_json::json!({"polling": true}))
        });
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
        .or(poll)
        .unify()
        .or(metrics)
        .unify()
        .or(super::healthz())
        .unify()
        .recover(super::recover)
        .unify()
}
