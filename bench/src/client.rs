//! One client connection to either system, behind one interface: connect (Murmur's `hello`,
//! NATS's `CONNECT`), subscribe (optionally in a queue group), publish (optionally
//! acknowledged), ack, round trip, and the next thing the server sent.
//!
//! Murmur's per-connection options live in [`MurmurOptions`]: they are sent in the `hello`
//! frame, so a protocol opt-in (for example batching several events per frame) is one more
//! field there plus, if its frames look different, one more case in [`decode_murmur`].
//!
//! JetStream is NATS underneath: the same connection and parser; an acknowledged publish
//! carries a reply subject (the connection's inbox), whose answers, the PubAcks, come back
//! as [`Incoming::Ok`] or [`Incoming::Error`]; subscribing creates a push consumer
//! (`crate::jetstream`).

use std::collections::VecDeque;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::counting::{CountingStream, ReadCounter};
use crate::{jetstream, nats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    Murmur,
    /// Core NATS: fire-and-forget.
    Nats,
    /// NATS JetStream, a stream with 2 replicas in memory (acknowledged scenarios only).
    JetstreamMem,
    /// NATS JetStream, a stream with 2 replicas on disk (acknowledged scenarios only).
    JetstreamFile,
}

impl System {
    /// The `--system` value that selects this system.
    pub fn cli_name(self) -> &'static str {
        match self {
            Self::Murmur => "murmur",
            Self::Nats => "nats",
            Self::JetstreamMem => "jetstream-mem",
            Self::JetstreamFile => "jetstream-file",
        }
    }

    /// Where a JetStream system stores its streams; `None` for the others.
    pub fn jetstream_storage(self) -> Option<jetstream::Storage> {
        match self {
            Self::JetstreamMem => Some(jetstream::Storage::Memory),
            Self::JetstreamFile => Some(jetstream::Storage::File),
            Self::Murmur | Self::Nats => None,
        }
    }
}

/// Per-connection settings of the Murmur target, sent in `hello`.
#[derive(Debug, Clone, clap::Args)]
pub struct MurmurOptions {
    /// Client name sent in Murmur's `hello` (the node logs it).
    #[arg(long, default_value = "murmur-bench")]
    pub client_name: String,
    /// Ask for batch frames: several queued events in one WebSocket frame (`hello` with
    /// `batch`, docs/protocol.md).
    #[arg(long)]
    pub batch: bool,
    /// With `--batch`: the compact batch layout (runs of one topic's events, the shared
    /// fields once per run; `hello` with `batch: {"compact": true}`, docs/protocol.md).
    #[arg(long, requires = "batch")]
    pub compact: bool,
    /// A client token (JWT) for nodes with `auth = token`: every connection says `hello`
    /// with it first and waits for the `welcome` (`murmur token` mints one).
    #[arg(
        long,
        env = "MURMUR_BENCH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

impl MurmurOptions {
    fn hello(&self) -> String {
        let mut hello = json!({"op": "hello", "client": self.client_name});
        if self.batch {
            hello["batch"] = if self.compact {
                json!({"compact": true})
            } else {
                json!(true)
            };
        }
        if let Some(token) = &self.token {
            hello["token"] = json!(token);
        }
        hello.to_string()
    }

    /// The command-line arguments that reproduce these options (for child processes). The
    /// token is not among them, since arguments show in `ps`: see [`Self::to_env`].
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--client-name".to_owned(), self.client_name.clone()];
        if self.batch {
            args.push("--batch".to_owned());
        }
        if self.compact {
            args.push("--compact".to_owned());
        }
        args
    }

    /// The environment that passes the token to child processes.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        self.token
            .iter()
            .map(|token| ("MURMUR_BENCH_TOKEN", token.clone()))
            .collect()
    }

    /// What distinguishes this mode in reports (empty for the default protocol, without a
    /// token): `-batch` for batch frames, `-auth` for connections with a token.
    fn variant(&self) -> String {
        let mut variant = String::new();
        if self.batch {
            variant.push_str("-batch");
        }
        if self.compact {
            variant.push_str("-compact");
        }
        if self.token.is_some() {
            variant.push_str("-auth");
        }
        variant
    }
}

/// The system under test and how to talk to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub system: System,
    pub murmur: MurmurOptions,
    /// Bytes each socket read takes at most (tungstenite's read buffer); its default
    /// (128 KiB) when absent.
    pub read_buffer: Option<usize>,
    pub jetstream: jetstream::JetStreamOptions,
    /// Bytes read by the sockets of every connection made for this target (shared by its
    /// clones): the subscribers' bytes on the wire.
    pub read_bytes: ReadCounter,
}

impl Target {
    /// The name used in reports: `murmur` or `nats`, plus the Murmur mode if not the default.
    pub fn name(&self) -> String {
        match self.system {
            System::Murmur => format!("murmur{}", self.murmur.variant()),
            System::JetstreamMem | System::JetstreamFile => {
                format!("{}{}", self.system.cli_name(), self.jetstream.variant())
            }
            System::Nats => "nats".to_owned(),
        }
    }
}

/// Something the server sent that a scenario cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A delivered message; `delivery` is Murmur's queue-group id to `ack`.
    Event {
        payload: Bytes,
        delivery: Option<String>,
    },
    /// Murmur's `ok` (with its `ref`), NATS's `+OK`, a JetStream PubAck or API answer.
    Ok {
        reference: Option<String>,
    },
    Pong,
    /// An error frame, verbatim.
    Error(String),
}

pub struct Conn {
    system: System,
    ws: WebSocketStream<CountingStream>,
    nats: nats::Parser,
    /// Decoded but not yet consumed, in arrival order.
    pending: VecDeque<Incoming>,
    unflushed: bool,
    /// NATS: the subject this connection's requests and acknowledged publishes are answered
    /// on, once subscribed to (on first use).
    reply_inbox: Option<String>,
    /// JetStream: how this connection subscribes.
    jetstream_subscribers: jetstream::Subscribers,
}

impl Conn {
    pub async fn connect(target: &Target, url: &str) -> anyhow::Result<Self> {
        // Without Nagle, as NATS's and most clients' sockets: a small frame (an ack, a
        // publish at a fixed rate) goes out at once instead of waiting for the peer's ACK.
        let config = target.read_buffer.map(|bytes| {
            tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(bytes)
        });
        // Plain `ws://` only (the bench runs on loopback); the socket counts what it reads.
        let address = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .with_context(|| format!("a ws://host:port URL, not {url}"))?;
        let socket = TcpStream::connect(address)
            .await
            .with_context(|| format!("connect {url}"))?;
        socket.set_nodelay(true)?;
        let stream = CountingStream::new(socket, target.read_bytes.clone());
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, config)
            .await
            .with_context(|| format!("WebSocket handshake with {url}"))?;
        let mut conn = Self {
            system: target.system,
            ws,
            nats: nats::Parser::default(),
            pending: VecDeque::new(),
            unflushed: false,
            reply_inbox: None,
            jetstream_subscribers: target.jetstream.jetstream_subscribers,
        };
        match target.system {
            System::Murmur => {
                // The node greets first; `hello` carries the options (and the token, which a
                // node with `auth = token` checks before anything else) and is answered by
                // another `welcome`, or an error and a close when the token is refused.
                conn.expect_murmur_op("welcome").await?;
                conn.send(target.murmur.hello().into_bytes()).await?;
                conn.expect_murmur_op("welcome").await?;
            }
            System::Nats | System::JetstreamMem | System::JetstreamFile => {
                loop {
                    if let nats::Incoming::Info = conn.next_nats_raw().await? {
                        break;
                    }
                }
                conn.send(nats::connect().as_bytes().to_vec()).await?;
            }
        }
        Ok(conn)
    }

    async fn expect_murmur_op(&mut self, op: &str) -> anyhow::Result<()> {
        loop {
            let frame = self.next_frame().await?;
            let text = std::str::from_utf8(&frame)?;
            if json_str_field(text, "op") == Some(op) {
                return Ok(());
            }
            if json_str_field(text, "op") == Some("error") {
                bail!("expected `{op}`, got {text}");
            }
        }
    }

    /// Queues a frame without flushing.
    async fn feed(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        let message = match self.system {
            System::Murmur => Message::text(String::from_utf8(bytes)?),
            System::Nats | System::JetstreamMem | System::JetstreamFile => Message::binary(bytes),
        };
        self.ws.feed(message).await?;
        self.unflushed = true;
        Ok(())
    }

    pub async fn send(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.feed(bytes).await?;
        self.flush().await
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if self.unflushed {
            self.ws.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// The next WebSocket data frame's bytes.
    async fn next_frame(&mut self) -> anyhow::Result<Bytes> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(Bytes::from(t)),
                Some(Ok(Message::Binary(b))) => return Ok(b),
                Some(Ok(Message::Close(Some(frame)))) => bail!(
                    "closed by the server: {} {}",
                    u16::from(frame.code),
                    frame.reason
                ),
                Some(Ok(Message::Close(None))) => bail!("closed by the server"),
                None => bail!("connection closed"),
                Some(Err(e)) => return Err(e.into()),
                // WebSocket pings are answered by tungstenite on the next read.
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next NATS protocol message, PINGs included.
    async fn next_nats_raw(&mut self) -> anyhow::Result<nats::Incoming> {
        loop {
            if let Some(message) = self.nats.next() {
                return Ok(message);
            }
            let frame = self.next_frame().await?;
            self.nats.push(&frame);
        }
    }

    /// The next thing the server sent (NATS PINGs are answered here).
    pub async fn next(&mut self) -> anyhow::Result<Incoming> {
        loop {
            if let Some(incoming) = self.pending.pop_front() {
                return Ok(incoming);
            }
            // Acks and other queued writes go out before waiting for the server.
            self.flush().await?;
            match self.system {
                System::Murmur => {
                    let frame = self.next_frame().await?;
                    decode_murmur(&frame, &mut self.pending);
                }
                System::Nats | System::JetstreamMem | System::JetstreamFile => match self
                    .next_nats_raw()
                    .await?
                {
                    nats::Incoming::Msg { subject, payload }
                        if self.reply_inbox.as_deref() == Some(subject.as_str()) =>
                    {
                        self.pending.push_back(jetstream::decode_reply(&payload));
                    }
                    nats::Incoming::Msg { payload, .. } => {
                        self.pending.push_back(Incoming::Event {
                            payload,
                            delivery: None,
                        });
                    }
                    nats::Incoming::Ping => self.send(b"PONG\r\n".to_vec()).await?,
                    nats::Incoming::Pong => self.pending.push_back(Incoming::Pong),
                    nats::Incoming::Ok => self.pending.push_back(Incoming::Ok { reference: None }),
                    nats::Incoming::Err(e) => self.pending.push_back(Incoming::Error(e)),
                    nats::Incoming::Info => {}
                },
            }
        }
    }

    /// Reads until `wanted` matches, keeping everything else for [`Conn::next`].
    pub async fn wait_for(
        &mut self,
        wanted: impl Fn(&Incoming) -> bool,
    ) -> anyhow::Result<Incoming> {
        let mut kept = VecDeque::new();
        let found = loop {
            let incoming = self.next().await?;
            if wanted(&incoming) {
                break incoming;
            }
            if let Incoming::Error(e) = &incoming {
                bail!("server error: {e}");
            }
            kept.push_back(incoming);
        };
        kept.append(&mut self.pending);
        self.pending = kept;
        Ok(found)
    }

    /// Subscribes (as a member of `group` when given) and waits until the server confirmed.
    pub async fn subscribe(&mut self, topic: &str, group: Option<&str>) -> anyhow::Result<()> {
        match self.system {
            System::Murmur => {
                let mut sub = json!({"op": "sub", "id": "b", "topic": topic});
                if let Some(group) = group {
                    sub["group"] = json!(group);
                }
                self.send(sub.to_string().into_bytes()).await?;
                self.wait_for(|i| matches!(i, Incoming::Ok { reference: Some(r) } if r == "b"))
                    .await?;
                Ok(())
            }
            System::Nats => {
                self.send(nats::sub(topic, group, 1).into_bytes()).await?;
                self.round_trip().await
            }
            System::JetstreamMem | System::JetstreamFile => {
                if group.is_some() {
                    bail!("queue groups are not measured on JetStream");
                }
                jetstream::subscribe(self, topic, self.jetstream_subscribers).await
            }
        }
    }

    /// NATS: the subject answers to this connection's requests come back on, subscribed to
    /// on first use (the server handles a connection's commands in order, so the `SUB` is in
    /// place before anything that is answered on it).
    pub async fn reply_inbox(&mut self) -> anyhow::Result<String> {
        if let Some(inbox) = &self.reply_inbox {
            return Ok(inbox.clone());
        }
        let inbox = nats::new_inbox();
        self.feed(nats::sub(&inbox, None, nats::REPLY_SID).into_bytes())
            .await?;
        self.reply_inbox = Some(inbox.clone());
        Ok(inbox)
    }

    /// A ping answered: everything sent before has been read by the server.
    pub async fn round_trip(&mut self) -> anyhow::Result<()> {
        let ping = match self.system {
            System::Murmur => br#"{"op":"ping","ref":"rt"}"#.to_vec(),
            System::Nats | System::JetstreamMem | System::JetstreamFile => b"PING\r\n".to_vec(),
        };
        self.send(ping).await?;
        self.wait_for(|i| *i == Incoming::Pong).await?;
        Ok(())
    }

    /// Queues a publish (call [`Conn::flush`] to send). With `reference`, Murmur answers
    /// `ok` once the event is sequenced and stored on its replicas, JetStream a PubAck once
    /// the stream stored it on its replicas (the reference itself is not echoed); core NATS
    /// has no such answer.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        reference: Option<&str>,
    ) -> anyhow::Result<()> {
        let bytes = match self.system {
            // The payload is ASCII without quotes or backslashes, so it is a JSON string as is.
            System::Murmur => {
                let data = std::str::from_utf8(payload)?;
                match reference {
                    Some(r) => {
                        format!(r#"{{"op":"pub","topic":"{topic}","data":"{data}","ref":"{r}"}}"#)
                    }
                    None => format!(r#"{{"op":"pub","topic":"{topic}","data":"{data}"}}"#),
                }
                .into_bytes()
            }
            System::Nats => {
                if reference.is_some() {
                    bail!("core NATS has no acknowledged publish");
                }
                nats::publish(topic, None, payload)
            }
            System::JetstreamMem | System::JetstreamFile => match reference {
                Some(_) => {
                    let inbox = self.reply_inbox().await?;
                    nats::publish(topic, Some(&inbox), payload)
                }
                None => nats::publish(topic, None, payload),
            },
        };
        self.feed(bytes).await
    }

    /// Acknowledges a Murmur queue-group delivery (queued; sent with the next read or flush).
    pub async fn ack(&mut self, delivery: &str) -> anyhow::Result<()> {
        self.feed(format!(r#"{{"op":"ack","delivery":"{delivery}"}}"#).into_bytes())
            .await
    }
}

/// The string value of `"key":"…"` in a JSON object written without spaces, as the node
/// writes it. Only for values without escapes (names, ids, the bench's own payloads).
/// Allocation-free: it runs for every frame the load generator reads.
fn json_str_field<'a>(frame: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(found) = frame[from..].find(key) {
        let at = from + found;
        let after = &frame[at + key.len()..];
        if at > 0 && frame.as_bytes()[at - 1] == b'"' && after.starts_with("\":\"") {
            let value = &after[3..];
            return value.find('"').map(|end| &value[..end]);
        }
        from = at + key.len();
    }
    None
}

/// Decodes one Murmur JSON frame into what the scenarios need.
fn decode_murmur(frame: &Bytes, out: &mut VecDeque<Incoming>) {
    let Ok(text) = std::str::from_utf8(frame) else {
        out.push_back(Incoming::Error("a frame that is not UTF-8".to_owned()));
        return;
    };
    // The node writes `op` first; events are nearly every frame, so they skip the search.
    let op = if text.starts_with(r#"{"op":"event","#) {
        Some("event")
    } else {
        json_str_field(text, "op")
    };
    match op {
        Some("batch") if text.starts_with(r#"{"op":"batch","runs":["#) => {
            decode_runs(frame, text, out);
        }
        Some("batch") => decode_batch(frame, text, out),
        Some("event") => {
            let Some(data) = json_str_field(text, "data") else {
                out.push_back(Incoming::Error(format!(
                    "event without string data: {text}"
                )));
                return;
            };
            let start = data.as_ptr() as usize - text.as_ptr() as usize;
            let end = start + data.len();
            out.push_back(Incoming::Event {
                payload: frame.slice(start..end),
                // JSON events carry `delivery` after `data`.
                delivery: json_str_field(&text[end..], "delivery").map(str::to_owned),
            });
        }
        Some("ok") => out.push_back(Incoming::Ok {
            reference: json_str_field(text, "ref").map(str::to_owned),
        }),
        Some("pong") => out.push_back(Incoming::Pong),
        Some("error") => out.push_back(Incoming::Error(text.to_owned())),
        _ => {}
    }
}

/// A batch frame, `{"op":"batch","events":[{"op":"event",...},...]}`: each element is an
/// event object as a plain frame would carry it, so each is decoded as one.
fn decode_batch(frame: &Bytes, text: &str, out: &mut VecDeque<Incoming>) {
    let Some(start) = text.find('[') else {
        out.push_back(Incoming::Error(format!("batch without events: {text}")));
        return;
    };
    let mut rest = start + 1;
    while let Some(offset) = text[rest..].find(r#"{"op":"event","#) {
        let begin = rest + offset;
        // The next element starts at the next event object; the last one ends the array.
        let end = text[begin + 1..]
            .find(r#"{"op":"event","#)
            .map_or(text.len(), |next| begin + 1 + next);
        decode_murmur(&frame.slice(begin..end), out);
        rest = end;
    }
}

/// A compact batch frame, `{"op":"batch","runs":[{"sub":…,"data":["…","…"]},…]}`: each
/// run's `data` elements are events (the bench's payloads are strings without escapes); a
/// run with `delivery` holds one queue delivery.
fn decode_runs(frame: &Bytes, text: &str, out: &mut VecDeque<Incoming>) {
    const RUN: &str = r#"{"sub":"#;
    const DATA: &str = r#""data":["#;
    let mut rest = 0;
    while let Some(offset) = text[rest..].find(RUN) {
        let begin = rest + offset;
        let Some(data_at) = text[begin..].find(DATA).map(|d| begin + d + DATA.len()) else {
            out.push_back(Incoming::Error(format!("a run without data: {text}")));
            return;
        };
        let delivery = json_str_field(&text[begin..data_at], "delivery").map(str::to_owned);
        let mut at = data_at;
        loop {
            let Some(open) = text[at..].strip_prefix('"') else {
                out.push_back(Incoming::Error(format!("run data not strings: {text}")));
                return;
            };
            let Some(len) = open.find('"') else {
                out.push_back(Incoming::Error(format!("unterminated run data: {text}")));
                return;
            };
            out.push_back(Incoming::Event {
                payload: frame.slice(at + 1..at + 1 + len),
                delivery: delivery.clone(),
            });
            at += len + 2;
            match text.as_bytes().get(at) {
                Some(b',') => at += 1,
                _ => break,
            }
        }
        rest = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_string_fields() {
        let frame = r#"{"op":"event","sub":"data","topic":"x","data":"t=1;","delivery":"7"}"#;
        assert_eq!(json_str_field(frame, "op"), Some("event"));
        assert_eq!(json_str_field(frame, "data"), Some("t=1;"));
        assert_eq!(json_str_field(frame, "delivery"), Some("7"));
        assert_eq!(json_str_field(frame, "ref"), None);
        assert_eq!(json_str_field(r#"{"seq":1}"#, "seq"), None);
    }

    #[test]
    fn hello_carries_the_token_and_names_the_mode() {
        let mut options = MurmurOptions {
            client_name: "b".to_owned(),
            batch: false,
            compact: false,
            token: None,
        };
        let target = |murmur: &MurmurOptions| Target {
            system: System::Murmur,
            murmur: murmur.clone(),
            read_buffer: None,
            jetstream: jetstream::JetStreamOptions::default(),
            read_bytes: ReadCounter::default(),
        };
        assert_eq!(options.hello(), r#"{"op":"hello","client":"b"}"#);
        assert_eq!(target(&options).name(), "murmur");
        assert!(options.to_env().is_empty());
        options.token = Some("a.b.c".to_owned());
        options.batch = true;
        let hello: serde_json::Value = serde_json::from_str(&options.hello()).unwrap();
        assert_eq!(hello["token"], "a.b.c");
        assert_eq!(hello["batch"], true);
        assert_eq!(target(&options).name(), "murmur-batch-auth");
        assert!(!options.to_args().iter().any(|a| a.contains("a.b.c")));
        assert_eq!(
            options.to_env(),
            [("MURMUR_BENCH_TOKEN", "a.b.c".to_owned())]
        );
    }

    #[test]
    fn decodes_batch_frames_event_by_event() {
        let mut out = VecDeque::new();
        let frame = r#"{"op":"batch","events":[{"op":"event","sub":"b","topic":"t","epoch":"e","seq":1,"data":"one","ts":1},{"op":"event","sub":"b","topic":"t","epoch":"e","seq":2,"data":"two","ts":1,"delivery":"9"}]}"#;
        decode_murmur(&Bytes::from(frame), &mut out);
        let got: Vec<_> = out.into_iter().collect();
        assert_eq!(
            got,
            [
                Incoming::Event {
                    payload: Bytes::from("one"),
                    delivery: None
                },
                Incoming::Event {
                    payload: Bytes::from("two"),
                    delivery: Some("9".to_owned())
                },
            ]
        );
    }

    #[test]
    fn decodes_compact_batches_run_by_run() {
        let mut out = VecDeque::new();
        let frame = r#"{"op":"batch","runs":[{"sub":"b","topic":"t","epoch":"e","seq":1,"ts":5,"data":["one","two"],"dts":[1]},{"sub":"b","topic":"u","epoch":"e","seq":4,"ts":5,"delivery":"9","redelivered":false,"data":["three"]}]}"#;
        decode_murmur(&Bytes::from(frame), &mut out);
        let event = |p: &'static str, d: Option<&str>| Incoming::Event {
            payload: Bytes::from(p),
            delivery: d.map(str::to_owned),
        };
        assert_eq!(
            out.into_iter().collect::<Vec<_>>(),
            [
                event("one", None),
                event("two", None),
                event("three", Some("9"))
            ]
        );
    }

    #[test]
    fn decodes_murmur_frames() {
        let mut out = VecDeque::new();
        for frame in [
            r#"{"op":"event","sub":"b","topic":"t","epoch":"e","seq":1,"data":"t=5;x","ts":1}"#,
            r#"{"op":"event","sub":"b","topic":"t","epoch":"e","seq":2,"data":"q","ts":1,"delivery":"17","redelivered":false}"#,
            r#"{"op":"ok","ref":"p1","epoch":"e","seq":3}"#,
            r#"{"op":"pong","ref":"rt"}"#,
            r#"{"op":"welcome","node":"n1"}"#,
            r#"{"op":"error","code":"unavailable","ref":"p2"}"#,
        ] {
            decode_murmur(&Bytes::from(frame), &mut out);
        }
        let got: Vec<_> = out.into_iter().collect();
        assert_eq!(
            got,
            vec![
                Incoming::Event {
                    payload: Bytes::from_static(b"t=5;x"),
                    delivery: None
                },
                Incoming::Event {
                    payload: Bytes::from_static(b"q"),
                    delivery: Some("17".into())
                },
                Incoming::Ok {
                    reference: Some("p1".into())
                },
                Incoming::Pong,
                Incoming::Error(r#"{"op":"error","code":"unavailable","ref":"p2"}"#.into()),
            ]
        );
    }
}
