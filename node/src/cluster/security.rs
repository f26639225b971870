//! Cluster authentication: the cluster key, gossip packet authentication, and the mutual-TLS
//! identities of the QUIC mesh.
//!
//! One secret is enough to run an authenticated cluster. From the cluster key every node
//! derives, with HKDF-SHA256 and distinct labels:
//! - the HMAC-SHA256 key that signs and checks every gossip packet (foca itself trusts any
//!   datagram, so without this one forged packet could declare a node down);
//! - the seed of an Ed25519 cluster CA key. Every node builds the same CA (same key, same
//!   name) and issues its own node certificate at start, so peers verify each other with
//!   mutual TLS without any file being distributed.
//!
//! Operators with their own PKI pass a CA certificate and a node certificate and key instead;
//! the cluster key then still authenticates gossip.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use ring::{hkdf, hmac};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::tls_files::{PemError, read_certs, read_private_key};

/// ALPN of the inter-node protocol; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"murmur-cluster/1";

/// The common name of the cluster CA derived from a cluster key.
const DERIVED_CA_NAME: &str = "murmur cluster CA";

/// Used when no cluster key is configured: a development cluster whose peers are not
/// authenticated (anyone without a key can join). The node warns about it at start.
const DEVELOPMENT_KEY: &str = "murmur-development-cluster-key-not-secret";

#[derive(Debug, Error)]
pub enum SecurityError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS client-certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("node name `{0}` cannot be a certificate name (use letters, digits, '-' and '.')")]
    BadNodeName(String),
}

/// Secrets derived from the cluster key.
#[derive(Clone)]
pub struct ClusterKey {
    gossip: hmac::Key,
    ca_seed: [u8; 32],
    /// False for the built-in development key.
    pub authenticated: bool,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey")
            .field("authenticated", &self.authenticated)
            .finish_non_exhaustive()
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl ClusterKey {
    /// Derives the cluster's secrets from `key`, or from the development key when `None`.
    pub fn derive(key: Option<&str>) -> Self {
        let secret = key.unwrap_or(DEVELOPMENT_KEY);
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"murmur cluster key v1").extract(secret.as_bytes());
        let expand = |label: &[u8]| -> [u8; 32] {
            let mut out = [0u8; 32];
            let labels = [label];
            // 32 bytes is far below HKDF-SHA256's output limit, so these cannot fail.
            if let Ok(okm) = prk.expand(&labels, Len(32)) {
                let _ = okm.fill(&mut out);
            }
            out
        };
        Self {
            gossip: hmac::Key::new(hmac::HMAC_SHA256, &expand(b"gossip hmac")),
            ca_seed: expand(b"cluster ca ed25519 seed"),
            authenticated: key.is_some(),
        }
    }

    /// The HMAC key of the gossip envelope ([`super::envelope`]).
    pub(super) fn gossip_key(&self) -> &hmac::Key {
        &self.gossip
    }

    /// The cluster CA every node derives from this key: certificate and issuer.
    fn derived_ca(
        &self,
    ) -> Result<(CertificateDer<'static>, Issuer<'static, KeyPair>), SecurityError> {
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(ed25519_pkcs8(&self.ca_seed)),
            &PKCS_ED25519,
        )?;
        let params = ca_params();
        let cert = params.self_signed(&key)?;
        Ok((cert.der().clone(), Issuer::new(params, key)))
    }
}

/// PKCS#8 v1 for an Ed25519 private key given by its 32-byte seed (RFC 8410).
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, DERIVED_CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // Fixed dates: every node must build an equivalent CA.
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    params
}

fn node_params(name: &str) -> Result<CertificateParams, SecurityError> {
    let mut params = CertificateParams::new(vec![name.to_owned()])
        .map_err(|_| SecurityError::BadNodeName(name.to_owned()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Each node is both a TLS server (accepting) and a client (dialing).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    Ok(params)
}

/// Checks that a node name can be the DNS name of a certificate (and a TLS server name).
pub fn validate_node_name(name: &str) -> Result<(), SecurityError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok && rustls::pki_types::ServerName::try_from(name.to_owned()).is_ok() {
        Ok(())
    } else {
        Err(SecurityError::BadNodeName(name.to_owned()))
    }
}

/// What a node presents and trusts on the QUIC mesh.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl NodeIdentity {
    /// A fresh node certificate for `name`, issued by the CA derived from the cluster key.
    pub fn from_cluster_key(key: &ClusterKey, name: &str) -> Result<Self, SecurityError> {
        validate_node_name(name)?;
        let (ca, issuer) = key.derived_ca()?;
        let node_key = KeyPair::generate()?;
        let cert = node_params(name)?.signed_by(&node_key, &issuer)?;
        Ok(Self {
            ca,
            chain: vec![cert.der().clone()],
            key: Arc::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                node_key.serialize_der(),
            ))),
        })
    }

    /// An operator's own PKI: PEM files for the CA, the node's certificate chain and its key.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, SecurityError> {
        let ca = read_certs(ca)?
            .into_iter()
            .next()
            .ok_or_else(|| PemError::Missing {
                what: "certificate",
                path: ca.to_owned(),
            })?;
        let chain = read_certs(cert)?;
        let private = read_private_key(key)?;
        Ok(Self {
            ca,
            chain,
            key: Arc::new(private),
        })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, SecurityError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// TLS for accepting peers: TLS 1.3, a client certificate from the cluster CA required.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, SecurityError> {
        let provider = provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// TLS for dialing peers: the peer's certificate must come from the cluster CA and name
    /// the node we meant to reach; ours is presented in return.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, SecurityError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// Checks that a verified peer certificate names `name`: a peer may only speak for itself.
pub fn certificate_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&server_name).is_ok())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Files for operators who run their own PKI: `murmur cert ca` and `murmur cert node`.
pub mod files {
    use super::*;

    /// A new random cluster CA: (certificate PEM, private key PEM).
    pub fn new_ca() -> Result<(String, String), SecurityError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A node certificate for `name` signed by the CA in the given PEM strings:
    /// (certificate PEM, private key PEM).
    pub fn new_node(
        name: &str,
        ca_cert_pem: &str,
        ca_key_pem: &str,
    ) -> Result<(String, String), SecurityError> {
        validate_node_name(name)?;
        let ca_key = KeyPair::from_pem(ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let cert = node_params(name)?.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_sharing_a_key_share_a_ca() {
        let key = ClusterKey::derive(Some("k"));
        let a = NodeIdentity::from_cluster_key(&key, "node-a").unwrap();
        let b = NodeIdentity::from_cluster_key(&key, "node-b").unwrap();
        assert_eq!(a.ca, b.ca, "the derived CA is the same on every node");
        assert!(certificate_names(&a.chain[0], "node-a"));
        assert!(!certificate_names(&a.chain[0], "node-b"));
        let other =
            NodeIdentity::from_cluster_key(&ClusterKey::derive(Some("x")), "node-a").unwrap();
        assert_ne!(a.ca, other.ca);
        a.server_config().unwrap();
        a.client_config().unwrap();
    }

    #[test]
    fn node_names_must_fit_a_certificate() {
        assert!(validate_node_name("node-1").is_ok());
        assert!(validate_node_name("murmur-0.murmur.default.svc").is_ok());
        assert!(validate_node_name("").is_err());
        assert!(validate_node_name("bad name").is_err());
        assert!(validate_node_name("under_score").is_err());
        assert!(validate_node_name("-dash").is_err());
    }

    #[test]
    fn operator_pki_files() {
        let (ca_cert, ca_key) = files::new_ca().unwrap();
        let (cert, key) = files::new_node("n1", &ca_cert, &ca_key).unwrap();
        let dir = std::env::temp_dir().join(format!("murmur-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |n: &str, s: &str| {
            let p = dir.join(n);
            std::fs::write(&p, s).unwrap();
            p
        };
        let identity = NodeIdentity::from_files(
            &write("ca.pem", &ca_cert),
            &write("n1.pem", &cert),
            &write("n1.key", &key),
        )
        .unwrap();
        assert!(certificate_names(&identity.chain[0], "n1"));
        identity.server_config().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
