//! The Redis-protocol (RESP2) front end (API.md §4). Being implemented.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Serves RESP2 clients on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    let _ = (listener, node);
    shutdown.cancelled().await;
}
