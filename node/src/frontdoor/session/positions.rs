//! What a connection remembers per subscription and topic: the position of the last event
//! it sent, to drop a repeated copy and to notice a hole or a new epoch (see
//! `Session::admit`). A wildcard subscription meets a new topic with every new topic
//! published, so the memory must not keep every topic it ever saw: topics long quiet are
//! forgotten here, as the cluster forgets them.
//!
//! Two generations: [`TopicPositions::rotate`], every [`rotation_period`], drops what was
//! not touched since the previous rotation, so a topic is forgotten after one to two
//! periods without an event. Its next event is then taken as the first of the topic, as
//! for a topic never seen. The period is four times `topic_idle_forget`, so a topic the
//! cluster forgot and that is published again soon after (a new epoch) still finds its old
//! position here, and the subscriber is told to resync rather than sent the new epoch as
//! if nothing had happened.

use std::collections::HashMap;
use std::sync::Arc;

use super::{FastHash, Position};

/// How often a connection forgets the topics that had no event since the time before.
pub(super) fn rotation_period(topic_idle_forget: std::time::Duration) -> std::time::Duration {
    topic_idle_forget.saturating_mul(4)
}

/// Per topic, the position of the last event sent on one subscription.
#[derive(Debug, Default)]
pub(super) struct TopicPositions {
    current: HashMap<Arc<str>, Position, FastHash>,
    /// Touched before the last rotation and not since; dropped at the next one.
    previous: HashMap<Arc<str>, Position, FastHash>,
}

impl TopicPositions {
    /// The position for `topic`, if it is remembered (and it is kept for another period).
    pub(super) fn get_mut(&mut self, topic: &str) -> Option<&mut Position> {
        if !self.previous.is_empty()
            && !self.current.contains_key(topic)
            && let Some((topic, position)) = self.previous.remove_entry(topic)
        {
            self.current.insert(topic, position);
        }
        self.current.get_mut(topic)
    }

    pub(super) fn insert(&mut self, topic: Arc<str>, position: Position) {
        if !self.previous.is_empty() {
            self.previous.remove(&topic);
        }
        self.current.insert(topic, position);
    }

    /// Remembers `position` for `topic` unless something is remembered for it already.
    pub(super) fn insert_if_absent(&mut self, topic: &str, position: impl FnOnce() -> Position) {
        if self.get_mut(topic).is_none() {
            self.current.insert(topic.into(), position());
        }
    }

    /// Forgets the topics not touched since the previous rotation.
    pub(super) fn rotate(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }

    /// Topics remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(seq: u64) -> Position {
        ("e".into(), seq)
    }

    #[test]
    fn a_topic_quiet_for_two_rotations_is_forgotten_one_touched_is_kept() {
        let mut positions = TopicPositions::default();
        positions.insert("quiet".into(), position(1));
        positions.insert("busy".into(), position(1));
        positions.rotate();
        assert_eq!(positions.len(), 2, "one rotation: still remembered");
        positions.get_mut("busy").unwrap().1 = 2;
        positions.rotate();
        assert!(
            positions.get_mut("quiet").is_none(),
            "two rotations untouched"
        );
        assert_eq!(positions.get_mut("busy").map(|p| p.1), Some(2));
        assert_eq!(positions.len(), 1);
    }

    #[test]
    fn insert_if_absent_keeps_what_is_there_even_from_before_a_rotation() {
        let mut positions = TopicPositions::default();
        positions.insert("t".into(), position(5));
        positions.rotate();
        positions.insert_if_absent("t", || position(1));
        assert_eq!(positions.get_mut("t").map(|p| p.1), Some(5));
        positions.insert_if_absent("u", || position(1));
        assert_eq!(positions.get_mut("u").map(|p| p.1), Some(1));
        positions.insert("t".into(), position(9));
        positions.rotate();
        positions.rotate();
        assert_eq!(positions.len(), 0);
    }
}
