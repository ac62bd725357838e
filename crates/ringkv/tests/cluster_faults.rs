//! Faults on a real cluster: read repair of a stale replica, failure detection, quorums with a
//! dead or frozen peer, the deadline a slow peer must not stretch, and the quorum read fanout
//! getting past a frozen replica it asked.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Resp, poll_until};

/// The client timeout the quorum tests pass, and the margin allowed on top of it.
const TIMEOUT_MS: u64 = 1000;
const MARGIN: Duration = Duration::from_millis(1500);

/// `stored_on` of a failed write, wherever the body puts it (`error.stored_on` or top level).
fn stored_on(r: &Resp) -> u64 {
    let j = r.json();
    j["error"]["stored_on"]
        .as_u64()
        .or_else(|| j["stored_on"].as_u64())
        .unwrap_or_else(|| panic!("a failed write must say a numeric stored_on: {j}"))
}

fn assert_unavailable(r: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: {r:?}");
    assert_eq!(r.error_code(), "unavailable", "{what}");
    assert!(
        r.json()["error"]["message"].is_string(),
        "{what}: error.message"
    );
}

/// A replica that missed a write (it was dead) gets it from a read with R=3 (read repair).
/// Anti-entropy is slowed to an hour so that only read repair can bring the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_repair_brings_a_stale_replica_up_to_date() {
    let mut c = Cluster::start_with(3, &["--anti-entropy-interval-ms", "3600000"]).await;
    let key = b"repaired";
    let old = c.put(0, key, b"old", None, "w=3").await;
    assert_eq!(old.status, 204, "{old:?}");
    for i in 0..3 {
        assert_eq!(
            c.local(i, key).await,
            Some(vec![Some(b"old".to_vec())]),
            "N=3 on 3 nodes: {} holds the key",
            c.id(i)
        );
    }
    // n3 is down while the key is overwritten with W=2.
    c.kill(2);
    let new = c.put(0, key, b"new", old.ctx.as_deref(), "w=2").await;
    assert_eq!(new.status, 204, "{new:?}");
    c.restart(2).await;
    c.wait_status(0, 2, "up").await;
    assert_read_repairs(&c, key).await;
}

/// The brief's variant with SIGSTOP: n3 is frozen and seen `down` by the others before the
/// W=2 write, so no replica write to it is queued on its socket (with N=3 on 3 nodes there is
/// no fallback either, so no hint). After SIGCONT it is stale until a read with R=3 repairs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_repair_after_a_sigstopped_replica_resumes() {
    let c = Cluster::start_with(3, &["--anti-entropy-interval-ms", "3600000"]).await;
    let key = b"repaired-after-stop";
    let old = c.put(0, key, b"old", None, "w=3").await;
    assert_eq!(old.status, 204, "{old:?}");
    c.stop(2);
    c.wait_status_within(0, 2, "down", Duration::from_secs(10))
        .await;
    c.wait_status_within(1, 2, "down", Duration::from_secs(10))
        .await;
    let new = c.put(0, key, b"new", old.ctx.as_deref(), "w=2").await;
    assert_eq!(new.status, 204, "{new:?}");
    c.cont(2);
    assert_read_repairs(&c, key).await;
}

/// n3 still holds `old` for `key`; a read with R=3 sees that stale reply, answers `new` and
/// repairs n3.
async fn assert_read_repairs(c: &Cluster, key: &[u8]) {
    assert_eq!(
        c.local(2, key).await,
        Some(vec![Some(b"old".to_vec())]),
        "n3 is stale before the read"
    );
    let got = poll_until(
        Duration::from_secs(10),
        "a GET with r=3 to succeed",
        || async {
            let got = c.get(0, key, "r=3").await;
            (got.status == 200).then_some(got)
        },
    )
    .await;
    assert_eq!(got.body, b"new");
    poll_until(
        Duration::from_secs(5),
        "read repair to write the new value to n3",
        || async { (c.local(2, key).await == Some(vec![Some(b"new".to_vec())])).then_some(()) },
    )
    .await;
}

/// A replica frozen (SIGSTOP) during a W=2 write and an R=2 read: both succeed without it, and
/// once it resumes it ends up holding the write (from the replication queued to it or from
/// read repair), so a read with R=3 sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_replica_misses_nothing_after_it_resumes() {
    let c = Cluster::start_with(3, &["--anti-entropy-interval-ms", "3600000"]).await;
    let key = b"frozen";
    c.stop(2);
    let put = c.put(0, key, b"written-while-frozen", None, "w=2").await;
    assert_eq!(
        put.status, 204,
        "W=2 succeeds with one replica frozen: {put:?}"
    );
    let got = c.get(1, key, "r=2").await;
    assert_eq!(
        got.status, 200,
        "R=2 succeeds with one replica frozen: {got:?}"
    );
    assert_eq!(got.body, b"written-while-frozen");
    c.cont(2);
    poll_until(
        Duration::from_secs(10),
        "the resumed replica to hold the write",
        || async {
            c.local_has(2, key, b"written-while-frozen")
                .await
                .then_some(())
        },
    )
    .await;
    let got = c.get(2, key, "r=3").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body, b"written-while-frozen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_is_detected_quorums_hold_and_it_comes_back_up() {
    let mut c = Cluster::start(3).await;
    let key = b"quorum";
    c.kill(2);
    c.wait_status_within(0, 2, "down", Duration::from_secs(10))
        .await;
    c.wait_status_within(1, 2, "down", Duration::from_secs(10))
        .await;
    for i in 0..2 {
        assert_eq!(
            c.member_status(i, i).await.as_deref(),
            Some("up"),
            "{} sees itself up",
            c.id(i)
        );
    }

    let put = c.put(0, key, b"v1", None, "w=2").await;
    assert_eq!(put.status, 204, "W=2 with one of three down: {put:?}");
    let got = c.get(1, key, "r=2").await;
    assert_eq!(got.status, 200, "R=2 with one of three down: {got:?}");
    assert_eq!(got.body, b"v1");

    let started = Instant::now();
    let put3 = c
        .put(
            0,
            key,
            b"v2",
            got.ctx.as_deref(),
            &format!("w=3&timeout_ms={TIMEOUT_MS}"),
        )
        .await;
    let took = started.elapsed();
    assert_unavailable(&put3, "PUT w=3 with a dead replica");
    // The dead replica refuses at once, before the other two can acknowledge: both writes
    // still in flight may land, and are counted.
    let stored = stored_on(&put3);
    assert_eq!(
        stored, 2,
        "stored_on counts the coordinator and the live replica: {put3:?}"
    );
    assert!(
        took < Duration::from_millis(TIMEOUT_MS) + MARGIN,
        "PUT w=3 took {took:?}"
    );

    let started = Instant::now();
    let get3 = c.get(1, key, &format!("r=3&timeout_ms={TIMEOUT_MS}")).await;
    let took = started.elapsed();
    assert_unavailable(&get3, "GET r=3 with a dead replica");
    assert!(
        took < Duration::from_millis(TIMEOUT_MS) + MARGIN,
        "GET r=3 took {took:?}"
    );

    c.restart(2).await;
    c.wait_status(0, 2, "up").await;
    c.wait_status(1, 2, "up").await;
    c.wait_status(2, 0, "up").await;
    c.wait_status(2, 1, "up").await;
}

/// A frozen peer (SIGSTOP: connections accept but nothing answers) costs at most the
/// request's deadline, for writes and reads, through every live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_peer_never_stretches_a_request_past_its_deadline() {
    let c = Cluster::start(3).await;
    let key = b"deadline";
    let put = c.put(0, key, b"v1", None, "w=3").await;
    assert_eq!(put.status, 204, "{put:?}");
    c.stop(2);
    for via in 0..2 {
        let started = Instant::now();
        let put3 = c
            .put(
                via,
                key,
                b"v2",
                None,
                &format!("w=3&timeout_ms={TIMEOUT_MS}"),
            )
            .await;
        let took = started.elapsed();
        assert_unavailable(&put3, "PUT w=3 with a frozen replica");
        // The frozen replica may apply the write once it runs again: it counts too, unless
        // its connection was closed with an error first.
        assert!((2..=3).contains(&stored_on(&put3)), "{put3:?}");
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + MARGIN,
            "PUT w=3 via {} took {took:?}",
            c.id(via)
        );

        let started = Instant::now();
        let get3 = c
            .get(via, key, &format!("r=3&timeout_ms={TIMEOUT_MS}"))
            .await;
        let took = started.elapsed();
        assert_unavailable(&get3, "GET r=3 with a frozen replica");
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + MARGIN,
            "GET r=3 via {} took {took:?}",
            c.id(via)
        );

        let started = Instant::now();
        c.assert_serves_with(via, "frozen-peer", "w=2", "r=2").await;
        assert!(
            started.elapsed() < 2 * (Duration::from_millis(TIMEOUT_MS) + MARGIN),
            "W=2/R=2 with a frozen peer took {:?}",
            started.elapsed()
        );
    }
    c.cont(2);
    c.wait_formed().await;
    c.assert_serves_with(2, "thawed", "w=3", "r=3").await;
}

/// Replica reads served by nodes 1 and 2 so far, and the speculative reads node 0 sent.
async fn read_fanout_counts(c: &Cluster) -> (f64, f64) {
    let served = c.metric(1, "ringkv_replica_reads_total").await
        + c.metric(2, "ringkv_replica_reads_total").await;
    let speculated = c.metric(0, "ringkv_read_speculations_total").await;
    (served, speculated)
}

/// `--read-fanout quorum`: an R=2 read asks its coordinator and one other replica (not all
/// three), and when the one it asked is frozen (SIGSTOP, not yet suspected by the failure
/// detector) it asks the third after `read_speculate_after` instead of waiting out the
/// request's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_fanout_asks_r_replicas_and_gets_past_a_frozen_one() {
    let c = Cluster::start_with(3, &["--read-fanout", "quorum"]).await;
    let keys: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("fanout-{i}").into_bytes())
        .collect();
    for key in &keys {
        let r = c.put(0, key, key, None, "w=3").await;
        assert_eq!(r.status, 204, "{r:?}");
    }
    let (served0, spec0) = read_fanout_counts(&c).await;
    for key in &keys {
        let got = c.get(0, key, "r=2").await;
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(&got.body, key);
    }
    let (served1, spec1) = read_fanout_counts(&c).await;
    let (reads, speculated) = (served1 - served0, spec1 - spec0);
    eprintln!("40 reads: {reads} replica reads served, {speculated} speculative");
    // One remote replica per read, plus one for each read that was slow enough to speculate
    // (a loaded machine); asking every replica would serve 80.
    assert_eq!(reads, 40.0 + speculated, "replica reads served for 40 GETs");
    assert!(
        speculated <= 10.0,
        "{speculated} of 40 reads on an idle cluster speculated"
    );

    // n2 frozen: the reads that asked it go on to n3 within the request's deadline.
    c.stop(1);
    let spec_before = c.metric(0, "ringkv_read_speculations_total").await;
    for key in &keys {
        let got = c.get(0, key, &format!("r=2&timeout_ms={TIMEOUT_MS}")).await;
        assert_eq!(got.status, 200, "read with n2 frozen: {got:?}");
        assert_eq!(&got.body, key);
    }
    let speculated = c.metric(0, "ringkv_read_speculations_total").await - spec_before;
    c.cont(1);
    assert!(
        speculated >= 1.0,
        "no read asked past frozen n2: did any ask it at all?"
    );
}
