//! redb 5.0: one file, one table `events` (`&[u8]` → `&[u8]`), one B-tree for every topic.

use std::path::Path;

use anyhow::Result;
use redb::{
    CompactionMode, Database, Durability, ReadableDatabase, ReadableTable, TableDefinition,
};

use crate::store::{Fsync, Position, Store, TrimRange};
use crate::workload::{Record, event_key, prefix_end, prefix_topic, split_key, value_header};

const EVENTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("events");

/// How many `compact()` rounds at most: each returns whether more is possible.
const MAX_COMPACT_ROUNDS: usize = 64;

pub struct RedbStore {
    db: Database,
    fsync: Fsync,
}

impl RedbStore {
    pub fn open(dir: &Path, fsync: Fsync, cache_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(dir.join("history.redb"))?;
        // Create the table so that readers of an empty store find it.
        let txn = db.begin_write()?;
        txn.open_table(EVENTS)?;
        txn.commit()?;
        Ok(Self { db, fsync })
    }
}

impl Store for RedbStore {
    fn append(&mut self, batch: &[Record]) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        // `Immediate`: the commit returns once the data and the new root are fsynced.
        // `None`: the commit is visible to readers but not persisted until a later
        // `Immediate` commit.
        txn.set_durability(match self.fsync {
            Fsync::Always => Durability::Immediate,
            Fsync::Interval | Fsync::Never => Durability::None,
        })?;
        {
            let mut table = txn.open_table(EVENTS)?;
            for record in batch {
                table.insert(record.key.as_slice(), record.value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        // An empty `Immediate` commit persists every `None` commit before it.
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    fn last_positions(&self, max_topics: usize) -> Result<Vec<Position>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut positions = Vec::new();
        let mut start: Vec<u8> = Vec::new();
        while positions.len() < max_topics {
            let Some(first) = table.range(start.as_slice()..)?.next() else {
                break;
            };
            let (key, _) = first?;
            let Some((prefix, _)) = split_key(key.value()) else {
                anyhow::bail!("malformed key {:?}", key.value());
            };
            let prefix = prefix.to_vec();
            let end = prefix_end(&prefix);
            let Some(last) = table.range(prefix.as_slice()..end.as_slice())?.next_back() else {
                anyhow::bail!("topic vanished during the scan");
            };
            let (key, value) = last?;
            let (_, last_seq) = split_key(key.value()).unwrap_or_default();
            let (epoch, _) = value_header(value.value()).unwrap_or_default();
            positions.push(Position {
                topic: prefix_topic(&prefix).to_owned(),
                epoch,
                last_seq,
            });
            start = end;
        }
        Ok(positions)
    }

    fn read_page(&self, prefix: &[u8], from_seq: u64, n: usize) -> Result<(usize, usize)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let from = event_key(prefix, from_seq);
        let end = prefix_end(prefix);
        let mut events = 0;
        let mut bytes = 0;
        for entry in table.range(from.as_slice()..end.as_slice())?.take(n) {
            let (key, value) = entry?;
            events += 1;
            bytes += key.value().len() + value.value().len();
        }
        Ok((events, bytes))
    }

    fn first_seq_not_older(
        &self,
        prefix: &[u8],
        cutoff_ts: i64,
        max_scan: usize,
    ) -> Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let end = prefix_end(prefix);
        for entry in table.range(prefix..end.as_slice())?.take(max_scan) {
            let (key, value) = entry?;
            if value_header(value.value()).is_some_and(|(_, ts)| ts >= cutoff_ts) {
                return Ok(split_key(key.value()).map(|(_, seq)| seq));
            }
        }
        Ok(None)
    }

    fn delete(&mut self, ranges: &[TrimRange]) -> Result<u64> {
        // One durable write transaction for the whole sweep; per topic a key-range delete
        // (`retain_in` with a predicate that keeps nothing).
        let mut deleted = 0;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(EVENTS)?;
            for range in ranges {
                let from = event_key(&range.prefix, range.from);
                let to = event_key(&range.prefix, range.to);
                table.retain_in(from.as_slice()..to.as_slice(), |_, _| {
                    deleted += 1;
                    false
                })?;
            }
        }
        txn.commit()?;
        Ok(deleted)
    }

    fn compact(&mut self) -> Result<()> {
        for _ in 0..MAX_COMPACT_ROUNDS {
            if !self.db.compact(CompactionMode::Balanced)? {
                break;
            }
        }
        Ok(())
    }

    fn prepare_close(&mut self) -> Result<()> {
        // Every commit of the load ended in an `Immediate` one: nothing to do.
        Ok(())
    }
}
