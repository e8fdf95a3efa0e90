//! OTLP push against a real receiver built from the official
//! `opentelemetry-proto` definitions: a tonic gRPC `MetricsService` and an
//! HTTP/protobuf endpoint at `/v1/metrics`. What arrives must equal what
//! /metrics shows at the same sync, series by series. The receiver also
//! decodes gzip, and serves TLS requiring a client certificate.

use crate::util::*;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use clawmesh_exporter::metrics::{Kind, PROCESS_FAMILIES, WORKSPACE_FAMILIES};
use clawmesh_exporter::otlp::{otel_name, WORKSPACE_ATTRIBUTE};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality,
};
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

// ---------------------------------------------------------------- receiver

/// One request as the receiver got it.
#[derive(Clone)]
struct Got {
    request: ExportMetricsServiceRequest,
    headers: Vec<(String, String)>,
}

const NORMAL: u8 = 0;
/// Answer 403 and echo the request headers in the body, as a careless collector might.
const REJECT_ECHOING: u8 = 1;
/// Answer only after 5 s: a collector that is up but too slow.
const SLOW: u8 = 2;
/// Answer 429 with `Retry-After: 3` once, then as NORMAL.
const RETRY_AFTER_ONCE: u8 = 3;
/// Answer 503 to three requests in every seven (a part refused through
/// all its attempts now and then); accept the rest.
const REFUSE_SOME: u8 = 4;
/// Take no request in three of every seven: hang past the exporter's
/// deadline (no answer), then drop it unrecorded; accept the rest.
const HANG_SOME: u8 = 5;

#[derive(Clone, Default)]
struct Store {
    got: Arc<Mutex<Vec<Got>>>,
    arrived: Arc<Notify>,
    mode: Arc<AtomicU8>,
    /// When each accepted request arrived, in step with `got`.
    arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
    /// When each refused request (429/503 by mode) arrived.
    refusals: Arc<Mutex<Vec<std::time::Instant>>>,
    /// Requests seen over HTTP, refused or not.
    seen: Arc<std::sync::atomic::AtomicUsize>,
}

impl Store {
    fn push(&self, request: ExportMetricsServiceRequest, headers: &HeaderMap) {
        let headers = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut got = self.got.lock().unwrap();
        got.push(Got { request, headers });
        self.arrivals
            .lock()
            .unwrap()
            .push(std::time::Instant::now());
        drop(got);
        self.arrived.notify_waiters();
    }
    fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }
    /// Wait until the exports carry finished tasks: the fleet is flowing.
    async fn wait_for_finished_tasks(&self) {
        wait_for(
            Duration::from_secs(30),
            "finished tasks to reach OTLP",
            || async {
                otlp_view(&self.all())
                    .iter()
                    .any(|(k, v)| k.starts_with("clawmesh_tasks_finished_total{") && *v > 0.0)
            },
        )
        .await;
    }

    /// Wait for the next request to arrive; true if one did in time.
    async fn next(&self, limit: Duration) -> bool {
        let before = self.len();
        let arrived = self.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if self.len() > before {
            return true;
        }
        tokio::time::timeout(limit, arrived).await.is_ok()
    }
}

#[tonic::async_trait]
impl MetricsService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if self.mode.load(Ordering::SeqCst) == RETRY_AFTER_ONCE {
            // UNAVAILABLE with a RetryInfo of 3 s, as the OTLP specification has it.
            self.mode.store(NORMAL, Ordering::SeqCst);
            self.refusals
                .lock()
                .unwrap()
                .push(std::time::Instant::now());
            return Err(tonic::Status::with_details(
                tonic::Code::Unavailable,
                "busy",
                clawmesh_exporter::otlp::retry_info_details(Duration::from_secs(3)).into(),
            ));
        }
        let headers = request.metadata().clone().into_headers();
        self.push(request.into_inner(), &headers);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn http_export(
    axum::extract::State(store): axum::extract::State<Store>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ct = [("content-type", "application/x-protobuf")];
    let n = store.seen.fetch_add(1, Ordering::SeqCst);
    match store.mode.load(Ordering::SeqCst) {
        RETRY_AFTER_ONCE => {
            store.mode.store(NORMAL, Ordering::SeqCst);
            store
                .refusals
                .lock()
                .unwrap()
                .push(std::time::Instant::now());
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "3")],
                "slow down",
            )
                .into_response();
        }
        REFUSE_SOME if (2..=4).contains(&(n % 7)) => {
            store
                .refusals
                .lock()
                .unwrap()
                .push(std::time::Instant::now());
            return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
        }
        HANG_SOME if (2..=4).contains(&(n % 7)) => {
            store
                .refusals
                .lock()
                .unwrap()
                .push(std::time::Instant::now());
            tokio::time::sleep(Duration::from_secs(5)).await;
            return (StatusCode::SERVICE_UNAVAILABLE, ct, Vec::new()).into_response();
        }
        REJECT_ECHOING => {
            let echo: Vec<String> = headers
                .iter()
                .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            return (
                StatusCode::FORBIDDEN,
                ct,
                format!("bad key; you sent {}", echo.join(" ")).into_bytes(),
            )
                .into_response();
        }
        SLOW => {
            // Too late: the exporter has given up on this one already.
            tokio::time::sleep(Duration::from_secs(5)).await;
            return (StatusCode::SERVICE_UNAVAILABLE, ct, Vec::new()).into_response();
        }
        _ => {}
    }
    let body = if headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip")
    {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut raw)
            .expect("a valid gzip body");
        Bytes::from(raw)
    } else {
        body
    };
    let request = ExportMetricsServiceRequest::decode(body).expect("a valid OTLP protobuf body");
    store.push(request, &headers);
    (
        StatusCode::OK,
        ct,
        ExportMetricsServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

/// The gRPC receiver; it takes gzip-compressed messages too.
fn grpc_service(store: Store) -> MetricsServiceServer<Store> {
    MetricsServiceServer::new(store).accept_compressed(tonic::codec::CompressionEncoding::Gzip)
}

fn http_app(store: Store) -> axum::Router {
    axum::Router::new()
        .route("/v1/metrics", axum::routing::post(http_export))
        .with_state(store)
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Wire {
    Grpc,
    Http,
}

pub(crate) struct Receiver {
    addr: SocketAddr,
    store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub(crate) async fn start(wire: Wire) -> Receiver {
        // A port outside the ephemeral range: `restart` binds it again.
        let port = crate::util::free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Receiver::serve(wire, listener, Store::default())
    }

    fn serve(wire: Wire, listener: tokio::net::TcpListener, store: Store) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let s = store.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stop_rx.await;
            };
            match wire {
                Wire::Grpc => tonic::transport::Server::builder()
                    .serve_with_incoming_shutdown(
                        grpc_service(s),
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        shutdown,
                    )
                    .await
                    .unwrap(),
                Wire::Http => axum::serve(listener, http_app(s))
                    .with_graceful_shutdown(shutdown)
                    .await
                    .unwrap(),
            }
        });
        Receiver {
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serve `wire` over TLS with `tls` (which may require a client
    /// certificate): the same services, behind a rustls accept loop.
    async fn start_tls(wire: Wire, tls: rustls::ServerConfig) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Store::default();
        let app = match wire {
            Wire::Grpc => axum::Router::new().route_service(
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                grpc_service(store.clone()),
            ),
            Wire::Http => http_app(store.clone()),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => r.unwrap().0,
                    _ = &mut stop_rx => return,
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client without a certificate fails here (or right after, in TLS 1.3).
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: axum::http::Request<hyper::body::Incoming>| {
                            tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Receiver {
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stop serving; the port is closed until [`Receiver::restart`].
    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    async fn restart(&mut self, wire: Wire) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let again = Receiver::serve(wire, listener, self.store.clone());
        *self = again;
    }
}

// ---------------------------------------------------------------- comparing

/// A series as a comparable key: Prometheus name and sorted labels.
fn key(name: &str, mut labels: Vec<(String, String)>) -> String {
    labels.sort();
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// Parse `name{a="x",le="+Inf"}` as /metrics renders it into a [`key`];
/// `le` is normalised through f64 so both sides print it alike.
fn prom_key(series: &str) -> String {
    let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
    let mut labels = Vec::new();
    let mut rest = rest.trim_end_matches('}');
    while let Some((k, v)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = v.char_indices();
        let mut end = v.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n)
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        let k = k.trim_start_matches(',').to_string();
        if k == "le" {
            value = format!("{}", value.parse::<f64>().unwrap());
        }
        labels.push((k, value));
        rest = &v[end..];
    }
    key(name, labels)
}

fn attrs(a: &[KeyValue]) -> Vec<(String, String)> {
    a.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("attribute {} is not a string: {other:?}", kv.key),
            };
            // The workspace travels as a namespaced attribute; the
            // provider, model and token type under the GenAI names.
            let k = match kv.key.as_str() {
                k if k == WORKSPACE_ATTRIBUTE => "workspace".to_string(),
                "gen_ai.provider.name" => "provider".to_string(),
                "gen_ai.request.model" => "model".to_string(),
                "gen_ai.token.type" => "kind".to_string(),
                _ => kv.key.clone(),
            };
            (k, v)
        })
        .collect()
}

/// Fold received requests into Prometheus-shaped series: gauges take the
/// newest value, sums and histograms the newest (cumulative) or the sum of
/// all (delta). Explicit histograms become `_bucket`/`_sum`/`_count`;
/// exponential ones `_sum`/`_count` (their buckets are checked for their
/// total only, as /metrics has no such buckets).
fn fold(requests: &[ExportMetricsServiceRequest]) -> BTreeMap<String, f64> {
    let prom: BTreeMap<String, (&str, Kind)> = WORKSPACE_FAMILIES
        .iter()
        .map(|f| (otel_name(f), (f.name, f.kind)))
        .chain(
            PROCESS_FAMILIES
                .iter()
                .map(|f| (otel_name(f), (f.name, f.kind))),
        )
        .collect();
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for r in requests {
        for rm in &r.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let (name, kind) = prom[&m.name];
                    let mut put =
                        |n: String, labels: Vec<(String, String)>, v: f64, delta: bool| {
                            let slot = out.entry(key(&n, labels)).or_insert(0.0);
                            *slot = if delta { *slot + v } else { v };
                        };
                    let delta_of = |t: i32| t == AggregationTemporality::Delta as i32;
                    match m.data.as_ref().unwrap() {
                        Data::Gauge(g) => {
                            assert_eq!(kind, Kind::Gauge, "{}", m.name);
                            for p in &g.data_points {
                                put(name.into(), attrs(&p.attributes), number(&p.value), false);
                            }
                        }
                        Data::Sum(s) => {
                            assert!(kind == Kind::Counter && s.is_monotonic, "{}", m.name);
                            for p in &s.data_points {
                                put(
                                    name.into(),
                                    attrs(&p.attributes),
                                    number(&p.value),
                                    delta_of(s.aggregation_temporality),
                                );
                            }
                        }
                        Data::Histogram(h) => {
                            let d = delta_of(h.aggregation_temporality);
                            for p in &h.data_points {
                                let a = attrs(&p.attributes);
                                put(format!("{name}_count"), a.clone(), p.count as f64, d);
                                put(format!("{name}_sum"), a.clone(), p.sum.unwrap(), d);
                                let mut acc = 0;
                                for (i, n) in p.bucket_counts.iter().enumerate() {
                                    acc += n;
                                    let le =
                                        p.explicit_bounds.get(i).copied().unwrap_or(f64::INFINITY);
                                    let mut l = a.clone();
                                    l.push(("le".into(), format!("{le}")));
                                    put(format!("{name}_bucket"), l, acc as f64, d);
                                }
                            }
                        }
                        Data::ExponentialHistogram(h) => {
                            let d = delta_of(h.aggregation_temporality);
                            for p in &h.data_points {
                                let total = p.zero_count
                                    + p.positive
                                        .as_ref()
                                        .map_or(0, |b| b.bucket_counts.iter().sum())
                                    + p.negative
                                        .as_ref()
                                        .map_or(0, |b| b.bucket_counts.iter().sum());
                                assert_eq!(
                                    total, p.count,
                                    "{}: buckets hold every observation",
                                    m.name
                                );
                                let a = attrs(&p.attributes);
                                put(format!("{name}_count"), a.clone(), p.count as f64, d);
                                put(format!("{name}_sum"), a, p.sum.unwrap(), d);
                            }
                        }
                        Data::Summary(_) => panic!("no summaries are sent"),
                    }
                }
            }
        }
    }
    out
}

/// Data points in a request, as the exporter counts them.
fn count_points(r: &ExportMetricsServiceRequest) -> usize {
    r.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| match m.data.as_ref().unwrap() {
            Data::Gauge(g) => g.data_points.len(),
            Data::Sum(s) => s.data_points.len(),
            Data::Histogram(h) => h.data_points.len(),
            Data::ExponentialHistogram(h) => h.data_points.len(),
            Data::Summary(s) => s.data_points.len(),
        })
        .sum()
}

fn number(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => panic!("a number point without a value"),
    }
}

/// /metrics as comparable series, the OTLP health series left out: they
/// describe the export itself and change when it completes.
fn prom_view(text: &str, exponential: bool) -> BTreeMap<String, f64> {
    parse(text)
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("clawmesh_")
                && !k.starts_with("clawmesh_otlp_")
                && !k.starts_with("clawmesh_exporter_build_info")
        })
        .filter(|(k, _)| !(exponential && k.contains("_bucket{")))
        .map(|(k, v)| (prom_key(&k), v))
        .collect()
}

fn otlp_view(got: &[Got]) -> BTreeMap<String, f64> {
    let requests: Vec<ExportMetricsServiceRequest> =
        got.iter().map(|g| g.request.clone()).collect();
    fold(&requests)
        .into_iter()
        // The process's CPU, memory and descriptors move between the
        // export and the scrape: `assert_process_resources` checks them.
        .filter(|(k, _)| !k.starts_with("clawmesh_otlp_") && !k.starts_with("process_"))
        .collect()
}

/// The process's resources arrived, under the semantic conventions'
/// names, with sane numbers that agree with /metrics: CPU time counting
/// from the process's start, resident memory past 1 MiB, descriptors
/// between 3 and their limit, the same start.
fn assert_process_resources(got: &[Got], metrics: &BTreeMap<String, f64>, temporality: &str) {
    let last = &got.last().unwrap().request;
    let all = &last.resource_metrics[0].scope_metrics[0].metrics;
    let find = |name: &str| {
        all.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in the last export"))
    };
    let gauge = |name: &str| match find(name).data.as_ref().unwrap() {
        Data::Gauge(g) => number(&g.data_points[0].value),
        other => panic!("{name} is not a Gauge: {other:?}"),
    };
    let start = must(metrics, "process_start_time_seconds", &[]);
    assert_eq!(gauge("clawmesh.exporter.start.timestamp"), start);
    let Some(Data::Sum(cpu)) = &find("process.cpu.time").data else {
        panic!("process.cpu.time is not a Sum")
    };
    assert!(cpu.is_monotonic);
    let p = &cpu.data_points[0];
    assert!(number(&p.value) >= 0.0, "{p:?}");
    if temporality == "cumulative" {
        assert!(
            (p.start_time_unix_nano as f64 / 1e9 - start).abs() < 1e-3,
            "process.cpu.time starts at {}, the process at {start}",
            p.start_time_unix_nano
        );
        // No more CPU than /metrics showed after it.
        assert!(number(&p.value) <= must(metrics, "process_cpu_seconds_total", &[]));
    } else {
        // Each delta counts from the end of the one before, from the
        // process's start, never negative: their sum is the CPU time at the
        // last export, no more than /metrics showed after it (a double
        // count would pass it as the exports go on).
        let points: Vec<_> = got
            .iter()
            .flat_map(|g| &g.request.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == "process.cpu.time")
            .flat_map(|m| match &m.data {
                Some(Data::Sum(s)) => s.data_points.clone(),
                other => panic!("process.cpu.time is not a Sum: {other:?}"),
            })
            .collect();
        assert!(points.len() >= 2, "{points:?}");
        assert!(
            (points[0].start_time_unix_nano as f64 / 1e9 - start).abs() < 1e-3,
            "the first delta starts at {}, the process at {start}",
            points[0].start_time_unix_nano
        );
        for w in points.windows(2) {
            assert_eq!(w[1].start_time_unix_nano, w[0].time_unix_nano, "{w:?}");
        }
        assert!(points.iter().all(|p| number(&p.value) >= 0.0), "{points:?}");
        let sum: f64 = points.iter().map(|p| number(&p.value)).sum();
        let shown = must(metrics, "process_cpu_seconds_total", &[]);
        assert!(
            sum <= shown + 1e-6,
            "deltas sum to {sum}, /metrics shows {shown}"
        );
    }
    let rss = gauge("process.memory.usage");
    assert!(rss > 1024.0 * 1024.0, "resident {rss}");
    assert!(gauge("process.memory.virtual") >= rss);
    let (open, max) = (
        gauge("process.unix.file_descriptor.count"),
        gauge("clawmesh.exporter.file_descriptor.limit"),
    );
    assert!(open >= 3.0 && open <= max, "open {open}, limit {max}");
    assert_eq!(max, must(metrics, "process_max_fds", &[]));
}

fn same(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> Result<(), String> {
    let mut diffs = Vec::new();
    for k in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if (x - y).abs() <= 1e-9 * x.abs().max(1.0) => {}
            (x, y) => diffs.push(format!("{k}: /metrics {x:?}, OTLP {y:?}")),
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("\n"))
    }
}

/// With the simulator paused and the exporter converged: wait for exports
/// and compare each with a scrape taken right after it, until one pair
/// belongs to the same sync (the poll loops keep syncing, and every sync
/// moves the API counters). Returns the number of series compared.
async fn assert_same_sync(
    exporter: &clawmesh_exporter::exporter::Running,
    store: &Store,
    exponential: bool,
) -> usize {
    let mut last = String::new();
    for _ in 0..40 {
        assert!(
            store.next(Duration::from_secs(10)).await,
            "no OTLP export arrived"
        );
        let prom = prom_view(&scrape(exporter.addr).await, exponential);
        let otlp = otlp_view(&store.all());
        match same(&prom, &otlp) {
            Ok(()) => {
                let floor = if exponential { 30 } else { 60 };
                assert!(
                    prom.len() > floor,
                    "too few series to mean much: {}",
                    prom.len()
                );
                return prom.len();
            }
            Err(d) => last = d,
        }
    }
    panic!("no export matched /metrics at the same sync; last differences:\n{last}");
}

pub(crate) fn otlp_args<'a>(
    receiver: &'a str,
    wire: Wire,
    temporality: &'a str,
    histogram: &'a str,
    interval: &'a str,
    timeout: &'a str,
) -> Vec<&'a str> {
    vec![
        "--otlp.endpoint",
        receiver,
        "--otlp.protocol",
        if wire == Wire::Grpc {
            "grpc"
        } else {
            "http/protobuf"
        },
        "--otlp.interval",
        interval,
        "--otlp.timeout",
        timeout,
        "--otlp.temporality",
        temporality,
        "--otlp.histogram",
        histogram,
    ]
}

async fn pushes_what_metrics_shows(
    wire: Wire,
    temporality: &str,
    histogram: &str,
    compression: &str,
    seed: u64,
) {
    let sim = Sim::start(busy_fleet(seed)).await;
    let mut receiver = Receiver::start(wire).await;
    let endpoint = receiver.endpoint();
    let mut args = otlp_args(&endpoint, wire, temporality, histogram, "250ms", "2s");
    args.extend(["--otlp.compression", compression]);
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    receiver.store.wait_for_finished_tasks().await;
    converge(&sim, &exporter).await;
    let compared = assert_same_sync(&exporter, &receiver.store, histogram == "exponential").await;
    eprintln!("{wire:?} {temporality} {histogram} {compression}: {compared} series equal");

    let got = receiver.store.all();
    assert_process_resources(&got, &parse(&scrape(exporter.addr).await), temporality);
    // Every request came encoded as asked (and decoded to the numbers above).
    let header = match wire {
        Wire::Grpc => "grpc-encoding",
        Wire::Http => "content-encoding",
    };
    for g in &got {
        let encoding = g
            .headers
            .iter()
            .find(|(k, _)| k == header)
            .map(|(_, v)| v.as_str());
        match compression {
            "gzip" => assert_eq!(encoding, Some("gzip"), "{wire:?}: {:?}", g.headers),
            _ => assert!(
                encoding.is_none_or(|e| e == "identity"),
                "{wire:?}: {:?}",
                g.headers
            ),
        }
    }
    // The resource is the exporter process.
    let resource = attrs(
        &got[0].request.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes,
    );
    let r: BTreeMap<_, _> = resource.into_iter().collect();
    assert_eq!(r["service.name"], "clawmesh-exporter");
    assert_eq!(r["service.version"], clawmesh_exporter::metrics::version());
    assert_eq!(r["service.instance.id"].len(), 36);
    if temporality == "delta" {
        assert_delta_windows_are_contiguous(&got);
    }
    // Every export was delivered, and /metrics says so.
    let n = got.len() as f64;
    wait_for(
        Duration::from_secs(10),
        "/metrics to count the exports",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(&m, "clawmesh_otlp_exports_total", &[("result", "success")])
                .is_some_and(|v| v >= n)
        },
    )
    .await;
    let m = parse(&scrape(exporter.addr).await);
    assert_eq!(
        must(&m, "clawmesh_otlp_exports_total", &[("result", "failure")]),
        0.0
    );
    assert_eq!(must(&m, "clawmesh_otlp_pending_data_points", &[]), 0.0);
    exporter.shutdown().await;
    receiver.stop().await;
}

/// Delta points of a series cover back-to-back windows: each starts where
/// the previous delivered one ended, so nothing is counted twice or lost.
fn assert_delta_windows_are_contiguous(got: &[Got]) {
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    for g in got {
        for m in &g.request.resource_metrics[0].scope_metrics[0].metrics {
            if let Some(Data::Sum(s)) = &m.data {
                for p in &s.data_points {
                    let k = format!("{}{:?}", m.name, attrs(&p.attributes));
                    if let Some(prev) = ends.get(&k) {
                        assert_eq!(p.start_time_unix_nano, *prev, "{k}: a gap or an overlap");
                    }
                    assert!(p.time_unix_nano > p.start_time_unix_nano);
                    ends.insert(k, p.time_unix_nano);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_cumulative_equals_metrics() {
    pushes_what_metrics_shows(Wire::Grpc, "cumulative", "explicit", "none", 61).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_cumulative_equals_metrics() {
    pushes_what_metrics_shows(Wire::Http, "cumulative", "explicit", "none", 62).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delta_sums_to_metrics() {
    pushes_what_metrics_shows(Wire::Http, "delta", "explicit", "none", 63).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_delta_exponential_sums_to_metrics() {
    pushes_what_metrics_shows(Wire::Grpc, "delta", "exponential", "none", 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_equals_metrics() {
    pushes_what_metrics_shows(Wire::Grpc, "cumulative", "explicit", "gzip", 68).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gzip_delta_sums_to_metrics() {
    pushes_what_metrics_shows(Wire::Http, "delta", "explicit", "gzip", 69).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_or_slow_stalls_nothing_and_recovery_is_exact() {
    let sim = Sim::start(busy_fleet(65)).await;
    let mut receiver = Receiver::start(Wire::Http).await;
    let endpoint = receiver.endpoint();
    let args = otlp_args(
        &endpoint,
        Wire::Http,
        "cumulative",
        "explicit",
        "200ms",
        "300ms",
    );
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    receiver.store.wait_for_finished_tasks().await;

    let health = |m: &BTreeMap<String, f64>| {
        (
            value(m, "clawmesh_otlp_exports_total", &[("result", "failure")]).unwrap_or(0.0),
            value(m, "clawmesh_otlp_pending_data_points", &[]).unwrap_or(0.0),
        )
    };
    // Down, then up but too slow: failures are counted, the held points stay
    // one export's worth, and polling and /metrics go on meanwhile.
    receiver.stop().await;
    let most_pending = std::cell::Cell::new(0.0_f64);
    for (phase, failures_wanted) in [("down", 6.0), ("slow", 10.0)] {
        if phase == "slow" {
            receiver.restart(Wire::Http).await;
            receiver.store.mode.store(SLOW, Ordering::SeqCst);
        }
        let synced_before = must(
            &parse(&scrape(exporter.addr).await),
            "clawmesh_last_sync_timestamp_seconds",
            &[("resource", "tasks")],
        );
        wait_for(
            Duration::from_secs(30),
            &format!("{failures_wanted} failed exports ({phase})"),
            || async {
                // /metrics never waits on the collector: a scrape held by
                // the hung collector itself would take its hang (5 s; the
                // exports are cut at 300 ms). Loose for a loaded machine,
                // which can stall a scrape for a second.
                let started = std::time::Instant::now();
                let m = parse(&scrape(exporter.addr).await);
                assert!(
                    started.elapsed() < Duration::from_secs(4),
                    "a scrape took {:?} while the collector was {phase}",
                    started.elapsed()
                );
                let (failures, pending) = health(&m);
                most_pending.set(most_pending.get().max(pending));
                failures >= failures_wanted
            },
        )
        .await;
        // The collector is still {phase}: a sync completes meanwhile (the
        // failures above add up faster than a sync round, so this waits).
        wait_for(
            Duration::from_secs(30),
            &format!("a sync while the collector was {phase}: polling stalled"),
            || async {
                must(
                    &parse(&scrape(exporter.addr).await),
                    "clawmesh_last_sync_timestamp_seconds",
                    &[("resource", "tasks")],
                ) > synced_before
            },
        )
        .await;
    }
    // Back to normal: cumulative values are right again at once.
    receiver.store.mode.store(NORMAL, Ordering::SeqCst);
    converge(&sim, &exporter).await;
    assert_same_sync(&exporter, &receiver.store, false).await;
    // While away, what was held never exceeded one export's points, however
    // many exports failed.
    let most_pending = most_pending.get();
    let one_export = receiver
        .store
        .all()
        .iter()
        .map(|g| count_points(&g.request))
        .max()
        .unwrap() as f64;
    assert!(
        most_pending > 0.0,
        "failed exports should leave points pending"
    );
    assert!(
        most_pending <= one_export,
        "pending points {most_pending} grew past one export ({one_export})"
    );
    wait_for(
        Duration::from_secs(10),
        "/metrics to show the recovery",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            health(&m).1 == 0.0
                && value(&m, "clawmesh_otlp_last_success_timestamp_seconds", &[]).is_some()
        },
    )
    .await;
    exporter.shutdown().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_last_numbers() {
    let sim = Sim::start(busy_fleet(66)).await;
    let mut receiver = Receiver::start(Wire::Grpc).await;
    let endpoint = receiver.endpoint();
    // No periodic export within the test: the flush is the only one.
    let args = otlp_args(&endpoint, Wire::Grpc, "delta", "explicit", "1h", "5s");
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    wait_for(
        Duration::from_secs(30),
        "a finished task on /metrics",
        || async {
            value(
                &parse(&scrape(exporter.addr).await),
                "clawmesh_tasks_finished_total",
                &[("status", "completed")],
            )
            .is_some_and(|v| v > 0.0)
        },
    )
    .await;
    let m = converge(&sim, &exporter).await;
    assert_eq!(receiver.store.len(), 0);
    exporter.shutdown().await;
    let got = receiver.store.all();
    assert_eq!(got.len(), 1, "exactly one export: the flush at shutdown");
    let sent = otlp_view(&got);
    for (k, v) in &m {
        if k.starts_with("clawmesh_tasks_finished_total{")
            || k.starts_with("clawmesh_task_tokens_total{")
            || k.starts_with("clawmesh_agents{")
        {
            assert_eq!(sent.get(&prom_key(k)), Some(v), "{k}");
        }
    }
    receiver.stop().await;
}

// ---------------------------------------------------------------- big exports

/// The export a request belongs to: every point of an export carries the
/// time it was built.
fn built_at(r: &ExportMetricsServiceRequest) -> u64 {
    let m = &r.resource_metrics[0].scope_metrics[0].metrics[0];
    match m.data.as_ref().unwrap() {
        Data::Gauge(g) => g.data_points[0].time_unix_nano,
        Data::Sum(s) => s.data_points[0].time_unix_nano,
        Data::Histogram(h) => h.data_points[0].time_unix_nano,
        Data::ExponentialHistogram(h) => h.data_points[0].time_unix_nano,
        Data::Summary(s) => s.data_points[0].time_unix_nano,
    }
}

/// With a small --otlp.max-request-size every export goes out as several
/// requests, none over the limit, whose union is what /metrics shows (a
/// Collector's 4 MiB gRPC limit refused a 7.9 MB export of a big breakdown
/// fleet before).
async fn split_requests_fit_the_limit_and_add_up(
    wire: Wire,
    temporality: &str,
    extra: &[&str],
    seed: u64,
) {
    const LIMIT: usize = 4 << 10;
    let sim = Sim::start(busy_fleet(seed)).await;
    let mut receiver = Receiver::start(wire).await;
    let endpoint = receiver.endpoint();
    let mut args = otlp_args(&endpoint, wire, temporality, "explicit", "300ms", "2s");
    args.extend(["--otlp.max-request-size", "4KiB"]);
    args.extend(extra);
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    receiver.store.wait_for_finished_tasks().await;
    converge(&sim, &exporter).await;
    let compared = assert_same_sync(&exporter, &receiver.store, false).await;
    let got = receiver.store.all();
    let mut exports: BTreeMap<u64, usize> = BTreeMap::new();
    for g in &got {
        *exports.entry(built_at(&g.request)).or_default() += 1;
    }
    let biggest = got.iter().map(|g| g.request.encoded_len()).max().unwrap();
    let (_, last_parts) = exports.last_key_value().unwrap();
    eprintln!(
        "{wire:?} {temporality}: {} requests for {} exports, the biggest {biggest} bytes, {compared} series equal",
        got.len(),
        exports.len()
    );
    assert!(biggest <= LIMIT, "a request of {biggest} bytes");
    assert!(
        *last_parts >= 3,
        "the last export went out in {last_parts} requests; the fleet needs several of {LIMIT} bytes"
    );
    if temporality == "delta" {
        assert_delta_windows_are_contiguous(&got);
    }
    let m = parse(&scrape(exporter.addr).await);
    assert_eq!(
        must(&m, "clawmesh_otlp_exports_total", &[("result", "failure")]),
        0.0
    );
    exporter.shutdown().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_split_requests_fit_the_limit_and_add_up_to_metrics() {
    split_requests_fit_the_limit_and_add_up(Wire::Grpc, "cumulative", &[], 72).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_split_delta_requests_of_a_breakdown_fit_the_limit_and_sum_to_metrics() {
    // Broken down by provider and model: the big requests that once broke the limit.
    let breakdown = ["--breakdown.provider", "--breakdown.model"];
    split_requests_fit_the_limit_and_add_up(Wire::Http, "delta", &breakdown, 73).await;
}

/// A delta export in parts against a collector in `mode` until the
/// exports fail for it (`refusals` parts refused or hung on, `failures`
/// exports failed), then a normal one: the accepted points of each series
/// cover back-to-back windows throughout (a point delivered twice would
/// overlap the one before), and once it takes everything their sums equal
/// /metrics.
async fn parts_not_taken_go_out_again_and_never_twice(
    seed: u64,
    mode: u8,
    timeout: &str,
    (refusals, failures): (usize, f64),
    what: &str,
) {
    let sim = Sim::start(busy_fleet(seed)).await;
    let receiver = Receiver::start(Wire::Http).await;
    receiver.store.mode.store(mode, Ordering::SeqCst);
    let endpoint = receiver.endpoint();
    let mut args = otlp_args(&endpoint, Wire::Http, "delta", "explicit", "300ms", timeout);
    args.extend(["--otlp.max-request-size", "4KiB"]);
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    receiver.store.wait_for_finished_tasks().await;
    wait_for(Duration::from_secs(60), what, || async {
        let m = parse(&scrape(exporter.addr).await);
        receiver.store.refusals.lock().unwrap().len() >= refusals
            && value(&m, "clawmesh_otlp_exports_total", &[("result", "failure")])
                .is_some_and(|v| v >= failures)
    })
    .await;
    assert_delta_windows_are_contiguous(&receiver.store.all());
    receiver.store.mode.store(NORMAL, Ordering::SeqCst);
    converge(&sim, &exporter).await;
    assert_same_sync(&exporter, &receiver.store, false).await;
    assert_delta_windows_are_contiguous(&receiver.store.all());
    exporter.shutdown().await;
}

/// A collector that refuses some parts (each through all its attempts now
/// and then): a delivered part is never sent again, a refused one goes
/// with the next export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_parts_of_a_delta_export_are_never_delivered_twice() {
    parts_not_taken_go_out_again_and_never_twice(
        74,
        REFUSE_SOME,
        "2s",
        (12, 1.0),
        "parts refused and exports failed for it",
    )
    .await;
}

/// A collector that takes the first parts of an export and hangs on the
/// next until the export's deadline: the parts it took settle their
/// series, the rest go out with the next export over the window since
/// their last delivery (back to back): nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_a_collector_hangs_on_go_out_again_back_to_back_and_never_twice() {
    parts_not_taken_go_out_again_and_never_twice(
        87,
        HANG_SOME,
        "1s",
        (6, 2.0),
        "parts hung on and exports failed for it",
    )
    .await;
}

// ---------------------------------------------------------------- hostile collectors

/// A collector that takes a request and answers `status` with a chunked
/// body that never ends (until `CAP` bytes: a bound for the test itself),
/// as fast as it can or (`drip`) a byte every 100 ms. Records the bytes
/// written on each connection, and how long the reply lasted, once it ends.
struct Endless {
    addr: SocketAddr,
    written: Arc<Mutex<Vec<u64>>>,
    lasted: Arc<Mutex<Vec<Duration>>>,
}

const CAP: u64 = 256 << 20;

async fn endless(status: &'static str, drip: bool) -> Endless {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(Mutex::new(Vec::new()));
    let lasted = Arc::new(Mutex::new(Vec::new()));
    let (w, l) = (written.clone(), lasted.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (w, l) = (w.clone(), l.clone());
            tokio::spawn(async move {
                // The request: its head, then Content-Length bytes.
                let mut buf = Vec::new();
                let mut tmp = [0u8; 16 << 10];
                let head_end = loop {
                    let Ok(n) = sock.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|x| x == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = sock.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ntransfer-encoding: chunked\r\n\r\n"
                );
                let started = std::time::Instant::now();
                if sock.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                if drip {
                    let mut total = 0u64;
                    while sock.write_all(b"1\r\nx\r\n").await.is_ok() && total < CAP {
                        total += 6;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    w.lock().unwrap().push(total);
                    l.lock().unwrap().push(started.elapsed());
                    return;
                }
                let chunk = {
                    let mut c = format!("{:x}\r\n", 64 << 10).into_bytes();
                    c.extend(std::iter::repeat_n(b'x', 64 << 10));
                    c.extend_from_slice(b"\r\n");
                    c
                };
                let mut total = 0u64;
                while total < CAP && sock.write_all(&chunk).await.is_ok() {
                    total += chunk.len() as u64;
                }
                w.lock().unwrap().push(total);
                l.lock().unwrap().push(started.elapsed());
            });
        }
    });
    Endless {
        addr,
        written,
        lasted,
    }
}

/// A collector answering with an endless body: the exporter reads
/// --otlp.max-response-size of it, drops the connection, counts the export
/// as the status says, and goes on. Before, it read the whole stream (8.6
/// GB of RSS in 40 s for a 200). The bytes the collector got to
/// write are what the socket buffers hold, far from the stream.
async fn endless_replies_are_cut(status: &'static str, counted: &str, seed: u64) {
    let sim = Sim::start(busy_fleet(seed)).await;
    let hostile = endless(status, false).await;
    let endpoint = format!("http://{}", hostile.addr);
    // A long timeout: only the size limit can end a reply early.
    let mut args = otlp_args(
        &endpoint,
        Wire::Http,
        "cumulative",
        "explicit",
        "300ms",
        "20s",
    );
    args.extend(["--otlp.max-response-size", "16KiB"]);
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    wait_for(
        Duration::from_secs(60),
        &format!("three replies of {status} cut short, and exports counted {counted}"),
        || async {
            let m = parse(&scrape(exporter.addr).await);
            hostile.written.lock().unwrap().len() >= 3
                && value(&m, "clawmesh_otlp_exports_total", &[("result", counted)])
                    .is_some_and(|v| v >= 2.0)
        },
    )
    .await;
    let written = hostile.written.lock().unwrap().clone();
    let most = *written.iter().max().unwrap();
    eprintln!("{status}: bytes written per reply before the exporter hung up: {written:?}");
    assert!(
        most < 32 << 20,
        "{status}: the exporter read {most} bytes of a reply (limit 16KiB)"
    );
    let m = parse(&scrape(exporter.addr).await);
    let other = if counted == "success" {
        "failure"
    } else {
        "success"
    };
    assert_eq!(
        value(&m, "clawmesh_otlp_exports_total", &[("result", other)]).unwrap_or(0.0),
        0.0,
        "{status}"
    );
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_200_reply_is_cut_at_the_limit_and_the_export_counts_delivered() {
    endless_replies_are_cut("200 OK", "success", 75).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_503_reply_is_cut_at_the_limit_and_the_export_counts_failed() {
    endless_replies_are_cut("503 Service Unavailable", "failure", 76).await;
}

/// A reply that drips a byte every 100 ms forever, under the size limit,
/// is cut at the attempt's timeout: every OTLP read has a deadline. The
/// status (200) decides, so the export counts delivered, and the pusher
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_dripping_forever_is_cut_at_the_timeout() {
    let sim = Sim::start(busy_fleet(81)).await;
    let hostile = endless("200 OK", true).await;
    let endpoint = format!("http://{}", hostile.addr);
    let args = otlp_args(
        &endpoint,
        Wire::Http,
        "cumulative",
        "explicit",
        "300ms",
        "1s",
    );
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    wait_for(
        Duration::from_secs(60),
        "three dripping replies cut, and exports counted",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            hostile.lasted.lock().unwrap().len() >= 3
                && value(&m, "clawmesh_otlp_exports_total", &[("result", "success")])
                    .is_some_and(|v| v >= 2.0)
        },
    )
    .await;
    let lasted = hostile.lasted.lock().unwrap().clone();
    eprintln!("dripping replies lasted {lasted:?}");
    // 1 s timeout; the rest is a loaded machine noticing the closed socket
    // at the next drip.
    assert!(
        lasted.iter().all(|d| *d < Duration::from_secs(4)),
        "a reply outlived the 1s timeout: {lasted:?}"
    );
    exporter.shutdown().await;
}

/// A gRPC collector that accepts and answers with a 5 MiB message (past
/// tonic's default 4 MiB too).
#[derive(Clone, Default)]
struct HugeAnswer {
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl MetricsService for HugeAnswer {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: Some(
                opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess {
                    rejected_data_points: 0,
                    error_message: "x".repeat(5 << 20),
                },
            ),
        }))
    }
}

/// The gRPC reply past --otlp.max-response-size is refused unread; the
/// status was OK (a gRPC reply message follows only that), so the export
/// counts as delivered, and the pusher goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_grpc_reply_is_not_read_and_the_export_counts_delivered() {
    let sim = Sim::start(busy_fleet(77)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = HugeAnswer::default();
    let calls = service.calls.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            MetricsServiceServer::new(service),
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            std::future::pending::<()>(),
        ),
    );
    let endpoint = format!("http://{addr}");
    let mut args = otlp_args(&endpoint, Wire::Grpc, "delta", "explicit", "300ms", "5s");
    args.extend(["--otlp.max-response-size", "64KiB"]);
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    wait_for(
        Duration::from_secs(60),
        "three exports answered with a huge message, counted delivered",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            calls.load(Ordering::SeqCst) >= 3
                && value(&m, "clawmesh_otlp_exports_total", &[("result", "success")])
                    .is_some_and(|v| v >= 3.0)
        },
    )
    .await;
    let m = parse(&scrape(exporter.addr).await);
    assert_eq!(
        value(&m, "clawmesh_otlp_exports_total", &[("result", "failure")]).unwrap_or(0.0),
        0.0,
        "a delivered delta export counted failed would be sent again"
    );
    exporter.shutdown().await;
    server.abort();
}

/// Serve `svc` (which compresses its replies with gzip when asked) over
/// plain HTTP/2 as a Go collector does: grpc-go answers a gzip request in
/// gzip without looking at `grpc-accept-encoding`, so the header is added
/// to every request before tonic sees it. Counts the replies sent in gzip.
async fn serve_like_grpc_go<S>(svc: S) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    S: tower::Service<
            axum::http::Request<axum::body::Body>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gzip_replies = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = gzip_replies.clone();
    let app = axum::Router::new().route_service(
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        svc,
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (app, counted) = (app.clone(), counted.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        let (app, counted) = (app.clone(), counted.clone());
                        let sent_gzip = req
                            .headers()
                            .get("grpc-encoding")
                            .is_some_and(|v| v == "gzip");
                        if sent_gzip {
                            req.headers_mut().insert(
                                "grpc-accept-encoding",
                                axum::http::HeaderValue::from_static("gzip"),
                            );
                        }
                        async move {
                            let resp =
                                tower::ServiceExt::oneshot(app, req.map(axum::body::Body::new))
                                    .await;
                            if let Ok(r) = &resp {
                                if r.headers()
                                    .get("grpc-encoding")
                                    .is_some_and(|v| v == "gzip")
                                {
                                    counted.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            resp
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
            });
        }
    });
    (addr, gzip_replies)
}

/// A Go collector answers a gzip request in gzip, asked or not. The reply
/// is read (on main tonic refused it, UNIMPLEMENTED: every export the
/// collector took counted failed and its deltas went out again with the
/// next, counted twice by the collector).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_replies_as_a_go_collector_sends_them_are_read() {
    let sim = Sim::start(busy_fleet(83)).await;
    let store = Store::default();
    let (addr, gzip_replies) = serve_like_grpc_go(
        grpc_service(store.clone()).send_compressed(tonic::codec::CompressionEncoding::Gzip),
    )
    .await;
    let endpoint = format!("http://{addr}");
    let mut args = otlp_args(&endpoint, Wire::Grpc, "delta", "explicit", "250ms", "2s");
    args.extend(["--otlp.compression", "gzip"]);
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    wait_for(
        Duration::from_secs(60),
        "three exports answered in gzip, counted delivered",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            gzip_replies.load(Ordering::SeqCst) >= 3
                && value(&m, "clawmesh_otlp_exports_total", &[("result", "success")])
                    .is_some_and(|v| v >= 3.0)
        },
    )
    .await;
    converge(&sim, &exporter).await;
    assert_same_sync(&exporter, &store, false).await;
    assert_delta_windows_are_contiguous(&store.all());
    let m = parse(&scrape(exporter.addr).await);
    assert_eq!(
        value(&m, "clawmesh_otlp_exports_total", &[("result", "failure")]).unwrap_or(0.0),
        0.0,
        "a delivered delta export counted failed is sent again"
    );
    exporter.shutdown().await;
}

/// A gzip bomb: 5 MiB of reply in a few KiB of gzip, under
/// --otlp.max-response-size as sent. It is inflated no further than the
/// limit and, the status being OK, the export counts delivered, once: on
/// main it was refused unread (UNIMPLEMENTED), and taken as
/// RESOURCE_EXHAUSTED (retried) once gzip replies are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_gzip_bomb_reply_is_inflated_only_to_the_limit_and_counts_delivered_once() {
    let sim = Sim::start(busy_fleet(84)).await;
    let service = HugeAnswer::default();
    let calls = service.calls.clone();
    let (addr, gzip_replies) = serve_like_grpc_go(
        MetricsServiceServer::new(service)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_encoding_message_size(usize::MAX),
    )
    .await;
    let endpoint = format!("http://{addr}");
    let mut args = otlp_args(&endpoint, Wire::Grpc, "delta", "explicit", "300ms", "5s");
    args.extend([
        "--otlp.compression",
        "gzip",
        "--otlp.max-response-size",
        "64KiB",
    ]);
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    wait_for(
        Duration::from_secs(60),
        "three exports answered with a gzip bomb, counted delivered",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            gzip_replies.load(Ordering::SeqCst) >= 3
                && value(&m, "clawmesh_otlp_exports_total", &[("result", "success")])
                    .is_some_and(|v| v >= 3.0)
        },
    )
    .await;
    let m = parse(&scrape(exporter.addr).await);
    assert_eq!(
        value(&m, "clawmesh_otlp_exports_total", &[("result", "failure")]).unwrap_or(0.0),
        0.0,
        "a delivered delta export counted failed is sent again"
    );
    // One request per export: none was retried after the collector took it.
    let (exports, requests) = (
        must(&m, "clawmesh_otlp_exports_total", &[("result", "success")]),
        calls.load(Ordering::SeqCst) as f64,
    );
    assert!(
        requests <= exports + 1.0,
        "{requests} requests for {exports} exports: a taken request was sent again"
    );
    exporter.shutdown().await;
}

/// A collector answering 429 with `Retry-After: 3` (HTTP) or UNAVAILABLE
/// with a RetryInfo of 3 s (gRPC) is not sent to again for 3 s (before, the
/// retry came after the 0.2 s backoff).
async fn retry_after_is_waited_out(wire: Wire, seed: u64) {
    let sim = Sim::start(busy_fleet(seed)).await;
    let receiver = Receiver::start(wire).await;
    let endpoint = receiver.endpoint();
    let args = otlp_args(&endpoint, wire, "delta", "explicit", "200ms", "1s");
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    assert!(receiver.store.next(Duration::from_secs(30)).await);
    receiver
        .store
        .mode
        .store(RETRY_AFTER_ONCE, Ordering::SeqCst);
    wait_for(Duration::from_secs(30), "the 429", || async {
        !receiver.store.refusals.lock().unwrap().is_empty()
    })
    .await;
    let refused = receiver.store.refusals.lock().unwrap()[0];
    wait_for(
        Duration::from_secs(30),
        "an export after the wait",
        || async {
            receiver
                .store
                .arrivals
                .lock()
                .unwrap()
                .iter()
                .any(|t| *t > refused)
        },
    )
    .await;
    let next = *receiver
        .store
        .arrivals
        .lock()
        .unwrap()
        .iter()
        .find(|t| **t > refused)
        .unwrap();
    let waited = next - refused;
    eprintln!("{wire:?}: the next request came {waited:?} after the refusal");
    assert!(
        waited >= Duration::from_millis(2900),
        "{wire:?}: a wait of 3 s not honoured: the next request came after {waited:?}"
    );
    assert_eq!(receiver.store.refusals.lock().unwrap().len(), 1);
    // Nothing was lost meanwhile: the deltas held go out after the wait.
    converge(&sim, &exporter).await;
    assert_same_sync(&exporter, &receiver.store, false).await;
    assert_delta_windows_are_contiguous(&receiver.store.all());
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_waited_out() {
    retry_after_is_waited_out(Wire::Http, 78).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_retry_info_is_waited_out() {
    retry_after_is_waited_out(Wire::Grpc, 82).await;
}

/// A `Retry-After` of u64::MAX seconds under a --otlp.max-retry-after as
/// long as a duration goes (400 billion years): the wait is past what an
/// Instant holds. The pusher waits (nothing more is sent) and never
/// panics; on main adding the wait to now panicked, at every export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_past_what_an_instant_holds_is_waited_without_a_panic() {
    let sim = Sim::start(busy_fleet(86)).await;
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, u64::MAX.to_string())],
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut args = otlp_args(&endpoint, Wire::Http, "delta", "explicit", "200ms", "1s");
    args.extend(["--otlp.max-retry-after", "400000000000y"]);
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    let restarts = |m: &BTreeMap<String, f64>| {
        value(
            m,
            "clawmesh_exporter_task_restarts_total",
            &[("task", "otlp_pusher")],
        )
        .unwrap_or(0.0)
    };
    wait_for(
        Duration::from_secs(30),
        "the 429 answered, and the export counted failed (or the pusher restarted)",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            requests.load(Ordering::SeqCst) >= 1
                && (restarts(&m) > 0.0
                    || value(&m, "clawmesh_otlp_exports_total", &[("result", "failure")])
                        .is_some_and(|v| v >= 1.0))
        },
    )
    .await;
    // Ten intervals: the wait is honoured, and nothing panics.
    let broke = holds_within(Duration::from_secs(2), || async {
        let m = parse(&scrape(exporter.addr).await);
        restarts(&m) > 0.0 || requests.load(Ordering::SeqCst) > 1
    })
    .await;
    let m = parse(&scrape(exporter.addr).await);
    assert!(
        !broke,
        "{} requests, {} pusher restarts",
        requests.load(Ordering::SeqCst),
        restarts(&m)
    );
    exporter.shutdown().await;
}

// ---------------------------------------------------------------- secrets

const HEADER_CANARY: &str = "otlp_header_canary_5c9e";
const ENV_CANARY: &str = "otlp_env_canary_77ad";

/// A collector answering 307 to another host: the export is not sent
/// there (on main reqwest followed it, with the dd-api-key header: it
/// drops only Authorization and cookies on the way), and it counts failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_so_the_headers_never_go_elsewhere() {
    let sim = Sim::start(busy_fleet(85)).await;
    let elsewhere = Receiver::start(Wire::Http).await;
    let to = format!("{}/v1/metrics", elsewhere.endpoint());
    let redirected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = redirected.clone();
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move || {
            let (to, counted) = (to.clone(), counted.clone());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, to)],
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let headers = std::env::temp_dir().join(format!("cmx-otlp-redirect-{}", std::process::id()));
    std::fs::write(&headers, format!("dd-api-key={HEADER_CANARY}\n")).unwrap();
    let mut args = otlp_args(&endpoint, Wire::Http, "delta", "explicit", "200ms", "2s");
    args.extend(["--otlp.headers-file", headers.to_str().unwrap()]);
    let exporter = start_exporter(&exporter_config(&sim, &args)).await;
    wait_for(
        Duration::from_secs(60),
        "three exports answered with a redirect (counted failed, or followed)",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            redirected.load(Ordering::SeqCst) >= 3
                && (elsewhere.store.len() > 0
                    || value(&m, "clawmesh_otlp_exports_total", &[("result", "failure")])
                        .is_some_and(|v| v >= 3.0))
        },
    )
    .await;
    assert_eq!(
        elsewhere.store.len(),
        0,
        "an export followed the redirect, with its headers: {:?}",
        elsewhere.store.all().first().map(|g| &g.headers)
    );
    let _ = std::fs::remove_file(&headers);
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_secrets_never_reach_logs_or_metrics() {
    let sim = Sim::start(busy_fleet(67)).await;
    let receiver = Receiver::start(Wire::Http).await;
    // A collector that rejects the key and echoes it back in its error.
    receiver.store.mode.store(REJECT_ECHOING, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("cmx-otlp-secret-{}", std::process::id()));
    std::fs::write(&dir, format!("dd-api-key={HEADER_CANARY}\n")).unwrap();
    let port = crate::util::free_port();
    let mut child = bin()
        .env("CLAWMESH_API_KEY", clawmesh_exporter::sim::DEMO_KEY)
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("x-tenant-token={ENV_CANARY}"),
        )
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .args([
            "--api-url",
            &sim.url(),
            "--poll-interval",
            "1s",
            "--log.level",
            "debug",
        ])
        .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
        .args([
            "--otlp.headers-file",
            dir.to_str().unwrap(),
            "--otlp.interval",
            "200ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the output as it comes, so a full pipe never blocks the exporter.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_for(
        Duration::from_secs(30),
        "rejected exports to be counted",
        || {
            let url = url.clone();
            async move {
                let Ok(r) = reqwest::get(url).await else {
                    return false;
                };
                let m = parse(&r.text().await.unwrap_or_default());
                value(&m, "clawmesh_otlp_exports_total", &[("result", "failure")])
                    .is_some_and(|v| v >= 2.0)
            }
        },
    )
    .await;
    // Then the collector accepts: the headers did go out.
    receiver.store.mode.store(NORMAL, Ordering::SeqCst);
    assert!(receiver.store.next(Duration::from_secs(10)).await);
    let metrics = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || {
        let s = child.wait().unwrap();
        (s, err.join().unwrap() + &out.join().unwrap())
    });
    let (status, logs) = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .expect("exit within the flush deadline")
        .unwrap();
    std::fs::remove_file(&dir).unwrap();
    assert!(status.success(), "exit status {status:?}");
    let sent = receiver.store.all().pop().unwrap().headers;
    assert!(
        sent.contains(&("dd-api-key".into(), HEADER_CANARY.into())),
        "{sent:?}"
    );
    assert!(
        sent.contains(&("x-tenant-token".into(), ENV_CANARY.into())),
        "{sent:?}"
    );
    assert!(
        logs.contains("level=debug") && logs.contains("OTLP export failed"),
        "{logs:.2000}"
    );
    assert!(
        logs.contains("dd-api-key"),
        "the header names may show: {logs:.2000}"
    );
    for canary in [HEADER_CANARY, ENV_CANARY] {
        assert!(
            !logs.contains(canary),
            "a header value leaked into the logs"
        );
        assert!(
            !metrics.contains(canary),
            "a header value leaked into /metrics"
        );
    }
}

// ---------------------------------------------------------------- mutual TLS

mod mtls {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };

    /// A CA, a server certificate for 127.0.0.1 and a client certificate
    /// signed by the CA, in a fresh directory.
    struct Pki {
        dir: std::path::PathBuf,
        server: rustls::ServerConfig,
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn pki(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("cmx-otlp-mtls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "collector ca");
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let skey = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&skey, &ca)
            .unwrap();
        let ckey = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(vec!["clawmesh-exporter".to_string()]).unwrap();
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = cp.signed_by(&ckey, &ca).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.join("client.crt"), client.pem()).unwrap();
        std::fs::write(dir.join("client.key"), ckey.serialize_pem()).unwrap();
        // Another CA, which the collector does not trust, and a client
        // certificate it signed.
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "stranger ca");
        let other = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let okey = KeyPair::generate().unwrap();
        let mut op = CertificateParams::new(vec!["clawmesh-exporter".to_string()]).unwrap();
        op.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let stranger = op.signed_by(&okey, &other).unwrap();
        std::fs::write(dir.join("other-ca.crt"), other.pem()).unwrap();
        std::fs::write(dir.join("stranger.crt"), stranger.pem()).unwrap();
        std::fs::write(dir.join("stranger.key"), okey.serialize_pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(skey.serialize_der()).unwrap(),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Pki { dir, server }
    }

    fn exports(m: &BTreeMap<String, f64>, result: &str) -> f64 {
        value(m, "clawmesh_otlp_exports_total", &[("result", result)]).unwrap_or(0.0)
    }

    /// Without a client certificate the collector refuses every export;
    /// with the one its CA signed, exports arrive.
    async fn requires_the_client_certificate(wire: Wire, seed: u64) {
        let p = pki(&format!("{wire:?}"));
        let mut receiver = Receiver::start_tls(wire, p.server.clone()).await;
        let endpoint = format!("https://{}", receiver.addr);
        let sim = Sim::start(busy_fleet(seed)).await;
        let path = |f: &str| p.dir.join(f).to_str().unwrap().to_string();
        let (ca, crt, key) = (path("ca.crt"), path("client.crt"), path("client.key"));
        let base = otlp_args(&endpoint, wire, "cumulative", "explicit", "200ms", "1s");

        let mut without = base.clone();
        without.extend(["--otlp.ca-file", ca.as_str()]);
        let exporter = start_exporter(&exporter_config(&sim, &without)).await;
        wait_for(
            Duration::from_secs(30),
            "exports without a client certificate to fail",
            || async { exports(&parse(&scrape(exporter.addr).await), "failure") >= 2.0 },
        )
        .await;
        let m = parse(&scrape(exporter.addr).await);
        assert_eq!(
            exports(&m, "success"),
            0.0,
            "{wire:?}: accepted without a certificate"
        );
        exporter.shutdown().await;
        assert_eq!(
            receiver.store.len(),
            0,
            "{wire:?}: a request got through without a certificate"
        );

        let mut with = without.clone();
        with.extend([
            "--otlp.client-certificate",
            crt.as_str(),
            "--otlp.client-key",
            key.as_str(),
        ]);
        let exporter = start_exporter(&exporter_config(&sim, &with)).await;
        assert!(
            receiver.store.next(Duration::from_secs(30)).await,
            "{wire:?}: no export arrived with the client certificate"
        );
        wait_for(
            Duration::from_secs(10),
            "/metrics to count the delivered export",
            || async { exports(&parse(&scrape(exporter.addr).await), "success") >= 1.0 },
        )
        .await;
        let m = parse(&scrape(exporter.addr).await);
        assert_eq!(
            exports(&m, "failure"),
            0.0,
            "{wire:?}: failed with the client certificate"
        );
        let got = otlp_view(&receiver.store.all());
        assert!(
            got.keys().any(|k| k.starts_with("clawmesh_agents{")),
            "{wire:?}: the export carries the fleet: {:?}",
            got.keys().take(5).collect::<Vec<_>>()
        );
        exporter.shutdown().await;
        receiver.stop().await;
    }

    /// The exporter binary with `args` until /metrics counts a failed
    /// export; its log.
    async fn log_until_a_failure(sim: &Sim, args: &[&str]) -> String {
        let port = crate::util::free_port();
        let mut child = bin()
            .env("CLAWMESH_API_KEY", clawmesh_exporter::sim::DEMO_KEY)
            .args(["--api-url", &sim.url(), "--poll-interval", "1s"])
            .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let drain = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let url = format!("http://127.0.0.1:{port}/metrics");
        wait_for(Duration::from_secs(30), "a failed export", || {
            let url = url.clone();
            async move {
                let Ok(r) = reqwest::get(url).await else {
                    return false;
                };
                let m = parse(&r.text().await.unwrap_or_default());
                exports(&m, "failure") >= 1.0
            }
        })
        .await;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let logs = tokio::task::spawn_blocking(move || {
            let _ = child.wait();
            err.join().unwrap() + &out.join().unwrap()
        });
        tokio::time::timeout(Duration::from_secs(20), logs)
            .await
            .expect("exit within the flush deadline")
            .unwrap()
    }

    /// A TLS failure says which side refused what, not "connection failed"
    /// as for a collector that is down.
    async fn tls_failures_say_which_side_and_why(wire: Wire, seed: u64) {
        let p = pki(&format!("why-{wire:?}"));
        let mut receiver = Receiver::start_tls(wire, p.server.clone()).await;
        let sim = Sim::start(busy_fleet(seed)).await;
        let path = |f: &str| p.dir.join(f).to_str().unwrap().to_string();
        let endpoint = format!("https://{}", receiver.addr);
        let by_name = format!("https://localhost:{}", receiver.addr.port());
        let (ca, other_ca) = (path("ca.crt"), path("other-ca.crt"));
        let (crt, key) = (path("client.crt"), path("client.key"));
        let (stranger, stranger_key) = (path("stranger.crt"), path("stranger.key"));
        let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
            (
                endpoint.as_str(),
                vec![
                    "--otlp.ca-file",
                    &other_ca,
                    "--otlp.client-certificate",
                    &crt,
                    "--otlp.client-key",
                    &key,
                ],
                vec![
                    "certificate of the collector is not trusted",
                    "other-ca.crt",
                ],
            ),
            (
                endpoint.as_str(),
                vec![
                    "--otlp.ca-file",
                    &ca,
                    "--otlp.client-certificate",
                    &stranger,
                    "--otlp.client-key",
                    &stranger_key,
                ],
                // Over HTTP/2 the alert can be lost: then "may have refused".
                vec!["refused our client certificate"],
            ),
            (
                endpoint.as_str(),
                vec!["--otlp.ca-file", &ca],
                vec!["client certificate"],
            ),
            (
                by_name.as_str(),
                vec![
                    "--otlp.ca-file",
                    &ca,
                    "--otlp.client-certificate",
                    &crt,
                    "--otlp.client-key",
                    &key,
                ],
                vec!["not valid for the host localhost (hostname mismatch)"],
            ),
        ];
        for (at, extra, wanted) in cases {
            let mut args = otlp_args(at, wire, "cumulative", "explicit", "200ms", "1s");
            args.extend(extra.iter().copied());
            let logs = log_until_a_failure(&sim, &args).await;
            let failed: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("OTLP export failed"))
                .collect();
            assert!(
                !failed.is_empty(),
                "{wire:?} {extra:?}: no failure logged:\n{logs:.3000}"
            );
            for w in &wanted {
                assert!(
                    failed[0].contains(w),
                    "{wire:?} {extra:?}: the failure does not say {w:?}:\n{}",
                    failed[0]
                );
            }
            eprintln!("{wire:?}: {}", failed[0]);
        }
        assert_eq!(receiver.store.len(), 0);
        receiver.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_tls_failures_say_which_side_and_why() {
        tls_failures_say_which_side_and_why(Wire::Grpc, 79).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_tls_failures_say_which_side_and_why() {
        tls_failures_say_which_side_and_why(Wire::Http, 80).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_mutual_tls() {
        requires_the_client_certificate(Wire::Grpc, 70).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_mutual_tls() {
        requires_the_client_certificate(Wire::Http, 71).await;
    }
}
