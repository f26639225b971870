//! The HTTP API for backends over real sockets: publishing one event and batches (received
//! over WebSocket), history pages with gaps, the topic listing, tokens and permissions, the
//! limits, and history read from a node that holds none of the topic.

use std::time::Duration;

use murmur::RunningNode;
use murmur::api_client::{Answer, ApiClient, encode};
use murmur::auth::PermissionClaim;
use murmur::auth::token::TokenClaims;
use murmur_tests::{WsClient, recv_n, seqs, sign_token, start_cluster, start_node};
use serde_json::{Value, json};

type TestResult = anyhow::Result<()>;

fn api(node: &RunningNode) -> ApiClient {
    api_with(node, None)
}

fn api_with(node: &RunningNode, token: Option<String>) -> ApiClient {
    ApiClient::new(&format!("http://{}", node.local_addr()), token, None).expect("client")
}

fn error_code(answer: &Answer) -> &str {
    answer.body["error"]["code"].as_str().unwrap_or("")
}

/// A raw HTTP/1.1 request (for headers the API client does not send); the status and body.
async fn raw_request(node: &RunningNode, head: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(node.local_addr()).await?;
    let request = format!(
        "{head}\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        node.local_addr(),
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn history_query(topic: &str, from: &Value, limit: usize) -> String {
    let from = match from {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "/v1/history?topic={}&from={}&limit={limit}",
        encode(topic),
        encode(&from)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_over_http_one_event_and_a_batch_reach_websocket_subscribers() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&node).await?;
    subscriber.sub("s", "orders.>").await?;
    let client = api(&node);

    let one = client
        .post_json(
            "/v1/publish",
            &json!({"topic": "orders.a", "data": {"n": 1.50}}),
        )
        .await?;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.body["seq"], 1);
    let epoch_a = one.body["epoch"].as_str().unwrap_or_default().to_owned();
    assert!(!epoch_a.is_empty());

    let batch = client
        .post_json(
            "/v1/publish",
            &json!({"events": [
                {"topic": "orders.a", "data": "two", "id": "k2"},
                {"topic": "orders.*", "data": 0},
                {"topic": "orders.b", "data": null},
                {"topic": "orders..a", "data": 0},
                {"topic": "orders.a", "data": [3]},
            ]}),
        )
        .await?;
    assert_eq!(batch.status, 200, "{batch:?}");
    let results = batch.body["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(results.len(), 5, "one result per event: {batch:?}");
    assert_eq!(
        results[0],
        json!({"id": "k2", "epoch": epoch_a, "seq": 2}),
        "the id is echoed"
    );
    assert_eq!(results[1]["error"]["code"], "invalid_topic");
    assert_eq!(results[2]["seq"], 1);
    assert_eq!(results[3]["error"]["code"], "invalid_topic");
    assert_eq!(results[4]["seq"], 3);

    let events = recv_n(&mut subscriber, 4).await?;
    let got: Vec<(String, u64, String)> = events
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap_or_default().to_owned(),
                e["seq"].as_u64().unwrap_or(0),
                e["data"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("orders.a".into(), 1, r#"{"n":1.5}"#.into()),
            ("orders.a".into(), 2, r#""two""#.into()),
            ("orders.b".into(), 1, "null".into()),
            ("orders.a".into(), 3, "[3]".into()),
        ]
    );

    // Refusals of the request as a whole: JSON errors with the protocol's codes.
    let not_json = client
        .post_json("/v1/publish", &json!("just a string"))
        .await?;
    assert_eq!(
        (not_json.status, error_code(&not_json)),
        (400, "invalid_request")
    );
    let malformed = client
        .post_json(
            "/v1/publish",
            &json!({"events": [{"topic": "orders.a", "data": 1}, {"data": 2}]}),
        )
        .await?;
    assert_eq!(
        (malformed.status, error_code(&malformed)),
        (400, "invalid_request"),
        "a batch that is not of events is refused whole: {malformed:?}"
    );
    let wildcard = client
        .post_json("/v1/publish", &json!({"topic": "orders.>", "data": 1}))
        .await?;
    assert_eq!(
        (wildcard.status, error_code(&wildcard)),
        (400, "invalid_topic")
    );
    // Browsers: pages of other origins are refused; a form post is not JSON.
    let event = r#"{"topic":"orders.a","data":1}"#;
    let (status, body) = raw_request(
        &node,
        "POST /v1/publish HTTP/1.1\r\nContent-Type: application/json\r\nOrigin: https://elsewhere.example",
        event,
    )
    .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, body) = raw_request(
        &node,
        "POST /v1/publish HTTP/1.1\r\nContent-Type: text/plain",
        event,
    )
    .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (415, Some("invalid_request"))
    );
    let unknown = client.get("/v1/nothing-here").await?;
    assert_eq!((unknown.status, error_code(&unknown)), (404, "not_found"));
    let openapi = client.get("/v1/openapi.json").await?;
    assert_eq!(openapi.status, 200);
    assert_eq!(openapi.body["openapi"], "3.1.0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_comes_in_pages_after_a_cursor_with_the_gap_retention_made() -> TestResult {
    let node = start_node(|s| s.history_max_events = 5).await;
    let client = api(&node);
    let events: Vec<Value> = (1..=8)
        .map(|i| json!({"topic": "log", "data": i}))
        .collect();
    let batch = client
        .post_json("/v1/publish", &json!({"events": events}))
        .await?
        .into_ok()?;
    let epoch = batch["results"][0]["epoch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // Seen up to 1; 2 and 3 were trimmed (5 kept: 4..8).
    let first = client
        .history("log", &json!({"epoch": epoch, "seq": 1}), 2)
        .await?;
    assert_eq!(
        first["gaps"],
        json!([{"epoch": epoch, "from_seq": 2, "to_seq": 3, "reason": "retention"}])
    );
    assert_eq!(seqs(first["events"].as_array().unwrap()), [4, 5]);
    assert_eq!(first["events"][0]["data"], 4);
    assert_eq!(first["more"], true);
    assert_eq!(first["next"], json!({"epoch": epoch, "seq": 5}));
    assert_eq!(
        (first["epoch"].clone(), first["last_seq"].clone()),
        (json!(epoch), json!(8))
    );

    let second = client.history("log", &first["next"], 2).await?;
    assert_eq!(second["gaps"], json!([]));
    assert_eq!(seqs(second["events"].as_array().unwrap()), [6, 7]);
    let last = client.history("log", &second["next"], 2).await?;
    assert_eq!(seqs(last["events"].as_array().unwrap()), [8]);
    assert_eq!(last["more"], false);
    assert_eq!(last["next"], json!({"epoch": epoch, "seq": 8}));
    let caught_up = client.history("log", &last["next"], 2).await?;
    assert_eq!(caught_up["events"], json!([]));
    assert_eq!(caught_up["next"], last["next"], "nothing new: stay put");

    let earliest = client.history("log", &json!("earliest"), 100).await?;
    assert_eq!(
        seqs(earliest["events"].as_array().unwrap()),
        [4, 5, 6, 7, 8]
    );
    assert_eq!(earliest["gaps"], json!([]), "earliest claims nothing seen");

    // A cursor of an epoch the topic no longer has.
    let stale = client
        .history("log", &json!({"epoch": "0-0", "seq": 3}), 100)
        .await?;
    assert_eq!(stale["gaps"][0]["reason"], "epoch_changed");
    assert_eq!(stale["gaps"][1]["reason"], "retention");
    assert_eq!(seqs(stale["events"].as_array().unwrap()), [4, 5, 6, 7, 8]);

    let unknown = client
        .history("never.published", &json!("earliest"), 10)
        .await?;
    assert_eq!(
        (
            unknown["events"].clone(),
            unknown["epoch"].clone(),
            unknown["next"].clone()
        ),
        (json!([]), Value::Null, Value::Null)
    );

    for (query, code) in [
        (
            history_query("log.*", &json!("earliest"), 10),
            "invalid_topic",
        ),
        (
            history_query("log", &json!("latest"), 10),
            "invalid_request",
        ),
        (
            history_query("log", &json!({"epoch": ""}), 10),
            "invalid_request",
        ),
        (
            history_query("log", &json!("earliest"), 1001),
            "invalid_request",
        ),
        ("/v1/history?from=earliest".to_owned(), "invalid_request"),
    ] {
        let answer = client.get(&query).await?;
        assert_eq!((answer.status, error_code(&answer)), (400, code), "{query}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_listed_in_pages_with_their_position_and_local_subscribers() -> TestResult {
    let node = start_node(|_| {}).await;
    let client = api(&node);
    let events = json!({"events": [
        {"topic": "a.x", "data": 1}, {"topic": "a.x", "data": 2},
        {"topic": "a.y", "data": 1}, {"topic": "b.z", "data": 1},
    ]});
    let published = client.post_json("/v1/publish", &events).await?.into_ok()?;
    let (mut one, _) = WsClient::connect_json(&node).await?;
    one.sub("all-a", "a.>").await?;
    let (mut two, _) = WsClient::connect_json(&node).await?;
    two.sub("just-x", "a.x").await?;
    two.sub_group("workers", "a.*", "w").await?;

    let all = client.get("/v1/topics").await?.into_ok()?;
    let listed: Vec<(String, u64, u64)> = all["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["topic"].as_str().unwrap_or_default().to_owned(),
                t["last_seq"].as_u64().unwrap_or(0),
                t["local_subscribers"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("a.x".into(), 2, 3),
            ("a.y".into(), 1, 2),
            ("b.z".into(), 1, 0)
        ]
    );
    assert_eq!(all["topics"][0]["epoch"], published["results"][0]["epoch"]);
    assert_eq!(
        (all["more"].clone(), all["next"].clone()),
        (json!(false), Value::Null)
    );

    let page = client
        .get("/v1/topics?prefix=a.&limit=1")
        .await?
        .into_ok()?;
    assert_eq!(page["topics"][0]["topic"], "a.x");
    assert_eq!(
        (page["more"].clone(), page["next"].clone()),
        (json!(true), json!("a.x"))
    );
    let rest = client
        .get("/v1/topics?prefix=a.&limit=1&after=a.x")
        .await?
        .into_ok()?;
    assert_eq!(rest["topics"][0]["topic"], "a.y");
    assert_eq!(rest["more"], false);
    let bad = client.get("/v1/topics?limit=0").await?;
    assert_eq!((bad.status, error_code(&bad)), (400, "invalid_request"));
    Ok(())
}

fn token(user: &str, publish: &[&str], subscribe: &[&str], history: &[&str]) -> String {
    let permissions = murmur_tests::permissions(publish, subscribe, history);
    sign_token(&TokenClaims::new(
        user,
        Duration::from_secs(600),
        permissions,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_permissions_apply_as_for_websocket_clients() -> TestResult {
    let node = start_node(|s| {
        murmur_tests::token_auth(s);
        s.token_leeway = Duration::ZERO;
    })
    .await;
    let event = json!({"topic": "chat.lobby", "data": "hi"});

    let anonymous = api(&node).post_json("/v1/publish", &event).await?;
    assert_eq!(
        (anonymous.status, error_code(&anonymous)),
        (401, "unauthorized")
    );
    for path in ["/v1/topics", "/v1/history?topic=chat.lobby"] {
        let answer = api(&node).get(path).await?;
        assert_eq!(
            (answer.status, error_code(&answer)),
            (401, "unauthorized"),
            "{path}"
        );
    }
    let forged = api_with(&node, Some("not.a.token".into()))
        .post_json("/v1/publish", &event)
        .await?;
    assert_eq!((forged.status, error_code(&forged)), (401, "unauthorized"));
    let mut old = TokenClaims::new("old", Duration::from_secs(60), PermissionClaim::default());
    old.exp -= 3600;
    let expired = api_with(&node, Some(sign_token(&old)))
        .get("/v1/topics")
        .await?;
    assert_eq!(
        (expired.status, error_code(&expired)),
        (401, "token_expired")
    );

    let writer = api_with(&node, Some(token("writer", &["chat.>"], &[], &[])));
    let stored = writer.post_json("/v1/publish", &event).await?;
    assert_eq!(stored.status, 200, "{stored:?}");
    let refused = writer
        .post_json("/v1/publish", &json!({"topic": "admin.x", "data": 1}))
        .await?;
    assert_eq!((refused.status, error_code(&refused)), (403, "forbidden"));
    let mixed = writer
        .post_json(
            "/v1/publish",
            &json!({"events": [{"topic": "admin.x", "data": 1}, {"topic": "chat.dm", "data": 2}]}),
        )
        .await?
        .into_ok()?;
    assert_eq!(mixed["results"][0]["error"]["code"], "forbidden");
    assert_eq!(mixed["results"][1]["seq"], 1);
    let no_history = writer.get("/v1/history?topic=chat.lobby").await?;
    assert_eq!(
        (no_history.status, error_code(&no_history)),
        (403, "forbidden")
    );

    let reader = api_with(
        &node,
        Some(token("reader", &[], &["chat.lobby"], &["chat.>"])),
    );
    let page = reader.history("chat.lobby", &json!("earliest"), 10).await?;
    assert_eq!(page["events"][0]["data"], "hi");
    let elsewhere = reader.get("/v1/history?topic=chat.dm").await?;
    assert_eq!(
        (elsewhere.status, error_code(&elsewhere)),
        (403, "forbidden"),
        "history needs sub as well"
    );
    let listed = reader.get("/v1/topics").await?.into_ok()?;
    assert_eq!(
        listed["topics"].as_array().map(|t| t.len()),
        Some(1),
        "only what the token may subscribe to: {listed}"
    );
    assert_eq!(listed["topics"][0]["topic"], "chat.lobby");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_and_body_size_are_enforced() -> TestResult {
    let node = start_node(|s| {
        s.publish_rate = 1;
        s.publish_burst = 2;
        s.max_frame_bytes = 1024;
    })
    .await;
    let client = api(&node);
    let events: Vec<Value> = (0..4).map(|i| json!({"topic": "r", "data": i})).collect();
    let answer = client
        .post_json("/v1/publish", &json!({"events": events}))
        .await?
        .into_ok()?;
    let codes: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap_or("stored"))
        .collect();
    assert_eq!(codes, ["stored", "stored", "rate_limited", "rate_limited"]);
    let single = client
        .post_json("/v1/publish", &json!({"topic": "r", "data": 9}))
        .await?;
    assert_eq!((single.status, error_code(&single)), (429, "rate_limited"));

    let big = json!({"topic": "big", "data": "x".repeat(2000)});
    let too_large = client.post_json("/v1/publish", &big).await?;
    assert_eq!(
        (too_large.status, error_code(&too_large)),
        (413, "frame_too_large")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_history_and_publishes_of_topics_it_does_not_hold() -> TestResult {
    let nodes = start_cluster(3, |_, s| s.replication = 2).await;
    // A topic neither owned nor replicated by node-2.
    let topic = (0..1000)
        .map(|i| format!("far.{i}"))
        .find(|t| {
            let placement = nodes[0].state().cluster.placement(t);
            !placement[..2].contains(&"node-2".to_owned())
        })
        .expect("such a topic");
    let owner = nodes[0].state().cluster.placement(&topic)[0].clone();
    let events: Vec<Value> = (1..=5)
        .map(|i| json!({"topic": topic, "data": i}))
        .collect();
    let stored = api(&nodes[0])
        .post_json("/v1/publish", &json!({"events": events}))
        .await?
        .into_ok()?;
    assert_eq!(stored["results"][4]["seq"], 5, "{stored}");
    assert_eq!(
        nodes[2].state().broker.topics_known(),
        0,
        "node-2 holds nothing of {topic} (owner {owner})"
    );

    let far = api(&nodes[2]);
    let page = far.history(&topic, &json!("earliest"), 3).await?;
    assert_eq!(seqs(page["events"].as_array().unwrap()), [1, 2, 3]);
    assert_eq!(page["more"], true);
    let rest = far.history(&topic, &page["next"], 3).await?;
    assert_eq!(seqs(rest["events"].as_array().unwrap()), [4, 5]);
    assert_eq!(rest["more"], false);

    let listed = far.get("/v1/topics?prefix=far.").await?.into_ok()?;
    assert_eq!(listed["topics"][0]["topic"], json!(topic));
    assert_eq!(listed["topics"][0]["last_seq"], 5);

    let more = far
        .post_json("/v1/publish", &json!({"topic": topic, "data": 6}))
        .await?
        .into_ok()?;
    assert_eq!(more["seq"], 6, "published through node-2 to the owner");
    assert_eq!(more["epoch"], stored["results"][0]["epoch"]);
    Ok(())
}
