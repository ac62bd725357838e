//! The open-loop pacer: one OS thread that releases each slot of a [`Schedule`] to a free
//! worker at the slot's due time.
//!
//! Workers used to sleep on tokio's timer until their slot was due; that timer ticks in
//! whole milliseconds and wakes a sleeper at the first tick after its deadline, so every
//! open-loop latency (counted from the due time) carried up to ~1.5 ms of the generator's
//! own lateness. A thread sleeping with `std::thread::sleep` wakes within tens of
//! microseconds of the due time and hands the slot over through a oneshot channel.
//!
//! Laws: slots are released in order, each to exactly one worker, never before its due
//! time; at most one registration per worker is queued (the queue's bound is the worker
//! count); the thread ends after the last slot or at the hard stop, whichever is first,
//! and returns how many slots started on time or late (unstarted slots are `missed`).

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use super::schedule::{Lateness, Schedule, Slot, classify};

/// A worker's handle on the pacer: register as free, then wait for a slot.
#[derive(Clone)]
pub struct Releases {
    free: SyncSender<oneshot::Sender<Instant>>,
}

impl Releases {
    /// The due time of this worker's next slot, or `None` when the run is over.
    pub async fn next(&self) -> Option<Instant> {
        let (slot_tx, slot_rx) = oneshot::channel();
        // Never full: a worker registers again only after its last release arrived.
        self.free.try_send(slot_tx).ok()?;
        slot_rx.await.ok()
    }
}

/// Starts the pacer thread for `workers` workers; its handle returns the run's lateness.
pub fn start(
    schedule: Schedule,
    start: Instant,
    hard_stop: Instant,
    workers: usize,
) -> std::io::Result<(Releases, JoinHandle<Lateness>)> {
    let (free_tx, free_rx) = mpsc::sync_channel(workers.max(1));
    let thread = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || pace(schedule, start, hard_stop, free_rx))?;
    Ok((Releases { free: free_tx }, thread))
}

fn pace(
    schedule: Schedule,
    start: Instant,
    hard_stop: Instant,
    free: mpsc::Receiver<oneshot::Sender<Instant>>,
) -> Lateness {
    let mut lateness = Lateness::default();
    let mut index = 0;
    while let Some(offset) = schedule.due(index) {
        let due = start + offset;
        sleep_until(due);
        if Instant::now() >= hard_stop {
            break;
        }
        let (worker, slot) = match free.try_recv() {
            Ok(worker) => (worker, Slot::OnTime { wait: offset }),
            Err(TryRecvError::Disconnected) => break,
            // Every worker is busy: the slot starts when the first one frees, and that
            // wait is part of its latency (measured from `due`).
            Err(TryRecvError::Empty) => {
                match free.recv_timeout(hard_stop.saturating_duration_since(Instant::now())) {
                    Ok(worker) => (worker, classify(offset, start.elapsed())),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        // A worker that is gone (its task ended) takes no slot: offer this one again.
        if worker.send(due).is_ok() {
            lateness.record(slot);
            index += 1;
        }
    }
    lateness
}

fn sleep_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        std::thread::sleep(due - now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn releases_every_slot_once_in_order_and_never_early() {
        let schedule = Schedule::new(2_000.0, Duration::from_millis(100));
        let begin = Instant::now();
        let (releases, thread) =
            start(schedule, begin, begin + Duration::from_secs(10), 4).unwrap();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let releases = releases.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while let Some(due) = releases.next().await {
                        assert!(
                            Instant::now() >= due,
                            "a slot was released before it was due"
                        );
                        seen.push(due);
                    }
                    seen
                })
            })
            .collect();
        drop(releases);
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.await.unwrap());
        }
        let lateness = thread.join().unwrap();
        all.sort();
        let expected: Vec<Instant> = (0..schedule.total_ops())
            .map(|i| begin + schedule.due(i).unwrap())
            .collect();
        assert_eq!(all, expected);
        assert_eq!(lateness.started(), schedule.total_ops());
    }

    #[tokio::test]
    async fn a_busy_worker_makes_slots_late_and_the_hard_stop_ends_the_run() {
        // One worker that never comes back after its first slot: the second slot waits for
        // it until the hard stop, and is neither started nor counted.
        let schedule = Schedule::new(100.0, Duration::from_secs(1));
        let begin = Instant::now();
        let (releases, thread) =
            start(schedule, begin, begin + Duration::from_millis(200), 1).unwrap();
        let first = releases.next().await;
        assert_eq!(first, Some(begin));
        let lateness = tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        // Whether that first slot found the worker already waiting depends on the machine's
        // scheduling (on a loaded one the test task may poll after the slot was due).
        assert_eq!(lateness.started(), 1);
        assert_eq!(releases.next().await, None, "the pacer has ended");
    }

    #[tokio::test]
    async fn slots_that_find_every_worker_busy_are_late() {
        // One worker taking 25 ms per operation against a slot every 10 ms.
        let schedule = Schedule::new(100.0, Duration::from_millis(100));
        let begin = Instant::now();
        let (releases, thread) =
            start(schedule, begin, begin + Duration::from_secs(10), 1).unwrap();
        while releases.next().await.is_some() {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let lateness = thread.join().unwrap();
        // Every slot after the first finds the worker busy, however the machine schedules
        // the test; the first may be on time or (on a loaded machine) late too.
        assert_eq!(lateness.started(), 10);
        assert!(lateness.late >= 9, "{} of 10 slots late", lateness.late);
        assert!(lateness.max_behind >= Duration::from_millis(9 * 15));
    }
}
