//! A Jepsen-style fault harness: five real nodes, each in its own network namespace, a
//! shopping-cart workload recording every operation, faults (partitions through iptables
//! inside the namespaces, SIGKILL and restart, SIGSTOP/SIGCONT, wiped restarts), then a check
//! of the history against the converged replicas.
//!
//! Environment: `RINGKV_FAULT_SECONDS` (seconds of faults under load per scenario, default
//! `DEFAULT_FAULT_SECONDS`), `RINGKV_FAULT_SEED` (replay a seed; otherwise one is drawn and
//! printed).

#![allow(dead_code)]

pub mod checker;
pub mod cluster;
pub mod nemesis;
pub mod net;
pub mod workload;

use std::time::{Duration, Instant};

use checker::{Checked, Convergence};
use cluster::Cluster;
use nemesis::Fault;
#[allow(unused_imports)] // each test binary uses a subset
pub use ringkv_testkit::{Rng, try_poll_until as poll_until};
use workload::{Api, CARTS, Workload};

/// Pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Seconds of faults under load per scenario in the default (CI) run.
pub const DEFAULT_FAULT_SECONDS: u64 = 12;
/// The convergence bound this harness states: after the last fault is healed and the clients
/// stopped, every key's home replicas hold the same versions within this time.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(20);
/// Load kept running after the last heal, before the clients stop.
const LOAD_AFTER_HEAL: Duration = Duration::from_secs(2);
/// Fewest acknowledged adds a scenario must see for its checks to mean something.
pub const MIN_ACKED_ADDS: usize = 20;

fn seed(scenario: &str) -> u64 {
    let seed = std::env::var("RINGKV_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("fault harness {scenario}: seed {seed} (replay with RINGKV_FAULT_SEED={seed})");
    seed
}

fn fault_duration() -> Duration {
    let secs = std::env::var("RINGKV_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_FAULT_SECONDS);
    Duration::from_secs(secs)
}

/// How a scenario breaks the cluster.
pub enum Schedule {
    /// Faults drawn from these kinds, one at a time; `mixed` sometimes pairs a partition with
    /// a process fault.
    Faults { kinds: Vec<Fault>, mixed: bool },
    /// Isolates one home replica of `cart` from every other node for `hold` under load, then
    /// stops the load before healing (for the can-fail test).
    IsolateHomeReplica { cart: &'static str, hold: Duration },
}

pub struct Scenario {
    pub name: &'static str,
    pub schedule: Schedule,
    /// Extra `ringkv server` flags for every node.
    pub node_flags: Vec<&'static str>,
    /// The scenario is meant to make the harness report a failure (the can-fail test): the
    /// run dir is kept only if it does not.
    pub expect_failure: bool,
}

/// Everything a scenario found.
#[derive(Debug)]
pub struct Report {
    pub scenario: &'static str,
    pub seed: u64,
    pub checked: Checked,
    pub convergence: Convergence,
    /// Problems while healing (a wiped node that did not refill in time).
    pub heal_errors: Vec<String>,
    /// Tombstones the nodes running at the end say they purged (counters restart with a
    /// process, so this is a lower bound).
    pub tombstones_purged: u64,
    /// The node `IsolateHomeReplica` cut off, if that was the schedule.
    pub isolated: Option<String>,
}

impl Report {
    /// The verdict: nothing lost, nothing invented, converged within the bound, no deleted
    /// cart back, every cart readable, every wiped node refilled.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    pub fn failures(&self) -> Vec<String> {
        /// Differing keys shown in a failure.
        const SHOWN: usize = 4;
        let c = &self.checked;
        let mut f = Vec::new();
        if !c.lost.is_empty() {
            f.push(format!(
                "{} acknowledged adds lost: {:?}",
                c.lost.len(),
                c.lost
            ));
        }
        if !c.phantom.is_empty() {
            f.push(format!(
                "{} items nobody wrote: {:?}",
                c.phantom.len(),
                c.phantom
            ));
        }
        if !self.convergence.converged {
            let d = &self.convergence.differing;
            f.push(format!(
                "replicas of {} keys did not converge within {CONVERGENCE_BOUND:?}: {:?}{}",
                d.len(),
                &d[..d.len().min(SHOWN)],
                if d.len() > SHOWN { " ..." } else { "" }
            ));
        }
        if !c.resurrected.is_empty() {
            f.push(format!(
                "{} deleted items came back: {:?}",
                c.resurrected.len(),
                c.resurrected
            ));
        }
        if !c.unreadable.is_empty() {
            f.push(format!("carts unreadable at the end: {:?}", c.unreadable));
        }
        f.extend(self.heal_errors.iter().cloned());
        f
    }

    pub fn summary(&self) -> String {
        let c = &self.checked;
        format!(
            "fault harness {}: seed {} | adds: {} acked, {} failed, {} unknown ({} of them present) \
             | lost acked adds: {} | items nobody wrote: {} | converged: {} in {:.2}s (bound {}s) \
             | deletes acked: {}, resurrected items: {}, tombstones purged: {} | verdict: {}",
            self.scenario,
            self.seed,
            c.acked_adds,
            c.failed_adds,
            c.unknown_adds,
            c.unknown_present,
            c.lost.len(),
            c.phantom.len(),
            self.convergence.converged,
            self.convergence.took.as_secs_f64(),
            CONVERGENCE_BOUND.as_secs(),
            c.deletes_acked,
            c.resurrected.len(),
            self.tombstones_purged,
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Starts five nodes, runs the workload under the scenario's faults, heals, waits for
/// convergence, reads every cart and checks the history. Prints the counts.
pub async fn run(scenario: Scenario) -> Report {
    let seed = seed(scenario.name);
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster::start(5, &scenario.node_flags).await;
    let api = Api {
        client: cluster.client.clone(),
        urls: cluster.urls(),
    };
    let ids: Vec<String> = (0..cluster.len())
        .map(|i| cluster.id(i).to_string())
        .collect();
    let started = Instant::now();
    let load = Workload::start(api.clone(), seed, started);
    let mut heal_errors = Vec::new();
    let mut isolated = None;
    let history = match &scenario.schedule {
        Schedule::Faults { kinds, mixed } => {
            heal_errors = nemesis::run_schedule(
                &mut cluster,
                &mut rng,
                kinds,
                *mixed,
                fault_duration(),
                started,
            )
            .await;
            tokio::time::sleep(LOAD_AFTER_HEAL).await;
            load.stop().await
        }
        Schedule::IsolateHomeReplica { cart, hold } => {
            let homes = checker::home_replicas_of(&api, cart).await;
            let victim = cluster
                .index_of(&homes[0])
                .expect("the ring names a known node");
            isolated = Some(cluster.id(victim).to_string());
            let others: Vec<usize> = (0..cluster.len()).filter(|&i| i != victim).collect();
            // Some load first, so that every replica holds the cart.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let pairs: Vec<(usize, usize)> = others.iter().map(|&o| (victim, o)).collect();
            cluster.net.cut(&pairs);
            eprintln!(
                "fault harness: {:>7.3}s isolating {} (a home replica of {cart}) for {:.1}s",
                started.elapsed().as_secs_f64(),
                cluster.id(victim),
                hold.as_secs_f64()
            );
            tokio::time::sleep(*hold).await;
            let history = load.stop().await;
            cluster.net.heal();
            eprintln!(
                "fault harness: {:>7.3}s healed",
                started.elapsed().as_secs_f64()
            );
            history
        }
    };
    let mut keys: Vec<String> = CARTS.iter().map(|c| c.to_string()).collect();
    for a in &history.adds {
        if !keys.contains(&a.cart) {
            keys.push(a.cart.clone());
        }
    }
    let convergence = checker::wait_converged(&api, &ids, &keys, CONVERGENCE_BOUND).await;
    let checked = checker::check(&api, &history).await;
    let mut tombstones_purged = 0;
    for i in 0..cluster.len() {
        if let Some(status) = cluster.status(i).await {
            tombstones_purged += status["tombstones"]["purged"].as_u64().unwrap_or(0);
        }
    }
    let report = Report {
        scenario: scenario.name,
        seed,
        checked,
        convergence,
        heal_errors,
        tombstones_purged,
        isolated,
    };
    let history_file = cluster.run_dir().join("history.txt");
    let mut text = history.render(&api.urls);
    let suspect: Vec<String> = report
        .checked
        .lost
        .iter()
        .chain(&report.checked.phantom)
        .chain(&report.checked.resurrected)
        .filter_map(|s| s.split(':').next().map(str::to_string))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !suspect.is_empty() {
        let dump = checker::dump_keys(&api, &ids, &suspect).await;
        eprintln!("what every node holds for the failing keys:\n{dump}");
        text.push_str(&dump);
    }
    let _ = std::fs::write(&history_file, text);
    eprintln!("{}", report.summary());
    for f in report.failures() {
        eprintln!("  - {f}");
    }
    if report.passed() == scenario.expect_failure {
        cluster.keep = true;
        eprintln!("history: {}", history_file.display());
    }
    report
}
