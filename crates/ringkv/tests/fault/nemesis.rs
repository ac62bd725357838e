//! Faults, injected one (or, mixed, two) at a time, held for a while and healed.

use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::{Rng, poll_until};

/// Deadline for a wiped node to complete its anti-entropy refill passes after it restarted.
pub const REFILL_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for a leave, or the rejoin after it, to complete once the network is healed.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(90);
/// Full anti-entropy passes a wiped node must complete (with every peer up) before another
/// fault: two passes visit each of its partitions with both other home replicas.
const REFILL_PASSES: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A random minority (1 or 2 nodes) cut off from the majority.
    PartitionMajority,
    /// The nodes shuffled and cut at a random point: two random halves of any sizes.
    PartitionHalves,
    /// Two halves joined only through one node that sees both (not transitive).
    PartitionBridge,
    /// SIGKILL one or two nodes, then restart them.
    Kill,
    /// SIGSTOP one or two nodes, then SIGCONT.
    Pause,
    /// SIGKILL one node, wipe its data dir, restart it empty.
    Wipe,
    /// Ask one node to leave (its partitions are handed over under the other faults); at heal,
    /// once it has left, wipe it and start it again: it joins as a new member.
    LeaveRejoin,
}

impl Fault {
    pub const ALL: &[Fault] = &[
        Fault::PartitionMajority,
        Fault::PartitionHalves,
        Fault::PartitionBridge,
        Fault::Kill,
        Fault::Pause,
        Fault::Wipe,
    ];

    fn is_partition(self) -> bool {
        matches!(
            self,
            Fault::PartitionMajority | Fault::PartitionHalves | Fault::PartitionBridge
        )
    }
}

/// What is currently broken, so it can be healed.
#[derive(Debug, Default)]
pub struct Active {
    pub killed: Vec<usize>,
    pub wiped: Vec<usize>,
    pub paused: Vec<usize>,
    pub partitioned: bool,
    /// A node asked to leave, to rejoin at heal.
    pub left: Option<usize>,
}

fn shuffled(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

fn cut_between(a: &[usize], b: &[usize]) -> Vec<(usize, usize)> {
    a.iter()
        .flat_map(|&x| b.iter().map(move |&y| (x, y)))
        .collect()
}

fn names(c: &Cluster, nodes: &[usize]) -> String {
    let v: Vec<&str> = nodes.iter().map(|&i| c.id(i)).collect();
    format!("{{{}}}", v.join(","))
}

/// Injects `fault` on top of `active` (nodes already down are not chosen again); returns a
/// description.
pub async fn inject(c: &mut Cluster, rng: &mut Rng, fault: Fault, active: &mut Active) -> String {
    let n = c.len();
    let order = shuffled(rng, n);
    let healthy: Vec<usize> = order
        .iter()
        .copied()
        .filter(|i| !active.killed.contains(i) && !active.paused.contains(i))
        .collect();
    match fault {
        Fault::PartitionMajority => {
            let minority = 1 + rng.below(n.div_ceil(2) - 1);
            let (small, big) = order.split_at(minority);
            c.net.cut(&cut_between(small, big));
            active.partitioned = true;
            format!(
                "partition minority {} | majority {}",
                names(c, small),
                names(c, big)
            )
        }
        Fault::PartitionHalves => {
            let at = 1 + rng.below(n - 1);
            let (a, b) = order.split_at(at);
            c.net.cut(&cut_between(a, b));
            active.partitioned = true;
            format!("partition halves {} | {}", names(c, a), names(c, b))
        }
        Fault::PartitionBridge => {
            let bridge = order[0];
            let rest = &order[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            c.net.cut(&cut_between(a, b));
            active.partitioned = true;
            format!(
                "partition bridge {} | {} | {}",
                names(c, a),
                c.id(bridge),
                names(c, b)
            )
        }
        Fault::LeaveRejoin => {
            let Some((&leaver, asked)) = healthy.split_first() else {
                return "leave skipped: no healthy node".into();
            };
            let asked = asked.first().copied().unwrap_or(leaver);
            let url = format!("{}/admin/leave?node={}", c.url(asked), c.id(leaver));
            match c.client.post(&url).send().await {
                Ok(r) if r.status().as_u16() == 202 => {
                    active.left = Some(leaver);
                    format!("leave {} (asked {})", c.id(leaver), c.id(asked))
                }
                Ok(r) => format!("leave {} not taken: {}", c.id(leaver), r.status()),
                Err(e) => format!("leave {} not taken: {e}", c.id(leaver)),
            }
        }
        Fault::Kill | Fault::Pause | Fault::Wipe => {
            let count = if fault == Fault::Wipe {
                1
            } else {
                1 + rng.below(2)
            };
            let chosen: Vec<usize> = healthy.into_iter().take(count).collect();
            for &i in &chosen {
                match fault {
                    Fault::Kill => {
                        c.kill(i);
                        active.killed.push(i);
                    }
                    Fault::Pause => {
                        c.pause(i);
                        active.paused.push(i);
                    }
                    _ => {
                        c.kill_and_wipe(i);
                        active.wiped.push(i);
                    }
                }
            }
            let verb = match fault {
                Fault::Kill => "SIGKILL",
                Fault::Pause => "SIGSTOP",
                _ => "SIGKILL + wipe",
            };
            format!("{verb} {}", names(c, &chosen))
        }
    }
}

/// Heals everything in `active`: network rules flushed, paused nodes continued, killed and
/// wiped nodes restarted. A wiped node must then refill (`REFILL_PASSES` anti-entropy passes
/// with every peer up) before this returns; an error says it did not within `REFILL_TIMEOUT`.
pub async fn heal(c: &mut Cluster, active: &mut Active) -> Result<(), String> {
    if active.partitioned {
        c.net.heal();
        active.partitioned = false;
    }
    for i in std::mem::take(&mut active.paused) {
        c.resume(i);
    }
    for i in std::mem::take(&mut active.killed) {
        c.restart(i).await;
    }
    let wiped = std::mem::take(&mut active.wiped);
    for &i in &wiped {
        c.restart(i).await;
    }
    for i in wiped {
        wait_refilled(c, i).await?;
    }
    if let Some(i) = active.left.take() {
        rejoin(c, i).await?;
    }
    Ok(())
}

/// Waits until node `i` has left (it owns nothing and no transition is open), then wipes it
/// and starts it again, and waits until it has joined back and every node is up.
async fn rejoin(c: &mut Cluster, i: usize) -> Result<(), String> {
    let started = Instant::now();
    let what = format!("{} to leave", c.id(i));
    poll_until(MEMBERSHIP_TIMEOUT, &what, || async {
        let s = c.status(i).await?;
        (s["handoff"]["left"] == true && s["cluster"]["transition"].is_null()).then_some(())
    })
    .await?;
    c.kill_and_wipe(i);
    c.restart(i).await;
    let what = format!("{} to join again", c.id(i));
    poll_until(MEMBERSHIP_TIMEOUT, &what, || async {
        if !c.all_up().await {
            return None;
        }
        for j in 0..c.len() {
            if !c.status(j).await?["cluster"]["transition"].is_null() {
                return None;
            }
        }
        Some(())
    })
    .await?;
    eprintln!(
        "fault harness: {} left and joined again in {:.1}s",
        c.id(i),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn wait_refilled(c: &Cluster, i: usize) -> Result<(), String> {
    let started = Instant::now();
    poll_until(
        REFILL_TIMEOUT,
        "the wiped node to see every node up",
        || async { c.all_up().await.then_some(()) },
    )
    .await?;
    let passes = |s: serde_json::Value| s["anti_entropy"]["passes"].as_u64();
    let base = poll_until(REFILL_TIMEOUT, "the wiped node's /status", || async {
        c.status(i).await.and_then(passes)
    })
    .await?;
    // `passes` counts passes started: base + 1 is the one in progress now, which may have
    // skipped peers it did not yet see up.
    let target = base + 1 + REFILL_PASSES;
    let what = format!(
        "{} to complete {REFILL_PASSES} anti-entropy passes",
        c.id(i)
    );
    poll_until(REFILL_TIMEOUT, &what, || async {
        c.status(i)
            .await
            .and_then(passes)
            .filter(|p| *p >= target)
            .map(|_| ())
    })
    .await?;
    eprintln!(
        "fault harness: {} refilled after {:.1}s",
        c.id(i),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// UTC time of day, to line the schedule up with the nodes' logs.
fn wall_clock() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// Runs faults from `kinds` one after another for `duration`: inject (in `mixed` mode
/// sometimes two at once), hold 1–3 s, heal, calm 0.5–1.5 s. Returns errors from healing.
pub async fn run_schedule(
    c: &mut Cluster,
    rng: &mut Rng,
    kinds: &[Fault],
    mixed: bool,
    duration: Duration,
    started: Instant,
) -> Vec<String> {
    let mut errors = Vec::new();
    let until = Instant::now() + duration;
    let mut round = 0;
    while Instant::now() < until {
        let mut active = Active::default();
        // A membership change is slow to complete: make sure a short run has one.
        let first = if round == 0 && kinds.contains(&Fault::LeaveRejoin) {
            Fault::LeaveRejoin
        } else {
            kinds[rng.below(kinds.len())]
        };
        round += 1;
        let mut what = vec![inject(c, rng, first, &mut active).await];
        if mixed && rng.below(3) == 0 {
            // A second fault of another family; wipes stay alone.
            let second = kinds[rng.below(kinds.len())];
            if second != Fault::Wipe
                && first != Fault::Wipe
                && second != Fault::LeaveRejoin
                && second.is_partition() != first.is_partition()
                && second != first
            {
                what.push(inject(c, rng, second, &mut active).await);
            }
        }
        let hold = Duration::from_millis(1000 + rng.below(2000) as u64);
        eprintln!(
            "fault harness: {:>7.3}s ({}) {} for {:.1}s",
            started.elapsed().as_secs_f64(),
            wall_clock(),
            what.join(" + "),
            hold.as_secs_f64()
        );
        tokio::time::sleep(hold).await;
        if let Err(e) = heal(c, &mut active).await {
            errors.push(e);
        }
        eprintln!(
            "fault harness: {:>7.3}s ({}) healed",
            started.elapsed().as_secs_f64(),
            wall_clock()
        );
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000) as u64)).await;
    }
    errors
}
