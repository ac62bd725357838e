//! The open-loop schedule: operation `i` of a run at `rate` operations per second is due at
//! `i / rate` seconds after the start, whether or not the cluster kept up.
//!
//! Latency is measured from that intended start, so time an operation spent waiting for a
//! free worker (queueing delay) is counted rather than hidden: the coordinated-omission
//! correction of wrk2 and HdrHistogram. Pure: times are offsets from the run's start.
//! Laws: the schedule names exactly `total_ops` slots, in order, evenly spaced; a slot
//! claimed after its due time is late, and its wait is zero.

use std::time::Duration;

/// The fixed-rate plan of one open-loop run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    interval_ns: f64,
    total_ops: u64,
}

/// When a worker claimed a slot relative to the slot's due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The worker is early: it waits this long, then starts the operation on time.
    OnTime { wait: Duration },
    /// Every worker was busy at the due time: the operation starts this far behind, and
    /// that delay is part of its measured latency.
    Late { behind: Duration },
}

impl Schedule {
    /// `rate_per_sec` operations per second for `duration`; at least one operation.
    pub fn new(rate_per_sec: f64, duration: Duration) -> Schedule {
        assert!(rate_per_sec > 0.0, "the rate must be positive");
        let total_ops = (rate_per_sec * duration.as_secs_f64()).floor().max(1.0) as u64;
        Schedule {
            interval_ns: 1e9 / rate_per_sec,
            total_ops,
        }
    }

    pub fn total_ops(&self) -> u64 {
        self.total_ops
    }

    /// When slot `index` is due, as an offset from the start; `None` past the last slot.
    pub fn due(&self, index: u64) -> Option<Duration> {
        (index < self.total_ops)
            .then(|| Duration::from_nanos((index as f64 * self.interval_ns) as u64))
    }
}

/// Whether a slot due at `due` and claimed at `claimed` (both offsets from the start) starts
/// on time.
pub fn classify(due: Duration, claimed: Duration) -> Slot {
    match due.checked_sub(claimed) {
        Some(wait) => Slot::OnTime { wait },
        None => Slot::Late {
            behind: claimed - due,
        },
    }
}

/// What the open-loop scheduler did over a run, summed over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lateness {
    /// Slots started on time.
    pub on_time: u64,
    /// Slots started after their due time (still measured from the due time).
    pub late: u64,
    /// The furthest behind any slot started.
    pub max_behind: Duration,
    /// Slots never started because the run's hard stop came first.
    pub missed: u64,
}

impl Lateness {
    pub fn record(&mut self, slot: Slot) {
        match slot {
            Slot::OnTime { .. } => self.on_time += 1,
            Slot::Late { behind } => {
                self.late += 1;
                self.max_behind = self.max_behind.max(behind);
            }
        }
    }

    pub fn merge(&mut self, other: &Lateness) {
        self.on_time += other.on_time;
        self.late += other.late;
        self.max_behind = self.max_behind.max(other.max_behind);
        self.missed += other.missed;
    }

    /// Slots started; with `missed`, every slot of the schedule is accounted for.
    pub fn started(&self) -> u64 {
        self.on_time + self.late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slots_are_evenly_spaced_and_bounded() {
        let s = Schedule::new(1000.0, Duration::from_secs(2));
        assert_eq!(s.total_ops(), 2000);
        assert_eq!(s.due(0), Some(Duration::ZERO));
        assert_eq!(s.due(5), Some(5 * MS));
        assert_eq!(s.due(1999), Some(1999 * MS));
        assert_eq!(s.due(2000), None);
        let s = Schedule::new(3.0, Duration::from_secs(1));
        assert_eq!(s.due(1), Some(Duration::from_nanos(333_333_333)));
        assert_eq!(Schedule::new(0.5, Duration::from_secs(1)).total_ops(), 1);
    }

    #[test]
    fn early_workers_wait_and_late_ones_are_counted() {
        assert_eq!(classify(10 * MS, 4 * MS), Slot::OnTime { wait: 6 * MS });
        assert_eq!(
            classify(10 * MS, 10 * MS),
            Slot::OnTime {
                wait: Duration::ZERO
            }
        );
        assert_eq!(classify(10 * MS, 13 * MS), Slot::Late { behind: 3 * MS });
    }

    #[test]
    fn lateness_accounts_for_every_slot() {
        let s = Schedule::new(100.0, Duration::from_secs(1));
        // A worker that takes 15 ms per operation, started when each slot is claimed:
        // a single worker falls behind a 10 ms schedule, slot after slot.
        let mut lateness = Lateness::default();
        let mut free_at = Duration::ZERO;
        let mut index = 0;
        while let Some(due) = s.due(index) {
            let slot = classify(due, free_at);
            lateness.record(slot);
            free_at = free_at.max(due) + 15 * MS;
            index += 1;
        }
        assert_eq!(lateness.started(), s.total_ops());
        assert_eq!(lateness.on_time, 1);
        assert_eq!(lateness.late, 99);
        assert_eq!(lateness.max_behind, 99 * 5 * MS);
        let mut total = Lateness {
            missed: 3,
            ..Lateness::default()
        };
        total.merge(&lateness);
        assert_eq!(total.started() + total.missed, 103);
    }
}
