//! The storage settings: where a node keeps topic history (`storage`, `data_dir`) and when
//! the disk backend syncs it (`fsync`). docs/storage.md and docs/guarantees.md say what each
//! choice means for an acknowledged publish.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where topic history lives (setting `storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// In RAM only: a restarted node starts empty (its peers' copies survive).
    #[default]
    Memory,
    /// On disk under `data_dir`, served from memory: a restarted node takes its topics up
    /// again.
    Disk,
}

/// When the disk backend syncs its journal (setting `fsync`): `always`, `never`, or
/// `interval` (every 100 ms; `interval:250ms` picks the period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before every write returns: an `ok` survives a power cut of every replica.
    Always,
    /// Every period, from a thread of its own: a power cut loses at most one period.
    Interval(Duration),
    /// Left to the OS: a power cut may lose what the OS had not written yet.
    Never,
}

impl Fsync {
    /// `interval`'s period when none is given.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
    /// The longest period accepted: past it `never` says what is meant.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
}

impl Default for Fsync {
    fn default() -> Self {
        Self::Interval(Self::DEFAULT_INTERVAL)
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Interval(every) => write!(f, "interval:{}", humantime::format_duration(*every)),
        }
    }
}

impl FromStr for Fsync {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let every = match text {
            "always" => return Ok(Self::Always),
            "never" => return Ok(Self::Never),
            "interval" => return Ok(Self::default()),
            _ => text.strip_prefix("interval:").ok_or_else(|| {
                format!("{text:?}: expected always, never, interval or interval:<duration> (interval:100ms)")
            })?,
        };
        let every = humantime::parse_duration(every.trim())
            .map_err(|e| format!("{text:?}: the interval is not a duration ({e})"))?;
        if every < Duration::from_millis(1) || every > Self::MAX_INTERVAL {
            return Err(format!(
                "{text:?}: the interval must be between 1ms and {}",
                humantime::format_duration(Self::MAX_INTERVAL)
            ));
        }
        Ok(Self::Interval(every))
    }
}

impl Serialize for Fsync {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fsync {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "disk")]
impl From<Fsync> for crate::storage::disk::FsyncMode {
    fn from(fsync: Fsync) -> Self {
        match fsync {
            Fsync::Always => Self::Always,
            Fsync::Interval(every) => Self::Interval(every),
            Fsync::Never => Self::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_reads_and_writes_its_three_forms() {
        for (text, fsync) in [
            ("always", Fsync::Always),
            ("never", Fsync::Never),
            ("interval", Fsync::Interval(Duration::from_millis(100))),
            (
                "interval:250ms",
                Fsync::Interval(Duration::from_millis(250)),
            ),
            ("interval:2s", Fsync::Interval(Duration::from_secs(2))),
        ] {
            assert_eq!(text.parse::<Fsync>(), Ok(fsync), "{text}");
            assert_eq!(fsync.to_string().parse::<Fsync>(), Ok(fsync));
        }
        for bad in [
            "sometimes",
            "interval:",
            "interval:0ms",
            "interval:2m",
            "100",
        ] {
            let error = bad.parse::<Fsync>().expect_err(bad);
            assert!(error.contains(bad), "{error}");
        }
    }
}
