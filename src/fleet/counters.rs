//! What a workspace counts: the names always exported (statuses, failure
//! codes, rejection reasons), the [`Counters`] of terminal transitions, and
//! those counters as a checkpoint keeps them ([`SavedCounters`], read back
//! bounded as the fleet bounds them live). Below the fleet, its breakdowns
//! (a slice's counters) and `saved.rs` (the fleet's counters), which all use
//! them.

use super::spend::{PeriodSpend, Spend, Unpriced};
use crate::histogram::{Histogram, LatestExemplar, SavedHistogram};
use crate::prices::Money;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The agent statuses the contract names; always exported, zeros included.
pub const AGENT_STATUSES: [&str; 6] =
    ["provisioning", "idle", "busy", "paused", "error", "offline"];
/// Open task statuses always exported.
pub const OPEN_TASK_STATUSES: [&str; 2] = ["pending", "running"];
/// Terminal statuses, always exported on the finished counter.
pub const TERMINAL_STATUSES: [&str; 3] = ["completed", "failed", "cancelled"];
/// What a failure whose code stays null past the grace counts under.
pub const UNKNOWN_CODE: &str = "unknown";
/// The failure codes the contract names, and [`UNKNOWN_CODE`]: always
/// exported, so that `increase()` sees each code's first failure.
pub const FAILURE_CODES: [&str; 6] = [
    "timeout",
    "model_error",
    "skill_error",
    "invalid_input",
    "internal",
    UNKNOWN_CODE,
];
/// The resources a workspace syncs: each has its own sync health series, and
/// they are the resources of `clawmesh_api_rejected_objects_total` (always
/// exported, with the reasons below).
pub const RESOURCES: [&str; 2] = ["agents", "tasks"];
pub const REJECT_REASONS: [&str; 5] = [
    "future_timestamp",
    "invalid_number",
    "invalid_text",
    "invalid_field",
    "malformed",
];

/// Buckets for queue and run durations: seconds to hours, since agent tasks
/// range from a quick tool call to a long research job.
pub const TASK_DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// The longest duration (seconds, about 31 years) taken as true: longer
/// ones are refused as `invalid_number`, so that no sum of them can
/// overflow to infinity.
pub const MAX_DURATION_SECONDS: f64 = 1e9;

/// Past this many distinct unknown names (statuses, error codes), further
/// ones are counted under "other" so a misbehaving API cannot blow up the
/// series count.
pub const MAX_UNKNOWN_NAMES: usize = 20;

/// Counters of terminal transitions and what they carried.
#[derive(Debug, Clone)]
pub struct Counters {
    pub finished: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the tokens cost, by kind and terminal status.
    pub spend: Spend,
    /// Spend of the tasks finished in the latest UTC month and day seen.
    pub month: PeriodSpend,
    pub day: PeriodSpend,
    /// Tokens no price covered, by (provider, model): the workspace's
    /// only (like `rejected`), never a slice's.
    pub unpriced: Unpriced,
    pub queue_seconds: Histogram,
    pub run_seconds: Histogram,
    /// (resource, reason) -> sightings refused whole or in part.
    pub rejected: BTreeMap<(&'static str, &'static str), u64>,
    /// The latest failed task counted, shown beside
    /// `clawmesh_tasks_finished_total{status="failed"}`; like a
    /// histogram's exemplars, not kept by a checkpoint.
    pub last_failed: LatestExemplar,
}

impl Default for Counters {
    fn default() -> Self {
        let zeros = |names: &[&str]| names.iter().map(|s| (s.to_string(), 0)).collect();
        Counters {
            finished: zeros(&TERMINAL_STATUSES),
            failures: zeros(&FAILURE_CODES),
            input_tokens: 0,
            output_tokens: 0,
            spend: Spend::default(),
            month: PeriodSpend::default(),
            day: PeriodSpend::default(),
            unpriced: Unpriced::new(),
            queue_seconds: Histogram::new(TASK_DURATION_BUCKETS),
            run_seconds: Histogram::new(TASK_DURATION_BUCKETS),
            rejected: RESOURCES
                .iter()
                .flat_map(|r| REJECT_REASONS.iter().map(move |why| ((*r, *why), 0)))
                .collect(),
            last_failed: LatestExemplar::default(),
        }
    }
}

impl Counters {
    /// Add what `other` counted: slices of a breakdown folded into one.
    pub fn merge(&mut self, other: &Counters) {
        let add = |a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            for (k, n) in b {
                let e = a.entry(k.clone()).or_default();
                *e = e.saturating_add(*n);
            }
        };
        add(&mut self.finished, &other.finished);
        add(&mut self.failures, &other.failures);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.spend.merge(&other.spend);
        self.month.merge(&other.month);
        self.day.merge(&other.day);
        for (k, v) in &other.unpriced {
            let e = self.unpriced.entry(k.clone()).or_default();
            for i in 0..2 {
                e[i] = e[i].saturating_add(v[i]);
            }
        }
        self.queue_seconds.merge(&other.queue_seconds);
        self.run_seconds.merge(&other.run_seconds);
        for (k, n) in &other.rejected {
            let e = self.rejected.entry(*k).or_default();
            *e = e.saturating_add(*n);
        }
        self.last_failed.merge(&other.last_failed);
    }

    /// What this counted beyond `earlier`; `None` when `earlier` is not a
    /// part of it (some count of it is larger).
    pub fn since(&self, earlier: &Counters) -> Option<Counters> {
        let sub = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            let mut out = a.clone();
            for (k, n) in b {
                let e = out.get_mut(k)?;
                *e = e.checked_sub(*n)?;
            }
            Some(out)
        };
        let mut rejected = self.rejected.clone();
        for (k, n) in &earlier.rejected {
            let e = rejected.get_mut(k)?;
            *e = e.checked_sub(*n)?;
        }
        let mut unpriced = self.unpriced.clone();
        for (k, v) in &earlier.unpriced {
            let e = unpriced.get_mut(k)?;
            for i in 0..2 {
                e[i] = e[i].checked_sub(v[i])?;
            }
        }
        Some(Counters {
            finished: sub(&self.finished, &earlier.finished)?,
            failures: sub(&self.failures, &earlier.failures)?,
            input_tokens: self.input_tokens.checked_sub(earlier.input_tokens)?,
            output_tokens: self.output_tokens.checked_sub(earlier.output_tokens)?,
            spend: self.spend.since(&earlier.spend)?,
            month: self.month.since(&earlier.month),
            day: self.day.since(&earlier.day),
            unpriced,
            queue_seconds: self.queue_seconds.since(&earlier.queue_seconds)?,
            run_seconds: self.run_seconds.since(&earlier.run_seconds)?,
            rejected,
            last_failed: self.last_failed.clone(),
        })
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        self.finished
            .values()
            .chain(self.failures.values())
            .all(|n| *n == 0)
            && self.input_tokens == 0
            && self.output_tokens == 0
            && self.spend.is_zero()
            && self.month.is_zero()
            && self.day.is_zero()
            && self.unpriced.values().all(|v| *v == [0, 0])
            && self.queue_seconds.count() == 0
            && self.run_seconds.count() == 0
            && self.rejected.values().all(|n| *n == 0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedCounters {
    finished: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    input_tokens: u64,
    output_tokens: u64,
    queue_seconds: SavedHistogram,
    run_seconds: SavedHistogram,
    rejected: Vec<(String, String, u64)>,
    /// Spend as exact decimal text ([kind][status], currency units): u128
    /// does not fit a JSON number. Absent in checkpoints of before spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spend: Option<SavedSpend>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedSpend {
    spend: [[String; 3]; 2],
    /// (period, spend) of the latest month and day.
    month: (i64, String),
    day: (i64, String),
    /// The spend of the period before each (absent in checkpoints of
    /// before it was kept).
    #[serde(default)]
    before: Option<(String, String)>,
    /// (provider, model, input, output).
    unpriced: Vec<(String, String, u64, u64)>,
}

pub(super) fn save_counters(c: &Counters) -> SavedCounters {
    SavedCounters {
        finished: c.finished.clone(),
        failures: c.failures.clone(),
        input_tokens: c.input_tokens,
        output_tokens: c.output_tokens,
        queue_seconds: c.queue_seconds.save(),
        run_seconds: c.run_seconds.save(),
        rejected: c
            .rejected
            .iter()
            .map(|((r, why), n)| (r.to_string(), why.to_string(), *n))
            .collect(),
        spend: Some(SavedSpend {
            spend: c.spend.0.map(|k| k.map(|m| m.to_decimal())),
            month: (c.month.period, c.month.spend.to_decimal()),
            day: (c.day.period, c.day.spend.to_decimal()),
            before: Some((c.month.before.to_decimal(), c.day.before.to_decimal())),
            unpriced: c
                .unpriced
                .iter()
                .map(|((p, m), v)| (p.clone(), m.clone(), v[0], v[1]))
                .collect(),
        }),
    }
}

fn restore_spend(s: SavedSpend, c: &mut Counters) -> Result<(), String> {
    let money = |t: &str| -> Result<Money, String> {
        // Any amount the scale holds: live sums saturate there (never
        // overflow), and what a live fleet counted (a hostile token value
        // can price past any bound below that) must restore, or every
        // later checkpoint would be refused and each restart start from 0.
        Money::parse_decimal(t, 0).map_err(|e| format!("spend {t:?}: {e}"))
    };
    for k in 0..2 {
        for st in 0..3 {
            c.spend.0[k][st] = money(&s.spend[k][st])?;
        }
    }
    let (month_before, day_before) = match &s.before {
        Some((m, d)) => (money(m)?, money(d)?),
        None => (Money::ZERO, Money::ZERO),
    };
    c.month = PeriodSpend {
        period: s.month.0,
        spend: money(&s.month.1)?,
        before: month_before,
    };
    c.day = PeriodSpend {
        period: s.day.0,
        spend: money(&s.day.1)?,
        before: day_before,
    };
    if s.unpriced.len() > super::spend::MAX_UNPRICED_MODELS {
        return Err("unpriced tokens of more models than the fleet admits".into());
    }
    for (p, m, i, o) in s.unpriced {
        if p.len() > super::bounded::MAX_NAME_LEN || m.len() > super::bounded::MAX_NAME_LEN {
            return Err("an unpriced model's name past 128 bytes".into());
        }
        if i > MAX_RESTORED_COUNT || o > MAX_RESTORED_COUNT {
            return Err(format!("a counter past {MAX_RESTORED_COUNT}"));
        }
        c.unpriced.insert((p, m), [i, o]);
    }
    Ok(())
}

/// The largest count a checkpoint may hold (2^53).
const MAX_RESTORED_COUNT: u64 = 1 << 53;

pub(super) fn restore_counters(s: SavedCounters) -> Result<Counters, String> {
    let mut c = Counters::default();
    // Label values come back bounded as the fleet bounds them live.
    let names_ok = |m: &BTreeMap<String, u64>| {
        m.len() <= 4 * MAX_UNKNOWN_NAMES + 16
            && m.keys().all(|k| k.len() <= super::bounded::MAX_NAME_LEN)
    };
    if !names_ok(&s.finished) || !names_ok(&s.failures) {
        return Err("counters by more names than the fleet admits".into());
    }
    // No live count gets near this (2^53: the last integer a float, and so
    // Prometheus, holds exactly); one past it cannot be a count, and one
    // at u64::MAX would overflow at the next finish.
    let counts = s
        .finished
        .values()
        .chain(s.failures.values())
        .copied()
        .chain([s.input_tokens, s.output_tokens])
        .chain([s.queue_seconds.count(), s.run_seconds.count()])
        .chain(s.rejected.iter().map(|(_, _, n)| *n))
        .collect::<Vec<u64>>();
    if counts.iter().any(|n| *n > MAX_RESTORED_COUNT) {
        return Err(format!("a counter past {MAX_RESTORED_COUNT}"));
    }
    c.finished.extend(s.finished);
    c.failures.extend(s.failures);
    c.input_tokens = s.input_tokens;
    c.output_tokens = s.output_tokens;
    if let Some(spend) = s.spend {
        restore_spend(spend, &mut c)?;
    }
    c.queue_seconds = Histogram::restore(TASK_DURATION_BUCKETS, s.queue_seconds)?;
    c.run_seconds = Histogram::restore(TASK_DURATION_BUCKETS, s.run_seconds)?;
    for (r, why, n) in s.rejected {
        // Keys are the fleet's own names; an unknown pair is not restored.
        if let Some(k) = c
            .rejected
            .keys()
            .find(|(kr, kw)| *kr == r && *kw == why)
            .copied()
        {
            c.rejected.insert(k, n);
        }
    }
    Ok(c)
}
