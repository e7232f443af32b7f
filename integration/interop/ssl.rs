//! Issue #11: SSL torrents with libtorrent, both ways. A CA from
//! `indexswarm ca init` is the torrent's `ssl-cert`; libtorrent (Debian's
//! build has OpenSSL) downloads it from our seeder, and our fetch from a
//! libtorrent seeder, each side with a certificate from that CA. Without
//! one, or with one from another CA, nothing is exchanged.

use super::*;

/// A CA in `dir` with certificates for `nodes`.
fn deployment(dir: &Path, nodes: &[&str]) {
    let mut c = cmd();
    c.args(["ca", "init", "--dir"]).arg(dir);
    run_ok(c);
    for n in nodes {
        let mut c = cmd();
        c.args(["ca", "issue", n, "--dir"]).arg(dir);
        run_ok(c);
    }
}

/// An SSL torrent of the fixture's data (aligned), its root `ca`.
fn ssl_torrent(f: &Fixture, ca: &Path) -> PathBuf {
    let t = f.path("ssl.torrent");
    let mut c = cmd();
    c.arg("create")
        .arg(f.src())
        .arg("-o")
        .arg(&t)
        .args(["--piece-length", "256K", "--align-files", "--ssl-cert"])
        .arg(ca);
    run_ok(c);
    t
}

fn cert_args(dir: &Path, node: &str) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        dir.join(format!("{node}.pem")).display().to_string(),
        "--tls-key".into(),
        dir.join(format!("{node}.key")).display().to_string(),
    ]
}

/// `lt_peer.py leech` of `torrent` from our seeder on `port`, with `cert`
/// (certificate, key) if given.
fn lt_leech(
    f: &Fixture,
    torrent: &Path,
    port: u16,
    cert: Option<(PathBuf, PathBuf)>,
    timeout: &str,
) -> Proc {
    let mut c = lt_peer();
    c.arg("leech")
        .arg(torrent)
        .arg(f.path("lt"))
        .args(["--port", &free_port().to_string()])
        .args(["--ssl-port", &free_port().to_string()])
        .args(["--peer", &format!("127.0.0.1:{port}"), "--timeout", timeout]);
    if let Some((cert, key)) = cert {
        c.arg("--ssl-cert").arg(cert).arg("--ssl-key").arg(key);
    }
    Proc::spawn("lt-leech", c, &f.logs())
}

#[test]
fn libtorrent_downloads_an_ssl_torrent_from_us_only_with_a_certificate() {
    need_libtorrent();
    let f = Fixture::new("ssl-to-lt", true, None);
    let certs = f.path("ca");
    deployment(&certs, &["seeder", "lt"]);
    let t = ssl_torrent(&f, &certs.join("ca.pem"));
    let port = free_port();
    let mut c = cmd();
    c.arg("seed").arg(&t).arg("--dir").arg(&f.src_parent);
    c.args(["--listen", &format!("127.0.0.1:{port}")]);
    c.args(cert_args(&certs, "seeder"));
    let seed = Proc::spawn("seed", c, &f.logs());
    wait_until(Duration::from_secs(60), "our SSL seeder", || {
        seed.stdout_text().trim().len() == 40
    });

    // Without a certificate libtorrent gets nothing.
    let mut bare = lt_leech(&f, &t, port, None, "8");
    assert!(
        !bare.wait(LIMIT).success(),
        "libtorrent without a certificate finished"
    );
    assert!(
        bare.stdout_text().contains("\"complete\": false"),
        "{}",
        bare.stdout_text()
    );

    let mut p = lt_leech(
        &f,
        &t,
        port,
        Some((certs.join("lt.pem"), certs.join("lt.key"))),
        "150",
    );
    assert!(
        p.wait(LIMIT).success(),
        "libtorrent did not finish over TLS: {}\nseeder:\n{}",
        p.stdout_text(),
        tail(&seed.stderr_text())
    );
    assert_same_tree(&f.src(), &f.path("lt").join("snap"));
}

#[test]
fn our_fetch_downloads_an_ssl_torrent_from_libtorrent_only_with_a_certificate() {
    need_libtorrent();
    let f = Fixture::new("ssl-from-lt", true, None);
    let certs = f.path("ca");
    deployment(&certs, &["lt", "fetcher"]);
    let other = f.path("other-ca");
    deployment(&other, &["stranger"]);
    let t = ssl_torrent(&f, &certs.join("ca.pem"));
    let ssl_port = free_port();
    let mut c = lt_peer();
    c.arg("seed")
        .arg(&t)
        .arg(&f.src_parent)
        .args(["--port", &free_port().to_string()])
        .args(["--ssl-port", &ssl_port.to_string()])
        .arg("--ssl-cert")
        .arg(certs.join("lt.pem"))
        .arg("--ssl-key")
        .arg(certs.join("lt.key"));
    let lt = Proc::spawn("lt-seed", c, &f.logs());
    wait_until(Duration::from_secs(30), "libtorrent seed to listen", || {
        lt.stdout_text().contains("listening")
    });

    // Without a certificate our fetch refuses to start: one clear line.
    let out = run(our_fetch(
        &f_with(&f, &t),
        &f.path("none"),
        &[ssl_port],
        &[],
    ));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_cert"), "{err}");
    // With one from another CA, libtorrent refuses it: nothing arrives.
    let mut c = our_fetch(
        &f_with(&f, &t),
        &f.path("stranger"),
        &[ssl_port],
        &["--stall-secs", "5"],
    );
    c.args(cert_args(&other, "stranger"));
    let mut p = Proc::spawn("fetch-stranger", c, &f.logs());
    wait_until(Duration::from_secs(60), "a stall report", || {
        p.stderr_text().contains("stalled")
    });
    assert!(
        p.try_status().is_none(),
        "the stranger's fetch did not finish"
    );
    p.signal("KILL");

    let mut c = our_fetch(&f_with(&f, &t), &f.path("ours"), &[ssl_port], &[]);
    c.args(cert_args(&certs, "fetcher"));
    fetch_ok(&f, "fetch", c);
    assert_same_tree(&f.src(), &f.path("ours").join("snap"));
}

/// The fixture with its torrent swapped for `t`.
fn f_with(f: &Fixture, t: &Path) -> Fixture {
    Fixture {
        dir: tempfile::tempdir_in(f.dir.path()).unwrap(),
        src_parent: f.src_parent.clone(),
        torrent: t.to_path_buf(),
    }
}
