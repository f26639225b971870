//! `murmur token` as a user runs it: the token it prints is accepted by a node with the same
//! secret, carries the permissions asked for, and bad input is refused with a clear message.

use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use murmur::Settings;
use murmur::auth::{AuthError, Authenticator};
use murmur::config::{AuthMode, Secret};

const BIN: &str = env!("CARGO_BIN_EXE_murmur");
const SECRET: &str = "cli-test-secret-long-enough-for-hs256-0123456789";

fn murmur_token(args: &[&str], secret_env: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("token")
        .args(args)
        .env_remove("MURMUR_TOKEN_HMAC_SECRET");
    if let Some(secret) = secret_env {
        command.env("MURMUR_TOKEN_HMAC_SECRET", secret);
    }
    command.output().expect("murmur runs")
}

fn token_from(output: &Output) -> String {
    assert!(
        output.status.success(),
        "murmur token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

fn node_settings(secret: &str) -> Settings {
    Settings {
        auth: AuthMode::Token,
        token_hmac_secret: Some(Secret(secret.into())),
        ..Settings::default()
    }
}

#[tokio::test]
async fn minted_tokens_are_accepted_with_their_permissions() {
    let output = murmur_token(
        &[
            "--secret",
            SECRET,
            "--sub",
            "alice",
            "--allow-pub",
            "chat.>",
            "--allow-sub",
            "chat.>",
            "--allow-history",
            "chat.lobby",
            "--deny-pub",
            "chat.*.admin",
            "--deny-sub",
            "chat.secret.>",
            "--ttl",
            "10m",
        ],
        None,
    );
    let token = token_from(&output);
    let auth = Authenticator::from_settings(&node_settings(SECRET)).unwrap();
    let identity = auth
        .verify(&token)
        .await
        .expect("the node accepts the token");
    assert_eq!(identity.user, "alice");
    let can = &identity.permissions;
    assert!(can.can_publish("chat.lobby"));
    assert!(!can.can_publish("chat.lobby.admin"));
    assert!(!can.can_publish("news.eu"));
    assert!(can.can_subscribe("chat.lobby.>"));
    assert!(
        !can.can_subscribe("chat.>"),
        "chat.> reaches the denied chat.secret.>"
    );
    assert!(can.can_read_history("chat.lobby"));
    assert!(!can.can_read_history("chat.other"));
    let left = identity.expires_in(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(9 * 60) && left <= Duration::from_secs(11 * 60),
        "{left:?}"
    );

    let elsewhere = Authenticator::from_settings(&node_settings(
        "some-other-secret-that-is-long-enough-000000",
    ))
    .unwrap();
    assert_eq!(
        elsewhere.verify(&token).await.unwrap_err(),
        AuthError::BadSignature
    );
}

#[tokio::test]
async fn the_secret_can_come_from_the_environment_and_claims_from_flags() {
    let output = murmur_token(
        &[
            "--sub",
            "bob",
            "--allow-sub",
            "news.*",
            "--aud",
            "murmur",
            "--iss",
            "dev",
            "--alg",
            "HS512",
            "--kid",
            "dev-1",
        ],
        Some(SECRET),
    );
    let token = token_from(&output);
    let settings = Settings {
        token_audience: Some("murmur".into()),
        token_issuer: Some("dev".into()),
        ..node_settings(SECRET)
    };
    let identity = Authenticator::from_settings(&settings)
        .unwrap()
        .verify(&token)
        .await
        .unwrap();
    assert_eq!(identity.user, "bob");
    assert!(identity.permissions.can_subscribe("news.eu"));
    assert!(!identity.permissions.can_publish("news.eu"));
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let cases: [(&[&str], &str); 4] = [
        (&["--secret", "short", "--sub", "a"], "at least 32 bytes"),
        (
            &["--secret", SECRET, "--sub", "a", "--allow-sub", "chat.>.x"],
            "'chat.>.x' in murmur.sub",
        ),
        (
            &["--secret", SECRET, "--sub", "a", "--alg", "RS256"],
            "RS256",
        ),
        (&["--sub", "a"], "--secret"),
    ];
    for (args, reason) in cases {
        let output = murmur_token(args, None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "no token printed for {args:?}");
    }
}

/// `murmur token --key`: tokens signed with a private key (the nodes hold only the public
/// key), for each key family; a key and an algorithm that do not fit are refused.
#[tokio::test]
async fn tokens_signed_with_a_private_key_are_accepted_by_nodes_with_its_public_key() {
    let data = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/auth")
            .join(name)
    };
    for (key, public, alg) in [
        ("ed1.key", "ed1.pem", "EdDSA"),
        ("ec1.key", "ec1.pem", "ES256"),
        ("rsa1.key", "rsa1.pem", "RS256"),
    ] {
        let key_path = data(key);
        let output = murmur_token(
            &[
                "--key",
                key_path.to_str().unwrap(),
                "--alg",
                alg,
                "--kid",
                public.trim_end_matches(".pem"),
                "--sub",
                "svc",
                "--allow-pub",
                "jobs.>",
            ],
            // A secret in the environment does not get in the way of --key.
            Some(SECRET),
        );
        let token = token_from(&output);
        let node = Settings {
            auth: AuthMode::Token,
            token_public_keys: vec![data(public)],
            ..Settings::default()
        };
        let identity = Authenticator::from_settings(&node)
            .unwrap()
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(identity.user, "svc");
        assert!(identity.permissions.can_publish("jobs.build"));
    }
    let ed_key = data("ed1.key");
    let refused = |args: &[&str]| {
        let output = murmur_token(args, None);
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let no_alg = refused(&["--key", ed_key.to_str().unwrap(), "--sub", "x"]);
    assert!(no_alg.contains("--key needs --alg"), "{no_alg}");
    let wrong = refused(&[
        "--key",
        ed_key.to_str().unwrap(),
        "--alg",
        "RS256",
        "--sub",
        "x",
    ]);
    assert!(wrong.contains("is not a PEM RS256 private key"), "{wrong}");
    let hs_with_key = refused(&[
        "--key",
        ed_key.to_str().unwrap(),
        "--alg",
        "HS256",
        "--sub",
        "x",
    ]);
    assert!(hs_with_key.contains("signs with a secret"), "{hs_with_key}");
    let neither = refused(&["--sub", "x"]);
    assert!(neither.contains("--secret"), "{neither}");
}
