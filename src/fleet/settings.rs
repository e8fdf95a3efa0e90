//! How the fleet judges what the API says, and what it breaks series down
//! by: the `--tasks.*` judgement flags, `--agents.heartbeat-*` and
//! `--breakdown.*`, with the table the config file reads them through.

use super::{breakdown_patterns, BreakdownConfig, FleetLimits};
use crate::units::{fill_durations, DurationRows};
use clap::Args;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// How long a task in a status the API's contract does not name counts as open after its last change.
    #[arg(long = "tasks.unknown-status-ttl", env = "CLAWMESH_TASKS_UNKNOWN_STATUS_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub unknown_status_ttl: Duration,
    /// How long after a failure its error code may stay null before it counts under code="unknown".
    #[arg(long = "tasks.failure-code-grace", env = "CLAWMESH_TASKS_FAILURE_CODE_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub failure_code_grace: Duration,
    /// Objects naming an instant further than this ahead of the API's own clock are refused and counted.
    #[arg(long = "api.max-timestamp-lead", env = "CLAWMESH_API_MAX_TIMESTAMP_LEAD", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_timestamp_lead: Duration,
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
}

/// The fleet's per-workspace durations: the config-file key, the flag's
/// value, and the setting both fill. The file reader and the flags go
/// through this table.
pub const DURATIONS: &DurationRows<FleetArgs, FleetLimits> = &[
    (
        "unknown_status_ttl",
        |a| a.unknown_status_ttl,
        |c| &mut c.unknown_status_ttl,
    ),
    (
        "failure_code_grace",
        |a| a.failure_code_grace,
        |c| &mut c.failure_code_grace,
    ),
    (
        "max_timestamp_lead",
        |a| a.max_timestamp_lead,
        |c| &mut c.max_timestamp_lead,
    ),
    (
        "heartbeat_stale_after",
        |a| a.heartbeat_stale_after,
        |c| &mut c.heartbeat_stale_after,
    ),
];

impl FleetArgs {
    /// The fleet's limits from these flags.
    pub fn limits(&self) -> FleetLimits {
        let mut limits = FleetLimits {
            per_agent_series: if self.heartbeat_series {
                self.heartbeat_series_max
            } else {
                0
            },
            ..FleetLimits::default()
        };
        fill_durations(DURATIONS, self, &mut limits);
        limits
    }
}

#[derive(Debug, Clone, Args)]
pub struct BreakdownArgs {
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
}

impl BreakdownArgs {
    /// The breakdowns these flags choose, checked; errors name the flags.
    pub fn config(&self) -> Result<BreakdownConfig, String> {
        let patterns = |flag: &str, allow: &[String], deny: &[String]| {
            breakdown_patterns(allow, deny).map_err(|e| format!("--breakdown.{flag}: {e}"))
        };
        let cfg = BreakdownConfig {
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
            .map_err(|(k, e)| format!("--breakdown.{}: {e}", k.replace('_', "-")))?;
        Ok(cfg)
    }
}
