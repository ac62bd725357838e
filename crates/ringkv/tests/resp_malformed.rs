//! Malformed and hostile RESP input against a running node: bad lengths, huge announcements,
//! binary garbage, half frames, oversize values, and clients that send without reading. The
//! node answers a protocol error and closes (or answers an ordinary error and goes on), never
//! crashes, never buffers without bound, and keeps serving other connections.

mod resp_common;

use std::time::{Duration, Instant};

use resp_common::{Raw, RespCluster, Value, command};
use tokio::io::AsyncWriteExt;

/// Largest value the node under test accepts; small so that oversize values are cheap.
const MAX_VALUE_BYTES: usize = 1024;

async fn one_node() -> RespCluster {
    let max = MAX_VALUE_BYTES.to_string();
    RespCluster::start(
        1,
        &[
            "--n",
            "1",
            "--r",
            "1",
            "--w",
            "1",
            "--max-value-bytes",
            &max,
        ],
    )
    .await
}

/// Sends `bytes` on a fresh connection; asserts the node answers one protocol error that
/// contains `expected`, then closes the connection.
async fn assert_protocol_error(c: &RespCluster, bytes: &[u8], expected: &str) {
    let mut raw = Raw::connect(c.resp(0)).await;
    raw.send(bytes).await;
    let replies = raw.expect_closed().await;
    match replies.as_slice() {
        [Value::Error(e)] => assert!(
            e.starts_with("ERR Protocol error:") && e.contains(expected),
            "{e:?} for {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        ),
        other => panic!(
            "expected one protocol error and a close, got {other:?} for {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        ),
    }
}

/// A fresh connection answers PING within a second.
async fn assert_serves(c: &RespCluster) {
    let started = Instant::now();
    let mut raw = Raw::connect(c.resp(0)).await;
    assert_eq!(raw.call(&["PING"]).await, Value::Status("PONG".into()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "PING took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_answer_a_protocol_error_and_close() {
    let mut c = one_node().await;
    let cases: &[(&[u8], &str)] = &[
        (b"*2\r\n$3\r\nGET\r\n$-5\r\nab\r\n", "invalid bulk length"),
        (b"*2\r\n$3\r\nGET\r\n$x1\r\n", "invalid bulk length"),
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*-7\r\n", "invalid multibulk length"),
        (b"*3000000\r\n", "invalid multibulk length"),
        (b"*1\r\n:12\r\n", "expected '$'"),
        (b"*1\r\n$4\r\nPINGxx\r\n", "CRLF"),
        (
            b"*1\r\n$1073741824\r\n",
            "invalid bulk length (1073741824 bytes",
        ),
        (b"SET k \"unterminated\r\n", "unbalanced quotes"),
        (
            b"*2\r\n$3\r\nGET\r\n$1234567890123456789012345678901234567890",
            "too big count",
        ),
    ];
    for (bytes, expected) in cases {
        assert_protocol_error(&c, bytes, expected).await;
    }

    // A 1 GiB announcement is refused at once: the node does not wait for the body.
    let started = Instant::now();
    assert_protocol_error(
        &c,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\nabc",
        "invalid bulk length",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));

    // Binary garbage without a line end: refused once it passes the inline limit.
    let garbage: Vec<u8> = (0..66_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .map(|b| if b == b'\n' || b == b'*' { 0xff } else { b })
        .collect();
    assert_protocol_error(&c, &garbage, "too big inline request").await;

    // A bulk string over the bulk limit (far over the value limit) is a protocol error too.
    let mut huge = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n".to_vec();
    huge.extend(format!("${}\r\n", 10 * 1024 * 1024).into_bytes());
    assert_protocol_error(&c, &huge, "invalid bulk length").await;

    assert!(c.is_running(0), "the node survived");
    assert_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_errors_keep_the_connection_and_garbage_lines_are_unknown_commands() {
    let mut c = one_node().await;
    let mut raw = Raw::connect(c.resp(0)).await;

    // A value over --max-value-bytes but within the bulk limit: an error, the link lives on.
    let big = vec![b'v'; MAX_VALUE_BYTES + 1];
    let reply = raw.call(&[b"SET".as_slice(), b"k", &big]).await;
    assert_eq!(
        reply,
        Value::Error(format!(
            "ERR value is {} bytes; the limit is {MAX_VALUE_BYTES}",
            MAX_VALUE_BYTES + 1
        ))
    );
    let long_key = vec![b'k'; 4097];
    let reply = raw.call(&[b"GET".as_slice(), &long_key]).await;
    assert!(
        matches!(&reply, Value::Error(e) if e.contains("4096")),
        "{reply:?}"
    );
    assert!(matches!(raw.call(&["GET", ""]).await, Value::Error(e) if e.contains("empty")));
    let reply = raw.call(&["PUTCTX", "k", "!!!", "v"]).await;
    assert!(
        matches!(&reply, Value::Error(e) if e.starts_with("ERR bad context:")),
        "{reply:?}"
    );

    // Unknown commands, binary names, lines of garbage: answered, never a close.
    raw.send(b"\x00\x01\xfe\xff garbage\r\nNOSUCH a b\r\n")
        .await;
    for _ in 0..2 {
        let reply = raw.reply().await;
        assert!(
            matches!(&reply, Value::Error(e) if e.starts_with("ERR unknown command")),
            "{reply:?}"
        );
    }
    raw.send(&command(&[b"\xff\xfe".as_slice(), b"x"])).await;
    assert!(matches!(raw.reply().await, Value::Error(e) if e.starts_with("ERR unknown command")));
    assert_eq!(
        raw.call(&["SET", "k", "v"]).await,
        Value::Status("OK".into())
    );
    assert_eq!(raw.call(&["GET", "k"]).await, Value::bulk("v"));

    // QUIT answers +OK and closes.
    raw.send(&command(&["QUIT"])).await;
    assert_eq!(raw.expect_closed().await, vec![Value::Status("OK".into())]);

    // Half a frame, then the client goes away: the node just drops the connection.
    let mut half = Raw::connect(c.resp(0)).await;
    half.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nonly a few")
        .await;
    drop(half);
    // Half a frame, then the client waits: no reply, the connection stays open.
    let mut waiting = Raw::connect(c.resp(0)).await;
    waiting.send(b"*2\r\n$4\r\nECHO\r\n$5\r\nhe").await;
    assert_serves(&c).await;
    waiting.send(b"llo\r\n").await;
    assert_eq!(waiting.reply().await, Value::bulk("hello"));

    assert!(c.is_running(0));
    assert_serves(&c).await;
}

/// Many clients stall part way into a command (`SET k` with half its value sent): the node
/// goes on serving others, and cuts each one off, with an error, once the command timeout
/// passed (a short one here); nothing of the stalled commands ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stalled_mid_command_are_served_around_and_cut_off() {
    const STALLED: usize = 200;
    let max = MAX_VALUE_BYTES.to_string();
    let mut c = RespCluster::start(
        1,
        &[
            "--n",
            "1",
            "--r",
            "1",
            "--w",
            "1",
            "--max-value-bytes",
            &max,
            "--test-resp-command-timeout-ms",
            "2000",
        ],
    )
    .await;
    let mut head = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${MAX_VALUE_BYTES}\r\n").into_bytes();
    head.extend(vec![b'x'; MAX_VALUE_BYTES / 2]);
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut raw = Raw::connect(c.resp(0)).await;
        raw.send(&head).await;
        stalled.push(raw);
    }
    assert_serves(&c).await;
    for (i, raw) in stalled.iter_mut().enumerate() {
        match raw.expect_closed().await.as_slice() {
            [Value::Error(e)] if e.starts_with("ERR the command did not arrive in full within") => {
            }
            other => panic!("stalled client {i}: expected one error and a close, got {other:?}"),
        }
    }
    assert!(c.is_running(0), "the node survived");
    let mut raw = Raw::connect(c.resp(0)).await;
    assert_eq!(
        raw.call(&["GET", "k"]).await,
        Value::Nil,
        "no stalled SET ran"
    );
}

/// A client that pipelines commands and never reads its replies: the node stops reading from
/// it once its replies cannot be written (so its memory stays bounded), keeps serving others,
/// and drops it after the write deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_bounded_and_dropped() {
    const SEND_LIMIT_BYTES: usize = 512 * 1024 * 1024;
    let c = one_node().await;
    let rss_before = c.rss_kib(0);

    let mut stream = Raw::connect(c.resp(0)).await.into_stream();
    let chunk: Vec<u8> = (0..4096)
        .flat_map(|i| command(&["ECHO".to_string(), format!("reply-{i:06}-padding-padding")]))
        .collect();
    // Write until a write stays blocked for a while: the node has stopped reading.
    let mut sent = 0usize;
    let blocked = loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => panic!("the node dropped the client early ({e}) after {sent} bytes"),
            Err(_) => break true,
        }
        if sent > SEND_LIMIT_BYTES {
            break false;
        }
    };
    assert!(
        blocked,
        "the node read {sent} bytes from a client that reads nothing: no back-pressure"
    );
    eprintln!("the node stopped reading after {} KiB", sent / 1024);

    // Other clients are served promptly meanwhile, and the node did not balloon.
    assert_serves(&c).await;
    let rss_after = c.rss_kib(0);
    assert!(
        rss_after < rss_before + 128 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // After the write deadline (30 s) the node drops the client: a write then fails.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let write =
            tokio::time::timeout(Duration::from_millis(200), stream.write_all(b"PING\r\n")).await;
        if let Ok(Err(_)) = write {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node still holds a client that has not read for 60 s"
        );
    }
    assert_serves(&c).await;
}

/// A client or peer whose host vanishes without closing sends nothing more, not even a FIN:
/// every established connection of a node (RESP, HTTP, inter-node, both directions) has
/// TCP keepalive on, so the kernel finds such a connection dead and the node drops it
/// instead of holding it, and its connection slot, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_connection_of_a_node_is_kept_alive() {
    let c = RespCluster::start(3, &[]).await;
    let mut resp = Raw::connect(c.resp(0)).await;
    assert_eq!(resp.call(&["PING"]).await, Value::Status("PONG".into()));
    // The harness's HTTP client keeps its connection to node 0 open after this.
    assert!(c.http_get(0, "/status").await.contains("members"));
    let pid = c.pid(0);
    let (resp_port, http_port) = (c.resp(0).port(), c.http(0).port());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("ss")
            .args(["-tnpoH", "state", "established"])
            .output()
            .expect("ss (iproute2) runs");
        assert!(out.status.success(), "ss failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mine: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!("pid={pid},")))
            .collect();
        let local_port = |l: &str| {
            l.split_whitespace()
                .nth(2)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
        };
        let on = |port: u16| mine.iter().any(|l| local_port(l) == Some(port));
        let outbound = mine
            .iter()
            .filter(|l| ![resp_port, http_port].contains(&local_port(l).unwrap_or(0)))
            .count();
        // RESP, HTTP, and the inter-node connections (at least one to each peer).
        if on(resp_port)
            && on(http_port)
            && outbound >= 2
            && mine.iter().all(|l| l.contains("timer:(keepalive"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every connection of node 0 is kept alive (or some are missing):\n{}",
            mine.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(resp.call(&["PING"]).await, Value::Status("PONG".into()));
}
