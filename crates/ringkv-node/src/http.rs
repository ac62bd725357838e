//! The client HTTP API (API.md §2) and the cluster/admin API (§3).
//!
//! Keys arrive percent-encoded as one path segment and are decoded to raw bytes here (not by
//! the router, which would insist on UTF-8). Every error is the JSON body
//! `{"error": {"code", "message"}}` with the contract's status code; a failed write also
//! says `stored_on`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use metrics_exporter_prometheus::PrometheusHandle;
use ringkv_core::constants::MAX_KEY_BYTES;
use ringkv_core::{Context, VersionSet};

use crate::wire::ClientContext;
use serde_json::json;

use crate::error::ApiError;
use crate::node::Node;
use crate::request_metrics::{self, Op, Outcome};
use crate::wire::{ClientOp, ClientReply};

/// Header carrying the causal context.
pub const CONTEXT_HEADER: &str = "x-context";

#[derive(Clone)]
pub struct HttpState {
    pub node: Arc<Node>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: HttpState) -> Router {
    let max_body = state.node.settings().max_value_bytes + 1;
    let concurrency = state.node.settings().limits.http_concurrency_max;
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
        .route("/admin/leave", post(crate::admin::leave))
        .route("/admin/plan", get(crate::admin::plan))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(concurrency_limit(concurrency))
        .with_state(state)
}

/// At most `max` client requests in flight on the node, whatever their route. `Router::layer`
/// wraps each route (and method) in its own copy of a layer, so a plain
/// `ConcurrencyLimitLayer` made one semaphore per route: the global layer shares one.
fn concurrency_limit(max: usize) -> tower::limit::GlobalConcurrencyLimitLayer {
    tower::limit::GlobalConcurrencyLimitLayer::new(max)
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

/// The query parameters every data request accepts.
struct DataParams {
    r: Option<u8>,
    w: Option<u8>,
    timeout: Duration,
    /// Count home replicas only toward R/W (no hinted fallbacks), like Riak's pr/pw.
    strict: bool,
}

fn data_params(uri: &Uri, node: &Node) -> Result<DataParams, ApiError> {
    let settings = node.settings();
    let n = node
        .membership()
        .ring()
        .map(|r| r.topology.params().n)
        .unwrap_or(settings.n);
    let mut params = DataParams {
        r: None,
        w: None,
        timeout: settings.request_timeout,
        strict: false,
    };
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let quorum = |what: &str| -> Result<u8, ApiError> {
            match value.parse::<u32>() {
                Ok(q) if q >= 1 && q <= n as u32 => Ok(q as u8),
                _ => Err(ApiError::bad_request(format!(
                    "{what} must be an integer in 1..={n}, got {value:?}"
                ))),
            }
        };
        match name {
            "r" => params.r = Some(quorum("r")?),
            "w" => params.w = Some(quorum("w")?),
            "timeout_ms" => {
                let max = settings.limits.request_timeout_max.as_millis() as u64;
                match value.parse::<u64>() {
                    Ok(ms) if ms >= 1 && ms <= max => params.timeout = Duration::from_millis(ms),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "timeout_ms must be an integer in 1..={max}, got {value:?}"
                        )));
                    }
                }
            }
            "strict" => match value {
                "true" | "1" | "" => params.strict = true,
                "false" | "0" => params.strict = false,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "strict must be true or false, got {value:?}"
                    )));
                }
            },
            _ => {}
        }
    }
    Ok(params)
}

fn context_from(headers: &HeaderMap) -> Result<Option<Context>, ApiError> {
    let Some(value) = headers.get(CONTEXT_HEADER) else {
        return Ok(None);
    };
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
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = get_key_inner(&state, &uri, &headers).await;
    record(Op::Get, started, &result);
    result
}

async fn get_key_inner(
    state: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_from_uri(uri, "/kv/")?;
    let params = data_params(uri, &state.node)?;
    let r = params.r.unwrap_or_else(|| state.node.default_r());
    let reply = state
        .node
        .client_op(
            ClientOp::Get {
                key,
                r,
                strict: params.strict,
            },
            params.timeout,
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
        write(&state, &uri, &headers, Some(body)).await
    }
    .await;
    record(Op::Put, started, &result);
    result
}

async fn delete_key(
    State(state): State<HttpState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = write(&state, &uri, &headers, None).await;
    record(Op::Delete, started, &result);
    result
}

async fn write(
    state: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    value: Option<Bytes>,
) -> Result<Response, ApiError> {
    let key = key_from_uri(uri, "/kv/")?;
    let params = data_params(uri, &state.node)?;
    // No context header: the write is concurrent with whatever is stored.
    let client_context = context_from(headers)?.unwrap_or_default();
    let context = Some(ClientContext::from(&client_context));
    let w = params.w.unwrap_or_else(|| state.node.default_w());
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
            params.timeout,
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
    /// The limit holds across routes and methods: with one slot, a request to one route
    /// that is still running holds up a request to another until it is done.
    #[tokio::test]
    async fn the_concurrency_limit_is_one_for_every_route() {
        use axum::routing::get;
        use tower::ServiceExt;
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
        let held = {
            let gate = gate.clone();
            move || async move {
                entered_tx.send(()).unwrap();
                let _ = gate.acquire().await;
                "a"
            }
        };
        let app = axum::Router::new()
            .route("/a", get(held))
            .route("/b", get(|| async { "b" }).put(|| async { "b" }))
            .layer(super::concurrency_limit(1));
        let request = |method: &str, path: &str| {
            axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let first = tokio::spawn(app.clone().oneshot(request("GET", "/a")));
        entered.recv().await.expect("the first request is running");
        for (method, path) in [("GET", "/b"), ("PUT", "/b")] {
            let waited = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                app.clone().oneshot(request(method, path)),
            )
            .await;
            assert!(
                waited.is_err(),
                "{method} {path} ran beside a request holding the only slot"
            );
        }
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        let after = app.oneshot(request("PUT", "/b")).await.unwrap();
        assert_eq!(after.status(), 200, "the slot is free again");
    }

    use axum::http::HeaderValue;

    use super::*;

    fn accept(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT, HeaderValue::from_static(v));
        }
        headers
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
