//! Per-topic sequence numbers.
//!
//! Every event of a topic gets the next number of a contiguous sequence that starts at 1
//! within an epoch. The broker holds one `TopicSequences` per lock shard and keeps the shard
//! locked until the event is queued to every subscriber, which is what makes each subscriber
//! see a topic's events in sequence order.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

#[derive(Debug, Default)]
pub struct TopicSequences {
    last: HashMap<Arc<str>, TopicCounter, RandomState>,
}

#[derive(Debug)]
struct TopicCounter {
    /// The same allocation as the map key, kept here so one lookup yields both.
    name: Arc<str>,
    last: u64,
}

impl TopicSequences {
    pub fn new() -> Self {
        Self::default()
    }

    /// Assigns the next sequence number of `topic`; also returns the topic's shared name so
    /// events do not each allocate a copy of it.
    pub fn next(&mut self, topic: &str) -> (Arc<str>, u64) {
        if let Some(counter) = self.last.get_mut(topic) {
            counter.last += 1;
            return (counter.name.clone(), counter.last);
        }
        let name: Arc<str> = topic.into();
        let counter = TopicCounter {
            name: name.clone(),
            last: 1,
        };
        self.last.insert(name.clone(), counter);
        (name, 1)
    }

    /// The last sequence number assigned to `topic`, 0 if none.
    pub fn last(&self, topic: &str) -> u64 {
        self.last.get(topic).map_or(0, |c| c.last)
    }

    pub fn topics(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_contiguous_per_topic() {
        let mut seqs = TopicSequences::new();
        assert_eq!(seqs.next("a").1, 1);
        assert_eq!(seqs.next("a").1, 2);
        assert_eq!(seqs.next("b").1, 1);
        assert_eq!(seqs.next("a").1, 3);
        assert_eq!(seqs.last("a"), 3);
        assert_eq!(seqs.last("never"), 0);
        let (first, _) = seqs.next("b");
        let (second, _) = seqs.next("b");
        assert!(Arc::ptr_eq(&first, &second), "topic names are shared");
        assert_eq!(seqs.topics(), 2);
    }
}
