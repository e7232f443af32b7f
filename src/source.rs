//! Loading a `.torrent` from a path or an `http://` URL, with a size cap;
//! reading any answer with a size cap ([`read_capped`]); the redirect
//! policy of clients that talk to masters and trackers.

use std::path::Path;
use std::time::Duration;

use crate::metainfo::{Metainfo, MetainfoError, MAX_TORRENT_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// With the error's causes: "error following redirect" alone does not
    /// say that the redirect was refused, nor why.
    #[error("{0}: {}", crate::util::error_chain(.1))]
    Http(String, reqwest::Error),
    #[error("{0}: HTTP {1}")]
    Status(String, u16),
    #[error("{0}: larger than {MAX_TORRENT_BYTES} bytes")]
    TooLarge(String),
    #[error("{0}: {1}")]
    Invalid(String, MetainfoError),
}

/// Reads a torrent's bytes from a file or URL and validates them.
pub async fn load_torrent(
    http: &reqwest::Client,
    src: &str,
) -> Result<(Vec<u8>, Metainfo), SourceError> {
    let bytes = if src.starts_with("http://") || src.starts_with("https://") {
        fetch_bytes(http, src, None).await?
    } else {
        let path = Path::new(src);
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| SourceError::Io(src.into(), e))?
            .len();
        if len > MAX_TORRENT_BYTES as u64 {
            return Err(SourceError::TooLarge(src.into()));
        }
        tokio::fs::read(path)
            .await
            .map_err(|e| SourceError::Io(src.into(), e))?
    };
    let meta = Metainfo::from_bytes(&bytes).map_err(|e| SourceError::Invalid(src.into(), e))?;
    Ok((bytes, meta))
}

/// GETs a URL into memory, refusing bodies over the torrent size cap.
pub async fn fetch_bytes(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<Vec<u8>, SourceError> {
    let err = |e| SourceError::Http(url.into(), e);
    let mut get = http.get(url).timeout(Duration::from_secs(30));
    if let Some(t) = token {
        get = get.bearer_auth(t);
    }
    let mut resp = get.send().await.map_err(err)?;
    if !resp.status().is_success() {
        return Err(SourceError::Status(url.into(), resp.status().as_u16()));
    }
    read_capped(&mut resp, MAX_TORRENT_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => SourceError::TooLarge(url.into()),
            BodyError::Http(e) => err(e),
        })
}

/// Why a response body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// Reads a response body of at most `limit` bytes, as every read of a
/// master's (or tracker's) answer must: a body that declares a longer
/// length is refused before a byte of it is read, one that turns out
/// longer as soon as it passes `limit`. Memory stays within `limit`
/// (plus one chunk), whatever the other side sends.
pub async fn read_capped(resp: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = match resp.content_length().map(usize::try_from) {
        Some(Ok(n)) if n <= limit => n,
        Some(_) => return Err(BodyError::TooLarge { limit }),
        None => 0,
    };
    let mut body = Vec::with_capacity(declared);
    while let Some(chunk) = resp.chunk().await? {
        match body.len().checked_add(chunk.len()) {
            Some(n) if n <= limit => body.extend_from_slice(&chunk),
            _ => return Err(BodyError::TooLarge { limit }),
        }
    }
    Ok(body)
}

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Why a redirect was not followed.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("redirect to another origin ({to}) refused: only {origin} may answer")]
    OffOrigin { origin: String, to: String },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooMany,
}

/// The redirect policy of every client that talks to masters and
/// trackers: a redirect is followed only to the origin (scheme, host,
/// port) of the request that was sent, and at most [`MAX_REDIRECTS`]
/// times. A master (or anything in between) cannot send a replica to
/// another host, with whatever the request carries.
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        let (origin, to) = (first.origin(), attempt.url().origin());
        if origin != to {
            let error = RedirectError::OffOrigin {
                origin: origin.ascii_serialization(),
                to: to.ascii_serialization(),
            };
            attempt.error(error)
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(RedirectError::TooMany)
        } else {
            attempt.follow()
        }
    })
}
