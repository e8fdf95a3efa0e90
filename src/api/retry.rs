//! Backoff for retried attempts: capped exponential with full jitter, never
//! sooner than the server's `Retry-After`.

use rand::Rng;
use std::time::Duration;

/// The ceiling of the jitter window for `attempt` (0 for the first retry):
/// `min(cap, base * 2^attempt)`, saturating instead of overflowing.
pub(crate) fn backoff_ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 2u32.checked_pow(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

/// Full jitter: uniform in `[0, ceiling]`, so that many clients hit by the
/// same outage do not come back in lockstep.
pub(crate) fn full_jitter(
    attempt: u32,
    base: Duration,
    cap: Duration,
    rng: &mut impl Rng,
) -> Duration {
    let ceiling = backoff_ceiling(attempt, base, cap);
    if ceiling.is_zero() {
        return Duration::ZERO;
    }
    // min: the float round trip may land a nanosecond above the ceiling.
    Duration::from_secs_f64(rng.random_range(0.0..=ceiling.as_secs_f64())).min(ceiling)
}

/// The sleep before the next attempt: `max(jittered backoff, Retry-After)`.
pub(crate) fn retry_delay(jittered: Duration, retry_after: Option<Duration>) -> Duration {
    retry_after.map_or(jittered, |ra| ra.max(jittered))
}

/// What a refusal without a readable `Retry-After` is waited out for: the
/// rate-limit window. Never retrying sooner than asked means not guessing
/// low when the answer cannot be read.
pub(crate) const UNREADABLE_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The wait a `Retry-After` asks for (the caller bounds it by
/// `--api.max-retry-after`). Whole seconds are the contract's form; too
/// many digits to hold are the longest wait there is; an HTTP date
/// (RFC 9110) is read against `date`, the answer's own `Date` (the API's
/// clock), or the host's. On a refusal (429, 503) a value that cannot be
/// read at all (`-1`, `1e9`, garbage) waits [`UNREADABLE_RETRY_AFTER`];
/// on any other answer it is ignored.
pub(crate) fn parse_retry_after(
    value: Option<&str>,
    status: u16,
    date: Option<&str>,
) -> Option<Duration> {
    let v = value?.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let http_date = |s: &str| chrono::DateTime::parse_from_rfc2822(s.trim()).ok();
    if let Some(at) = http_date(v) {
        let now = date
            .and_then(http_date)
            .map(|d| d.timestamp_millis())
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        let ms = at.timestamp_millis().saturating_sub(now).max(0) as u64;
        return Some(Duration::from_millis(ms));
    }
    matches!(status, 429 | 503).then_some(UNREADABLE_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retry_after_too_large_to_hold_is_the_longest_wait() {
        assert_eq!(
            parse_retry_after(Some("2"), 429, None),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(Some("99999999999999999999999"), 429, None),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse_retry_after(Some("soon"), 200, None), None);
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(30);
        assert_eq!(backoff_ceiling(0, base, cap), Duration::from_millis(200));
        assert_eq!(backoff_ceiling(1, base, cap), Duration::from_millis(400));
        assert_eq!(backoff_ceiling(3, base, cap), Duration::from_millis(1600));
        assert_eq!(backoff_ceiling(10, base, cap), cap);
        assert_eq!(backoff_ceiling(u32::MAX, base, cap), cap);
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let j = Duration::from_millis(300);
        assert_eq!(retry_delay(j, None), j);
        assert_eq!(
            retry_delay(j, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(2), Some(Duration::from_secs(1))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn parses_whole_seconds_only() {
        assert_eq!(
            parse_retry_after(Some("1"), 429, None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_retry_after(Some(" 30 "), 429, None),
            Some(Duration::from_secs(30))
        );
        // An HTTP date in the past: no wait beyond the backoff.
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), 429, None),
            Some(Duration::ZERO)
        );
        // Against the answer's own Date: 90 s ahead.
        assert_eq!(
            parse_retry_after(
                Some("Wed, 21 Oct 2099 07:29:30 GMT"),
                503,
                Some("Wed, 21 Oct 2099 07:28:00 GMT")
            ),
            Some(Duration::from_secs(90))
        );
        // Far ahead: a long wait (the caller bounds it by the flag).
        assert!(
            parse_retry_after(Some("Wed, 21 Oct 2099 07:28:00 GMT"), 429, None)
                .is_some_and(|d| d > Duration::from_secs(86_400))
        );
        // Unreadable on a refusal: the window, never sooner than asked.
        for junk in ["-1", "1e9", "soon", ""] {
            assert_eq!(
                parse_retry_after(Some(junk), 429, None),
                Some(UNREADABLE_RETRY_AFTER),
                "{junk:?}"
            );
            assert_eq!(parse_retry_after(Some(junk), 200, None), None, "{junk:?}");
        }
        assert_eq!(parse_retry_after(None, 429, None), None);
    }

    #[test]
    fn jitter_uses_the_whole_window() {
        let mut rng = rand::rng();
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        let samples: Vec<Duration> = (0..2000)
            .map(|_| full_jitter(2, base, cap, &mut rng))
            .collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(samples.iter().any(|d| *d < Duration::from_millis(40)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(360)));
    }

    proptest! {
        #[test]
        fn jitter_is_within_zero_and_ceiling(attempt in 0u32..64, base_ms in 0u64..10_000, cap_ms in 0u64..100_000) {
            let base = Duration::from_millis(base_ms);
            let cap = Duration::from_millis(cap_ms);
            let d = full_jitter(attempt, base, cap, &mut rand::rng());
            prop_assert!(d <= backoff_ceiling(attempt, base, cap));
            prop_assert!(d <= cap);
        }
    }
}
