//! The API client's flags (`--api-url`, `--api.*`) and the rules its
//! settings follow, for the flags and the config file alike.

use super::{ApiLimits, ClientConfig};
use crate::secret::Secret;
use crate::units::{fill_durations, DurationRows};
use clap::Args;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the ClawMesh API.
    #[arg(
        long = "api-url",
        env = "CLAWMESH_API_URL",
        default_value = "https://api.clawmesh.com/v1"
    )]
    pub api_url: String,
    /// Share of the workspace's API rate limit the exporter may spend (0 < share <= 1).
    #[arg(
        long = "api.budget-share",
        env = "CLAWMESH_API_BUDGET_SHARE",
        default_value_t = 0.1
    )]
    pub budget_share: f64,
    /// Share of that budget that single-agent reads (GET /agents/{id}, for tasks naming an agent not yet listed) may spend (0 to 1).
    #[arg(
        long = "api.lookup-share",
        env = "CLAWMESH_API_LOOKUP_SHARE",
        default_value_t = super::DEFAULT_LOOKUP_SHARE
    )]
    pub lookup_share: f64,
    /// Timeout of one API request.
    #[arg(long = "api.timeout", env = "CLAWMESH_API_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub api_timeout: Duration,
    /// Attempts per API request, the first included.
    #[arg(
        long = "api.max-attempts",
        env = "CLAWMESH_API_MAX_ATTEMPTS",
        default_value_t = 5
    )]
    pub max_attempts: u32,
    /// The largest API answer read (e.g. 4MiB); a page too large is asked for again in smaller pages.
    #[arg(long = "api.max-body-size", env = "CLAWMESH_API_MAX_BODY_SIZE", default_value = "4MiB", value_parser = crate::units::parse_size)]
    pub max_body_size: u64,
    /// Pages per listing before it is abandoned as never-ending (a failed sync).
    #[arg(long = "api.max-pages", env = "CLAWMESH_API_MAX_PAGES", default_value_t = super::DEFAULT_MAX_PAGES)]
    pub max_pages: u32,
    /// Bytes per listing before it is abandoned (a failed sync).
    #[arg(long = "api.max-listing-bytes", env = "CLAWMESH_API_MAX_LISTING_BYTES", default_value = "2GiB", value_parser = crate::units::parse_size)]
    pub max_listing_bytes: u64,
    /// The longest next_cursor the exporter follows (bytes); a longer one fails the sync.
    #[arg(long = "api.max-cursor-length", env = "CLAWMESH_API_MAX_CURSOR_LENGTH", default_value_t = super::DEFAULT_MAX_CURSOR_LEN)]
    pub max_cursor_length: usize,
    /// The longest Retry-After honoured; a longer one is waited out for this long (with a log line).
    #[arg(long = "api.max-retry-after", env = "CLAWMESH_API_MAX_RETRY_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_retry_after: Duration,
    /// The longest one listing may take, waits included; a longer one fails the sync.
    #[arg(long = "api.max-listing-duration", env = "CLAWMESH_API_MAX_LISTING_DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_listing_duration: Duration,
}

/// The client's per-workspace durations: the config-file key, the flag's
/// value, and the setting both fill. The file reader and the flags go
/// through this table, so a new duration is a flag, a field and a row.
pub const DURATIONS: &DurationRows<ApiArgs, ClientConfig> = &[
    ("timeout", |a| a.api_timeout, |c| &mut c.request_timeout),
    (
        "max_retry_after",
        |a| a.max_retry_after,
        |c| &mut c.limits.max_retry_after,
    ),
    (
        "max_listing_duration",
        |a| a.max_listing_duration,
        |c| &mut c.limits.max_listing_duration,
    ),
];

/// What an API URL must start with.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err("must start with https:// (or http:// for the simulator)")
    }
}

/// The budget share is a fraction of the rate limit: more than none, at most all.
pub fn budget_share_ok(share: f64) -> bool {
    share > 0.0 && share <= 1.0
}

/// The lookup share is a fraction of the budget, none allowed.
pub fn lookup_share_ok(share: f64) -> bool {
    (0.0..=1.0).contains(&share)
}

impl ApiArgs {
    /// `--api-url` without its trailing slashes, checked. The flags check it
    /// before anything else (config.rs), so it has its own step.
    pub fn url(&self) -> Result<String, String> {
        let url = self.api_url.trim_end_matches('/');
        check_url(url).map_err(|e| format!("--api-url {url:?}: {e}"))?;
        Ok(url.to_string())
    }

    /// The client these flags describe, checked; errors name the flags.
    pub fn client(&self, key: Secret) -> Result<ClientConfig, String> {
        let url = self.url()?;
        if !budget_share_ok(self.budget_share) {
            return Err(format!(
                "--api.budget-share {}: must be in (0, 1], e.g. 0.1 for 10 %",
                self.budget_share
            ));
        }
        if !lookup_share_ok(self.lookup_share) {
            return Err(format!(
                "--api.lookup-share {}: must be in [0, 1], e.g. 0.1 for a tenth of --api.budget-share",
                self.lookup_share
            ));
        }
        if self.max_attempts == 0 {
            return Err("--api.max-attempts: must be at least 1".into());
        }
        let mut client = ClientConfig {
            base_url: url,
            key,
            max_attempts: self.max_attempts,
            budget_share: self.budget_share,
            lookup_share: self.lookup_share,
            limits: ApiLimits {
                max_body_bytes: self.max_body_size,
                max_pages: self.max_pages,
                max_listing_bytes: self.max_listing_bytes,
                max_cursor_len: self.max_cursor_length,
                ..ApiLimits::default()
            },
            ..ClientConfig::default()
        };
        fill_durations(DURATIONS, self, &mut client);
        client.limits.check(|f| format!("--api.{f}"))?;
        Ok(client)
    }
}

/// Equal settings: a reload leaves the workspace's client as it is.
impl PartialEq for ClientConfig {
    fn eq(&self, o: &Self) -> bool {
        self.base_url == o.base_url
            && self.key == o.key
            && self.request_timeout == o.request_timeout
            && self.max_attempts == o.max_attempts
            && self.backoff_base == o.backoff_base
            && self.backoff_cap == o.backoff_cap
            && self.budget_share == o.budget_share
            && self.lookup_share == o.lookup_share
            && self.page_size == o.page_size
            && self.limits == o.limits
    }
}
