//! Prometheus protobuf: `io.prometheus.client.MetricFamily` messages, each
//! preceded by its length as a varint (`encoding=delimited`), one family
//! at a time into the gzip stream. A histogram carries its classic buckets
//! and, alongside, the native ones (`native`); counters and histograms
//! their created timestamps; buckets and the failed-tasks counter their
//! exemplars.
//!
//! The message types are transcribed from client_model's
//! `io/prometheus/client/metrics.proto` (proto2: an optional scalar is an
//! `Option`, an enum an `Option<i32>`) as prost derives: the `prometheus`
//! crate's generated model predates the native histogram and created
//! timestamp fields, and prost is already in the tree for OTLP.

use super::native;
use super::walk::{unit, Encoder, Head, Options, Series, PIECE};
use crate::histogram::{Exemplar as Recorded, EXEMPLAR_LABEL};
use crate::metrics::{Kind, Sample, Value};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Summary = 2,
    Untyped = 3,
    Histogram = 4,
    GaugeHistogram = 5,
}

/// `google.protobuf.Timestamp` (proto3: plain scalars).
#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Counter {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
    #[prost(message, optional, tag = "2")]
    pub exemplar: Option<Exemplar>,
    #[prost(message, optional, tag = "3")]
    pub created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Quantile {
    #[prost(double, optional, tag = "1")]
    pub quantile: Option<f64>,
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    pub quantile: Vec<Quantile>,
    #[prost(message, optional, tag = "4")]
    pub created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Untyped {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    #[prost(double, optional, tag = "4")]
    pub sample_count_float: Option<f64>,
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(message, optional, tag = "15")]
    pub created_timestamp: Option<Timestamp>,
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    pub zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    pub zero_count: Option<u64>,
    #[prost(double, optional, tag = "8")]
    pub zero_count_float: Option<f64>,
    #[prost(message, repeated, tag = "9")]
    pub negative_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, packed = "false", tag = "10")]
    pub negative_delta: Vec<i64>,
    #[prost(double, repeated, packed = "false", tag = "11")]
    pub negative_count: Vec<f64>,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    pub positive_delta: Vec<i64>,
    #[prost(double, repeated, packed = "false", tag = "14")]
    pub positive_count: Vec<f64>,
    #[prost(message, repeated, tag = "16")]
    pub exemplars: Vec<Exemplar>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    pub cumulative_count: Option<u64>,
    #[prost(double, optional, tag = "4")]
    pub cumulative_count_float: Option<f64>,
    #[prost(double, optional, tag = "2")]
    pub upper_bound: Option<f64>,
    #[prost(message, optional, tag = "3")]
    pub exemplar: Option<Exemplar>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BucketSpan {
    #[prost(sint32, optional, tag = "1")]
    pub offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    pub length: Option<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "4")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "5")]
    pub untyped: Option<Untyped>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
    #[prost(int64, optional, tag = "6")]
    pub timestamp_ms: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub help: Option<String>,
    #[prost(enumeration = "MetricType", optional, tag = "3")]
    pub r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
    #[prost(string, optional, tag = "5")]
    pub unit: Option<String>,
}

/// Unix seconds as a `Timestamp`.
pub fn timestamp(at: f64) -> Timestamp {
    let seconds = at.floor();
    Timestamp {
        seconds: seconds as i64,
        // Below 1e9 after rounding, unless the fraction rounds up to it.
        nanos: (((at - seconds) * 1e9).round() as i32).min(999_999_999),
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    LabelPair {
        name: Some(name.to_string()),
        value: Some(value.to_string()),
    }
}

fn exemplar(e: &Recorded) -> Exemplar {
    Exemplar {
        label: vec![label(EXEMPLAR_LABEL, &e.task_id)],
        value: Some(e.value),
        timestamp: Some(timestamp(e.at)),
    }
}

fn spans(s: &native::Spans) -> Vec<BucketSpan> {
    s.spans
        .iter()
        .map(|(offset, length)| BucketSpan {
            offset: Some(*offset),
            length: Some(*length),
        })
        .collect()
}

/// Writes each family as one delimited `MetricFamily`, the same bytes as
/// prost writes the whole message, without holding it: a first pass over
/// the family's samples measures each `Metric`, then the length, the
/// family's own fields and, on the second pass, each `Metric` as it comes
/// go out in pieces. (Holding a family's encoded body instead held
/// several megabytes at the breakdowns' caps.)
pub(super) struct Writer<F: FnMut(&[u8])> {
    options: Options,
    kind: Kind,
    /// Measuring the family (first pass), or writing it.
    measuring: bool,
    /// The family's `Metric`s' bytes, keys and lengths included.
    len: usize,
    /// The family's fields before its metrics, and after (`unit`, tag 5).
    head: Vec<u8>,
    tail: Vec<u8>,
    out: Vec<u8>,
    sink: F,
}

const METRIC_TAG: u32 = 4;

/// The bytes of a length-delimited field of `n` bytes (tag below 16).
fn field_len(n: usize) -> usize {
    1 + encoded_len_varint(n as u64) + n
}

fn label_len(name: &str, value: &str) -> usize {
    field_len(name.len()) + field_len(value.len())
}

/// A `LabelPair` as `Metric.label` (tag 1), written from borrowed strings.
fn put_label(out: &mut Vec<u8>, name: &str, value: &str) {
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint(label_len(name, value) as u64, out);
    for (tag, v) in [(1, name), (2, value)] {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(v.len() as u64, out);
        out.extend_from_slice(v.as_bytes());
    }
}

impl<F: FnMut(&[u8])> Writer<F> {
    pub fn new(options: Options, sink: F) -> Self {
        Writer {
            options,
            kind: Kind::Gauge,
            measuring: true,
            len: 0,
            head: Vec::new(),
            tail: Vec::new(),
            out: Vec::with_capacity(PIECE + PIECE / 4),
            sink,
        }
    }

    pub fn finish(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            (self.sink)(&self.out);
            self.out.clear();
        }
    }

    /// The sample's `Metric` but its labels (written apart, borrowed).
    fn metric(&self, series: &Series, s: &Sample) -> Metric {
        let mut m = Metric::default();
        match (&s.value, self.kind) {
            (Value::Histogram(h), _) => m.histogram = Some(self.histogram(h, series.created)),
            (Value::Number(v), Kind::Counter) => {
                m.counter = Some(Counter {
                    value: Some(*v),
                    exemplar: s.exemplar.filter(|_| self.options.exemplars).map(exemplar),
                    created_timestamp: Some(timestamp(series.created)),
                })
            }
            (Value::Number(v), _) => m.gauge = Some(Gauge { value: Some(*v) }),
        }
        m
    }

    fn histogram(&self, h: &crate::histogram::Histogram, created: f64) -> Histogram {
        let mut bucket: Vec<Bucket> = h
            .cumulative()
            .map(|(le, n)| Bucket {
                cumulative_count: Some(n),
                upper_bound: Some(le),
                ..Default::default()
            })
            .collect();
        let mut exemplars = Vec::new();
        if self.options.exemplars {
            for (i, e) in h.exemplars() {
                let e = exemplar(e);
                match bucket.get_mut(i) {
                    Some(b) => b.exemplar = Some(e.clone()),
                    // client_golang leaves `+Inf` out, and writes it only
                    // to carry an exemplar.
                    None => bucket.push(Bucket {
                        cumulative_count: Some(h.count()),
                        upper_bound: Some(f64::INFINITY),
                        exemplar: Some(e.clone()),
                        ..Default::default()
                    }),
                }
                exemplars.push(e);
            }
        }
        let mut out = Histogram {
            sample_count: Some(h.count()),
            sample_sum: Some(h.sum()),
            bucket,
            created_timestamp: Some(timestamp(created)),
            exemplars,
            ..Default::default()
        };
        if let Some(n) = native::native(h.exponential()) {
            out.schema = Some(n.schema);
            out.zero_threshold = Some(native::ZERO_THRESHOLD);
            out.zero_count = Some(n.zero_count);
            out.positive_span = spans(&n.positive);
            out.positive_delta = n.positive.deltas;
            out.negative_span = spans(&n.negative);
            out.negative_delta = n.negative.deltas;
        }
        out
    }
}

impl<F: FnMut(&[u8])> Encoder for Writer<F> {
    fn head(&mut self, head: Head) {
        self.kind = head.kind;
        self.measuring = true;
        self.len = 0;
        self.head.clear();
        self.tail.clear();
        let family = MetricFamily {
            name: Some(head.name.to_string()),
            help: Some(head.help.to_string()),
            r#type: Some(match head.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            } as i32),
            ..Default::default()
        };
        // Into a Vec: cannot fail.
        let _ = family.encode(&mut self.head);
        let unit = MetricFamily {
            unit: unit(head.name).map(str::to_string),
            ..Default::default()
        };
        let _ = unit.encode(&mut self.tail);
    }

    fn sample(&mut self, series: &Series, s: &Sample) {
        let m = self.metric(series, s);
        let labels = || {
            series
                .own
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .chain(series.added(s))
        };
        let len = labels()
            .map(|(n, v)| field_len(label_len(n, v)))
            .sum::<usize>()
            + m.encoded_len();
        if self.measuring {
            self.len += field_len(len);
            return;
        }
        encode_key(METRIC_TAG, WireType::LengthDelimited, &mut self.out);
        encode_varint(len as u64, &mut self.out);
        for (n, v) in labels() {
            put_label(&mut self.out, n, v);
        }
        // Into a Vec: cannot fail.
        let _ = m.encode(&mut self.out);
        if self.out.len() >= PIECE {
            self.flush();
        }
    }

    /// After the measuring pass: the family's length and its own fields,
    /// then its metrics again, now written.
    fn again(&mut self) -> bool {
        if !self.measuring {
            return false;
        }
        self.measuring = false;
        let total = self.head.len() + self.len + self.tail.len();
        encode_varint(total as u64, &mut self.out);
        self.out.extend_from_slice(&self.head);
        true
    }

    fn end(&mut self) {
        self.out.extend_from_slice(&self.tail);
        if self.out.len() >= PIECE {
            self.flush();
        }
    }
}
