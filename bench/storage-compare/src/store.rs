//! What the benchmark asks of a storage engine, and file-system helpers.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};

use crate::workload::Record;

/// Murmur's planned `fsync` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// Every write batch is durable when its commit returns.
    Always,
    /// Batches are committed without syncing; a periodic sync makes them durable.
    Interval,
    /// Nothing is synced by the benchmark (the engine may still sync on its own).
    Never,
}

/// A topic's newest event as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub epoch: u64,
    pub last_seq: u64,
}

/// Events of one topic to delete: sequence numbers `from..to`.
#[derive(Debug, Clone)]
pub struct TrimRange {
    pub prefix: Vec<u8>,
    pub from: u64,
    pub to: u64,
}

/// One engine holding every topic's events in one ordered key space.
pub trait Store {
    /// Writes one batch (one write batch or write transaction), as durable as `fsync` asks.
    fn append(&mut self, batch: &[Record]) -> Result<()>;
    /// Makes everything written so far durable (the `interval` flusher's work).
    fn sync(&mut self) -> Result<()>;
    /// Each topic's last position, found by walking the keys (one seek per topic).
    fn last_positions(&self, max_topics: usize) -> Result<Vec<Position>>;
    /// Reads up to `n` events of the topic with key `prefix`, from `from_seq` on: returns the
    /// events and bytes read.
    fn read_page(&self, prefix: &[u8], from_seq: u64, n: usize) -> Result<(usize, usize)>;
    /// The first sequence number of the topic whose timestamp is at least `cutoff_ts`,
    /// scanning from the topic's oldest event (at most `max_scan` events); `None` when every
    /// scanned event is older.
    fn first_seq_not_older(
        &self,
        prefix: &[u8],
        cutoff_ts: i64,
        max_scan: usize,
    ) -> Result<Option<u64>>;
    /// Deletes the ranges (durably): returns the events deleted.
    fn delete(&mut self, ranges: &[TrimRange]) -> Result<u64>;
    /// Reclaims space: what the engine offers to drop deleted data from the files.
    fn compact(&mut self) -> Result<()>;
    /// What a clean shutdown would do before closing, so that the next open is quick (fjall:
    /// flush the memtable to a table, so the journal need not be replayed).
    fn prepare_close(&mut self) -> Result<()>;
}

/// Bytes the files under `dir` take on disk (allocated blocks, as `du` counts) and their
/// apparent length.
pub fn disk_usage(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    let mut pending = vec![dir.to_path_buf()];
    // Bounded: a store has a few hundred files at most.
    let mut visited = 0;
    while let Some(path) = pending.pop() {
        visited += 1;
        anyhow::ensure!(visited < 100_000, "too many files under {}", dir.display());
        for entry in std::fs::read_dir(&path).with_context(|| path.display().to_string())? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                allocated += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    Ok((allocated, apparent))
}

/// Prints every file under `dir` with its size, to stderr (for `--list-files`).
pub fn list_files(dir: &Path, label: &str) -> Result<()> {
    let mut pending = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(path) = pending.pop() {
        anyhow::ensure!(
            files.len() < 100_000,
            "too many files under {}",
            dir.display()
        );
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                files.push((entry.path(), meta.len()));
            }
        }
    }
    files.sort();
    eprintln!("files of {} ({label}):", dir.display());
    for (path, len) in files {
        let path = path.strip_prefix(dir).unwrap_or(&path);
        eprintln!("  {len:>12}  {}", path.display());
    }
    Ok(())
}

/// Writes back and evicts the page cache of every file under `dir` (fsync, then
/// `posix_fadvise(DONTNEED)`), so the next open reads from the device. Only these files are
/// evicted: nothing else on the (shared) machine is touched.
pub fn evict_page_cache(dir: &Path) -> Result<()> {
    let mut pending = vec![dir.to_path_buf()];
    let mut visited = 0;
    while let Some(path) = pending.pop() {
        visited += 1;
        anyhow::ensure!(visited < 100_000, "too many files under {}", dir.display());
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            if entry.metadata()?.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let file = File::open(entry.path())?;
            file.sync_all()?;
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
        }
    }
    Ok(())
}
