//! Starting and stopping a node: bind the ports, start the loops, serve until shutdown.
//!
//! Shutdown order (SIGTERM): stop accepting client requests and let in-flight ones finish
//! (bounded by the request deadline), stop the background loops, leave gossip, then drop the
//! storage engine, which flushes it. Every acknowledged write was already fsynced when it was
//! acknowledged, so SIGKILL loses nothing acknowledged either.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::http::{HttpState, router};
use crate::node::Node;
use crate::seams::Seams;
use crate::settings::Settings;

/// How often the metrics recorder folds histogram samples into their buckets. It keeps every
/// sample until then (or until `/metrics` is scraped): without this, a node nobody scrapes
/// grows by ~20 bytes per request for ever. It bounds that memory to this much traffic.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Latency buckets in seconds, from 100 µs to 10 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const SIBLING_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 100.0];
/// Appends made durable by one fsync (group commit).
const FSYNC_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The process-wide metrics recorder (one node per process).
fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS_SECONDS)?
        .set_buckets_for_metric(
            Matcher::Full("ringkv_read_siblings".into()),
            SIBLING_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("ringkv_storage_fsync_batches".into()),
            FSYNC_BATCH_BUCKETS,
        )?
        .install_recorder()?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    for name in ZERO_FROM_START {
        metrics::counter!(*name).increment(0);
    }
    Ok(handle)
}

/// Runs `work` every `interval` (the first after one interval) until `shutdown`.
async fn every_until(interval: Duration, shutdown: CancellationToken, mut work: impl FnMut()) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => work(),
        }
    }
}

/// Counters `/metrics` shows from the start, at 0 until their first event (a counter is only
/// rendered once touched; a dashboard or alert on repairs must not see "no data" instead of 0).
const ZERO_FROM_START: &[&str] = &[
    "ringkv_anti_entropy_passes_total",
    "ringkv_anti_entropy_partitions_compared_total",
    "ringkv_anti_entropy_keys_repaired_total",
    "ringkv_anti_entropy_keys_skipped_total",
    "ringkv_read_repairs_total",
    "ringkv_read_speculations_total",
    "ringkv_replica_reads_total",
    "ringkv_replica_reads_not_home_total",
    "ringkv_forwarded_total",
    "ringkv_fallback_coordinated_total",
    "ringkv_hints_delivered_total",
    "ringkv_hints_refused_total",
    "ringkv_hint_deliveries_refused_total",
    "ringkv_handoff_bytes_received_total",
    "ringkv_handoff_bytes_sent_total",
    "ringkv_handoff_keys_dropped_total",
    "ringkv_handoff_forwarded_writes_total",
    "ringkv_unreadable_records_skipped_total",
    "ringkv_tombstones_purged_total",
    "ringkv_tombstone_purges_deferred_total",
    "ringkv_http_connections_refused_total",
    "ringkv_http_requests_refused_total",
    "ringkv_http_body_timeouts_total",
    "ringkv_http_deadline_overruns_total",
];

/// Runs a node until `shutdown` is cancelled, then stops it cleanly.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = metrics_handle()?;
    let seams = Seams::production();
    let listener = seams
        .network
        .bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind --listen {}: {e}", settings.listen))?;
    let resp_listener = match settings.resp {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot bind --resp {addr}: {e}"))?,
        ),
        None => None,
    };
    let http_listener = TcpListener::bind(settings.http)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind --http {}: {e}", settings.http))?;
    let limits = settings.limits.clone();
    let node = Node::start_with(settings, seams, shutdown.child_token()).await?;

    let transport = tokio::spawn(crate::transport::serve(
        listener,
        node.clone(),
        limits,
        node.shutdown.clone(),
    ));
    let background = tokio::spawn(node.clone().run_background());
    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(every_until(
            METRICS_UPKEEP_INTERVAL,
            node.shutdown.clone(),
            move || metrics.run_upkeep(),
        ))
    };
    let resp = resp_listener
        .map(|l| tokio::spawn(crate::resp::serve(l, node.clone(), node.shutdown.clone())));
    let app = router(HttpState {
        node: node.clone(),
        metrics,
    });
    info!(http = %node.settings().http, listen = %node.settings().listen, "serving");
    crate::http::serve(
        http_listener,
        app,
        &node.settings().limits,
        shutdown.clone(),
    )
    .await;

    info!("shutting down");
    node.shutdown.cancel();
    let _ = transport.await;
    let _ = background.await;
    let _ = upkeep.await;
    if let Some(resp) = resp {
        let _ = resp.await;
    }
    if let Err(e) = node.mark_clean_stop() {
        warn!(error = %e, "cannot record the clean stop; the next start takes a new epoch");
    }
    let node =
        Arc::try_unwrap(node).map_err(|_| anyhow::anyhow!("node still referenced at shutdown"));
    if let Ok(node) = node {
        node.close().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn upkeep_runs_every_interval_until_shutdown() {
        let runs = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(every_until(Duration::from_secs(5), shutdown.clone(), {
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "not before the first interval"
        );
        tokio::time::sleep(Duration::from_millis(10_200)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "once per interval");
        shutdown.cancel();
        task.await.expect("the loop ends on shutdown");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "nothing after shutdown");
    }
}
