//! The webhook receiver's flags (`--webhook.*`) and where its secrets come
//! from: files named by flag, else one environment variable, never a flag.

use super::WebhookConfig;
use crate::env::Env;
use crate::files::FileLimits;
use crate::secret::Secret;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

pub const WEBHOOK_SECRET_ENV: &str = "CLAWMESH_WEBHOOK_SECRET";

#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// File with the webhook signing secret (one per line; two during a rotation). Turns the receiver on at /webhooks/clawmesh. Else the CLAWMESH_WEBHOOK_SECRET environment variable.
    #[arg(long = "webhook.secret-file", env = "CLAWMESH_WEBHOOK_SECRET_FILE", value_name = "PATH", action = clap::ArgAction::Append)]
    pub webhook_secret_files: Vec<PathBuf>,
    /// Poll interval (tasks and agents) while webhook events arrive; polling then only reconciles.
    #[arg(long = "webhook.poll-interval", env = "CLAWMESH_WEBHOOK_POLL_INTERVAL", default_value = "2m", value_parser = humantime::parse_duration)]
    pub webhook_poll_interval: Duration,
    /// How long after polling counted a task finished its webhook may still come before it counts as missed.
    #[arg(long = "webhook.missed-grace", env = "CLAWMESH_WEBHOOK_MISSED_GRACE", default_value = "1m", value_parser = humantime::parse_duration)]
    pub webhook_missed_grace: Duration,
    /// Webhook events queued per workspace before the receiver answers 503 (the platform retries).
    #[arg(
        long = "webhook.queue-capacity",
        env = "CLAWMESH_WEBHOOK_QUEUE_CAPACITY",
        default_value_t = 10_000
    )]
    pub webhook_queue_capacity: usize,
    /// Longest webhook event id accepted, in bytes; a longer one is refused (bad_request).
    #[arg(long = "webhook.max-id-length", env = "CLAWMESH_WEBHOOK_MAX_ID_LENGTH", default_value_t = super::DEFAULT_MAX_ID_LENGTH)]
    pub webhook_max_id_length: usize,
    /// Memory for remembered webhook event ids (de-duplication), e.g. 16MiB; past it the oldest are forgotten early.
    #[arg(long = "webhook.dedup-max-size", env = "CLAWMESH_WEBHOOK_DEDUP_MAX_SIZE", default_value = "16MiB", value_parser = crate::units::parse_size)]
    pub webhook_dedup_max_size: u64,
    /// Webhook body bytes held at once by all deliveries being read (before their signature is checked), e.g. 16MiB, at least 1MiB; past it a delivery gets 503 with Retry-After (busy).
    #[arg(long = "webhook.max-inflight-size", env = "CLAWMESH_WEBHOOK_MAX_INFLIGHT_SIZE", default_value = "16MiB", value_parser = crate::units::parse_size)]
    pub webhook_max_inflight_size: u64,
}

impl WebhookArgs {
    /// The receiver's settings, given its secrets; errors name the flags.
    pub fn config(&self, secrets: Vec<Secret>) -> Result<WebhookConfig, String> {
        if self.webhook_queue_capacity == 0 {
            return Err("--webhook.queue-capacity: must be at least 1".into());
        }
        if self.webhook_max_id_length == 0 {
            return Err("--webhook.max-id-length: must be at least 1".into());
        }
        if self.webhook_max_inflight_size < super::MIN_INFLIGHT_BYTES as u64 {
            return Err(
                "--webhook.max-inflight-size: must be at least 1MiB (the largest body)".into(),
            );
        }
        Ok(WebhookConfig {
            secrets,
            poll_interval: self.webhook_poll_interval,
            missed_grace: self.webhook_missed_grace,
            queue_capacity: self.webhook_queue_capacity,
            max_id_length: self.webhook_max_id_length,
            dedup_max_bytes: usize::try_from(self.webhook_dedup_max_size).unwrap_or(usize::MAX),
            max_inflight_bytes: usize::try_from(self.webhook_max_inflight_size)
                .unwrap_or(usize::MAX),
        })
    }

    /// The receiver from `--webhook.secret-file`, else from the
    /// CLAWMESH_WEBHOOK_SECRET environment variable; `None` without either.
    pub fn resolve(
        &self,
        env: &dyn Env,
        files: &FileLimits,
    ) -> Result<Option<WebhookConfig>, String> {
        if let Some(w) = self.secrets_from_files(files)? {
            return Ok(Some(w));
        }
        match env.var(WEBHOOK_SECRET_ENV) {
            Some(s) => Ok(Some(self.config(secret_lines(WEBHOOK_SECRET_ENV, &s)?)?)),
            None => Ok(None),
        }
    }

    /// Secrets from `--webhook.secret-file` (any number of files, one
    /// secret a line, two at most in all); `None` without the flag.
    fn secrets_from_files(&self, files: &FileLimits) -> Result<Option<WebhookConfig>, String> {
        if self.webhook_secret_files.is_empty() {
            return Ok(None);
        }
        let mut secrets = Vec::new();
        for path in &self.webhook_secret_files {
            let what = format!("--webhook.secret-file {}", path.display());
            let raw =
                crate::files::read_to_string(path, files).map_err(|e| format!("{what}: {e}"))?;
            secrets.extend(secret_lines(&what, &raw)?);
        }
        if secrets.len() > 2 {
            return Err("--webhook.secret-file: at most two secrets in all (the current one and the one being rotated)".into());
        }
        self.config(secrets).map(Some)
    }
}

/// One secret per non-empty line (trimmed), one or two of them.
fn secret_lines(what: &str, raw: &str) -> Result<Vec<Secret>, String> {
    let secrets: Vec<Secret> = raw
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(Secret::new)
        .collect();
    match secrets.len() {
        0 => Err(format!("{what}: no webhook secret in it")),
        1 | 2 => Ok(secrets),
        _ => Err(format!(
            "{what}: at most two secrets (the current one and the one being rotated)"
        )),
    }
}
