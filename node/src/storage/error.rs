//! What can go wrong when history is stored, typed so that callers can tell a full disk (answer
//! `unavailable`, keep serving reads, retry once space is back) from a broken store.

use std::io;
use std::sync::Arc;

/// An error of the disk log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file system is out of space (or over a quota). Nothing of the write that got it
    /// was acknowledged. fjall refuses every later write of this opening (see
    /// [`StorageError::Failed`]); reopen the log once there is room.
    #[error("disk full: {0}")]
    DiskFull(#[source] io::Error),
    /// Any other I/O error.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
    /// An earlier write or sync of this opening failed (`cause`): fjall poisons the database
    /// then and refuses every later write, since what reached the disk is unknown. Reads
    /// still work; reopening recovers what was acknowledged.
    #[error(
        "history on disk refuses writes since an earlier failure ({cause}); the node reopens it once it can"
    )]
    Failed { cause: Arc<str>, disk_full: bool },
    /// Another open log (this process or another) holds the directory.
    #[error("the history directory is held by another open store")]
    Locked,
    /// An event that cannot be read back as written: malformed, of another epoch than its
    /// topic's record, or missing inside the retained range. Never served.
    #[error("corrupt history of topic {topic:?} at seq {seq}: {reason}")]
    Corrupt {
        topic: Arc<str>,
        seq: u64,
        reason: &'static str,
    },
    /// The caller asked for something the log cannot store (a topic name too long for a
    /// key, an event with seq 0, a replace with another topic's events).
    #[error("cannot store: {0}")]
    Invalid(String),
    /// The directory holds another layout version than this build writes.
    #[error(
        "the history directory holds layout format {found}, this build reads format {expected}"
    )]
    Format { found: String, expected: u8 },
    /// Anything else fjall reports (its journal or tables unreadable, ...).
    #[cfg(feature = "disk")]
    #[error("storage engine: {0}")]
    Engine(#[source] fjall::Error),
}

impl StorageError {
    /// True when the write failed (or the log is refusing writes) because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::DiskFull(_) => true,
            Self::Failed { disk_full, .. } => *disk_full,
            _ => false,
        }
    }

    #[cfg(feature = "disk")]
    pub(crate) fn from_io(error: io::Error) -> Self {
        if is_full(&error) {
            Self::DiskFull(error)
        } else {
            Self::Io(error)
        }
    }
}

#[cfg(feature = "disk")]
fn is_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(feature = "disk")]
impl From<fjall::Error> for StorageError {
    fn from(error: fjall::Error) -> Self {
        match error {
            fjall::Error::Io(e) | fjall::Error::Storage(fjall::LsmError::Io(e)) => Self::from_io(e),
            fjall::Error::Locked => Self::Locked,
            fjall::Error::Poisoned => Self::Failed {
                cause: "an earlier write or sync failed".into(),
                disk_full: false,
            },
            other => Self::Engine(other),
        }
    }
}

#[cfg(all(test, feature = "disk"))]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        // ENOSPC and EDQUOT as the kernel reports them.
        let full = StorageError::from(fjall::Error::Io(io::Error::from_raw_os_error(28)));
        assert!(matches!(full, StorageError::DiskFull(_)) && full.is_disk_full());
        let quota = StorageError::from(fjall::Error::Storage(fjall::LsmError::Io(
            io::Error::from_raw_os_error(122),
        )));
        assert!(quota.is_disk_full());
        let eio = StorageError::from(fjall::Error::Io(io::Error::from_raw_os_error(5)));
        assert!(matches!(eio, StorageError::Io(_)) && !eio.is_disk_full());
        assert!(matches!(
            StorageError::from(fjall::Error::Locked),
            StorageError::Locked
        ));
        assert!(matches!(
            StorageError::from(fjall::Error::Poisoned),
            StorageError::Failed { .. }
        ));
        assert!(full.to_string().starts_with("disk full"));
    }
}
