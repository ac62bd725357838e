//! What a run measured: an HDR histogram of latencies per operation, outcomes and errors by
//! kind, the open-loop lateness; printed as a table and written as JSON.
//!
//! Each worker fills its own `Recorder` (no sharing on the hot path); the run merges them.
//! Latencies are recorded in microseconds, from 1 µs to `MAX_LATENCY_US`, 3 significant
//! digits; a latency above the top is recorded as the top (and counted in `saturated`).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::schedule::Lateness;
use super::workload::Operation;

/// Highest latency a histogram tracks: one minute.
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Most distinct error messages kept as examples, per kind.
const ERROR_EXAMPLES_MAX: usize = 3;

/// Outcomes of one operation kind.
#[derive(Debug, Clone)]
pub struct OpStats {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    pub not_found: u64,
    pub siblings: u64,
    pub errors: u64,
    pub saturated: u64,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds"),
            ok: 0,
            not_found: 0,
            siblings: 0,
            errors: 0,
            saturated: 0,
        }
    }
}

/// Everything one worker (or, merged, one run) measured.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub ops: Vec<OpStats>,
    /// Count and a few example messages per error kind.
    pub errors: BTreeMap<&'static str, (u64, Vec<String>)>,
    pub lateness: Lateness,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            ops: Operation::ALL.iter().map(|_| OpStats::new()).collect(),
            errors: BTreeMap::new(),
            lateness: Lateness::default(),
        }
    }
}

/// How one operation ended, for the books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    Siblings,
    Error,
}

impl Recorder {
    pub fn record(&mut self, op: Operation, latency: Duration, outcome: Outcome) {
        let stats = &mut self.ops[op.index()];
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        if us == MAX_LATENCY_US {
            stats.saturated += 1;
        }
        stats
            .latency_us
            .record(us)
            .expect("clamped into the bounds");
        match outcome {
            Outcome::Ok => stats.ok += 1,
            Outcome::NotFound => stats.not_found += 1,
            Outcome::Siblings => stats.siblings += 1,
            Outcome::Error => stats.errors += 1,
        }
    }

    pub fn record_error(&mut self, kind: &'static str, message: &str) {
        let entry = self.errors.entry(kind).or_default();
        entry.0 += 1;
        if entry.1.len() < ERROR_EXAMPLES_MAX && !entry.1.iter().any(|m| m == message) {
            entry.1.push(message.to_string());
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            mine.latency_us
                .add(&theirs.latency_us)
                .expect("same bounds");
            mine.ok += theirs.ok;
            mine.not_found += theirs.not_found;
            mine.siblings += theirs.siblings;
            mine.errors += theirs.errors;
            mine.saturated += theirs.saturated;
        }
        for (kind, (count, examples)) in &other.errors {
            let entry = self.errors.entry(kind).or_default();
            entry.0 += count;
            for example in examples {
                if entry.1.len() < ERROR_EXAMPLES_MAX && !entry.1.contains(example) {
                    entry.1.push(example.clone());
                }
            }
        }
        self.lateness.merge(&other.lateness);
    }

    /// Operations completed (with any outcome).
    pub fn total_ops(&self) -> u64 {
        self.ops.iter().map(|s| s.latency_us.len()).sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }
}

/// The settings a report repeats, so a JSON file stands on its own.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub workload: &'static str,
    pub driver: &'static str,
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub records: u64,
    pub value_bytes: usize,
    pub elapsed: Duration,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub fn throughput(recorder: &Recorder, elapsed: Duration) -> f64 {
    recorder.total_ops() as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The summary table.
pub fn table(info: &RunInfo, recorder: &Recorder) -> String {
    let mut out = String::new();
    let mode = match info.rate {
        Some(rate) => format!("open loop at {rate:.0} ops/s"),
        None => "closed loop".to_string(),
    };
    out.push_str(&format!(
        "workload {} via {}, {mode}, {} workers, {} records of {} bytes\n",
        info.workload, info.driver, info.concurrency, info.records, info.value_bytes
    ));
    out.push_str(&format!(
        "{} ops in {:.2} s = {:.0} ops/s, {} errors\n",
        recorder.total_ops(),
        info.elapsed.as_secs_f64(),
        throughput(recorder, info.elapsed),
        recorder.total_errors()
    ));
    out.push_str(&format!(
        "{:<7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}\n",
        "op", "count", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "mean ms", "missing", "siblings"
    ));
    for op in Operation::ALL {
        let s = &recorder.ops[op.index()];
        let h = &s.latency_us;
        if h.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "{:<7} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>8}\n",
            op.name(),
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            h.mean() / 1000.0,
            s.not_found,
            s.siblings
        ));
    }
    for (kind, (count, examples)) in &recorder.errors {
        out.push_str(&format!(
            "error {kind}: {count} (e.g. {})\n",
            examples.join("; ")
        ));
    }
    if info.rate.is_some() {
        let l = &recorder.lateness;
        out.push_str(&format!(
            "scheduler: {} on time, {} late (max {:.2} ms behind, counted in latency), {} missed\n",
            l.on_time,
            l.late,
            l.max_behind.as_secs_f64() * 1000.0,
            l.missed
        ));
    }
    out
}

/// The JSON report.
pub fn json(info: &RunInfo, recorder: &Recorder) -> Value {
    let mut operations = serde_json::Map::new();
    for op in Operation::ALL {
        let s = &recorder.ops[op.index()];
        let h = &s.latency_us;
        if h.is_empty() {
            continue;
        }
        operations.insert(
            op.name().to_string(),
            json!({
                "count": h.len(),
                "ok": s.ok,
                "not_found": s.not_found,
                "siblings": s.siblings,
                "errors": s.errors,
                "p50_ms": ms(h.value_at_quantile(0.5)),
                "p99_ms": ms(h.value_at_quantile(0.99)),
                "p999_ms": ms(h.value_at_quantile(0.999)),
                "max_ms": ms(h.max()),
                "mean_ms": h.mean() / 1000.0,
                "saturated": s.saturated,
            }),
        );
    }
    let errors: serde_json::Map<String, Value> = recorder
        .errors
        .iter()
        .map(|(kind, (count, examples))| {
            (
                kind.to_string(),
                json!({"count": count, "examples": examples}),
            )
        })
        .collect();
    let l = &recorder.lateness;
    json!({
        "workload": info.workload,
        "driver": info.driver,
        "mode": if info.rate.is_some() { "open" } else { "closed" },
        "rate_ops_per_sec": info.rate,
        "concurrency": info.concurrency,
        "records": info.records,
        "value_bytes": info.value_bytes,
        "elapsed_secs": info.elapsed.as_secs_f64(),
        "ops": recorder.total_ops(),
        "throughput_ops_per_sec": throughput(recorder, info.elapsed),
        "errors_total": recorder.total_errors(),
        "errors": errors,
        "operations": operations,
        "scheduler": {
            "on_time": l.on_time,
            "late": l.late,
            "max_behind_ms": l.max_behind.as_secs_f64() * 1000.0,
            "missed": l.missed,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_recorders_keep_every_count_and_percentiles() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 1..=990u64 {
            a.record(Operation::Read, Duration::from_micros(i), Outcome::Ok);
        }
        for _ in 0..10 {
            b.record(
                Operation::Read,
                Duration::from_millis(50),
                Outcome::Siblings,
            );
        }
        b.record(Operation::Update, Duration::from_secs(3600), Outcome::Error);
        for _ in 0..5 {
            b.record_error("unavailable", "HTTP 503");
        }
        a.record_error("unavailable", "HTTP 503");
        a.merge(&b);
        let read = &a.ops[Operation::Read.index()];
        assert_eq!(read.latency_us.len(), 1000);
        assert_eq!((read.ok, read.siblings), (990, 10));
        assert!(read.latency_us.value_at_quantile(0.5) <= 500);
        assert!(read.latency_us.value_at_quantile(0.999) >= 49_000);
        let update = &a.ops[Operation::Update.index()];
        assert_eq!((update.errors, update.saturated), (1, 1));
        assert_eq!(a.errors["unavailable"], (6, vec!["HTTP 503".to_string()]));
        assert_eq!(a.total_ops(), 1001);
        let info = RunInfo {
            workload: "a",
            driver: "http",
            rate: None,
            concurrency: 1,
            records: 10,
            value_bytes: 1,
            elapsed: Duration::from_secs(1),
        };
        let j = json(&info, &a);
        assert_eq!(j["ops"], 1001);
        assert_eq!(j["operations"]["read"]["count"], 1000);
        assert_eq!(j["errors"]["unavailable"]["count"], 6);
        assert!(table(&info, &a).contains("read"));
    }
}
