//! Publish floods: into a node that does not own the topics (3), subscriptions with huge
//! ids (4), and many distinct topics (5).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Conn, Ctx, Outcome, describe_counts, per_second};
use crate::cluster::topic_owned_by;
use crate::ws::Client;

const ENTRY: usize = 0;
const OWNER: usize = 1;

pub async fn into_non_owner(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let topics: Vec<String> = (0..4)
        .map(|i| topic_owned_by(&format!("flood.{i}."), OWNER))
        .collect();
    let mut publishers = Vec::new();
    for _ in &topics {
        publishers.push(Conn::connect(&ctx.urls[ENTRY]).await?);
    }
    let size = ctx.params.flood_event_bytes;
    let data = "x".repeat(size);
    ctx.start_load().await;
    let started = Instant::now();
    let deadline = ctx.deadline();
    let floods = publishers
        .iter_mut()
        .zip(&topics)
        .map(|(publisher, topic)| {
            let data = &data;
            publisher.flood(
                deadline,
                move |_| json!({"op": "pub", "topic": topic, "data": data}),
            )
        });
    for result in futures_util::future::join_all(floods).await {
        result?;
    }
    let sent: u64 = publishers.iter().map(|p| p.sent).sum();
    outcome.notes.push(format!(
        "n1 read {sent} publishes of {size} B ({}/s, {} MiB/s) for topics n2 owns",
        per_second(sent, started.elapsed()),
        per_second(sent * size as u64, started.elapsed()) / (1024 * 1024)
    ));
    let mut answers = BTreeMap::new();
    for publisher in &mut publishers {
        if let Err(err) = publisher.ping().await {
            outcome.failures.push(format!(
                "a publisher's connection to n1 is no longer served: {err}"
            ));
        }
        for (kind, n) in publisher
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            *answers.entry(kind.clone()).or_insert(0) += n;
        }
    }
    outcome.notes.push(format!(
        "the publishers were answered: {}",
        describe_counts(&answers)
    ));
    Ok(outcome)
}

/// Just under the default `max_frame_bytes` (1 MiB) with the rest of the `sub` frame, so
/// it is the id that is refused, not the frame.
const HUGE_ID_BYTES: usize = 1_000_000;

pub async fn huge_ids(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut clients = Vec::new();
    for node in [0, 1, 2, 0] {
        clients.push(Client::connect(&ctx.urls[node]).await?);
    }
    let filler = "i".repeat(HUGE_ID_BYTES - 10);
    ctx.start_load().await;
    let deadline = ctx.deadline();
    let subscribe_over_and_over = clients.iter_mut().enumerate().map(|(c, client)| {
        let filler = &filler;
        async move {
            let mut answers: BTreeMap<String, u64> = BTreeMap::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let id = format!("{c}{i:09}{filler}");
                let frame = json!({"op": "sub", "id": id, "topic": "ids.t"});
                // The refusal cannot name the id (the node does not echo what it refuses to
                // keep): the next frame is the answer.
                client.send(&frame).await?;
                let answer = tokio::time::timeout(Duration::from_secs(10), client.recv())
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("no answer to a sub with a 1 MB id within 10 s")
                    })??;
                let kind = match answer["op"].as_str() {
                    Some("error") => format!("error:{}", answer["code"].as_str().unwrap_or("?")),
                    Some(op) => op.to_owned(),
                    None => "unreadable".to_owned(),
                };
                *answers.entry(kind).or_insert(0) += 1;
                i += 1;
            }
            anyhow::Ok(answers)
        }
    });
    let mut answers = BTreeMap::new();
    let mut broken = Vec::new();
    for result in futures_util::future::join_all(subscribe_over_and_over).await {
        match result {
            Ok(counts) => {
                for (kind, n) in counts {
                    *answers.entry(kind).or_insert(0) += n;
                }
            }
            Err(err) => broken.push(err.to_string()),
        }
    }
    let asked: u64 = answers.values().sum();
    outcome.notes.push(format!(
        "{asked} subscriptions with 1 MB ids asked, answered: {}",
        describe_counts(&answers)
    ));
    if let Some(accepted) = answers.get("ok") {
        outcome.failures.push(format!(
            "{accepted} subscriptions with 1 MB ids were accepted"
        ));
    }
    if let Some(err) = broken.first() {
        outcome.failures.push(format!(
            "{} connections ended while being refused (the connection should stay): {err}",
            broken.len()
        ));
    }
    Ok(outcome)
}

pub async fn many_topics(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut publishers = Vec::new();
    for url in &ctx.urls {
        publishers.push(Conn::connect(url).await?);
    }
    let rate = ctx.params.topic_rate / 3;
    ctx.start_load().await;
    let started = Instant::now();
    let deadline = ctx.deadline();
    let floods = publishers.iter_mut().enumerate().map(|(node, publisher)| {
        publisher.paced(
            rate,
            deadline,
            move |i| json!({"op": "pub", "topic": format!("many.{node}.{i}"), "data": 1}),
        )
    });
    for result in futures_util::future::join_all(floods).await {
        result?;
    }
    let elapsed = started.elapsed();
    // Every publish read and routed before the baseline is compared with what is left.
    for publisher in &mut publishers {
        let oks = publisher.count("ok");
        publisher
            .send(&json!({"op": "pub", "topic": "many.sync", "data": 0, "ref": "sync"}))
            .await?;
        if let Err(err) = publisher
            .wait_for("ok", oks + 1, Duration::from_secs(60))
            .await
        {
            outcome.failures.push(format!(
                "a publisher's last publish was not answered: {err}"
            ));
        }
    }
    let topics: u64 = publishers.iter().map(|p| p.sent).sum();
    outcome.notes.push(format!(
        "{topics} distinct topics published once each, a third into each node ({}/s of {} asked)",
        per_second(topics, elapsed),
        ctx.params.topic_rate,
    ));
    outcome.topics_published = Some(topics);
    Ok(outcome)
}
