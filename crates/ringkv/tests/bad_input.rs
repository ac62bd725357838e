//! Bad input on the client HTTP port: every refusal has the contract's status and JSON error
//! code, and the node goes on serving. Binary keys round trip exactly.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Cluster, Resp, Rng, seed_from_env_or_clock};
use ringkv_core::constants::{MAX_CONTEXT_BYTES, MAX_COUNTER};
use ringkv_core::{Context, NodeId, ReplicaId, VersionVector};

const MAX_VALUE: usize = 1024;

async fn cluster() -> Cluster {
    Cluster::start_with(3, &["--max-value-bytes", &MAX_VALUE.to_string()]).await
}

/// The answer is `status` with the JSON error body `{"error": {"code", "message"}}`.
fn assert_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: {r:?} {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let j = r.json();
    assert_eq!(j["error"]["code"], code, "{what}: {j}");
    assert!(
        j["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: error.message: {j}"
    );
}

/// Sends a request with a raw (already encoded) path.
async fn raw(c: &Cluster, method: reqwest::Method, path: &str, body: &[u8]) -> Resp {
    c.send(
        c.client
            .request(method, format!("{}{path}", c.http(0)))
            .body(body.to_vec()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_keys_are_refused_with_json_errors() {
    let c = cluster().await;
    for (path, status, code) in [
        ("/kv/%zz", 400, "bad_request"),
        ("/kv/%", 400, "bad_request"),
        ("/kv/a%4", 400, "bad_request"),
        ("/kv/%G0", 400, "bad_request"),
        ("/kv/%+1", 400, "bad_request"),
        ("/kv/%-f", 400, "bad_request"),
        ("/kv/", 400, "bad_request"),
        ("/kv/a/b", 400, "bad_request"),
        ("/kv/a/", 400, "bad_request"),
    ] {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            let r = raw(&c, method.clone(), path, b"v").await;
            assert_error(&r, status, code, &format!("{method} {path}"));
        }
        c.assert_serves(0, "bad-key").await;
    }
    let long = vec![b'k'; 4097];
    assert_error(
        &c.put(0, &long, b"v", None, "").await,
        413,
        "too_large",
        "PUT with a 4097-byte key",
    );
    assert_error(
        &c.get(0, &long, "").await,
        413,
        "too_large",
        "GET with a 4097-byte key",
    );
    assert_error(
        &c.delete(0, &long, None, "").await,
        413,
        "too_large",
        "DELETE with a 4097-byte key",
    );
    // Percent-encoded, a 4096-byte key of bytes that all need escaping is 12288 characters:
    // the limit is on the decoded key, so this one is accepted.
    let longest = vec![0xffu8; 4096];
    let put = c.put(0, &longest, b"longest", None, "").await;
    assert_eq!(
        put.status, 204,
        "a 4096-byte key is within the limit: {put:?}"
    );
    let got = c.get(1, &longest, "").await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, &b"longest"[..]),
        "{got:?}"
    );
    c.assert_serves(0, "long-key").await;
}

/// Every error is JSON, also for a path no endpoint serves and a method an endpoint does not
/// take.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_endpoints_and_methods_get_json_errors() {
    let c = cluster().await;
    for (method, path, status, code) in [
        (reqwest::Method::POST, "/kv/a/b", 405, "method_not_allowed"),
        (reqwest::Method::GET, "/no-such-endpoint", 404, "not_found"),
        // `/admin/local/{key}` takes one key, as `/kv/{key}` does.
        (reqwest::Method::GET, "/admin/local/", 400, "bad_request"),
        (reqwest::Method::GET, "/admin/local/a/b", 400, "bad_request"),
        (reqwest::Method::GET, "/admin/local/a/", 400, "bad_request"),
        (reqwest::Method::POST, "/kv/abc", 405, "method_not_allowed"),
        (
            reqwest::Method::DELETE,
            "/status",
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::GET,
            "/admin/leave",
            405,
            "method_not_allowed",
        ),
    ] {
        let r = raw(&c, method.clone(), path, b"v").await;
        assert_error(&r, status, code, &format!("{method} {path}"));
    }
    c.assert_serves(0, "after-unknown-endpoints").await;
}

/// A plan the cluster would refuse is refused the same way: three members and N = 3, so none
/// may leave. Nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leave_plan_below_n_members_is_refused_like_the_leave() {
    let c = cluster().await;
    let version = c.status(0).await["cluster"]["ring_version"].clone();
    let plan = raw(&c, reqwest::Method::GET, "/admin/plan?leave=n3", b"").await;
    assert_error(&plan, 400, "bad_request", "plan of a leave below N");
    let message = plan.json()["error"]["message"].to_string();
    assert!(message.contains("cannot leave"), "{message}");
    let leave = raw(&c, reqwest::Method::POST, "/admin/leave?node=n3", b"").await;
    assert_error(&leave, 400, "bad_request", "leave below N");
    assert_eq!(c.status(0).await["cluster"]["ring_version"], version);
}

/// `POST /admin/leave` with a mistyped query is refused: it must not fall back to "this
/// node" and start the receiving node leaving. N = 2 with three members, so that a leave
/// would be accepted. A well-formed one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leave_with_a_mistyped_query_is_refused_and_nobody_leaves() {
    let c = Cluster::start_with(3, &["--n", "2"]).await;
    let version = c.status(0).await["cluster"]["ring_version"].clone();
    for query in [
        "?node",
        "?node=",
        "?Node=n3",
        "?nodes=n3",
        "?node=n3&node=n2",
        "?node=n3&force=1",
        "?node=%ff",
    ] {
        let path = format!("/admin/leave{query}");
        let r = raw(&c, reqwest::Method::POST, &path, b"").await;
        assert_error(&r, 400, "bad_request", &format!("POST {path}"));
    }
    let status = c.status(0).await;
    assert_eq!(status["cluster"]["ring_version"], version, "{status}");
    assert_eq!(c.member_status(0, 0).await.as_deref(), Some("up"));
    let r = raw(&c, reqwest::Method::POST, "/admin/leave?node=n3", b"").await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["node_id"], "n3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_contexts_quorums_and_timeouts_are_400() {
    let c = cluster().await;
    let key = b"params";
    let put = c.put(0, key, b"v", None, "").await;
    assert_eq!(put.status, 204, "{put:?}");
    let good_ctx = put.ctx.expect("X-Context");
    let mut flipped = good_ctx.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ASCII");
    for bad in [
        "garbage!",
        "AAAA",
        "!!!!",
        "%%%",
        &"A".repeat(20_000),
        // The longest token the node reads: its head is buffered whole, and refused as a
        // context, not as a head too large.
        &"A".repeat(MAX_CONTEXT_BYTES),
        &flipped,
        &good_ctx[..good_ctx.len() / 2],
    ] {
        let what = format!("X-Context {:?}", &bad[..bad.len().min(40)]);
        assert_error(
            &c.put(0, key, b"x", Some(bad), "").await,
            400,
            "bad_request",
            &format!("PUT with {what}"),
        );
        assert_error(
            &c.delete(0, key, Some(bad), "").await,
            400,
            "bad_request",
            &format!("DELETE with {what}"),
        );
    }
    // Well-formed tokens this store never made: a counter past the limit (it would overflow
    // the next write's counter), refused like any bad context.
    let read = Context::decode(&good_ctx).expect("the store's own context");
    for huge in [MAX_COUNTER + 1, u64::MAX] {
        let entries: Vec<(ReplicaId, u64)> = read
            .vector()
            .entries()
            .map(|(r, _)| (r.clone(), huge))
            .collect();
        let forged = Context::new(VersionVector::from_entries(entries)).encode();
        assert_error(
            &c.put(0, key, b"x", Some(&forged), "").await,
            400,
            "bad_request",
            &format!("PUT with a counter of {huge}"),
        );
    }
    // Two contexts: which one would be meant?
    let twice = c
        .send(
            c.client
                .put(format!("{}/kv/{}", c.http(0), common::encode_key(key)))
                .header("x-context", good_ctx.as_str())
                .header("x-context", good_ctx.as_str())
                .body("x"),
        )
        .await;
    assert_error(&twice, 400, "bad_request", "PUT with X-Context twice");
    let got = c.get(0, key, "r=3").await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, &b"v"[..]),
        "refused writes changed nothing: {got:?}"
    );
    for q in [
        "r=+2",
        "r=%2B2",
        "r=02",
        "r=%zz",
        "r=%ff",
        "timeout_ms=+5",
        "timeout_ms=0100",
        "r=0",
        "r=4",
        "r=abc",
        "r=-1",
        "r=",
        "r=2.5",
        "r=99999999999",
        "timeout_ms=0",
        "timeout_ms=abc",
        "timeout_ms=-5",
    ] {
        assert_error(
            &c.get(0, key, q).await,
            400,
            "bad_request",
            &format!("GET ?{q}"),
        );
    }
    for q in [
        "w=0",
        "w=4",
        "w=abc",
        "w=",
        "w=+2",
        "w=02",
        "timeout_ms=0",
        "timeout_ms=x",
    ] {
        assert_error(
            &c.put(0, key, b"x", None, q).await,
            400,
            "bad_request",
            &format!("PUT ?{q}"),
        );
        assert_error(
            &c.delete(0, key, None, q).await,
            400,
            "bad_request",
            &format!("DELETE ?{q}"),
        );
    }
    let got = c.get(1, key, "r=3").await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, &b"v"[..]),
        "refused writes changed nothing: {got:?}"
    );
    // The bounds themselves are accepted.
    assert_eq!(c.get(0, key, "r=1").await.status, 200);
    assert_eq!(c.get(0, key, "r=3&timeout_ms=60000").await.status, 200);
    // Percent-encoded values decode ("%32" is "2"); `w` on a read and `r` on a write are
    // not parameters of that request, and are ignored like any other.
    assert_eq!(c.get(0, key, "r=%32").await.status, 200);
    assert_eq!(c.get(0, key, "w=0").await.status, 200);
    assert_eq!(c.put(0, b"other", b"x", None, "r=0").await.status, 204);
    assert_eq!(c.delete(0, b"other", None, "r=abc").await.status, 204);
    let tiny = c.get(0, key, "timeout_ms=1").await;
    assert!(
        matches!(tiny.status, 200 | 503),
        "timeout_ms=1 is valid (it may run out): {tiny:?}"
    );
    c.assert_serves(0, "bad-params").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_over_the_limit_are_413_and_at_the_limit_round_trip() {
    let c = cluster().await;
    let key = b"big";
    let at_limit = vec![7u8; MAX_VALUE];
    let put = c.put(0, key, &at_limit, None, "").await;
    assert_eq!(put.status, 204, "{put:?}");
    let over = vec![8u8; MAX_VALUE + 1];
    assert_error(
        &c.put(0, key, &over, put.ctx.as_deref(), "").await,
        413,
        "too_large",
        "PUT of max+1 bytes",
    );
    assert_error(
        &c.put(1, b"big2", &vec![9u8; 10 * MAX_VALUE], None, "")
            .await,
        413,
        "too_large",
        "PUT of 10x max bytes",
    );
    for i in 0..3 {
        let got = c.get(i, key, "").await;
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.body, at_limit, "the refused value changed nothing");
    }
    assert_eq!(
        c.get(0, b"big2", "").await.status,
        404,
        "a refused value is not stored"
    );
    c.assert_serves(0, "too-large").await;
    c.assert_serves(1, "too-large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_keys_round_trip_exactly() {
    let c = cluster().await;
    let seed = seed_from_env_or_clock("binary_keys_round_trip_exactly");
    let mut rng = Rng::new(seed);
    let mut keys: Vec<Vec<u8>> = vec![
        b"a/b".to_vec(),
        b"a%2Fb".to_vec(),
        b"/".to_vec(),
        b"%".to_vec(),
        b"%25".to_vec(),
        b"\0".to_vec(),
        b"a\0b".to_vec(),
        vec![0xff, 0xfe, 0x80],
        vec![0xc3, 0x28],
        b"sp ace?q=1#frag&x".to_vec(),
        b"...".to_vec(),
        b"a/../b".to_vec(),
        "ключ/日本".as_bytes().to_vec(),
        b"+plus+".to_vec(),
        b"\r\nX-Injected: 1".to_vec(),
    ];
    for _ in 0..20 {
        let len = 1 + rng.below(64);
        keys.push(rng.bytes(len));
    }
    keys.sort();
    keys.dedup();
    for (n, key) in keys.iter().enumerate() {
        let value = format!("value-{n}").into_bytes();
        let put = c.put(n % 3, key, &value, None, "w=3").await;
        assert_eq!(put.status, 204, "PUT key {key:?}: {put:?}");
    }
    for (n, key) in keys.iter().enumerate() {
        let value = format!("value-{n}").into_bytes();
        for i in 0..3 {
            let got = c.get(i, key, "").await;
            assert_eq!(got.status, 200, "GET key {key:?} via {}: {got:?}", c.id(i));
            assert_eq!(
                got.body,
                value,
                "key {key:?} via {} read another key's value",
                c.id(i)
            );
            assert_eq!(
                c.local(i, key).await,
                Some(vec![Some(value.clone())]),
                "what {} holds for {key:?}",
                c.id(i)
            );
        }
    }
    let del = c.delete(0, b"a/b", None, "w=3").await;
    assert_eq!(del.status, 204);
    assert_eq!(
        c.get(1, b"a%2Fb", "").await.body,
        format!(
            "value-{}",
            keys.iter().position(|k| k == b"a%2Fb").expect("listed")
        )
        .into_bytes()
    );
}

/// Reads from a raw socket until it closes or `timeout` passes; returns what was read and
/// whether the connection was closed.
fn drain(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false);
            }
            Err(_) => return (out, true),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_the_http_port_gets_a_4xx_or_a_close() {
    let c = cluster().await;
    let seed = seed_from_env_or_clock("garbage_on_the_http_port");
    let mut rng = Rng::new(seed);
    let mut payloads: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
        b"PUT /kv/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"PUT /kv/x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(),
        b"PUT /kv/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"GET /kv/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ];
    for _ in 0..4 {
        let len = 1 + rng.below(8192);
        let mut p = rng.bytes(len);
        p.extend_from_slice(b"\r\n\r\n");
        payloads.push(p);
    }
    let addr = c.http_addr(0);
    for p in payloads {
        let shown = String::from_utf8_lossy(&p[..p.len().min(60)]).into_owned();
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).expect("connect to the HTTP port");
            // The node may close before reading everything: a failed write is a close.
            if s.write_all(&p).is_err() {
                return (Vec::new(), true);
            }
            drain(&mut s, Duration::from_secs(5))
        })
        .await
        .expect("socket task");
        let (bytes, closed) = answer;
        let text = String::from_utf8_lossy(&bytes);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|t| t.get(..3))
            .and_then(|s| s.parse::<u16>().ok());
        assert!(
            matches!(status, Some(400..=499)) || (bytes.is_empty() && closed),
            "garbage {shown:?} must get a 4xx or a closed connection, got {:?} (closed: {closed})",
            &text[..text.len().min(200)]
        );
        c.assert_serves(0, "http-garbage").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contexts_naming_made_up_replicas_cannot_grow_a_key_past_a_token() {
    let c = cluster().await;
    let key = b"forged";
    assert_eq!(c.put(0, key, b"v", None, "").await.status, 204);
    // A client context naming 600 replica ids nobody has, from `first` on.
    let forged = |first: usize| {
        let entries = (first..first + 600).map(|i| {
            let id = NodeId::new(format!("made-up-{i}")).expect("a node id");
            (ReplicaId::new(id, 0), 1)
        });
        Context::new(VersionVector::from_entries(entries)).encode()
    };
    let first = c.put(0, key, b"a", Some(&forged(0)), "").await;
    assert_eq!(
        first.status, 204,
        "600 entries still fit a token: {first:?}"
    );
    assert_error(
        &c.put(0, key, b"b", Some(&forged(600)), "").await,
        413,
        "too_large",
        "a second forged context, 1,200 entries in all",
    );
    // The key stays readable and writable with the context it answers.
    let got = c.get(0, key, "r=3").await;
    assert_eq!(got.status, 300, "{got:?}");
    let ctx = got.ctx.expect("X-Context");
    assert!(
        Context::decode(&ctx).is_ok(),
        "the answered context decodes"
    );
    let back = c.put(0, key, b"merged", Some(&ctx), "").await;
    assert_eq!(back.status, 204, "{back:?}");
    let got = c.get(1, key, "r=3").await;
    assert_eq!((got.status, got.body.as_slice()), (200, &b"merged"[..]));
}
