//! A small client of a node's HTTP API (docs/http-api.md): what `murmur history` uses, and
//! the integration tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

/// The node's client port when no URL is given.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:7400";

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum ApiClientError {
    #[error(
        "`{0}` is not a node URL: give http://HOST:PORT or https://HOST:PORT (ws:// and wss:// work too)"
    )]
    BadUrl(String),
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    #[error("{url}: {message}")]
    Request { url: String, message: String },
    #[error("the node refused the request ({status}): {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error(transparent)]
    Tls(#[from] crate::client::ClientError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The largest page asked for (the node's maximum).
const MAX_PAGE: usize = 1000;

/// What [`ApiClient::read_history`] hands on, in order.
#[derive(Debug, Clone, Copy)]
pub enum HistoryItem<'a> {
    Gap(&'a Value),
    Event(&'a Value),
}

/// An HTTP status and the JSON body that came with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The body of a 2xx answer; anything else as [`ApiClientError::Refused`].
    pub fn into_ok(self) -> Result<Value, ApiClientError> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let error = &self.body["error"];
        Err(ApiClientError::Refused {
            status: self.status,
            code: error["code"].as_str().unwrap_or("unknown").to_owned(),
            message: error["message"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// Talks to one node's HTTP API, with a token if given.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the node at `url` (its client port: `http://HOST:PORT`, or the WebSocket
    /// URL `ws://HOST:PORT/ws`). `https://` certificates are checked against `ca` when
    /// given, otherwise against the system's roots.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> Result<Self, ApiClientError> {
        let base = base_url(url)?;
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("murmur/", env!("CARGO_PKG_VERSION")));
        if base.starts_with("https://") || ca.is_some() {
            let tls: Arc<rustls::ClientConfig> = crate::client::tls_config(ca)?;
            builder = builder.tls_backend_preconfigured((*tls).clone());
        } else {
            // Plain http: a TLS setup that is never used, so no system roots are needed.
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| ApiClientError::Setup(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder
            .build()
            .map_err(|e| ApiClientError::Setup(e.to_string()))?;
        Ok(Self { base, token, http })
    }

    /// `GET path` (with its query, already encoded).
    pub async fn get(&self, path_and_query: &str) -> Result<Answer, ApiClientError> {
        let url = format!("{}{path_and_query}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// `POST path` with `body` as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Answer, ApiClientError> {
        let url = format!("{}{path}", self.base);
        let request = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(request, &url).await
    }

    /// One page of `topic`'s history (`GET /v1/history`): `from` is `earliest` or a cursor
    /// `{"epoch":…,"seq":…}`.
    pub async fn history(
        &self,
        topic: &str,
        from: &Value,
        limit: usize,
    ) -> Result<Value, ApiClientError> {
        let from = match from {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let query = format!(
            "/v1/history?topic={}&from={}&limit={limit}",
            encode(topic),
            encode(&from)
        );
        self.get(&query).await?.into_ok()
    }

    /// Reads `topic`'s history from `from` (`earliest` or a cursor), page by page, handing
    /// each gap and event to `each` in order, until the retained events run out or `limit`
    /// events were read. Returns where to continue (the last page's `next`), if anywhere.
    pub async fn read_history(
        &self,
        topic: &str,
        from: Value,
        limit: Option<usize>,
        mut each: impl FnMut(HistoryItem<'_>) -> std::io::Result<()>,
    ) -> Result<Option<Value>, ApiClientError> {
        let mut from = from;
        let mut left = limit;
        loop {
            let page_size = left.map_or(MAX_PAGE, |l| l.min(MAX_PAGE));
            if page_size == 0 {
                return Ok(Some(from).filter(|f| !f.is_string()));
            }
            let page = self.history(topic, &from, page_size).await?;
            let empty = Vec::new();
            let gaps = page["gaps"].as_array().unwrap_or(&empty);
            let events = page["events"].as_array().unwrap_or(&empty);
            for gap in gaps {
                each(HistoryItem::Gap(gap))?;
            }
            for event in events {
                each(HistoryItem::Event(event))?;
            }
            left = left.map(|l| l.saturating_sub(events.len()));
            let next = Some(page["next"].clone()).filter(|n| !n.is_null());
            // A page with more to come always holds an event; the check keeps a node that
            // says otherwise from looping this forever.
            match next {
                Some(next) if page["more"] == true && !events.is_empty() => from = next,
                next => return Ok(next),
            }
        }
    }

    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Answer, ApiClientError> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let failed = |e: reqwest::Error| ApiClientError::Request {
            url: url.to_owned(),
            message: e.to_string(),
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(failed)?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }
}

/// `http(s)://HOST:PORT` from a node URL, its path dropped; ws:// and wss:// become http://
/// and https://.
fn base_url(url: &str) -> Result<String, ApiClientError> {
    let bad = || ApiClientError::BadUrl(url.to_owned());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        _ => return Err(bad()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad());
    }
    Ok(format!("{scheme}://{authority}"))
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_become_the_api_base() {
        assert_eq!(
            base_url("http://127.0.0.1:7400").unwrap(),
            "http://127.0.0.1:7400"
        );
        assert_eq!(base_url("ws://h:1/ws").unwrap(), "http://h:1");
        assert_eq!(base_url("WSS://h:1/ws?format=json").unwrap(), "https://h:1");
        assert!(base_url("h:1").is_err());
        assert!(base_url("ftp://h").is_err());
        assert!(base_url("http:///x").is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("chat.lobby"), "chat.lobby");
        assert_eq!(
            encode(r#"{"epoch":"e-1","seq":2}"#),
            "%7B%22epoch%22%3A%22e-1%22%2C%22seq%22%3A2%7D"
        );
        assert_eq!(encode("é &"), "%C3%A9%20%26");
    }
}
