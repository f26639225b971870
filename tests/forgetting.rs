//! Bounded topic bookkeeping: a node forgets topics that have been quiet for
//! `topic_idle_forget` (and for their history's `max_age`), and the gap guarantee holds
//! across it — a cursor of a forgotten topic gets an explicit `epoch_changed` gap, never
//! silence and never the old epoch restarted from 1.

use std::time::Duration;

use murmur::RunningNode;
use murmur_tests::{WsClient, recv_n, seqs, start_cluster, start_node, wait_until};
use serde_json::{Value, json};

type TestResult = anyhow::Result<()>;

/// The value of the metric `name` (an unlabelled gauge) from the node's `/metrics`.
async fn metric(node: &RunningNode, name: &str) -> anyhow::Result<f64> {
    let text =
        murmur::client::http_get(&format!("http://{}", node.admin_addr()), "/metrics").await?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok()).flatten()
        })
        .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))
}

/// Waits until the node's `murmur_topics` gauge reads `count`.
async fn wait_for_topics(node: &RunningNode, count: f64, limit: Duration) -> TestResult {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let topics = metric(node, "murmur_topics").await?;
        if topics == count {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "murmur_topics still {topics} after {limit:?}, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn quick_forgetting(settings: &mut murmur::Settings) {
    settings.history_max_age = Duration::from_secs(1);
    settings.topic_idle_forget = Duration::from_secs(1);
}

fn epoch_of(ok: &Value) -> String {
    ok["epoch"]
        .as_str()
        .expect("an ok with an epoch")
        .to_owned()
}

/// Asserts that `frame` is an `epoch_changed` gap for `topic` from `from_seq` of `epoch`.
fn assert_epoch_changed(frame: &Value, topic: &str, epoch: &str, from_seq: u64) {
    assert_eq!(
        (
            &frame["op"],
            &frame["topic"],
            &frame["epoch"],
            &frame["from_seq"],
            &frame["to_seq"],
            &frame["reason"]
        ),
        (
            &json!("gap"),
            &json!(topic),
            &json!(epoch),
            &json!(from_seq),
            &json!(0),
            &json!("epoch_changed")
        ),
        "{frame}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_topics_are_forgotten_once_their_history_expired() -> TestResult {
    let node = start_node(|s| {
        s.history_max_age = Duration::from_secs(1);
        // Long enough to count them all before the first is forgotten.
        s.topic_idle_forget = Duration::from_secs(6);
    })
    .await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    const TOPICS: usize = 10_000;
    for n in 0..TOPICS {
        publisher
            .send_json(json!({"op": "pub", "topic": format!("many.{n}"), "data": n}))
            .await?;
    }
    publisher.ping("all-sent").await?;
    assert_eq!(metric(&node, "murmur_topics").await?, TOPICS as f64);

    // Their events expire after a second, and the topics are forgotten once quiet for 6 s.
    wait_for_topics(&node, 0.0, Duration::from_secs(20)).await?;
    assert_eq!(metric(&node, "murmur_history_topics").await?, 0.0);
    assert_eq!(metric(&node, "murmur_history_events").await?, 0.0);

    // A topic published again is remembered again.
    publisher.publish("many.7", json!("again"), "again").await?;
    assert_eq!(metric(&node, "murmur_topics").await?, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_a_forgotten_topics_cursor_gets_an_epoch_changed_gap() -> TestResult {
    let node = start_node(quick_forgetting).await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    let mut last_ok = Value::Null;
    for i in 1..=3 {
        (last_ok, _) = publisher
            .publish("gone.a", json!(i), &format!("a{i}"))
            .await?;
    }
    let epoch_a = epoch_of(&last_ok);
    let (ok_b, _) = publisher.publish("gone.b", json!(1), "b1").await?;
    let epoch_b = epoch_of(&ok_b);
    wait_for_topics(&node, 0.0, Duration::from_secs(10)).await?;

    // An exact topic's cursor: the gap, alone.
    let (mut resumer, _) = WsClient::connect_json(&node).await?;
    let ok = resumer
        .request(json!({"op": "sub", "id": "a", "topic": "gone.a",
            "from": {"epoch": epoch_a, "seq": 3}}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_epoch_changed(&resumer.recv_json().await?, "gone.a", &epoch_a, 4);
    resumer.ping("nothing-else").await?;

    // A wildcard's cursors: one gap per topic.
    let ok = resumer
        .request(json!({"op": "sub", "id": "w", "topic": "gone.*",
            "from": {"topics": {"gone.a": {"epoch": epoch_a, "seq": 3},
                                "gone.b": {"epoch": epoch_b, "seq": 1}},
                     "since": 0}}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    let mut gaps = [resumer.recv_json().await?, resumer.recv_json().await?];
    gaps.sort_by_key(|g| g["topic"].as_str().unwrap_or_default().to_owned());
    assert_epoch_changed(&gaps[0], "gone.a", &epoch_a, 4);
    assert_epoch_changed(&gaps[1], "gone.b", &epoch_b, 2);
    resumer.ping("nothing-more").await?;

    // Published again: a new epoch from 1, never the old one restarted; a resume from the old
    // cursor gets the gap, then the new epoch.
    let (again, _) = publisher.publish("gone.a", json!(4), "a4").await?;
    let new_epoch = epoch_of(&again);
    assert_ne!(new_epoch, epoch_a);
    assert_eq!(again["seq"], 1);
    let (mut later, _) = WsClient::connect_json(&node).await?;
    let ok = later
        .request(json!({"op": "sub", "id": "a", "topic": "gone.a",
            "from": {"epoch": epoch_a, "seq": 3}}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_epoch_changed(&later.recv_json().await?, "gone.a", &epoch_a, 4);
    let event = later.recv_json().await?;
    assert_eq!(
        (&event["epoch"], &event["seq"], &event["data"]),
        (&json!(new_epoch), &json!(1), &json!(4))
    );
    Ok(())
}

/// A live subscriber keeps its last position of a topic; when the topic is forgotten and
/// published again, the new epoch's first event does not follow that position: the
/// subscriber is told to resync, and its resume names what it cannot know with a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_across_a_forget_and_republish_resyncs_then_gets_the_gap() -> TestResult {
    let node = start_node(quick_forgetting).await;
    let (mut subscriber, _) = WsClient::connect_json(&node).await?;
    subscriber.sub("s", "live.t").await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    publisher.publish("live.t", json!(1), "p1").await?;
    let (ok, _) = publisher.publish("live.t", json!(2), "p2").await?;
    let old_epoch = epoch_of(&ok);
    assert_eq!(seqs(&recv_n(&mut subscriber, 2).await?), [1, 2]);

    wait_for_topics(&node, 0.0, Duration::from_secs(10)).await?;
    let (again, _) = publisher.publish("live.t", json!(3), "p3").await?;
    let new_epoch = epoch_of(&again);
    assert_ne!(new_epoch, old_epoch);
    let notice = subscriber.recv_json().await?;
    assert_eq!(notice["code"], "resync", "not a silent skip: {notice}");

    let (mut resumed, _) = WsClient::connect_json(&node).await?;
    let ok = resumed
        .request(json!({"op": "sub", "id": "s", "topic": "live.t",
            "from": {"epoch": old_epoch, "seq": 2}}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_epoch_changed(&resumed.recv_json().await?, "live.t", &old_epoch, 3);
    let event = resumed.recv_json().await?;
    assert_eq!(
        (&event["epoch"], &event["seq"], &event["data"]),
        (&json!(new_epoch), &json!(1), &json!(3))
    );
    Ok(())
}

/// The owner forgot a topic, its replica did not yet: the owner's claim takes the replica's
/// position and the epoch goes on, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_forgot_a_topic_continues_from_what_its_replica_remembers() -> TestResult {
    // node-2 forgets after a second; the others keep topics for the default 15 minutes.
    let nodes = start_cluster(3, |i, s| {
        s.history_max_age = Duration::from_secs(1);
        if i == 2 {
            s.topic_idle_forget = Duration::from_secs(1);
        }
    })
    .await;
    let topic = (0..)
        .map(|n| format!("claimed.{n}"))
        .find(|t| {
            nodes[0]
                .state()
                .cluster
                .placement(t)
                .first()
                .map(String::as_str)
                == Some("node-2")
        })
        .expect("some topic is owned by node-2");
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let mut ok = Value::Null;
    for i in 1..=3 {
        (ok, _) = publisher
            .publish(&topic, json!(i), &format!("p{i}"))
            .await?;
    }
    let epoch = epoch_of(&ok);
    let owner = &nodes[2];
    wait_until(
        "the owner forgot the topic",
        Duration::from_secs(10),
        || owner.state().broker.topics_known() == 0,
    )
    .await;

    let (again, _) = publisher.publish(&topic, json!(4), "p4").await?;
    assert_eq!(
        (epoch_of(&again), &again["seq"]),
        (epoch.clone(), &json!(4)),
        "the replica's position wins: {again}"
    );
    let (mut resumer, _) = WsClient::connect_json(&nodes[1]).await?;
    let ok = resumer
        .request(json!({"op": "sub", "id": "r", "topic": topic,
            "from": {"epoch": epoch, "seq": 3}}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    let event = resumer.recv_json().await?;
    assert_eq!(
        (&event["seq"], &event["data"]),
        (&json!(4), &json!(4)),
        "{event}"
    );
    Ok(())
}

/// Every node forgot the topic: a resume on any of them gets the gap, and the next publish
/// starts a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_forgotten_by_every_node_starts_a_new_epoch_and_resumes_get_the_gap() -> TestResult
{
    let nodes = start_cluster(3, |_, s| quick_forgetting(s)).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    publisher.publish("everywhere.t", json!(1), "p1").await?;
    let (ok, _) = publisher.publish("everywhere.t", json!(2), "p2").await?;
    let epoch = epoch_of(&ok);
    wait_until(
        "every node forgot the topic",
        Duration::from_secs(10),
        || nodes.iter().all(|n| n.state().broker.topics_known() == 0),
    )
    .await;

    let (mut resumer, _) = WsClient::connect_json(&nodes[1]).await?;
    let ok = resumer
        .request(json!({"op": "sub", "id": "r", "topic": "everywhere.t",
            "from": {"epoch": epoch, "seq": 2}}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_epoch_changed(&resumer.recv_json().await?, "everywhere.t", &epoch, 3);

    let (again, _) = publisher.publish("everywhere.t", json!(3), "p3").await?;
    assert_ne!(epoch_of(&again), epoch);
    assert_eq!(again["seq"], 1);
    Ok(())
}

/// A wildcard subscriber forgets the positions of topics long quiet (its memory would
/// otherwise grow with every topic it ever saw). A topic that goes on publishing is kept
/// across those rotations: its events keep flowing with no false resync, and a quiet one
/// that comes back later is taken up again as a new topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_subscriber_forgets_quiet_topics_without_a_false_resync() -> TestResult {
    let node = start_node(|s| s.topic_idle_forget = Duration::from_secs(1)).await;
    let (mut subscriber, _) = WsClient::connect_json(&node).await?;
    subscriber.sub("w", "wild.>").await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    publisher.publish("wild.quiet", json!(0), "q1").await?;
    let mut expected = vec![("wild.quiet".to_owned(), 1)];
    // 10 s: two rotations of the subscriber's memory (every 4 s) and the busy topic's
    // history kept throughout (history_max_age is 10 minutes).
    for i in 1..=20u64 {
        publisher
            .publish("wild.busy", json!(i), &format!("b{i}"))
            .await?;
        expected.push(("wild.busy".to_owned(), i));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, _) = publisher.publish("wild.quiet", json!(1), "q2").await?;
    expected.push(("wild.quiet".to_owned(), ok["seq"].as_u64().unwrap()));
    let got: Vec<(String, u64)> = recv_n(&mut subscriber, expected.len())
        .await?
        .iter()
        .map(|e| {
            assert_eq!(e["op"], "event", "no resync or error: {e}");
            (
                e["topic"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    subscriber.ping("end").await?;
    Ok(())
}
