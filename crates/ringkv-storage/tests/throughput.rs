//! Acknowledged (fsynced) writes per second, one writer versus eight: group commit lets
//! concurrent writers share fsyncs. Run with `--no-capture` to see the numbers.

mod common;

use std::time::Instant;

use common::*;
use ringkv_storage::{FjallEngine, FjallOptions};

/// Runs `threads` writers doing `per_thread` writes each; returns (writes/s, fsyncs).
fn measure(threads: usize, per_thread: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    let fsyncs_before = engine.fsync_count();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..per_thread {
                    put(
                        engine,
                        partition((i % TEST_PARTITIONS as usize) as u32),
                        format!("t{t}-{i}").as_bytes(),
                        "v",
                    );
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    (
        (threads * per_thread) as f64 / secs,
        engine.fsync_count() - fsyncs_before,
    )
}

#[test]
fn group_commit_shares_fsyncs_between_writers() {
    let (single_rate, single_fsyncs) = measure(1, 300);
    let (multi_rate, multi_fsyncs) = measure(8, 150);
    println!(
        "1 thread:  {single_rate:.0} acknowledged writes/s, {single_fsyncs} fsyncs for 300 writes"
    );
    println!(
        "8 threads: {multi_rate:.0} acknowledged writes/s, {multi_fsyncs} fsyncs for 1200 writes"
    );
    assert_eq!(
        single_fsyncs, 300,
        "a lone writer's every write is its own fsync"
    );
    assert!(
        multi_fsyncs < 1200,
        "eight writers shared no fsync ({multi_fsyncs} for 1200 writes)"
    );
}
