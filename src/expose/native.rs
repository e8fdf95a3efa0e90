//! A Prometheus native histogram from the base-2 exponential buckets every
//! histogram records (`histogram::Exponential`, kept for OTLP).
//!
//! Both are the same family of buckets: at OpenTelemetry scale `s` bucket
//! `i` is `(2^(i/2^s), 2^((i+1)/2^s)]`, and at Prometheus schema `s` bucket
//! `i` is `(2^((i-1)/2^s), 2^(i/2^s)]`; so Prometheus' index is
//! OpenTelemetry's plus one. Prometheus takes schemas -4 to 8; a finer
//! scale (the exponential histogram starts at 20) is merged down to 8,
//! which is exact since the buckets of a finer scale nest in a coarser
//! one's. The zero bucket is `[-2^-128, 2^-128]` (client_golang's default
//! threshold), always set, so that a histogram without observations is
//! still seen as native; it holds the exact zeros and any bucket wholly
//! inside it.

use crate::histogram::{ExpBuckets, Exponential};

/// The finest schema Prometheus takes.
pub const MAX_SCHEMA: i32 = 8;
/// The coarsest.
pub const MIN_SCHEMA: i32 = -4;
/// The zero bucket's half width, 2^-128: client_golang's default
/// (`DefNativeHistogramZeroThreshold`). A bucket boundary at every schema.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;
const ZERO_THRESHOLD_LOG2: i64 = -128;

/// The native fields of one histogram.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Native {
    pub schema: i32,
    pub zero_count: u64,
    pub positive: Spans,
    pub negative: Spans,
}

/// Buckets as Prometheus encodes them: spans of consecutive buckets (the
/// first's offset is its index, a later one's the gap after the previous
/// span) and, bucket by bucket, the change in count from the previous one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Spans {
    /// `(offset, length)`.
    pub spans: Vec<(i32, u32)>,
    pub deltas: Vec<i64>,
}

/// `None` only for a scale coarser than Prometheus' coarsest, which a
/// histogram of `f64`s never reaches (at scale -4, 160 buckets span
/// 2^2560, more than every finite `f64`).
pub fn native(e: &Exponential) -> Option<Native> {
    let schema = e.scale().min(MAX_SCHEMA);
    if schema < MIN_SCHEMA {
        return None;
    }
    let change = e.scale() - schema;
    let mut zero_count = e.zero_count();
    let mut side = |b: &ExpBuckets| {
        let mut merged: Vec<(i32, u64)> = Vec::new();
        for (i, n) in b.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let index = ((b.offset + i as i32) >> change) + 1;
            if inside_zero_bucket(index, schema) {
                zero_count = zero_count.saturating_add(*n);
                continue;
            }
            match merged.last_mut() {
                Some((last, count)) if *last == index => *count = count.saturating_add(*n),
                _ => merged.push((index, *n)),
            }
        }
        spans(&merged)
    };
    let positive = side(e.positive());
    let negative = side(e.negative());
    Some(Native {
        schema,
        zero_count,
        positive,
        negative,
    })
}

/// Whether Prometheus bucket `index` at `schema` lies wholly within the
/// zero bucket: its upper bound `2^(index/2^schema)` is at most 2^-128.
fn inside_zero_bucket(index: i32, schema: i32) -> bool {
    let index = index as i64;
    if schema >= 0 {
        index <= ZERO_THRESHOLD_LOG2 << schema
    } else {
        index << -schema <= ZERO_THRESHOLD_LOG2
    }
}

/// Spans and deltas of `(index, count)`s in increasing index. As
/// client_golang does, a gap of one or two empty buckets is written as
/// empty buckets in the span rather than as a new span (which costs more).
fn spans(buckets: &[(i32, u64)]) -> Spans {
    let mut out = Spans::default();
    let mut previous = 0u64;
    let mut next = 0i32;
    let mut push = |out: &mut Spans, count: u64| {
        // Counts past i64 wrap, as the decoder's sums wrap back.
        out.deltas
            .push((count as i64).wrapping_sub(previous as i64));
        previous = count;
        if let Some(last) = out.spans.last_mut() {
            last.1 += 1;
        }
    };
    for (n, &(index, count)) in buckets.iter().enumerate() {
        let gap = index - next;
        if n == 0 || gap > 2 {
            out.spans.push((if n == 0 { index } else { gap }, 0));
        } else {
            for _ in 0..gap {
                push(&mut out, 0);
            }
        }
        push(&mut out, count);
        next = index + 1;
    }
    out
}

/// `(index, count)` of every bucket of `spans`, empty ones included: how
/// Prometheus reads them back (tests).
#[cfg(test)]
pub fn absolute(spans: &[(i32, u32)], deltas: &[i64]) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    let (mut index, mut count, mut d) = (0i32, 0i64, deltas.iter());
    for (n, (offset, length)) in spans.iter().enumerate() {
        index = if n == 0 { *offset } else { index + offset };
        for _ in 0..*length {
            count = count.wrapping_add(*d.next().unwrap_or(&0));
            out.push((index, count as u64));
            index += 1;
        }
    }
    out
}
