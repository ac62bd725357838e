//! Real-process cluster harness: starts `ringkv server` processes on 127.0.0.1, each with its
//! own data dir and free ports, and drives them through the public HTTP API.
//!
//! Every child is killed when the `Cluster` is dropped; if the test is panicking, the tail of
//! every node's stderr is printed and the data dirs are kept for inspection.

#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
#[allow(unused_imports)] // each test binary uses a subset
pub use ringkv_testkit::{Rng, encode_key, free_port, poll_until, stderr_tail};
use ringkv_testkit::{STDERR_TAIL_BYTES, node_command, stop_nodes};
use serde_json::Value;

/// Default deadline for a cluster to form or a node to become ready. Forming takes a few
/// seconds on an idle machine, but a node that gossips late joins in a second transition after
/// the first one's partitions were all handed over, and on a loaded 2-core machine (two
/// cluster tests side by side with a build) that took over 30 s once.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Default deadline for a status change to be observed through gossip.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A seed from the clock, printed so that a failing run can be replayed.
pub fn seed_from_env_or_clock(test: &str) -> u64 {
    let seed = std::env::var("RINGKV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with RINGKV_TEST_SEED={seed})");
    seed
}

/// An HTTP answer, as the tests look at it.
#[derive(Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    pub ctx: Option<String>,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.body[..self.body.len().min(300)];
        f.debug_struct("Resp")
            .field("status", &self.status)
            .field("body", &String::from_utf8_lossy(shown))
            .field("body_len", &self.body.len())
            .field("ctx", &self.ctx)
            .finish()
    }
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error.code` of an error answer.
    pub fn error_code(&self) -> String {
        let j = self.json();
        j["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {j}"))
            .to_string()
    }

    /// The decoded `siblings` of a 300 answer, sorted.
    pub fn siblings(&self) -> Vec<Vec<u8>> {
        assert_eq!(
            self.status,
            300,
            "expected siblings, got {} {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        let j = self.json();
        let mut v: Vec<Vec<u8>> = j["siblings"]
            .as_array()
            .unwrap_or_else(|| panic!("no siblings array in {j}"))
            .iter()
            .map(|s| {
                BASE64
                    .decode(s.as_str().expect("a base64 string"))
                    .expect("valid base64")
            })
            .collect();
        v.sort();
        v
    }

    /// Every live value of a GET answer: one for 200, the siblings for 300, none for 404.
    pub fn values(&self) -> Vec<Vec<u8>> {
        match self.status {
            200 => vec![self.body.clone()],
            300 => self.siblings(),
            404 => Vec::new(),
            s => panic!(
                "not a read answer: {s} {:?}",
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

/// Node `i`'s launch parameters; kept so it can be restarted identically.
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
    api: Api,
}

/// The HTTP face of a cluster: cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    ids: Vec<String>,
    urls: Vec<String>,
}

impl std::ops::Deref for Cluster {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

fn fresh_root() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "ringkv-test-{}-{}-{}",
        std::process::id(),
        DIR_COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    ));
    std::fs::create_dir_all(&dir).expect("creating the test dir");
    dir
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: sending a signal to a child process this harness started; no memory is touched.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

impl Cluster {
    /// Starts `n` nodes with the fast default timings and waits until the cluster formed.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[]).await
    }

    /// As `start`, with extra `ringkv server` flags for every node.
    pub async fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let c = Cluster::launch(n, extra).await;
        c.wait_formed().await;
        c.wait_settled().await;
        c
    }

    /// Starts `n` nodes and waits until each answers `/status`, not until they formed.
    pub async fn launch(n: usize, extra: &[&str]) -> Cluster {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .expect("an HTTP client");
        let api = Api {
            client,
            ids: Vec::new(),
            urls: Vec::new(),
        };
        let mut c = Cluster {
            root: fresh_root(),
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            api,
        };
        for i in 0..n {
            c.add_node(i, &[]).await;
        }
        c
    }

    /// Starts nodes with flags of their own besides the common `extra` (zones, weights), and
    /// waits until each answers `/status`.
    pub async fn launch_each(per_node: &[&[&str]], extra: &[&str]) -> Cluster {
        let mut c = Cluster::launch(0, extra).await;
        for own in per_node {
            c.join_node(own).await;
        }
        c
    }

    /// Starts one more node, seeded from node 0, with flags of its own; returns its index.
    /// It answers `/status` when this returns; it joins the ring through the claimant.
    pub async fn join_node(&mut self, own: &[&str]) -> usize {
        let i = self.nodes.len();
        self.add_node(i, own).await;
        i
    }

    /// Adds node `i` (seeded from node 0), retrying with fresh ports if it cannot bind.
    async fn add_node(&mut self, i: usize, own: &[&str]) {
        let id = format!("n{}", i + 1);
        let dir = self.root.join(&id);
        for attempt in 0..5 {
            let listen = addr(free_port());
            let http = addr(free_port());
            let mut args: Vec<String> = vec![
                "server".into(),
                "--node-id".into(),
                id.clone(),
                "--listen".into(),
                listen.to_string(),
                "--http".into(),
                http.to_string(),
                "--data-dir".into(),
                dir.join("data").to_string_lossy().into_owned(),
                "--gossip-interval-ms".into(),
                "100".into(),
                "--request-timeout-ms".into(),
                "1000".into(),
                "--storage".into(),
                "fjall".into(),
            ];
            if i > 0 {
                args.push("--seed".into());
                args.push(self.nodes[0].spec.listen.to_string());
            }
            args.extend(self.extra.iter().cloned());
            args.extend(own.iter().map(|s| s.to_string()));
            let spec = NodeSpec {
                id: id.clone(),
                listen,
                http,
                dir: dir.clone(),
                args,
            };
            std::fs::create_dir_all(&dir).expect("creating the node dir");
            let child = spawn(&spec);
            if i < self.nodes.len() {
                self.nodes[i] = Node {
                    spec,
                    child: Some(child),
                };
            } else {
                self.nodes.push(Node {
                    spec,
                    child: Some(child),
                });
                self.api.ids.push(String::new());
                self.api.urls.push(String::new());
            }
            self.api.ids[i] = id.clone();
            self.api.urls[i] = format!("http://{http}");
            match self.wait_ready_or_exit(i).await {
                Ok(()) => return,
                Err(status) => {
                    let tail = stderr_tail(&self.nodes[i].spec.dir);
                    eprintln!(
                        "node {id} exited with {status} on attempt {attempt} (retrying with fresh ports):\n{tail}"
                    );
                    self.nodes[i].child = None;
                }
            }
        }
        panic!("node {id} could not start");
    }

    /// Waits until node `i` answers `/status` 200, or returns its exit status if it died.
    async fn wait_ready_or_exit(&mut self, i: usize) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let url = format!("{}/status", self.http(i));
        loop {
            if let Some(status) = self.nodes[i]
                .child
                .as_mut()
                .expect("running")
                .try_wait()
                .expect("try_wait")
            {
                return Err(status);
            }
            if let Ok(r) = self
                .client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().as_u16() == 200
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not answer /status within {FORM_TIMEOUT:?}",
                self.nodes[i].spec.id
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn http_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].spec.http
    }

    pub fn listen_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].spec.listen
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].child.as_ref().expect("node is running").id()
    }

    /// A clone of the HTTP face, for spawned tasks.
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM node `i` and wait up to `timeout` for it to exit; `None` if it did not.
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.nodes[i].child.take().expect("node is running");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP node `i`.
    pub fn stop(&self, i: usize) {
        signal(self.pid(i), libc::SIGSTOP);
    }

    /// SIGCONT node `i`.
    pub fn cont(&self, i: usize) {
        signal(self.pid(i), libc::SIGCONT);
    }

    /// Starts node `i` again with the same flags and data dir; waits until it answers.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "restart of a running node");
        // The ports were just released by the dead process; retry briefly in case the
        // kernel has not let go of them yet.
        for attempt in 0..20 {
            let child = spawn(&self.nodes[i].spec);
            self.nodes[i].child = Some(child);
            match self.wait_ready_or_exit(i).await {
                Ok(()) => return,
                Err(status) => {
                    eprintln!(
                        "restart of {} exited with {status} (attempt {attempt}):\n{}",
                        self.id(i),
                        stderr_tail(&self.nodes[i].spec.dir)
                    );
                    self.nodes[i].child = None;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        panic!("node {} could not restart", self.id(i));
    }
}

impl Api {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    pub fn http(&self, i: usize) -> String {
        self.urls[i].clone()
    }

    /// Polls every node's `/status` until each lists every node `up` and all report the same
    /// `ring_version`.
    pub async fn wait_formed(&self) {
        let n = self.len();
        let ids: Vec<String> = (0..n).map(|i| self.id(i).to_string()).collect();
        poll_until(FORM_TIMEOUT, "the cluster to form", || async {
            let mut versions = Vec::new();
            for i in 0..n {
                let s = self.try_status(i).await?;
                let members = s["cluster"]["members"].as_array()?;
                if members.len() != n {
                    return None;
                }
                for id in &ids {
                    if !members
                        .iter()
                        .any(|m| m["node_id"] == id.as_str() && m["status"] == "up")
                    {
                        return None;
                    }
                }
                versions.push(s["cluster"]["ring_version"].as_u64()?);
            }
            (versions.iter().all(|v| *v == versions[0] && *v > 0)).then_some(())
        })
        .await;
    }

    /// Whether every node's `/status` lists every node `up`, all with one ring version.
    pub async fn all_up(&self) -> bool {
        let n = self.len();
        let mut versions = Vec::new();
        for i in 0..n {
            let Some(s) = self.try_status(i).await else {
                return false;
            };
            let Some(members) = s["cluster"]["members"].as_array() else {
                return false;
            };
            let up = (0..n).all(|j| {
                members
                    .iter()
                    .any(|m| m["node_id"] == self.id(j) && m["status"] == "up")
            });
            if members.len() != n || !up {
                return false;
            }
            versions.push(s["cluster"]["ring_version"].as_u64());
        }
        versions.iter().all(|v| *v == versions[0])
    }

    /// Polls until `all_up` held without a break for `SETTLE` (failure detectors of freshly
    /// joined nodes flap at first: `cluster_basic::formed_cluster_members_stay_up` checks that
    /// separately, so the other tests test their own behaviour).
    pub async fn wait_settled(&self) {
        const SETTLE: Duration = Duration::from_secs(2);
        let deadline = Instant::now() + FORM_TIMEOUT;
        let mut since: Option<Instant> = None;
        loop {
            if self.all_up().await {
                if since.get_or_insert_with(Instant::now).elapsed() >= SETTLE {
                    return;
                }
            } else {
                since = None;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {FORM_TIMEOUT:?} waiting for every view to stay all-up for {SETTLE:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub async fn try_status(&self, i: usize) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/status", self.http(i)))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if r.status().as_u16() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    pub async fn status(&self, i: usize) -> Value {
        self.try_status(i)
            .await
            .unwrap_or_else(|| panic!("GET /status on {} failed", self.id(i)))
    }

    pub async fn ring(&self, i: usize) -> Value {
        let r = self
            .client
            .get(format!("{}/ring", self.http(i)))
            .send()
            .await
            .expect("GET /ring");
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.expect("JSON ring")
    }

    /// The status of `node` in `observer`'s `/status`, if listed.
    pub async fn member_status(&self, observer: usize, node: usize) -> Option<String> {
        let s = self.try_status(observer).await?;
        let id = self.id(node);
        s["cluster"]["members"]
            .as_array()?
            .iter()
            .find(|m| m["node_id"] == id)
            .and_then(|m| m["status"].as_str().map(str::to_string))
    }

    /// Polls `observer`'s `/status` until it shows `node` with `status`.
    pub async fn wait_status(&self, observer: usize, node: usize, status: &str) {
        self.wait_status_within(observer, node, status, STATUS_TIMEOUT)
            .await
    }

    pub async fn wait_status_within(
        &self,
        observer: usize,
        node: usize,
        status: &str,
        timeout: Duration,
    ) {
        let what = format!("{} to see {} {status}", self.id(observer), self.id(node));
        poll_until(timeout, &what, || async {
            (self.member_status(observer, node).await.as_deref() == Some(status)).then_some(())
        })
        .await
    }

    fn kv_url(&self, node: usize, key: &[u8], query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("{}/kv/{}{q}", self.http(node), encode_key(key))
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        self.try_send(req).await.expect("HTTP request failed")
    }

    /// A request that may get no HTTP answer at all (the node may be dying, or the
    /// connection may close under the request).
    pub async fn try_send(&self, req: reqwest::RequestBuilder) -> Result<Resp, reqwest::Error> {
        let r = req.send().await?;
        let status = r.status().as_u16();
        let ctx = r
            .headers()
            .get("x-context")
            .map(|v| v.to_str().expect("X-Context is ASCII").to_string());
        let body = r.bytes().await?.to_vec();
        Ok(Resp { status, body, ctx })
    }

    pub async fn put(
        &self,
        node: usize,
        key: &[u8],
        value: &[u8],
        ctx: Option<&str>,
        query: &str,
    ) -> Resp {
        let mut req = self
            .client
            .put(self.kv_url(node, key, query))
            .body(value.to_vec());
        if let Some(c) = ctx {
            req = req.header("x-context", c);
        }
        self.send(req).await
    }

    pub async fn get(&self, node: usize, key: &[u8], query: &str) -> Resp {
        self.send(self.client.get(self.kv_url(node, key, query)))
            .await
    }

    pub async fn delete(&self, node: usize, key: &[u8], ctx: Option<&str>, query: &str) -> Resp {
        let mut req = self.client.delete(self.kv_url(node, key, query));
        if let Some(c) = ctx {
            req = req.header("x-context", c);
        }
        self.send(req).await
    }

    /// The value of counter or gauge `name` (without labels) on node `i`'s `/metrics`.
    pub async fn metric(&self, node: usize, name: &str) -> f64 {
        let r = self.get_path(node, "/metrics").await;
        assert_eq!(r.status, 200, "{r:?}");
        let text = String::from_utf8_lossy(&r.body);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} is not on node {node}'s /metrics:\n{text}"))
    }

    /// GET a raw path (already encoded) on node `i`.
    pub async fn get_path(&self, node: usize, path: &str) -> Resp {
        self.send(self.client.get(format!("{}{path}", self.http(node))))
            .await
    }

    /// What node `i` itself holds for `key`: `None` on 404, else each version's value
    /// (`None` for a tombstone).
    pub async fn local(&self, node: usize, key: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
        let r = self
            .send(self.client.get(format!(
                "{}/admin/local/{}",
                self.http(node),
                encode_key(key)
            )))
            .await;
        match r.status {
            404 => None,
            200 => {
                let j = r.json();
                let versions = j["versions"]
                    .as_array()
                    .unwrap_or_else(|| panic!("no versions in {j}"));
                Some(
                    versions
                        .iter()
                        .map(|v| {
                            v["value"]
                                .as_str()
                                .map(|s| BASE64.decode(s).expect("valid base64"))
                        })
                        .collect(),
                )
            }
            s => panic!(
                "GET /admin/local on {} answered {s}: {:?}",
                self.id(node),
                String::from_utf8_lossy(&r.body)
            ),
        }
    }

    /// Whether node `i` itself holds `value` as a live version of `key`.
    pub async fn local_has(&self, node: usize, key: &[u8], value: &[u8]) -> bool {
        self.local(node, key)
            .await
            .is_some_and(|vs| vs.iter().any(|v| v.as_deref() == Some(value)))
    }

    /// Asserts a plain write and read of a fresh key through node `i` work.
    pub async fn assert_serves(&self, i: usize, tag: &str) {
        self.assert_serves_with(i, tag, "", "").await
    }

    /// As `assert_serves`, with query strings (quorums) for the write and the read.
    pub async fn assert_serves_with(&self, i: usize, tag: &str, put_query: &str, get_query: &str) {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let key = format!(
            "serves-{tag}-{}-{}",
            self.id(i),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let put = self
            .put(i, key.as_bytes(), tag.as_bytes(), None, put_query)
            .await;
        assert_eq!(
            put.status,
            204,
            "{} no longer serves a put ({put_query}) after {tag}: {put:?}",
            self.id(i)
        );
        let got = self.get(i, key.as_bytes(), get_query).await;
        assert_eq!(
            got.status,
            200,
            "{} no longer serves a get ({get_query}) after {tag}: {got:?}",
            self.id(i)
        );
        assert_eq!(got.body, tag.as_bytes());
    }

    /// A PUT that may fail at the transport level (the node may be dying).
    pub async fn try_put(
        &self,
        node: usize,
        key: &[u8],
        value: &[u8],
        query: &str,
    ) -> Result<Resp, reqwest::Error> {
        let req = self
            .client
            .put(self.kv_url(node, key, query))
            .body(value.to_vec());
        self.try_send(req).await
    }

    /// A GET that may fail at the transport level.
    pub async fn try_get(
        &self,
        node: usize,
        key: &[u8],
        query: &str,
    ) -> Result<Resp, reqwest::Error> {
        self.try_send(self.client.get(self.kv_url(node, key, query)))
            .await
    }
}

fn spawn(spec: &NodeSpec) -> Child {
    node_command(env!("CARGO_BIN_EXE_ringkv"), &spec.args, &spec.dir)
        .spawn()
        .expect("spawning ringkv server")
}

/// `GET /status` over a plain socket, for failure reports from `Drop` (no runtime there).
fn status_blocking(http: SocketAddr) -> String {
    use std::io::Write;
    let attempt = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /status HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out).into_owned();
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(text))
    };
    attempt().unwrap_or_else(|e| format!("(no answer: {e})"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                if node.child.is_some() {
                    eprintln!(
                        "----- {} /status at failure -----\n{}",
                        node.spec.id,
                        status_blocking(node.spec.http)
                    );
                }
            }
        }
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
