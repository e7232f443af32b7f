//! TLS end to end: a deployment CA from `indexswarm ca`, the master's and
//! the replicas' APIs over HTTPS, and an SSL torrent (the CA as
//! `info.ssl-cert`) replicated to three replicas whose peers speak TLS.
//! Plaintext for that torrent, and TLS without a certificate the CA
//! signed, get nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexswarm::metainfo::Metainfo;
use serde_json::Value;

use super::*;
use crate::replica::two_ports;

/// An HTTPS client that trusts the test's CA, on its own runtime.
struct Https {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Https {
    fn new(ca: &Path) -> Https {
        let pem = fs::read(ca).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Https {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client,
        }
    }

    /// `(status, body)`, or `None` when no HTTPS exchange happened.
    fn get(&self, url: &str, token: Option<&str>) -> Option<(u16, Vec<u8>)> {
        self.rt.block_on(async {
            let mut r = self.client.get(url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.ok()?;
            let status = resp.status().as_u16();
            Some((status, resp.bytes().await.ok()?.to_vec()))
        })
    }

    fn json(&self, url: &str, token: Option<&str>) -> Option<Value> {
        let (status, body) = self.get(url, token)?;
        (status == 200).then(|| serde_json::from_slice(&body).ok())?
    }
}

fn ca(dir: &Path, args: &[&str]) {
    let mut c = cmd();
    c.arg("ca").args(args).arg("--dir").arg(dir);
    run_ok(c);
}

/// `indexswarm master|replica` with TLS settings from `certs` for `node`.
fn tls_args(certs: &Path, node: &str) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        certs.join(format!("{node}.pem")).display().to_string(),
        "--tls-key".into(),
        certs.join(format!("{node}.key")).display().to_string(),
        "--tls-ca".into(),
        certs.join("ca.pem").display().to_string(),
        "--swarm-token".into(),
        SWARM.into(),
    ]
}

#[test]
fn https_apis_and_ssl_torrent_peers_end_to_end() {
    let d = test_dir("tls");
    let certs = d.path().join("ca");
    ca(&certs, &["init"]);
    for node in ["master", "r1", "r2", "r3"] {
        ca(&certs, &["issue", node, "--san", "127.0.0.1"]);
    }
    let https = Https::new(&certs.join("ca.pem"));
    let snaps = d.path().join("snaps");
    fs::create_dir_all(&snaps).unwrap();
    let (http_port, peer_port) = two_ports();
    let url = format!("https://127.0.0.1:{http_port}");
    let mut c = cmd();
    c.arg("master").arg("--snapshots-dir").arg(&snaps);
    c.args(["--http-listen", &format!("127.0.0.1:{http_port}")]);
    c.args(["--peer-listen", &format!("127.0.0.1:{peer_port}")]);
    c.args(["--settle-secs", "1", "--public-url", &url]);
    c.args(tls_args(&certs, "master"));
    let master = Proc::spawn("master", c, &d.path().join("logs"));
    wait_until(Duration::from_secs(30), "the master over HTTPS", || {
        https
            .get(&format!("{url}/healthz"), None)
            .is_some_and(|r| r.0 == 200)
    });
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = request(
        "GET",
        &format!("http://127.0.0.1:{http_port}/healthz"),
        None,
        None,
    );
    assert_ne!(plain.status, 200, "plain HTTP must not be served");

    let replicas: Vec<(Proc, String, PathBuf)> = ["r1", "r2", "r3"]
        .iter()
        .map(|id| {
            let (h, p) = two_ports();
            let data = d.path().join(id);
            let mut c = cmd();
            c.args(["replica", "--master-url", &url, "--id", id])
                .arg("--data-dir")
                .arg(&data);
            c.args(["--http-listen", &format!("127.0.0.1:{h}")]);
            c.args(["--peer-listen", &format!("127.0.0.1:{p}")]);
            c.args(["--poll-interval-secs", "1"]);
            c.args(tls_args(&certs, id));
            let proc = Proc::spawn(id, c, &d.path().join("logs"));
            (proc, format!("https://127.0.0.1:{h}"), data)
        })
        .collect();

    let staged = d.path().join("staging/snapshot.20260601000000000");
    indexswarm::demo::generate_snapshot(&staged, 4 * MB, 11).unwrap();
    fs::rename(&staged, snaps.join("snapshot.20260601000000000")).unwrap();
    let mut latest = None;
    wait_until(Duration::from_secs(60), "version 1 over HTTPS", || {
        latest = https.json(&format!("{url}/versions/latest"), Some(SWARM));
        latest.is_some()
    });
    let latest = latest.unwrap();
    let (status, torrent) = https
        .get(latest["torrent_url"].as_str().unwrap(), Some(SWARM))
        .unwrap();
    assert_eq!(status, 200);
    let meta = Metainfo::from_bytes(&torrent).unwrap();
    let ca_pem = fs::read_to_string(certs.join("ca.pem")).unwrap();
    assert_eq!(
        meta.ssl_cert.as_deref(),
        Some(ca_pem.as_str()),
        "an SSL torrent"
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    for (proc, rurl, data) in &replicas {
        while https
            .json(&format!("{rurl}/status"), None)
            .is_none_or(|s| s["current_version"] != 1 || s["state"] != "idle")
        {
            assert!(
                Instant::now() < deadline,
                "{} did not replicate over TLS:\n{}\nmaster:\n{}",
                proc.name,
                tail(&proc.stderr_text()),
                tail(&master.stderr_text())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_same_tree(
            &snaps.join("snapshot.20260601000000000"),
            &data.join("current"),
        );
    }

    // The peer port: plaintext for the SSL torrent gets nothing (127.0.0.1
    // announced, so this is the transport rule, not the member rule)...
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], peer_port));
    let mut s = TcpStream::connect(peer).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut hs = vec![19u8];
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0; 8]);
    hs.extend_from_slice(&meta.info_hash.0);
    hs.extend_from_slice(b"-XX0001-plaintextpee");
    s.write_all(&hs).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "plaintext answered with {} bytes",
        got.len()
    );
    // ...and TLS without a certificate the CA signed fails its handshake.
    assert!(
        !tls_without_certificate(peer, &meta, &ca_pem),
        "a peer without a certificate got through"
    );
}

/// Tries a TLS peer handshake presenting no client certificate; true if
/// the BitTorrent handshake came back.
fn tls_without_certificate(peer: std::net::SocketAddr, meta: &Metainfo, ca_pem: &str) -> bool {
    use rustls_pki_types::pem::PemObject;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(indexswarm::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(peer).await.unwrap();
        let name = indexswarm::peer::tls::sni(&meta.info_hash.0);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await
        else {
            return false;
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut hs = vec![19u8];
        hs.extend_from_slice(b"BitTorrent protocol");
        hs.extend_from_slice(&[0; 8]);
        hs.extend_from_slice(&meta.info_hash.0);
        hs.extend_from_slice(b"-XX0001-nocertificat");
        if s.write_all(&hs).await.is_err() {
            return false;
        }
        let mut buf = [0u8; 68];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        )
    })
}
