//! Topic names and subscription patterns.
//!
//! A topic is a non-empty list of dot-separated tokens (`orders.eu.created`). Subscription
//! patterns may use `*` for exactly one token and a final `>` for one or more remaining tokens.
//! Publish topics never contain wildcards. Whitespace and control characters are refused so
//! that a topic prints the same in logs, JSON and terminals.

use thiserror::Error;

/// The default upper bound on a topic's length in bytes.
pub const DEFAULT_MAX_TOPIC_BYTES: usize = 256;

/// The single-token wildcard.
pub const ONE_TOKEN: &str = "*";
/// The trailing wildcard: one or more remaining tokens.
pub const REST: &str = ">";

/// Why a topic or pattern was refused. The text is shown to clients as is.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {len} bytes, over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error(
        "topic has an empty token at position {position} (tokens are separated by single dots)"
    )]
    EmptyToken { position: usize },
    #[error("topic contains whitespace or a control character")]
    InvalidCharacter,
    #[error("wildcards ('*' and '>') are only allowed in subscriptions, not in a publish topic")]
    WildcardInPublish,
    #[error("'>' is only allowed as the last token")]
    RestNotLast,
    #[error("a wildcard must be a whole token, found '{token}'")]
    PartialWildcard { token: String },
}

/// Checks a topic that events are published to: no wildcards.
///
/// Runs for every publish, so an ASCII topic (the common case) is checked in one pass over
/// its bytes (a profile of the fan-in scenario found the token-splitting form at about 1,100
/// instructions per publish); the errors and their precedence are those of
/// [`validate_pattern`]'s checks: length, characters, empty tokens, then wildcards.
pub fn validate_publish_topic(topic: &str, max_bytes: usize) -> Result<(), TopicError> {
    if !topic.is_ascii() {
        for token in checked_tokens(topic, max_bytes)? {
            if token.contains(['*', '>']) {
                return Err(TopicError::WildcardInPublish);
            }
        }
        return Ok(());
    }
    check_length(topic, max_bytes)?;
    let mut invalid = false;
    let mut wildcard = false;
    let mut empty_token = None;
    let mut token = 0;
    let mut token_len = 0;
    for &byte in topic.as_bytes() {
        match byte {
            // ASCII whitespace and control characters, as `char::is_whitespace` and
            // `char::is_control` see them.
            0..=0x20 | 0x7f => invalid = true,
            b'.' => {
                if token_len == 0 && empty_token.is_none() {
                    empty_token = Some(token);
                }
                token += 1;
                token_len = 0;
                continue;
            }
            b'*' | b'>' => wildcard = true,
            _ => {}
        }
        token_len += 1;
    }
    if token_len == 0 && empty_token.is_none() {
        empty_token = Some(token);
    }
    if invalid {
        return Err(TopicError::InvalidCharacter);
    }
    if let Some(position) = empty_token {
        return Err(TopicError::EmptyToken { position });
    }
    if wildcard {
        return Err(TopicError::WildcardInPublish);
    }
    Ok(())
}

/// Checks a subscription pattern: `*` as a whole token anywhere, `>` as a whole last token.
pub fn validate_pattern(pattern: &str, max_bytes: usize) -> Result<(), TopicError> {
    let mut tokens = checked_tokens(pattern, max_bytes)?.peekable();
    while let Some(token) = tokens.next() {
        match token {
            ONE_TOKEN => {}
            REST if tokens.peek().is_none() => {}
            REST => return Err(TopicError::RestNotLast),
            _ if token.contains(['*', '>']) => {
                return Err(TopicError::PartialWildcard {
                    token: token.to_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// True when `pattern` contains a wildcard token.
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|t| t == ONE_TOKEN || t == REST)
}

/// Does `topic` (no wildcards) match `pattern`? The index does this for many patterns at
/// once; this direct form serves history replay and tests.
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    let mut topic_tokens = topic.split('.');
    for p in pattern.split('.') {
        match p {
            REST => return topic_tokens.next().is_some(),
            ONE_TOKEN => {
                if topic_tokens.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_tokens.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_tokens.next().is_none()
}

/// Not empty, and at most `max_bytes` long.
fn check_length(topic: &str, max_bytes: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > max_bytes {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: max_bytes,
        });
    }
    Ok(())
}

fn checked_tokens(topic: &str, max_bytes: usize) -> Result<std::str::Split<'_, char>, TopicError> {
    check_length(topic, max_bytes)?;
    if topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicError::InvalidCharacter);
    }
    if let Some(position) = topic.split('.').position(str::is_empty) {
        return Err(TopicError::EmptyToken { position });
    }
    Ok(topic.split('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = DEFAULT_MAX_TOPIC_BYTES;

    #[test]
    fn publish_topics() {
        assert_eq!(validate_publish_topic("orders.eu.created", MAX), Ok(()));
        assert_eq!(validate_publish_topic("a", MAX), Ok(()));
        assert_eq!(validate_publish_topic("", MAX), Err(TopicError::Empty));
        assert_eq!(
            validate_publish_topic("a..b", MAX),
            Err(TopicError::EmptyToken { position: 1 })
        );
        assert_eq!(
            validate_publish_topic(".a", MAX),
            Err(TopicError::EmptyToken { position: 0 })
        );
        assert_eq!(
            validate_publish_topic("a.", MAX),
            Err(TopicError::EmptyToken { position: 1 })
        );
        assert_eq!(
            validate_publish_topic("a.*", MAX),
            Err(TopicError::WildcardInPublish)
        );
        assert_eq!(
            validate_publish_topic("a.>", MAX),
            Err(TopicError::WildcardInPublish)
        );
        assert_eq!(
            validate_publish_topic("a.b*", MAX),
            Err(TopicError::WildcardInPublish)
        );
        assert_eq!(
            validate_publish_topic("a b", MAX),
            Err(TopicError::InvalidCharacter)
        );
        assert_eq!(
            validate_publish_topic("a\nb", MAX),
            Err(TopicError::InvalidCharacter)
        );
        let long = "x".repeat(MAX + 1);
        assert_eq!(
            validate_publish_topic(&long, MAX),
            Err(TopicError::TooLong {
                len: MAX + 1,
                max: MAX
            })
        );
        assert_eq!(validate_publish_topic("ünïcode.topic", MAX), Ok(()));
    }

    /// The one-pass check gives the same answer as the token-by-token one it replaced, for
    /// any string made of the characters that matter (dots, wildcards, whitespace, controls,
    /// non-ASCII) and a bound that is sometimes exceeded.
    #[test]
    fn the_fast_publish_check_agrees_with_the_token_check() {
        use proptest::prelude::*;
        fn by_tokens(topic: &str, max: usize) -> Result<(), TopicError> {
            for token in checked_tokens(topic, max)? {
                if token == ONE_TOKEN || token == REST || token.contains(['*', '>']) {
                    return Err(TopicError::WildcardInPublish);
                }
            }
            Ok(())
        }
        let alphabet = prop::sample::select(vec![
            "a", "b", ".", "*", ">", " ", "\t", "\u{7f}", "\u{1}", "é", "\u{a0}", "\u{85}",
        ]);
        proptest!(|(parts in prop::collection::vec(alphabet, 0..12), max in 1usize..16)| {
            let topic: String = parts.concat();
            prop_assert_eq!(validate_publish_topic(&topic, max), by_tokens(&topic, max));
        });
    }

    #[test]
    fn patterns() {
        assert_eq!(validate_pattern("a.*.c", MAX), Ok(()));
        assert_eq!(validate_pattern("a.>", MAX), Ok(()));
        assert_eq!(validate_pattern(">", MAX), Ok(()));
        assert_eq!(validate_pattern("*", MAX), Ok(()));
        assert_eq!(validate_pattern("a.>.c", MAX), Err(TopicError::RestNotLast));
        assert_eq!(
            validate_pattern("a.b*", MAX),
            Err(TopicError::PartialWildcard { token: "b*".into() })
        );
        assert_eq!(
            validate_pattern("a.>b", MAX),
            Err(TopicError::PartialWildcard { token: ">b".into() })
        );
        assert_eq!(
            validate_pattern("a..*", MAX),
            Err(TopicError::EmptyToken { position: 1 })
        );
    }

    #[test]
    fn direct_matching() {
        assert!(pattern_matches("a.b", "a.b"));
        assert!(!pattern_matches("a.b", "a.b.c"));
        assert!(!pattern_matches("a.b.c", "a.b"));
        assert!(pattern_matches("a.*", "a.b"));
        assert!(!pattern_matches("a.*", "a.b.c"));
        assert!(!pattern_matches("a.*", "a"));
        assert!(pattern_matches("a.>", "a.b"));
        assert!(pattern_matches("a.>", "a.b.c"));
        assert!(!pattern_matches("a.>", "a"));
        assert!(pattern_matches(">", "a"));
        assert!(pattern_matches("*.b.>", "x.b.y.z"));
        assert!(!pattern_matches("*.b.>", "x.c.y"));
    }
}
