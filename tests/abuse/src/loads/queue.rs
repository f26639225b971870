//! Queue-group loads: a member that never reads (1), a member that never acks (2), and a
//! group whose every member is at its unacked bound, so no member can take an event (7).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Conn, Ctx, Outcome, describe_counts, per_second};
use crate::cluster::topic_owned_by;
use crate::ws::Client;

const OWNER: usize = 0;
const MEMBER_NODE: usize = 1;

fn group_sub() -> serde_json::Value {
    json!({"op": "sub", "id": "w", "topic": "jobs.>", "group": "workers"})
}

/// Time for a new subscription's interest to reach the owner on another node.
const INTEREST_SPREAD: Duration = Duration::from_millis(500);

/// Publishes at `rate` into `topic` on the owner until the deadline; the publishing
/// connection must still be served afterwards.
async fn publish_into_owner(
    ctx: &Ctx,
    publisher: &mut Conn,
    topic: &str,
    rate: u32,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let started = Instant::now();
    publisher
        .paced(
            rate,
            ctx.deadline(),
            |i| json!({"op": "pub", "topic": topic, "data": i}),
        )
        .await?;
    outcome.notes.push(format!(
        "published {} events into the owner n1 ({}/s of {rate}/s asked)",
        publisher.sent,
        per_second(publisher.sent, started.elapsed())
    ));
    if let Err(err) = publisher.ping().await {
        outcome.failures.push(format!(
            "the publisher's connection to n1 is no longer served: {err}"
        ));
    }
    let answers = publisher.answers_text();
    if !answers.is_empty() {
        outcome
            .notes
            .push(format!("the publisher was answered: {answers}"));
    }
    Ok(())
}

pub async fn never_reads(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let topic = topic_owned_by("jobs.", OWNER);
    let mut first = Client::connect(&ctx.urls[MEMBER_NODE]).await?;
    first.subscribe(group_sub()).await?;
    tokio::time::sleep(INTEREST_SPREAD).await;
    let mut publisher = Conn::connect(&ctx.urls[OWNER]).await?;
    ctx.start_load().await;
    let deadline = ctx.deadline();

    // The node closes a member that does not read (a stalled write) as a slow consumer; an
    // attacker reconnects, so a fresh one joins every 5 s. Held without ever being read.
    let rotate = async {
        let mut members = VecDeque::from([first]);
        let (mut opened, mut failed) = (1u32, Vec::new());
        while Instant::now() + Duration::from_secs(5) < deadline {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let joined = async {
                let mut member = Client::connect(&ctx.urls[MEMBER_NODE]).await?;
                member.subscribe(group_sub()).await?;
                anyhow::Ok(member)
            };
            match joined.await {
                Ok(member) => {
                    opened += 1;
                    members.push_back(member);
                    if members.len() > 4 {
                        members.pop_front();
                    }
                }
                Err(err) => failed.push(err.to_string()),
            }
        }
        (opened, failed)
    };
    let publish = publish_into_owner(
        ctx,
        &mut publisher,
        &topic,
        ctx.params.queue_rate,
        &mut outcome,
    );
    let ((opened, failed), published) = tokio::join!(rotate, publish);
    published?;
    outcome
        .notes
        .push(format!("{opened} never-reading members joined on n2"));
    if let Some(err) = failed.first() {
        outcome.failures.push(format!(
            "{} of the members that tried could not join n2, first: {err}",
            failed.len()
        ));
    }
    Ok(outcome)
}

pub async fn never_acks(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let topic = topic_owned_by("jobs.", OWNER);
    let mut member = Conn::connect(&ctx.urls[MEMBER_NODE]).await?;
    member.subscribe(&group_sub()).await?;
    tokio::time::sleep(INTEREST_SPREAD).await;
    let mut publisher = Conn::connect(&ctx.urls[OWNER]).await?;
    ctx.start_load().await;
    publish_into_owner(
        ctx,
        &mut publisher,
        &topic,
        ctx.params.queue_rate,
        &mut outcome,
    )
    .await?;
    let held = member.count("event") + member.count("event(redelivered)");
    outcome.notes.push(format!(
        "the member on n2 read {held} deliveries and acked none ({})",
        member.answers_text()
    ));
    if member.closed() {
        outcome
            .notes
            .push("the node closed the never-acking member's connection".to_owned());
    }
    Ok(outcome)
}

pub async fn no_member_can_take(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let topic = topic_owned_by("jobs.", OWNER);
    let mut members = Vec::new();
    for url in &ctx.urls {
        let mut member = Conn::connect(url).await?;
        member.subscribe(&group_sub()).await?;
        members.push(member);
    }
    tokio::time::sleep(INTEREST_SPREAD).await;
    let mut publisher = Conn::connect(&ctx.urls[OWNER]).await?;
    ctx.start_load().await;
    publish_into_owner(
        ctx,
        &mut publisher,
        &topic,
        ctx.params.group_rate,
        &mut outcome,
    )
    .await?;
    let held: Vec<String> = members
        .iter()
        .zip(["n1", "n2", "n3"])
        .map(|(member, node)| {
            let answers = member
                .answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            format!("{node}: {}", describe_counts(&answers))
        })
        .collect();
    outcome.notes.push(format!(
        "members (reading, never acking) got: {}",
        held.join("; ")
    ));
    Ok(outcome)
}
