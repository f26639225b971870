//! The routing core: topics, the subscription index, topic placement, per-topic sequencing
//! state, the publish ids remembered for idempotent publishing and the queue-group
//! events waiting for a member.
//!
//! Plain data structures without sockets, tasks or clocks, so that they are tested directly;
//! the broker wraps them in locks and connects them to client connections.

pub mod dedupe;
pub mod group_backlog;
pub mod group_progress;
pub mod index;
pub mod ownership;
pub mod topic;
pub mod topics;

pub use index::{Match, QueueGroup, SubscriptionIndex};
pub use topic::TopicError;
