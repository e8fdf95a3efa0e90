//! Flags and environment -> one validated [`Config`]. Every flag can also be
//! set by an environment variable; the API key only by the environment or a
//! file, never by a flag (flags show in the process list).
//!
//! Each module owns its flags (a `clap::Args` struct flattened in here) and
//! the rules of its settings; this file only assembles them: where the
//! workspaces come from (the flags or `--config.file`), the key, and the
//! exporter's own listen address, path, shard and logging.

use crate::api::settings::ApiArgs;
use crate::config_file::WorkspaceConfig;
use crate::env::Env;
use crate::files::FilesArgs;
use crate::fleet::settings::{BreakdownArgs, FleetArgs};
use crate::otlp::settings::OtlpArgs;
use crate::poll::settings::PollArgs;
use crate::prices::{PriceOptions, PriceTable, PricesArgs, PricesConfig};
use crate::secret::Secret;
use crate::shard::Shard;
use crate::storage::settings::StorageArgs;
use crate::webconfig::settings::ServerArgs;
use crate::webconfig::WebConfig;
use crate::webhook::settings::WebhookArgs;
use clap::{Args, Parser, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// The version, the revision it was built from and the day it was built.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision: ",
    env!("CLAWMESH_GIT_REVISION"),
    ", date: ",
    env!("CLAWMESH_BUILD_DATE"),
    ")"
);

/// `--version`, worded as Prometheus and its exporters word it:
/// `clawmesh-exporter, version 0.1.0 (revision: 1a2b3c4d5e6f, date: 2026-12-06)`.
pub fn version_line() -> String {
    format!("clawmesh-exporter, version {VERSION}")
}

pub const DEFAULT_PORT: u16 = 9817;
pub const KEY_ENV: &str = "CLAWMESH_API_KEY";

// `[env: NAME]` in --help, not clap's `[env: NAME=VALUE]`: unset, the
// value is empty and the line shows a stray `=`; set, it would print the
// environment's values into the help.
#[derive(Debug, Parser)]
#[command(
    name = "clawmesh-exporter",
    version = VERSION,
    about = "Prometheus and OTLP exporter for ClawMesh agent fleets",
    mut_args(|a| a.hide_env_values(true)),
    mut_subcommands(|c| c.mut_args(|a| a.hide_env_values(true)))
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
    Simulate(crate::sim::cli::SimArgs),
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

/// The exporter's flags: its own (where the workspaces and the key come
/// from, where it listens, its shard), and each module's, flattened in.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub api: ApiArgs,
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
    /// Show no exemplars (the task ids beside duration buckets and failed counts) in OpenMetrics and protobuf scrapes.
    #[arg(long = "web.disable-exemplars", env = "CLAWMESH_WEB_DISABLE_EXEMPLARS")]
    pub disable_exemplars: bool,
    /// Write OpenMetrics _created samples (Prometheus before 3.x stores each as one more series; protobuf carries created timestamps regardless).
    #[arg(
        long = "web.openmetrics-created",
        env = "CLAWMESH_WEB_OPENMETRICS_CREATED"
    )]
    pub openmetrics_created: bool,
    /// Largest /metrics body kept uncompressed, per format, for scrapers that do not take gzip (e.g. 4MiB); a larger one is inflated from the kept gzip as such a scraper reads it.
    #[arg(long = "web.max-plain-size", env = "CLAWMESH_WEB_MAX_PLAIN_SIZE", default_value = "4MiB", value_parser = crate::units::parse_size)]
    pub max_plain_size: u64,
    #[command(flatten)]
    pub poll: PollArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub breakdown: BreakdownArgs,
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
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub prices: PricesArgs,
    #[command(flatten)]
    pub files: FilesArgs,
    #[command(flatten)]
    pub server: ServerArgs,
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
    pub latitude: crate::sim::cli::LatitudeArgs,
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
    /// What /metrics shows beyond the numbers (exemplars).
    pub exposition: crate::expose::Options,
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
    /// The price table and where it comes from.
    pub prices: PricesSetup,
}

/// The price table read at the start, where it came from, and the flags a
/// reload resolves again over the file's `prices:`.
#[derive(Debug, Clone)]
pub struct PricesSetup {
    /// The `--prices.*` flags.
    pub flags: PricesArgs,
    /// Where the table came from; `None`: no table, nothing is priced.
    pub source: Option<PricesConfig>,
    /// The table read at the start (`PriceTable::none()` without one).
    pub table: std::sync::Arc<PriceTable>,
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
            return self.validate_common(loaded.workspaces, loaded.storage, loaded.prices, env);
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

    /// Validate with a key already at hand, ignoring the OTEL_* environment.
    pub fn validate_with_key(&self, key: Secret) -> Result<Config, ConfigError> {
        self.validate_with_key_in(key, &std::collections::HashMap::new())
    }

    /// Validate with a key already at hand; OTEL_* variables come from `env`.
    pub fn validate_with_key_in(&self, key: Secret, env: &dyn Env) -> Result<Config, ConfigError> {
        // The first problem is the one reported, in the order the flags
        // have always been checked: the URL, the scheduler's rules, the
        // client's shares and bounds, then the breakdowns.
        self.api.url().map_err(bad)?;
        let poll = self.poll.config(
            self.fleet.limits(),
            crate::fleet::BreakdownConfig::default(),
        );
        if let Some(rule) = poll.check().first() {
            return Err(bad(rule.flag_message(&poll)));
        }
        let client = self.api.client(key).map_err(bad)?;
        let poll = crate::poll::PollConfig {
            breakdown: self.breakdown.config().map_err(bad)?,
            ..poll
        };
        let workspace = WorkspaceConfig {
            key: "flags".into(),
            name: None,
            expected_id: None,
            client,
            poll,
            labels: Default::default(),
        };
        self.validate_common(vec![workspace], None, None, env)
    }

    /// The checks that do not depend on where the workspaces came from.
    fn validate_common(
        &self,
        workspaces: Vec<WorkspaceConfig>,
        file_storage: Option<crate::storage::StorageConfig>,
        file_prices: Option<crate::config_file::FilePrices>,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        let storage = self.storage.resolve(file_storage).map_err(bad)?;
        let source = resolve_prices(&self.prices, file_prices).map_err(bad)?;
        budgets_need_prices(&workspaces, source.is_some()).map_err(bad)?;
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
        web.limits = self.server.limits().map_err(bad)?;
        let otlp = crate::otlp::settings::resolve(&self.otlp, env, &files).map_err(bad)?;
        let table = match &source {
            Some(s) => load_prices(s, &files).map_err(bad)?,
            None => PriceTable::none(),
        };
        Ok(Config {
            workspaces,
            config_file: self.config_file.clone(),
            shard,
            web,
            enable_lifecycle: self.enable_lifecycle,
            listen,
            telemetry_path: path.clone(),
            exposition: crate::expose::Options {
                exemplars: !self.disable_exemplars,
                created_lines: self.openmetrics_created,
                plain_max: usize::try_from(self.max_plain_size).unwrap_or(usize::MAX),
            },
            log_level: self.log_level,
            log_format: self.log_format,
            otlp,
            webhook: self.webhook.resolve(env, &files).map_err(bad)?,
            files,
            storage,
            prices: PricesSetup {
                flags: self.prices.clone(),
                source,
                table: std::sync::Arc::new(table),
            },
        })
    }

    /// `check-config`'s part beyond the file itself: the price table the
    /// file's `prices:` and these flags name, read as the start would.
    /// `Ok(None)`: no table; `Ok(Some(report))`; `Err`: why it would be
    /// refused.
    pub fn check_prices(
        &self,
        file: &std::path::Path,
        env: &dyn Env,
    ) -> Result<Option<String>, String> {
        let files = self.file_limits().map_err(|e| e.to_string())?;
        let loaded =
            crate::config_file::load_file(file, env, &files).map_err(|p| p.0.join("; "))?;
        let Some(source) = resolve_prices(&self.prices, loaded.prices)? else {
            return Ok(None);
        };
        let table = load_prices(&source, &files)?;
        Ok(Some(format!(
            "price table {}: OK, {} entries ({}, {})",
            source.file.display(),
            table.entries(),
            table.currency(),
            table.format().map_or("", |f| f.name())
        )))
    }

    /// The `--files.*` bounds.
    pub fn file_limits(&self) -> Result<crate::files::FileLimits, ConfigError> {
        self.files.limits().map_err(bad)
    }
}

/// Budgets without a price table would show 0 spent for ever: refused,
/// naming the first workspace that sets some.
pub fn budgets_need_prices(workspaces: &[WorkspaceConfig], priced: bool) -> Result<(), String> {
    match workspaces.iter().find(|w| !w.poll.budgets.is_empty()) {
        Some(w) if !priced => Err(format!(
            "workspace {:?} sets budgets: but no price table is configured, so nothing would ever count against them: name one with --prices.file or prices.file (docs/spend.md)",
            w.key
        )),
        _ => Ok(()),
    }
}

/// Where the price table comes from: the `--prices.*` flags over the
/// config file's `prices:`, key by key (as `--storage.*` over `storage:`);
/// `None` when neither names a table. A flag counts as given when it is
/// not its default; where both name a different value the flag's is
/// taken, and a warning says so.
pub fn resolve_prices(
    flags: &PricesArgs,
    file: Option<crate::config_file::FilePrices>,
) -> Result<Option<PricesConfig>, String> {
    let file = file.unwrap_or_default();
    let unset: PricesArgs = crate::config_file::flag_defaults();
    if flags.max_entries == 0 {
        return Err(
            "--prices.max-entries: must be at least 1 (the most prices, one per model and date, a table may hold)"
                .into(),
        );
    }
    if flags.max_size == 0 {
        return Err("--prices.max-size: must be at least 1 byte (e.g. 6MiB)".into());
    }
    let aliases = crate::prices::parse_aliases(&flags.provider_alias)?;
    // Flag over file, key by key; the warning names each difference.
    fn pick<T: PartialEq + std::fmt::Debug>(
        key: &str,
        flag: Option<T>,
        file: Option<T>,
    ) -> Option<T> {
        match (flag, file) {
            (Some(f), Some(x)) => {
                if f != x {
                    tracing::warn!(flag = format!("--prices.{key}"), flag_value = ?f, file_value = ?x, "the --prices flag and prices: in the configuration file differ: the flag's value is used");
                }
                Some(f)
            }
            (f, x) => f.or(x),
        }
    }
    let path = pick("file", flags.file.clone(), file.file);
    let provider_aliases = pick(
        "provider-alias",
        (!aliases.is_empty()).then_some(aliases),
        file.provider_aliases,
    )
    .unwrap_or_default();
    let max_entries = pick(
        "max-entries",
        (flags.max_entries != unset.max_entries).then_some(flags.max_entries),
        file.max_entries,
    )
    .unwrap_or(unset.max_entries);
    let max_bytes = pick(
        "max-size",
        (flags.max_size != unset.max_size).then_some(flags.max_size),
        file.max_size,
    )
    .unwrap_or(unset.max_size);
    Ok(path.map(|file| PricesConfig {
        file,
        options: PriceOptions {
            provider_aliases,
            max_entries,
            ..PriceOptions::default()
        },
        max_bytes,
    }))
}

/// Read the price table `cfg` names; `Err`: one line naming the file and
/// its first problems (each naming its entry and field).
pub fn load_prices(
    cfg: &PricesConfig,
    files: &crate::files::FileLimits,
) -> Result<PriceTable, String> {
    PriceTable::load(cfg, files).map_err(|problems| {
        const SHOWN: usize = 10;
        let mut line = problems
            .iter()
            .take(SHOWN)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("; ");
        if problems.len() > SHOWN {
            line.push_str(&format!("; and {} more", problems.len() - SHOWN));
        }
        // The reader's problems name the file themselves (once is enough).
        let path = cfg.file.display().to_string();
        let line = crate::text::shorten(&line, 4096);
        if line.contains(&path) {
            format!("the price table is refused: {line}")
        } else {
            format!("the price table {path} is refused: {line}")
        }
    })
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
    use std::time::Duration;

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
            .webhook
            .config(vec![])
            .unwrap_err();
        assert!(e.to_string().contains("--webhook.max-inflight-size"), "{e}");
        let w = args(&[]).webhook.config(vec![]).unwrap();
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
            (
                vec!["--prices.provider-alias", "google"],
                Some("k"),
                "--prices.provider-alias \"google\": write PROVIDER=TABLE_PROVIDER",
            ),
            (
                vec!["--prices.max-entries", "0"],
                Some("k"),
                "--prices.max-entries: must be at least 1",
            ),
            (
                vec!["--prices.file", "/nonexistent/prices.yaml"],
                Some("k"),
                "/nonexistent/prices.yaml",
            ),
        ];
        for (flags, key, needle) in cases {
            let e = args(&flags).validate(&env(key)).unwrap_err().to_string();
            assert!(e.contains(needle), "{flags:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    /// With two bad flags, the one reported is the one the exporter
    /// reported before the settings moved into their modules (ae9b5e5):
    /// the URL, then the scheduler's rules, then the client's shares and
    /// bounds, then the breakdowns.
    #[test]
    fn the_first_of_two_flag_problems_is_the_one_it_always_was() {
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (
                vec!["--poll-interval", "1ms", "--api.budget-share", "5"],
                "--poll-interval: must be at least 1s",
            ),
            (
                vec!["--tasks.overlap", "1s", "--api.max-attempts", "0"],
                "--tasks.overlap 1s:",
            ),
            (
                vec!["--api.max-body-size", "1", "--tasks.overlap", "1s"],
                "--tasks.overlap 1s:",
            ),
            (
                vec!["--breakdown.max-values", "0", "--tasks.dedup-horizon", "1s"],
                "--tasks.dedup-horizon:",
            ),
            (
                vec!["--api.budget-share", "5", "--breakdown.max-values", "0"],
                "--api.budget-share 5:",
            ),
            (
                vec!["--api-url", "ftp://x", "--poll-interval", "0s"],
                "--api-url \"ftp://x\":",
            ),
        ];
        for (flags, start) in cases {
            let e = args(&flags).validate(&env(Some("k"))).unwrap_err();
            assert!(e.to_string().starts_with(start), "{flags:?}: {e}");
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
        e.insert(
            crate::webhook::settings::WEBHOOK_SECRET_ENV.into(),
            "whsec_env".into(),
        );
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

    /// A workspace of a config file that sets nothing has the settings
    /// the flags' defaults give: both read the modules' tables.
    #[test]
    fn a_file_that_sets_nothing_gets_the_flags_defaults() {
        let flags = args(&[]).validate(&env(Some("k"))).unwrap();
        let mut vars = env(None);
        vars.insert("K".into(), "k".into());
        let file = crate::config_file::parse(
            "workspaces:\n  - api_key_env: K\n",
            std::path::Path::new("."),
            &vars,
            &crate::files::FileLimits::default(),
        )
        .unwrap();
        assert_eq!(file[0].poll, flags.workspaces[0].poll);
        assert_eq!(file[0].client, flags.workspaces[0].client);
        // And a setting changed in the file is one the comparison sees.
        let slower = crate::config_file::parse(
            "workspaces:\n  - api_key_env: K\n    dedup_horizon: 2h\n",
            std::path::Path::new("."),
            &vars,
            &crate::files::FileLimits::default(),
        )
        .unwrap();
        assert_eq!(slower[0].poll.dedup_horizon, Duration::from_secs(7200));
        assert_ne!(slower[0].poll, flags.workspaces[0].poll);
    }

    #[test]
    fn every_rule_is_said_by_the_flags_and_the_file_alike() {
        use crate::poll::settings::PollRule;
        for (flags, rule, file) in [
            (
                vec!["--poll-interval", "500ms"],
                PollRule::Interval,
                "poll_interval: 500ms",
            ),
            (
                vec!["--tasks.overlap", "2s"],
                PollRule::Overlap,
                "overlap: 2s",
            ),
            (
                vec![
                    "--tasks.dedup-horizon",
                    "19s",
                    "--tasks.failure-code-grace",
                    "10s",
                ],
                PollRule::DedupHorizon,
                "dedup_horizon: 19s\n    failure_code_grace: 10s",
            ),
            (
                vec!["--tasks.failure-code-grace", "2h"],
                PollRule::FailureCodeGrace,
                "failure_code_grace: 2h",
            ),
        ] {
            let a = args(&flags);
            let poll = a.poll.config(a.fleet.limits(), Default::default());
            assert_eq!(poll.check(), vec![rule], "{flags:?}");
            let e = a.validate(&env(Some("k"))).unwrap_err().to_string();
            assert_eq!(e, rule.flag_message(&poll));
            assert!(e.starts_with(flags[0]), "{e}");
            let mut vars = env(None);
            vars.insert("K".into(), "k".into());
            let p = crate::config_file::parse(
                &format!("workspaces:\n  - api_key_env: K\n    {file}\n"),
                std::path::Path::new("."),
                &vars,
                &crate::files::FileLimits::default(),
            )
            .unwrap_err()
            .0;
            assert_eq!(p, vec![rule.file_message("workspaces[0]")], "{file}");
        }
    }

    #[test]
    fn there_is_no_flag_for_the_key_itself() {
        assert!(Cli::try_parse_from(["clawmesh-exporter", "--api-key", "x"]).is_err());
    }

    /// The `--prices.*` flags win over the file's `prices:` key by key; a
    /// key only the file sets is the file's; neither naming a table is no
    /// table.
    #[test]
    fn price_flags_win_over_the_file_key_by_key() {
        use crate::config_file::FilePrices;
        let file = FilePrices {
            file: Some("/etc/file.yaml".into()),
            provider_aliases: Some([("google".to_string(), "vertex".to_string())].into()),
            max_entries: Some(7),
            max_size: None,
        };
        let r = resolve_prices(&args(&[]).prices, Some(file.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(r.file, PathBuf::from("/etc/file.yaml"));
        assert_eq!(r.options.provider_aliases["google"], "vertex");
        assert_eq!(r.options.max_entries, 7);
        assert_eq!(r.max_bytes, 6 << 20);
        let flags = args(&[
            "--prices.file",
            "/etc/flag.json",
            "--prices.provider-alias",
            "google=gemini,openai=azure",
            "--prices.max-entries",
            "9",
            "--prices.max-size",
            "1MiB",
        ]);
        let r = resolve_prices(&flags.prices, Some(file)).unwrap().unwrap();
        assert_eq!(r.file, PathBuf::from("/etc/flag.json"));
        assert_eq!(r.options.provider_aliases.len(), 2);
        assert_eq!(r.options.provider_aliases["google"], "gemini");
        assert_eq!(r.options.max_entries, 9);
        assert_eq!(r.max_bytes, 1 << 20);
        assert_eq!(resolve_prices(&args(&[]).prices, None), Ok(None));
        let twice = args(&["--prices.provider-alias", "google=a,google=b"]);
        let e = resolve_prices(&twice.prices, None).unwrap_err();
        assert!(e.contains("given twice"), "{e}");
    }
}
