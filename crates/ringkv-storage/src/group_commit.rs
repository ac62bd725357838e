//! Group commit: many writers, few fsyncs, and no write acknowledged before its fsync.
//!
//! A writer first appends its batch to the journal (fjall's `WriteBatch::commit`, which
//! hands the bytes to the OS but does not fsync), then takes a ticket: `written` is bumped
//! *after* the append, so every ticket `<= written` names a batch already in the journal.
//! It then calls `wait_durable(ticket)`:
//!
//! - if `synced >= ticket`, a sync that started after the append has finished: done;
//! - else if no sync is running, the writer becomes the leader: it reads `written` (which
//!   covers its own ticket and every batch appended so far), fsyncs the journal without
//!   holding the state lock, then publishes `synced = that value` and wakes the followers;
//! - else it waits for the running sync to finish and checks again (the running sync may
//!   have started before its append, so it cannot count on it).
//!
//! While one fsync runs, every writer that arrives queues behind it and the next leader syncs
//! them all at once: with W concurrent writers each fsync acknowledges up to W writes.
//! A failed fsync is fatal (the page cache may have dropped the dirty pages, see "Can
//! applications recover from fsync failures?", ATC'20): every later write fails too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::StorageError;

#[derive(Default)]
struct SyncState {
    /// Highest ticket known durable.
    synced: u64,
    /// Whether a leader is fsyncing now.
    syncing: bool,
    /// The error of a failed fsync; once set, nothing is acknowledged any more.
    failed: Option<String>,
}

/// Batches the fsyncs of concurrent writers. `sync` is the fsync itself.
pub struct GroupCommit<S> {
    sync: S,
    written: AtomicU64,
    state: Mutex<SyncState>,
    synced_cv: Condvar,
    fsyncs: AtomicU64,
}

impl<S: Fn() -> Result<(), StorageError>> GroupCommit<S> {
    pub fn new(sync: S) -> GroupCommit<S> {
        GroupCommit {
            sync,
            written: AtomicU64::new(0),
            state: Mutex::new(SyncState::default()),
            synced_cv: Condvar::new(),
            fsyncs: AtomicU64::new(0),
        }
    }

    /// Call right after a batch reached the journal; returns the ticket to wait for.
    pub fn appended(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once a sync that started after `ticket` was appended has completed.
    pub fn wait_durable(&self, ticket: u64) -> Result<(), StorageError> {
        let mut state = self.lock();
        loop {
            if let Some(error) = &state.failed {
                return Err(StorageError::Engine(format!(
                    "an earlier fsync failed, writes are refused: {error}"
                )));
            }
            if state.synced >= ticket {
                return Ok(());
            }
            if state.syncing {
                state = self
                    .synced_cv
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.syncing = true;
            let target = self.written.load(Ordering::SeqCst);
            debug_assert!(target >= ticket);
            drop(state);
            let result = (self.sync)();
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            state = self.lock();
            state.syncing = false;
            match result {
                Ok(()) => state.synced = state.synced.max(target),
                Err(e) => state.failed = Some(e.to_string()),
            }
            self.synced_cv.notify_all();
        }
    }

    /// Appends-then-waits in one call, for writes that need no lock between the two.
    pub fn commit(
        &self,
        append: impl FnOnce() -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        append()?;
        let ticket = self.appended();
        self.wait_durable(ticket)
    }

    /// How many fsyncs ran so far (to observe batching).
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_write_is_acknowledged_after_a_covering_sync_and_syncs_are_shared() {
        type SyncFn = Box<dyn Fn() -> Result<(), StorageError> + Send + Sync>;
        let gc: Arc<GroupCommit<SyncFn>> = Arc::new(GroupCommit::new(Box::new(|| {
            // A slow fsync, so that writers pile up behind it.
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_micros(200) {
                std::hint::spin_loop();
            }
            Ok(())
        })));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let ticket = gc.appended();
                        gc.wait_durable(ticket).unwrap();
                        assert!(gc.lock().synced >= ticket, "acknowledged before its sync");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gc.lock().synced, 1600);
        let syncs = gc.fsync_count();
        assert!(
            (1..1600).contains(&syncs),
            "{syncs} syncs for 1600 writes from 8 threads"
        );
    }

    #[test]
    fn a_failed_sync_fails_every_later_write() {
        let gc = GroupCommit::new(|| Err(StorageError::Engine("disk on fire".into())));
        let ticket = gc.appended();
        assert!(matches!(
            gc.wait_durable(ticket),
            Err(StorageError::Engine(_))
        ));
        let ticket = gc.appended();
        assert!(
            matches!(gc.wait_durable(ticket), Err(StorageError::Engine(m)) if m.contains("disk on fire"))
        );
    }
}
