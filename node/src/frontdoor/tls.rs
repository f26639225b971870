//! TLS on the client listener: the certificate and key from `client_tls_cert` and
//! `client_tls_key`, reloadable while the node runs.
//!
//! The server configuration is built once; its certificate comes from a resolver that holds
//! the current certificate behind a lock. A reload reads both files, checks that the key
//! belongs to the certificate, and swaps the pair: handshakes from then on present the new
//! certificate, connections already open keep the session they negotiated. A reload that
//! fails changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;

use crate::tls_files::{PemError, read_certs, read_private_key};

#[derive(Debug, Error)]
pub enum ClientTlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{key} does not fit {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The client listener's certificate, reloadable.
pub struct ClientTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    resolver: Arc<ReloadableCert>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

impl ClientTls {
    /// Loads the certificate chain and key; fails with the file and the reason.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, ClientTlsError> {
        let certified = load_pair(cert_path, key_path)?;
        let resolver = Arc::new(ReloadableCert {
            current: RwLock::new(Arc::new(certified)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // The listener speaks HTTP/1.1 only (WebSocket upgrades are HTTP/1.1).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads the files again and, when they hold a usable pair, serves new handshakes with it.
    pub fn reload(&self) -> Result<(), ClientTlsError> {
        let certified = load_pair(&self.cert_path, &self.key_path)?;
        *self.resolver.current.write() = Arc::new(certified);
        Ok(())
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, ClientTlsError> {
    let chain = read_certs(cert_path)?;
    let key = read_private_key(key_path)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|reason| ClientTlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate_and_says_why() {
        let dir = std::env::temp_dir().join(format!("murmur-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = self_signed(&dir, "a");
        let (other_cert, _) = self_signed(&dir, "b");
        let tls = ClientTls::load(&cert, &key).unwrap();
        let before = tls.resolver.current.read().clone();

        // A certificate whose key is not the one in the key file.
        std::fs::copy(&other_cert, &cert).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, ClientTlsError::Mismatch { .. }), "{err}");
        std::fs::write(&cert, "not a certificate").unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("no certificate found"), "{err}");
        assert!(Arc::ptr_eq(&before, &tls.resolver.current.read()));

        let (fresh_cert, fresh_key) = self_signed(&dir, "c");
        std::fs::copy(&fresh_cert, &cert).unwrap();
        std::fs::copy(&fresh_key, &key).unwrap();
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.resolver.current.read()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_files_are_named() {
        let err = ClientTls::load(Path::new("/nonexistent/c.pem"), Path::new("/x.key"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }
}
