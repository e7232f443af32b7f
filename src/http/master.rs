//! The master's API (INTERFACE.md): snapshots, versions, torrents, the
//! tracker, status, health and metrics, all on one port.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::Filter;

use super::{error, json, text, Reply};
use crate::master::{Master, PublishError};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    path: Option<String>,
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
const BODY_LIMIT: usize = 64 * 1024;

/// Why a request body could not be read.
enum BodyError {
    TooLarge,
    Read(String),
}

/// The request body, at most `BODY_LIMIT` bytes. Unlike
/// `warp::body::content_length_limit`, which rejects any request without a
/// `Content-Length` header, a body-less `curl -X POST URL` reads as empty,
/// and a chunked body is still bounded.
async fn read_body<S, B>(body: S) -> Result<Bytes, BodyError>
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

async fn post_snapshot(
    master: Arc<Master>,
    auth: Option<String>,
    body: Result<Bytes, BodyError>,
) -> Result<Reply, warp::Rejection> {
    if let Some(token) = &master.cfg.api_token {
        let ok = auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| t.trim() == token);
        if !ok {
            return Ok(error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
            ));
        }
    }
    let body = match body {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Ok(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {BODY_LIMIT} bytes"),
            ))
        }
        Err(BodyError::Read(e)) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ))
        }
    };
    let req: SnapshotRequest = if body.iter().all(|b| b.is_ascii_whitespace()) {
        SnapshotRequest { path: None }
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    format!("body must be {{\"path\": \"DIR\"}}: {e}"),
                ))
            }
        }
    };
    let name = match req.path {
        Some(p) => match resolve(&master.cfg.snapshots_dir, &p) {
            Ok(n) => n,
            Err((status, message)) => return Ok(error(status, message)),
        },
        None => match master.newest_dir() {
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
    Ok(match master.publish(&name).await {
        Ok((rec, true)) => json(StatusCode::CREATED, &master.version_info(&rec)),
        Ok((rec, false)) => json(StatusCode::OK, &master.version_info(&rec)),
        Err(PublishError::BadPath(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(PublishError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(e @ PublishError::Changed(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(PublishError::Failed(m)) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    })
}

pub fn routes(
    master: Arc<Master>,
) -> impl Filter<Extract = (Reply,), Error = std::convert::Infallible> + Clone {
    let tracker = crate::tracker::routes(master.tracker.clone());
    let m = warp::any().map(move || master.clone());

    let snapshot = warp::path!("snapshot")
        .and(warp::post())
        .and(m.clone())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::stream().then(read_body))
        .and_then(post_snapshot);

    let versions = warp::path!("versions")
        .and(warp::get())
        .and(m.clone())
        .map(|m: Arc<Master>| json(StatusCode::OK, &m.versions()));

    let latest = warp::path!("versions" / "latest")
        .and(warp::get())
        .and(m.clone())
        .map(|m: Arc<Master>| match m.versions().into_iter().next() {
            Some(v) => json(StatusCode::OK, &v),
            None => error(StatusCode::NOT_FOUND, "no version published yet"),
        });

    let torrent = warp::path!("versions" / u64 / "torrent")
        .and(warp::get())
        .and(m.clone())
        .map(|n: u64, m: Arc<Master>| match m.torrent(n) {
            Some(bytes) => text(StatusCode::OK, "application/x-bittorrent", bytes),
            None => error(StatusCode::NOT_FOUND, format!("no published version {n}")),
        });

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

    snapshot
        .or(latest)
        .unify()
        .or(versions)
        .unify()
        .or(torrent)
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
