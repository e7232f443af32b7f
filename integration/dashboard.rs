//! Issue #10: the dashboards in a real browser. Headless Chromium (Debian's
//! `chromium` + `chromium-driver`, driven by `python3-selenium` through
//! `integration/peers/browser.py`) loads the master's `GET /` while a real
//! master and real replicas run a fleet rollout: the page shows every
//! replica and version, follows a new version to every replica and a
//! rollback made with its own buttons, all without a reload, and survives
//! the master's restart. The pages request nothing outside their origin,
//! and the Grafana board and alert rules in `examples/grafana/` name only
//! metrics the binaries export.
//!
//! Every wait is a condition polled against a deadline; the browser script
//! only drives, the assertions are here.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::replica::{start_replica, Master, Replica, MB, REPLICATE, START};

const TOKEN: &str = "dashb0ard";
/// What the page needs to show a change the master knows of: the feed looks
/// every 500 ms, replicas report on every change; generous for a busy CI.
const SHOWN: Duration = Duration::from_secs(30);
/// One browser command (page loads, a click, a screenshot).
const COMMAND: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the browser

/// Headless Chromium behind `integration/peers/browser.py`: one JSON
/// command a line on its stdin, one JSON answer a line on its stdout.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
    stderr: PathBuf,
}

fn need_browser() {
    need("chromium");
    need("chromedriver");
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import selenium"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "python3-selenium is not installed; run .ci/run");
}

impl Browser {
    fn start(dir: &Path) -> Browser {
        need_browser();
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let stderr = dir.join("logs/browser.err");
        std::fs::create_dir_all(stderr.parent().unwrap()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/peers/browser.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg("--user-data-dir")
            .arg(&profile)
            .args(["--window", "1400x1200"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start integration/peers/browser.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Browser {
            child,
            stdin,
            answers,
            stderr,
        };
        let ready = b.answer(COMMAND, "start");
        assert_eq!(ready, Ok(json!("ready")), "{}", b.diag());
        b
    }

    fn diag(&self) -> String {
        format!(
            "browser stderr:\n{}",
            tail(&std::fs::read_to_string(&self.stderr).unwrap_or_default())
        )
    }

    fn answer(&mut self, limit: Duration, what: &str) -> Result<Value, String> {
        let line = match self.answers.recv_timeout(limit) {
            Ok(l) => l,
            Err(e) => panic!(
                "browser: no answer to {what} within {limit:?} ({e})\n{}",
                self.diag()
            ),
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("browser: not JSON ({e}): {line}\n{}", self.diag()));
        if v["ok"] == true {
            Ok(v["value"].clone())
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_string())
        }
    }

    fn call(&mut self, cmd: Value) -> Result<Value, String> {
        let what = cmd["cmd"].as_str().unwrap_or("?").to_string();
        writeln!(self.stdin, "{cmd}")
            .and_then(|_| self.stdin.flush())
            .unwrap_or_else(|e| panic!("browser: {what}: {e}\n{}", self.diag()));
        self.answer(COMMAND, &what)
    }

    fn ok(&mut self, cmd: Value) -> Value {
        let shown = cmd.to_string();
        self.call(cmd)
            .unwrap_or_else(|e| panic!("browser: {shown}: {e}\n{}", self.diag()))
    }

    fn get(&mut self, url: &str) {
        self.ok(json!({"cmd": "get", "url": url}));
    }

    /// The value of a function body run in the page.
    fn eval(&mut self, js: &str) -> Value {
        self.ok(json!({"cmd": "eval", "js": js}))
    }

    fn click(&mut self, css: &str) {
        self.ok(json!({"cmd": "click", "css": css}));
    }

    fn type_into(&mut self, css: &str, text: &str) {
        self.ok(json!({"cmd": "type", "css": css, "text": text}));
    }

    fn screenshot(&mut self, path: &Path) {
        self.ok(json!({"cmd": "screenshot", "path": path}));
        let png = std::fs::read(path).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{} is no PNG", path.display());
    }

    /// Every request since the last `get`: `(url, document that asked)`.
    fn requests(&mut self) -> Vec<(String, String)> {
        let v = self.ok(json!({"cmd": "requests"}));
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["url"].as_str().unwrap_or("").to_string(),
                    r["document"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Evaluates `js` until `ok` accepts its value; panics after `limit`
    /// with the last value seen.
    fn wait(
        &mut self,
        limit: Duration,
        what: &str,
        js: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let last = self.call(json!({"cmd": "eval", "js": js}));
            if let Ok(v) = &last {
                if ok(v) {
                    return v.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {limit:?} waiting for the page to show {what}; last: {last:?}\n{}",
                    self.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a prompt (or any dialog), types `text` into it and accepts it.
    fn answer_prompt(&mut self, text: &str) -> String {
        let deadline = Instant::now() + SHOWN;
        loop {
            match self.call(json!({"cmd": "alert", "text": text, "accept": true})) {
                Ok(v) => return v.as_str().unwrap_or("").to_string(),
                Err(e) if Instant::now() > deadline => {
                    panic!("no prompt for the API token: {e}\n{}", self.diag())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- what the page shows

/// `{id: {live, staged, state, text}}` of the replica rows of `index`.
fn rows_js(index: &str) -> String {
    format!(
        r#"const out = {{}};
for (const tr of document.querySelectorAll('section[data-index="{index}"] tr[data-replica]')) {{
  const f = (k) => tr.querySelector('[data-field="' + k + '"]');
  out[tr.dataset.replica] = {{live: f('live_version').dataset.value, live_text: f('live_version').textContent, staged: f('staged_version').dataset.value,
    state: f('state').dataset.value, text: tr.textContent, flagged: tr.classList.contains('flagged')}};
}}
return out;"#
    )
}

/// `{version: state}` of the version rows of `index`.
fn versions_js(index: &str) -> String {
    format!(
        r#"const out = {{}};
for (const tr of document.querySelectorAll('section[data-index="{index}"] tr[data-version]'))
  out[tr.dataset.version] = tr.querySelector('[data-field="state"]').dataset.value;
return out;"#
    )
}

const CONNECTION_JS: &str = "return document.getElementById('connection').dataset.state";

/// Every replica of `ids` shown live on `v`: the cell reads `v<n>`, its
/// raw value is n, and the row shows the replica's id.
fn all_live_on(rows: &Value, ids: &[&str], v: u64) -> bool {
    ids.iter().all(|id| {
        let r = &rows[*id];
        r["live"].as_str().and_then(|s| s.parse().ok()) == Some(v)
            && r["live_text"] == format!("v{v}").as_str()
            && r["text"].as_str().is_some_and(|t| t.contains(id))
    })
}

fn replicas(m: &Master, root: &Path, ids: &[&str]) -> Vec<Replica> {
    ids.iter()
        .map(|id| start_replica(m, &root.join(id), id, &["--id", id, "--zone", "z1"], &[]))
        .collect()
}

// ---------------------------------------------------------------- 1. a rollout and a rollback, live

#[test]
fn the_dashboard_follows_a_rollout_and_a_rollback_without_a_reload() {
    let d = test_dir("dashboard");
    let mut m = Master::start(d.path(), &["--rollout", "fleet", "--api-token", TOKEN]);
    let ids = ["r1", "r2", "r3"];
    let rs = replicas(&m, d.path(), &ids);
    let v1 = m.publish_new("snapshot.20261201000000000", 6 * MB, 101);
    for r in &rs {
        r.wait_version(v1, REPLICATE);
    }

    let mut b = Browser::start(d.path());
    b.get(&format!("{}/", m.url));
    b.wait(SHOWN, "the connection live", CONNECTION_JS, |v| v == "live");
    let rows_default = rows_js("default");
    b.wait(SHOWN, "r1..r3 live on v1", &rows_default, |rows| {
        all_live_on(rows, &ids, v1)
    });
    let versions = versions_js("default");
    let shown = b.eval(&versions);
    assert_eq!(
        shown,
        json!({ v1.to_string(): "active" }),
        "the version table"
    );
    // Anything that reloads the page loses this.
    b.eval("window.__marker = 1; return null");

    // A new version: the page shows it, then every replica reaching it.
    let v2 = m.publish_next(v1, "snapshot.20261201000100000", 2 * MB, 102);
    b.wait(SHOWN, "v2 listed", &versions, |v| {
        v[v2.to_string()].is_string()
    });
    b.wait(REPLICATE, "r1..r3 live on v2", &rows_default, |rows| {
        all_live_on(rows, &ids, v2)
    });
    for r in &rs {
        r.wait_version(v2, REPLICATE);
    }
    b.wait(SHOWN, "v2 active, v1 published", &versions, |v| {
        v[v2.to_string()] == "active" && v[v1.to_string()] == "published"
    });
    let phase = "return document.querySelector('section[data-index=\"default\"] dd[data-field=\"phase\"]').dataset.value";
    b.wait(SHOWN, "the rollout of v2 done", phase, |v| v == "done");
    assert_eq!(
        b.eval("return window.__marker"),
        json!(1),
        "the page reloaded"
    );

    // A lever with a wrong token: the page says 401 and nothing changes.
    let msg = "return document.querySelector('section[data-index=\"default\"] [data-field=\"message\"]').textContent";
    b.type_into("#token", "not-the-token");
    b.click("section[data-index=\"default\"] button[data-action=\"pause\"]");
    let said = b.wait(SHOWN, "the 401 of a wrong token", msg, |v| {
        v.as_str().is_some_and(|t| t.contains("401"))
    });
    assert!(said.as_str().unwrap().contains("pause failed"), "{said}");
    let ro = get_json(&format!("{}/rollout", m.url)).unwrap();
    assert_eq!(ro["paused"], false, "a refused pause paused: {ro}");
    assert_eq!(
        b.eval("return document.getElementById('token').value"),
        json!(""),
        "a refused token is forgotten"
    );

    // Rollback: the v1 button asks for the token (a prompt) and sends it.
    let rollback = format!(
        "section[data-index=\"default\"] button[data-action=\"activate\"][data-version=\"{v1}\"]"
    );
    let label = b.eval(&format!(
        "return document.querySelector('{}').textContent",
        rollback.replace('\'', "\\'")
    ));
    assert_eq!(label, json!("Roll back"), "v1's button, v2 active");
    b.click(&rollback);
    let asked = b.answer_prompt(TOKEN);
    assert!(asked.contains("API token"), "the prompt: {asked:?}");
    b.wait(SHOWN, "the activation accepted", msg, |v| {
        v.as_str()
            .is_some_and(|t| t.contains(&format!("activate v{v1}: done")))
    });
    b.wait(REPLICATE, "r1..r3 back on v1", &rows_default, |rows| {
        all_live_on(rows, &ids, v1)
    });
    for r in &rs {
        r.wait_version(v1, REPLICATE);
    }
    b.wait(SHOWN, "v1 active again", &versions, |v| {
        v[v1.to_string()] == "active" && v[v2.to_string()] == "published"
    });
    let active = "return document.querySelector('section[data-index=\"default\"] dd[data-field=\"active_version\"]').dataset.value";
    b.wait(SHOWN, "the rollout's active version v1", active, |v| {
        *v == json!(v1.to_string())
    });
    let ro = get_json(&format!("{}/rollout", m.url)).unwrap();
    assert_eq!(
        (ro["active_version"].as_u64(), &ro["pinned"]),
        (Some(v1), &json!(true)),
        "{ro}"
    );
    assert_eq!(
        b.eval("return window.__marker"),
        json!(1),
        "the page reloaded"
    );
    assert_eq!(
        b.eval("return sessionStorage.getItem('indexswarm.api_token')"),
        json!(TOKEN),
        "the token is kept for the tab"
    );

    // The artifact: in the test directory (KEEP_TEST_DIRS keeps it) and in target/.
    let shot = d.path().join("dashboard.png");
    b.screenshot(&shot);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    std::fs::copy(&shot, &target).unwrap();
    eprintln!("screenshot: {} and {}", shot.display(), target.display());

    // The replica's own page shows its live version and followed index.
    b.get(&format!("{}/", rs[0].url));
    b.wait(SHOWN, "the replica page live", CONNECTION_JS, |v| {
        v == "live"
    });
    let live = "const e = document.querySelector('section[data-index=\"default\"] [data-field=\"current_version\"]'); return e && e.dataset.value";
    b.wait(SHOWN, "the replica's live version", live, |v| {
        *v == json!(v1.to_string())
    });
    let shot = d.path().join("replica.png");
    b.screenshot(&shot);
    std::fs::copy(
        &shot,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-replica.png"),
    )
    .unwrap();
}

// ---------------------------------------------------------------- 2. nothing outside the origin

/// `scheme://host:port` of a URL, when it has one.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{host}"))
}

/// The page's text names no other origin: no absolute or protocol-relative
/// URL, no `src`/`href`/`action` but a fragment or `data:`, no CSS import.
fn assert_no_foreign_url(name: &str, html: &str) {
    let lower = html.to_ascii_lowercase();
    for bad in [
        "http://", "https://", "ws://", "wss://", "@import", "<iframe", "<img", "<object", "<embed",
    ] {
        assert!(!lower.contains(bad), "{name} contains {bad:?}");
    }
    // `//` right after a quote, a parenthesis or `=` starts a protocol-relative URL.
    let b = lower.as_bytes();
    for (i, w) in b.windows(2).enumerate() {
        if w == b"//" {
            let before = b[..i]
                .iter()
                .rev()
                .find(|c| !c.is_ascii_whitespace())
                .copied();
            assert!(
                !matches!(before, Some(b'"' | b'\'' | b'`' | b'(' | b'=')),
                "{name}: a protocol-relative URL at byte {i}: {:?}",
                &html[i.saturating_sub(20)..(i + 40).min(html.len())]
            );
        }
    }
    for attr in ["src=", "href=", "action=", "url("] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(attr) {
            let start = from + at + attr.len();
            let value = lower[start..].trim_start_matches(['"', '\'', ' ']);
            assert!(
                value.starts_with('#') || value.starts_with("data:"),
                "{name}: {attr} points elsewhere: {:?}",
                &html[start..(start + 40).min(html.len())]
            );
            from = start;
        }
    }
}

/// Every request the browser made for a document of `origin` went to `origin`;
/// nothing at all went to another http(s) origin.
fn assert_same_origin(requests: &[(String, String)], origin_url: &str) {
    for (url, document) in requests {
        let ours = document.starts_with(origin_url);
        match origin(url) {
            Some(o) if o.starts_with("http") || o.starts_with("ws") => {
                assert_eq!(
                    o, origin_url,
                    "a request to another origin: {url} (from {document})"
                )
            }
            _ if url.starts_with("data:") => {}
            _ => assert!(!ours, "the page requested {url}"),
        }
    }
}

#[test]
fn the_pages_request_nothing_outside_their_origin_and_reconnect_by_themselves() {
    // The files as written, and as the binaries serve them.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/dashboard");
    for name in ["master.html", "replica.html"] {
        let html = std::fs::read_to_string(dir.join(name)).unwrap();
        assert_no_foreign_url(name, &html);
    }

    let d = test_dir("dashboard-origin");
    let mut m = Master::start(d.path(), &["--rollout", "fleet", "--api-token", TOKEN]);
    let rs = replicas(&m, d.path(), &["o1"]);
    let v1 = m.publish_new("snapshot.20261202000000000", 2 * MB, 201);
    rs[0].wait_version(v1, REPLICATE);
    for (url, file) in [(&m.url, "master.html"), (&rs[0].url, "replica.html")] {
        let r = request("GET", &format!("{url}/"), None, None);
        assert_eq!(r.status, 200, "GET {url}/");
        assert!(
            r.content_type.starts_with("text/html"),
            "{}",
            r.content_type
        );
        let on_disk = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(r.text(), on_disk, "{url}/ serves {file} as built");
    }

    let mut b = Browser::start(d.path());
    b.get(&format!("{}/", m.url));
    b.wait(SHOWN, "the connection live", CONNECTION_JS, |v| v == "live");
    let rows = rows_js("default");
    b.wait(SHOWN, "o1 on v1", &rows, |r| all_live_on(r, &["o1"], v1));
    b.eval("window.__marker = 1; return null");
    // The levers are requests too: pause and resume with the token.
    let msg = "return document.querySelector('section[data-index=\"default\"] [data-field=\"message\"]').textContent";
    b.type_into("#token", TOKEN);
    b.click("section[data-index=\"default\"] button[data-action=\"pause\"]");
    b.wait(SHOWN, "pause done", msg, |v| {
        v.as_str().is_some_and(|t| t.starts_with("pause: done"))
    });
    let paused = "return document.querySelector('section[data-index=\"default\"] button[data-action=\"resume\"]').disabled";
    b.wait(SHOWN, "resume enabled once paused", paused, |v| {
        *v == json!(false)
    });
    assert_eq!(
        get_json(&format!("{}/rollout", m.url)).unwrap()["paused"],
        true
    );
    b.click("section[data-index=\"default\"] button[data-action=\"resume\"]");
    b.wait(SHOWN, "resume done", msg, |v| {
        v.as_str().is_some_and(|t| t.starts_with("resume: done"))
    });

    let reqs = b.requests();
    let urls: Vec<&str> = reqs.iter().map(|(u, _)| u.as_str()).collect();
    for want in [
        "/events",
        "/indexes/default/rollout/pause",
        "/indexes/default/rollout/resume",
    ] {
        assert!(
            urls.iter().any(|u| *u == format!("{}{want}", m.url)),
            "no request to {want} seen (the log would prove nothing): {urls:?}"
        );
    }
    assert_same_origin(&reqs, &m.url);
    let resources = b.eval("return performance.getEntriesByType('resource').map(e => e.name)");
    for url in resources.as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(&format!("{}/", m.url)), "resource {url}");
    }

    // The master dies: the page says so, and comes back by itself. (KILL:
    // a crash, and no graceful shutdown to wait for.)
    m.proc.signal("KILL");
    m.proc.wait(Duration::from_secs(20));
    b.wait(SHOWN, "reconnecting", CONNECTION_JS, |v| {
        v == "reconnecting"
    });
    m.restart();
    b.wait(SHOWN, "live again", CONNECTION_JS, |v| v == "live");
    b.wait(SHOWN, "o1 still shown on v1", &rows, |r| {
        all_live_on(r, &["o1"], v1)
    });
    assert_eq!(
        b.eval("return window.__marker"),
        json!(1),
        "the page reloaded"
    );
    assert_same_origin(&b.requests(), &m.url);

    // The replica's page: /status every 2 s, and nothing else.
    b.get(&format!("{}/", rs[0].url));
    b.wait(SHOWN, "the replica page live", CONNECTION_JS, |v| {
        v == "live"
    });
    let polled = "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/status')).length";
    b.wait(SHOWN, "two polls of /status", polled, |v| {
        v.as_u64() >= Some(2)
    });
    let reqs = b.requests();
    assert!(
        reqs.iter()
            .any(|(u, _)| *u == format!("{}/status", rs[0].url)),
        "{reqs:?}"
    );
    assert_same_origin(&reqs, &rs[0].url);
}

// ---------------------------------------------------------------- 3. Grafana and alert names

/// Names of the series in a Prometheus text exposition.
fn series_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `indexswarm_*` identifier in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("indexswarm_") {
        let boundary = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        if boundary {
            out.push(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    out
}

/// Brackets and quotes of a PromQL expression pair up (no promtool here:
/// this catches the typos a hand-edited board gets).
fn assert_balanced(expr: &str) {
    let mut stack = Vec::new();
    let mut quote = None;
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '(' | '[' | '{') => stack.push(c),
            (None, ')' | ']' | '}') => {
                let open = stack.pop();
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                assert_eq!(open, Some(want), "unbalanced {c:?} in {expr:?}");
            }
            _ => {}
        }
    }
    assert!(stack.is_empty() && quote.is_none(), "unclosed in {expr:?}");
}

/// The `expr` (and templating `query`) strings anywhere in a Grafana board.
fn board_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains("indexswarm_") => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => board_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| board_exprs(x, out)),
        _ => {}
    }
}

/// alerts.yml as JSON, read by PyYAML (a real YAML parser).
fn alert_rules(path: &Path) -> Value {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run /usr/bin/python3 (python3-yaml)");
    assert!(
        out.status.success(),
        "{} is not valid YAML (or python3-yaml is missing): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn grafana_board_and_alert_rules_name_only_exported_metrics() {
    let d = test_dir("dashboard-metrics");
    let mut m = Master::start(d.path(), &["--rollout", "fleet", "--api-token", TOKEN]);
    let rs = replicas(&m, d.path(), &["m1", "m2"]);
    let v1 = m.publish_new("snapshot.20261203000000000", 2 * MB, 301);
    for r in &rs {
        r.wait_version(v1, REPLICATE);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana");
    let board: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("indexswarm.json")).unwrap())
            .expect("indexswarm.json is JSON");
    assert!(
        board["title"].is_string() && board["panels"].is_array(),
        "a Grafana board"
    );
    let mut exprs = Vec::new();
    board_exprs(&board, &mut exprs);
    assert!(exprs.len() >= 10, "the board has {} queries", exprs.len());

    let rules = alert_rules(&dir.join("alerts.yml"));
    let mut alerts = Vec::new();
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("every rule is an alert");
            for k in ["expr", "for"] {
                assert!(r[k].is_string(), "{name}: no {k}");
            }
            assert!(r["labels"]["severity"].is_string(), "{name}: no severity");
            assert!(
                r["annotations"]["summary"].is_string(),
                "{name}: no summary"
            );
            alerts.push(r["expr"].as_str().unwrap().to_string());
        }
    }
    for needed in [
        "indexswarm_replica_lag_versions",
        "indexswarm_rollout_stuck",
        "indexswarm_hash_failures_total",
        "indexswarm_free_disk_bytes",
    ] {
        assert!(
            alerts
                .iter()
                .any(|e| metric_names(e).iter().any(|n| n == needed)),
            "no alert on {needed}"
        );
    }

    let mut named = BTreeSet::new();
    for e in exprs.iter().chain(&alerts) {
        assert_balanced(e);
        let names = metric_names(e);
        assert!(!names.is_empty(), "{e:?} names no indexswarm metric");
        named.extend(names);
    }

    // Series appear as the fleet gets there (reports, a finished
    // activation): wait until every name shows up, then say which did not.
    let exported = std::cell::RefCell::new(BTreeSet::new());
    let missing = || -> BTreeSet<String> {
        let exported = exported.borrow();
        named
            .iter()
            .filter(|n| !exported.contains(*n))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + START;
    loop {
        let mut names = BTreeSet::new();
        for url in [&m.url, &rs[0].url, &rs[1].url] {
            let r = request("GET", &format!("{url}/metrics"), None, None);
            assert_eq!(r.status, 200, "GET {url}/metrics");
            names.extend(series_names(&r.text()));
        }
        *exported.borrow_mut() = names;
        if missing().is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        missing().is_empty(),
        "named in examples/grafana but not exported: {:?}\nexported: {:?}",
        missing(),
        exported.borrow()
    );
    assert!(
        named.len() >= 20,
        "the board and rules use {} metrics",
        named.len()
    );
}

// ---------------------------------------------------------------- 4. five indexes, 200 replicas

/// A master of `names` (fleet rollouts), nothing published.
fn multi_master(root: &Path, names: &[&str]) -> (Proc, String) {
    let (http_port, peer_port) = crate::replica::two_ports();
    let mut c = cmd();
    c.arg("master");
    for name in names {
        let dir = root.join("snaps").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        c.arg("--index").arg(format!("{name}={}", dir.display()));
    }
    c.args(["--http-listen", &format!("127.0.0.1:{http_port}")]);
    c.args(["--peer-listen", &format!("127.0.0.1:{peer_port}")]);
    c.args(["--rollout", "fleet", "--api-token", TOKEN]);
    let proc = Proc::spawn("master", c, &root.join("logs"));
    let url = format!("http://127.0.0.1:{http_port}");
    wait_until(START, "the master's /healthz", || {
        request("GET", &format!("{url}/healthz"), None, None).status == 200
    });
    (proc, url)
}

/// What replica `i` of a made-up fleet reports: every fifth in error, every
/// seventh unhealthy, the rest idle, downloading or staged.
fn made_up_report(index: &str, i: usize, interval_secs: u64) -> Value {
    let state = match i % 5 {
        0 => "error",
        1 | 2 => "idle",
        3 => "downloading",
        _ => "staged",
    };
    json!({
        "id": format!("f{i:03}"),
        "zone": format!("zone-{}", i % 3),
        "index": index,
        "state": state,
        "live_version": 1,
        "staged_version": if state == "staged" { Some(2) } else { None },
        "progress": if state == "downloading" { 0.25 } else { 1.0 },
        "bytes_total": 1u64 << 30,
        "download_rate": if state == "downloading" { 3u64 << 20 } else { 0 },
        "upload_rate": (i as u64) << 10,
        "bytes_uploaded": (i as u64) << 20,
        "peers": i % 9,
        "last_error": if state == "error" { Some(format!("stalled: piece {i} has no peer")) } else { None },
        "free_disk": (i as u64 + 1) << 30,
        "healthy": i % 7 != 6,
        "interval_secs": interval_secs,
    })
}

fn report(url: &str, body: &Value) {
    let r = request(
        "POST",
        &format!("{url}/replicas/report"),
        Some(&body.to_string()),
        None,
    );
    assert!(
        r.status / 100 == 2,
        "report refused: {} {}",
        r.status,
        r.text()
    );
}

#[test]
fn five_indexes_and_two_hundred_replicas_stay_sortable_filterable_and_flagged() {
    let d = test_dir("dashboard-scale");
    let names = ["i0", "i1", "i2", "i3", "i4"];
    let (_master, url) = multi_master(d.path(), &names);
    // 200 replicas on i0 (f000 reports once, with a 1 s interval: stale
    // after three), 10 on each other index.
    for i in 0..200 {
        report(&url, &made_up_report("i0", i, if i == 0 { 1 } else { 600 }));
    }
    for name in &names[1..] {
        for i in 0..10 {
            report(&url, &made_up_report(name, i, 600));
        }
    }

    let mut b = Browser::start(d.path());
    b.get(&format!("{url}/"));
    b.wait(SHOWN, "the connection live", CONNECTION_JS, |v| v == "live");
    let counts = "return [...document.querySelectorAll('section[data-index]')].map(s => [s.dataset.index, s.querySelectorAll('tr[data-replica]').length])";
    b.wait(SHOWN, "five sections, 200 + 4 × 10 rows", counts, |v| {
        *v == json!([["i0", 200], ["i1", 10], ["i2", 10], ["i3", 10], ["i4", 10]])
    });
    let nav =
        b.eval("return [...document.querySelectorAll('#nav a[data-nav]')].map(a => a.dataset.nav)");
    assert_eq!(nav, json!(names), "one link per index");

    // Flags: a class and a badge on stale, erroring and unhealthy rows only.
    const I0: &str = "section[data-index=\"i0\"]";
    let flags = format!(
        "return Object.fromEntries([...document.querySelectorAll('{I0} tr[data-replica]')].map(tr => \
         [tr.dataset.replica, [[...tr.classList].filter(c => c.startsWith('flag-')).sort().join(' '), \
         [...tr.querySelectorAll('[data-flag]')].map(b => b.dataset.flag).sort().join(' ')]]))"
    );
    let shown = b.wait(SHOWN, "f000 flagged stale", &flags, |v| {
        v["f000"][0]
            .as_str()
            .is_some_and(|c| c.contains("flag-stale"))
    });
    for i in 1..200 {
        let mut want: Vec<&str> = Vec::new();
        if i % 5 == 0 {
            want.push("error");
        }
        if i % 7 == 6 {
            want.push("unhealthy");
        }
        let classes: Vec<String> = want.iter().map(|f| format!("flag-{f}")).collect();
        let id = format!("f{i:03}");
        assert_eq!(
            shown[&id],
            json!([classes.join(" "), want.join(" ")]),
            "the flags of {id}"
        );
    }

    // Sorting: a click on a header sorts by it; a second click reverses.
    let ids = format!(
        "return [...document.querySelectorAll('{I0} tr[data-replica]')].filter(tr => !tr.hidden).map(tr => tr.dataset.replica)"
    );
    let first = |v: &Value| v[0].as_str().unwrap_or("").to_string();
    assert_eq!(first(&b.eval(&ids)), "f000", "sorted by id at first");
    b.click(&format!("{I0} th[data-sort=\"id\"]"));
    let v = b.eval(&ids);
    assert_eq!(
        (first(&v), v.as_array().unwrap().len()),
        ("f199".into(), 200)
    );
    b.click(&format!("{I0} th[data-sort=\"free_disk\"]"));
    let v = b.eval(&ids);
    assert_eq!(first(&v), "f000", "least free disk first");
    b.click(&format!("{I0} th[data-sort=\"free_disk\"]"));
    assert_eq!(first(&b.eval(&ids)), "f199", "most free disk first");
    // A sort of 200 rows, timed in the page: it must stay interactive.
    let ms = b.eval(&format!(
        "const t = performance.now(); document.querySelector('{I0} th[data-sort=\"upload_rate\"]').click(); return performance.now() - t"
    ));
    assert!(
        ms.as_f64().unwrap() < 250.0,
        "sorting 200 rows took {ms} ms"
    );

    // Filtering by state (a chip), then by id.
    b.click(&format!("{I0} button[data-state-filter=\"error\"]"));
    let v = b.eval(&ids);
    let errors: BTreeSet<String> = (0..200)
        .step_by(5)
        .skip(1)
        .map(|i| format!("f{i:03}"))
        .collect();
    let got: BTreeSet<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, errors, "the error filter (f000 is stale, not error)");
    assert_eq!(
        b.eval(&format!(
            "return document.querySelector('{I0} select[data-filter=\"state\"]').value"
        )),
        json!("error")
    );
    b.click(&format!("{I0} button[data-state-filter=\"error\"]"));
    b.type_into(&format!("{I0} input[data-filter=\"text\"]"), "f01");
    let v = b.eval(&ids);
    assert_eq!(v.as_array().unwrap().len(), 10, "f010..f019: {v}");
    let count = b.eval(&format!(
        "return document.querySelector('{I0} [data-field=\"replica_count\"]').textContent"
    ));
    assert_eq!(count, json!("10 of 200 shown"));
    // The other sections kept their own state.
    let v = b.eval(
        "return document.querySelectorAll('section[data-index=\"i1\"] tr[data-replica]').length",
    );
    assert_eq!(v, json!(10));
    b.screenshot(&d.path().join("scale.png"));
}
