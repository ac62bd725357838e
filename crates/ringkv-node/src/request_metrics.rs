//! The per-operation request metrics both client front ends (HTTP and RESP) record:
//! `ringkv_requests_total{op, outcome}` and the histogram
//! `ringkv_request_duration_seconds{op, outcome}`.
//!
//! One series per operation and outcome, whatever the protocol that carried the request: an
//! operator reads one latency histogram for reads, one for writes and one for deletes. The
//! label values are static strings, so recording allocates nothing beyond what the `metrics`
//! macros themselves do. Per-protocol detail lives in each front end's own metrics
//! (`ringkv_resp_commands_total{command, outcome}` for RESP).

use std::time::Instant;

/// The operation a client request performs (the `op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read: HTTP `GET /kv/{key}`; RESP `GET`, `GETCTX`, `MGET`, `EXISTS`.
    Get,
    /// A write: HTTP `PUT /kv/{key}`; RESP `SET`, `PUTCTX`, `MSET`.
    Put,
    /// A delete: HTTP `DELETE /kv/{key}`; RESP `DEL`, `DELCTX`.
    Delete,
}

impl Op {
    pub fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }
}

/// How a client request ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: a value, nil or 404, siblings (HTTP 300, RESP `-CONFLICT`), a write done.
    Ok,
    /// The client's request was refused (HTTP 4xx; RESP `-ERR` other than `internal`).
    BadRequest,
    /// Fewer than R or W replicas answered in time (HTTP 503, RESP `-UNAVAILABLE`).
    Unavailable,
    /// A bug or a storage failure (HTTP 5xx other than 503, RESP `-ERR internal: ...`).
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::Unavailable => "unavailable",
            Outcome::Error => "error",
        }
    }
}

/// Counts one request and records its latency, measured from `started`.
pub fn record(op: Op, outcome: Outcome, started: Instant) {
    let (op, outcome) = (op.label(), outcome.label());
    metrics::counter!("ringkv_requests_total", "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("ringkv_request_duration_seconds", "op" => op, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}
