//! The dashboard's side of a node over real sockets: `GET /v1/stats` (members, this node's
//! counters and peers; a token that may see everything with `auth = token`) and the pages it
//! serves (`/`, `/dashboard` and its files, the JS client among them). The pages themselves
//! are driven in a browser by tests/browser/ (`make test-browser`).

use std::time::Duration;

use murmur::RunningNode;
use murmur::api_client::{Answer, ApiClient};
use murmur::auth::PermissionClaim;
use murmur::auth::token::{Algorithm, EncodingKey, TokenClaims, mint};
use murmur::config::{AuthMode, Secret};
use murmur_tests::{WsClient, recv_n, start_cluster, start_node};
use serde_json::{Value, json};

type TestResult = anyhow::Result<()>;

const SECRET: &str = "dashboard-test-secret-0123456789abcdef";

fn api(node: &RunningNode, token: Option<String>) -> ApiClient {
    ApiClient::new(&format!("http://{}", node.local_addr()), token, None).expect("client")
}

fn error_code(answer: &Answer) -> &str {
    answer.body["error"]["code"].as_str().unwrap_or("")
}

/// A plain GET: the status, the headers (lower-case names) and the body.
async fn get_page(node: &RunningNode, path: &str) -> anyhow::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(node.local_addr()).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        node.local_addr()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await??;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_members_and_this_nodes_connections_counters_and_peers() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    let node = &nodes[0];
    let (mut subscriber, _) = WsClient::connect_json(node).await?;
    subscriber.sub("s", "orders.>").await?;
    let events: Vec<Value> = (1..=5)
        .map(|i| json!({"topic": "orders.eu", "data": i}))
        .collect();
    api(node, None)
        .post_json("/v1/publish", &json!({ "events": events }))
        .await?
        .into_ok()?;
    recv_n(&mut subscriber, 5).await?;

    let stats = api(node, None).get("/v1/stats").await?.into_ok()?;
    assert_eq!(stats["node"], "node-0");
    let mut members: Vec<(String, String)> = stats["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_owned(),
                m["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            ("node-0".into(), "alive".into()),
            ("node-1".into(), "alive".into()),
            ("node-2".into(), "alive".into())
        ]
    );
    let this = &stats["nodes"][0];
    assert_eq!(this["name"], "node-0");
    assert_eq!(this["connections"], 1, "{this}");
    assert_eq!(this["subscriptions"], 1, "{this}");
    assert_eq!(this["counters"]["events_received"], 5, "{this}");
    assert!(this["counters"]["deliveries"].as_u64() >= Some(5), "{this}");
    assert_eq!(this["counters"]["gaps_sent"], 0);
    let mut peers: Vec<&str> = this["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| {
            assert!(p["rtt_ms"].as_f64() >= Some(0.0), "{p}");
            assert_eq!(p["events_dropped"], 0);
            p["name"].as_str().unwrap_or_default()
        })
        .collect();
    peers.sort();
    assert_eq!(peers, ["node-1", "node-2"]);

    // Counters move: the next answer has the next publishes.
    api(node, None)
        .post_json("/v1/publish", &json!({"topic": "orders.eu", "data": 6}))
        .await?
        .into_ok()?;
    let later = api(node, None).get("/v1/stats").await?.into_ok()?;
    assert_eq!(later["nodes"][0]["counters"]["events_received"], 6);
    assert!(later["nodes"][0]["at_ms"].as_u64() >= this["at_ms"].as_u64());

    let wrong = api(node, None).post_json("/v1/stats", &json!({})).await?;
    assert_eq!(
        (wrong.status, error_code(&wrong)),
        (405, "method_not_allowed")
    );
    Ok(())
}

fn token(subscribe: &[&str]) -> String {
    let claims = TokenClaims::new(
        "operator",
        Duration::from_secs(600),
        PermissionClaim {
            subscribe: subscribe.iter().map(|s| (*s).to_owned()).collect(),
            ..PermissionClaim::default()
        },
    );
    mint(
        &claims,
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()).expect("hmac key"),
    )
    .expect("mint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_need_a_token_that_may_subscribe_to_every_topic() -> TestResult {
    let node = start_node(|s| {
        s.auth = AuthMode::Token;
        s.token_hmac_secret = Some(Secret(SECRET.into()));
    })
    .await;
    let anonymous = api(&node, None).get("/v1/stats").await?;
    assert_eq!(
        (anonymous.status, error_code(&anonymous)),
        (401, "unauthorized")
    );
    let narrow = api(&node, Some(token(&["chat.>"])))
        .get("/v1/stats")
        .await?;
    assert_eq!((narrow.status, error_code(&narrow)), (403, "forbidden"));
    let operator = api(&node, Some(token(&[">"])))
        .get("/v1/stats")
        .await?
        .into_ok()?;
    assert_eq!(operator["members"].as_array().map(Vec::len), Some(1));

    // The pages hold no data: they are served without a token.
    let (status, _, body) = get_page(&node, "/dashboard").await?;
    assert_eq!(status, 200);
    assert!(body.contains("id=\"token-panel\""));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_landing_page_leads_to_the_dashboard_whose_files_and_client_are_embedded() -> TestResult
{
    let node = start_node(|_| {}).await;
    let (status, head, body) = get_page(&node, "/").await?;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(body.contains("href=\"/dashboard\""));

    let (status, head, body) = get_page(&node, "/dashboard").await?;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(body.contains("src=\"/dashboard/dashboard.js\""));

    let (status, head, body) = get_page(&node, "/dashboard/dashboard.js").await?;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(body.contains("from \"/dashboard/murmur-client/index.js\""));
    let (status, _, body) = get_page(&node, "/dashboard/murmur-client/index.js").await?;
    assert_eq!(status, 200);
    assert!(body.contains("export { Client }"), "{body}");
    let (status, _, body) = get_page(&node, "/dashboard/murmur-client/client.js").await?;
    assert_eq!(status, 200);
    assert!(body.contains("export class Client"));

    for missing in ["/dashboard/nope.js", "/dashboard/../Cargo.toml", "/nope"] {
        let (status, _, _) = get_page(&node, missing).await?;
        assert_eq!(status, 404, "{missing}");
    }
    Ok(())
}
