//! The RESP front end through a Redis client library (the `redis` crate, async on tokio):
//! plain commands, pipelines, binary values, a sibling conflict as a typed error, and many
//! connections at once against a 3-node cluster.

mod resp_common;

use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisResult};
use resp_common::RespCluster;

async fn connect(c: &RespCluster, i: usize) -> MultiplexedConnection {
    let url = format!("redis://{}/", c.resp(i));
    let client = redis::Client::open(url).expect("a redis client");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("connecting with the redis crate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_crate_commands_pipelines_and_binary_values() {
    let c = RespCluster::start(3, &[]).await;
    let mut con = connect(&c, 0).await;
    let mut other = connect(&c, 2).await;

    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut con)
        .await
        .unwrap();
    let got: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("v"));
    let absent: Option<String> = redis::cmd("GET")
        .arg("nope")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(absent, None);

    let () = redis::cmd("MSET")
        .arg(&["a", "1", "b", "2"])
        .query_async(&mut con)
        .await
        .unwrap();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["a", "nope", "b"])
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(values, vec![Some("1".into()), None, Some("2".into())]);
    let deleted: i64 = redis::cmd("DEL")
        .arg(&["a", "nope", "b"])
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    let existing: i64 = redis::cmd("EXISTS")
        .arg(&["a", "b", "k"])
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(existing, 1);

    // Every byte value, CR and LF included, in a key and in a value.
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let key: Vec<u8> = b"bin\r\n\0key".to_vec();
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(&binary)
        .query_async(&mut con)
        .await
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(back, binary);

    // A pipeline: the replies come back in order.
    let (first, second, count, echoed): (String, Vec<u8>, i64, String) = redis::pipe()
        .cmd("SET")
        .arg("p1")
        .arg("one")
        .ignore()
        .cmd("SET")
        .arg("p2")
        .arg(&binary)
        .ignore()
        .cmd("GET")
        .arg("p1")
        .cmd("GET")
        .arg("p2")
        .cmd("EXISTS")
        .arg(&["p1", "p2", "p3"])
        .cmd("ECHO")
        .arg("done")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        (first.as_str(), second, count, echoed.as_str()),
        ("one", binary.clone(), 2, "done")
    );

    // Server errors are typed errors; the connection goes on.
    let err = redis::cmd("NOSUCHCOMMAND")
        .query_async::<()>(&mut con)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    let err = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .arg("NX")
        .query_async::<()>(&mut con)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
    let still: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(still, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_crate_sees_siblings_as_a_conflict_error() {
    let c = RespCluster::start(3, &[]).await;
    let mut con = connect(&c, 0).await;
    let mut other = connect(&c, 1).await;
    let () = redis::cmd("SET")
        .arg("s")
        .arg("v0")
        .query_async(&mut con)
        .await
        .unwrap();
    let read: Vec<Option<Vec<u8>>> = redis::cmd("GETCTX")
        .arg("s")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    let ctx = read[0].clone().expect("a context");
    for (con, value) in [(&mut con, "x"), (&mut other, "y")] {
        let answered: Vec<u8> = redis::cmd("PUTCTX")
            .arg("s")
            .arg(&ctx)
            .arg(value)
            .query_async(con)
            .await
            .unwrap();
        assert!(!answered.is_empty(), "PUTCTX answers the new context");
    }
    let err = redis::cmd("GET")
        .arg("s")
        .query_async::<Option<String>>(&mut con)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("CONFLICT"), "{err}");
    assert_ne!(err.kind(), ErrorKind::Io);
    // Strict typed clients see MGET's conflicted element as the whole reply's error.
    let err = redis::cmd("MGET")
        .arg(&["s", "nope"])
        .query_async::<Vec<Option<String>>>(&mut other)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("CONFLICT"), "{err}");

    // GETCTX, then PUTCTX with its context, reconciles.
    let read: Vec<Option<Vec<u8>>> = redis::cmd("GETCTX")
        .arg("s")
        .query_async(&mut other)
        .await
        .unwrap();
    let mut siblings: Vec<Vec<u8>> = read[1..].iter().flatten().cloned().collect();
    siblings.sort();
    assert_eq!(siblings, vec![b"x".to_vec(), b"y".to_vec()]);
    let _: Vec<u8> = redis::cmd("PUTCTX")
        .arg("s")
        .arg(read[0].clone().expect("a context"))
        .arg("xy")
        .query_async(&mut other)
        .await
        .unwrap();
    let got: String = redis::cmd("GET")
        .arg("s")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(got, "xy");
}

/// `TASKS` connections at once, each running `OPS` SET/GET pairs on its own keys through a
/// node picked by its number; every read sees its own task's last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_crate_many_connections_at_once() {
    const TASKS: usize = 50;
    const OPS: usize = 100;
    let c = RespCluster::start(3, &[]).await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut con = connect(&c, t % c.len()).await;
        tasks.push(tokio::spawn(async move {
            for op in 0..OPS {
                let key = format!("t{t}-k{}", op % 10);
                let value = format!("t{t}-op{op}");
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .query_async::<()>(&mut con)
                    .await?;
                let got: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
                assert_eq!(got.as_deref(), Some(value.as_str()), "task {t} op {op}");
            }
            RedisResult::Ok(())
        }));
    }
    for (t, task) in tasks.into_iter().enumerate() {
        task.await
            .expect("task panicked")
            .unwrap_or_else(|e| panic!("task {t}: {e}"));
    }
    let mut con = connect(&c, 0).await;
    let info: String = redis::cmd("INFO").query_async(&mut con).await.unwrap();
    assert!(info.contains("connected_clients:"), "{info}");
}

/// `MGET` answers at most `MAX_MGET_REPLY_BYTES` of values (64 MiB): naming one 1 MiB value
/// 65 times is refused with an error instead of a reply of any size, 64 times is answered,
/// and the connection serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_crate_mget_past_the_reply_budget_is_an_error() {
    let c = RespCluster::start(3, &[]).await;
    // 64 MiB answers take a debug build longer than the crate's default response timeout.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(60)));
    let mut con = redis::Client::open(format!("redis://{}/", c.resp(0)))
        .expect("a redis client")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connecting with the redis crate");
    let value = vec![7u8; 1024 * 1024];
    let () = redis::cmd("SET")
        .arg("big")
        .arg(&value)
        .query_async(&mut con)
        .await
        .unwrap();
    let answered: Vec<Vec<u8>> = redis::cmd("MGET")
        .arg(vec!["big"; 64])
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(answered.len(), 64);
    assert!(answered.iter().all(|v| *v == value));
    let err = redis::cmd("MGET")
        .arg(vec!["big"; 65])
        .query_async::<Vec<Vec<u8>>>(&mut con)
        .await
        .unwrap_err();
    assert_ne!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.to_string().contains("ask for fewer keys"), "{err}");
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
}
