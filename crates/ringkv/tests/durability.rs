//! Durability: every write a node acknowledged survives SIGKILL of that node; SIGTERM stops a
//! node cleanly (exit status 0) with its data.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Cluster, poll_until};
use ringkv_core::context::Context;

/// Concurrent writers through the node that is killed.
const WRITERS: usize = 8;
/// Acknowledged writes before the kill.
const ACKED_BEFORE_KILL: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let victim = 2;
    let epoch_before = epoch_of(&c, victim, "epoch-before-kill").await;
    // The other nodes are paused, so every acknowledgement below is the victim's own fsync: a
    // coordinator sends to its replicas while its own fsync runs, and with them running a W=1
    // write could be acknowledged by a replica's copy first.
    let others: Vec<usize> = (0..c.len()).filter(|&i| i != victim).collect();
    for &i in &others {
        c.stop(i);
    }
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (api, acked, stop) = (c.api(), acked.clone(), stop.clone());
        writers.spawn(async move {
            let mut mine = Vec::new();
            for seq in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("durable-{w}-{seq}").into_bytes();
                let value = format!("value-{w}-{seq}-{}", "x".repeat(seq % 100)).into_bytes();
                // W=1 through the victim: its own acknowledgement is what answers 204.
                match api.try_put(victim, &key, &value, "w=1").await {
                    Ok(r) if r.status == 204 => {
                        mine.push((key, value));
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    // A refused or broken request was not acknowledged; once the node is
                    // gone every further one fails, so stop.
                    Ok(_) | Err(_) => break,
                }
            }
            mine
        });
    }
    poll_until(
        Duration::from_secs(60),
        "writes to be acknowledged",
        || async { (acked.load(Ordering::Relaxed) >= ACKED_BEFORE_KILL).then_some(()) },
    )
    .await;
    c.kill(victim);
    stop.store(true, Ordering::Relaxed);
    let acknowledged: Vec<(Vec<u8>, Vec<u8>)> =
        writers.join_all().await.into_iter().flatten().collect();
    assert!(acknowledged.len() >= ACKED_BEFORE_KILL);
    for &i in &others {
        c.cont(i);
    }
    c.restart(victim).await;
    let mut lost = Vec::new();
    for (key, value) in &acknowledged {
        if !c.local_has(victim, key, value).await {
            lost.push(String::from_utf8_lossy(key).into_owned());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost by SIGKILL: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(20)]
    );
    // And the restarted node rejoins as the same member.
    c.wait_status(0, victim, "up").await;
    // Every node, the restarted one included, sees every other up again.
    c.wait_formed().await;
    // A crash may lose writes the victim sent out before its own fsync, so it must never
    // issue their dots again: it counts under a new epoch.
    let epoch_after = epoch_of(&c, victim, "epoch-after-kill").await;
    assert_ne!(
        epoch_before,
        epoch_after,
        "{} kept epoch {epoch_before} over SIGKILL",
        c.id(victim)
    );
    c.assert_serves_with(victim, "after-kill", "w=3", "r=3")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_exits_zero_promptly_and_keeps_the_data() {
    let mut c = Cluster::start(3).await;
    let victim = 1;
    let keys: Vec<Vec<u8>> = (0..50).map(|k| format!("term-{k}").into_bytes()).collect();
    for key in &keys {
        let put = c.put(victim, key, key, None, "w=1").await;
        assert_eq!(put.status, 204, "{put:?}");
    }
    let epoch_before = epoch_of(&c, victim, "epoch-before-term").await;
    let status = c.terminate(victim, Duration::from_secs(5));
    let status = status.expect("SIGTERM must stop the node within 5 s");
    assert!(
        status.success(),
        "SIGTERM must exit with status 0, got {status}"
    );
    c.restart(victim).await;
    for key in &keys {
        assert!(
            c.local_has(victim, key, key).await,
            "{} lost {} over a clean restart",
            c.id(victim),
            String::from_utf8_lossy(key)
        );
    }
    c.wait_status(0, victim, "up").await;
    // Every node, the restarted one included, sees every other up again.
    c.wait_formed().await;
    // A clean stop keeps the node's replica id: no new actor in every key's version vector.
    let epoch_after = epoch_of(&c, victim, "epoch-after-term").await;
    assert_eq!(
        epoch_before,
        epoch_after,
        "{} changed epoch over a clean stop",
        c.id(victim)
    );
    c.assert_serves_with(victim, "after-term", "w=3", "r=3")
        .await;
}

/// The epoch under which node `i` counts its writes now: it coordinates a fresh write of `key`,
/// and the context read back names exactly one replica of that node.
async fn epoch_of(c: &Cluster, i: usize, key: &str) -> u32 {
    let put = c.put(i, key.as_bytes(), b"v", None, "w=3").await;
    assert_eq!(put.status, 204, "{put:?}");
    let got = c.get(i, key.as_bytes(), "r=3").await;
    let token = got
        .ctx
        .as_deref()
        .expect("a read of a written key has a context");
    let context = Context::decode(token).expect("the node's context parses");
    let epochs: Vec<u32> = context
        .vector()
        .entries()
        .map(|(replica, _)| replica)
        .chain(context.dots().iter().map(|d| &d.replica))
        .filter(|replica| replica.node().as_str() == c.id(i))
        .map(|replica| replica.epoch())
        .collect();
    assert_eq!(
        epochs.len(),
        1,
        "one write by {} names one replica of it: {epochs:?}",
        c.id(i)
    );
    epochs[0]
}
