//! What the client did, for the exporter's own metrics. Plain data: the
//! metrics module renders a snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::histogram::{Histogram, API_LATENCY_BUCKETS};

#[derive(Clone, Debug, Default)]
pub struct ApiStats {
    /// (endpoint, code) -> count. `endpoint` is the path template
    /// ("/auth/token", "/agents", "/tasks"); `code` the HTTP status, or
    /// "timeout" / "connection_error" when there was no answer.
    pub requests: BTreeMap<(String, String), u64>,
    /// endpoint -> latency in seconds of every attempt.
    pub durations: BTreeMap<String, Histogram>,
    /// endpoint -> attempts that were retries.
    pub retries: BTreeMap<String, u64>,
    pub rate_limit_limit: Option<u64>,
    pub rate_limit_remaining: Option<u64>,
    pub rate_limit_reset_seconds: Option<u64>,
    /// The rate the budget currently allows: share * limit.
    pub budget_requests_per_minute: f64,
    /// Total time spent waiting for the bucket or for a low-Remaining reset.
    pub budget_wait_seconds: f64,
    /// Total time slept before retries that carried a `Retry-After`.
    pub retry_after_wait_seconds: f64,
    /// The API's clock minus the host's, from its `Date` headers; `None`
    /// before the first answer that carried one.
    pub clock_skew_seconds: Option<f64>,
    /// How long the client must still wait before its next request (in
    /// seconds) and why ("retry_after" or "rate_limit"), when it must.
    pub held_for: Option<(f64, &'static str)>,
}

impl ApiStats {
    pub(crate) fn record_attempt(&mut self, endpoint: &str, code: &str, took: Duration) {
        *self
            .requests
            .entry((endpoint.to_string(), code.to_string()))
            .or_default() += 1;
        self.durations
            .entry(endpoint.to_string())
            .or_insert_with(|| Histogram::new(API_LATENCY_BUCKETS))
            .observe(took.as_secs_f64());
        // A zero, not a missing series, until the first retry.
        self.retries.entry(endpoint.to_string()).or_insert(0);
    }

    pub(crate) fn record_retry(&mut self, endpoint: &str) {
        *self.retries.entry(endpoint.to_string()).or_default() += 1;
    }

    /// Requests to `endpoint` that got `code`.
    pub fn count(&self, endpoint: &str, code: &str) -> u64 {
        self.requests
            .get(&(endpoint.to_string(), code.to_string()))
            .copied()
            .unwrap_or(0)
    }
}
