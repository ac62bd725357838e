//! The Redis-protocol (RESP2) front end (API.md §4), so that `redis-cli`, `redis-benchmark`
//! and Redis client libraries work against ringkv unchanged.
//!
//! Each connection runs in its own task: it reads requests (`parser`), runs every complete
//! command in the order received (pipelining), and writes the replies in that order. The
//! commands call the coordinator exactly as the HTTP front end does, with the node's default
//! R, W and request timeout.
//!
//! # Commands
//!
//! Names are case-insensitive. A wrong number of arguments answers
//! `-ERR wrong number of arguments for 'x' command`; an unknown command answers
//! `-ERR unknown command 'x'` and the connection stays open.
//!
//! | command | answer |
//! |---|---|
//! | `PING [msg]`, `ECHO msg` | as Redis |
//! | `QUIT` | `+OK`, then the connection is closed |
//! | `COMMAND [...]` | an empty array (`COMMAND COUNT`: `0`): ringkv publishes no command table |
//! | `CLIENT SETNAME n`, `GETNAME`, `ID`, `INFO`, `LIST`, `SETINFO ...` | as Redis (per connection) |
//! | `CLIENT REPLY ON\|OFF\|SKIP` | as Redis: `OFF` sends no reply (errors included) until `ON`, which answers `+OK`; `SKIP` drops the next command's reply (nothing while `OFF`); `OFF` and `SKIP` answer nothing themselves. The commands still run and are counted. A protocol error is still answered before the connection closes |
//! | `SELECT 0` | `+OK`; any other database is an error: there is one keyspace |
//! | `CONFIG GET name ...` | `save` (empty), `appendonly` (`no`) and `databases` (`1`) when named exactly, for tools like redis-benchmark; any other name is left out (an empty array); other `CONFIG` subcommands are errors |
//! | `HELLO ...` | `-NOPROTO`: clients fall back to RESP2 |
//! | `AUTH ...` | an error: ringkv has no passwords |
//! | `INFO [section]` | a short bulk string (`redis_version`, `ringkv_version`, `node_id`, clients) |
//! | `GET key` | nil if absent or deleted; the value if there is one; with siblings the error `-CONFLICT n siblings, use GETCTX` |
//! | `SET key value` | a blind overwrite: the write supersedes every version the coordinating node has seen; `+OK`. Options (`EX`, `PX`, `NX`, `XX`, `KEEPTTL`, `GET`) answer `-ERR syntax error`: ringkv has no expiry and no conditional write |
//! | `DEL key [key ...]` | each key is read (R), then deleted blindly: a tombstone superseding what the coordinating node has seen, and also what the read found if the coordinator had not received all of it yet. Answers how many of the keys had a live value (a key with siblings counts once) |
//! | `EXISTS key [key ...]` | how many of the keys have a live value; a key named twice counts twice, as in Redis |
//! | `MGET key [key ...]` | an array with, per key, what `GET` answers: the value, nil, or the `CONFLICT` error *as that element* (see below) |
//! | `MSET key value [key value ...]` | a `SET` of each pair; `+OK` |
//! | `GETCTX key` | `[context, value1, value2, ...]`: every sibling and the context covering them all; `[nil]` if nothing is stored; a deleted key answers its tombstone's context and no value |
//! | `PUTCTX key context value` | a write with the client's context (API.md §2): it supersedes what the context covers, and concurrent versions survive as siblings. Answers the new context as a bulk string. An empty context is a write concurrent with everything stored |
//! | `DELCTX key context` | (an addition) a delete with the client's context; answers the new context |
//!
//! `SET` through two different nodes in quick succession can leave siblings: the second
//! coordinator supersedes only what it has seen, and the first write may still be on its way
//! to it. `GET` then answers `CONFLICT`, as the contract says; `PUTCTX` with `GETCTX`'s context
//! (or another `SET` through a node that has both) resolves it.
//!
//! A multi-key command validates every key (and value) before running any of them, then runs
//! the keys with at most `commands::MULTI_KEY_CONCURRENCY` in flight. It is not atomic: if one
//! key fails (for instance `-UNAVAILABLE`), the command answers that error, and the other keys
//! may or may not have been written.
//!
//! `MGET` and siblings: a Redis user reads `MGET`'s array position by position, so a nil
//! would be read as "absent" and a sibling conflict would silently look like a missing key.
//! The conflicted key's element is therefore the `CONFLICT` error itself (RESP2 allows an
//! error inside an array, as in `EXEC` replies): `redis-cli` prints `(error) CONFLICT ...` at
//! that position, and strict client libraries turn the whole reply into that error. No client
//! mistakes a conflict for absence.
//!
//! Errors from the node: `-UNAVAILABLE <message>` when fewer than R or W replicas answered in
//! time (for a write, the message says on how many replicas the write may still be stored:
//! it is indeterminate, not undone); `-ERR <message>` for a bad request (empty key, key over
//! 4096 bytes, value over `--max-value-bytes`, bad context: `-ERR bad context: ...`);
//! `-ERR internal: <message>` for a bug or a storage failure.
//!
//! # Limits
//!
//! - `MAX_CONNECTIONS` open connections; one more is accepted, told
//!   `-ERR max number of clients reached` and closed.
//! - Requests: the bounds of `parser::ParserLimits` (a bulk string up to the largest value,
//!   key or context plus `parser::BULK_SLACK_BYTES`; `parser::MAX_ARRAY_LEN` arguments;
//!   `parser::MAX_INLINE_BYTES` per inline line; `parser::MIN_COMMAND_BYTES` or more per
//!   command). An announcement over a limit is refused before its bytes are read:
//!   `-ERR Protocol error: ...` and the connection is closed, as for any malformed request.
//! - Input held by all connections together: every byte of input a connection holds and has
//!   not run yet (a command still arriving, pipelined ones not parsed) draws on one node-wide
//!   `InputBudget` of `INPUT_BUDGET_BYTES` (1 GiB). A connection the budget cannot cover is
//!   told `-ERR the node's RESP input budget is exhausted ...` and closed, nothing of its
//!   pending command having run (`ringkv_resp_input_budget_refusals_total`). Without it,
//!   10,000 connections each sending one 64 MiB command could hold 640 GiB. No share of a
//!   connection's input is left out: with 1 MiB each left out, 400 clients each stalled 1 MB
//!   into a `SET` held 400 MB that no budget counted.
//! - A command must arrive in full within `Limits::resp_command_timeout` (30 s) of waiting:
//!   the time the node spends waiting for the rest of a command it has begun to receive (not
//!   the time it spends running earlier commands or writing replies, when the client could
//!   not send). Past it the client is told `-ERR the command did not arrive in full within
//!   ...` and the connection closed (`ringkv_resp_command_timeouts_total`), so a client that
//!   stalls mid-command holds its input that long at most. An idle connection (no command
//!   begun) may stay open.
//! - One reply: `MGET` answers at most `commands::MAX_MGET_REPLY_BYTES` (64 MiB) of values;
//!   past it the command fails with `-ERR the values would pass ... bytes; ask for fewer
//!   keys`, the keys left unread, and the connection serves on. Every other reply is one
//!   key's or a fixed size.
//! - Replies are written at least every `OUTPUT_FLUSH_BYTES`, and no more input is read
//!   while a write is blocked, so a client that sends without reading holds at most about
//!   one read chunk, one partial request and `OUTPUT_FLUSH_BYTES` of replies. A write blocked
//!   for `WRITE_TIMEOUT` closes the connection. Idle connections may stay open; they hold
//!   no input or output buffer (`READ_CHUNK_BYTES` are read at once, then parsed).
//!
//! # Metrics
//!
//! `ringkv_resp_commands_total{command, outcome}` (unknown names count as `unknown`),
//! the gauge `ringkv_resp_connections`, `ringkv_resp_connections_refused_total`,
//! `ringkv_resp_protocol_errors_total` and `ringkv_resp_write_timeouts_total`.
//!
//! The data commands are also recorded, as HTTP requests are, in `ringkv_requests_total` and
//! the histogram `ringkv_request_duration_seconds`, both `{op, outcome}` (`request_metrics`):
//! `op` is `get` for `GET`, `GETCTX`, `MGET` and `EXISTS`, `put` for `SET`, `PUTCTX` and
//! `MSET`, `delete` for `DEL` and `DELCTX`; `outcome` is HTTP's word for the reply (`ok`, a
//! `CONFLICT` included; `bad_request` for `-ERR`; `unavailable`; `error` for `-ERR internal`).
//! A multi-key command is one sample, from its dispatch to its reply being ready. The
//! series carry no protocol label: one histogram per operation, whatever the protocol.

pub mod commands;
pub mod parser;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::node::Node;
use crate::sockets::{AcceptLoop, serve_connections};
use commands::{Flow, ReplyMode, Session};
use parser::{Parser, ParserLimits, Reply};

/// Most RESP connections open at once.
pub const MAX_CONNECTIONS: usize = 10_000;
/// A connection whose replies could not be written for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from a socket at once.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Replies are written out once this many bytes are pending, even mid-pipeline.
pub const OUTPUT_FLUSH_BYTES: usize = 64 * 1024;
/// After the listener stops, connections get the request timeout plus this long to finish
/// the command they are running before they are aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const TOO_MANY_CLIENTS: &[u8] = b"-ERR max number of clients reached\r\n";
/// Input all connections together may hold (commands still arriving, pipelined ones not yet
/// parsed). Each connection is bounded by its parser (one command of at most 64 MiB); this
/// bounds them all.
pub const INPUT_BUDGET_BYTES: usize = 1024 * 1024 * 1024;
const BUDGET_EXHAUSTED: &str = "the node's RESP input budget is exhausted (too many large commands arriving at once); \
     nothing of this command ran: retry later";

/// The node-wide bound on RESP input held by connections.
#[derive(Debug)]
pub struct InputBudget {
    used: AtomicUsize,
    max: usize,
}

impl InputBudget {
    pub fn new(max: usize) -> InputBudget {
        InputBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Bytes drawn from the budget now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What one connection draws from the `InputBudget`; given back when it changes or ends.
struct Reservation {
    budget: Arc<InputBudget>,
    held: usize,
}

impl Reservation {
    /// Draws `want` bytes in all; `false` (nothing drawn) when the budget cannot cover them.
    fn resize(&mut self, want: usize) -> bool {
        if want == self.held {
            return true;
        }
        if want < self.held {
            self.budget
                .used
                .fetch_sub(self.held - want, Ordering::Relaxed);
            self.held = want;
            return true;
        }
        let more = want - self.held;
        let drawn = self
            .budget
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + more <= self.budget.max).then_some(used + more)
            });
        if drawn.is_ok() {
            self.held = want;
        }
        drawn.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// Serves RESP2 clients on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    let budget = Arc::new(InputBudget::new(INPUT_BUDGET_BYTES));
    serve_limited(listener, node, shutdown, MAX_CONNECTIONS, budget).await
}

/// `serve` with at most `max_connections` open connections and `budget` for their input.
async fn serve_limited(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: CancellationToken,
    max_connections: usize,
    budget: Arc<InputBudget>,
) {
    let limits = ParserLimits::for_max_value_bytes(node.settings().max_value_bytes);
    let command_timeout = node.settings().limits.resp_command_timeout;
    let accept = AcceptLoop {
        face: "RESP",
        connections_max: max_connections,
        refused_counter: "ringkv_resp_connections_refused_total",
        refusal: TOO_MANY_CLIENTS,
        shutdown_grace: node.settings().request_timeout + SHUTDOWN_GRACE,
    };
    let open = Arc::new(AtomicUsize::new(0));
    let next_id = AtomicU64::new(1);
    serve_connections(listener, accept, &shutdown, |stream| {
        let session = Session {
            node: node.clone(),
            id: next_id.fetch_add(1, Ordering::Relaxed),
            name: None,
            connections: open.clone(),
            replies: ReplyMode::On,
        };
        let shutdown = shutdown.clone();
        let reservation = Reservation {
            budget: budget.clone(),
            held: 0,
        };
        async move {
            let _open = OpenConnection::new(session.connections.clone());
            let id = session.id;
            let input = Input {
                limits,
                reservation,
                command_timeout,
            };
            let end = connection(stream, session, input, shutdown).await;
            debug!(connection = id, end = %end, "RESP connection closed");
        }
    })
    .await
}

/// Counts an open connection for `INFO` and the gauge while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("ringkv_resp_connections").increment(1.0);
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("ringkv_resp_connections").decrement(1.0);
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The client closed its side.
    Closed,
    Quit,
    Shutdown,
    Protocol(parser::ProtocolError),
    WriteTimeout,
    /// The node-wide input budget could not cover this connection's command.
    Budget,
    /// A command did not arrive in full within the command timeout.
    CommandTimeout(Duration),
    Io(std::io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed by the client"),
            End::Quit => f.write_str("QUIT"),
            End::Shutdown => f.write_str("node shutting down"),
            End::Protocol(e) => write!(f, "{e}"),
            End::WriteTimeout => write!(f, "replies blocked for {WRITE_TIMEOUT:?}"),
            End::Budget => f.write_str("input budget exhausted"),
            End::CommandTimeout(t) => write!(f, "a command did not arrive in full within {t:?}"),
            End::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// How a connection takes its input: the parser's bounds, its draw on the node's input
/// budget, and how long one command may take to arrive.
struct Input {
    limits: ParserLimits,
    reservation: Reservation,
    command_timeout: Duration,
}

/// Serves one client until it leaves, errs, or the node shuts down.
async fn connection(
    mut stream: TcpStream,
    mut session: Session,
    mut input: Input,
    shutdown: CancellationToken,
) -> End {
    crate::sockets::tune(&stream);
    let mut parser = Parser::new(input.limits);
    let mut out = BytesMut::new();
    // How long the node has waited for the rest of the command still arriving. Time spent
    // running earlier commands or writing replies does not count: the client could not send.
    let mut command_waited = Duration::ZERO;
    loop {
        let mut ran = false;
        while !shutdown.is_cancelled() {
            let args = match parser.next_command() {
                Ok(Some(args)) => args,
                Ok(None) => break,
                Err(e) => {
                    metrics::counter!("ringkv_resp_protocol_errors_total").increment(1);
                    return refuse(&mut stream, &mut out, &e.to_string(), End::Protocol(e)).await;
                }
            };
            ran = true;
            let (reply, flow) = commands::execute(&mut session, args).await;
            if let Some(reply) = reply {
                reply.encode(&mut out);
            }
            if flow == Flow::Close {
                let _ = flush(&mut stream, &mut out).await;
                return End::Quit;
            }
            if out.len() >= OUTPUT_FLUSH_BYTES
                && let Err(end) = flush(&mut stream, &mut out).await
            {
                return end;
            }
        }
        if let Err(end) = flush(&mut stream, &mut out).await {
            return end;
        }
        // An idle connection holds no buffer: wait for readiness, then read into a chunk
        // that lives only until it is fed to the parser.
        parser.release_idle_memory();
        // Bytes held now are one command still arriving: a new one if a command just ran
        // (the rest of the last read follows it).
        let arriving = parser.held_bytes() > 0;
        if !arriving || ran {
            command_waited = Duration::ZERO;
        }
        // What it holds counts against the node's budget; past it the client is told and
        // the connection closed, nothing of the command having run.
        if !input.reservation.resize(parser.held_bytes()) {
            metrics::counter!("ringkv_resp_input_budget_refusals_total").increment(1);
            return refuse(&mut stream, &mut out, BUDGET_EXHAUSTED, End::Budget).await;
        }
        let left = input.command_timeout.saturating_sub(command_waited);
        let waiting = Instant::now();
        let readable = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return End::Shutdown,
            readable = stream.readable() => readable,
            _ = tokio::time::sleep(left), if arriving => {
                metrics::counter!("ringkv_resp_command_timeouts_total").increment(1);
                let t = input.command_timeout;
                let message = format!(
                    "the command did not arrive in full within {t:?}; closing the connection"
                );
                return refuse(&mut stream, &mut out, &message, End::CommandTimeout(t)).await;
            }
        };
        if arriving {
            command_waited += waiting.elapsed();
        }
        if let Err(e) = readable {
            return End::Io(e);
        }
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        match stream.try_read(&mut chunk) {
            Ok(0) => return End::Closed,
            Ok(n) => parser.feed(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return End::Io(e),
        }
    }
}

/// Tells the client `-ERR <message>` after the replies already pending, and ends with `end`.
async fn refuse(stream: &mut TcpStream, out: &mut BytesMut, message: &str, end: End) -> End {
    Reply::err(message).encode(out);
    let _ = flush(stream, out).await;
    end
}

/// Writes the pending replies, giving up after `WRITE_TIMEOUT`.
async fn flush(stream: &mut TcpStream, out: &mut BytesMut) -> Result<(), End> {
    if out.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(out)).await {
        Ok(Ok(())) => {
            // Dropped rather than cleared, so a burst does not pin its buffer for the
            // connection's lifetime.
            *out = BytesMut::new();
            Ok(())
        }
        Ok(Err(e)) => Err(End::Io(e)),
        Err(_) => {
            metrics::counter!("ringkv_resp_write_timeouts_total").increment(1);
            Err(End::WriteTimeout)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::settings::{ServerArgs, Settings, StorageKind};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("an ephemeral port")
            .port()
    }

    /// A one-node cluster in this process, with in-memory storage.
    async fn one_node(shutdown: &CancellationToken) -> Arc<Node> {
        one_node_with(shutdown, ServerArgs::default()).await
    }

    /// `one_node` with the `--test-*` settings of `extra`.
    async fn one_node_with(shutdown: &CancellationToken, extra: ServerArgs) -> Arc<Node> {
        static DIRS: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringkv-resp-unit-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let args = ServerArgs {
            node_id: Some("unit".into()),
            listen: Some(format!("127.0.0.1:{}", free_port())),
            http: Some(format!("127.0.0.1:{}", free_port())),
            data_dir: Some(dir),
            storage: Some(StorageKind::Memory),
            n: Some(1),
            r: Some(1),
            w: Some(1),
            ..extra
        };
        let settings = Settings::resolve(args).expect("valid settings");
        Node::start(settings, shutdown.child_token())
            .await
            .expect("the node starts")
    }

    /// Sends `request` and reads until `expected` arrived or the connection closed.
    async fn exchange(stream: &mut TcpStream, request: &[u8], expected: &[u8]) -> Vec<u8> {
        stream.write_all(request).await.expect("write");
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !got.ends_with(expected) {
            let mut chunk = [0u8; 256];
            match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no reply within 5 s; got {got:?}"),
            }
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_limit_are_told_and_closed_and_slots_come_back() {
        let shutdown = CancellationToken::new();
        let node = one_node(&shutdown).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let budget = Arc::new(InputBudget::new(INPUT_BUDGET_BYTES));
        let server = tokio::spawn(serve_limited(listener, node, shutdown.clone(), 2, budget));

        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        for c in [&mut first, &mut second] {
            assert_eq!(exchange(c, b"PING\r\n", b"+PONG\r\n").await, b"+PONG\r\n");
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut refused = Vec::new();
        third.read_to_end(&mut refused).await.unwrap();
        assert_eq!(refused, TOO_MANY_CLIENTS);

        // A closed connection frees its slot (once its task has ended).
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut next = TcpStream::connect(addr).await.unwrap();
            let got = exchange(&mut next, b"PING\r\n", b"+PONG\r\n").await;
            if got == b"+PONG\r\n" {
                break;
            }
            assert_eq!(got, TOO_MANY_CLIENTS);
            assert!(Instant::now() < deadline, "the slot never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve stops on shutdown")
            .unwrap();
    }

    /// Polls `done` every 10 ms until it holds; fails after 10 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Large commands arriving at once on several connections draw on one node-wide budget:
    /// the one that would pass it is told and closed, nothing of it run; the others complete,
    /// and what they drew comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn input_past_the_node_budget_is_refused_and_the_budget_comes_back() {
        let shutdown = CancellationToken::new();
        let node = one_node(&shutdown).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // One whole command (600 KiB) fits; two halves (450 KiB each) do not.
        let budget = Arc::new(InputBudget::new(640 * 1024));
        let server = tokio::spawn(serve_limited(
            listener,
            node,
            shutdown.clone(),
            16,
            budget.clone(),
        ));
        const VALUE: usize = 300 * 1024;
        // `MSET a <VALUE> b <VALUE>` cut `VALUE / 2` bytes into its last value, and the rest.
        let mset = |a: &str, b: &str| {
            let mut head =
                format!("*5\r\n$4\r\nMSET\r\n${}\r\n{a}\r\n${VALUE}\r\n", a.len()).into_bytes();
            head.extend(vec![b'x'; VALUE]);
            head.extend(format!("\r\n${}\r\n{b}\r\n${VALUE}\r\n", b.len()).into_bytes());
            head.extend(vec![b'y'; VALUE / 2]);
            let mut tail = vec![b'y'; VALUE - VALUE / 2];
            tail.extend_from_slice(b"\r\n");
            (head, tail)
        };

        let mut first = TcpStream::connect(addr).await.unwrap();
        let (head, first_tail) = mset("k1", "k2");
        first.write_all(&head).await.unwrap();
        until("the first command never drew on the budget", || {
            budget.used() >= VALUE
        })
        .await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let (head, _) = mset("k3", "k4");
        let _ = second.write_all(&head).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut answer))
            .await
            .expect("the refused connection is closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("-ERR the node's RESP input budget"),
            "{answer}"
        );

        assert_eq!(
            exchange(&mut first, &first_tail, b"+OK\r\n").await,
            b"+OK\r\n"
        );
        until("the budget never came back", || budget.used() == 0).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        let (mut whole, tail) = mset("k3", "k4");
        whole.extend(tail);
        assert_eq!(exchange(&mut third, &whole, b"+OK\r\n").await, b"+OK\r\n");
        let got = exchange(&mut third, b"EXISTS k1 k2 k3 k4\r\n", b"\r\n").await;
        assert_eq!(got, b":4\r\n");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve stops on shutdown")
            .unwrap();
    }

    /// Commands stalled part way draw on the budget from their first byte, so the budget
    /// bounds them all; each is cut off once the command timeout passed, and what it drew
    /// comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_commands_draw_on_the_budget_and_are_cut_off() {
        let shutdown = CancellationToken::new();
        let node = one_node_with(
            &shutdown,
            ServerArgs {
                test_resp_command_timeout_ms: Some(500),
                ..Default::default()
            },
        )
        .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        const STALLED: usize = 100 * 1024;
        let budget = Arc::new(InputBudget::new(STALLED * 5 / 2));
        let server = tokio::spawn(serve_limited(
            listener,
            node,
            shutdown.clone(),
            16,
            budget.clone(),
        ));
        // `SET k <value>` with `STALLED` bytes of the value sent, and no more.
        let mut stalled_set =
            format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", 4 * STALLED).into_bytes();
        stalled_set.extend(vec![b'x'; STALLED]);
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&stalled_set).await.unwrap();
            stalled.push(c);
        }
        until("the stalled commands never drew on the budget", || {
            budget.used() >= 2 * STALLED
        })
        .await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        let _ = third.write_all(&stalled_set).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut answer))
            .await
            .expect("the connection past the budget is closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("-ERR the node's RESP input budget"),
            "{answer}"
        );
        for mut c in stalled {
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
                .await
                .expect("a stalled command is cut off");
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.starts_with("-ERR the command did not arrive in full within 500ms"),
                "{answer}"
            );
        }
        until("the budget never came back", || budget.used() == 0).await;
        let mut next = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            exchange(&mut next, b"PING\r\n", b"+PONG\r\n").await,
            b"+PONG\r\n"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve stops on shutdown")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_closes_idle_and_half_sent_connections_and_releases_the_node() {
        let shutdown = CancellationToken::new();
        let node = one_node(&shutdown).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, node.clone(), shutdown.clone()));

        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            exchange(&mut idle, b"SET k v\r\nGET k\r\n", b"$1\r\nv\r\n").await,
            b"+OK\r\n$1\r\nv\r\n"
        );
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"*2\r\n$3\r\nGET\r\n$1").await.unwrap();
        exchange(&mut idle, b"PING\r\n", b"+PONG\r\n").await;

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns promptly when its connections are idle")
            .unwrap();
        for c in [&mut idle, &mut half] {
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest));
            assert!(read.await.is_ok(), "the connection was closed");
        }
        assert_eq!(
            Arc::strong_count(&node),
            1,
            "no connection task holds the node"
        );
    }
}
