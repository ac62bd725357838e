//! Tombstone purge on causal stability, through real processes: a tombstone every home
//! replica holds is purged once stable for the grace period; a write made after the purge is
//! never covered by a context a client kept from before the delete; and nothing is purged
//! while a member is down.

mod common;

use std::time::Duration;

use common::Cluster;
use tokio::time::Instant;

/// Fast anti-entropy and a short grace, so purges happen within the test.
const FLAGS: &[&str] = &[
    "--anti-entropy-interval-ms",
    "200",
    "--tombstone-grace-ms",
    "600",
];
const PURGE_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// Writes `key` through node 0 with W=3, deletes it with the context a GET gave, and returns
/// that context (what a client could keep for a long time).
async fn write_then_delete(c: &Cluster, key: &[u8]) -> String {
    let put = c.put(0, key, b"before", None, "w=3").await;
    assert_eq!(put.status, 204, "{put:?}");
    let got = c.get(0, key, "r=3").await;
    assert_eq!(got.status, 200, "{got:?}");
    let ctx = got.ctx.expect("a GET 200 answers X-Context");
    let del = c.delete(0, key, Some(&ctx), "w=3").await;
    assert_eq!(del.status, 204, "{del:?}");
    ctx
}

/// Sum of a `/status` tombstone counter over the given nodes.
async fn tombstone_counter(c: &Cluster, nodes: &[usize], field: &str) -> u64 {
    let mut sum = 0;
    for &i in nodes {
        if let Some(s) = c.try_status(i).await {
            sum += s["tombstones"][field].as_u64().unwrap_or(0);
        }
    }
    sum
}

/// Polls until no node of `nodes` holds anything for any of `keys`.
async fn wait_purged(c: &Cluster, nodes: &[usize], keys: &[Vec<u8>]) {
    let deadline = Instant::now() + PURGE_DEADLINE;
    loop {
        let mut held = Vec::new();
        for key in keys {
            for &i in nodes {
                if let Some(versions) = c.local(i, key).await {
                    held.push(format!(
                        "{} holds {:?}: {versions:?}",
                        c.id(i),
                        String::from_utf8_lossy(key)
                    ));
                }
            }
        }
        if held.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tombstones not purged within {PURGE_DEADLINE:?}: {held:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stable_tombstone_is_purged_and_old_contexts_never_cover_later_writes() {
    let c = Cluster::start_with(3, FLAGS).await;
    let kept = c.put(1, b"kept", b"alive", None, "w=3").await;
    assert_eq!(kept.status, 204, "{kept:?}");
    let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("gone-{i}").into_bytes()).collect();
    let mut old_contexts = Vec::new();
    for key in &keys {
        old_contexts.push(write_then_delete(&c, key).await);
    }

    // Right after the last delete every replica holds its tombstone (the grace has not
    // passed yet).
    let last = keys.last().unwrap();
    for i in 0..3 {
        assert_eq!(c.local(i, last).await, Some(vec![None]), "on {}", c.id(i));
    }
    wait_purged(&c, &[0, 1, 2], &keys).await;
    let purged = tombstone_counter(&c, &[0, 1, 2], "purged").await;
    assert!(
        purged >= 60,
        "20 keys x 3 replicas purged, /status says {purged}"
    );
    let floor = c.status(0).await["tombstones"]["dot_floor"]
        .as_u64()
        .unwrap();
    assert!(
        floor >= 1,
        "node 0 coordinated the writes, its dot floor is {floor}"
    );
    let metrics = c.get_path(0, "/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("ringkv_tombstones_purged_total"),
        "/metrics has the purge counter"
    );

    // Live data is untouched, and a purged key reads as absent.
    for i in 0..3 {
        assert!(
            c.local_has(i, b"kept", b"alive").await,
            "kept on {}",
            c.id(i)
        );
        let got = c.get(i, &keys[0], "r=3").await;
        assert_eq!(got.status, 404, "purged key via {}: {got:?}", c.id(i));
    }

    // A new write on a purged key, then a write with a context kept from before the
    // delete: the old context must not cover (and so silently replace) the new write.
    for (key, old) in keys.iter().zip(&old_contexts).take(5) {
        let fresh = c.put(0, key, b"after-purge", None, "w=3").await;
        assert_eq!(fresh.status, 204, "{fresh:?}");
        let stale = c.put(0, key, b"stale-context", Some(old), "w=3").await;
        assert_eq!(stale.status, 204, "{stale:?}");
        let got = c.get(2, key, "r=3").await;
        assert_eq!(
            got.siblings(),
            vec![b"after-purge".to_vec(), b"stale-context".to_vec()],
            "{}: {got:?}",
            String::from_utf8_lossy(key)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_purged_while_a_member_is_down() {
    let mut c = Cluster::start_with(3, FLAGS).await;
    c.kill(2);
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("held-{i}").into_bytes()).collect();
    for key in &keys {
        let put = c.put(0, key, b"v", None, "w=2").await;
        assert_eq!(put.status, 204, "{put:?}");
        let got = c.get(0, key, "r=2").await;
        let ctx = got.ctx.expect("a GET 200 answers X-Context");
        let del = c.delete(1, key, Some(&ctx), "w=2").await;
        assert_eq!(del.status, 204, "{del:?}");
    }
    // Wait until the purge leaders found ripe tombstones and refused to purge them.
    let deadline = Instant::now() + PURGE_DEADLINE;
    while tombstone_counter(&c, &[0, 1], "purges_deferred").await == 0 {
        assert!(Instant::now() < deadline, "no purge was ever considered");
        tokio::time::sleep(POLL).await;
    }
    for key in &keys {
        for i in [0, 1] {
            assert_eq!(
                c.local(i, key).await,
                Some(vec![None]),
                "{} keeps the tombstone of {} while n3 is down",
                c.id(i),
                String::from_utf8_lossy(key)
            );
        }
    }
    assert_eq!(tombstone_counter(&c, &[0, 1], "purged").await, 0);

    // Back up: anti-entropy gives it the tombstones, then they are purged everywhere.
    c.restart(2).await;
    wait_purged(&c, &[0, 1, 2], &keys).await;
    for key in &keys {
        assert_eq!(c.get(2, key, "r=3").await.status, 404);
    }
}
