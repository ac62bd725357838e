//! `ringkv bench`: the YCSB core workloads (A, B, C, D, F) against a running cluster,
//! through HTTP, RESP or the Rust client (zero-hop, or everything through one node).
//!
//! A run loads the record set (an upsert of every record, so repeating it on the same
//! cluster piles up no siblings), then runs `--concurrency` workers for `--duration-secs`:
//! - closed loop (no `--rate`): each worker starts its next operation when the last one
//!   ends; measures the maximum throughput;
//! - open loop (`--rate`): operation `i` is due at `i / rate` seconds; a pacer thread hands
//!   slots in order to free workers at their due times and latency is measured from the
//!   slot's due time, so a slot that had to wait for a free worker has that queueing delay
//!   in its latency (no coordinated omission).
//!
//! Laws: every loop is bounded (by the deadline and by `MAX_OPS_PER_RUN`, or by the
//! schedule's slot count and a hard stop); at most `--concurrency` operations are in
//! flight; every open-loop slot is reported as on time, late or missed.

mod driver;
mod generator;
mod pacer;
mod report;
mod resp;
mod schedule;
mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{ArgAction, Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_client::{Bytes, Client, Routing};

use driver::{
    ClientDriver, ContextCache, Driver, Found, HttpDriver, OPERATION_TIMEOUT, Quorums, RespDriver,
};
use report::{Outcome, Recorder, RunInfo};
use schedule::Schedule;
use workload::{Operation, StepChooser, Workload};

/// Most workers (and so operations in flight) of one run.
const MAX_CONCURRENCY: usize = 4096;
/// Largest record set and value a run accepts.
const MAX_RECORDS: u64 = 100_000_000;
const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest run.
const MAX_DURATION_SECS: u64 = 24 * 3600;
/// Most operations of one closed-loop run, whatever the duration.
const MAX_OPS_PER_RUN: u64 = 1_000_000_000;
/// How long an open-loop run may go on past its duration to start slots that fell behind;
/// slots still unstarted then are reported as missed.
const OPEN_LOOP_GRACE: Duration = Duration::from_secs(2);
/// Period of the progress bar's refresh.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// How the benchmark reaches the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverKind {
    /// HTTP to the `--node` URLs, worker i to node i mod n; the node coordinates or forwards.
    Http,
    /// The Redis protocol to the `--resp-addr` addresses, one connection per worker.
    Resp,
    /// The Rust client with zero-hop routing (straight to a home replica).
    Client,
    /// The Rust client sending every request to the first `--node` (the zero-hop baseline).
    ClientOneNode,
}

impl DriverKind {
    fn name(self) -> &'static str {
        match self {
            DriverKind::Http => "http",
            DriverKind::Resp => "resp",
            DriverKind::Client => "client",
            DriverKind::ClientOneNode => "client-one-node",
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// HTTP URL of a node, repeatable (seeds of the client drivers, targets of `http`).
    #[arg(long = "node", default_value = "http://127.0.0.1:8101")]
    pub nodes: Vec<String>,
    /// How to reach the cluster.
    #[arg(long, value_enum, default_value_t = DriverKind::Http)]
    pub driver: DriverKind,
    /// RESP address HOST:PORT of a node, repeatable (the `resp` driver).
    #[arg(long = "resp-addr", default_value = "127.0.0.1:6101")]
    pub resp_addrs: Vec<String>,
    /// YCSB core workload.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    /// Records in the data set (keys `user0` .. `user{N-1}`).
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Size of every value written.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Workers, and so the most operations in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Length of the measured run.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Open loop at this many operations per second (absent: closed loop, max throughput).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Read quorum of every read (HTTP and client drivers; RESP uses the node's default).
    #[arg(long)]
    pub r: Option<u8>,
    /// Write quorum of every write (HTTP and client drivers).
    #[arg(long)]
    pub w: Option<u8>,
    /// Load (upsert) the record set before the run.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub load: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl BenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            bail!("--concurrency must be 1..={MAX_CONCURRENCY}");
        }
        if !(1..=MAX_RECORDS).contains(&self.records) {
            bail!("--records must be 1..={MAX_RECORDS}");
        }
        if !(1..=MAX_VALUE_BYTES).contains(&self.value_bytes) {
            bail!("--value-bytes must be 1..={MAX_VALUE_BYTES}");
        }
        if !(1..=MAX_DURATION_SECS).contains(&self.duration_secs) {
            bail!("--duration-secs must be 1..={MAX_DURATION_SECS}");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("--rate must be a positive number of operations per second");
        }
        if self.driver == DriverKind::Resp && (self.r.is_some() || self.w.is_some()) {
            eprintln!(
                "note: RESP has no per-request quorum; --r/--w are ignored (node defaults apply)"
            );
        }
        Ok(())
    }
}

/// What all workers share.
struct Shared {
    contexts: ContextCache,
    /// Records known to exist (acknowledged), for the latest distribution.
    records_acked: AtomicU64,
    /// Next record number an insert creates.
    insert_next: AtomicU64,
    /// Closed loop: operations started.
    claimed: AtomicU64,
    /// For the progress bar.
    done: AtomicU64,
    errors: AtomicU64,
}

#[derive(Clone)]
enum Mode {
    Closed {
        deadline: Instant,
    },
    /// Slots come from the pacer thread at their due times.
    Open(pacer::Releases),
}

/// The settings one worker runs with.
#[derive(Clone)]
struct WorkerPlan {
    value_bytes: usize,
    mode: Mode,
}

/// What a worker builds before the clock starts: its generator, its key chooser (the zipfian
/// set-up sums over every record) and its histograms. Built inside the measured time, these
/// delayed the first open-loop slots by about 40 ms, which the schedule then reported as the
/// run's P99.9.
struct WorkerState {
    rng: StdRng,
    chooser: StepChooser,
    recorder: Recorder,
}

impl WorkerState {
    fn new(args: &BenchArgs, id: usize, records: u64) -> WorkerState {
        WorkerState {
            rng: worker_rng(args.seed, id),
            chooser: StepChooser::new(args.workload, records),
            recorder: Recorder::default(),
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.check()?;
    let mut drivers = make_drivers(&args).await?;
    let shared = Arc::new(Shared {
        contexts: ContextCache::new(),
        records_acked: AtomicU64::new(args.records),
        insert_next: AtomicU64::new(args.records),
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    if args.load {
        drivers = load(&args, drivers, &shared).await?;
    }
    let (recorder, elapsed) = measure(&args, drivers, &shared).await;
    let info = RunInfo {
        workload: args.workload.name(),
        driver: args.driver.name(),
        rate: args.rate,
        concurrency: args.concurrency,
        records: args.records,
        value_bytes: args.value_bytes,
        elapsed,
    };
    print!("{}", report::table(&info, &recorder));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::json(&info, &recorder))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One driver per worker.
async fn make_drivers(args: &BenchArgs) -> anyhow::Result<Vec<Driver>> {
    let quorums = Quorums {
        r: args.r,
        w: args.w,
    };
    let n = args.concurrency;
    match args.driver {
        DriverKind::Http => {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(n)
                // Below the node's 30 s keep-alive bound.
                .pool_idle_timeout(Duration::from_secs(20))
                .timeout(OPERATION_TIMEOUT)
                .build()?;
            Ok((0..n)
                .map(|i| {
                    Driver::Http(HttpDriver::new(
                        http.clone(),
                        &args.nodes[i % args.nodes.len()],
                        quorums,
                    ))
                })
                .collect())
        }
        DriverKind::Resp => Ok((0..n)
            .map(|i| Driver::Resp(RespDriver::new(&args.resp_addrs[i % args.resp_addrs.len()])))
            .collect()),
        DriverKind::Client | DriverKind::ClientOneNode => {
            let (seeds, routing) = if args.driver == DriverKind::Client {
                (
                    args.nodes.iter().map(String::as_str).collect::<Vec<_>>(),
                    Routing::ZeroHop,
                )
            } else {
                (vec![args.nodes[0].as_str()], Routing::AnyNode)
            };
            let client = Client::builder(&seeds)
                .routing(routing)
                .max_in_flight(n)
                .pool_max_idle_per_host(n)
                .request_timeout(OPERATION_TIMEOUT)
                .connect()
                .await
                .context("connecting the client")?;
            Ok((0..n)
                .map(|_| Driver::Client(ClientDriver::new(client.clone(), quorums)))
                .collect())
        }
    }
}

fn progress_bar(len: u64, prefix: &'static str) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>5} [{bar:30}] {elapsed_precise} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// Upserts every record (read its context, write over it), `concurrency` at a time.
async fn load(
    args: &BenchArgs,
    drivers: Vec<Driver>,
    shared: &Arc<Shared>,
) -> anyhow::Result<Vec<Driver>> {
    let bar = progress_bar(args.records, "load");
    let started = Instant::now();
    let workers = drivers.len() as u64;
    let mut tasks = Vec::with_capacity(drivers.len());
    for (i, mut driver) in drivers.into_iter().enumerate() {
        let shared = shared.clone();
        let (records, value_bytes, seed, bar) =
            (args.records, args.value_bytes, args.seed, bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = worker_rng(seed ^ 0x10ad, i);
            let mut failures = Vec::new();
            for record in (i as u64..records).step_by(workers as usize) {
                let value = random_value(&mut rng, value_bytes);
                let upsert = async {
                    driver.read(record, &shared.contexts).await?;
                    driver.write(record, value, &shared.contexts, true).await
                };
                match tokio::time::timeout(2 * OPERATION_TIMEOUT, upsert).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push(format!("{}: {}", e.kind, e.message)),
                    Err(_) => {
                        driver.reset();
                        failures.push("timeout".to_string());
                    }
                }
                bar.inc(1);
            }
            (driver, failures)
        }));
    }
    let mut drivers = Vec::with_capacity(tasks.len());
    let mut failures = Vec::new();
    for task in tasks {
        let (driver, f) = task.await.context("a load worker panicked")?;
        drivers.push(driver);
        failures.extend(f);
    }
    bar.finish_and_clear();
    println!(
        "loaded {} records of {} bytes in {:.1} s, {} failures",
        args.records,
        args.value_bytes,
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if let Some(first) = failures.first() {
        eprintln!("first load failure: {first}");
    }
    Ok(drivers)
}

fn worker_rng(seed: u64, worker: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn random_value(rng: &mut impl Rng, len: usize) -> Bytes {
    (0..len)
        .map(|_| rng.random_range(b'a'..=b'z'))
        .collect::<Vec<u8>>()
        .into()
}

/// The measured phase: spawns the workers and the progress bar, merges what they recorded.
async fn measure(
    args: &BenchArgs,
    drivers: Vec<Driver>,
    shared: &Arc<Shared>,
) -> (Recorder, Duration) {
    let duration = Duration::from_secs(args.duration_secs);
    let records = shared.records_acked.load(Ordering::Relaxed);
    let states: Vec<WorkerState> = (0..drivers.len())
        .map(|id| WorkerState::new(args, id, records))
        .collect();
    let bar = progress_bar(duration.as_millis() as u64, "run");
    let start = Instant::now();
    let mut pacer = None;
    let mode = match args.rate {
        None => Mode::Closed {
            deadline: start + duration,
        },
        Some(rate) => {
            let schedule = Schedule::new(rate, duration);
            let hard_stop = start + duration + OPEN_LOOP_GRACE;
            match pacer::start(schedule, start, hard_stop, drivers.len()) {
                Ok((releases, thread)) => {
                    pacer = Some((schedule, thread));
                    Mode::Open(releases)
                }
                Err(e) => {
                    let mut total = Recorder::default();
                    total.record_error("pacer", &format!("cannot start the pacer thread: {e}"));
                    return (total, Duration::ZERO);
                }
            }
        }
    };
    let ticker = tokio::spawn(tick_progress(bar.clone(), shared.clone(), start));
    let tasks: Vec<_> = drivers
        .into_iter()
        .zip(states)
        .map(|(driver, state)| {
            let plan = WorkerPlan {
                value_bytes: args.value_bytes,
                mode: mode.clone(),
            };
            tokio::spawn(worker(plan, state, driver, shared.clone()))
        })
        .collect();
    // The workers hold the only handles on the pacer: it ends once they have all stopped.
    drop(mode);
    let mut total = Recorder::default();
    for task in tasks {
        match task.await {
            Ok(recorder) => total.merge(&recorder),
            Err(e) => total.record_error("worker_panic", &e.to_string()),
        }
    }
    let elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    if let Some((schedule, thread)) = pacer {
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(lateness)) => {
                total.lateness = lateness;
                total.lateness.missed = schedule.total_ops().saturating_sub(lateness.started());
            }
            _ => total.record_error("pacer", "the pacer thread panicked"),
        }
    }
    (total, elapsed)
}

async fn tick_progress(bar: ProgressBar, shared: Arc<Shared>, start: Instant) {
    let mut interval = tokio::time::interval(PROGRESS_TICK);
    loop {
        interval.tick().await;
        let secs = start.elapsed().as_secs_f64();
        let done = shared.done.load(Ordering::Relaxed);
        bar.set_position(start.elapsed().as_millis() as u64);
        bar.set_message(format!(
            "{done} ops, {:.0} ops/s, {} errors",
            done as f64 / secs.max(1e-3),
            shared.errors.load(Ordering::Relaxed)
        ));
    }
}

/// When the next operation starts (its due time in open loop), or `None` when the run is over.
async fn next_start(mode: &Mode, shared: &Shared) -> Option<Instant> {
    match mode {
        Mode::Closed { deadline } => {
            let now = Instant::now();
            let count = shared.claimed.fetch_add(1, Ordering::Relaxed);
            (now < *deadline && count < MAX_OPS_PER_RUN).then_some(now)
        }
        Mode::Open(releases) => releases.next().await,
    }
}

async fn worker(
    plan: WorkerPlan,
    state: WorkerState,
    mut driver: Driver,
    shared: Arc<Shared>,
) -> Recorder {
    let WorkerState {
        mut rng,
        mut chooser,
        mut recorder,
    } = state;
    while let Some(began) = next_start(&plan.mode, &shared).await {
        let mut step = chooser.next(&mut rng, shared.records_acked.load(Ordering::Relaxed));
        if step.operation == Operation::Insert {
            step.record = shared.insert_next.fetch_add(1, Ordering::Relaxed);
        }
        let value = random_value(&mut rng, plan.value_bytes);
        let result = tokio::time::timeout(
            OPERATION_TIMEOUT,
            execute(&mut driver, step, value, &shared),
        )
        .await;
        let outcome = match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                recorder.record_error(e.kind, &e.message);
                Outcome::Error
            }
            Err(_) => {
                driver.reset();
                recorder.record_error("timeout", "no answer within the operation timeout");
                Outcome::Error
            }
        };
        recorder.record(step.operation, began.elapsed(), outcome);
        shared.done.fetch_add(1, Ordering::Relaxed);
        if outcome == Outcome::Error {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    recorder
}

async fn execute(
    driver: &mut Driver,
    step: workload::Step,
    value: Bytes,
    shared: &Shared,
) -> Result<Outcome, driver::OpError> {
    let contexts = &shared.contexts;
    match step.operation {
        Operation::Read => Ok(match driver.read(step.record, contexts).await? {
            Found::Value => Outcome::Ok,
            Found::Siblings => Outcome::Siblings,
            Found::Missing => Outcome::NotFound,
        }),
        Operation::Update => driver
            .write(step.record, value, contexts, true)
            .await
            .map(|()| Outcome::Ok),
        Operation::Insert => {
            driver.write(step.record, value, contexts, false).await?;
            shared
                .records_acked
                .fetch_max(step.record + 1, Ordering::Relaxed);
            Ok(Outcome::Ok)
        }
        Operation::ReadModifyWrite => driver
            .read_modify_write(step.record, value, contexts)
            .await
            .map(|()| Outcome::Ok),
    }
}
