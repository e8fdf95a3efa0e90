//! OpenMetrics 1.0.0 text. The series are the text format's, label for
//! label (`le` included, written alike), so that Prometheus stores the same
//! series whichever format it took; OpenMetrics adds the family's unit,
//! `_created` beside every counter and histogram, exemplars, and `# EOF`.

use super::text::{push_series, Le};
use super::walk::{escape, push_label, unit, Encoder, Head, Options, Series, PIECE};
use crate::histogram::{Exemplar, EXEMPLAR_LABEL};
use crate::metrics::{Kind, Sample, Value};
use std::fmt::Write as _;

/// As the text format's writer, with the family's kind kept for its
/// samples' names and `_created`.
pub(super) struct Writer<F: FnMut(&[u8])> {
    options: Options,
    out: String,
    labels: String,
    name: &'static str,
    kind: Kind,
    sink: F,
}

impl<F: FnMut(&[u8])> Writer<F> {
    pub fn new(options: Options, sink: F) -> Self {
        Writer {
            options,
            out: String::with_capacity(PIECE + PIECE / 4),
            labels: String::new(),
            name: "",
            kind: Kind::Gauge,
            sink,
        }
    }

    pub fn finish(mut self) {
        self.out.push_str("# EOF\n");
        (self.sink)(self.out.as_bytes());
    }

    /// `name{labels} value`, and the exemplar if there is one to show.
    fn line(&mut self, suffix: &str, le: Option<Le>, value: f64, exemplar: Option<&Exemplar>) {
        push_series(&mut self.out, self.name, suffix, &self.labels, le);
        let out = &mut self.out;
        out.push(' ');
        number(out, value);
        if let Some(e) = exemplar.filter(|_| self.options.exemplars) {
            out.push_str(" # {");
            let mut set = std::mem::take(&mut self.labels);
            let at = set.len();
            // The exemplar's label set, written after the sample's in the
            // same buffer and cut off again.
            push_label(&mut set, EXEMPLAR_LABEL, &e.task_id);
            let own = &set[at..];
            out.push_str(own.strip_prefix(',').unwrap_or(own));
            set.truncate(at);
            self.labels = set;
            out.push_str("} ");
            number(out, e.value);
            let _ = write!(out, " {}", e.at);
        }
        out.push('\n');
    }
}

/// A number as OpenMetrics writes it: Rust's `Display` for finite ones
/// (`1`, `0.25`), and `+Inf`, `-Inf`, `NaN`.
fn number(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        // Writing into a String cannot fail.
        let _ = write!(out, "{v}");
    }
}

impl<F: FnMut(&[u8])> Encoder for Writer<F> {
    /// `# TYPE`, `# UNIT` and `# HELP` under the family's name, which for
    /// a counter is its samples' without `_total`.
    fn head(&mut self, head: Head) {
        self.name = head.name;
        self.kind = head.kind;
        let family = match head.kind {
            Kind::Counter => head.name.strip_suffix("_total").unwrap_or(head.name),
            _ => head.name,
        };
        let out = &mut self.out;
        out.push_str("# TYPE ");
        out.push_str(family);
        out.push_str(match head.kind {
            Kind::Gauge => " gauge\n",
            Kind::Counter => " counter\n",
            Kind::Histogram => " histogram\n",
        });
        if let Some(unit) = unit(head.name) {
            let _ = writeln!(out, "# UNIT {family} {unit}");
        }
        if !head.help.is_empty() {
            out.push_str("# HELP ");
            out.push_str(family);
            out.push(' ');
            escape(out, head.help, true);
            out.push('\n');
        }
    }

    /// One sample, labelled as the text format labels it; a counter's and
    /// a histogram's followed by `_created` when asked for.
    fn sample(&mut self, series: &Series, s: &Sample) {
        self.labels.clear();
        self.labels.push_str(series.prefix);
        for (n, v) in series.added(s) {
            push_label(&mut self.labels, n, v);
        }
        match &s.value {
            Value::Number(v) => {
                self.line("", None, *v, s.exemplar);
                if self.kind == Kind::Counter && self.options.created_lines {
                    // The counter's samples are `name_total`: `_created`
                    // goes on the family's name.
                    let name = self.name;
                    self.name = name.strip_suffix("_total").unwrap_or(name);
                    self.line("_created", None, series.created, None);
                    self.name = name;
                }
            }
            Value::Histogram(h) => {
                let mut exemplars = h.exemplars().peekable();
                let mut at = |i: usize| exemplars.next_if(|(b, _)| *b == i).map(|(_, e)| e);
                for (i, (le, n)) in h.cumulative().enumerate() {
                    self.line("_bucket", Some(Le::Bound(le)), n as f64, at(i));
                }
                let inf = at(h.bounds().len());
                self.line("_bucket", Some(Le::Inf), h.count() as f64, inf);
                self.line("_sum", None, h.sum(), None);
                self.line("_count", None, h.count() as f64, None);
                if self.options.created_lines {
                    self.line("_created", None, series.created, None);
                }
            }
        }
        if self.out.len() >= PIECE {
            (self.sink)(self.out.as_bytes());
            self.out.clear();
        }
    }

    fn end(&mut self) {}
}
