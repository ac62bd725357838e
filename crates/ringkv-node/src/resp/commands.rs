//! The RESP commands: argument checks, the calls into the coordinator, the replies.
//! The semantics are written down in the module docs of `resp`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use ringkv_core::constants::MAX_KEY_BYTES;
use ringkv_core::{Context, Dot, VersionSet};

use super::parser::Reply;
use crate::node::Node;
use crate::request_metrics::{self, Op, Outcome};
use crate::wire::{ClientContext, ClientError, ClientOp, ClientReply};

/// Keys of one multi-key command (`DEL`, `EXISTS`, `MGET`, `MSET`) in flight at once.
pub const MULTI_KEY_CONCURRENCY: usize = 32;
/// Most value bytes one `MGET` answers (as much as one inter-node frame): past it the command
/// fails, asking for fewer keys, instead of building a reply of any size (`MGET k k k ...`
/// names one large value as often as the request allows).
pub const MAX_MGET_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// Longest client name kept by `CLIENT SETNAME`.
pub const MAX_CLIENT_NAME_BYTES: usize = 256;
/// Longest command name echoed back in an `unknown command` error.
const MAX_ECHOED_NAME_BYTES: usize = 128;

/// What the connection does after answering a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Answer, then close (`QUIT`).
    Close,
}

/// Which replies a connection sends (`CLIENT REPLY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyMode {
    #[default]
    On,
    /// No reply at all until `CLIENT REPLY ON`.
    Off,
    /// The next command's reply is dropped; then `On` again.
    SkipNext,
}

/// One connection's state as the commands see it.
pub struct Session {
    pub node: Arc<Node>,
    pub id: u64,
    pub name: Option<Bytes>,
    /// Connections open on this node right now (for `INFO`).
    pub connections: Arc<AtomicUsize>,
    /// Which replies this connection is sent (`CLIENT REPLY`).
    pub replies: ReplyMode,
}

/// Runs one command and answers its reply, or `None` if `CLIENT REPLY` silenced it. Counts
/// the command by name and outcome, and a data command's latency by operation
/// (`request_metrics`).
pub async fn execute(session: &mut Session, args: Vec<Bytes>) -> (Option<Reply>, Flow) {
    // The mode this command's reply is under: a skip covers this one command.
    let mode = session.replies;
    if mode == ReplyMode::SkipNext {
        session.replies = ReplyMode::On;
    }
    let Some(first) = args.first() else {
        let reply = Reply::err("empty command");
        return ((mode == ReplyMode::On).then_some(reply), Flow::Continue);
    };
    let name = first.to_ascii_uppercase();
    let label = metric_label(&name);
    let timed = data_op(&name).map(|op| (op, Instant::now()));
    let (reply, flow) = dispatch(session, &name, &args).await;
    metrics::counter!("ringkv_resp_commands_total", "command" => label, "outcome" => outcome(&reply))
        .increment(1);
    if let Some((op, started)) = timed {
        request_metrics::record(op, request_outcome(&reply), started);
    }
    // `CLIENT REPLY` answers only when it turns replies on (`ON`), whatever the mode before.
    let switched = name == b"CLIENT"
        && args
            .get(1)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"REPLY"))
        && !reply.is_error();
    let sent = if switched {
        session.replies == ReplyMode::On
    } else {
        mode == ReplyMode::On
    };
    (sent.then_some(reply), flow)
}

/// The operation a data command performs, for the per-operation request metrics; `None` for
/// the connection and server commands (`PING`, `CLIENT`, `INFO`, ...), which are not timed.
fn data_op(name: &[u8]) -> Option<Op> {
    match name {
        b"GET" | b"GETCTX" | b"MGET" | b"EXISTS" => Some(Op::Get),
        b"SET" | b"PUTCTX" | b"MSET" => Some(Op::Put),
        b"DEL" | b"DELCTX" => Some(Op::Delete),
        _ => None,
    }
}

/// A data command's reply in the outcome words the HTTP front end uses: a sibling conflict is
/// an answer (HTTP 300), not a failure.
fn request_outcome(reply: &Reply) -> Outcome {
    match reply {
        Reply::Error(e) if e.starts_with("CONFLICT") => Outcome::Ok,
        Reply::Error(e) if e.starts_with("UNAVAILABLE") => Outcome::Unavailable,
        Reply::Error(e) if e.starts_with("ERR internal") => Outcome::Error,
        Reply::Error(_) => Outcome::BadRequest,
        _ => Outcome::Ok,
    }
}

/// The metrics label of a command: its name if known, else `unknown` (bounded cardinality).
fn metric_label(name: &[u8]) -> &'static str {
    const KNOWN: &[&str] = &[
        "PING", "ECHO", "QUIT", "COMMAND", "CLIENT", "SELECT", "CONFIG", "HELLO", "INFO", "AUTH",
        "GET", "SET", "DEL", "EXISTS", "MGET", "MSET", "GETCTX", "PUTCTX", "DELCTX",
    ];
    KNOWN
        .iter()
        .find(|k| k.as_bytes() == name)
        .copied()
        .unwrap_or("unknown")
}

fn outcome(reply: &Reply) -> &'static str {
    match reply {
        Reply::Error(e) if e.starts_with("UNAVAILABLE") => "unavailable",
        Reply::Error(e) if e.starts_with("CONFLICT") => "conflict",
        Reply::Error(e) if e.starts_with("ERR internal") => "internal",
        Reply::Error(_) => "error",
        _ => "ok",
    }
}

async fn dispatch(session: &mut Session, name: &[u8], args: &[Bytes]) -> (Reply, Flow) {
    let reply = match name {
        b"QUIT" => return (Reply::ok(), Flow::Close),
        b"PING" => ping(args),
        b"ECHO" => arity(args, 2, 2).map_or_else(|e| e, |_| Reply::Bulk(args[1].clone())),
        b"COMMAND" => command(args),
        b"CLIENT" => client(session, args),
        b"SELECT" => select(args),
        b"CONFIG" => config(args),
        b"HELLO" => Reply::Error("NOPROTO this server speaks RESP2 only".into()),
        b"AUTH" => Reply::err("AUTH <password> called without any password configured"),
        b"INFO" => info(session),
        b"GET" => get(session, args).await,
        b"SET" => set(session, args).await,
        b"DEL" => del(session, args).await,
        b"EXISTS" => exists(session, args).await,
        b"MGET" => mget(session, args).await,
        b"MSET" => mset(session, args).await,
        b"GETCTX" => getctx(session, args).await,
        b"PUTCTX" => putctx(session, args, true).await,
        b"DELCTX" => putctx(session, args, false).await,
        _ => Reply::err(format!("unknown command '{}'", printable(&args[0]))),
    };
    (reply, Flow::Continue)
}

/// `Ok` if `args` (the name included) has `min..=max` elements, else the arity error.
fn arity(args: &[Bytes], min: usize, max: usize) -> Result<(), Reply> {
    if args.len() < min || args.len() > max {
        return Err(arity_error(args));
    }
    Ok(())
}

fn arity_error(args: &[Bytes]) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        printable(&args[0]).to_ascii_lowercase()
    ))
}

/// `bytes` as text fit for an error line, cut to `MAX_ECHOED_NAME_BYTES`.
fn printable(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_ECHOED_NAME_BYTES)];
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn ping(args: &[Bytes]) -> Reply {
    match args.len() {
        1 => Reply::Status(Cow::Borrowed("PONG")),
        2 => Reply::Bulk(args[1].clone()),
        _ => arity_error(args),
    }
}

/// `COMMAND` and its subcommands: ringkv publishes no command table, so clients that ask
/// (redis-cli asks for `COMMAND DOCS` at start) get an empty one.
fn command(args: &[Bytes]) -> Reply {
    match args.get(1).map(|s| s.to_ascii_uppercase()) {
        Some(sub) if sub == b"COUNT" => Reply::Integer(0),
        _ => Reply::Array(Vec::new()),
    }
}

fn client(session: &mut Session, args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|s| s.to_ascii_uppercase()) else {
        return arity_error(args);
    };
    match &sub[..] {
        b"SETNAME" => {
            if let Err(e) = arity(args, 3, 3) {
                return e;
            }
            let name = &args[2];
            if name.len() > MAX_CLIENT_NAME_BYTES
                || name.iter().any(|&b| !(b'!'..=b'~').contains(&b))
            {
                return Reply::err(
                    "Client names cannot contain spaces, newlines or special characters.",
                );
            }
            session.name = (!name.is_empty()).then(|| name.clone());
            Reply::ok()
        }
        b"GETNAME" => session.name.clone().map_or(Reply::Nil, Reply::Bulk),
        b"ID" => Reply::Integer(session.id as i64),
        b"INFO" => Reply::Bulk(Bytes::from(client_line(session))),
        b"LIST" => Reply::Bulk(Bytes::from(client_line(session) + "\n")),
        b"REPLY" => client_reply(session, args),
        // Library handshakes (`CLIENT SETINFO lib-name ...`) and tuning flags: accepted.
        b"SETINFO" | b"NO-EVICT" | b"NO-TOUCH" => Reply::ok(),
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try CLIENT HELP.",
            printable(&args[1])
        )),
    }
}

/// `CLIENT REPLY ON|OFF|SKIP`, as Redis: `OFF` silences every reply until `ON`; `SKIP`
/// silences the next command's reply, and does nothing while replies are off. The `+OK` is
/// sent only for `ON` (`execute` drops it for `OFF` and `SKIP`).
fn client_reply(session: &mut Session, args: &[Bytes]) -> Reply {
    if let Err(e) = arity(args, 3, 3) {
        return e;
    }
    session.replies = match &args[2].to_ascii_uppercase()[..] {
        b"ON" => ReplyMode::On,
        b"OFF" => ReplyMode::Off,
        b"SKIP" if session.replies == ReplyMode::Off => ReplyMode::Off,
        b"SKIP" => ReplyMode::SkipNext,
        _ => return Reply::err("syntax error"),
    };
    Reply::ok()
}

fn client_line(session: &Session) -> String {
    let name = session
        .name
        .as_deref()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    format!("id={} name={name} db=0 resp=2", session.id)
}

fn select(args: &[Bytes]) -> Reply {
    if let Err(e) = arity(args, 2, 2) {
        return e;
    }
    match std::str::from_utf8(&args[1]).ok().map(str::parse::<i64>) {
        Some(Ok(0)) => Reply::ok(),
        Some(Ok(_)) => Reply::err("DB index is out of range"),
        _ => Reply::err("value is not an integer or out of range"),
    }
}

/// The few parameters `CONFIG GET` answers, for tools that read them at start
/// (redis-benchmark reads `save` and `appendonly`). ringkv is configured by its own flags.
const CONFIG_PARAMETERS: &[(&str, &str)] =
    &[("save", ""), ("appendonly", "no"), ("databases", "1")];

/// `CONFIG GET name [name ...]`: the known parameters named exactly (no glob patterns) as a
/// flat name/value array, as Redis 7; `CONFIG SET` and the rest are refused.
fn config(args: &[Bytes]) -> Reply {
    match args.get(1).map(|s| s.to_ascii_uppercase()) {
        Some(sub) if sub == b"GET" => {
            if let Err(e) = arity(args, 3, usize::MAX) {
                return e;
            }
            let mut items = Vec::new();
            for (name, value) in CONFIG_PARAMETERS {
                if args[2..]
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(name.as_bytes()))
                {
                    items.push(Reply::Bulk(Bytes::from_static(name.as_bytes())));
                    items.push(Reply::Bulk(Bytes::from_static(value.as_bytes())));
                }
            }
            Reply::Array(items)
        }
        Some(_) => Reply::err("CONFIG is limited to CONFIG GET on ringkv"),
        None => arity_error(args),
    }
}

fn info(session: &Session) -> Reply {
    let settings = session.node.settings();
    let text = format!(
        "# Server\r\nredis_version:7.0.0\r\nringkv_version:{}\r\nredis_mode:standalone\r\n\
         node_id:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Keyspace\r\n",
        env!("CARGO_PKG_VERSION"),
        settings.node_id,
        session.connections.load(Ordering::Relaxed),
    );
    Reply::Bulk(Bytes::from(text))
}

// ---- data commands ----------------------------------------------------------------------

/// How a node error reads in RESP.
fn node_error(e: ClientError) -> Reply {
    match e {
        ClientError::Unavailable {
            message,
            stored_on: Some(n),
        } => Reply::Error(format!(
            "UNAVAILABLE {message} (the write is stored on {n} replicas: indeterminate, not undone)"
        )),
        ClientError::Unavailable { message, .. } => Reply::Error(format!("UNAVAILABLE {message}")),
        ClientError::BadRequest(m) => Reply::err(m),
        ClientError::Internal(m) => Reply::err(format!("internal: {m}")),
        ClientError::TooLarge(m) => Reply::err(m),
    }
}

fn check_key(key: &[u8]) -> Result<(), Reply> {
    if key.is_empty() {
        return Err(Reply::err("the key must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Reply::err(format!(
            "key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(session: &Session, value: &[u8]) -> Result<(), Reply> {
    let max = session.node.settings().max_value_bytes;
    if value.len() > max {
        return Err(Reply::err(format!(
            "value is {} bytes; the limit is {max}",
            value.len()
        )));
    }
    Ok(())
}

/// Reads `key` with the node's default R.
async fn read(session: &Session, key: Bytes) -> Result<Option<VersionSet>, Reply> {
    let settings = session.node.settings();
    let op = ClientOp::Get {
        key,
        r: session.node.default_r(),
        strict: false,
    };
    match session.node.client_op(op, settings.request_timeout).await {
        Ok(ClientReply::Read(versions)) => Ok(versions),
        Ok(_) => Err(Reply::err("internal: unexpected reply to a read")),
        Err(e) => Err(node_error(e)),
    }
}

/// Writes `value` (`None`: deletes) with the node's default W; answers the new write's dot.
/// `context: None` is a blind overwrite of what the coordinator has seen.
async fn write(
    session: &Session,
    key: Bytes,
    context: Option<ClientContext>,
    value: Option<Bytes>,
) -> Result<Dot, Reply> {
    write_stored(session, key, context, value)
        .await
        .map(|(_, dot)| dot)
}

/// As `write`, and also answers what the coordinator stores after the write.
async fn write_stored(
    session: &Session,
    key: Bytes,
    context: Option<ClientContext>,
    value: Option<Bytes>,
) -> Result<(VersionSet, Dot), Reply> {
    let settings = session.node.settings();
    let op = ClientOp::Put {
        key,
        context,
        value,
        w: session.node.default_w(),
        strict: false,
    };
    match session.node.client_op(op, settings.request_timeout).await {
        Ok(ClientReply::Written { stored, dot }) => Ok((stored, dot)),
        Ok(_) => Err(Reply::err("internal: unexpected reply to a write")),
        Err(e) => Err(node_error(e)),
    }
}

/// `DEL` of one key: a blind delete (superseding what the coordinator has seen). If the read
/// found versions the coordinator had not seen yet (replication still on its way), a second
/// delete with both histories supersedes those too, so that `DEL` never leaves behind a value
/// it just counted. Answers whether the key had a live value.
async fn delete_key(session: &Session, key: Bytes) -> Result<bool, Reply> {
    let found = read(session, key.clone()).await?;
    let existed = !live_values(&found).is_empty();
    let (stored, _) = write_stored(session, key.clone(), None, None).await?;
    if let Some(found) = found
        && found.siblings().iter().any(|s| !stored.covers(&s.dot))
    {
        let context = ClientContext::from(&Context::of(&stored.sync(&found)));
        write(session, key, Some(context), None).await?;
    }
    Ok(existed)
}

fn live_values(versions: &Option<VersionSet>) -> Vec<Bytes> {
    versions
        .as_ref()
        .map(|v| v.values().cloned().collect())
        .unwrap_or_default()
}

/// `GET`'s answer for what a read found: nil, the value, or the conflict error.
fn value_reply(versions: &Option<VersionSet>) -> Reply {
    let mut values = live_values(versions);
    match values.len() {
        0 => Reply::Nil,
        1 => Reply::Bulk(values.pop().expect("one value")),
        n => Reply::Error(format!("CONFLICT {n} siblings, use GETCTX")),
    }
}

/// Runs `op` on every item with at most `MULTI_KEY_CONCURRENCY` in flight; answers the
/// results in order, or the first error.
async fn for_each<T, R, F, Fut>(items: Vec<T>, op: F) -> Result<Vec<R>, Reply>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R, Reply>>,
{
    futures::stream::iter(items)
        .map(op)
        .buffered(MULTI_KEY_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

async fn get(session: &Session, args: &[Bytes]) -> Reply {
    if let Err(e) = arity(args, 2, 2).and_then(|_| check_key(&args[1])) {
        return e;
    }
    match read(session, args[1].clone()).await {
        Ok(versions) => value_reply(&versions),
        Err(e) => e,
    }
}

async fn set(session: &Session, args: &[Bytes]) -> Reply {
    if let Err(e) = arity(args, 3, usize::MAX) {
        return e;
    }
    // EX, PX, NX, XX, KEEPTTL, GET: ringkv has no expiry and no conditional write.
    if args.len() > 3 {
        return Reply::err("syntax error");
    }
    if let Err(e) = check_key(&args[1]).and_then(|_| check_value(session, &args[2])) {
        return e;
    }
    match write(session, args[1].clone(), None, Some(args[2].clone())).await {
        Ok(_) => Reply::ok(),
        Err(e) => e,
    }
}

async fn del(session: &Session, args: &[Bytes]) -> Reply {
    if let Err(e) = arity(args, 2, usize::MAX) {
        return e;
    }
    let keys = &args[1..];
    if let Some(e) = keys.iter().find_map(|k| check_key(k).err()) {
        return e;
    }
    let existed = for_each(keys.to_vec(), |key| delete_key(session, key)).await;
    match existed {
        Ok(existed) => Reply::Integer(existed.iter().filter(|e| **e).count() as i64),
        Err(e) => e,
    }
}

async fn exists(session: &Session, args: &[Bytes]) -> Reply {
    if let Err(e) = arity(args, 2, usize::MAX) {
        return e;
    }
    let keys = &args[1..];
    if let Some(e) = keys.iter().find_map(|k| check_key(k).err()) {
        return e;
    }
    let found = for_each(keys.to_vec(), |key| async move {
        Ok(!live_values(&read(session, key).await?).is_empty())
    })
    .await;
    match found {
        Ok(found) => Reply::Integer(found.iter().filter(|f| **f).count() as i64),
        Err(e) => e,
    }
}

async fn mget(session: &Session, args: &[Bytes]) -> Reply {
    if let Err(e) = arity(args, 2, usize::MAX) {
        return e;
    }
    let keys = &args[1..];
    if let Some(e) = keys.iter().find_map(|k| check_key(k).err()) {
        return e;
    }
    let answered = AtomicUsize::new(0);
    let answered = &answered;
    let too_large = || {
        Reply::err(format!(
            "the values would pass {MAX_MGET_REPLY_BYTES} bytes; ask for fewer keys"
        ))
    };
    // Past the budget the keys left are not read; what was read is dropped with the error.
    // A key starts only after every key before it did, so a key that finds the budget
    // spent comes after the one that spent it, whose error is the one answered: the skipped
    // keys' placeholder (no allocation per key) is never seen.
    let values = for_each(keys.to_vec(), |key| async move {
        if answered.load(Ordering::Relaxed) > MAX_MGET_REPLY_BYTES {
            return Err(Reply::Nil);
        }
        let reply = value_reply(&read(session, key).await?);
        let size = match &reply {
            Reply::Bulk(value) => value.len(),
            _ => 0,
        };
        if answered.fetch_add(size, Ordering::Relaxed) + size > MAX_MGET_REPLY_BYTES {
            return Err(too_large());
        }
        Ok(reply)
    })
    .await;
    values.map_or_else(|e| e, Reply::Array)
}

async fn mset(session: &Session, args: &[Bytes]) -> Reply {
    if args.len() < 3 || args.len().is_multiple_of(2) {
        return arity_error(args);
    }
    let pairs: Vec<(Bytes, Bytes)> = args[1..]
        .chunks_exact(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    if let Some(e) = pairs
        .iter()
        .find_map(|(k, v)| check_key(k).and_then(|_| check_value(session, v)).err())
    {
        return e;
    }
    let written = for_each(pairs, |(key, value)| async move {
        write(session, key, None, Some(value)).await
    })
    .await;
    written.map_or_else(|e| e, |_| Reply::ok())
}

async fn getctx(session: &Session, args: &[Bytes]) -> Reply {
    if let Err(e) = arity(args, 2, 2).and_then(|_| check_key(&args[1])) {
        return e;
    }
    let versions = match read(session, args[1].clone()).await {
        Ok(v) => v,
        Err(e) => return e,
    };
    let context = versions
        .as_ref()
        .map(Context::of)
        .filter(|c| !c.is_empty())
        .map(|c| c.encode());
    let mut items = vec![context.map_or(Reply::Nil, |c| Reply::Bulk(Bytes::from(c)))];
    items.extend(live_values(&versions).into_iter().map(Reply::Bulk));
    Reply::Array(items)
}

/// `PUTCTX key context value` (`put`) and `DELCTX key context` (`!put`): a write with the
/// client's context; answers the context that covers it. An empty context is a write
/// concurrent with everything stored, as an HTTP PUT without `X-Context`.
async fn putctx(session: &Session, args: &[Bytes], put: bool) -> Reply {
    let expected = if put { 4 } else { 3 };
    if let Err(e) = arity(args, expected, expected).and_then(|_| check_key(&args[1])) {
        return e;
    }
    let value = put.then(|| args[3].clone());
    if let Some(e) = value.as_ref().and_then(|v| check_value(session, v).err()) {
        return e;
    }
    let context = match parse_context(&args[2]) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let client_context = Some(ClientContext::from(&context));
    match write(session, args[1].clone(), client_context, value).await {
        // What this client has now seen: what it read, plus its own write (and nothing else).
        Ok(dot) => Reply::Bulk(Bytes::from(context.with_dot(dot).encode())),
        Err(e) => e,
    }
}

fn parse_context(token: &[u8]) -> Result<Context, Reply> {
    if token.is_empty() {
        return Ok(Context::default());
    }
    let text = std::str::from_utf8(token)
        .map_err(|_| Reply::err("bad context: the token is not printable ASCII"))?;
    Context::decode(text).map_err(|e| Reply::err(format!("bad context: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_commands_map_to_the_http_operations() {
        for (name, op) in [
            ("GET", Some(Op::Get)),
            ("GETCTX", Some(Op::Get)),
            ("MGET", Some(Op::Get)),
            ("EXISTS", Some(Op::Get)),
            ("SET", Some(Op::Put)),
            ("PUTCTX", Some(Op::Put)),
            ("MSET", Some(Op::Put)),
            ("DEL", Some(Op::Delete)),
            ("DELCTX", Some(Op::Delete)),
            ("PING", None),
            ("CLIENT", None),
            ("INFO", None),
            ("NOSUCH", None),
        ] {
            assert_eq!(data_op(name.as_bytes()), op, "{name}");
        }
    }

    #[test]
    fn replies_map_to_the_http_outcomes() {
        for (reply, outcome) in [
            (Reply::ok(), Outcome::Ok),
            (Reply::Nil, Outcome::Ok),
            (Reply::Integer(2), Outcome::Ok),
            (
                Reply::Error("CONFLICT 2 siblings, use GETCTX".into()),
                Outcome::Ok,
            ),
            (
                Reply::Error("UNAVAILABLE 1 of 2".into()),
                Outcome::Unavailable,
            ),
            (Reply::err("internal: the disk is gone"), Outcome::Error),
            (Reply::err("syntax error"), Outcome::BadRequest),
            (Reply::err("bad context: short"), Outcome::BadRequest),
        ] {
            assert_eq!(request_outcome(&reply), outcome, "{reply:?}");
        }
    }
}
