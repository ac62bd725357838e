//! Quorum bookkeeping for one client request: a pure state machine that the coordinator
//! feeds with replies. It never does I/O and never reads a clock; a timeout is a reply the
//! coordinator records when its own timer fires.
//!
//! The coordinator describes the request with a `QuorumPlan`: R or W, the home replicas (the
//! first N nodes of the key's preference list), the fallbacks (the rest, in order), the nodes
//! the failure detector believes down, and a `QuorumMode`:
//! - `Sloppy` (Dynamo §4.6): a fallback stands in for each home replica that is unreachable,
//!   fails or times out, and stores the write with a hint naming that home replica. A fallback
//!   that fails in turn is replaced by the next one, hinted for the same home replica.
//! - `Strict` (Riak's pr/pw): only home replicas count; fallbacks are never contacted.
//!
//! Laws (property tests in `tests/quorum_props.rs`):
//! - the request succeeds exactly when `needed` targets answered ok;
//! - it fails exactly when success has become impossible: when the oks so far plus the
//!   targets still outstanding are fewer than needed. A failure in sloppy mode engages a
//!   fallback at once while any is left, so an outstanding target is the only thing that can
//!   still turn into an ok, and this count is exact, never early, never late;
//! - once decided the outcome never changes; later replies are still recorded (read repair
//!   wants them), but no new target is engaged. So a home replica that fails after a write
//!   succeeded gets no hinted stand-in; anti-entropy restores its copy later;
//! - no node is contacted twice, each fallback is used at most once, strict mode never uses a
//!   fallback, and every fallback is hinted for a home replica that failed or was unreachable.

use std::collections::VecDeque;
use std::fmt;

use crate::constants::MAX_N;

/// Most fallbacks a plan may list. Fallbacks are engaged one per failure, so a request that
/// runs through this many is failing for reasons no further fallback will fix; the bound also
/// keeps the distinctness check of a plan cheap.
pub const MAX_FALLBACKS_PER_REQUEST: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    #[error("quorum must be between 1 and N={n}, got {got}")]
    OutOfRange { got: u32, n: u8 },
}

/// R or W: a number of replicas in 1..=N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quorum(u8);

impl Quorum {
    pub fn new(value: u32, n: u8) -> Result<Quorum, QuorumError> {
        if value >= 1 && value <= n as u32 {
            Ok(Quorum(value as u8))
        } else {
            Err(QuorumError::OutOfRange { got: value, n })
        }
    }
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// Whether fallbacks may stand in for home replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumMode {
    /// Fallbacks stand in for unreachable or failed home replicas (hinted handoff).
    Sloppy,
    /// Home replicas only.
    Strict,
}

/// Everything the tracker needs to know about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumPlan<T> {
    /// R or W.
    pub needed: Quorum,
    /// The first N nodes of the preference list, in order.
    pub home: Vec<T>,
    /// The rest of the preference list, in order; at most `MAX_FALLBACKS_PER_REQUEST`.
    pub fallbacks: Vec<T>,
    /// Nodes the failure detector believes down: a home replica among them is not contacted
    /// (in sloppy mode a fallback is engaged for it at once), a fallback is skipped.
    pub unreachable: Vec<T>,
    pub mode: QuorumMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuorumPlanError {
    #[error("a quorum of {needed} cannot be reached with {replicas} home replicas")]
    QuorumExceedsReplicas { needed: usize, replicas: usize },
    #[error(
        "a plan has at most {MAX_N} home replicas and {MAX_FALLBACKS_PER_REQUEST} fallbacks, got {home} and {fallbacks}"
    )]
    TooManyNodes { home: usize, fallbacks: usize },
    #[error("the home replicas and fallbacks of a plan must be distinct nodes")]
    DuplicateNode,
}

/// What a target answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Failed,
    TimedOut,
}

/// A node the coordinator sends the request to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<T> {
    pub node: T,
    /// For a fallback, the home replica it stands in for: it stores the write with a hint
    /// naming that replica. `None` for a home replica.
    pub hinted_for: Option<T>,
}

impl<T> Target<T> {
    pub fn is_fallback(&self) -> bool {
        self.hinted_for.is_some()
    }
}

/// Where a contacted target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Sent, no reply yet.
    Outstanding,
    Replied(Reply),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply from a node this request was not sent to")]
    NotATarget,
    #[error("second reply from the same node")]
    AlreadyReplied,
}

/// Where the request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress<T> {
    Pending,
    /// `needed` targets answered ok.
    Succeeded,
    /// Too few targets are left to reach the quorum.
    Failed(QuorumFailure<T>),
}

/// Why a node did not count towards the quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    Failed,
    TimedOut,
    /// Believed down by the failure detector, never contacted.
    Unreachable,
}

/// One node that did not count towards the quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure<T> {
    pub node: T,
    /// For a fallback, the home replica it stood in for.
    pub hinted_for: Option<T>,
    pub reason: FailureReason,
}

/// A failed quorum: how many answered ok, how many were needed, and why the others did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumFailure<T> {
    pub needed: usize,
    pub oks: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub unreachable: usize,
    /// Contacted targets that had not answered when the quorum became impossible.
    pub outstanding: usize,
    /// Every failed, timed-out or unreachable node, home replicas and fallbacks, in the order
    /// they were contacted (unreachable home replicas first).
    pub nodes: Vec<NodeFailure<T>>,
}

impl<T: fmt::Display> fmt::Display for QuorumFailure<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} replicas needed answered ok",
            self.oks, self.needed
        )?;
        for (i, failure) in self.nodes.iter().enumerate() {
            f.write_str(if i == 0 { "; " } else { ", " })?;
            write!(f, "{}", failure.node)?;
            if let Some(home) = &failure.hinted_for {
                write!(f, " (standing in for {home})")?;
            }
            f.write_str(match failure.reason {
                FailureReason::Failed => " failed",
                FailureReason::TimedOut => " timed out",
                FailureReason::Unreachable => " unreachable",
            })?;
        }
        if self.outstanding > 0 {
            write!(f, "; {} not yet answered", self.outstanding)?;
        }
        Ok(())
    }
}

impl<T: fmt::Debug + fmt::Display> std::error::Error for QuorumFailure<T> {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Pending,
    Succeeded,
    Failed,
}

/// The bookkeeping of one request. See the module docs for its laws.
#[derive(Debug, Clone)]
pub struct QuorumTracker<T> {
    needed: Quorum,
    mode: QuorumMode,
    /// Every target contacted, in order, with its state; the first `initial` were contacted
    /// at the start.
    targets: Vec<(Target<T>, TargetState)>,
    initial: usize,
    /// Home replicas believed down at the start, never contacted.
    unreachable_home: Vec<T>,
    /// Fallbacks not yet used, in preference-list order.
    spare: VecDeque<T>,
    decision: Decision,
}

impl<T: Clone + Eq> QuorumTracker<T> {
    pub fn new(plan: QuorumPlan<T>) -> Result<QuorumTracker<T>, QuorumPlanError> {
        check_plan(&plan)?;
        let QuorumPlan {
            needed,
            home,
            fallbacks,
            unreachable,
            mode,
        } = plan;
        let spare = match mode {
            QuorumMode::Sloppy => fallbacks
                .into_iter()
                .filter(|f| !unreachable.contains(f))
                .collect(),
            QuorumMode::Strict => VecDeque::new(),
        };
        let mut tracker = QuorumTracker {
            needed,
            mode,
            targets: Vec::with_capacity(home.len()),
            initial: 0,
            unreachable_home: Vec::new(),
            spare,
            decision: Decision::Pending,
        };
        for replica in home {
            if unreachable.contains(&replica) {
                if let Some(fallback) = tracker.engage_fallback(&replica) {
                    tracker.targets.push((fallback, TargetState::Outstanding));
                }
                tracker.unreachable_home.push(replica);
            } else {
                let target = Target {
                    node: replica,
                    hinted_for: None,
                };
                tracker.targets.push((target, TargetState::Outstanding));
            }
        }
        tracker.initial = tracker.targets.len();
        tracker.decide();
        Ok(tracker)
    }

    /// The targets to contact at the start: the reachable home replicas and, in sloppy mode,
    /// a fallback in place of each unreachable one while fallbacks last.
    pub fn initial_targets(&self) -> impl Iterator<Item = &Target<T>> {
        self.targets[..self.initial].iter().map(|(t, _)| t)
    }

    /// Records `node`'s reply. Returns the fallback to contact next, if the reply is a
    /// failure, the mode is sloppy, the request is still pending and a fallback is left.
    pub fn record(&mut self, node: &T, reply: Reply) -> Result<Option<Target<T>>, ReplyError> {
        let index = self
            .targets
            .iter()
            .position(|(t, _)| &t.node == node)
            .ok_or(ReplyError::NotATarget)?;
        let (target, state) = &mut self.targets[index];
        if *state != TargetState::Outstanding {
            return Err(ReplyError::AlreadyReplied);
        }
        *state = TargetState::Replied(reply);
        let home = target
            .hinted_for
            .clone()
            .unwrap_or_else(|| target.node.clone());
        let mut next = None;
        if reply != Reply::Ok && self.decision == Decision::Pending {
            next = self.engage_fallback(&home);
            if let Some(fallback) = &next {
                self.targets
                    .push((fallback.clone(), TargetState::Outstanding));
            }
        }
        self.decide();
        Ok(next)
    }

    pub fn progress(&self) -> Progress<T> {
        match self.decision {
            Decision::Pending => Progress::Pending,
            Decision::Succeeded => Progress::Succeeded,
            Decision::Failed => Progress::Failed(self.failure()),
        }
    }

    pub fn needed(&self) -> Quorum {
        self.needed
    }

    pub fn mode(&self) -> QuorumMode {
        self.mode
    }

    /// Every target contacted so far, in order, with its state.
    pub fn targets(&self) -> impl Iterator<Item = (&Target<T>, TargetState)> {
        self.targets.iter().map(|(t, s)| (t, *s))
    }

    /// Targets sent the request that have not answered.
    pub fn outstanding(&self) -> impl Iterator<Item = &Target<T>> {
        self.with_state(TargetState::Outstanding)
    }

    /// Targets that answered ok, each with the home replica it stood in for, if a fallback.
    pub fn ok_targets(&self) -> impl Iterator<Item = &Target<T>> {
        self.with_state(TargetState::Replied(Reply::Ok))
    }

    /// How many nodes answered ok: for a write, how many nodes store it.
    pub fn stored_on(&self) -> usize {
        self.ok_targets().count()
    }

    /// How many nodes may hold a write that failed: those that answered ok, those that have
    /// not answered yet and those that timed out (a write sent is applied whenever it
    /// arrives). Only a target that answered with a failure certainly does not hold it.
    pub fn may_hold(&self) -> usize {
        self.targets.len() - self.count(TargetState::Replied(Reply::Failed))
    }

    /// Takes the next unused fallback to stand in for `home`, in sloppy mode.
    fn engage_fallback(&mut self, home: &T) -> Option<Target<T>> {
        let node = self.spare.pop_front()?;
        Some(Target {
            node,
            hinted_for: Some(home.clone()),
        })
    }

    fn with_state(&self, state: TargetState) -> impl Iterator<Item = &Target<T>> {
        self.targets
            .iter()
            .filter(move |(_, s)| *s == state)
            .map(|(t, _)| t)
    }

    fn count(&self, state: TargetState) -> usize {
        self.targets.iter().filter(|(_, s)| *s == state).count()
    }

    fn decide(&mut self) {
        if self.decision != Decision::Pending {
            return;
        }
        let oks = self.count(TargetState::Replied(Reply::Ok));
        let outstanding = self.count(TargetState::Outstanding);
        if oks >= self.needed.get() {
            self.decision = Decision::Succeeded;
        } else if oks + outstanding < self.needed.get() {
            self.decision = Decision::Failed;
        }
    }

    fn failure(&self) -> QuorumFailure<T> {
        let unreachable = self.unreachable_home.iter().map(|node| NodeFailure {
            node: node.clone(),
            hinted_for: None,
            reason: FailureReason::Unreachable,
        });
        let contacted = self.targets.iter().filter_map(|(target, state)| {
            let reason = match state {
                TargetState::Replied(Reply::Failed) => FailureReason::Failed,
                TargetState::Replied(Reply::TimedOut) => FailureReason::TimedOut,
                _ => return None,
            };
            Some(NodeFailure {
                node: target.node.clone(),
                hinted_for: target.hinted_for.clone(),
                reason,
            })
        });
        QuorumFailure {
            needed: self.needed.get(),
            oks: self.count(TargetState::Replied(Reply::Ok)),
            failed: self.count(TargetState::Replied(Reply::Failed)),
            timed_out: self.count(TargetState::Replied(Reply::TimedOut)),
            unreachable: self.unreachable_home.len(),
            outstanding: self.count(TargetState::Outstanding),
            nodes: unreachable.chain(contacted).collect(),
        }
    }
}

/// Checks the plan's invariants: the quorum fits the home replicas, the lists are bounded
/// and no node appears twice.
fn check_plan<T: Eq>(plan: &QuorumPlan<T>) -> Result<(), QuorumPlanError> {
    let (home, fallbacks) = (plan.home.len(), plan.fallbacks.len());
    if home > MAX_N as usize || fallbacks > MAX_FALLBACKS_PER_REQUEST {
        return Err(QuorumPlanError::TooManyNodes { home, fallbacks });
    }
    if plan.needed.get() > home {
        return Err(QuorumPlanError::QuorumExceedsReplicas {
            needed: plan.needed.get(),
            replicas: home,
        });
    }
    let nodes: Vec<&T> = plan.home.iter().chain(&plan.fallbacks).collect();
    for (i, node) in nodes.iter().enumerate() {
        if nodes[..i].contains(node) {
            return Err(QuorumPlanError::DuplicateNode);
        }
    }
    Ok(())
}
