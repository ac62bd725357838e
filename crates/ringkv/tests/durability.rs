//! Durability: every write a node acknowledged survives SIGKILL of that node; SIGTERM stops a
//! node cleanly (exit status 0) with its data.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Cluster, poll_until};

/// Concurrent writers through the node that is killed.
const WRITERS: usize = 8;
/// Acknowledged writes before the kill.
const ACKED_BEFORE_KILL: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let victim = 2;
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
    c.assert_serves_with(victim, "after-term", "w=3", "r=3")
        .await;
}
