//! A JSON Web Key Set from a file or an https URL, cached and refreshed.
//!
//! The set is (re)loaded when it is older than [`JwksOptions::ttl`], and when a token names a
//! `kid` the cached set lacks (key rotation at the issuer). Loads are rate-limited
//! ([`JwksOptions::min_refresh_interval`]), so tokens with made-up `kid`s cannot make the node
//! hammer the issuer, and one load runs at a time. A failed reload keeps the keys already known.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use thiserror::Error;

use super::keys::{VerificationKey, jwk_key};
use super::{AuthError, AuthSetupError};

/// How the key set is fetched and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksOptions {
    /// A set older than this is loaded again before use.
    pub ttl: Duration,
    /// Loads happen at most this often, whatever tokens say.
    pub min_refresh_interval: Duration,
    /// An https fetch that takes longer fails.
    pub fetch_timeout: Duration,
    /// A larger set (response body or file) is refused.
    pub max_bytes: usize,
    /// Keys kept from one set; further keys are ignored (the cache stays bounded).
    pub max_keys: usize,
}

impl Default for JwksOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
            max_keys: 32,
        }
    }
}

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(reqwest::Url),
}

/// Why a `token_jwks` value was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JwksSourceError {
    #[error("must not be empty")]
    Empty,
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error(
        "http:// is only allowed for loopback hosts (localhost, 127.0.0.0/8, [::1]); use https://"
    )]
    PlainHttp,
    #[error("unsupported URL scheme `{0}`; give https:// or a file path")]
    Scheme(String),
}

impl JwksSource {
    /// A URL (`https://…`, or `http://` on loopback) or else a file path.
    pub fn parse(text: &str) -> Result<Self, JwksSourceError> {
        if text.trim().is_empty() {
            return Err(JwksSourceError::Empty);
        }
        if !text.contains("://") {
            return Ok(Self::File(PathBuf::from(text)));
        }
        let url = reqwest::Url::parse(text)
            .map_err(|err| JwksSourceError::InvalidUrl(err.to_string()))?;
        match url.scheme() {
            "https" => Ok(Self::Url(url)),
            "http" if is_loopback(&url) => Ok(Self::Url(url)),
            "http" => Err(JwksSourceError::PlainHttp),
            other => Err(JwksSourceError::Scheme(other.to_owned())),
        }
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Url(url) => write!(f, "{url}"),
        }
    }
}

pub(crate) type KeySet = Arc<Vec<VerificationKey>>;

/// The keys as last loaded.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub(crate) keys: KeySet,
    /// Bumped by every successful load: tells a waiting caller someone else just loaded.
    pub(crate) generation: u64,
    loaded_at: Option<Instant>,
}

pub(crate) struct JwksCache {
    source: JwksSource,
    options: JwksOptions,
    client: Option<reqwest::Client>,
    current: RwLock<Snapshot>,
    last_attempt: Mutex<Option<Instant>>,
    loading: tokio::sync::Mutex<()>,
}

impl JwksCache {
    /// A file is read now (an unreadable or invalid one fails the node's start); a URL is
    /// fetched on first use, so a node can start while the issuer is briefly away.
    pub(crate) fn new(source: JwksSource, options: JwksOptions) -> Result<Self, AuthSetupError> {
        let (client, current) = match &source {
            JwksSource::File(path) => {
                let keys = read_file(path, &options).map_err(|reason| AuthSetupError::Jwks {
                    location: source.to_string(),
                    reason,
                })?;
                let snapshot = Snapshot {
                    keys: Arc::new(keys),
                    generation: 1,
                    loaded_at: Some(Instant::now()),
                };
                (None, snapshot)
            }
            JwksSource::Url(_) => {
                let client = http_client(&options).map_err(|reason| AuthSetupError::Jwks {
                    location: source.to_string(),
                    reason,
                })?;
                let empty = Snapshot {
                    keys: Arc::new(Vec::new()),
                    generation: 0,
                    loaded_at: None,
                };
                (Some(client), empty)
            }
        };
        Ok(Self {
            source,
            options,
            client,
            current: RwLock::new(current),
            last_attempt: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// The current keys; loaded first when never loaded or older than the TTL.
    pub(crate) async fn keys(&self) -> Result<Snapshot, AuthError> {
        let snapshot = self.current.read().clone();
        match snapshot.loaded_at {
            Some(at) if at.elapsed() < self.options.ttl => Ok(snapshot),
            _ => self.reload(snapshot.generation).await,
        }
    }

    /// Loads the set again, unless another caller loaded it since `seen_generation` or the
    /// last attempt is more recent than the rate limit allows; either way answers the keys
    /// now known. Fails only when no keys were ever loaded.
    pub(crate) async fn reload(&self, seen_generation: u64) -> Result<Snapshot, AuthError> {
        let _one_at_a_time = self.loading.lock().await;
        let snapshot = self.current.read().clone();
        if snapshot.generation != seen_generation {
            return Ok(snapshot);
        }
        let too_soon = self
            .last_attempt
            .lock()
            .is_some_and(|at| at.elapsed() < self.options.min_refresh_interval);
        if too_soon {
            return self.known_keys(snapshot, "the last load failed; retrying later");
        }
        *self.last_attempt.lock() = Some(Instant::now());
        match self.load().await {
            Ok(keys) => {
                tracing::info!(source = %self.source, keys = keys.len(), "loaded token keys (JWKS)");
                let fresh = Snapshot {
                    keys: Arc::new(keys),
                    generation: snapshot.generation + 1,
                    loaded_at: Some(Instant::now()),
                };
                *self.current.write() = fresh.clone();
                Ok(fresh)
            }
            Err(reason) => {
                tracing::warn!(source = %self.source, "cannot load token keys (JWKS): {reason}");
                self.known_keys(snapshot, &reason)
            }
        }
    }

    fn known_keys(&self, snapshot: Snapshot, reason: &str) -> Result<Snapshot, AuthError> {
        if snapshot.loaded_at.is_some() {
            Ok(snapshot)
        } else {
            Err(AuthError::KeysUnavailable(format!(
                "JWKS {}: {reason}",
                self.source
            )))
        }
    }

    async fn load(&self) -> Result<Vec<VerificationKey>, String> {
        match (&self.source, &self.client) {
            (JwksSource::File(path), _) => {
                let (path, options) = (path.clone(), self.options);
                tokio::task::spawn_blocking(move || read_file(&path, &options))
                    .await
                    .map_err(|err| format!("reading the file failed: {err}"))?
            }
            (JwksSource::Url(url), Some(client)) => {
                let body = fetch(client, url.clone(), self.options.max_bytes).await?;
                parse_key_set(&body, &self.options)
            }
            (JwksSource::Url(_), None) => Err("no HTTP client".into()),
        }
    }
}

fn read_file(
    path: &std::path::Path,
    options: &JwksOptions,
) -> Result<Vec<VerificationKey>, String> {
    let len = std::fs::metadata(path)
        .map_err(|err| format!("cannot read: {err}"))?
        .len();
    if len > options.max_bytes as u64 {
        return Err(format!(
            "{len} bytes, over the limit of {}",
            options.max_bytes
        ));
    }
    let body = std::fs::read(path).map_err(|err| format!("cannot read: {err}"))?;
    parse_key_set(&body, options)
}

/// TLS through rustls with ring (the crypto the rest of the node uses) and the system's
/// trust store; no redirects, so an https URL cannot be bounced to plain http.
fn http_client(options: &JwksOptions) -> Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_platform_verifier())
        .map_err(|err| format!("cannot set up TLS: {err}"))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(options.fetch_timeout)
        .connect_timeout(options.fetch_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("murmur/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| format!("cannot set up the HTTP client: {err}"))
}

async fn fetch(
    client: &reqwest::Client,
    url: reqwest::Url,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|err| format!("fetch failed: {}", with_causes(&err)))?;
    if !response.status().is_success() {
        return Err(format!("the server answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| format!("reading the response failed: {}", with_causes(&err)))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(format!("the key set is over {max_bytes} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its causes on one line (reqwest's own text leaves out why a request failed).
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// The usable signature keys of a JWKS document; keys that cannot be used are skipped (and
/// logged), but a set without any usable key is an error.
fn parse_key_set(body: &[u8], options: &JwksOptions) -> Result<Vec<VerificationKey>, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet =
        serde_json::from_slice(body).map_err(|err| format!("not a JWKS document: {err}"))?;
    let mut keys = Vec::new();
    for (index, raw) in set.keys.into_iter().enumerate() {
        if keys.len() == options.max_keys {
            tracing::warn!(
                "the JWKS has more than {} keys; the rest are ignored",
                options.max_keys
            );
            break;
        }
        let kid = raw
            .get("kid")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let key = serde_json::from_value(raw)
            .map_err(|err| err.to_string())
            .and_then(|jwk| jwk_key(&jwk));
        match key {
            Ok(key) => keys.push(key),
            Err(reason) => tracing::debug!(index, kid, "JWKS key skipped: {reason}"),
        }
    }
    if keys.is_empty() {
        return Err("no usable signature key in the set".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert!(matches!(
            JwksSource::parse("keys/jwks.json"),
            Ok(JwksSource::File(_))
        ));
        assert!(matches!(
            JwksSource::parse("https://issuer.example/.well-known/jwks.json"),
            Ok(JwksSource::Url(_))
        ));
        for loopback in [
            "http://127.0.0.1:9000/jwks",
            "http://localhost/jwks",
            "http://[::1]:80/jwks",
        ] {
            assert!(JwksSource::parse(loopback).is_ok(), "{loopback}");
        }
        assert_eq!(
            JwksSource::parse("http://issuer.example/jwks"),
            Err(JwksSourceError::PlainHttp)
        );
        assert_eq!(
            JwksSource::parse("http://10.0.0.1/jwks"),
            Err(JwksSourceError::PlainHttp)
        );
        assert!(matches!(
            JwksSource::parse("ftp://x/jwks"),
            Err(JwksSourceError::Scheme(_))
        ));
        assert_eq!(JwksSource::parse(" "), Err(JwksSourceError::Empty));
    }

    #[test]
    fn key_sets_keep_only_usable_signature_keys() {
        let options = JwksOptions::default();
        let set = br#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "sym"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "kid": "ec", "alg": "ES384"},
            {"kty": "unknown-type", "kid": "x"}
        ]}"#;
        let keys = parse_key_set(set, &options).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(
            kids,
            ["ed"],
            "oct, enc, alg/curve mismatch and unknown keys are skipped"
        );
        assert!(parse_key_set(br#"{"keys": []}"#, &options).is_err());
        assert!(parse_key_set(b"not json", &options).is_err());
    }
}
