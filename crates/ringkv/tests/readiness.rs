//! A node is ready when `GET /status` answers 200 (API.md §1): a node that has not joined a
//! cluster yet (its seed unreachable) answers 503 there, with its status as the body, and
//! refuses writes saying they were stored nowhere; `ringkv status` still shows it. A node
//! listening on every interface with its own loopback address as seed founds a cluster.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, poll_until};

/// A real `ringkv server` on free ports with `extra` arguments.
fn server(dir: &std::path::Path, listen: &str, http: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["server", "--node-id", "n1", "--listen", listen])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(dir)
        .args(["--storage", "memory", "--gossip-interval-ms", "100"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting ringkv server")
}

/// `PUT /kv/k` with the value `v` on the node at `base`.
async fn put_k(client: &reqwest::Client, base: &str) -> reqwest::Response {
    let url = format!("{base}/kv/k");
    client.put(url).body("v").send().await.expect("PUT")
}

/// Stops `child` (SIGTERM) and waits for it.
fn stop(mut child: Child) {
    common::signal(child.id(), libc::SIGTERM);
    child.wait().expect("waiting for the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_joined_is_not_ready_and_says_so() {
    let dir = tempfile::tempdir().expect("a data dir");
    let (listen, http) = (free_port(), free_port());
    // Nothing listens on the seed's port: the node waits to join, for ever.
    let seed = format!("127.0.0.1:{}", free_port());
    let node = server(
        dir.path(),
        &format!("127.0.0.1:{listen}"),
        http,
        &["--seed", &seed],
    );
    let base = format!("http://127.0.0.1:{http}");
    let client = reqwest::Client::new();
    let (code, body) = poll_until(Duration::from_secs(30), "the node's /status", || async {
        let r = client.get(format!("{base}/status")).send().await.ok()?;
        let code = r.status().as_u16();
        Some((code, r.json::<serde_json::Value>().await.ok()?))
    })
    .await;
    assert_eq!(code, 503, "not ready before it joined: {body}");
    assert_eq!(body["node_id"], "n1", "{body}");
    let put = put_k(&client, &base).await;
    assert_eq!(put.status().as_u16(), 503);
    let err: serde_json::Value = put.json().await.expect("JSON error");
    assert_eq!(err["stored_on"], 0, "a write stored nowhere says 0: {err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["status", "--node", &base])
        .output()
        .expect("ringkv status");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("n1"),
        "ringkv status shows a node that is not ready: {out:?}"
    );
    stop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_every_interface_seeded_with_itself_founds_a_cluster() {
    let dir = tempfile::tempdir().expect("a data dir");
    let (listen, http) = (free_port(), free_port());
    let node = server(
        dir.path(),
        &format!("0.0.0.0:{listen}"),
        http,
        &["--seed", &format!("127.0.0.1:{listen}"), "--n", "1"],
    );
    let base = format!("http://127.0.0.1:{http}");
    let client = reqwest::Client::new();
    poll_until(Duration::from_secs(30), "the node to be ready", || async {
        let r = client.get(format!("{base}/status")).send().await.ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;
    let put = put_k(&client, &base).await;
    assert_eq!(put.status().as_u16(), 204, "N=1, W defaults to 1");
    stop(node);
}
