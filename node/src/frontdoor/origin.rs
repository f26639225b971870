//! Which web pages may open a WebSocket to this node: the `Origin` check of `allowed_origins`.
//!
//! Browsers put the page's origin in the `Origin` header of every WebSocket upgrade, and do
//! not apply the same-origin policy to WebSockets: without a check, any page a user visits
//! could connect in their name. Clients that are not browsers send no `Origin` and are not
//! affected.
//!
//! - An empty list (the default) accepts an upgrade whose `Origin` names the host the request
//!   was sent to (its `Host` header): a page served from the same host and port.
//! - `*` accepts every origin.
//! - `scheme://host[:port]` accepts that origin exactly (a default port may be written or
//!   left out: `https://a.example.com` is `https://a.example.com:443`).
//! - `scheme://*.host[:port]` accepts every subdomain of `host`, at any depth, but not `host`
//!   itself.
//!
//! The opaque origin `null` (sandboxed frames, `file:` pages) only matches `*`.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{entry}`: {reason}")]
pub struct OriginError {
    entry: String,
    reason: &'static str,
}

/// An origin as compared: scheme and host lower-cased, the port the scheme implies when none
/// is written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Parses `scheme://host[:port]`: no path, query, user or trailing slash.
    fn parse(text: &str) -> Result<Self, &'static str> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or("an origin is scheme://host[:port]")?;
        let scheme = scheme.to_ascii_lowercase();
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return Err("the scheme is not valid");
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err("an origin has no path, query or user part (and no trailing /)");
        }
        let (host, port) = split_port(rest)?;
        if host.is_empty() {
            return Err("the host is missing");
        }
        let port = port.or_else(|| default_port(&scheme));
        Ok(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// `host[:port]`, with `[v6]` hosts kept in their brackets.
fn split_port(authority: &str) -> Result<(&str, Option<u16>), &'static str> {
    let colon = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return Ok((authority, None)),
    };
    let port = authority[colon + 1..]
        .parse::<u16>()
        .map_err(|_| "the port is not a number from 0 to 65535")?;
    Ok((&authority[..colon], Some(port)))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Any,
    Exact(Origin),
    /// `scheme://*.suffix[:port]`: `host` holds the suffix without `*.`.
    Subdomains(Origin),
}

/// The parsed `allowed_origins` setting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowedOrigins {
    rules: Vec<Rule>,
}

impl AllowedOrigins {
    pub fn parse(entries: &[String]) -> Result<Self, OriginError> {
        let rules = entries
            .iter()
            .map(|entry| {
                let error = |reason| OriginError {
                    entry: entry.clone(),
                    reason,
                };
                let entry = entry.trim();
                if entry == "*" {
                    return Ok(Rule::Any);
                }
                let origin = Origin::parse(entry).map_err(error)?;
                match origin.host.strip_prefix("*.") {
                    Some(suffix) if suffix.is_empty() || suffix.contains('*') => {
                        Err(error("a wildcard is `*.` followed by a domain"))
                    }
                    Some(suffix) => Ok(Rule::Subdomains(Origin {
                        host: suffix.to_owned(),
                        ..origin
                    })),
                    None if origin.host.contains('*') => Err(error(
                        "`*` is allowed only as `*` or as the first label: `*.`",
                    )),
                    None => Ok(Rule::Exact(origin)),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Whether an upgrade carrying `Origin: origin`, sent with `Host: host`, may go ahead.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.rules.contains(&Rule::Any) {
            return true;
        }
        let Ok(origin) = Origin::parse(origin.trim()) else {
            // `null` and anything malformed.
            return false;
        };
        if self.rules.is_empty() {
            return host.is_some_and(|host| same_host(&origin, host));
        }
        self.rules.iter().any(|rule| match rule {
            Rule::Any => true,
            Rule::Exact(allowed) => *allowed == origin,
            Rule::Subdomains(allowed) => {
                allowed.scheme == origin.scheme
                    && allowed.port == origin.port
                    && origin
                        .host
                        .strip_suffix(&allowed.host)
                        .is_some_and(|label| label.len() > 1 && label.ends_with('.'))
            }
        })
    }
}

/// The origin names the host and port the request was sent to. A `Host` without a port
/// matches an origin on its scheme's default port: the node cannot know whether a proxy in
/// front of it took TLS off, so 80 and 443 are both taken as "no port".
fn same_host(origin: &Origin, host: &str) -> bool {
    let Ok((host, port)) = split_port(host.trim()) else {
        return false;
    };
    if !host.eq_ignore_ascii_case(&origin.host) {
        return false;
    }
    let is_default = |port: Option<u16>| matches!(port, None | Some(80 | 443));
    match port {
        Some(port) if !is_default(Some(port)) => origin.port == Some(port),
        _ => is_default(origin.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> AllowedOrigins {
        AllowedOrigins::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn empty_list_means_same_host() {
        let same = allowed(&[]);
        assert!(same.allows("https://chat.example.com", Some("chat.example.com")));
        assert!(same.allows("http://127.0.0.1:7400", Some("127.0.0.1:7400")));
        assert!(same.allows("https://CHAT.example.com", Some("chat.EXAMPLE.com:443")));
        assert!(!same.allows("https://evil.example", Some("chat.example.com")));
        assert!(!same.allows("http://127.0.0.1:8080", Some("127.0.0.1:7400")));
        assert!(!same.allows("https://chat.example.com", None));
        assert!(!same.allows("null", Some("chat.example.com")));
    }

    #[test]
    fn exact_and_default_ports() {
        let list = allowed(&["https://app.example.com", "http://localhost:3000"]);
        assert!(list.allows("https://app.example.com", None));
        assert!(list.allows("https://app.example.com:443", None));
        assert!(list.allows("http://localhost:3000", Some("elsewhere")));
        assert!(
            !list.allows("http://app.example.com", None),
            "scheme differs"
        );
        assert!(
            !list.allows("https://app.example.com:8443", None),
            "port differs"
        );
        assert!(!list.allows("http://localhost:3001", None));
        assert!(!list.allows("https://app.example.com.evil.example", None));
        assert!(
            !list.allows("https://chat.example.com", Some("chat.example.com")),
            "a list replaces the same-origin default"
        );
    }

    #[test]
    fn subdomain_wildcards() {
        let list = allowed(&["https://*.example.com"]);
        assert!(list.allows("https://a.example.com", None));
        assert!(list.allows("https://a.b.example.com", None));
        assert!(!list.allows("https://example.com", None));
        assert!(!list.allows("https://badexample.com", None));
        assert!(!list.allows("http://a.example.com", None));
        assert!(!list.allows("https://a.example.com:8443", None));
    }

    #[test]
    fn star_allows_everything_even_null() {
        let any = allowed(&["*"]);
        assert!(any.allows("null", None));
        assert!(any.allows("https://anything.example", None));
    }

    #[test]
    fn malformed_entries_are_refused_with_the_entry() {
        for bad in [
            "example.com",
            "https://example.com/",
            "https://example.com/path",
            "https://",
            "https://ex*ample.com",
            "https://*.",
            "https://a.*.example.com",
            "https://example.com:99999",
            "1http://example.com",
        ] {
            let err = AllowedOrigins::parse(&[bad.to_owned()]).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
