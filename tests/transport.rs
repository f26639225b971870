//! The client port as the outside world meets it: TLS (`wss://`), the `Origin` check, the
//! admin port, connection limits and the handshake deadline. Real sockets on 127.0.0.x.

use std::net::SocketAddr;
use std::time::Duration;

use murmur_tests::{TestPki, WsClient, admin_url, start_node, ws_url};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type TestResult = anyhow::Result<()>;

/// How an upgrade request was answered: Ok for a WebSocket (101), or the status and body of
/// the refusal.
async fn upgrade(url: &str, origin: Option<&str>) -> anyhow::Result<Result<(), (u16, String)>> {
    let mut request = url.into_client_request()?;
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse()?);
    }
    let connect = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(Duration::from_secs(10), connect).await? {
        Ok(_) => Ok(Ok(())),
        Err(tungstenite::Error::Http(response)) => {
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            Ok(Err((response.status().as_u16(), body.into_owned())))
        }
        Err(other) => Err(other.into()),
    }
}

/// The status of `GET path` on `addr`.
async fn status_of(addr: SocketAddr, path: &str) -> u16 {
    match murmur::client::http_get(&format!("http://{addr}"), path).await {
        Ok(_) => 200,
        Err(murmur::client::ClientError::Http { message, .. }) => message
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Err(err) => panic!("GET {path}: {err}"),
    }
}

/// The value of one sample (`name{labels}` exactly as exposed) on the node's admin port.
async fn metric(node: &murmur::RunningNode, sample: &str) -> f64 {
    let text = murmur::client::http_get(&admin_url(node), "/metrics")
        .await
        .expect("/metrics on the admin port");
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the node closes `socket` (EOF or reset); how long after `started` that was.
async fn time_until_closed(
    socket: &mut TcpStream,
    started: tokio::time::Instant,
    limit: Duration,
) -> Duration {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(started + limit, socket.read(&mut buffer)).await {
            Err(_) => panic!("the node kept the connection open for {limit:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_are_on_the_admin_port_only() {
    let node = start_node(|_| {}).await;
    let (client, admin) = (node.local_addr(), node.admin_addr());
    assert_ne!(client.port(), admin.port());
    for path in ["/metrics", "/v1/cluster"] {
        assert_eq!(
            status_of(client, path).await,
            404,
            "{path} on the client port"
        );
        assert_eq!(
            status_of(admin, path).await,
            200,
            "{path} on the admin port"
        );
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            status_of(client, path).await,
            200,
            "{path} on the client port"
        );
        assert_eq!(
            status_of(admin, path).await,
            200,
            "{path} on the admin port"
        );
    }
    assert!(
        upgrade(&format!("ws://{admin}/ws"), None)
            .await
            .unwrap()
            .is_err(),
        "no WebSockets on the admin port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_are_checked_and_other_clients_are_not() -> TestResult {
    let same_origin = start_node(|_| {}).await;
    let url = ws_url(&same_origin);
    let port = same_origin.local_addr().port();
    assert_eq!(
        upgrade(&url, None).await?,
        Ok(()),
        "no Origin: not a browser"
    );
    assert_eq!(
        upgrade(&url, Some(&format!("http://127.0.0.1:{port}"))).await?,
        Ok(()),
        "a page from the node's own host and port"
    );
    for foreign in [
        "https://evil.example".to_owned(),
        format!("http://127.0.0.1:{}", port + 1),
        "null".to_owned(),
    ] {
        let (status, body) = upgrade(&url, Some(&foreign)).await?.unwrap_err();
        assert_eq!(status, 403, "{foreign}");
        assert!(body.contains("allowed_origins"), "{body}");
    }
    assert_eq!(
        metric(
            &same_origin,
            r#"murmur_connections_refused_total{reason="origin"}"#
        )
        .await,
        3.0
    );

    let listed = start_node(|s| {
        s.allowed_origins = vec![
            "https://*.example.com".into(),
            "http://localhost:3000".into(),
        ];
    })
    .await;
    let url = ws_url(&listed);
    for allowed in [
        "https://app.example.com",
        "https://a.b.example.com",
        "http://localhost:3000",
    ] {
        assert_eq!(upgrade(&url, Some(allowed)).await?, Ok(()), "{allowed}");
    }
    for refused in [
        "https://example.com",
        "http://app.example.com",
        "http://localhost:3001",
    ] {
        assert_eq!(
            upgrade(&url, Some(refused)).await?.unwrap_err().0,
            403,
            "{refused}"
        );
    }
    let any = start_node(|s| s.allowed_origins = vec!["*".into()]).await;
    assert_eq!(
        upgrade(&ws_url(&any), Some("https://anywhere.example")).await?,
        Ok(())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused_with_503() -> TestResult {
    let node = start_node(|s| s.max_connections = 2).await;
    let (first, _) = WsClient::connect_json(&node).await?;
    let (mut second, _) = WsClient::connect_json(&node).await?;
    let (status, body) = upgrade(&ws_url(&node), None).await?.unwrap_err();
    assert_eq!(status, 503);
    assert!(body.contains("too many connections"), "{body}");
    assert_eq!(
        status_of(node.local_addr(), "/healthz").await,
        200,
        "a full node still answers its health check"
    );
    assert_eq!(
        metric(
            &node,
            r#"murmur_connections_refused_total{reason="max_connections"}"#
        )
        .await,
        1.0
    );
    second.ping("still served").await?;

    // A closed connection's place is given to the next client.
    first.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while upgrade(&ws_url(&node), None).await?.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Sockets that never send a byte used to hold every place until `handshake_timeout` and
/// keep real clients out for that long. At capacity, a new client now takes the place of
/// the oldest silent socket (one that sent nothing for a second or more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_give_their_places_to_real_clients_when_the_node_is_full() -> TestResult {
    let node = start_node(|s| {
        s.max_connections = 10;
        s.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(node.local_addr()).await?);
    }
    // Right away, the silent sockets are young: a newcomer is refused, not let in by
    // pushing out a client that may be about to speak.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metric(&node, "murmur_client_sockets").await < 10.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node did not accept them"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = upgrade(&ws_url(&node), None).await?.unwrap_err();
    assert_eq!(status, 503);
    tokio::time::sleep(murmur::frontdoor::listener::EVICT_AFTER).await;
    let started = tokio::time::Instant::now();
    let (mut client, welcome) = WsClient::connect_json(&node).await?;
    assert_eq!(welcome["op"], "welcome");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "let in at once, not after handshake_timeout"
    );
    client.ping("in").await?;
    // The oldest silent socket was closed for it.
    let closed = time_until_closed(&mut silent[0], started, Duration::from_secs(5)).await;
    assert!(closed < Duration::from_secs(5));
    assert_eq!(
        metric(
            &node,
            r#"murmur_connections_refused_total{reason="idle_evicted"}"#
        )
        .await,
        1.0
    );
    Ok(())
}

/// Upgrades from a chosen local address (any of 127.0.0.0/8 reaches the node).
async fn upgrade_from(source: &str, node: &murmur::RunningNode) -> anyhow::Result<Option<u16>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    let tcp = socket.connect(node.local_addr()).await?;
    let handshake = tokio_tungstenite::client_async(ws_url(node), tcp);
    match tokio::time::timeout(Duration::from_secs(10), handshake).await? {
        Ok((ws, _)) => {
            // Kept open by leaking into a task that holds it until the test ends.
            tokio::spawn(async move {
                let _ws = ws;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
            Ok(None)
        }
        Err(tungstenite::Error::Http(response)) => Ok(Some(response.status().as_u16())),
        Err(other) => Err(other.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_limited() -> TestResult {
    let node = start_node(|s| s.max_connections_per_ip = 2).await;
    assert_eq!(upgrade_from("127.0.0.1", &node).await?, None);
    assert_eq!(upgrade_from("127.0.0.1", &node).await?, None);
    assert_eq!(
        upgrade_from("127.0.0.1", &node).await?,
        Some(503),
        "a third from the same address"
    );
    assert_eq!(
        upgrade_from("127.0.0.2", &node).await?,
        None,
        "another address is not affected"
    );
    assert_eq!(
        metric(
            &node,
            r#"murmur_connections_refused_total{reason="max_connections_per_ip"}"#
        )
        .await,
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_silent_and_half_sent_connections() -> TestResult {
    let timeout = Duration::from_millis(800);
    let node = start_node(|s| s.handshake_timeout = timeout).await;
    let (mut client, _) = WsClient::connect_json(&node).await?;

    let connected = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(node.local_addr()).await?;
    let mut half = TcpStream::connect(node.local_addr()).await?;
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .await?;
    for (what, socket) in [("silent", &mut silent), ("half a request", &mut half)] {
        let took = time_until_closed(socket, connected, Duration::from_secs(5)).await;
        assert!(
            took >= timeout.mul_f32(0.7),
            "{what}: closed after {took:?}, before the deadline"
        );
    }
    assert_eq!(metric(&node, "murmur_handshake_timeouts_total").await, 2.0);
    // An upgraded connection is not subject to the deadline.
    client.ping("after the deadline").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_serves_the_protocol_and_checks_certificates() -> TestResult {
    let pki = TestPki::new("wss");
    let node = start_node(|s| {
        s.client_tls_cert = Some(pki.cert.clone());
        s.client_tls_key = Some(pki.key.clone());
        s.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let url = format!("wss://{}/ws", node.local_addr());
    let mut subscriber = WsClient::connect_url_tls(&url, pki.client_config()).await?;
    assert_eq!(subscriber.recv_json().await?["op"], "welcome");
    subscriber.sub("s", "secure.>").await?;
    let mut publisher = WsClient::connect_url_tls(&url, pki.client_config()).await?;
    publisher.recv_json().await?;
    publisher.publish("secure.one", json!("hi"), "p1").await?;
    let event = subscriber.recv_json().await?;
    assert_eq!(event["data"], "hi", "{event}");

    // A client trusting another CA, and a client without TLS, get no WebSocket.
    let stranger = TestPki::new("stranger");
    assert!(
        WsClient::connect_url_tls(&url, stranger.client_config())
            .await
            .is_err()
    );
    assert!(
        WsClient::connect_url(&format!("ws://{}/ws", node.local_addr()))
            .await
            .is_err()
    );
    assert!(metric(&node, "murmur_tls_handshake_failures_total").await >= 1.0);

    // A socket that never starts its TLS handshake is closed at the deadline too.
    let connected = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(node.local_addr()).await?;
    time_until_closed(&mut silent, connected, Duration::from_secs(5)).await;
    subscriber.ping("still here").await?;
    Ok(())
}
