//! Group commit: many writers, few fsyncs, and no write acknowledged before its fsync.
//!
//! A writer first appends its batch to the journal (fjall's `WriteBatch::commit`, which puts
//! the bytes in the journal's buffer but does not fsync), then takes a ticket: `written` is
//! bumped *after* the append, so every ticket `<= written` names a batch already appended.
//! One **sync thread** per engine does every fsync:
//!
//! - it reads `written` (the target), then runs `sync` (flush the journal's buffer, fsync),
//!   then publishes `synced = target` and wakes the waiters, and loops while `written` moved;
//! - with nothing to sync it parks; a writer unparks it after taking its ticket (an unpark of
//!   a thread that is not parked costs no system call).
//!
//! A sync starts only after it read the target, so `synced >= ticket` means a sync that
//! started after the append has finished. While one fsync runs, new appends queue up and the
//! next fsync covers them all: with W concurrent writers each fsync acknowledges up to W
//! writes. Waiting is either blocking (`wait_durable`, for the engine's own calls) or async
//! (`Durable::wait`, so a node's write path holds no thread during the fsync).
//!
//! Each fsync is timed (`ringkv_storage_fsync_duration_seconds`) and counts the appends it
//! makes durable (`ringkv_storage_fsync_batches`).
//!
//! Ticket 1 is taken at start, for what the journal held when the engine opened: after a
//! process crash fjall replays what reached the OS, which no fsync may have covered yet, and a
//! caller vouching for data (`latest`) must not confirm it before one has.
//!
//! A failed fsync is fatal (the page cache may have dropped the dirty pages, see "Can
//! applications recover from fsync failures?", ATC'20): every later write fails too.
//! So is a panic of the sync thread: it publishes a failure as it unwinds, so no waiter waits
//! for ever. Dropping the `GroupCommit` syncs what was appended, then stops the thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::watch;

use crate::StorageError;

/// What the sync thread has published.
#[derive(Debug, Clone, Default)]
struct Synced {
    /// Highest ticket known durable.
    upto: u64,
    /// The error of a failed fsync; once set, nothing is acknowledged any more.
    failed: Option<String>,
}

impl Synced {
    /// `Some` once `ticket` is settled: durable, or never will be.
    fn settles(&self, ticket: u64) -> Option<Result<(), StorageError>> {
        if let Some(error) = &self.failed {
            return Some(Err(StorageError::Engine(format!(
                "an earlier fsync failed, writes are refused: {error}"
            ))));
        }
        (self.upto >= ticket).then_some(Ok(()))
    }
}

/// What the writers and the sync thread share.
struct Inner<S> {
    sync: S,
    written: AtomicU64,
    stop: AtomicBool,
    state: Mutex<Synced>,
    synced_cv: Condvar,
    published: watch::Sender<Synced>,
    fsyncs: AtomicU64,
}

/// Batches the fsyncs of concurrent writers. `sync` is the fsync itself.
pub struct GroupCommit<S: Fn() -> Result<(), StorageError> + Send + Sync + 'static> {
    inner: Arc<Inner<S>>,
    thread: Option<JoinHandle<()>>,
}

/// A write that is in the journal and durable once its sync completes.
#[must_use = "a write is acknowledged only after it is durable"]
pub struct Durable {
    pending: Option<(u64, watch::Receiver<Synced>)>,
}

impl Durable {
    /// A write that is already durable (or never needed a sync).
    pub fn ready() -> Durable {
        Durable { pending: None }
    }

    /// Waits, without holding a thread, until the write is durable.
    pub async fn wait(self) -> Result<(), StorageError> {
        let Some((ticket, mut published)) = self.pending else {
            return Ok(());
        };
        let settled = match published.wait_for(|s| s.settles(ticket).is_some()).await {
            Ok(synced) => synced.settles(ticket),
            Err(_) => None,
        };
        // `None`: the engine was dropped; its last act was a sync of everything appended.
        settled
            .or_else(|| published.borrow().settles(ticket))
            .unwrap_or_else(|| {
                Err(StorageError::Engine(
                    "the engine closed before the write was durable".into(),
                ))
            })
    }
}

impl<S: Fn() -> Result<(), StorageError> + Send + Sync + 'static> GroupCommit<S> {
    pub fn new(sync: S) -> GroupCommit<S> {
        let inner = Arc::new(Inner {
            sync,
            // Ticket 1: what the journal held at start (see the module documentation).
            written: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            state: Mutex::new(Synced::default()),
            synced_cv: Condvar::new(),
            published: watch::Sender::new(Synced::default()),
            fsyncs: AtomicU64::new(0),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("ringkv-fsync".into())
            .spawn(move || worker.run())
            .expect("spawning the fsync thread");
        GroupCommit {
            inner,
            thread: Some(thread),
        }
    }

    /// Call right after a batch was appended; returns the ticket to wait for.
    pub fn appended(&self) -> u64 {
        let ticket = self.inner.written.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
        ticket
    }

    /// The newest ticket taken: waiting for it covers every batch appended so far. A caller
    /// that changed nothing but read what others appended (and is about to vouch for it)
    /// waits for this, so it never confirms data that a crash could still take back.
    pub fn latest(&self) -> u64 {
        self.inner.written.load(Ordering::SeqCst)
    }

    /// Blocks until a sync that started after `ticket` was appended has completed.
    pub fn wait_durable(&self, ticket: u64) -> Result<(), StorageError> {
        let mut state = self.inner.lock();
        loop {
            if let Some(settled) = state.settles(ticket) {
                return settled;
            }
            state = self
                .inner
                .synced_cv
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The async form of `wait_durable`.
    pub fn durable(&self, ticket: u64) -> Durable {
        Durable {
            pending: Some((ticket, self.inner.published.subscribe())),
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
        self.inner.fsyncs.load(Ordering::Relaxed)
    }
}

impl<S: Fn() -> Result<(), StorageError> + Send + Sync + 'static> Drop for GroupCommit<S> {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl<S: Fn() -> Result<(), StorageError>> Inner<S> {
    /// Publishes `failure` (unless one is already) and wakes every waiter.
    fn fail(&self, failure: String) {
        let mut state = self.lock();
        state.failed.get_or_insert(failure);
        self.published.send_replace(state.clone());
        drop(state);
        self.synced_cv.notify_all();
    }

    /// The sync thread: sync whatever was appended, park when there is nothing.
    fn run(&self) {
        /// Publishes a failure if the thread unwinds (a panic in `sync`): without it, every
        /// writer would wait for ever for a sync that never comes.
        struct FailOnUnwind<'a, S: Fn() -> Result<(), StorageError>>(&'a Inner<S>);
        impl<S: Fn() -> Result<(), StorageError>> Drop for FailOnUnwind<'_, S> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.fail("the fsync thread panicked".into());
                }
            }
        }
        let _guard = FailOnUnwind(self);
        let mut synced = 0;
        loop {
            let target = self.written.load(Ordering::SeqCst);
            if target > synced {
                let started = Instant::now();
                let result = (self.sync)();
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                // What a disk's sync costs, and how many appends share each one (group
                // commit at work); recorded through the `metrics` facade, a no-op until a
                // recorder is installed (the node's `/metrics`).
                metrics::histogram!("ringkv_storage_fsync_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("ringkv_storage_fsync_batches")
                    .record((target - synced) as f64);
                let failed = result.is_err();
                let mut state = self.lock();
                match result {
                    Ok(()) => state.upto = target,
                    Err(e) => state.failed = Some(e.to_string()),
                }
                // Published while the state is still locked: whoever sees a ticket settled
                // in `state` (`wait_durable`) finds it settled in `published` (`Durable`) too.
                self.published.send_replace(state.clone());
                drop(state);
                self.synced_cv.notify_all();
                if failed {
                    return;
                }
                synced = target;
                continue;
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::park();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Synced> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type SyncFn = Box<dyn Fn() -> Result<(), StorageError> + Send + Sync>;

    /// A slow fsync, so that writers pile up behind it.
    fn slow_sync() -> SyncFn {
        Box::new(|| {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_micros(200) {
                std::hint::spin_loop();
            }
            Ok(())
        })
    }

    #[test]
    fn every_write_is_acknowledged_after_a_covering_sync_and_syncs_are_shared() {
        let gc: Arc<GroupCommit<SyncFn>> = Arc::new(GroupCommit::new(slow_sync()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let ticket = gc.appended();
                        gc.wait_durable(ticket).unwrap();
                        assert!(
                            gc.inner.lock().upto >= ticket,
                            "acknowledged before its sync"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 1600 writes after the ticket taken at start.
        assert_eq!(gc.inner.lock().upto, 1601);
        let syncs = gc.fsync_count();
        assert!(
            (1..1600).contains(&syncs),
            "{syncs} syncs for 1600 writes from 8 threads"
        );
    }

    #[test]
    fn async_waiters_are_acknowledged_after_a_covering_sync() {
        let gc: Arc<GroupCommit<SyncFn>> = Arc::new(GroupCommit::new(slow_sync()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..32)
                .map(|_| {
                    let gc = gc.clone();
                    tokio::spawn(async move {
                        for _ in 0..50 {
                            let ticket = gc.appended();
                            gc.durable(ticket).wait().await.unwrap();
                            assert!(
                                gc.inner.lock().upto >= ticket,
                                "acknowledged before its sync"
                            );
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        assert_eq!(
            gc.inner.lock().upto,
            1601,
            "1600 writes after the ticket at start"
        );
        assert!(gc.fsync_count() < 1600, "{} syncs", gc.fsync_count());
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ticket = gc.appended();
        let waited = runtime.block_on(gc.durable(ticket).wait());
        assert!(matches!(waited, Err(StorageError::Engine(m)) if m.contains("disk on fire")));
    }

    #[test]
    fn dropping_syncs_what_was_appended() {
        let syncs = Arc::new(AtomicU64::new(0));
        let counted = syncs.clone();
        let gc = GroupCommit::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let ticket = gc.appended();
        let durable = gc.durable(ticket);
        drop(gc);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(durable.wait()).unwrap();
        assert!(syncs.load(Ordering::SeqCst) >= 1);
    }

    /// After a process crash fjall replays what reached the OS, which no fsync may have
    /// covered: vouching for it (`latest`) waits for a sync that started after the open.
    #[test]
    fn what_the_journal_held_at_start_is_synced_before_anyone_vouches_for_it() {
        let syncs = Arc::new(AtomicU64::new(0));
        let counted = syncs.clone();
        let gc = GroupCommit::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let ticket = gc.latest();
        assert!(ticket >= 1, "a ticket for the data found at start");
        gc.wait_durable(ticket).unwrap();
        assert!(syncs.load(Ordering::SeqCst) >= 1, "a sync ran first");
    }

    /// A sync that panics fails every waiter (before, they waited for ever).
    #[test]
    fn a_panicking_sync_fails_the_waiters_instead_of_hanging_them() {
        let gc = Arc::new(GroupCommit::new(|| -> Result<(), StorageError> {
            panic!("a bug in the sync")
        }));
        let (done, waited) = std::sync::mpsc::channel();
        let waiter = gc.clone();
        std::thread::spawn(move || {
            let ticket = waiter.appended();
            let _ = done.send(waiter.wait_durable(ticket));
        });
        let result = waited
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the waiter is answered");
        assert!(
            matches!(&result, Err(StorageError::Engine(m)) if m.contains("panicked")),
            "{result:?}"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let waited = runtime.block_on(gc.durable(gc.appended()).wait());
        assert!(waited.is_err(), "later writes fail too");
    }
}
