//! Test harness: real Murmur nodes on 127.0.0.1 with OS-assigned ports, and a WebSocket
//! client that speaks the protocol frame by frame. Every wait is bounded.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use murmur::{RunningNode, Settings};
use murmur_proto::client::v1 as pb;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long any single expected frame may take to arrive.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a node on 127.0.0.1 with a free port; `tweak` adjusts the settings first.
pub async fn start_node(tweak: impl FnOnce(&mut Settings)) -> RunningNode {
    let mut settings = Settings {
        name: "test-node".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        gossip: "127.0.0.1:0".parse().unwrap(),
        quic: "127.0.0.1:0".parse().unwrap(),
        ..Settings::default()
    };
    tweak(&mut settings);
    RunningNode::start(settings).await.expect("node starts")
}

pub fn ws_url(node: &RunningNode) -> String {
    format!("ws://{}/ws", node.local_addr())
}

/// What the node sent, or how the connection ended.
#[derive(Debug)]
pub enum Received {
    Frame(Message),
    Closed(Option<CloseFrame>),
}

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects and consumes the `welcome` frame (returned).
    pub async fn connect_json(node: &RunningNode) -> anyhow::Result<(Self, Value)> {
        let mut client = Self::connect_url(&ws_url(node)).await?;
        let welcome = client.recv_json().await?;
        if welcome["op"] != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        Ok((client, welcome))
    }

    /// Connects with `?format=protobuf` and consumes the `welcome` frame.
    pub async fn connect_protobuf(node: &RunningNode) -> anyhow::Result<(Self, pb::Welcome)> {
        let mut client = Self::connect_url(&format!("{}?format=protobuf", ws_url(node))).await?;
        match client.recv_proto().await?.op {
            Some(pb::server_frame::Op::Welcome(w)) => Ok((client, w)),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    pub async fn connect_url(url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, connect_async(url))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect to {url}"))?;
        Ok(Self { ws })
    }

    pub async fn send_json(&mut self, frame: Value) -> anyhow::Result<()> {
        self.send_text(&frame.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, bytes: impl Into<Bytes>) -> anyhow::Result<()> {
        self.ws.send(Message::binary(bytes.into())).await?;
        Ok(())
    }

    pub async fn send_proto(&mut self, op: pb::client_frame::Op) -> anyhow::Result<()> {
        self.send_binary(pb::ClientFrame { op: Some(op) }.encode_to_vec())
            .await
    }

    /// The next data frame or the end of the connection, skipping WebSocket pings/pongs.
    pub async fn recv(&mut self) -> anyhow::Result<Received> {
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .context("no frame from the node in time")?;
            match next {
                None => return Ok(Received::Closed(None)),
                Some(Err(err)) => return Err(anyhow!("socket error: {err}")),
                Some(Ok(Message::Close(frame))) => return Ok(Received::Closed(frame)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(message)) => return Ok(Received::Frame(message)),
            }
        }
    }

    pub async fn recv_json(&mut self) -> anyhow::Result<Value> {
        match self.recv().await? {
            Received::Frame(Message::Text(text)) => {
                serde_json::from_str(text.as_str()).context("node sent invalid JSON")
            }
            other => bail!("expected a JSON text frame, got {other:?}"),
        }
    }

    pub async fn recv_proto(&mut self) -> anyhow::Result<pb::ServerFrame> {
        match self.recv().await? {
            Received::Frame(Message::Binary(bytes)) => {
                pb::ServerFrame::decode(bytes).context("node sent an invalid ServerFrame")
            }
            other => bail!("expected a protobuf binary frame, got {other:?}"),
        }
    }

    /// Sends a request and returns the next frame, which must answer it.
    pub async fn request(&mut self, frame: Value) -> anyhow::Result<Value> {
        self.send_json(frame).await?;
        self.recv_json().await
    }

    /// Sends raw text and returns the next frame.
    pub async fn request_text(&mut self, text: &str) -> anyhow::Result<Value> {
        self.send_text(text).await?;
        self.recv_json().await
    }

    pub async fn sub(&mut self, id: &str, topic: &str) -> anyhow::Result<()> {
        let reply = self
            .request(json!({"op": "sub", "id": id, "topic": topic}))
            .await?;
        expect_ok(&reply, id)
    }

    pub async fn sub_group(&mut self, id: &str, topic: &str, group: &str) -> anyhow::Result<()> {
        let reply = self
            .request(json!({"op": "sub", "id": id, "topic": topic, "group": group}))
            .await?;
        expect_ok(&reply, id)
    }

    /// Publishes with a ref and returns the `ok` (with epoch and seq). Events this client
    /// receives meanwhile are returned too, so none is lost to the caller.
    pub async fn publish(
        &mut self,
        topic: &str,
        data: Value,
        reference: &str,
    ) -> anyhow::Result<(Value, Vec<Value>)> {
        self.send_json(json!({"op": "pub", "topic": topic, "data": data, "ref": reference}))
            .await?;
        let mut events = Vec::new();
        loop {
            let frame = self.recv_json().await?;
            match frame["op"].as_str() {
                Some("event") => events.push(frame),
                Some("ok") if frame["ref"] == reference => return Ok((frame, events)),
                _ => bail!("unexpected answer to pub {reference}: {frame}"),
            }
        }
    }

    /// Answers a WebSocket-level check that the connection is alive and in sync:
    /// sends `ping` with `reference` and expects the matching `pong` next.
    pub async fn ping(&mut self, reference: &str) -> anyhow::Result<()> {
        let pong = self
            .request(json!({"op": "ping", "ref": reference}))
            .await?;
        if pong["op"] != "pong" || pong["ref"] != reference {
            bail!("expected pong {reference}, got {pong}");
        }
        Ok(())
    }

    /// Receives events until one on `sentinel_topic` arrives; returns those before it.
    pub async fn events_until(&mut self, sentinel_topic: &str) -> anyhow::Result<Vec<Value>> {
        let mut events = Vec::new();
        loop {
            let frame = self.recv_json().await?;
            if frame["op"] != "event" {
                bail!("expected an event, got {frame}");
            }
            if frame["topic"] == sentinel_topic {
                return Ok(events);
            }
            events.push(frame);
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the connection without a close handshake, as a crashed client would.
    pub fn abandon(self) {
        drop(self.ws);
    }
}

pub fn expect_ok(reply: &Value, reference: &str) -> anyhow::Result<()> {
    if reply["op"] != "ok" || reply["ref"] != reference {
        bail!("expected ok for {reference}, got {reply}");
    }
    Ok(())
}

/// Asserts `frame` is an `error` with `code` answering `reference` (None: no ref).
pub fn expect_error(frame: &Value, code: &str, reference: Option<&str>) {
    assert_eq!(frame["op"], "error", "expected an error frame, got {frame}");
    assert_eq!(frame["code"], code, "wrong code in {frame}");
    match reference {
        Some(r) => assert_eq!(frame["ref"], r, "wrong ref in {frame}"),
        None => assert!(frame.get("ref").is_none(), "unexpected ref in {frame}"),
    }
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {frame}"
    );
}
