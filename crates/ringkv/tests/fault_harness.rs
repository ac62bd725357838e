//! The Jepsen-style fault harness (issue 4): five real nodes, one network namespace each, a
//! shopping-cart workload, faults, and a check of the history. Each scenario is its own test;
//! `RINGKV_FAULT_SECONDS` runs them longer, `RINGKV_FAULT_SEED` replays a seed. Needs root,
//! iproute2 and iptables: without them every test fails, saying so.
//!
//! Scenario checks, printed as counts: every acknowledged add is in the final cart (lost = 0);
//! no item appears that nobody wrote; every key's home replicas hold the same versions within
//! `CONVERGENCE_BOUND` of the last heal; no deleted cart comes back.

mod fault;

use std::time::Duration;

use fault::nemesis::Fault;
use fault::{MIN_ACKED_ADDS, Report, Scenario, Schedule};

fn faults(name: &'static str, kinds: &[Fault], mixed: bool) -> Scenario {
    Scenario {
        name,
        schedule: Schedule::Faults {
            kinds: kinds.to_vec(),
            mixed,
        },
        node_flags: Vec::new(),
        expect_failure: false,
    }
}

fn assert_passed(report: &Report) {
    assert!(
        report.checked.acked_adds >= MIN_ACKED_ADDS,
        "too few acknowledged adds for the checks to mean anything: {}",
        report.summary()
    );
    assert!(
        report.passed(),
        "{}\n{}",
        report.summary(),
        report.failures().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_majority_minority() {
    let report = fault::run(faults(
        "partition-majority-minority",
        &[Fault::PartitionMajority],
        false,
    ))
    .await;
    assert_passed(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_random_halves_and_bridge() {
    let report = fault::run(faults(
        "partition-random-halves",
        &[Fault::PartitionHalves, Fault::PartitionBridge],
        false,
    ))
    .await;
    assert_passed(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_restart() {
    let report = fault::run(faults("sigkill-restart", &[Fault::Kill], false)).await;
    assert_passed(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstop_sigcont_pauses() {
    let report = fault::run(faults("sigstop-sigcont", &[Fault::Pause], false)).await;
    assert_passed(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_wiped_data_dir() {
    let report = fault::run(faults("wiped-data-dir", &[Fault::Wipe], false)).await;
    assert_passed(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_random_faults() {
    let report = fault::run(faults("mixed", Fault::ALL, true)).await;
    assert_passed(&report);
}

/// The harness can fail: with hinted handoff, anti-entropy and read repair switched off, a
/// home replica isolated during writes stays behind after the heal, and the harness must say
/// so (non-convergence or lost acknowledged adds).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn harness_reports_divergence_when_repair_is_disabled() {
    let report = fault::run(Scenario {
        name: "can-fail (repair disabled)",
        schedule: Schedule::IsolateHomeReplica {
            cart: "cart-0",
            // Long enough for the others to mark it down and send writes to fallbacks: a
            // shorter cut (4 s) sometimes ended first, every write then reached it late over TCP.
            hold: Duration::from_secs(8),
        },
        node_flags: vec!["--test-disable-repair"],
        expect_failure: true,
    })
    .await;
    assert!(
        report.checked.acked_adds >= MIN_ACKED_ADDS,
        "too few acknowledged adds to show anything: {}",
        report.summary()
    );
    assert!(
        !report.passed(),
        "with repair disabled the harness must report a failure: {}",
        report.summary()
    );
    assert!(
        !report.convergence.converged || !report.checked.lost.is_empty(),
        "the failure must be non-convergence or lost adds: {}",
        report.summary()
    );
    // The report points at the isolated node: some key with it among its replicas is
    // reported differing. Which keys stay behind depends on the run, so no particular key is
    // required: the isolation drops packets (iptables DROP) on connections that stay open, so
    // replica writes sent to the node before the others marked it down sit in TCP
    // retransmission and arrive after the heal, repair or not (the late delivery design.md §12
    // describes for purging); writes sent to fallbacks after that never reach it. In one CI
    // run that brought cart-0 up to date while other keys of the node stayed behind.
    let isolated = report
        .isolated
        .clone()
        .expect("the schedule isolates a node");
    assert!(
        report
            .convergence
            .differing
            .iter()
            .any(|d| d.contains(&format!("{isolated}: "))),
        "the isolated replica {isolated} must be reported behind: {:?}",
        report.convergence.differing
    );
}

/// Issue 5: a member leaves and (wiped) joins again while partitions cut the network and nodes
/// are killed, under the cart workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_and_leave_mixed_with_partitions_and_kills() {
    let report = fault::run(faults(
        "join-leave",
        &[
            Fault::LeaveRejoin,
            Fault::PartitionMajority,
            Fault::PartitionHalves,
            Fault::Kill,
        ],
        true,
    ))
    .await;
    assert_passed(&report);
}
