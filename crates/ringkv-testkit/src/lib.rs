//! Utilities shared by the test suites that run real `ringkv` processes (the binary's
//! cluster, RESP and fault-harness tests, and the client's tests). Only a dev-dependency.
//!
//! Laws: nothing here sleeps to synchronise; `poll_until` polls a condition with a deadline,
//! and `Rng` is deterministic, so a run replays from its printed seed.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many bytes of a node's stderr a failing test prints.
pub const STDERR_TAIL_BYTES: u64 = 4000;

/// Polls `check` until it returns `Some`, or fails naming `what` when `timeout` passes.
pub async fn try_poll_until<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `try_poll_until` that panics when the deadline passes.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    try_poll_until(timeout, what, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A small deterministic RNG (SplitMix64), so runs replay from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 right now (a node's `--listen` port carries
/// replication over TCP and gossip over UDP).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// Percent-encodes `key` as one path segment (everything but RFC 3986 unreserved bytes).
pub fn encode_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `program args...` set up to run a node: its stdout and stderr appended to `stdout.log` and
/// `stderr.log` in `dir`, stdin closed, `RUST_LOG` passed through (`info` when unset).
pub fn node_command(program: impl AsRef<std::ffi::OsStr>, args: &[String], dir: &Path) -> Command {
    let log = |name: &str| {
        File::options()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .unwrap_or_else(|e| panic!("opening {}: {e}", dir.join(name).display()))
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log("stdout.log"))
        .stderr(log("stderr.log"));
    cmd
}

/// A harness's teardown: kills and reaps every child still running; then, when `keep` (a
/// test failed), prints each node's stderr tail and says where `root` is kept, else removes
/// `root`. `nodes` are (node id, node dir, its child if running).
pub fn stop_nodes<'a>(
    root: &Path,
    keep: bool,
    tail_bytes: u64,
    nodes: impl IntoIterator<Item = (&'a str, &'a Path, &'a mut Option<Child>)>,
) {
    let mut dirs = Vec::new();
    for (id, dir, child) in nodes {
        if let Some(mut child) = child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        dirs.push((id, dir));
    }
    if keep {
        for (id, dir) in dirs {
            eprintln!(
                "----- {id} stderr tail ({}) -----\n{}",
                dir.display(),
                log_tail(dir, tail_bytes)
            );
        }
        eprintln!("data kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// The last `STDERR_TAIL_BYTES` of `dir/stderr.log`, for failure reports.
pub fn stderr_tail(dir: &Path) -> String {
    log_tail(dir, STDERR_TAIL_BYTES)
}

/// The last `bytes` of `dir/stderr.log`.
pub fn log_tail(dir: &Path, bytes: u64) -> String {
    let Ok(mut f) = File::open(dir.join("stderr.log")) else {
        return String::from("(no stderr.log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_as_one_segment() {
        assert_eq!(encode_key(b"a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(encode_key(b"a/b %\0\xff"), "a%2Fb%20%25%00%FF");
    }

    #[test]
    fn the_rng_replays_from_its_seed() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        assert!((0..100).all(|_| a.below(5) < 5));
    }

    #[tokio::test]
    async fn polling_stops_at_the_condition_or_the_deadline() {
        let mut n = 0;
        let got = poll_until(Duration::from_secs(5), "three polls", || {
            n += 1;
            let done = n >= 3;
            async move { done.then_some(n) }
        })
        .await;
        assert_eq!(got, 3);
        let err =
            try_poll_until(Duration::from_millis(100), "never", || async { None::<()> }).await;
        assert!(err.unwrap_err().contains("waiting for never"));
    }

    fn scratch_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringkv-testkit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch dir");
        dir
    }

    #[test]
    fn a_node_command_logs_to_its_dir_and_stop_nodes_reaps_and_cleans() {
        let root = scratch_dir("logs");
        let out = node_command("sh", &["-c".into(), "echo out; echo err >&2".into()], &root)
            .status()
            .expect("running sh");
        assert!(out.success());
        assert_eq!(
            std::fs::read_to_string(root.join("stdout.log")).unwrap(),
            "out\n"
        );
        assert_eq!(stderr_tail(&root), "err\n");
        assert_eq!(log_tail(&root, 2), "r\n");

        // A running child is killed and reaped; without `keep` the root goes.
        let mut child = Some(
            node_command("sleep", &["30".into()], &root)
                .spawn()
                .expect("spawning sleep"),
        );
        let pid = child.as_ref().unwrap().id();
        stop_nodes(&root, false, 100, [("n1", root.as_path(), &mut child)]);
        assert!(child.is_none());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "sleep still running"
        );
        assert!(!root.exists(), "root removed");

        // With `keep` the root stays for inspection.
        let root = scratch_dir("keep");
        stop_nodes(&root, true, 100, [("n1", root.as_path(), &mut None)]);
        assert!(root.exists(), "root kept");
        let _ = std::fs::remove_dir_all(&root);
    }
}
