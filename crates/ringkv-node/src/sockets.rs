//! Options every TCP connection of a node gets, inter-node, HTTP and RESP alike, and the
//! accept loop the two client front ends share (`serve_connections`).
//!
//! Keepalive: a peer or client whose host vanished without closing its connection (power
//! loss, a cut link, a crashed VM) sends nothing more, not even a FIN, so a connection that
//! only waits to read from it would stay open for ever, holding its task, its buffers and one
//! of the bounded connection slots (`Limits::inbound_connections_max`, the RESP front end's
//! `MAX_CONNECTIONS`). With keepalive the kernel probes an idle connection and closes it once
//! the other end stops answering, and the reads waiting on it end with an error.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is closed: a vanished peer is noticed
/// within about `KEEPALIVE_IDLE + KEEPALIVE_RETRIES * KEEPALIVE_INTERVAL` (90 s).
pub const KEEPALIVE_RETRIES: u32 = 3;

/// Sets TCP_NODELAY (answers go out as written: with Nagle's algorithm an answer split over
/// two writes would wait for the other side's delayed ACK) and keepalive. Failures are
/// ignored: a socket without them still works.
pub fn tune(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Pause after a failed `accept` (out of file descriptors, ...) before the next one.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What sets one client front end's accept loop apart from the other's.
pub struct AcceptLoop<'a> {
    /// The front end's name in log messages: "HTTP", "RESP".
    pub face: &'static str,
    /// Most connections open at once.
    pub connections_max: usize,
    /// The counter of connections refused for being over `connections_max`.
    pub refused_counter: &'static str,
    /// What a connection over `connections_max` is told as it is closed.
    pub refusal: &'a [u8],
    /// How long, once the listener stops, the connections get to finish before they are
    /// aborted.
    pub shutdown_grace: Duration,
}

/// Accepts connections on `listener` until `shutdown` is cancelled, each served by the
/// future `serve(stream)` in a task of its own that holds one of `connections_max` slots;
/// one more connection is written `refusal`, counted and closed. Then stops accepting, waits
/// up to `shutdown_grace` for the connections to end, and aborts the rest, so that no task
/// is left running once this returns. `serve` is called in the accept loop, after the slot
/// is taken: what it does before its future runs happens in order of acceptance.
pub async fn serve_connections<S, F>(
    listener: TcpListener,
    accept: AcceptLoop<'_>,
    shutdown: &CancellationToken,
    mut serve: S,
) where
    S: FnMut(TcpStream) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(accept.connections_max));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "{} accept failed", accept.face);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(accept.refused_counter).increment(1);
            // A fresh socket's send buffer is empty: this write does not block.
            let _ = stream.try_write(accept.refusal);
            continue;
        };
        let connection = serve(stream);
        tasks.spawn(async move {
            let _slot = slot;
            connection.await
        });
    }
    drop(listener);
    drain(tasks, accept.face, accept.shutdown_grace).await;
}

/// Waits up to `grace` for the connections to finish, then aborts the rest.
async fn drain(mut tasks: JoinSet<()>, face: &str, grace: Duration) {
    let finished =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        warn!(
            connections = tasks.len(),
            "{face} connections still busy at shutdown; aborting them"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tuned_sockets_keep_alive_with_the_node_timings_on_both_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), async {
            listener.accept().await.map(|(s, _)| s)
        });
        for stream in [connected.unwrap(), accepted.unwrap()] {
            let before = SockRef::from(&stream);
            assert!(!before.keepalive().unwrap(), "off until tuned");
            tune(&stream);
            let socket = SockRef::from(&stream);
            assert!(socket.keepalive().unwrap());
            assert!(socket.tcp_nodelay().unwrap());
            assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        }
    }
}
