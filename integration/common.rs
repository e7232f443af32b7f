//! Helpers shared by the integration tests: real processes, real sockets,
//! conditions waited on with deadlines (never fixed sleeps).

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Host;

/// The `indexswarm` binary Cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_indexswarm"))
}

pub fn cmd() -> Command {
    let mut c = Command::new(bin());
    c.env("RUST_LOG", "info");
    c
}

/// `cmd()` run inside a lab host's network namespace.
pub fn cmd_in(host: &Host) -> Command {
    let mut c = host.command(bin());
    c.env("RUST_LOG", "info");
    c
}

/// The libtorrent helper script (run with Debian's python3).
pub fn lt_peer() -> Command {
    let mut c = Command::new("/usr/bin/python3");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/peers/lt_peer.py"));
    c
}

/// Fails loudly when a reference tool is missing: `.ci/run` installs them.
pub fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is not installed; run .ci/run (it installs the reference peers)"
    );
}

/// Where `.ci/run` installs the reference peers built from source (rqbit):
/// `$INDEXSWARM_TOOLS`, or `~/.cache/indexswarm-tools`. CI caches it.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("INDEXSWARM_TOOLS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/indexswarm-tools"),
    }
}

/// A reference tool from the tools cache, else from PATH; fails loudly
/// when it is in neither.
pub fn tool(name: &str) -> PathBuf {
    let cached = tools_dir().join("bin").join(name);
    if cached.is_file() {
        return cached;
    }
    need(name);
    PathBuf::from(name)
}

pub fn need_libtorrent() {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "python3-libtorrent is not installed; run .ci/run");
}

/// A port that was free a moment ago (for tools that need a number up front).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A child process killed (and reaped) when dropped, with its output in files.
pub struct Proc {
    pub child: std::process::Child,
    pub name: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut c: Command, logs: &Path) -> Proc {
        fs::create_dir_all(logs).unwrap();
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        c.stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.into(),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Exit status if it has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for exit within `limit`; panics (with the logs) otherwise.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {limit:?}\nstderr:\n{}",
                    self.name,
                    tail(&self.stderr_text())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (e.g. `libc`-free: via the kill command).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `f` every 50 ms until it returns true; panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion and returns its output (no status check).
pub fn run(mut c: Command) -> Output {
    c.output().expect("command runs")
}

/// Runs a command and asserts it succeeded.
pub fn run_ok(c: Command) -> Output {
    let desc = format!("{c:?}");
    let out = run(c);
    assert!(
        out.status.success(),
        "{desc} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr))
    );
    out
}

pub fn stdout_last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Deterministic pseudo-random bytes (the generator the demo uses).
pub fn fill(seed: u64, len: usize) -> Vec<u8> {
    indexswarm::demo::pseudo_random(seed, len)
}

/// Writes files (relative path, size) under `root` with content from `seed`.
pub fn write_tree(root: &Path, files: &[(&str, usize)], seed: u64) {
    for (i, (rel, len)) in files.iter().enumerate() {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, fill(seed.wrapping_add(i as u64 * 7919), *len)).unwrap();
    }
}

/// The interop tree from issue 3: nested directories, an empty file, a file
/// smaller than a block and one larger than several pieces.
pub fn interop_tree(root: &Path, seed: u64) {
    write_tree(
        root,
        &[
            ("segments_1", 300),
            ("_0.cfs", 3_000_000),
            ("_0.si", 9),
            ("deep/er/still/_1.fdt", 1_200_000),
            ("deep/_1.fdx", 70_000),
            ("tiny", 1),
        ],
        seed,
    );
    fs::write(root.join("deep/er/empty"), b"").unwrap();
}

/// Relative paths and contents of every regular file under `root`, ignoring
/// `.pad` directories (aria2 materialises BEP 47 padding; we never do).
pub fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".pad" {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let mut data = Vec::new();
                fs::File::open(&p).unwrap().read_to_end(&mut data).unwrap();
                out.push((
                    p.strip_prefix(base).unwrap().to_string_lossy().into_owned(),
                    data,
                ));
            }
        }
    }
    walk(root, root, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Asserts two directory trees hold the same files with the same bytes.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = tree(expected);
    let b = tree(actual);
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&a),
        names(&b),
        "file lists differ: {} vs {}",
        expected.display(),
        actual.display()
    );
    for ((n, x), (_, y)) in a.iter().zip(b.iter()) {
        assert!(
            x == y,
            "{n} differs between {} and {}",
            expected.display(),
            actual.display()
        );
    }
}

/// A directory for one test, removed at the end unless KEEP_TEST_DIRS is set.
pub fn test_dir(name: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("KEEP_TEST_DIRS").is_some();
    let d = tempfile::Builder::new()
        .prefix(&format!("isw-{name}-"))
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("test dir: {}", d.path().display());
    }
    d
}

/// Starts `indexswarm tracker` on a free port; returns the process and the announce URL.
pub fn start_tracker(logs: &Path, extra: &[&str]) -> (Proc, String) {
    start_tracker_in(cmd(), Ipv4Addr::LOCALHOST, logs, extra)
}

/// Starts `indexswarm tracker` from `c` (`cmd()` or `cmd_in(host)`) on a
/// free port of `ip`, an address of the namespace it runs in.
pub fn start_tracker_in(
    mut c: Command,
    ip: Ipv4Addr,
    logs: &Path,
    extra: &[&str],
) -> (Proc, String) {
    let port = free_port();
    c.args(["tracker", "--listen", &format!("{ip}:{port}")])
        .args(extra);
    let p = Proc::spawn(&format!("tracker-{port}"), c, logs);
    let url = format!("http://{ip}:{port}/announce");
    wait_until(Duration::from_secs(20), "tracker to listen", || {
        std::net::TcpStream::connect((ip, port)).is_ok()
    });
    (p, url)
}

/// How many seeders the tracker at `announce_url` counts for the torrent
/// (its `/scrape`); `None` when it does not answer or knows no such torrent.
pub fn tracker_seeders(announce_url: &str, info_hash_hex: &str) -> Option<u64> {
    let escaped: String = (0..info_hash_hex.len())
        .step_by(2)
        .map(|i| format!("%{}", &info_hash_hex[i..i + 2]))
        .collect();
    let url = format!(
        "{}?info_hash={escaped}",
        announce_url.replace("/announce", "/scrape")
    );
    let r = request("GET", &url, None, None);
    let key = b"8:completei";
    let at = r.body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = r.body[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    String::from_utf8(digits).ok()?.parse().ok()
}

pub fn aria2_common(port: u16) -> Vec<String> {
    [
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--listen-port={port}")])
    .collect()
}

// ---------------------------------------------------------------- HTTP

pub struct Resp {
    /// 0 when no answer came (connection refused, timeout).
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected JSON (status {}), got {e}: {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The `{"error": "..."}` body of a refused request.
    pub fn error_message(&self) -> String {
        let j = self.json();
        match j.get("error").and_then(serde_json::Value::as_str) {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => panic!("status {} without an error message: {j}", self.status),
        }
    }
}

/// One HTTP request on a throwaway current-thread runtime. `auth` is the raw
/// `Authorization` header value.
pub fn request(method: &str, url: &str, body: Option<&str>, auth: Option<&str>) -> Resp {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the test's HTTP client");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut rb = client.request(method, url);
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        match rb.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let content_type = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                Resp {
                    status,
                    content_type,
                    body,
                }
            }
            Err(e) => Resp {
                status: 0,
                content_type: String::new(),
                body: e.to_string().into_bytes(),
            },
        }
    })
}

/// GET a JSON document; `None` unless it answered 200 with JSON.
pub fn get_json(url: &str) -> Option<serde_json::Value> {
    let r = request("GET", url, None, None);
    (r.status == 200)
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}
