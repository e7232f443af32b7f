//! `GET /events`: the dashboard's live feed, as Server-Sent Events, and
//! `GET /`: the dashboard itself (one embedded HTML file, no external
//! fetch: it must work in an air-gapped datacenter).
//!
//! Each connection first gets the whole current state, then only what
//! changed: the feed looks every [`LOOK_EVERY`] and sends an event for
//! each index's versions, rollout and replica rows whose JSON differs from
//! what this connection was last sent, plus every index's traffic counters
//! every [`TRAFFIC_EVERY`]. Diffing per connection keeps the server
//! stateless and bounded: the memory is one JSON string per item shown.
//! EventSource reconnects by itself; a reconnect gets the full state again.
//!
//! Events: `version` (`{index, versions, latest_version, active_version}`),
//! `rollout` (the `/rollout` object), `replica` (one `/replicas` row),
//! `traffic` (`{index, at, master_uploaded, replicas_uploaded}`).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warp::http::StatusCode;
use warp::sse::Event;
use warp::Filter;

use crate::master::Master;
use crate::util::{now_rfc3339, now_unix_ms};

/// How often a connection's feed looks for changes.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How often traffic counters are sent.
const TRAFFIC_EVERY: Duration = Duration::from_secs(2);
/// Concurrent `/events` connections; more get 503.
pub const MAX_CLIENTS: usize = 64;

/// The master's dashboard page.
pub const MASTER_PAGE: &str = include_str!("dashboard/master.html");
/// The replica's status page.
pub const REPLICA_PAGE: &str = include_str!("dashboard/replica.html");

/// Counts a connection for as long as it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection's feed.
struct Feed {
    master: Arc<Master>,
    /// Key → the JSON this connection was last sent under it.
    sent: HashMap<String, String>,
    queue: VecDeque<Event>,
    tick: tokio::time::Interval,
    traffic_at: Option<Instant>,
    _slot: Slot,
}

impl Feed {
    /// Queues `data` as `event` unless this connection already has it.
    fn offer(&mut self, key: String, event: &str, data: &serde_json::Value) {
        let text = data.to_string();
        if self.sent.get(&key) == Some(&text) {
            return;
        }
        self.queue
            .push_back(Event::default().event(event).data(text.clone()));
        self.sent.insert(key, text);
    }

    /// Everything that changed since the last look.
    fn collect(&mut self) {
        let master = self.master.clone();
        let traffic_due = self.traffic_at.is_none_or(|t| t.elapsed() >= TRAFFIC_EVERY);
        for idx in master.indexes() {
            let versions = idx.versions();
            let payload = serde_json::json!({
                "index": idx.name,
                "latest_version": versions.first().map(|v| v.version),
                "active_version": idx.active_version(),
                "versions": versions,
            });
            self.offer(format!("version/{}", idx.name), "version", &payload);
            let mut view = serde_json::to_value(idx.rollout_view(None)).unwrap_or_default();
            if let Some(o) = view.as_object_mut() {
                // Replica-specific and changing with every report: not shown.
                o.remove("target");
                o.remove("stage");
                o.remove("generation");
            }
            self.offer(format!("rollout/{}", idx.name), "rollout", &view);
        }
        let rows = {
            let active_of = |name: &str| master.index(name).and_then(|i| i.active_version());
            master
                .shared()
                .fleet
                .lock()
                .rows(None, now_unix_ms(), active_of)
        };
        for row in rows {
            let key = format!("replica/{}/{}", row.index, row.id);
            let v = serde_json::to_value(&row).unwrap_or_default();
            self.offer(key, "replica", &v);
        }
        if traffic_due {
            self.traffic_at = Some(Instant::now());
            for idx in master.indexes() {
                let replicas = master.shared().fleet.lock().uploaded(&idx.name);
                let t = serde_json::json!({
                    "index": idx.name,
                    "at": now_rfc3339(),
                    "master_uploaded": idx.uploaded_bytes(),
                    "replicas_uploaded": replicas,
                });
                self.queue
                    .push_back(Event::default().event("traffic").data(t.to_string()));
            }
        }
    }
}

/// The event stream of one connection.
fn feed(feed: Feed) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.queue.pop_front() {
                return Some((Ok(e), f));
            }
            f.tick.tick().await;
            f.collect();
        }
    })
}

/// `GET /` and `GET /events` of the master.
pub fn master_routes(
    master: Arc<Master>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let clients = Arc::new(AtomicUsize::new(0));
    let page = warp::path::end().and(warp::get()).map(|| {
        warp::reply::with_header(warp::reply::html(MASTER_PAGE), "cache-control", "no-store")
            .into_response()
    });
    let events = warp::path!("events").and(warp::get()).map(move || {
        if clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::Relaxed);
            return super::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("at most {MAX_CLIENTS} dashboards at once"),
            )
            .into_response();
        }
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let f = Feed {
            master: master.clone(),
            sent: HashMap::new(),
            queue: VecDeque::new(),
            tick,
            traffic_at: None,
            _slot: Slot(clients.clone()),
        };
        let stream = warp::sse::keep_alive().stream(feed(f));
        warp::sse::reply(stream).into_response()
    });
    page.or(events).unify()
}

/// `GET /` of the replica.
pub fn replica_page(
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path::end().and(warp::get()).map(|| {
        warp::reply::with_header(warp::reply::html(REPLICA_PAGE), "cache-control", "no-store")
            .into_response()
    })
}

use warp::Reply as _;
