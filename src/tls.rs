//! TLS material: PEM files in, rustls configurations out, and the
//! deployment CA of `indexswarm ca init` / `ca issue` (rcgen).
//!
//! One CA per deployment signs every node's certificate. A node
//! certificate is good for three jobs: the HTTPS API (its subject
//! alternative names are the node's name and any `--san` given), and the
//! peer wire of SSL torrents, where libtorrent accepts a peer whose
//! certificate chains to the torrent's `ssl-cert` and whose name matches
//! the torrent's name or is `*`: so the common name is `*` (libtorrent
//! falls back to it when no alternative name matches; web clients ignore
//! it). We check peers by chain only: every certificate our CA signed is a
//! member of the deployment.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no {what} in PEM form")]
    Empty { path: String, what: &'static str },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0} exists already; refusing to overwrite it")]
    Exists(String),
    #[error("{0:?} is not a node name (1-64 letters, digits, '.', '-', '_')")]
    BadName(String),
}

/// The crypto all our TLS uses: ring, which needs no C toolchain (the
/// post-quantum key exchange rustls deprecates ring's provider for needs
/// aws-lc, a C build).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A text file, or an error naming it.
fn read_text(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TlsError::Io {
        path: p.clone(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: p.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: p,
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TlsError::Io {
        path: p.clone(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::Empty {
        path: p,
        what: "private key",
    })
}

/// The HTTPS configuration of an API: `cert` (chain) and `key`.
pub fn https_server(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    Ok(Arc::new(cfg))
}

/// A node name, as files are named after it.
fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadName(name.to_string()))
    }
}

/// Writes `text` to `path` unless it exists; `secret` files are 0600.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = path.display().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => TlsError::Exists(p.clone()),
            _ => TlsError::Io {
                path: p.clone(),
                source,
            },
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| TlsError::Io { path: p, source })
}

/// The CA's certificate parameters. `ca issue` rebuilds the issuer from
/// these and the saved key: the same subject and key sign exactly as the
/// saved certificate does (no certificate parser needed).
fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "indexswarm deployment CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    params
}

/// `ca init --dir D`: a new CA, `D/ca.pem` and `D/ca.key` (0600).
pub fn ca_init(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let key = rcgen::KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    // The key first: a CA certificate without its key is useless, a key
    // without a certificate is just rerun.
    write_new(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    write_new(&dir.join("ca.pem"), &cert.pem(), false)
}

/// `ca issue NAME --dir D [--san NAME_OR_IP]...`: `D/NAME.pem` (the node
/// certificate followed by the CA's) and `D/NAME.key` (0600).
pub fn ca_issue(dir: &Path, name: &str, sans: &[String]) -> Result<(), TlsError> {
    check_name(name)?;
    let ca_pem = read_text(&dir.join("ca.pem"))?;
    let ca_key_pem = read_text(&dir.join("ca.key"))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)?;
    let ca = ca_params().self_signed(&ca_key)?;
    let mut names = vec![name.to_string()];
    names.extend(sans.iter().cloned());
    let mut params = rcgen::CertificateParams::new(names)?;
    // libtorrent matches a peer's name against the torrent's, or "*".
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "*");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    write_new(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    write_new(
        &dir.join(format!("{name}.pem")),
        &format!("{}{}", cert.pem(), ca_pem),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_node_certificates_rustls_accepts() {
        let d = tempfile::tempdir().unwrap();
        ca_init(d.path()).unwrap();
        assert!(matches!(ca_init(d.path()), Err(TlsError::Exists(_))));
        ca_issue(d.path(), "master", &["127.0.0.1".into()]).unwrap();
        assert!(matches!(
            ca_issue(d.path(), "../x", &[]),
            Err(TlsError::BadName(_))
        ));
        let chain = load_certs(&d.path().join("master.pem")).unwrap();
        assert_eq!(chain.len(), 2, "node then CA");
        https_server(&d.path().join("master.pem"), &d.path().join("master.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }
}
