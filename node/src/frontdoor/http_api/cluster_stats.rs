//! `GET /v1/stats?scope=cluster`: every member's numbers in one answer, so the dashboard can
//! show the whole cluster from whichever node serves it.
//!
//! The answering node reads its own numbers and asks every other alive member for its
//! `GET /v1/stats` over the members' client ports, in parallel, each within [`PEER_TIMEOUT`]
//! and [`MAX_PEER_ANSWER_BYTES`]. A member that does not answer (or refuses) is listed with
//! its state, no numbers and why: it never fails the whole answer.
//!
//! The caller's `Authorization` header goes along, so peers decide by the same token; only
//! in a cluster whose gossip is authenticated (`cluster_key`), where a member's client
//! address comes from a node holding the key — otherwise anyone able to send gossip could
//! announce a member and collect the tokens of whoever opens a dashboard.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use futures_util::future::join_all;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::ApiError;
use crate::cluster::membership::{MemberInfo, MemberState};
use crate::node::NodeState;
use crate::protocol::ErrorCode;

/// How long one member may take to answer, connecting included.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest answer read from one member.
pub const MAX_PEER_ANSWER_BYTES: usize = 256 * 1024;
/// Members asked at most per answer (in name order); the rest are listed without numbers.
pub const MAX_MEMBERS_ASKED: usize = 64;
/// Cluster-scope answers gathered at once on this node; more wait up to [`PEER_TIMEOUT`],
/// then are refused as `unavailable`: every dashboard open on a node polls it every second.
const MAX_GATHERS_AT_ONCE: usize = 8;

/// One member in a cluster-scope answer.
#[derive(Debug, Serialize)]
pub(super) struct MemberStats<T> {
    #[serde(flatten)]
    member: MemberInfo,
    /// The member's numbers (a `NodeStats`), or null when it was not asked or did not answer.
    stats: Option<Numbers<T>>,
    /// Why `stats` is null.
    error: Option<String>,
}

/// A member's numbers: this node's as read here (`T`), a peer's as it sent them.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum Numbers<T> {
    Own(T),
    Peer(Value),
}

/// Asks the other members for their stats.
#[derive(Debug)]
pub(super) struct PeerStatsFetcher {
    /// The HTTP client, or why it could not be set up (then every peer shows that reason).
    http: Result<reqwest::Client, String>,
    /// `https` when this node's client port speaks TLS: so do its peers' (one configuration).
    scheme: &'static str,
    /// Whether the caller's `Authorization` goes along (the gossip is authenticated).
    forward_tokens: bool,
    gathers: Semaphore,
}

impl PeerStatsFetcher {
    pub(super) fn new(node: &NodeState) -> Self {
        let settings = &node.settings;
        let tls = settings.client_tls_cert.is_some();
        Self {
            http: http_client(settings.client_tls_cert.as_deref().filter(|_| tls)),
            scheme: if tls { "https" } else { "http" },
            forward_tokens: matches!(settings.effective_cluster_key(), Ok(Some(_))),
            gathers: Semaphore::new(MAX_GATHERS_AT_ONCE),
        }
    }

    /// Every member, this node with `own` numbers, the others as they answer.
    pub(super) async fn gather<T>(
        &self,
        node: &NodeState,
        own: T,
        authorization: Option<&HeaderValue>,
    ) -> Result<Vec<MemberStats<T>>, ApiError> {
        let _permit = tokio::time::timeout(PEER_TIMEOUT, self.gathers.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable.as_str(),
                    "too many cluster stats requests at once on this node; ask again shortly",
                )
            })?;
        let myself = node.cluster.name();
        let mut members = node.cluster.members();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let mut own = Some(own);
        let mut asked = 0;
        let answers = members.into_iter().map(|member| {
            let plan = if member.name == myself {
                Plan::Own(own.take().map(Numbers::Own))
            } else if member.state != MemberState::Alive {
                Plan::Skip(format!(
                    "not asked: the member is {}",
                    state_name(member.state)
                ))
            } else if asked >= MAX_MEMBERS_ASKED {
                Plan::Skip(format!(
                    "not asked: an answer asks {MAX_MEMBERS_ASKED} members at most"
                ))
            } else {
                asked += 1;
                Plan::Ask
            };
            async move {
                let (stats, error) = match plan {
                    Plan::Own(stats) => (stats, None),
                    Plan::Skip(why) => (None, Some(why)),
                    Plan::Ask => match self.fetch(&member, authorization).await {
                        Ok(stats) => (Some(Numbers::Peer(stats)), None),
                        Err(why) => (None, Some(why)),
                    },
                };
                MemberStats {
                    member,
                    stats,
                    error,
                }
            }
        });
        Ok(join_all(answers.collect::<Vec<_>>()).await)
    }

    /// One member's `NodeStats`, or why not.
    async fn fetch(
        &self,
        member: &MemberInfo,
        authorization: Option<&HeaderValue>,
    ) -> Result<Value, String> {
        let http = self.http.as_ref().map_err(Clone::clone)?;
        let url = stats_url(self.scheme, member.listen);
        let mut request = http.get(&url).header(header::ACCEPT, "application/json");
        let forwarded = match authorization {
            Some(value) if self.forward_tokens => {
                request = request.header(header::AUTHORIZATION, value.clone());
                true
            }
            _ => false,
        };
        let exchange = async {
            let mut response = request.send().await.map_err(|e| with_causes(&e))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| with_causes(&e))? {
                if body.len() + chunk.len() > MAX_PEER_ANSWER_BYTES {
                    return Err(format!("its answer is over {MAX_PEER_ANSWER_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(PEER_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {} ms", PEER_TIMEOUT.as_millis()))??;
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{url} answered {status} with no JSON: {e}"))?;
        if !status.is_success() {
            let error = &answer["error"];
            let mut why = format!(
                "refused ({}): {}: {}",
                status.as_u16(),
                error["code"].as_str().unwrap_or("unknown"),
                error["message"].as_str().unwrap_or_default()
            );
            if status == StatusCode::UNAUTHORIZED && authorization.is_some() && !forwarded {
                why.push_str(
                    " (the token is not passed on in a cluster without cluster_key: \
                     open that member's own dashboard)",
                );
            }
            return Err(why);
        }
        own_numbers(answer, &member.name)
    }
}

enum Plan<T> {
    Own(Option<Numbers<T>>),
    Skip(String),
    Ask,
}

/// The member's own entry of its `/v1/stats` answer; an answer under another name is a
/// different node at that address (restarted under a new name, or not a member at all).
fn own_numbers(mut answer: Value, name: &str) -> Result<Value, String> {
    if answer["node"] != name {
        return Err(format!(
            "the node at this address answered as `{}`",
            answer["node"].as_str().unwrap_or("?")
        ));
    }
    let nodes = answer["nodes"].as_array_mut().map(std::mem::take);
    nodes
        .into_iter()
        .flatten()
        .find(|n| n["name"] == name)
        .ok_or_else(|| "its answer holds no numbers of its own".to_owned())
}

fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
        MemberState::Left => "left",
    }
}

/// reqwest's errors say little at the top ("error sending request"); the causes say why.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The client for peers' client ports. Over TLS it trusts the system's roots and the
/// certificates of this node's own `client_tls_cert` file: nodes' client certificates are
/// the operator's, so a CA named in that chain, or one certificate shared by every node,
/// vouches for the peers too. The certificate must name the member's advertised address.
fn http_client(own_chain: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(chain) = own_chain {
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let certs = crate::tls_files::read_certs(chain).map_err(|e| e.to_string())?;
        roots.add_parsable_certificates(certs);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(PEER_TIMEOUT)
        .connect_timeout(PEER_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("murmur/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))
}

/// Where a member is asked.
fn stats_url(scheme: &str, listen: SocketAddr) -> String {
    format!("{scheme}://{listen}/v1/stats")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_members_own_numbers_are_taken_from_its_answer_under_its_name_only() {
        let answer =
            json!({"node": "n2", "members": [], "nodes": [{"name": "n2", "connections": 3}]});
        assert_eq!(
            own_numbers(answer.clone(), "n2"),
            Ok(json!({"name": "n2", "connections": 3}))
        );
        assert_eq!(
            own_numbers(answer, "n3"),
            Err("the node at this address answered as `n2`".to_owned())
        );
        assert!(own_numbers(json!({"node": "n2", "nodes": []}), "n2").is_err());
        assert!(own_numbers(json!("nonsense"), "n2").is_err());
    }

    #[test]
    fn ipv6_members_are_asked_at_a_bracketed_address() {
        let listen: SocketAddr = "[::1]:7400".parse().expect("address");
        assert_eq!(stats_url("http", listen), "http://[::1]:7400/v1/stats");
    }
}
