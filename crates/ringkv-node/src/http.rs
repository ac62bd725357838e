//! The client HTTP API (API.md §2) and the cluster/admin API (§3).
//!
//! Keys arrive percent-encoded as one path segment and are decoded to raw bytes here (not by
//! the router, which would insist on UTF-8). Every error is the JSON body
//! `{"error": {"code", "message"}}` with the contract's status code; a failed write also
//! says `stored_on`.
//!
//! Query parameters are percent-decoded. A data request reads `r` (a read) or `w` (a write or
//! delete), `timeout_ms` and `strict`; others, `w` on a read and `r` on a write included, are
//! ignored. Integers are decimal digits, no sign or leading zero (`r=+2`, `r=02` are 400).
//! More than one `X-Context` header is a 400. `/admin/local/` and `/admin/local/a/b` are 400
//! (one key, one path segment), as under `/kv/`.
//!
//! # Limits
//!
//! A slow or silent client holds a connection, never the node's capacity to answer others
//! (`Limits`, docs/design.md):
//! - `http_connections_max` connections are open at once (`serve`); one more is answered a
//!   503 `unavailable` and closed. HTTP/1.1 only: a connection carries one request at a time,
//!   so this also bounds the request bodies held to that many, and each buffers at most
//!   `HEAD_BUFFER_BYTES` of a request's head.
//! - A request's headers must arrive within `http_header_read_timeout` of the node starting
//!   to wait for them (hyper's header timer), and a keep-alive connection idle that long is
//!   closed; a body within `http_body_timeout` of its headers, or the request answers 408
//!   `request_timeout` (`admit`).
//! - Only then does a request take one of the `http_concurrency_max` slots: it waits for one
//!   at most until its deadline (`timeout_ms`, or `--request-timeout-ms`, from when its body
//!   arrived), then answers 503 `unavailable` (a write: `"stored_on": 0`). What it waited
//!   counts against its deadline; a data request not answered `DEADLINE_GRACE` past it
//!   answers 503 anyway (`stored_on` null for a write).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use ringkv_core::constants::MAX_KEY_BYTES;
use ringkv_core::{Context, VersionSet};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::settings::{Limits, Settings};
use crate::sockets::{AcceptLoop, serve_connections};
use crate::wire::ClientContext;
use serde_json::json;

use crate::error::ApiError;
use crate::node::Node;
use crate::request_metrics::{self, Op, Outcome};
use crate::wire::{ClientOp, ClientReply};

/// Header carrying the causal context.
pub const CONTEXT_HEADER: &str = "x-context";
/// How long past its deadline a data request may run before it is answered 503 without
/// waiting for the coordinator (which answers by the deadline itself: this is a backstop).
pub const DEADLINE_GRACE: Duration = Duration::from_secs(1);
/// After the listener stops, connections get this long beyond the longest request
/// (`http_body_timeout` + `request_timeout_max`) to finish before they are aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The most a connection buffers of a request's head (request line and headers): a context
/// token of `MAX_CONTEXT_BYTES` (64 KiB), a key of `MAX_KEY_BYTES` percent-encoded (12 KiB)
/// and room for the rest. A longer head is answered 431 by hyper. (hyper's default, ~400 KiB,
/// let `http_connections_max` connections hold 1.6 GiB of heads.)
pub const HEAD_BUFFER_BYTES: usize = 128 * 1024;

#[derive(Clone)]
pub struct HttpState {
    pub node: Arc<Node>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: HttpState) -> Router {
    let settings = state.node.settings();
    let max_body = settings.max_value_bytes + 1;
    let admission = Arc::new(Admission::new(settings, state.node.shutdown.clone()));
    Router::new()
        .route("/kv/{key}", get(get_key).put(put_key).delete(delete_key))
        .route("/kv/", get(empty_key).put(empty_key).delete(empty_key))
        .route(
            "/kv/{key}/{*rest}",
            get(split_key).put(split_key).delete(split_key),
        )
        .route(
            "/kv/{key}/",
            get(split_key).put(split_key).delete(split_key),
        )
        .route("/status", get(crate::admin::status))
        .route("/ring", get(crate::admin::ring))
        .route("/metrics", get(render_metrics))
        .route("/admin/local/{key}", get(admin_local))
        .route("/admin/local/", get(empty_key))
        .route("/admin/local/{key}/{*rest}", get(split_key))
        .route("/admin/local/{key}/", get(split_key))
        .route("/admin/leave", post(crate::admin::leave))
        .route("/admin/plan", get(crate::admin::plan))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(admission, admit))
        .with_state(state)
}

/// What `admit` needs: the node-wide request slots and the bounds of one request.
struct Admission {
    /// `http_concurrency_max` slots, shared by every route and method (`Router::layer`
    /// copies the layer per route; the `Arc` keeps one semaphore).
    slots: Arc<Semaphore>,
    concurrency_max: usize,
    max_body_bytes: usize,
    body_timeout: Duration,
    request_timeout: Duration,
    request_timeout_max: Duration,
    /// Cancelled when the node stops: a body still arriving then is not waited for.
    shutdown: CancellationToken,
}

impl Admission {
    fn new(settings: &Settings, shutdown: CancellationToken) -> Admission {
        let limits = &settings.limits;
        Admission {
            slots: Arc::new(Semaphore::new(limits.http_concurrency_max)),
            concurrency_max: limits.http_concurrency_max,
            max_body_bytes: settings.max_value_bytes,
            body_timeout: limits.http_body_timeout,
            request_timeout: settings.request_timeout,
            request_timeout_max: limits.request_timeout_max,
            shutdown,
        }
    }
}

/// When a client request must be answered: its `timeout_ms` (or the node's request timeout)
/// after its body arrived. `admit` puts it in the request's extensions.
#[derive(Debug, Clone, Copy)]
struct Deadline(tokio::time::Instant);

impl Deadline {
    /// What is left of it; a 503 when nothing is (a write: nothing was stored).
    fn remaining(self, write: bool) -> Result<Duration, ApiError> {
        let left = self
            .0
            .saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(ApiError::unavailable(
                "the request's deadline passed before it started",
                write.then_some(0),
            ));
        }
        Ok(left)
    }
}

/// The data operation a request is, if it is one (`/kv/...`).
fn data_op(method: &Method, uri: &Uri) -> Option<Op> {
    if !uri.path().starts_with("/kv/") {
        return None;
    }
    match *method {
        Method::GET => Some(Op::Get),
        Method::PUT => Some(Op::Put),
        Method::DELETE => Some(Op::Delete),
        _ => None,
    }
}

/// Every request passes here first: its body is received within `http_body_timeout`, then it
/// waits for a slot until its deadline, then it runs (a data request until its deadline plus
/// `DEADLINE_GRACE` at most).
async fn admit(State(admission): State<Arc<Admission>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let op = data_op(&parts.method, &parts.uri);
    let write = matches!(op, Some(Op::Put | Op::Delete));
    let refused = |e: ApiError| {
        if let Some(op) = op {
            let outcome = if e.status == StatusCode::SERVICE_UNAVAILABLE {
                Outcome::Unavailable
            } else {
                Outcome::BadRequest
            };
            request_metrics::record(op, outcome, started);
        }
        e.into_response()
    };
    let body = match receive_body(&admission, &parts.headers, body).await {
        Ok(body) => body,
        Err(mut e) => {
            if write && e.status == StatusCode::SERVICE_UNAVAILABLE {
                e.stored_on = Some(0);
            }
            return refused(e);
        }
    };
    let timeout = timeout_param(&parts.uri, admission.request_timeout_max)
        .ok()
        .flatten()
        .unwrap_or(admission.request_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let slot = tokio::time::timeout_at(deadline, admission.slots.clone().acquire_owned());
    let Ok(Ok(_slot)) = slot.await else {
        metrics::counter!("ringkv_http_requests_refused_total").increment(1);
        return refused(ApiError::unavailable(
            format!(
                "the node is working on {} requests, its limit, and none finished before this \
                 request's deadline ({timeout:?}): nothing was done",
                admission.concurrency_max
            ),
            write.then_some(0),
        ));
    };
    parts.extensions.insert(Deadline(deadline));
    let request = Request::from_parts(parts, Body::from(body));
    if op.is_none() {
        return next.run(request).await;
    }
    match tokio::time::timeout_at(deadline + DEADLINE_GRACE, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("ringkv_http_deadline_overruns_total").increment(1);
            warn!(
                ?timeout,
                "a data request was not answered by its deadline; answered 503"
            );
            let mut e = ApiError::unavailable(
                format!("no answer within the request's deadline ({timeout:?})"),
                None,
            );
            // The write may have reached replicas: how many is not known.
            e.stored_on_unknown = write;
            refused(e)
        }
    }
}

/// The whole body of a request: at most `max_value_bytes` (413 past it, refused on its
/// `Content-Length` before a byte is read) and within `http_body_timeout` (408 past it).
async fn receive_body(
    admission: &Admission,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let max = admission.max_body_bytes;
    let too_large = || ApiError::too_large(format!("value is over the limit of {max} bytes"));
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let receive = async {
        let mut chunks = body.into_data_stream();
        let mut received: Vec<Bytes> = Vec::new();
        let mut len = 0;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
            len += chunk.len();
            if len > max {
                return Err(too_large());
            }
            received.push(chunk);
        }
        Ok(match received.len() {
            0 => Bytes::new(),
            1 => received.pop().expect("one chunk"),
            _ => Bytes::from(received.concat()),
        })
    };
    let receive = tokio::time::timeout(admission.body_timeout, receive);
    let received = tokio::select! {
        received = receive => received,
        // Not in flight yet: a stopping node answers it rather than wait for its body.
        _ = admission.shutdown.cancelled() => {
            return Err(ApiError::unavailable("the node is shutting down: nothing was done", None));
        }
    };
    match received {
        Ok(body) => body,
        Err(_) => {
            metrics::counter!("ringkv_http_body_timeouts_total").increment(1);
            Err(ApiError::request_timeout(format!(
                "the request's body did not arrive within {:?}",
                admission.body_timeout
            )))
        }
    }
}

/// A fixed answer to a connection over `http_connections_max`, written as it is closed.
fn too_many_connections(max: usize) -> Vec<u8> {
    let body = json!({"error": {
        "code": "unavailable",
        "message": format!("the node has {max} HTTP connections open, its limit: retry later"),
    }})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` until `shutdown` is cancelled: HTTP/1.1, at most
/// `http_connections_max` connections, each with hyper's header-read timer set to
/// `http_header_read_timeout`. Then stops accepting, lets each connection finish its request
/// (closing it once idle), and aborts what is still running after the longest a request may
/// take plus `SHUTDOWN_GRACE`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: CancellationToken,
) {
    let refusal = too_many_connections(limits.http_connections_max);
    let accept = AcceptLoop {
        face: "HTTP",
        connections_max: limits.http_connections_max,
        refused_counter: "ringkv_http_connections_refused_total",
        refusal: &refusal,
        shutdown_grace: limits.http_body_timeout + limits.request_timeout_max + SHUTDOWN_GRACE,
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.http_header_read_timeout)
        .max_buf_size(HEAD_BUFFER_BYTES);
    serve_connections(listener, accept, &shutdown, |stream| {
        // No Nagle, and keepalive, as on the RESP and inter-node sockets (`sockets.rs`).
        crate::sockets::tune(&stream);
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let shutdown = shutdown.clone();
        let open = OpenConnection::new();
        async move {
            let _open = open;
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                debug!(error = %e, "HTTP connection ended");
            }
        }
    })
    .await
}

/// Counts an open HTTP connection in the gauge `ringkv_http_connections` while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> OpenConnection {
        metrics::gauge!("ringkv_http_connections").increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("ringkv_http_connections").decrement(1.0);
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        let stored_on = match (self.stored_on, self.stored_on_unknown) {
            (Some(n), _) => Some(json!(n)),
            (None, true) => Some(serde_json::Value::Null),
            (None, false) => None,
        };
        if let Some(n) = &stored_on {
            error["stored_on"] = n.clone();
        }
        let mut body = json!({ "error": error });
        if let Some(n) = stored_on {
            body["stored_on"] = n;
        }
        (self.status, Json(body)).into_response()
    }
}

/// Decodes the raw key segment that follows `prefix` in the request path.
fn key_from_uri(uri: &Uri, prefix: &str) -> Result<Bytes, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(prefix)
        .ok_or_else(|| ApiError::bad_request("missing key"))?;
    if raw.is_empty() {
        return Err(ApiError::bad_request("the key must not be empty"));
    }
    let key = percent_decode(raw)
        .ok_or_else(|| ApiError::bad_request("the key is not valid percent-encoding"))?;
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::too_large(format!(
            "key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(Bytes::from(key))
}

pub(crate) fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits exactly (`from_str_radix` alone would take a sign: "%+1").
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A query's parameters in order, percent-decoded: `(name, value)`, the value `None` when it
/// is not percent-encoded UTF-8 (an error for a parameter the request reads, and only then).
/// A name that does not decode names no parameter, and is skipped; a pair without `=` has an
/// empty value.
fn query_pairs(uri: &Uri) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    let decode = |text: &str| percent_decode(text).and_then(|b| String::from_utf8(b).ok());
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(move |pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(name)?, decode(value)))
        })
}

/// A parameter's value as an error message shows it.
fn shown(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "a value that is not percent-encoded UTF-8".to_string(),
    }
}

/// An integer as API.md writes them: decimal digits only, no sign, no leading zero (`r=+2`,
/// `r=02` or `r=2.0` is not one), within `u64`.
fn integer(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// A `timeout_ms` value: an integer in 1..=`max` milliseconds.
fn timeout_ms(value: Option<&str>, max: Duration) -> Result<Duration, ApiError> {
    let max = max.as_millis() as u64;
    match value.and_then(integer) {
        Some(ms) if ms >= 1 && ms <= max => Ok(Duration::from_millis(ms)),
        _ => Err(ApiError::bad_request(format!(
            "timeout_ms must be an integer in 1..={max}, got {}",
            shown(value)
        ))),
    }
}

/// The `timeout_ms` a request names (the last one), if any.
fn timeout_param(uri: &Uri, max: Duration) -> Result<Option<Duration>, ApiError> {
    let mut timeout = None;
    for (name, value) in query_pairs(uri) {
        if name == "timeout_ms" {
            timeout = Some(timeout_ms(value.as_deref(), max)?);
        }
    }
    Ok(timeout)
}

/// The query parameters a data request reads (API.md §2): `r` on a read, `w` on a write or
/// delete, `timeout_ms`, and `strict` (an addition). Any other parameter, `w` on a read and
/// `r` on a write included, is not one of the request's and is ignored.
struct DataParams {
    /// R for a read, W for a write or delete.
    quorum: Option<u8>,
    /// Count home replicas only toward R/W (no hinted fallbacks), like Riak's pr/pw.
    strict: bool,
}

fn data_params(uri: &Uri, node: &Node, op: Op) -> Result<DataParams, ApiError> {
    let settings = node.settings();
    let n = node
        .membership()
        .ring()
        .map(|r| r.topology.params().n)
        .unwrap_or(settings.n);
    let quorum_name = if op == Op::Get { "r" } else { "w" };
    let mut params = DataParams {
        quorum: None,
        strict: false,
    };
    for (name, value) in query_pairs(uri) {
        let value = value.as_deref();
        match name.as_str() {
            name if name == quorum_name => match value.and_then(integer) {
                Some(q) if q >= 1 && q <= u64::from(n) => params.quorum = Some(q as u8),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "{name} must be an integer in 1..={n}, got {}",
                        shown(value)
                    )));
                }
            },
            // Checked here; `admit` set the deadline it gives.
            "timeout_ms" => {
                timeout_ms(value, settings.limits.request_timeout_max)?;
            }
            "strict" => match value {
                Some("true" | "1" | "") => params.strict = true,
                Some("false" | "0") => params.strict = false,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "strict must be true or false, got {}",
                        shown(value)
                    )));
                }
            },
            _ => {}
        }
    }
    Ok(params)
}

/// The request's context: none without an `X-Context` header (or with an empty one); a 400
/// if it does not parse or the header is given more than once (which one would be meant?).
fn context_from(headers: &HeaderMap) -> Result<Option<Context>, ApiError> {
    let mut values = headers.get_all(CONTEXT_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "X-Context is given more than once: send the one context of what was read",
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("X-Context is not printable ASCII"))?;
    if text.is_empty() {
        return Ok(None);
    }
    Context::decode(text)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("bad X-Context: {e}")))
}

/// Every error is JSON (API.md §2), unknown paths and methods included.
async fn no_such_endpoint(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint {method} {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{} does not take {method}", uri.path()))
}

/// Whether the client asked for JSON: some `Accept` value (any number of headers, each a
/// comma-separated list) names `application/json` (media types are case-insensitive) with a
/// quality above 0 (`q=0` means "not acceptable", RFC 9110 §12.5.1).
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/json")
                && parts.all(|p| {
                    let Some((name, value)) = p.split_once('=') else {
                        return true;
                    };
                    !name.trim().eq_ignore_ascii_case("q")
                        || value.trim().parse::<f32>().map_or(true, |q| q > 0.0)
                })
        })
}

fn record(op: Op, started: Instant, result: &Result<Response, ApiError>) {
    let outcome = match result {
        Ok(_) => Outcome::Ok,
        Err(e) if e.status.is_client_error() => Outcome::BadRequest,
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
        Err(_) => Outcome::Error,
    };
    request_metrics::record(op, outcome, started);
}

async fn get_key(
    State(state): State<HttpState>,
    Extension(deadline): Extension<Deadline>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = get_key_inner(&state, &uri, &headers, deadline).await;
    record(Op::Get, started, &result);
    result
}

async fn get_key_inner(
    state: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let key = key_from_uri(uri, "/kv/")?;
    let params = data_params(uri, &state.node, Op::Get)?;
    let r = params.quorum.unwrap_or_else(|| state.node.default_r());
    let timeout = deadline.remaining(false)?;
    let reply = state
        .node
        .client_op(
            ClientOp::Get {
                key,
                r,
                strict: params.strict,
            },
            timeout,
        )
        .await?;
    let ClientReply::Read(versions) = reply else {
        return Err(ApiError::internal("unexpected reply to a read"));
    };
    Ok(read_response(versions, wants_json(headers)))
}

fn read_response(versions: Option<VersionSet>, json: bool) -> Response {
    let values: Vec<Bytes> = versions
        .as_ref()
        .map(|v| v.values().cloned().collect())
        .unwrap_or_default();
    let context = versions.as_ref().map(Context::of).filter(|c| !c.is_empty());
    let ctx_text = context.as_ref().map(Context::encode);
    let mut headers = HeaderMap::new();
    if let Some(ctx) = &ctx_text {
        headers.insert(
            CONTEXT_HEADER,
            HeaderValue::from_str(ctx).expect("contexts are header-safe"),
        );
    }
    let encoded: Vec<String> = values.iter().map(|v| BASE64.encode(v)).collect();
    if json {
        let status = if values.is_empty() {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        return (
            status,
            headers,
            Json(json!({"context": ctx_text, "values": encoded})),
        )
            .into_response();
    }
    match values.len() {
        0 => (
            StatusCode::NOT_FOUND,
            headers,
            Json(json!({"error": {"code": "not_found", "message": "no value for this key"}})),
        )
            .into_response(),
        1 => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            (
                StatusCode::OK,
                headers,
                values.into_iter().next().expect("one value"),
            )
                .into_response()
        }
        _ => (
            StatusCode::MULTIPLE_CHOICES,
            headers,
            Json(json!({"context": ctx_text, "siblings": encoded})),
        )
            .into_response(),
    }
}

async fn put_key(
    State(state): State<HttpState>,
    Extension(deadline): Extension<Deadline>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let body = body.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!(
                    "value is over the limit of {} bytes",
                    state.node.settings().max_value_bytes
                ))
            } else {
                ApiError::bad_request(format!("could not read the body: {e}"))
            }
        })?;
        if body.len() > state.node.settings().max_value_bytes {
            return Err(ApiError::too_large(format!(
                "value is over the limit of {} bytes",
                state.node.settings().max_value_bytes
            )));
        }
        write(&state, &uri, &headers, Some(body), deadline).await
    }
    .await;
    record(Op::Put, started, &result);
    result
}

async fn delete_key(
    State(state): State<HttpState>,
    Extension(deadline): Extension<Deadline>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = write(&state, &uri, &headers, None, deadline).await;
    record(Op::Delete, started, &result);
    result
}

async fn write(
    state: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    value: Option<Bytes>,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let key = key_from_uri(uri, "/kv/")?;
    let op = if value.is_some() { Op::Put } else { Op::Delete };
    let params = data_params(uri, &state.node, op)?;
    // No context header: the write is concurrent with whatever is stored.
    let client_context = context_from(headers)?.unwrap_or_default();
    let context = Some(ClientContext::from(&client_context));
    let w = params.quorum.unwrap_or_else(|| state.node.default_w());
    let timeout = deadline.remaining(true)?;
    let reply = state
        .node
        .client_op(
            ClientOp::Put {
                key,
                context,
                value,
                w,
                strict: params.strict,
            },
            timeout,
        )
        .await
        .map_err(|e| {
            let mut e = ApiError::from(e);
            // A failed write always says how many replicas may hold it; null when unknown.
            e.stored_on_unknown =
                e.status == StatusCode::SERVICE_UNAVAILABLE && e.stored_on.is_none();
            e
        })?;
    let ClientReply::Written { dot, .. } = reply else {
        return Err(ApiError::internal("unexpected reply to a write"));
    };
    // What this client has now seen: what it read, plus its own write (and nothing else).
    let answered = client_context.with_dot(dot);
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTEXT_HEADER,
        HeaderValue::from_str(&answered.encode()).expect("contexts are header-safe"),
    );
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

async fn empty_key() -> ApiError {
    ApiError::bad_request("the key must not be empty")
}

/// `/kv/a/b`: a key is one path segment, so a `/` in it is sent as `%2F`.
async fn split_key() -> ApiError {
    ApiError::bad_request("the key must be one path segment: percent-encode '/' as %2F")
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    // The read cache counts under its own shard locks; its totals are read at scrape time.
    if let Some(cache) = state.node.storage.read_cache_stats() {
        metrics::counter!("ringkv_read_cache_hits_total").absolute(cache.hits);
        metrics::counter!("ringkv_read_cache_misses_total").absolute(cache.misses);
        metrics::gauge!("ringkv_read_cache_entries").set(cache.entries as f64);
        metrics::gauge!("ringkv_read_cache_bytes").set(cache.bytes as f64);
        metrics::gauge!("ringkv_read_cache_budget_bytes").set(cache.budget_bytes as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn admin_local(
    State(state): State<HttpState>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = key_from_uri(&uri, "/admin/local/")?;
    let (own, hinted) = state.node.held_locally(key).await.map_err(ApiError::from)?;
    let hinted_for: Vec<String> = hinted
        .iter()
        .map(|(target, _)| target.to_string())
        .collect();
    let held = hinted
        .into_iter()
        .map(|(_, v)| v)
        .chain(own)
        .reduce(|a, b| a.sync(&b));
    let Some(held) = held else {
        return Err(ApiError::not_found("this node holds nothing for the key"));
    };
    let versions: Vec<_> = held
        .siblings()
        .iter()
        .map(|s| json!({"value": s.value.as_ref().map(|v| BASE64.encode(v))}))
        .collect();
    let context = Context::of(&held).encode();
    Ok(Json(
        json!({"versions": versions, "context": context, "hinted_for": hinted_for}),
    ))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    /// `admit` in front of `/a` (runs until `gate` lets it finish), `/b` and `/kv/{k}`.
    fn admitted(
        slots: usize,
        gate: Arc<Semaphore>,
        entered: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Router {
        let held = move || async move {
            entered.send(()).unwrap();
            let _ = gate.acquire().await;
            "a"
        };
        let admission = Admission {
            slots: Arc::new(Semaphore::new(slots)),
            concurrency_max: slots,
            max_body_bytes: 1024,
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(2),
            request_timeout_max: Duration::from_secs(60),
            shutdown: CancellationToken::new(),
        };
        Router::new()
            .route("/a", get(held))
            .route("/b", get(|| async { "b" }).put(|| async { "b" }))
            .route(
                "/kv/{k}",
                get(|| async { "k" }).put(|body: Bytes| async move { body }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(admission),
                admit,
            ))
    }

    fn request(method: &str, path: &str, body: Body) -> Request {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .unwrap()
    }

    async fn error_of(response: Response) -> serde_json::Value {
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// The slots are shared by every route and method: with one taken, a request to another
    /// route waits for it until its deadline, then answers 503 (a write: nothing stored);
    /// once the slot is free, requests run again.
    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_a_slot_until_its_deadline_then_answers_503() {
        use tower::ServiceExt;
        let gate = Arc::new(Semaphore::new(0));
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
        let app = admitted(1, gate.clone(), entered_tx);
        let first = tokio::spawn(app.clone().oneshot(request("GET", "/a", Body::empty())));
        entered.recv().await.expect("the first request is running");
        for (method, path, stored_on) in [
            ("GET", "/b?timeout_ms=100", None),
            ("PUT", "/b", None),
            ("PUT", "/kv/x?timeout_ms=100", Some(0)),
        ] {
            let waited = tokio::time::Instant::now();
            let answer = app
                .clone()
                .oneshot(request(method, path, Body::from("v")))
                .await
                .unwrap();
            assert_eq!(
                answer.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{method} {path}"
            );
            let j = error_of(answer).await;
            assert_eq!(j["error"]["code"], "unavailable", "{method} {path}: {j}");
            assert_eq!(j["stored_on"].as_u64(), stored_on, "{method} {path}: {j}");
            let limit = if path.contains("timeout_ms=100") {
                100
            } else {
                2000
            };
            assert_eq!(
                waited.elapsed(),
                Duration::from_millis(limit),
                "{method} {path} waited until its deadline"
            );
        }
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        let after = app
            .oneshot(request("PUT", "/b", Body::empty()))
            .await
            .unwrap();
        assert_eq!(after.status(), 200, "the slot is free again");
    }

    /// A body that does not arrive holds no slot, and is answered 408 once
    /// `http_body_timeout` passed.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_takes_no_slot_and_answers_408() {
        use tower::ServiceExt;
        let (entered_tx, _entered) = tokio::sync::mpsc::unbounded_channel::<()>();
        let app = admitted(1, Arc::new(Semaphore::new(0)), entered_tx);
        let silent = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let started = tokio::time::Instant::now();
        let stalled = tokio::spawn(app.clone().oneshot(request("PUT", "/kv/x", silent)));
        tokio::task::yield_now().await;
        let other = app
            .clone()
            .oneshot(request("PUT", "/kv/y", Body::from("v")))
            .await
            .unwrap();
        assert_eq!(other.status(), 200, "the only slot was free");
        assert_eq!(started.elapsed(), Duration::ZERO, "and taken at once");
        let stalled = stalled.await.unwrap().unwrap();
        assert_eq!(stalled.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(error_of(stalled).await["error"]["code"], "request_timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    /// A body announced over the limit is refused before a byte of it is read; one that
    /// passes the limit while arriving is refused too.
    #[tokio::test]
    async fn bodies_over_the_limit_are_413() {
        use tower::ServiceExt;
        let (entered_tx, _entered) = tokio::sync::mpsc::unbounded_channel::<()>();
        let app = admitted(1, Arc::new(Semaphore::new(0)), entered_tx);
        let never_read =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let mut announced = request("PUT", "/kv/x", never_read);
        announced
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1025"));
        let chunks = futures::stream::iter(
            [vec![1u8; 1000], vec![2u8; 25]].map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
        );
        let streamed = request("PUT", "/kv/x", Body::from_stream(chunks));
        for r in [announced, streamed] {
            let answer = app.clone().oneshot(r).await.unwrap();
            assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(error_of(answer).await["error"]["code"], "too_large");
        }
        let at_limit = request("PUT", "/kv/x", Body::from(vec![3u8; 1024]));
        let answer = app.oneshot(at_limit).await.unwrap();
        assert_eq!(answer.status(), 200);
        let body = axum::body::to_bytes(answer.into_body(), 2048)
            .await
            .unwrap();
        assert_eq!(body.len(), 1024, "the body reaches the handler whole");
    }

    fn accept(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT, HeaderValue::from_static(v));
        }
        headers
    }

    #[test]
    fn integers_are_plain_decimal_digits() {
        for (text, want) in [
            ("1", Some(1)),
            ("0", Some(0)),
            ("60000", Some(60_000)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("", None),
            ("+2", None),
            ("-1", None),
            ("02", None),
            ("00", None),
            (" 2", None),
            ("2.0", None),
            ("2e0", None),
            ("0x2", None),
            ("٢", None),
        ] {
            assert_eq!(integer(text), want, "{text:?}");
        }
    }

    #[test]
    fn query_values_are_percent_decoded_and_undecodable_names_skipped() {
        let uri: Uri = "/kv/k?r=%32&%77=3&%ff=1&timeout_ms=%ff&strict"
            .parse()
            .unwrap();
        let pairs: Vec<_> = query_pairs(&uri).collect();
        assert_eq!(
            pairs,
            vec![
                ("r".to_string(), Some("2".to_string())),
                ("w".to_string(), Some("3".to_string())),
                ("timeout_ms".to_string(), None),
                ("strict".to_string(), Some(String::new())),
            ]
        );
    }

    #[test]
    fn accept_names_json_in_any_case_list_or_header() {
        for values in [
            &["application/json"][..],
            &["Application/JSON"],
            &["text/plain, application/json;q=0.5"],
            &["text/plain", "application/json"],
            &["application/json; charset=utf-8"],
            &["application/json;q=1"],
        ] {
            assert!(wants_json(&accept(values)), "{values:?}");
        }
    }

    #[test]
    fn accept_without_json_or_with_q_zero_is_not_json() {
        for values in [
            &[][..],
            &["*/*"],
            &["text/plain"],
            &["application/json;q=0"],
            &["application/json; q=0.0, text/plain"],
            &["application/jsonx"],
        ] {
            assert!(!wants_json(&accept(values)), "{values:?}");
        }
    }
}
