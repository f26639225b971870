//! The HTTP API for backends, on the client port (docs/http-api.md): publish without holding
//! a WebSocket, read a topic's history page by page, list topics.
//!
//! - `POST /v1/publish`: one event or a batch, each answered once stored ([`publish`]);
//! - `GET /v1/history`: retained events after a cursor, with gaps ([`history`]);
//! - `GET /v1/topics`: topics with their epoch, last seq and local subscribers ([`topics`]);
//! - `GET /v1/stats`: members and this node's counters, for the dashboard ([`stats`]); with
//!   `?scope=cluster` every member's, asked by this node ([`cluster_stats`]);
//! - `GET /v1/openapi.json`: the OpenAPI 3.1 description of these.
//!
//! Every request is authorised as a WebSocket client is: the same tokens (here only as
//! `Authorization: Bearer`), the same permissions, the same error codes. Errors are
//! `{"error": {"code": …, "message": …}}` ([`ApiError`]).

mod cluster_stats;
mod error;
mod history;
mod publish;
mod rate;
mod stats;
mod topics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Router};

pub use self::error::ApiError;
use self::rate::PublishLimiter;
use super::listener::ClientConnection;
use crate::auth::{AuthErrorCode, Identity};
use crate::node::NodeState;
use crate::protocol::ErrorCode;

/// The OpenAPI 3.1 document of this API, checked by hand against the handlers and by
/// schemathesis against a running node (`make test-http-schema`).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// What the API keeps between requests.
#[derive(Debug)]
struct HttpApi {
    /// Publish allowances per token user or client address, when `publish_rate` is set.
    publish_limiter: Option<PublishLimiter>,
    /// Asks the other members for their numbers (`GET /v1/stats?scope=cluster`).
    peer_stats: cluster_stats::PeerStatsFetcher,
}

/// The API's routes, to be merged into the client port's router.
pub fn routes(node: &NodeState) -> Router<Arc<NodeState>> {
    let settings = &node.settings;
    let api = Arc::new(HttpApi {
        publish_limiter: (settings.publish_rate > 0)
            .then(|| PublishLimiter::new(settings.publish_rate, settings.publish_burst)),
        peer_stats: cluster_stats::PeerStatsFetcher::new(node),
    });
    Router::new()
        .route(
            "/v1/publish",
            post(publish::publish).fallback(|| async { method_not_allowed("POST") }),
        )
        .route(
            "/v1/history",
            get(history::history).fallback(|| async { method_not_allowed("GET") }),
        )
        .route(
            "/v1/topics",
            get(topics::topics).fallback(|| async { method_not_allowed("GET") }),
        )
        .route(
            "/v1/stats",
            get(stats::stats).fallback(|| async { method_not_allowed("GET") }),
        )
        .route(
            "/v1/openapi.json",
            get(openapi).fallback(|| async { method_not_allowed("GET") }),
        )
        .route("/v1/{*rest}", any(not_found))
        .layer(Extension(api))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: see /v1/openapi.json",
    )
}

fn method_not_allowed(allowed: &'static str) -> Response {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this endpoint takes {allowed} only"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    response
}

/// Who sent a request, once it is let in.
struct Caller {
    identity: Identity,
    /// Whose publish allowance the request spends: the token's user, else the address.
    rate_key: rate::RateKey,
}

/// What every request passes first, as a WebSocket upgrade does: the node takes clients, the
/// connection is within the limits, a browser's page is allowed, and the token (if the node
/// wants one) is valid. The caller's identity then decides what it may do.
async fn admit(
    node: &NodeState,
    peer: SocketAddr,
    connection: Option<&ClientConnection>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    if !node.is_accepting() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown.as_str(),
            "the node is shutting down; use another node",
        ));
    }
    if let Some(refusal) = connection.and_then(ClientConnection::refusal) {
        node.metrics.listener.count_refusal(refusal.label());
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable.as_str(),
            refusal.message().trim_end(),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| node.allowed_origins.allows(origin, host));
        if !allowed {
            node.metrics.listener.count_refusal("origin");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden.as_str(),
                "pages from this origin may not use this node's API (allowed_origins)",
            ));
        }
    }
    let token = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(_) => Some(super::bearer_token(headers).ok_or_else(|| {
            node.metrics.auth_refusals.inc();
            ApiError::unauthorized(
                ErrorCode::Unauthorized.as_str(),
                "the Authorization header must be `Bearer <token>`",
            )
        })?),
    };
    let identity = node.auth.authenticate(token).await.map_err(|err| {
        node.metrics.auth_refusals.inc();
        match err.code() {
            AuthErrorCode::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                err.code().as_str(),
                err.to_string(),
            ),
            code => {
                let message = match err {
                    crate::auth::AuthError::TokenRequired => {
                        "this node requires a token: send `Authorization: Bearer <token>`"
                            .to_owned()
                    }
                    other => other.to_string(),
                };
                ApiError::unauthorized(code.as_str(), message)
            }
        }
    })?;
    let rate_key = if identity.user.is_empty() {
        rate::RateKey::Address(super::listener::address_key(peer.ip()))
    } else {
        rate::RateKey::User(identity.user.clone())
    };
    Ok(Caller { identity, rate_key })
}

/// A refusal for what the caller's token does not allow.
fn forbidden(node: &NodeState, message: String) -> ApiError {
    node.metrics.auth_refusals.inc();
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden.as_str(),
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document is served as it is: it must be JSON and agree with the handlers' bounds.
    #[test]
    fn the_openapi_document_names_every_endpoint_with_the_handlers_bounds() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            paths,
            [
                "/v1/publish",
                "/v1/history",
                "/v1/topics",
                "/v1/stats",
                "/v1/openapi.json"
            ]
        );
        let scope = &doc["paths"]["/v1/stats"]["get"]["parameters"][0];
        assert_eq!(
            (&scope["name"], &scope["schema"]["enum"]),
            (&"scope".into(), &serde_json::json!(["node", "cluster"]))
        );
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["ClusterStats"]["properties"]["scope"]["const"],
            "cluster"
        );
        assert_eq!(
            schemas["PublishBatch"]["properties"]["events"]["maxItems"],
            publish::MAX_BATCH_EVENTS
        );
        let limit = |path: &str| {
            let parameters = doc["paths"][path]["get"]["parameters"]
                .as_array()
                .expect("parameters");
            let limit = parameters
                .iter()
                .find(|p| p["name"] == "limit")
                .expect("a limit");
            (
                limit["schema"]["maximum"].clone(),
                limit["schema"]["default"].clone(),
            )
        };
        assert_eq!(
            limit("/v1/history"),
            (history::MAX_LIMIT.into(), history::DEFAULT_LIMIT.into())
        );
        assert_eq!(
            limit("/v1/topics"),
            (topics::MAX_LIMIT.into(), topics::DEFAULT_LIMIT.into())
        );
        assert_eq!(
            schemas["Topic"]["maxLength"],
            crate::routing::topic::DEFAULT_MAX_TOPIC_BYTES
        );
    }
}
