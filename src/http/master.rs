//! The master's API (INTERFACE.md): snapshots, versions, torrents, the
//! tracker, status, health and metrics, all on one port.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::Filter;

use super::{error, json, text, Reply};
use crate::master::{Index, Master, PublishError};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    path: Option<String>,
    /// Publish a retired snapshot again (a rollback to it).
    #[serde(default)]
    force: bool,
}

/// Resolves a user-supplied path to the name of a direct child of the
/// snapshots directory. `..`, absolute paths elsewhere and symlinks that
/// escape are refused (400); a missing directory is 404.
fn resolve(snapshots: &Path, given: &str) -> Result<String, (StatusCode, String)> {
    let p = Path::new(given);
    let candidate: PathBuf = if p.is_absolute() {
        p.to_path_buf()
    } else {
        snapshots.join(p)
    };
    let root = snapshots.canonicalize().map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("snapshots directory: {e}"),
        )
    })?;
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{given:?} leaves the snapshots directory"),
        ));
    }
    let real = match candidate.canonicalize() {
        Ok(r) => r,
        Err(_) => {
            // Missing: is it at least a path inside the snapshots directory?
            let inside = candidate.starts_with(snapshots) || candidate.starts_with(&root);
            return Err(if inside {
                (StatusCode::NOT_FOUND, format!("{given:?} does not exist"))
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("{given:?} is not inside the snapshots directory"),
                )
            });
        }
    };
    if real.parent() != Some(root.as_path()) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{given:?} is not a directory directly inside the snapshots directory"),
        ));
    }
    if !real.is_dir() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{given:?} is not a directory"),
        ));
    }
    real.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "directory name must be UTF-8".to_string(),
            )
        })
}

/// Largest `POST /snapshot` body accepted.
pub(super) const BODY_LIMIT: usize = 64 * 1024;

/// Why a request body could not be read.
pub(super) enum BodyError {
    TooLarge,
    Read(String),
}

/// The request body, at most `BODY_LIMIT` bytes. Unlike
/// `warp::body::content_length_limit`, which rejects any request without a
/// `Content-Length` header, a body-less `curl -X POST URL` reads as empty,
/// and a chunked body is still bounded.
pub(super) async fn read_body<S, B>(body: S) -> Result<Bytes, BodyError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures::StreamExt;
    futures::pin_mut!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        while chunk.has_remaining() {
            let part = chunk.chunk();
            if out.len() + part.len() > BODY_LIMIT {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(out))
}

/// The index a route names (`/indexes/{name}/...`), or the one the
/// unprefixed routes serve; an error reply when there is none.
/// (The reply is boxed: a `Response` is large and the error path is rare.)
pub(super) fn pick(master: &Master, name: Option<&str>) -> Result<Arc<Index>, Box<Reply>> {
    let found = match name {
        Some(n) => master.index(n),
        None => master.default_index(),
    };
    found.cloned().ok_or_else(|| {
        let names: Vec<&str> = master.indexes().iter().map(|i| i.name.as_str()).collect();
        let message = match name {
            Some(n) => format!(
                "no index named {n:?}; this master serves {}",
                names.join(", ")
            ),
            None => format!(
                "this master serves several indexes ({}); use /indexes/{{name}}/...",
                names.join(", ")
            ),
        };
        Box::new(error(StatusCode::NOT_FOUND, message))
    })
}

/// Does the request carry the API token (when one is configured)?
pub(super) fn authorized(master: &Master, auth: Option<&str>) -> bool {
    match &master.cfg().api_token {
        None => true,
        Some(token) => auth
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| t.trim() == token),
    }
}

/// The body of `POST /snapshot`: empty, or `{"path": "DIR"}`.
fn snapshot_request(body: Result<Bytes, BodyError>) -> Result<SnapshotRequest, Box<Reply>> {
    let body = match body {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Err(Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {BODY_LIMIT} bytes"),
            )))
        }
        Err(BodyError::Read(e)) => {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )))
        }
    };
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(SnapshotRequest {
            path: None,
            force: false,
        });
    }
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"path\": \"DIR\"}}: {e}"),
        ))
    })
}

async fn post_snapshot(
    master: Arc<Master>,
    index: Option<String>,
    auth: Option<String>,
    body: Result<Bytes, BodyError>,
) -> Result<Reply, warp::Rejection> {
    if !authorized(&master, auth.as_deref()) {
        return Ok(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ));
    }
    let idx = match pick(&master, index.as_deref()) {
        Ok(i) => i,
        Err(reply) => return Ok(*reply),
    };
    let req = match snapshot_request(body) {
        Ok(r) => r,
        Err(reply) => return Ok(*reply),
    };
    let name = match req.path {
        Some(p) => match resolve(&idx.cfg.snapshots_dir, &p) {
            Ok(n) => n,
            Err((status, message)) => return Ok(error(status, message)),
        },
        None => match idx.newest_dir() {
            Some(n) => n,
            None => {
                return Ok(error(
                    StatusCode::NOT_FOUND,
                    "no complete snapshot directory to publish: none has the marker file, \
                     or none has been unchanged for settle_secs",
                ))
            }
        },
    };
    Ok(match idx.publish(&name, req.force).await {
        Ok((rec, true)) => json(StatusCode::CREATED, &idx.version_info(&rec)),
        Ok((rec, false)) => json(StatusCode::OK, &idx.version_info(&rec)),
        Err(PublishError::BadPath(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(PublishError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(e @ (PublishError::Changed(_) | PublishError::Retired { .. })) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::util::error_chain(&e),
        ),
    })
}

fn versions_of(m: &Master, index: Option<&str>) -> Reply {
    match pick(m, index) {
        Ok(i) => json(StatusCode::OK, &i.versions()),
        Err(r) => *r,
    }
}

fn torrent_of(m: &Master, index: Option<&str>, n: u64) -> Reply {
    match pick(m, index).map(|i| i.torrent(n)) {
        Ok(Some(bytes)) => text(StatusCode::OK, "application/x-bittorrent", bytes),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no published version {n}")),
        Err(r) => *r,
    }
}

/// `GET /indexes`: every index with its latest version and its versions.
fn list_indexes(m: &Master) -> Reply {
    let list: Vec<serde_json::Value> = m
        .indexes()
        .iter()
        .map(|i| {
            let versions = i.versions();
            serde_json::json!({
                "name": i.name,
                "latest_version": versions.first().map(|v| v.version),
                "versions": versions,
            })
        })
        .collect();
    json(StatusCode::OK, &list)
}

/// The version routes, unprefixed (the default index) and per index.
fn version_routes(
    m: impl Filter<Extract = (Arc<Master>,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone {
    let get = warp::get();
    let versions = warp::path!("versions")
        .and(get)
        .and(m.clone())
        .map(|m: Arc<Master>| versions_of(&m, None));
    let torrent = warp::path!("versions" / u64 / "torrent")
        .and(get)
        .and(m.clone())
        .map(|n: u64, m: Arc<Master>| torrent_of(&m, None, n));
    let indexes = warp::path!("indexes")
        .and(get)
        .and(m.clone())
        .map(|m: Arc<Master>| list_indexes(&m));
    let i_versions = warp::path!("indexes" / String / "versions")
        .and(get)
        .and(m.clone())
        .map(|i: String, m: Arc<Master>| versions_of(&m, Some(&i)));
    let i_torrent = warp::path!("indexes" / String / "versions" / u64 / "torrent")
        .and(get)
        .and(m)
        .map(|i: String, n: u64, m: Arc<Master>| torrent_of(&m, Some(&i), n));
    versions
        .or(torrent)
        .unify()
        .or(indexes)
        .unify()
        .or(i_versions)
        .unify()
        .or(i_torrent)
        .unify()
}

pub fn routes(
    master: Arc<Master>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    let sec = &master.cfg().security;
    let access = super::auth::Access {
        swarm_token: sec.swarm_token.clone(),
        api_token: master.cfg().api_token.clone(),
        metrics_token: sec.metrics_token.clone(),
    };
    let dashboard = super::events::master_routes(master.clone());
    super::auth::guard(access, super::auth::master_need)
        .and(
            dashboard
                .or(api_routes(master).map(|r: Reply| warp::Reply::into_response(r)))
                .unify(),
        )
        .recover(super::recover_response)
        .unify()
}

/// Everything but the dashboard: JSON (and torrents, and the tracker).
fn api_routes(
    master: Arc<Master>,
) -> impl Filter<Extract = (Reply,), Error = std::convert::Infallible> + Clone {
    let tracker = crate::tracker::routes(master.tracker().clone());
    let master_for_fleet = master.clone();
    let m = warp::any().map(move || master.clone());

    let snapshot = warp::path!("snapshot")
        .and(warp::post())
        .and(m.clone())
        .map(|m| (m, None::<String>))
        .untuple_one()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::stream().then(read_body))
        .and_then(post_snapshot);
    let i_snapshot = warp::path!("indexes" / String / "snapshot")
        .and(warp::post())
        .and(m.clone())
        .map(|i: String, m| (m, Some(i)))
        .untuple_one()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::stream().then(read_body))
        .and_then(post_snapshot);

    let status = warp::path!("status")
        .and(warp::get())
        .and(m.clone())
        .map(|m: Arc<Master>| json(StatusCode::OK, &m.status()));

    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(m.clone())
        .map(|m: Arc<Master>| {
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                m.metrics_text(),
            )
        });

    let fleet = super::fleet::routes(master_for_fleet);
    snapshot
        .or(i_snapshot)
        .unify()
        .or(fleet)
        .unify()
        .or(version_routes(m.clone()))
        .unify()
        .or(status)
        .unify()
        .or(metrics)
        .unify()
        .or(super::healthz())
        .unify()
        .or(tracker)
        .unify()
        .recover(super::recover)
        .unify()
}
