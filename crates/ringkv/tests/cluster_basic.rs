//! Formation, round trips and many keys through a real cluster of `ringkv server` processes.

mod common;

use std::collections::BTreeSet;

use std::time::Duration;

use common::{Api, Cluster, Rng, poll_until, seed_from_env_or_clock};

/// Every node's `/status` lists all members `up`, with the cluster's N and Q, and the
/// members' `partitions_owned` add up to Q.
async fn assert_formed(c: &Cluster, n: u64, q: u64) {
    let ids: BTreeSet<String> = (0..c.len()).map(|i| c.id(i).to_string()).collect();
    for i in 0..c.len() {
        let s = c.status(i).await;
        assert_eq!(s["node_id"], c.id(i), "{s}");
        assert_eq!(s["cluster"]["n"].as_u64(), Some(n), "N on {}: {s}", c.id(i));
        assert_eq!(
            s["cluster"]["partitions"].as_u64(),
            Some(q),
            "Q on {}: {s}",
            c.id(i)
        );
        let members = s["cluster"]["members"].as_array().expect("members");
        let listed: BTreeSet<String> = members
            .iter()
            .map(|m| m["node_id"].as_str().expect("node_id").to_string())
            .collect();
        assert_eq!(listed, ids, "members on {}", c.id(i));
        let mut owned = 0;
        for m in members {
            assert_eq!(m["status"], "up", "member on {}: {m}", c.id(i));
            assert!(
                m["listen"].as_str().is_some_and(|l| !l.is_empty()),
                "member without listen address on {}: {m}",
                c.id(i)
            );
            assert!(
                m["http"].as_str().is_some_and(|h| !h.is_empty()),
                "member without http address on {}: {m}",
                c.id(i)
            );
            let p = m["partitions_owned"].as_u64().expect("partitions_owned");
            assert!(p > 0, "a member owns no partition on {}: {m}", c.id(i));
            owned += p;
        }
        assert_eq!(
            owned,
            q,
            "partitions_owned must sum to Q on {}: {s}",
            c.id(i)
        );
    }
}

async fn round_trip(c: &Cluster) {
    let key = b"round-trip";
    let put = c.put(0, key, b"v1", None, "").await;
    assert_eq!(put.status, 204, "{put:?}");
    assert!(
        put.ctx.as_deref().is_some_and(|x| !x.is_empty()),
        "PUT must answer X-Context: {put:?}"
    );
    for i in 0..c.len() {
        let got = c.get(i, key, "").await;
        assert_eq!(got.status, 200, "GET via {}: {got:?}", c.id(i));
        assert_eq!(got.body, b"v1");
        assert!(got.ctx.is_some(), "GET 200 must carry X-Context");
    }
    let got = c.get(1, key, "").await;
    let del = c.delete(1, key, got.ctx.as_deref(), "").await;
    assert_eq!(del.status, 204, "{del:?}");
    assert!(del.ctx.is_some(), "DELETE must answer X-Context");
    for i in 0..c.len() {
        let got = c.get(i, key, "").await;
        assert_eq!(got.status, 404, "GET via {} after delete: {got:?}", c.id(i));
    }
    let never = c.get(0, b"never-written", "").await;
    assert_eq!(never.status, 404, "{never:?}");
}

/// Writes `count` keys, each through a node chosen by a seeded RNG, then reads every key
/// through every node.
async fn many_keys(c: &Cluster, count: usize, test: &str) {
    let seed = seed_from_env_or_clock(test);
    let mut rng = Rng::new(seed);
    let writes: Vec<(usize, Vec<u8>, Vec<u8>)> = (0..count)
        .map(|k| {
            let node = rng.below(c.len());
            let len = rng.below(200);
            (node, format!("key-{k}").into_bytes(), rng.bytes(len))
        })
        .collect();
    let api = c.api();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in writes.chunks(count.div_ceil(16)) {
        let (api, chunk) = (api.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for (node, key, value) in chunk {
                let put = api.put(node, &key, &value, None, "").await;
                assert_eq!(
                    put.status,
                    204,
                    "PUT {} via {}: {put:?}",
                    String::from_utf8_lossy(&key),
                    api.id(node)
                );
            }
        });
    }
    tasks.join_all().await;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in writes.chunks(count.div_ceil(16)) {
        let (api, chunk): (Api, _) = (api.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for (_, key, value) in chunk {
                for i in 0..api.len() {
                    let got = api.get(i, &key, "").await;
                    assert_eq!(
                        got.status,
                        200,
                        "GET {} via {}: {got:?}",
                        String::from_utf8_lossy(&key),
                        api.id(i)
                    );
                    assert_eq!(
                        got.body,
                        value,
                        "GET {} via {}",
                        String::from_utf8_lossy(&key),
                        api.id(i)
                    );
                }
            }
        });
    }
    tasks.join_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_round_trip_and_serve_1000_keys_from_every_node() {
    let c = Cluster::start_with(3, &["--partitions", "256"]).await;
    assert_formed(&c, 3, 256).await;
    round_trip(&c).await;
    many_keys(&c, 1000, "three_nodes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_form_round_trip_and_serve_200_keys_from_every_node() {
    let c = Cluster::start(5).await;
    assert_formed(&c, 3, 1024).await;
    round_trip(&c).await;
    many_keys(&c, 200, "five_nodes").await;
}

/// Once a cluster has formed (every view lists every node `up`), no live node is reported
/// `down` afterwards: the failure detector must not flap on a healthy, idle cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn formed_cluster_members_stay_up() {
    let c = Cluster::launch(3, &[]).await;
    c.wait_formed().await;
    let started = std::time::Instant::now();
    let mut polls = 0;
    while started.elapsed() < std::time::Duration::from_secs(5) {
        for i in 0..c.len() {
            let s = c.status(i).await;
            for m in s["cluster"]["members"].as_array().expect("members") {
                assert_eq!(
                    m["status"],
                    "up",
                    "{:.1?} after forming, {} reports {m} (poll {polls})",
                    started.elapsed(),
                    c.id(i)
                );
            }
        }
        polls += 1;
        tokio::time::sleep(common::POLL_INTERVAL).await;
    }
}

/// Repair, hint and handoff counters are on `/metrics` from the start: one that has not
/// counted yet shows 0, not nothing (a dashboard or alert must not read "no data" as "none").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_repair_hint_and_handoff_counters_before_their_first_event() {
    let c = Cluster::start_with(3, &[]).await;
    let metrics = c.get_path(2, "/metrics").await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let text = String::from_utf8_lossy(&metrics.body);
    for name in [
        "ringkv_anti_entropy_keys_repaired_total",
        "ringkv_read_repairs_total",
        "ringkv_hints_delivered_total",
        "ringkv_hints_refused_total",
        "ringkv_handoff_bytes_sent_total",
        "ringkv_handoff_keys_dropped_total",
        "ringkv_tombstones_purged_total",
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(value.is_some(), "{name} is not on /metrics:\n{text}");
    }
}

/// Each node's journal fsyncs show on `/metrics`: a write is acknowledged only once durable
/// on W replicas, so after acknowledged writes every replica has timed at least one fsync, and
/// each fsync made at least one append durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journal_fsyncs_are_timed_and_counted_on_metrics() {
    let c = Cluster::start_with(3, &[]).await;
    for i in 0..5 {
        let key = format!("synced-{i}");
        let put = c.put(i % 3, key.as_bytes(), b"v", None, "").await;
        assert_eq!(put.status, 204, "{put:?}");
    }
    for node in 0..3 {
        poll_until(Duration::from_secs(10), "fsyncs on /metrics", || async {
            (c.metric(node, "ringkv_storage_fsync_duration_seconds_count")
                .await
                >= 1.0)
                .then_some(())
        })
        .await;
        let fsyncs = c.metric(node, "ringkv_storage_fsync_batches_count").await;
        let appends = c.metric(node, "ringkv_storage_fsync_batches_sum").await;
        assert!(fsyncs >= 1.0, "node {node}: {fsyncs} fsyncs");
        assert!(
            appends >= fsyncs,
            "node {node}: {appends} appends in {fsyncs} fsyncs"
        );
        let seconds = c
            .metric(node, "ringkv_storage_fsync_duration_seconds_sum")
            .await;
        assert!(seconds > 0.0, "node {node}: fsyncs took {seconds} s");
    }
}

/// Each node's read cache shows on `/metrics`: reads of a key fill it on every replica and
/// then hit, and `--read-cache-bytes` sets its budget (0 turns it off: nothing is held or hit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_read_cache_reports_hits_misses_and_size_on_metrics() {
    let budget = 1 << 20;
    let c = Cluster::launch_each(
        &[
            &["--read-cache-bytes", "1048576"],
            &["--read-cache-bytes", "1048576"],
            &["--read-cache-bytes", "0"],
        ],
        &[],
    )
    .await;
    c.wait_formed().await;
    c.wait_settled().await;
    let put = c.put(0, b"cached", b"v1", None, "").await;
    assert_eq!(put.status, 204, "{put:?}");
    // With N = 3 on three nodes and the default fanout, every GET reads every replica. The
    // write filled the caches (write-through), so these reads hit.
    for _ in 0..3 {
        let got = c.get(0, b"cached", "").await;
        assert_eq!(got.values(), vec![b"v1".to_vec()], "{got:?}");
    }
    // A key never written misses once on every replica, then its absence is cached.
    for _ in 0..2 {
        let absent = c.get(0, b"never-written", "").await;
        assert_eq!(absent.status, 404, "{absent:?}");
    }
    for node in 0..2 {
        poll_until(Duration::from_secs(10), "the cache to hit", || async {
            (c.metric(node, "ringkv_read_cache_hits_total").await >= 1.0).then_some(())
        })
        .await;
        assert!(c.metric(node, "ringkv_read_cache_misses_total").await >= 1.0);
        assert!(c.metric(node, "ringkv_read_cache_entries").await >= 1.0);
        assert!(c.metric(node, "ringkv_read_cache_bytes").await > 0.0);
        assert_eq!(
            c.metric(node, "ringkv_read_cache_budget_bytes").await,
            budget as f64
        );
    }
    // Node 2 served the same reads without a cache.
    poll_until(
        Duration::from_secs(10),
        "node 2's reads to count",
        || async { (c.metric(2, "ringkv_read_cache_misses_total").await >= 1.0).then_some(()) },
    )
    .await;
    assert_eq!(c.metric(2, "ringkv_read_cache_hits_total").await, 0.0);
    assert_eq!(c.metric(2, "ringkv_read_cache_entries").await, 0.0);
    assert_eq!(c.metric(2, "ringkv_read_cache_budget_bytes").await, 0.0);
    // A write through another node keeps the cached entries current.
    let ctx = c.get(0, b"cached", "").await.ctx;
    let put = c.put(1, b"cached", b"v2", ctx.as_deref(), "").await;
    assert_eq!(put.status, 204, "{put:?}");
    // What each replica itself serves (through its cache) moves to v2.
    for node in 0..3 {
        poll_until(
            Duration::from_secs(10),
            "every replica to serve v2",
            || async {
                (c.local(node, b"cached").await == Some(vec![Some(b"v2".to_vec())])).then_some(())
            },
        )
        .await;
    }
}

/// A restart leaves the node's previous gossip generation behind as a dead node; gossip
/// forgets it after the dead-node grace (shortened here to 10 s: long enough that the old
/// generation is still there when the new one appears unless the restart takes longer),
/// so restarts, a crash loop's included, do not pile up in every gossip message. The
/// restarted node stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_nodes_old_gossip_generation_is_forgotten_after_the_grace() {
    let mut c = Cluster::start_with(3, &["--test-dead-node-grace-ms", "10000"]).await;
    const STATES: &str = "ringkv_gossip_node_states";
    poll_until(Duration::from_secs(10), "three gossip states", || async {
        (c.metric(0, STATES).await == 3.0).then_some(())
    })
    .await;
    c.kill(2);
    c.restart(2).await;
    poll_until(
        Duration::from_secs(10),
        "the new generation beside the old",
        || async { (c.metric(0, STATES).await >= 4.0).then_some(()) },
    )
    .await;
    poll_until(
        Duration::from_secs(60),
        "the old generation to be forgotten",
        || async { (c.metric(0, STATES).await == 3.0).then_some(()) },
    )
    .await;
    c.wait_status(0, 2, "up").await;
    c.assert_serves_with(2, "after-restart", "w=3", "r=3").await;
}
