//! A workload client: a publisher or a subscriber that records everything it does and sees
//! as history lines. It runs as its own process inside the lab's client host.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use murmur::client::{Client, ResumeCursor};
use serde_json::json;

use crate::history::{Kind, Op};

/// Microseconds since the run's start `t0` (µs since the Unix epoch), on the wall clock all
/// the lab's processes share.
pub fn now_us(t0: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    now.saturating_sub(t0)
}

/// Set by [`stop`]: every client loop ends as if `until` had passed.
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Ends the workload early (on SIGTERM): a run whose faults take a varying time, such as
/// `make compose-test`, stops its publishers when the last fault is over instead of guessing
/// a length beforehand. Each client finishes the operation under way (a publish waits for
/// its answer, at most 6 s), records it and flushes its history.
pub fn stop() {
    STOPPED.store(true, Ordering::Relaxed);
}

/// Whether a client goes on: not stopped and before `until` (µs since `t0`).
fn running(t0: u64, until: u64) -> bool {
    !STOPPED.load(Ordering::Relaxed) && now_us(t0) < until
}

pub struct Recorder {
    client: String,
    t0: u64,
    out: std::io::BufWriter<std::fs::File>,
}

impl Recorder {
    pub fn create(path: &std::path::Path, client: &str, t0: u64) -> std::io::Result<Self> {
        Ok(Self {
            client: client.to_owned(),
            t0,
            out: std::io::BufWriter::new(std::fs::File::create(path)?),
        })
    }

    pub fn record(&mut self, node: &str, kind: Kind) {
        let op = Op {
            t: now_us(self.t0),
            client: self.client.clone(),
            node: node.to_owned(),
            kind,
        };
        let _ = writeln!(self.out, "{}", crate::history::line(&op));
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

fn node_of(url: &str) -> String {
    url.trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Connects to the next of `urls` (round-robin); None, after a short pause, when that node
/// does not answer.
async fn connect_next(urls: &[String], attempt: &mut usize) -> Option<(Client, String)> {
    let url = &urls[*attempt % urls.len()];
    *attempt += 1;
    match tokio::time::timeout(Duration::from_secs(2), Client::connect(url)).await {
        Ok(Ok(client)) => Some((client, node_of(url))),
        _ => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// The topics the publishers cycle through: one-token topics under `chaos.` (matched by
/// `chaos.*` and `chaos.>`) and deeper ones that only `chaos.>` and `chaos.deep.*` match, so
/// wildcard subscriptions are owed different subsets of what is published.
pub const TOPICS: [&str; 6] = [
    "chaos.t0",
    "chaos.t1",
    "chaos.t2",
    "chaos.t3",
    "chaos.deep.d0",
    "chaos.deep.d1",
];

/// How many times a publisher sends one event (with its id) before it moves on.
const MAX_ATTEMPTS: u32 = 10;

/// Publishes to [`TOPICS`] in turn with a ref and an id each, about `rate` per second,
/// until `until` (µs since t0), moving to the next URL when its node goes away. An event
/// answered `unavailable`, or whose connection ended before its answer, is sent again with
/// the same id (up to [`MAX_ATTEMPTS`] times): the owner remembers the id, so the retry gets
/// the first position if the event was stored, and the checker's `published twice` class
/// says whether it did.
pub async fn publisher(urls: &[String], id: &str, rec: &mut Recorder, until: u64, rate: u64) {
    let pause = Duration::from_micros(1_000_000 / rate.max(1));
    let mut n = 0u64;
    let mut attempt = 0usize;
    // The event being published (its id, topic and attempts so far), kept across
    // reconnections until it is answered.
    let mut current: Option<(String, String, u32)> = None;
    'connect: while running(rec.t0, until) {
        let Some((mut client, node)) = connect_next(urls, &mut attempt).await else {
            continue;
        };
        while running(rec.t0, until) {
            let (event, topic, tries) = current.get_or_insert_with(|| {
                n += 1;
                let topic = TOPICS[usize::try_from(n).unwrap_or(0) % TOPICS.len()];
                (format!("{id}-{n}"), topic.to_owned(), 0)
            });
            let (event, topic) = (event.clone(), topic.clone());
            *tries += 1;
            let last_try = *tries >= MAX_ATTEMPTS;
            if last_try {
                // Whatever happens now, the next event comes after this try.
                current = None;
            }
            rec.record(
                &node,
                Kind::PublishInvoke {
                    id: event.clone(),
                    topic: topic.clone(),
                },
            );
            let frame =
                json!({"op": "pub", "topic": topic, "data": event, "ref": event, "id": event});
            if client.send(&frame).await.is_err() {
                continue 'connect;
            }
            let answer = tokio::time::timeout(Duration::from_secs(6), async {
                loop {
                    match client.next_frame().await {
                        Ok(f) if f["ref"] == event.as_str() => return Some(f),
                        Ok(_) => {}
                        Err(_) => return None,
                    }
                }
            })
            .await;
            match answer {
                Ok(Some(f)) if f["op"] == "ok" => {
                    current = None;
                    rec.record(
                        &node,
                        Kind::PublishOk {
                            id: event,
                            topic,
                            epoch: f["epoch"].as_str().unwrap_or("").to_owned(),
                            seq: f["seq"].as_u64().unwrap_or(0),
                        },
                    );
                }
                Ok(Some(f)) => {
                    let error = f["code"].as_str().unwrap_or("").to_owned();
                    if error != "unavailable" {
                        current = None;
                    }
                    rec.record(&node, Kind::PublishFail { id: event, error });
                }
                // No answer: the outcome is unknown; sent again on the next connection.
                _ => continue 'connect,
            }
            tokio::time::sleep(pause).await;
        }
    }
    rec.flush();
}

/// Wall-clock milliseconds since the Unix epoch, the clock of an event's `ts`.
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn deliver_kind(sub: &str, frame: &serde_json::Value) -> Kind {
    Kind::Deliver {
        sub: sub.to_owned(),
        topic: frame["topic"].as_str().unwrap_or("").to_owned(),
        epoch: frame["epoch"].as_str().unwrap_or("").to_owned(),
        seq: frame["seq"].as_u64().unwrap_or(0),
        id: frame["data"].as_str().unwrap_or("").to_owned(),
        redelivered: frame["redelivered"].as_bool().unwrap_or(false),
    }
}

fn gap_kind(sub: &str, frame: &serde_json::Value) -> Kind {
    Kind::Gap {
        sub: sub.to_owned(),
        topic: frame["topic"].as_str().unwrap_or("").to_owned(),
        epoch: frame["epoch"].as_str().unwrap_or("").to_owned(),
        from_seq: frame["from_seq"].as_u64().unwrap_or(0),
        to_seq: frame["to_seq"].as_u64().unwrap_or(0),
        reason: frame["reason"].as_str().unwrap_or("").to_owned(),
    }
}

/// Subscribes to `pattern` (an exact topic or a wildcard) and records every event and gap
/// until `until`, reconnecting to the next URL and resuming from its cursor whenever its
/// connection ends. The first `sub` already carries a `from` (the topics form with `since`
/// set to the client's start), so an event published while the new interest is still on its
/// way to the topic's owner comes from history instead of being missed.
pub async fn subscriber(urls: &[String], id: &str, pattern: &str, rec: &mut Recorder, until: u64) {
    let mut cursor = ResumeCursor::starting_at(wall_ms());
    let mut subscribed = false;
    let mut attempt = 0usize;
    while running(rec.t0, until) {
        let Some((mut client, node)) = connect_next(urls, &mut attempt).await else {
            continue;
        };
        let from = cursor.to_from(pattern);
        let subscribe = tokio::time::timeout(
            Duration::from_secs(5),
            client.subscribe_from(id, pattern, None, Some(from)),
        )
        .await;
        if !matches!(subscribe, Ok(Ok(()))) {
            continue;
        }
        if !subscribed {
            subscribed = true;
            rec.record(
                &node,
                Kind::Subscribe {
                    sub: id.to_owned(),
                    pattern: pattern.to_owned(),
                    group: None,
                },
            );
        }
        while running(rec.t0, until) {
            let frame =
                match tokio::time::timeout(Duration::from_millis(500), client.next_frame()).await {
                    Ok(Ok(f)) => f,
                    Ok(Err(_)) => break,
                    Err(_) => continue,
                };
            match frame["op"].as_str() {
                Some("event") => {
                    cursor.observe(&frame);
                    rec.record(&node, deliver_kind(id, &frame));
                }
                Some("gap") => {
                    cursor.observe(&frame);
                    rec.record(&node, gap_kind(id, &frame));
                }
                _ => {}
            }
        }
        rec.flush();
    }
    rec.flush();
}

/// The `ref` of the `ping` that confirms the `ack` of `delivery`.
fn ack_probe(delivery: &str) -> String {
    format!("ack:{delivery}")
}

/// A member of queue group `group` on `pattern`: acknowledges every delivery and records the
/// deliveries (with their `redelivered` flag) and what became of each `ack`, until `until`.
/// Each `ack` is followed by a `ping`: its `pong` confirms the node took the `ack`, an
/// `unknown_delivery` error before it says the node refused it, and a connection that ends in
/// between leaves it unconfirmed. A member cannot resume, so after its connection ends it
/// joins the group again on the next node, from the live stream.
pub async fn queue_member(
    urls: &[String],
    id: &str,
    pattern: &str,
    group: &str,
    rec: &mut Recorder,
    until: u64,
) {
    let mut subscribed = false;
    let mut attempt = 0usize;
    while running(rec.t0, until) {
        let Some((mut client, node)) = connect_next(urls, &mut attempt).await else {
            continue;
        };
        let subscribe = tokio::time::timeout(
            Duration::from_secs(5),
            client.subscribe(id, pattern, Some(group)),
        )
        .await;
        if !matches!(subscribe, Ok(Ok(()))) {
            continue;
        }
        if !subscribed {
            subscribed = true;
            rec.record(
                &node,
                Kind::Subscribe {
                    sub: id.to_owned(),
                    pattern: pattern.to_owned(),
                    group: Some(group.to_owned()),
                },
            );
        }
        // Probe ref → (delivery, event id) of the acks sent and not yet confirmed.
        let mut pending: std::collections::HashMap<String, (String, String)> =
            std::collections::HashMap::new();
        while running(rec.t0, until) {
            let frame =
                match tokio::time::timeout(Duration::from_millis(500), client.next_frame()).await {
                    Ok(Ok(f)) => f,
                    Ok(Err(_)) => break,
                    Err(_) => continue,
                };
            match frame["op"].as_str() {
                Some("event") => {
                    rec.record(&node, deliver_kind(id, &frame));
                    let delivery = frame["delivery"].as_str().unwrap_or("").to_owned();
                    let event = frame["data"].as_str().unwrap_or("").to_owned();
                    let probe = ack_probe(&delivery);
                    let sent = client
                        .send(&json!({"op": "ack", "delivery": delivery}))
                        .await
                        .is_ok();
                    pending.insert(probe.clone(), (delivery, event));
                    if !sent
                        || client
                            .send(&json!({"op": "ping", "ref": probe}))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
                Some("pong") => {
                    let probe = frame["ref"].as_str().unwrap_or("");
                    if let Some((_, event)) = pending.remove(probe) {
                        rec.record(
                            &node,
                            Kind::Ack {
                                sub: id.to_owned(),
                                id: event,
                            },
                        );
                    }
                }
                Some("error") if frame["code"] == "unknown_delivery" => {
                    let probe = ack_probe(frame["ref"].as_str().unwrap_or(""));
                    if let Some((_, event)) = pending.remove(&probe) {
                        rec.record(
                            &node,
                            Kind::AckRefused {
                                sub: id.to_owned(),
                                id: event,
                            },
                        );
                    }
                }
                _ => {}
            }
        }
        for (_, (_, event)) in pending {
            rec.record(
                &node,
                Kind::AckUnconfirmed {
                    sub: id.to_owned(),
                    id: event,
                },
            );
        }
        rec.flush();
    }
    rec.flush();
}

/// Replays everything the cluster retains under `pattern` (`from: "earliest"`) and records
/// each event and gap, until nothing has come for `idle` or `until` (µs since t0) passes. A
/// replay cut off by its connection resumes from its cursor on the next node. Run after the
/// load: what it gets is what a new subscriber can still read.
pub async fn replayer(
    urls: &[String],
    id: &str,
    pattern: &str,
    rec: &mut Recorder,
    until: u64,
    idle: Duration,
) {
    let mut cursor = ResumeCursor::starting_at(0);
    let mut started = false;
    let mut attempt = 0usize;
    while running(rec.t0, until) {
        let Some((mut client, node)) = connect_next(urls, &mut attempt).await else {
            continue;
        };
        let from = if started {
            cursor.to_from(pattern)
        } else {
            json!("earliest")
        };
        let subscribe = tokio::time::timeout(
            Duration::from_secs(5),
            client.subscribe_from(id, pattern, None, Some(from)),
        )
        .await;
        if !matches!(subscribe, Ok(Ok(()))) {
            continue;
        }
        if !started {
            started = true;
            rec.record(
                &node,
                Kind::Subscribe {
                    sub: id.to_owned(),
                    pattern: pattern.to_owned(),
                    group: None,
                },
            );
        }
        while running(rec.t0, until) {
            let frame = match tokio::time::timeout(idle, client.next_frame()).await {
                Ok(Ok(f)) => f,
                Ok(Err(_)) => break,
                // Nothing more for `idle`: the replay is over.
                Err(_) => {
                    rec.flush();
                    return;
                }
            };
            match frame["op"].as_str() {
                // Recorded even when seen before: a replay that repeats itself is a finding.
                Some("event") => {
                    cursor.observe(&frame);
                    rec.record(&node, deliver_kind(id, &frame));
                }
                Some("gap") => {
                    cursor.observe(&frame);
                    rec.record(&node, gap_kind(id, &frame));
                }
                _ => {}
            }
        }
        rec.flush();
    }
    rec.flush();
}
