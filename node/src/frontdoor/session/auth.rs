//! A connection's identity: its token from the upgrade or `hello`, the permission check of
//! every request, in-band `refresh`, the `expiring` notice and the close at expiry.
//!
//! Codes (docs/protocol.md): a bad or missing token is `unauthorized` and closes with 4500;
//! an expired one `token_expired`, closing with 4501 — both "do not reconnect without a new
//! token". An operation the token does not allow is `forbidden`; the connection stays.

use std::time::{Duration, SystemTime};

use axum::extract::ws::Message;
use tokio::time::Instant;

use super::{Ending, Session};
use crate::auth::{AuthError, AuthErrorCode, Identity};
use crate::protocol::{ErrorCode, Reply, Request, RequestError, ResumeFrom};

/// How long before its token expires a connection is told (`expiring`), at most; a token
/// with less life left than twice this is announced halfway through.
const EXPIRING_NOTICE: Duration = Duration::from_secs(30);

/// What the session knows of its client's identity.
#[derive(Debug)]
pub(super) struct ConnectionAuth {
    /// `None` until a valid token arrives (with `auth = token` and no anonymous access).
    identity: Option<Identity>,
    /// When to send `expiring`, and when the token stops being accepted.
    expiring_at: Option<Instant>,
    expires_at: Option<Instant>,
    expiring_sent: bool,
    /// Set when a refused token must end the connection after its error frame.
    closing: Option<Ending>,
}

impl ConnectionAuth {
    pub(super) fn new(identity: Option<Identity>) -> Self {
        let mut auth = Self {
            identity: None,
            expiring_at: None,
            expires_at: None,
            expiring_sent: false,
            closing: None,
        };
        if let Some(identity) = identity {
            auth.install(identity);
        }
        auth
    }

    fn install(&mut self, identity: Identity) {
        let left = identity.expires_in(SystemTime::now());
        let now = Instant::now();
        self.expires_at = left.map(|left| now + left);
        self.expiring_at =
            left.map(|left| now + left.saturating_sub(EXPIRING_NOTICE.min(left / 2)));
        self.expiring_sent = false;
        self.identity = Some(identity);
    }

    pub(super) fn user(&self) -> Option<&str> {
        self.identity
            .as_ref()
            .map(|i| i.user.as_str())
            .filter(|u| !u.is_empty())
    }

    pub(super) fn expires_at_ms(&self) -> Option<u64> {
        self.identity.as_ref().and_then(Identity::expires_at_ms)
    }

    pub(super) fn take_closing(&mut self) -> Option<Ending> {
        self.closing.take()
    }

    /// The next moment something is due: the end of the `hello` wait for a connection
    /// without a token, else the `expiring` notice, else the expiry.
    pub(super) fn next_deadline(&self, hello_deadline: Option<Instant>) -> Option<Instant> {
        if self.identity.is_none() {
            return hello_deadline;
        }
        if self.expiring_sent {
            self.expires_at
        } else {
            self.expiring_at
        }
    }
}

fn auth_error(reference: Option<&str>, err: &AuthError) -> RequestError {
    let code = match err.code() {
        AuthErrorCode::Unauthorized => ErrorCode::Unauthorized,
        AuthErrorCode::TokenExpired => ErrorCode::TokenExpired,
        AuthErrorCode::Unavailable => ErrorCode::Unavailable,
    };
    RequestError::new(reference, code, err.to_string())
}

impl Session {
    /// Refuses a request this connection may not make: anything but `hello` and `ping`
    /// before it has an identity (`unauthorized`), and subscriptions, history and publishes
    /// its token does not allow (`forbidden`, the connection stays).
    pub(super) fn check_allowed(&self, request: &Request) -> Result<(), RequestError> {
        let Some(identity) = &self.auth.identity else {
            return match request {
                Request::Hello { .. } | Request::Ping { .. } => Ok(()),
                other => {
                    self.node.metrics.auth_refusals.inc();
                    Err(RequestError::new(
                        other.reference(),
                        ErrorCode::Unauthorized,
                        "this node requires a token: send `hello` with one first",
                    ))
                }
            };
        };
        let permissions = &identity.permissions;
        if permissions.is_unrestricted() {
            return Ok(());
        }
        let refused = match request {
            Request::Subscribe(sub) if !permissions.can_subscribe(&sub.topic) => Some(format!(
                "your token does not allow subscribing to `{}` (every topic it can match must \
                 be allowed)",
                sub.topic
            )),
            Request::Subscribe(sub)
                if sub.from != ResumeFrom::Latest && !permissions.can_read_history(&sub.topic) =>
            {
                Some(format!(
                    "your token does not allow reading the history of `{}` (a `sub` with \
                     `from` needs `history`)",
                    sub.topic
                ))
            }
            Request::Publish { topic, .. } if !permissions.can_publish(topic) => {
                Some(format!("your token does not allow publishing to `{topic}`"))
            }
            _ => None,
        };
        match refused {
            Some(message) => {
                self.node.metrics.auth_refusals.inc();
                Err(RequestError::new(
                    request.reference(),
                    ErrorCode::Forbidden,
                    message,
                ))
            }
            None => Ok(()),
        }
    }

    /// A `hello`'s token: checked, and the connection's identity from then on. A refused
    /// token ends the connection after its error; so does a `hello` without one when the
    /// node requires one and the connection has none yet. Returns the error frames of subscriptions a second `hello` with a narrower token ended
    /// (as a refresh would).
    pub(super) async fn hello_token(
        &mut self,
        token: Option<&str>,
    ) -> Result<Vec<Message>, RequestError> {
        let Some(token) = token else {
            if self.auth.identity.is_none() {
                self.node.metrics.auth_refusals.inc();
                self.auth.closing = Some(Ending::Unauthorized);
                return Err(auth_error(None, &AuthError::TokenRequired));
            }
            return Ok(Vec::new());
        };
        match self.node.auth.authenticate(Some(token)).await {
            Ok(identity) => Ok(self.adopt(identity)),
            Err(err) => {
                self.node.metrics.auth_refusals.inc();
                self.auth.closing = match err.code() {
                    AuthErrorCode::Unauthorized => Some(Ending::Unauthorized),
                    AuthErrorCode::TokenExpired => Some(Ending::TokenExpired),
                    // The keys cannot be fetched: the token may be fine; the client may retry
                    // on this connection.
                    AuthErrorCode::Unavailable => None,
                };
                Err(auth_error(None, &err))
            }
        }
    }

    /// `refresh`: a new token for the same user. The connection goes on with it; the
    /// subscriptions it no longer allows end, each told with a `forbidden` error naming it.
    /// A refused token changes nothing (the current one holds until it expires).
    pub(super) async fn refresh(
        &mut self,
        token: &str,
        reference: Option<&str>,
    ) -> Result<Vec<Message>, RequestError> {
        let identity = match self.node.auth.verify(token).await {
            Ok(identity) => identity,
            Err(err) => {
                self.node.metrics.auth_refusals.inc();
                return Err(auth_error(reference, &err));
            }
        };
        let current = self.auth.identity.as_ref().map(|i| i.user.as_str());
        if current.is_some_and(|user| user != identity.user) {
            self.node.metrics.auth_refusals.inc();
            return Err(RequestError::new(
                reference,
                ErrorCode::Unauthorized,
                "the new token is for another user (`sub`); reconnect to change users",
            ));
        }
        let mut frames = self.adopt(identity);
        frames.push(self.encode(&Reply::Refreshed {
            reference,
            expires_at_ms: self.auth.expires_at_ms(),
        }));
        Ok(frames)
    }

    /// Takes `identity` for the connection; returns the error frames of the subscriptions it
    /// no longer allows, which are ended.
    fn adopt(&mut self, identity: Identity) -> Vec<Message> {
        let revoked: Vec<String> = {
            let patterns = self.subscriptions.values().map(|s| &*s.pattern);
            let revoked = identity.revoked(patterns);
            self.subscriptions
                .iter()
                .filter(|(_, s)| revoked.contains(&&*s.pattern))
                .map(|(id, _)| id.clone())
                .collect()
        };
        self.auth.install(identity);
        let mut frames = Vec::new();
        for id in revoked {
            if self.end_subscription(&id) {
                self.node.metrics.auth_refusals.inc();
                frames.push(self.encode(&Reply::Error {
                    reference: Some(&id),
                    code: ErrorCode::Forbidden,
                    message: "subscription ended: the new token does not allow it",
                }));
            }
        }
        frames
    }

    /// A deadline of the connection's identity has come: the end of the wait for `hello`,
    /// the `expiring` notice, or the expiry itself.
    pub(super) async fn on_auth_deadline(
        &mut self,
        hello_deadline: Option<Instant>,
    ) -> Result<(), Ending> {
        let now = Instant::now();
        if self.auth.identity.is_none() {
            if hello_deadline.is_some_and(|d| now >= d) {
                self.node.metrics.auth_refusals.inc();
                let error = self.encode(&Reply::Error {
                    reference: None,
                    code: ErrorCode::Unauthorized,
                    message: "no valid `hello` with a token within hello_timeout",
                });
                self.write(error).await?;
                return Err(Ending::Unauthorized);
            }
            return Ok(());
        }
        if self.auth.expires_at.is_some_and(|at| now >= at) {
            let error = self.encode(&Reply::Error {
                reference: None,
                code: ErrorCode::TokenExpired,
                message: "your token expired; connect again with a new one",
            });
            self.write(error).await?;
            return Err(Ending::TokenExpired);
        }
        if !self.auth.expiring_sent && self.auth.expiring_at.is_some_and(|at| now >= at) {
            self.auth.expiring_sent = true;
            let in_ms = self
                .auth
                .expires_at
                .map_or(0, |at| at.saturating_duration_since(now).as_millis() as u64);
            let notice = self.encode(&Reply::Expiring { in_ms });
            self.write(notice).await?;
        }
        Ok(())
    }
}
