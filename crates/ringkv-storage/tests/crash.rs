//! Crash test with a real process: a child writes from several threads and prints each write
//! after `update` acknowledged it; the parent SIGKILLs it at a random moment, reopens the
//! directory and checks that every acknowledged write is there and that the stored Merkle
//! trees equal trees rebuilt from the records. The same directory goes through every round,
//! so recovery after a crash is itself crashed.
//!
//! The child is this test binary again, running this same test with `CHILD_DIR_ENV` set.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;
use ringkv_core::{PartitionId, key_hash};
use ringkv_storage::{FjallEngine, FjallOptions, StorageEngine};

const CHILD_DIR_ENV: &str = "RINGKV_CRASH_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "RINGKV_CRASH_CHILD_ROUND";
const ROUNDS: usize = 5;
const WRITER_THREADS: usize = 4;
const KEYS: usize = 64;
/// A child that was somehow not killed stops writing after this long.
const CHILD_MAX_RUN: Duration = Duration::from_secs(30);
/// How long the parent waits for the child's first acknowledged write.
const FIRST_ACK_DEADLINE: Duration = Duration::from_secs(30);

fn key_partition(key: &str) -> PartitionId {
    PartitionId::of(key_hash(key.as_bytes()), TEST_PARTITIONS)
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        let round = std::env::var(CHILD_ROUND_ENV).unwrap();
        run_child(Path::new(&dir), &round);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for round in 0..ROUNDS {
        let lines = run_and_kill_child(dir.path(), round);
        let new: usize = lines.len();
        for line in lines {
            let mut parts = line.split_whitespace();
            assert_eq!(parts.next(), Some("ACK"), "unexpected line {line:?}");
            let (key, value) = (parts.next().unwrap(), parts.next().unwrap());
            acked
                .entry(key.to_string())
                .or_default()
                .insert(value.to_string());
        }
        let checked = check_recovered(dir.path(), &acked);
        println!(
            "crash round {round}: {new} writes acknowledged before SIGKILL, {checked} acknowledged writes checked after reopen, 0 lost"
        );
        assert!(new > 0, "round {round}: the child acknowledged nothing");
    }
}

/// Reopens the directory and checks every acknowledged write and every Merkle tree.
fn check_recovered(dir: &Path, acked: &BTreeMap<String, BTreeSet<String>>) -> usize {
    let engine = FjallEngine::open(dir, FjallOptions::default()).unwrap();
    let mut checked = 0;
    for (key, expected) in acked {
        let stored = engine.get(key_partition(key), key.as_bytes()).unwrap();
        let stored: BTreeSet<String> = stored
            .map(|s| values(&s).into_iter().collect())
            .unwrap_or_default();
        let lost: Vec<_> = expected.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "acknowledged writes lost for {key}: {lost:?}"
        );
        checked += expected.len();
    }
    for p in engine.partitions().unwrap() {
        assert_eq!(
            engine.merkle(p).unwrap(),
            rebuilt_tree(&engine, p),
            "partition {}",
            p.index()
        );
    }
    checked
}

/// Runs one child, kills it a random time after its first acknowledged write, and returns
/// every complete line it printed.
fn run_and_kill_child(dir: &Path, round: usize) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "acknowledged_writes_survive_sigkill",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        // Ends at EOF, when the killed child's end of the pipe closes.
        while stdout.read_line(&mut line).unwrap() > 0 {
            // A line cut by the kill has no newline: it was not acknowledged to us.
            if line.ends_with('\n') && line.starts_with("ACK ") {
                tx.send(line.trim_end().to_string()).unwrap();
            }
            line.clear();
        }
    });
    let mut lines = vec![
        rx.recv_timeout(FIRST_ACK_DEADLINE)
            .expect("the child acknowledged a first write"),
    ];
    let kill_at = Instant::now() + Duration::from_millis(rand::rng().random_range(100..600));
    while let Some(left) = kill_at.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the child exited before it was killed")
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

/// The child: blind writes (each a new sibling, so every acknowledged value must stay) from
/// several threads, each printed only after `update` returned.
fn run_child(dir: &Path, round: &str) -> ! {
    let engine = FjallEngine::open(dir, FjallOptions::default()).unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..WRITER_THREADS {
            let engine = &engine;
            s.spawn(move || {
                let r = replica(t);
                let mut i = 0usize;
                while started.elapsed() < CHILD_MAX_RUN {
                    let key = format!("key-{}", (t * 17 + i * 7) % KEYS);
                    let value = format!("r{round}-t{t}-{i}");
                    engine
                        .update(key_partition(&key), key.as_bytes(), &mut |cur| {
                            Some(write(cur, &value, &r, false))
                        })
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {key} {value}").unwrap();
                    out.flush().unwrap();
                    i += 1;
                }
            });
        }
    });
    std::process::exit(0)
}
