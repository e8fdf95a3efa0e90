//! Flags and environment -> one validated [`Config`]. Every flag can also be
//! set by an environment variable; the API key only by the environment or a
//! file, never by a flag (flags show in the process list).

use crate::api::ClientConfig;
use crate::config_file::WorkspaceConfig;
use crate::poll::PollConfig;
use crate::secret::Secret;
use crate::shard::Shard;
use crate::webconfig::WebConfig;
use clap::{Args, Parser, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 9817;
pub const KEY_ENV: &str = "CLAWMESH_API_KEY";
/// The contract's maximum visibility lag; the overlap may not be shorter.
pub const MAX_VISIBILITY_LAG: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "clawmesh-exporter",
    version,
    about = "Prometheus and OTLP exporter for ClawMesh agent fleets"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

// Parsed once at start: the size of the biggest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the ClawMesh API simulator on loopback (for trying setups out).
    Simulate(SimArgs),
    /// Run the simulator and the exporter against it: live numbers, no key, no network.
    Demo(Box<DemoArgs>),
    /// Validate a --config.file and name each problem with its path; exit code 2 when bad.
    CheckConfig {
        /// The YAML configuration file [default: --config.file, or CLAWMESH_CONFIG_FILE].
        file: Option<PathBuf>,
    },
}

/// Logging owns its settings (`crate::logging`); the flags name them.
pub use crate::logging::{LogFormat, LogLevel};

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Base URL of the ClawMesh API.
    #[arg(
        long = "api-url",
        env = "CLAWMESH_API_URL",
        default_value = "https://api.clawmesh.com/v1"
    )]
    pub api_url: String,
    /// File holding the API key (else the CLAWMESH_API_KEY environment variable).
    #[arg(
        long = "api-key-file",
        env = "CLAWMESH_API_KEY_FILE",
        value_name = "PATH"
    )]
    pub api_key_file: Option<PathBuf>,
    /// Address to serve /metrics on (host:port, or :port for all interfaces).
    #[arg(
        long = "web.listen-address",
        env = "CLAWMESH_WEB_LISTEN_ADDRESS",
        default_value = ":9817"
    )]
    pub listen_address: String,
    /// Path under which to expose metrics.
    #[arg(
        long = "web.telemetry-path",
        env = "CLAWMESH_WEB_TELEMETRY_PATH",
        default_value = "/metrics"
    )]
    pub telemetry_path: String,
    /// How often tasks are listed (incrementally).
    #[arg(long = "poll-interval", env = "CLAWMESH_POLL_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// How often agents are listed in full (default: the poll interval).
    #[arg(long = "agents.interval", env = "CLAWMESH_AGENTS_INTERVAL", value_parser = humantime::parse_duration)]
    pub agents_interval: Option<Duration>,
    /// How often open tasks are listed in full to repair the pending/running gauges.
    #[arg(long = "tasks.reconcile-interval", env = "CLAWMESH_TASKS_RECONCILE_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub reconcile_interval: Duration,
    /// How far back each incremental task listing re-reads; at least the API's 5 s visibility lag.
    #[arg(long = "tasks.overlap", env = "CLAWMESH_TASKS_OVERLAP", default_value = "10s", value_parser = humantime::parse_duration)]
    pub overlap: Duration,
    /// How long finished tasks are remembered to count each exactly once.
    #[arg(long = "tasks.dedup-horizon", env = "CLAWMESH_TASKS_DEDUP_HORIZON", default_value = "1h", value_parser = humantime::parse_duration)]
    pub dedup_horizon: Duration,
    /// How long a task in a status the API's contract does not name counts as open after its last change.
    #[arg(long = "tasks.unknown-status-ttl", env = "CLAWMESH_TASKS_UNKNOWN_STATUS_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub unknown_status_ttl: Duration,
    /// How long after a failure its error code may stay null before it counts under code="unknown".
    #[arg(long = "tasks.failure-code-grace", env = "CLAWMESH_TASKS_FAILURE_CODE_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub failure_code_grace: Duration,
    /// Objects naming an instant further than this ahead of the API's own clock are refused and counted.
    #[arg(long = "api.max-timestamp-lead", env = "CLAWMESH_API_MAX_TIMESTAMP_LEAD", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_timestamp_lead: Duration,
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
        default_value_t = crate::api::DEFAULT_LOOKUP_SHARE
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
    // ---- upstream bounds (issue 10) ----
    /// The largest API answer read (e.g. 4MiB); a page too large is asked for again in smaller pages.
    #[arg(long = "api.max-body-size", env = "CLAWMESH_API_MAX_BODY_SIZE", default_value = "4MiB", value_parser = crate::units::parse_size)]
    pub max_body_size: u64,
    /// Pages per listing before it is abandoned as never-ending (a failed sync).
    #[arg(long = "api.max-pages", env = "CLAWMESH_API_MAX_PAGES", default_value_t = crate::api::DEFAULT_MAX_PAGES)]
    pub max_pages: u32,
    /// Bytes per listing before it is abandoned (a failed sync).
    #[arg(long = "api.max-listing-bytes", env = "CLAWMESH_API_MAX_LISTING_BYTES", default_value = "2GiB", value_parser = crate::units::parse_size)]
    pub max_listing_bytes: u64,
    /// The longest next_cursor the exporter follows (bytes); a longer one fails the sync.
    #[arg(long = "api.max-cursor-length", env = "CLAWMESH_API_MAX_CURSOR_LENGTH", default_value_t = crate::api::DEFAULT_MAX_CURSOR_LEN)]
    pub max_cursor_length: usize,
    /// The longest Retry-After honoured; a longer one is waited out for this long (with a log line).
    #[arg(long = "api.max-retry-after", env = "CLAWMESH_API_MAX_RETRY_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_retry_after: Duration,
    /// The longest one listing may take, waits included; a longer one fails the sync.
    #[arg(long = "api.max-listing-duration", env = "CLAWMESH_API_MAX_LISTING_DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_listing_duration: Duration,
    // ---- end upstream bounds ----
    // ---- breakdowns (issue 11) ----
    /// Break agent and task series down by the agents' config.model_provider (label `provider`).
    #[arg(long = "breakdown.provider", env = "CLAWMESH_BREAKDOWN_PROVIDER")]
    pub breakdown_provider: bool,
    /// Break agent and task series down by the agents' config.model (label `model`).
    #[arg(long = "breakdown.model", env = "CLAWMESH_BREAKDOWN_MODEL")]
    pub breakdown_model: bool,
    /// Agent label keys to break series down by, comma-separated; `*` matches any characters (team,env or team*).
    #[arg(
        long = "breakdown.agent-labels",
        env = "CLAWMESH_BREAKDOWN_AGENT_LABELS",
        value_delimiter = ',',
        value_name = "KEYS"
    )]
    pub breakdown_agent_labels: Vec<String>,
    /// Agent label keys never broken down by, even when --breakdown.agent-labels matches them.
    #[arg(
        long = "breakdown.agent-labels-deny",
        env = "CLAWMESH_BREAKDOWN_AGENT_LABELS_DENY",
        value_delimiter = ',',
        value_name = "KEYS"
    )]
    pub breakdown_agent_labels_deny: Vec<String>,
    /// Task label keys to break task series down by (label `task_<key>`), comma-separated, `*` as wildcard.
    #[arg(
        long = "breakdown.task-labels",
        env = "CLAWMESH_BREAKDOWN_TASK_LABELS",
        value_delimiter = ',',
        value_name = "KEYS"
    )]
    pub breakdown_task_labels: Vec<String>,
    /// Task label keys never broken down by.
    #[arg(
        long = "breakdown.task-labels-deny",
        env = "CLAWMESH_BREAKDOWN_TASK_LABELS_DENY",
        value_delimiter = ',',
        value_name = "KEYS"
    )]
    pub breakdown_task_labels_deny: Vec<String>,
    /// Distinct values per breakdown label; later values count as "other".
    #[arg(
        long = "breakdown.max-values",
        env = "CLAWMESH_BREAKDOWN_MAX_VALUES",
        default_value_t = 50
    )]
    pub breakdown_max_values: usize,
    /// Label keys the wildcard patterns may turn into breakdown labels; later keys are not broken down by.
    #[arg(
        long = "breakdown.max-labels",
        env = "CLAWMESH_BREAKDOWN_MAX_LABELS",
        default_value_t = 10
    )]
    pub breakdown_max_labels: usize,
    /// Combinations of breakdown values per workspace; later ones count with every breakdown label "other".
    #[arg(
        long = "breakdown.max-combinations",
        env = "CLAWMESH_BREAKDOWN_MAX_COMBINATIONS",
        default_value_t = 250
    )]
    pub breakdown_max_combinations: usize,
    /// Agents read one by one per task sync when tasks name agents not yet listed (0: never).
    #[arg(
        long = "breakdown.max-agent-lookups",
        env = "CLAWMESH_BREAKDOWN_MAX_AGENT_LOOKUPS",
        default_value_t = 20
    )]
    pub breakdown_max_agent_lookups: usize,
    /// An idle or busy agent whose last heartbeat is older than this counts as silent (the API refreshes it about every 30s).
    #[arg(long = "agents.heartbeat-stale-after", env = "CLAWMESH_AGENTS_HEARTBEAT_STALE_AFTER", default_value = "90s", value_parser = humantime::parse_duration)]
    pub heartbeat_stale_after: Duration,
    /// Export one series per agent with its last heartbeat (clawmesh_agent_last_heartbeat_timestamp_seconds); costs a series per agent.
    #[arg(
        long = "agents.heartbeat-series",
        env = "CLAWMESH_AGENTS_HEARTBEAT_SERIES"
    )]
    pub heartbeat_series: bool,
    /// The most agents --agents.heartbeat-series exports (by id order); the rest are left out.
    #[arg(
        long = "agents.heartbeat-series-max",
        env = "CLAWMESH_AGENTS_HEARTBEAT_SERIES_MAX",
        default_value_t = 1000
    )]
    pub heartbeat_series_max: usize,
    // ---- end breakdowns ----
    /// YAML file listing the workspaces to watch (instead of --api-url and the key); see README.
    #[arg(
        long = "config.file",
        env = "CLAWMESH_CONFIG_FILE",
        value_name = "PATH"
    )]
    pub config_file: Option<PathBuf>,
    /// This replica's shard: a number from 0, or a StatefulSet pod name ending in -NUMBER.
    #[arg(long = "shard", env = "CLAWMESH_SHARD", default_value = "0")]
    pub shard: String,
    /// How many replicas share the workspaces (by a stable hash of the workspace id).
    #[arg(
        long = "total-shards",
        env = "CLAWMESH_TOTAL_SHARDS",
        default_value_t = 1
    )]
    pub total_shards: u32,
    /// exporter-toolkit web config: TLS and basic auth for the HTTP endpoint.
    #[arg(
        long = "web.config.file",
        env = "CLAWMESH_WEB_CONFIG_FILE",
        value_name = "PATH"
    )]
    pub web_config_file: Option<PathBuf>,
    /// Enable POST /-/reload (reloads --config.file, like SIGHUP).
    #[arg(long = "web.enable-lifecycle", env = "CLAWMESH_WEB_ENABLE_LIFECYCLE")]
    pub enable_lifecycle: bool,
    // ---- webhooks (issue 6) ----
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
    #[arg(long = "webhook.max-id-length", env = "CLAWMESH_WEBHOOK_MAX_ID_LENGTH", default_value_t = crate::webhook::DEFAULT_MAX_ID_LENGTH)]
    pub webhook_max_id_length: usize,
    /// Memory for remembered webhook event ids (de-duplication), e.g. 16MiB; past it the oldest are forgotten early.
    #[arg(long = "webhook.dedup-max-size", env = "CLAWMESH_WEBHOOK_DEDUP_MAX_SIZE", default_value = "16MiB", value_parser = crate::units::parse_size)]
    pub webhook_dedup_max_size: u64,
    /// Webhook body bytes held at once by all deliveries being read (before their signature is checked), e.g. 16MiB, at least 1MiB; past it a delivery gets 503 with Retry-After (busy).
    #[arg(long = "webhook.max-inflight-size", env = "CLAWMESH_WEBHOOK_MAX_INFLIGHT_SIZE", default_value = "16MiB", value_parser = crate::units::parse_size)]
    pub webhook_max_inflight_size: u64,
    // ---- end webhooks ----
    // ---- checkpoints (issue 12) ----
    /// Directory for a checkpoint per workspace, so that a restart neither resets the counters nor misses what finished meanwhile (off without it; also `storage.path` in the config file).
    #[arg(long = "storage.path", env = "CLAWMESH_STORAGE_PATH")]
    pub storage_path: Option<PathBuf>,
    /// A checkpoint per workspace this often, one more at the stop; the counters it keeps are served as of the last one [default: 10s].
    #[arg(long = "storage.interval", env = "CLAWMESH_STORAGE_INTERVAL", value_parser = humantime::parse_duration)]
    pub storage_interval: Option<Duration>,
    /// Largest checkpoint written or read, uncompressed; a larger one is not written (counted) [default: 512MiB].
    #[arg(long = "storage.max-size", env = "CLAWMESH_STORAGE_MAX_SIZE", value_parser = crate::units::parse_size)]
    pub storage_max_size: Option<u64>,
    /// How long one checkpoint write may take (a frozen or hung volume); a write past it is given up and counted failed (timeout), the stop's final write too [default: 5s].
    #[arg(long = "storage.write-timeout", env = "CLAWMESH_STORAGE_WRITE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub storage_write_timeout: Option<Duration>,
    // ---- end checkpoints ----
    // ---- operator files (issue 10) ----
    /// Largest file read: the config file, key and secret files, the web config and its certificates, OTLP headers and CA (e.g. 1MiB).
    #[arg(long = "files.max-size", env = "CLAWMESH_FILES_MAX_SIZE", default_value = "1MiB", value_parser = crate::units::parse_size)]
    pub files_max_size: u64,
    /// How long reading one of those files may take (a hung network file system cannot hang start or reload).
    #[arg(long = "files.read-timeout", env = "CLAWMESH_FILES_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub files_read_timeout: Duration,
    /// Deepest nesting accepted in the YAML files (config file, web config).
    #[arg(long = "files.max-yaml-depth", env = "CLAWMESH_FILES_MAX_YAML_DEPTH", default_value_t = crate::files::DEFAULT_MAX_YAML_DEPTH)]
    pub files_max_yaml_depth: usize,
    // ---- end operator files ----
    // ---- HTTP server bounds (issue 10) ----
    /// Longest wait for a request's headers (from the connection's start for the first request, else from its first byte), and for a TLS handshake.
    #[arg(long = "web.read-header-timeout", env = "CLAWMESH_WEB_READ_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub read_header_timeout: Duration,
    /// Longest wait for a request body once its headers are in (the request then fails with 408).
    #[arg(long = "web.read-body-timeout", env = "CLAWMESH_WEB_READ_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub read_body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request (or a client may stop reading a response) before it is closed.
    #[arg(long = "web.idle-timeout", env = "CLAWMESH_WEB_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Longest time to write one response, from its start: a client reading a trickle is closed after it.
    #[arg(long = "web.write-timeout", env = "CLAWMESH_WEB_WRITE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// Largest request headers (HTTP/1 and HTTP/2), e.g. 64KiB, at least 8KiB; past it the request gets 431 or its connection is closed.
    #[arg(long = "web.max-header-size", env = "CLAWMESH_WEB_MAX_HEADER_SIZE", default_value = "64KiB", value_parser = crate::units::parse_size)]
    pub max_header_size: u64,
    /// HTTP/2 streams (requests) open at once on one connection.
    #[arg(
        long = "web.http2-max-streams",
        env = "CLAWMESH_WEB_HTTP2_MAX_STREAMS",
        default_value_t = 16
    )]
    pub http2_max_streams: u32,
    /// Connections open at once; past it a new connection is closed at once. Keep it below the open-files limit.
    #[arg(
        long = "web.max-connections",
        env = "CLAWMESH_WEB_MAX_CONNECTIONS",
        default_value_t = 512
    )]
    pub max_connections: usize,
    /// Basic-auth password checks (bcrypt) at once; cached logins never wait for them.
    #[arg(
        long = "web.basic-auth.max-concurrent",
        env = "CLAWMESH_WEB_BASIC_AUTH_MAX_CONCURRENT",
        default_value_t = 2
    )]
    pub auth_concurrency: usize,
    /// How long a password check waits for a free bcrypt slot before the request gets 503 with Retry-After.
    #[arg(long = "web.basic-auth.max-wait", env = "CLAWMESH_WEB_BASIC_AUTH_MAX_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub auth_max_wait: Duration,
    // ---- end HTTP server bounds ----
    /// Least severe log level written.
    #[arg(
        long = "log.level",
        env = "CLAWMESH_LOG_LEVEL",
        value_enum,
        default_value = "info"
    )]
    pub log_level: LogLevel,
    /// Log line format, on stderr.
    #[arg(
        long = "log.format",
        env = "CLAWMESH_LOG_FORMAT",
        value_enum,
        default_value = "logfmt"
    )]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub otlp: OtlpArgs,
}

/// OTLP push, off unless an endpoint is given (here or in
/// OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_METRICS_ENDPOINT). The
/// flags win over the standard OTEL_* variables; see `otlp::settings`.
#[derive(Debug, Clone, Default, Args)]
pub struct OtlpArgs {
    /// OTLP endpoint to push to, e.g. http://collector:4317 (gRPC) or http://collector:4318 (HTTP; /v1/metrics is added to a bare host:port).
    #[arg(
        long = "otlp.endpoint",
        env = "CLAWMESH_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub endpoint: Option<String>,
    /// OTLP transport [default: http/protobuf, or OTEL_EXPORTER_OTLP_PROTOCOL].
    #[arg(long = "otlp.protocol", env = "CLAWMESH_OTLP_PROTOCOL", value_enum)]
    pub protocol: Option<crate::otlp::Protocol>,
    /// How often to push [default: 60s, or OTEL_METRIC_EXPORT_INTERVAL in ms].
    #[arg(long = "otlp.interval", env = "CLAWMESH_OTLP_INTERVAL", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Timeout of one push attempt, and of the last push at shutdown [default: 10s, or OTEL_EXPORTER_OTLP_TIMEOUT in ms].
    #[arg(long = "otlp.timeout", env = "CLAWMESH_OTLP_TIMEOUT", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Cumulative totals, or deltas since the last delivered push (Datadog) [default: cumulative].
    #[arg(
        long = "otlp.temporality",
        env = "CLAWMESH_OTLP_TEMPORALITY",
        value_enum
    )]
    pub temporality: Option<crate::otlp::Temporality>,
    /// Histograms as the explicit buckets of /metrics, or base-2 exponential [default: explicit].
    #[arg(long = "otlp.histogram", env = "CLAWMESH_OTLP_HISTOGRAM", value_enum)]
    pub histogram: Option<crate::otlp::HistogramMode>,
    /// File of extra request headers, one name=value per line (e.g. dd-api-key=...); values are secrets. Merged over OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(
        long = "otlp.headers-file",
        env = "CLAWMESH_OTLP_HEADERS_FILE",
        value_name = "PATH"
    )]
    pub headers_file: Option<PathBuf>,
    /// PEM file of a CA to trust for the collector, besides the system roots.
    #[arg(
        long = "otlp.ca-file",
        env = "CLAWMESH_OTLP_CA_FILE",
        value_name = "PATH"
    )]
    pub ca_file: Option<PathBuf>,
    /// Compress each push: gzip or none [default: none, or OTEL_EXPORTER_OTLP_COMPRESSION].
    #[arg(
        long = "otlp.compression",
        env = "CLAWMESH_OTLP_COMPRESSION",
        value_enum
    )]
    pub compression: Option<crate::otlp::Compression>,
    /// PEM certificate (chain) the exporter presents to the collector (mutual TLS); needs --otlp.client-key and an https:// endpoint.
    #[arg(
        long = "otlp.client-certificate",
        env = "CLAWMESH_OTLP_CLIENT_CERTIFICATE",
        value_name = "PATH"
    )]
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of --otlp.client-certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long = "otlp.client-key",
        env = "CLAWMESH_OTLP_CLIENT_KEY",
        value_name = "PATH"
    )]
    pub client_key: Option<PathBuf>,
    /// Largest request sent (its protobuf before compression); a bigger export goes out as several requests [default: 3MiB, under a Collector's 4MiB gRPC receive limit].
    #[arg(id = "otlp_max_request_size", long = "otlp.max-request-size", env = "CLAWMESH_OTLP_MAX_REQUEST_SIZE", value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub max_request_size: Option<u64>,
    /// Largest collector reply read (HTTP body, gRPC message); the rest is left unread [default: 64KiB].
    #[arg(id = "otlp_max_response_size", long = "otlp.max-response-size", env = "CLAWMESH_OTLP_MAX_RESPONSE_SIZE", value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub max_response_size: Option<u64>,
    /// Longest wait granted to a collector's Retry-After (HTTP 429/503) or RetryInfo (gRPC) [default: 5m].
    #[arg(id = "otlp_max_retry_after", long = "otlp.max-retry-after", env = "CLAWMESH_OTLP_MAX_RETRY_AFTER", value_name = "DUR", value_parser = humantime::parse_duration)]
    pub max_retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Address to serve the simulated API on.
    #[arg(long = "listen", default_value = "127.0.0.1:8089")]
    pub listen: String,
    #[arg(long, default_value_t = 200)]
    pub agents: usize,
    #[arg(long = "history-tasks", default_value_t = 2000)]
    pub history_tasks: usize,
    /// Task status changes per minute.
    #[arg(long = "changes-per-minute", default_value_t = 600.0)]
    pub changes_per_minute: f64,
    /// Longest delay before a change shows in listings (the contract's is 5s).
    #[arg(long = "visibility-lag", default_value = "5s", value_parser = humantime::parse_duration)]
    pub visibility_lag: Duration,
    /// Requests per minute per workspace.
    #[arg(long = "rate-limit", default_value_t = 1000)]
    pub rate_limit: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Agents sometimes take statuses the contract does not list.
    #[arg(long = "unknown-agent-statuses")]
    pub unknown_agent_statuses: bool,
    /// Agents' `team` label drawn from N values (team-00..) instead of the
    /// five default teams; with --envs, a fleet that fills the breakdown caps.
    #[arg(long, value_name = "N")]
    pub teams: Option<usize>,
    /// Agents' `env` label drawn from N values (env-00..) instead of prod
    /// and staging.
    #[arg(long, value_name = "N")]
    pub envs: Option<usize>,
    #[command(flatten)]
    pub latitude: LatitudeArgs,
}

/// `demo`: the exporter's flags, and how the simulator behind it behaves.
/// Its own defaults: loopback only, and numbers that move within seconds.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("listen_address", |a| a.default_value("127.0.0.1:9817")),
    mut_arg("poll_interval", |a| a.default_value("5s"))
)]
pub struct DemoArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub latitude: LatitudeArgs,
}

/// What the contract allows that the simulator does only when asked.
#[derive(Debug, Clone, Args)]
pub struct LatitudeArgs {
    /// Contract latitude the simulator takes: all, none, or a comma-separated
    /// list of whole-seconds, late-metrics, late-failure-codes,
    /// deletion-keeps-updated-at, unknown-task-statuses, lag-always-max.
    #[arg(long = "latitude", value_name = "LIST", default_value = "none", value_parser = crate::sim::Latitude::parse_list)]
    pub latitude: crate::sim::Latitude,
    /// The simulated API's clock minus the host's, e.g. -15s or +1m.
    #[arg(long = "clock-offset", value_name = "DURATION", default_value = "0s", allow_hyphen_values = true, value_parser = crate::sim::parse_signed_ms)]
    pub clock_offset_ms: i64,
    /// An incident for the breakdowns to find: provider-outage[:PROVIDER] (default openai) or heartbeat-loss[:TEAM] (default growth).
    #[arg(long = "incident", value_name = "KIND", value_parser = crate::sim::Incident::parse)]
    pub incident: Option<crate::sim::Incident>,
}

impl LatitudeArgs {
    pub fn to_latitude(&self) -> crate::sim::Latitude {
        crate::sim::Latitude {
            clock_offset_ms: self.clock_offset_ms,
            ..self.latitude.clone()
        }
    }
}

/// Where the exporter reads its environment: the process, or a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// The validated configuration the rest of the program takes.
#[derive(Debug, Clone)]
pub struct Config {
    /// The workspaces to watch (before sharding): one from the flags, or
    /// those of the config file.
    pub workspaces: Vec<WorkspaceConfig>,
    /// Where the workspaces came from, for reloads; `None` for flags.
    pub config_file: Option<PathBuf>,
    pub shard: Shard,
    pub web: WebConfig,
    pub enable_lifecycle: bool,
    pub listen: SocketAddr,
    pub telemetry_path: String,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// OTLP push; `None` when off.
    pub otlp: Option<crate::otlp::OtlpConfig>,
    /// The webhook receiver, when a secret is configured.
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// Bounds of every file read, at start and on reload.
    pub files: crate::files::FileLimits,
    /// Checkpoints (`--storage.path`); `None` when off.
    pub storage: Option<crate::storage::StorageConfig>,
}

/// A configuration problem, said in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl RunArgs {
    /// Validate; the key comes from the file or the environment.
    pub fn validate(&self, env: &dyn Env) -> Result<Config, ConfigError> {
        let files = self.file_limits()?;
        if let Some(file) = &self.config_file {
            let loaded = crate::config_file::load_file(file, env, &files).map_err(|p| {
                bad(format!(
                    "--config.file {}: {}",
                    file.display(),
                    p.0.join("; ")
                ))
            })?;
            return self.validate_common(loaded.workspaces, loaded.storage, env);
        }
        let key = match &self.api_key_file {
            Some(path) => {
                let raw = crate::files::read_to_string(path, &files)
                    .map_err(|e| bad(format!("--api-key-file {}: {e}", path.display())))?;
                let key = raw.trim();
                if key.is_empty() {
                    return Err(bad(format!("--api-key-file {}: the file is empty", path.display())));
                }
                Secret::new(key)
            }
            None => match env.var(KEY_ENV).map(|k| k.trim().to_string()) {
                Some(k) if !k.is_empty() => Secret::new(k),
                _ => {
                    return Err(bad(format!(
                        "no API key: set {KEY_ENV} or --api-key-file PATH (a key with scopes agents:read and tasks:read)"
                    )))
                }
            },
        };
        self.validate_with_key_in(key, env)
    }

    /// The receiver's settings, given its secrets.
    pub fn webhook_config(
        &self,
        secrets: Vec<Secret>,
    ) -> Result<crate::webhook::WebhookConfig, ConfigError> {
        if self.webhook_queue_capacity == 0 {
            return Err(bad("--webhook.queue-capacity: must be at least 1"));
        }
        if self.webhook_max_id_length == 0 {
            return Err(bad("--webhook.max-id-length: must be at least 1"));
        }
        if self.webhook_max_inflight_size < crate::webhook::MIN_INFLIGHT_BYTES as u64 {
            return Err(bad(
                "--webhook.max-inflight-size: must be at least 1MiB (the largest body)",
            ));
        }
        Ok(crate::webhook::WebhookConfig {
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
    fn webhook_from(
        &self,
        env: &dyn Env,
    ) -> Result<Option<crate::webhook::WebhookConfig>, ConfigError> {
        if let Some(w) = self.webhook_from_files()? {
            return Ok(Some(w));
        }
        match env.var(WEBHOOK_SECRET_ENV) {
            Some(s) => Ok(Some(
                self.webhook_config(secret_lines(WEBHOOK_SECRET_ENV, &s)?)?,
            )),
            None => Ok(None),
        }
    }

    /// Secrets from `--webhook.secret-file` (any number of files, one
    /// secret a line, two at most in all); `None` without the flag.
    fn webhook_from_files(&self) -> Result<Option<crate::webhook::WebhookConfig>, ConfigError> {
        if self.webhook_secret_files.is_empty() {
            return Ok(None);
        }
        let mut secrets = Vec::new();
        for path in &self.webhook_secret_files {
            let what = format!("--webhook.secret-file {}", path.display());
            let raw = crate::files::read_to_string(path, &self.file_limits()?)
                .map_err(|e| bad(format!("{what}: {e}")))?;
            secrets.extend(secret_lines(&what, &raw)?);
        }
        if secrets.len() > 2 {
            return Err(bad("--webhook.secret-file: at most two secrets in all (the current one and the one being rotated)"));
        }
        self.webhook_config(secrets).map(Some)
    }

    /// Validate with a key already at hand, ignoring the OTEL_* environment.
    pub fn validate_with_key(&self, key: Secret) -> Result<Config, ConfigError> {
        self.validate_with_key_in(key, &std::collections::HashMap::new())
    }

    /// Validate with a key already at hand; OTEL_* variables come from `env`.
    pub fn validate_with_key_in(&self, key: Secret, env: &dyn Env) -> Result<Config, ConfigError> {
        let url = self.api_url.trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(bad(format!(
                "--api-url {url:?}: must start with https:// (or http:// for the simulator)"
            )));
        }
        if self.poll_interval < Duration::from_secs(1) {
            return Err(bad("--poll-interval: must be at least 1s"));
        }
        if self.overlap < MAX_VISIBILITY_LAG {
            return Err(bad(format!(
                "--tasks.overlap {}: must be at least 5s, the API's visibility lag, or task changes can be missed",
                humantime::format_duration(self.overlap)
            )));
        }
        if self.dedup_horizon < self.overlap * 2 {
            return Err(bad(
                "--tasks.dedup-horizon: must be at least twice --tasks.overlap",
            ));
        }
        if self.failure_code_grace >= self.dedup_horizon {
            return Err(bad(
                "--tasks.failure-code-grace: must be shorter than --tasks.dedup-horizon (a failure is forgotten after the horizon)",
            ));
        }
        if !(self.budget_share > 0.0 && self.budget_share <= 1.0) {
            return Err(bad(format!(
                "--api.budget-share {}: must be in (0, 1], e.g. 0.1 for 10 %",
                self.budget_share
            )));
        }
        if !(0.0..=1.0).contains(&self.lookup_share) {
            return Err(bad(format!(
                "--api.lookup-share {}: must be in [0, 1], e.g. 0.1 for a tenth of --api.budget-share",
                self.lookup_share
            )));
        }
        if self.max_attempts == 0 {
            return Err(bad("--api.max-attempts: must be at least 1"));
        }
        // ---- upstream bounds (issue 10) ----
        let limits = crate::api::ApiLimits {
            max_body_bytes: self.max_body_size,
            max_pages: self.max_pages,
            max_listing_bytes: self.max_listing_bytes,
            max_cursor_len: self.max_cursor_length,
            max_retry_after: self.max_retry_after,
            max_listing_duration: self.max_listing_duration,
        };
        limits.check(|f| format!("--api.{f}")).map_err(bad)?;
        // ---- end upstream bounds ----
        let workspace = WorkspaceConfig {
            key: "flags".into(),
            name: None,
            expected_id: None,
            client: ClientConfig {
                base_url: url.to_string(),
                key,
                request_timeout: self.api_timeout,
                max_attempts: self.max_attempts,
                budget_share: self.budget_share,
                lookup_share: self.lookup_share,
                limits,
                ..ClientConfig::default()
            },
            poll: PollConfig {
                interval: self.poll_interval,
                agents_interval: self.agents_interval.unwrap_or(self.poll_interval),
                reconcile_interval: self.reconcile_interval,
                overlap: self.overlap,
                dedup_horizon: self.dedup_horizon,
                fleet: crate::fleet::FleetLimits {
                    max_timestamp_lead: self.max_timestamp_lead,
                    unknown_status_ttl: self.unknown_status_ttl,
                    failure_code_grace: self.failure_code_grace,
                    heartbeat_stale_after: self.heartbeat_stale_after,
                    per_agent_series: if self.heartbeat_series {
                        self.heartbeat_series_max
                    } else {
                        0
                    },
                },
                breakdown: self.breakdown()?,
                max_agent_lookups: self.breakdown_max_agent_lookups,
                storage: None,
                handoff: None,
            },
            labels: Default::default(),
        };
        self.validate_common(vec![workspace], None, env)
    }

    /// The breakdown flags, checked.
    fn breakdown(&self) -> Result<crate::fleet::BreakdownConfig, ConfigError> {
        let patterns = |flag: &str, allow: &[String], deny: &[String]| {
            crate::fleet::breakdown_patterns(allow, deny)
                .map_err(|e| bad(format!("--breakdown.{flag}: {e}")))
        };
        let cfg = crate::fleet::BreakdownConfig {
            provider: self.breakdown_provider,
            model: self.breakdown_model,
            agent_labels: patterns(
                "agent-labels",
                &self.breakdown_agent_labels,
                &self.breakdown_agent_labels_deny,
            )?,
            task_labels: patterns(
                "task-labels",
                &self.breakdown_task_labels,
                &self.breakdown_task_labels_deny,
            )?,
            max_values: self.breakdown_max_values,
            max_labels: self.breakdown_max_labels,
            max_slices: self.breakdown_max_combinations,
        };
        cfg.check()
            .map_err(|(k, e)| bad(format!("--breakdown.{}: {e}", k.replace('_', "-"))))?;
        Ok(cfg)
    }

    /// The checks that do not depend on where the workspaces came from.
    fn validate_common(
        &self,
        workspaces: Vec<WorkspaceConfig>,
        file_storage: Option<crate::storage::StorageConfig>,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        let storage = self.storage(file_storage)?;
        let listen = parse_listen(&self.listen_address)?;
        let path = &self.telemetry_path;
        if !path.starts_with('/')
            || ["/", "/healthz", "/readyz", "/-/reload"].contains(&path.as_str())
        {
            return Err(bad(format!(
                "--web.telemetry-path {path:?}: must start with / and not be /, /healthz, /readyz or /-/reload"
            )));
        }
        let shard = Shard::new(&self.shard, self.total_shards).map_err(bad)?;
        let files = self.file_limits()?;
        let mut web = match &self.web_config_file {
            Some(f) => crate::webconfig::load(f, &files).map_err(|p| bad(p.0.join("; ")))?,
            None => WebConfig::default(),
        };
        web.limits = self.server_limits()?;
        let otlp = crate::otlp::settings::resolve(&self.otlp, env, &files).map_err(bad)?;
        Ok(Config {
            workspaces,
            config_file: self.config_file.clone(),
            shard,
            web,
            enable_lifecycle: self.enable_lifecycle,
            listen,
            telemetry_path: path.clone(),
            log_level: self.log_level,
            log_format: self.log_format,
            otlp,
            webhook: self.webhook_from(env)?,
            files,
            storage,
        })
    }

    /// `--storage.*` over the config file's `storage:`; checked writable.
    fn storage(
        &self,
        file: Option<crate::storage::StorageConfig>,
    ) -> Result<Option<crate::storage::StorageConfig>, ConfigError> {
        use crate::storage::StorageConfig;
        // Flags win setting by setting over the file's `storage:`.
        let mut cfg = match (&self.storage_path, file) {
            (Some(dir), Some(f)) => StorageConfig {
                dir: dir.clone(),
                ..f
            },
            (Some(dir), None) => StorageConfig::new(dir.clone()),
            (None, Some(f)) => f,
            (None, None) => {
                if self.storage_interval.is_some()
                    || self.storage_max_size.is_some()
                    || self.storage_write_timeout.is_some()
                {
                    return Err(bad("--storage.interval, --storage.max-size and --storage.write-timeout need --storage.path (or storage.path in the config file)"));
                }
                return Ok(None);
            }
        };
        if let Some(i) = self.storage_interval {
            cfg.interval = i;
        }
        if let Some(m) = self.storage_max_size {
            cfg.max_size = m;
        }
        if let Some(t) = self.storage_write_timeout {
            cfg.write_timeout = t;
        }
        // Longer, and a write that hangs at the stop would outlast the
        // usual 30 s grace of a SIGTERM.
        if !(Duration::from_millis(100)..=Duration::from_secs(20)).contains(&cfg.write_timeout) {
            return Err(bad(
                "--storage.write-timeout: must be from 100ms to 20s (a write that hangs at the stop holds the exit that long)",
            ));
        }
        // The counters a checkpoint keeps are served as of the last one:
        // longer than a minute and rates would stall (and alerts fire).
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&cfg.interval) {
            return Err(bad(
                "--storage.interval: must be from 1s to 1m (the counters move once per checkpoint)",
            ));
        }
        if cfg.max_size < 1024 * 1024 {
            return Err(bad("--storage.max-size: must be at least 1MiB"));
        }
        cfg.check().map_err(bad)?;
        Ok(Some(cfg))
    }

    /// The `--files.*` bounds.
    pub fn file_limits(&self) -> Result<crate::files::FileLimits, ConfigError> {
        if self.files_max_size == 0 {
            return Err(bad("--files.max-size: must be at least 1 byte, e.g. 1MiB"));
        }
        if self.files_read_timeout.is_zero() {
            return Err(bad(
                "--files.read-timeout: must be longer than zero, e.g. 5s",
            ));
        }
        if self.files_max_yaml_depth < 4 {
            return Err(bad("--files.max-yaml-depth: must be at least 4 (the configuration file itself nests 4 deep)"));
        }
        Ok(crate::files::FileLimits {
            max_bytes: self.files_max_size,
            timeout: self.files_read_timeout,
            max_yaml_depth: self.files_max_yaml_depth,
        })
    }
}

// ---- HTTP server bounds (issue 10) ----
impl RunArgs {
    fn server_limits(&self) -> Result<crate::server::Limits, ConfigError> {
        for (flag, d) in [
            ("--web.read-header-timeout", self.read_header_timeout),
            ("--web.read-body-timeout", self.read_body_timeout),
            ("--web.idle-timeout", self.idle_timeout),
            ("--web.write-timeout", self.write_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return Err(bad(format!("{flag}: must be at least 100ms")));
            }
        }
        if self.max_connections == 0 {
            return Err(bad("--web.max-connections: must be at least 1"));
        }
        if self.auth_concurrency == 0 {
            return Err(bad("--web.basic-auth.max-concurrent: must be at least 1"));
        }
        if self.max_header_size < crate::server::MIN_HEADER_BYTES as u64
            || self.max_header_size > u64::from(u32::MAX)
        {
            return Err(bad("--web.max-header-size: must be between 8KiB and 4GiB"));
        }
        if self.http2_max_streams == 0 {
            return Err(bad("--web.http2-max-streams: must be at least 1"));
        }
        Ok(crate::server::Limits {
            read_header_timeout: self.read_header_timeout,
            read_body_timeout: self.read_body_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            max_header_bytes: self.max_header_size as usize,
            max_h2_streams: self.http2_max_streams,
            max_connections: self.max_connections,
            auth_concurrency: self.auth_concurrency,
            auth_max_wait: self.auth_max_wait,
        })
    }
}
// ---- end HTTP server bounds ----

pub const WEBHOOK_SECRET_ENV: &str = "CLAWMESH_WEBHOOK_SECRET";

/// One secret per non-empty line (trimmed), one or two of them.
fn secret_lines(what: &str, raw: &str) -> Result<Vec<Secret>, ConfigError> {
    let secrets: Vec<Secret> = raw
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(Secret::new)
        .collect();
    match secrets.len() {
        0 => Err(bad(format!("{what}: no webhook secret in it"))),
        1 | 2 => Ok(secrets),
        _ => Err(bad(format!(
            "{what}: at most two secrets (the current one and the one being rotated)"
        ))),
    }
}

/// `host:port`, or `:port` for every interface.
pub fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            bad(format!(
                "--web.listen-address {s:?}: expected host:port or :port, e.g. :{DEFAULT_PORT}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args(extra: &[&str]) -> RunArgs {
        let mut v = vec!["clawmesh-exporter"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).unwrap().run
    }

    fn env(key: Option<&str>) -> HashMap<String, String> {
        key.map(|k| (KEY_ENV.to_string(), k.to_string()))
            .into_iter()
            .collect()
    }

    #[test]
    fn defaults_validate_with_a_key_from_the_environment() {
        let c = args(&[]).validate(&env(Some("k1"))).unwrap();
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert_eq!(c.workspaces[0].client.key.expose(), "k1");
        assert_eq!(c.workspaces[0].poll.interval, Duration::from_secs(15));
        assert_eq!(
            c.workspaces[0].poll.agents_interval,
            c.workspaces[0].poll.interval
        );
        assert_eq!(c.workspaces[0].client.budget_share, 0.1);
    }

    #[test]
    fn the_key_file_wins_and_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("cmx-key-{}", std::process::id()));
        std::fs::write(&dir, "file-key\n").unwrap();
        let c = args(&["--api-key-file", dir.to_str().unwrap()])
            .validate(&env(Some("env-key")))
            .unwrap();
        assert_eq!(c.workspaces[0].client.key.expose(), "file-key");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn the_webhook_inflight_budget_holds_at_least_one_largest_body() {
        let e = args(&["--webhook.max-inflight-size", "512KiB"])
            .webhook_config(vec![])
            .unwrap_err();
        assert!(e.to_string().contains("--webhook.max-inflight-size"), "{e}");
        let w = args(&[]).webhook_config(vec![]).unwrap();
        assert_eq!(w.max_inflight_bytes, 16 << 20);
    }

    #[test]
    fn problems_are_one_line_each() {
        let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
            (vec![], None, "no API key"),
            (vec!["--tasks.overlap", "2s"], Some("k"), "visibility lag"),
            (vec!["--api.budget-share", "1.5"], Some("k"), "budget-share"),
            (vec!["--api.lookup-share", "1.5"], Some("k"), "lookup-share"),
            (
                vec!["--api.max-body-size", "100"],
                Some("k"),
                "--api.max-body-size",
            ),
            (vec!["--api.max-pages", "0"], Some("k"), "--api.max-pages"),
            (
                vec![
                    "--api.max-listing-bytes",
                    "1MiB",
                    "--api.max-body-size",
                    "2MiB",
                ],
                Some("k"),
                "--api.max-listing-bytes",
            ),
            (
                vec!["--web.listen-address", "nonsense"],
                Some("k"),
                "listen-address",
            ),
            (
                vec!["--web.telemetry-path", "metrics"],
                Some("k"),
                "telemetry-path",
            ),
            (
                vec!["--web.max-header-size", "4KiB"],
                Some("k"),
                "--web.max-header-size",
            ),
            (
                vec!["--web.http2-max-streams", "0"],
                Some("k"),
                "--web.http2-max-streams",
            ),
            (
                vec!["--web.write-timeout", "10ms"],
                Some("k"),
                "--web.write-timeout",
            ),
            (vec!["--api-url", "ftp://x"], Some("k"), "api-url"),
            (
                vec!["--api-key-file", "/nonexistent/key"],
                Some("k"),
                "/nonexistent/key",
            ),
        ];
        for (flags, key, needle) in cases {
            let e = args(&flags).validate(&env(key)).unwrap_err().to_string();
            assert!(e.contains(needle), "{flags:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn webhook_secrets_come_from_files_or_the_environment_never_a_flag() {
        let dir = std::env::temp_dir();
        let one = dir.join(format!("cmx-wh1-{}", std::process::id()));
        let two = dir.join(format!("cmx-wh2-{}", std::process::id()));
        std::fs::write(&one, "whsec_current\nwhsec_previous\n").unwrap();
        std::fs::write(&two, "whsec_third\n").unwrap();
        let c = args(&["--webhook.secret-file", one.to_str().unwrap()])
            .validate(&env(Some("k")))
            .unwrap();
        let w = c.webhook.as_ref().unwrap();
        assert_eq!(w.secrets.len(), 2);
        assert_eq!(w.poll_interval, Duration::from_secs(120));
        assert!(
            !format!("{c:?}").contains("whsec_"),
            "secrets must be redacted"
        );
        let e = args(&[
            "--webhook.secret-file",
            one.to_str().unwrap(),
            "--webhook.secret-file",
            two.to_str().unwrap(),
        ])
        .validate(&env(Some("k")))
        .unwrap_err()
        .to_string();
        assert!(e.contains("at most two") && !e.contains("whsec_"), "{e}");
        let mut e = env(Some("k"));
        e.insert(WEBHOOK_SECRET_ENV.into(), "whsec_env".into());
        let c = args(&[]).validate(&e).unwrap();
        assert_eq!(c.webhook.unwrap().secrets[0].expose(), "whsec_env");
        assert!(args(&[])
            .validate(&env(Some("k")))
            .unwrap()
            .webhook
            .is_none());
        assert!(Cli::try_parse_from(["clawmesh-exporter", "--webhook.secret", "x"]).is_err());
        std::fs::remove_file(one).unwrap();
        std::fs::remove_file(two).unwrap();
    }

    #[test]
    fn there_is_no_flag_for_the_key_itself() {
        assert!(Cli::try_parse_from(["clawmesh-exporter", "--api-key", "x"]).is_err());
    }
}
