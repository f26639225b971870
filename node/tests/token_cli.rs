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
