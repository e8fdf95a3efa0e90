//! Prometheus text 0.0.4, as the `prometheus` crate's encoder writes it,
//! byte for byte (`tests/golden/exposition.prom`).

use super::walk::{escape, push_label, Encoder, Head, Series, PIECE};
use crate::metrics::{Kind, Sample, Value};
use std::fmt::Write as _;

/// Writes the text format into `out`, handed to `sink` whenever it holds a
/// piece; `labels` is the label set of the sample being written, reused
/// from one sample to the next.
pub(super) struct Writer<F: FnMut(&[u8])> {
    out: String,
    labels: String,
    /// The family being written.
    name: &'static str,
    sink: F,
}

impl<F: FnMut(&[u8])> Writer<F> {
    pub fn new(sink: F) -> Self {
        Writer {
            out: String::with_capacity(PIECE + PIECE / 4),
            labels: String::new(),
            name: "",
            sink,
        }
    }

    pub fn finish(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            (self.sink)(self.out.as_bytes());
            self.out.clear();
        }
    }

    /// `name{labels} value`: numbers as Rust's `Display` writes them
    /// (`1`, `0.25`, `inf`, `NaN`), as the `prometheus` crate does.
    fn line(&mut self, suffix: &str, le: Option<Le>, value: f64) {
        push_series(&mut self.out, self.name, suffix, &self.labels, le);
        let out = &mut self.out;
        // Writing into a String cannot fail.
        let _ = writeln!(out, " {value}");
    }
}

impl<F: FnMut(&[u8])> Encoder for Writer<F> {
    fn head(&mut self, head: Head) {
        self.name = head.name;
        if !head.help.is_empty() {
            self.out.push_str("# HELP ");
            self.out.push_str(head.name);
            self.out.push(' ');
            escape(&mut self.out, head.help, false);
            self.out.push('\n');
        }
        self.out.push_str("# TYPE ");
        self.out.push_str(head.name);
        self.out.push_str(match head.kind {
            Kind::Gauge => " gauge\n",
            Kind::Counter => " counter\n",
            Kind::Histogram => " histogram\n",
        });
    }

    /// One sample, with its source's labels, then its breakdown values,
    /// then the family's. A histogram is its buckets, `_sum` and `_count`.
    fn sample(&mut self, series: &Series, s: &Sample) {
        self.labels.clear();
        self.labels.push_str(series.prefix);
        for (n, v) in series.added(s) {
            push_label(&mut self.labels, n, v);
        }
        match &s.value {
            Value::Number(v) => self.line("", None, *v),
            Value::Histogram(h) => {
                // The bounds are finite, so `+Inf` is always added, as the
                // encoder of the `prometheus` crate does.
                for (le, n) in h.cumulative() {
                    self.line("_bucket", Some(Le::Bound(le)), n as f64);
                }
                self.line("_bucket", Some(Le::Inf), h.count() as f64);
                self.line("_sum", None, h.sum());
                self.line("_count", None, h.count() as f64);
            }
        }
        if self.out.len() >= PIECE {
            self.flush();
        }
    }

    fn end(&mut self) {}
}

/// The `le` label of a histogram bucket, written alike by both text
/// formats (so that a series is the same whichever a scraper takes).
#[derive(Clone, Copy)]
pub(super) enum Le {
    Bound(f64),
    Inf,
}

/// `name_suffix{labels,le="…"}`, as the text format and OpenMetrics both
/// write a sample's series (no braces without labels).
pub(super) fn push_series(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    le: Option<Le>,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            le.push(out);
        }
        out.push('}');
    }
}

impl Le {
    pub fn push(self, out: &mut String) {
        match self {
            Le::Bound(b) => {
                let _ = write!(out, "le=\"{b}\"");
            }
            Le::Inf => out.push_str("le=\"+Inf\""),
        }
    }
}
