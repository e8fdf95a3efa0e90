//! The ClawMesh API client. The only module that knows reqwest and the JSON.
//!
//! Every request attempt first waits for the budget (a share of the
//! workspace's rate limit), then runs under the per-request timeout; failed
//! attempts that may succeed later (429, 5xx, timeouts, connection errors, a
//! 2xx body cut short) are retried with capped exponential backoff and full
//! jitter, never sooner than `Retry-After`.

mod budget;
pub mod clock;
mod error;
mod retry;
mod stats;
pub mod types;

#[cfg(test)]
mod tests;

pub(crate) use error::shorten;
pub use error::ApiError;
pub use stats::ApiStats;

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use tokio::time::Instant;

use budget::Budget;
use clock::{ApiClock, ApiTime};
use types::{Envelope, Page, Timestamp};

/// The largest response body read (see `send`).
const MAX_BODY: usize = 64 << 20;

/// How often a listing may start over after `cursor_expired` before failing.
const MAX_RESTARTS: u32 = 3;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// e.g. "http://127.0.0.1:8080/v1"; a trailing slash is tolerated.
    pub base_url: String,
    /// Redacts itself in Debug, so deriving Debug here is safe.
    pub key: crate::secret::Secret,
    pub request_timeout: Duration,
    /// Per request, the first try included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Share of the workspace's rate limit this client may spend, in (0, 1].
    pub budget_share: f64,
    /// `limit` of each page request, 1 to 100.
    pub page_size: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: "https://api.clawmesh.com/v1".to_string(),
            key: crate::secret::Secret::new(""),
            request_timeout: Duration::from_secs(10),
            max_attempts: 5,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(30),
            budget_share: 0.10,
            page_size: 100,
        }
    }
}

/// Cheap to clone: everything lives behind one `Arc`, so clones share the
/// budget, the statistics and the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    /// Base URL without the trailing slash.
    base: String,
    http: reqwest::Client,
    /// "Bearer <key>", marked sensitive so that reqwest never prints it.
    auth: HeaderValue,
    budget: Budget,
    /// The API's clock, from the `Date` of every answer.
    clock: ApiClock,
    stats: Mutex<ApiStats>,
    /// One request in flight per client (per workspace): a `Retry-After`
    /// learnt by one loop then reaches the others before they send, instead
    /// of after a request already on the wire.
    in_flight: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base)
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// Which tasks to list.
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    /// Sent as `status=a,b` when not empty.
    pub statuses: Vec<String>,
    /// Sent as RFC 3339 with six fractional digits.
    pub updated_after: Option<types::Timestamp>,
    /// `sort=updated_at`, the order for incremental reads.
    pub sort_by_updated_at: bool,
}

#[derive(Debug)]
pub enum ListEvent<T> {
    Page(Vec<T>),
    /// The cursor expired and the listing started over from the first page:
    /// a caller accumulating a full listing must drop what it had.
    Restarted,
}

/// A listing in progress. Call [`Listing::next`] until it gives `Ok(None)`.
/// After an error the listing stays where it was: calling `next` again
/// retries the same page.
pub struct Listing<T> {
    client: Client,
    endpoint: &'static str,
    query: Vec<(&'static str, String)>,
    cursor: Option<String>,
    done: bool,
    restarts: u32,
    _item: PhantomData<fn() -> T>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Client, ApiError> {
        let base = cfg.base_url.trim().trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.has_host() => {}
            _ => {
                return Err(ApiError::config(format!(
                    "the base URL {base:?} is not an absolute http(s) URL, e.g. https://api.clawmesh.com/v1"
                )))
            }
        }
        if !(cfg.budget_share.is_finite() && cfg.budget_share > 0.0 && cfg.budget_share <= 1.0) {
            return Err(ApiError::config(format!(
                "the budget share must be in (0, 1], got {}",
                cfg.budget_share
            )));
        }
        if !(1..=100).contains(&cfg.page_size) {
            return Err(ApiError::config(format!(
                "the page size must be 1 to 100, got {}",
                cfg.page_size
            )));
        }
        if cfg.max_attempts == 0 {
            return Err(ApiError::config("max_attempts must be at least 1"));
        }
        if cfg.request_timeout.is_zero() {
            return Err(ApiError::config("the request timeout must be above zero"));
        }
        // The error must not echo the key, so it says only what is wrong.
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", cfg.key.expose())).map_err(|_| {
            ApiError::config("the API key contains characters that cannot be sent in an HTTP header (a stray newline?)")
        })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            // The API never redirects; following one could carry the key to
            // a host that is not the API.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("clawmesh-exporter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::config(format!("cannot build the HTTP client: {e}")))?;
        let budget = Budget::new(cfg.budget_share);
        Ok(Client {
            inner: Arc::new(Inner {
                cfg,
                base,
                http,
                auth,
                budget,
                clock: ApiClock::default(),
                stats: Mutex::new(ApiStats::default()),
                in_flight: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// `GET /auth/token`: the key's scopes, workspace and expiry.
    pub async fn token(&self) -> Result<types::Token, ApiError> {
        self.get("/auth/token", &[], |body| {
            serde_json::from_slice::<Envelope<types::Token>>(body)
                .map(|e| e.data)
                .map_err(|e| error::describe_bad_body(body, &e))
        })
        .await
    }

    /// `GET /agents`, every page.
    pub fn list_agents(&self) -> Listing<types::Agent> {
        Listing::new(self.clone(), "/agents", Vec::new())
    }

    /// `GET /tasks` with the query's filters, every page.
    pub fn list_tasks(&self, q: TaskQuery) -> Listing<types::Task> {
        let mut query = Vec::new();
        if !q.statuses.is_empty() {
            query.push(("status", q.statuses.join(",")));
        }
        if let Some(t) = q.updated_after {
            query.push(("updated_after", t.to_rfc3339()));
        }
        if q.sort_by_updated_at {
            query.push(("sort", "updated_at".to_string()));
        }
        Listing::new(self.clone(), "/tasks", query)
    }

    /// A snapshot of what the client did so far.
    pub fn stats(&self) -> ApiStats {
        let mut s = self.lock_stats().clone();
        let rl = self.inner.budget.snapshot();
        s.rate_limit_limit = rl.limit;
        s.rate_limit_remaining = rl.remaining;
        s.rate_limit_reset_seconds = rl.reset_seconds;
        s.budget_requests_per_minute = rl.requests_per_minute;
        s.clock_skew_seconds = self.inner.clock.skew_seconds();
        s
    }

    /// The API's time now, from the `Date` of its answers (the host's
    /// clock before the first): every comparison with an API timestamp
    /// uses it, never the host's clock.
    pub fn api_time(&self) -> ApiTime {
        self.inner.clock.now()
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, ApiStats> {
        // Stats are counters: a panic elsewhere cannot make them unusable.
        self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One GET with budget, timeout and retries. `parse` turns a 2xx body
    /// into the result or says in a few words why it cannot.
    async fn get<R>(
        &self,
        endpoint: &'static str,
        query: &[(&'static str, String)],
        parse: impl Fn(&[u8]) -> Result<R, String>,
    ) -> Result<R, ApiError> {
        let cfg = &self.inner.cfg;
        let url = format!("{}{}", self.inner.base, endpoint);
        let mut attempt: u32 = 0;
        loop {
            let turn = self.inner.in_flight.lock().await;
            let waited = self.inner.budget.acquire().await;
            if !waited.is_zero() {
                self.lock_stats().budget_wait_seconds += waited.as_secs_f64();
            }

            let started = Instant::now();
            let sent = Timestamp::host_now();
            let answer = tokio::time::timeout(cfg.request_timeout, self.send(&url, query)).await;
            let took = started.elapsed();
            if let Ok(Ok((_, headers, _))) = &answer {
                self.inner
                    .clock
                    .observe(header_str(headers, "date"), sent, Timestamp::host_now());
            }

            let mut retry_after = None;
            let (code, result) = match answer {
                Err(_) => (
                    "timeout".to_string(),
                    Err(ApiError::Timeout {
                        endpoint: endpoint.to_string(),
                    }),
                ),
                Ok(Err(e)) if e.is_timeout() => (
                    "timeout".to_string(),
                    Err(ApiError::Timeout {
                        endpoint: endpoint.to_string(),
                    }),
                ),
                Ok(Err(e)) => (
                    "connection_error".to_string(),
                    Err(ApiError::Connection {
                        endpoint: endpoint.to_string(),
                        detail: root_cause(&e),
                    }),
                ),
                Ok(Ok((status, headers, body))) => {
                    self.inner.budget.observe(
                        header_u64(&headers, "x-ratelimit-limit"),
                        header_u64(&headers, "x-ratelimit-remaining"),
                        header_u64(&headers, "x-ratelimit-reset"),
                    );
                    retry_after = retry::parse_retry_after(header_str(&headers, "retry-after"));
                    let result = if (200..300).contains(&status) {
                        parse(&body).map_err(|detail| ApiError::UnexpectedBody {
                            endpoint: endpoint.to_string(),
                            status,
                            detail,
                        })
                    } else {
                        Err(error::from_status(
                            endpoint,
                            status,
                            &body,
                            retry_after,
                            header_str(&headers, "x-request-id").map(|s| error::shorten(s, 64)),
                        ))
                    };
                    (status.to_string(), result)
                }
            };
            if let Some(ra) = retry_after {
                // Every request of this client must respect it, retried or not.
                self.inner.budget.hold_for(ra);
            }
            drop(turn);
            self.lock_stats().record_attempt(endpoint, &code, took);
            tracing::debug!(
                endpoint,
                status = %code,
                duration_ms = took.as_millis() as u64,
                attempt = attempt + 1,
                "ClawMesh API request"
            );

            let err = match result {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            if !err.is_retryable() || attempt + 1 >= cfg.max_attempts {
                return Err(err);
            }
            let jittered =
                retry::full_jitter(attempt, cfg.backoff_base, cfg.backoff_cap, &mut rand::rng());
            let delay = retry::retry_delay(jittered, retry_after);
            tracing::warn!(
                endpoint,
                status = %code,
                attempt = attempt + 1,
                retry_in_ms = delay.as_millis() as u64,
                error = %err,
                "ClawMesh API request failed; retrying"
            );
            {
                let mut s = self.lock_stats();
                s.record_retry(endpoint);
                if retry_after.is_some() {
                    s.retry_after_wait_seconds += delay.as_secs_f64();
                }
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn send(
        &self,
        url: &str,
        query: &[(&'static str, String)],
    ) -> Result<(u16, HeaderMap, bytes::Bytes), reqwest::Error> {
        let resp = self
            .inner
            .http
            .get(url)
            .query(query)
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        // Read at most MAX_BODY: a page of 100 tasks with 256 KiB
        // instructions each is about 26 MiB; anything far larger is not the
        // API, and must not take the process's memory with it. The cut body
        // then fails to parse, as a truncated one does.
        let mut resp = resp;
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = resp.chunk().await? {
            let room = MAX_BODY.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.len() > room {
                tracing::warn!(url, limit = MAX_BODY, "response body too large; cut");
                break;
            }
        }
        Ok((status, headers, body.freeze()))
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?.to_str().ok()
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    header_str(h, name)?.trim().parse().ok()
}

/// The innermost cause ("Connection refused (os error 111)"), which says
/// more than reqwest's "error sending request" and carries no URL.
fn root_cause(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text = c.to_string();
        cause = c.source();
    }
    error::shorten(&text, 200)
}

impl<T> Listing<T> {
    fn new(client: Client, endpoint: &'static str, query: Vec<(&'static str, String)>) -> Self {
        Listing {
            client,
            endpoint,
            query,
            cursor: None,
            done: false,
            restarts: 0,
            _item: PhantomData,
        }
    }
}

impl<T: serde::de::DeserializeOwned> Listing<T> {
    /// The next page, `Restarted` when the cursor expired and the listing
    /// started over, or `Ok(None)` after the last page.
    pub async fn next(&mut self) -> Result<Option<ListEvent<T>>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let mut query = Vec::with_capacity(self.query.len() + 2);
        query.push(("limit", self.client.inner.cfg.page_size.to_string()));
        query.extend(self.query.iter().cloned());
        if let Some(c) = &self.cursor {
            query.push(("cursor", c.clone()));
        }
        let result = self
            .client
            .get(self.endpoint, &query, |body| parse_page_inner::<T>(body))
            .await;
        match result {
            Ok(page) => {
                if page.has_more {
                    // A server handing back the cursor it was given would
                    // make us loop forever.
                    if page.next_cursor == self.cursor {
                        return Err(ApiError::UnexpectedBody {
                            endpoint: self.endpoint.to_string(),
                            status: 200,
                            detail: "next_cursor repeats the cursor of the request".to_string(),
                        });
                    }
                    self.cursor = page.next_cursor;
                } else {
                    self.done = true;
                    self.cursor = None;
                }
                Ok(Some(ListEvent::Page(page.data)))
            }
            Err(ApiError::BadRequest { code, .. })
                if code == "cursor_expired"
                    && self.cursor.is_some()
                    && self.restarts < MAX_RESTARTS =>
            {
                self.restarts += 1;
                self.cursor = None;
                tracing::warn!(
                    endpoint = self.endpoint,
                    restart = self.restarts,
                    "listing cursor expired; starting the listing over"
                );
                Ok(Some(ListEvent::Restarted))
            }
            Err(e) => Err(e),
        }
    }

    /// Every item of the listing, starting over on `Restarted`. Items of a
    /// listing sorted by `updated_at` can appear twice (see the contract).
    pub async fn collect_all(mut self) -> Result<Vec<T>, ApiError> {
        let mut all = Vec::new();
        while let Some(ev) = self.next().await? {
            match ev {
                ListEvent::Page(items) => all.extend(items),
                ListEvent::Restarted => all.clear(),
            }
        }
        Ok(all)
    }
}

/// Parse one page body; never panics on any input.
pub fn parse_page<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Page<T>, ApiError> {
    parse_page_inner(body).map_err(|detail| ApiError::UnexpectedBody {
        endpoint: "page".to_string(),
        status: 200,
        detail,
    })
}

fn parse_page_inner<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Page<T>, String> {
    let page: Page<T> =
        serde_json::from_slice(body).map_err(|e| error::describe_bad_body(body, &e))?;
    if page.has_more && page.next_cursor.as_deref().is_none_or(str::is_empty) {
        return Err("has_more is true but next_cursor is missing".to_string());
    }
    Ok(page)
}
