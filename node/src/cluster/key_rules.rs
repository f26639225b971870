//! What makes a cluster key acceptable, and how to make a good one (`murmur keygen`).
//!
//! The cluster key is the only secret of a cluster that derives its own CA: whoever holds
//! it can join, forge membership news and read the mesh. A key an attacker can guess is no
//! key at all, so a node refuses to start with one that is:
//! - shorter than [`MIN_KEY_CHARS`] characters;
//! - made of fewer than [`MIN_DISTINCT_CHARS`] distinct characters (`aaaa…`, `abab…`);
//! - one short sequence repeated (`abcdefgh` four times);
//! - a placeholder: one of the example values shipped in `deploy/` and the docs, or any key
//!   containing words such as `changeme` or `secret` (case, dashes and underscores ignored).
//!
//! The error names the rule, never the key.

use ring::rand::SecureRandom;
use thiserror::Error;

/// Fewest characters a cluster key may have.
pub const MIN_KEY_CHARS: usize = 32;
/// Fewest distinct characters a cluster key may use.
pub const MIN_DISTINCT_CHARS: usize = 8;

/// Example values from `deploy/` and the docs, past and present; any key equal to one of
/// these (case, dashes and underscores ignored) is refused even if the words below change.
const KNOWN_PLACEHOLDERS: &[&str] = &[
    "local-cluster-key-change-me",
    "change-me-to-a-long-random-secret",
    "change-me-to-a-long-secret",
    "murmur-development-cluster-key-not-secret",
    "test-cluster-key-0123456789",
    "chaos-cluster-key-0123456789",
];

/// Words that mark a value someone was meant to replace.
const PLACEHOLDER_WORDS: &[&str] = &[
    "changeme",
    "changethis",
    "replaceme",
    "placeholder",
    "example",
    "secret",
    "password",
];

/// Why a cluster key is refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum WeakKey {
    #[error("it is {0} characters long; at least {MIN_KEY_CHARS} are needed")]
    TooShort(usize),
    #[error("it uses only {0} distinct characters; at least {MIN_DISTINCT_CHARS} are needed")]
    FewDistinct(usize),
    #[error("it is a {0}-character sequence repeated")]
    Repeated(usize),
    #[error("it is a placeholder (it contains `{0}`), not a secret")]
    PlaceholderWord(&'static str),
    #[error("it is the placeholder `{0}` from Murmur's examples, not a secret")]
    KnownPlaceholder(&'static str),
}

/// Checks `key` against the rules above.
pub fn check_key_strength(key: &str) -> Result<(), WeakKey> {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < MIN_KEY_CHARS {
        return Err(WeakKey::TooShort(chars.len()));
    }
    let normalized = normalize(key);
    if let Some(known) = KNOWN_PLACEHOLDERS
        .iter()
        .find(|p| normalize(p) == normalized)
    {
        return Err(WeakKey::KnownPlaceholder(known));
    }
    if let Some(word) = PLACEHOLDER_WORDS.iter().find(|w| normalized.contains(*w)) {
        return Err(WeakKey::PlaceholderWord(word));
    }
    let mut distinct = chars.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT_CHARS {
        return Err(WeakKey::FewDistinct(distinct.len()));
    }
    let period = smallest_period(&chars);
    if period * 2 <= chars.len() {
        return Err(WeakKey::Repeated(period));
    }
    Ok(())
}

/// Lowercase letters and digits only: `Change_Me` and `change-me` are the same placeholder.
fn normalize(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The length of the shortest unit whose repetition (the last one possibly cut short)
/// spells `chars`, by the prefix function: linear, whatever the key's length.
fn smallest_period(chars: &[char]) -> usize {
    let mut border = vec![0usize; chars.len()];
    for i in 1..chars.len() {
        let mut k = border[i - 1];
        while k > 0 && chars[i] != chars[k] {
            k = border[k - 1];
        }
        if chars[i] == chars[k] {
            k += 1;
        }
        border[i] = k;
    }
    chars.len() - border.last().copied().unwrap_or(0)
}

/// Random bytes in a generated key.
const GENERATED_KEY_BYTES: usize = 32;

#[derive(Debug, Error)]
#[error("the system's random number generator failed")]
pub struct RandomUnavailable;

/// A new cluster key: 32 random bytes from the OS, base64url without padding (43 characters).
pub fn generate_key() -> Result<String, RandomUnavailable> {
    use base64::Engine as _;
    let random = ring::rand::SystemRandom::new();
    loop {
        let mut bytes = [0u8; GENERATED_KEY_BYTES];
        random.fill(&mut bytes).map_err(|_| RandomUnavailable)?;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // A random key spells a placeholder word about once in ten million draws: draw again
        // rather than print a key the node would refuse.
        if check_key_strength(&key).is_ok() {
            return Ok(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_random_and_accepted() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "base64url without padding: {a}"
        );
        assert_eq!(check_key_strength(&a), Ok(()));
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            check_key_strength(&"a".repeat(16)),
            Err(WeakKey::TooShort(16))
        );
        assert_eq!(
            check_key_strength("Xq3v9LmP2sKd8wRt5yHb7nJc4fGz6aE"),
            Err(WeakKey::TooShort(31))
        );
        // Characters, not bytes.
        assert_eq!(
            check_key_strength(&"é".repeat(20)),
            Err(WeakKey::TooShort(20))
        );
        assert_eq!(
            check_key_strength("Xq3v9LmP2sKd8wRt5yHb7nJc4fGz6aE1"),
            Ok(())
        );
    }

    #[test]
    fn few_distinct_characters_are_refused() {
        assert_eq!(
            check_key_strength(&"a".repeat(40)),
            Err(WeakKey::FewDistinct(1))
        );
        assert_eq!(
            check_key_strength("aaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbcccccccc"),
            Err(WeakKey::FewDistinct(3))
        );
    }

    #[test]
    fn repetitions_are_refused() {
        assert_eq!(
            check_key_strength(&"abcdefgh".repeat(4)),
            Err(WeakKey::Repeated(8))
        );
        // The last repetition may be cut short.
        assert_eq!(
            check_key_strength("0123456789abcdef0123456789abcdef01234"),
            Err(WeakKey::Repeated(16))
        );
        // A unit longer than half the key is no repetition.
        assert_eq!(
            check_key_strength("0123456789abcdefghijklmnopq0123456789"),
            Ok(())
        );
    }

    #[test]
    fn placeholders_are_refused() {
        for key in [
            "local-cluster-key-change-me-please-0123",
            "change-me-to-a-long-random-secret",
            "CHANGE_ME_to_a_long_random_value_1234567",
            "my-super-secret-murmur-cluster-key-2026",
            "murmur-development-cluster-key-not-secret",
            "replace-me-with-32-random-characters-xyz",
        ] {
            assert!(
                matches!(
                    check_key_strength(key),
                    Err(WeakKey::PlaceholderWord(_) | WeakKey::KnownPlaceholder(_))
                ),
                "{key} is accepted"
            );
        }
        assert_eq!(
            check_key_strength("change-me-to-a-long-random-secret"),
            Err(WeakKey::KnownPlaceholder(
                "change-me-to-a-long-random-secret"
            ))
        );
    }

    #[test]
    fn the_error_names_the_rule_and_not_the_key() {
        let key = "k7Qp-ab12cd34ef56gh78ij90klmn".repeat(2);
        let err = check_key_strength(&key).unwrap_err().to_string();
        assert!(err.contains("repeated"), "{err}");
        assert!(!err.contains("k7Qp"), "{err}");
    }

    #[test]
    fn long_keys_are_checked_in_linear_time() {
        let long: String = (0..200_000u32)
            .map(|i| char::from(b'a' + u8::try_from(i * 7 % 26).unwrap()))
            .collect();
        // Periodic with a period of 26: refused, and quickly.
        assert_eq!(check_key_strength(&long), Err(WeakKey::Repeated(26)));
    }
}
