//! The metric table out over OTLP: the same snapshots `/metrics` renders,
//! pushed to an OpenTelemetry Collector, a Datadog Agent or Datadog's OTLP
//! intake. One source of numbers: every request is built by iterating
//! [`crate::metrics::WORKSPACE_FAMILIES`] over `hub.snapshots()`; there are no
//! instruments updated anywhere else.
//!
//! Why not the OpenTelemetry SDK and `opentelemetry-otlp` (as read in
//! `opentelemetry_sdk` 0.33.1). Not for histograms: a synchronous SDK
//! histogram fed our raw observations would record them exactly. But:
//! - A batch cannot be made outside the SDK. `ResourceMetrics`,
//!   `ScopeMetrics`, `Metric`, `Sum` and the data points have `pub(crate)`
//!   fields and only getters (`metrics/data/mod.rs`); the one public
//!   constructor is `ResourceMetrics::default()`, empty, which only a
//!   reader's `collect` fills. Exporters take nothing else
//!   (`PushMetricExporter::export(&ResourceMetrics)`, `metrics/exporter.rs`).
//! - The start time belongs to a whole metric, not to a series:
//!   `Sum::start_time` and `Histogram::start_time` sit on the aggregation,
//!   the points have none (`data/mod.rs`), and in cumulative temporality it
//!   is the aggregator's creation time for good
//!   (`AggregateTimeInitiator::cumulative` reads it, never moves it,
//!   `internal/aggregate.rs`). So one workspace whose counts restarted cannot
//!   say so with a new start of its own series, as `batch` does.
//! - Observable counters in delta temporality subtract the last observed
//!   value (`PrecomputedSum::delta`, `internal/precomputed_sum.rs`:
//!   `value - reported`, unchecked). A reset is then not 0 but a negative
//!   delta on a monotonic sum (i64, f64), or for u64 an overflow: a panic
//!   with overflow checks (debug builds), a huge wrapped delta without.
//! - A failed delta export is dropped: `collect` drains the points and moves
//!   the delta start (`ValueMap::collect_and_reset` / `drain_and_reset`,
//!   `AggregateTimeInitiator::delta`),
//!   and the periodic reader only logs `PeriodicReader.ExportError`
//!   (`metrics/periodic_reader.rs`); "the SDK does not implement any retry
//!   logic" (`PushMetricExporter::export`). `batch` keeps the undelivered
//!   window and sends it with the next export instead.
//!
//! So the request is built from the official protobuf types of
//! `opentelemetry-proto` (the ones `opentelemetry-otlp` itself sends), and
//! sent with the tonic client that crate generates (gRPC) or reqwest
//! (HTTP/protobuf). Names, units, temporality and exponential histograms
//! follow the OpenTelemetry data model; see `batch`.
//!
//! A collector that is down or slow never stalls polling or `/metrics`: the
//! pusher is its own task, an export makes a few attempts with backoff within
//! one interval, and what it holds between exports is bounded by the series
//! count (see `batch`). How exports go shows on `/metrics` as
//! `clawmesh_otlp_*`. At shutdown the last numbers are pushed once more,
//! within `--otlp.timeout`.
//!
//! An export bigger than `--otlp.max-request-size` goes out as several
//! requests (`split`), each with its own attempts; a delivered part settles
//! its own series' deltas at once, so a part that failed is sent again with
//! the next export and a delivered one never is. A workspace's export counts
//! as succeeded only when every part with its points was delivered. A
//! collector's `Retry-After` (HTTP 429/503) or `RetryInfo` (gRPC) is
//! waited out, up to
//! `--otlp.max-retry-after`: within the export if it ends before the
//! export's deadline, else by skipping the exports due before then.

mod batch;
pub mod settings;
mod split;
mod transport;

#[cfg(test)]
mod tests;

pub use batch::{otel_name, Batch, Batcher, WORKSPACE_ATTRIBUTE};
pub use settings::{ClientIdentity, Compression, HistogramMode, OtlpConfig, Protocol, Temporality};
pub use transport::{encode, parse_retry_after, retry_info_details, SendError, Transport};

use crate::fleet::ExportHealth;
use crate::hub::Hub;
// The tests measure encoded sizes through `super::*`.
#[cfg(test)]
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Attempts per export (the first included) before it counts as failed.
const MAX_ATTEMPTS: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(200);

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `wait` from now. A collector's wait is capped by
/// `--otlp.max-retry-after` alone, which may be given as long as a
/// duration goes: past what an `Instant` holds it is 30 years (adding it
/// panicked, and did again at every export the collector answered so).
fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(86400 * 365 * 30))
}

/// A running pusher; [`Pusher::shutdown`] flushes the last numbers.
pub struct Pusher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Worker {
    cfg: OtlpConfig,
    hub: Arc<Hub>,
    transport: Transport,
    batcher: Batcher,
    health: BTreeMap<String, ExportHealth>,
    failures_in_a_row: u64,
    /// The collector asked (Retry-After) not to be sent to before then.
    not_before: Option<Instant>,
    /// A data point too big to send has been logged as an error (once; its
    /// workspace's exports keep counting failed).
    told_oversized: bool,
}

/// Start pushing the hub's snapshots every `cfg.interval`.
pub fn start(cfg: OtlpConfig, hub: Arc<Hub>) -> Result<Pusher, String> {
    let transport = Transport::new(&cfg)?;
    let batcher = Batcher::new(
        cfg.temporality,
        cfg.histogram,
        &cfg.resource,
        unix_nanos(SystemTime::now()),
    );
    let header_names: Vec<&str> = cfg.headers.iter().map(|(n, _)| n.as_str()).collect();
    tracing::info!(
        endpoint = %cfg.endpoint,
        protocol = ?cfg.protocol,
        interval = %humantime::format_duration(cfg.interval),
        temporality = ?cfg.temporality,
        histogram = ?cfg.histogram,
        compression = ?cfg.compression,
        client_certificate = cfg.client_identity.is_some(),
        headers = %header_names.join(","),
        service = %cfg.service_name(),
        "pushing metrics over OTLP"
    );
    let port_hint = match cfg.protocol {
        Protocol::Grpc if cfg.endpoint.contains(":4318") => {
            Some("4318 is the OTLP/HTTP port; use --otlp.protocol http/protobuf, or port 4317")
        }
        Protocol::HttpProtobuf if cfg.endpoint.contains(":4317") => {
            Some("4317 is the OTLP/gRPC port; use --otlp.protocol grpc, or port 4318")
        }
        _ => None,
    };
    if let Some(hint) = port_hint {
        tracing::warn!(endpoint = %cfg.endpoint, "{hint}");
    }
    // OTLP is on: the health series show (zeros) before the first export.
    hub.set_otlp_health(BTreeMap::new());
    let (stop, stop_rx) = watch::channel(false);
    let worker = Worker {
        cfg,
        hub,
        transport,
        batcher,
        health: BTreeMap::new(),
        failures_in_a_row: 0,
        not_before: None,
        told_oversized: false,
    };
    let task = tokio::spawn(worker.run(stop_rx));
    Ok(Pusher { stop, task })
}

impl Pusher {
    /// Push the newest numbers once more (within `--otlp.timeout`) and stop.
    /// Call it after the poll loops have stopped, so nothing newer can come.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Worker {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut ticker =
            tokio::time::interval_at(Instant::now() + self.cfg.interval, self.cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let deadline = Instant::now() + self.cfg.interval.max(self.cfg.timeout);
            let hub = self.hub.clone();
            tokio::select! {
                // A panic in an export is caught, counted and logged; the
                // next tick exports again (the ticker is the pause).
                r = crate::supervise::guard(self.export(deadline, false)) => if let Err(c) = r {
                    hub.count_restart("otlp_pusher");
                    crate::supervise::report("otlp_pusher", "", &c, self.cfg.interval);
                },
                // An export in flight is abandoned (undelivered, so its
                // numbers go out with the flush below).
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let deadline = Instant::now() + self.cfg.timeout;
        match tokio::time::timeout_at(
            deadline,
            crate::supervise::guard(self.export(deadline, true)),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(c)) => {
                self.hub.count_restart("otlp_pusher");
                crate::supervise::report("otlp_pusher", "", &c, Duration::ZERO);
            }
            Err(_) => {
                tracing::warn!(endpoint = %self.cfg.endpoint, "the last OTLP export did not finish before --otlp.timeout; stopping anyway")
            }
        }
    }

    /// One export of the newest snapshots, in parts of at most
    /// `--otlp.max-request-size`, each with a few attempts until `deadline`.
    /// `last`: the flush at shutdown, sent even while the collector asked
    /// to wait (the numbers would be lost otherwise).
    async fn export(&mut self, deadline: Instant, last: bool) {
        if let Some(at) = self.not_before {
            if Instant::now() < at && !last {
                tracing::debug!(
                    wait = %humantime::format_duration(at - Instant::now()),
                    "OTLP export skipped: the collector asked to wait (Retry-After)"
                );
                return;
            }
            self.not_before = None;
        }
        let snaps = self.hub.snapshots();
        if snaps.is_empty() {
            return;
        }
        let batch = self
            .batcher
            .build(&self.hub.process(), &snaps, unix_nanos(SystemTime::now()));
        let built_ns = batch.built_ns;
        let (parts, oversized) = split::split(batch.request, batch.tags, self.cfg.max_request_size);
        // Points per workspace that were not delivered by this export.
        let mut undelivered: BTreeMap<String, u64> = BTreeMap::new();
        for o in &oversized {
            *undelivered.entry(o.tag.workspace.clone()).or_default() += 1;
        }
        if let Some(o) = oversized.first().filter(|_| !self.told_oversized) {
            self.told_oversized = true;
            tracing::error!(
                metric = %o.metric,
                workspace = %o.tag.workspace,
                bytes = o.size,
                limit = self.cfg.max_request_size,
                points = oversized.len(),
                "an OTLP data point is larger than --otlp.max-request-size by itself and cannot be sent; raise the limit (said once; its workspace's exports count as failed meanwhile)"
            );
        }
        let mut error: Option<SendError> = None;
        let (mut attempts, mut bytes, mut sent_points) = (0, 0, 0);
        let mut stopped = false;
        let part_count = parts.len();
        for part in parts {
            if stopped {
                for t in &part.tags {
                    *undelivered.entry(t.workspace.clone()).or_default() += 1;
                }
                continue;
            }
            let body = self.transport.body(&part.request);
            let (result, n) = self.send_part(&part.request, &body, deadline).await;
            attempts += n;
            match result {
                Ok(accepted) => {
                    self.batcher.delivered_part(
                        part.tags.iter().filter_map(|t| t.series.as_ref()),
                        built_ns,
                    );
                    if accepted.rejected_points > 0 {
                        tracing::warn!(rejected = accepted.rejected_points, message = %accepted.message, "the OTLP receiver dropped some data points");
                    }
                    bytes += body.len();
                    sent_points += part.tags.len();
                }
                Err(e) => {
                    for t in &part.tags {
                        *undelivered.entry(t.workspace.clone()).or_default() += 1;
                    }
                    // A collector that is away or asked to wait would fail
                    // the next parts too; a refused part (bad request) may
                    // be that part alone.
                    if let SendError::Retryable { retry_after, .. } = &e {
                        stopped = true;
                        if let Some(after) = retry_after {
                            let after = (*after).min(self.cfg.max_retry_after);
                            self.not_before = Some(later(after));
                        }
                    }
                    error.get_or_insert(e);
                }
            }
        }
        let delivered_all = error.is_none() && oversized.is_empty();
        if delivered_all {
            self.batcher.delivered(built_ns);
        }
        let now = SystemTime::now();
        match error {
            None => {
                if self.failures_in_a_row > 0 {
                    tracing::info!(endpoint = %self.cfg.endpoint, failed_before = self.failures_in_a_row, "OTLP exports succeed again");
                    self.failures_in_a_row = 0;
                }
                tracing::debug!(
                    points = sent_points,
                    bytes,
                    requests = part_count,
                    attempts,
                    "OTLP export delivered"
                );
            }
            Some(e) => {
                let hint = match &e {
                    SendError::Permanent(_) => {
                        " (not retried: check the endpoint, protocol and headers)"
                    }
                    SendError::Retryable { .. } => "; the numbers go out with the next export",
                };
                let wait = self
                    .not_before
                    .map(|at| {
                        humantime::format_duration(at.saturating_duration_since(Instant::now()))
                            .to_string()
                    })
                    .unwrap_or_default();
                // A long outage says so now and then, not every interval.
                self.failures_in_a_row += 1;
                let n = self.failures_in_a_row;
                let undelivered_requests = part_count;
                if n == 1 || n % 10 == 0 || !wait.is_empty() {
                    tracing::warn!(endpoint = %self.cfg.endpoint, attempts, requests = undelivered_requests, failures_in_a_row = n, retry_after = %wait, error = %e, "OTLP export failed{hint}");
                } else {
                    tracing::debug!(endpoint = %self.cfg.endpoint, attempts, requests = undelivered_requests, failures_in_a_row = n, error = %e, "OTLP export failed{hint}");
                }
            }
        }
        let t = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        for ws in batch.points.keys() {
            let h = self.health.entry(ws.clone()).or_default();
            match undelivered.get(ws) {
                None | Some(0) => {
                    h.succeeded += 1;
                    h.last_success = Some(t);
                    h.pending_points = 0;
                }
                Some(n) => {
                    h.failed += 1;
                    h.pending_points = *n;
                }
            }
        }
        self.hub.set_otlp_health(self.health.clone());
    }

    /// One request with its attempts until `deadline`; and how many attempts.
    /// A collector's Retry-After replaces the backoff when it ends in time.
    async fn send_part(
        &mut self,
        request: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
        body: &bytes::Bytes,
        deadline: Instant,
    ) -> (Result<transport::Accepted, SendError>, u32) {
        let mut attempt = 1;
        loop {
            let result =
                match tokio::time::timeout_at(deadline, self.transport.send(request, body)).await {
                    Ok(r) => r,
                    Err(_) => Err(SendError::retryable(
                        "no answer before the export's deadline",
                    )),
                };
            match result {
                Err(SendError::Retryable {
                    message,
                    retry_after,
                }) if attempt < MAX_ATTEMPTS => {
                    let wait = match retry_after {
                        Some(after) => after.min(self.cfg.max_retry_after),
                        None => {
                            let backoff = BACKOFF_BASE * 2u32.pow(attempt - 1);
                            backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0)
                        }
                    };
                    if later(wait) >= deadline {
                        return (
                            Err(SendError::Retryable {
                                message,
                                retry_after,
                            }),
                            attempt,
                        );
                    }
                    tracing::debug!(attempt, error = %message, wait = %humantime::format_duration(wait), "OTLP request failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return (other, attempt),
            }
        }
    }
}
