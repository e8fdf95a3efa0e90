//! The API's clock, as the exporter can know it.
//!
//! Every timestamp the API hands out is on its own clock, which may differ
//! from the host's by seconds (a skewed NTP, a proxy). Comparing an API
//! timestamp with the host's clock therefore moves every boundary by the
//! skew: the watermark can pass changes that became visible late, the
//! counting floor can count what finished before the start. So every such
//! comparison uses [`ApiTime`], read from the `Date` header of the API's
//! answers.
//!
//! A `Date` header has whole seconds, and the instant it names lies
//! somewhere between sending the request and receiving the answer. One
//! answer therefore bounds the offset (API minus host) from both sides:
//! the API's clock read `date .. date + 1 s` at some host instant between
//! `sent` and `received`, so
//! `offset >= date - received` and `offset < date + 1 s - sent`.
//! Answers within [`KEEP`] of each other narrow the interval; one that does
//! not fit it (the API's clock stepped) replaces it.

use super::types::Timestamp;
use std::sync::Mutex;
use std::time::Duration;

/// How long a measured interval is trusted to narrow later ones.
const KEEP: Duration = Duration::from_secs(60);

/// The API's time now, bounded from both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiTime {
    /// The API's clock reads at least this now: the bound for anything that
    /// must not run ahead of the API (the incremental watermark).
    pub earliest: Timestamp,
    /// The API's clock reads at most this now: the bound for "keep what
    /// could still be invisible" windows and for "after our start".
    pub latest: Timestamp,
}

impl ApiTime {
    /// The best single estimate (the middle of the interval): for ages.
    pub fn estimate(self) -> Timestamp {
        Timestamp::from_micros(
            self.earliest.micros() / 2
                + self.latest.micros() / 2
                + (self.earliest.micros() % 2 + self.latest.micros() % 2) / 2,
        )
    }

    /// The host's clock taken as the API's (no `Date` seen yet).
    pub fn host(now: Timestamp) -> Self {
        ApiTime {
            earliest: now,
            latest: now,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Interval {
    /// Bounds of the offset in microseconds, `lo <= offset <= hi`.
    lo: i64,
    hi: i64,
    /// Host time of the last answer that narrowed or set it.
    at: Timestamp,
}

/// The measured offset of one client's API; cheap to read.
#[derive(Debug, Default)]
pub struct ApiClock {
    interval: Mutex<Option<Interval>>,
}

/// An offset past this is logged as a warning once per change of mind.
pub const WARN_SKEW: Duration = Duration::from_secs(3);

impl ApiClock {
    /// Record one answer's `Date` header: sent and received on the host's
    /// clock. A header that is missing or not an HTTP date changes nothing.
    pub fn observe(&self, date: Option<&str>, sent: Timestamp, received: Timestamp) {
        let Some(date) = date.and_then(parse_http_date) else {
            return;
        };
        let lo = date.micros().saturating_sub(received.micros());
        let hi = date
            .micros()
            .saturating_add(Timestamp::MICROS_PER_SEC - 1)
            .saturating_sub(sent.micros());
        if lo > hi {
            // Received before sent: the host's clock stepped. Nothing to learn.
            return;
        }
        let mut cur = self.interval.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = cur
            .filter(|c| received.micros().saturating_sub(c.at.micros()) <= KEEP.as_micros() as i64);
        let next = match fresh {
            Some(c) if lo.max(c.lo) <= hi.min(c.hi) => Interval {
                lo: lo.max(c.lo),
                hi: hi.min(c.hi),
                at: received,
            },
            _ => Interval {
                lo,
                hi,
                at: received,
            },
        };
        let warn_before = cur.map(|c| skew_is_large(c.lo, c.hi));
        *cur = Some(next);
        drop(cur);
        let large = skew_is_large(next.lo, next.hi);
        if large && warn_before != Some(true) {
            tracing::warn!(
                skew_seconds = midpoint(next.lo, next.hi) as f64 / 1e6,
                "the ClawMesh API's clock differs from this host's; API timestamps are compared with the API's clock, but check NTP on this host"
            );
        }
    }

    /// The API's time at host instant `host_now`.
    pub fn at(&self, host_now: Timestamp) -> ApiTime {
        let cur = *self.interval.lock().unwrap_or_else(|p| p.into_inner());
        match cur {
            None => ApiTime::host(host_now),
            Some(c) => ApiTime {
                earliest: Timestamp::from_micros(host_now.micros().saturating_add(c.lo)),
                latest: Timestamp::from_micros(host_now.micros().saturating_add(c.hi)),
            },
        }
    }

    /// The API's time now.
    pub fn now(&self) -> ApiTime {
        self.at(Timestamp::host_now())
    }

    /// The measured offset (API minus host) in seconds; `None` before any
    /// answer carried a `Date`.
    pub fn skew_seconds(&self) -> Option<f64> {
        let cur = *self.interval.lock().unwrap_or_else(|p| p.into_inner());
        cur.map(|c| midpoint(c.lo, c.hi) as f64 / 1e6)
    }
}

fn midpoint(lo: i64, hi: i64) -> i64 {
    lo / 2 + hi / 2
}

fn skew_is_large(lo: i64, hi: i64) -> bool {
    midpoint(lo, hi).unsigned_abs() > WARN_SKEW.as_micros() as u64
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110's IMF-fixdate).
pub fn parse_http_date(s: &str) -> Option<Timestamp> {
    let dt = chrono::DateTime::parse_from_rfc2822(s.trim()).ok()?;
    Some(Timestamp::from_micros(dt.timestamp_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn one_answer_bounds_the_offset_from_both_sides() {
        let c = ApiClock::default();
        // The API is 15 s behind: its Date says :45 while the host reads 10:01:00.2.
        c.observe(
            Some("Wed, 02 Dec 2026 10:00:45 GMT"),
            ts("2026-12-02T10:01:00.100Z"),
            ts("2026-12-02T10:01:00.200Z"),
        );
        let t = c.at(ts("2026-12-02T10:02:00Z"));
        // earliest = host + (45.0 - 60.2), latest = host + (45.999999 - 60.1)
        assert_eq!(t.earliest, ts("2026-12-02T10:01:44.800Z"));
        assert_eq!(t.latest, ts("2026-12-02T10:01:45.899999Z"));
        let skew = c.skew_seconds().unwrap();
        assert!((-15.2..=-14.1).contains(&skew), "{skew}");
    }

    #[test]
    fn answers_narrow_the_interval_and_a_step_replaces_it() {
        let c = ApiClock::default();
        let host = |s: &str| ts(&format!("2026-12-02T10:00:{s}Z"));
        c.observe(
            Some("Wed, 02 Dec 2026 10:00:10 GMT"),
            host("09.9"),
            host("10.0"),
        );
        c.observe(
            Some("Wed, 02 Dec 2026 10:00:11 GMT"),
            host("11.3"),
            host("11.4"),
        );
        let t = c.at(host("20"));
        assert!(t.latest.micros() - t.earliest.micros() < 1_000_000);
        assert!(t.earliest <= host("20") && host("20") <= t.latest);
        // The API's clock steps 30 s ahead: the new answer does not fit; it wins.
        c.observe(
            Some("Wed, 02 Dec 2026 10:00:51 GMT"),
            host("20.9"),
            host("21.0"),
        );
        let t = c.at(host("21"));
        assert!(
            t.earliest >= host("51") && t.latest < ts("2026-12-02T10:00:52.1Z"),
            "{t:?}"
        );
    }

    #[test]
    fn without_a_date_the_host_clock_stands_in() {
        let c = ApiClock::default();
        c.observe(None, ts("2026-12-02T10:00:00Z"), ts("2026-12-02T10:00:01Z"));
        c.observe(
            Some("yesterday"),
            ts("2026-12-02T10:00:00Z"),
            ts("2026-12-02T10:00:01Z"),
        );
        assert_eq!(c.skew_seconds(), None);
        let now = ts("2026-12-02T10:00:05Z");
        assert_eq!(c.at(now), ApiTime::host(now));
    }

    #[test]
    fn absurd_dates_saturate_instead_of_overflowing() {
        let c = ApiClock::default();
        c.observe(
            Some("Fri, 31 Dec 9999 23:59:59 GMT"),
            Timestamp::from_micros(i64::MIN),
            Timestamp::from_micros(i64::MIN + 1),
        );
        let _ = c.at(Timestamp::from_micros(i64::MAX));
        let _ = c.skew_seconds();
    }
}
