//! Siblings and contexts through a real cluster: concurrent writes with one context survive
//! together, a context-less write never replaces, a PUT with a 300's context reconciles, and a
//! client reusing its own PUT's context never erases another client's write.

mod common;

use common::{Api, Cluster};

/// Writes `initial` and returns the context a GET answers for it.
async fn read_context(c: &Cluster, key: &[u8], initial: &[u8]) -> String {
    let put = c.put(0, key, initial, None, "w=3").await;
    assert_eq!(put.status, 204, "{put:?}");
    let got = c.get(0, key, "r=3").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body, initial);
    got.ctx.expect("GET 200 answers X-Context")
}

/// Two PUTs with the same context, from two tasks at once, through `via_a` and `via_b`.
async fn concurrent_puts(
    c: &Cluster,
    key: &[u8],
    ctx: &str,
    (via_a, a): (usize, &[u8]),
    (via_b, b): (usize, &[u8]),
) {
    let spawn_put = |api: Api, node: usize, value: Vec<u8>| {
        let (key, ctx) = (key.to_vec(), ctx.to_string());
        tokio::spawn(async move { api.put(node, &key, &value, Some(&ctx), "w=3").await })
    };
    let ta = spawn_put(c.api(), via_a, a.to_vec());
    let tb = spawn_put(c.api(), via_b, b.to_vec());
    let (ra, rb) = (ta.await.expect("task a"), tb.await.expect("task b"));
    assert_eq!(ra.status, 204, "PUT a: {ra:?}");
    assert_eq!(rb.status, 204, "PUT b: {rb:?}");
}

/// Every node answers 300 with exactly `expected` as siblings; returns the 300's context.
async fn assert_siblings_everywhere(c: &Cluster, key: &[u8], expected: &[&[u8]]) -> String {
    let mut expected: Vec<Vec<u8>> = expected.iter().map(|v| v.to_vec()).collect();
    expected.sort();
    let mut ctx = None;
    for i in 0..c.len() {
        let got = c.get(i, key, "r=3").await;
        assert_eq!(got.siblings(), expected, "siblings via {}", c.id(i));
        let body_ctx = got.json()["context"]
            .as_str()
            .expect("300 body has a context")
            .to_string();
        assert_eq!(
            got.ctx.as_deref(),
            Some(body_ctx.as_str()),
            "300: X-Context and the body's context agree"
        );
        ctx = Some(body_ctx);
    }
    ctx.expect("at least one node")
}

/// A PUT with the 300's context replaces every sibling: every node then answers 200.
async fn reconcile(c: &Cluster, key: &[u8], ctx: &str, via: usize) {
    let put = c.put(via, key, b"reconciled", Some(ctx), "w=3").await;
    assert_eq!(put.status, 204, "{put:?}");
    for i in 0..c.len() {
        let got = c.get(i, key, "r=3").await;
        assert_eq!(
            got.status,
            200,
            "after reconciling, via {}: {got:?}",
            c.id(i)
        );
        assert_eq!(got.body, b"reconciled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_with_one_context_through_one_node_become_siblings() {
    let c = Cluster::start(3).await;
    let key = b"same-node";
    let ctx = read_context(&c, key, b"v0").await;
    concurrent_puts(&c, key, &ctx, (0, b"a"), (0, b"b")).await;
    let ctx300 = assert_siblings_everywhere(&c, key, &[b"a", b"b"]).await;
    reconcile(&c, key, &ctx300, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_with_one_context_through_two_nodes_become_siblings() {
    let c = Cluster::start(3).await;
    let key = b"two-nodes";
    let ctx = read_context(&c, key, b"v0").await;
    concurrent_puts(&c, key, &ctx, (0, b"a"), (1, b"b")).await;
    let ctx300 = assert_siblings_everywhere(&c, key, &[b"a", b"b"]).await;
    reconcile(&c, key, &ctx300, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_without_context_never_replaces_and_delete_keeps_concurrent_values() {
    let c = Cluster::start(3).await;
    let key = b"blind";
    let first = c.put(0, key, b"x", None, "w=3").await;
    assert_eq!(first.status, 204, "{first:?}");
    // Through the same node and through another one: neither replaces.
    let second = c.put(0, key, b"y", None, "w=3").await;
    assert_eq!(second.status, 204, "{second:?}");
    let third = c.put(1, key, b"z", None, "w=3").await;
    assert_eq!(third.status, 204, "{third:?}");
    let ctx300 = assert_siblings_everywhere(&c, key, &[b"x", b"y", b"z"]).await;
    // A delete with the 300's context removes them all; a write concurrent with it survives.
    let concurrent = c.put(2, key, b"late", None, "w=3").await;
    assert_eq!(concurrent.status, 204, "{concurrent:?}");
    let del = c.delete(0, key, Some(&ctx300), "w=3").await;
    assert_eq!(del.status, 204, "{del:?}");
    for i in 0..c.len() {
        let got = c.get(i, key, "r=3").await;
        assert_eq!(
            got.status,
            200,
            "the write concurrent with the delete survives, via {}: {got:?}",
            c.id(i)
        );
        assert_eq!(got.body, b"late");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reusing_the_context_of_ones_own_put_never_erases_another_clients_write() {
    let c = Cluster::start(3).await;
    let key = b"reuse";
    let read_ctx = read_context(&c, key, b"v0").await;
    // Clients A and B read the same context and both write through node 0.
    let a = c.put(0, key, b"from-a", Some(&read_ctx), "w=3").await;
    assert_eq!(a.status, 204, "{a:?}");
    let b = c.put(0, key, b"from-b", Some(&read_ctx), "w=3").await;
    assert_eq!(b.status, 204, "{b:?}");
    let b_ctx = b.ctx.expect("PUT answers X-Context");
    // B writes again with the context its own PUT answered: that covers B's first write only.
    let b2 = c.put(0, key, b"from-b-again", Some(&b_ctx), "w=3").await;
    assert_eq!(b2.status, 204, "{b2:?}");
    assert_siblings_everywhere(&c, key, &[b"from-a", b"from-b-again"]).await;
    // The same through another node than the one A wrote through.
    let b3 = c
        .put(1, key, b"from-b-third", b2.ctx.as_deref(), "w=3")
        .await;
    assert_eq!(b3.status, 204, "{b3:?}");
    assert_siblings_everywhere(&c, key, &[b"from-a", b"from-b-third"]).await;
}

/// Siblings are bounded: once a key holds `MAX_SIBLINGS` (100) concurrent values, a write
/// that would add another is refused with 413 `too_large` and changes nothing, through any
/// node; a write with the key's context reconciles them and goes through, and the key takes
/// new concurrent writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_past_the_sibling_limit_is_refused_and_a_reconciling_write_goes_through() {
    const LIMIT: usize = ringkv_core::constants::MAX_SIBLINGS;
    let c = Cluster::start(3).await;
    let key = b"many-siblings";
    // A PUT without a context is concurrent with everything stored: one sibling each.
    for i in 0..LIMIT {
        let put = c
            .put(i % 3, key, format!("v{i}").as_bytes(), None, "w=3")
            .await;
        assert_eq!(put.status, 204, "write {i}: {put:?}");
    }
    for node in 0..3 {
        let refused = c.put(node, key, b"one too many", None, "").await;
        assert_eq!(refused.status, 413, "through node {node}: {refused:?}");
        assert_eq!(refused.error_code(), "too_large", "{refused:?}");
    }
    let got = c.get(1, key, "r=3").await;
    assert_eq!(got.status, 300, "{got:?}");
    let values = got.values();
    assert_eq!(values.len(), LIMIT, "the refused writes changed nothing");
    assert!(!values.contains(&b"one too many".to_vec()));
    let ctx = got.ctx.expect("a 300 answers X-Context");
    let merged = c.put(2, key, b"merged", Some(&ctx), "w=3").await;
    assert_eq!(merged.status, 204, "{merged:?}");
    let got = c.get(0, key, "r=3").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body, b"merged");
    let put = c.put(0, key, b"concurrent again", None, "w=3").await;
    assert_eq!(put.status, 204, "{put:?}");
}
