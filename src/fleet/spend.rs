//! What tasks cost: spend per token kind and terminal status (the counted
//! families' `clawmesh_task_spend_total`), the tokens no price covered
//! (`Unpriced`), and the spend of tasks finished in the current calendar
//! month and day (`PeriodSpend`). Below `counters.rs`, which holds them per
//! slice; the budgets set against them are `budget.rs`.

use crate::prices::Money;
use std::collections::BTreeMap;

/// The terminal statuses spend is kept by, in the order of [`Spend`]'s
/// arrays (those of `TERMINAL_STATUSES`).
pub const SPEND_STATUSES: [&str; 3] = ["completed", "failed", "cancelled"];
/// Token kinds, in the order of [`Spend`]'s arrays.
pub const TOKEN_KINDS: [&str; 2] = ["input", "output"];

/// Spend of one slice by token kind and terminal status (exact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend(pub [[Money; 3]; 2]);

impl Spend {
    pub fn add(&mut self, kind: usize, status: usize, m: Money) {
        let v = &mut self.0[kind][status];
        *v = v.saturating_add(m);
    }
    pub fn merge(&mut self, o: &Spend) {
        for k in 0..2 {
            for s in 0..3 {
                self.add(k, s, o.0[k][s]);
            }
        }
    }
    pub fn since(&self, earlier: &Spend) -> Option<Spend> {
        let mut out = *self;
        for k in 0..2 {
            for s in 0..3 {
                out.0[k][s] = self.0[k][s].checked_sub(earlier.0[k][s])?;
            }
        }
        Some(out)
    }
    pub fn total(&self) -> Money {
        self.0
            .iter()
            .flatten()
            .fold(Money::ZERO, |a, m| a.saturating_add(*m))
    }
    pub fn is_zero(&self) -> bool {
        self.total() == Money::ZERO
    }
}

/// Spend of the tasks that finished in one calendar period (a UTC month or
/// day, numbered by [`month_of`] / [`day_of`]): only the latest period a
/// task finished in is kept; a task of an earlier one (a late value of last
/// month's task) is not added, since that period is over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodSpend {
    pub period: i64,
    pub spend: Money,
}

impl PeriodSpend {
    pub fn add(&mut self, period: i64, m: Money) {
        if period > self.period {
            *self = PeriodSpend { period, spend: m };
        } else if period == self.period {
            self.spend = self.spend.saturating_add(m);
        }
    }
    /// Two slices' spend: that of the later period (both, when the same).
    pub fn merge(&mut self, o: &PeriodSpend) {
        if o.spend == Money::ZERO {
            return;
        }
        self.add(o.period, o.spend);
    }
    /// What this holds beyond `earlier`; of another period, all of it (a
    /// period's spend is a gauge that starts again, not a counter).
    pub fn since(&self, earlier: &PeriodSpend) -> PeriodSpend {
        if earlier.period == self.period {
            PeriodSpend {
                period: self.period,
                spend: self.spend.checked_sub(earlier.spend).unwrap_or(Money::ZERO),
            }
        } else {
            *self
        }
    }
    /// The spend of `period` (zero when this holds another).
    pub fn of(&self, period: i64) -> Money {
        if self.period == period {
            self.spend
        } else {
            Money::ZERO
        }
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The UTC day of an instant (Unix micros): days since 1970-01-01.
pub fn day_of(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_DAY)
}

/// The UTC month of an instant: months since 1970-01.
pub fn month_of(micros: i64) -> i64 {
    let (y, m, _) = civil_from_days(day_of(micros));
    y * 12 + (m as i64 - 1) - 1970 * 12
}

/// When the day of `micros` ends (Unix seconds).
pub fn day_end(micros: i64) -> f64 {
    ((day_of(micros) + 1) * 86_400) as f64
}

/// When the month of `micros` ends (Unix seconds).
pub fn month_end(micros: i64) -> f64 {
    let (y, m, _) = civil_from_days(day_of(micros));
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(ny, nm, 1) * 86_400) as f64
}

/// Howard Hinnant's `civil_from_days`: (year, month 1..=12, day 1..=31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Distinct (provider, model) pairs whose unpriced tokens are counted by
/// name; later ones count under ("other", "other").
pub const MAX_UNPRICED_MODELS: usize = 100;

/// Tokens no price covered, per (provider, model) and kind: never priced
/// at 0, shown apart so a missing price is seen.
pub type Unpriced = BTreeMap<(String, String), [u64; 2]>;

/// Add `n` tokens of `kind` to `u` for `key`, bounded by
/// [`MAX_UNPRICED_MODELS`].
pub fn add_unpriced(u: &mut Unpriced, provider: &str, model: &str, kind: usize, n: u64) {
    let key = (provider.to_string(), model.to_string());
    let key = if u.contains_key(&key) || u.len() + 1 < MAX_UNPRICED_MODELS {
        key
    } else {
        (super::OTHER.to_string(), super::OTHER.to_string())
    };
    let v = &mut u.entry(key).or_default()[kind];
    *v = v.saturating_add(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_is_kept_by_every_terminal_status() {
        assert_eq!(SPEND_STATUSES, super::super::TERMINAL_STATUSES);
    }

    #[test]
    fn calendar_periods_follow_the_utc_calendar() {
        // 2024-02-29T23:59:59.999999Z: a leap day's last microsecond.
        let leap_last = 1_709_251_199_999_999;
        assert_eq!(month_end(leap_last), 1_709_251_200.0, "March 1st 2024");
        assert_eq!(day_end(leap_last), 1_709_251_200.0);
        assert_eq!(month_of(leap_last + 1), month_of(leap_last) + 1);
        assert_eq!(day_of(leap_last + 1), day_of(leap_last) + 1);
        // 2026-12-31T12:00:00Z: the year's end.
        let dec = 1_798_718_400_000_000;
        assert_eq!(month_end(dec), 1_798_761_600.0, "2027-01-01T00:00:00Z");
        assert_eq!(month_of(0), 0);
        assert_eq!(month_of(dec), 56 * 12 + 11);
        // Before 1970 too (an API clock cannot be, but no panic).
        assert_eq!(month_of(-1), -1);
        for d in -800_000..800_000i64 {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn a_period_keeps_only_its_latest_month() {
        let mut p = PeriodSpend::default();
        p.add(5, Money(10));
        p.add(5, Money(5));
        assert_eq!(p.of(5), Money(15));
        p.add(4, Money(100));
        assert_eq!(
            p.of(5),
            Money(15),
            "last period's late value is not this one's"
        );
        p.add(6, Money(1));
        assert_eq!((p.of(5), p.of(6)), (Money::ZERO, Money(1)));
        let mut q = PeriodSpend::default();
        q.merge(&p);
        assert_eq!(q, p);
        assert_eq!(p.since(&q).spend, Money::ZERO);
    }

    #[test]
    fn unpriced_models_are_bounded() {
        let mut u = Unpriced::new();
        for i in 0..1000 {
            add_unpriced(&mut u, "p", &format!("m{i}"), 0, 1);
        }
        assert_eq!(u.len(), MAX_UNPRICED_MODELS);
        let other = u[&(
            super::super::OTHER.to_string(),
            super::super::OTHER.to_string(),
        )];
        assert_eq!(other[0], 1000 - (MAX_UNPRICED_MODELS as u64 - 1));
        assert_eq!(u.values().map(|v| v[0]).sum::<u64>(), 1000);
    }
}
