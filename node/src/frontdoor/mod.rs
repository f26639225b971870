//! The front door: the client port and the admin port.
//!
//! The client port ([`router`], `listen`, optionally TLS): `GET /ws` upgrades to a WebSocket;
//! each connection is then served by its own task ([`session`]). `/v1/…` is the HTTP API for
//! backends ([`http_api`]: publish, history, topics, its OpenAPI document). `GET /healthz` answers 200
//! while the process serves; `GET /readyz` answers 200 once the node has joined the cluster
//! and is linked to every live peer, and 503 (with the reason) before that and once it is
//! draining. `GET /` and `GET /dashboard` are web pages embedded in the binary ([`dashboard`]):
//! a landing page and the live dashboard, which reads the HTTP API.
//!
//! The admin port ([`admin_router`], `admin_listen`, loopback by default): `GET /metrics` is
//! Prometheus text; `GET /v1/cluster` the membership as this node sees it; the health checks
//! again, for monitoring that only reaches this port.
//!
//! Both are served by [`listener`]: connection limits, the handshake deadline, TLS.

pub mod dashboard;
pub mod http_api;
pub mod listener;
pub mod origin;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use self::listener::ClientConnection;
use crate::node::NodeState;
use crate::protocol::Format;

/// WebSocket subprotocols a client may ask for instead of `?format=`.
pub const SUBPROTOCOL_JSON: &str = "murmur.v1.json";
pub const SUBPROTOCOL_PROTOBUF: &str = "murmur.v1.protobuf";

/// The client port: the WebSocket endpoint, the HTTP API for backends, the health checks and
/// the dashboard.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(http_api::routes(&state))
        .merge(dashboard::routes())
        .with_state(state)
}

/// The admin port: what operators and their monitoring read.
pub fn admin_router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster_view))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(node): State<Arc<NodeState>>) -> (StatusCode, String) {
    match node.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Prometheus text exposition.
async fn metrics(State(node): State<Arc<NodeState>>) -> Response {
    let body = node.metrics.render(&node);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// This node's view of the cluster: `{"self": NAME, "members": [...]}`, itself included.
async fn cluster_view(State(node): State<Arc<NodeState>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "self": node.cluster.name(),
        "members": node.cluster.members(),
    }))
}

/// The token of an `Authorization: Bearer …` header, if there is one.
fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    format: Option<String>,
}

async fn upgrade(
    State(node): State<Arc<NodeState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    connection: Option<Extension<Arc<ClientConnection>>>,
    Query(query): Query<WsQuery>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !node.is_accepting() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node is shutting down\n").into_response();
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| node.allowed_origins.allows(origin, host));
        if !allowed {
            node.metrics.listener.count_refusal("origin");
            tracing::debug!(%peer, ?origin, "WebSocket upgrade from an origin not allowed");
            return (
                StatusCode::FORBIDDEN,
                "this origin may not open WebSockets to this node (allowed_origins)\n",
            )
                .into_response();
        }
    }
    // The slot this connection holds, which the WebSocket keeps for its life.
    let connection = connection.map(|Extension(c)| c);
    if let Some(refusal) = connection.as_ref().and_then(|c| c.refusal()) {
        node.metrics.listener.count_refusal(refusal.label());
        return (StatusCode::SERVICE_UNAVAILABLE, refusal.message()).into_response();
    }
    // The client's own order of preference, from the raw header (the extractor sorts).
    let requested = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| match p.trim() {
            SUBPROTOCOL_JSON => Some(Format::Json),
            SUBPROTOCOL_PROTOBUF => Some(Format::Protobuf),
            _ => None,
        });
    // `?format=` wins; otherwise the first of our subprotocols in the client's order.
    let format = match query.format.as_deref() {
        None => requested.unwrap_or(Format::Json),
        Some("json") => Format::Json,
        Some("protobuf" | "proto") => Format::Protobuf,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown format `{other}`: use json or protobuf\n"),
            )
                .into_response();
        }
    };
    // A server-side client may bring its token on the upgrade (`Authorization: Bearer`):
    // refused here with 401 (503 when the keys cannot be fetched), before any WebSocket.
    let identity = match bearer_token(&headers) {
        None => None,
        Some(token) => match node.auth.authenticate(Some(token)).await {
            Ok(identity) => Some(identity),
            Err(err) => {
                node.metrics.auth_refusals.inc();
                let status = match err.code() {
                    crate::auth::AuthErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::UNAUTHORIZED,
                };
                return (status, format!("{}: {err}\n", err.code())).into_response();
            }
        },
    };
    let subprotocol = match format {
        Format::Json => SUBPROTOCOL_JSON,
        Format::Protobuf => SUBPROTOCOL_PROTOBUF,
    };
    let settings = &node.settings;
    upgrade
        // Echoed only when the client asked for it.
        .protocols([subprotocol])
        // Frames a little over the limit still arrive, so they can be refused with an error
        // frame while the connection stays usable; far larger ones end the connection.
        .max_message_size(session::hard_frame_cap(settings.max_frame_bytes))
        .max_frame_size(session::hard_frame_cap(settings.max_frame_bytes))
        .read_buffer_size(settings.ws_read_buffer)
        .write_buffer_size(settings.ws_write_buffer)
        .on_upgrade(move |socket| {
            let tracker = node.connections.clone();
            tracker.track_future(async move {
                session::serve(socket, node, format, peer, identity).await;
                drop(connection);
            })
        })
}
