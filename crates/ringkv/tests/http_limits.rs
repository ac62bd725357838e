//! Slow and silent clients on the HTTP port hold connections, not the node: requests whose
//! body never comes take none of the request slots and are answered 408 after
//! `http_body_timeout`; connections past `http_connections_max` are refused; headers that
//! never end are cut off after `http_header_read_timeout`. Meanwhile `/status` and reads go
//! on answering.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Cluster, Resp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Request slots of the node under test (`http_concurrency_max`): small, so that a few
/// silent uploads would fill them.
const SLOTS: usize = 4;
/// How long a deadline-bounded wait in these tests lasts at most: generous, never a timing
/// claim.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

async fn one_node(extra: &[&str]) -> Cluster {
    let mut flags = vec!["--n", "1", "--r", "1", "--w", "1"];
    flags.extend_from_slice(extra);
    Cluster::start_with(1, &flags).await
}

/// Opens a connection and sends `head`, a request's start that the client never finishes.
async fn half_sent(addr: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP port");
    s.write_all(head.as_bytes()).await.expect("send the head");
    s
}

/// Reads until the node closes the connection (or resets it); `None` if it is still open at
/// the deadline.
async fn read_until_closed(s: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A request through the harness's client that must be answered (any status) before its
/// 10 s client timeout.
async fn answered(c: &Cluster, what: &str, req: reqwest::RequestBuilder) -> Resp {
    match c.try_send(req).await {
        Ok(r) => r,
        Err(e) => panic!("{what} got no answer: {e}"),
    }
}

/// Many more silent uploads than request slots (each sends `PUT` headers with a body length
/// and never the body): `/status`, a read with `timeout_ms` and a write still answer while
/// they are pending, and each silent upload is answered 408 once its body timeout passed.
///
/// The body timeout (15 s) is longer than the client's timeout (10 s): a node that let the
/// uploads hold the slots would leave these requests waiting past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_uploads_do_not_hold_the_request_slots() {
    let slots = SLOTS.to_string();
    let c = one_node(&[
        "--test-http-concurrency-max",
        &slots,
        "--test-http-body-timeout-ms",
        "15000",
    ])
    .await;
    let addr = c.http_addr(0);
    let mut silent = Vec::new();
    for i in 0..3 * SLOTS {
        let head = format!("PUT /kv/s{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n");
        silent.push(half_sent(addr, &head).await);
    }
    // Several rounds, so that the uploads have long been read up to their bodies by the
    // last one.
    for round in 0..5 {
        let status = answered(
            &c,
            "GET /status",
            c.client.get(format!("{}/status", c.http(0))),
        )
        .await;
        assert_eq!(status.status, 200, "round {round}: {status:?}");
        let read = answered(
            &c,
            "GET with timeout_ms",
            c.client.get(format!("{}/kv/abc?timeout_ms=100", c.http(0))),
        )
        .await;
        assert_eq!(read.status, 404, "round {round}: {read:?}");
        let write = answered(
            &c,
            "PUT",
            c.client.put(format!("{}/kv/w{round}", c.http(0))).body("v"),
        )
        .await;
        assert_eq!(write.status, 204, "round {round}: {write:?}");
    }
    let deadline = Instant::now() + ANSWER_DEADLINE;
    for (i, s) in silent.iter_mut().enumerate() {
        let got = read_until_closed(s, deadline)
            .await
            .unwrap_or_else(|| panic!("silent upload {i} was never answered"));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408") && text.contains("\"request_timeout\""),
            "silent upload {i}: {text:?}"
        );
    }
    assert!(
        c.metric(0, "ringkv_http_body_timeouts_total").await >= (3 * SLOTS) as f64,
        "every silent upload was counted"
    );
    for i in 0..3 * SLOTS {
        let got = c.get(0, format!("s{i}").as_bytes(), "").await;
        assert_eq!(got.status, 404, "a silent upload stored nothing: {got:?}");
    }
}

/// Connections past `http_connections_max` are refused (a 503 or a plain close) while the
/// others are open; headers that never end are cut off after the header timeout, which frees
/// the connections, and the node serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_unfinished_headers_cut_off() {
    const CONNECTIONS: usize = 8;
    let connections = CONNECTIONS.to_string();
    let c = one_node(&[
        "--test-http-connections-max",
        &connections,
        "--test-http-header-read-timeout-ms",
        "5000",
    ])
    .await;
    let addr = c.http_addr(0);
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        held.push(half_sent(addr, "GET /status HTTP/1.1\r\nHost: x\r\n").await);
    }
    // The kernel hands connections to the node in the order they came: this one is past the
    // cap (the harness's own pooled connection, if still open, only moves the cap earlier).
    let mut probe = half_sent(addr, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let deadline = Instant::now() + ANSWER_DEADLINE;
    let refused = read_until_closed(&mut probe, deadline)
        .await
        .expect("the connection past the cap is closed");
    let text = String::from_utf8_lossy(&refused);
    assert!(
        text.is_empty() || (text.starts_with("HTTP/1.1 503") && text.contains("\"unavailable\"")),
        "past the cap: {text:?}"
    );
    for (i, s) in held.iter_mut().enumerate() {
        let got = read_until_closed(s, deadline)
            .await
            .unwrap_or_else(|| panic!("unfinished headers {i} were never cut off"));
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.starts_with("HTTP/1.1 200"),
            "unfinished headers {i} were answered as a request: {text:?}"
        );
    }
    // Their slots come back (each once its task has ended).
    loop {
        if let Ok(r) = c
            .try_send(c.client.get(format!("{}/status", c.http(0))))
            .await
            && r.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the node never served again");
        tokio::time::sleep(common::POLL_INTERVAL).await;
    }
    assert!(c.metric(0, "ringkv_http_connections_refused_total").await >= 1.0);
}

/// SIGTERM does not wait for a body that is not coming: the node stops promptly (the body
/// timeout here is the default, 30 s) and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_a_silent_upload() {
    let mut c = one_node(&[]).await;
    let addr = c.http_addr(0);
    let mut silent = half_sent(
        addr,
        "PUT /kv/s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
    )
    .await;
    // By the time another request has been answered, the node has all but surely read the
    // upload's headers and waits for its body (had it not, it would close the connection as
    // idle at SIGTERM, which is right too).
    let status = answered(
        &c,
        "GET /status",
        c.client.get(format!("{}/status", c.http(0))),
    )
    .await;
    assert_eq!(status.status, 200);
    let stopped = c.terminate(0, Duration::from_secs(10));
    let stopped = stopped.expect("SIGTERM stops the node within 10 s");
    assert!(stopped.success(), "exit status {stopped}");
    let got = read_until_closed(&mut silent, Instant::now() + ANSWER_DEADLINE)
        .await
        .expect("the node closed the upload's connection");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 503"),
        "the silent upload at shutdown: {text:?}"
    );
}
