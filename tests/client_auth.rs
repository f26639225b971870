//! Client authentication and permissions over real WebSockets: tokens in `hello` and on the
//! upgrade, every per-operation rule, refresh widening and narrowing, expiry.

use std::time::Duration;

use murmur::auth::PermissionClaim;
use murmur::auth::token::{Algorithm, EncodingKey, TokenClaims, mint};
use murmur::{RunningNode, Settings};
use murmur_tests::{
    Received, WsClient, expect_error, expect_ok, permissions as perms, sign_token, start_node,
    ws_url,
};
use serde_json::{Value, json};

type TestResult = anyhow::Result<()>;

fn token_auth(s: &mut Settings) {
    murmur_tests::token_auth(s);
    s.token_leeway = Duration::ZERO;
    s.hello_timeout = Duration::from_secs(2);
}

fn token(user: &str, ttl: Duration, permissions: PermissionClaim) -> String {
    sign_token(&TokenClaims::new(user, ttl, permissions))
}

/// Connects and says `hello` with `token`; returns the client and the `welcome`.
async fn hello(node: &RunningNode, token: &str) -> anyhow::Result<(WsClient, Value)> {
    let (mut client, _) = WsClient::connect_json(node).await?;
    let welcome = client
        .request(json!({"op": "hello", "token": token}))
        .await?;
    Ok((client, welcome))
}

/// The next frames up to the close: the error said before it, and the close code.
async fn closed_with(client: &mut WsClient) -> anyhow::Result<(Option<Value>, Option<u16>)> {
    let mut error = None;
    loop {
        match client.recv().await? {
            Received::Frame(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                error = Some(serde_json::from_str(t.as_str())?);
            }
            Received::Frame(_) => {}
            Received::Closed(frame) => return Ok((error, frame.map(|f| u16::from(f.code)))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_nothing_but_hello_and_then_the_connection_closes() -> TestResult {
    let node = start_node(token_auth).await;
    let (mut client, welcome) = WsClient::connect_json(&node).await?;
    assert!(welcome.get("user").is_none());
    let reply = client
        .request(json!({"op": "sub", "id": "s", "topic": "chat.x"}))
        .await?;
    expect_error(&reply, "unauthorized", Some("s"));
    let reply = client
        .request(json!({"op": "pub", "topic": "chat.x", "data": 1, "ref": "p"}))
        .await?;
    expect_error(&reply, "unauthorized", Some("p"));
    client.ping("still-here").await?;
    // No valid hello within hello_timeout (2 s): closed, "do not reconnect without a token".
    let started = std::time::Instant::now();
    let (error, code) = closed_with(&mut client).await?;
    expect_error(&error.expect("told why"), "unauthorized", None);
    assert_eq!(code, Some(4500));
    assert!(started.elapsed() < Duration::from_secs(4));

    // A hello without a token is refused at once.
    let (mut client, _) = WsClient::connect_json(&node).await?;
    client.send_json(json!({"op": "hello"})).await?;
    let (error, code) = closed_with(&mut client).await?;
    expect_error(&error.expect("told why"), "unauthorized", None);
    assert_eq!(code, Some(4500));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_of_bad_token_is_refused_and_closes() -> TestResult {
    let node = start_node(token_auth).await;
    let good = TokenClaims::new("alice", Duration::from_secs(60), perms(&[">"], &[">"], &[]));
    let expired = TokenClaims {
        exp: good.exp - 120,
        ..good.clone()
    };
    let not_yet = TokenClaims {
        nbf: Some(good.exp),
        ..good.clone()
    };
    let other_key = mint(
        &good,
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-0123")?,
    )?;
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(&good)?)
    );
    let cases: Vec<(&str, String, &str, u16)> = vec![
        ("expired", sign_token(&expired), "token_expired", 4501),
        ("not yet valid", sign_token(&not_yet), "unauthorized", 4500),
        ("bad signature", other_key, "unauthorized", 4500),
        ("alg none", alg_none, "unauthorized", 4500),
        ("malformed", "not.a.jwt".into(), "unauthorized", 4500),
        ("oversized", "x".repeat(20_000), "unauthorized", 4500),
    ];
    for (class, token, code, close) in cases {
        let (mut client, _) = WsClient::connect_json(&node).await?;
        client
            .send_json(json!({"op": "hello", "token": token}))
            .await?;
        let (error, got_close) = closed_with(&mut client).await?;
        let error = error.unwrap_or_else(|| panic!("{class}: no error frame"));
        expect_error(&error, code, None);
        assert_eq!(got_close, Some(close), "{class}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_is_checked_against_the_token() -> TestResult {
    let node = start_node(token_auth).await;
    let mut claim = perms(&["chat.alice.>"], &["chat.>", "user.alice.*"], &["chat.>"]);
    claim.deny.subscribe = vec!["chat.admin".into()];
    let (mut client, welcome) =
        hello(&node, &token("alice", Duration::from_secs(60), claim)).await?;
    assert_eq!(welcome["op"], "welcome");
    assert_eq!(welcome["user"], "alice");
    assert!(welcome["expires_at"].as_u64().is_some());

    // Allowed.
    client.sub("s1", "chat.lobby").await?;
    client.sub("s2", "user.alice.inbox").await?;
    let reply = client
        .request(json!({"op": "sub", "id": "s3", "topic": "chat.lobby", "from": "earliest"}))
        .await?;
    expect_ok(&reply, "s3")?;
    let (ok, _) = client.publish("chat.alice.room", json!(1), "p1").await?;
    expect_ok(&ok, "p1")?;

    // Refused, and the connection stays.
    for (frame, reference) in [
        (json!({"op": "sub", "id": "f1", "topic": "orders.x"}), "f1"),
        // A wildcard that could match a denied topic.
        (json!({"op": "sub", "id": "f2", "topic": "chat.*"}), "f2"),
        (
            json!({"op": "sub", "id": "f3", "topic": "chat.admin"}),
            "f3",
        ),
        // Wider than what is allowed.
        (json!({"op": "sub", "id": "f4", "topic": "user.>"}), "f4"),
        (
            json!({"op": "sub", "id": "f5", "topic": ">", "group": "g"}),
            "f5",
        ),
        // History needs `history`.
        (
            json!({"op": "sub", "id": "f6", "topic": "user.alice.inbox", "from": "earliest"}),
            "f6",
        ),
        (
            json!({"op": "pub", "topic": "chat.bob.room", "data": 1, "ref": "f7"}),
            "f7",
        ),
    ] {
        let reply = client.request(frame).await?;
        expect_error(&reply, "forbidden", Some(reference));
    }
    client.ping("still").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_on_the_upgrade_authenticates_and_a_bad_one_gets_401() -> TestResult {
    let node = start_node(token_auth).await;
    let token = token("svc", Duration::from_secs(60), perms(&["jobs.>"], &[], &[]));
    let request = |token: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = ws_url(&node).into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(request(&token)).await?;
    use futures_util::{SinkExt, StreamExt};
    let welcome: Value = match ws.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => serde_json::from_str(&t)?,
        other => anyhow::bail!("expected welcome, got {other:?}"),
    };
    assert_eq!(welcome["user"], "svc");
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"op": "pub", "topic": "jobs.a", "data": 1, "ref": "p"}).to_string(),
    ))
    .await?;
    let ok: Value = match ws.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => serde_json::from_str(&t)?,
        other => anyhow::bail!("expected ok, got {other:?}"),
    };
    expect_ok(&ok, "p")?;

    match tokio_tungstenite::connect_async(request("garbage")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => anyhow::bail!("expected 401, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_widens_and_narrows_without_dropping_the_connection() -> TestResult {
    let node = start_node(token_auth).await;
    let ttl = Duration::from_secs(60);
    let (mut client, _) = hello(&node, &token("alice", ttl, perms(&[], &["a.>"], &[]))).await?;
    client.sub("a", "a.x").await?;
    let reply = client
        .request(json!({"op": "sub", "id": "b", "topic": "b.x"}))
        .await?;
    expect_error(&reply, "forbidden", Some("b"));

    // Widening: b.> allowed from now on; `ok` carries the new expiry.
    let wider = token("alice", ttl * 2, perms(&["b.x"], &["a.>", "b.>"], &[]));
    let reply = client
        .request(json!({"op": "refresh", "token": wider, "ref": "r1"}))
        .await?;
    expect_ok(&reply, "r1")?;
    assert!(reply["expires_at"].as_u64().is_some());
    client.sub("b", "b.x").await?;

    // Narrowing: only b.> remains; subscription `a` ends with an error naming it, `b` stays.
    let narrower = token("alice", ttl, perms(&["b.x"], &["b.>"], &[]));
    client
        .send_json(json!({"op": "refresh", "token": narrower, "ref": "r2"}))
        .await?;
    let ended = client.recv_json().await?;
    expect_error(&ended, "forbidden", Some("a"));
    expect_ok(&client.recv_json().await?, "r2")?;
    let (_, events) = client.publish("b.x", json!("to b"), "p").await?;
    let event = match events.first() {
        Some(e) => e.clone(),
        None => client.recv_json().await?,
    };
    assert_eq!(
        (event["sub"].as_str(), event["topic"].as_str()),
        (Some("b"), Some("b.x"))
    );
    let reply = client.request(json!({"op": "unsub", "id": "a"})).await?;
    expect_error(&reply, "unknown_subscription", Some("a"));

    // Another user's token, or a bad one, is refused and changes nothing.
    let bob = token("bob", ttl, perms(&[">"], &[">"], &[">"]));
    let reply = client
        .request(json!({"op": "refresh", "token": bob, "ref": "r3"}))
        .await?;
    expect_error(&reply, "unauthorized", Some("r3"));
    let reply = client
        .request(json!({"op": "refresh", "token": "junk", "ref": "r4"}))
        .await?;
    expect_error(&reply, "unauthorized", Some("r4"));
    client.ping("still").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_about_to_expire_is_announced_then_the_connection_closes() -> TestResult {
    let node = start_node(token_auth).await;
    let (mut client, _) = hello(
        &node,
        &token("alice", Duration::from_secs(3), perms(&[], &[">"], &[])),
    )
    .await?;
    let notice = client.recv_json().await?;
    assert_eq!(notice["op"], "expiring", "{notice}");
    assert!(notice["in_ms"].as_u64().is_some_and(|ms| ms <= 3000));
    let (error, code) = closed_with(&mut client).await?;
    expect_error(&error.expect("told why"), "token_expired", None);
    assert_eq!(code, Some(4501));

    // A refresh in time keeps it open past the first token's expiry.
    let (mut client, _) = hello(
        &node,
        &token("alice", Duration::from_secs(3), perms(&[], &[">"], &[])),
    )
    .await?;
    let notice = client.recv_json().await?;
    assert_eq!(notice["op"], "expiring");
    let fresh = token("alice", Duration::from_secs(60), perms(&[], &[">"], &[]));
    let reply = client
        .request(json!({"op": "refresh", "token": fresh, "ref": "r"}))
        .await?;
    expect_ok(&reply, "r")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.ping("alive").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_permissions_apply_to_connections_without_a_token() -> TestResult {
    let node = start_node(|s| {
        token_auth(s);
        s.anonymous_permissions = Some(perms(&[], &["public.>"], &["public.>"]));
    })
    .await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    client.sub("p", "public.news").await?;
    let reply = client
        .request(json!({"op": "pub", "topic": "public.news", "data": 1, "ref": "x"}))
        .await?;
    expect_error(&reply, "forbidden", Some("x"));
    let reply = client
        .request(json!({"op": "sub", "id": "q", "topic": "private.x"}))
        .await?;
    expect_error(&reply, "forbidden", Some("q"));
    // Past hello_timeout, still open: it has an identity.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.ping("open").await?;
    Ok(())
}
