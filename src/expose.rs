//! Renders the metric table to the Prometheus text format, once per sync.
//! The values come only from the table in `metrics`; this module writes
//! them straight from the table into a gzip stream, one family at a time,
//! and only the gzipped text is kept. At the breakdowns' caps the text is
//! megabytes (over 100,000 series) and compresses about twentyfold: a tree
//! of every series (as the `prometheus` crate's encoder takes it) cost
//! several times the text, and the text itself most of the rest. A scrape
//! without gzip inflates it as it reads it. The format is the crate's,
//! byte for byte (`tests/golden/exposition.prom`).

use crate::fleet::Snapshot;
use crate::metrics::{self, Kind, ProcessInfo, Sample, Value};
use bytes::Bytes;
use std::borrow::Borrow;
use std::fmt::Write as _;
use std::io::Write;

/// The formats /metrics speaks, chosen by the scraper's `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Prometheus text 0.0.4: the default, for anything else (curl).
    Text,
    /// OpenMetrics 1.0.0 text: exemplars and `_created`.
    OpenMetrics,
    /// Prometheus protobuf (`io.prometheus.client.MetricFamily`, varint
    /// delimited): native histograms, exemplars and created timestamps.
    Protobuf,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Text, Format::OpenMetrics, Format::Protobuf];

    /// The answer's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }
}

/// What a render shows beyond the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Exemplars (task ids) in the formats that carry them
    /// (`--web.exemplars`).
    pub exemplars: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { exemplars: true }
    }
}

/// One rendered exposition in one format, gzipped (and as it is, when a
/// scraper without gzip asked for it), shared by every scrape until the
/// next sync replaces it.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub gzip: Bytes,
    /// The bytes as they are, kept only when asked for
    /// ([`Exposition::render`]'s `identity`).
    pub identity: Option<Bytes>,
    /// Bytes of the text inflated.
    pub text_len: usize,
}

/// Text is handed to the gzip stream in pieces of about this size.
const PIECE: usize = 64 * 1024;

impl Exposition {
    /// Renders the exposition (see [`render`]) straight into gzip; `hint`
    /// is about how long the gzip will be (the last render's), reserved so
    /// that it does not grow by doubling.
    /// `identity`: keep the bytes as they are too (a scraper without gzip
    /// asked for this format).
    // TODO(formats): OpenMetrics and protobuf; every format is text for now.
    pub fn render<S: Borrow<Snapshot>>(
        _format: Format,
        _options: &Options,
        process: &ProcessInfo,
        snapshots: &[S],
        hint: usize,
        identity: bool,
    ) -> Self {
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(hint + hint / 16),
            flate2::Compression::fast(),
        );
        let mut text_len = 0;
        let mut plain = Vec::new();
        // Writing into a Vec cannot fail.
        render_with(process, snapshots, |piece| {
            text_len += piece.len();
            let _ = gz.write_all(piece.as_bytes());
            if identity {
                plain.extend_from_slice(piece.as_bytes());
            }
        });
        let mut gzip = gz.finish().unwrap_or_default();
        // Held until the next render: no spare capacity kept with it.
        gzip.shrink_to_fit();
        Exposition {
            gzip: Bytes::from(gzip),
            identity: identity.then(|| Bytes::from(plain)),
            text_len,
        }
    }

    /// The text, inflated as it is read: a scrape without gzip holds a
    /// piece at a time, never the whole text.
    pub fn text_reader(&self) -> impl std::io::Read + Send + 'static {
        flate2::read::GzDecoder::new(std::io::Cursor::new(self.gzip.clone()))
    }

    /// The whole text (tests, and a reader that wants it at once).
    pub fn text(&self) -> String {
        let mut text = String::with_capacity(self.text_len);
        // The gzip was written by `render` from text: it inflates to UTF-8.
        let _ = std::io::Read::read_to_string(&mut self.text_reader(), &mut text);
        text
    }
}

/// The text exposition of every workspace plus the exporter's own series.
pub fn render<S: Borrow<Snapshot>>(process: &ProcessInfo, snapshots: &[S]) -> String {
    let mut out = String::new();
    render_with(process, snapshots, |piece| out.push_str(piece));
    out
}

/// [`render`], handed to `sink` in pieces of about [`PIECE`] bytes.
fn render_with<S: Borrow<Snapshot>>(
    process: &ProcessInfo,
    snapshots: &[S],
    sink: impl FnMut(&str),
) {
    let mut w = Writer {
        out: String::with_capacity(PIECE + PIECE / 4),
        labels: String::new(),
        sink,
    };
    w.header(metrics::BUILD_INFO, metrics::BUILD_INFO_HELP, Kind::Gauge);
    w.label("revision", metrics::revision());
    w.label("version", metrics::version());
    w.line(metrics::BUILD_INFO, "", None, 1.0);

    // One family's samples of one source at a time.
    let mut samples = Vec::new();
    for family in metrics::PROCESS_FAMILIES {
        samples.clear();
        (family.collect)(process, &mut samples);
        if !samples.is_empty() {
            w.header(family.name, family.help, family.kind);
        }
        for s in &samples {
            w.sample(family.name, family.kind, family.labels, "", &[], s);
        }
    }
    // Each workspace's own labels, `workspace` first, rendered once.
    let prefixes: Vec<String> = snapshots
        .iter()
        .map(|snap| {
            let mut p = String::new();
            for (n, v) in &snap.borrow().labels {
                push_label(&mut p, n, v);
            }
            p
        })
        .collect();
    for family in metrics::WORKSPACE_FAMILIES {
        let mut headed = false;
        for (snap, prefix) in snapshots.iter().zip(&prefixes) {
            let snap = snap.borrow();
            samples.clear();
            (family.collect)(snap, &mut samples);
            if !samples.is_empty() && !headed {
                w.header(family.name, family.help, family.kind);
                headed = true;
            }
            for s in &samples {
                w.sample(
                    family.name,
                    family.kind,
                    family.labels,
                    prefix,
                    &snap.dims,
                    s,
                );
            }
        }
    }
    w.flush();
}

/// Writes the text format into `out`, handed to `sink` whenever it holds a
/// piece; `labels` is the label set of the sample being written, reused
/// from one sample to the next.
struct Writer<F: FnMut(&str)> {
    out: String,
    labels: String,
    sink: F,
}

impl<F: FnMut(&str)> Writer<F> {
    fn flush(&mut self) {
        if !self.out.is_empty() {
            (self.sink)(&self.out);
            self.out.clear();
        }
    }

    fn header(&mut self, name: &str, help: &str, kind: Kind) {
        if !help.is_empty() {
            self.out.push_str("# HELP ");
            self.out.push_str(name);
            self.out.push(' ');
            escape(&mut self.out, help, false);
            self.out.push('\n');
        }
        self.out.push_str("# TYPE ");
        self.out.push_str(name);
        self.out.push_str(match kind {
            Kind::Gauge => " gauge\n",
            Kind::Counter => " counter\n",
            Kind::Histogram => " histogram\n",
        });
    }

    fn label(&mut self, name: &str, value: &str) {
        push_label(&mut self.labels, name, value);
    }

    /// One sample, with the workspace's own labels (`prefix`, `workspace`
    /// first), then its breakdown values (those it has: an empty one is no
    /// label), before the family's. A histogram is its buckets, `_sum` and
    /// `_count`.
    fn sample(
        &mut self,
        name: &str,
        kind: Kind,
        names: &[&str],
        prefix: &str,
        dims: &[String],
        s: &Sample,
    ) {
        self.labels.clear();
        self.labels.push_str(prefix);
        for (n, v) in dims.iter().zip(&s.by).filter(|(_, v)| !v.is_empty()) {
            self.label(n, v);
        }
        for (n, v) in names.iter().zip(&s.labels) {
            self.label(n, v);
        }
        match (&s.value, kind) {
            (Value::Number(v), _) => self.line(name, "", None, *v),
            (Value::Histogram(h), _) => {
                // The bounds are finite, so `+Inf` is always added, as the
                // encoder of the `prometheus` crate does.
                for (le, n) in h.cumulative() {
                    self.line(name, "_bucket", Some(Le::Bound(le)), n as f64);
                }
                self.line(name, "_bucket", Some(Le::Inf), h.count() as f64);
                self.line(name, "_sum", None, h.sum());
                self.line(name, "_count", None, h.count() as f64);
            }
        }
        if self.out.len() >= PIECE {
            self.flush();
        }
    }

    /// `name{labels} value`: numbers as Rust's `Display` writes them
    /// (`1`, `0.25`, `inf`, `NaN`), as the `prometheus` crate does.
    fn line(&mut self, name: &str, suffix: &str, le: Option<Le>, value: f64) {
        let out = &mut self.out;
        out.push_str(name);
        out.push_str(suffix);
        if !self.labels.is_empty() || le.is_some() {
            out.push('{');
            out.push_str(&self.labels);
            if let Some(le) = le {
                if !self.labels.is_empty() {
                    out.push(',');
                }
                match le {
                    Le::Bound(b) => {
                        let _ = write!(out, "le=\"{b}\"");
                    }
                    Le::Inf => out.push_str("le=\"+Inf\""),
                }
            }
            out.push('}');
        }
        // Writing into a String cannot fail.
        let _ = writeln!(out, " {value}");
    }
}

/// The `le` label of a histogram bucket.
#[derive(Clone, Copy)]
enum Le {
    Bound(f64),
    Inf,
}

/// `,name="value"` (no comma first in an empty set), the value escaped.
fn push_label(set: &mut String, name: &str, value: &str) {
    if !set.is_empty() {
        set.push(',');
    }
    set.push_str(name);
    set.push_str("=\"");
    escape(set, value, true);
    set.push('"');
}

/// The text format's escapes: `\` and a newline always, `"` in label
/// values (`quote`); nothing else.
fn escape(out: &mut String, v: &str, quote: bool) {
    let mut rest = v;
    while let Some(i) = rest.find(|c| c == '\\' || c == '\n' || (quote && c == '"')) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            _ => "\\\"",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests;
