//! The keys tokens are checked with, each with the algorithms it may be used for.
//!
//! A key's algorithm list is fixed by its kind when it is loaded (an HMAC secret: HS256/384/512;
//! an RSA key: RS*/PS*; an EC key: the one ES algorithm of its curve; an Ed25519 key: EdDSA),
//! narrowed further by a JWK's `alg`. A token is only ever checked with keys whose list holds
//! its `alg`, so an HS256 token "signed" with an RSA public key's bytes finds no HMAC key to be
//! checked against (or fails against the real HMAC secret): algorithm confusion cannot happen.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::AuthSetupError;

/// The shortest HMAC secret accepted: 256 bits, as RFC 7518 asks for HS256.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// A key and what it may verify.
pub(crate) struct VerificationKey {
    /// The `kid` tokens name it by; a key without one is tried for any `kid`.
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// May this key check a token with this `alg` and `kid`?
    pub(crate) fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.algorithms.contains(&alg)
            && match (kid, self.kid.as_deref()) {
                (Some(wanted), Some(own)) => wanted == own,
                _ => true,
            }
    }
}

/// Refuses HMAC secrets too short to resist guessing.
pub fn check_hmac_secret(secret: &[u8]) -> Result<(), String> {
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(format!(
            "must be at least {MIN_HMAC_SECRET_BYTES} bytes (it is {})",
            secret.len()
        ));
    }
    Ok(())
}

pub(crate) fn hmac_key(secret: &[u8]) -> Result<VerificationKey, String> {
    check_hmac_secret(secret)?;
    let key = DecodingKey::from_secret(secret).map_err(|err| err.to_string())?;
    Ok(VerificationKey {
        kid: None,
        key,
        algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
    })
}

/// Reads the HMAC secret from a file (surrounding whitespace, such as a final newline, ignored).
pub(crate) fn read_hmac_secret_file(path: &Path) -> Result<VerificationKey, AuthSetupError> {
    let text = std::fs::read(path).map_err(|reason| AuthSetupError::ReadFile {
        setting: "token_hmac_secret_file",
        path: path.to_owned(),
        reason,
    })?;
    hmac_key(text.trim_ascii()).map_err(|reason| AuthSetupError::Invalid {
        setting: "token_hmac_secret_file",
        reason: format!("{}: {reason}", path.display()),
    })
}

/// Reads one PEM public key; its kid is the file name without the extension.
pub(crate) fn read_public_key_pem(path: &Path) -> Result<VerificationKey, AuthSetupError> {
    let bad = |reason: String| AuthSetupError::BadKey {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|reason| AuthSetupError::ReadFile {
        setting: "token_public_keys",
        path: path.to_owned(),
        reason,
    })?;
    let kid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("the file name (the key's kid) must be non-empty UTF-8".into()))?;
    let label = pem_label(&text).ok_or_else(|| bad("not a PEM file".into()))?;
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        l if l.contains("PRIVATE KEY") => {
            return Err(bad(format!(
                "this is a private key ({l}); give the public key \
                 (`openssl pkey -in KEY -pubout`)"
            )));
        }
        l => return Err(bad(format!("a PEM `{l}` is not a public key"))),
    }
    let key = DecodingKey::from_rsa_pem(&text)
        .or_else(|_| DecodingKey::from_ec_pem(&text))
        .or_else(|_| DecodingKey::from_ed_pem(&text))
        .map_err(|_| bad("not an RSA, EC or Ed25519 public key".into()))?;
    let jwk = Jwk::from_decoding_key(&key, None)
        .map_err(|err| bad(format!("the key cannot be used: {err}")))?;
    let algorithms = algorithms_for(&jwk.algorithm, None).map_err(bad)?;
    Ok(VerificationKey {
        kid: Some(kid.to_owned()),
        key,
        algorithms,
    })
}

/// The label of the first PEM block (`PUBLIC KEY` in `-----BEGIN PUBLIC KEY-----`).
fn pem_label(text: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(text).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let len = text[start..].find("-----")?;
    Some(&text[start..start + len])
}

/// A key from a JWKS: public signature keys only (RSA, EC P-256/P-384, Ed25519). Symmetric
/// (`oct`) keys are refused: a secret has no business in a published key set; give it as
/// `token_hmac_secret` instead.
pub(crate) fn jwk_key(jwk: &Jwk) -> Result<VerificationKey, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use: enc)".into());
    }
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return Err("a symmetric (oct) key; give HMAC secrets as token_hmac_secret".into());
    }
    let algorithms = algorithms_for(&jwk.algorithm, jwk.common.key_algorithm)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|err| err.to_string())?;
    Ok(VerificationKey {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

/// What a public key of this kind may verify, narrowed to `stated` (a JWK's `alg`) if given.
fn algorithms_for(
    params: &AlgorithmParameters,
    stated: Option<KeyAlgorithm>,
) -> Result<Vec<Algorithm>, String> {
    let by_kind: &[Algorithm] = match params {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(ec) => match &ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            other => return Err(format!("unsupported elliptic curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            return Err(format!("unsupported curve {:?}", okp.curve));
        }
        _ => return Err("unsupported key type".into()),
    };
    match stated {
        None => Ok(by_kind.to_vec()),
        Some(stated) => match Algorithm::try_from(stated) {
            Ok(alg) if by_kind.contains(&alg) => Ok(vec![alg]),
            _ => Err(format!("its alg {stated} does not fit the key type")),
        },
    }
}
