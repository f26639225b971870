//! The QUIC mesh between nodes (`quinn`), authenticated both ways with mutual TLS.
//!
//! One connection per pair of nodes: the node whose name sorts first dials, the other
//! accepts. On it each side opens two unidirectional streams and writes length-prefixed
//! protobuf `PeerFrame`s on them, each starting with a `Hello` naming itself, which the
//! receiver checks against the peer's verified certificate. The main stream carries
//! everything but publishes, in the order queued, so per-topic order survives the hop; its
//! reader never waits for anything. The publish stream carries publishes for the peer's
//! topics, in order; the owner reads it only while its publish buffer has room, so QUIC's
//! flow control pushes back on the publishing node (see `link.rs`) without ever holding up
//! the main stream, which carries the `Stored` answers that free that room.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use murmur_proto::cluster::v1 as pb;
use prost::{Message, encoding};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use thiserror::Error;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::link::{Interest, PeerLink, PeerMessage};
use super::security::{NodeIdentity, SecurityError, certificate_names};
use crate::event::{Event, Payload};
use crate::routing::dedupe::{Position, PublishId, RememberedId};

/// Largest inter-node frame: a forwarded event carries at most one client frame's payload.
const MAX_PEER_FRAME: usize = 64 * 1024 * 1024;
/// Frames written per flush, at most.
const WRITE_BATCH: usize = 128;
/// Requested size of the QUIC socket's kernel buffers (see [`udp_socket`]).
const UDP_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// How long the handshake (connect, hello both ways) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum TransportError {
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("QUIC TLS setup: {0}")]
    QuicTls(String),
    #[error("cannot bind QUIC on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the stream before saying hello")]
    NoHello,
    #[error("peer frame: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("peer speaks inter-node protocol version {0}, this node speaks {v}", v = pb::VERSION)]
    Version(u32),
    #[error("peer's first frame was not a hello")]
    NotHello,
    #[error("peer says it is `{claimed}` but its certificate does not name it")]
    WrongIdentity { claimed: String },
    #[error("expected peer `{expected}`, reached `{found}`")]
    UnexpectedPeer { expected: String, found: String },
    #[error("handshake timed out")]
    Timeout,
    #[error("peer sent {0}")]
    Misplaced(&'static str),
}

/// Binds the node's QUIC endpoint, which both accepts and dials.
pub fn bind(addr: SocketAddr, identity: &NodeIdentity) -> Result<quinn::Endpoint, TransportError> {
    let server_tls = QuicServerConfig::try_from(identity.server_config()?)
        .map_err(|e| TransportError::QuicTls(e.to_string()))?;
    let client_tls = QuicClientConfig::try_from(identity.client_config()?)
        .map_err(|e| TransportError::QuicTls(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    let transport = Arc::new(transport);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport);
    let bind_error = |source| TransportError::Bind { addr, source };
    let socket = udp_socket(addr).map_err(bind_error)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_error(std::io::Error::other("no async runtime")))?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(bind_error)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// The QUIC endpoint's UDP socket, with room for bursts. All of a node's links share it, and
/// at full speed the peers send faster than one task drains it: with the kernel's default
/// receive buffer (about 200 KB) loopback dropped one datagram in ten, and every drop cost
/// QUIC a loss recovery and a halved congestion window, so nodes sat idle while events
/// waited seconds. The kernel caps the sizes at `net.core.{r,w}mem_max`.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer works, only with more loss under load.
    for (what, result) in [
        ("receive", socket.set_recv_buffer_size(UDP_BUFFER_BYTES)),
        ("send", socket.set_send_buffer_size(UDP_BUFFER_BYTES)),
    ] {
        if let Err(err) = result {
            tracing::warn!(%err, "cannot size the QUIC socket's {what} buffer");
        }
    }
    tracing::debug!(
        receive = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "QUIC socket buffers"
    );
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub type PeerWriter = FramedWrite<quinn::SendStream, LengthDelimitedCodec>;
pub type PeerReader = FramedRead<quinn::RecvStream, LengthDelimitedCodec>;

/// A connection whose peer has said who it is, with two streams each way.
pub struct Established {
    pub connection: quinn::Connection,
    pub peer: pb::Hello,
    pub writer: PeerWriter,
    pub reader: PeerReader,
    /// The stream of publishes to the peer, as their owner.
    pub publish_writer: PeerWriter,
    /// The stream of publishes from the peer, for topics this node owns.
    pub publish_reader: PeerReader,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_PEER_FRAME)
        .new_codec()
}

fn frame(msg: pb::peer_frame::Msg) -> Bytes {
    Bytes::from(
        pb::PeerFrame {
            version: pb::VERSION,
            msg: Some(msg),
        }
        .encode_to_vec(),
    )
}

/// Dials `name` at `addr`; TLS checks that the certificate names it.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    name: &str,
    me: &pb::Hello,
) -> Result<Established, TransportError> {
    let handshake = async {
        let connection = endpoint.connect(addr, name)?.await?;
        let writer = open_stream(&connection, me).await?;
        let publish_writer = open_stream(&connection, me).await?;
        // The client learns late that the server refused its certificate: the first stream
        // operation fails. Waiting for the peer's hello makes "connected" mean "accepted".
        let mut reader = FramedRead::new(connection.accept_uni().await?, codec());
        let peer = read_hello(&mut reader).await?;
        if peer.name != name {
            return Err(TransportError::UnexpectedPeer {
                expected: name.to_owned(),
                found: peer.name,
            });
        }
        let publish_reader = accept_stream(&connection, &peer).await?;
        Ok(Established {
            connection,
            peer,
            writer,
            reader,
            publish_writer,
            publish_reader,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| TransportError::Timeout)?
}

/// Completes an incoming connection: TLS already required a cluster certificate; the hello
/// must name the node that certificate was issued to.
pub async fn accept(
    incoming: quinn::Incoming,
    me: &pb::Hello,
) -> Result<Established, TransportError> {
    let handshake = async {
        let connection = incoming.await?;
        let mut reader = FramedRead::new(connection.accept_uni().await?, codec());
        let peer = read_hello(&mut reader).await?;
        let certified = connection
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.first().map(|c| certificate_names(c, &peer.name)))
            .unwrap_or(false);
        if !certified {
            connection.close(
                quinn::VarInt::from_u32(1),
                b"certificate does not name the hello",
            );
            return Err(TransportError::WrongIdentity { claimed: peer.name });
        }
        let publish_reader = accept_stream(&connection, &peer).await?;
        let writer = open_stream(&connection, me).await?;
        let publish_writer = open_stream(&connection, me).await?;
        Ok(Established {
            connection,
            peer,
            writer,
            reader,
            publish_writer,
            publish_reader,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| TransportError::Timeout)?
}

/// Opens a stream to the peer and says hello on it (a stream reaches the peer only once
/// something is written on it; streams are accepted in the order they were opened).
async fn open_stream(
    connection: &quinn::Connection,
    me: &pb::Hello,
) -> Result<PeerWriter, TransportError> {
    let mut writer = FramedWrite::new(connection.open_uni().await?, codec());
    writer
        .send(frame(pb::peer_frame::Msg::Hello(me.clone())))
        .await?;
    Ok(writer)
}

/// Accepts the peer's next stream; its hello must name the same node as the first.
async fn accept_stream(
    connection: &quinn::Connection,
    peer: &pb::Hello,
) -> Result<PeerReader, TransportError> {
    let mut reader = FramedRead::new(connection.accept_uni().await?, codec());
    let hello = read_hello(&mut reader).await?;
    if hello.name != peer.name {
        return Err(TransportError::UnexpectedPeer {
            expected: peer.name.clone(),
            found: hello.name,
        });
    }
    Ok(reader)
}

async fn read_hello(
    reader: &mut FramedRead<quinn::RecvStream, LengthDelimitedCodec>,
) -> Result<pb::Hello, TransportError> {
    let bytes = reader.next().await.ok_or(TransportError::NoHello)??;
    match decode(bytes.freeze())? {
        pb::peer_frame::Msg::Hello(hello) => Ok(hello),
        _ => Err(TransportError::NotHello),
    }
}

/// Decodes one frame and checks its version.
pub fn decode(bytes: Bytes) -> Result<pb::peer_frame::Msg, TransportError> {
    let frame = pb::PeerFrame::decode(bytes)?;
    if frame.version != pb::VERSION {
        return Err(TransportError::Version(frame.version));
    }
    frame.msg.ok_or(TransportError::NotHello)
}

/// Writes what `first` and `second` hold, `first` first, until both close or the stream
/// fails; tells `link` after every flush.
pub async fn write_loop(
    mut writer: PeerWriter,
    mut first: tokio::sync::mpsc::UnboundedReceiver<PeerMessage>,
    mut second: Option<tokio::sync::mpsc::Receiver<PeerMessage>>,
    link: Arc<PeerLink>,
) -> Result<(), TransportError> {
    loop {
        let message = tokio::select! {
            biased;
            Some(m) = first.recv() => m,
            Some(m) = async {
                match second.as_mut() {
                    Some(second) => second.recv().await,
                    None => std::future::pending().await,
                }
            } => m,
            else => return Ok(()),
        };
        let mut sent_signals = Vec::new();
        let mut next = Some(message);
        let mut written = 0;
        while let Some(mut message) = next.take() {
            // Straight into the stream's buffer: no frame built and copied per message.
            put_frame(writer.write_buffer_mut(), &message);
            if let PeerMessage::Leaving { sent, .. } = &mut message
                && let Some(signal) = sent.take()
            {
                sent_signals.push(signal);
            }
            written += 1;
            if written < WRITE_BATCH {
                next = first
                    .try_recv()
                    .ok()
                    .or_else(|| second.as_mut().and_then(|s| s.try_recv().ok()));
            }
        }
        SinkExt::<Bytes>::flush(&mut writer).await?;
        link.note_progress();
        for signal in sent_signals {
            let _ = signal.send(());
        }
    }
}

fn interest_pb(i: &Interest) -> pb::Interest {
    pb::Interest {
        pattern: i.pattern.to_string(),
        group: i.group.as_deref().map(str::to_owned),
    }
}

pub fn interest_from_pb(i: pb::Interest) -> Interest {
    Interest {
        pattern: i.pattern.into(),
        group: i.group.filter(|g| !g.is_empty()).map(Into::into),
    }
}

/// Appends `message` to `buf` as one length-prefixed `PeerFrame`, the framing
/// [`LengthDelimitedCodec`] reads (a 4-byte big-endian length). Events, the bulk of the
/// traffic, are encoded from the shared [`Event`] without building a `pb::Event`.
fn put_frame(buf: &mut BytesMut, message: &PeerMessage) {
    match message {
        PeerMessage::Replicate(event) => {
            // Replicas remember the publish's id too: a retry after the owner fails over
            // gets the original position from whichever of them takes over.
            let event = EventFields(event, true);
            let body = event.field_len(1);
            put_frame_header(buf, 9, body);
            event.put_field(1, buf);
        }
        PeerMessage::Forward {
            event,
            plain,
            groups,
            redelivered,
            ..
        } => {
            let event = EventFields(event, false);
            let rest = pb::Forward {
                event: None,
                plain: *plain,
                groups: groups.iter().map(|(i, _)| interest_pb(i)).collect(),
                redelivered: *redelivered,
                group_tokens: groups.iter().map(|(_, t)| *t).collect(),
            };
            // Fields may come in any order: the event first, then the rest as prost writes it.
            let body = event.field_len(1) + rest.encoded_len();
            put_frame_header(buf, 5, body);
            event.put_field(1, buf);
            rest.encode_raw(buf);
        }
        PeerMessage::Frame(msg) | PeerMessage::Publish { msg, .. } => put_msg(buf, msg),
        // The rare, small messages, built the plain way.
        PeerMessage::Snapshot(all) => put_msg(
            buf,
            &pb::peer_frame::Msg::Snapshot(pb::InterestSnapshot {
                interests: all.iter().map(interest_pb).collect(),
            }),
        ),
        PeerMessage::Delta { added, removed } => put_msg(
            buf,
            &pb::peer_frame::Msg::Delta(pb::InterestDelta {
                added: added.iter().map(interest_pb).collect(),
                removed: removed.iter().map(interest_pb).collect(),
            }),
        ),
        PeerMessage::SyncTopic {
            topic,
            epoch,
            last_seq,
            events,
            ids,
        } => put_msg(
            buf,
            &pb::peer_frame::Msg::Sync(pb::ReplicaSync {
                topic: topic.to_string(),
                epoch: epoch.to_string(),
                last_seq: *last_seq,
                events: events.iter().map(|e| event_pb(e)).collect(),
                ids: ids.iter().map(remembered_pb).collect(),
            }),
        ),
        PeerMessage::DropNotice { pending } => {
            // Written now: a later drop needs a notice of its own.
            pending.store(false, std::sync::atomic::Ordering::Release);
            put_msg(buf, &pb::peer_frame::Msg::Dropped(pb::EventsDropped {}));
        }
        PeerMessage::Leaving { generation, .. } => put_msg(
            buf,
            &pb::peer_frame::Msg::Leaving(pb::Leaving {
                generation: *generation,
            }),
        ),
    }
}

/// A `PeerFrame` holding `msg`.
fn put_msg(buf: &mut BytesMut, msg: &pb::peer_frame::Msg) {
    let len = VERSION_FIELD_LEN + msg.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(frame_len(len));
    encoding::uint32::encode(1, &pb::VERSION, buf);
    msg.encode(buf);
}

/// The length prefix, the version, and the key and length of the `msg` field numbered `tag`
/// whose body is `body` bytes long.
fn put_frame_header(buf: &mut BytesMut, tag: u32, body: usize) {
    let len = VERSION_FIELD_LEN
        + encoding::key_len(tag)
        + encoding::encoded_len_varint(body as u64)
        + body;
    buf.reserve(4 + len);
    buf.put_u32(frame_len(len));
    encoding::uint32::encode(1, &pb::VERSION, buf);
    encoding::encode_key(tag, encoding::WireType::LengthDelimited, buf);
    encoding::encode_varint(body as u64, buf);
}

const VERSION_FIELD_LEN: usize = 2;
const _: () = assert!(
    pb::VERSION > 0 && pb::VERSION < 128,
    "the version field is 2 bytes"
);

fn frame_len(len: usize) -> u32 {
    // A frame that large cannot be built: an event carries at most one client frame.
    u32::try_from(len).expect("peer frame under 4 GiB")
}

/// Encodes an event's `pb::Event` fields by reference, as prost would (defaults omitted);
/// its publish id only when the second field says so (`Replicate`).
struct EventFields<'a>(&'a Event, bool);

impl EventFields<'_> {
    fn parts(&self) -> (&[u8], i32) {
        match &self.0.payload {
            Payload::Json(b) => (b, pb::Encoding::Json as i32),
            Payload::Binary(b) => (b, pb::Encoding::Binary as i32),
        }
    }

    fn publish_id(&self) -> &[u8] {
        match &self.0.publish_id {
            Some(id) if self.1 => id.wire().as_bytes(),
            _ => &[],
        }
    }

    fn body_len(&self) -> usize {
        let e = self.0;
        let (data, kind) = self.parts();
        let bytes = |tag: u32, b: &[u8]| {
            if b.is_empty() {
                0
            } else {
                encoding::key_len(tag) + encoding::encoded_len_varint(b.len() as u64) + b.len()
            }
        };
        let varint = |tag: u32, v: u64| {
            if v == 0 {
                0
            } else {
                encoding::key_len(tag) + encoding::encoded_len_varint(v)
            }
        };
        bytes(1, e.topic.as_bytes())
            + bytes(2, e.epoch.as_bytes())
            + varint(3, e.seq)
            + varint(4, e.ts as u64)
            + bytes(5, data)
            + varint(6, kind as u64)
            + bytes(7, self.publish_id())
    }

    /// Length of the event as field `tag` of its parent.
    fn field_len(&self, tag: u32) -> usize {
        let body = self.body_len();
        encoding::key_len(tag) + encoding::encoded_len_varint(body as u64) + body
    }

    fn put_field(&self, tag: u32, buf: &mut BytesMut) {
        let e = self.0;
        let (data, kind) = self.parts();
        encoding::encode_key(tag, encoding::WireType::LengthDelimited, buf);
        encoding::encode_varint(self.body_len() as u64, buf);
        let bytes = |tag: u32, b: &[u8], buf: &mut BytesMut| {
            if !b.is_empty() {
                encoding::encode_key(tag, encoding::WireType::LengthDelimited, buf);
                encoding::encode_varint(b.len() as u64, buf);
                buf.put_slice(b);
            }
        };
        let varint = |tag: u32, v: u64, buf: &mut BytesMut| {
            if v != 0 {
                encoding::encode_key(tag, encoding::WireType::Varint, buf);
                encoding::encode_varint(v, buf);
            }
        };
        bytes(1, e.topic.as_bytes(), buf);
        bytes(2, e.epoch.as_bytes(), buf);
        varint(3, e.seq, buf);
        varint(4, e.ts as u64, buf);
        bytes(5, data, buf);
        varint(6, kind as u64, buf);
        bytes(7, self.publish_id(), buf);
    }
}

pub fn event_pb(event: &Event) -> pb::Event {
    let (data, encoding) = match &event.payload {
        Payload::Json(b) => (b.clone(), pb::Encoding::Json),
        Payload::Binary(b) => (b.clone(), pb::Encoding::Binary),
    };
    pb::Event {
        topic: event.topic.to_string(),
        epoch: event.epoch.to_string(),
        seq: event.seq,
        ts: event.ts,
        data,
        encoding: encoding as i32,
        // Only `Replicate` carries it (see `EventFields`); history and replays do not.
        publish_id: String::new(),
    }
}

pub fn remembered_pb(r: &RememberedId) -> pb::RememberedId {
    pb::RememberedId {
        id: r.id.wire().to_owned(),
        epoch: r.position.epoch.to_string(),
        seq: r.position.seq,
        age_ms: r.age_ms,
    }
}

/// Publish ids a peer remembers; malformed ones are left out.
pub fn remembered_from_pb(ids: Vec<pb::RememberedId>) -> Vec<RememberedId> {
    ids.into_iter()
        .filter_map(|r| {
            Some(RememberedId {
                id: PublishId::from_wire(&r.id)?,
                position: Position {
                    epoch: r.epoch.into(),
                    seq: r.seq,
                },
                age_ms: r.age_ms,
            })
        })
        .collect()
}

/// Rebuilds an event a peer forwarded; `None` if it is malformed.
pub fn event_from_pb(event: pb::Event) -> Option<Event> {
    let payload = match pb::Encoding::try_from(event.encoding).ok()? {
        pb::Encoding::Json => Payload::json(event.data).ok()?,
        pb::Encoding::Binary => Payload::Binary(event.data),
    };
    if crate::routing::topic::validate_publish_topic(&event.topic, MAX_PEER_FRAME).is_err() {
        return None;
    }
    let publish_id = if event.publish_id.is_empty() {
        None
    } else {
        Some(PublishId::from_wire(&event.publish_id)?)
    };
    Some(
        Event::new(
            event.topic.into(),
            event.epoch.into(),
            event.seq,
            event.ts,
            payload,
        )
        .with_publish_id(publish_id),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// One frame as `write_loop` writes it, without its length prefix (checked here).
    fn framed(message: &PeerMessage) -> Bytes {
        let mut buf = BytesMut::new();
        put_frame(&mut buf, message);
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4, "the prefix is the frame's length");
        buf.freeze().slice(4..)
    }

    #[test]
    fn events_are_written_exactly_as_prost_writes_them() {
        let events = [
            Event::new(
                "a.b".into(),
                "e1".into(),
                4,
                1_795_000_000_000,
                Payload::Json(Bytes::from_static(b"{\"x\":1}")),
            ),
            Event::new("t".into(), "".into(), 0, -5, Payload::Binary(Bytes::new())),
            Event::new(
                "big".into(),
                "e".into(),
                u64::MAX,
                0,
                Payload::Binary(Bytes::from(vec![7u8; 70_000])),
            ),
            Event::new(
                "a.b".into(),
                "e1".into(),
                5,
                1,
                Payload::Json(Bytes::from_static(b"2")),
            )
            .with_publish_id(Some(crate::routing::dedupe::PublishId::client("k-1"))),
        ];
        for event in events.map(Arc::new) {
            let groups = vec![(
                Interest {
                    pattern: "a.*".into(),
                    group: Some("g".into()),
                },
                9,
            )];
            for (message, expected) in [
                (
                    PeerMessage::Replicate(event.clone()),
                    // Replicas get the publish's id; forwarded events go without it.
                    pb::peer_frame::Msg::Replicate(pb::Replicate {
                        event: Some(pb::Event {
                            publish_id: event
                                .publish_id
                                .as_ref()
                                .map_or_else(String::new, |id| id.wire().to_owned()),
                            ..event_pb(&event)
                        }),
                    }),
                ),
                (
                    PeerMessage::Forward {
                        event: event.clone(),
                        plain: true,
                        groups: Vec::new(),
                        redelivered: false,
                        hold: None,
                    },
                    pb::peer_frame::Msg::Forward(pb::Forward {
                        event: Some(event_pb(&event)),
                        plain: true,
                        ..Default::default()
                    }),
                ),
                (
                    PeerMessage::Forward {
                        event: event.clone(),
                        plain: false,
                        groups: groups.clone(),
                        redelivered: true,
                        hold: None,
                    },
                    pb::peer_frame::Msg::Forward(pb::Forward {
                        event: Some(event_pb(&event)),
                        plain: false,
                        groups: vec![interest_pb(&groups[0].0)],
                        redelivered: true,
                        group_tokens: vec![9],
                    }),
                ),
            ] {
                let prost = pb::PeerFrame {
                    version: pb::VERSION,
                    msg: Some(expected),
                }
                .encode_to_vec();
                assert_eq!(&framed(&message)[..], &prost[..], "{message:?}");
            }
            let Ok(pb::peer_frame::Msg::Replicate(copy)) =
                decode(framed(&PeerMessage::Replicate(event.clone())))
            else {
                panic!("a replica's copy");
            };
            let copy = copy.event.and_then(event_from_pb).expect("well formed");
            assert_eq!(
                copy.publish_id, event.publish_id,
                "the replica knows the id"
            );
        }
        let leaving = PeerMessage::Leaving {
            generation: 3,
            sent: None,
        };
        assert!(matches!(
            decode(framed(&leaving)),
            Ok(pb::peer_frame::Msg::Leaving(pb::Leaving { generation: 3 }))
        ));
    }

    #[test]
    fn frames_round_trip() {
        let event = Arc::new(Event::new(
            "a.b".into(),
            "e".into(),
            4,
            9,
            Payload::Json(Bytes::from_static(b"{\"x\":1}")),
        ));
        let message = PeerMessage::Forward {
            event,
            plain: true,
            groups: vec![(
                Interest {
                    pattern: "a.*".into(),
                    group: Some("g".into()),
                },
                9,
            )],
            redelivered: false,
            hold: None,
        };
        let Ok(pb::peer_frame::Msg::Forward(forward)) = decode(framed(&message)) else {
            panic!("not a forward");
        };
        assert!(forward.plain);
        assert_eq!(forward.groups[0].group.as_deref(), Some("g"));
        assert_eq!(forward.group_tokens, vec![9]);
        let back = event_from_pb(forward.event.unwrap()).unwrap();
        assert_eq!((&*back.topic, back.seq, back.ts), ("a.b", 4, 9));

        let future = pb::PeerFrame {
            version: 99,
            msg: Some(pb::peer_frame::Msg::Leaving(pb::Leaving { generation: 1 })),
        };
        assert!(matches!(
            decode(Bytes::from(future.encode_to_vec())),
            Err(TransportError::Version(99))
        ));
        assert!(decode(Bytes::from_static(&[0xff, 0xff])).is_err());
        // Found by fuzzing (fuzz/corpus/peer_frame/crash-json-event-not-utf8): a JSON event
        // whose string held invalid UTF-8 was accepted, and JSON subscribers got `null`.
        let not_utf8 = pb::Event {
            topic: "a.b".into(),
            data: Bytes::from_static(b"[\"\xe0\x88\"]"),
            encoding: pb::Encoding::Json as i32,
            ..Default::default()
        };
        assert!(
            event_from_pb(not_utf8).is_none(),
            "JSON events are UTF-8 text"
        );
        let bad_topic = pb::Event {
            topic: "a.*".into(),
            ..Default::default()
        };
        assert!(
            event_from_pb(bad_topic).is_none(),
            "wildcard topics are refused"
        );
    }
}
