//! The dashboard's side of a node over real sockets: `GET /v1/stats` (members, this node's
//! counters and peers; with `scope=cluster` every member's, fetched by the node; a token
//! that may see everything with `auth = token`) and the pages it
//! serves (`/`, `/dashboard` and its files, the JS client among them). The pages themselves
//! are driven in a browser by tests/browser/ (`make test-browser`).

use std::time::Duration;

use murmur::RunningNode;
use murmur::api_client::{Answer, ApiClient};
use murmur::auth::token::TokenClaims;
use murmur_tests::{
    WsClient, members_in_state, recv_n, sign_token, start_cluster, start_node, wait_until,
};
use serde_json::{Value, json};

type TestResult = anyhow::Result<()>;

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

/// A node in a cluster-scope answer: `(name, state, connections, subscriptions, error)`.
type ClusterRow = (String, String, Option<u64>, Option<u64>, Option<String>);

fn cluster_rows(stats: &Value) -> Vec<ClusterRow> {
    stats["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_owned(),
                n["state"].as_str().unwrap_or_default().to_owned(),
                n["stats"]["connections"].as_u64(),
                n["stats"]["subscriptions"].as_u64(),
                n["error"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scope_shows_every_members_numbers_and_a_dead_one_as_unreachable() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    // node-i holds i + 1 connections, each with two subscriptions.
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for _ in 0..=i {
            let (mut client, _) = WsClient::connect_json(node).await?;
            client.sub("a", "orders.>").await?;
            client.sub("b", "chat.>").await?;
            clients.push(client);
        }
    }
    api(&nodes[1], None)
        .post_json("/v1/publish", &json!({"topic": "orders.eu", "data": 1}))
        .await?
        .into_ok()?;

    let stats = api(&nodes[0], None)
        .get("/v1/stats?scope=cluster")
        .await?
        .into_ok()?;
    assert_eq!(stats["node"], "node-0");
    assert_eq!(stats["scope"], "cluster");
    assert_eq!(
        cluster_rows(&stats),
        [
            ("node-0".into(), "alive".into(), Some(1), Some(2), None),
            ("node-1".into(), "alive".into(), Some(2), Some(4), None),
            ("node-2".into(), "alive".into(), Some(3), Some(6), None),
        ],
        "{stats}"
    );
    let node_1 = &stats["nodes"][1];
    assert_eq!(node_1["listen"], nodes[1].local_addr().to_string());
    assert_eq!(node_1["stats"]["name"], "node-1");
    assert_eq!(
        node_1["stats"]["counters"]["events_received"], 1,
        "{node_1}"
    );
    assert_eq!(node_1["stats"]["peers"].as_array().map(Vec::len), Some(2));
    // Any node answers for the whole cluster.
    let from_node_2 = api(&nodes[2], None)
        .get("/v1/stats?scope=cluster")
        .await?
        .into_ok()?;
    assert_eq!(from_node_2["node"], "node-2");
    assert_eq!(cluster_rows(&from_node_2).len(), 3);
    // The node scope stays as it was: this node's numbers only.
    let own = api(&nodes[0], None)
        .get("/v1/stats?scope=node")
        .await?
        .into_ok()?;
    assert_eq!(own["nodes"].as_array().map(Vec::len), Some(1));
    let bad = api(&nodes[0], None)
        .get("/v1/stats?scope=everything")
        .await?;
    assert_eq!((bad.status, error_code(&bad)), (400, "invalid_request"));

    // A node that dies answers no more: still a member for a moment, with no numbers and
    // the reason; the others are unaffected, and the answer does not wait long for it.
    nodes[2].halt();
    let started = std::time::Instant::now();
    let stats = api(&nodes[0], None)
        .get("/v1/stats?scope=cluster")
        .await?
        .into_ok()?;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let rows = cluster_rows(&stats);
    assert_eq!(rows[0].2, Some(1), "{stats}");
    assert_eq!(rows[1].2, Some(2), "{stats}");
    let (name, _, connections, _, error) = &rows[2];
    assert_eq!((name.as_str(), *connections), ("node-2", None), "{stats}");
    assert!(error.as_deref().is_some_and(|e| !e.is_empty()), "{stats}");

    // Once the cluster sees it down, it is listed as such and not asked.
    wait_until("node-2 is seen down", Duration::from_secs(30), || {
        members_in_state(&nodes[0], "down").contains(&"node-2".to_owned())
    })
    .await;
    let stats = api(&nodes[0], None)
        .get("/v1/stats?scope=cluster")
        .await?
        .into_ok()?;
    let rows = cluster_rows(&stats);
    assert_eq!(
        rows[2],
        (
            "node-2".into(),
            "down".into(),
            None,
            None,
            Some("not asked: the member is down".into())
        ),
        "{stats}"
    );
    drop(clients);
    Ok(())
}

fn token(subscribe: &[&str]) -> String {
    let permissions = murmur_tests::permissions(&[], subscribe, &[]);
    sign_token(&TokenClaims::new(
        "operator",
        Duration::from_secs(600),
        permissions,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_need_a_token_that_may_subscribe_to_every_topic() -> TestResult {
    let node = start_node(|s| {
        murmur_tests::token_auth(s);
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
async fn cluster_scope_admits_as_the_node_scope_and_passes_the_token_to_the_peers() -> TestResult {
    let nodes = start_cluster(2, |_, s| {
        murmur_tests::token_auth(s);
    })
    .await;
    let path = "/v1/stats?scope=cluster";
    let anonymous = api(&nodes[0], None).get(path).await?;
    assert_eq!(
        (anonymous.status, error_code(&anonymous)),
        (401, "unauthorized")
    );
    let narrow = api(&nodes[0], Some(token(&["chat.>"]))).get(path).await?;
    assert_eq!((narrow.status, error_code(&narrow)), (403, "forbidden"));
    // The peer is asked with the caller's token, which it accepts as well.
    let operator = api(&nodes[0], Some(token(&[">"])))
        .get(path)
        .await?
        .into_ok()?;
    assert_eq!(
        cluster_rows(&operator),
        [
            ("node-0".into(), "alive".into(), Some(0), Some(0), None),
            ("node-1".into(), "alive".into(), Some(0), Some(0), None),
        ],
        "{operator}"
    );
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
