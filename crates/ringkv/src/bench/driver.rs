//! The ways the benchmark talks to the cluster: HTTP straight to the nodes named, RESP, and
//! the Rust client (zero-hop, or everything through one node).
//!
//! Every driver offers the same four YCSB operations. Causality is kept the way a real
//! application would keep it: HTTP and client updates write back the latest context this
//! benchmark saw for the key (`ContextCache`), so that updates supersede instead of piling
//! up siblings; RESP updates are `SET`, which the node turns into a write superseding what
//! it has seen. A read-modify-write reads the key's context and writes back with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ringkv_client::{Bytes, Client, ReadOptions, WriteOptions};

use super::resp::{Reply, RespConnection};
use crate::cli::encode_key;

/// Client-side deadline of one operation, above the nodes' default 2 s request deadline.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Shards of the context cache, so that workers rarely contend for a lock.
const CONTEXT_CACHE_SHARDS: usize = 64;

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Value,
    Siblings,
    Missing,
}

/// A failed operation, by kind (the kinds are the rows of the error report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub kind: &'static str,
    pub message: String,
}

impl OpError {
    fn new(kind: &'static str, message: impl ToString) -> OpError {
        OpError {
            kind,
            message: message.to_string(),
        }
    }
}

type OpResult<T> = Result<T, OpError>;

/// The latest context seen for each record. Bounded by the records that exist.
#[derive(Default)]
pub struct ContextCache {
    shards: Vec<Mutex<HashMap<u64, String>>>,
}

impl ContextCache {
    pub fn new() -> ContextCache {
        ContextCache {
            shards: (0..CONTEXT_CACHE_SHARDS)
                .map(|_| Mutex::default())
                .collect(),
        }
    }

    fn shard(&self, record: u64) -> &Mutex<HashMap<u64, String>> {
        &self.shards[(record % CONTEXT_CACHE_SHARDS as u64) as usize]
    }

    fn get(&self, record: u64) -> Option<String> {
        self.shard(record)
            .lock()
            .expect("poisoned")
            .get(&record)
            .cloned()
    }

    fn set(&self, record: u64, context: Option<String>) {
        if let Some(context) = context {
            self.shard(record)
                .lock()
                .expect("poisoned")
                .insert(record, context);
        }
    }
}

/// Quorums named on the command line (`None`: the node's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quorums {
    pub r: Option<u8>,
    pub w: Option<u8>,
}

/// One worker's connection to the cluster.
pub enum Driver {
    Http(HttpDriver),
    Resp(RespDriver),
    Client(ClientDriver),
}

impl Driver {
    /// Forgets connection state after an operation was abandoned midway (a timeout), so
    /// that the next reply read is the next command's.
    pub fn reset(&mut self) {
        if let Driver::Resp(d) = self {
            d.connection = None;
        }
    }

    pub async fn read(&mut self, record: u64, contexts: &ContextCache) -> OpResult<Found> {
        let key = super::workload::record_key(record);
        let (found, context) = match self {
            Driver::Http(d) => d.read(&key).await?,
            Driver::Resp(d) => return d.read(&key).await,
            Driver::Client(d) => d.read(&key).await?,
        };
        contexts.set(record, context);
        Ok(found)
    }

    /// Writes `value`, superseding the latest version this benchmark saw (insert: none).
    pub async fn write(
        &mut self,
        record: u64,
        value: Bytes,
        contexts: &ContextCache,
        supersede: bool,
    ) -> OpResult<()> {
        let key = super::workload::record_key(record);
        let context = if supersede {
            contexts.get(record)
        } else {
            None
        };
        let new_context = match self {
            Driver::Http(d) => d.write(&key, value, context.as_deref()).await?,
            Driver::Resp(d) => return d.set(&key, value).await,
            Driver::Client(d) => d.write(&key, value, context.as_deref()).await?,
        };
        contexts.set(record, new_context);
        Ok(())
    }

    /// Reads the key's context, then writes `value` back with it.
    pub async fn read_modify_write(
        &mut self,
        record: u64,
        value: Bytes,
        contexts: &ContextCache,
    ) -> OpResult<()> {
        let key = super::workload::record_key(record);
        let new_context = match self {
            Driver::Http(d) => {
                let (_, context) = d.read(&key).await?;
                d.write(&key, value, context.as_deref()).await?
            }
            Driver::Resp(d) => return d.read_modify_write(&key, value).await,
            Driver::Client(d) => {
                let (_, context) = d.read(&key).await?;
                d.write(&key, value, context.as_deref()).await?
            }
        };
        contexts.set(record, new_context);
        Ok(())
    }
}

/// HTTP requests straight to one node, which coordinates or forwards them.
pub struct HttpDriver {
    http: reqwest::Client,
    node: String,
    quorums: Quorums,
}

impl HttpDriver {
    pub fn new(http: reqwest::Client, node: &str, quorums: Quorums) -> HttpDriver {
        HttpDriver {
            http,
            node: node.trim_end_matches('/').to_string(),
            quorums,
        }
    }

    fn url(&self, key: &str, param: &str, quorum: Option<u8>) -> String {
        let mut url = format!("{}/kv/{}", self.node, encode_key(key.as_bytes()));
        if let Some(q) = quorum {
            url.push_str(&format!("?{param}={q}"));
        }
        url
    }

    async fn read(&self, key: &str) -> OpResult<(Found, Option<String>)> {
        let request = self.http.get(self.url(key, "r", self.quorums.r));
        let (status, context) = send(request).await?;
        let found = match status {
            200 => Found::Value,
            300 => Found::Siblings,
            404 => Found::Missing,
            _ => return Err(status_error(status)),
        };
        Ok((found, context))
    }

    async fn write(
        &self,
        key: &str,
        value: Bytes,
        context: Option<&str>,
    ) -> OpResult<Option<String>> {
        let mut request = self
            .http
            .put(self.url(key, "w", self.quorums.w))
            .body(value);
        if let Some(context) = context {
            request = request.header("x-context", context);
        }
        match send(request).await? {
            (204, context) => Ok(context),
            (status, _) => Err(status_error(status)),
        }
    }
}

/// Sends a request and drains the body (so the connection is reused); the status and the
/// context header.
async fn send(request: reqwest::RequestBuilder) -> OpResult<(u16, Option<String>)> {
    let response = request.send().await.map_err(|e| {
        let kind = if e.is_timeout() {
            "timeout"
        } else {
            "transport"
        };
        OpError::new(kind, e)
    })?;
    let status = response.status().as_u16();
    let context = response
        .headers()
        .get("x-context")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    response
        .bytes()
        .await
        .map_err(|e| OpError::new("transport", e))?;
    Ok((status, context))
}

fn status_error(status: u16) -> OpError {
    let kind = match status {
        503 => "unavailable",
        400 => "bad_request",
        413 => "too_large",
        500..=599 => "http_5xx",
        _ => "http_other",
    };
    OpError::new(kind, format!("HTTP {status}"))
}

/// The Redis protocol on one connection, reopened after any failure.
pub struct RespDriver {
    addr: String,
    connection: Option<RespConnection>,
}

impl RespDriver {
    pub fn new(addr: &str) -> RespDriver {
        RespDriver {
            addr: addr.to_string(),
            connection: None,
        }
    }

    async fn command(&mut self, args: &[&[u8]]) -> OpResult<Reply> {
        if self.connection.is_none() {
            let conn = RespConnection::connect(&self.addr)
                .await
                .map_err(|e| OpError::new("transport", format!("{e:#}")))?;
            self.connection = Some(conn);
        }
        let conn = self.connection.as_mut().expect("connected above");
        match conn.command(args).await {
            Ok(Reply::Error(e)) if e.starts_with("CONFLICT") => Ok(Reply::Error(e)),
            Ok(Reply::Error(e)) => Err(OpError::new(resp_error_kind(&e), e)),
            Ok(reply) => Ok(reply),
            Err(e) => {
                // The connection may be out of step with its replies: start afresh.
                self.connection = None;
                Err(OpError::new("transport", format!("{e:#}")))
            }
        }
    }

    async fn read(&mut self, key: &str) -> OpResult<Found> {
        match self.command(&[b"GET", key.as_bytes()]).await? {
            Reply::Bulk(Some(_)) => Ok(Found::Value),
            Reply::Bulk(None) => Ok(Found::Missing),
            Reply::Error(_) => Ok(Found::Siblings),
            other => Err(OpError::new("protocol", format!("GET answered {other:?}"))),
        }
    }

    async fn set(&mut self, key: &str, value: Bytes) -> OpResult<()> {
        match self.command(&[b"SET", key.as_bytes(), &value]).await? {
            Reply::Simple(_) => Ok(()),
            other => Err(OpError::new("protocol", format!("SET answered {other:?}"))),
        }
    }

    async fn read_modify_write(&mut self, key: &str, value: Bytes) -> OpResult<()> {
        let context = match self.command(&[b"GETCTX", key.as_bytes()]).await? {
            Reply::Array(Some(items)) => match items.into_iter().next() {
                Some(Reply::Bulk(context)) => context,
                other => {
                    return Err(OpError::new(
                        "protocol",
                        format!("GETCTX answered {other:?}"),
                    ));
                }
            },
            other => {
                return Err(OpError::new(
                    "protocol",
                    format!("GETCTX answered {other:?}"),
                ));
            }
        };
        let Some(context) = context else {
            return self.set(key, value).await;
        };
        match self
            .command(&[b"PUTCTX", key.as_bytes(), &context, &value])
            .await?
        {
            Reply::Bulk(Some(_)) | Reply::Simple(_) => Ok(()),
            other => Err(OpError::new(
                "protocol",
                format!("PUTCTX answered {other:?}"),
            )),
        }
    }
}

fn resp_error_kind(message: &str) -> &'static str {
    if message.starts_with("UNAVAILABLE") || message.contains("unavailable") {
        "unavailable"
    } else {
        "resp_error"
    }
}

/// The Rust client, shared by all workers (it pools connections itself).
pub struct ClientDriver {
    client: Client,
    quorums: Quorums,
}

impl ClientDriver {
    pub fn new(client: Client, quorums: Quorums) -> ClientDriver {
        ClientDriver { client, quorums }
    }

    async fn read(&self, key: &str) -> OpResult<(Found, Option<String>)> {
        let opts = ReadOptions {
            r: self.quorums.r,
            timeout: None,
        };
        match self.client.get(key.as_bytes(), opts).await {
            Ok(v) if v.values.len() > 1 => Ok((Found::Siblings, v.context)),
            Ok(v) => Ok((Found::Value, v.context)),
            Err(ringkv_client::Error::NotFound { context }) => Ok((Found::Missing, context)),
            Err(e) => Err(client_error(e)),
        }
    }

    async fn write(
        &self,
        key: &str,
        value: Bytes,
        context: Option<&str>,
    ) -> OpResult<Option<String>> {
        let opts = WriteOptions {
            w: self.quorums.w,
            timeout: None,
        };
        self.client
            .put(key.as_bytes(), value, context, opts)
            .await
            .map(Some)
            .map_err(client_error)
    }
}

fn client_error(e: ringkv_client::Error) -> OpError {
    use ringkv_client::Error as E;
    let kind = match &e {
        E::NotFound { .. } => "not_found",
        E::Unavailable { .. } => "unavailable",
        E::BadRequest { .. } => "bad_request",
        E::TooLarge { .. } => "too_large",
        E::Transport(_) => "transport",
        E::Protocol(_) => "protocol",
    };
    OpError::new(kind, e)
}
