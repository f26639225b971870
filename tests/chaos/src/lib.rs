//! Chaos testing for Murmur.
//!
//! Clients of a chaos run record everything they do and see as a [`history`] (one JSON object
//! per line, timestamps from one monotonic clock); the [`checker`] reads a history and judges
//! it against the delivery contract of `docs/guarantees.md`, event by event. The [`lab`]
//! builds hosts in network namespaces for real node processes, and [`workload`] is the
//! recording client; `murmur-chaos run` ties them together with a fault (a nemesis).

pub mod checker;
pub mod durability;
pub mod history;
pub mod lab;
pub mod report;
pub mod twice;
pub mod workload;
