//! NATS JetStream as the peer with the same guarantee as Murmur's acknowledged publishing:
//! a publish is answered once it is stored on its replicas.
//!
//! - `--system jetstream-mem` / `--system jetstream-file`: a stream with
//!   [`STREAM_REPLICAS`] replicas in memory or in files, created for the run (one per
//!   scenario, over every subject the scenario uses, `bench_fanout` or `bench_topics`) and
//!   deleted after it. The servers need JetStream enabled (`jetstream { ... }` in each
//!   server's config, as `bench/run.sh` writes it).
//! - Publishing: `PUB <subject> <reply-inbox>`; the server answers on the inbox with a PubAck
//!   (`{"stream":…,"seq":…}`) or an error (`{"error":{…}}`), which counts as Murmur's `ok` or
//!   `error` does, with the same window of publishes in flight (`crate::acked`).
//! - Subscribing: an ephemeral push consumer per subscriber (`deliver_subject` an inbox the
//!   connection subscribed to, `deliver_policy: new`, `ack_policy: none`, filtered to the
//!   subscriber's topic), so every subscriber gets every message the stream stored after it
//!   subscribed; consumer state in memory and on one server (it holds no acks to replicate).
//!   With `--jetstream-subscribers core`, a core NATS subscription on the topic instead: the
//!   live copy of each publish, as core NATS delivers it, while the stream stores it (no
//!   consumer per subscriber, nothing to resume from).
//!
//! Everything goes through the JetStream API subjects (`$JS.API.…`) as request and reply on
//! the NATS text protocol: no client library, as for core NATS (`crate::nats`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use serde_json::{Value, json};

use crate::client::{Conn, Incoming, Target};
use crate::nats;

/// Replicas of every stream: as Murmur's default `replication = 2` (the owner and one more).
pub const STREAM_REPLICAS: usize = 2;

/// How long one JetStream API request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long creating the stream is retried: right after the servers start, the cluster
/// elects its JetStream meta leader first and answers "temporarily unavailable" till then.
const CREATE_RETRY_FOR: Duration = Duration::from_secs(30);

/// The JetStream error code for "stream not found" (deleting a stream that is not there).
const STREAM_NOT_FOUND: u64 = 10059;

/// How a JetStream subscriber receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Subscribers {
    /// An ephemeral push consumer per subscriber: every stored message, from the stream.
    #[default]
    Consumer,
    /// A core NATS subscription on the topic: the live copy of every publish.
    Core,
}

/// Per-run settings of the JetStream targets.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JetStreamOptions {
    /// JetStream only: how subscribers receive, through a push consumer each (`consumer`) or
    /// through a core NATS subscription on the stream's subject (`core`).
    #[arg(long, value_enum, default_value_t)]
    pub jetstream_subscribers: Subscribers,
}

impl JetStreamOptions {
    /// What distinguishes this mode in reports: empty for consumers, `-core-sub` otherwise.
    pub fn variant(&self) -> &'static str {
        match self.jetstream_subscribers {
            Subscribers::Consumer => "",
            Subscribers::Core => "-core-sub",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Memory,
    File,
}

impl Storage {
    fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::File => "file",
        }
    }
}

/// The stream that holds `subject`: named after its first two tokens (`bench.topics.7` and
/// `bench.topics.*` → `bench_topics`), so a scenario's subscribers find the stream the
/// scenario created without being told.
pub fn stream_name(subject: &str) -> String {
    subject
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join("_")
        .replace(['*', '>'], "")
}

/// An answer on a reply inbox: a PubAck or an API response is [`Incoming::Ok`], anything
/// with an `error` (or that is not JSON) is [`Incoming::Error`] with the answer verbatim.
pub fn decode_reply(payload: &[u8]) -> Incoming {
    let text = String::from_utf8_lossy(payload);
    match serde_json::from_slice::<Value>(payload) {
        Ok(answer) if answer.get("error").is_none() => Incoming::Ok { reference: None },
        _ => Incoming::Error(text.into_owned()),
    }
}

/// A JetStream API request on `conn`: the answer, or the error it carried.
async fn request(conn: &mut Conn, subject: &str, body: &Value) -> anyhow::Result<Incoming> {
    let inbox = conn.reply_inbox().await?;
    conn.send(nats::publish(
        subject,
        Some(&inbox),
        body.to_string().as_bytes(),
    ))
    .await?;
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        conn.wait_for(|i| matches!(i, Incoming::Ok { .. } | Incoming::Error(_))),
    )
    .await
    .with_context(|| {
        format!("no answer to {subject} within {REQUEST_TIMEOUT:?}: is JetStream enabled?")
    })?
}

/// The JetStream error code in an error answer.
fn error_code(answer: &str) -> Option<u64> {
    serde_json::from_str::<Value>(answer).ok()?["error"]["err_code"].as_u64()
}

/// A stream created for one run; [`Stream::delete`] it afterwards.
pub struct Stream {
    conn: Conn,
    name: String,
}

impl Stream {
    /// For a JetStream target, (re)creates the stream over `subjects` through the node at
    /// `url`; `None` for the other systems. A stream of the same name left over from an
    /// interrupted run is deleted first, so every run starts empty.
    pub async fn create_for(
        target: &Target,
        url: &str,
        subjects: &[&str],
    ) -> anyhow::Result<Option<Self>> {
        let Some(storage) = target.system.jetstream_storage() else {
            return Ok(None);
        };
        let name = stream_name(subjects.first().context("a subject for the stream")?);
        let mut conn = Conn::connect(target, url).await?;
        let config = json!({
            "name": name,
            "subjects": subjects,
            "storage": storage.as_str(),
            "num_replicas": STREAM_REPLICAS,
            "retention": "limits",
            "discard": "old",
        });
        let (delete, create) = (
            format!("$JS.API.STREAM.DELETE.{name}"),
            format!("$JS.API.STREAM.CREATE.{name}"),
        );
        let deadline = Instant::now() + CREATE_RETRY_FOR;
        loop {
            let refused = match request(&mut conn, &delete, &json!({})).await? {
                Incoming::Error(e) if error_code(&e) != Some(STREAM_NOT_FOUND) => {
                    format!("deleting the stream left over from an earlier run: {e}")
                }
                _ => match request(&mut conn, &create, &config).await? {
                    Incoming::Error(e) => format!("creating it: {e}"),
                    _ => return Ok(Some(Self { conn, name })),
                },
            };
            if Instant::now() > deadline {
                bail!("JetStream stream {name}: {refused}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deletes the stream (and with it every consumer on it).
    pub async fn delete(mut self) -> anyhow::Result<()> {
        let subject = format!("$JS.API.STREAM.DELETE.{}", self.name);
        match request(&mut self.conn, &subject, &json!({})).await? {
            Incoming::Error(e) => bail!("JetStream did not delete stream {}: {e}", self.name),
            _ => Ok(()),
        }
    }
}

/// Subscribes `conn` to `topic` through an ephemeral push consumer on the topic's stream,
/// delivering to an inbox the connection subscribed to first; returns once the consumer
/// exists, so every message stored from then on reaches this connection. With
/// [`Subscribers::Core`], a core subscription on the topic instead.
pub async fn subscribe(
    conn: &mut Conn,
    topic: &str,
    subscribers: Subscribers,
) -> anyhow::Result<()> {
    if subscribers == Subscribers::Core {
        conn.send(nats::sub(topic, None, 1).into_bytes()).await?;
        return conn.round_trip().await;
    }
    let stream = stream_name(topic);
    let deliver = nats::new_inbox();
    conn.send(nats::sub(&deliver, None, 1).into_bytes()).await?;
    let consumer = json!({
        "stream_name": stream,
        "config": {
            "deliver_subject": deliver,
            "deliver_policy": "new",
            "ack_policy": "none",
            "filter_subject": topic,
            "num_replicas": 1,
            "mem_storage": true,
        },
    });
    match request(
        conn,
        &format!("$JS.API.CONSUMER.CREATE.{stream}"),
        &consumer,
    )
    .await?
    {
        Incoming::Error(e) => bail!("JetStream refused a consumer on {stream} for {topic}: {e}"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_stream_after_the_subjects_first_two_tokens() {
        assert_eq!(stream_name("bench.fanout"), "bench_fanout");
        assert_eq!(stream_name("bench.topics.17"), "bench_topics");
        assert_eq!(stream_name("bench.topics.*"), "bench_topics");
    }

    #[test]
    fn reads_pub_acks_and_errors() {
        assert_eq!(
            decode_reply(br#"{"stream":"bench_fanout","seq":7}"#),
            Incoming::Ok { reference: None }
        );
        let refused = r#"{"type":"io.nats.jetstream.api.v1.stream_create_response","error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}"#;
        assert_eq!(
            decode_reply(refused.as_bytes()),
            Incoming::Error(refused.to_owned())
        );
        assert_eq!(error_code(refused), Some(10008));
        assert_eq!(
            decode_reply(b"not json"),
            Incoming::Error("not json".to_owned())
        );
    }
}
