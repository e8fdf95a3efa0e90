//! From the metric table to one OTLP request. Pure: no I/O, no clock (the
//! caller passes the time), so tests can drive it sample by sample.
//!
//! Temporality lives here. Cumulative sends each series' current total with
//! the time it counts from (moved forward when a reset shows: the value went
//! down). Delta keeps, per series, the last total seen and the increase not
//! yet delivered: every build adds what happened since the last build to the
//! undelivered increase and sends that, and only a delivered batch clears it.
//! So a failed export loses nothing and a retried one counts nothing twice,
//! and what is held stays one value per series however long the collector
//! is away.

use super::settings::{HistogramMode, Temporality};
use crate::fleet::Snapshot;
use crate::histogram::{Exponential, Histogram};
use crate::metrics::{self, Kind, Value};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    self as pb, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    AggregationTemporality,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The data-point attribute that carries the workspace.
///
/// A data-point attribute, not a resource attribute: the resource is the
/// exporter process (`service.*`), which may watch many workspaces, and the
/// workspace must separate series in every backend. Datadog keeps only
/// well-known resource attributes as tags unless told otherwise, and the
/// Collector's Prometheus exporters move resource attributes to `target_info`,
/// while data-point attributes become tags and labels everywhere, exactly
/// like the `workspace` label on /metrics.
pub const WORKSPACE_ATTRIBUTE: &str = "clawmesh.workspace.id";
/// The configured display name of a workspace (`workspace_name` on /metrics).
pub const WORKSPACE_NAME_ATTRIBUTE: &str = "clawmesh.workspace.name";

/// Word pairs that are one word in an OpenTelemetry name (`rate_limit`, not
/// `rate.limit`).
const COMPOUNDS: &[&str] = &[
    "oldest_pending",
    "last_sync",
    "last_heartbeat",
    "last_success",
    "rate_limit",
    "retry_after",
    "requests_per_minute",
    "tracked_tasks",
    "data_points",
    "missed_events",
    "last_event",
];

/// The process families under the names the OpenTelemetry semantic
/// conventions give them (system/process-metrics, v1.45.0:
/// `process.cpu.time`, Counter, `s`; `process.memory.usage` and
/// `process.memory.virtual`, `By`; `process.unix.file_descriptor.count`,
/// `{file_descriptor}`), so that a backend's process views read them as
/// any process's. What the conventions do not name (the open-files limit,
/// the start, which OTLP also carries as the start of `process.cpu.time`)
/// goes under the exporter's own namespace: `process.*` is theirs.
const SEMANTIC_NAMES: &[(&str, &str)] = &[
    ("process_cpu_seconds_total", "process.cpu.time"),
    ("process_resident_memory_bytes", "process.memory.usage"),
    ("process_virtual_memory_bytes", "process.memory.virtual"),
    ("process_open_fds", "process.unix.file_descriptor.count"),
    ("process_max_fds", "clawmesh.exporter.file_descriptor.limit"),
    (
        "process_start_time_seconds",
        "clawmesh.exporter.start.timestamp",
    ),
];

/// The OpenTelemetry name of a family: the semantic conventions' where
/// they name it, else derived from its Prometheus name: without `_total`
/// (a Sum says it is a counter), without the unit suffix `_seconds` (the
/// unit field carries it), and with dots between the words.
pub fn otel_name<T>(f: &metrics::FamilyOf<T>) -> String {
    if let Some((_, n)) = SEMANTIC_NAMES.iter().find(|(p, _)| *p == f.name) {
        return n.to_string();
    }
    let mut name = f.name;
    if f.kind == Kind::Counter {
        name = name.strip_suffix("_total").unwrap_or(name);
    }
    if f.unit == "s" {
        name = name.strip_suffix("_seconds").unwrap_or(name);
    }
    if f.unit == "By" {
        name = name.strip_suffix("_bytes").unwrap_or(name);
    }
    let mut out = name.replace('_', ".");
    for c in COMPOUNDS {
        out = out.replace(&c.replace('_', "."), c);
    }
    out
}

/// A series' identity: what it renders as, so that a breakdown label
/// discovered later (a longer `by`, padded empty) is the same series.
fn series_id(snap: &Snapshot, s: &metrics::Sample) -> Vec<String> {
    let mut id = s.labels.clone();
    id.extend(
        snap.dims
            .iter()
            .zip(&s.by)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}")),
    );
    id
}

/// A histogram's numbers, detached so that differences can be held.
#[derive(Debug, Clone, PartialEq)]
struct Hist {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    exp: Exponential,
}

impl From<&Histogram> for Hist {
    fn from(h: &Histogram) -> Self {
        Hist {
            bounds: h.bounds(),
            counts: h.bucket_counts().to_vec(),
            sum: h.sum(),
            count: h.count(),
            exp: h.exponential().clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Point {
    Number(f64),
    Hist(Hist),
}

impl Point {
    fn of(v: &Value) -> Point {
        match v {
            Value::Number(n) => Point::Number(*n),
            Value::Histogram(h) => Point::Hist((*h).into()),
        }
    }

    /// What happened between `earlier` and `self`, two totals of one
    /// series; `None` when the total went down (a reset).
    fn since(&self, earlier: &Point) -> Option<Point> {
        match (self, earlier) {
            (Point::Number(a), Point::Number(b)) => (a >= b).then(|| Point::Number(a - b)),
            (Point::Hist(a), Point::Hist(b)) => {
                if a.bounds != b.bounds || a.count < b.count {
                    return None;
                }
                let counts = a
                    .counts
                    .iter()
                    .zip(&b.counts)
                    .map(|(x, y)| x.checked_sub(*y))
                    .collect::<Option<Vec<u64>>>()?;
                Some(Point::Hist(Hist {
                    bounds: a.bounds,
                    counts,
                    sum: a.sum - b.sum,
                    count: a.count - b.count,
                    exp: a.exp.since(&b.exp)?,
                }))
            }
            _ => None,
        }
    }

    fn plus(self, other: Point) -> Point {
        match (self, other) {
            (Point::Number(a), Point::Number(b)) => Point::Number(a + b),
            (Point::Hist(mut a), Point::Hist(b)) if a.bounds == b.bounds => {
                for (x, y) in a.counts.iter_mut().zip(&b.counts) {
                    *x += y;
                }
                a.sum += b.sum;
                a.count += b.count;
                a.exp.merge(&b.exp);
                Point::Hist(a)
            }
            // A family never changes shape; keep the newer if it did.
            (_, b) => b,
        }
    }
}

/// A counter or histogram series: family index, workspace, identity.
pub type SeriesKey = (usize, String, Vec<String>);

/// What a data point of a built request belongs to, so that a request can
/// be split and each part's delivery settle exactly its own series.
#[derive(Debug, Clone)]
pub struct Tag {
    /// The workspace ("" for the process's own families).
    pub workspace: String,
    /// The series whose delta state the point carries (counters and
    /// histograms); `None` for a gauge.
    pub series: Option<SeriesKey>,
}

/// What one counter or histogram series carries from build to build.
struct Series {
    /// The last total seen.
    last: Point,
    last_ns: u64,
    /// Cumulative: the start of the current count (moves at a reset).
    start_ns: u64,
    /// Delta: the increase seen but not yet delivered.
    undelivered: Option<Point>,
    /// Delta: when the last delivered point of this series was built (its
    /// next point starts there). Per series, since a split export can be
    /// delivered in part.
    delivered_ns: u64,
    /// Generation of the last build that saw this series.
    seen: u64,
    /// When the workspace's counting began (its slot started): a new value
    /// means its counters restarted from zero, whatever they read now.
    origin_ns: u64,
}

/// One built request and what it holds.
pub struct Batch {
    pub request: ExportMetricsServiceRequest,
    /// When it was built (Unix nanoseconds): the `time` of its points.
    pub built_ns: u64,
    /// Data points per workspace.
    pub points: BTreeMap<String, u64>,
    /// Per metric of the request (one resource, one scope), what each of
    /// its data points belongs to, in order.
    pub tags: Vec<Vec<Tag>>,
}

impl Batch {
    pub fn total_points(&self) -> u64 {
        self.points.values().sum()
    }
}

/// Builds requests from snapshots, keeping what temporality needs.
pub struct Batcher {
    temporality: Temporality,
    histogram: HistogramMode,
    resource: Resource,
    /// Deltas count from here: the start, then the last delivered build.
    delivered_ns: u64,
    started_ns: u64,
    /// Some export, or a part of one, was accepted.
    delivered_any: bool,
    series: HashMap<(usize, String, Vec<String>), Series>,
    generation: u64,
    /// Workspaces (their counting origin, and the slot's start) whose
    /// restored counters have been taken as the series' last totals.
    primed: HashSet<(String, u64, u64)>,
}

/// The OpenTelemetry attribute of a Prometheus label: the GenAI semantic
/// conventions' names for the model provider, the model and the token
/// type; every other label as it is.
pub fn otel_attribute<'a>(family: &str, label: &'a str) -> &'a str {
    match label {
        "provider" => "gen_ai.provider.name",
        "model" => "gen_ai.request.model",
        "kind"
            if matches!(
                family,
                "clawmesh_task_tokens_total"
                    | "clawmesh_task_spend_total"
                    | "clawmesh_task_unpriced_tokens_total"
            ) =>
        {
            "gen_ai.token.type"
        }
        other => other,
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

impl Batcher {
    /// `started_ns`: when the exporter began counting (Unix nanoseconds).
    pub fn new(
        temporality: Temporality,
        histogram: HistogramMode,
        resource: &[(String, String)],
        started_ns: u64,
    ) -> Self {
        Batcher {
            temporality,
            histogram,
            resource: Resource {
                attributes: resource.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            },
            delivered_ns: started_ns,
            started_ns,
            delivered_any: false,
            series: HashMap::new(),
            generation: 0,
            primed: HashSet::new(),
        }
    }

    /// Series whose state is held (bounded by the series of the table).
    pub fn held_series(&self) -> usize {
        self.series.len()
    }

    /// The request for the newest snapshots, at `now_ns`.
    pub fn build(
        &mut self,
        process: &metrics::ProcessInfo,
        snaps: &[Snapshot],
        now_ns: u64,
    ) -> Batch {
        self.generation += 1;
        let temporality = match self.temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative,
            Temporality::Delta => AggregationTemporality::Delta,
        } as i32;
        let mut points: BTreeMap<String, u64> = BTreeMap::new();
        let mut out = Vec::with_capacity(metrics::WORKSPACE_FAMILIES.len());
        let mut tags = Vec::with_capacity(metrics::WORKSPACE_FAMILIES.len());
        let mut samples = Vec::new();
        for snap in snaps {
            self.prime(snap);
        }
        for (fi, family) in metrics::WORKSPACE_FAMILIES.iter().enumerate() {
            let mut numbers = Vec::new();
            let mut explicit = Vec::new();
            let mut exponential = Vec::new();
            // The tags of each list, in step with it.
            let (mut number_tags, mut explicit_tags, mut exponential_tags) =
                (Vec::new(), Vec::new(), Vec::new());
            let restored = metrics::restored(family.name);
            for snap in snaps {
                samples.clear();
                (family.collect)(snap, &mut samples);
                // A restored counter starts where its counting began (before
                // this process, if restored); every other one with the slot.
                let origin = if restored {
                    snap.counting_since
                } else {
                    snap.slot_since
                };
                let origin_ns = (origin * 1e9) as u64;
                for s in &samples {
                    let mut attributes =
                        Vec::with_capacity(family.labels.len() + snap.labels.len());
                    // The workspace's own labels, as /metrics has them:
                    // its id and name under OTel-style keys, configured
                    // extras as they are.
                    attributes.extend(snap.labels.iter().map(|(k, v)| match k.as_str() {
                        "workspace" => kv(WORKSPACE_ATTRIBUTE, v),
                        "workspace_name" => kv(WORKSPACE_NAME_ATTRIBUTE, v),
                        _ => kv(k, v),
                    }));
                    // Breakdown values the sample has (an empty one is no
                    // attribute), the GenAI names where the conventions
                    // have one.
                    let by: Vec<(&String, &String)> = snap
                        .dims
                        .iter()
                        .zip(&s.by)
                        .filter(|(_, v)| !v.is_empty())
                        .collect();
                    attributes.extend(
                        by.iter()
                            .map(|(k, v)| kv(otel_attribute(family.name, k), v)),
                    );
                    attributes.extend(
                        family
                            .labels
                            .iter()
                            .zip(&s.labels)
                            .map(|(k, v)| kv(otel_attribute(family.name, k), v)),
                    );
                    *points.entry(snap.workspace.clone()).or_default() += 1;
                    let (point, start_ns, series) = if family.kind == Kind::Gauge {
                        (Point::of(&s.value), 0, None)
                    } else {
                        let key = (fi, snap.workspace.clone(), series_id(snap, s));
                        let (p, start) = self.advance(key.clone(), &s.value, now_ns, origin_ns);
                        (p, start, Some(key))
                    };
                    let tag = Tag {
                        workspace: snap.workspace.clone(),
                        series,
                    };
                    match &point {
                        Point::Number(_) => number_tags.push(tag),
                        Point::Hist(_) if self.histogram == HistogramMode::Explicit => {
                            explicit_tags.push(tag)
                        }
                        Point::Hist(_) => exponential_tags.push(tag),
                    }
                    match point {
                        Point::Number(v) => numbers.push(pb::NumberDataPoint {
                            attributes,
                            start_time_unix_nano: start_ns,
                            time_unix_nano: now_ns,
                            value: Some(number_data_point::Value::AsDouble(v)),
                            ..Default::default()
                        }),
                        Point::Hist(h) if self.histogram == HistogramMode::Explicit => explicit
                            .push(pb::HistogramDataPoint {
                                attributes,
                                start_time_unix_nano: start_ns,
                                time_unix_nano: now_ns,
                                count: h.count,
                                sum: Some(h.sum),
                                bucket_counts: h.counts,
                                explicit_bounds: h.bounds.to_vec(),
                                ..Default::default()
                            }),
                        Point::Hist(h) => exponential.push(pb::ExponentialHistogramDataPoint {
                            attributes,
                            start_time_unix_nano: start_ns,
                            time_unix_nano: now_ns,
                            count: h.count,
                            sum: Some(h.sum),
                            scale: h.exp.scale(),
                            zero_count: h.exp.zero_count(),
                            positive: Some(buckets(h.exp.positive())),
                            negative: Some(buckets(h.exp.negative())),
                            ..Default::default()
                        }),
                    }
                }
            }
            let (data, family_tags) = match family.kind {
                _ if numbers.is_empty() && explicit.is_empty() && exponential.is_empty() => {
                    continue
                }
                Kind::Gauge => (
                    Data::Gauge(pb::Gauge {
                        data_points: numbers,
                    }),
                    number_tags,
                ),
                Kind::Counter => (
                    Data::Sum(pb::Sum {
                        data_points: numbers,
                        aggregation_temporality: temporality,
                        is_monotonic: true,
                    }),
                    number_tags,
                ),
                Kind::Histogram if self.histogram == HistogramMode::Explicit => (
                    Data::Histogram(pb::Histogram {
                        data_points: explicit,
                        aggregation_temporality: temporality,
                    }),
                    explicit_tags,
                ),
                Kind::Histogram => (
                    Data::ExponentialHistogram(pb::ExponentialHistogram {
                        data_points: exponential,
                        aggregation_temporality: temporality,
                    }),
                    exponential_tags,
                ),
            };
            tags.push(family_tags);
            out.push(pb::Metric {
                name: otel_name(family),
                description: family.help.to_string(),
                unit: family.unit.to_string(),
                data: Some(data),
                ..Default::default()
            });
        }
        // The process's own families (shard, reloads, the HTTP server, CPU
        // and memory): no workspace; its counters keep delta state like a
        // workspace's, under indexes past the workspace families', and count
        // from the process's start (process.cpu.time counts from there).
        let process_origin_ns = (process.started_at * 1e9) as u64;
        for (pi, family) in metrics::PROCESS_FAMILIES.iter().enumerate() {
            samples.clear();
            (family.collect)(process, &mut samples);
            let counter = family.kind == Kind::Counter;
            let mut data_points = Vec::with_capacity(samples.len());
            let mut family_tags = Vec::with_capacity(samples.len());
            for s in &samples {
                let metrics::Value::Number(v) = s.value else {
                    continue;
                };
                let (v, start_ns, series) = if counter {
                    let key = (
                        metrics::WORKSPACE_FAMILIES.len() + pi,
                        String::new(),
                        s.labels.clone(),
                    );
                    match self.advance(key.clone(), &s.value, now_ns, process_origin_ns) {
                        (Point::Number(d), start) => (d, start, Some(key)),
                        (Point::Hist(_), _) => continue,
                    }
                } else {
                    (v, 0, None)
                };
                family_tags.push(Tag {
                    workspace: String::new(),
                    series,
                });
                data_points.push(pb::NumberDataPoint {
                    attributes: family
                        .labels
                        .iter()
                        .zip(&s.labels)
                        .map(|(k, v)| kv(k, v))
                        .collect(),
                    start_time_unix_nano: start_ns,
                    time_unix_nano: now_ns,
                    value: Some(number_data_point::Value::AsDouble(v)),
                    ..Default::default()
                });
            }
            if data_points.is_empty() {
                continue;
            }
            // A process counter is a monotonic Sum, as the README's table says.
            let data = match family.kind {
                Kind::Counter => Data::Sum(pb::Sum {
                    data_points,
                    aggregation_temporality: temporality,
                    is_monotonic: true,
                }),
                _ => Data::Gauge(pb::Gauge { data_points }),
            };
            tags.push(family_tags);
            out.push(pb::Metric {
                name: otel_name(family),
                description: family.help.to_string(),
                unit: family.unit.to_string(),
                data: Some(data),
                ..Default::default()
            });
        }
        // Series gone from every snapshot (a workspace removed) are forgotten.
        let generation = self.generation;
        self.series.retain(|_, s| s.seen == generation);
        // A workspace whose series are all gone (its slot stopped, by a
        // reload say) is primed again by the next slot's baseline, even
        // under the same origin (restored from the same checkpoint line):
        // else its deltas would start from zero and re-send the totals.
        let live: HashSet<&str> = self.series.keys().map(|(_, w, _)| w.as_str()).collect();
        self.primed.retain(|(w, _, _)| live.contains(w.as_str()));
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![pb::ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![pb::ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "clawmesh-exporter".into(),
                        version: metrics::version().into(),
                        ..Default::default()
                    }),
                    metrics: out,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        Batch {
            request,
            built_ns: now_ns,
            points,
            tags,
        }
    }

    /// A workspace whose counters went on from a checkpoint: its restored
    /// totals are where each series stood (delivered before the restart),
    /// so that a delta counts this process's increase, not the totals
    /// again. Once per slot: a reload's new slot goes on from the stopped
    /// one's counters, which its breakdown settings may fold into series
    /// the workspace never showed (those start at their folded value;
    /// those it showed go on from their last point).
    fn prime(&mut self, snap: &Snapshot) {
        let Some(base) = &snap.baseline else {
            return;
        };
        let origin_ns = (snap.counting_since * 1e9) as u64;
        let slot_ns = (snap.slot_since * 1e9) as u64;
        if !self
            .primed
            .insert((snap.workspace.clone(), origin_ns, slot_ns))
        {
            return;
        }
        let mut samples = Vec::new();
        for (fi, family) in metrics::WORKSPACE_FAMILIES.iter().enumerate() {
            // Only what the checkpoint kept goes on from it.
            if family.kind == Kind::Gauge || !metrics::restored(family.name) {
                continue;
            }
            samples.clear();
            (family.collect)(base, &mut samples);
            for s in &samples {
                let key = (fi, snap.workspace.clone(), series_id(base, s));
                self.series.entry(key).or_insert_with(|| Series {
                    last: Point::of(&s.value),
                    last_ns: self.delivered_ns,
                    start_ns: origin_ns,
                    undelivered: None,
                    delivered_ns: self.delivered_ns,
                    seen: self.generation,
                    origin_ns,
                });
            }
        }
    }

    /// The point to send for a counter or histogram series, and its start.
    fn advance(
        &mut self,
        key: (usize, String, Vec<String>),
        v: &Value,
        now_ns: u64,
        origin_ns: u64,
    ) -> (Point, u64) {
        let current = Point::of(v);
        let generation = self.generation;
        let delivered = self.delivered_ns;
        // A series counts from when its workspace's counting began (a slot
        // restarted by a reload begins again; counters restored from a
        // checkpoint began before this process), else from this process.
        let start = if origin_ns > 0 {
            origin_ns
        } else {
            self.started_ns
        };
        let zero = match &current {
            Point::Number(_) => Point::Number(0.0),
            Point::Hist(h) => Point::Hist(Hist {
                counts: vec![0; h.counts.len()],
                sum: 0.0,
                count: 0,
                exp: Exponential::default(),
                bounds: h.bounds,
            }),
        };
        // Before the first delivery a series' increase is all it counted
        // since its origin, which may precede this pusher (the process's
        // CPU time, a workspace polled before the first export): its first
        // delta starts there, not at the pusher's start.
        let first_from = if !self.delivered_any && origin_ns > 0 {
            delivered.min(origin_ns)
        } else {
            delivered
        };
        let s = self.series.entry(key).or_insert_with(|| Series {
            // A series first seen now counted zero before: its total counts
            // from its start, its increase from the last delivery.
            last: zero.clone(),
            last_ns: delivered,
            start_ns: start,
            undelivered: None,
            delivered_ns: first_from,
            seen: generation,
            origin_ns,
        });
        s.seen = generation;
        if s.origin_ns != origin_ns {
            // The workspace's counting restarted: everything it shows now
            // is new, even where it already exceeds the old total.
            s.origin_ns = origin_ns;
            s.start_ns = start;
            s.last = zero;
        }
        let increase = match current.since(&s.last) {
            Some(d) => d,
            None => {
                // Reset: the count restarted after we last saw it.
                s.start_ns = s.last_ns;
                current.clone()
            }
        };
        s.last = current.clone();
        s.last_ns = now_ns;
        match self.temporality {
            Temporality::Cumulative => (current, s.start_ns),
            Temporality::Delta => {
                let sum = match s.undelivered.take() {
                    Some(u) => u.plus(increase),
                    None => increase,
                };
                s.undelivered = Some(sum.clone());
                (sum, s.delivered_ns)
            }
        }
    }

    /// The batch built at `built_ns` was accepted whole: deltas start
    /// afresh from it.
    pub fn delivered(&mut self, built_ns: u64) {
        self.delivered_ns = built_ns;
        self.delivered_any = true;
        for s in self.series.values_mut() {
            s.undelivered = None;
            s.delivered_ns = built_ns;
        }
    }

    /// One part of the batch built at `built_ns` was accepted: the series
    /// it carried start afresh from it; the others keep their undelivered
    /// increase for the next build, so no part is ever sent twice.
    pub fn delivered_part<'a>(
        &mut self,
        series: impl IntoIterator<Item = &'a SeriesKey>,
        built_ns: u64,
    ) {
        self.delivered_any = true;
        for key in series {
            if let Some(s) = self.series.get_mut(key) {
                s.undelivered = None;
                s.delivered_ns = built_ns;
            }
        }
    }
}

fn buckets(b: &crate::histogram::ExpBuckets) -> Buckets {
    Buckets {
        offset: b.offset,
        bucket_counts: b.counts.clone(),
    }
}
