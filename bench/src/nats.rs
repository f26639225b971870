//! The NATS client protocol (INFO, CONNECT, SUB, PUB, MSG, PING, PONG) over a WebSocket, as
//! `nats-server`'s WebSocket listener speaks it: a byte stream cut into frames anywhere, so
//! incoming bytes go through an incremental parser.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

/// What the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Info,
    Msg { subject: String, payload: Bytes },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Accumulates bytes and yields whole protocol messages.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: BytesMut,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, if the buffer holds one.
    pub fn next(&mut self) -> Option<Incoming> {
        let line_end = self.buffer.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&self.buffer[..line_end]).unwrap_or("");
        let mut words = line.split_ascii_whitespace();
        let op = words.next().unwrap_or("");
        if op.eq_ignore_ascii_case("MSG") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let subject = words.next().unwrap_or("").to_owned();
            let size: usize = words.last()?.parse().ok()?;
            let start = line_end + 2;
            if self.buffer.len() < start + size + 2 {
                return None;
            }
            let whole = self.buffer.split_to(start + size + 2).freeze();
            return Some(Incoming::Msg {
                subject,
                payload: whole.slice(start..start + size),
            });
        }
        let message = if op.eq_ignore_ascii_case("INFO") {
            Incoming::Info
        } else if op.eq_ignore_ascii_case("PING") {
            Incoming::Ping
        } else if op.eq_ignore_ascii_case("PONG") {
            Incoming::Pong
        } else if op.eq_ignore_ascii_case("+OK") {
            Incoming::Ok
        } else {
            Incoming::Err(line.to_owned())
        };
        let _ = self.buffer.split_to(line_end + 2);
        Some(message)
    }
}

pub fn connect() -> &'static str {
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1,\"name\":\"murmur-bench\"}\r\n"
}

/// `SUB`, as a member of queue group `queue` when given.
pub fn sub(subject: &str, queue: Option<&str>, sid: u64) -> String {
    match queue {
        Some(queue) => format!("SUB {subject} {queue} {sid}\r\n"),
        None => format!("SUB {subject} {sid}\r\n"),
    }
}

/// The subscription id of a connection's reply inbox (scenario subscriptions use 1).
pub const REPLY_SID: u64 = 2;

/// A subject no other connection uses, for answers to this one: `_INBOX.` then this
/// process's id and a counter.
pub fn new_inbox() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "_INBOX.murmurbench.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `PUB`, answered on `reply` when given (a request, or a JetStream publish to acknowledge).
pub fn publish(subject: &str, reply: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let mut out = match reply {
        Some(reply) => format!("PUB {subject} {reply} {}\r\n", payload.len()),
        None => format!("PUB {subject} {}\r\n", payload.len()),
    }
    .into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_split_anywhere() {
        let stream =
            b"INFO {\"x\":1}\r\nMSG a.b 1 5\r\nhello\r\nPING\r\nMSG a.c 1 r 0\r\n\r\n+OK\r\n-ERR 'x'\r\n";
        for split in 1..stream.len() {
            let mut parser = Parser::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(split) {
                parser.push(chunk);
                while let Some(m) = parser.next() {
                    got.push(m);
                }
            }
            assert_eq!(
                got,
                vec![
                    Incoming::Info,
                    Incoming::Msg {
                        subject: "a.b".into(),
                        payload: Bytes::from_static(b"hello")
                    },
                    Incoming::Ping,
                    Incoming::Msg {
                        subject: "a.c".into(),
                        payload: Bytes::new()
                    },
                    Incoming::Ok,
                    Incoming::Err("-ERR 'x'".into()),
                ],
                "split every {split} bytes"
            );
        }
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(sub("x.y", None, 3), "SUB x.y 3\r\n");
        assert_eq!(sub("x.y", Some("workers"), 3), "SUB x.y workers 3\r\n");
        assert_eq!(publish("x", None, b"ab"), b"PUB x 2\r\nab\r\n");
        assert_eq!(publish("x", Some("r.1"), b"ab"), b"PUB x r.1 2\r\nab\r\n");
        assert_ne!(new_inbox(), new_inbox());
        assert!(connect().ends_with("}\r\n"));
    }
}
