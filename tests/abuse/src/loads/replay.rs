//! Replays asked for and never read (6): each `sub hist.> from earliest` used to be written
//! as one unbounded frame batch that the node held until the client read it.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Conn, Ctx, Outcome, per_second};
use crate::ws::Client;

/// Events per topic: the default `history_max_events`, so every one is kept.
const EVENTS_PER_TOPIC: u64 = 1000;
const EVENT_BYTES: usize = 1024;

pub async fn never_reads(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let topics = u64::from(ctx.params.history_topics.max(1));
    let data = "h".repeat(EVENT_BYTES);

    // Setup: the history to replay, then one acknowledged publish so that it is all stored.
    let filled = Instant::now();
    let mut publisher = Conn::connect(&ctx.urls[0]).await?;
    let mut frame = |n: u64| json!({"op": "pub", "topic": format!("hist.{}", n / EVENTS_PER_TOPIC), "data": data});
    while publisher.sent < topics * EVENTS_PER_TOPIC {
        let batch = (topics * EVENTS_PER_TOPIC - publisher.sent).min(256);
        publisher.send_frames(batch, &mut frame).await?;
    }
    publisher
        .send(&json!({"op": "pub", "topic": "hist.sync", "data": 0, "ref": "sync"}))
        .await?;
    publisher.wait_for("ok", 1, Duration::from_secs(60)).await?;
    outcome.notes.push(format!(
        "history filled first: {topics} topics × {EVENTS_PER_TOPIC} events of {EVENT_BYTES} B \
         ({} MiB, stored on 2 nodes each) in {:.1} s",
        topics * EVENTS_PER_TOPIC * EVENT_BYTES as u64 / (1024 * 1024),
        filled.elapsed().as_secs_f64()
    ));

    ctx.start_load().await;
    let deadline = ctx.deadline();
    let live_sent_before = publisher.sent;
    let live = publisher.paced(
        200,
        deadline,
        |n| json!({"op": "pub", "topic": format!("hist.{}", n % topics), "data": "live"}),
    );
    let replays = async {
        let mut idle_readers = Vec::new();
        let mut failed = Vec::new();
        let mut next = 0usize;
        while Instant::now() < deadline {
            let url = &ctx.urls[next % ctx.urls.len()];
            next += 1;
            let asked = async {
                let mut client = Client::connect(url).await?;
                client
                    .send(&json!({"op": "sub", "id": "h", "topic": "hist.>", "from": "earliest"}))
                    .await?;
                anyhow::Ok(client)
            };
            match asked.await {
                // Never read again: the node holds whatever it wrote and could not send.
                Ok(client) => idle_readers.push(client),
                Err(err) => failed.push(format!("{url}: {err}")),
            }
            tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_secs(2)).into())
                .await;
        }
        (idle_readers.len(), failed)
    };
    let (live_result, (asked, failed)) = tokio::join!(live, replays);
    live_result?;
    outcome.notes.push(format!(
        "{asked} clients asked for the whole replay and never read; {} live events published meanwhile ({}/s)",
        publisher.sent - live_sent_before,
        per_second(publisher.sent - live_sent_before, ctx.seconds)
    ));
    if let Some(err) = failed.first() {
        outcome.failures.push(format!(
            "{} clients could not connect and subscribe, first: {err}",
            failed.len()
        ));
    }
    Ok(outcome)
}
