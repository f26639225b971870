//! Client tokens (JWTs): checking them, and minting them for development and tests.
//!
//! A token is refused, before any signature check, when it is over [`MAX_TOKEN_BYTES`], not
//! three base64url parts, says `alg: none` or names an algorithm no configured key may verify.
//! It is then checked with the keys that fit its `alg` and `kid` (see [`super::keys`]), and
//! its claims are checked: `exp` required, `nbf` when present, `aud`/`iss` when configured,
//! the `murmur` permission patterns valid.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
pub use jsonwebtoken::{Algorithm, EncodingKey};
use jsonwebtoken::{AlgorithmFamily, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::jwks::{JwksCache, JwksOptions, JwksSource};
use super::keys::{self, VerificationKey};
use super::permissions::{PermissionClaim, Permissions};
use super::{AuthError, AuthSetupError, Identity};
use crate::config::Settings;

/// The longest token accepted, in bytes (a token with a few hundred patterns fits).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The longest user id (`sub`) accepted, in bytes: it is echoed in `welcome` and logs.
pub const MAX_USER_BYTES: usize = 256;

/// The claims of a Murmur token, as minted by [`mint`]. Tokens from other issuers may carry
/// more claims; they are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The user; echoed in `welcome`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// What the holder may do; a token without it may do nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub murmur: Option<PermissionClaim>,
}

impl TokenClaims {
    /// Claims for `user`, issued now and valid for `ttl`.
    pub fn new(user: &str, ttl: Duration, permissions: PermissionClaim) -> Self {
        let now = unix_seconds(SystemTime::now());
        Self {
            sub: Some(user.to_owned()),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
            murmur: Some(permissions),
            ..Self::default()
        }
    }
}

/// Why a token could not be minted.
#[derive(Debug, Error)]
pub enum MintError {
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs `claims` with `key` as a JWT of algorithm `alg`, with `kid` in its header if given.
pub fn mint(
    claims: &TokenClaims,
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
) -> Result<String, MintError> {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    Ok(jsonwebtoken::encode(&header, claims, key)?)
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The parts of a token's header read before any key is chosen.
#[derive(Debug)]
pub(crate) struct TokenHeader {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

/// Shape checks that need no key: size, three base64url parts, a known `alg` that is not
/// `none`.
pub(crate) fn inspect(token: &str) -> Result<TokenHeader, AuthError> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Oversized {
            len: token.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(AuthError::Malformed(
            "a token is three base64url parts separated by dots".into(),
        ));
    }
    let header = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| AuthError::Malformed("the header is not base64url".into()))?;
    let header: RawHeader = serde_json::from_slice(&header)
        .map_err(|err| AuthError::Malformed(format!("the header is not a JWT header: {err}")))?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::AlgNone);
    }
    let alg = header
        .alg
        .parse::<Algorithm>()
        .map_err(|_| AuthError::UnsupportedAlgorithm(shortened(&header.alg)))?;
    Ok(TokenHeader {
        alg,
        kid: header.kid,
    })
}

fn shortened(text: &str) -> String {
    text.chars().take(32).collect()
}

/// The claims read from a verified token; other claims are ignored.
#[derive(Deserialize)]
struct VerifiedClaims {
    #[serde(default)]
    sub: Option<String>,
    exp: f64,
    // Read so that a non-numeric `iat` is refused rather than ignored.
    #[serde(default, rename = "iat")]
    _issued_at: Option<f64>,
    #[serde(default)]
    murmur: Option<PermissionClaim>,
}

/// What trying a set of keys on a token came to.
enum Attempt {
    Verified(VerifiedClaims),
    /// No key fits the token's `alg` and `kid`; `alg_known` when some key may verify the
    /// `alg`, `kid_known` when some key has the token's `kid`.
    NoKey {
        alg_known: bool,
        kid_known: bool,
    },
    /// Keys fit, but none verified the signature.
    BadSignature,
}

/// Checks tokens against the configured keys.
pub(crate) struct TokenVerifier {
    static_keys: Vec<VerificationKey>,
    jwks: Option<JwksCache>,
    /// One per algorithm family, indexed by [`family_index`].
    validations: [Validation; 4],
    leeway: Duration,
    max_topic_bytes: usize,
}

impl TokenVerifier {
    pub(crate) fn new(settings: &Settings, jwks: JwksOptions) -> Result<Self, AuthSetupError> {
        let mut static_keys = Vec::new();
        if let Some(secret) = &settings.token_hmac_secret {
            let key =
                keys::hmac_key(secret.0.as_bytes()).map_err(|reason| AuthSetupError::Invalid {
                    setting: "token_hmac_secret",
                    reason,
                })?;
            static_keys.push(key);
        }
        if let Some(path) = &settings.token_hmac_secret_file {
            static_keys.push(keys::read_hmac_secret_file(path)?);
        }
        for path in &settings.token_public_keys {
            let key = keys::read_public_key_pem(path)?;
            if static_keys
                .iter()
                .any(|k: &VerificationKey| k.kid == key.kid)
            {
                return Err(AuthSetupError::Invalid {
                    setting: "token_public_keys",
                    reason: format!(
                        "two keys have the kid `{}` (a key's kid is its file name)",
                        key.kid.as_deref().unwrap_or_default()
                    ),
                });
            }
            static_keys.push(key);
        }
        let jwks = match &settings.token_jwks {
            Some(text) => {
                let source = JwksSource::parse(text).map_err(|err| AuthSetupError::Invalid {
                    setting: "token_jwks",
                    reason: err.to_string(),
                })?;
                Some(JwksCache::new(source, jwks)?)
            }
            None => None,
        };
        if static_keys.is_empty() && jwks.is_none() {
            return Err(AuthSetupError::Invalid {
                setting: "auth",
                reason: "`token` needs a key source".into(),
            });
        }
        let validation = |family| validation_for(family, settings);
        Ok(Self {
            static_keys,
            jwks,
            validations: [
                validation(AlgorithmFamily::Hmac),
                validation(AlgorithmFamily::Rsa),
                validation(AlgorithmFamily::Ec),
                validation(AlgorithmFamily::Ed),
            ],
            // Whole seconds, as jsonwebtoken compares them, so expiry here matches its check.
            leeway: Duration::from_secs(settings.token_leeway.as_secs()),
            max_topic_bytes: settings.max_topic_bytes,
        })
    }

    /// Loads the JWKS now if it comes from a URL (a failure is only logged: it is tried again
    /// when a token needs it).
    pub(crate) async fn prefetch(&self) -> Result<(), AuthError> {
        match &self.jwks {
            Some(jwks) => jwks.keys().await.map(|_| ()),
            None => Ok(()),
        }
    }

    pub(crate) async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = inspect(token)?;
        let validation = &self.validations[family_index(header.alg.family())];
        let from_static = attempt(&self.static_keys, &header, token, validation)?;
        let from_jwks = match (&from_static, &self.jwks) {
            (Attempt::Verified(_), _) | (_, None) => None,
            // A JWKS holds no HMAC keys (they are refused when it is loaded).
            _ if header.alg.family() == AlgorithmFamily::Hmac => None,
            (_, Some(jwks)) => {
                let snapshot = jwks.keys().await?;
                let mut outcome = attempt(&snapshot.keys, &header, token, validation)?;
                if matches!(outcome, Attempt::NoKey { .. }) && header.kid.is_some() {
                    // A kid we do not know yet: the issuer may have rotated its keys.
                    let reloaded = jwks.reload(snapshot.generation).await?;
                    if reloaded.generation != snapshot.generation {
                        outcome = attempt(&reloaded.keys, &header, token, validation)?;
                    }
                }
                Some(outcome)
            }
        };
        let claims = match (from_static, from_jwks) {
            (Attempt::Verified(claims), _) | (_, Some(Attempt::Verified(claims))) => claims,
            (Attempt::BadSignature, _) | (_, Some(Attempt::BadSignature)) => {
                return Err(AuthError::BadSignature);
            }
            (
                Attempt::NoKey {
                    alg_known,
                    kid_known,
                },
                jwks,
            ) => {
                let jwks_consulted = jwks.is_some();
                let (jwks_alg, jwks_kid) = match jwks {
                    Some(Attempt::NoKey {
                        alg_known,
                        kid_known,
                    }) => (alg_known, kid_known),
                    _ => (false, false),
                };
                // An unknown kid is named as such where a key for it could exist: a key set
                // that may verify this alg (or a JWKS, which may gain such keys).
                let could_exist = alg_known || jwks_alg || jwks_consulted;
                return Err(match header.kid {
                    Some(kid) if could_exist && !kid_known && !jwks_kid => {
                        AuthError::UnknownKid(shortened(&kid))
                    }
                    _ => AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)),
                });
            }
        };
        self.identity(claims)
    }

    fn identity(&self, claims: VerifiedClaims) -> Result<Identity, AuthError> {
        let user = claims.sub.unwrap_or_default();
        if user.len() > MAX_USER_BYTES {
            return Err(AuthError::InvalidClaims(format!(
                "sub is {} bytes, over the limit of {MAX_USER_BYTES}",
                user.len()
            )));
        }
        let permissions = match &claims.murmur {
            Some(claim) => Permissions::from_claim(claim, self.max_topic_bytes)?,
            None => Permissions::nothing(),
        };
        // The node accepts the token until exp + leeway, so that is when it expires here.
        let expires_at = Duration::try_from_secs_f64(claims.exp.max(0.0))
            .ok()
            .and_then(|exp| UNIX_EPOCH.checked_add(exp))
            .and_then(|exp| exp.checked_add(self.leeway))
            .ok_or_else(|| AuthError::InvalidClaims("exp is out of range".into()))?;
        Ok(Identity {
            user,
            permissions: std::sync::Arc::new(permissions),
            expires_at: Some(expires_at),
        })
    }
}

fn family_index(family: AlgorithmFamily) -> usize {
    match family {
        AlgorithmFamily::Hmac => 0,
        AlgorithmFamily::Rsa => 1,
        AlgorithmFamily::Ec => 2,
        AlgorithmFamily::Ed => 3,
    }
}

fn validation_for(family: AlgorithmFamily, settings: &Settings) -> Validation {
    let mut validation = Validation::new_for_family(family);
    validation.leeway = settings.token_leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = HashSet::from(["exp".to_owned()]);
    match &settings.token_audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.insert("aud".to_owned());
        }
        // Without a configured audience the `aud` of a token is not looked at (as Centrifugo
        // does); `setup_warnings` points out when that is risky.
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &settings.token_issuer {
        validation.set_issuer(&[issuer]);
        required.insert("iss".to_owned());
    }
    validation.required_spec_claims = required;
    validation
}

/// Tries the keys that fit the token's `alg` and `kid`, in order, until one verifies it.
fn attempt(
    keys: &[VerificationKey],
    header: &TokenHeader,
    token: &str,
    validation: &Validation,
) -> Result<Attempt, AuthError> {
    let mut fitting = keys
        .iter()
        .filter(|k| k.fits(header.alg, header.kid.as_deref()))
        .peekable();
    if fitting.peek().is_none() {
        let alg_known = keys.iter().any(|k| k.algorithms.contains(&header.alg));
        let kid_known = header
            .kid
            .as_deref()
            .is_some_and(|kid| keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
        return Ok(Attempt::NoKey {
            alg_known,
            kid_known,
        });
    }
    for key in fitting {
        match jsonwebtoken::decode::<VerifiedClaims>(token, &key.key, validation) {
            Ok(data) => return Ok(Attempt::Verified(data.claims)),
            Err(err) => match err.kind() {
                // This key did not sign it (or cannot be used for it): try the next one.
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidKeyFormat => {}
                _ => return Err(claims_error(&err)),
            },
        }
    }
    Ok(Attempt::BadSignature)
}

/// Errors after the signature was found good, or about the token's shape.
fn claims_error(err: &jsonwebtoken::errors::Error) -> AuthError {
    match err.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "aud" => AuthError::WrongAudience,
            "iss" => AuthError::WrongIssuer,
            _ => AuthError::InvalidClaims(format!("the claim `{claim}` is required")),
        },
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::InvalidClaims(format!("the claim `{claim}` has the wrong type"))
        }
        ErrorKind::Json(err) => AuthError::InvalidClaims(err.to_string()),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::AlgorithmNotAllowed("(for this key)".into())
        }
        _ => AuthError::Malformed(err.to_string()),
    }
}
