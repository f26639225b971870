//! What the HTTP API's topic listing needs from the broker: how many local subscriptions a
//! topic's events go to. Kept apart so the broker's main file stays about fan-out.

use super::{Broker, Subscriber};
use crate::routing::Match;

impl Broker {
    /// Local subscriptions an event on `topic` would be offered to: plain subscriptions
    /// whose pattern matches it, and the members of every matching queue group (one of them
    /// gets each event).
    pub fn local_subscribers(&self, topic: &str) -> usize {
        let index = self.index.read();
        let mut count = 0;
        index.for_each_match(topic, |found| match found {
            Match::Subscriber(Subscriber(_)) => count += 1,
            Match::Group(group) => count += group.members().len(),
        });
        count
    }
}
