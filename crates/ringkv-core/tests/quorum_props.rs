//! Laws of the quorum state machine, checked against a model the test keeps from the
//! tracker's outputs alone: which targets it asked for and what they answered.
//!
//! The oracle for "success is still possible" is `oks + outstanding >= needed`. It is exact
//! because a target that has not answered may still answer ok, and a new target only ever
//! appears as the one-for-one replacement of a failed one (checked below), so no continuation
//! can produce more oks than there are outstanding targets; and the continuation in which
//! every outstanding target answers ok produces exactly that many.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::Index;
use ringkv_core::NodeId;
use ringkv_core::quorum::{
    FailureReason, MAX_FALLBACKS_PER_REQUEST, Progress, Quorum, QuorumMode, QuorumPlan,
    QuorumPlanError, QuorumTracker, Reply, ReplyError, Target, TargetState,
};

/// Home replicas are 0..n, fallbacks 100.., so a node's role shows in its number.
const FIRST_FALLBACK: u32 = 100;

#[derive(Debug, Clone)]
struct Case {
    needed: usize,
    home: Vec<u32>,
    fallbacks: Vec<u32>,
    unreachable: Vec<u32>,
    mode: QuorumMode,
    /// Which outstanding target answers next, and what it answers.
    script: Vec<(Index, Reply)>,
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![Just(Reply::Ok), Just(Reply::Failed), Just(Reply::TimedOut)]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=5, 0usize..=4).prop_flat_map(|(n, f)| {
        let nodes = n + f;
        (
            1..=n,
            prop::collection::vec(any::<bool>(), nodes),
            prop_oneof![Just(QuorumMode::Sloppy), Just(QuorumMode::Strict)],
            prop::collection::vec((any::<Index>(), reply()), 0..2 * nodes + 2),
        )
            .prop_map(move |(needed, down, mode, script)| {
                let home: Vec<u32> = (0..n as u32).collect();
                let fallbacks: Vec<u32> = (0..f as u32).map(|i| FIRST_FALLBACK + i).collect();
                let all = home.iter().chain(&fallbacks);
                let unreachable = all
                    .zip(&down)
                    .filter(|(_, d)| **d)
                    .map(|(x, _)| *x)
                    .collect();
                Case {
                    needed,
                    home,
                    fallbacks,
                    unreachable,
                    mode,
                    script,
                }
            })
    })
}

fn tracker(case: &Case) -> QuorumTracker<u32> {
    let plan = QuorumPlan {
        needed: Quorum::new(case.needed as u32, case.home.len() as u8).unwrap(),
        home: case.home.clone(),
        fallbacks: case.fallbacks.clone(),
        unreachable: case.unreachable.clone(),
        mode: case.mode,
    };
    QuorumTracker::new(plan).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Succeeded,
    Failed,
}

fn outcome<T>(progress: &Progress<T>) -> Outcome {
    match progress {
        Progress::Pending => Outcome::Pending,
        Progress::Succeeded => Outcome::Succeeded,
        Progress::Failed(_) => Outcome::Failed,
    }
}

/// What the test knows from the tracker's outputs.
struct Model {
    needed: usize,
    /// Every target the tracker asked for, in order, with its reply so far.
    issued: Vec<(Target<u32>, Option<Reply>)>,
    /// Fallbacks, in order, that sloppy mode may still use.
    spare: Vec<u32>,
    outcome: Outcome,
}

impl Model {
    fn oks(&self) -> usize {
        self.issued
            .iter()
            .filter(|(_, r)| *r == Some(Reply::Ok))
            .count()
    }
    fn outstanding(&self) -> Vec<u32> {
        self.issued
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(t, _)| t.node)
            .collect()
    }
    /// The outcome the laws demand after the latest event.
    fn expected(&self) -> Outcome {
        match self.outcome {
            Outcome::Pending if self.oks() >= self.needed => Outcome::Succeeded,
            Outcome::Pending if self.oks() + self.outstanding().len() < self.needed => {
                Outcome::Failed
            }
            decided => decided,
        }
    }
    fn take_spare(&mut self, hinted_for: u32) -> Option<Target<u32>> {
        (!self.spare.is_empty()).then(|| Target {
            node: self.spare.remove(0),
            hinted_for: Some(hinted_for),
        })
    }
}

/// Checks the laws that hold in every state.
fn check_state(
    case: &Case,
    tracker: &QuorumTracker<u32>,
    model: &Model,
) -> Result<(), TestCaseError> {
    let progress = tracker.progress();
    prop_assert_eq!(outcome(&progress), model.outcome);
    let outstanding: Vec<u32> = tracker.outstanding().map(|t| t.node).collect();
    prop_assert_eq!(outstanding, model.outstanding());
    let targets: Vec<(Target<u32>, TargetState)> =
        tracker.targets().map(|(t, s)| (t.clone(), s)).collect();
    let expected: Vec<(Target<u32>, TargetState)> = model
        .issued
        .iter()
        .map(|(t, r)| {
            (
                t.clone(),
                r.map_or(TargetState::Outstanding, TargetState::Replied),
            )
        })
        .collect();
    prop_assert_eq!(targets, expected);
    let oks: Vec<&Target<u32>> = tracker.ok_targets().collect();
    prop_assert_eq!(oks.len(), model.oks());
    prop_assert_eq!(tracker.stored_on(), model.oks());
    let may_hold = model
        .issued
        .iter()
        .filter(|(_, r)| *r != Some(Reply::Failed))
        .count();
    prop_assert_eq!(tracker.may_hold(), may_hold);
    let nodes: BTreeSet<u32> = model.issued.iter().map(|(t, _)| t.node).collect();
    prop_assert_eq!(
        nodes.len(),
        model.issued.len(),
        "a node was contacted twice"
    );
    for (target, _) in &model.issued {
        let is_fallback = target.node >= FIRST_FALLBACK;
        prop_assert_eq!(target.is_fallback(), is_fallback);
        prop_assert!(
            !case.unreachable.contains(&target.node),
            "contacted an unreachable node"
        );
        if case.mode == QuorumMode::Strict {
            prop_assert!(!is_fallback, "strict mode used a fallback");
        }
        if let Some(home) = target.hinted_for {
            prop_assert!(
                case.home.contains(&home),
                "hinted for a node that is no home replica"
            );
        }
    }
    if let Progress::Failed(failure) = progress {
        prop_assert_eq!(failure.needed, case.needed);
        prop_assert_eq!(failure.oks, model.oks());
        prop_assert_eq!(failure.outstanding, model.outstanding().len());
        prop_assert!(failure.oks < failure.needed);
        let why = failure
            .nodes
            .iter()
            .filter(|f| f.reason != FailureReason::Unreachable);
        prop_assert_eq!(why.count(), failure.failed + failure.timed_out);
    }
    Ok(())
}

fn run(case: Case) -> Result<(), TestCaseError> {
    let mut tracker = tracker(&case);
    let reachable_fallbacks = case
        .fallbacks
        .iter()
        .filter(|f| !case.unreachable.contains(f))
        .copied()
        .collect();
    let mut model = Model {
        needed: case.needed,
        issued: Vec::new(),
        spare: if case.mode == QuorumMode::Sloppy {
            reachable_fallbacks
        } else {
            Vec::new()
        },
        outcome: Outcome::Pending,
    };
    // The initial targets: reachable home replicas, and in sloppy mode a fallback in place
    // of each unreachable one, in order, while fallbacks last.
    let mut initial = Vec::new();
    for &home in &case.home {
        if !case.unreachable.contains(&home) {
            initial.push(Target {
                node: home,
                hinted_for: None,
            });
        } else if let Some(fallback) = model.take_spare(home) {
            initial.push(fallback);
        }
    }
    let got: Vec<Target<u32>> = tracker.initial_targets().cloned().collect();
    prop_assert_eq!(&got, &initial);
    model.issued = initial.into_iter().map(|t| (t, None)).collect();
    model.outcome = model.expected();
    check_state(&case, &tracker, &model)?;

    for (pick, reply) in case.script.clone() {
        let outstanding = model.outstanding();
        if outstanding.is_empty() {
            break;
        }
        let node = outstanding[pick.index(outstanding.len())];
        let slot = model
            .issued
            .iter()
            .position(|(t, _)| t.node == node)
            .unwrap();
        let home = model.issued[slot].0.hinted_for.unwrap_or(node);
        // A failure while pending engages the next fallback, hinted for the same home
        // replica; a success, or any reply once decided, engages nothing.
        let expected_next = if reply != Reply::Ok && model.outcome == Outcome::Pending {
            model.take_spare(home)
        } else {
            None
        };
        let next = tracker.record(&node, reply).unwrap();
        prop_assert_eq!(&next, &expected_next);
        model.issued[slot].1 = Some(reply);
        model.issued.extend(next.map(|t| (t, None)));
        let before = model.outcome;
        model.outcome = model.expected();
        prop_assert!(before == Outcome::Pending || before == model.outcome);
        prop_assert_eq!(
            tracker.record(&node, reply),
            Err(ReplyError::AlreadyReplied)
        );
        check_state(&case, &tracker, &model)?;
    }
    if model.outstanding().is_empty() {
        prop_assert_ne!(
            model.outcome,
            Outcome::Pending,
            "every target answered, undecided"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn quorum_laws_hold_for_every_reply_order(case in case()) {
        run(case)?;
    }
}

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn plan(needed: u32, mode: QuorumMode, unreachable: &[&str]) -> QuorumPlan<NodeId> {
    QuorumPlan {
        needed: Quorum::new(needed, 3).unwrap(),
        home: vec![node("n1"), node("n2"), node("n3")],
        fallbacks: vec![node("n4"), node("n5")],
        unreachable: unreachable.iter().map(|s| node(s)).collect(),
        mode,
    }
}

#[test]
fn the_failure_message_says_who_answered_and_why_the_others_did_not() {
    let mut q = QuorumTracker::new(plan(2, QuorumMode::Strict, &[])).unwrap();
    q.record(&node("n1"), Reply::Ok).unwrap();
    q.record(&node("n2"), Reply::TimedOut).unwrap();
    assert_eq!(q.progress(), Progress::Pending);
    q.record(&node("n3"), Reply::Failed).unwrap();
    let Progress::Failed(failure) = q.progress() else {
        panic!("{:?}", q.progress())
    };
    assert_eq!(
        failure.to_string(),
        "1 of 2 replicas needed answered ok; n2 timed out, n3 failed"
    );
    assert_eq!((failure.oks, failure.failed, failure.timed_out), (1, 1, 1));
}

#[test]
fn sloppy_fallbacks_are_hinted_for_the_replica_they_replace() {
    let mut q = QuorumTracker::new(plan(3, QuorumMode::Sloppy, &["n2"])).unwrap();
    let initial: Vec<_> = q.initial_targets().cloned().collect();
    let standin = Target {
        node: node("n4"),
        hinted_for: Some(node("n2")),
    };
    let home = |s| Target {
        node: node(s),
        hinted_for: None,
    };
    assert_eq!(initial, vec![home("n1"), standin.clone(), home("n3")]);
    // n4 fails too: n5 takes over, still for n2; then nothing is left.
    let next = q.record(&node("n4"), Reply::Failed).unwrap();
    assert_eq!(
        next,
        Some(Target {
            node: node("n5"),
            hinted_for: Some(node("n2"))
        })
    );
    assert_eq!(q.record(&node("n3"), Reply::TimedOut).unwrap(), None);
    let Progress::Failed(failure) = q.progress() else {
        panic!("{:?}", q.progress())
    };
    assert_eq!(
        failure.to_string(),
        "0 of 3 replicas needed answered ok; n2 unreachable, n4 (standing in for n2) failed, \
         n3 timed out; 2 not yet answered"
    );
    // Later replies are still recorded: the write is stored on the nodes that answered ok.
    q.record(&node("n5"), Reply::Ok).unwrap();
    q.record(&node("n1"), Reply::Ok).unwrap();
    assert!(matches!(q.progress(), Progress::Failed(_)));
    let stored: Vec<_> = q
        .ok_targets()
        .map(|t| (t.node.as_str(), t.is_fallback()))
        .collect();
    assert_eq!(stored, vec![("n1", false), ("n5", true)]);
    assert_eq!(q.stored_on(), 2);
}

#[test]
fn strict_mode_fails_at_once_when_too_few_home_replicas_are_reachable() {
    let q = QuorumTracker::new(plan(2, QuorumMode::Strict, &["n1", "n3"])).unwrap();
    assert_eq!(q.initial_targets().count(), 1);
    let Progress::Failed(failure) = q.progress() else {
        panic!("{:?}", q.progress())
    };
    assert_eq!(failure.unreachable, 2);
    assert_eq!(
        failure.to_string(),
        "0 of 2 replicas needed answered ok; n1 unreachable, n3 unreachable; 1 not yet answered"
    );
}

#[test]
fn bad_plans_and_stray_replies_are_rejected() {
    let mut dup = plan(2, QuorumMode::Sloppy, &[]);
    dup.fallbacks.push(node("n1"));
    assert_eq!(
        QuorumTracker::new(dup).unwrap_err(),
        QuorumPlanError::DuplicateNode
    );
    let mut short = plan(3, QuorumMode::Sloppy, &[]);
    short.home.pop();
    assert_eq!(
        QuorumTracker::new(short).unwrap_err(),
        QuorumPlanError::QuorumExceedsReplicas {
            needed: 3,
            replicas: 2
        }
    );
    let mut long = plan(1, QuorumMode::Sloppy, &[]);
    long.fallbacks = (0..=MAX_FALLBACKS_PER_REQUEST)
        .map(|i| node(&format!("f{i}")))
        .collect();
    assert!(matches!(
        QuorumTracker::new(long),
        Err(QuorumPlanError::TooManyNodes { .. })
    ));

    let mut q = QuorumTracker::new(plan(1, QuorumMode::Sloppy, &[])).unwrap();
    assert_eq!(
        q.record(&node("n4"), Reply::Ok),
        Err(ReplyError::NotATarget)
    );
    assert_eq!(q.record(&node("n1"), Reply::Ok), Ok(None));
    assert_eq!(q.progress(), Progress::Succeeded);
    // After success a failure engages no fallback.
    assert_eq!(q.record(&node("n2"), Reply::Failed), Ok(None));
    assert_eq!(q.progress(), Progress::Succeeded);
}
