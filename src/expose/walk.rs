//! The one walk over the metric table that every format's encoder is
//! driven by, and what the encoders share: the label escapes, the unit a
//! name ends in, the size of the pieces handed to the gzip stream.

use crate::fleet::Snapshot;
use crate::metrics::{self, By, Kind, ProcessInfo, Sample, Value};
use std::borrow::Borrow;

/// What a render shows beyond the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Exemplars (task ids) in the formats that carry them (off with
    /// `--web.disable-exemplars`).
    pub exemplars: bool,
    /// OpenMetrics `_created` samples (`--web.openmetrics-created`). Off
    /// by default, as in client_golang: Prometheus before 3.x stores each
    /// as a series of its own, one more per counter and histogram series.
    /// Protobuf always carries created timestamps (they cost no series).
    pub created_lines: bool,
    /// The largest body kept as it is for scrapers without gzip
    /// (`--web.max-plain-size`); a larger one is inflated from the gzip as
    /// such a scraper reads it.
    pub plain_max: usize,
}

/// `--web.max-plain-size`'s default: what three formats kept as they are
/// may cost at most, 12 MiB, fits the shipped 64 MiB limit with the rest.
pub const DEFAULT_PLAIN_MAX: usize = 4 << 20;

impl Default for Options {
    fn default() -> Self {
        Options {
            exemplars: true,
            created_lines: false,
            plain_max: DEFAULT_PLAIN_MAX,
        }
    }
}

/// Text is handed to the gzip stream in pieces of about this size.
pub const PIECE: usize = 64 * 1024;

/// A family as the walk announces it, before its first sample.
#[derive(Clone, Copy)]
pub struct Head {
    /// As the table names it (`_total` included for a counter).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

/// Where a sample belongs: its source's labels and its family's.
pub struct Series<'a> {
    /// The source's own labels (`workspace` first), escaped and joined
    /// once per source, as both text formats write them.
    pub prefix: &'a str,
    /// The same, as they are (protobuf's).
    pub own: &'a [(String, String)],
    /// The source's breakdown labels, valued by each sample's `by`.
    pub dims: &'a [String],
    /// The family's labels, valued by each sample's `labels`.
    pub names: &'a [&'a str],
    /// When the series began counting (Unix seconds): a counter's or
    /// histogram's created timestamp, the start OTLP sends
    /// (`otlp::batch`): a restored family's since the workspace began
    /// counting, any other workspace family's since the slot's start, the
    /// process's since it started.
    pub created: f64,
}

impl Series<'_> {
    /// The labels a sample adds to [`Series::own`]: its breakdown values
    /// (those it has: an empty one is no label), then the family's.
    pub fn added<'s>(&'s self, s: &'s Sample) -> impl Iterator<Item = (&'s str, &'s str)> + 's {
        self.dims
            .iter()
            .zip(&s.by)
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(
                self.names
                    .iter()
                    .zip(&s.labels)
                    .map(|(n, v)| (*n, v.as_str())),
            )
    }
}

/// What one format does with the walk.
pub trait Encoder {
    /// A family begins; called only for a family with samples.
    fn head(&mut self, head: Head);
    fn sample(&mut self, series: &Series, s: &Sample);
    /// The family's samples were all given: `true` to be given them once
    /// more (protobuf, which must write a family's length before it, and
    /// so measures it first rather than hold it).
    fn again(&mut self) -> bool {
        false
    }
    /// The family is done.
    fn end(&mut self);
}

/// The one walk over the table every format makes: the build info, the
/// process's families, then each workspace family with the samples of
/// every workspace in turn. A family without samples is left out.
pub fn walk<S: Borrow<Snapshot>>(process: &ProcessInfo, snapshots: &[S], enc: &mut impl Encoder) {
    let build_info = Sample {
        labels: vec![
            metrics::revision().to_string(),
            metrics::version().to_string(),
        ],
        value: Value::Number(1.0),
        by: By::default(),
        exemplar: None,
    };
    let series = Series {
        prefix: "",
        own: &[],
        dims: &[],
        names: &["revision", "version"],
        created: process.started_at,
    };
    enc.head(Head {
        name: metrics::BUILD_INFO,
        help: metrics::BUILD_INFO_HELP,
        kind: Kind::Gauge,
    });
    loop {
        enc.sample(&series, &build_info);
        if !enc.again() {
            break;
        }
    }
    enc.end();

    // One family's samples of one source at a time.
    let mut samples = Vec::new();
    for family in metrics::PROCESS_FAMILIES {
        samples.clear();
        (family.collect)(process, &mut samples);
        if samples.is_empty() {
            continue;
        }
        enc.head(Head {
            name: family.name,
            help: family.help,
            kind: family.kind,
        });
        let series = Series {
            prefix: "",
            own: &[],
            dims: &[],
            names: family.labels,
            created: process.started_at,
        };
        loop {
            for s in &samples {
                enc.sample(&series, s);
            }
            if !enc.again() {
                break;
            }
        }
        enc.end();
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
        let restored = metrics::restored(family.name);
        loop {
            for (snap, prefix) in snapshots.iter().zip(&prefixes) {
                let snap = snap.borrow();
                samples.clear();
                (family.collect)(snap, &mut samples);
                if !samples.is_empty() && !headed {
                    enc.head(Head {
                        name: family.name,
                        help: family.help,
                        kind: family.kind,
                    });
                    headed = true;
                }
                let series = Series {
                    prefix,
                    own: &snap.labels,
                    dims: &snap.dims,
                    names: family.labels,
                    created: if restored {
                        snap.counting_since
                    } else {
                        snap.slot_since
                    },
                };
                for s in &samples {
                    enc.sample(&series, s);
                }
            }
            if !headed || !enc.again() {
                break;
            }
        }
        if headed {
            enc.end();
        }
    }
}

/// The unit OpenMetrics and protobuf name for a family whose name (a
/// counter's without `_total`) ends in one.
pub fn unit(name: &str) -> Option<&'static str> {
    let family = name.strip_suffix("_total").unwrap_or(name);
    [("_seconds", "seconds"), ("_bytes", "bytes")]
        .into_iter()
        .find(|(suffix, _)| family.ends_with(suffix))
        .map(|(_, unit)| unit)
}

/// `,name="value"` (no comma first in an empty set), the value escaped
/// (the text format's and OpenMetrics' label escapes are the same).
pub fn push_label(set: &mut String, name: &str, value: &str) {
    if !set.is_empty() {
        set.push(',');
    }
    set.push_str(name);
    set.push_str("=\"");
    escape(set, value, true);
    set.push('"');
}

/// The text formats' escapes: `\` and a newline always, `"` when `quote`
/// (label values always; OpenMetrics' HELP too); nothing else.
pub fn escape(out: &mut String, v: &str, quote: bool) {
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
