//! The fleet the #9 benchmarks share: a real `indexswarm master` with a
//! marker file and N real `indexswarm replica` processes (ids `r1`..`rN`)
//! on loopback, snapshots built as `cp -al` of the previous one plus a new
//! segment, and the replicas' own clocks read back: every time here comes
//! from a replica's `last_swap_at` (RFC 3339 with milliseconds), compared
//! with the wall clock of the moment the marker file was written. All
//! processes share the one clock of this machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cluster::{start_master, start_replica_with, Node};
use crate::publish_cost::{next_snapshot, MARKER};

/// One HTTP client and runtime for the whole run: polling eight replicas
/// every 50 ms must not build a client per request on two cores.
pub(crate) struct Api {
    rt: tokio::runtime::Runtime,
    c: reqwest::Client,
}

impl Api {
    pub(crate) fn new() -> Result<Api> {
        Ok(Api {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            c: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    /// A request with an optional bearer token: status and JSON body (or Null).
    pub(crate) fn call(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Result<(u16, Value)> {
        self.rt.block_on(async {
            let mut req = match method {
                "POST" => self.c.post(url).body(body.unwrap_or("").to_string()),
                _ => self.c.get(url),
            };
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req
                .send()
                .await
                .with_context(|| format!("{method} {url}"))?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
        })
    }

    /// A GET's body as text, with an optional bearer token.
    pub(crate) fn text(&self, url: &str, token: Option<&str>) -> Result<String> {
        self.rt.block_on(async {
            let mut req = self.c.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            Ok(req.send().await?.text().await?)
        })
    }

    pub(crate) fn get(&self, url: &str) -> Value {
        self.call("GET", url, None, None)
            .map(|r| r.1)
            .unwrap_or(Value::Null)
    }
}

/// Wall-clock milliseconds since the Unix epoch, with a fraction.
pub(crate) fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// An RFC 3339 time of the APIs, in milliseconds since the epoch.
pub(crate) fn rfc_ms(v: &Value) -> Option<f64> {
    v.as_str()
        .and_then(indexswarm::util::parse_rfc3339_ms)
        .map(|ms| ms as f64)
}

/// Processes (not this one) that used at least 10% of a core over half a
/// second: what else was running when a measurement started.
pub(crate) fn others_busy() -> String {
    fn sample() -> Vec<(u32, String, u64)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[open + 1..close].to_string();
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            out.push((pid, comm, t(11) + t(12)));
        }
        out
    }
    let me = std::process::id();
    let a = sample();
    std::thread::sleep(Duration::from_millis(500));
    let b = sample();
    let mut busy: Vec<(u64, String)> = b
        .iter()
        .filter(|(pid, _, _)| *pid != me)
        .filter_map(|(pid, comm, t)| {
            let before = a.iter().find(|x| x.0 == *pid && x.1 == *comm)?.2;
            // Clock ticks are 1/100 s: over 0.5 s, 50 ticks are one core.
            let pct = (t.saturating_sub(before)) * 2;
            (pct >= 10).then(|| (pct, comm.clone()))
        })
        .collect();
    busy.sort_by_key(|x| std::cmp::Reverse(x.0));
    if busy.is_empty() {
        return "nothing else over 10% of a core".into();
    }
    busy.iter()
        .take(6)
        .map(|(p, c)| format!("{c} {p}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The 1-minute load average.
pub(crate) fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// One replica of the fleet.
pub(crate) struct Replica {
    pub(crate) id: String,
    pub(crate) node: Node,
}

/// What a replica's `/status` said once it ran the awaited version.
#[derive(Debug, Clone)]
pub(crate) struct Swap {
    /// `last_swap_at`, ms since the epoch.
    pub(crate) at_ms: f64,
    pub(crate) downloaded: u64,
    pub(crate) reused: u64,
    pub(crate) total: u64,
}

/// A snapshot that was just completed (its marker written).
pub(crate) struct Marked {
    pub(crate) version: u64,
    /// The wall clock just before the marker file was created.
    pub(crate) marker_ms: f64,
    /// Bytes of the new files (segment and commit point).
    pub(crate) changed: u64,
}

pub(crate) struct Fleet {
    pub(crate) logs: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) snaps: PathBuf,
    pub(crate) master: Node,
    pub(crate) replicas: Vec<Replica>,
    pub(crate) api: Api,
    /// The newest snapshot directory, and the number of the next.
    prev: PathBuf,
    next_n: u64,
    /// Versions published so far.
    pub(crate) version: u64,
    tag: String,
    /// Times replicas were started (their logs get a suffix after the first).
    starts: usize,
}

impl Fleet {
    /// A master (`--marker-file READY` plus `master_flags`) with an empty
    /// state under `work/<tag>`, and `n` replicas with `replica_flags`.
    pub(crate) fn start(
        work: &Path,
        tag: &str,
        base: &Path,
        n: usize,
        master_flags: &[&str],
        replica_flags: &[&str],
    ) -> Result<Fleet> {
        let logs = work.join("logs");
        std::fs::create_dir_all(&logs)?;
        let root = work.join(tag);
        let _ = std::fs::remove_dir_all(&root);
        let snaps = root.join("snaps");
        std::fs::create_dir_all(&snaps)?;
        let mut flags = vec!["--marker-file", MARKER];
        flags.extend_from_slice(master_flags);
        let master = start_master(&logs, &format!("{tag}-master"), &snaps, &flags)?;
        let mut f = Fleet {
            logs,
            root,
            snaps,
            master,
            replicas: Vec::new(),
            api: Api::new()?,
            prev: base.to_path_buf(),
            next_n: 0,
            version: 0,
            tag: tag.to_string(),
            starts: 0,
        };
        f.start_replicas(n, replica_flags)?;
        Ok(f)
    }

    /// Starts `n` replicas `r1`..`rn` (data directories kept across
    /// restarts) and waits until the master lists them all.
    pub(crate) fn start_replicas(&mut self, n: usize, flags: &[&str]) -> Result<()> {
        self.starts += 1;
        let suffix = match self.starts {
            1 => String::new(),
            k => format!("-{k}"),
        };
        for i in 1..=n {
            let id = format!("r{i}");
            let data = self.root.join(&id);
            std::fs::create_dir_all(&data)?;
            let mut args = vec!["--id", id.as_str()];
            args.extend_from_slice(flags);
            let node = start_replica_with(
                &self.logs,
                &format!("{}-{id}{suffix}", self.tag),
                &self.master.base,
                &data,
                &args,
            )?;
            self.replicas.push(Replica { id, node });
        }
        self.wait_reported(n)
    }

    /// Stops every replica (SIGTERM to all first, then each is reaped).
    pub(crate) fn stop_replicas(&mut self) {
        for r in &self.replicas {
            let _ = std::process::Command::new("kill")
                .arg(r.node.pid().to_string())
                .status();
        }
        self.replicas.clear();
    }

    /// Waits until `/replicas` lists `n` replicas that are not stale.
    pub(crate) fn wait_reported(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = self.api.get(&format!("{}/replicas", self.master.base));
            let fresh = rows
                .as_array()
                .map(|a| a.iter().filter(|r| r["stale"] != true).count())
                .unwrap_or(0);
            if fresh >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {fresh} of {n} replicas reported to the master: {rows}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Builds the next snapshot (`new_bytes` of new segment; 0 for the
    /// first, a hard-linked copy of the base), lets the watcher's scan of
    /// the rename pass, then writes the marker: the snapshot is complete.
    pub(crate) fn publish(&mut self, new_bytes: u64) -> Result<Marked> {
        let (dir, new) = next_snapshot(&self.snaps, &self.prev, self.next_n, new_bytes)?;
        let changed = new
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        std::thread::sleep(Duration::from_millis(500));
        let marker_ms = now_ms();
        std::fs::File::create(dir.join(MARKER))?;
        self.prev = dir;
        self.next_n += 1;
        self.version += 1;
        Ok(Marked {
            version: self.version,
            marker_ms,
            changed,
        })
    }

    /// The master's `created_at` of `version` (when it became visible), ms.
    pub(crate) fn visible_ms(&self, version: u64, limit: Duration) -> Result<f64> {
        let deadline = Instant::now() + limit;
        loop {
            let list = self.api.get(&format!("{}/versions", self.master.base));
            if let Some(t) = list.as_array().and_then(|a| {
                a.iter()
                    .find(|v| v["version"] == version)
                    .and_then(|v| rfc_ms(&v["created_at"]))
            }) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!("version {version} never listed by the master");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every replica runs `version`, polling `/status` every
    /// 50 ms (the times come from the replicas, not from this polling).
    pub(crate) fn wait_all_on(&self, version: u64, limit: Duration) -> Result<Vec<Swap>> {
        let deadline = Instant::now() + limit;
        let mut done: Vec<Option<Swap>> = vec![None; self.replicas.len()];
        loop {
            for (i, r) in self.replicas.iter().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                let s = self.api.get(&format!("{}/status", r.node.base));
                if s["current_version"] == version && s["state"] != "swapping" {
                    if let Some(at) = rfc_ms(&s["last_swap_at"]) {
                        done[i] = Some(Swap {
                            at_ms: at,
                            downloaded: s["bytes_downloaded"].as_u64().unwrap_or(0),
                            reused: s["bytes_reused"].as_u64().unwrap_or(0),
                            total: s["bytes_total"].as_u64().unwrap_or(0),
                        });
                    }
                }
            }
            if done.iter().all(Option::is_some) {
                return Ok(done.into_iter().flatten().collect());
            }
            if Instant::now() > deadline {
                let late: Vec<&str> = self
                    .replicas
                    .iter()
                    .zip(&done)
                    .filter(|(_, d)| d.is_none())
                    .map(|(r, _)| r.id.as_str())
                    .collect();
                bail!(
                    "replicas {} not on version {version} after {limit:?}; rollout: {}",
                    late.join(", "),
                    self.api.get(&format!("{}/rollout", self.master.base))
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every replica's live version is `version` (after a
    /// restart: recovered from disk, no swap).
    pub(crate) fn wait_live(&self, version: u64, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        for r in &self.replicas {
            while self.api.get(&format!("{}/status", r.node.base))["current_version"] != version {
                if Instant::now() > deadline {
                    bail!("{} does not run version {version} after a restart", r.id);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Waits (at most `limit`) for `/rollout` to say `done` for `version`;
    /// the last view either way.
    pub(crate) fn rollout_done(&self, version: u64, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.api.get(&format!("{}/rollout", self.master.base));
            if (r["phase"] == "done" && r["version"] == version) || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// First, median and last of a set of times.
pub(crate) fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match s.len() {
        0 => (f64::NAN, f64::NAN, f64::NAN),
        n if n % 2 == 0 => (s[0], (s[n / 2 - 1] + s[n / 2]) / 2.0, s[n - 1]),
        n => (s[0], s[n / 2], s[n - 1]),
    }
}
