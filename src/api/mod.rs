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
pub mod settings;
mod stats;
pub mod types;

#[cfg(test)]
mod tests;

pub use error::ApiError;
pub use stats::ApiStats;

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::text::shorten;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use tokio::time::Instant;

use budget::Budget;
use clock::{ApiClock, ApiTime};
use types::{Envelope, Page, Timestamp};

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
    /// Share of the budget single-agent lookups may spend, in [0, 1]
    /// (`--api.lookup-share`).
    pub lookup_share: f64,
    /// `limit` of each page request, 1 to 100.
    pub page_size: u32,
    /// What one answer and one listing may cost.
    pub limits: ApiLimits,
}

/// Bounds on what the API can make the client read, follow or wait for:
/// each protects the process from an upstream (or a proxy) gone wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiLimits {
    /// The largest answer read (`--api.max-body-size`). A page that does
    /// not fit is asked again with a smaller `limit`.
    pub max_body_bytes: u64,
    /// Pages per listing, restarts included (`--api.max-pages`).
    pub max_pages: u32,
    /// Body bytes per listing, restarts included (`--api.max-listing-bytes`).
    pub max_listing_bytes: u64,
    /// The longest `next_cursor` followed (`--api.max-cursor-length`).
    pub max_cursor_len: usize,
    /// The longest `Retry-After` honoured (`--api.max-retry-after`).
    pub max_retry_after: Duration,
    /// The longest one listing may take, waits included
    /// (`--api.max-listing-duration`): a listing that never ends fails its
    /// sync within this, whatever the page cap and the budget allow.
    pub max_listing_duration: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_pages: DEFAULT_MAX_PAGES,
            max_listing_bytes: DEFAULT_MAX_LISTING_BYTES,
            max_cursor_len: DEFAULT_MAX_CURSOR_LEN,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            max_listing_duration: DEFAULT_MAX_LISTING_DURATION,
        }
    }
}

impl ApiLimits {
    /// What is wrong with these limits, for the flag or key named by `name`
    /// (e.g. `|f| format!("--api.{f}")`).
    pub fn check(&self, name: impl Fn(&str) -> String) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err(format!("{}: must be at least 1KiB", name("max-body-size")));
        }
        if self.max_listing_bytes < self.max_body_bytes {
            return Err(format!(
                "{}: must be at least {} (one answer)",
                name("max-listing-bytes"),
                name("max-body-size")
            ));
        }
        if self.max_listing_duration < Duration::from_secs(1) {
            return Err(format!(
                "{}: must be at least 1s",
                name("max-listing-duration")
            ));
        }
        if self.max_pages == 0 {
            return Err(format!("{}: must be at least 1", name("max-pages")));
        }
        if self.max_cursor_len == 0 {
            return Err(format!("{}: must be at least 1", name("max-cursor-length")));
        }
        Ok(())
    }
}

/// Defaults of the bounds, shared with the flags. A page of 100 tasks
/// with the contract's largest instructions (256 KiB) is 26 MiB; with 4 MiB
/// such a page is asked for again in pages of 12 (pages of mostly small
/// tasks fit whole). A body may be held twice while it is joined and
/// parsed: 4 MiB keeps the peak RSS under every hostile upstream of
/// tests/it/hostile_api.rs near 35 MiB (8 MiB: 50 MiB), see BENCHMARKS.md.
/// 100,000 tasks are 1,000 pages of 100, 10,000 agents 100; the page cap
/// also bounds what a full listing holds (2,000 pages of 100 agents of
/// bounded ids and names, about 25 MB), and the byte cap is 100,000 tasks
/// of 20 KiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 << 20;
pub const DEFAULT_MAX_PAGES: u32 = 2_000;
pub const DEFAULT_MAX_LISTING_BYTES: u64 = 2 << 30;
pub const DEFAULT_MAX_CURSOR_LEN: usize = 4096;
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// A full agent listing of 10,000 agents at the default budget (100
/// requests a minute) takes about a minute; ten leaves room for a fleet ten
/// times as large, and for a `Retry-After` or two.
pub const DEFAULT_MAX_LISTING_DURATION: Duration = Duration::from_secs(600);

/// A tenth of the budget: agents created since the last listing are few,
/// and the next listing (every `--agents.interval`) reads them anyway.
pub const DEFAULT_LOOKUP_SHARE: f64 = 0.10;

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
            lookup_share: DEFAULT_LOOKUP_SHARE,
            page_size: 100,
            limits: ApiLimits::default(),
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
    /// The share of `budget` single-agent lookups may spend.
    lookups: budget::Lookups,
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
    /// `limit` of the next page: the page size, or less after a page too
    /// large for the body cap.
    limit: u32,
    pages: u32,
    bytes: u64,
    /// A hash of every cursor followed since the listing (re)started: a
    /// server that cycles a->b->a would otherwise make us list forever.
    /// At most `max_pages` entries of 8 bytes, whatever the cursors' size.
    seen: std::collections::HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
    /// Why the listing was abandoned (it cannot be resumed).
    abandoned: Option<String>,
    /// When it began: bounded by `--api.max-listing-duration`.
    started: Instant,
    /// A page had to shrink to fit `--api.max-body-size`: the rest of the
    /// listing keeps the smaller size.
    shrunk: bool,
    /// Objects of the pages read so far refused whole, until taken.
    rejected: Vec<types::Malformed>,
    _item: PhantomData<fn() -> T>,
}

/// A 2xx answer's body, or how large it turned out to be.
enum Body {
    Read(bytes::Bytes),
    TooLarge,
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
        cfg.limits
            .check(|f| format!("--api.{f}"))
            .map_err(ApiError::config)?;
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
        if !(cfg.lookup_share.is_finite() && (0.0..=1.0).contains(&cfg.lookup_share)) {
            return Err(ApiError::config(format!(
                "the lookup share must be in [0, 1], got {}",
                cfg.lookup_share
            )));
        }
        let budget = Budget::new(cfg.budget_share);
        let lookups = budget::Lookups::new(cfg.lookup_share);
        Ok(Client {
            inner: Arc::new(Inner {
                cfg,
                base,
                http,
                auth,
                budget,
                lookups,
                clock: ApiClock::default(),
                stats: Mutex::new(ApiStats::default()),
                in_flight: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// `GET /auth/token`: the key's scopes, workspace and expiry.
    pub async fn token(&self) -> Result<types::Token, ApiError> {
        let key = self.inner.cfg.key.expose();
        self.get("/auth/token", &[], |body| {
            serde_json::from_slice::<Envelope<types::Token>>(body)
                .map(|e| e.data)
                .map_err(|e| error::describe_bad_body(body, &e, key))
        })
        .await
        .map(|(t, _)| t)
    }

    /// `GET /agents/{id}`: one agent, `None` when the API does not know it
    /// (404: deleted, or never there).
    pub async fn agent(&self, id: &str) -> Result<Option<types::Agent>, ApiError> {
        // Dot segments, even percent-encoded, would be resolved away by
        // the URL (`/agents/.` is the listing): no agent has such an id.
        if matches!(id, "." | "..") {
            return Ok(None);
        }
        let key = self.inner.cfg.key.expose();
        let path = format!("/agents/{}", escape_segment(id));
        let got = self
            .get_at("/agents/{id}", &path, &[], |body| {
                parse_envelope::<types::Agent>(body, key)
            })
            .await;
        match got {
            Ok((a, _)) => Ok(Some(a)),
            Err(ApiError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether one more `GET /agents/{id}` fits in the share of the
    /// budget lookups may spend (`--api.lookup-share`); takes it if so.
    pub fn may_look_up_agent(&self) -> bool {
        let per_minute = self.inner.budget.snapshot().requests_per_minute;
        self.inner.lookups.take(per_minute)
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
        s.held_for = self.held_for().map(|(d, why)| (d.as_secs_f64(), why));
        s
    }

    /// How long the client must still wait before its next request, and
    /// why: "retry_after" (the API asked) or "rate_limit" (the budget or a
    /// nearly spent window). `None` when a request may go now.
    pub fn held_for(&self) -> Option<(Duration, &'static str)> {
        self.inner.budget.held_for()
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
    /// into the result or says in a few words why it cannot. Gives the
    /// result and the size of the body it came from.
    async fn get<R>(
        &self,
        endpoint: &'static str,
        query: &[(&'static str, String)],
        parse: impl Fn(&[u8]) -> Result<R, String>,
    ) -> Result<(R, u64), ApiError> {
        self.get_at(endpoint, endpoint, query, parse).await
    }

    /// [`Client::get`] of `path` (a path of `endpoint`, such as
    /// `/agents/agt_1` of `/agents/{id}`, which names it in stats).
    async fn get_at<R>(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &[(&'static str, String)],
        parse: impl Fn(&[u8]) -> Result<R, String>,
    ) -> Result<(R, u64), ApiError> {
        let cfg = &self.inner.cfg;
        let key = cfg.key.expose();
        let url = format!("{}{}", self.inner.base, path);
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
                        detail: error::clean(&root_cause(&e), key, 200),
                    }),
                ),
                Ok(Ok((status, headers, body))) => {
                    self.inner.budget.observe(
                        header_u64(&headers, "x-ratelimit-limit"),
                        header_u64(&headers, "x-ratelimit-remaining"),
                        header_u64(&headers, "x-ratelimit-reset"),
                    );
                    retry_after = retry::parse_retry_after(
                        header_str(&headers, "retry-after"),
                        status,
                        header_str(&headers, "date"),
                    )
                        .map(|ra| {
                            if ra > cfg.limits.max_retry_after {
                                tracing::warn!(
                                    endpoint,
                                    retry_after_seconds = ra.as_secs(),
                                    max_seconds = cfg.limits.max_retry_after.as_secs(),
                                    "Retry-After is longer than --api.max-retry-after; waiting the maximum instead"
                                );
                            }
                            ra.min(cfg.limits.max_retry_after)
                        });
                    // An answer that echoes the key (as a status, a code,
                    // an id, a scope) must not carry it into a label or a
                    // log line: masked before anything reads it.
                    let body = match body {
                        Body::Read(b) => Body::Read(mask_key(b, key)),
                        other => other,
                    };
                    let result = match (&body, (200..300).contains(&status)) {
                        (Body::Read(b), true) => {
                            parse(b).map(|r| (r, b.len() as u64)).map_err(|detail| {
                                ApiError::UnexpectedBody {
                                    endpoint: endpoint.to_string(),
                                    status,
                                    detail,
                                }
                            })
                        }
                        (Body::TooLarge, true) => Err(ApiError::BodyTooLarge {
                            endpoint: endpoint.to_string(),
                            limit: cfg.limits.max_body_bytes,
                            single_object: false,
                        }),
                        (b, false) => Err(error::from_status(
                            endpoint,
                            status,
                            match b {
                                Body::Read(b) => b,
                                // An error envelope is small; a huge one is not the API's.
                                Body::TooLarge => &[],
                            },
                            retry_after,
                            header_str(&headers, "x-request-id").map(|s| error::clean(s, key, 64)),
                            key,
                        )),
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
    ) -> Result<(u16, HeaderMap, Body), reqwest::Error> {
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
        // Read at most max_body_bytes, as it streams: a larger answer is
        // refused, not cut (a cut page would only fail to parse, and the
        // listing could not tell that a smaller page would fit). The
        // declared length is only used to refuse early, never to allocate.
        let max = self.inner.cfg.limits.max_body_bytes;
        if resp.content_length().is_some_and(|n| n > max) {
            return Ok((status, headers, Body::TooLarge));
        }
        // The chunks are kept as they came and joined once at the exact
        // size: a growing buffer would reallocate (old and new both live)
        // and could end up twice the cap.
        let mut resp = resp;
        let mut chunks: Vec<bytes::Bytes> = Vec::new();
        let mut len: u64 = 0;
        while let Some(chunk) = resp.chunk().await? {
            len += chunk.len() as u64;
            if len > max {
                return Ok((status, headers, Body::TooLarge));
            }
            chunks.push(chunk);
        }
        let body = match chunks.len() {
            0 => bytes::Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut joined = Vec::with_capacity(len as usize);
                for c in chunks.drain(..) {
                    joined.extend_from_slice(&c);
                }
                joined.into()
            }
        };
        Ok((status, headers, Body::Read(body)))
    }
}

/// `body` with every copy of `key` overwritten by `*` of the same length,
/// so that JSON stays JSON (a key has no character JSON escapes); a copy
/// is made only when there is one.
fn mask_key(body: bytes::Bytes, key: &str) -> bytes::Bytes {
    let key = key.as_bytes();
    if key.len() < 8 || memchr::memmem::find(&body, key).is_none() {
        return body;
    }
    let mut out = body.to_vec();
    let finder = memchr::memmem::Finder::new(key);
    let mut at = 0;
    while let Some(i) = finder.find(&out[at..]) {
        let start = at + i;
        out[start..start + key.len()].fill(b'*');
        at = start + key.len();
    }
    bytes::Bytes::from(out)
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
    shorten(&text, 200)
}

impl<T> Listing<T> {
    fn new(client: Client, endpoint: &'static str, query: Vec<(&'static str, String)>) -> Self {
        Listing {
            endpoint,
            query,
            limit: client.inner.cfg.page_size,
            client,
            cursor: None,
            done: false,
            restarts: 0,
            pages: 0,
            bytes: 0,
            seen: std::collections::HashSet::new(),
            hasher: std::collections::hash_map::RandomState::new(),
            abandoned: None,
            started: Instant::now(),
            shrunk: false,
            rejected: Vec::new(),
            _item: PhantomData,
        }
    }
}

impl<T: types::Object> Listing<T> {
    /// The next page, `Restarted` when the cursor expired and the listing
    /// started over, or `Ok(None)` after the last page.
    pub async fn next(&mut self) -> Result<Option<ListEvent<T>>, ApiError> {
        if let Some(detail) = &self.abandoned {
            return Err(ApiError::Listing {
                endpoint: self.endpoint.to_string(),
                detail: detail.clone(),
            });
        }
        if self.done {
            return Ok(None);
        }
        let client = self.client.clone();
        let cfg = &client.inner.cfg;
        if self.started.elapsed() > cfg.limits.max_listing_duration {
            return Err(self.abandon(format!(
                "the listing took longer than --api.max-listing-duration ({}) after {} pages; a server that never ends its listing, or raise the flag (or --api.budget-share) for a fleet this large",
                humantime::format_duration(cfg.limits.max_listing_duration),
                self.pages
            )));
        }
        if self.pages >= cfg.limits.max_pages {
            return Err(self.abandon(format!(
                "more than --api.max-pages ({}) pages; a server that never ends its listing, or raise --api.max-pages",
                cfg.limits.max_pages
            )));
        }
        let key = cfg.key.expose();
        let result = loop {
            let mut query = Vec::with_capacity(self.query.len() + 2);
            query.push(("limit", self.limit.to_string()));
            query.extend(self.query.iter().cloned());
            if let Some(c) = &self.cursor {
                query.push(("cursor", c.clone()));
            }
            let result = client
                .get(self.endpoint, &query, |body| {
                    parse_page_inner::<T>(body, key)
                })
                .await;
            match result {
                // A page may be large (instructions up to 256 KiB each):
                // the same page in smaller pieces may fit.
                Err(ApiError::BodyTooLarge { .. }) if self.limit > 1 => {
                    self.limit /= 2;
                    self.shrunk = true;
                    tracing::debug!(
                        endpoint = self.endpoint,
                        limit = self.limit,
                        "page larger than --api.max-body-size; asking for fewer objects"
                    );
                }
                Err(ApiError::BodyTooLarge {
                    endpoint, limit, ..
                }) => {
                    break Err(ApiError::BodyTooLarge {
                        endpoint,
                        limit,
                        single_object: true,
                    })
                }
                other => break other,
            }
        };
        match result {
            Ok((page, size)) => {
                self.pages += 1;
                self.bytes = self.bytes.saturating_add(size);
                // A listing whose pages had to shrink keeps the size that
                // fits: asking the larger one again would read a too-large
                // body each page, twice the requests and bytes.
                if !self.shrunk {
                    self.limit = cfg.page_size;
                }
                if self.bytes > cfg.limits.max_listing_bytes {
                    return Err(self.abandon(format!(
                        "more than --api.max-listing-bytes ({} bytes) in one listing; raise it if the fleet is that large",
                        cfg.limits.max_listing_bytes
                    )));
                }
                if page.has_more {
                    let next = page.next_cursor.unwrap_or_default();
                    if next.len() > cfg.limits.max_cursor_len {
                        return Err(self.abandon(format!(
                            "next_cursor of {} bytes, longer than --api.max-cursor-length ({})",
                            next.len(),
                            cfg.limits.max_cursor_len
                        )));
                    }
                    // A server handing back a cursor it gave before would
                    // make us loop forever.
                    let h = std::hash::BuildHasher::hash_one(&self.hasher, &next);
                    if self.cursor.as_deref() == Some(next.as_str()) || !self.seen.insert(h) {
                        return Err(self.abandon(format!(
                            "next_cursor repeats a cursor of this listing (a cycle after {} pages)",
                            self.pages
                        )));
                    }
                    self.cursor = Some(next);
                } else {
                    self.done = true;
                    self.cursor = None;
                }
                self.rejected.extend(page.rejected);
                Ok(Some(ListEvent::Page(page.data)))
            }
            Err(ApiError::BadRequest { code, .. })
                if code == "cursor_expired"
                    && self.cursor.is_some()
                    && self.restarts < MAX_RESTARTS =>
            {
                self.restarts += 1;
                self.cursor = None;
                // Cursors of the new listing may be the old ones again.
                self.seen.clear();
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

    /// Ends the listing with `detail`: every later `next` gives the same
    /// error, so that no caller can take what it has for a complete listing.
    fn abandon(&mut self, detail: String) -> ApiError {
        self.cursor = None;
        self.abandoned = Some(detail.clone());
        ApiError::Listing {
            endpoint: self.endpoint.to_string(),
            detail,
        }
    }

    /// The objects refused whole in the pages read since the last call:
    /// each is one object lost, never the page.
    pub fn take_rejected(&mut self) -> Vec<types::Malformed> {
        std::mem::take(&mut self.rejected)
    }

    /// Every item of the listing, starting over on `Restarted`. Items of a
    /// listing sorted by `updated_at` can appear twice (see the contract).
    pub async fn collect_all(self) -> Result<Vec<T>, ApiError> {
        self.collect_all_with_rejected().await.map(|(all, _)| all)
    }

    /// [`Listing::collect_all`], and the objects refused whole in the
    /// listing as it completed (those of pages dropped by a restart are
    /// not in it: the listing read them again).
    pub async fn collect_all_with_rejected(
        mut self,
    ) -> Result<(Vec<T>, Vec<types::Malformed>), ApiError> {
        let mut all = Vec::new();
        let mut rejected = Vec::new();
        while let Some(ev) = self.next().await? {
            match ev {
                ListEvent::Page(items) => {
                    all.extend(items);
                    rejected.append(&mut self.rejected);
                }
                ListEvent::Restarted => {
                    all.clear();
                    rejected.clear();
                }
            }
        }
        Ok((all, rejected))
    }
}

/// Parse one page body; never panics on any input.
pub fn parse_page<T: types::Object>(body: &[u8]) -> Result<Page<T>, ApiError> {
    parse_page_inner(body, "").map_err(|detail| ApiError::UnexpectedBody {
        endpoint: "page".to_string(),
        status: 200,
        detail,
    })
}

fn parse_page_inner<T: types::Object>(body: &[u8], key: &str) -> Result<Page<T>, String> {
    // Invalid UTF-8 would refuse the page whole: it reads as U+FFFD (a
    // copy only when there is some), and the objects holding it are marked.
    let (text, replaced) = types::lossy_text(body);
    let raw: types::RawPage =
        serde_json::from_str(&text).map_err(|e| error::describe_bad_body(body, &e, key))?;
    if raw.has_more && raw.next_cursor.as_deref().is_none_or(str::is_empty) {
        return Err("has_more is true but next_cursor is missing".to_string());
    }
    let mut page = Page {
        data: Vec::with_capacity(raw.data.len()),
        rejected: Vec::new(),
        has_more: raw.has_more,
        next_cursor: raw.next_cursor,
    };
    for item in raw.data {
        let lossy = types::replaced_within(&text, &replaced, item.get());
        match types::parse_object::<T>(item.get(), lossy) {
            Ok(t) => page.data.push(t),
            Err(m) => page.rejected.push(m),
        }
    }
    Ok(page)
}

/// One object in `{"data": ...}` (`GET /agents/{id}`), lone surrogates
/// and invalid UTF-8 read as U+FFFD as in a page.
fn parse_envelope<T: types::Object>(body: &[u8], key: &str) -> Result<T, String> {
    #[derive(serde::Deserialize)]
    struct RawEnvelope<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    let (text, replaced) = types::lossy_text(body);
    let raw: RawEnvelope =
        serde_json::from_str(&text).map_err(|e| error::describe_bad_body(body, &e, key))?;
    let lossy = types::replaced_within(&text, &replaced, raw.data.get());
    types::parse_object::<T>(raw.data.get(), lossy)
        .map_err(|m| format!("{} ({})", m.reason, m.detail))
}

/// A path segment percent-encoded: anything but unreserved characters
/// (RFC 3986), so that an id cannot add a segment or a query.
fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
