//! The record of a chaos run, as the clients saw it.
//!
//! One [`Op`] per line of a JSON-lines file. `t` is microseconds since the start of the run on
//! one monotonic clock shared by every client of the harness.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub t: u64,
    /// The client that did or saw this (a publisher or a subscriber).
    pub client: String,
    /// The node the client was connected to.
    #[serde(default)]
    pub node: String,
    #[serde(flatten)]
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A `pub` with a ref was sent. `id` is unique in the run and is the event's data.
    PublishInvoke { id: String, topic: String },
    /// Its `ok` arrived.
    PublishOk {
        id: String,
        topic: String,
        epoch: String,
        seq: u64,
    },
    /// Its `error` arrived: definitely not published.
    PublishFail { id: String, error: String },
    /// A subscription began (its `ok` arrived). Later resumes of the same subscription on
    /// other connections are not new subscriptions.
    Subscribe {
        sub: String,
        pattern: String,
        #[serde(default)]
        group: Option<String>,
    },
    /// The subscription ended (its `unsub` was sent).
    Unsubscribe { sub: String },
    /// An event arrived for a subscription.
    Deliver {
        sub: String,
        topic: String,
        epoch: String,
        seq: u64,
        /// The event's data: the publish id.
        id: String,
        #[serde(default)]
        redelivered: bool,
    },
    /// A queue-group delivery was acknowledged, and the node took the `ack`: a `ping` sent
    /// after it was answered without an `unknown_delivery` error first (one connection's
    /// requests are handled in order).
    Ack { sub: String, id: String },
    /// The node refused the `ack` (`unknown_delivery`: redelivered or handed on before it).
    AckRefused { sub: String, id: String },
    /// The `ack` was sent but the connection ended before it was confirmed or refused: it may
    /// or may not have counted.
    AckUnconfirmed { sub: String, id: String },
    /// A gap arrived for a subscription.
    Gap {
        sub: String,
        topic: String,
        epoch: String,
        from_seq: u64,
        to_seq: u64,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("reading the history: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {reason}")]
    Parse {
        line: usize,
        reason: serde_json::Error,
    },
}

/// Reads a JSON-lines history; blank lines are skipped.
pub fn read(input: impl BufRead) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|reason| HistoryError::Parse {
            line: i + 1,
            reason,
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// One line of a history file.
pub fn line(op: &Op) -> String {
    serde_json::to_string(op).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let op = Op {
            t: 5,
            client: "s1".into(),
            node: "n1".into(),
            kind: Kind::Deliver {
                sub: "a".into(),
                topic: "t".into(),
                epoch: "e".into(),
                seq: 3,
                id: "p-1".into(),
                redelivered: false,
            },
        };
        let text = line(&op);
        assert!(text.contains(r#""kind":"deliver""#), "{text}");
        assert_eq!(read(text.as_bytes()).unwrap(), vec![op]);
        let broken = read("{\"t\":1}\n".as_bytes()).unwrap_err().to_string();
        assert!(broken.starts_with("line 1"), "{broken}");
    }
}
