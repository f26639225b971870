//! What `murmur pub` does: publishes events with a `ref` and an `id` each, keeps up to a
//! window of them in flight, and sends one again — with the same `id` — when the node
//! answers `unavailable` or the connection is lost before its `ok`. The topic's owner
//! remembers ids for `dedupe_window`, so a publish sent again that was stored the first time
//! gets the first `epoch`/`seq` instead of becoming a second event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::client::{Client, ClientError};

/// How many publishes wait for their `ok` at most.
const WINDOW: usize = 1000;
/// How long a publish may go without an answer before the connection is given up as lost:
/// past the node's own bound (5 s) on a publish's outcome.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The first pause before sending again; doubled each time, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Where and how to publish.
#[derive(Clone)]
pub struct PublishOptions {
    pub url: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub token: Option<String>,
    /// How many times one event is sent again (after `unavailable` or a lost connection)
    /// before it is given up.
    pub retries: u32,
}

/// Where an event landed, or why it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored { id: String, epoch: String, seq: u64 },
    Refused { id: String, error: String },
}

struct InFlight {
    frame: Value,
    id: String,
    /// Times sent so far.
    sent: u32,
}

/// Publishes events to one topic over one connection, reconnecting when it is lost.
pub struct Publisher {
    options: PublishOptions,
    topic: String,
    client: Option<Client>,
    next_ref: u64,
    in_flight: BTreeMap<u64, InFlight>,
    outcomes: Vec<Outcome>,
    /// Consecutive failures to reach the node, for the pause before the next try.
    failures: u32,
}

impl Publisher {
    /// Connects (once: a node that cannot be reached at all is an error at once).
    pub async fn connect(options: PublishOptions, topic: &str) -> Result<Self, ClientError> {
        let mut publisher = Self {
            options,
            topic: topic.to_owned(),
            client: None,
            next_ref: 1,
            in_flight: BTreeMap::new(),
            outcomes: Vec::new(),
            failures: 0,
        };
        publisher.client = Some(publisher.dial().await?);
        Ok(publisher)
    }

    async fn dial(&self) -> Result<Client, ClientError> {
        let mut client = Client::connect_with(&self.options.url, self.options.tls.clone()).await?;
        if let Some(token) = &self.options.token {
            client.authenticate(token).await?;
        }
        Ok(client)
    }

    /// Sends `data` with idempotency key `id`; waits for answers first while the window is
    /// full.
    pub async fn publish(&mut self, data: Value, id: String) -> Result<(), ClientError> {
        while self.in_flight.len() >= WINDOW {
            self.settle_one().await?;
        }
        let reference = self.next_ref;
        self.next_ref += 1;
        let frame = json!({
            "op": "pub",
            "topic": self.topic,
            "data": data,
            "ref": reference.to_string(),
            "id": id,
        });
        self.in_flight
            .insert(reference, InFlight { frame, id, sent: 0 });
        self.send(reference).await
    }

    /// Waits for every answer; returns each event's outcome, in the order published.
    pub async fn finish(mut self) -> Result<Vec<Outcome>, ClientError> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok(self.outcomes)
    }

    /// Sends the event under `reference` (again); a connection lost meanwhile is dealt with
    /// when answers are awaited.
    async fn send(&mut self, reference: u64) -> Result<(), ClientError> {
        let Some(entry) = self.in_flight.get_mut(&reference) else {
            return Ok(());
        };
        entry.sent += 1;
        let frame = entry.frame.clone();
        if let Some(client) = self.client.as_mut()
            && client.send(&frame).await.is_err()
        {
            self.client = None;
        }
        Ok(())
    }

    /// Takes one answer (or deals with a lost connection).
    async fn settle_one(&mut self) -> Result<(), ClientError> {
        let Some(client) = self.client.as_mut() else {
            return self.reconnect().await;
        };
        let frame = match tokio::time::timeout(ANSWER_TIMEOUT, client.next_frame()).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(err)) => {
                tracing::warn!(%err, "connection lost; publishing again what was not confirmed");
                self.client = None;
                return self.reconnect().await;
            }
            Err(_) => {
                tracing::warn!("no answer in {ANSWER_TIMEOUT:?}; reconnecting");
                self.client = None;
                return self.reconnect().await;
            }
        };
        let Some(reference) = frame["ref"].as_str().and_then(|r| r.parse::<u64>().ok()) else {
            return Ok(());
        };
        match frame["op"].as_str() {
            Some("ok") => {
                if let Some(entry) = self.in_flight.remove(&reference) {
                    self.failures = 0;
                    self.outcomes.push(Outcome::Stored {
                        id: entry.id,
                        epoch: frame["epoch"].as_str().unwrap_or("").to_owned(),
                        seq: frame["seq"].as_u64().unwrap_or(0),
                    });
                }
            }
            Some("error") if frame["code"] == "unavailable" => {
                let gave_up = self
                    .in_flight
                    .get(&reference)
                    .is_some_and(|e| e.sent > self.options.retries);
                if gave_up {
                    self.give_up(reference, &frame);
                } else {
                    tracing::info!(
                        reference,
                        "unavailable; publishing it again with the same id"
                    );
                    let sent = self.in_flight.get(&reference).map_or(1, |e| e.sent);
                    tokio::time::sleep(pause(sent)).await;
                    self.send(reference).await?;
                }
            }
            Some("error") => self.give_up(reference, &frame),
            _ => {}
        }
        Ok(())
    }

    fn give_up(&mut self, reference: u64, frame: &Value) {
        if let Some(entry) = self.in_flight.remove(&reference) {
            self.outcomes.push(Outcome::Refused {
                id: entry.id,
                error: format!(
                    "{}: {}",
                    frame["code"].as_str().unwrap_or("unknown"),
                    frame["message"].as_str().unwrap_or("")
                ),
            });
        }
    }

    /// Connects again after a pause and sends every event not yet confirmed, in order, with
    /// its id; events sent too often already are given up.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        self.failures += 1;
        let exhausted: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, e)| e.sent > self.options.retries)
            .map(|(r, _)| *r)
            .collect();
        for reference in exhausted {
            let error =
                json!({"code": "unavailable", "message": "the connection was lost too often"});
            self.give_up(reference, &error);
        }
        if self.in_flight.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(pause(self.failures)).await;
        match self.dial().await {
            Ok(client) => self.client = Some(client),
            Err(err) if self.failures > self.options.retries => return Err(err),
            Err(err) => {
                tracing::warn!(%err, "cannot reconnect yet");
                return Ok(());
            }
        }
        let references: Vec<u64> = self.in_flight.keys().copied().collect();
        for reference in references {
            self.send(reference).await?;
        }
        Ok(())
    }
}

fn pause(attempt: u32) -> Duration {
    FIRST_PAUSE
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(MAX_PAUSE)
}

/// Ids for the events of one `murmur pub` run: `prefix-1`, `prefix-2`, … with a prefix
/// random per run unless given.
pub struct IdSource {
    prefix: String,
    count: u64,
}

impl IdSource {
    pub fn new(prefix: Option<&str>) -> Self {
        let prefix =
            prefix.map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_owned);
        Self { prefix, count: 0 }
    }

    pub fn next_id(&mut self) -> String {
        self.count += 1;
        format!("{}-{}", self.prefix, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_a_bound() {
        assert_eq!(pause(1), FIRST_PAUSE);
        assert_eq!(pause(2), FIRST_PAUSE * 2);
        assert_eq!(pause(30), MAX_PAUSE);
    }

    #[test]
    fn ids_are_unique_within_a_run_and_between_runs() {
        let mut a = IdSource::new(None);
        let mut b = IdSource::new(None);
        let first = a.next_id();
        assert_ne!(first, a.next_id());
        assert_ne!(first, b.next_id());
        assert_eq!(IdSource::new(Some("job")).next_id(), "job-1");
    }
}
