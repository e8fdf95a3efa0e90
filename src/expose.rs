//! Renders the metric table to the Prometheus text format, once per sync.
//! The `prometheus` crate does the encoding (escaping, histogram suffixes);
//! the values come only from the table in `metrics`.

use crate::fleet::Snapshot;
use crate::metrics::{self, Kind, ProcessInfo, Sample, Value};
use bytes::Bytes;
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use std::io::Write;

/// One rendered exposition, plain and gzipped, shared by every scrape until
/// the next sync replaces it.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub text: Bytes,
    pub gzip: Bytes,
}

impl Exposition {
    pub fn new(text: String) -> Self {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        // Writing into a Vec cannot fail.
        let gzip = gz
            .write_all(text.as_bytes())
            .and_then(|_| gz.finish())
            .unwrap_or_default();
        Exposition {
            text: Bytes::from(text),
            gzip: Bytes::from(gzip),
        }
    }
}

/// The text exposition of every workspace plus the exporter's own series.
pub fn render(process: &ProcessInfo, snapshots: &[Snapshot]) -> String {
    let mut families = Vec::with_capacity(metrics::WORKSPACE_FAMILIES.len() + 8);
    families.push(build_info());
    let mut samples = Vec::new();
    for family in metrics::PROCESS_FAMILIES {
        let mut mf = header(family.name, family.help, family.kind);
        samples.clear();
        (family.collect)(process, &mut samples);
        for s in &samples {
            mf.mut_metric()
                .push(metric(family.kind, family.labels, &[], &[], s));
        }
        if !mf.get_metric().is_empty() {
            families.push(mf);
        }
    }
    for family in metrics::WORKSPACE_FAMILIES {
        let mut mf = header(family.name, family.help, family.kind);
        for snap in snapshots {
            samples.clear();
            (family.collect)(snap, &mut samples);
            for s in &samples {
                mf.mut_metric().push(metric(
                    family.kind,
                    family.labels,
                    &snap.labels,
                    &snap.dims,
                    s,
                ));
            }
        }
        if !mf.get_metric().is_empty() {
            families.push(mf);
        }
    }
    let mut out = String::new();
    // The encoder only fails on malformed families, which the table cannot build.
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
        tracing::error!(error = %e, "rendering /metrics failed; this is a bug");
    }
    out
}

fn header(name: &str, help: &str, kind: Kind) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(name.to_string());
    mf.set_help(help.to_string());
    mf.set_field_type(match kind {
        Kind::Gauge => MetricType::GAUGE,
        Kind::Counter => MetricType::COUNTER,
        Kind::Histogram => MetricType::HISTOGRAM,
    });
    mf
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

/// One sample, with the workspace's own labels (`workspace` first), then
/// its breakdown values (those it has: an empty one is no label), before
/// the family's.
fn metric(
    kind: Kind,
    names: &[&str],
    workspace: &[(String, String)],
    dims: &[String],
    s: &Sample,
) -> proto::Metric {
    let mut m = proto::Metric::default();
    let mut labels: Vec<LabelPair> = workspace.iter().map(|(n, v)| label(n, v)).collect();
    labels.extend(
        dims.iter()
            .zip(&s.by)
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| label(n, v)),
    );
    labels.extend(names.iter().zip(&s.labels).map(|(n, v)| label(n, v)));
    m.set_label(labels);
    match (&s.value, kind) {
        (Value::Number(v), Kind::Counter) => {
            let mut c = proto::Counter::default();
            c.set_value(*v);
            m.set_counter(c);
        }
        (Value::Number(v), _) => {
            let mut g = proto::Gauge::default();
            g.set_value(*v);
            m.set_gauge(g);
        }
        (Value::Histogram(h), _) => {
            let mut ph = proto::Histogram::default();
            ph.set_sample_count(h.count());
            ph.set_sample_sum(h.sum());
            ph.set_bucket(
                h.cumulative()
                    .map(|(le, n)| {
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(le);
                        b.set_cumulative_count(n);
                        b
                    })
                    .collect(),
            );
            m.set_histogram(ph);
        }
    }
    m
}

fn build_info() -> MetricFamily {
    let mut mf = header(metrics::BUILD_INFO, metrics::BUILD_INFO_HELP, Kind::Gauge);
    let mut m = proto::Metric::default();
    m.set_label(vec![
        label("revision", metrics::revision()),
        label("version", metrics::version()),
    ]);
    let mut g = proto::Gauge::default();
    g.set_value(1.0);
    m.set_gauge(g);
    mf.mut_metric().push(m);
    mf
}

#[cfg(test)]
mod tests;
