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

/// `Retry-After` in whole seconds (the contract's form). An HTTP date or
/// garbage is ignored: the backoff still applies.
/// The longest `Retry-After` honoured: the rate-limit window is a minute, so
/// anything far longer is a misbehaving proxy, and an absurd value must not
/// overflow the clock or stall the workspace for a day.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

pub(crate) fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retry_after_is_capped() {
        assert_eq!(parse_retry_after(Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(Some("18446744073709551615")),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after(Some("soon")), None);
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
        assert_eq!(parse_retry_after(Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(Some(" 30 ")),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(Some("-1")), None);
        assert_eq!(parse_retry_after(None), None);
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
