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

/// The last `STDERR_TAIL_BYTES` of `dir/stderr.log`, for failure reports.
pub fn stderr_tail(dir: &Path) -> String {
    let Ok(mut f) = File::open(dir.join("stderr.log")) else {
        return String::from("(no stderr.log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL_BYTES)));
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
}
