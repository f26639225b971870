//! Group commit for `fsync = "always"`: an event is acknowledged and delivered only once
//! this node's disk holds it, but appends do not each wait for their own `fdatasync` under
//! their shard's lock. The store hands them to the OS and gives a [`SyncTicket`]; one thread
//! (`murmur-sync`) waits for the tickets in turn, so that the first sync covers every
//! append made before it and the others return at once, then completes what waited:
//!
//! - on a topic's owner, its own disk is one more replica the event waits for
//!   ([`TopicTable::synced_locally`](crate::routing::topics::TopicTable::synced_locally));
//! - on a replica, the `Stored` answer goes out only after the sync.
//!
//! The queue to the thread is bounded ([`SYNC_QUEUE`]); a full queue blocks the caller
//! until the thread catches up, which slows the publishers feeding it (the bound is far
//! above what the publish buffer lets be in flight). A sync that fails fails what waited
//! for it: the owner's pending events of the topic fail (publishers get `unavailable`), a
//! replica refuses the copy.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Weak};

use super::Broker;
use crate::storage::{StorageError, SyncTicket};

/// Syncs queued for the thread at most.
const SYNC_QUEUE: usize = 1 << 16;

/// Jobs the thread takes at once before syncing: the first sync covers them all.
const JOBS_AT_ONCE: usize = 4096;

/// What to do once a ticket's sync is done.
pub enum AfterSync {
    /// The owner's own copy of `topic` is on disk up to `seq` of `epoch`.
    Owner {
        topic: Arc<str>,
        epoch: Arc<str>,
        seq: u64,
    },
    /// Anything else (a replica's `Stored` answer), told how the sync went.
    Then(Box<dyn FnOnce(Result<(), StorageError>) + Send>),
}

struct Job {
    ticket: SyncTicket,
    after: AfterSync,
}

/// The handle of the syncing thread.
#[derive(Debug)]
pub(super) struct Syncer {
    jobs: SyncSender<Job>,
}

impl Broker {
    /// Starts the thread that syncs appends for `fsync = "always"`; until it runs (and for
    /// tests that never start it) every sync is waited for where it is asked.
    pub fn start_syncer(self: &Arc<Self>) -> std::io::Result<()> {
        let (jobs, queue) = sync_channel(SYNC_QUEUE);
        let broker = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("murmur-sync".into())
            .spawn(move || run(&queue, &broker))?;
        let _ = self.syncer.set(Syncer { jobs });
        Ok(())
    }

    /// Once `ticket`'s sync is done, does `after`: on the syncing thread, or here and now
    /// when it does not run. Called without any shard lock held.
    pub(crate) fn after_sync(&self, ticket: SyncTicket, after: AfterSync) {
        let job = Job { ticket, after };
        let job = match self.syncer.get() {
            Some(syncer) => match syncer.jobs.send(job) {
                Ok(()) => return,
                // The thread is gone (the node is stopping): done here.
                Err(returned) => returned.0,
            },
            None => job,
        };
        let result = job.ticket.wait();
        self.finish_sync(job.after, result);
    }

    fn finish_sync(&self, after: AfterSync, result: Result<(), StorageError>) {
        match after {
            AfterSync::Owner { topic, epoch, seq } => {
                let mut shard = self.shard(&topic).lock();
                match result {
                    Ok(()) => {
                        let done = shard.topics.synced_locally(&topic, &epoch, seq);
                        self.complete(&mut shard, done);
                    }
                    Err(error) => {
                        tracing::warn!(%topic, seq, %error, "could not sync a sequenced event; it fails with the events waiting after it");
                        for (event, _signal) in shard.topics.fail_pending(&topic) {
                            Self::forget_failed(&mut shard, &event);
                        }
                    }
                }
            }
            AfterSync::Then(then) => then(result),
        }
    }
}

fn run(queue: &Receiver<Job>, broker: &Weak<Broker>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < JOBS_AT_ONCE
            && let Ok(job) = queue.try_recv()
        {
            jobs.push(job);
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        for job in jobs {
            let result = job.ticket.wait();
            broker.finish_sync(job.after, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::test_support::{drain, json, subscription};
    use super::super::{Broker, Outbox, Sequenced};
    use crate::storage::Retention;
    use crate::storage::disk::{DiskLog, FsyncMode};
    use crate::storage::disk_history::SharedLog;

    /// A broker on a disk log with `fsync = "always"`, and the log.
    fn always(dir: &std::path::Path) -> (Broker, Arc<DiskLog>) {
        let (log, _) = DiskLog::open(dir, FsyncMode::Always).expect("the log opens");
        let log = Arc::new(log);
        let shared = Arc::new(SharedLog::shared(log.clone()));
        let (broker, _) = Broker::new(Retention::default())
            .with_disk_history(shared, &[])
            .expect("no history to take up");
        (broker, log)
    }

    #[tokio::test]
    async fn with_fsync_always_an_event_is_acknowledged_and_delivered_once_synced() {
        let dir = tempfile::TempDir::new().expect("a temporary directory");
        let (broker, log) = always(dir.path());
        let broker = Arc::new(broker);
        broker.start_syncer().expect("the thread starts");
        let outbox = Outbox::new(1, 1024);
        subscription(&broker, "s", "t", None, &outbox);
        broker.install_topic("t", None);
        let mut waiting = Vec::new();
        for n in 0..50 {
            let text: &'static str = if n % 2 == 0 { "1" } else { "2" };
            match broker.sequence("t", json(text), &[], true) {
                Sequenced::Waiting(receipt, stored) => waiting.push((receipt.seq, stored)),
                other => panic!("without replicas it still waits for the disk: {other:?}"),
            }
        }
        for (seq, stored) in waiting {
            tokio::time::timeout(Duration::from_secs(10), stored)
                .await
                .expect("synced in time")
                .expect("stored, not failed");
            // One write per event here, so the event's seq is its write's mark.
            assert!(log.synced_mark() >= seq, "acknowledged before its sync");
        }
        let delivered: Vec<u64> = drain(&outbox).iter().map(|d| d.1).collect();
        assert_eq!(delivered, (1..=50).collect::<Vec<_>>());
        // Everything written is synced.
        assert_eq!(log.written_mark(), log.synced_mark());
    }

    #[test]
    fn without_the_thread_the_sync_is_waited_for_in_place() {
        let dir = tempfile::TempDir::new().expect("a temporary directory");
        let (broker, log) = always(dir.path());
        let outbox = Outbox::new(1, 1024);
        subscription(&broker, "s", "t", None, &outbox);
        broker.install_topic("t", None);
        let Sequenced::Waiting(receipt, mut stored) = broker.sequence("t", json("1"), &[], true)
        else {
            panic!("waits for the disk");
        };
        assert!(stored.try_recv().is_ok(), "synced before sequence returned");
        assert!(log.synced_mark() >= receipt.seq);
        assert_eq!(drain(&outbox).len(), 1);
    }
}
