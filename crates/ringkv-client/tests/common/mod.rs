//! Real-process cluster harness for the client tests: builds the `ringkv` binary (once per
//! test process), starts `ringkv server` nodes on 127.0.0.1 with fresh ports and data dirs,
//! and kills them when the `Cluster` is dropped. If the test panicked, the tail of every
//! node's stderr is printed and the data dirs are kept.
//!
//! (Adapted from `crates/ringkv/tests/common/mod.rs`, which can use `CARGO_BIN_EXE_ringkv`;
//! this crate cannot depend on a binary, so it builds and locates it itself.)

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringkv_testkit::{STDERR_TAIL_BYTES, node_command, stop_nodes};
#[allow(unused_imports)] // each test binary uses a subset
pub use ringkv_testkit::{encode_key, free_port, poll_until, stderr_tail};
use serde_json::Value;

/// Deadline for a cluster to form or a node to become ready.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The `ringkv` binary, built on first use by `cargo build --workspace --bins`: the same
/// package set as `cargo nextest run --workspace`, so dependency features unify the same way
/// and an up-to-date binary is not rebuilt (a `-p ringkv` build would relink it under other
/// tests' running clusters).
pub fn ringkv_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--bins"])
            .current_dir(&workspace)
            .status()
            .expect("running `cargo build --workspace --bins`");
        assert!(
            status.success(),
            "`cargo build --workspace --bins` failed ({status}); the client tests need the server binary"
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let binary = target.join("debug").join("ringkv");
        assert!(
            binary.is_file(),
            "the ringkv binary is missing at {}: run `cargo build -p ringkv` first",
            binary.display()
        );
        binary
    })
}

struct NodeSpec {
    id: String,
    listen: SocketAddr,
    http: SocketAddr,
    dir: PathBuf,
    args: Vec<String>,
}

struct Node {
    spec: NodeSpec,
    child: Option<Child>,
}

pub struct Cluster {
    root: PathBuf,
    nodes: Vec<Node>,
    extra: Vec<String>,
    pub http: reqwest::Client,
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

fn fresh_root() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "ringkv-client-test-{}-{}-{nanos}",
        std::process::id(),
        DIR_COUNTER.fetch_add(1, Ordering::Relaxed),
    ));
    std::fs::create_dir_all(&dir).expect("creating the test dir");
    dir
}

impl Cluster {
    /// Starts `n` nodes with fast timings (plus `extra` flags) and waits until they formed.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        let binary = ringkv_binary();
        let mut c = Cluster {
            root: fresh_root(),
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
        };
        for _ in 0..n {
            c.add_node_unformed(binary).await;
        }
        c.wait_formed().await;
        c
    }

    /// Starts one more node that joins through node 0, and waits until everyone sees it.
    pub async fn add_node(&mut self) {
        self.add_node_unformed(ringkv_binary()).await;
        self.wait_formed().await;
    }

    async fn add_node_unformed(&mut self, binary: &Path) {
        let i = self.nodes.len();
        let id = format!("n{}", i + 1);
        let dir = self.root.join(&id);
        std::fs::create_dir_all(&dir).expect("creating the node dir");
        for attempt in 0..5 {
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut args: Vec<String> = [
                "server",
                "--node-id",
                &id,
                "--listen",
                &listen.to_string(),
                "--http",
                &http.to_string(),
                "--data-dir",
                &dir.join("data").to_string_lossy(),
                "--gossip-interval-ms",
                "100",
                "--request-timeout-ms",
                "1000",
                "--storage",
                "memory",
            ]
            .map(String::from)
            .to_vec();
            if i > 0 {
                args.push("--seed".into());
                args.push(self.nodes[0].spec.listen.to_string());
            }
            args.extend(self.extra.iter().cloned());
            let spec = NodeSpec {
                id: id.clone(),
                listen,
                http,
                dir: dir.clone(),
                args,
            };
            let child = spawn(binary, &spec);
            self.nodes.push(Node {
                spec,
                child: Some(child),
            });
            if self.wait_ready_or_exit(i).await {
                return;
            }
            eprintln!(
                "node {id} exited on attempt {attempt}; retrying with fresh ports:\n{}",
                stderr_tail(&dir)
            );
            self.nodes.pop();
        }
        panic!("node {id} could not start");
    }

    /// Whether node `i` answered `/status` 200 (false if it exited first).
    async fn wait_ready_or_exit(&mut self, i: usize) -> bool {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let url = format!("{}/status", self.url(i));
        loop {
            let child = self.nodes[i].child.as_mut().expect("running");
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not answer /status within {FORM_TIMEOUT:?}",
                self.nodes[i].spec.id
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn id(&self, i: usize) -> &str {
        &self.nodes[i].spec.id
    }

    /// Index of the node named `id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.spec.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Node `i`'s client HTTP base URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].spec.http)
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn try_status(&self, i: usize) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/status", self.url(i)))
            .send()
            .await
            .ok()?;
        if r.status().as_u16() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    /// The `ring_version` node `i` reports.
    pub async fn ring_version(&self, i: usize) -> u64 {
        self.try_status(i).await.expect("GET /status")["cluster"]["ring_version"]
            .as_u64()
            .expect("a ring_version")
    }

    /// Polls every running node's `/status` until each lists every node `up` and all report
    /// the same, non-zero `ring_version`.
    pub async fn wait_formed(&self) {
        let ids: Vec<String> = self.nodes.iter().map(|n| n.spec.id.clone()).collect();
        poll_until(FORM_TIMEOUT, "the cluster to form", || async {
            let mut versions = Vec::new();
            for i in 0..self.len() {
                let s = self.try_status(i).await?;
                let members = s["cluster"]["members"].as_array()?;
                let all_up = ids.iter().all(|id| {
                    members
                        .iter()
                        .any(|m| m["node_id"] == id.as_str() && m["status"] == "up")
                });
                if members.len() != ids.len() || !all_up {
                    return None;
                }
                versions.push(s["cluster"]["ring_version"].as_u64()?);
            }
            versions
                .iter()
                .all(|v| *v == versions[0] && *v > 0)
                .then_some(())
        })
        .await;
    }

    /// Polls node `observer` until it reports node `node` as `down`.
    pub async fn wait_down(&self, observer: usize, node: usize) {
        let id = self.id(node).to_string();
        let what = format!("{} to see {id} down", self.id(observer));
        poll_until(Duration::from_secs(15), &what, || async {
            let s = self.try_status(observer).await?;
            s["cluster"]["members"]
                .as_array()?
                .iter()
                .any(|m| m["node_id"] == id.as_str() && m["status"] == "down")
                .then_some(())
        })
        .await
    }

    /// Node `i`'s `ringkv_forwarded_total` (0 while the counter was never incremented, as
    /// the Prometheus exporter only lists a counter once it exists).
    pub async fn forwarded_total(&self, i: usize) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url(i)))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with("ringkv_forwarded_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Which nodes hold a live copy of `key` themselves (`/admin/local`).
    pub async fn holders(&self, key: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            let url = format!("{}/admin/local/{}", self.url(i), encode_key(key));
            let r = self.http.get(url).send().await.expect("GET /admin/local");
            if r.status().as_u16() == 200 {
                out.push(self.id(i).to_string());
            }
        }
        out
    }
}

fn spawn(binary: &Path, spec: &NodeSpec) -> Child {
    node_command(binary, &spec.args, &spec.dir)
        .spawn()
        .expect("spawning ringkv server")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_nodes(
            &self.root,
            std::thread::panicking(),
            STDERR_TAIL_BYTES,
            self.nodes
                .iter_mut()
                .map(|n| (n.spec.id.as_str(), n.spec.dir.as_path(), &mut n.child)),
        );
    }
}
