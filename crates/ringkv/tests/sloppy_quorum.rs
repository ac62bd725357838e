//! Sloppy quorum and hinted handoff on a real 5-node cluster (N=3): writes succeed while the
//! key's home replicas are dead, fallbacks keep them as hints, and the hints reach the home
//! replicas when they return. `strict=true` refuses what only fallbacks could take.

mod common;

use std::time::Duration;

use common::{Cluster, poll_until};
use md5::{Digest, Md5};

const FLAGS: &[&str] = &[
    "--hint-interval-ms",
    "200",
    "--anti-entropy-interval-ms",
    "3600000",
];

/// The home replicas of `key`, from node 0's `/ring` (MD5 prefix → partition → owners).
async fn home_of(c: &Cluster, key: &[u8]) -> Vec<usize> {
    let ring = c.ring(0).await;
    let q = ring["partitions"].as_u64().expect("partitions") as u32;
    let hash = u128::from_be_bytes(Md5::digest(key).into());
    let partition = if q == 1 {
        0
    } else {
        (hash >> (128 - q.trailing_zeros())) as usize
    };
    ring["table"][partition]["owners"]
        .as_array()
        .expect("owners")
        .iter()
        .map(|o| {
            let id = o.as_str().expect("node id");
            (0..c.len())
                .find(|&i| c.id(i) == id)
                .expect("owner is a member")
        })
        .collect()
}

async fn kill_and_wait_down(c: &mut Cluster, dead: &[usize]) {
    for &i in dead {
        c.kill(i);
    }
    for observer in (0..c.len()).filter(|i| !dead.contains(i)) {
        for &i in dead {
            c.wait_status_within(observer, i, "down", Duration::from_secs(15))
                .await;
        }
    }
}

async fn restart_all(c: &mut Cluster, dead: &[usize]) {
    for &i in dead {
        c.restart(i).await;
    }
    for observer in 0..c.len() {
        for &i in dead {
            c.wait_status(observer, i, "up").await;
        }
    }
}

/// The example: 5 nodes, N=3, W=2, two of a key's three home replicas killed; the
/// PUT still answers 204, the value reads back, and once they return they hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_home_replicas_down_a_write_still_succeeds_and_reaches_them_later() {
    let mut c = Cluster::start_with(5, FLAGS).await;
    let key = b"sloppy-two-down";
    let home = home_of(&c, key).await;
    assert_eq!(home.len(), 3);
    let dead = [home[1], home[2]];
    kill_and_wait_down(&mut c, &dead).await;
    let via = (0..5)
        .find(|i| !dead.contains(i) && *i != home[0])
        .expect("a non-home live node");

    let put = c.put(via, key, b"v1", None, "w=2").await;
    assert_eq!(
        put.status, 204,
        "W=2 with two of three home replicas dead: {put:?}"
    );
    let strict = c
        .put(via, key, b"v2", None, "w=2&strict=true&timeout_ms=1000")
        .await;
    assert_eq!(
        strict.status, 503,
        "strict W=2 cannot be met by one home replica: {strict:?}"
    );
    let got = c.get(via, key, "r=2").await;
    assert!(
        got.values().contains(&b"v1".to_vec()),
        "R=2 reads the hinted write: {got:?}"
    );

    restart_all(&mut c, &dead).await;
    for &i in &dead {
        poll_until(
            Duration::from_secs(20),
            "hinted handoff to a returning home replica",
            || async { c.local_has(i, key, b"v1").await.then_some(()) },
        )
        .await;
    }
}

/// Every home replica of a key dead: a node that is none of them coordinates the write as a
/// fallback, the value reads back through the fallbacks, and reaches the home replicas later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_home_replicas_down_a_fallback_coordinates_the_write() {
    let mut c = Cluster::start_with(5, FLAGS).await;
    let key = b"sloppy-all-down";
    let home = home_of(&c, key).await;
    kill_and_wait_down(&mut c, &home).await;
    let via = (0..5).find(|i| !home.contains(i)).expect("a non-home node");

    let put = c.put(via, key, b"always-writeable", None, "w=2").await;
    assert_eq!(put.status, 204, "W=2 met by fallbacks alone: {put:?}");
    let got = c.get(via, key, "r=2").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body, b"always-writeable");
    // Writing again with the answered context supersedes it, even through the fallbacks.
    let again = c.put(via, key, b"second", put.ctx.as_deref(), "w=2").await;
    assert_eq!(again.status, 204, "{again:?}");

    restart_all(&mut c, &home).await;
    // Two live fallbacks stood in for two of the three home replicas (W=2): those two get the
    // hints; the third is left to read repair (anti-entropy is slowed to an hour here).
    let holds_second = |i: usize| {
        let c = &c;
        async move { c.local(i, key).await == Some(vec![Some(b"second".to_vec())]) }
    };
    poll_until(
        Duration::from_secs(20),
        "hints delivered to two home replicas",
        || async {
            let mut delivered = 0;
            for &i in &home {
                delivered += usize::from(holds_second(i).await);
            }
            (delivered >= 2).then_some(())
        },
    )
    .await;
    let after = c.get(home[0], key, "r=3").await;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.body, b"second");
    for &i in &home {
        poll_until(
            Duration::from_secs(10),
            "read repair of the last home replica",
            || async { holds_second(i).await.then_some(()) },
        )
        .await;
    }
}
