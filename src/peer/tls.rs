//! The peer wire of SSL torrents (libtorrent's scheme): the torrent's
//! `info.ssl-cert` is the only root; both sides present a certificate it
//! signed; the client names the torrent in SNI as its hex info-hash, which
//! is how one listening port serves many torrents (and plain ones too: a
//! TLS ClientHello starts with 0x16, a BitTorrent handshake with 19).
//!
//! We check a peer's certificate by its chain alone: every certificate the
//! deployment CA signed belongs to the deployment. (libtorrent also wants
//! the name to be the torrent's or `*`; `indexswarm ca issue` makes its
//! common name `*`, so libtorrent accepts ours.)

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

use crate::tls::{provider, TlsError};

/// This node's certificate chain and key, for every SSL torrent.
pub struct PeerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl PeerIdentity {
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<PeerIdentity, TlsError> {
        Ok(PeerIdentity {
            chain: crate::tls::load_certs(cert)?,
            key: crate::tls::load_key(key)?,
        })
    }
}

/// How to dial and how to accept the peers of one SSL torrent.
pub struct TorrentTls {
    pub client: Arc<rustls::ClientConfig>,
    pub server: Arc<rustls::ServerConfig>,
}

/// The server verifier of webpki, minus the name check.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// TLS for a torrent whose `ssl-cert` is `ca_pem`, as `id`.
pub fn torrent_tls(ca_pem: &str, id: &PeerIdentity) -> Result<TorrentTls, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| TlsError::Pem {
            path: "info.ssl-cert".into(),
            message: e.to_string(),
        })?;
        roots.add(c)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Empty {
            path: "info.ssl-cert".into(),
            what: "certificate",
        });
    }
    let roots = Arc::new(roots);
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(Error::General(e.to_string())))?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(server_verifier)))
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Config(Error::General(e.to_string())))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    Ok(TorrentTls {
        client: Arc::new(client),
        server: Arc::new(server),
    })
}

/// The SNI of an SSL torrent's connection: its info-hash in lowercase hex.
pub fn sni(info_hash: &[u8; 20]) -> ServerName<'static> {
    ServerName::try_from(hex::encode(info_hash))
        .unwrap_or_else(|_| ServerName::try_from("torrent").expect("a valid literal"))
}
