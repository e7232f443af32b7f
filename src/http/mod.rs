//! The HTTP APIs of both sidecars, as warp filters. Handlers call into
//! `master` / `replica`; errors become `{"error": "..."}` with a status code.

pub mod auth;
pub mod events;
mod fleet;
pub mod master;
pub mod replica;
pub mod server;

use std::net::SocketAddr;

use warp::http::{header, Response, StatusCode};
use warp::Filter;

pub type Reply = Response<Vec<u8>>;

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": message.into() }))
}

pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// `GET /healthz`.
pub fn healthz() -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .map(|| text(StatusCode::OK, "text/plain", "ok\n"))
}

/// Anything unmatched: a JSON 404 (or 405 for a known path with the wrong method).
pub async fn recover(err: warp::Rejection) -> Result<Reply, std::convert::Infallible> {
    if let Some(auth::Unauthorized(why)) = err.find::<auth::Unauthorized>() {
        return Ok(error(StatusCode::UNAUTHORIZED, *why));
    }
    if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        return Ok(error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        return Ok(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    Ok(error(StatusCode::NOT_FOUND, "not found"))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `routes` on `addr` (HTTPS when `tls` is given) and serves them
/// until `shutdown`, under the caps and timeouts of [`server`].
pub fn serve<F, R>(
    routes: F,
    addr: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), BindError>
where
    F: Filter<Extract = (R,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    R: warp::Reply,
{
    let (local, bound) =
        server::bind(routes, addr, tls, shutdown).map_err(|source| BindError { addr, source })?;
    Ok((local, bound.run()))
}

/// [`recover`] as a boxed-body response, for routes that stream.
pub async fn recover_response(
    err: warp::Rejection,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    let r = recover(err).await?;
    Ok(warp::Reply::into_response(r))
}
