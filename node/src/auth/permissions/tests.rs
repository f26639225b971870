use proptest::prelude::*;

use super::*;
use crate::routing::topic::{DEFAULT_MAX_TOPIC_BYTES, pattern_matches};

fn grant(publish: &[&str], subscribe: &[&str], history: &[&str]) -> PermissionClaim {
    let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
    PermissionClaim {
        publish: owned(publish),
        subscribe: owned(subscribe),
        history: owned(history),
        deny: DenyClaim::default(),
    }
}

fn compile(claim: &PermissionClaim) -> Permissions {
    Permissions::from_claim(claim, DEFAULT_MAX_TOPIC_BYTES).expect("valid claim")
}

#[test]
fn the_issue_examples() {
    // `murmur token --sub alice --allow-pub 'chat.>' --allow-sub 'chat.>'`
    let alice = compile(&grant(&["chat.>"], &["chat.>"], &[]));
    assert!(alice.can_publish("chat.lobby"));
    assert!(alice.can_publish("chat.lobby.thread"));
    assert!(!alice.can_publish("chat"));
    assert!(!alice.can_publish("orders.eu"));
    assert!(alice.can_subscribe("chat.>"));
    assert!(alice.can_subscribe("chat.*"));
    assert!(alice.can_subscribe("chat.lobby"));
    assert!(!alice.can_subscribe(">"), "everything is more than chat.>");
    assert!(
        !alice.can_subscribe("*.lobby"),
        "a fresh first token is not chat"
    );
    assert!(
        !alice.can_read_history("chat.>"),
        "history needs its own grant"
    );

    // Deny overrides allow, for exact topics and for every topic a wildcard can reach.
    let mut claim = grant(&["chat.>"], &["chat.>"], &["chat.>"]);
    claim.deny.publish = vec!["chat.*.admin".into()];
    claim.deny.subscribe = vec!["chat.secret.>".into()];
    let p = compile(&claim);
    assert!(p.can_publish("chat.lobby.message"));
    assert!(!p.can_publish("chat.lobby.admin"));
    assert!(p.can_subscribe("chat.lobby.>"));
    assert!(!p.can_subscribe("chat.>"), "chat.> reaches chat.secret.x");
    assert!(
        !p.can_subscribe("chat.*.x"),
        "chat.*.x reaches chat.secret.x"
    );
    assert!(
        p.can_subscribe("chat.secret"),
        "chat.secret.> needs one more token"
    );
    assert!(
        !p.can_read_history("chat.secret.keys"),
        "deny.sub applies to replay"
    );
    assert!(p.can_read_history("chat.lobby"));
}

#[test]
fn containment_in_a_union() {
    let p = compile(&grant(&[], &["a.*", "a.*.>"], &[]));
    assert!(p.can_subscribe("a.>"), "a.> = a.* ∪ a.*.>");
    let p = compile(&grant(&[], &["a.*", "a.*.*"], &[]));
    assert!(!p.can_subscribe("a.>"), "a.x.y.z is in neither");
    assert!(p.can_subscribe("a.*.*"));
    // A `*` in the subscription is not covered by literals, however many.
    let p = compile(&grant(&[], &["a.x", "a.y", "a.z"], &[]));
    assert!(!p.can_subscribe("a.*"));
    assert!(p.can_subscribe("a.y"));
    // Literal coverage combined with wildcards.
    let p = compile(&grant(&[], &["a.b.>", "*.c", "a.*.d"], &[]));
    assert!(p.can_subscribe("a.b.d"));
    assert!(p.can_subscribe("a.*.d"));
    assert!(p.can_subscribe("x.c"));
    assert!(!p.can_subscribe("*.b"));
    assert!(!p.can_subscribe(">"));
    let p = compile(&grant(&[], &[">"], &[]));
    assert!(p.can_subscribe(">"));
    assert!(p.can_subscribe("*.*.x.>"));
    let p = compile(&grant(&[], &["*", "*.>"], &[]));
    assert!(p.can_subscribe(">"), "> = * ∪ *.>");
}

#[test]
fn publish_compares_whole_tokens() {
    // Topics whose tokens start with, or extend, a pattern's literal, and empty tokens: the
    // byte-wise matcher must agree with the topic rules' own matcher on each.
    let patterns = [
        "bench.topics.*",
        "bench.topics",
        "bench.*",
        "bench.>",
        "bench",
        "*.topics.1",
        "*",
        ">",
    ];
    let topics = [
        "bench",
        "benc",
        "benchx",
        "bench.",
        ".bench",
        "bench.topics",
        "bench.topicsx.1",
        "bench.topic.1",
        "bench.topics.1",
        "bench.topics.12",
        "bench.topics.1.x",
        "bench..1",
        "bench.topics.",
        "x.topics.1",
        "",
    ];
    for pattern in patterns {
        let permissions = compile(&grant(&[pattern], &[], &[]));
        for topic in topics {
            assert_eq!(
                permissions.can_publish(topic),
                pattern_matches(pattern, topic),
                "pattern {pattern:?} topic {topic:?}"
            );
        }
    }
}

#[test]
fn no_match_means_no() {
    let none = compile(&PermissionClaim::default());
    assert!(!none.can_publish("a"));
    assert!(!none.can_subscribe("a"));
    assert!(!none.can_read_history("a"));
    let all = Permissions::unrestricted();
    assert!(all.can_publish("a") && all.can_subscribe(">") && all.can_read_history(">"));
    // A malformed pattern is never allowed, whatever the grant.
    let p = compile(&grant(&[], &[">"], &[">"]));
    assert!(!p.can_subscribe("a.>.b"));
}

#[test]
fn invalid_patterns_are_named() {
    let mut claim = grant(&["ok.>"], &["chat.>.x"], &[]);
    let err = Permissions::from_claim(&claim, DEFAULT_MAX_TOPIC_BYTES).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid pattern 'chat.>.x' in murmur.sub: '>' is only allowed as the last token"
    );
    claim.subscribe = vec![];
    claim.deny.publish = vec!["a..b".into()];
    let err = Permissions::from_claim(&claim, DEFAULT_MAX_TOPIC_BYTES).unwrap_err();
    assert!(err.to_string().contains("murmur.deny.pub"), "{err}");
    claim.deny.publish = vec!["x".into(); MAX_PATTERNS_PER_LIST + 1];
    assert!(matches!(
        Permissions::from_claim(&claim, DEFAULT_MAX_TOPIC_BYTES),
        Err(PermissionError::TooManyPatterns { .. })
    ));
    let long = "x".repeat(300);
    let err = Permissions::from_claim(&grant(&[&long], &[], &[]), DEFAULT_MAX_TOPIC_BYTES)
        .unwrap_err()
        .to_string();
    assert!(err.len() < 200, "long patterns are cut in errors: {err}");
}

#[test]
fn claim_shape_is_strict() {
    let claim: PermissionClaim = serde_json::from_value(serde_json::json!({
        "pub": ["a"], "sub": ["b.>"], "history": ["b.>"], "deny": {"pub": ["a.x"], "sub": []}
    }))
    .unwrap();
    assert_eq!(claim.subscribe, vec!["b.>"]);
    let typo = serde_json::from_value::<PermissionClaim>(serde_json::json!({
        "sub": [">"], "deni": {"sub": ["secret.>"]}
    }));
    assert!(
        typo.is_err(),
        "a misspelt deny must not silently grant more"
    );
}

#[test]
fn narrowing_names_the_subscriptions_to_end() {
    let narrower = compile(&grant(&[], &["chat.lobby.>", "news.*"], &[]));
    let existing = ["chat.>", "chat.lobby.>", "news.eu", "news.>"];
    assert_eq!(narrower.revoked(existing), vec!["chat.>", "news.>"]);
}

// Brute force: a small alphabet of tokens used in patterns, plus one that no pattern names
// (it stands for every other token). A counterexample to containment or intersection, if
// any, exists among topics at most one token longer than the longest pattern, because past
// that only `>` patterns match and they match every longer topic alike.
const ALPHABET: [&str; 3] = ["a", "b", "fresh"];
const LONGEST_PATTERN: usize = 4;

fn all_topics() -> Vec<String> {
    let mut topics: Vec<String> = ALPHABET.iter().map(|t| (*t).to_owned()).collect();
    let mut last = topics.clone();
    for _ in 1..=LONGEST_PATTERN {
        last = last
            .iter()
            .flat_map(|prefix| ALPHABET.iter().map(move |t| format!("{prefix}.{t}")))
            .collect();
        topics.extend(last.iter().cloned());
    }
    topics
}

fn pattern_strategy() -> impl Strategy<Value = String> {
    let token = prop_oneof![Just("a"), Just("b"), Just("*")];
    (
        prop::collection::vec(token, 0..LONGEST_PATTERN),
        any::<bool>(),
    )
        .prop_filter_map("a pattern has at least one token", |(tokens, rest)| {
            let mut tokens: Vec<&str> = tokens;
            if rest {
                tokens.push(">");
            }
            (!tokens.is_empty()).then(|| tokens.join("."))
        })
}

proptest! {
    // Failing inputs are printed, not written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn subscribe_matches_brute_force(
        wanted in pattern_strategy(),
        allows in prop::collection::vec(pattern_strategy(), 0..5),
        denies in prop::collection::vec(pattern_strategy(), 0..3),
    ) {
        let mut claim = grant(&[], &[], &[]);
        claim.subscribe = allows.clone();
        claim.deny.subscribe = denies.clone();
        let permissions = compile(&claim);
        let mut contained = true;
        let mut denied = false;
        for topic in all_topics().iter().filter(|t| pattern_matches(&wanted, t)) {
            contained &= allows.iter().any(|a| pattern_matches(a, topic));
            denied |= denies.iter().any(|d| pattern_matches(d, topic));
        }
        prop_assert_eq!(
            permissions.can_subscribe(&wanted),
            contained && !denied,
            "wanted {} allows {:?} denies {:?}", wanted, allows, denies
        );
    }

    #[test]
    fn publish_matches_brute_force(
        allows in prop::collection::vec(pattern_strategy(), 0..4),
        denies in prop::collection::vec(pattern_strategy(), 0..3),
    ) {
        let mut claim = grant(&[], &[], &[]);
        claim.publish = allows.clone();
        claim.deny.publish = denies.clone();
        let permissions = compile(&claim);
        for topic in all_topics() {
            let expected = allows.iter().any(|a| pattern_matches(a, &topic))
                && !denies.iter().any(|d| pattern_matches(d, &topic));
            prop_assert_eq!(permissions.can_publish(&topic), expected, "topic {}", topic);
        }
    }
}
