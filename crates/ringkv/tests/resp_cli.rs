//! The RESP front end driven by the real `redis-cli` (Debian package `redis-tools`) against
//! a 3-node cluster with `--resp` on every node: the plain commands, a sibling conflict and
//! its reconciliation through GETCTX/PUTCTX, and pipelining.

mod resp_common;

use std::net::SocketAddr;
use std::process::Command;

use resp_common::{RespCluster, Value, command};

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
