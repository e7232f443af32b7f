//! Issue 12: the deployable sidecar, proven with podman on this machine.
//!
//! The container images are built from the repository's `Dockerfile` and
//! `examples/k8s/Dockerfile.searchd` (their `--target runtime` path, from
//! binaries built here: no registry is reachable), then the manifests of
//! `examples/k8s/` run under `podman kube play`: the master pod, and the
//! replica Deployment as two pods. Two index versions are published, and
//! the `searchd` of each replica pod must find a document that only
//! version 2 holds. The probes' endpoints are checked through the pods'
//! addresses, and everything is taken down with `podman kube down`.
//!
//! Root only (rootful podman with runc, as `../shared/CONTAINERS.md`
//! describes); skipped with a message where podman cannot run, unless
//! `INDEXSWARM_REQUIRE_PODMAN` is set (`.ci/run` sets it), which turns the
//! skip into a failure.
//!
//! What podman 4.3 does differently from Kubernetes, and how the test
//! copes (README of examples/k8s):
//! - an `emptyDir` becomes a volume named after it, shared by every pod
//!   that names it, so the replica Deployment is played once per replica
//!   (`replicas: 1`) with its names suffixed;
//! - a `secretKeyRef` reads a podman secret holding a JSON map of base64
//!   values, not a `Secret` document, so the test creates that secret;
//! - probes become a `curl` health check that nothing runs here (no
//!   systemd) and that the image could not run (no curl), so the test
//!   requests the probe paths itself, from the host, at the pod's address.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::netns::is_root;

/// What the Dockerfiles name as their base; imported from a debootstrap
/// root file system when no registry can provide it.
const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";

/// The bound on the sidecar image.
const IMAGE_LIMIT_BYTES: u64 = 40 * 1000 * 1000;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// podman on this kind of machine: crun and the default limits fail
/// (`../shared/CONTAINERS.md`).
const CONTAINERS_CONF: &str = "[containers]\ndefault_ulimits = []\npids_limit = 0\n\
                               [engine]\ncgroup_manager = \"cgroupfs\"\n";

const MASTER_POD: &str = "indexswarm-master";
const REPLICAS: [&str; 2] = ["a", "b"];
const SECRET: &str = "indexswarm-api-token";
const CONFIG_VOLUME: &str = "indexswarm-config";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn k8s(file: &str) -> PathBuf {
    repo().join("examples/k8s").join(file)
}

/// A skip is a message, or a failure when CI says podman must run.
fn skip(why: &str) {
    if std::env::var_os("INDEXSWARM_REQUIRE_PODMAN").is_some() {
        panic!("INDEXSWARM_REQUIRE_PODMAN is set, but {why}");
    }
    eprintln!("SKIPPED deploy test: {why}");
}

struct Podman {
    conf: PathBuf,
}

impl Podman {
    /// Podman configured for this machine, or `None` (after saying why)
    /// where it cannot run.
    fn here() -> Option<Podman> {
        if !is_root() {
            skip("it needs root (rootful podman)");
            return None;
        }
        let conf = tools_dir().join("podman/containers.conf");
        std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
        std::fs::write(&conf, CONTAINERS_CONF).unwrap();
        let pm = Podman { conf };
        match pm
            .cmd(&["info", "--format", "{{.Version.Version}}"])
            .output()
        {
            Ok(o) if o.status.success() => Some(pm),
            Ok(o) => {
                skip(&format!(
                    "`podman info` fails: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip(&format!(
                    "podman cannot run ({e}); .ci/run installs podman, runc and debootstrap"
                ));
                None
            }
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .args(["--runtime", "runc", "--cgroup-manager=cgroupfs"])
            .args(args);
        c
    }

    /// Runs podman and asserts success; returns stdout, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        let out = run_ok(self.cmd(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs podman, whatever the outcome.
    fn quiet(&self, args: &[&str]) -> Output {
        run(self.cmd(args))
    }

    fn pod_ip(&self, pod: &str) -> String {
        let infra = self.ok(&["pod", "inspect", pod, "--format", "{{.InfraContainerID}}"]);
        let ip = self.ok(&[
            "inspect",
            &infra,
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ]);
        assert!(!ip.is_empty(), "pod {pod} has no address");
        ip
    }

    /// Peak resident memory (VmHWM) of a container's main process, in KiB.
    fn peak_rss_kib(&self, container: &str) -> Option<u64> {
        let pid = self.ok(&["inspect", container, "--format", "{{.State.Pid}}"]);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

/// The host's Debian mirror (apt's sources), for debootstrap.
fn debian_mirror() -> String {
    let sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .unwrap_or_default()
        + &std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    sources
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("URIs:")
                .map(|u| u.split_whitespace().next().unwrap_or_default().to_string())
                .or_else(|| {
                    l.strip_prefix("deb ")
                        .and_then(|r| r.split_whitespace().find(|w| w.contains("://")))
                        .map(str::to_string)
                })
        })
        .expect("a Debian mirror in /etc/apt/sources.list.d/debian.sources or sources.list")
}

/// Makes `FROM debian:bookworm-slim` resolve without a registry: a
/// `debootstrap --variant=minbase` root file system, imported under that
/// name. The tarball is kept in the tools cache (CI caches it), and
/// nothing is done when the image is already there.
fn ensure_base_image(pm: &Podman) {
    if pm.quiet(&["image", "exists", BASE_IMAGE]).status.success() {
        return;
    }
    let tarball = tools_dir().join("podman/debian-bookworm-minbase.tar");
    if !tarball.exists() {
        need("debootstrap");
        let rootfs = tools_dir().join("podman/rootfs");
        let _ = std::fs::remove_dir_all(&rootfs);
        let mut c = Command::new("debootstrap");
        c.args(["--variant=minbase", "bookworm"])
            .arg(&rootfs)
            .arg(debian_mirror());
        run_ok(c);
        // What a slim image leaves out: downloaded packages and lists.
        for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
            for e in std::fs::read_dir(rootfs.join(dir)).unwrap().flatten() {
                if e.file_type().unwrap().is_file() {
                    std::fs::remove_file(e.path()).unwrap();
                }
            }
        }
        let partial = tarball.with_extension("tar.partial");
        let mut t = Command::new("tar");
        t.arg("-C").arg(&rootfs).arg("-cf").arg(&partial).arg(".");
        run_ok(t);
        std::fs::rename(&partial, &tarball).unwrap();
        std::fs::remove_dir_all(&rootfs).unwrap();
    }
    pm.ok(&["import", tarball.to_str().unwrap(), BASE_IMAGE]);
}

/// The binaries the images take, built with the release profile
/// (`--target runtime`'s default paths); a no-op when they are fresh.
fn build_release_binaries() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(repo()).args([
        "build",
        "--release",
        "--bin",
        "indexswarm",
        "--example",
        "healthcheck",
        "--example",
        "searchd",
    ]);
    run_ok(c);
    // The Dockerfiles COPY them from the build context, relative to it.
    let release = bin().parent().unwrap().parent().unwrap().join("release");
    assert_eq!(
        release,
        repo().join("target/release"),
        "the Dockerfiles take their binaries from target/release (CARGO_TARGET_DIR moves them)"
    );
}

fn build_images(pm: &Podman) {
    let root = repo();
    let root = root.to_str().unwrap();
    let main = format!("indexswarm:{VERSION}");
    let searchd = format!("indexswarm-searchd:{VERSION}");
    pm.ok(&[
        "build", "--format", "docker", "--target", "runtime", "-t", &main, root,
    ]);
    let searchd_file = k8s("Dockerfile.searchd");
    pm.ok(&[
        "build",
        "--format",
        "docker",
        "--target",
        "runtime",
        "-f",
        searchd_file.to_str().unwrap(),
        "-t",
        &searchd,
        root,
    ]);
}

/// The sidecar image is what the issue asks for: small, non-root, a /data
/// volume, a health check of /healthz, `--help` by default.
fn check_sidecar_image(pm: &Podman) -> u64 {
    let image = format!("indexswarm:{VERSION}");
    let size: u64 = pm
        .ok(&["image", "inspect", &image, "--format", "{{.Size}}"])
        .parse()
        .unwrap();
    assert!(
        size <= IMAGE_LIMIT_BYTES,
        "the image is {size} bytes, over {IMAGE_LIMIT_BYTES}"
    );
    let user = pm.ok(&["image", "inspect", &image, "--format", "{{.Config.User}}"]);
    assert_eq!(user, "10001:10001", "the image runs as a non-root user");
    let volumes = pm.ok(&[
        "image",
        "inspect",
        &image,
        "--format",
        "{{json .Config.Volumes}}",
    ]);
    assert!(
        volumes.contains("\"/data\""),
        "/data is a volume: {volumes}"
    );
    let check = pm.ok(&[
        "image",
        "inspect",
        &image,
        "--format",
        "{{json .Config.Healthcheck}}",
    ]);
    assert!(
        check.contains("/usr/local/bin/indexswarm-healthcheck"),
        "HEALTHCHECK runs the probe: {check}"
    );
    let help = pm.ok(&["run", "--rm", "--network", "none", &image]);
    assert!(
        help.contains("Usage: indexswarm") && help.contains("replica"),
        "the default command prints --help: {help}"
    );
    size
}

/// The replica Deployment as podman can play it, once per replica:
/// `replicas: 1`, and the Deployment and its index volume renamed with
/// `suffix` (podman shares an emptyDir between pods that name it alike).
/// Each edit must apply exactly as often as the manifest has the line, so
/// a changed manifest fails here instead of running something else.
fn replica_manifest_for_podman(text: &str, suffix: &str) -> String {
    let edits = [
        (
            "name: indexswarm-replica",
            format!("name: indexswarm-replica-{suffix}"),
            1,
        ),
        ("replicas: 2", "replicas: 1".to_string(), 1),
        (
            "- name: indexswarm-index",
            format!("- name: indexswarm-index-{suffix}"),
            3,
        ),
    ];
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (from, to, times) in edits {
        let mut n = 0;
        for l in lines.iter_mut().filter(|l| l.trim() == from) {
            let indent = l.len() - l.trim_start().len();
            *l = format!("{}{to}", &l[..indent]);
            n += 1;
        }
        assert_eq!(n, times, "replica.yaml: expected {times} line(s) {from:?}");
    }
    lines.join("\n") + "\n"
}

/// The value after `key:` on the first line at or after the line holding
/// `section`, quotes removed: enough of YAML for the probe paths and the
/// Prometheus annotations of these manifests.
fn yaml_value(text: &str, section: &str, key: &str) -> String {
    let start = text
        .find(section)
        .unwrap_or_else(|| panic!("{section:?} not in the manifest"));
    text[start..]
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no {key:?} after {section:?}"))
}

/// Takes everything down: `podman kube down` of every played manifest,
/// then what kube down leaves (the ConfigMap's volume, the secret). On a
/// failure it first prints the containers' logs.
struct Deployment<'a> {
    pm: &'a Podman,
    played: Vec<PathBuf>,
    containers: Vec<String>,
}

impl Deployment<'_> {
    fn take_down(&mut self) {
        for file in self.played.drain(..).rev() {
            let _ = self.pm.quiet(&["kube", "down", file.to_str().unwrap()]);
        }
        let _ = self.pm.quiet(&["volume", "rm", "-f", CONFIG_VOLUME]);
        let _ = self.pm.quiet(&["secret", "rm", SECRET]);
    }
}

impl Drop for Deployment<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                let out = self.pm.quiet(&["logs", "--tail", "30", c]);
                eprintln!(
                    "---- {c}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        self.take_down();
    }
}

/// Leftovers of an interrupted run, by their fixed names.
fn remove_leftovers(pm: &Podman) {
    let mut pods = vec![MASTER_POD.to_string()];
    pods.extend(REPLICAS.map(|s| format!("indexswarm-replica-{s}-pod-0")));
    for pod in &pods {
        let _ = pm.quiet(&["pod", "rm", "-f", pod]);
    }
    let mut volumes = vec![
        CONFIG_VOLUME.to_string(),
        "indexswarm-snapshots".to_string(),
    ];
    volumes.extend(REPLICAS.map(|s| format!("indexswarm-index-{s}")));
    for v in &volumes {
        let _ = pm.quiet(&["volume", "rm", "-f", v]);
    }
    let _ = pm.quiet(&["secret", "rm", SECRET]);
}

/// A podman secret in the form podman 4.3's `secretKeyRef` reads: a JSON
/// map of base64 values.
fn create_secret(pm: &Podman, dir: &Path, token: &str) {
    let b64 = base64(token.as_bytes());
    let file = dir.join("api-token.json");
    std::fs::write(&file, format!("{{\"api-token\": \"{b64}\"}}")).unwrap();
    pm.ok(&["secret", "create", SECRET, file.to_str().unwrap()]);
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `searchd`'s answer to `q` in a replica pod: (total hits, index path).
fn search(ip: &str, q: &str) -> Option<(u64, String)> {
    let j = get_json(&format!("http://{ip}:8080/search?q={q}"))?;
    Some((
        j["total"].as_u64()?,
        j["index"].as_str().unwrap_or_default().to_string(),
    ))
}

#[test]
fn systemd_units_are_hardened_and_pass_systemd_analyze_verify() {
    let dir = repo().join("examples/systemd");
    let units = ["indexswarm-master.service", "indexswarm-replica.service"];
    for unit in units {
        let text = std::fs::read_to_string(dir.join(unit)).unwrap();
        for line in [
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            "User=indexswarm",
            "ReadWritePaths=/var/lib/indexswarm/",
        ] {
            assert!(text.contains(line), "{unit} lacks {line}");
        }
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    // verify insists that ExecStart's binary exists: point it at ours.
    let d = test_dir("systemd");
    let mut paths = Vec::new();
    for unit in units {
        let text = std::fs::read_to_string(dir.join(unit)).unwrap();
        let text = text.replace("/usr/local/bin/indexswarm", bin().to_str().unwrap());
        std::fs::write(d.path().join(unit), text).unwrap();
        paths.push(d.path().join(unit));
    }
    let mut c = Command::new("systemd-analyze");
    c.arg("verify").args(&paths);
    let out = run(c);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
}

/// The manifests as files, and what the test reads out of them.
struct Manifests {
    master: String,
    replica: String,
    ready_path: String,
    live_path: String,
}

impl Manifests {
    fn read() -> Manifests {
        let master = std::fs::read_to_string(k8s("master.yaml")).unwrap();
        let replica = std::fs::read_to_string(k8s("replica.yaml")).unwrap();
        // The manifests run the images this test builds.
        for (name, text) in [("master.yaml", &master), ("replica.yaml", &replica)] {
            for image in ["indexswarm", "indexswarm-searchd"] {
                assert!(
                    text.contains(&format!("image: {image}:{VERSION}")),
                    "{name} should run {image}:{VERSION}, the version in Cargo.toml"
                );
            }
        }
        Manifests {
            ready_path: yaml_value(&replica, "readinessProbe:", "path"),
            live_path: yaml_value(&replica, "livenessProbe:", "path"),
            master,
            replica,
        }
    }
}

/// The pods that are up, by name and address.
struct Pods {
    master_ip: String,
    replicas: Vec<String>,
    replica_ips: Vec<String>,
}

impl Pods {
    fn master_url(&self) -> String {
        format!("http://{}:7070", self.master_ip)
    }
}

/// `podman kube play`: the master pod, then the replica Deployment once per
/// replica; every file played is recorded for `kube down`.
fn play(pm: &Podman, m: &Manifests, dir: &Path, dep: &mut Deployment) -> Pods {
    let config = k8s("config.yaml");
    let config = config.to_str().unwrap();
    let master_file = k8s("master.yaml");
    dep.played.push(master_file.clone());
    let play = |file: &Path| {
        pm.ok(&[
            "kube",
            "play",
            "--configmap",
            config,
            file.to_str().unwrap(),
        ]);
    };
    play(&master_file);
    let mut replicas = Vec::new();
    for suffix in REPLICAS {
        let file = dir.join(format!("replica-{suffix}.yaml"));
        std::fs::write(&file, replica_manifest_for_podman(&m.replica, suffix)).unwrap();
        dep.played.push(file.clone());
        play(&file);
        let pod = format!("indexswarm-replica-{suffix}-pod-0");
        dep.containers.push(format!("{pod}-searchd"));
        dep.containers.push(format!("{pod}-indexswarm"));
        replicas.push(pod);
    }
    Pods {
        master_ip: pm.pod_ip(MASTER_POD),
        replica_ips: replicas.iter().map(|p| pm.pod_ip(p)).collect(),
        replicas,
    }
}

/// Every sidecar answers its liveness path; a replica without an index is
/// alive but not ready (when readiness is a path of its own).
fn wait_alive_and_unready(m: &Manifests, pods: &Pods) {
    let master = pods.master_url();
    wait_until(Duration::from_secs(60), "the master's /healthz", || {
        request("GET", &format!("{master}/healthz"), None, None).status == 200
    });
    for ip in &pods.replica_ips {
        let live = format!("http://{ip}:7071{}", m.live_path);
        wait_until(Duration::from_secs(60), "a replica's liveness path", || {
            request("GET", &live, None, None).status == 200
        });
        if m.ready_path != m.live_path {
            let r = request(
                "GET",
                &format!("http://{ip}:7071{}", m.ready_path),
                None,
                None,
            );
            assert_eq!(
                r.status,
                503,
                "{} before any version: {}",
                m.ready_path,
                r.text()
            );
        }
    }
}

/// Runs `searchd build ARGS` in the master pod's indexer container.
fn build_snapshot(pm: &Podman, args: &[&str]) {
    let indexer = format!("{MASTER_POD}-indexer");
    let mut all = vec!["exec", indexer.as_str(), "searchd", "build"];
    all.extend_from_slice(args);
    pm.ok(&all);
}

/// `POST /snapshot` for `name` with the token; it must become version `n`.
fn publish(master: &str, token: &str, name: &str, n: u64) {
    let body = format!("{{\"path\": \"{name}\"}}");
    let r = request(
        "POST",
        &format!("{master}/snapshot"),
        Some(&body),
        Some(&format!("Bearer {token}")),
    );
    assert!(
        r.status == 201 || r.status == 200,
        "POST /snapshot with the Secret's token: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.json()["version"], n, "{}", r.text());
}

/// The probes and the scrape targets, at the paths and ports the manifests
/// name, through each pod's address; then the image's HEALTHCHECK program
/// inside a sidecar: healthy on the sidecar's port, not on a closed one.
fn check_probes(pm: &Podman, m: &Manifests, pods: &Pods) {
    let metrics_port = yaml_value(&m.replica, "prometheus.io/port", "prometheus.io/port");
    let metrics = |url: String| {
        let r = request("GET", &url, None, None);
        assert!(
            r.status == 200 && r.text().contains("indexswarm_"),
            "metrics at {url} (the annotated port): {}",
            r.status
        );
    };
    for ip in &pods.replica_ips {
        for path in [&m.ready_path, &m.live_path] {
            let r = request("GET", &format!("http://{ip}:7071{path}"), None, None);
            assert_eq!(r.status, 200, "replica {ip}{path}: {}", r.text());
        }
        metrics(format!("http://{ip}:{metrics_port}/metrics"));
    }
    let master_live = yaml_value(&m.master, "livenessProbe:", "path");
    let master_metrics = yaml_value(&m.master, "prometheus.io/port", "prometheus.io/port");
    let r = request(
        "GET",
        &format!("{}{master_live}", pods.master_url()),
        None,
        None,
    );
    assert_eq!(r.status, 200, "master {master_live}");
    metrics(format!(
        "http://{}:{master_metrics}/metrics",
        pods.master_ip
    ));

    let sidecar = format!("{}-indexswarm", pods.replicas[0]);
    pm.ok(&["exec", &sidecar, "/usr/local/bin/indexswarm-healthcheck"]);
    let closed = pm.quiet(&[
        "exec",
        &sidecar,
        "/usr/local/bin/indexswarm-healthcheck",
        "http://127.0.0.1:1/healthz",
    ]);
    assert!(!closed.status.success(), "the probe fails on a closed port");
}

#[test]
fn the_k8s_manifests_under_podman_serve_version_2_from_every_replica_pod() {
    let Some(pm) = Podman::here() else { return };
    let started = Instant::now();
    let d = test_dir("deploy");

    build_release_binaries();
    let built = Instant::now();
    ensure_base_image(&pm);
    build_images(&pm);
    let size = check_sidecar_image(&pm);
    let imaged = Instant::now();

    let m = Manifests::read();
    remove_leftovers(&pm);
    let token = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut dep = Deployment {
        pm: &pm,
        played: Vec::new(),
        containers: vec![
            format!("{MASTER_POD}-indexer"),
            format!("{MASTER_POD}-indexswarm"),
        ],
    };
    create_secret(&pm, d.path(), &token);
    let pods = play(&pm, &m, d.path(), &mut dep);
    wait_alive_and_unready(&m, &pods);
    let played = Instant::now();

    // Version 1, built by the indexer in the master pod, published through
    // the API with the token from the Secret (and refused without it).
    let master = pods.master_url();
    let (v1, v2) = ("snapshot.20261124120000000", "snapshot.20261124121500000");
    build_snapshot(
        &pm,
        &["--docs", "3000", "--out", &format!("/snapshots/{v1}")],
    );
    let body = format!("{{\"path\": \"{v1}\"}}");
    let refused = request("POST", &format!("{master}/snapshot"), Some(&body), None);
    assert_eq!(refused.status, 401, "POST /snapshot without the token");
    publish(&master, &token, v1, 1);
    for ip in &pods.replica_ips {
        wait_until(
            Duration::from_secs(120),
            "searchd in a replica pod to serve version 1",
            || matches!(search(ip, "replica"), Some((n, _)) if n > 0),
        );
        let (n, _) = search(ip, "zanzibar").unwrap();
        assert_eq!(n, 0, "version 1 has no document with \"zanzibar\"");
    }

    // Version 2: one more document, in a new segment.
    build_snapshot(
        &pm,
        &[
            "--from",
            &format!("/snapshots/{v1}"),
            "--add",
            "zanzibar appears only in version two",
            "--out",
            &format!("/snapshots/{v2}"),
        ],
    );
    publish(&master, &token, v2, 2);
    for ip in &pods.replica_ips {
        wait_until(
            Duration::from_secs(120),
            "searchd in a replica pod to find the version 2 document",
            || matches!(search(ip, "zanzibar"), Some((1, _))),
        );
        let (_, index) = search(ip, "zanzibar").unwrap();
        assert!(
            index.ends_with("/index/versions/2"),
            "searchd reads {index}"
        );
        let s = get_json(&format!("http://{ip}:7071/status")).expect("replica /status");
        assert_eq!(s["current_version"], 2, "{s}");
        assert!(
            s["bytes_reused"].as_u64().unwrap_or(0) > 0,
            "version 1's segments are reused from disk: {s}"
        );
    }
    let replicated = Instant::now();

    check_probes(&pm, &m, &pods);
    let rss: Vec<String> = [MASTER_POD, &pods.replicas[0]]
        .iter()
        .map(|pod| {
            let c = format!("{pod}-indexswarm");
            let kib = pm.peak_rss_kib(&c).map_or("?".into(), |k| k.to_string());
            format!("{c} {kib} KiB")
        })
        .collect();

    dep.take_down();
    for pod in std::iter::once(MASTER_POD).chain(pods.replicas.iter().map(String::as_str)) {
        assert!(
            !pm.quiet(&["pod", "exists", pod]).status.success(),
            "kube down left pod {pod}"
        );
    }
    let done = Instant::now();
    eprintln!(
        "deploy: image {size} bytes; peak RSS {}; binaries {:.0?}, images {:.0?}, \
         pods up {:.0?}, two versions replicated {:.0?}, checks and teardown {:.0?}; \
         total {:.0?}",
        rss.join(", "),
        built - started,
        imaged - built,
        played - imaged,
        replicated - played,
        done - replicated,
        done - started
    );
}
