//! The simulator's command-line flags: `simulate`, and the latitude and
//! incident flags `demo` shares. The sim owns them; the CLI flattens them in.

use super::{parse_signed_ms, Incident, LabelSpread, Latitude, SimConfig};
use clap::Args;
use std::time::Duration;

/// `simulate`: how the simulated API and its fleet behave.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Address to serve the simulated API on.
    #[arg(long = "listen", default_value = "127.0.0.1:8089")]
    pub listen: String,
    /// Agents in the simulated fleet.
    #[arg(long, default_value_t = 200)]
    pub agents: usize,
    /// Finished tasks already in the history when the simulator starts.
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
    /// Seed of the simulator's random choices: the same seed, the same fleet and the same history.
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

impl SimArgs {
    /// The simulator these flags describe.
    pub fn config(&self) -> SimConfig {
        SimConfig {
            agents: self.agents,
            history_tasks: self.history_tasks,
            task_changes_per_minute: self.changes_per_minute,
            visibility_lag_max: self.visibility_lag,
            rate_limit_per_minute: self.rate_limit,
            seed: self.seed,
            unknown_agent_statuses: self.unknown_agent_statuses,
            latitude: self.latitude.to_latitude(),
            incident: self.latitude.incident.clone(),
            label_spread: (self.teams.is_some() || self.envs.is_some()).then(|| LabelSpread {
                teams: self.teams.unwrap_or(5),
                envs: self.envs.unwrap_or(2),
            }),
            ..Default::default()
        }
    }
}

/// What the contract allows that the simulator does only when asked.
#[derive(Debug, Clone, Args)]
pub struct LatitudeArgs {
    /// Contract latitude the simulator takes: all, none, or a comma-separated
    /// list of whole-seconds, late-metrics, late-failure-codes,
    /// deletion-keeps-updated-at, unknown-task-statuses, lag-always-max.
    #[arg(long = "latitude", value_name = "LIST", default_value = "none", value_parser = Latitude::parse_list)]
    pub latitude: Latitude,
    /// The simulated API's clock minus the host's, e.g. -15s or +1m.
    #[arg(long = "clock-offset", value_name = "DURATION", default_value = "0s", allow_hyphen_values = true, value_parser = parse_signed_ms)]
    pub clock_offset_ms: i64,
    /// An incident for the breakdowns to find: provider-outage[:PROVIDER] (default openai), heartbeat-loss[:TEAM] (default growth) or spend-spike[:TEAM] (default research: 25x the tokens).
    #[arg(long = "incident", value_name = "KIND", value_parser = Incident::parse)]
    pub incident: Option<Incident>,
}

impl LatitudeArgs {
    pub fn to_latitude(&self) -> Latitude {
        Latitude {
            clock_offset_ms: self.clock_offset_ms,
            ..self.latitude.clone()
        }
    }
}
