//! The gossip envelope: every gossip datagram is authenticated with the cluster key and
//! carries a timestamp and a nonce, so that a captured packet cannot be played again.
//!
//! Layout (version 2), all integers big-endian:
//!
//! ```text
//! [0]        version = 2
//! [1..9]     sent_at: the sender's wall clock, milliseconds since the Unix epoch
//! [9..17]    nonce: 64 random bits, new for every packet
//! [17..n-32] the foca payload
//! [n-32..n]  HMAC-SHA256 over bytes [0..n-32], with the gossip key derived from the cluster key
//! ```
//!
//! foca trusts any datagram, so without the tag one forged packet could declare a node down;
//! without the timestamp and nonce a packet recorded on the network could later bring a dead
//! node back "alive" (until the next probe fails), or repeat stale membership news.
//!
//! The receiver ([`ReplayWindow`]) accepts a packet only if its timestamp is within the
//! window (±30 s by default) of the local clock and its nonce was not seen before for that
//! timestamp. Node clocks must therefore agree to within the window (NTP does this easily);
//! packets from a node whose clock is off by more are refused and counted as `too_old` or
//! `from_future`.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use thiserror::Error;

use super::security::ClusterKey;

/// The envelope format; version 1 (no timestamp, no nonce) is no longer accepted.
pub const ENVELOPE_VERSION: u8 = 2;
const HEADER_LEN: usize = 1 + 8 + 8;
const TAG_LEN: usize = 32;

/// Bytes the envelope adds to every packet.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// The default tolerance between a packet's timestamp and the receiver's clock.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(30);

/// Nonces remembered at most, over the whole window. Gossip brings a node some tens of
/// packets a second (foca's LAN profile gossips to 3 members every 200 ms, plus probes), so
/// a 60 s span holds a few thousand; the cap leaves a wide margin and bounds memory to about
/// 1 MiB whatever peers send.
pub const MAX_REMEMBERED_NONCES: usize = 65_536;

/// Each window is remembered in this many buckets of packet timestamps, so whole buckets
/// are forgotten as time moves on.
const BUCKETS_PER_WINDOW: u64 = 4;

/// What a sealed packet says about itself: when it was sent and its unique number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_at_ms: u64,
    pub nonce: u64,
}

/// An authenticated packet: its stamp and the payload for foca.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    pub stamp: Stamp,
    pub payload: &'a [u8],
}

/// Why a packet was refused. Each reason has its own counter ([`Refusal::label`]).
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("packet too short for the envelope")]
    Truncated,
    #[error("unknown envelope version {0} (a node of another release?)")]
    Version(u8),
    #[error("authentication failed: the sender does not hold this cluster's key")]
    BadKey,
    #[error(
        "sent {age_ms} ms ago, outside the replay window: a replay, or clocks that differ by more than the window"
    )]
    TooOld { age_ms: u64 },
    #[error(
        "sent {ahead_ms} ms in the future, outside the replay window: the sender's clock is ahead"
    )]
    FromFuture { ahead_ms: u64 },
    #[error("a replay: this packet was already received")]
    Replayed,
    #[error("the replay memory is full: refused rather than risk accepting a replay")]
    MemoryFull,
}

impl Refusal {
    /// The `reason` label of the refusal counters.
    pub fn label(self) -> &'static str {
        match self {
            Self::Truncated | Self::Version(_) => "malformed",
            Self::BadKey => "bad_key",
            Self::TooOld { .. } => "too_old",
            Self::FromFuture { .. } => "from_future",
            Self::Replayed => "replayed",
            Self::MemoryFull => "memory_full",
        }
    }
}

/// Milliseconds since the Unix epoch by this machine's clock (0 before 1970).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ClusterKey {
    /// Wraps a gossip payload in a version-2 envelope stamped with `stamp`.
    pub fn seal(&self, payload: &[u8], stamp: Stamp) -> Vec<u8> {
        let mut packet = Vec::with_capacity(ENVELOPE_OVERHEAD + payload.len());
        packet.push(ENVELOPE_VERSION);
        packet.extend_from_slice(&stamp.sent_at_ms.to_be_bytes());
        packet.extend_from_slice(&stamp.nonce.to_be_bytes());
        packet.extend_from_slice(payload);
        let tag = hmac::sign(self.gossip_key(), &packet);
        packet.extend_from_slice(tag.as_ref());
        packet
    }

    /// Checks a packet's version and tag, and returns its stamp and payload. Freshness is
    /// the receiver's [`ReplayWindow`]'s to judge.
    pub fn open<'a>(&self, packet: &'a [u8]) -> Result<Opened<'a>, Refusal> {
        let Some(&version) = packet.first() else {
            return Err(Refusal::Truncated);
        };
        if version != ENVELOPE_VERSION {
            return Err(Refusal::Version(version));
        }
        if packet.len() < ENVELOPE_OVERHEAD {
            return Err(Refusal::Truncated);
        }
        let (signed, tag) = packet.split_at(packet.len() - TAG_LEN);
        hmac::verify(self.gossip_key(), signed, tag).map_err(|_| Refusal::BadKey)?;
        let field = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&signed[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        Ok(Opened {
            stamp: Stamp {
                sent_at_ms: field(1),
                nonce: field(9),
            },
            payload: &signed[HEADER_LEN..],
        })
    }
}

/// The receiver's memory of recent packets: refuses stamps outside the window around the
/// local clock, and nonces already seen.
///
/// Nonces are kept in buckets by the packet's own timestamp; a bucket is forgotten once all
/// the timestamps it covers are older than the window (a replay of them is refused as too
/// old by then). Memory is bounded by [`MAX_REMEMBERED_NONCES`]: when it is reached, the
/// oldest bucket is dropped and the window's lower edge moves up past it, so packets from
/// that span are refused as too old instead of being accepted unchecked. Should the bucket
/// of the packet at hand be the only one left and still be full, the packet is refused
/// (`memory_full`). Only packets with a valid tag get this far, so only holders of the
/// cluster key can fill it.
#[derive(Debug)]
pub struct ReplayWindow {
    window_ms: u64,
    bucket_ms: u64,
    capacity: usize,
    buckets: BTreeMap<u64, HashSet<u64>>,
    remembered: usize,
    /// Timestamps below this are refused: their bucket was dropped to stay within capacity.
    floor_ms: u64,
}

impl ReplayWindow {
    pub fn new(window: Duration) -> Self {
        Self::with_capacity(window, MAX_REMEMBERED_NONCES)
    }

    pub fn with_capacity(window: Duration, capacity: usize) -> Self {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            window_ms,
            bucket_ms: (window_ms / BUCKETS_PER_WINDOW).max(1),
            capacity: capacity.max(1),
            buckets: BTreeMap::new(),
            remembered: 0,
            floor_ms: 0,
        }
    }

    /// Nonces remembered now.
    pub fn remembered(&self) -> usize {
        self.remembered
    }

    /// Accepts `stamp` (and remembers it) if it is fresh at `now_ms`; otherwise says why not.
    pub fn check(&mut self, stamp: Stamp, now_ms: u64) -> Result<(), Refusal> {
        let sent = stamp.sent_at_ms;
        if sent.saturating_add(self.window_ms) < now_ms {
            return Err(Refusal::TooOld {
                age_ms: now_ms - sent,
            });
        }
        if sent > now_ms.saturating_add(self.window_ms) {
            return Err(Refusal::FromFuture {
                ahead_ms: sent - now_ms,
            });
        }
        self.forget_before(now_ms.saturating_sub(self.window_ms));
        if sent < self.floor_ms {
            return Err(Refusal::TooOld {
                age_ms: now_ms.saturating_sub(sent),
            });
        }
        let bucket = sent / self.bucket_ms;
        if self
            .buckets
            .get(&bucket)
            .is_some_and(|seen| seen.contains(&stamp.nonce))
        {
            return Err(Refusal::Replayed);
        }
        while self.remembered >= self.capacity {
            let Some((&oldest, _)) = self.buckets.first_key_value() else {
                break;
            };
            if oldest >= bucket {
                return Err(Refusal::MemoryFull);
            }
            if let Some(dropped) = self.buckets.remove(&oldest) {
                self.remembered -= dropped.len();
            }
            self.floor_ms = self.floor_ms.max((oldest + 1) * self.bucket_ms);
            if sent < self.floor_ms {
                return Err(Refusal::TooOld {
                    age_ms: now_ms.saturating_sub(sent),
                });
            }
        }
        self.buckets.entry(bucket).or_default().insert(stamp.nonce);
        self.remembered += 1;
        Ok(())
    }

    /// Drops the buckets whose every timestamp is older than `oldest_ms`.
    fn forget_before(&mut self, oldest_ms: u64) {
        while let Some((&first, _)) = self.buckets.first_key_value() {
            if (first + 1).saturating_mul(self.bucket_ms) > oldest_ms {
                break;
            }
            if let Some(dropped) = self.buckets.remove(&first) {
                self.remembered -= dropped.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Zm9yLXRlc3RzLW9ubHktbm90LWEtcmVhbC1rZXktMDE";
    const NOW: u64 = 1_800_000_000_000;

    fn stamp(sent_at_ms: u64, nonce: u64) -> Stamp {
        Stamp { sent_at_ms, nonce }
    }

    #[test]
    fn a_sealed_packet_opens_with_its_stamp_and_payload() {
        let key = ClusterKey::derive(Some(KEY));
        let packet = key.seal(b"swim", stamp(NOW, 7));
        assert_eq!(packet.len(), ENVELOPE_OVERHEAD + 4);
        assert_eq!(
            key.open(&packet),
            Ok(Opened {
                stamp: stamp(NOW, 7),
                payload: b"swim"
            })
        );
        let empty = key.seal(b"", stamp(NOW, 8));
        assert_eq!(key.open(&empty).map(|o| o.payload), Ok(&b""[..]));
    }

    #[test]
    fn tampered_foreign_and_malformed_packets_are_refused() {
        let key = ClusterKey::derive(Some(KEY));
        let packet = key.seal(b"swim", stamp(NOW, 7));
        let other = ClusterKey::derive(Some("another-key-entirely-Q2xhdWRlIHdhcyBoZXJl"));
        assert_eq!(other.open(&packet), Err(Refusal::BadKey));
        assert_eq!(ClusterKey::derive(None).open(&packet), Err(Refusal::BadKey));
        // Every byte is covered: the version, the timestamp, the nonce, the payload, the tag.
        for at in 1..packet.len() {
            let mut tampered = packet.clone();
            tampered[at] ^= 0x01;
            assert_eq!(key.open(&tampered), Err(Refusal::BadKey), "byte {at}");
        }
        let mut wrong_version = packet.clone();
        wrong_version[0] = 1;
        assert_eq!(key.open(&wrong_version), Err(Refusal::Version(1)));
        assert_eq!(key.open(&packet[..10]), Err(Refusal::Truncated));
        assert_eq!(key.open(&[]), Err(Refusal::Truncated));
        assert_eq!(
            key.open(&packet[..ENVELOPE_OVERHEAD - 1]),
            Err(Refusal::Truncated)
        );
    }

    #[test]
    fn a_packet_is_accepted_once() {
        let mut window = ReplayWindow::new(Duration::from_secs(30));
        assert_eq!(window.check(stamp(NOW, 1), NOW), Ok(()));
        assert_eq!(window.check(stamp(NOW, 1), NOW + 5), Err(Refusal::Replayed));
        assert_eq!(window.check(stamp(NOW, 2), NOW + 5), Ok(()));
        // Replayed just before the window closes: still remembered.
        assert_eq!(
            window.check(stamp(NOW, 1), NOW + 30_000),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn stamps_outside_the_window_are_refused() {
        let mut window = ReplayWindow::new(Duration::from_secs(30));
        assert_eq!(
            window.check(stamp(NOW - 30_001, 1), NOW),
            Err(Refusal::TooOld { age_ms: 30_001 })
        );
        assert_eq!(
            window.check(stamp(NOW + 30_001, 2), NOW),
            Err(Refusal::FromFuture { ahead_ms: 30_001 })
        );
        assert_eq!(window.check(stamp(NOW - 30_000, 3), NOW), Ok(()));
        assert_eq!(window.check(stamp(NOW + 30_000, 4), NOW), Ok(()));
        // Fifteen minutes later, as in the finding: refused, however new to the receiver.
        assert_eq!(
            window.check(stamp(NOW, 5), NOW + 15 * 60_000),
            Err(Refusal::TooOld {
                age_ms: 15 * 60_000
            })
        );
    }

    #[test]
    fn old_buckets_are_forgotten_as_time_moves_on() {
        let mut window = ReplayWindow::new(Duration::from_secs(30));
        for nonce in 0..100 {
            window.check(stamp(NOW, nonce), NOW).unwrap();
        }
        assert_eq!(window.remembered(), 100);
        // A minute later every one of them is too old to be accepted anyway.
        window.check(stamp(NOW + 60_000, 1), NOW + 60_000).unwrap();
        assert_eq!(window.remembered(), 1);
        assert!(matches!(
            window.check(stamp(NOW, 3), NOW + 60_000),
            Err(Refusal::TooOld { .. })
        ));
    }

    #[test]
    fn a_full_memory_moves_the_window_up_instead_of_forgetting_silently() {
        let mut window = ReplayWindow::with_capacity(Duration::from_secs(30), 10);
        for nonce in 0..5 {
            window.check(stamp(NOW - 20_000, nonce), NOW).unwrap();
        }
        for nonce in 0..5 {
            window.check(stamp(NOW, nonce), NOW).unwrap();
        }
        // Full: the oldest bucket goes, and its span is refused from now on.
        window.check(stamp(NOW, 99), NOW).unwrap();
        assert_eq!(window.remembered(), 6);
        assert!(matches!(
            window.check(stamp(NOW - 20_000, 0), NOW),
            Err(Refusal::TooOld { .. })
        ));
        assert!(matches!(
            window.check(stamp(NOW - 20_000, 42), NOW),
            Err(Refusal::TooOld { .. })
        ));
        // The current bucket alone fills it: refused, never accepted unchecked.
        for nonce in 100..104 {
            window.check(stamp(NOW, nonce), NOW).unwrap();
        }
        assert_eq!(window.check(stamp(NOW, 200), NOW), Err(Refusal::MemoryFull));
        assert_eq!(window.check(stamp(NOW, 1), NOW), Err(Refusal::Replayed));
    }

    #[test]
    fn refusals_have_stable_labels() {
        let labels: Vec<&str> = [
            Refusal::Truncated,
            Refusal::Version(1),
            Refusal::BadKey,
            Refusal::TooOld { age_ms: 1 },
            Refusal::FromFuture { ahead_ms: 1 },
            Refusal::Replayed,
            Refusal::MemoryFull,
        ]
        .into_iter()
        .map(Refusal::label)
        .collect();
        assert_eq!(
            labels,
            [
                "malformed",
                "malformed",
                "bad_key",
                "too_old",
                "from_future",
                "replayed",
                "memory_full"
            ]
        );
    }
}
