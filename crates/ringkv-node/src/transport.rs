//! Inter-node transport: persistent TCP connections carrying length-delimited postcard
//! frames, many requests multiplexed on one connection by request id.
//!
//! Bounds: one outbound connection per peer; at most `inbound_connections_max` inbound
//! connections, `inbound_connections_per_ip_max` of them from one address (more are closed on
//! accept); an inbound connection whose first frame is not a `Hello`, or comes later than
//! `inbound_hello_timeout`, is closed, and so is one idle for `inbound_idle_timeout` (an
//! outbound one is closed after the shorter `peer_idle_timeout` without calls, so a peer's
//! call never races the other end's close); at most `peer_inflight_max` requests in flight
//! to a peer (a request waits for a slot only until its deadline); at most `inbound_inflight_max`
//! requests served at once per inbound connection; frames over `max_frame_bytes` are
//! refused. A frame that does not decode closes that connection with a logged error; the
//! node keeps running. Reconnection after a failure backs off exponentially, capped at
//! `reconnect_backoff_max`, and a peer inside its backoff window fails fast.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use ringkv_core::NodeId;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::seams::{BoxConnection, Listener, Network};
use crate::settings::Limits;
use crate::wire::{Frame, PROTOCOL_VERSION, Request, Response};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("peer {0} unreachable: {1}")]
    Unreachable(SocketAddr, String),
    #[error("peer {0} did not answer in time")]
    TimedOut(SocketAddr),
    #[error("connection to {0} closed before the answer")]
    Closed(SocketAddr),
    #[error("a request of {0} bytes is over the {1}-byte frame limit")]
    TooLarge(usize, usize),
}

/// Serves one inbound request. Implemented by the node.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        request: Request,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Response>;
}

fn codec(limits: &Limits) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(limits.max_frame_bytes)
        .new_codec()
}

fn encode(frame: &Frame) -> Bytes {
    Bytes::from(postcard::to_allocvec(frame).expect("frames always serialize"))
}

/// The response frame for request `id`; an answer over the frame limit (a key whose
/// siblings grew past it) becomes an error for that request alone, not a frame the codec
/// refuses, which would close the connection every other request shares.
fn encode_answer(id: u64, body: Response, max_frame_bytes: usize) -> Bytes {
    let frame = encode(&Frame::Response { id, body });
    if frame.len() <= max_frame_bytes {
        return frame;
    }
    warn!(
        id,
        bytes = frame.len(),
        "an answer is over the frame limit; answering an error"
    );
    let why = format!(
        "the answer is {} bytes, over the {max_frame_bytes}-byte frame limit",
        frame.len()
    );
    encode(&Frame::Response {
        id,
        body: Response::Error(why),
    })
}

/// Most frames written with one flush (one `writev` when they fit the socket buffer).
const FRAMES_PER_FLUSH: usize = 64;

/// Writes `first` and whatever else is already queued (up to `FRAMES_PER_FLUSH` frames),
/// then flushes once: under load, many requests or answers share one system call.
///
/// Before flushing a short batch the writer yields to the runtime once: the tasks woken by the
/// same network poll (other requests being coordinated, other answers being computed) run
/// first and queue their frames, which then join this flush. Without it most flushes carried
/// one or two frames (docs/benchmarks.md, session 6: one `writev` per GET on the coordinator
/// before, one per eight after). The cost is one trip through the run queue, microseconds.
async fn send_batch<S>(
    sink: &mut S,
    first: Bytes,
    queued: &mut mpsc::Receiver<Bytes>,
) -> Result<(), S::Error>
where
    S: futures::Sink<Bytes> + Unpin,
{
    sink.feed(first).await?;
    let mut fed = 1;
    let mut yielded = false;
    while fed < FRAMES_PER_FLUSH {
        match queued.try_recv() {
            Ok(frame) => {
                sink.feed(frame).await?;
                fed += 1;
            }
            Err(_) if !yielded => {
                yielded = true;
                tokio::task::yield_now().await;
            }
            Err(_) => break,
        }
    }
    sink.flush().await
}

/// Inbound connections open per source address (`inbound_connections_per_ip_max`). An
/// address is in the map only while it has a connection open.
#[derive(Default)]
struct ConnectionsByIp(Mutex<BTreeMap<IpAddr, usize>>);

/// One inbound connection counted against its source address until dropped.
struct IpSlot {
    counts: Arc<ConnectionsByIp>,
    ip: IpAddr,
}

impl ConnectionsByIp {
    /// A slot for one more connection from `ip`, unless it already has `max`.
    fn take(counts: &Arc<ConnectionsByIp>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = counts.0.lock().unwrap();
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts inter-node connections until `shutdown` is cancelled.
pub async fn serve<H: Handler>(
    mut listener: Box<dyn Listener>,
    handler: Arc<H>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(limits.inbound_connections_max));
    let by_ip = Arc::new(ConnectionsByIp::default());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = connections.clone().try_acquire_owned() else {
                    warn!(%peer, max = limits.inbound_connections_max, "too many inter-node connections; closing this one");
                    continue;
                };
                let max = limits.inbound_connections_per_ip_max;
                let Some(ip_slot) = ConnectionsByIp::take(&by_ip, peer.ip(), max) else {
                    warn!(%peer, max, "too many inter-node connections from this address; closing this one");
                    continue;
                };
                let (handler, limits, shutdown) =
                    (handler.clone(), limits.clone(), shutdown.clone());
                tokio::spawn(async move {
                    serve_connection(stream, peer, handler, limits, shutdown).await;
                    drop((slot, ip_slot));
                });
            }
            Err(e) => {
                warn!(error = %e, "inter-node accept failed");
                // Out of file descriptors and similar: give the system a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

type FrameStream = futures::stream::SplitStream<Framed<BoxConnection, LengthDelimitedCodec>>;

/// Waits at most `inbound_hello_timeout` for the connection's first frame, which must be a
/// `Hello` of this protocol version: the peer's name, or why the connection is to be closed.
async fn await_hello(
    frames: &mut FrameStream,
    limits: &Limits,
    shutdown: &CancellationToken,
) -> Result<NodeId, String> {
    let first = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Err("the node is stopping".into()),
        first = tokio::time::timeout(limits.inbound_hello_timeout, frames.next()) => first,
    };
    let bytes = match first {
        Err(_) => {
            return Err(format!(
                "no hello within {:?}",
                limits.inbound_hello_timeout
            ));
        }
        Ok(None) => return Err("closed before its hello".into()),
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(Some(Ok(bytes))) => bytes,
    };
    match postcard::from_bytes::<Frame>(&bytes) {
        Ok(Frame::Hello { protocol, node }) if protocol == PROTOCOL_VERSION => Ok(node),
        Ok(Frame::Hello { protocol, node }) => Err(format!(
            "{node} speaks protocol version {protocol}, this node {PROTOCOL_VERSION}"
        )),
        Ok(_) => Err("the first frame is not a hello".into()),
        Err(e) => Err(format!("undecodable first frame: {e}")),
    }
}

async fn serve_connection<H: Handler>(
    stream: BoxConnection,
    peer: SocketAddr,
    handler: Arc<H>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    // One task reads the frames, answers those that answer at once and writes every answer:
    // a replica read costs no task and no wakeup beyond the connection's own. Requests that
    // wait run on tasks of their own and send their answers back through `replies`.
    let (mut sink, mut stream) = Framed::new(stream, codec(&limits)).split();
    match await_hello(&mut stream, &limits, &shutdown).await {
        Ok(node) => debug!(%peer, %node, "peer connected"),
        Err(why) => {
            warn!(%peer, why, "closing an inter-node connection that did not open with a hello");
            return;
        }
    }
    let (reply_tx, mut replies) = mpsc::channel::<Bytes>(limits.inbound_inflight_max);
    let slots = Arc::new(Semaphore::new(limits.inbound_inflight_max));
    let inbound = Inbound {
        slots: &slots,
        reply_tx: &reply_tx,
        limits: &limits,
        shutdown: &shutdown,
    };
    // Closed once nothing was received or sent for `inbound_idle_timeout` with no request in
    // flight: the timer is pushed back only when it fires, not on every frame.
    let idle = tokio::time::sleep(limits.inbound_idle_timeout);
    tokio::pin!(idle);
    let mut active_at = Instant::now();
    'connection: loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(answer) = replies.recv() => {
                if send_batch(&mut sink, answer, &mut replies).await.is_err() {
                    break;
                }
                active_at = Instant::now();
                continue;
            }
            next = stream.next() => next,
            () = &mut idle => {
                let now = Instant::now();
                let next = if slots.available_permits() < limits.inbound_inflight_max {
                    now + limits.inbound_idle_timeout // a request in flight
                } else {
                    active_at + limits.inbound_idle_timeout
                };
                if next <= now {
                    debug!(%peer, "closing an idle inter-node connection");
                    break;
                }
                idle.as_mut().reset(next);
                continue;
            }
        };
        active_at = Instant::now();
        // This frame and those already received behind it, up to a flush's worth: the answers
        // given at once share one flush. The bound also keeps `replies` from filling while this
        // waits for a slot: `replies` was empty when the select chose a frame, and since then at
        // most the tasks already running plus FRAMES_PER_FLUSH new ones can answer, fewer than
        // its capacity plus the slots (so a task holding a slot never waits on a full channel
        // while this waits on it for a slot).
        let mut next = first;
        let (mut frames, mut answered) = (0, 0);
        loop {
            frames += 1;
            let bytes = match next {
                None => break 'connection,
                Some(Err(e)) => {
                    warn!(%peer, error = %e, "inter-node connection failed; closing it");
                    break 'connection;
                }
                Some(Ok(bytes)) => bytes,
            };
            match serve_frame(&bytes, peer, &handler, &inbound).await {
                Served::Answer(answer) => {
                    if sink.feed(answer).await.is_err() {
                        break 'connection;
                    }
                    answered += 1;
                }
                Served::Elsewhere => {}
                Served::Close => break 'connection,
            }
            if frames >= FRAMES_PER_FLUSH {
                break;
            }
            match stream.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        if answered > 0 && sink.flush().await.is_err() {
            return;
        }
    }
    // No new requests; those still running answer as before (each within its deadline), as a
    // clean stop answers what is in flight.
    drop(reply_tx);
    if sink.flush().await.is_err() {
        return;
    }
    while let Some(answer) = replies.recv().await {
        if send_batch(&mut sink, answer, &mut replies).await.is_err() {
            return;
        }
    }
}

/// What became of one inbound frame.
enum Served {
    /// Answered at once: this frame goes back.
    Answer(Bytes),
    /// Nothing to send now (a hello, or a request running on a task of its own).
    Elsewhere,
    /// The frame is not acceptable: close the connection.
    Close,
}

/// Where `serve_frame` sends what it cannot answer at once, and what bounds it.
struct Inbound<'a> {
    slots: &'a Arc<Semaphore>,
    reply_tx: &'a mpsc::Sender<Bytes>,
    limits: &'a Limits,
    shutdown: &'a CancellationToken,
}

async fn serve_frame<H: Handler>(
    bytes: &[u8],
    peer: SocketAddr,
    handler: &Arc<H>,
    inbound: &Inbound<'_>,
) -> Served {
    let max_frame_bytes = inbound.limits.max_frame_bytes;
    let frame = match postcard::from_bytes::<Frame>(bytes) {
        Ok(frame) => frame,
        Err(e) => {
            warn!(%peer, error = %e, "undecodable inter-node frame; closing the connection");
            return Served::Close;
        }
    };
    match frame {
        Frame::Hello { protocol, node } => {
            if protocol != PROTOCOL_VERSION {
                warn!(%peer, %node, protocol, "peer speaks another protocol version; closing");
                return Served::Close;
            }
            debug!(%peer, %node, "peer connected");
            Served::Elsewhere
        }
        Frame::Request {
            id,
            timeout_ms,
            body,
        } => {
            // A peer's deadline, within the node's own bound: a request holds a slot at most
            // that long.
            let timeout =
                Duration::from_millis(timeout_ms as u64).min(inbound.limits.peer_timeout_max);
            let at_once = matches!(body, Request::Read { .. } | Request::Ping);
            let mut work = handler.clone().handle(body, timeout);
            // A read or ping usually answers from memory on its first poll. One that has to
            // wait (a hint store read), like every other request, goes on on a task of its
            // own, so a slow request never holds up the connection.
            if at_once && let Some(body) = (&mut work).now_or_never() {
                return Served::Answer(encode_answer(id, body, max_frame_bytes));
            }
            // A stop wins over a slot freed at the same time: nothing new starts after it.
            let permit = tokio::select! {
                biased;
                _ = inbound.shutdown.cancelled() => return Served::Close,
                permit = inbound.slots.clone().acquire_owned() => permit,
            };
            let Ok(permit) = permit else {
                return Served::Close;
            };
            let reply_tx = inbound.reply_tx.clone();
            tokio::spawn(async move {
                let body = match tokio::time::timeout(timeout, work).await {
                    Ok(body) => body,
                    Err(_) => Response::Error("deadline passed".into()),
                };
                let _ = reply_tx
                    .send(encode_answer(id, body, max_frame_bytes))
                    .await;
                drop(permit);
            });
            Served::Elsewhere
        }
        Frame::Response { .. } => {
            warn!(%peer, "unexpected response frame on an inbound connection; closing");
            Served::Close
        }
    }
}

/// Requests waiting for their answer, by id (ordered: closing a connection wakes them in
/// request order).
type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Response>>>>;

/// One live outbound connection.
/// Removes a call's entry from its connection's pending map when dropped, unless disarmed.
struct PendingEntry<'a> {
    pending: &'a Pending,
    id: u64,
    armed: bool,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&self.id);
        }
    }
}

struct Connection {
    frames: mpsc::Sender<Bytes>,
    pending: Pending,
    closed: CancellationToken,
}

struct PeerState {
    connection: Option<Arc<Connection>>,
    failures: u32,
    retry_after: Option<Instant>,
}

/// Outbound side: a pool with one multiplexed connection per peer address.
pub struct Peers {
    me: NodeId,
    limits: Limits,
    next_id: AtomicU64,
    /// Ordered maps, not `HashMap`s: dropping the pool drops each connection's frame sender,
    /// which wakes its writer task to close the stream, so the map's order is the order the
    /// connections close in. A `HashMap`'s order is random per process, and in the simulation
    /// the order of those closes (each TCP FIN draws its latency from the seeded network)
    /// changed the rest of the run: ordered by address, the simulation replays.
    peers: Mutex<BTreeMap<SocketAddr, PeerState>>,
    slots: Mutex<BTreeMap<SocketAddr, Arc<Semaphore>>>,
    connect_locks: Mutex<BTreeMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    network: Arc<dyn Network>,
}

impl Peers {
    pub fn new(me: NodeId, limits: Limits, network: Arc<dyn Network>) -> Peers {
        Peers {
            me,
            limits,
            next_id: AtomicU64::new(1),
            peers: Mutex::new(BTreeMap::new()),
            slots: Mutex::new(BTreeMap::new()),
            connect_locks: Mutex::new(BTreeMap::new()),
            network,
        }
    }

    /// Drops what the pool keeps for every address `keep` rejects (its connection, closed;
    /// its backoff; its in-flight limit), so the maps hold the cluster's addresses, not every
    /// address ever called. Calls in flight keep what they hold and finish.
    pub fn forget_others(&self, keep: impl Fn(&SocketAddr) -> bool) {
        let mut forgotten: Vec<(SocketAddr, PeerState)> = {
            let mut peers = self.peers.lock().unwrap();
            let gone: Vec<SocketAddr> = peers.keys().filter(|a| !keep(a)).copied().collect();
            gone.into_iter()
                .filter_map(|a| peers.remove_entry(&a))
                .collect()
        };
        // Closed in address order, not the map's (per-process) order: the simulation replays.
        forgotten.sort_by_key(|(addr, _)| *addr);
        for (_, state) in forgotten {
            if let Some(conn) = state.connection {
                conn.closed.cancel();
            }
        }
        self.slots.lock().unwrap().retain(|addr, _| keep(addr));
        self.connect_locks
            .lock()
            .unwrap()
            .retain(|addr, _| keep(addr));
    }

    /// Sends `request` to `addr` and waits for the answer, at most `timeout` in all.
    pub async fn call(
        &self,
        addr: SocketAddr,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let slots = self
            .slots
            .lock()
            .unwrap()
            .entry(addr)
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.peer_inflight_max)))
            .clone();
        let _permit = tokio::time::timeout_at(deadline, slots.acquire_owned())
            .await
            .map_err(|_| TransportError::TimedOut(addr))?
            .expect("semaphore never closed");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (conn, rx) = self.register(addr, id, deadline).await?;
        // Whatever ends this call (an answer, a timeout, the caller dropping it while it waits
        // to send or for the answer), its entry does not outlive it.
        let mut entry = PendingEntry {
            pending: &conn.pending,
            id,
            armed: true,
        };
        let timeout_ms = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis()
            .min(u32::MAX as u128) as u32;
        let frame = encode(&Frame::Request {
            id,
            timeout_ms,
            body: request,
        });
        // The codec would refuse it and close the connection every other call shares.
        if frame.len() > self.limits.max_frame_bytes {
            return Err(TransportError::TooLarge(
                frame.len(),
                self.limits.max_frame_bytes,
            ));
        }
        let sent = tokio::time::timeout_at(deadline, conn.frames.send(frame)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(TransportError::Closed(addr));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(response)) => {
                entry.armed = false; // the reader took it out to answer
                Ok(response)
            }
            Ok(Err(_)) => Err(TransportError::Closed(addr)),
            Err(_) => Err(TransportError::TimedOut(addr)),
        }
    }

    /// Enters call `id` in the table of calls awaiting answers of a live connection to `addr`.
    /// A connection found closed before the call is entered (an idle one its writer closed,
    /// or one whose peer stopped reading) has carried nothing of it: the call takes a new one.
    async fn register(
        &self,
        addr: SocketAddr,
        id: u64,
        deadline: Instant,
    ) -> Result<(Arc<Connection>, oneshot::Receiver<Response>), TransportError> {
        for _ in 0..2 {
            let conn = tokio::time::timeout_at(deadline, self.connection(addr))
                .await
                .map_err(|_| TransportError::TimedOut(addr))??;
            let (tx, rx) = oneshot::channel();
            // The writer closes an idle connection under this lock (`write_outbound`).
            let mut pending = conn.pending.lock().unwrap();
            if !conn.closed.is_cancelled() {
                pending.insert(id, tx);
                drop(pending);
                return Ok((conn, rx));
            }
        }
        Err(TransportError::Closed(addr))
    }

    async fn connection(&self, addr: SocketAddr) -> Result<Arc<Connection>, TransportError> {
        if let Some(conn) = self.live_connection(addr)? {
            return Ok(conn);
        }
        // One connection attempt per peer at a time; a dead peer never delays the others.
        let lock = self
            .connect_locks
            .lock()
            .unwrap()
            .entry(addr)
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if let Some(conn) = self.live_connection(addr)? {
            return Ok(conn);
        }
        match tokio::time::timeout(self.limits.connect_timeout, self.network.connect(addr)).await {
            Ok(Ok(stream)) => {
                let conn = self.start_connection(stream, addr);
                let mut peers = self.peers.lock().unwrap();
                let state = peers.entry(addr).or_insert(PeerState {
                    connection: None,
                    failures: 0,
                    retry_after: None,
                });
                state.connection = Some(conn.clone());
                state.failures = 0;
                state.retry_after = None;
                Ok(conn)
            }
            Ok(Err(e)) => Err(self.note_failure(addr, e.to_string())),
            Err(_) => Err(self.note_failure(addr, "connect timed out".into())),
        }
    }

    /// The current connection if it is alive; an error if the peer is inside its backoff.
    fn live_connection(&self, addr: SocketAddr) -> Result<Option<Arc<Connection>>, TransportError> {
        let mut peers = self.peers.lock().unwrap();
        let Some(state) = peers.get_mut(&addr) else {
            return Ok(None);
        };
        if let Some(conn) = &state.connection {
            if !conn.closed.is_cancelled() {
                return Ok(Some(conn.clone()));
            }
            state.connection = None;
        }
        match state.retry_after {
            Some(t) if Instant::now() < t => Err(TransportError::Unreachable(
                addr,
                "backing off after a failed connection".into(),
            )),
            _ => Ok(None),
        }
    }

    fn note_failure(&self, addr: SocketAddr, reason: String) -> TransportError {
        let mut peers = self.peers.lock().unwrap();
        let state = peers.entry(addr).or_insert(PeerState {
            connection: None,
            failures: 0,
            retry_after: None,
        });
        state.failures = state.failures.saturating_add(1);
        let backoff = Duration::from_millis(50u64 << state.failures.min(10))
            .min(self.limits.reconnect_backoff_max);
        state.retry_after = Some(Instant::now() + backoff);
        TransportError::Unreachable(addr, reason)
    }

    fn start_connection(&self, stream: BoxConnection, addr: SocketAddr) -> Arc<Connection> {
        let (sink, mut source) = Framed::new(stream, codec(&self.limits)).split();
        let (frames, outgoing) = mpsc::channel::<Bytes>(self.limits.peer_inflight_max);
        let pending: Pending = Arc::new(Mutex::new(BTreeMap::new()));
        let closed = CancellationToken::new();
        let conn = Arc::new(Connection {
            frames,
            pending: pending.clone(),
            closed: closed.clone(),
        });
        let hello = encode(&Frame::Hello {
            protocol: PROTOCOL_VERSION,
            node: self.me.clone(),
        });
        tokio::spawn(write_outbound(
            sink,
            outgoing,
            hello,
            pending.clone(),
            closed.clone(),
            self.limits.peer_idle_timeout,
        ));
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = closed.cancelled() => break,
                    next = source.next() => next,
                };
                let Some(Ok(bytes)) = next else { break };
                match postcard::from_bytes::<Frame>(&bytes) {
                    Ok(Frame::Response { id, body }) => {
                        if let Some(tx) = pending.lock().unwrap().remove(&id) {
                            let _ = tx.send(body);
                        }
                    }
                    _ => {
                        warn!(%addr, "unexpected or undecodable frame from peer; closing the connection");
                        break;
                    }
                }
            }
            closed.cancel();
            // Dropping the senders wakes every waiter with `Closed`.
            pending.lock().unwrap().clear();
        });
        conn
    }
}

/// An outbound connection's writer: the `Hello`, then every frame queued, until the
/// connection is closed, its frame sender dropped, a write fails, or no call has used it for
/// `idle_timeout`.
async fn write_outbound<S>(
    mut sink: S,
    mut outgoing: mpsc::Receiver<Bytes>,
    hello: Bytes,
    pending: Pending,
    closed: CancellationToken,
    idle_timeout: Duration,
) where
    S: futures::Sink<Bytes> + Unpin,
{
    if sink.send(hello).await.is_err() {
        closed.cancel();
        return;
    }
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut sent_at = Instant::now();
    loop {
        let frame = tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            frame = outgoing.recv() => frame,
            () = &mut idle => {
                let now = Instant::now();
                let due = sent_at + idle_timeout;
                if due > now {
                    idle.as_mut().reset(due);
                    continue;
                }
                // Closed under the lock of the calls awaiting answers: a call registers on
                // this connection either before (then it is not idle) or after, when it
                // sees it closed and connects again, so no call is lost to this close.
                let calls = pending.lock().unwrap();
                if calls.is_empty() {
                    closed.cancel();
                    break;
                }
                drop(calls);
                idle.as_mut().reset(now + idle_timeout);
                continue;
            }
        };
        let Some(frame) = frame else { break };
        if send_batch(&mut sink, frame, &mut outgoing).await.is_err() {
            break;
        }
        sent_at = Instant::now();
    }
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A sink that records which frames each flush carried.
    #[derive(Default)]
    struct FlushLog {
        buffered: Vec<Bytes>,
        flushes: Vec<Vec<Bytes>>,
    }

    impl futures::Sink<Bytes> for FlushLog {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<(), Self::Error> {
            self.buffered.push(item);
            Ok(())
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            let batch = std::mem::take(&mut self.buffered);
            self.flushes.push(batch);
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.poll_flush(cx)
        }
    }

    /// Frames queued by tasks that are ready to run when the writer wakes share its flush.
    #[tokio::test(flavor = "current_thread")]
    async fn frames_from_tasks_ready_alongside_the_writer_share_one_flush() {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let writer = tokio::spawn(async move {
            let mut sink = FlushLog::default();
            let first = rx.recv().await.expect("a first frame");
            send_batch(&mut sink, first, &mut rx).await.unwrap();
            sink.flushes
        });
        // Let the writer reach its `recv`, then wake it and make three senders runnable behind it.
        tokio::task::yield_now().await;
        tx.send(Bytes::from_static(b"0")).await.unwrap();
        for i in 1..=3u8 {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(Bytes::from(vec![b'0' + i])).await.unwrap() });
        }
        let flushes = writer.await.unwrap();
        let frames: Vec<&[u8]> = flushes[0].iter().map(|b| b.as_ref()).collect();
        assert_eq!(flushes.len(), 1, "one flush, got {flushes:?}");
        assert_eq!(frames, [b"0", b"1", b"2", b"3"]);
    }

    /// A writer never waits for frames that nobody is about to send: with an empty queue it
    /// flushes what it has after one yield.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_frame_is_flushed_without_waiting_for_more() {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let mut sink = FlushLog::default();
        let flushed = tokio::time::timeout(
            Duration::from_secs(5),
            send_batch(&mut sink, Bytes::from_static(b"only"), &mut rx),
        )
        .await;
        assert!(flushed.is_ok(), "the writer waited for more frames");
        assert_eq!(sink.flushes, vec![vec![Bytes::from_static(b"only")]]);
        drop(tx);
    }

    /// Serves reads of `slow`, and `FetchRing`, only once released; every other read at once.
    struct SlowReads {
        arrived: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    impl Handler for SlowReads {
        fn handle(
            self: Arc<Self>,
            request: Request,
            _timeout: Duration,
        ) -> futures::future::BoxFuture<'static, Response> {
            Box::pin(async move {
                let slow = match &request {
                    Request::Read { key, .. } => key.as_ref() == b"slow",
                    Request::FetchRing => true,
                    _ => false,
                };
                if slow {
                    self.arrived.notify_one();
                    self.release.notified().await;
                }
                if matches!(&request, Request::Read { key, .. } if key.as_ref() == b"big") {
                    return Response::Versions(Some(versions_of(BIG_BYTES)));
                }
                Response::Versions(None)
            })
        }
    }

    /// A `SlowReads` server on a free loopback port, and a client of it, over the production
    /// network.
    struct SlowServer {
        peers: Arc<Peers>,
        addr: SocketAddr,
        handler: Arc<SlowReads>,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<()>,
        /// Connections the server has accepted and since dropped (closed), refused ones too.
        dropped: Arc<std::sync::atomic::AtomicUsize>,
    }

    /// A listener whose connections count themselves in `dropped` when the server drops them.
    struct Watched {
        inner: Box<dyn Listener>,
        dropped: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Listener for Watched {
        fn accept(
            &mut self,
        ) -> futures::future::BoxFuture<'_, std::io::Result<(BoxConnection, SocketAddr)>> {
            Box::pin(async move {
                let (inner, peer) = self.inner.accept().await?;
                let dropped = self.dropped.clone();
                Ok((Box::new(Counted { inner, dropped }) as BoxConnection, peer))
            })
        }
    }

    /// A connection that adds one to `dropped` when dropped.
    struct Counted {
        inner: BoxConnection,
        dropped: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl tokio::io::AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Polls `done` every 20 ms until it holds or `within` has passed; whether it held.
    async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done()
    }

    /// Whether the other end closes `stream` within `within` (whatever it sent first is read
    /// and dropped).
    async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// A length-delimited frame as a peer sends it.
    fn framed(frame: &Frame) -> Vec<u8> {
        let body = encode(frame);
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes
    }

    /// The frame limit of `SlowServer::start_limited`, and a value size that passes it.
    const SMALL_FRAME_BYTES: usize = 4096;
    const BIG_BYTES: usize = 2 * SMALL_FRAME_BYTES;

    fn versions_of(bytes: usize) -> ringkv_core::VersionSet {
        let replica = ringkv_core::ReplicaId::new(NodeId::new("w").unwrap(), 1);
        ringkv_core::VersionSet::new()
            .update(
                &ringkv_core::VersionVector::new(),
                Some(Bytes::from(vec![7u8; bytes])),
                &replica,
            )
            .0
    }

    impl SlowServer {
        async fn start() -> SlowServer {
            SlowServer::start_with(Limits::default()).await
        }

        /// Server and client with a `SMALL_FRAME_BYTES` frame limit.
        async fn start_limited() -> SlowServer {
            SlowServer::start_with(Limits {
                max_frame_bytes: SMALL_FRAME_BYTES,
                ..Limits::default()
            })
            .await
        }

        async fn start_with(limits: Limits) -> SlowServer {
            let network: Arc<dyn Network> = crate::seams::Seams::production().network;
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap();
            let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let listener = Box::new(Watched {
                inner: network.bind(addr).await.unwrap(),
                dropped: dropped.clone(),
            });
            let handler = Arc::new(SlowReads {
                arrived: tokio::sync::Notify::new(),
                release: tokio::sync::Notify::new(),
            });
            let shutdown = CancellationToken::new();
            let server = tokio::spawn(serve(
                listener,
                handler.clone(),
                limits.clone(),
                shutdown.clone(),
            ));
            SlowServer {
                peers: Arc::new(Peers::new(NodeId::new("client").unwrap(), limits, network)),
                addr,
                handler,
                shutdown,
                server,
                dropped,
            }
        }

        /// The client's current connection to the server.
        fn connection(&self) -> Arc<Connection> {
            self.peers.peers.lock().unwrap()[&self.addr]
                .connection
                .clone()
                .expect("a connection")
        }

        async fn ping(&self) -> Result<Response, TransportError> {
            self.peers
                .call(self.addr, Request::Ping, Duration::from_secs(5))
                .await
        }
    }

    /// A peer's deadline is capped by the node's own bound: a request asking for ten seconds
    /// of a server that allows 200 ms is answered "deadline passed" by the server (without
    /// the cap it would hold its slot until the caller's own timeout ended the call).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_deadline_past_the_bound_is_cut_to_it() {
        let server = SlowServer::start_with(Limits {
            peer_timeout_max: Duration::from_millis(200),
            ..Limits::default()
        })
        .await;
        let request = Request::Read {
            key: Bytes::from_static(b"slow"),
            as_home: true,
        };
        let answer = server
            .peers
            .call(server.addr, request, Duration::from_secs(10))
            .await;
        assert!(
            matches!(&answer, Ok(Response::Error(why)) if why.contains("deadline")),
            "{answer:?}"
        );
        server.shutdown.cancel();
        server.server.await.unwrap();
    }

    /// Reads answered on the connection's own task (the quick path) still never queue behind
    /// a read that has to wait: that one goes on on a task of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_waits_does_not_hold_up_the_reads_behind_it() {
        let SlowServer {
            peers,
            addr,
            handler,
            shutdown,
            server,
            ..
        } = SlowServer::start().await;
        let read = |key: &'static [u8]| {
            let peers = peers.clone();
            async move {
                peers
                    .call(
                        addr,
                        Request::Read {
                            key: Bytes::from_static(key),
                            as_home: true,
                        },
                        Duration::from_secs(10),
                    )
                    .await
            }
        };
        let slow = tokio::spawn(read(b"slow"));
        tokio::time::timeout(Duration::from_secs(5), handler.arrived.notified())
            .await
            .expect("the slow read reached the server");
        // Both go over the one connection to `addr`, after the slow read.
        for key in [&b"a"[..], b"b"] {
            let answer = tokio::time::timeout(Duration::from_secs(5), read(key))
                .await
                .expect("a quick read waited behind the slow one");
            assert!(matches!(answer, Ok(Response::Versions(None))), "{answer:?}");
        }
        assert!(!slow.is_finished(), "the slow read was not held");
        handler.release.notify_one();
        let answer = slow.await.unwrap();
        assert!(matches!(answer, Ok(Response::Versions(None))), "{answer:?}");
        shutdown.cancel();
        server.await.unwrap();
    }

    /// A clean stop stops reading new requests but still answers those in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_in_flight_at_shutdown_is_still_answered() {
        let server = SlowServer::start().await;
        let (peers, addr, handler) = (server.peers, server.addr, server.handler);
        let (shutdown, server) = (server.shutdown, server.server);
        let call = tokio::spawn(async move {
            peers
                .call(addr, Request::FetchRing, Duration::from_secs(10))
                .await
        });
        tokio::time::timeout(Duration::from_secs(5), handler.arrived.notified())
            .await
            .expect("the request reached the server");
        shutdown.cancel();
        server.await.unwrap();
        handler.release.notify_one();
        let answer = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the call ended")
            .unwrap();
        assert!(
            matches!(answer, Ok(Response::Versions(None))),
            "the request in flight was not answered: {answer:?}"
        );
    }

    /// A request waiting for a slot stops waiting when the node stops: it is dropped unrun, and
    /// the connection closes as soon as the request holding the slot has answered. (Without
    /// that, the wait went on until the slot was free, up to the holder's deadline, and the
    /// request then ran after the stop, keeping the connection open until its own deadline.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_waiting_for_a_slot_stops_waiting_at_shutdown() {
        let server = SlowServer::start_with(Limits {
            inbound_inflight_max: 1,
            ..Limits::default()
        })
        .await;
        let holder = hold_a_slow_read(&server).await;
        // On the same connection; a read, so the server starts it at once, then it waits for
        // the only slot.
        let waiting = hold_a_slow_read(&server).await;
        // The slot is freed right as the stop comes: the stop must win.
        server.shutdown.cancel();
        server.handler.release.notify_one();
        server.server.await.unwrap();
        let answer = holder.await.unwrap();
        assert!(
            matches!(answer, Ok(Response::Versions(None))),
            "the request holding the slot: {answer:?}"
        );
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the request waiting for a slot was run after the stop")
            .unwrap();
        assert!(
            matches!(answer, Err(TransportError::Closed(_))),
            "the request waiting for a slot: {answer:?}"
        );
    }

    /// Starts a read of `slow` (held until released) and waits until the server has it.
    async fn hold_a_slow_read(
        server: &SlowServer,
    ) -> tokio::task::JoinHandle<Result<Response, TransportError>> {
        let (peers, addr) = (server.peers.clone(), server.addr);
        let slow = tokio::spawn(async move {
            let key = Bytes::from_static(b"slow");
            peers
                .call(
                    addr,
                    Request::Read { key, as_home: true },
                    Duration::from_secs(10),
                )
                .await
        });
        tokio::time::timeout(Duration::from_secs(5), server.handler.arrived.notified())
            .await
            .expect("the slow read reached the server");
        slow
    }

    /// Releases the slow read and checks it was answered (its connection stayed up); stops.
    async fn the_slow_read_is_answered(
        server: SlowServer,
        slow: tokio::task::JoinHandle<Result<Response, TransportError>>,
    ) {
        server.handler.release.notify_one();
        let answer = slow.await.unwrap();
        assert!(
            matches!(answer, Ok(Response::Versions(None))),
            "the request beside it: {answer:?}"
        );
        server.shutdown.cancel();
        server.server.await.unwrap();
    }

    /// An answer over the frame limit (a key whose siblings outgrew it) fails that request
    /// with an error; the connection, and the request in flight beside it, carry on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_over_the_frame_limit_fails_that_request_alone() {
        let server = SlowServer::start_limited().await;
        let slow = hold_a_slow_read(&server).await;
        let key = Bytes::from_static(b"big");
        let big = server
            .peers
            .call(
                server.addr,
                Request::Read { key, as_home: true },
                Duration::from_secs(5),
            )
            .await;
        match big {
            Ok(Response::Error(why)) => assert!(why.contains("frame limit"), "{why}"),
            other => panic!("an oversized answer came back as {other:?}"),
        }
        the_slow_read_is_answered(server, slow).await;
    }

    /// A request over the frame limit is refused before it is sent; the connection it would
    /// have gone on, and the request in flight on it, carry on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_over_the_frame_limit_is_refused_before_it_is_sent() {
        let server = SlowServer::start_limited().await;
        let slow = hold_a_slow_read(&server).await;
        let write = Request::Write {
            key: Bytes::from_static(b"k"),
            versions: versions_of(BIG_BYTES),
            hinted_for: None,
        };
        let refused = server
            .peers
            .call(server.addr, write, Duration::from_secs(5))
            .await;
        assert!(
            matches!(refused, Err(TransportError::TooLarge(n, SMALL_FRAME_BYTES)) if n > SMALL_FRAME_BYTES),
            "{refused:?}"
        );
        the_slow_read_is_answered(server, slow).await;
    }

    /// The pool forgets an address it is told to, connection and all, and keeps the others;
    /// a later call to a forgotten address connects again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_forgets_addresses_it_is_told_to() {
        let server = SlowServer::start().await;
        let (peers, addr) = (server.peers.clone(), server.addr);
        let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(
            peers
                .call(addr, Request::Ping, Duration::from_secs(5))
                .await
                .is_ok()
        );
        assert!(
            peers
                .call(dead, Request::Ping, Duration::from_secs(5))
                .await
                .is_err()
        );
        let held = |peers: &Peers| {
            let mut held: Vec<SocketAddr> = peers.peers.lock().unwrap().keys().copied().collect();
            held.extend(peers.slots.lock().unwrap().keys());
            held.extend(peers.connect_locks.lock().unwrap().keys());
            held.sort();
            held.dedup();
            held
        };
        assert_eq!(held(&peers), {
            let mut both = vec![addr, dead];
            both.sort();
            both
        });

        peers.forget_others(|a| *a == addr);
        assert_eq!(held(&peers), vec![addr]);
        let conn = peers.peers.lock().unwrap()[&addr]
            .connection
            .clone()
            .unwrap();
        peers.forget_others(|_| false);
        assert!(held(&peers).is_empty());
        assert!(
            conn.closed.is_cancelled(),
            "a forgotten connection is closed"
        );
        assert!(
            peers
                .call(addr, Request::Ping, Duration::from_secs(5))
                .await
                .is_ok(),
            "a forgotten address is called again"
        );
        server.shutdown.cancel();
        server.server.await.unwrap();
    }

    /// A call its caller drops while it waits for the answer leaves nothing in the
    /// connection's table of calls awaiting answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_call_leaves_no_entry_behind() {
        let server = SlowServer::start().await;
        let (peers, addr) = (server.peers.clone(), server.addr);
        let call = tokio::spawn(async move {
            let key = Bytes::from_static(b"slow");
            peers
                .call(
                    addr,
                    Request::Read { key, as_home: true },
                    Duration::from_secs(60),
                )
                .await
        });
        tokio::time::timeout(Duration::from_secs(5), server.handler.arrived.notified())
            .await
            .expect("the read reached the server");
        let waiting = || {
            let peers = server.peers.peers.lock().unwrap();
            let conn = peers[&server.addr]
                .connection
                .as_ref()
                .expect("a connection");
            conn.pending.lock().unwrap().len()
        };
        assert_eq!(waiting(), 1, "the call waits for its answer");
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_eq!(waiting(), 0, "the dropped call's entry is gone");
        server.handler.release.notify_one();
        server.shutdown.cancel();
        server.server.await.unwrap();
    }

    /// Connections that never send a `Hello` hold their slots only for `inbound_hello_timeout`:
    /// with every slot taken by such connections, a peer's call gets through once the bound has
    /// passed. (Without it, they held every slot for as long as they stayed open, and every
    /// later connection was closed on accept.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_that_never_say_hello_do_not_lock_peers_out() {
        let server = SlowServer::start_with(Limits {
            inbound_connections_max: 4,
            inbound_hello_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let mut silent = Vec::new();
        for _ in 0..8 {
            silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
        }
        let mut answered = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answered && Instant::now() < deadline {
            answered = server.ping().await.is_ok();
            if !answered {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(answered, "silent connections locked the peer out");
        for stream in &mut silent {
            assert!(
                closed_by_server(stream, Duration::from_secs(5)).await,
                "a connection that never said hello was kept"
            );
        }
        server.shutdown.cancel();
        server.server.await.unwrap();
    }

    /// A connection whose first frame is a request, not a `Hello`, is closed unanswered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_frame_other_than_hello_closes_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = SlowServer::start().await;
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = Frame::Request {
            id: 1,
            timeout_ms: 1000,
            body: Request::Ping,
        };
        stream.write_all(&framed(&request)).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the connection was kept open");
        assert!(
            read.is_err() || answer.is_empty(),
            "a request before the hello was answered"
        );
        server.shutdown.cancel();
        server.server.await.unwrap();
    }

    /// An inbound connection idle for `inbound_idle_timeout` is closed by the server; the
    /// client sees it closed and its next call connects again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_closes_an_idle_connection_and_the_next_call_connects_again() {
        let server = SlowServer::start_with(Limits {
            inbound_idle_timeout: Duration::from_millis(300),
            peer_idle_timeout: Duration::from_secs(3600),
            ..Limits::default()
        })
        .await;
        assert!(server.ping().await.is_ok());
        let first = server.connection();
        assert!(
            eventually(Duration::from_secs(10), || first.closed.is_cancelled()).await,
            "an idle inbound connection was kept"
        );
        assert!(server.ping().await.is_ok());
        assert!(
            !Arc::ptr_eq(&first, &server.connection()),
            "a new connection"
        );
        server.shutdown.cancel();
        server.server.await.unwrap();
    }

    /// An outbound connection no call has used for `peer_idle_timeout` is closed by the
    /// client, before the server's longer bound; the next call connects again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_closes_its_idle_connection_first() {
        let server = SlowServer::start_with(Limits {
            peer_idle_timeout: Duration::from_millis(300),
            inbound_idle_timeout: Duration::from_secs(3600),
            ..Limits::default()
        })
        .await;
        assert!(server.ping().await.is_ok());
        let first = server.connection();
        assert!(
            eventually(Duration::from_secs(10), || first.closed.is_cancelled()).await,
            "an idle outbound connection was kept"
        );
        let dropped = server.dropped.clone();
        assert!(
            eventually(Duration::from_secs(10), || dropped.load(Ordering::SeqCst)
                == 1)
            .await,
            "the server kept the connection the client closed"
        );
        assert!(server.ping().await.is_ok());
        server.shutdown.cancel();
        server.server.await.unwrap();
    }

    /// A request in flight keeps its connection open however long it takes, on both ends:
    /// idle means no frame and no request in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_in_flight_keeps_its_connection_open() {
        let server = SlowServer::start_with(Limits {
            peer_idle_timeout: Duration::from_millis(100),
            inbound_idle_timeout: Duration::from_millis(200),
            ..Limits::default()
        })
        .await;
        let slow = hold_a_slow_read(&server).await;
        let conn = server.connection();
        // Time for both idle bounds to pass several times over.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!conn.closed.is_cancelled(), "a busy connection was closed");
        assert_eq!(server.dropped.load(Ordering::SeqCst), 0);
        the_slow_read_is_answered(server, slow).await;
    }

    /// One address takes at most `inbound_connections_per_ip_max` slots: past it, its
    /// connections are closed on accept, and a peer at another address still gets in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_address_cannot_take_every_slot() {
        let server = SlowServer::start_with(Limits {
            inbound_connections_per_ip_max: 2,
            inbound_hello_timeout: Duration::from_secs(3600),
            ..Limits::default()
        })
        .await;
        let from_other_address = || async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            socket.connect(server.addr).await.unwrap()
        };
        let _kept = [from_other_address().await, from_other_address().await];
        let mut third = from_other_address().await;
        assert!(
            closed_by_server(&mut third, Duration::from_secs(5)).await,
            "a third connection from one address was kept"
        );
        let answer = server.ping().await;
        assert!(answer.is_ok(), "{answer:?}");
        server.shutdown.cancel();
        server.server.await.unwrap();
    }
}
