//! What the master reports: `/status` (per index, the default index's
//! fields also at the top level as in the first release) and `/metrics`
//! (every per-index metric carries an `index` label).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::index::Index;
use super::registry;
use super::Master;

impl Index {
    /// This index's part of `/status`.
    pub fn status(&self) -> Value {
        let reg = self.registry.lock();
        let shared = &self.shared;
        let mut versions = Vec::new();
        let (mut uploaded, mut upload_rate) = (0u64, 0u64);
        let mut hash_to_version = HashMap::new();
        for r in reg.published() {
            hash_to_version.insert(r.info_hash, r.version);
            let p = shared.engine.get(&r.info_hash).map(|s| s.snapshot());
            uploaded += p.as_ref().map_or(0, |p| p.uploaded);
            upload_rate += p.as_ref().map_or(0, |p| p.upload_rate);
            versions.push(json!({
                "version": r.version,
                "name": r.name,
                "info_hash": r.info_hash,
                "seeding": p.as_ref().is_some_and(|p| p.complete),
                "connected_peers": p.as_ref().map_or(0, |p| p.peers),
                "tracked_peers": shared.tracker.peers(&r.info_hash).len(),
                "uploaded": p.as_ref().map_or(0, |p| p.uploaded),
                "upload_rate": p.as_ref().map_or(0, |p| p.upload_rate),
            }));
        }
        let withdrawn: Vec<Value> = reg
            .all()
            .iter()
            .filter(|r| r.state == registry::VersionState::Modified)
            .map(|r| json!({"version": r.version, "name": r.name, "reason": r.note}))
            .collect();
        let pending: Vec<Value> = self
            .settler
            .lock()
            .pending(tokio::time::Instant::now())
            .into_iter()
            .map(|(n, d)| json!({"name": n, "settles_in_secs": d.as_secs_f64()}))
            .collect();
        json!({
            "name": self.name,
            "versions": versions,
            "latest_version": reg.published().first().map(|r| r.version),
            "epoch": self.epoch,
            "withdrawn": withdrawn,
            "pending_snapshots": pending,
            "uploaded": uploaded,
            "upload_rate": upload_rate,
            "replicas": self.announced_replicas(&hash_to_version),
            "last_error": *self.last_error.lock(),
            "verify": *self.verify.lock(),
            "last_publish": *self.last_publish.lock(),
        })
    }

    /// Replicas heard from through announces: the newest version each holds.
    fn announced_replicas(
        &self,
        hash_to_version: &HashMap<crate::metainfo::InfoHash, u64>,
    ) -> Vec<Value> {
        // One row per peer id and address, as the tracker keys them: a
        // stranger announcing a replica's id from elsewhere is another row.
        let mut replicas: HashMap<([u8; 20], std::net::IpAddr), Map<String, Value>> =
            HashMap::new();
        for (hash, version) in hash_to_version {
            for p in self.shared.tracker.peers(hash) {
                let e = replicas.entry((p.peer_id, p.addr.ip())).or_default();
                e.insert(
                    "peer_id".into(),
                    String::from_utf8_lossy(&p.peer_id[..8]).into_owned().into(),
                );
                e.insert("addr".into(), p.addr.to_string().into());
                let key = if p.left == 0 {
                    "current_version"
                } else {
                    "downloading_version"
                };
                if e.get(key)
                    .and_then(Value::as_u64)
                    .is_none_or(|v| v < *version)
                {
                    e.insert(key.into(), (*version).into());
                }
                e.insert(
                    "last_seen_secs".into(),
                    p.last_seen.elapsed().as_secs().into(),
                );
            }
        }
        replicas.into_values().map(Value::Object).collect()
    }

    /// Payload bytes the master served for this index's seeded versions.
    pub fn uploaded_bytes(&self) -> u64 {
        self.registry
            .lock()
            .published()
            .iter()
            .filter_map(|r| self.shared.engine.get(&r.info_hash))
            .fold(0u64, |sum, s| sum.saturating_add(s.snapshot().uploaded))
    }

    /// This index's gauges, labelled with its name.
    fn render_metrics(&self) {
        let m = &self.shared.registry_metrics;
        let published = self.registry.lock().published();
        let (mut uploaded, mut peers) = (0, 0);
        for r in &published {
            if let Some(s) = self.shared.engine.get(&r.info_hash) {
                let p = s.snapshot();
                uploaded += p.uploaded;
                peers += p.peers;
            }
        }
        let l = self.name.as_str();
        m.set_counter_for(
            "indexswarm_uploaded_bytes_total",
            "Payload bytes uploaded to peers",
            l,
            uploaded,
        );
        m.set_gauge_for(
            "indexswarm_peers",
            "Connected peers across seeded versions",
            l,
            peers as i64,
        );
        m.set_gauge_for(
            "indexswarm_versions",
            "Published versions",
            l,
            published.len() as i64,
        );
        let latest = published.first().map_or(0, |r| r.version as i64);
        m.set_gauge_for(
            "indexswarm_latest_version",
            "Newest published version number",
            l,
            latest,
        );
    }
}

/// The series of one fleet gauge, across indexes.
type Series = Vec<(Vec<String>, f64)>;

impl Master {
    /// The fleet's gauges, across indexes: replicas by state, each
    /// replica's lag (one series per replica id, bounded by the fleet's own
    /// cap), the last rollout's swap skew, the peer-to-peer share, the
    /// active version, and whether a rollout is stuck.
    fn render_fleet_metrics(&self) {
        let now = crate::util::now_unix_ms();
        let (mut by_state, mut lag, mut skew, mut p2p, mut active, mut stuck): (
            Series,
            Series,
            Series,
            Series,
            Series,
            Series,
        ) = Default::default();
        for i in self.indexes() {
            let name = i.name.clone();
            let fleet = self.shared.fleet.lock();
            for (state, n) in fleet.count_by_state(&name, now) {
                by_state.push((vec![name.clone(), state], n as f64));
            }
            let active_of = |_: &str| i.active_version();
            for row in fleet.rows(Some(&name), now, active_of) {
                lag.push((vec![name.clone(), row.id], row.lag_versions as f64));
            }
            let replicas = fleet.uploaded(&name) as f64;
            drop(fleet);
            let view = i.rollout_view(None);
            if let Some(s) = view.swap_skew_seconds {
                skew.push((vec![name.clone()], s));
            }
            let total = replicas + i.uploaded_bytes() as f64;
            p2p.push((
                vec![name.clone()],
                if total > 0.0 { replicas / total } else { 0.0 },
            ));
            active.push((vec![name.clone()], view.active_version.unwrap_or(0) as f64));
            let is_stuck = view.phase == Some(crate::api::Phase::Stuck);
            stuck.push((vec![name], if is_stuck { 1.0 } else { 0.0 }));
        }
        let m = &self.shared.registry_metrics;
        let idx = &["index"];
        m.set_gauge_series(
            "indexswarm_fleet_replicas",
            "Replicas that reported, by state (stale: silent for three poll intervals)",
            &["index", "state"],
            &by_state,
        );
        m.set_gauge_series(
            "indexswarm_replica_lag_versions",
            "Versions between a replica's live version and the active one",
            &["index", "replica"],
            &lag,
        );
        m.set_gauge_series(
            "indexswarm_rollout_swap_skew_seconds",
            "Last replica's swap minus the first's, for the last completed activation",
            idx,
            &skew,
        );
        m.set_gauge_series(
            "indexswarm_peer_to_peer_ratio",
            "Share of the bytes replicas received that other replicas served (0-1)",
            idx,
            &p2p,
        );
        m.set_gauge_series(
            "indexswarm_active_version",
            "The version the fleet runs (0: none yet)",
            idx,
            &active,
        );
        m.set_gauge_series(
            "indexswarm_rollout_stuck",
            "1 while a fleet rollout is stuck waiting for laggards",
            idx,
            &stuck,
        );
    }

    /// `/status`: the default index's fields at the top level (as in the
    /// first release), every index under `indexes`, and the totals.
    pub fn status(&self) -> Value {
        let mut per_index = Map::new();
        let (mut uploaded, mut upload_rate) = (0u64, 0u64);
        for i in self.indexes() {
            let s = i.status();
            uploaded += s["uploaded"].as_u64().unwrap_or(0);
            upload_rate += s["upload_rate"].as_u64().unwrap_or(0);
            per_index.insert(i.name.clone(), s);
        }
        let mut top = self
            .default_index()
            .and_then(|i| per_index.get(&i.name).cloned())
            .unwrap_or_else(|| json!({}));
        if let Value::Object(o) = &mut top {
            o.insert("uploaded".into(), uploaded.into());
            o.insert("upload_rate".into(), upload_rate.into());
            o.insert("peer_addr".into(), self.peer_addr().to_string().into());
            o.insert(
                "uptime_secs".into(),
                self.shared.started.elapsed().as_secs().into(),
            );
            o.insert("indexes".into(), Value::Object(per_index));
        }
        top
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics_text(&self) -> String {
        for i in self.indexes() {
            i.render_metrics();
        }
        let m = &self.shared.registry_metrics;
        let s = &self.shared.tracker.stats;
        use std::sync::atomic::Ordering::Relaxed;
        m.set_counter(
            "indexswarm_tracker_announces_total",
            "Announces received",
            s.announces.load(Relaxed),
        );
        m.set_counter(
            "indexswarm_tracker_scrapes_total",
            "Scrapes received",
            s.scrapes.load(Relaxed),
        );
        m.set_counter(
            "indexswarm_tracker_failures_total",
            "Announces refused",
            s.failures.load(Relaxed),
        );
        self.render_fleet_metrics();
        m.render()
    }
}
