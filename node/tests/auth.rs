//! Client tokens as a node checks them: every class of bad token is refused with its own
//! error, good tokens of every key kind give the identity their claims describe, and a JWKS
//! served over loopback HTTP is fetched, rate-limited and rotated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{DecodingKey, Header};
use murmur::Settings;
use murmur::auth::token::{Algorithm, EncodingKey, MAX_TOKEN_BYTES, TokenClaims, mint};
use murmur::auth::{
    AuthError, AuthErrorCode, AuthSetupError, Authenticator, Identity, JwksOptions, PermissionClaim,
};
use murmur::config::{AuthMode, Secret};
use serde_json::json;

const SECRET: &str = "a-test-secret-of-more-than-32-bytes-0123456789";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/auth")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap()
}

fn with_secret() -> Settings {
    Settings {
        auth: AuthMode::Token,
        token_hmac_secret: Some(Secret(SECRET.into())),
        ..Settings::default()
    }
}

fn with_public_keys(files: &[&str]) -> Settings {
    Settings {
        auth: AuthMode::Token,
        token_public_keys: files.iter().map(|f| data(f)).collect(),
        ..Settings::default()
    }
}

fn chat() -> PermissionClaim {
    serde_json::from_value(json!({"pub": ["chat.>"], "sub": ["chat.>"], "history": ["chat.lobby"]}))
        .unwrap()
}

fn claims() -> TokenClaims {
    TokenClaims::new("alice", Duration::from_secs(600), chat())
}

fn now() -> u64 {
    murmur::auth::token::unix_seconds(SystemTime::now())
}

fn hs256(claims: &TokenClaims) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    mint(claims, Algorithm::HS256, None, &key).unwrap()
}

/// Signs with a private key file of `tests/data/auth`.
fn signed(claims: &impl serde::Serialize, alg: Algorithm, kid: Option<&str>, file: &str) -> String {
    let pem = read(file);
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

async fn verify(settings: &Settings, token: &str) -> Result<Identity, AuthError> {
    Authenticator::from_settings(settings)
        .expect("valid auth settings")
        .verify(token)
        .await
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn a_good_token_gives_its_user_permissions_and_expiry() {
    let claims = claims();
    let identity = verify(&with_secret(), &hs256(&claims)).await.unwrap();
    assert_eq!(identity.user, "alice");
    assert!(identity.permissions.can_publish("chat.lobby"));
    assert!(!identity.permissions.can_publish("news.eu"));
    assert!(identity.permissions.can_subscribe("chat.*"));
    assert!(identity.permissions.can_read_history("chat.lobby"));
    assert!(!identity.permissions.can_read_history("chat.>"));
    // Accepted until exp + token_leeway (30 s by default).
    assert_eq!(identity.expires_at_ms(), Some((claims.exp + 30) * 1000));
    let left = identity.expires_in(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(600) && left <= Duration::from_secs(630),
        "{left:?}"
    );
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let token = mint(&claims, alg, Some("any-kid"), &key).unwrap();
        assert!(verify(&with_secret(), &token).await.is_ok(), "{alg:?}");
    }
    // A token without the murmur claim authenticates, but may do nothing.
    let bare = TokenClaims {
        murmur: None,
        ..claims
    };
    let identity = verify(&with_secret(), &hs256(&bare)).await.unwrap();
    assert!(!identity.permissions.can_subscribe("chat.lobby"));
}

#[tokio::test]
async fn expiry_and_not_before() {
    let settings = with_secret();
    let expired = TokenClaims {
        exp: now() - 120,
        ..claims()
    };
    let err = verify(&settings, &hs256(&expired)).await.unwrap_err();
    assert_eq!(err, AuthError::Expired);
    assert_eq!(err.code(), AuthErrorCode::TokenExpired);
    assert_eq!(err.code().as_str(), "token_expired");
    let within_leeway = TokenClaims {
        exp: now() - 5,
        ..claims()
    };
    assert!(verify(&settings, &hs256(&within_leeway)).await.is_ok());
    let strict = Settings {
        token_leeway: Duration::ZERO,
        ..with_secret()
    };
    assert_eq!(
        verify(&strict, &hs256(&within_leeway)).await.unwrap_err(),
        AuthError::Expired
    );

    let early = TokenClaims {
        nbf: Some(now() + 600),
        ..claims()
    };
    let err = verify(&settings, &hs256(&early)).await.unwrap_err();
    assert_eq!(err, AuthError::NotYetValid);
    assert_eq!(err.code(), AuthErrorCode::Unauthorized);
    let slightly_early = TokenClaims {
        nbf: Some(now() + 5),
        ..claims()
    };
    assert!(verify(&settings, &hs256(&slightly_early)).await.is_ok());

    // exp is required, and must be a number (CVE-2026-25537 was a string exp being skipped).
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let header = Header::new(Algorithm::HS256);
    for (bad, what) in [
        (json!({"sub": "alice"}), "missing exp"),
        (
            json!({"sub": "alice", "exp": (now() - 1000).to_string()}),
            "string exp",
        ),
        (
            json!({"sub": "alice", "exp": now() + 60, "nbf": "soon"}),
            "string nbf",
        ),
        (json!({"sub": 42, "exp": now() + 60}), "numeric sub"),
        (
            json!({"sub": "x".repeat(300), "exp": now() + 60}),
            "long sub",
        ),
    ] {
        let token = jsonwebtoken::encode(&header, &bad, &key).unwrap();
        let err = verify(&settings, &token).await.unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidClaims(_)),
            "{what}: {err:?}"
        );
    }
}

#[tokio::test]
async fn signatures_and_algorithms() {
    let settings = with_secret();
    let other = EncodingKey::from_secret(b"another-secret-that-is-long-enough-0123").unwrap();
    let forged = mint(&claims(), Algorithm::HS256, None, &other).unwrap();
    assert_eq!(
        verify(&settings, &forged).await.unwrap_err(),
        AuthError::BadSignature
    );

    // alg none, in any spelling, with or without a signature.
    let payload = b64(&json!({"sub": "mallory", "exp": now() + 600, "murmur": {"sub": [">"]}}));
    for alg in ["none", "None", "NONE"] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        for signature in ["", "c2lnbmF0dXJl"] {
            let token = format!("{header}.{payload}.{signature}");
            assert_eq!(
                verify(&settings, &token).await.unwrap_err(),
                AuthError::AlgNone
            );
        }
    }
    let header = b64(&json!({"alg": "XS999"}));
    let err = verify(&settings, &format!("{header}.{payload}.c2ln"))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::UnsupportedAlgorithm(_)), "{err:?}");

    // An RS256 token on a node with only an HMAC secret.
    let rs = signed(&claims(), Algorithm::RS256, None, "rsa1.key");
    assert!(matches!(
        verify(&settings, &rs).await.unwrap_err(),
        AuthError::AlgorithmNotAllowed(_)
    ));
}

#[tokio::test]
async fn hmac_with_a_public_key_as_secret_is_refused() {
    // The classic confusion attack: HS256, "signed" with the RSA public key's PEM bytes.
    let public_pem = read("rsa1.pem");
    let key = EncodingKey::from_secret(&public_pem).unwrap();
    for kid in [None, Some("rsa1")] {
        let token = mint(&claims(), Algorithm::HS256, kid, &key).unwrap();
        let only_rsa = with_public_keys(&["rsa1.pem"]);
        assert!(
            matches!(
                verify(&only_rsa, &token).await.unwrap_err(),
                AuthError::AlgorithmNotAllowed(_)
            ),
            "kid {kid:?}"
        );
        let both = Settings {
            token_hmac_secret: Some(Secret(SECRET.into())),
            ..only_rsa
        };
        assert_eq!(
            verify(&both, &token).await.unwrap_err(),
            AuthError::BadSignature
        );
    }
}

#[tokio::test]
async fn audience_and_issuer() {
    let settings = Settings {
        token_audience: Some("murmur".into()),
        token_issuer: Some("https://issuer.test".into()),
        ..with_secret()
    };
    let good = TokenClaims {
        aud: Some("murmur".into()),
        iss: Some("https://issuer.test".into()),
        ..claims()
    };
    assert!(verify(&settings, &hs256(&good)).await.is_ok());
    let cases = [
        (
            TokenClaims {
                aud: Some("billing".into()),
                ..good.clone()
            },
            AuthError::WrongAudience,
        ),
        (
            TokenClaims {
                aud: None,
                ..good.clone()
            },
            AuthError::WrongAudience,
        ),
        (
            TokenClaims {
                iss: Some("https://evil.test".into()),
                ..good.clone()
            },
            AuthError::WrongIssuer,
        ),
        (
            TokenClaims {
                iss: None,
                ..good.clone()
            },
            AuthError::WrongIssuer,
        ),
    ];
    for (claims, expected) in cases {
        assert_eq!(
            verify(&settings, &hs256(&claims)).await.unwrap_err(),
            expected
        );
    }
    // An audience list that names us is fine.
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let listed =
        json!({"exp": now() + 60, "aud": ["billing", "murmur"], "iss": "https://issuer.test"});
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &listed, &key).unwrap();
    assert!(verify(&settings, &token).await.is_ok());
    // Without token_audience, a token's aud is not looked at.
    let other_aud = TokenClaims {
        aud: Some("billing".into()),
        ..claims()
    };
    assert!(verify(&with_secret(), &hs256(&other_aud)).await.is_ok());
}

#[tokio::test]
async fn malformed_and_oversized_tokens() {
    let settings = with_secret();
    let good = hs256(&claims());
    let (header, rest) = good.split_once('.').unwrap();
    for bad in [
        String::new(),
        "not-a-token".into(),
        "a.b".into(),
        format!("{good}.extra.parts"),
        format!("%%%.{rest}"),
        format!("{}.{rest}", b64(&json!("just a string"))),
        format!("{}.{rest}", b64(&json!({"typ": "JWT"}))),
        format!("{header}.!!!.sig"),
        format!("{}!", good),
    ] {
        let err = verify(&settings, &bad).await.unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::Malformed(_) | AuthError::BadSignature | AuthError::InvalidClaims(_)
            ),
            "{bad}: {err:?}"
        );
        assert_eq!(err.code(), AuthErrorCode::Unauthorized);
    }
    assert!(matches!(
        verify(&settings, "abc").await.unwrap_err(),
        AuthError::Malformed(_)
    ));
    let huge = format!("{header}.{}.{}", "A".repeat(MAX_TOKEN_BYTES), "sig");
    assert_eq!(
        verify(&settings, &huge).await.unwrap_err(),
        AuthError::Oversized {
            len: huge.len(),
            max: MAX_TOKEN_BYTES
        }
    );
}

#[tokio::test]
async fn invalid_permission_patterns_invalidate_the_token() {
    let claim: PermissionClaim =
        serde_json::from_value(json!({"sub": ["chat.>", "chat.>.admin"]})).unwrap();
    let token = hs256(&TokenClaims::new("alice", Duration::from_secs(60), claim));
    let err = verify(&with_secret(), &token).await.unwrap_err();
    assert!(matches!(err, AuthError::InvalidPermissions(_)), "{err:?}");
    assert!(
        err.to_string().contains("'chat.>.admin' in murmur.sub"),
        "{err}"
    );

    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let typo = json!({"exp": now() + 60, "murmur": {"sub": [">"], "deni": {"sub": ["x"]}}});
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &typo, &key).unwrap();
    let err = verify(&with_secret(), &token).await.unwrap_err();
    assert!(err.to_string().contains("deni"), "{err}");
}

#[tokio::test]
async fn public_keys_of_every_kind() {
    let settings = with_public_keys(&["rsa1.pem", "ec1.pem", "ed1.pem"]);
    for (alg, file, kid) in [
        (Algorithm::RS256, "rsa1.key", Some("rsa1")),
        (Algorithm::RS512, "rsa1.key", None),
        (Algorithm::PS256, "rsa1.key", Some("rsa1")),
        (Algorithm::ES256, "ec1.key", Some("ec1")),
        (Algorithm::ES256, "ec1.key", None),
        (Algorithm::EdDSA, "ed1.key", Some("ed1")),
        (Algorithm::EdDSA, "ed1.key", None),
    ] {
        let identity = verify(&settings, &signed(&claims(), alg, kid, file)).await;
        assert_eq!(
            identity.map(|i| i.user),
            Ok("alice".into()),
            "{alg:?} {kid:?}"
        );
    }
    // A kid names one key: the right algorithm with another key's kid fails.
    let wrong_kid = signed(&claims(), Algorithm::ES256, Some("rsa1"), "ec1.key");
    assert!(matches!(
        verify(&settings, &wrong_kid).await.unwrap_err(),
        AuthError::AlgorithmNotAllowed(_) | AuthError::UnknownKid(_)
    ));
    let unknown = signed(&claims(), Algorithm::RS256, Some("rsa-2027"), "rsa1.key");
    assert_eq!(
        verify(&settings, &unknown).await.unwrap_err(),
        AuthError::UnknownKid("rsa-2027".into())
    );
    // Signed by a key the node does not have, under a kid it knows.
    let impostor = signed(&claims(), Algorithm::RS256, Some("rsa1"), "rsa2.key");
    assert_eq!(
        verify(&settings, &impostor).await.unwrap_err(),
        AuthError::BadSignature
    );
    // Rotation: both keys configured, a token of each is accepted by kid.
    let rotating = with_public_keys(&["rsa1.pem", "rsa2.pem"]);
    for kid in ["rsa1", "rsa2"] {
        let token = signed(
            &claims(),
            Algorithm::RS256,
            Some(kid),
            &format!("{kid}.key"),
        );
        assert!(verify(&rotating, &token).await.is_ok(), "{kid}");
    }
    let no_kid = signed(&claims(), Algorithm::RS256, None, "rsa2.key");
    assert!(
        verify(&rotating, &no_kid).await.is_ok(),
        "without kid, every RSA key is tried"
    );
}

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("murmur-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test]
async fn unusable_key_settings_fail_the_start() {
    let setup = |settings: Settings| Authenticator::from_settings(&settings).unwrap_err();
    let err = setup(with_public_keys(&["missing.pem"]));
    assert!(matches!(err, AuthSetupError::ReadFile { .. }), "{err}");
    let err = setup(with_public_keys(&["rsa1.key"]));
    assert!(err.to_string().contains("private key"), "{err}");
    let garbage = temp_file(
        "garbage.pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    let err = setup(Settings {
        token_public_keys: vec![garbage],
        ..with_secret()
    });
    assert!(matches!(err, AuthSetupError::BadKey { .. }), "{err}");
    let bad_jwks = temp_file("bad-jwks.json", b"{\"keys\": 12}");
    let err = setup(Settings {
        token_jwks: Some(bad_jwks.display().to_string()),
        ..with_secret()
    });
    assert!(matches!(err, AuthSetupError::Jwks { .. }), "{err}");
    let short = Settings {
        token_hmac_secret: Some(Secret("short".into())),
        ..with_secret()
    };
    assert!(
        setup(short.clone())
            .to_string()
            .contains("at least 32 bytes")
    );
    assert!(short.validate().is_err());
    let secret_file = temp_file("secret", format!("{SECRET}\n").as_bytes());
    let from_file = Settings {
        token_hmac_secret: None,
        token_hmac_secret_file: Some(secret_file),
        ..with_secret()
    };
    assert!(
        verify(&from_file, &hs256(&claims())).await.is_ok(),
        "the final newline is ignored"
    );
    let no_key = Settings {
        auth: AuthMode::Token,
        ..Settings::default()
    };
    assert!(
        no_key
            .validate()
            .unwrap_err()
            .to_string()
            .contains("token_hmac_secret")
    );
}

#[tokio::test]
async fn without_a_token() {
    let auth = Authenticator::from_settings(&with_secret()).unwrap();
    assert!(auth.requires_token());
    assert_eq!(auth.hello_timeout(), Duration::from_secs(5));
    assert_eq!(
        auth.authenticate(None).await.unwrap_err(),
        AuthError::TokenRequired
    );
    let anonymous = Settings {
        anonymous_permissions: Some(serde_json::from_value(json!({"sub": ["public.>"]})).unwrap()),
        ..with_secret()
    };
    let auth = Authenticator::from_settings(&anonymous).unwrap();
    let identity = auth.authenticate(None).await.unwrap();
    assert_eq!((identity.user.as_str(), identity.expires_at), ("", None));
    assert!(identity.permissions.can_subscribe("public.news"));
    assert!(!identity.permissions.can_subscribe("chat.lobby"));
    assert!(!identity.permissions.can_publish("public.news"));
    // A token, when given, is checked even though anonymous access exists.
    assert!(auth.authenticate(Some("junk")).await.is_err());

    let open = Authenticator::from_settings(&Settings::default()).unwrap();
    assert!(!open.requires_token());
    let identity = open.authenticate(Some("ignored")).await.unwrap();
    assert!(identity.permissions.is_unrestricted());
}

/// A JWKS over loopback HTTP whose document the test can change, counting requests.
struct JwksServer {
    url: String,
    document: Arc<parking_lot::Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        let document = Arc::new(parking_lot::Mutex::new(document));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            document,
            hits,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JWKS document of public keys from `tests/data/auth`: (kid, public PEM file, alg).
fn jwks(keys: &[(&str, &str, Algorithm)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, file, alg)| {
            let pem = read(file);
            let decoding = match alg {
                Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .unwrap();
            let mut jwk = Jwk::from_decoding_key(&decoding, Some(*alg)).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn jwks_settings(url: &str) -> Settings {
    Settings {
        auth: AuthMode::Token,
        token_jwks: Some(url.to_owned()),
        ..Settings::default()
    }
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_by_kid() {
    let server = JwksServer::start(jwks(&[("k1", "rsa1.pem", Algorithm::RS256)])).await;
    let options = JwksOptions {
        min_refresh_interval: Duration::ZERO,
        ..JwksOptions::default()
    };
    let auth = Authenticator::with_jwks_options(&jwks_settings(&server.url), options).unwrap();
    assert_eq!(server.hits(), 0, "a URL is fetched when first needed");
    let k1 = signed(&claims(), Algorithm::RS256, Some("k1"), "rsa1.key");
    let k2 = signed(&claims(), Algorithm::ES256, Some("k2"), "ec1.key");
    assert!(auth.verify(&k1).await.is_ok());
    assert!(auth.verify(&k1).await.is_ok());
    assert_eq!(server.hits(), 1, "cached");
    assert_eq!(
        auth.verify(&k2).await.unwrap_err(),
        AuthError::UnknownKid("k2".into())
    );
    assert_eq!(server.hits(), 2, "an unknown kid reloads the set");

    // The issuer rotates: k2 in, k1 out.
    *server.document.lock() = jwks(&[("k2", "ec1.pem", Algorithm::ES256)]);
    assert_eq!(auth.verify(&k2).await.unwrap().user, "alice");
    assert_eq!(
        auth.verify(&k1).await.unwrap_err(),
        AuthError::UnknownKid("k1".into())
    );
    // An HS token is never checked against (or fetched for) a JWKS.
    let before = server.hits();
    let hs = mint(
        &claims(),
        Algorithm::HS256,
        Some("k2"),
        &EncodingKey::from_secret(&read("ec1.pem")).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        auth.verify(&hs).await.unwrap_err(),
        AuthError::AlgorithmNotAllowed(_)
    ));
    assert_eq!(server.hits(), before);
}

#[tokio::test]
async fn jwks_reloads_are_rate_limited() {
    let server = JwksServer::start(jwks(&[("k1", "ed1.pem", Algorithm::EdDSA)])).await;
    let auth = Authenticator::from_settings(&jwks_settings(&server.url)).unwrap();
    auth.prefetch_keys().await.unwrap();
    assert_eq!(server.hits(), 1);
    for i in 0..20 {
        let kid = format!("made-up-{i}");
        let token = signed(&claims(), Algorithm::EdDSA, Some(&kid), "ed1.key");
        assert_eq!(
            auth.verify(&token).await.unwrap_err(),
            AuthError::UnknownKid(kid)
        );
    }
    assert_eq!(
        server.hits(),
        1,
        "made-up kids cannot make the node hammer the issuer"
    );
    let good = signed(&claims(), Algorithm::EdDSA, Some("k1"), "ed1.key");
    assert!(auth.verify(&good).await.is_ok());
}

#[tokio::test]
async fn an_unreachable_jwks_is_unavailable_not_unauthorized() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let settings = jwks_settings(&format!("http://127.0.0.1:{port}/jwks.json"));
    let auth = Authenticator::from_settings(&settings).unwrap();
    let token = signed(&claims(), Algorithm::RS256, Some("k1"), "rsa1.key");
    let err = auth.verify(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::KeysUnavailable(_)), "{err:?}");
    assert_eq!(err.code(), AuthErrorCode::Unavailable);
    assert!(auth.prefetch_keys().await.is_err());

    let plain_http = jwks_settings("http://issuer.example/jwks.json");
    assert!(
        plain_http
            .validate()
            .unwrap_err()
            .to_string()
            .contains("loopback")
    );
}

#[tokio::test]
async fn jwks_from_a_file() {
    let path = temp_file(
        "jwks.json",
        jwks(&[("k1", "rsa1.pem", Algorithm::RS256)]).as_bytes(),
    );
    let auth = Authenticator::from_settings(&jwks_settings(&path.display().to_string())).unwrap();
    let token = signed(&claims(), Algorithm::RS256, Some("k1"), "rsa1.key");
    assert!(auth.verify(&token).await.is_ok());
    // A JWK's alg narrows what its key verifies.
    let ps = signed(&claims(), Algorithm::PS256, Some("k1"), "rsa1.key");
    assert!(matches!(
        auth.verify(&ps).await.unwrap_err(),
        AuthError::AlgorithmNotAllowed(_) | AuthError::UnknownKid(_)
    ));
}

#[test]
fn the_authenticator_can_be_shared_across_tasks() {
    fn shared<T: Send + Sync>(_: &T) {}
    fn sendable<T: Send>(_: T) {}
    let auth = Authenticator::from_settings(&with_secret()).unwrap();
    shared(&auth);
    sendable(auth.verify("token"));
    sendable(auth.authenticate(None));
}

#[tokio::test]
async fn an_https_jwks_is_verified_against_trusted_roots() {
    // A loopback TLS server with a self-signed certificate: the fetch must fail on it (the
    // certificate is not trusted), proving TLS is in use and verified.
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let connection = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, socket);
        let mut buf = [0u8; 64];
        // The client gives up during the handshake.
        std::io::Read::read(&mut stream, &mut buf).is_err()
    });
    let settings = jwks_settings(&format!("https://localhost:{port}/jwks.json"));
    let auth = Authenticator::from_settings(&settings).unwrap();
    let err = auth.prefetch_keys().await.unwrap_err();
    assert!(matches!(err, AuthError::KeysUnavailable(_)), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(server.join().unwrap(), "the handshake was refused");
}
