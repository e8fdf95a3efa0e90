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
//! The answers of the last [`KEEP`] are kept: the offset lies in the
//! intersection of the newest run of them that agree. An answer that
//! disagrees with the one before it is held aside, not believed, until a
//! second agrees with it (then the API's clock stepped): a proxy answering
//! with its own clock, or a cached answer, must not move every boundary.
//! Answers older than [`KEEP`] drop out, so one wrong answer that happened
//! to overlap (a lie under a second, a step under a second) narrows the
//! interval for a minute at most, never for good. The clock is
//! *confirmed* once two answers agree.

use super::types::Timestamp;
use std::sync::Mutex;
use std::time::Duration;

/// How long an answer is kept to narrow (or outvote) later ones.
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
    /// The host's instant this is for.
    pub host: Timestamp,
    /// How many answers agree on the offset: 0 when the host's clock stands
    /// in (no `Date` seen), 1 for one answer's word; 2 and more confirm it.
    pub answers: u32,
}

impl ApiTime {
    /// The best single estimate (the middle of the interval): for ages.
    pub fn estimate(self) -> Timestamp {
        Timestamp::from_micros(midpoint(self.earliest.micros(), self.latest.micros()))
    }

    /// The host's clock taken as the API's (no `Date` seen yet).
    pub fn host(now: Timestamp) -> Self {
        ApiTime {
            earliest: now,
            latest: now,
            host: now,
            answers: 0,
        }
    }

    /// Two answers agree on the offset.
    pub fn confirmed(self) -> bool {
        self.answers >= 2
    }

    /// The API's time (latest bound) at another host instant, by the same
    /// offset.
    pub fn latest_at(self, host: Timestamp) -> Timestamp {
        Timestamp::from_micros(
            host.micros()
                .saturating_add(self.latest.micros().saturating_sub(self.host.micros())),
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Interval {
    /// Bounds of the offset in microseconds, `lo <= offset <= hi`.
    lo: i64,
    hi: i64,
    /// Host time of the (newest) answer.
    at: Timestamp,
    /// Answers that agreed on it.
    answers: u32,
}

impl Interval {
    fn meet(self, o: Interval) -> Option<Interval> {
        (self.lo.max(o.lo) <= self.hi.min(o.hi)).then_some(Interval {
            lo: self.lo.max(o.lo),
            hi: self.hi.min(o.hi),
            at: self.at.max(o.at),
            answers: self.answers.saturating_add(o.answers),
        })
    }
}

/// At most this many recent answers are kept.
const MAX_ANSWERS: usize = 64;

#[derive(Debug, Default)]
struct State {
    /// The answers of the last [`KEEP`], oldest first.
    recent: std::collections::VecDeque<Interval>,
    /// What the clock says: the newest run of agreeing answers (one that
    /// disagrees alone does not replace it).
    current: Option<Interval>,
}

/// The measured offset of one client's API; cheap to read.
#[derive(Debug, Default)]
pub struct ApiClock {
    state: Mutex<State>,
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
        let new = Interval {
            lo,
            hi,
            at: received,
            answers: 1,
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let warn_before = st.current.map(|c| skew_is_large(c.lo, c.hi));
        let keep_after = received.micros().saturating_sub(KEEP.as_micros() as i64);
        st.recent.retain(|a| a.at.micros() > keep_after);
        if st.recent.len() >= MAX_ANSWERS {
            st.recent.pop_front();
        }
        st.recent.push_back(new);
        // The newest run of answers that agree, newest first.
        let mut run = new;
        for older in st.recent.iter().rev().skip(1) {
            match run.meet(*older) {
                Some(m) => run = m,
                None => break,
            }
        }
        if run.answers >= 2 || st.current.is_none() {
            st.current = Some(run);
        } else if let Some(c) = st.current.as_mut() {
            // One answer that disagrees with the one before: held aside.
            // What the clock says stands, but ages like the answers do.
            if c.at.micros() <= keep_after {
                *c = run;
            }
        }
        let next = st.current.expect("set above");
        drop(st);
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
        let cur = self.state.lock().unwrap_or_else(|p| p.into_inner()).current;
        match cur {
            None => ApiTime::host(host_now),
            Some(c) => ApiTime {
                earliest: Timestamp::from_micros(host_now.micros().saturating_add(c.lo)),
                latest: Timestamp::from_micros(host_now.micros().saturating_add(c.hi)),
                host: host_now,
                answers: c.answers,
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
        let cur = self.state.lock().unwrap_or_else(|p| p.into_inner()).current;
        cur.map(|c| midpoint(c.lo, c.hi) as f64 / 1e6)
    }
}

/// The middle of `lo..=hi`, without overflow.
fn midpoint(lo: i64, hi: i64) -> i64 {
    lo / 2 + hi / 2 + (lo % 2 + hi % 2) / 2
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
        assert!(c.now().confirmed());
        // The API's clock steps 30 s ahead: one answer that does not fit is
        // held aside; a second that agrees with it wins.
        c.observe(
            Some("Wed, 02 Dec 2026 10:00:51 GMT"),
            host("20.9"),
            host("21.0"),
        );
        assert!(
            c.at(host("21")).latest < host("22"),
            "one answer moved the clock"
        );
        c.observe(
            Some("Wed, 02 Dec 2026 10:00:52 GMT"),
            host("21.9"),
            host("22.0"),
        );
        let t = c.at(host("21"));
        assert!(
            t.earliest >= host("51") && t.latest < ts("2026-12-02T10:00:52.1Z"),
            "{t:?}"
        );
    }

    #[test]
    fn one_lying_answer_does_not_move_the_clock() {
        let c = ApiClock::default();
        let host = |s: &str| ts(&format!("2026-12-02T10:00:{s}Z"));
        c.observe(
            Some("Wed, 02 Dec 2026 10:00:10 GMT"),
            host("09.9"),
            host("10.0"),
        );
        c.observe(
            Some("Wed, 02 Dec 2026 10:00:11 GMT"),
            host("10.9"),
            host("11.0"),
        );
        // A proxy's answer a day behind, then the API again.
        c.observe(
            Some("Tue, 01 Dec 2026 10:00:12 GMT"),
            host("11.9"),
            host("12.0"),
        );
        c.observe(
            Some("Wed, 02 Dec 2026 10:00:13 GMT"),
            host("12.9"),
            host("13.0"),
        );
        let t = c.at(host("14"));
        assert!(
            t.earliest >= host("13") && t.latest <= host("15.2"),
            "{t:?}"
        );
        assert!(t.answers >= 2);
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

    // Answers a little off the truth: how far one may move the clock.

    fn at_ms(ms: i64) -> Timestamp {
        Timestamp::from_micros(ts("2026-12-02T10:00:00Z").micros() + ms * 1000)
    }

    fn date_at(api_ms: i64) -> String {
        chrono::DateTime::from_timestamp_micros(at_ms(api_ms).micros())
            .unwrap()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
    }

    /// One answer from an API whose clock is `offset_ms` ahead of the host,
    /// sent at host `sent_ms`, answered 5 ms later, received 10 ms later.
    fn answer(c: &ApiClock, sent_ms: i64, offset_ms: i64) {
        c.observe(
            Some(&date_at(sent_ms + 5 + offset_ms)),
            at_ms(sent_ms),
            at_ms(sent_ms + 10),
        );
    }

    #[test]
    fn one_answer_off_by_under_a_second_narrows_the_clock_off_the_truth_for_good() {
        // The API agrees with the host. Polls every 5 s at the same
        // sub-second phase (a periodic loop on a synced host does that).
        let c = ApiClock::default();
        for k in 0..3 {
            answer(&c, k * 5000 + 200, 0);
        }
        // One answer from a proxy 0.9 s ahead: it overlaps the interval,
        // so it narrows it instead of being held aside.
        answer(&c, 15_200, 900);
        // Ten minutes of true answers at the same phase.
        for k in 4..124 {
            answer(&c, k * 5000 + 200, 0);
        }
        let now = at_ms(124 * 5000);
        let t = c.at(now);
        // The true API time is `now`: the bounds must hold it.
        assert!(
            t.earliest <= now && now <= t.latest,
            "API time {now:?} outside [{:?}, {:?}] ten minutes after one answer",
            t.earliest,
            t.latest
        );
    }

    #[test]
    fn a_real_step_under_a_second_is_never_followed() {
        // Answers at many phases narrow the interval to ~10 ms around 0.
        let c = ApiClock::default();
        for (k, phase) in [0, 990, 500, 250, 750, 100, 900].iter().enumerate() {
            answer(&c, k as i64 * 5000 + phase, 0);
        }
        // The API's NTP steps it 0.5 s ahead; polls keep their phase.
        for k in 7..127 {
            answer(&c, k * 5000 + 300, 500);
        }
        let now = at_ms(127 * 5000);
        let api_now = at_ms(127 * 5000 + 500);
        let t = c.at(now);
        assert!(
            t.earliest <= api_now && api_now <= t.latest,
            "API time {api_now:?} outside [{:?}, {:?}] ten minutes after the step",
            t.earliest,
            t.latest
        );
    }
}
