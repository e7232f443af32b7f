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
        let mut replicas: HashMap<[u8; 20], Map<String, Value>> = HashMap::new();
        for (hash, version) in hash_to_version {
            for p in self.shared.tracker.peers(hash) {
                let e = replicas.entry(p.peer_id).or_default();
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

impl Master {
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
        m.render()
    }
}
