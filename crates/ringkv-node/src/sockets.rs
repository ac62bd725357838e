//! Options every TCP connection of a node gets, inter-node, HTTP and RESP alike.
//!
//! Keepalive: a peer or client whose host vanished without closing its connection (power
//! loss, a cut link, a crashed VM) sends nothing more, not even a FIN, so a connection that
//! only waits to read from it would stay open for ever, holding its task, its buffers and one
//! of the bounded connection slots (`Limits::inbound_connections_max`, the RESP front end's
//! `MAX_CONNECTIONS`). With keepalive the kernel probes an idle connection and closes it once
//! the other end stops answering, and the reads waiting on it end with an error.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

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
