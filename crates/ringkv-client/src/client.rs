//! `Client`: one handle on a ringkv cluster, cheap to clone, safe to share between tasks.
//!
//! Routing (Dynamo §6.4, client-driven coordination): the client keeps the partition table
//! from `GET /ring` and sends each request straight to the first home replica of the key
//! that it believes reachable, so that node coordinates the request itself and no forwarding
//! hop is spent. Laws it keeps:
//! - A request is only ever sent to another node after the previous one provably did not
//!   get it (connection refused, no route) or, for reads only, after the answer was lost.
//!   A write whose answer is lost is never resent: it is reported as indeterminate
//!   (`Error::Unavailable { stored_on: None }`), because resending it would store a second,
//!   concurrent copy.
//! - At most one ring refresh runs at a time; every queue and retry has a named bound.
//! - The ring only moves forward: a `/ring` answer older than the one held is ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::Error;
use crate::ring::RingView;

/// Header carrying the causal context (API.md §2).
const CONTEXT_HEADER: &str = "x-context";
/// Most nodes one request is tried on before giving up.
const MAX_ATTEMPTS_PER_REQUEST: usize = 6;
/// Deadline for opening a TCP connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an idle pooled connection is kept: below the node's 30 s keep-alive bound
/// (`http_header_read_timeout`).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Time the client allows beyond the node's own deadline before calling an answer lost.
const HTTP_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);
/// First and largest pause before a node that failed is preferred again.
const NODE_BACKOFF_MIN: Duration = Duration::from_millis(500);
const NODE_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Deadline for one `/ring` or `/status` fetch.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How the client picks the node that receives a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Straight to the key's first reachable home replica (no forwarding hop).
    ZeroHop,
    /// Always to the first reachable seed, which forwards to a home replica when it is not
    /// one itself (the classic load-balancer setup; what the zero-hop mode is compared to).
    AnyNode,
}

/// Per-read settings; `Default` uses the node's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Read quorum R, `1..=N`.
    pub r: Option<u8>,
    /// Coordinator deadline (`timeout_ms`).
    pub timeout: Option<Duration>,
}

/// Per-write settings (puts and deletes); `Default` uses the node's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Write quorum W, `1..=N`.
    pub w: Option<u8>,
    /// Coordinator deadline (`timeout_ms`).
    pub timeout: Option<Duration>,
}

/// What a read found: one value, or several concurrent siblings, and the context covering
/// all of them. Writing back with `context` supersedes every one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    pub context: Option<String>,
    /// Never empty: an absent key is `Error::NotFound`.
    pub values: Vec<Bytes>,
}

/// Settings of a [`Client`]; start with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    seeds: Vec<String>,
    routing: Routing,
    request_timeout: Duration,
    refresh_interval: Duration,
    pool_max_idle_per_host: usize,
    max_in_flight: usize,
}

impl ClientBuilder {
    /// How requests are routed; `Routing::ZeroHop` by default.
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// Client-side deadline of one HTTP exchange when the call names no timeout (5 s by
    /// default). Keep it above the nodes' `--request-timeout-ms`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Period of the background check for a newer ring (10 s by default).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Idle connections kept per node (32 by default).
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// Most requests in flight at once through this client and its clones (256 by default);
    /// further calls wait for a slot.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Fetches the ring from the first seed that answers and starts the background refresh.
    pub async fn connect(self) -> Result<Client, Error> {
        if self.seeds.is_empty() {
            return Err(Error::BadRequest {
                message: "at least one seed URL is needed".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            // Below the node's 30 s keep-alive bound: a connection the node is closing is
            // never picked for a request (a write sent on it would be indeterminate).
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| Error::Transport(format!("building the HTTP client: {e}")))?;
        let inner = Arc::new(Inner {
            http,
            seeds: self.seeds,
            routing: self.routing,
            request_timeout: self.request_timeout,
            ring: RwLock::new(None),
            health: Mutex::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
            in_flight: Semaphore::new(self.max_in_flight),
        });
        inner.refresh_ring().await?;
        tokio::spawn(refresh_loop(Arc::downgrade(&inner), self.refresh_interval));
        Ok(Client { inner })
    }
}

/// A handle on a ringkv cluster. Clones share the ring, the connection pool and the
/// background refresh, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.inner.seeds)
            .field("routing", &self.inner.routing)
            .field("ring_version", &self.ring_version())
            .finish()
    }
}

struct Inner {
    http: reqwest::Client,
    seeds: Vec<String>,
    routing: Routing,
    request_timeout: Duration,
    ring: RwLock<Option<Arc<RingView>>>,
    /// Nodes (by base URL) that recently failed, and until when they are tried last.
    health: Mutex<HashMap<String, Health>>,
    /// Set while a ring refresh runs, so that at most one runs at a time.
    refreshing: AtomicBool,
    in_flight: Semaphore,
}

#[derive(Debug, Clone, Copy)]
struct Health {
    failures: u32,
    avoid_until: Instant,
}

/// An HTTP answer from the node that took the request.
struct Answer {
    status: StatusCode,
    context: Option<String>,
    body: Bytes,
}

impl Client {
    /// A builder for a client of the cluster reachable through `seeds` (HTTP base URLs such
    /// as `http://127.0.0.1:8101`; a missing scheme means `http://`).
    pub fn builder(seeds: &[&str]) -> ClientBuilder {
        ClientBuilder {
            seeds: seeds.iter().map(|s| normalize_url(s)).collect(),
            routing: Routing::ZeroHop,
            request_timeout: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(10),
            pool_max_idle_per_host: 32,
            max_in_flight: 256,
        }
    }

    /// A zero-hop client with default settings.
    pub async fn connect(seeds: &[&str]) -> Result<Client, Error> {
        Client::builder(seeds).connect().await
    }

    /// Reads `key`. An absent or deleted key is `Err(Error::NotFound { context })`.
    pub async fn get(&self, key: &[u8], opts: ReadOptions) -> Result<Versions, Error> {
        let query = query_string("r", opts.r, opts.timeout);
        let answer = self
            .inner
            .execute(key, Method::GET, &query, None, None, opts.timeout)
            .await?;
        read_result(answer)
    }

    /// Writes `value` under `key`, superseding what `context` covers (nothing when `None`:
    /// the value is then concurrent with whatever is stored). Returns the new context.
    pub async fn put(
        &self,
        key: &[u8],
        value: impl Into<Bytes>,
        context: Option<&str>,
        opts: WriteOptions,
    ) -> Result<String, Error> {
        let query = query_string("w", opts.w, opts.timeout);
        let answer = self
            .inner
            .execute(
                key,
                Method::PUT,
                &query,
                context,
                Some(value.into()),
                opts.timeout,
            )
            .await?;
        write_result(answer)
    }

    /// Deletes `key` (a causal tombstone superseding what `context` covers). Returns the
    /// tombstone's context.
    pub async fn delete(
        &self,
        key: &[u8],
        context: Option<&str>,
        opts: WriteOptions,
    ) -> Result<String, Error> {
        let query = query_string("w", opts.w, opts.timeout);
        let answer = self
            .inner
            .execute(key, Method::DELETE, &query, context, None, opts.timeout)
            .await?;
        write_result(answer)
    }

    /// The version of the ring the client routes with.
    pub fn ring_version(&self) -> u64 {
        self.inner.ring().version()
    }

    /// The home replicas (node ids) of `key` in the client's ring, preferred first.
    pub fn home_replicas(&self, key: &[u8]) -> Vec<String> {
        self.inner.ring().home_replicas(key).to_vec()
    }

    /// Every member's HTTP base URL known from the ring, by node id.
    pub fn member_urls(&self) -> Vec<(String, String)> {
        self.inner
            .ring()
            .member_urls()
            .map(|(id, url)| (id.to_string(), url.to_string()))
            .collect()
    }

    /// Fetches the ring now (waiting for a refresh already running to finish first is not
    /// needed: two refreshes only race to install the newer ring). Returns the version held.
    pub async fn refresh_ring(&self) -> Result<u64, Error> {
        self.inner.refresh_ring().await
    }
}

impl Inner {
    fn ring(&self) -> Arc<RingView> {
        self.ring
            .read()
            .expect("ring lock poisoned")
            .clone()
            .expect("connect installs a ring before the client exists")
    }

    /// Sends one data request, trying the candidates in order until one answers.
    async fn execute(
        self: &Arc<Self>,
        key: &[u8],
        method: Method,
        query: &str,
        context: Option<&str>,
        body: Option<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Answer, Error> {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let http_timeout = timeout.unwrap_or(self.request_timeout) + HTTP_TIMEOUT_MARGIN;
        let is_read = method == Method::GET;
        let path = format!("/kv/{}{query}", encode_key(key));
        let mut failures = Vec::new();
        for base in self.candidates(key) {
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .timeout(http_timeout);
            if is_read {
                req = req.header(reqwest::header::ACCEPT, "application/json");
            }
            if let Some(ctx) = context {
                req = req.header(CONTEXT_HEADER, ctx);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    self.mark_up(&base);
                    return read_answer(resp, is_read).await;
                }
                Err(e) => {
                    self.mark_down(&base);
                    self.request_refresh();
                    if !e.is_connect() && !is_read {
                        return Err(Error::Unavailable {
                            message: format!(
                                "the answer from {base} was lost ({e}); the write may or may not have been stored"
                            ),
                            stored_on: None,
                        });
                    }
                    failures.push(format!("{base}: {e}"));
                }
            }
        }
        Err(Error::Transport(format!(
            "no node could be reached: {}",
            failures.join("; ")
        )))
    }

    /// The nodes to try for `key`, best first: by routing, then the healthy before those that
    /// recently failed. At most `MAX_ATTEMPTS_PER_REQUEST`.
    fn candidates(&self, key: &[u8]) -> Vec<String> {
        let ring = self.ring();
        let mut order: Vec<String> = Vec::new();
        let mut push = |url: &str| {
            if !order.iter().any(|u| u == url) {
                order.push(url.to_string());
            }
        };
        match self.routing {
            Routing::ZeroHop => {
                for id in ring.home_replicas(key) {
                    if let Some(url) = ring.url_of(id) {
                        push(url);
                    }
                }
                ring.member_urls().for_each(|(_, url)| push(url));
                self.seeds.iter().for_each(|url| push(url));
            }
            Routing::AnyNode => {
                self.seeds.iter().for_each(|url| push(url));
                ring.member_urls().for_each(|(_, url)| push(url));
            }
        }
        let now = Instant::now();
        let health = self.health.lock().expect("health lock poisoned");
        // A stable sort: the routing order is kept within the healthy and the suspect.
        order.sort_by_key(|url| health.get(url).is_some_and(|h| h.avoid_until > now));
        order.truncate(MAX_ATTEMPTS_PER_REQUEST);
        order
    }

    fn mark_up(&self, url: &str) {
        let mut health = self.health.lock().expect("health lock poisoned");
        health.remove(url);
    }

    /// Records a failure of `url`: it is tried last for a backoff that doubles with each
    /// consecutive failure, from `NODE_BACKOFF_MIN` up to `NODE_BACKOFF_MAX`.
    fn mark_down(&self, url: &str) {
        let mut health = self.health.lock().expect("health lock poisoned");
        let entry = health.entry(url.to_string()).or_insert(Health {
            failures: 0,
            avoid_until: Instant::now(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let backoff = NODE_BACKOFF_MIN
            .saturating_mul(1 << entry.failures.min(16).saturating_sub(1))
            .min(NODE_BACKOFF_MAX);
        entry.avoid_until = Instant::now() + backoff;
    }

    /// Marks `url` as down until `until` (a member `/status` reports down), unless it is
    /// already avoided for longer.
    fn avoid_until(&self, url: &str, until: Instant) {
        let mut health = self.health.lock().expect("health lock poisoned");
        let entry = health.entry(url.to_string()).or_insert(Health {
            failures: 0,
            avoid_until: until,
        });
        entry.avoid_until = entry.avoid_until.max(until);
    }

    /// Starts a ring refresh in the background unless one is running.
    fn request_refresh(self: &Arc<Self>) {
        if self
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = inner.refresh_ring().await {
                tracing::debug!("ring refresh failed: {e}");
            }
            inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// The nodes to ask about the cluster: known members (healthy first), then the seeds.
    fn admin_candidates(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        if let Some(ring) = self.ring.read().expect("ring lock poisoned").as_ref() {
            urls.extend(ring.member_urls().map(|(_, u)| u.to_string()));
        }
        for s in &self.seeds {
            if !urls.contains(s) {
                urls.push(s.clone());
            }
        }
        let now = Instant::now();
        let health = self.health.lock().expect("health lock poisoned");
        urls.sort_by_key(|url| health.get(url).is_some_and(|h| h.avoid_until > now));
        urls
    }

    /// Fetches `/ring` from the first node that answers and installs it if it is not older
    /// than the ring held. Returns the version held afterwards.
    async fn refresh_ring(&self) -> Result<u64, Error> {
        let mut failures = Vec::new();
        for base in self.admin_candidates() {
            match self.fetch_ring(&base).await {
                Ok(ring) => return Ok(self.install(ring)),
                Err(e) => failures.push(format!("{base}: {e}")),
            }
        }
        Err(Error::Transport(format!(
            "no node answered /ring: {}",
            failures.join("; ")
        )))
    }

    async fn fetch_ring(&self, base: &str) -> Result<RingView, Error> {
        let json = self.fetch_json(base, "/ring").await?;
        let host = reqwest::Url::parse(base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string));
        RingView::parse(&json, host.as_deref())
    }

    async fn fetch_json(&self, base: &str, path: &str) -> Result<Value, Error> {
        let resp = self
            .http
            .get(format!("{base}{path}"))
            .timeout(ADMIN_TIMEOUT)
            .send()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        if status != StatusCode::OK {
            return Err(error_from(status, &body, false));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("{path} is not JSON: {e}")))
    }

    fn install(&self, ring: RingView) -> u64 {
        let mut held = self.ring.write().expect("ring lock poisoned");
        match held.as_ref() {
            Some(current) if current.version() > ring.version() => current.version(),
            _ => {
                let version = ring.version();
                *held = Some(Arc::new(ring));
                version
            }
        }
    }

    /// One round of the periodic check: asks a node's `/status` for the ring version and the
    /// members it sees down; fetches `/ring` only when the version moved.
    async fn check_status(self: &Arc<Self>, interval: Duration) {
        for base in self.admin_candidates() {
            let Ok(status) = self.fetch_json(&base, "/status").await else {
                self.mark_down(&base);
                continue;
            };
            let cluster = &status["cluster"];
            let ring = self.ring();
            for m in cluster["members"].as_array().into_iter().flatten() {
                let down = m["status"] == "down";
                if let (true, Some(url)) =
                    (down, m["node_id"].as_str().and_then(|id| ring.url_of(id)))
                {
                    self.avoid_until(url, Instant::now() + interval);
                }
            }
            if cluster["ring_version"].as_u64().unwrap_or(0) > ring.version() {
                self.request_refresh();
            }
            return;
        }
        // Nobody answered: the ring may have moved to other addresses.
        self.request_refresh();
    }
}

/// The periodic refresh; ends when the last `Client` clone is dropped.
async fn refresh_loop(inner: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.check_status(interval).await;
    }
}

/// Reads the whole answer. For a read whose body is lost the error is a transport error;
/// for a write the status line alone decides (a lost body of a 204 loses nothing).
async fn read_answer(resp: reqwest::Response, is_read: bool) -> Result<Answer, Error> {
    let status = resp.status();
    let context = resp
        .headers()
        .get(CONTEXT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(_) if status == StatusCode::NO_CONTENT => Bytes::new(),
        Err(e) if is_read => return Err(Error::Transport(format!("reading the answer: {e}"))),
        Err(e) => {
            return Err(Error::Unavailable {
                message: format!("the answer ({status}) was lost: {e}"),
                stored_on: None,
            });
        }
    };
    Ok(Answer {
        status,
        context,
        body,
    })
}

fn read_result(answer: Answer) -> Result<Versions, Error> {
    if answer.status != StatusCode::OK && answer.status != StatusCode::NOT_FOUND {
        return Err(error_from(answer.status, &answer.body, false));
    }
    let json: Value = serde_json::from_slice(&answer.body).map_err(|e| {
        Error::Protocol(format!("a {} read answer is not JSON: {e}", answer.status))
    })?;
    let context = json["context"]
        .as_str()
        .map(str::to_string)
        .or(answer.context);
    let values = json["values"]
        .as_array()
        .ok_or_else(|| Error::Protocol(format!("no values in the read answer {json:.200}")))?
        .iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| BASE64.decode(s).ok())
                .map(Bytes::from)
                .ok_or_else(|| Error::Protocol(format!("a value is not base64: {v:.100}")))
        })
        .collect::<Result<Vec<Bytes>, Error>>()?;
    if values.is_empty() {
        return Err(Error::NotFound { context });
    }
    Ok(Versions { context, values })
}

fn write_result(answer: Answer) -> Result<String, Error> {
    if answer.status != StatusCode::NO_CONTENT {
        return Err(error_from(answer.status, &answer.body, true));
    }
    answer
        .context
        .ok_or_else(|| Error::Protocol("a 204 write answer without X-Context".into()))
}

/// The typed error of an error answer `{"error": {"code", "message", "stored_on"?}}`.
fn error_from(status: StatusCode, body: &[u8], is_write: bool) -> Error {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &json["error"];
    let message = error["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    match status {
        StatusCode::BAD_REQUEST => Error::BadRequest { message },
        StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge { message },
        StatusCode::SERVICE_UNAVAILABLE => Error::Unavailable {
            message,
            stored_on: if is_write {
                error["stored_on"]
                    .as_u64()
                    .or(json["stored_on"].as_u64())
                    .map(|n| n as u32)
            } else {
                None
            },
        },
        other => Error::Protocol(format!("unexpected answer {other}: {message}")),
    }
}

fn query_string(quorum_name: &str, quorum: Option<u8>, timeout: Option<Duration>) -> String {
    let mut params = Vec::new();
    if let Some(q) = quorum {
        params.push(format!("{quorum_name}={q}"));
    }
    if let Some(t) = timeout {
        params.push(format!("timeout_ms={}", t.as_millis().max(1)));
    }
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

/// Percent-encodes `key` as one path segment (everything but unreserved characters).
fn encode_key(key: &[u8]) -> String {
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

fn normalize_url(seed: &str) -> String {
    let trimmed = seed.trim().trim_end_matches('/');
    if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_percent_encoded_segment() {
        assert_eq!(encode_key(b"a/b c"), "a%2Fb%20c");
        assert_eq!(encode_key(&[0, 255]), "%00%FF");
        assert_eq!(encode_key(b"Az09-._~"), "Az09-._~");
    }

    #[test]
    fn error_bodies_map_to_typed_errors() {
        let body = br#"{"error":{"code":"unavailable","message":"m","stored_on":1},"stored_on":1}"#;
        assert_eq!(
            error_from(StatusCode::SERVICE_UNAVAILABLE, body, true),
            Error::Unavailable {
                message: "m".into(),
                stored_on: Some(1)
            }
        );
        let body = br#"{"error":{"code":"bad_request","message":"r must be"}}"#;
        assert!(matches!(
            error_from(StatusCode::BAD_REQUEST, body, false),
            Error::BadRequest { .. }
        ));
        assert!(matches!(
            error_from(StatusCode::INTERNAL_SERVER_ERROR, b"oops", false),
            Error::Protocol(_)
        ));
    }

    #[test]
    fn queries_and_seeds() {
        assert_eq!(query_string("r", None, None), "");
        assert_eq!(
            query_string("w", Some(3), Some(Duration::from_millis(250))),
            "?w=3&timeout_ms=250"
        );
        assert_eq!(normalize_url("127.0.0.1:8101/"), "http://127.0.0.1:8101");
        assert_eq!(normalize_url("http://h:1"), "http://h:1");
    }

    #[test]
    fn not_found_keeps_the_tombstone_context() {
        let answer = Answer {
            status: StatusCode::NOT_FOUND,
            context: Some("c".into()),
            body: Bytes::from_static(br#"{"context":"c","values":[]}"#),
        };
        assert_eq!(
            read_result(answer),
            Err(Error::NotFound {
                context: Some("c".into())
            })
        );
    }
}
