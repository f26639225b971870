//! A small JSON WebSocket client: what `murmur sub` and `murmur pub` speak, over `ws://` or
//! `wss://`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, connect_async_tls_with_config,
};

/// The URL the CLI clients use when none is given.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:7400/ws";

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("connection failed: {0}")]
    Socket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("the node refused the request: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("the node closed the connection{0}")]
    Closed(String),
    #[error("GET {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("no answer from the node within {0:?}")]
    Timeout(Duration),
    #[error("cannot use {path} as the CA: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error(
        "no root certificates found on this system to check the node's certificate: \
         pass --ca FILE ({0})"
    )]
    NoSystemRoots(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("a batch frame the client cannot read: {0}")]
    BadBatch(String),
}

/// The TLS settings for `wss://` URLs: certificates are checked against `ca` (a PEM file of
/// one or more CA certificates) when given, otherwise against the system's roots. TLS 1.3,
/// with the `ring` provider the node uses.
pub fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let ca_error = |reason: String| ClientError::CaFile {
                path: path.to_owned(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none installed".to_owned(), ToString::to_string);
                return Err(ClientError::NoSystemRoots(why));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Whether `url` asks for TLS (`wss://` or `https://`).
pub fn wants_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or_default();
    scheme.eq_ignore_ascii_case("wss") || scheme.eq_ignore_ascii_case("https")
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    welcome: Value,
    /// Events of a batch frame not yet returned by [`Client::next_frame`].
    unread: std::collections::VecDeque<Value>,
}

impl Client {
    /// Connects and reads the node's `welcome`. Nagle's algorithm is off: a client sends
    /// small frames back to back (an `ack` and then a `ping`, say), and with it on the
    /// second one waits for the node's delayed TCP acknowledgement of the first (tens of ms).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, None).await
    }

    /// Connects as [`Client::connect`]; a `wss://` URL uses `tls` (see [`tls_config`]),
    /// or the system's roots when it is None.
    pub async fn connect_with(
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ClientError> {
        let tls = match tls {
            Some(config) => Some(config),
            None if wants_tls(url) => Some(tls_config(None)?),
            None => None,
        };
        let (ws, _) = connect_async_tls_with_config(url, None, true, tls.map(Connector::Rustls))
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_owned(),
                source: Box::new(source),
            })?;
        let mut client = Self {
            ws,
            welcome: Value::Null,
            unread: std::collections::VecDeque::new(),
        };
        let welcome = tokio::time::timeout(Duration::from_secs(10), client.next_frame())
            .await
            .map_err(|_| ClientError::Timeout(Duration::from_secs(10)))??;
        client.welcome = welcome;
        Ok(client)
    }

    pub fn welcome(&self) -> &Value {
        &self.welcome
    }

    pub async fn send(&mut self, frame: &Value) -> Result<(), ClientError> {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| ClientError::Socket(Box::new(e)))
    }

    /// Says `hello` with `token` (for nodes with `auth = token`) and returns the `welcome`
    /// that answers, which names the token's user; a refused token is an error.
    pub async fn authenticate(&mut self, token: &str) -> Result<Value, ClientError> {
        self.hello(json!({"op": "hello", "token": token})).await
    }

    /// Sends a `hello` and returns the `welcome` that answers it (kept as this client's
    /// welcome); an `error` answer is a refusal.
    async fn hello(&mut self, frame: Value) -> Result<Value, ClientError> {
        self.send(&frame).await?;
        loop {
            let frame = self.next_frame().await?;
            match frame["op"].as_str() {
                Some("welcome") => {
                    self.welcome = frame.clone();
                    return Ok(frame);
                }
                Some("error") => return Err(refused(&frame)),
                _ => {}
            }
        }
    }

    /// Asks the node for batch frames (see `docs/protocol.md`, `hello`), with the node's
    /// default bounds where `max_events` or `max_bytes` is `None`, and returns the `welcome`
    /// that answers (its `batch` holds the bounds in effect). [`Client::next_frame`] still
    /// returns one event at a time.
    pub async fn request_batches(
        &mut self,
        max_events: Option<u32>,
        max_bytes: Option<u32>,
    ) -> Result<Value, ClientError> {
        self.ask_for_batches(max_events, max_bytes, false).await
    }

    /// As [`Client::request_batches`], in the compact layout (runs of events sharing their
    /// subscription, topic and epoch; the `welcome` says `"compact":true` when the node
    /// grants it). [`Client::next_frame`] returns each event as its plain frame would be.
    pub async fn request_compact_batches(
        &mut self,
        max_events: Option<u32>,
        max_bytes: Option<u32>,
    ) -> Result<Value, ClientError> {
        self.ask_for_batches(max_events, max_bytes, true).await
    }

    async fn ask_for_batches(
        &mut self,
        max_events: Option<u32>,
        max_bytes: Option<u32>,
        compact: bool,
    ) -> Result<Value, ClientError> {
        let mut batch = serde_json::Map::new();
        if compact {
            batch.insert("compact".into(), json!(true));
        }
        if let Some(n) = max_events {
            batch.insert("max_events".into(), json!(n));
        }
        if let Some(n) = max_bytes {
            batch.insert("max_bytes".into(), json!(n));
        }
        self.hello(json!({"op": "hello", "batch": batch})).await
    }

    /// The next protocol frame; WebSocket pings are answered on the way. The events of a
    /// `batch` frame come one by one, as if each had its own frame.
    pub async fn next_frame(&mut self) -> Result<Value, ClientError> {
        if let Some(event) = self.unread.pop_front() {
            return Ok(event);
        }
        loop {
            let message = match self.ws.next().await {
                None => return Err(ClientError::Closed(String::new())),
                Some(Err(e)) => return Err(ClientError::Socket(Box::new(e))),
                Some(Ok(m)) => m,
            };
            match message {
                Message::Text(text) => {
                    let Ok(mut value) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if value["op"] == "batch" {
                        if let Value::Array(events) = value["events"].take() {
                            self.unread.extend(events);
                        }
                        if let Value::Array(runs) = value["runs"].take() {
                            for run in &runs {
                                expand_run(run, &mut self.unread)?;
                            }
                        }
                        match self.unread.pop_front() {
                            Some(event) => return Ok(event),
                            None => continue,
                        }
                    }
                    return Ok(value);
                }
                Message::Close(frame) => {
                    let why = frame
                        .map(|f| format!(" ({} {})", u16::from(f.code), f.reason))
                        .unwrap_or_default();
                    return Err(ClientError::Closed(why));
                }
                _ => {}
            }
        }
    }

    /// Subscribes and waits for the node's `ok`.
    pub async fn subscribe(
        &mut self,
        id: &str,
        topic: &str,
        group: Option<&str>,
    ) -> Result<(), ClientError> {
        self.subscribe_from(id, topic, group, None).await
    }

    /// Subscribes starting at `from` (a resume point, see `docs/protocol.md`) and waits for
    /// the node's `ok`; replayed events follow it.
    pub async fn subscribe_from(
        &mut self,
        id: &str,
        topic: &str,
        group: Option<&str>,
        from: Option<Value>,
    ) -> Result<(), ClientError> {
        let mut frame = json!({"op": "sub", "id": id, "topic": topic});
        if let Some(group) = group {
            frame["group"] = json!(group);
        }
        if let Some(from) = from {
            frame["from"] = from;
        }
        self.send(&frame).await?;
        loop {
            let reply = self.next_frame().await?;
            match (reply["op"].as_str(), reply["ref"].as_str()) {
                (Some("ok"), Some(r)) if r == id => return Ok(()),
                (Some("error"), _) => return Err(refused(&reply)),
                _ => {}
            }
        }
    }
}

pub fn refused(frame: &Value) -> ClientError {
    ClientError::Refused {
        code: frame["code"].as_str().unwrap_or("unknown").to_owned(),
        message: frame["message"].as_str().unwrap_or("").to_owned(),
    }
}

/// A plain HTTP/1.1 GET for the node's small JSON endpoints; returns the body of a 200.
pub async fn http_get(base_url: &str, path: &str) -> Result<String, ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if wants_tls(base_url) {
        return Err(ClientError::Http {
            url: format!("{base_url}{path}"),
            message: "only plain http:// is supported here (the admin port does not speak TLS)"
                .into(),
        });
    }
    let authority = base_url
        .trim_start_matches("http://")
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let failed = |message: String| ClientError::Http {
        url: format!("http://{authority}{path}"),
        message,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(&authority)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok::<_, ClientError>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| ClientError::Timeout(Duration::from_secs(10)))??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed("malformed HTTP response".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(failed(head.lines().next().unwrap_or_default().to_owned()));
    }
    Ok(body.to_owned())
}

/// What a subscriber has seen, as the `from` of its next `sub`: per topic the last epoch and
/// sequence number, and `since`, the time from which topics it has not seen yet are wanted.
///
/// `since` stays where the subscription started: a topic without a cursor has delivered
/// nothing here, so everything of it after the start was missed. Moving it up to the newest
/// `ts` seen (as this once did) skipped, on a wildcard resume, a topic's event that its owner
/// sequenced before that `ts` but that had not arrived at the drop: topics are not ordered
/// among themselves (different owners, links and clocks), nor in a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeCursor {
    topics: std::collections::BTreeMap<String, (String, u64)>,
    since: i64,
}

impl ResumeCursor {
    /// A cursor for a subscription made at `since_ms` that has seen nothing yet.
    pub fn starting_at(since_ms: i64) -> Self {
        Self {
            topics: Default::default(),
            since: since_ms,
        }
    }

    /// Where a subscription on `pattern` starts, as `murmur sub --from` takes it: `latest`
    /// (nothing before now), `earliest` (everything retained), or a `from` of the protocol in
    /// JSON — a cursor `{"epoch":…,"seq":…}` (exact topics) or `{"topics":{…},"since":…}`.
    /// Returns the `from` to send first (None: latest) and the cursor that carries on from
    /// it when the subscription resumes.
    pub fn from_start(
        start: &str,
        pattern: &str,
        now_ms: i64,
    ) -> Result<(Option<Value>, Self), String> {
        let usage = "--from is latest, earliest, {\"epoch\":\"…\",\"seq\":N} (an exact topic) \
                     or {\"topics\":{…},\"since\":MS}";
        match start.trim() {
            "latest" => return Ok((None, Self::starting_at(now_ms))),
            // Since the beginning of time: a resume then asks for every topic not seen yet.
            "earliest" => return Ok((Some(json!("earliest")), Self::starting_at(0))),
            _ => {}
        }
        let from: Value = serde_json::from_str(start).map_err(|e| format!("{usage}: {e}"))?;
        let cursor = |value: &Value| -> Result<(String, u64), String> {
            match (value["epoch"].as_str(), value["seq"].as_u64()) {
                (Some(epoch), Some(seq)) if !epoch.is_empty() => Ok((epoch.to_owned(), seq)),
                _ => Err(format!(
                    "{usage}: a cursor needs a non-empty `epoch` and a `seq` ≥ 0"
                )),
            }
        };
        let mut start_cursor = Self::starting_at(now_ms);
        if let Some(topics) = from.get("topics") {
            let topics = topics.as_object().ok_or_else(|| usage.to_owned())?;
            for (topic, position) in topics {
                start_cursor.topics.insert(topic.clone(), cursor(position)?);
            }
            start_cursor.since = match from.get("since") {
                None => 0,
                Some(since) => since.as_i64().ok_or_else(|| usage.to_owned())?,
            };
        } else {
            if crate::routing::topic::is_wildcard(pattern) {
                return Err(format!(
                    "{usage}: a single cursor resumes an exact topic, not the pattern `{pattern}`"
                ));
            }
            start_cursor
                .topics
                .insert(pattern.to_owned(), cursor(&from)?);
        }
        Ok((Some(from), start_cursor))
    }

    /// Takes note of an event or gap frame. Returns false for an event already seen (a
    /// duplicate), which the caller should skip.
    pub fn observe(&mut self, frame: &Value) -> bool {
        let (Some(topic), Some(epoch)) = (frame["topic"].as_str(), frame["epoch"].as_str()) else {
            return true;
        };
        match frame["op"].as_str() {
            Some("event") => {
                let Some(seq) = frame["seq"].as_u64() else {
                    return true;
                };
                if let Some((known_epoch, known_seq)) = self.topics.get(topic)
                    && known_epoch == epoch
                    && seq <= *known_seq
                {
                    return false;
                }
                self.topics
                    .insert(topic.to_owned(), (epoch.to_owned(), seq));
                true
            }
            // What a gap reports as lost will not come: move past it.
            Some("gap") => {
                if let Some(to) = frame["to_seq"].as_u64().filter(|&to| to > 0) {
                    let newer = self
                        .topics
                        .get(topic)
                        .is_none_or(|(e, s)| e != epoch || *s < to);
                    if newer {
                        self.topics.insert(topic.to_owned(), (epoch.to_owned(), to));
                    }
                }
                true
            }
            _ => true,
        }
    }

    /// The `from` of a resuming `sub`: one cursor for an exact topic (when it has one),
    /// otherwise the topics form, which also serves topics not seen yet.
    pub fn to_from(&self, pattern: &str) -> Value {
        let exact = !crate::routing::topic::is_wildcard(pattern);
        if exact && let Some((epoch, seq)) = self.topics.get(pattern) {
            return json!({"epoch": epoch, "seq": seq});
        }
        let topics: serde_json::Map<String, Value> = self
            .topics
            .iter()
            .map(|(t, (e, s))| (t.clone(), json!({"epoch": e, "seq": s})))
            .collect();
        json!({"topics": topics, "since": self.since})
    }
}

/// How `murmur pub` reads its DATA argument: JSON if it parses, otherwise a JSON string, so
/// `murmur pub chat.lobby hello` works without quoting.
pub fn data_from_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The events of one run of a compact batch (docs/protocol.md, "Compact batches"), each as
/// its plain `event` frame would be, appended to `out`.
pub fn expand_run(
    run: &Value,
    out: &mut std::collections::VecDeque<Value>,
) -> Result<(), ClientError> {
    let bad = |what: &str| ClientError::BadBatch(format!("{what} in run {run}"));
    let data = run["data"]
        .as_array()
        .ok_or_else(|| bad("no `data` array"))?;
    let first_seq = run["seq"].as_u64().ok_or_else(|| bad("no `seq`"))?;
    let mut ts = run["ts"].as_i64().ok_or_else(|| bad("no `ts`"))?;
    let dts = match run.get("dts") {
        None => None,
        Some(Value::Array(dts)) if dts.len() + 1 == data.len() => Some(dts),
        Some(_) => return Err(bad("`dts` not one number per event after the first")),
    };
    for (i, value) in data.iter().enumerate() {
        if i > 0 {
            ts += match dts {
                Some(dts) => dts[i - 1]
                    .as_i64()
                    .ok_or_else(|| bad("a `dts` not a number"))?,
                None => 0,
            };
        }
        let mut event = json!({
            "op": "event", "sub": run["sub"], "topic": run["topic"], "epoch": run["epoch"],
            "seq": first_seq + i as u64, "data": value, "ts": ts,
        });
        for key in ["encoding", "delivery", "redelivered"] {
            if let Some(field) = run.get(key) {
                event[key] = field.clone();
            }
        }
        out.push_back(event);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_tracks_topics_skips_duplicates_and_moves_past_gaps() {
        let mut cursor = ResumeCursor::starting_at(100);
        assert_eq!(cursor.to_from("a.*"), json!({"topics": {}, "since": 100}));
        let event = |topic: &str, seq: u64, ts: i64| json!({"op": "event", "topic": topic, "epoch": "e", "seq": seq, "ts": ts});
        assert!(cursor.observe(&event("a.x", 1, 200)));
        assert!(cursor.observe(&event("a.x", 2, 210)));
        assert!(!cursor.observe(&event("a.x", 2, 210)), "a duplicate");
        assert!(cursor.observe(&event("a.y", 7, 205)));
        assert_eq!(
            cursor.to_from("a.*"),
            json!({"topics": {"a.x": {"epoch": "e", "seq": 2}, "a.y": {"epoch": "e", "seq": 7}}, "since": 100}),
            "`since` stays at the start: a topic not seen yet may have events older than those seen"
        );
        assert_eq!(cursor.to_from("a.x"), json!({"epoch": "e", "seq": 2}));
        cursor.observe(
            &json!({"op": "gap", "topic": "a.x", "epoch": "e", "from_seq": 3, "to_seq": 9}),
        );
        assert_eq!(cursor.to_from("a.x"), json!({"epoch": "e", "seq": 9}));
        assert!(cursor.observe(&event("a.x", 10, 300)));
    }

    #[test]
    fn sub_from_starts_and_then_resumes_from_its_cursor() {
        let (from, cursor) = ResumeCursor::from_start("latest", "a.*", 100).unwrap();
        assert_eq!(
            (from, cursor.to_from("a.*")),
            (None, json!({"topics": {}, "since": 100}))
        );
        let (from, cursor) = ResumeCursor::from_start("earliest", "a.*", 100).unwrap();
        assert_eq!(from, Some(json!("earliest")));
        assert_eq!(cursor.to_from("a.*"), json!({"topics": {}, "since": 0}));
        let exact = r#"{"epoch":"e","seq":4}"#;
        let (from, cursor) = ResumeCursor::from_start(exact, "a.x", 100).unwrap();
        assert_eq!(from, Some(json!({"epoch": "e", "seq": 4})));
        assert_eq!(cursor.to_from("a.x"), json!({"epoch": "e", "seq": 4}));
        let topics = r#"{"topics":{"a.x":{"epoch":"e","seq":4}},"since":50}"#;
        let (_, cursor) = ResumeCursor::from_start(topics, "a.*", 100).unwrap();
        assert_eq!(
            cursor.to_from("a.*"),
            json!({"topics": {"a.x": {"epoch": "e", "seq": 4}}, "since": 50})
        );
        for bad in ["soon", exact, r#"{"epoch":"","seq":1}"#, r#"{"topics":[]}"#] {
            assert!(ResumeCursor::from_start(bad, "a.*", 100).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn batch_frames_are_read_one_event_at_a_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let node = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(socket).await.unwrap();
            let event = |seq: u64| json!({"op": "event", "sub": "s", "topic": "t", "epoch": "e", "seq": seq});
            for frame in [
                json!({"op": "welcome"}),
                json!({"op": "batch", "events": [event(1), event(2), event(3)]}),
                event(4),
                json!({"op": "batch", "events": [event(5), event(6)]}),
            ] {
                ws.send(Message::text(frame.to_string())).await.unwrap();
            }
            // Keeps the connection open until the client is done.
            let _ = ws.next().await;
        });
        let mut client = Client::connect(&url).await.unwrap();
        let mut seqs = Vec::new();
        for _ in 0..6 {
            let frame = client.next_frame().await.unwrap();
            assert_eq!(frame["op"], "event");
            seqs.push(frame["seq"].as_u64().unwrap());
        }
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        drop(client);
        node.await.unwrap();
    }

    #[tokio::test]
    async fn connections_turn_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(Message::text(r#"{"op":"welcome"}"#)).await.unwrap();
            ws
        });
        let client = Client::connect(&format!("ws://{addr}/ws")).await.unwrap();
        assert_eq!(client.welcome()["op"], "welcome");
        let MaybeTlsStream::Plain(tcp) = client.ws.get_ref() else {
            panic!("a plain TCP connection")
        };
        assert!(tcp.nodelay().unwrap());
        drop(server.await);
    }

    #[test]
    fn data_argument_is_json_or_a_string() {
        assert_eq!(data_from_arg(r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(data_from_arg("42"), json!(42));
        assert_eq!(data_from_arg("hello there"), json!("hello there"));
    }
}
