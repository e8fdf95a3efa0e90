//! The API budget. The rate limit is per workspace and shared with every
//! other integration, so the exporter spends only a share of it: a token
//! bucket refilled at `share * limit` requests per minute, plus a pause until
//! the window resets when the workspace as a whole is nearly out.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The contract's limit, used until a response tells us the real one.
pub(crate) const DEFAULT_LIMIT: u64 = 1000;
/// What the contract allows `X-RateLimit-Limit` to be: 1,000 a minute,
/// with bursts to 3,000. A value outside is a broken header or proxy: `1`
/// would stall polling for minutes, `u64::MAX` would switch pacing off.
pub(crate) const MIN_LIMIT: u64 = 1000;
pub(crate) const MAX_LIMIT: u64 = 3000;
/// Below this share of the limit left in the window, wait for the reset.
const LOW_REMAINING_SHARE: f64 = 0.05;
/// Windows are one minute; a larger `Reset` is a broken header, not a reason
/// to stop for longer.
const MAX_RESET_WAIT: Duration = Duration::from_secs(60);
/// The bucket holds this many seconds' worth of requests.
const BURST_SECONDS: f64 = 10.0;

pub(crate) struct Budget {
    /// Held by one acquirer at a time, across its sleep, so that waiters are
    /// served in order and do not all wake up for the same token.
    turn: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RateLimitSnapshot {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub reset_seconds: Option<u64>,
    pub requests_per_minute: f64,
}

struct State {
    share: f64,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_seconds: Option<u64>,
    tokens: f64,
    last_refill: Instant,
    /// No request before this instant (low Remaining or a Retry-After).
    hold_until: Option<Instant>,
    /// Why `hold_until` is set: "rate_limit" or "retry_after".
    hold_reason: &'static str,
    /// The last clamped value logged per header, so that a broken header
    /// is one log line per change, not one per request.
    logged_limit: Option<u64>,
    logged_reset: Option<u64>,
}

impl State {
    fn per_minute(&self) -> f64 {
        self.share * self.limit.unwrap_or(DEFAULT_LIMIT) as f64
    }
    fn per_second(&self) -> f64 {
        self.per_minute() / 60.0
    }
    fn capacity(&self) -> f64 {
        (self.per_second() * BURST_SECONDS).max(1.0)
    }
    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second()).min(self.capacity());
        self.last_refill = now;
    }
    fn hold(&mut self, until: Instant, reason: &'static str) {
        if self.hold_until.is_none_or(|h| until > h) {
            self.hold_until = Some(until);
            self.hold_reason = reason;
        }
    }
}

impl Budget {
    /// `share` must be in (0, 1]; the client checks it.
    pub(crate) fn new(share: f64) -> Self {
        let mut state = State {
            share,
            limit: None,
            remaining: None,
            reset_seconds: None,
            tokens: 0.0,
            last_refill: Instant::now(),
            hold_until: None,
            hold_reason: "rate_limit",
            logged_limit: None,
            logged_reset: None,
        };
        state.tokens = state.capacity();
        Budget {
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave State inconsistent: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until one request may be sent and takes its token. Returns the
    /// time spent waiting.
    pub(crate) async fn acquire(&self) -> Duration {
        let _turn = self.turn.lock().await;
        let start = Instant::now();
        loop {
            let wait = {
                let mut s = self.state();
                let now = Instant::now();
                match s.hold_until {
                    Some(h) if h > now => Some(h - now),
                    _ => {
                        s.hold_until = None;
                        s.refill(now);
                        // The epsilon absorbs float error after an exact sleep.
                        if s.tokens >= 1.0 - 1e-9 {
                            s.tokens = (s.tokens - 1.0).max(0.0);
                            None
                        } else {
                            Some(Duration::from_secs_f64((1.0 - s.tokens) / s.per_second()))
                        }
                    }
                }
            };
            match wait {
                None => break,
                Some(d) => tokio::time::sleep(d).await,
            }
        }
        start.elapsed()
    }

    /// Reads the `X-RateLimit-*` headers of an answer (any status), clamped
    /// to what the contract allows.
    pub(crate) fn observe(&self, limit: Option<u64>, remaining: Option<u64>, reset: Option<u64>) {
        let mut s = self.state();
        let now = Instant::now();
        // Settle the tokens earned at the old rate before the rate changes.
        s.refill(now);
        if let Some(raw) = limit.filter(|l| *l > 0) {
            let l = raw.clamp(MIN_LIMIT, MAX_LIMIT);
            if l != raw && s.logged_limit != Some(l) {
                tracing::warn!(
                    header = raw,
                    used = l,
                    "X-RateLimit-Limit is outside what the API contract allows (1000 to 3000 a minute); using the nearest allowed value"
                );
                s.logged_limit = Some(l);
            } else if l == raw {
                s.logged_limit = None;
            }
            s.limit = Some(l);
            s.tokens = s.tokens.min(s.capacity());
        }
        let lim = s.limit.unwrap_or(DEFAULT_LIMIT);
        let remaining = remaining.map(|r| r.min(lim));
        let reset = reset.map(|raw| {
            let r = raw.min(MAX_RESET_WAIT.as_secs());
            if r != raw && s.logged_reset != Some(r) {
                tracing::warn!(
                    header = raw,
                    used = r,
                    "X-RateLimit-Reset is longer than the API's one-minute window; using 60 s"
                );
                s.logged_reset = Some(r);
            } else if r == raw {
                s.logged_reset = None;
            }
            r
        });
        if remaining.is_some() {
            s.remaining = remaining;
        }
        if reset.is_some() {
            s.reset_seconds = reset;
        }
        let Some(rem) = remaining else { return };
        if rem == 0 || (rem as f64) < lim as f64 * LOW_REMAINING_SHARE {
            if let Some(reset) = reset {
                let wait = Duration::from_secs(reset);
                tracing::debug!(
                    remaining = rem,
                    reset_seconds = reset,
                    "rate limit nearly spent for the workspace; pausing until the window resets"
                );
                s.hold(now + wait, "rate_limit");
            }
        }
    }

    /// No request at all before `d` from now (a `Retry-After`).
    pub(crate) fn hold_for(&self, d: Duration) {
        let mut s = self.state();
        let until = Instant::now().checked_add(d).unwrap_or_else(Instant::now);
        s.hold(until, "retry_after");
    }

    /// How long until the next request may go out, and why ("retry_after"
    /// or "rate_limit"); `None` when one may go now.
    pub(crate) fn held_for(&self) -> Option<(Duration, &'static str)> {
        let mut s = self.state();
        let now = Instant::now();
        if let Some(h) = s.hold_until.filter(|h| *h > now) {
            return Some((h - now, s.hold_reason));
        }
        s.refill(now);
        (s.tokens < 1.0 - 1e-9).then(|| {
            (
                Duration::from_secs_f64((1.0 - s.tokens) / s.per_second()),
                "rate_limit",
            )
        })
    }

    pub(crate) fn snapshot(&self) -> RateLimitSnapshot {
        let s = self.state();
        RateLimitSnapshot {
            limit: s.limit,
            remaining: s.remaining,
            reset_seconds: s.reset_seconds,
            requests_per_minute: s.per_minute(),
        }
    }
}

/// The share of the budget that reads of single agents (`GET /agents/{id}`,
/// when tasks name an agent not yet listed) may spend: a token bucket
/// refilled at `share` of the budget's rate, holding 10 s of it (at least
/// one). Tasks naming agents that do not exist (deleted, or never there)
/// are each a 404, and a fleet of them once spent 64 % of the budget on
/// lookups; past the share a task counts without its agent's values until
/// the next agent listing, as past `--breakdown.max-agent-lookups`.
pub(crate) struct Lookups {
    share: f64,
    /// Tokens, and when they were last refilled.
    state: Mutex<(f64, Instant)>,
}

impl Lookups {
    /// `share` of the budget, in [0, 1]; 0: no lookups.
    pub(crate) fn new(share: f64) -> Self {
        Lookups {
            share,
            state: Mutex::new((f64::MAX, Instant::now())),
        }
    }

    /// Takes a lookup's token from the share of a budget of `per_minute`
    /// requests; false when the share is spent.
    pub(crate) fn take(&self, per_minute: f64) -> bool {
        let rate = self.share * per_minute / 60.0;
        if rate <= 0.0 {
            return false;
        }
        let capacity = (rate * BURST_SECONDS).max(1.0);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0.min(capacity) + elapsed * rate).min(capacity);
        s.1 = now;
        if s.0 >= 1.0 - 1e-9 {
            s.0 = (s.0 - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `n` tokens and returns the instants (relative to start) at which
    /// each was granted.
    async fn grant_times(b: &Budget, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            b.acquire().await;
            out.push(start.elapsed());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn agent_lookups_take_at_most_their_share_of_the_budget() {
        // 100 requests a minute: lookups may take 10 a minute, and hold
        // 10 s of that (1.67 tokens).
        let l = Lookups::new(0.1);
        let burst = (0..100).filter(|_| l.take(100.0)).count();
        assert_eq!(burst, 1);
        let mut taken = 0;
        for _ in 0..600 {
            tokio::time::advance(Duration::from_secs(1)).await;
            taken += (0..20).filter(|_| l.take(100.0)).count();
        }
        // Ten minutes: 100, whatever was asked.
        assert!((99..=101).contains(&taken), "{taken}");
        assert!(!Lookups::new(0.0).take(100.0));
    }

    #[tokio::test(start_paused = true)]
    async fn default_limit_until_known() {
        let b = Budget::new(0.1);
        let snap = b.snapshot();
        assert_eq!(snap.limit, None);
        assert!((snap.requests_per_minute - 100.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn paces_at_share_of_limit_after_a_burst_of_ten_seconds() {
        let b = Budget::new(0.06);
        b.observe(Some(1000), Some(1000), Some(60));
        assert!((b.snapshot().requests_per_minute - 60.0).abs() < 1e-9);
        // 60/min = 1/s; the bucket holds 10 s worth = 10 tokens.
        let t = grant_times(&b, 70).await;
        assert!(
            t[9] < Duration::from_millis(1),
            "burst of 10 is immediate: {:?}",
            t[9]
        );
        assert!(
            t[10] >= Duration::from_millis(990),
            "11th waits: {:?}",
            t[10]
        );
        // Every later grant is one second after the previous one.
        for w in t[10..].windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(990) && gap <= Duration::from_millis(1010),
                "{gap:?}"
            );
        }
        // So a minute after the burst no more than 60 more went out.
        let in_first_minute = t.iter().filter(|d| **d < Duration::from_secs(60)).count();
        assert!(in_first_minute <= 10 + 60, "{in_first_minute}");
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_is_at_least_one() {
        let b = Budget::new(0.003);
        b.observe(Some(1000), None, None); // 3/min: 0.5 token per 10 s, so 1
        let t = grant_times(&b, 3).await;
        assert_eq!(t[0], Duration::ZERO);
        assert!(
            t[1] >= Duration::from_millis(19_990) && t[1] <= Duration::from_millis(20_010),
            "{:?}",
            t[1]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn low_remaining_waits_for_reset() {
        let b = Budget::new(0.1);
        // 40 < 5% of 1000.
        b.observe(Some(1000), Some(40), Some(7));
        let waited = b.acquire().await;
        assert!(
            waited >= Duration::from_secs(7) && waited < Duration::from_millis(7010),
            "{waited:?}"
        );
        // Enough left: no wait.
        b.observe(Some(1000), Some(500), Some(30));
        assert_eq!(b.acquire().await, Duration::ZERO);
        // Zero left always waits.
        b.observe(Some(1000), Some(0), Some(2));
        let waited = b.acquire().await;
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_reset_is_capped_and_zero_limit_ignored() {
        let b = Budget::new(0.1);
        b.observe(Some(0), Some(0), Some(86_400));
        assert_eq!(b.snapshot().limit, None);
        let waited = b.acquire().await;
        assert!(
            waited <= MAX_RESET_WAIT + Duration::from_millis(10),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_limits_are_clamped_to_the_contract() {
        let b = Budget::new(0.1);
        // Limit 1 would mean one request every ten minutes.
        b.observe(Some(1), Some(1), Some(30));
        let snap = b.snapshot();
        assert_eq!(snap.limit, Some(MIN_LIMIT));
        assert!((snap.requests_per_minute - 100.0).abs() < 1e-9);
        // Remaining 1 of a clamped 1000 is nearly spent: wait for the reset, no longer.
        let (d, why) = b.held_for().expect("held");
        assert_eq!(why, "rate_limit");
        assert!(d <= Duration::from_secs(30), "{d:?}");
        // u64::MAX would switch pacing off.
        b.observe(Some(u64::MAX), Some(u64::MAX), Some(u64::MAX));
        let snap = b.snapshot();
        assert_eq!(snap.limit, Some(MAX_LIMIT));
        assert_eq!(snap.remaining, Some(MAX_LIMIT));
        assert_eq!(snap.reset_seconds, Some(60));
        assert!((snap.requests_per_minute - 300.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn held_for_says_how_long_and_why() {
        let b = Budget::new(0.1);
        assert_eq!(b.held_for(), None);
        b.hold_for(Duration::from_secs(300));
        let (d, why) = b.held_for().expect("held");
        assert_eq!(why, "retry_after");
        assert!(
            d > Duration::from_secs(299) && d <= Duration::from_secs(300),
            "{d:?}"
        );
        // A shorter rate-limit pause does not hide the longer Retry-After.
        b.observe(Some(1000), Some(0), Some(5));
        assert_eq!(b.held_for().map(|h| h.1), Some("retry_after"));
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(b.held_for(), None);
        // The bucket empty: a pacing wait, reported as the rate limit.
        for _ in 0..16 {
            b.acquire().await;
        }
        let (d, why) = b.held_for().expect("paced");
        assert_eq!(why, "rate_limit");
        assert!(d <= Duration::from_secs(1), "{d:?}");
    }
}
