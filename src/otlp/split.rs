//! One export into requests of at most `--otlp.max-request-size` (encoded
//! protobuf, before compression). A Collector refuses a gRPC message over
//! 4 MiB by default, and a fleet broken down by model and agent makes more
//! than that. The batch is cut between metrics, and a metric between its
//! data points (each part repeats the metric's name, unit and description);
//! each part keeps the resource and scope. Pure: no I/O.
//!
//! Each part carries the [`Tag`]s of its points, so that the pusher can
//! settle the delta state of exactly the series a delivered part carried,
//! and retry a failed part alone: a part never goes out twice.

use super::batch::Tag;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{self as pb, metric::Data};
use prost::Message;
use std::ops::Range;

/// One request of a split export.
pub struct Part {
    pub request: ExportMetricsServiceRequest,
    /// What each of its data points belongs to.
    pub tags: Vec<Tag>,
}

/// A data point that cannot fit in a request of the limit, even alone.
pub struct Oversized {
    pub metric: String,
    /// Its encoded size in bytes.
    pub size: usize,
    pub tag: Tag,
}

/// Room for the length prefixes of the enclosing messages (ResourceMetrics,
/// ScopeMetrics; a Metric and its data) to grow from one byte to five.
const ENVELOPE_SLACK: usize = 2 * 4;
const METRIC_SLACK: usize = 2 * 4;

/// The encoded size of each data point as a field of its data message
/// (`data_points` is field 1 in every kind).
fn point_sizes(d: &Data) -> Vec<usize> {
    fn sizes<P: Message>(points: &[P]) -> Vec<usize> {
        points
            .iter()
            .map(|p| prost::encoding::message::encoded_len(1, p))
            .collect()
    }
    match d {
        Data::Gauge(g) => sizes(&g.data_points),
        Data::Sum(s) => sizes(&s.data_points),
        Data::Histogram(h) => sizes(&h.data_points),
        Data::ExponentialHistogram(h) => sizes(&h.data_points),
        Data::Summary(s) => sizes(&s.data_points),
    }
}

/// The same data with only the points in `r`.
fn with_range(d: &Data, r: Range<usize>) -> Data {
    match d {
        Data::Gauge(g) => Data::Gauge(pb::Gauge {
            data_points: g.data_points[r].to_vec(),
        }),
        Data::Sum(s) => Data::Sum(pb::Sum {
            data_points: s.data_points[r].to_vec(),
            ..*s
        }),
        Data::Histogram(h) => Data::Histogram(pb::Histogram {
            data_points: h.data_points[r].to_vec(),
            ..*h
        }),
        Data::ExponentialHistogram(h) => Data::ExponentialHistogram(pb::ExponentialHistogram {
            data_points: h.data_points[r].to_vec(),
            ..*h
        }),
        Data::Summary(s) => Data::Summary(pb::Summary {
            data_points: s.data_points[r].to_vec(),
        }),
    }
}

/// Split `request` (one resource, one scope, as the batcher builds it;
/// `tags[i]` for the points of its metric `i`) into parts of at most `max`
/// encoded bytes each. Points that cannot fit even alone come back apart.
pub fn split(
    request: ExportMetricsServiceRequest,
    tags: Vec<Vec<Tag>>,
    max: usize,
) -> (Vec<Part>, Vec<Oversized>) {
    if request.encoded_len() <= max {
        return (
            vec![Part {
                request,
                tags: tags.into_iter().flatten().collect(),
            }],
            Vec::new(),
        );
    }
    // The request without its metrics: every part repeats it.
    let mut template = request;
    let metrics: Vec<pb::Metric> = template
        .resource_metrics
        .iter_mut()
        .flat_map(|r| r.scope_metrics.iter_mut())
        .flat_map(|s| std::mem::take(&mut s.metrics))
        .collect();
    template.resource_metrics.truncate(1);
    if let Some(r) = template.resource_metrics.first_mut() {
        r.scope_metrics.truncate(1);
    }
    let base = template.encoded_len() + ENVELOPE_SLACK;

    // Plan: which points of which metric go in each part.
    let mut plans: Vec<Vec<(usize, Range<usize>)>> = Vec::new();
    let mut oversized = Vec::new();
    let mut current: Vec<(usize, Range<usize>)> = Vec::new();
    let mut size = base;
    for (i, m) in metrics.iter().enumerate() {
        let Some(data) = &m.data else { continue };
        let shell = prost::encoding::message::encoded_len(
            2,
            &pb::Metric {
                data: Some(with_range(data, 0..0)),
                ..m.clone_without_data()
            },
        ) + METRIC_SLACK;
        let sizes = point_sizes(data);
        let mut open: Option<usize> = None;
        for (j, &point) in sizes.iter().enumerate() {
            let need = point + if open.is_some() { 0 } else { shell };
            if size + need > max {
                if let Some(start) = open.take() {
                    current.push((i, start..j));
                }
                if !current.is_empty() {
                    plans.push(std::mem::take(&mut current));
                }
                size = base;
                if base + shell + point > max {
                    oversized.push(Oversized {
                        metric: m.name.clone(),
                        size: base + shell + point,
                        tag: tags[i][j].clone(),
                    });
                    continue;
                }
            }
            if open.is_none() {
                open = Some(j);
                size += shell;
            }
            size += point;
        }
        if let Some(start) = open {
            current.push((i, start..sizes.len()));
        }
    }
    if !current.is_empty() {
        plans.push(current);
    }

    let parts = plans
        .into_iter()
        .map(|plan| {
            let mut request = template.clone();
            let mut part_tags = Vec::new();
            let mut out = Vec::with_capacity(plan.len());
            for (i, r) in plan {
                let m = &metrics[i];
                let Some(data) = &m.data else { continue };
                part_tags.extend_from_slice(&tags[i][r.clone()]);
                out.push(pb::Metric {
                    data: Some(with_range(data, r)),
                    ..m.clone_without_data()
                });
            }
            if let Some(scope) = request
                .resource_metrics
                .first_mut()
                .and_then(|r| r.scope_metrics.first_mut())
            {
                scope.metrics = out;
            }
            Part {
                request,
                tags: part_tags,
            }
        })
        .collect();
    (parts, oversized)
}

trait CloneWithoutData {
    fn clone_without_data(&self) -> pb::Metric;
}

impl CloneWithoutData for pb::Metric {
    /// The metric's name, description, unit and metadata, without points.
    fn clone_without_data(&self) -> pb::Metric {
        pb::Metric {
            name: self.name.clone(),
            description: self.description.clone(),
            unit: self.unit.clone(),
            metadata: self.metadata.clone(),
            data: None,
        }
    }
}
