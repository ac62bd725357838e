//! Five (or n) real `ringkv server` processes, one per network namespace, and the faults a
//! process can suffer: SIGKILL and restart, SIGSTOP/SIGCONT, restart with a wiped data dir.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::net::Net;
use super::{POLL_INTERVAL, poll_until};
use ringkv_testkit::{log_tail, node_command, stop_nodes};

/// Inter-node port and client HTTP port, the same on every node (each has its own address).
pub const LISTEN_PORT: u16 = 7000;
pub const HTTP_PORT: u16 = 8000;
/// Deadline for a node to answer `/status`, and for the cluster to form.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of each node's stderr printed when a scenario fails.
const STDERR_TAIL_BYTES: u64 = 6000;

/// The flags every node gets: fast gossip, hints, anti-entropy and tombstone purge; a small
/// ring.
pub const NODE_FLAGS: &[&str] = &[
    "--gossip-interval-ms",
    "100",
    "--hint-interval-ms",
    "200",
    "--anti-entropy-interval-ms",
    "500",
    // Deleted carts are purged within the run, so the resurrection check covers purging.
    // The grace must outlast any message held up by a fault: partitions here last at most
    // 3 s, and TCP retransmits a segment sent into one at most about 3 s after it heals.
    "--tombstone-grace-ms",
    "5000",
    "--request-timeout-ms",
    "1000",
    "--n",
    "3",
    "--r",
    "2",
    "--w",
    "2",
    "--partitions",
    "64",
];

struct NodeProc {
    id: String,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

pub struct Cluster {
    pub net: Net,
    root: PathBuf,
    nodes: Vec<NodeProc>,
    extra: Vec<String>,
    pub client: reqwest::Client,
    /// Set when the scenario failed: keep the data dir and print the logs on drop.
    pub keep: bool,
}

impl Cluster {
    /// Sets up the network and starts `n` nodes with `extra` flags; waits until they formed.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        let net = Net::create(n).unwrap_or_else(|e| {
            panic!(
                "the fault harness needs root, iproute2 (`ip netns`, veth, bridge) and iptables \
                 to give each node its own network namespace; setting up failed: {e}"
            )
        });
        let root = std::env::temp_dir().join(format!("ringkv-fault-{}", net.prefix()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("creating the run dir");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(16)
            .build()
            .expect("an HTTP client");
        let mut c = Cluster {
            net,
            root,
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            client,
            keep: false,
        };
        eprintln!(
            "fault harness: {n} nodes in namespaces {}..{} on {}/24, run dir {}",
            c.net.namespace(0),
            c.net.namespace(n - 1),
            c.net.host_addr(),
            c.root.display()
        );
        for i in 0..n {
            let id = format!("n{}", i + 1);
            let dir = c.root.join(&id);
            std::fs::create_dir_all(&dir).expect("creating the node dir");
            c.nodes.push(NodeProc {
                id,
                dir,
                child: None,
                paused: false,
            });
            // Node 1 founds the cluster; the others join through it.
            let seeds = if i == 0 { vec![] } else { vec![0] };
            c.spawn(i, &seeds);
            c.wait_ready(i).await;
        }
        c.wait_formed().await;
        c
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn id(&self, i: usize) -> &str {
        &self.nodes[i].id
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}:{HTTP_PORT}", self.net.addr(i))
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    pub fn run_dir(&self) -> &Path {
        &self.root
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("data")
    }

    /// Starts node `i` in its namespace, seeded with the nodes in `seeds`.
    fn spawn(&mut self, i: usize, seeds: &[usize]) {
        assert!(self.nodes[i].child.is_none(), "node {i} is already running");
        let node = &self.nodes[i];
        let addr = self.net.addr(i);
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.net.namespace(i),
            env!("CARGO_BIN_EXE_ringkv").into(),
            "server".into(),
            "--node-id".into(),
            node.id.clone(),
            "--listen".into(),
            format!("{addr}:{LISTEN_PORT}"),
            "--http".into(),
            format!("{addr}:{HTTP_PORT}"),
            "--data-dir".into(),
            self.data_dir(i).to_string_lossy().into_owned(),
        ];
        for &s in seeds {
            args.push("--seed".into());
            args.push(format!("{}:{LISTEN_PORT}", self.net.addr(s)));
        }
        args.extend(NODE_FLAGS.iter().map(|s| s.to_string()));
        args.extend(self.extra.iter().cloned());
        let mut cmd = node_command("ip", &args, &node.dir);
        // SAFETY: prctl in the forked child before exec touches no shared state. `ip netns
        // exec` execs the server in place, so the server dies with the test process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("spawning `ip netns exec ... ringkv server`");
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
    }

    /// Waits until node `i` answers `/status` 200; panics if it exits or the deadline passes.
    async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/status", self.url(i));
        loop {
            let child = self.nodes[i].child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.nodes[i].child = None;
                self.keep = true;
                panic!(
                    "node {} exited with {status} while starting:\n{}",
                    self.nodes[i].id,
                    stderr_tail(&self.nodes[i].dir)
                );
            }
            if let Ok(r) = self
                .client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                && r.status().as_u16() == 200
            {
                return;
            }
            if Instant::now() >= deadline {
                self.keep = true;
                panic!(
                    "node {} did not answer /status within {START_TIMEOUT:?}",
                    self.nodes[i].id
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub async fn status(&self, i: usize) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/status", self.url(i)))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        if r.status().as_u16() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    /// Whether every running, unpaused node sees every node `up` and all agree on the ring.
    pub async fn all_up(&self) -> bool {
        let mut versions = Vec::new();
        for i in 0..self.len() {
            let Some(s) = self.status(i).await else {
                return false;
            };
            let Some(members) = s["cluster"]["members"].as_array() else {
                return false;
            };
            let up = |id: &str| {
                members
                    .iter()
                    .any(|m| m["node_id"] == id && m["status"] == "up")
            };
            if !self.nodes.iter().all(|n| up(&n.id)) {
                return false;
            }
            versions.push(s["cluster"]["ring_version"].as_u64().unwrap_or(0));
        }
        versions.iter().all(|v| *v == versions[0] && *v > 0)
    }

    /// Polls until every node sees every other one up, with the same ring.
    pub async fn wait_formed(&self) {
        poll_until(START_TIMEOUT, "every node to see all nodes up", || async {
            self.all_up().await.then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    fn pid(&self, i: usize) -> i32 {
        self.nodes[i].child.as_ref().expect("node is running").id() as i32
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        let pid = self.pid(i);
        // SAFETY: signalling a child process this harness started, by its id.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[i].paused = false;
    }

    /// Restarts a killed node with the same data dir, seeded with every other node (node 1
    /// too must join the existing cluster, not found a new one).
    pub async fn restart(&mut self, i: usize) {
        let seeds: Vec<usize> = (0..self.len()).filter(|&j| j != i).collect();
        self.spawn(i, &seeds);
        self.wait_ready(i).await;
    }

    /// SIGKILL node `i` and delete its data dir; `restart` brings it back empty.
    pub fn kill_and_wipe(&mut self, i: usize) {
        self.kill(i);
        let dir = self.data_dir(i);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("wiping the data dir");
        }
    }

    pub fn pause(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.nodes[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.nodes[i].paused = false;
    }

    /// Node `i`'s stderr tail.
    pub fn log_tail(&self, i: usize) -> String {
        stderr_tail(&self.nodes[i].dir)
    }
}

fn stderr_tail(dir: &Path) -> String {
    log_tail(dir, STDERR_TAIL_BYTES)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_nodes(
            &self.root,
            self.keep || std::thread::panicking(),
            STDERR_TAIL_BYTES,
            self.nodes
                .iter_mut()
                .map(|n| (n.id.as_str(), n.dir.as_path(), &mut n.child)),
        );
    }
}
