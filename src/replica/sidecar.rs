//! The replica sidecar: one [`Replica`] per index it follows, all on one
//! engine (one peer port, one connection budget) and one HTTP port.
//!
//! Every data directory is locked before the engine binds its port, so a
//! second process on any of them is turned away with the holder's pid
//! rather than a port conflict. `/status` keeps the first release's fields
//! for the first index (in name order) and adds `indexes: {name: {...}}`;
//! every metric carries an `index` label.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Replica, ReplicaError, Status};
use crate::config::ReplicaSetConfig;
use crate::swarm::{Engine, EngineConfig};
use crate::telemetry::Metrics;

/// An operator's lever on the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lever {
    Pause,
    Resume,
    Abort,
}

pub struct ReplicaSet {
    pub engine: Engine,
    security: crate::config::security::Security,
    /// In name order; at least one.
    replicas: Vec<Arc<Replica>>,
    metrics: Metrics,
}

/// `/status` of the sidecar: the first index's fields, and every index's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetStatus {
    #[serde(flatten)]
    pub first: Status,
    pub indexes: std::collections::BTreeMap<String, Status>,
}

impl ReplicaSet {
    pub async fn start(cfg: ReplicaSetConfig) -> Result<Arc<ReplicaSet>, ReplicaError> {
        let locked = cfg
            .indexes
            .iter()
            .map(|c| Replica::lock(c.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let roots = match &cfg.security.tls_ca {
            Some(ca) => crate::tls::load_certs(ca)?,
            None => Vec::new(),
        };
        let master_url = cfg
            .indexes
            .first()
            .map(|i| i.master_url.clone())
            .unwrap_or_default();
        let gate = super::gate::MemberGate::new(
            crate::swarm::http_client(&roots),
            master_url,
            cfg.security.clone(),
        );
        let engine = Engine::start(EngineConfig {
            listen: cfg.peer_listen,
            upload_limit: cfg.upload_limit,
            download_limit: cfg.download_limit,
            max_connections: cfg.limits.max_connections,
            gate: Some(Arc::new(gate)),
            swarm_token: cfg.security.swarm_token.clone(),
            http_roots: roots,
            identity: cfg.security.identity()?,
        })
        .await?;
        let mut replicas = Vec::new();
        for l in locked {
            replicas.push(Replica::start(l, engine.clone()).await);
        }
        Ok(Arc::new(ReplicaSet {
            security: cfg.security.clone(),
            engine,
            replicas,
            metrics: Metrics::new(),
        }))
    }

    /// Tokens, peer allow-list, TLS.
    pub fn security(&self) -> &crate::config::security::Security {
        &self.security
    }

    pub fn replicas(&self) -> &[Arc<Replica>] {
        &self.replicas
    }

    /// The replica following index `name`.
    pub fn replica(&self, name: &str) -> Option<&Arc<Replica>> {
        self.replicas.iter().find(|r| r.cfg.index == name)
    }

    /// Polls and replicates every index until `shutdown`, then stops the engine.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut loops = Vec::new();
        for r in &self.replicas {
            let span = tracing::info_span!("index", index = %r.cfg.index);
            loops.push(tokio::spawn(tracing::Instrument::instrument(
                r.clone().run(shutdown.clone()),
                span.clone(),
            )));
            loops.push(tokio::spawn(tracing::Instrument::instrument(
                r.clone().run_reporter(shutdown.clone()),
                span,
            )));
        }
        for l in loops {
            let _ = l.await;
        }
        self.engine.shutdown().await;
    }

    /// Asks every index to poll the master now.
    pub fn poll_now(&self) {
        self.replicas.iter().for_each(|r| r.poll_now());
    }

    /// `/readyz`: every index ready; otherwise each reason, by index.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let why: Vec<String> = self
            .replicas
            .iter()
            .filter_map(|r| r.readiness().err().map(|e| (r, e)))
            .map(|(r, e)| format!("{}: {e}", r.cfg.index))
            .collect();
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    /// `POST /pause`, `/resume`, `/abort` on one index or on all.
    pub fn lever(&self, index: Option<&str>, action: Lever) -> Result<Vec<String>, String> {
        let targets: Vec<&Arc<Replica>> = match index {
            Some(name) => vec![self
                .replica(name)
                .ok_or_else(|| format!("this replica does not follow an index named {name:?}"))?],
            None => self.replicas.iter().collect(),
        };
        let mut aborted = Vec::new();
        for r in targets {
            match action {
                Lever::Pause => r.pause(),
                Lever::Resume => r.resume(),
                Lever::Abort => {
                    if r.abort() {
                        aborted.push(r.cfg.index.clone());
                    }
                }
            }
        }
        Ok(aborted)
    }

    pub fn status(&self) -> SetStatus {
        let indexes: std::collections::BTreeMap<String, Status> = self
            .replicas
            .iter()
            .map(|r| (r.cfg.index.clone(), r.status()))
            .collect();
        SetStatus {
            first: self
                .replicas
                .first()
                .map(|r| r.status())
                .unwrap_or_else(|| Status::new(String::new(), String::new(), None)),
            indexes,
        }
    }

    pub fn metrics_text(&self) -> String {
        for r in &self.replicas {
            r.render_metrics(&self.metrics);
        }
        self.metrics.render()
    }

    /// Per-peer totals of every session, for the demo's "who served what".
    pub fn peer_stats(&self) -> Vec<crate::swarm::PeerStat> {
        self.engine
            .sessions()
            .iter()
            .flat_map(|s| s.peer_stats())
            .collect()
    }
}
