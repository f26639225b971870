//! Acknowledged publishing with a window, the same for every system that answers publishes:
//! Murmur's `pub` with a `ref` (answered once sequenced and stored on its replicas) and a
//! JetStream publish with a reply subject (answered with a PubAck once stored on the
//! stream's replicas).

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::client::{Conn, Incoming};

/// How long the publisher waits for the next answer before it gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run of acknowledged publishes got back.
#[derive(Debug)]
pub struct Answered {
    /// Publishes answered with an error (Murmur `unavailable`, a JetStream error).
    pub errors: usize,
    /// When the last answer arrived.
    pub last_answer: Instant,
}

/// Publishes `count` messages, message `i` being `message(i)` (topic and payload), with up to
/// `window` unanswered at a time; returns once every one was answered.
pub async fn publish_windowed<'a>(
    conn: &mut Conn,
    count: usize,
    window: usize,
    mut message: impl FnMut(usize) -> (&'a str, Vec<u8>),
) -> anyhow::Result<Answered> {
    let (mut sent, mut answered, mut errors) = (0usize, 0usize, 0usize);
    let window = window.max(1);
    while answered < count {
        while sent < count && sent - answered < window {
            let (topic, payload) = message(sent);
            let reference = sent.to_string();
            conn.publish(topic, &payload, Some(&reference)).await?;
            sent += 1;
        }
        conn.flush().await?;
        match tokio::time::timeout(ANSWER_TIMEOUT, conn.next()).await {
            Ok(Ok(Incoming::Ok { .. })) => answered += 1,
            Ok(Ok(Incoming::Error(_))) => {
                answered += 1;
                errors += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!(
                "no answer to an acknowledged publish for {ANSWER_TIMEOUT:?} ({answered} of {count} answered)"
            ),
        }
    }
    Ok(Answered {
        errors,
        last_answer: Instant::now(),
    })
}
