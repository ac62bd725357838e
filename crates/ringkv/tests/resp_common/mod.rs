//! Harness for the RESP tests: real `ringkv server` processes on 127.0.0.1, each with
//! `--resp` on its own port, and a raw RESP2 connection that reads replies with deadlines.
//!
//! Children are killed when the `RespCluster` is dropped; if the test is panicking, the tail
//! of every node's stderr is printed and the data dirs are kept.

#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test binary uses a subset
pub use ringkv_testkit::{free_port, poll_until, stderr_tail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline for the cluster to form.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for one reply on a raw connection.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct NodeProc {
    id: String,
    dir: PathBuf,
    http: SocketAddr,
    resp: SocketAddr,
    child: Child,
}

pub struct RespCluster {
    root: PathBuf,
    nodes: Vec<NodeProc>,
    client: reqwest::Client,
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

impl RespCluster {
    /// Starts `n` nodes with `--resp`, and `extra` flags on each, and waits until every node
    /// sees every node `up`.
    pub async fn start(n: usize, extra: &[&str]) -> RespCluster {
        let root = std::env::temp_dir().join(format!(
            "ringkv-resp-test-{}-{}",
            std::process::id(),
            DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("creating the test dir");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let mut cluster = RespCluster {
            root,
            nodes: Vec::new(),
            client,
        };
        let mut seed = None;
        for i in 0..n {
            let listen = cluster.add_node(i, seed, extra).await;
            seed.get_or_insert(listen);
        }
        cluster.wait_formed().await;
        cluster
    }

    /// Starts node `i`, retrying with fresh ports if it exits (a port taken meanwhile).
    async fn add_node(&mut self, i: usize, seed: Option<SocketAddr>, extra: &[&str]) -> SocketAddr {
        let id = format!("n{}", i + 1);
        let dir = self.root.join(&id);
        std::fs::create_dir_all(&dir).expect("creating the node dir");
        for attempt in 0..5 {
            let (listen, http, resp) = (
                loopback(free_port()),
                loopback(free_port()),
                loopback(free_port()),
            );
            let mut args: Vec<String> = [
                "server",
                "--node-id",
                &id,
                "--listen",
                &listen.to_string(),
                "--http",
                &http.to_string(),
                "--resp",
                &resp.to_string(),
                "--data-dir",
                &dir.join("data").to_string_lossy(),
                "--gossip-interval-ms",
                "100",
                "--storage",
                "memory",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(seed) = seed {
                args.extend(["--seed".to_string(), seed.to_string()]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            let child = spawn(&dir, &args);
            self.nodes.push(NodeProc {
                id: id.clone(),
                dir: dir.clone(),
                http,
                resp,
                child,
            });
            if self.wait_ready(i).await {
                return listen;
            }
            let node = self.nodes.pop().expect("just pushed");
            eprintln!(
                "node {id} exited on attempt {attempt}; retrying with fresh ports:\n{}",
                stderr_tail(&node.dir)
            );
        }
        panic!("node {id} could not start");
    }

    /// Waits until node `i` answers `/status`; false if it exited first.
    async fn wait_ready(&mut self, i: usize) -> bool {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let url = format!("http://{}/status", self.nodes[i].http);
        loop {
            if self.nodes[i].child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if let Ok(r) = self.client.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return true;
            }
            assert!(Instant::now() < deadline, "node {i} did not answer /status");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn wait_formed(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        'poll: loop {
            assert!(
                Instant::now() < deadline,
                "the cluster did not form within {FORM_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
            for node in &self.nodes {
                let url = format!("http://{}/status", node.http);
                let Ok(r) = self.client.get(&url).send().await else {
                    continue 'poll;
                };
                let Ok(status) = r.json::<serde_json::Value>().await else {
                    continue 'poll;
                };
                let Some(members) = status["cluster"]["members"].as_array() else {
                    continue 'poll;
                };
                let all_up = ids.iter().all(|id| {
                    members
                        .iter()
                        .any(|m| m["node_id"] == *id && m["status"] == "up")
                });
                if members.len() != ids.len() || !all_up {
                    continue 'poll;
                }
            }
            return;
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn resp(&self, i: usize) -> SocketAddr {
        self.nodes[i].resp
    }

    pub fn http(&self, i: usize) -> SocketAddr {
        self.nodes[i].http
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].child.id()
    }

    /// Whether node `i` is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].child.try_wait().expect("try_wait").is_none()
    }

    /// Node `i`'s resident memory in KiB, from /proc.
    pub fn rss_kib(&self, i: usize) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(i)))
            .expect("reading /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// GET `path` on node `i`'s HTTP API; the body as text.
    pub async fn http_get(&self, i: usize, path: &str) -> String {
        let url = format!("http://{}{path}", self.nodes[i].http);
        let r = self.client.get(&url).send().await.expect("HTTP GET");
        r.text().await.expect("HTTP body")
    }
}

fn spawn(dir: &std::path::Path, args: &[String]) -> Child {
    let log = |name: &str| {
        File::options()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .expect("opening a log file")
    };
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log("stdout.log"))
        .stderr(log("stderr.log"))
        .spawn()
        .expect("spawning ringkv server")
}

impl Drop for RespCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "----- {} stderr tail -----\n{}",
                    node.id,
                    stderr_tail(&node.dir)
                );
            }
            eprintln!("data kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A RESP2 reply as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
    NilArray,
}

impl Value {
    pub fn bulk(bytes: impl AsRef<[u8]>) -> Value {
        Value::Bulk(bytes.as_ref().to_vec())
    }
}

/// Encodes a command as an array of bulk strings.
pub fn command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A raw connection: write any bytes, read replies one at a time with a deadline.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write failed");
    }

    /// Sends a command and reads its reply.
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Value {
        self.send(&command(args)).await;
        self.reply().await
    }

    /// The next reply; panics if none arrives within `REPLY_TIMEOUT` or the server closes.
    pub async fn reply(&mut self) -> Value {
        match self.try_reply().await {
            Some(v) => v,
            None => panic!("the server closed the connection instead of replying"),
        }
    }

    /// The next reply, or `None` if the server closed the connection first.
    pub async fn try_reply(&mut self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some((value, used)) = parse_reply(&self.buf) {
                self.buf.drain(..used);
                return Some(value);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("no reply within the deadline");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Asserts the server closes the connection (after any replies still in flight) within
    /// `REPLY_TIMEOUT`; answers the replies read before the close.
    pub async fn expect_closed(&mut self) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(v) = self.try_reply().await {
            seen.push(v);
        }
        seen
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

fn line_at(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let end = buf[from..].windows(2).position(|w| w == b"\r\n")? + from;
    Some((&buf[from..end], end + 2))
}

/// Parses one reply at the start of `buf`: the value and the bytes it used.
pub fn parse_reply(buf: &[u8]) -> Option<(Value, usize)> {
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], at: usize) -> Option<(Value, usize)> {
    let kind = *buf.get(at)?;
    let (line, next) = line_at(buf, at + 1)?;
    let text = String::from_utf8_lossy(line).into_owned();
    let number = || text.parse::<i64>().expect("a number in a reply header");
    match kind {
        b'+' => Some((Value::Status(text), next)),
        b'-' => Some((Value::Error(text), next)),
        b':' => Some((Value::Int(number()), next)),
        b'$' if number() < 0 => Some((Value::Nil, next)),
        b'$' => {
            let len = number() as usize;
            let body = buf.get(next..next + len)?;
            (buf.get(next + len..next + len + 2)? == b"\r\n").then_some(())?;
            Some((Value::Bulk(body.to_vec()), next + len + 2))
        }
        b'*' if number() < 0 => Some((Value::NilArray, next)),
        b'*' => {
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..number() {
                let (item, after) = parse_at(buf, at)?;
                items.push(item);
                at = after;
            }
            Some((Value::Array(items), at))
        }
        other => panic!("not a RESP2 reply type: {:?}", other as char),
    }
}
