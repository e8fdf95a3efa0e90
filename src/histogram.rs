//! A plain cumulative histogram: the data, not a metrics-library handle, so
//! that any module can record into it and the metric table can render it.
//!
//! Every observation lands twice: in the explicit buckets that /metrics
//! shows, and in a base-2 exponential histogram that OTLP can send instead
//! (`--otlp.histogram exponential`). Exponential buckets cannot be derived
//! from explicit ones after the fact, so they are recorded from the raw
//! values here, the one place every observation passes; count and sum are
//! shared, so both views always agree on them.

/// Buckets (upper bounds, seconds) for API request latency.
pub const API_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative count per bucket; the last slot is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    exponential: Exponential,
    /// The latest observation per bucket that named its task.
    exemplars: Exemplars,
}

/// The label an exemplar names its task by.
pub const EXEMPLAR_LABEL: &str = "task_id";
/// OpenMetrics caps an exemplar's label names and values at 128 UTF-8
/// characters together.
pub const EXEMPLAR_MAX_LABEL_CHARS: usize = 128;

/// One observation shown beside the bucket (or counter) it counted in:
/// which task, its value, and when the exporter counted it (Unix seconds,
/// the exporter's clock, so that a scraper sees them in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    pub task_id: Box<str>,
    pub value: f64,
    pub at: f64,
}

impl Exemplar {
    /// `None` for an id past the OpenMetrics cap: a cut id would name
    /// another task, and a scraper refuses a longer label set.
    pub fn new(task_id: &str, value: f64, at: f64) -> Option<Exemplar> {
        let chars = EXEMPLAR_LABEL.len() + task_id.chars().count();
        (chars <= EXEMPLAR_MAX_LABEL_CHARS && value.is_finite() && at.is_finite()).then(|| {
            Exemplar {
                task_id: task_id.into(),
                value,
                at,
            }
        })
    }

    /// The later of two (`self` on a tie).
    fn newest<'a>(a: &'a Option<Exemplar>, b: &'a Option<Exemplar>) -> &'a Option<Exemplar> {
        match (a, b) {
            (Some(x), Some(y)) if y.at > x.at => b,
            (None, Some(_)) => b,
            _ => a,
        }
    }
}

/// The exemplar of each bucket, allocated at the first one. Two
/// histograms are equal (and print alike) when they hold the same
/// observations: which task illustrates a bucket is a sample of them, not
/// part of the count, and a checkpoint does not keep it (a restart shows
/// none until a task falls in the bucket again).
#[derive(Clone, Default)]
pub struct Exemplars(Option<Box<[Option<Exemplar>]>>);

impl PartialEq for Exemplars {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Exemplars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("_")
    }
}

/// The latest event of a counter that named its task; like [`Exemplars`],
/// equal to any other and not kept by a checkpoint.
#[derive(Clone, Default)]
pub struct LatestExemplar(pub Option<Exemplar>);

impl PartialEq for LatestExemplar {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for LatestExemplar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("_")
    }
}

impl LatestExemplar {
    /// Keep the later of the two (`self` on a tie).
    pub fn merge(&mut self, other: &LatestExemplar) {
        if let Some(theirs) = &other.0 {
            if self.0.as_ref().is_none_or(|ours| theirs.at > ours.at) {
                self.0 = Some(theirs.clone());
            }
        }
    }
}

impl Exemplars {
    fn set(&mut self, slots: usize, i: usize, e: Exemplar) {
        let v = self.0.get_or_insert_with(|| vec![None; slots].into());
        if let Some(slot) = v.get_mut(i) {
            *slot = Some(e);
        }
    }

    /// Per slot the later of the two.
    fn merge(&mut self, other: &Exemplars) {
        let Some(theirs) = &other.0 else { return };
        match &mut self.0 {
            None => self.0 = Some(theirs.clone()),
            Some(ours) => {
                for (a, b) in ours.iter_mut().zip(theirs.iter()) {
                    *a = Exemplar::newest(a, b).clone();
                }
            }
        }
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
            exponential: Exponential::default(),
            exemplars: Exemplars::default(),
        }
    }

    pub fn observe(&mut self, v: f64) {
        self.observe_as(v, None);
    }

    /// Observe `v`, and show `exemplar` (if any) as its bucket's latest.
    pub fn observe_as(&mut self, v: f64, exemplar: Option<&Exemplar>) {
        if !v.is_finite() {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        // Finite, as a checkpoint must hold it (`restore`): two run times
        // near the largest double sum past it.
        self.sum = (self.sum + v).clamp(-f64::MAX, f64::MAX);
        self.count += 1;
        self.exponential.record(v);
        if let Some(e) = exemplar {
            self.exemplars.set(self.counts.len(), i, e.clone());
        }
    }

    /// `(bucket, exemplar)`: the latest observation that named its task,
    /// per bucket that has one; bucket `bounds().len()` is `+Inf`.
    pub fn exemplars(&self) -> impl Iterator<Item = (usize, &Exemplar)> + '_ {
        self.exemplars
            .0
            .iter()
            .flat_map(|v| v.iter().enumerate())
            .filter_map(|(i, e)| Some((i, e.as_ref()?)))
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `(upper_bound, cumulative_count)` per finite bucket, as Prometheus wants.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut acc = 0;
        self.bounds.iter().zip(&self.counts).map(move |(b, c)| {
            acc += c;
            (*b, acc)
        })
    }

    /// Non-cumulative counts including the `+Inf` slot, as OTLP wants.
    pub fn bucket_counts(&self) -> &[u64] {
        &self.counts
    }

    /// The same observations in base-2 exponential buckets.
    pub fn exponential(&self) -> &Exponential {
        &self.exponential
    }

    /// Add the observations of `other` (over the same bounds) to this one:
    /// two slices of a breakdown folded into one.
    pub fn merge(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        // Finite, as a checkpoint must hold it: two slices of an edited
        // one may each be near the largest double.
        self.sum = (self.sum + other.sum).clamp(-f64::MAX, f64::MAX);
        self.count = self.count.saturating_add(other.count);
        self.exponential.merge(&other.exponential);
        self.exemplars.merge(&other.exemplars);
    }

    /// The observations this one holds beyond `earlier` (which must be a
    /// part of it); `None` when it is not.
    pub fn since(&self, earlier: &Histogram) -> Option<Histogram> {
        let mut counts = Vec::with_capacity(self.counts.len());
        for (a, b) in self.counts.iter().zip(&earlier.counts) {
            counts.push(a.checked_sub(*b)?);
        }
        Some(Histogram {
            bounds: self.bounds,
            counts,
            sum: (self.sum - earlier.sum).max(0.0),
            count: self.count.checked_sub(earlier.count)?,
            exponential: self.exponential.since(&earlier.exponential)?,
            exemplars: self.exemplars.clone(),
        })
    }
}

/// A histogram as a checkpoint keeps it (`crate::storage`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedHistogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    scale: i32,
    zero_count: u64,
    positive: (i32, Vec<u64>),
    negative: (i32, Vec<u64>),
}

impl SavedHistogram {
    /// Observations held, as saved.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Histogram {
    pub fn save(&self) -> SavedHistogram {
        let e = &self.exponential;
        SavedHistogram {
            counts: self.counts.clone(),
            sum: self.sum,
            count: self.count,
            scale: e.scale,
            zero_count: e.zero_count,
            positive: (e.positive.offset, e.positive.counts.clone()),
            negative: (e.negative.offset, e.negative.counts.clone()),
        }
    }

    /// The histogram `s` saved, over `bounds`; refused unless it is one
    /// that observations over these bounds could have made (a checkpoint
    /// from other buckets, or edited, must not panic a later observe).
    pub fn restore(bounds: &'static [f64], s: SavedHistogram) -> Result<Histogram, String> {
        let sums = |c: &[u64]| c.iter().try_fold(0u64, |a, n| a.checked_add(*n));
        // Indices finite doubles reach at the finest scale: 2^-1074 .. 2^1024.
        const REACH: i64 = 1100 << EXP_MAX_SCALE;
        let exp_ok = |(offset, counts): &(i32, Vec<u64>)| {
            let o = i64::from(*offset);
            counts.len() <= EXP_MAX_BUCKETS && (-REACH..=REACH).contains(&o)
        };
        if s.counts.len() != bounds.len() + 1 {
            return Err(format!(
                "a histogram with {} buckets where {} are expected",
                s.counts.len(),
                bounds.len() + 1
            ));
        }
        let exp_count = sums(&s.positive.1)
            .zip(sums(&s.negative.1))
            .and_then(|(p, n)| p.checked_add(n)?.checked_add(s.zero_count));
        if sums(&s.counts) != Some(s.count)
            || exp_count != Some(s.count)
            || !s.sum.is_finite()
            || !(EXP_MIN_SCALE..=EXP_MAX_SCALE).contains(&s.scale)
            || !exp_ok(&s.positive)
            || !exp_ok(&s.negative)
        {
            return Err("a histogram whose counts do not add up".into());
        }
        Ok(Histogram {
            bounds,
            counts: s.counts,
            sum: s.sum,
            count: s.count,
            exponential: Exponential {
                scale: s.scale,
                zero_count: s.zero_count,
                positive: ExpBuckets {
                    offset: s.positive.0,
                    counts: s.positive.1,
                },
                negative: ExpBuckets {
                    offset: s.negative.0,
                    counts: s.negative.1,
                },
            },
            exemplars: Exemplars::default(),
        })
    }
}

/// Most buckets per sign of an [`Exponential`], the OpenTelemetry SDKs'
/// default: past it the scale drops by one (two buckets merge into one).
pub const EXP_MAX_BUCKETS: usize = 160;
/// The finest scale, where an exponential histogram starts.
pub const EXP_MAX_SCALE: i32 = 20;
/// The coarsest scale observations reach: at -4 the indexes of every finite
/// double (2^-1074 to 2^1024) span 133 buckets, within [`EXP_MAX_BUCKETS`].
/// Prometheus' coarsest schema too (`expose::native`).
pub const EXP_MIN_SCALE: i32 = -4;

/// A base-2 exponential histogram as OpenTelemetry defines it: at scale `s`
/// bucket `i` holds values in `(2^(i/2^s), 2^((i+1)/2^s)]`. It starts at the
/// finest scale and halves its resolution whenever the observed range needs
/// more than [`EXP_MAX_BUCKETS`]; buckets of a finer scale nest exactly in
/// those of a coarser one, so the result depends only on the values seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Exponential {
    scale: i32,
    zero_count: u64,
    positive: ExpBuckets,
    negative: ExpBuckets,
}

/// Consecutive bucket counts starting at bucket index `offset`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpBuckets {
    pub offset: i32,
    pub counts: Vec<u64>,
}

impl Default for Exponential {
    fn default() -> Self {
        Exponential {
            scale: EXP_MAX_SCALE,
            zero_count: 0,
            positive: ExpBuckets::default(),
            negative: ExpBuckets::default(),
        }
    }
}

impl Exponential {
    pub fn scale(&self) -> i32 {
        self.scale
    }
    pub fn zero_count(&self) -> u64 {
        self.zero_count
    }
    pub fn positive(&self) -> &ExpBuckets {
        &self.positive
    }
    pub fn negative(&self) -> &ExpBuckets {
        &self.negative
    }
    pub fn count(&self) -> u64 {
        // Saturating: merged slices of an edited checkpoint may sum past
        // u64 (each is bounded at restore, their sum is not).
        self.positive
            .counts
            .iter()
            .chain(&self.negative.counts)
            .fold(self.zero_count, |a, n| a.saturating_add(*n))
    }

    pub fn record(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if v == 0.0 {
            self.zero_count += 1;
            return;
        }
        let index = map_to_index(v.abs(), self.scale);
        let side = if v > 0.0 {
            &self.positive
        } else {
            &self.negative
        };
        let change = side.downscale_needed(index, index);
        self.downscale(change);
        let index = index >> change;
        let side = if v > 0.0 {
            &mut self.positive
        } else {
            &mut self.negative
        };
        side.add(index, 1);
    }

    /// Halve the resolution `change` times.
    pub fn downscale(&mut self, change: i32) {
        if change <= 0 {
            return;
        }
        self.positive = self.positive.downscaled(change);
        self.negative = self.negative.downscaled(change);
        self.scale -= change;
    }

    /// What was observed since `earlier`, a previous state of the same
    /// histogram; `None` when `earlier` holds something this one does not
    /// (the histogram was reset in between).
    pub fn since(&self, earlier: &Exponential) -> Option<Exponential> {
        let scale = self.scale.min(earlier.scale);
        let (mut now, mut then) = (self.clone(), earlier.clone());
        now.downscale(now.scale - scale);
        then.downscale(then.scale - scale);
        Some(Exponential {
            scale,
            zero_count: now.zero_count.checked_sub(then.zero_count)?,
            positive: now.positive.minus(&then.positive)?,
            negative: now.negative.minus(&then.negative)?,
        })
    }

    /// Add the observations of `other` (of any scale) to this one.
    pub fn merge(&mut self, other: &Exponential) {
        let mut other = other.clone();
        let scale = self.scale.min(other.scale);
        self.downscale(self.scale - scale);
        other.downscale(other.scale - scale);
        self.zero_count = self.zero_count.saturating_add(other.zero_count);
        let change = self
            .positive
            .union_downscale_needed(&other.positive)
            .max(self.negative.union_downscale_needed(&other.negative));
        self.downscale(change);
        other.downscale(change);
        for (i, n) in other.positive.iter() {
            self.positive.add(i, n);
        }
        for (i, n) in other.negative.iter() {
            self.negative.add(i, n);
        }
    }
}

impl ExpBuckets {
    fn iter(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        let offset = self.offset;
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(move |(i, n)| (offset + i as i32, *n))
    }

    fn range(&self) -> Option<(i32, i32)> {
        (!self.counts.is_empty()).then(|| (self.offset, self.offset + self.counts.len() as i32 - 1))
    }

    /// How many halvings make `lo..=hi`, together with what is held, fit.
    fn downscale_needed(&self, lo: i32, hi: i32) -> i32 {
        let (lo, hi) = match self.range() {
            Some((a, b)) => (lo.min(a), hi.max(b)),
            None => (lo, hi),
        };
        let mut change = 0;
        // In i64: the indexes of 1e308 and of a subnormal are each near
        // 2^30 in size, and their difference does not fit an i32.
        while (hi >> change) as i64 - (lo >> change) as i64 + 1 > EXP_MAX_BUCKETS as i64 {
            change += 1;
        }
        change
    }

    fn union_downscale_needed(&self, other: &ExpBuckets) -> i32 {
        match other.range() {
            Some((lo, hi)) => self.downscale_needed(lo, hi),
            None => 0,
        }
    }

    fn add(&mut self, index: i32, n: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(n);
            return;
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        }
        let i = (index - self.offset) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] = self.counts[i].saturating_add(n);
    }

    fn downscaled(&self, change: i32) -> ExpBuckets {
        let mut out = ExpBuckets::default();
        for (i, n) in self.iter() {
            out.add(i >> change, n);
        }
        out
    }

    /// Bucket-wise difference; `None` if any bucket would go negative.
    fn minus(&self, other: &ExpBuckets) -> Option<ExpBuckets> {
        let mut out = self.clone();
        for (i, n) in other.iter() {
            let slot = i
                .checked_sub(out.offset)
                .filter(|s| *s >= 0)
                .and_then(|s| out.counts.get_mut(s as usize))?;
            *slot = slot.checked_sub(n)?;
        }
        // Trim empty buckets at both ends.
        let first = out.counts.iter().position(|n| *n > 0);
        match first {
            None => Some(ExpBuckets::default()),
            Some(first) => {
                let last = out.counts.iter().rposition(|n| *n > 0).unwrap_or(first);
                out.counts = out.counts[first..=last].to_vec();
                out.offset += first as i32;
                Some(out)
            }
        }
    }
}

/// The bucket index of `v > 0` at `scale`, per the OpenTelemetry data model:
/// exact for powers of two (bucket upper bounds are inclusive), by logarithm
/// otherwise.
fn map_to_index(v: f64, scale: i32) -> i32 {
    let bits = v.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1u64 << 52) - 1);
    let (exp, power_of_two) = if raw_exp == 0 {
        // Subnormal: v = mantissa * 2^-1074.
        let top = 63 - mantissa.leading_zeros() as i32;
        (top - 1074, mantissa == 1u64 << top)
    } else {
        (raw_exp - 1023, mantissa == 0)
    };
    if scale <= 0 {
        let at_zero = if power_of_two { exp - 1 } else { exp };
        return at_zero >> -scale;
    }
    if power_of_two {
        return (exp << scale) - 1;
    }
    // Rounding of the logarithm may stray one bucket near a boundary; keep
    // the index inside the power-of-two range the exponent fixes, so that
    // downscaling stays consistent.
    let by_log = (v.log2() * f64::from(1u32 << scale)).ceil() as i32 - 1;
    by_log.clamp(exp << scale, ((exp + 1) << scale) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bucket_shows_its_latest_exemplar_and_a_fold_keeps_the_later() {
        let mut a = Histogram::new(&[1.0, 10.0]);
        let e = |id: &str, v: f64, at: f64| Exemplar::new(id, v, at);
        a.observe_as(0.5, e("t1", 0.5, 100.0).as_ref());
        a.observe_as(1.0, e("t2", 1.0, 101.0).as_ref());
        a.observe_as(50.0, e("t3", 50.0, 102.0).as_ref());
        a.observe(5.0);
        let shown: Vec<(usize, &str)> = a.exemplars().map(|(i, x)| (i, &*x.task_id)).collect();
        // le is inclusive: 1.0 is in the first bucket, after 0.5; +Inf is slot 2.
        assert_eq!(shown, [(0, "t2"), (2, "t3")]);
        let mut b = Histogram::new(&[1.0, 10.0]);
        b.observe_as(0.7, e("t4", 0.7, 99.0).as_ref());
        b.observe_as(7.0, e("t5", 7.0, 98.0).as_ref());
        a.merge(&b);
        let shown: Vec<(usize, &str)> = a.exemplars().map(|(i, x)| (i, &*x.task_id)).collect();
        assert_eq!(shown, [(0, "t2"), (1, "t5"), (2, "t3")]);
        // Exemplars are not part of the count: a restored copy is equal.
        assert_eq!(Histogram::restore(&[1.0, 10.0], a.save()).unwrap(), a);
    }

    #[test]
    fn an_exemplar_id_past_the_openmetrics_cap_is_not_shown_cut() {
        let fits = "x".repeat(EXEMPLAR_MAX_LABEL_CHARS - EXEMPLAR_LABEL.len());
        assert!(Exemplar::new(&fits, 1.0, 1.0).is_some());
        assert!(Exemplar::new(&format!("{fits}y"), 1.0, 1.0).is_none());
        // Characters, not bytes.
        let wide = "é".repeat(EXEMPLAR_MAX_LABEL_CHARS - EXEMPLAR_LABEL.len());
        assert!(Exemplar::new(&wide, 1.0, 1.0).is_some());
        assert!(Exemplar::new("t", f64::NAN, 1.0).is_none());
    }

    #[test]
    fn le_is_inclusive() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.cumulative().collect::<Vec<_>>(), vec![(1.0, 2), (2.0, 4)]);
        assert_eq!(h.count(), 5);
        assert_eq!(h.bucket_counts(), &[2, 2, 1]);
        assert_eq!(h.exponential().count(), 5);
    }

    #[test]
    fn exponential_indexes_follow_the_data_model() {
        // Scale 0: buckets (1,2], (2,4]...; powers of two close a bucket.
        assert_eq!(map_to_index(1.0, 0), -1);
        assert_eq!(map_to_index(1.5, 0), 0);
        assert_eq!(map_to_index(2.0, 0), 0);
        assert_eq!(map_to_index(3.0, 0), 1);
        assert_eq!(map_to_index(0.25, 0), -3);
        // Scale -1: buckets (1,4], (4,16]...
        assert_eq!(map_to_index(4.0, -1), 0);
        assert_eq!(map_to_index(5.0, -1), 1);
        // Scale 1: base sqrt(2).
        assert_eq!(map_to_index(2.0, 1), 1);
        assert_eq!(map_to_index(1.5, 1), 1);
        assert_eq!(map_to_index(1.2, 1), 0);
        assert!(map_to_index(f64::MIN_POSITIVE / 8.0, 3) < map_to_index(f64::MIN_POSITIVE, 3));
    }

    #[test]
    fn exponential_downscales_to_fit_and_keeps_every_observation() {
        let mut e = Exponential::default();
        let values = [0.0, 0.001, 0.02, 0.5, 1.0, 3.0, 60.0, 3600.0, 7200.0, -2.0];
        for v in values {
            e.record(v);
        }
        assert_eq!(e.count(), values.len() as u64);
        assert_eq!(e.zero_count(), 1);
        assert!(e.positive().counts.len() <= EXP_MAX_BUCKETS);
        assert!(e.scale() < EXP_MAX_SCALE);
        // Every value lies inside the bucket it was counted in.
        let base = 2f64.powf(2f64.powi(-e.scale()));
        for v in values.iter().filter(|v| **v > 0.0) {
            let i = map_to_index(*v, e.scale());
            assert!(
                base.powi(i) < *v * (1.0 + 1e-12) && *v <= base.powi(i + 1) * (1.0 + 1e-12),
                "{v}"
            );
            let slot = (i - e.positive().offset) as usize;
            assert!(e.positive().counts[slot] > 0, "{v}");
        }
        // The result depends only on the values, not on their order.
        let mut r = Exponential::default();
        for v in values.iter().rev() {
            r.record(*v);
        }
        assert_eq!(e, r);
    }

    #[test]
    fn exponential_since_and_merge_are_inverse() {
        let mut a = Exponential::default();
        for v in [0.5, 0.7, 2.0] {
            a.record(v);
        }
        let earlier = a.clone();
        for v in [0.0, 0.6, 900.0, 1e-4] {
            a.record(v);
        }
        let d = a.since(&earlier).unwrap();
        assert_eq!(d.count(), 4);
        let mut back = earlier.clone();
        back.merge(&d);
        assert_eq!(back, a);
        // A reset shows: the later state lacks what the earlier one had.
        assert!(Exponential::default().since(&earlier).is_none());
    }
}

#[cfg(test)]
mod extreme_tests {
    use super::*;
    use proptest::prelude::*;

    /// Values at the ends of the f64 range, where bucket indexes are
    /// largest: the API's numbers reach the histograms only through the
    /// fleet's bounds, but the maths must not depend on them.
    const EXTREMES: [f64; 9] = [
        1e308,
        1e-310,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        -1e308,
        -5e-324,
        1.0,
        0.0,
    ];

    /// Two observations near the largest double (an API may send any
    /// finite run time) sum past it: the sum stays finite, as `merge`
    /// keeps it, or every checkpoint after is refused at restore and a
    /// restart starts the restored counters over.
    #[test]
    fn a_sum_past_the_largest_double_stays_finite_and_restores() {
        for v in [f64::MAX, -f64::MAX] {
            let mut h = Histogram::new(&[1.0, 10.0]);
            h.observe(v);
            h.observe(v);
            assert!(h.sum().is_finite(), "{v}: sum {}", h.sum());
            assert_eq!(Histogram::restore(&[1.0, 10.0], h.save()), Ok(h));
        }
    }

    /// Every finite double fits 133 buckets at scale -4, so no histogram
    /// goes coarser; a checkpoint saying so is edited, and would be served
    /// without native buckets (Prometheus takes schemas -4 to 8): the
    /// series would turn classic in a Prometheus that had it native.
    #[test]
    fn a_checkpoint_coarser_than_any_observations_reach_is_refused() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        for v in EXTREMES {
            h.observe(v);
        }
        assert!(h.exponential().scale() >= EXP_MIN_SCALE);
        let mut saved = h.save();
        saved.scale = EXP_MIN_SCALE;
        assert!(Histogram::restore(&[1.0, 10.0], saved.clone()).is_ok());
        for scale in [EXP_MIN_SCALE - 1, -10] {
            saved.scale = scale;
            assert!(
                Histogram::restore(&[1.0, 10.0], saved.clone()).is_err(),
                "{scale}"
            );
        }
    }

    #[test]
    fn extremes_in_every_pair_are_counted() {
        for a in EXTREMES {
            for b in EXTREMES {
                let mut h = Histogram::new(API_LATENCY_BUCKETS);
                h.observe(a);
                h.observe(b);
                let e = h.exponential();
                assert_eq!(e.count(), 2, "{a} {b}");
                assert!(e.positive().counts.len() <= EXP_MAX_BUCKETS);
                assert!(e.negative().counts.len() <= EXP_MAX_BUCKETS);
                let mut m = Exponential::default();
                m.merge(e);
                assert_eq!(m.count(), 2);
                assert_eq!(e.since(&Exponential::default()).map(|d| d.count()), Some(2));
            }
        }
    }

    proptest! {
        /// Any finite values, in any order: no panic, every one counted,
        /// bucket arrays bounded, and merge/since consistent.
        #[test]
        fn any_finite_values_are_safe(values in proptest::collection::vec(
            prop_oneof![
                any::<f64>().prop_filter("finite", |v| v.is_finite()),
                proptest::sample::select(EXTREMES.to_vec()),
            ],
            1..40,
        )) {
            let mut h = Histogram::new(API_LATENCY_BUCKETS);
            let (first, rest) = values.split_at(values.len() / 2);
            for v in first {
                h.observe(*v);
            }
            let earlier = h.exponential().clone();
            for v in rest {
                h.observe(*v);
            }
            let e = h.exponential();
            prop_assert_eq!(h.count(), values.len() as u64);
            prop_assert_eq!(e.count(), values.len() as u64);
            prop_assert!(e.positive().counts.len() <= EXP_MAX_BUCKETS);
            prop_assert!(e.negative().counts.len() <= EXP_MAX_BUCKETS);
            let delta = e.since(&earlier).expect("a later state holds the earlier one");
            prop_assert_eq!(delta.count(), rest.len() as u64);
            let mut back = earlier.clone();
            back.merge(&delta);
            prop_assert_eq!(back.count(), e.count());
        }
    }
}
