//! What a client may do: publish to topics, subscribe to patterns, read retained history.
//!
//! Pure logic, no I/O. Rules (NATS-like, with exact wildcard semantics):
//! - deny overrides allow; no matching allow means no;
//! - a publish needs a `pub` pattern matching the topic and no `deny.pub` pattern matching it;
//! - a subscription to a pattern needs EVERY topic the pattern can match to be matched by some
//!   `sub` pattern (containment in the union of the allows), and NO topic it can match to be
//!   matched by a `deny.sub` pattern (empty intersection);
//! - reading history for a pattern (a `sub` with `from`) needs the same against the `history`
//!   patterns; `deny.sub` applies to it too, since replay is a read.
//!
//! Containment is exact over an unbounded token alphabet: a `*` in a subscription can take a
//! token that no allow pattern names, so only `*` and `>` entries of the allow list cover it;
//! `a.>` is covered by `{a.*, a.*.>}` but not by `{a.*, a.*.*}`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::routing::topic::{self, ONE_TOKEN, REST, TopicError};

/// The most patterns one list of a claim may hold: a bound on the work a check can take.
pub const MAX_PATTERNS_PER_LIST: usize = 256;

/// The `murmur` claim of a token, and the shape of the `anonymous_permissions` setting:
/// `{"pub": [...], "sub": [...], "history": [...], "deny": {"pub": [...], "sub": [...]}}`.
///
/// Unknown fields are refused, so that a misspelt `deny` cannot silently grant more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionClaim {
    /// Topic patterns the holder may publish to.
    #[serde(rename = "pub", skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Topic patterns the holder may subscribe to (a subscription must lie within them).
    #[serde(rename = "sub", skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Topic patterns whose retained events the holder may replay (`sub` with `from`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
    /// Exceptions that win over every allow.
    #[serde(skip_serializing_if = "DenyClaim::is_empty")]
    pub deny: DenyClaim,
}

/// The `deny` part of a [`PermissionClaim`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenyClaim {
    #[serde(rename = "pub", skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    #[serde(rename = "sub", skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
}

impl DenyClaim {
    pub fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.subscribe.is_empty()
    }
}

/// Why a permission claim was refused. The text names the list and the pattern.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PermissionError {
    #[error("invalid pattern '{pattern}' in {list}: {reason}")]
    InvalidPattern {
        list: &'static str,
        pattern: String,
        reason: TopicError,
    },
    #[error("{list} has {count} patterns, over the limit of {MAX_PATTERNS_PER_LIST}")]
    TooManyPatterns { list: &'static str, count: usize },
}

/// One token of a validated pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Box<str>),
    One,
    Rest,
}

/// A validated pattern, split into tokens once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(Vec<Token>);

impl Pattern {
    /// Splits a pattern; `None` when a `>` is not last (such a pattern matches nothing the
    /// rules allow, so callers refuse it).
    fn parse(text: &str) -> Option<Self> {
        let count = text.split('.').count();
        let mut tokens = Vec::with_capacity(count);
        for (i, token) in text.split('.').enumerate() {
            tokens.push(match token {
                ONE_TOKEN => Token::One,
                REST if i + 1 == count => Token::Rest,
                REST => return None,
                literal => Token::Literal(literal.into()),
            });
        }
        Some(Self(tokens))
    }

    /// Does the concrete `topic` match this pattern?
    ///
    /// Runs for every allow and deny pattern on every publish, so it walks the topic's bytes
    /// itself: `str::split` set up a searcher per token and cost about 1,500 instructions
    /// per publish against five patterns, more than the subscription index's match.
    fn matches(&self, topic: &str) -> bool {
        // The part of the topic not matched yet, starting at a token; `None` once every
        // token was taken (so `a.` still has an empty token after `a`, as with `split`).
        let mut rest = Some(topic.as_bytes());
        for token in &self.0 {
            let Some(unmatched) = rest else {
                return false;
            };
            match token {
                Token::Rest => return true,
                Token::One => rest = after_token(unmatched),
                Token::Literal(literal) => {
                    let literal = literal.as_bytes();
                    let Some(tail) = unmatched.strip_prefix(literal) else {
                        return false;
                    };
                    rest = match tail.split_first() {
                        None => None,
                        Some((b'.', next)) => Some(next),
                        // The topic's token only starts with the literal.
                        Some(_) => return false,
                    };
                }
            }
        }
        rest.is_none()
    }
}

/// What follows the first token of `unmatched` (a topic's tail starting at a token): the
/// next token on, or `None` when that token was the last.
fn after_token(unmatched: &[u8]) -> Option<&[u8]> {
    unmatched
        .iter()
        .position(|&b| b == b'.')
        .map(|dot| &unmatched[dot + 1..])
}

/// Validated permissions, ready for checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Everything allowed: the identity of connections when `auth = none`.
    unrestricted: bool,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    history: Vec<Pattern>,
    deny_publish: Vec<Pattern>,
    deny_subscribe: Vec<Pattern>,
}

impl Permissions {
    /// Everything allowed (no authentication configured).
    pub fn unrestricted() -> Self {
        Self {
            unrestricted: true,
            ..Self::nothing()
        }
    }

    /// Nothing allowed.
    pub fn nothing() -> Self {
        Self {
            unrestricted: false,
            publish: Vec::new(),
            subscribe: Vec::new(),
            history: Vec::new(),
            deny_publish: Vec::new(),
            deny_subscribe: Vec::new(),
        }
    }

    /// Validates every pattern of `claim` with the topic rules (`max_topic_bytes` long at most).
    pub fn from_claim(
        claim: &PermissionClaim,
        max_topic_bytes: usize,
    ) -> Result<Self, PermissionError> {
        let list =
            |name: &'static str, patterns: &[String]| compile_list(name, patterns, max_topic_bytes);
        Ok(Self {
            unrestricted: false,
            publish: list("murmur.pub", &claim.publish)?,
            subscribe: list("murmur.sub", &claim.subscribe)?,
            history: list("murmur.history", &claim.history)?,
            deny_publish: list("murmur.deny.pub", &claim.deny.publish)?,
            deny_subscribe: list("murmur.deny.sub", &claim.deny.subscribe)?,
        })
    }

    /// True when everything is allowed (checks can be skipped).
    pub fn is_unrestricted(&self) -> bool {
        self.unrestricted
    }

    /// May the holder publish to `topic` (a concrete topic, no wildcards)?
    pub fn can_publish(&self, topic: &str) -> bool {
        if self.unrestricted {
            return true;
        }
        self.publish.iter().any(|p| p.matches(topic))
            && !self.deny_publish.iter().any(|p| p.matches(topic))
    }

    /// May the holder subscribe to `pattern` (every topic it can match is allowed and none
    /// is denied)?
    pub fn can_subscribe(&self, pattern: &str) -> bool {
        self.unrestricted || self.reads(&self.subscribe, pattern)
    }

    /// May the holder replay retained events of `pattern` (a `sub` with `from`)? A replaying
    /// subscription needs [`Self::can_subscribe`] as well.
    pub fn can_read_history(&self, pattern: &str) -> bool {
        self.unrestricted || self.reads(&self.history, pattern)
    }

    /// The subscriptions among `patterns` that these permissions no longer allow: what a
    /// narrowing refresh must end.
    pub fn revoked<'a, I>(&self, patterns: I) -> Vec<&'a str>
    where
        I: IntoIterator<Item = &'a str>,
    {
        patterns
            .into_iter()
            .filter(|p| !self.can_subscribe(p))
            .collect()
    }

    fn reads(&self, allows: &[Pattern], pattern: &str) -> bool {
        let Some(wanted) = Pattern::parse(pattern) else {
            return false;
        };
        let alive: Vec<&[Token]> = allows.iter().map(|a| a.0.as_slice()).collect();
        contained(&wanted.0, alive)
            && !self
                .deny_subscribe
                .iter()
                .any(|d| intersects(&wanted.0, &d.0))
    }
}

fn compile_list(
    list: &'static str,
    patterns: &[String],
    max_topic_bytes: usize,
) -> Result<Vec<Pattern>, PermissionError> {
    if patterns.len() > MAX_PATTERNS_PER_LIST {
        return Err(PermissionError::TooManyPatterns {
            list,
            count: patterns.len(),
        });
    }
    patterns
        .iter()
        .map(|text| {
            let invalid = |reason| PermissionError::InvalidPattern {
                list,
                pattern: shortened(text),
                reason,
            };
            topic::validate_pattern(text, max_topic_bytes).map_err(invalid)?;
            Pattern::parse(text).ok_or_else(|| invalid(TopicError::RestNotLast))
        })
        .collect()
}

/// A pattern as shown in an error: long ones cut, so an error frame stays small.
fn shortened(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Is every topic `wanted` matches also matched by one of `allows`?
///
/// Walks `wanted` token by token, keeping the remainders of the allow patterns that still
/// match the prefix walked so far. A `*` (or each token of a `>`) can be a token that no allow
/// pattern names, and such a topic is covered only by allow patterns with `*` there; those
/// allow patterns cover every other choice too, so that one case decides. Each step shortens
/// every remainder, so this ends after at most (longest allow pattern + 1) steps.
fn contained(wanted: &[Token], mut alive: Vec<&[Token]>) -> bool {
    let mut rest = wanted;
    loop {
        // An allow `>` here covers whatever follows, as long as at least one token does.
        if !rest.is_empty() && alive.iter().any(|a| a.first() == Some(&Token::Rest)) {
            return true;
        }
        match rest.split_first() {
            None => return alive.iter().any(|a| a.is_empty()),
            Some((Token::Literal(literal), tail)) => {
                alive.retain(|a| match a.first() {
                    Some(Token::Literal(l)) => l == literal,
                    Some(Token::One) => true,
                    _ => false,
                });
                advance(&mut alive);
                rest = tail;
            }
            Some((Token::One, tail)) => {
                retain_one_token_wildcards(&mut alive);
                rest = tail;
            }
            Some((Token::Rest, _)) => {
                // `>` is one (fresh) token, then either the end or `>` again.
                retain_one_token_wildcards(&mut alive);
                if !alive.iter().any(|a| a.is_empty()) {
                    return false;
                }
            }
        }
    }
}

/// Keeps the remainders starting with `*`, past that token.
fn retain_one_token_wildcards(alive: &mut Vec<&[Token]>) {
    alive.retain(|a| a.first() == Some(&Token::One));
    advance(alive);
}

fn advance(alive: &mut [&[Token]]) {
    for a in alive.iter_mut() {
        *a = &a[1..];
    }
}

/// Is there a topic that both patterns match?
fn intersects(a: &[Token], b: &[Token]) -> bool {
    let mut pairs = a.iter().zip(b);
    for (x, y) in pairs.by_ref() {
        match (x, y) {
            // `>` takes one or more tokens; the other pattern has at least one here.
            (Token::Rest, _) | (_, Token::Rest) => return true,
            (Token::Literal(l), Token::Literal(m)) if l != m => return false,
            _ => {}
        }
    }
    a.len() == b.len()
}

#[cfg(test)]
mod tests;
