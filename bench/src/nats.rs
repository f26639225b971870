//! The NATS client protocol (INFO, CONNECT, SUB, PUB, MSG, PING, PONG) over a WebSocket, as
//! `nats-server`'s WebSocket listener speaks it: a byte stream cut into frames anywhere, so
//! incoming bytes go through an incremental parser.

/// What the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Info,
    Msg { subject: String, payload: Vec<u8> },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Accumulates bytes and yields whole protocol messages.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, if the buffer holds one.
    pub fn next(&mut self) -> Option<Incoming> {
        let line_end = self.buffer.windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
        let mut words = line.split_whitespace();
        let op = words.next().unwrap_or("").to_ascii_uppercase();
        let (message, consumed) = match op.as_str() {
            "MSG" => {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let parts: Vec<&str> = words.collect();
                let size: usize = parts.last()?.parse().ok()?;
                let start = line_end + 2;
                if self.buffer.len() < start + size + 2 {
                    return None;
                }
                let payload = self.buffer[start..start + size].to_vec();
                (
                    Incoming::Msg {
                        subject: parts.first().copied().unwrap_or("").to_owned(),
                        payload,
                    },
                    start + size + 2,
                )
            }
            "INFO" => (Incoming::Info, line_end + 2),
            "PING" => (Incoming::Ping, line_end + 2),
            "PONG" => (Incoming::Pong, line_end + 2),
            "+OK" => (Incoming::Ok, line_end + 2),
            _ => (Incoming::Err(line.clone()), line_end + 2),
        };
        self.buffer.drain(..consumed);
        Some(message)
    }
}

pub fn connect() -> &'static str {
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1,\"name\":\"murmur-bench\"}\r\n"
}

pub fn sub(subject: &str, sid: u64) -> String {
    format!("SUB {subject} {sid}\r\n")
}

pub fn publish(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
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
            b"INFO {\"x\":1}\r\nMSG a.b 1 5\r\nhello\r\nPING\r\nMSG a.c 1 r 0\r\n\r\n+OK\r\n";
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
                        payload: b"hello".to_vec()
                    },
                    Incoming::Ping,
                    Incoming::Msg {
                        subject: "a.c".into(),
                        payload: Vec::new()
                    },
                    Incoming::Ok,
                ],
                "split every {split} bytes"
            );
        }
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(sub("x.y", 3), "SUB x.y 3\r\n");
        assert_eq!(publish("x", b"ab"), b"PUB x 2\r\nab\r\n");
        assert!(connect().ends_with("}\r\n"));
    }
}
