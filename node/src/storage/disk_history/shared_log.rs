//! The node's one [`DiskLog`], shared by every shard's [`super::DiskHistory`], and opened
//! again after a failure.
//!
//! fjall refuses every write after one failed (a full disk, an I/O error): what reached the
//! disk is unknown, so the database must be reopened, which recovers everything that was
//! acknowledged. The node does that on its own ([`SharedLog::reopen`], tried every few
//! seconds by the broker's sweep while the log is failed): publishes get `unavailable` until
//! then, reads and resumes go on from memory, and once the log is open again the shards
//! write what memory holds over whatever the failed writes left on disk
//! (`HistoryStore::rewrite_durable`).

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::storage::StorageError;
use crate::storage::disk::{DiskLog, FsyncMode, Recovered};

/// See the module docs.
#[derive(Debug)]
pub struct SharedLog {
    dir: PathBuf,
    fsync: FsyncMode,
    /// `Err` between a failed reopening and the next, with why it failed.
    current: RwLock<Result<Arc<DiskLog>, Closed>>,
}

/// Why the log is closed: the cause, and whether the disk was full.
type Closed = (Arc<str>, bool);

impl SharedLog {
    pub fn new(log: DiskLog) -> Self {
        Self::shared(Arc::new(log))
    }

    /// Over a log someone else holds too (tests that read it beside the stores).
    pub(crate) fn shared(log: Arc<DiskLog>) -> Self {
        Self {
            dir: log.dir().to_path_buf(),
            fsync: log.fsync(),
            current: RwLock::new(Ok(log)),
        }
    }

    /// The open log, or why there is none.
    pub fn get(&self) -> Result<Arc<DiskLog>, StorageError> {
        match &*self.current.read() {
            Ok(log) => Ok(log.clone()),
            Err((cause, disk_full)) => Err(StorageError::Failed {
                cause: cause.clone(),
                disk_full: *disk_full,
            }),
        }
    }

    /// True when the log refuses writes (or could not be reopened): time to reopen it.
    pub fn has_failed(&self) -> bool {
        match &*self.current.read() {
            Ok(log) => log.failure().is_some(),
            Err(_) => true,
        }
    }

    /// Closes the log and opens it again. The caller holds every shard's lock, so that no
    /// operation holds the old log meanwhile (fjall locks the directory while a handle to
    /// it lives). On failure the log stays closed: every write is refused with the cause.
    pub fn reopen(&self) -> Result<Recovered, StorageError> {
        let mut current = self.current.write();
        let before = match &*current {
            Ok(log) => log.failure(),
            Err(why) => Some(why.clone()),
        };
        let (cause, disk_full) = before.unwrap_or_else(|| ("reopened".into(), false));
        // Dropped first: its directory lock goes with it.
        *current = Err((cause, disk_full));
        match DiskLog::open(&self.dir, self.fsync) {
            Ok((log, recovered)) => {
                *current = Ok(Arc::new(log));
                Ok(recovered)
            }
            Err(error) => {
                *current = Err((
                    format!("reopening failed: {error}").into(),
                    error.is_disk_full(),
                ));
                Err(error)
            }
        }
    }
}
