//! The client against real `ringkv server` processes: round trips, siblings, typed errors,
//! zero-hop routing (observed through the nodes' `ringkv_forwarded_total`), failover to the
//! next home replica, ring refresh after a join, and the shopping cart.

mod common;

use std::time::Duration;

use common::{Cluster, poll_until};
use ringkv_client::cart::{self, CartConfig};
use ringkv_client::{Client, Error, ReadOptions, Routing, WriteOptions};

fn r(r: u8) -> ReadOptions {
    ReadOptions {
        r: Some(r),
        timeout: None,
    }
}

fn w(w: u8) -> WriteOptions {
    WriteOptions {
        w: Some(w),
        timeout: None,
    }
}

async fn connect(cluster: &Cluster) -> Client {
    let urls = cluster.urls();
    let seeds: Vec<&str> = urls.iter().map(String::as_str).collect();
    Client::connect(&seeds).await.expect("connecting")
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_delete_and_siblings_round_trip() {
    let cluster = Cluster::start(3, &["--max-value-bytes", "65536"]).await;
    let client = connect(&cluster).await;
    let dflt = ReadOptions::default();

    // Absent: NotFound without a context.
    assert_eq!(
        client.get(b"never written", dflt).await,
        Err(Error::NotFound { context: None })
    );

    // Put, get, overwrite with the context, get.
    let key = b"round/trip \x00\xff";
    let ctx1 = client
        .put(key, "v1", None, WriteOptions::default())
        .await
        .unwrap();
    let read = client.get(key, dflt).await.unwrap();
    assert_eq!(read.values, ["v1"]);
    let read_ctx = read.context.expect("a read of a value has a context");
    let ctx2 = client
        .put(key, "v2", Some(&read_ctx), WriteOptions::default())
        .await
        .unwrap();
    assert_ne!(ctx1, ctx2);
    let read = client.get(key, r(3)).await.unwrap();
    assert_eq!(read.values, ["v2"], "a write with the context supersedes");

    // Delete: NotFound with the tombstone's context; a write with it supersedes the delete.
    client
        .delete(key, read.context.as_deref(), WriteOptions::default())
        .await
        .unwrap();
    let Err(Error::NotFound {
        context: Some(tomb),
    }) = client.get(key, dflt).await
    else {
        panic!("a deleted key reads as NotFound with the tombstone context");
    };
    client
        .put(key, "v3", Some(&tomb), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(client.get(key, r(3)).await.unwrap().values, ["v3"]);

    // Two writes with the same context: both survive as siblings; their context reconciles.
    let sib = b"siblings";
    let base = client
        .put(sib, "base", None, WriteOptions::default())
        .await
        .unwrap();
    client.put(sib, "left", Some(&base), w(3)).await.unwrap();
    client.put(sib, "right", Some(&base), w(3)).await.unwrap();
    let read = client.get(sib, r(3)).await.unwrap();
    let mut values = read.values.clone();
    values.sort();
    assert_eq!(values, ["left", "right"], "concurrent writes are siblings");
    client
        .put(sib, "merged", read.context.as_deref(), w(3))
        .await
        .unwrap();
    assert_eq!(client.get(sib, r(3)).await.unwrap().values, ["merged"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_typed() {
    let cluster = Cluster::start(3, &["--max-value-bytes", "65536"]).await;
    let client = connect(&cluster).await;

    let bad_r = client.get(b"k", r(5)).await;
    assert!(
        matches!(bad_r, Err(Error::BadRequest { .. })),
        "r=5 > N: {bad_r:?}"
    );
    let bad_w = client.put(b"k", "v", None, w(0)).await;
    assert!(
        matches!(bad_w, Err(Error::BadRequest { .. })),
        "w=0: {bad_w:?}"
    );
    let bad_ctx = client
        .put(b"k", "v", Some("not-a-context"), WriteOptions::default())
        .await;
    assert!(
        matches!(bad_ctx, Err(Error::BadRequest { .. })),
        "a garbage context: {bad_ctx:?}"
    );
    let big = client
        .put(b"k", vec![7u8; 70_000], None, WriteOptions::default())
        .await;
    assert!(
        matches!(big, Err(Error::TooLarge { .. })),
        "a value over --max-value-bytes: {big:?}"
    );
    let long_key = vec![b'k'; 5000];
    let long = client.get(&long_key, ReadOptions::default()).await;
    assert!(
        matches!(long, Err(Error::TooLarge { .. })),
        "a key over 4096 bytes: {long:?}"
    );

    // A client whose seeds are all dead cannot connect, and says so.
    let dead = Client::connect(&["http://127.0.0.1:1"]).await;
    assert!(matches!(dead, Err(Error::Transport(_))), "{dead:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quorum_failures_are_unavailable_and_say_where_the_write_is() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = connect(&cluster).await;
    // W=3, so the survivor holds it too: with W=2 the third copy may still be in flight (or
    // unread in the survivor's socket) when the others are killed.
    client.put(b"before", "x", None, w(3)).await.unwrap();
    cluster.kill(1);
    cluster.kill(2);

    match client.put(b"after", "y", None, w(3)).await {
        Err(Error::Unavailable {
            stored_on: Some(n),
            message,
        }) => assert!(n < 3, "stored on {n} of 3 with two nodes dead: {message}"),
        other => panic!("w=3 with two of three nodes dead: {other:?}"),
    }
    match client.get(b"before", r(3)).await {
        Err(Error::Unavailable {
            stored_on: None, ..
        }) => {}
        other => panic!("r=3 with two of three nodes dead: {other:?}"),
    }
    // R=1 is still served by the survivor, whichever node the key prefers.
    assert_eq!(client.get(b"before", r(1)).await.unwrap().values, ["x"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_hop_requests_are_never_forwarded() {
    // N=1: each key has exactly one home replica, so a forwarding hop is observable.
    let cluster = Cluster::start(3, &["--n", "1", "--r", "1", "--w", "1"]).await;
    let zero_hop = connect(&cluster).await;
    let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("zh-{i}").into_bytes()).collect();
    for key in &keys {
        zero_hop
            .put(key, key.clone(), None, WriteOptions::default())
            .await
            .unwrap();
        assert_eq!(
            zero_hop
                .get(key, ReadOptions::default())
                .await
                .unwrap()
                .values,
            std::slice::from_ref(key)
        );
    }
    for i in 0..cluster.len() {
        assert_eq!(
            cluster.forwarded_total(i).await,
            0,
            "{} forwarded a zero-hop request",
            cluster.id(i)
        );
    }
    // The client's idea of the owner is the node that stores the key.
    for key in keys.iter().take(10) {
        assert_eq!(cluster.holders(key).await, zero_hop.home_replicas(key));
    }

    // Routing disabled: everything goes to node 0, which forwards every key it does not own.
    let any_node = Client::builder(&[&cluster.url(0)])
        .routing(Routing::AnyNode)
        .connect()
        .await
        .unwrap();
    let mut foreign = 0;
    for key in &keys {
        any_node.get(key, ReadOptions::default()).await.unwrap();
        if zero_hop.home_replicas(key)[0] != cluster.id(0) {
            foreign += 1;
        }
    }
    assert!(foreign > 0, "100 keys all owned by one of three nodes");
    assert_eq!(
        cluster.forwarded_total(0).await,
        foreign,
        "node 0 forwards exactly the keys it does not own"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_home_replica_fails_over_to_the_next() {
    let mut cluster = Cluster::start(3, &[]).await;
    // Only node 0 as a seed: after it dies, refreshes must use the members from the ring.
    let client = Client::connect(&[&cluster.url(0)]).await.unwrap();
    let victim = cluster.id(0).to_string();
    let keys: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("fo-{i}").into_bytes())
        .filter(|k| client.home_replicas(k)[0] == victim)
        .take(20)
        .collect();
    assert_eq!(keys.len(), 20, "n1 is the first home replica of some keys");
    for key in &keys {
        client
            .put(key, "before", None, WriteOptions::default())
            .await
            .unwrap();
    }
    cluster.kill(0);
    for key in &keys {
        let read = client.get(key, ReadOptions::default()).await.unwrap();
        assert_eq!(read.values, ["before"]);
        client
            .put(
                key,
                "after",
                read.context.as_deref(),
                WriteOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            client
                .get(key, ReadOptions::default())
                .await
                .unwrap()
                .values,
            ["after"]
        );
    }
    let version = client
        .refresh_ring()
        .await
        .expect("the ring is fetched from a surviving member");
    assert!(version > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ring_is_refreshed_after_a_join() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = Client::builder(&[&cluster.url(0)])
        .refresh_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let before = client.ring_version();
    assert_eq!(before, cluster.ring_version(0).await);
    cluster.add_node().await;
    let after = cluster.ring_version(0).await;
    assert!(after > before, "a join moves the ring version");
    poll_until(
        Duration::from_secs(10),
        "the client to pick up the new ring",
        || async { (client.ring_version() >= after).then_some(()) },
    )
    .await;
    assert!(
        client.member_urls().iter().any(|(id, _)| id == "n4"),
        "the client knows the new member"
    );
    let owned_by_n4 = (0..200)
        .map(|i| format!("join-{i}").into_bytes())
        .find(|k| client.home_replicas(k).contains(&"n4".to_string()))
        .expect("the new member owns some keys");
    client
        .put(&owned_by_n4, "v", None, WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        client
            .get(&owned_by_n4, ReadOptions::default())
            .await
            .unwrap()
            .values,
        ["v"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shopping_cart_loses_no_acknowledged_item() {
    let cluster = Cluster::start(3, &[]).await;
    let clients = cart::clients_for_every_node(&[&cluster.url(0)])
        .await
        .unwrap();
    assert_eq!(clients.len(), 3, "one client pinned to each node");
    let config = CartConfig {
        cart_key: b"cart:alice".to_vec(),
        writers: 6,
        items_per_writer: 8,
        final_read: r(3),
    };
    let report = cart::run(&clients, &config).await.unwrap();
    eprintln!("cart: {report:?}");
    assert!(report.lost.is_empty(), "lost items: {:?}", report.lost);
    assert_eq!(report.indeterminate, 0, "no failures were injected");
    assert_eq!(report.acknowledged, 48);
    assert_eq!(report.final_items, 48);
}
