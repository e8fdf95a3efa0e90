//! Renders the metric table, once per sync, in the formats /metrics speaks:
//! Prometheus text 0.0.4 (`text`), OpenMetrics 1.0.0 (`openmetrics`) and
//! Prometheus protobuf (`protobuf`, with native histograms from `native`).
//! The values come only from the table in `metrics`, and every format is
//! an [`Encoder`] driven by the one [`walk`] over it (families in order,
//! each family's samples of every source, labels in one order), so no
//! format can show a series another does not. Each writes straight into a
//! gzip stream, one family at a time, and only the gzip is kept. At the
//! breakdowns' caps the text is megabytes (over 100,000 series) and
//! compresses about twentyfold: a tree of every series (as the
//! `prometheus` crate's encoder takes it) cost several times the text, and
//! the text itself most of the rest. A scrape without gzip inflates it as
//! it reads it. The text format is the crate's, byte for byte
//! (`tests/golden/exposition.prom`).

use crate::fleet::Snapshot;
use crate::metrics::ProcessInfo;
use bytes::Bytes;
use std::borrow::Borrow;
use std::io::Write;

mod native;
mod openmetrics;
mod protobuf;
mod text;
mod walk;

use walk::walk;
pub use walk::{Options, DEFAULT_PLAIN_MAX};

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

/// One rendered exposition in one format, gzipped (and as it is, when a
/// scraper without gzip asked for it), shared by every scrape until the
/// next sync replaces it.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub gzip: Bytes,
    /// The bytes as they are, kept only when asked for
    /// ([`Exposition::render`]'s `identity`).
    pub identity: Option<Bytes>,
    /// Bytes of the body inflated (text, or protobuf).
    pub text_len: usize,
}

impl Exposition {
    /// Renders the exposition in `format` straight into gzip; `hint` is
    /// about how long the gzip will be (the last render's), reserved so
    /// that it does not grow by doubling.
    /// `identity`: keep the bytes as they are too (a scraper without gzip
    /// asked for this format), unless they are more than
    /// `options.plain_max`.
    pub fn render<S: Borrow<Snapshot>>(
        format: Format,
        options: &Options,
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
        // The plain bytes, while within `--web.max-plain-size`: past it a
        // scraper without gzip is served the gzip inflated as it reads.
        let mut plain = identity.then(Vec::new);
        // Writing into a Vec cannot fail.
        render_with(format, options, process, snapshots, |piece| {
            text_len += piece.len();
            let _ = gz.write_all(piece);
            if text_len > options.plain_max {
                plain = None;
            }
            if let Some(p) = &mut plain {
                p.extend_from_slice(piece);
            }
        });
        let mut gzip = gz.finish().unwrap_or_default();
        // Held until the next render: no spare capacity kept with either
        // (`Bytes` keeps a `Vec`'s; the body's, grown by doubling, can be
        // near its size again).
        gzip.shrink_to_fit();
        Exposition {
            gzip: Bytes::from(gzip),
            identity: plain.map(|mut p| {
                p.shrink_to_fit();
                Bytes::from(p)
            }),
            text_len,
        }
    }

    /// The body, inflated as it is read: a scrape without gzip holds a
    /// piece at a time, never the whole body.
    pub fn text_reader(&self) -> impl std::io::Read + Send + 'static {
        flate2::read::GzDecoder::new(std::io::Cursor::new(self.gzip.clone()))
    }

    /// The whole body (tests, and a reader that wants it at once); a
    /// protobuf body, which is not UTF-8, lossily.
    pub fn text(&self) -> String {
        let mut body = Vec::with_capacity(self.text_len);
        let _ = std::io::Read::read_to_end(&mut self.text_reader(), &mut body);
        match String::from_utf8(body) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

/// The text exposition of every workspace plus the exporter's own series.
pub fn render<S: Borrow<Snapshot>>(process: &ProcessInfo, snapshots: &[S]) -> String {
    let body = render_format(Format::Text, &Options::default(), process, snapshots);
    // The text encoder writes only `str`s.
    String::from_utf8(body).unwrap_or_default()
}

/// The exposition in `format`, whole (tests, benches and tools; the
/// server's goes through [`Exposition::render`]).
pub fn render_format<S: Borrow<Snapshot>>(
    format: Format,
    options: &Options,
    process: &ProcessInfo,
    snapshots: &[S],
) -> Vec<u8> {
    let mut out = Vec::new();
    render_with(format, options, process, snapshots, |piece| {
        out.extend_from_slice(piece)
    });
    out
}

/// The exposition in `format`, handed to `sink` in pieces of about
/// [`walk::PIECE`] bytes.
fn render_with<S: Borrow<Snapshot>>(
    format: Format,
    options: &Options,
    process: &ProcessInfo,
    snapshots: &[S],
    sink: impl FnMut(&[u8]),
) {
    match format {
        Format::Text => {
            let mut w = text::Writer::new(sink);
            walk(process, snapshots, &mut w);
            w.finish();
        }
        Format::OpenMetrics => {
            let mut w = openmetrics::Writer::new(*options, sink);
            walk(process, snapshots, &mut w);
            w.finish();
        }
        Format::Protobuf => {
            let mut w = protobuf::Writer::new(*options, sink);
            walk(process, snapshots, &mut w);
            w.finish();
        }
    }
}

#[cfg(test)]
mod tests;
