//! Chaos testing for Murmur.
//!
//! Clients of a chaos run record everything they do and see as a [`history`] (one JSON object
//! per line, timestamps from one monotonic clock); the [`checker`] reads a history and judges
//! it against the delivery contract of `docs/guarantees.md`, event by event.

pub mod checker;
pub mod history;
