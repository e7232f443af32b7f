//! The container image's `HEALTHCHECK`: `GET /healthz` of the sidecar in the
//! same container, exit 0 on `200`, 1 otherwise.
//!
//! The runtime image holds the `indexswarm` binary, its C library and the CA
//! certificates, and no shell, curl or wget, so a health check needs a
//! program of its own. This one uses the standard library only (no runtime,
//! no TLS) and adds about 400 KB to the image.
//!
//! ```sh
//! indexswarm-healthcheck                          # the sidecar configured by the environment
//! indexswarm-healthcheck http://127.0.0.1:7071/healthz
//! ```
//!
//! Without an argument it checks `$INDEXSWARM_HEALTHCHECK_URL`; else the
//! ports of `$INDEXSWARM_MASTER_HTTP_LISTEN` and
//! `$INDEXSWARM_REPLICA_HTTP_LISTEN`; else the default ports 7070 (master)
//! and 7071 (replica). One answer of `200` is enough: a container runs one
//! sidecar, and the other port is then closed.
//!
//! Rejected: `bash` and `/dev/tcp` (a shell in the image, and the port still
//! has to come from somewhere); a `healthcheck` subcommand of `indexswarm`
//! (the command-line interface is a contract; a probe is packaging).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// Long enough for a loaded sidecar, short enough for a 10 s check interval.
const TIMEOUT: Duration = Duration::from_secs(3);

/// `host:port` and path of an `http://` URL.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/healthz"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok((authority.to_string(), path.to_string()))
}

/// The URL of a listen address such as `0.0.0.0:7071` (an unspecified
/// address is checked on loopback).
fn url_of_listen(listen: &str) -> Option<String> {
    let (host, port) = listen.trim().rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = match host {
        "" | "0.0.0.0" | "[::]" => "127.0.0.1",
        h => h,
    };
    Some(format!("http://{host}:{port}/healthz"))
}

fn candidates() -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        return args;
    }
    if let Ok(url) = std::env::var("INDEXSWARM_HEALTHCHECK_URL") {
        return vec![url];
    }
    let from_env: Vec<String> = [
        "INDEXSWARM_MASTER_HTTP_LISTEN",
        "INDEXSWARM_REPLICA_HTTP_LISTEN",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok())
    .filter_map(|l| url_of_listen(&l))
    .collect();
    if !from_env.is_empty() {
        return from_env;
    }
    vec![
        "http://127.0.0.1:7070/healthz".into(),
        "http://127.0.0.1:7071/healthz".into(),
    ]
}

/// The status code of `GET url`.
fn status_of(url: &str) -> Result<u16, String> {
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{url}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("{url}: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: indexswarm-healthcheck\r\n\r\n"
    )
    .map_err(|e| format!("{url}: {e}"))?;
    // The status line fits in the first read; more is never needed.
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| format!("{url}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| format!("{url}: not an HTTP answer"))
}

fn main() -> ExitCode {
    let mut failures = Vec::new();
    for url in candidates() {
        match status_of(&url) {
            Ok(200) => return ExitCode::SUCCESS,
            Ok(code) => failures.push(format!("{url}: HTTP {code}")),
            Err(e) => failures.push(e),
        }
    }
    eprintln!("unhealthy: {}", failures.join("; "));
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_become_loopback_urls() {
        assert_eq!(
            url_of_listen("0.0.0.0:7071").as_deref(),
            Some("http://127.0.0.1:7071/healthz")
        );
        assert_eq!(
            url_of_listen("10.0.0.5:9000").as_deref(),
            Some("http://10.0.0.5:9000/healthz")
        );
        assert_eq!(url_of_listen("nonsense"), None);
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:7070/healthz").unwrap(),
            ("127.0.0.1:7070".into(), "/healthz".into())
        );
        assert_eq!(
            split_url("http://m:7070").unwrap(),
            ("m:7070".into(), "/healthz".into())
        );
        assert!(split_url("https://m:7070/healthz").is_err());
    }
}
