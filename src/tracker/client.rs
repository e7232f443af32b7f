//! The announce client: tells trackers about us and hands back the peers
//! they list. It dials nobody; the swarm decides what to do with addresses.
//!
//! Lifecycle (BEP 3): `started` first, plain announces every interval the
//! tracker asks for, `completed` once when the download finishes, `stopped`
//! on shutdown. Failures back off quickly (1, 2, 4, 8 s, then at most
//! [`RETRY_CAP`], jittered) and try the next URL in the list; each failure
//! is logged with its whole cause chain ("connect timed out", "connection
//! refused") and kept for the session's stall report.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::protocol::{
    decode_announce, AnnounceRequest, AnnounceResponse, Event, ResponseError, MAX_RESPONSE_BYTES,
};
use crate::metainfo::InfoHash;
use crate::util::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("tracker {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("tracker {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("tracker {url}: {source}")]
    Reply { url: String, source: ResponseError },
    #[error("tracker {url}: reply larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge { url: String },
}

/// Sends one announce and decodes the reply.
pub async fn announce(
    http: &reqwest::Client,
    url: &str,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, AnnounceError> {
    announce_with_token(http, url, req, None).await
}

/// [`announce`], with a closed swarm's token in `Authorization: Bearer`.
pub async fn announce_with_token(
    http: &reqwest::Client,
    url: &str,
    req: &AnnounceRequest,
    token: Option<&str>,
) -> Result<AnnounceResponse, AnnounceError> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{sep}{}", req.to_query());
    let http_err = |source| AnnounceError::Http {
        url: url.to_string(),
        source,
    };
    let mut get = http.get(&full).timeout(Duration::from_secs(15));
    if let Some(t) = token {
        // A closed swarm's token: in a header, never in the URL (logs).
        get = get.bearer_auth(t);
    }
    let mut resp = get.send().await.map_err(http_err)?;
    if !resp.status().is_success() {
        return Err(AnnounceError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    // Read with a cap: a hostile tracker must not make us allocate without bound.
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_err)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(AnnounceError::TooLarge {
                url: url.to_string(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    decode_announce(&body).map_err(|source| AnnounceError::Reply {
        url: url.to_string(),
        source,
    })
}

/// What the session reports to the announce loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
}

/// Settings of one torrent's announce loop.
#[derive(Debug, Clone)]
pub struct AnnounceConfig {
    pub urls: Vec<String>,
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
    pub port: u16,
    pub numwant: u32,
    /// A closed swarm's token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

impl AnnounceConfig {
    fn request(&self, s: TransferStats, event: Event, numwant: u32) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: self.info_hash,
            peer_id: self.peer_id,
            port: self.port,
            uploaded: s.uploaded,
            downloaded: s.downloaded,
            left: s.left,
            event,
            compact: true,
            no_peer_id: true,
            numwant: Some(numwant),
            ip: None,
        }
    }
}

/// Longest wait between announces, whatever a tracker asks.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Shared between an announce loop and its session: the session asks for
/// an announce now (a stalled download), the loop reports its last failure
/// (for the stall reason) or clears it after a success.
#[derive(Debug, Default)]
pub struct AnnounceSignals {
    pub now: tokio::sync::Notify,
    last_error: parking_lot::Mutex<Option<String>>,
}

impl AnnounceSignals {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock() = e;
    }
}

/// The longest wait between failed announces. Short on purpose: a replica
/// must not sit idle for minutes after a tracker hiccup (it knows its peers
/// and hears of more through PEX meanwhile).
pub const RETRY_CAP: Duration = Duration::from_secs(15);

/// The wait after the `failures`-th failure in a row: 1, 2, 4, 8 s, then
/// [`RETRY_CAP`], each ±20% so a fleet that lost its tracker does not come
/// back in lockstep.
pub fn retry_delay(failures: u32) -> Duration {
    use rand::Rng;
    let doublings = failures.saturating_sub(1).min(4);
    let base = Duration::from_secs(1u64 << doublings).min(RETRY_CAP);
    base.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

/// Announces until `shutdown`, then sends `stopped` (bounded by a short timeout).
/// Peers go to `peers_tx`; `stats` is read before every announce and a change
/// of `left` to zero triggers the `completed` event.
pub async fn run_announce_loop(
    http: reqwest::Client,
    cfg: AnnounceConfig,
    mut stats: watch::Receiver<TransferStats>,
    peers_tx: mpsc::Sender<Vec<SocketAddr>>,
    shutdown: CancellationToken,
    signals: std::sync::Arc<AnnounceSignals>,
) {
    if cfg.urls.is_empty() {
        return;
    }
    let mut event = Event::Started;
    let mut was_complete = stats.borrow().left == 0;
    let mut url_index = 0;
    let mut failures: u32 = 0;
    let mut announced_once = false;
    loop {
        let s = *stats.borrow_and_update();
        if !was_complete && s.left == 0 && event != Event::Started {
            event = Event::Completed;
        }
        was_complete |= s.left == 0;
        let req = cfg.request(s, event, cfg.numwant);
        let url = &cfg.urls[url_index % cfg.urls.len()];
        let wait = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = announce_with_token(&http, url, &req, cfg.token.as_deref()) => match r {
                Ok(resp) => {
                    debug!(%url, peers = resp.peers.len(), ?event, "announced");
                    signals.set_error(None);
                    announced_once = true;
                    event = Event::None;
                    failures = 0;
                    let addrs = resp.peers.iter().map(|p| p.addr).collect::<Vec<_>>();
                    if !addrs.is_empty() && peers_tx.send(addrs).await.is_err() {
                        break;
                    }
                    // The decoder clamps already; a reply must never be
                    // able to make us hammer the tracker or sleep for years.
                    resp.interval.clamp(Duration::from_secs(1), MAX_INTERVAL)
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let retry_in = retry_delay(failures);
                    let chain = error_chain(&e);
                    warn!(error = %chain, ?retry_in, "announce failed");
                    signals.set_error(Some(chain));
                    url_index += 1;
                    retry_in
                }
            }
        };
        // Sleep until the interval passes, the download completes, or shutdown.
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut sleep => break,
                _ = signals.now.notified() => break,
                changed = stats.changed() => {
                    if changed.is_err() { break; }
                    if !was_complete && stats.borrow().left == 0 { break; }
                }
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    if announced_once {
        let s = *stats.borrow();
        let req = cfg.request(s, Event::Stopped, 0);
        let url = &cfg.urls[url_index % cfg.urls.len()];
        match tokio::time::timeout(
            Duration::from_secs(3),
            announce_with_token(&http, url, &req, cfg.token.as_deref()),
        )
        .await
        {
            Ok(Ok(_)) => info!(%url, "sent stopped announce"),
            Ok(Err(e)) => warn!(error = %e, "stopped announce failed"),
            Err(_) => warn!(%url, "stopped announce timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn retries_back_off_quickly_to_a_short_cap_with_jitter() {
        let first = retry_delay(1);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        for n in 1..200 {
            assert!(retry_delay(n) <= RETRY_CAP.mul_f64(1.2), "failure {n}");
        }
        let later: std::collections::HashSet<_> = (0..20).map(|_| retry_delay(50)).collect();
        assert!(later.len() > 1, "jittered");
    }

    /// A stand-in tracker (written for this test, not ours): answers every
    /// request with `body` and reports each request line on `seen`.
    async fn stand_in_tracker(body: &'static [u8], seen: mpsc::UnboundedSender<String>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/announce", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let _ = seen.send(line);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn absurd_interval_in_a_reply_does_not_panic_the_announce_loop() {
        // interval and min interval far past u64::MAX seconds; one peer 127.0.0.1:6881.
        const REPLY: &[u8] = b"d8:intervali99999999999999999999999e12:min intervali18446744073709551615e5:peers6:\x7f\x00\x00\x01\x1a\xe1e";
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let url = stand_in_tracker(REPLY, seen_tx).await;
        let cfg = AnnounceConfig {
            urls: vec![url],
            info_hash: InfoHash([7; 20]),
            peer_id: [1; 20],
            port: 6999,
            numwant: 10,
            token: None,
        };
        let (_stats_tx, stats) = watch::channel(TransferStats {
            left: 100,
            ..Default::default()
        });
        let (peers_tx, mut peers_rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_announce_loop(
            reqwest::Client::new(),
            cfg,
            stats,
            peers_tx,
            shutdown.clone(),
            Default::default(),
        ));
        let limit = Duration::from_secs(10);
        let peers = tokio::time::timeout(limit, peers_rx.recv()).await.unwrap();
        assert_eq!(peers, Some(vec!["127.0.0.1:6881".parse().unwrap()]));
        let first = tokio::time::timeout(limit, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(first.contains("event=started"), "{first}");
        // The loop now sleeps (clamped to a day); shutting down must still
        // take its normal path: a `stopped` announce, then a clean end.
        shutdown.cancel();
        let ended = tokio::time::timeout(limit, task).await.unwrap();
        assert!(ended.is_ok(), "the announce loop panicked: {ended:?}");
        let last = tokio::time::timeout(limit, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(last.contains("event=stopped"), "{last}");
    }
}
