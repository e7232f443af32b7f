//! Who may do what, decided in one place for every route of a sidecar.
//!
//! | route | needs |
//! |---|---|
//! | `GET /healthz`, `GET /readyz`, `GET /` (the page, no data) | nothing |
//! | the tracker (`/announce`, `/scrape`, `/announce/<token>`) | its own check (bencoded refusal) |
//! | `GET /metrics` | the metrics token, when one is set |
//! | master mutations (`POST /snapshot`, `…/activate`, `…/rollout/pause|resume`) | the API token; without one, a loopback client |
//! | replica levers (`POST /poll|pause|resume|abort`) | a loopback client, or the swarm token |
//! | every other master route (versions, torrents, `/replicas`, `/rollout`, `/status`, `/events`, reports) | the swarm token (or the API token), when one is set |
//!
//! Tokens come as `Authorization: Bearer <token>`; `/events` also takes
//! `?token=` (a browser's EventSource cannot set headers). They are
//! compared in constant time.

use std::net::SocketAddr;

use warp::http::Method;
use warp::Filter;

use crate::util::net::{is_loopback, same_secret, RemoteAddr};

/// The tokens a sidecar checks; `None` = not configured.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub swarm_token: Option<String>,
    pub api_token: Option<String>,
    pub metrics_token: Option<String>,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Nothing,
    Read,
    Metrics,
    Mutate,
    Lever,
}

/// Refused: answered 401 by the routes' `recover`.
#[derive(Debug)]
pub struct Unauthorized(pub &'static str);

impl warp::reject::Reject for Unauthorized {}

/// The token a request carries (`Bearer` header, or `?token=` on `/events`).
fn presented<'a>(auth: Option<&'a str>, query: Option<&'a str>, path: &str) -> Option<&'a str> {
    let bearer = auth.and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
    bearer.or_else(|| {
        (path == "/events")
            .then_some(query)
            .flatten()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
    })
}

fn matches(given: Option<&str>, token: &Option<String>) -> bool {
    match (given, token) {
        (Some(g), Some(t)) => same_secret(g.as_bytes(), t.as_bytes()),
        _ => false,
    }
}

/// The master's rule for a request.
pub fn master_need(method: &Method, path: &str) -> Need {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let last = segs.last().copied().unwrap_or("");
    match (method, path) {
        (_, "/healthz") | (&Method::GET, "/") => Need::Nothing,
        (_, "/metrics") => Need::Metrics,
        (_, "/announce" | "/scrape") => Need::Nothing,
        (_, p) if p.starts_with("/announce/") || p.starts_with("/scrape/") => Need::Nothing,
        (&Method::POST, _) if last == "snapshot" || last == "activate" => Need::Mutate,
        (&Method::POST, _) if segs.len() >= 2 && segs[segs.len() - 2] == "rollout" => Need::Mutate,
        _ => Need::Read,
    }
}

/// The replica's rule for a request.
pub fn replica_need(method: &Method, path: &str) -> Need {
    match (method, path) {
        (_, "/metrics") => Need::Metrics,
        (&Method::POST, _) => Need::Lever,
        _ => Need::Nothing,
    }
}

impl Access {
    /// Does a request with these credentials get what it needs?
    pub fn allows(&self, need: Need, given: Option<&str>, client: Option<SocketAddr>) -> bool {
        let local = client.is_some_and(|c| is_loopback(c.ip()));
        match need {
            Need::Nothing => true,
            Need::Read => {
                self.swarm_token.is_none()
                    || matches(given, &self.swarm_token)
                    || matches(given, &self.api_token)
            }
            Need::Metrics => self.metrics_token.is_none() || matches(given, &self.metrics_token),
            Need::Mutate => match &self.api_token {
                Some(_) => matches(given, &self.api_token),
                None => local,
            },
            Need::Lever => local || matches(given, &self.swarm_token),
        }
    }
}

/// A filter that passes a request its rule allows and rejects the rest
/// with [`Unauthorized`]. `rule` maps method and path to a [`Need`].
pub fn guard(
    access: Access,
    rule: fn(&Method, &str) -> Need,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::optional::<RemoteAddr>())
        .and_then(
            move |method: Method,
                  path: warp::path::FullPath,
                  auth: Option<String>,
                  query: String,
                  remote: Option<RemoteAddr>| {
                let access = access.clone();
                async move {
                    let need = rule(&method, path.as_str());
                    let given = presented(auth.as_deref(), Some(&query), path.as_str());
                    if access.allows(need, given, remote.map(|r| r.0)) {
                        Ok(())
                    } else {
                        Err(warp::reject::custom(Unauthorized(match need {
                            Need::Mutate => "this needs the API token (or, with none configured, a request from loopback)",
                            Need::Metrics => "this needs the metrics token",
                            Need::Lever => "this needs a request from loopback or the swarm token",
                            _ => "this needs the swarm token",
                        })))
                    }
                }
            },
        )
        .untuple_one()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_master_table() {
        let g = Method::GET;
        let p = Method::POST;
        assert_eq!(master_need(&g, "/healthz"), Need::Nothing);
        assert_eq!(master_need(&g, "/"), Need::Nothing);
        assert_eq!(master_need(&g, "/announce"), Need::Nothing);
        assert_eq!(master_need(&g, "/announce/s3cret"), Need::Nothing);
        assert_eq!(master_need(&g, "/metrics"), Need::Metrics);
        for read in [
            "/versions",
            "/versions/1/torrent",
            "/indexes",
            "/replicas",
            "/rollout",
            "/status",
            "/events",
        ] {
            assert_eq!(master_need(&g, read), Need::Read, "{read}");
        }
        assert_eq!(master_need(&p, "/replicas/report"), Need::Read);
        for m in [
            "/snapshot",
            "/indexes/a/snapshot",
            "/versions/3/activate",
            "/indexes/a/versions/3/activate",
            "/rollout/pause",
            "/indexes/a/rollout/resume",
        ] {
            assert_eq!(master_need(&p, m), Need::Mutate, "{m}");
        }
    }

    #[test]
    fn tokens_and_loopback() {
        let open = Access::default();
        assert!(open.allows(Need::Read, None, addr("10.0.0.1:1")));
        assert!(open.allows(Need::Mutate, None, addr("127.0.0.1:1")));
        assert!(
            !open.allows(Need::Mutate, None, addr("10.0.0.1:1")),
            "no token: loopback only"
        );
        let closed = Access {
            swarm_token: Some("swarm".into()),
            api_token: Some("api".into()),
            metrics_token: Some("m".into()),
        };
        assert!(!closed.allows(Need::Read, None, addr("127.0.0.1:1")));
        assert!(!closed.allows(Need::Read, Some("swarmx"), None));
        assert!(closed.allows(Need::Read, Some("swarm"), None));
        assert!(closed.allows(Need::Read, Some("api"), None));
        assert!(!closed.allows(Need::Mutate, Some("swarm"), addr("127.0.0.1:1")));
        assert!(closed.allows(Need::Mutate, Some("api"), addr("10.0.0.1:1")));
        assert!(!closed.allows(Need::Metrics, None, None));
        assert!(closed.allows(Need::Metrics, Some("m"), None));
        assert!(closed.allows(Need::Lever, Some("swarm"), addr("10.0.0.1:1")));
        assert!(closed.allows(Need::Lever, None, addr("127.0.0.1:1")));
        assert!(!closed.allows(Need::Lever, None, addr("10.0.0.1:1")));
        assert_eq!(
            presented(None, Some("a=1&token=swarm"), "/events"),
            Some("swarm")
        );
        assert_eq!(
            presented(None, Some("token=swarm"), "/versions"),
            None,
            "query only for /events"
        );
    }
}
