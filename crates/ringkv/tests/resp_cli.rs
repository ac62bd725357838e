//! The RESP front end driven by the real `redis-cli` (Debian package `redis-tools`) against
//! a 3-node cluster with `--resp` on every node: the plain commands, a sibling conflict and
//! its reconciliation through GETCTX/PUTCTX, and pipelining. On a raw connection: the
//! per-operation request metrics the RESP and HTTP front ends share, and `CLIENT REPLY`.

mod resp_common;

use std::net::SocketAddr;
use std::process::Command;

use resp_common::{Raw, RespCluster, Value, command};

/// Runs `redis-cli --no-raw -h IP -p PORT args...` and answers what it printed.
/// `--no-raw` keeps the human format even without a terminal: `"v"`, `(nil)`,
/// `(integer) 2`, `(error) ...`, `1) ...`.
fn cli(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("--no-raw")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-cli ({e}): install it (Debian/Ubuntu: apt-get install -y \
                 redis-tools); this test needs the real tool"
            )
        });
    assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim_end().to_string()
}

/// The quoted strings of a `redis-cli` array answer, in order (`1) "a"` → `a`).
fn quoted_items(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let start = l.find('"')?;
            let end = l.rfind('"')?;
            (end > start).then(|| l[start + 1..end].to_string())
        })
        .collect()
}

/// The value of the sample `name{labels...}` in a Prometheus text page: the line naming
/// `name` with exactly these label pairs (in any order); `None` if there is no such series.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (inside, value) = rest.split_once("} ")?;
        let mut found: Vec<&str> = inside.split(',').collect();
        let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        found.sort_unstable();
        wanted.sort_unstable();
        (found == wanted).then(|| value.trim().parse().expect("a sample value"))
    })
}

/// `ringkv_request_duration_seconds_count{op, outcome}`, 0 if the series is absent.
fn timed(page: &str, op: &str, outcome: &str) -> f64 {
    let labels = [("op", op), ("outcome", outcome)];
    sample(page, "ringkv_request_duration_seconds_count", &labels).unwrap_or(0.0)
}

fn require_redis_cli() {
    let found = Command::new("redis-cli").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "redis-cli is missing ({found:?}): install it (Debian/Ubuntu: apt-get install -y \
         redis-tools); this test needs the real tool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_drives_a_cluster() {
    require_redis_cli();
    let c = RespCluster::start(3, &[]).await;
    let (a, b, z) = (c.resp(0), c.resp(1), c.resp(2));

    assert_eq!(cli(a, &["PING"]), "PONG");
    assert_eq!(cli(a, &["ping", "hello"]), "\"hello\"");
    assert_eq!(cli(a, &["ECHO", "hi there"]), "\"hi there\"");
    assert_eq!(cli(a, &["SELECT", "0"]), "OK");
    assert_eq!(cli(a, &["CONFIG", "GET", "maxmemory"]), "(empty array)");
    assert_eq!(
        cli(a, &["CONFIG", "GET", "appendonly"]),
        "1) \"appendonly\"\n2) \"no\""
    );

    // Written through one node, read through every node (W + R > N).
    assert_eq!(cli(a, &["SET", "k", "v1"]), "OK");
    for addr in [a, b, z] {
        assert_eq!(cli(addr, &["GET", "k"]), "\"v1\"");
    }
    // A second SET through the node that coordinated the first supersedes it.
    assert_eq!(cli(a, &["set", "k", "v2"]), "OK", "SET overwrites blindly");
    assert_eq!(cli(z, &["GET", "k"]), "\"v2\"");
    assert_eq!(cli(a, &["GET", "absent"]), "(nil)");
    assert_eq!(cli(a, &["EXISTS", "k", "absent", "k"]), "(integer) 2");

    assert_eq!(cli(a, &["MSET", "m1", "one", "m2", "two"]), "OK");
    let mget = cli(b, &["MGET", "m1", "absent", "m2"]);
    assert_eq!(mget, "1) \"one\"\n2) (nil)\n3) \"two\"");
    assert_eq!(cli(z, &["DEL", "m1", "absent", "m2"]), "(integer) 2");
    assert_eq!(cli(a, &["GET", "m1"]), "(nil)");
    assert_eq!(cli(a, &["EXISTS", "m1", "m2"]), "(integer) 0");

    // Errors answer and leave the tool (and the node) working.
    assert_eq!(
        cli(a, &["SET", "k", "v", "EX", "10"]),
        "(error) ERR syntax error"
    );
    assert_eq!(
        cli(a, &["GET"]),
        "(error) ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        cli(a, &["MSET", "a", "1", "b"]),
        "(error) ERR wrong number of arguments for 'mset' command"
    );
    assert_eq!(
        cli(a, &["FLUSHALL"]),
        "(error) ERR unknown command 'FLUSHALL'"
    );
    assert!(cli(a, &["PUTCTX", "k", "not-a-context", "v"]).starts_with("(error) ERR bad context:"));
    assert_eq!(cli(a, &["GET", "k"]), "\"v2\"");

    // Commands are counted by name and outcome; unknown names share one label.
    let metrics = c.http_get(0, "/metrics").await;
    let counted = |command: &str, outcome: &str| {
        metrics.lines().any(|l| {
            l.starts_with("ringkv_resp_commands_total{")
                && l.contains(&format!("command=\"{command}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
    };
    assert!(counted("SET", "ok"), "{metrics}");
    assert!(counted("SET", "error"), "{metrics}");
    assert!(counted("unknown", "error"), "{metrics}");
    assert!(metrics.contains("ringkv_resp_connections"), "{metrics}");

    // Data commands are timed per operation in the histogram HTTP requests use (nothing here
    // went through HTTP). Node a coordinated the GETs and SETs, node z the DEL.
    let z_metrics = c.http_get(2, "/metrics").await;
    for (page, op) in [(&metrics, "get"), (&metrics, "put"), (&z_metrics, "delete")] {
        assert!(timed(page, op, "ok") > 0.0, "no {op} latency: {page}");
    }
    assert!(timed(&metrics, "put", "bad_request") > 0.0, "{metrics}");
}

/// RESP data commands land in the same `{op, outcome}` series as HTTP requests: exact counts
/// per operation and outcome, the histogram's `+Inf` bucket and `ringkv_requests_total` agree,
/// and an HTTP read adds to the RESP reads' series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_and_http_requests_share_one_latency_histogram_per_operation() {
    let c = RespCluster::start(1, &["--n", "1", "--r", "1", "--w", "1"]).await;
    let before = c.http_get(0, "/metrics").await;
    for op in ["get", "put", "delete"] {
        assert!(
            sample(
                &before,
                "ringkv_request_duration_seconds_count",
                &[("op", op), ("outcome", "ok")]
            )
            .is_none(),
            "{op} timed before any request: {before}"
        );
    }

    let mut raw = Raw::connect(c.resp(0)).await;
    let script: &[(&[&str], Value)] = &[
        (&["SET", "k", "v"], Value::Status("OK".into())),
        (&["GET", "k"], Value::bulk("v")),
        (&["GET", "absent"], Value::Nil),
        (
            &["MGET", "k", "absent"],
            Value::Array(vec![Value::bulk("v"), Value::Nil]),
        ),
        (&["EXISTS", "k"], Value::Int(1)),
        (&["MSET", "a", "1", "b", "2"], Value::Status("OK".into())),
        (&["DEL", "k", "a"], Value::Int(2)),
        (&["PING"], Value::Status("PONG".into())),
        (&["ECHO", "x"], Value::bulk("x")),
    ];
    for (args, expected) in script {
        assert_eq!(&raw.call(args).await, expected, "{args:?}");
    }
    // Two writes with an empty context are concurrent: siblings, so GET answers CONFLICT,
    // which HTTP would answer with a 300: an `ok` read.
    for value in ["1", "2"] {
        assert!(matches!(
            raw.call(&["PUTCTX", "c", "", value]).await,
            Value::Bulk(_)
        ));
    }
    let conflict = raw.call(&["GET", "c"]).await;
    assert!(
        matches!(&conflict, Value::Error(e) if e.starts_with("CONFLICT")),
        "{conflict:?}"
    );
    let getctx = raw.call(&["GETCTX", "c"]).await;
    let Value::Array(items) = getctx else {
        panic!("GETCTX answered {getctx:?}")
    };
    let Value::Bulk(context) = &items[0] else {
        panic!("no context in {items:?}")
    };
    let deleted = raw.call(&[b"DELCTX".as_slice(), b"c", context]).await;
    assert!(matches!(deleted, Value::Bulk(_)), "{deleted:?}");
    assert!(matches!(raw.call(&["GET"]).await, Value::Error(_)));
    assert!(matches!(
        raw.call(&["SET", "k", "v", "EX", "1"]).await,
        Value::Error(_)
    ));

    // Recorded before the reply is written: the page already holds every command above.
    let page = c.http_get(0, "/metrics").await;
    let expected = [
        ("get", "ok", 6.0),
        ("put", "ok", 4.0),
        ("delete", "ok", 2.0),
        ("get", "bad_request", 1.0),
        ("put", "bad_request", 1.0),
        ("delete", "bad_request", 0.0),
    ];
    for (op, outcome, count) in expected {
        let labels = [("op", op), ("outcome", outcome)];
        let inf = [("op", op), ("outcome", outcome), ("le", "+Inf")];
        assert_eq!(timed(&page, op, outcome), count, "{op} {outcome}: {page}");
        if count > 0.0 {
            let bucket = sample(&page, "ringkv_request_duration_seconds_bucket", &inf);
            assert_eq!(bucket, Some(count), "{op} {outcome} +Inf bucket: {page}");
            let total = sample(&page, "ringkv_requests_total", &labels);
            assert_eq!(total, Some(count), "{op} {outcome} requests: {page}");
            let sum = sample(&page, "ringkv_request_duration_seconds_sum", &labels);
            assert!(sum.is_some_and(|s| s > 0.0), "{op} {outcome} sum: {page}");
        }
    }

    // An HTTP read (404 here) adds to the same series as the RESP reads.
    c.http_get(0, "/kv/absent").await;
    let page = c.http_get(0, "/metrics").await;
    assert_eq!(timed(&page, "get", "ok"), 7.0, "{page}");
}

/// `CLIENT REPLY OFF` silences every reply until `ON`; `SKIP` silences the next command's;
/// the silenced commands still run. Replies come in order, so a reply that should have been
/// dropped would show up in place of the expected one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_skip_and_on_as_redis() {
    let c = RespCluster::start(1, &["--n", "1", "--r", "1", "--w", "1"]).await;
    let mut raw = Raw::connect(c.resp(0)).await;
    let pipeline = |commands: &[&[&str]]| -> Vec<u8> {
        commands.iter().flat_map(|args| command(args)).collect()
    };

    // OFF: nothing, errors included, and SKIP changes nothing, until ON answers +OK.
    raw.send(&pipeline(&[
        &["CLIENT", "REPLY", "OFF"],
        &["ECHO", "silent"],
        &["SET", "k", "written while off"],
        &["GET"],
        &["CLIENT", "REPLY", "SKIP"],
        &["CLIENT", "REPLY", "ON"],
        &["ECHO", "after on"],
    ]))
    .await;
    assert_eq!(raw.reply().await, Value::Status("OK".into()));
    assert_eq!(raw.reply().await, Value::bulk("after on"));
    assert_eq!(
        raw.call(&["GET", "k"]).await,
        Value::bulk("written while off")
    );

    // SKIP: the next command's reply only; a SKIP skipped by a SKIP skips the one after.
    raw.send(&pipeline(&[
        &["CLIENT", "REPLY", "SKIP"],
        &["ECHO", "skipped"],
        &["ECHO", "one"],
        &["CLIENT", "REPLY", "SKIP"],
        &["CLIENT", "REPLY", "SKIP"],
        &["ECHO", "skipped too"],
        &["ECHO", "two"],
        &["client", "reply", "skip"],
        &["CLIENT", "REPLY", "ON"],
        &["ECHO", "three"],
    ]))
    .await;
    assert_eq!(raw.reply().await, Value::bulk("one"));
    assert_eq!(raw.reply().await, Value::bulk("two"));
    assert_eq!(
        raw.reply().await,
        Value::Status("OK".into()),
        "ON answers even when skipped"
    );
    assert_eq!(raw.reply().await, Value::bulk("three"));

    // Bad arguments are errors and change nothing.
    assert_eq!(
        raw.call(&["CLIENT", "REPLY", "MAYBE"]).await,
        Value::Error("ERR syntax error".into())
    );
    assert!(matches!(
        raw.call(&["CLIENT", "REPLY"]).await,
        Value::Error(_)
    ));
    assert_eq!(raw.call(&["PING"]).await, Value::Status("PONG".into()));

    // QUIT while off closes without a word.
    raw.send(&pipeline(&[&["CLIENT", "REPLY", "OFF"], &["QUIT"]]))
        .await;
    assert_eq!(raw.expect_closed().await, Vec::<Value>::new());
    // Another connection is not affected.
    let mut other = Raw::connect(c.resp(0)).await;
    assert_eq!(other.call(&["PING"]).await, Value::Status("PONG".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_resolves_a_sibling_conflict_with_contexts() {
    require_redis_cli();
    let c = RespCluster::start(3, &[]).await;
    let (a, b, z) = (c.resp(0), c.resp(1), c.resp(2));

    assert_eq!(cli(a, &["GETCTX", "s"]), "1) (nil)", "absent: [nil]");
    assert_eq!(cli(a, &["SET", "s", "v0"]), "OK");
    let read = quoted_items(&cli(a, &["GETCTX", "s"]));
    assert_eq!(read.len(), 2, "[context, value]: {read:?}");
    assert_eq!(read[1], "v0");
    let ctx = read[0].clone();

    // Two writes with the same context through two nodes: neither covers the other.
    let ctx_x = cli(a, &["PUTCTX", "s", &ctx, "x"]);
    let ctx_y = cli(b, &["PUTCTX", "s", &ctx, "y"]);
    assert!(
        ctx_x.starts_with('"') && ctx_y.starts_with('"'),
        "{ctx_x} {ctx_y}"
    );
    for addr in [a, b, z] {
        assert_eq!(
            cli(addr, &["GET", "s"]),
            "(error) CONFLICT 2 siblings, use GETCTX"
        );
    }
    let mget = cli(z, &["MGET", "s", "absent"]);
    assert_eq!(
        mget, "1) (error) CONFLICT 2 siblings, use GETCTX\n2) (nil)",
        "MGET answers the conflict as that key's element"
    );
    assert_eq!(cli(z, &["EXISTS", "s"]), "(integer) 1");

    let read = quoted_items(&cli(z, &["GETCTX", "s"]));
    assert_eq!(read.len(), 3, "[context, x, y]: {read:?}");
    let mut siblings = read[1..].to_vec();
    siblings.sort();
    assert_eq!(siblings, ["x", "y"]);

    // A PUTCTX with the context that covers both siblings reconciles them.
    let merged_ctx = cli(z, &["PUTCTX", "s", &read[0], "x+y"]);
    assert!(merged_ctx.starts_with('"'), "{merged_ctx}");
    for addr in [a, b, z] {
        assert_eq!(cli(addr, &["GET", "s"]), "\"x+y\"");
    }

    // A delete leaves a tombstone: GET is nil, GETCTX answers its context and no value.
    assert_eq!(cli(a, &["DEL", "s"]), "(integer) 1");
    assert_eq!(cli(b, &["GET", "s"]), "(nil)");
    let tomb = cli(b, &["GETCTX", "s"]);
    assert_eq!(
        quoted_items(&tomb).len(),
        1,
        "[context] of a tombstone: {tomb}"
    );
    assert!(tomb.starts_with("1) \""), "{tomb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_pipe_and_one_write_pipelines_answer_in_order() {
    require_redis_cli();
    let c = RespCluster::start(3, &[]).await;
    let addr = c.resp(1);

    // redis-cli --pipe: mass insertion of RESP commands from stdin.
    const PIPED: usize = 500;
    let mut input = Vec::new();
    for i in 0..PIPED {
        input.extend(command(&[
            "SET".to_string(),
            format!("pipe-{i}"),
            format!("value-{i}"),
        ]));
    }
    input.extend(b"PING\r\n");
    let path = std::env::temp_dir().join(format!("ringkv-resp-pipe-{}", std::process::id()));
    std::fs::write(&path, &input).expect("writing the pipe input");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli -h 127.0.0.1 -p {} --pipe < {}",
            addr.port(),
            path.display()
        ))
        .output()
        .expect("running redis-cli --pipe");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "redis-cli --pipe: {out:?}");
    assert!(
        text.contains(&format!("errors: 0, replies: {}", PIPED + 1)),
        "{text}"
    );
    for i in [0, PIPED / 2, PIPED - 1] {
        let key = format!("pipe-{i}");
        assert_eq!(cli(c.resp(0), &["GET", &key]), format!("\"value-{i}\""));
    }

    // Many commands in one socket write: the replies come back in order.
    let mut raw = resp_common::Raw::connect(addr).await;
    let mut batch = Vec::new();
    for i in 0..100 {
        batch.extend(command(&[
            "SET".to_string(),
            format!("one-{i}"),
            i.to_string(),
        ]));
        batch.extend(command(&["GET".to_string(), format!("one-{i}")]));
        batch.extend(format!("ECHO e{i}\r\n").into_bytes());
    }
    raw.send(&batch).await;
    for i in 0..100 {
        assert_eq!(raw.reply().await, Value::Status("OK".into()));
        assert_eq!(raw.reply().await, Value::bulk(i.to_string()));
        assert_eq!(raw.reply().await, Value::bulk(format!("e{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_runs_clean() {
    require_redis_cli();
    let c = RespCluster::start(3, &[]).await;
    let port = c.resp(2).port().to_string();
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(["-t", "ping,set,get,mset", "-n", "300", "-c", "4", "--csv"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-benchmark ({e}): install it (Debian/Ubuntu: apt-get install \
                 -y redis-tools); this test needs the real tool"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // It reads CONFIG at start and stops at the first error reply.
    assert!(
        !stdout.contains("Error") && !stderr.contains("Error"),
        "{stdout}\n{stderr}"
    );
    assert!(
        !format!("{stdout}{stderr}").contains("Could not fetch server CONFIG"),
        "{stdout}\n{stderr}"
    );
    for test in ["\"PING_MBULK\"", "\"SET\"", "\"GET\"", "\"MSET (10 keys)\""] {
        assert!(stdout.contains(test), "no {test} line in {stdout}");
    }
}
