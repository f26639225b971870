//! The subscription index: which subscriptions match a topic.
//!
//! A trie over topic tokens, as NATS's sublist: each published topic walks one path per
//! wildcard branch instead of testing every subscription, so the cost of a match grows with
//! the number of tokens and matching subscriptions, not with the number of subscriptions held.
//!
//! The index is generic over the subscriber handle `S` and does no I/O: the broker stores its
//! connection handles here, tests store plain values.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use foldhash::fast::RandomState;

use super::topic::{ONE_TOKEN, REST};

/// What a topic matched: one plain subscription, or a queue group of which exactly one member
/// should receive the event.
#[derive(Debug)]
pub enum Match<'a, S> {
    Subscriber(&'a S),
    Group(&'a QueueGroup<S>),
}

/// Members of one queue group on one pattern. Groups are keyed by (pattern, name), as in NATS:
/// the same group name on two patterns makes two groups.
#[derive(Debug)]
pub struct QueueGroup<S> {
    name: Arc<str>,
    members: Vec<S>,
    /// Round-robin cursor; atomic so that matching needs only shared access to the index.
    next: AtomicUsize,
}

impl<S> QueueGroup<S> {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn members(&self) -> &[S] {
        &self.members
    }

    /// The members in the order this event should try them: round-robin start, then the rest,
    /// so a caller can skip a member that cannot take the event now.
    pub fn round_robin(&self) -> impl Iterator<Item = &S> {
        let len = self.members.len();
        let start = if len == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % len
        };
        (0..len).map(move |i| &self.members[(start + i) % len])
    }
}

#[derive(Debug)]
struct Entries<S> {
    plain: Vec<S>,
    groups: Vec<QueueGroup<S>>,
}

impl<S> Default for Entries<S> {
    fn default() -> Self {
        Self {
            plain: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<S: PartialEq> Entries<S> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    fn insert(&mut self, group: Option<&str>, subscriber: S) {
        match group {
            None => self.plain.push(subscriber),
            Some(name) => match self.groups.iter_mut().find(|g| &*g.name == name) {
                Some(existing) => existing.members.push(subscriber),
                None => self.groups.push(QueueGroup {
                    name: name.into(),
                    members: vec![subscriber],
                    next: AtomicUsize::new(0),
                }),
            },
        }
    }

    fn remove(&mut self, group: Option<&str>, subscriber: &S) -> bool {
        let list = match group {
            None => &mut self.plain,
            Some(name) => match self.groups.iter().position(|g| &*g.name == name) {
                Some(i) => {
                    let removed = remove_from(&mut self.groups[i].members, subscriber);
                    if self.groups[i].members.is_empty() {
                        self.groups.swap_remove(i);
                    }
                    return removed;
                }
                None => return false,
            },
        };
        remove_from(list, subscriber)
    }

    fn visit<'a>(&'a self, visit: &mut impl FnMut(Match<'a, S>)) {
        self.plain.iter().for_each(|s| visit(Match::Subscriber(s)));
        self.groups.iter().for_each(|g| visit(Match::Group(g)));
    }
}

fn remove_from<S: PartialEq>(list: &mut Vec<S>, subscriber: &S) -> bool {
    match list.iter().position(|s| s == subscriber) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

#[derive(Debug)]
struct Node<S> {
    literals: HashMap<Box<str>, Self, RandomState>,
    one_token: Option<Box<Self>>,
    /// Patterns that end exactly here.
    ends_here: Entries<S>,
    /// Patterns that end with `>` here: they take one or more further tokens.
    rest: Entries<S>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Self {
            literals: HashMap::default(),
            one_token: None,
            ends_here: Entries::default(),
            rest: Entries::default(),
        }
    }
}

impl<S: PartialEq> Node<S> {
    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.one_token.is_none()
            && self.ends_here.is_empty()
            && self.rest.is_empty()
    }

    fn collect<'a>(&'a self, tokens: &[&str], visit: &mut impl FnMut(Match<'a, S>)) {
        let Some((first, remaining)) = tokens.split_first() else {
            self.ends_here.visit(visit);
            return;
        };
        self.rest.visit(visit);
        if let Some(child) = self.literals.get(*first) {
            child.collect(remaining, visit);
        }
        if let Some(child) = &self.one_token {
            child.collect(remaining, visit);
        }
    }

    /// Removes and prunes empty branches on the way back up.
    fn remove(&mut self, tokens: &[&str], group: Option<&str>, subscriber: &S) -> bool {
        match tokens.split_first() {
            None => self.ends_here.remove(group, subscriber),
            Some((&REST, [])) => self.rest.remove(group, subscriber),
            Some((&ONE_TOKEN, remaining)) => {
                let Some(child) = self.one_token.as_mut() else {
                    return false;
                };
                let removed = child.remove(remaining, group, subscriber);
                if child.is_empty() {
                    self.one_token = None;
                }
                removed
            }
            Some((literal, remaining)) => {
                let Some(child) = self.literals.get_mut(*literal) else {
                    return false;
                };
                let removed = child.remove(remaining, group, subscriber);
                if child.is_empty() {
                    self.literals.remove(*literal);
                }
                removed
            }
        }
    }
}

/// The most tokens a topic may have for matching without a heap allocation.
const INLINE_TOKENS: usize = 16;

/// Subscriptions by pattern, with queue groups. Patterns must be validated before insertion
/// (see [`super::topic::validate_pattern`]); the index trusts its input.
#[derive(Debug)]
pub struct SubscriptionIndex<S> {
    root: Node<S>,
    len: usize,
}

impl<S> Default for SubscriptionIndex<S> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<S: PartialEq> SubscriptionIndex<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions held (queue-group members counted one by one).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, pattern: &str, group: Option<&str>, subscriber: S) {
        let mut node = &mut self.root;
        let mut tokens = pattern.split('.').peekable();
        while let Some(token) = tokens.next() {
            if token == REST && tokens.peek().is_none() {
                node.rest.insert(group, subscriber);
                self.len += 1;
                return;
            }
            node = if token == ONE_TOKEN {
                node.one_token.get_or_insert_with(Box::default)
            } else {
                node.literals.entry(token.into()).or_default()
            };
        }
        node.ends_here.insert(group, subscriber);
        self.len += 1;
    }

    /// Removes one subscription; false if it was not there.
    pub fn remove(&mut self, pattern: &str, group: Option<&str>, subscriber: &S) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = self.root.remove(&tokens, group, subscriber);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit` once for every plain subscription and every queue group whose pattern
    /// matches `topic` (a topic without wildcards).
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Match<'a, S>)) {
        let mut inline = [""; INLINE_TOKENS];
        let mut count = 0;
        let mut spilled = Vec::new();
        for token in topic.split('.') {
            if count < INLINE_TOKENS {
                inline[count] = token;
            } else {
                if spilled.is_empty() {
                    spilled.extend_from_slice(&inline);
                }
                spilled.push(token);
            }
            count += 1;
        }
        let tokens = if count <= INLINE_TOKENS {
            &inline[..count]
        } else {
            &spilled[..]
        };
        self.root.collect(tokens, &mut visit);
    }

    /// The queue group `name` on exactly `pattern`, if it has members.
    pub fn group(&self, pattern: &str, name: &str) -> Option<&QueueGroup<S>> {
        let mut node = &self.root;
        let mut tokens = pattern.split('.').peekable();
        let entries = loop {
            let Some(token) = tokens.next() else {
                break &node.ends_here;
            };
            if token == REST && tokens.peek().is_none() {
                break &node.rest;
            }
            node = if token == ONE_TOKEN {
                node.one_token.as_deref()?
            } else {
                node.literals.get(token)?
            };
        };
        entries.groups.iter().find(|g| &*g.name == name)
    }

    /// True when at least one subscription matches `topic`.
    pub fn has_match(&self, topic: &str) -> bool {
        let mut any = false;
        self.for_each_match(topic, |_| any = true);
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_matches(index: &SubscriptionIndex<u32>, topic: &str) -> Vec<u32> {
        let mut found = Vec::new();
        index.for_each_match(topic, |m| match m {
            Match::Subscriber(s) => found.push(*s),
            Match::Group(g) => found.extend(g.members().iter().map(|m| 1000 + m)),
        });
        found.sort_unstable();
        found
    }

    #[test]
    fn literal_and_wildcards() {
        let mut index = SubscriptionIndex::new();
        index.insert("orders.eu.created", None, 1);
        index.insert("orders.*.created", None, 2);
        index.insert("orders.>", None, 3);
        index.insert(">", None, 4);
        index.insert("orders.eu", None, 5);
        index.insert("*.*.*", None, 6);
        assert_eq!(index.len(), 6);

        assert_eq!(
            plain_matches(&index, "orders.eu.created"),
            vec![1, 2, 3, 4, 6]
        );
        assert_eq!(plain_matches(&index, "orders.us.created"), vec![2, 3, 4, 6]);
        assert_eq!(plain_matches(&index, "orders.eu"), vec![3, 4, 5]);
        assert_eq!(plain_matches(&index, "orders"), vec![4]);
        assert_eq!(plain_matches(&index, "billing.eu.created"), vec![4, 6]);
        assert_eq!(plain_matches(&index, "orders.eu.created.late"), vec![3, 4]);
    }

    #[test]
    fn matches_agree_with_direct_matching() {
        let patterns = [
            "a", "a.b", "a.*", "*.b", "a.>", ">", "*.*", "a.*.c", "*.b.>", "a.b.c",
        ];
        let topics = [
            "a", "b", "a.b", "a.c", "x.b", "a.b.c", "a.x.c", "x.b.y.z", "a.b.c.d",
        ];
        let mut index = SubscriptionIndex::new();
        for (i, p) in patterns.iter().enumerate() {
            index.insert(p, None, i as u32);
        }
        for topic in topics {
            let expected: Vec<u32> = (0..patterns.len() as u32)
                .filter(|&i| super::super::topic::pattern_matches(patterns[i as usize], topic))
                .collect();
            assert_eq!(plain_matches(&index, topic), expected, "topic {topic}");
        }
    }

    #[test]
    fn remove_prunes_and_reports() {
        let mut index = SubscriptionIndex::new();
        index.insert("a.*.c", None, 1);
        index.insert("a.*.c", None, 2);
        index.insert("a.>", None, 3);
        assert!(index.remove("a.*.c", None, &1));
        assert!(
            !index.remove("a.*.c", None, &1),
            "second removal finds nothing"
        );
        assert!(
            !index.remove("a.b.c", None, &2),
            "wrong pattern finds nothing"
        );
        assert_eq!(plain_matches(&index, "a.b.c"), vec![2, 3]);
        assert!(index.remove("a.*.c", None, &2));
        assert!(index.remove("a.>", None, &3));
        assert!(index.is_empty());
        assert!(index.root.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn queue_groups_round_robin_and_are_keyed_by_pattern() {
        let mut index = SubscriptionIndex::new();
        index.insert("jobs.*", Some("workers"), 1);
        index.insert("jobs.*", Some("workers"), 2);
        index.insert("jobs.*", Some("workers"), 3);
        index.insert("jobs.>", Some("workers"), 4);
        index.insert("jobs.*", None, 9);

        let mut first_choices = Vec::new();
        for _ in 0..6 {
            let mut groups = 0;
            let mut plain = Vec::new();
            index.for_each_match("jobs.build", |m| match m {
                Match::Subscriber(s) => plain.push(*s),
                Match::Group(g) => {
                    groups += 1;
                    if g.members().len() == 3 {
                        first_choices.push(*g.round_robin().next().unwrap());
                    }
                }
            });
            assert_eq!(plain, vec![9]);
            assert_eq!(groups, 2, "same group name on two patterns is two groups");
        }
        assert_eq!(first_choices, vec![1, 2, 3, 1, 2, 3]);

        assert_eq!(index.group("jobs.*", "workers").unwrap().members().len(), 3);
        assert_eq!(index.group("jobs.>", "workers").unwrap().members(), &[4]);
        assert!(index.group("jobs.x", "workers").is_none());
        assert!(index.group("jobs.*", "other").is_none());
        assert!(index.remove("jobs.*", Some("workers"), &2));
        assert!(!index.remove("jobs.*", Some("other"), &1));
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn round_robin_visits_every_member_once() {
        let mut index = SubscriptionIndex::new();
        for m in 0..4 {
            index.insert("t", Some("g"), m);
        }
        index.for_each_match("t", |m| {
            if let Match::Group(g) = m {
                let mut order: Vec<u32> = g.round_robin().copied().collect();
                order.sort_unstable();
                assert_eq!(order, vec![0, 1, 2, 3]);
            }
        });
    }

    #[test]
    fn very_long_topics_match() {
        let mut index = SubscriptionIndex::new();
        let topic: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        let topic = topic.join(".");
        index.insert(&topic, None, 1);
        index.insert("t0.>", None, 2);
        assert_eq!(plain_matches(&index, &topic), vec![1, 2]);
    }
}
