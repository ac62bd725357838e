//! The command-line face: `ringkv put|get|delete|status|ring` against a real cluster, and
//! `ringkv dev` starting and stopping a local cluster.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Cluster, poll_until};

fn ringkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .output()
        .expect("running ringkv")
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ringkv failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `context:` line of a command's output.
fn context_line(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("context: "))
        .unwrap_or_else(|| panic!("no context line in {text:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_reads_writes_deletes_and_shows_siblings_and_the_cluster() {
    let c = Cluster::start(3).await;
    let (n1, n2) = (c.http(0), c.http(1));

    let put = stdout_of(&ringkv(&["put", "cart", "milk", "--node", &n1]));
    assert!(put.starts_with("ok"), "{put}");
    let got = stdout_of(&ringkv(&["get", "cart", "--node", &n2, "--r", "2"]));
    assert_eq!(got.lines().next(), Some("milk"), "{got}");
    let ctx = context_line(&got);

    // Two writes with the same context: the CLI prints both siblings and one context.
    stdout_of(&ringkv(&[
        "put",
        "cart",
        "milk,eggs",
        "--context",
        &ctx,
        "--node",
        &n1,
    ]));
    stdout_of(&ringkv(&[
        "put",
        "cart",
        "milk,bread",
        "--context",
        &ctx,
        "--node",
        &n2,
    ]));
    let siblings = stdout_of(&ringkv(&["get", "cart", "--node", &n1, "--r", "3"]));
    assert!(siblings.starts_with("2 siblings"), "{siblings}");
    assert!(
        siblings.contains("[1] milk,") && siblings.contains("[2] milk,"),
        "{siblings}"
    );
    let both = context_line(&siblings);
    stdout_of(&ringkv(&[
        "put",
        "cart",
        "milk,eggs,bread",
        "--context",
        &both,
        "--node",
        &n1,
    ]));
    let merged = stdout_of(&ringkv(&["get", "cart", "--node", &n2, "--r", "3"]));
    assert_eq!(merged.lines().next(), Some("milk,eggs,bread"), "{merged}");

    let del = stdout_of(&ringkv(&[
        "delete",
        "cart",
        "--context",
        &context_line(&merged),
        "--node",
        &n1,
        "--w",
        "3",
    ]));
    assert!(del.starts_with("ok"), "{del}");
    let gone = stdout_of(&ringkv(&["get", "cart", "--node", &n2, "--r", "3"]));
    assert!(gone.starts_with("(not found)"), "{gone}");

    // A delete without a context is concurrent with what is stored: the stored value survives,
    // and the command says so.
    stdout_of(&ringkv(&["put", "note", "kept", "--node", &n1, "--w", "3"]));
    let blind = ringkv(&["delete", "note", "--node", &n1, "--w", "3"]);
    assert!(blind.status.success(), "{blind:?}");
    assert!(
        String::from_utf8_lossy(&blind.stderr).contains("without --context"),
        "{blind:?}"
    );
    let kept = stdout_of(&ringkv(&["get", "note", "--node", &n2, "--r", "3"]));
    assert!(kept.contains("kept"), "{kept}");

    let status = stdout_of(&ringkv(&["status", "--node", &n1]));
    for i in 0..3 {
        let line = status
            .lines()
            .find(|l| l.starts_with(c.id(i)))
            .unwrap_or_else(|| panic!("{status}"));
        assert!(line.contains(" up "), "{line}");
    }
    let ring = stdout_of(&ringkv(&["ring", "--node", &n1]));
    assert!(ring.contains("N=3"), "{ring}");
    for i in 0..3 {
        assert!(ring.lines().any(|l| l.starts_with(c.id(i))), "{ring}");
    }

    // A bad request is a clear error and a non-zero exit, not a crash.
    let bad = ringkv(&["get", "cart", "--node", &n1, "--r", "9"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bad_request"),
        "{bad:?}"
    );
}

/// Whether 127.0.0.1:`port` is free for TCP and UDP right now.
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// Starts `ringkv dev` on three consecutive ports per role, below the ephemeral range where
/// other tests pick theirs, on a base whose ports are all free right now.
fn start_dev(dir: &std::path::Path, nodes: u16) -> (std::process::Child, u16) {
    // Seeded by process and folder, so two dev tests in one process pick different ports.
    let salt = dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
    let mut rng = common::Rng::new(u64::from(std::process::id()) ^ salt);
    for _ in 0..20 {
        let base = 10_000 + (rng.below(2_000) as u16) * 10;
        let ports = (0..3).flat_map(|i| [base + i, base + 100 + i, base + 200 + i]);
        if !ports.into_iter().all(port_free) {
            continue;
        }
        let child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["dev", "--nodes", &nodes.to_string()])
            .args(["--gossip-interval-ms", "100"])
            .args(["--http-base", &base.to_string()])
            .args(["--listen-base", &(base + 100).to_string()])
            .args(["--resp-base", &(base + 200).to_string()])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ringkv dev");
        return (child, base);
    }
    panic!("could not start ringkv dev on free ports");
}

/// `ringkv dev` starts a working cluster, prints how to reach it, and stops on Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_starts_a_cluster_and_stops_on_interrupt() {
    dev_serves_then_stops_its_nodes_on(libc::SIGINT, "Ctrl-C").await;
}

/// `kill <pid>` of `ringkv dev` (SIGTERM to dev alone) stops its nodes too, instead of leaving
/// them running without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_stops_its_nodes_on_sigterm() {
    dev_serves_then_stops_its_nodes_on(libc::SIGTERM, "SIGTERM").await;
}

/// `ringkv dev --nodes 1` is a cluster that serves: one replica per key, R and W of 1 (a
/// node founding N=3 alone could never reach a quorum of 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_with_one_node_serves_reads_and_writes() {
    let dir = std::env::temp_dir().join(format!("ringkv-cli-dev1-{}", std::process::id()));
    let (mut child, base) = start_dev(&dir, 1);
    let url = format!("http://127.0.0.1:{base}/kv/solo");
    let client = reqwest::Client::new();
    poll_until(
        Duration::from_secs(60),
        "the one-node dev cluster to take a write",
        || async {
            let r = client.put(&url).body("alone").send().await.ok()?;
            (r.status().as_u16() == 204).then_some(())
        },
    )
    .await;
    let got = client.get(&url).send().await.expect("GET");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.text().await.expect("body"), "alone");
    common::signal(child.id(), libc::SIGINT);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("waiting for ringkv dev").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "ringkv dev did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `ringkv dev`, checks it serves, sends `signal` to the dev process alone (not its
/// process group), and requires dev to exit cleanly with every node stopped.
async fn dev_serves_then_stops_its_nodes_on(signal: libc::c_int, name: &str) {
    let dir = std::env::temp_dir().join(format!("ringkv-cli-dev-{}-{signal}", std::process::id()));
    let (mut child, base) = start_dev(&dir, 3);
    // Collect dev's stdout as it comes: the banner says when dev itself considers the
    // cluster formed and waits for Ctrl-C.
    let banner = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stdout = child.stdout.take().expect("stdout");
    let sink = banner.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("banner lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let http = format!("http://127.0.0.1:{base}");
    let client = reqwest::Client::new();
    for i in 0..3 {
        let url = format!("http://127.0.0.1:{}/status", base + i);
        poll_until(
            Duration::from_secs(60),
            "every dev node to see three members up",
            || async {
                let status: serde_json::Value =
                    client.get(&url).send().await.ok()?.json().await.ok()?;
                let members = status["cluster"]["members"].as_array()?.clone();
                (members.iter().filter(|m| m["status"] == "up").count() == 3).then_some(())
            },
        )
        .await;
    }
    poll_until(
        Duration::from_secs(60),
        "the dev cluster to serve a write",
        || async {
            let r = client
                .put(format!("{http}/kv/dev-key"))
                .body("hi")
                .send()
                .await
                .ok()?;
            (r.status().as_u16() == 204).then_some(())
        },
    )
    .await;
    let status: serde_json::Value = client
        .get(format!("{http}/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(
        status["node_id"], "n1",
        "the cluster answering is the dev cluster: {status}"
    );
    let via_n3 = format!("http://127.0.0.1:{}/kv/dev-key", base + 2);
    let body = client
        .get(&via_n3)
        .send()
        .await
        .expect("GET via n3")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "hi");

    poll_until(Duration::from_secs(60), "the dev banner", || async {
        banner
            .lock()
            .expect("banner lock")
            .contains("Ctrl-C stops the cluster")
            .then_some(())
    })
    .await;
    common::signal(child.id(), signal);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("waiting for ringkv dev") {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ringkv dev did not exit after {name}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "ringkv dev exit after {name}: {exit:?}");
    let banner = banner.lock().expect("banner lock").clone();
    assert!(
        banner.contains("3 nodes up") && banner.contains("curl"),
        "{banner}"
    );
    for i in 0..3 {
        let (http, resp) = (base + i, base + 200 + i);
        assert!(
            banner.contains(&format!("http://127.0.0.1:{http}"))
                && banner.contains(&format!("resp 127.0.0.1:{resp}")),
            "the banner names node {}'s HTTP and RESP addresses: {banner}",
            i + 1
        );
    }
    for i in 0..3 {
        let url = format!("http://127.0.0.1:{}/status", base + i);
        assert!(
            client.get(&url).send().await.is_err(),
            "node {} still answers after dev stopped on {name}",
            i + 1
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
