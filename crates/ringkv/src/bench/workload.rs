//! The YCSB core workloads as operation mixes and key distributions.
//!
//! Pure: the choice of the next operation and key takes its randomness from the generator
//! passed in. Proportions are YCSB's `workloads/workload{a,b,c,d,f}` files.

use rand::Rng;

use super::generator::{ScrambledZipfian, SkewedLatest};

/// One YCSB core workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Update heavy: 50% reads, 50% updates, zipfian.
    A,
    /// Read mostly: 95% reads, 5% updates, zipfian.
    B,
    /// Read only, zipfian.
    C,
    /// Read latest: 95% reads, 5% inserts, reads skewed to the newest records.
    D,
    /// Read-modify-write: 50% reads, 50% read-modify-writes, zipfian.
    F,
}

/// The kinds of operation a workload issues; also the rows of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    Read,
    Update,
    Insert,
    ReadModifyWrite,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::Read,
        Operation::Update,
        Operation::Insert,
        Operation::ReadModifyWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Update => "update",
            Operation::Insert => "insert",
            Operation::ReadModifyWrite => "rmw",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::F => "f",
        }
    }

    /// Share of reads; the rest is the workload's other operation.
    fn read_proportion(self) -> f64 {
        match self {
            Workload::A | Workload::F => 0.5,
            Workload::B | Workload::D => 0.95,
            Workload::C => 1.0,
        }
    }

    fn other_operation(self) -> Operation {
        match self {
            Workload::A | Workload::B | Workload::C => Operation::Update,
            Workload::D => Operation::Insert,
            Workload::F => Operation::ReadModifyWrite,
        }
    }
}

/// What one worker does next: the operation and the record number it targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub operation: Operation,
    pub record: u64,
}

/// One worker's source of steps. `records` is the number of records that exist now
/// (it grows with inserts in workload D); an insert targets `records` itself, a new record.
#[derive(Debug, Clone)]
pub struct StepChooser {
    workload: Workload,
    zipfian: ScrambledZipfian,
    latest: SkewedLatest,
}

impl StepChooser {
    pub fn new(workload: Workload, records: u64) -> StepChooser {
        StepChooser {
            workload,
            zipfian: ScrambledZipfian::new(records),
            latest: SkewedLatest::new(records),
        }
    }

    pub fn next(&mut self, rng: &mut impl Rng, records: u64) -> Step {
        let read = rng.random::<f64>() < self.workload.read_proportion();
        let operation = if read {
            Operation::Read
        } else {
            self.workload.other_operation()
        };
        let record = match (operation, self.workload) {
            (Operation::Insert, _) => records,
            (_, Workload::D) => self.latest.next_key(rng, records),
            _ => self.zipfian.next_key(rng),
        };
        Step { operation, record }
    }
}

/// The key of record `n`, as YCSB names them.
pub fn record_key(n: u64) -> String {
    format!("user{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn mix(workload: Workload) -> [u64; 4] {
        let mut rng = StdRng::seed_from_u64(9);
        let mut chooser = StepChooser::new(workload, 1000);
        let mut counts = [0u64; 4];
        for _ in 0..20_000 {
            let step = chooser.next(&mut rng, 1000);
            if step.operation == Operation::Insert {
                assert_eq!(step.record, 1000);
            } else {
                assert!(step.record < 1000);
            }
            counts[step.operation.index()] += 1;
        }
        counts
    }

    #[test]
    fn mixes_follow_the_ycsb_proportions() {
        let near = |n: u64, share: f64| ((n as f64 / 20_000.0) - share).abs() < 0.02;
        let a = mix(Workload::A);
        assert!(
            near(a[0], 0.5) && near(a[1], 0.5) && a[2] == 0 && a[3] == 0,
            "{a:?}"
        );
        let b = mix(Workload::B);
        assert!(near(b[0], 0.95) && near(b[1], 0.05), "{b:?}");
        assert_eq!(mix(Workload::C), [20_000, 0, 0, 0]);
        let d = mix(Workload::D);
        assert!(near(d[0], 0.95) && near(d[2], 0.05) && d[1] == 0, "{d:?}");
        let f = mix(Workload::F);
        assert!(near(f[0], 0.5) && near(f[3], 0.5) && f[1] == 0, "{f:?}");
    }

    #[test]
    fn workload_d_reads_the_newest_records_most() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut chooser = StepChooser::new(Workload::D, 1000);
        let mut newest = 0;
        let mut oldest_half = 0;
        for _ in 0..10_000 {
            let step = chooser.next(&mut rng, 1000);
            if step.operation == Operation::Read {
                newest += u64::from(step.record >= 990);
                oldest_half += u64::from(step.record < 500);
            }
        }
        assert!(newest > 4 * oldest_half, "{newest} vs {oldest_half}");
    }
}
