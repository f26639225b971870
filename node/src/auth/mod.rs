//! Client authentication and authorization.
//!
//! - [`Authenticator`]: built from [`Settings`] at start; turns a connection's token (or its
//!   absence) into an [`Identity`], or an [`AuthError`] with the client error code to send;
//! - [`Identity`]: who the client is, what it may do ([`Permissions`]) and until when;
//! - [`permissions`]: the pure permission rules (pattern containment);
//! - [`token`]: JWT checks, and [`token::mint`] for development tokens;
//! - [`jwks`]: the cached JSON Web Key Set.
//!
//! With `auth = none` every connection gets [`Identity::unrestricted`] and tokens are ignored.

pub mod jwks;
mod keys;
pub mod permissions;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::config::{AuthMode, Settings};
pub use jwks::JwksOptions;
pub use keys::{MIN_HMAC_SECRET_BYTES, check_hmac_secret};
pub use permissions::{DenyClaim, PermissionClaim, PermissionError, Permissions};
use token::TokenVerifier;

/// Who a connection is and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`; empty for anonymous and unauthenticated connections.
    pub user: String,
    pub permissions: Arc<Permissions>,
    /// When the node stops accepting the token (its `exp` plus `token_leeway`); `None` for
    /// identities without a token.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    /// The identity of every connection when `auth = none`: everything allowed, forever.
    pub fn unrestricted() -> Self {
        Self {
            user: String::new(),
            permissions: Arc::new(Permissions::unrestricted()),
            expires_at: None,
        }
    }

    /// A connection without a token, with the `anonymous_permissions`.
    pub fn anonymous(permissions: Arc<Permissions>) -> Self {
        Self {
            user: String::new(),
            permissions,
            expires_at: None,
        }
    }

    /// The expiry in milliseconds since the Unix epoch, for `welcome` and `refresh` replies.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.expires_at.map(|at| {
            at.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        })
    }

    /// Time left before expiry, seen at `now` (zero once expired); `None` if it never expires.
    pub fn expires_in(&self, now: SystemTime) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// Of the patterns a connection is subscribed to, those this identity may not subscribe
    /// to: what a refresh to this identity must end.
    pub fn revoked<'a, I>(&self, subscriptions: I) -> Vec<&'a str>
    where
        I: IntoIterator<Item = &'a str>,
    {
        self.permissions.revoked(subscriptions)
    }
}

/// The client error code an [`AuthError`] is reported with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthErrorCode {
    /// The token is bad (of any kind) or missing: do not reconnect without a new token.
    Unauthorized,
    /// The token's `exp` has passed: refresh, or reconnect with a new token.
    TokenExpired,
    /// The node cannot check tokens right now (its JWKS cannot be fetched): retry later.
    Unavailable,
}

impl AuthErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for AuthErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection's token (or lack of one) was refused. The text is safe to send to the
/// client: it names the class of problem, never a key.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("this node requires a token")]
    TokenRequired,
    #[error("the token is {len} bytes, over the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("tokens with alg `none` are refused")]
    AlgNone,
    #[error("unsupported token algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    #[error("no key of this node may verify {0} tokens")]
    AlgorithmNotAllowed(String),
    #[error("unknown key id (kid) `{0}`")]
    UnknownKid(String),
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token is for another audience (aud)")]
    WrongAudience,
    #[error("the token is from another issuer (iss)")]
    WrongIssuer,
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
    #[error("invalid token permissions: {0}")]
    InvalidPermissions(#[from] PermissionError),
    #[error("cannot check tokens now: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    pub fn code(&self) -> AuthErrorCode {
        match self {
            Self::Expired => AuthErrorCode::TokenExpired,
            Self::KeysUnavailable(_) => AuthErrorCode::Unavailable,
            _ => AuthErrorCode::Unauthorized,
        }
    }
}

/// Why the authentication settings cannot be used; the node refuses to start.
#[derive(Debug, Error)]
pub enum AuthSetupError {
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("`{setting}`: cannot read {path}: {reason}")]
    ReadFile {
        setting: &'static str,
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("`token_public_keys`: {path}: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("`token_jwks`: {location}: {reason}")]
    Jwks { location: String, reason: String },
}

/// Turns tokens into identities, as the settings say.
pub struct Authenticator {
    /// `None` with `auth = none`.
    verifier: Option<TokenVerifier>,
    /// With `auth = token`: what a connection without a token gets, if anything.
    anonymous: Option<Arc<Permissions>>,
    hello_timeout: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("requires_token", &self.requires_token())
            .field("anonymous", &self.anonymous.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Reads every key the settings name; an unreadable key, a bad PEM or a bad JWKS file is
    /// an error (a JWKS URL is fetched when first needed, or by [`Self::prefetch_keys`]).
    pub fn from_settings(settings: &Settings) -> Result<Self, AuthSetupError> {
        Self::with_jwks_options(settings, JwksOptions::default())
    }

    /// As [`Self::from_settings`], with other JWKS caching (tests shorten the rate limit).
    pub fn with_jwks_options(
        settings: &Settings,
        jwks: JwksOptions,
    ) -> Result<Self, AuthSetupError> {
        if settings.auth == AuthMode::None {
            return Ok(Self {
                verifier: None,
                anonymous: None,
                hello_timeout: settings.hello_timeout,
            });
        }
        let anonymous = settings
            .anonymous_permissions
            .as_ref()
            .map(|claim| Permissions::from_claim(claim, settings.max_topic_bytes))
            .transpose()
            .map_err(|err| AuthSetupError::Invalid {
                setting: "anonymous_permissions",
                reason: err.to_string(),
            })?
            .map(Arc::new);
        Ok(Self {
            verifier: Some(TokenVerifier::new(settings, jwks)?),
            anonymous,
            hello_timeout: settings.hello_timeout,
        })
    }

    /// True with `auth = token`: connections must say `hello` within [`Self::hello_timeout`].
    pub fn requires_token(&self) -> bool {
        self.verifier.is_some()
    }

    /// How long a connection may take to say a valid `hello` (with `auth = token`).
    pub fn hello_timeout(&self) -> Duration {
        self.hello_timeout
    }

    /// The identity for a connection's `hello` (or `Authorization: Bearer`): its token if it
    /// gave one, else the anonymous permissions if configured, else refused.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match (token, &self.verifier) {
            (_, None) => Ok(Identity::unrestricted()),
            (Some(token), Some(_)) => self.verify(token).await,
            (None, Some(_)) => self
                .anonymous
                .clone()
                .map(Identity::anonymous)
                .ok_or(AuthError::TokenRequired),
        }
    }

    /// Checks a token (in `hello` or `refresh`). Without a JWKS URL to fetch this awaits
    /// nothing: the work is the signature check alone.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        match &self.verifier {
            Some(verifier) => verifier.verify(token).await,
            None => Ok(Identity::unrestricted()),
        }
    }

    /// Fetches the JWKS now, when it comes from a URL (call at start to log a bad URL early;
    /// a failure is retried when a token needs the keys).
    pub async fn prefetch_keys(&self) -> Result<(), AuthError> {
        match &self.verifier {
            Some(verifier) => verifier.prefetch().await,
            None => Ok(()),
        }
    }
}

/// Setting combinations that work but deserve a warning at start.
pub fn setup_warnings(settings: &Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    let loopback_only = settings.listen.ip().is_loopback();
    match settings.auth {
        AuthMode::None if !loopback_only => warnings.push(format!(
            "auth = none and listening on {}: ANY client that can reach this address may \
             publish and subscribe to every topic and read all history; set auth = token",
            settings.listen
        )),
        AuthMode::None => {}
        AuthMode::Token => {
            let shared_issuer =
                settings.token_jwks.is_some() || !settings.token_public_keys.is_empty();
            if shared_issuer && settings.token_audience.is_none() {
                warnings.push(
                    "token_audience is not set: tokens the same issuer made for other \
                     services are accepted too"
                        .into(),
                );
            }
            if settings.token_jwks.is_some() && settings.token_issuer.is_none() {
                warnings.push("token_issuer is not set: the token's iss is not checked".into());
            }
            if let Some(anonymous) = &settings.anonymous_permissions
                && (!anonymous.publish.is_empty() || anonymous.subscribe.iter().any(|p| p == ">"))
            {
                warnings.push(
                    "anonymous_permissions lets clients without a token publish, or subscribe \
                     to everything"
                        .into(),
                );
            }
        }
    }
    warnings
}
