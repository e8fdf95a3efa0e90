//! What a simulator is made with: [`SimConfig`] and what it carries (extra
//! keys, an incident, the label spread), and the demo key every simulator has.

use super::latitude::Latitude;
use super::pricing::{default_prices, SimPrice};
use std::time::Duration;

/// The longest a late value (`late_metrics`, `late_failure_codes`) waits
/// after its transition, counted while the fleet lives (not paused).
pub const MAX_FILL_DELAY: Duration = Duration::from_secs(20);

/// The demo key: scopes agents:read and tasks:read, expires 90 days after start.
pub const DEMO_KEY: &str = "sim-demo-key";
/// The id of [`DEMO_KEY`] (what `/auth/token` and `requests_by_key` show).
pub const DEMO_KEY_ID: &str = "key_sim_demo";

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub workspace_id: String,
    pub agents: usize,
    /// Terminal tasks pre-seeded in history.
    pub history_tasks: usize,
    /// Task status changes per minute of the living fleet.
    pub task_changes_per_minute: f64,
    /// Each change is visible after a uniform random lag in [0, max] from
    /// its `updated_at`.
    pub visibility_lag_max: Duration,
    /// Fixed one-minute windows per workspace.
    pub rate_limit_per_minute: u32,
    pub cursor_ttl: Duration,
    /// Fleet life step.
    pub tick: Duration,
    pub seed: u64,
    /// Share of finished tasks that get an output attached 1-20 s later.
    pub late_output_probability: f64,
    /// Agents sometimes enter statuses the contract does not list.
    pub unknown_agent_statuses: bool,
    /// Every Nth new task carries 256 KiB of instructions.
    pub big_instructions_every: Option<usize>,
    /// Extra keys besides [`DEMO_KEY`].
    pub keys: Vec<SimKey>,
    /// Share of the tasks finishing from running that fail. The alert
    /// ClawMeshTaskErrorRatioElevated fires above 10 % failed over an hour:
    /// the default fleet stays well below it; set it higher for an incident.
    pub failed_share: f64,
    /// Share of the tasks finishing from running that are cancelled (with
    /// the pending tasks cancelled, ~7 % of all finishes by default).
    pub cancelled_share: f64,
    /// What the contract allows beyond what the simulator does by default.
    pub latitude: Latitude,
    /// An incident on from the start (also switchable: `/_sim/incident`).
    pub incident: Option<Incident>,
    /// Agents' `team` and `env` label values drawn from this many
    /// (`team-00`.., `env-00`..) instead of the five teams and two
    /// environments: a fleet whose breakdowns reach their caps, to measure
    /// the exporter's memory there. `None` keeps the default fleet (and its
    /// random sequence) unchanged.
    pub label_spread: Option<LabelSpread>,
    /// What tokens cost, for the ground truth's spend (also switchable:
    /// `/_sim/prices`); by default realistic list prices of the four
    /// models. Write the exporter's price file from it with
    /// [`super::prices_yaml`].
    pub prices: Vec<SimPrice>,
    /// The currency of `prices` (the truth's `currency`).
    pub currency: String,
}

/// How many distinct `team` and `env` values the agents carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelSpread {
    pub teams: usize,
    pub envs: usize,
}

/// Something going wrong in a part of the fleet, for the breakdowns to find.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Incident {
    /// 95 % of the tasks finishing on this provider's agents fail
    /// (`model_error`).
    ProviderOutage { provider: String },
    /// This team's agents stop heartbeating, whatever their status says.
    HeartbeatLoss { team: String },
    /// The tasks of this team's agents use [`SPEND_SPIKE_FACTOR`] times the
    /// tokens (input and output): a budget's fast burn fires.
    SpendSpike { team: String },
}

/// How many times its usual tokens a task of a spend spike's team uses.
pub const SPEND_SPIKE_FACTOR: u64 = 25;

/// Who an incident hits unless told otherwise (a provider of life.rs's
/// `MODELS`, a team of its `TEAMS`; each incident its own team, so that two
/// at once in a demo do not mix).
pub const OUTAGE_PROVIDER: &str = "openai";
pub const SILENT_TEAM: &str = "growth";
pub const SPENDING_TEAM: &str = "research";

impl Incident {
    /// `provider-outage[:NAME]`, `heartbeat-loss[:TEAM]` or
    /// `spend-spike[:TEAM]` (the CLI's).
    pub fn parse(s: &str) -> Result<Incident, String> {
        let (kind, arg) = s.split_once(':').map_or((s, None), |(k, a)| (k, Some(a)));
        let arg = arg.map(str::trim).filter(|a| !a.is_empty());
        match kind {
            "provider-outage" => Ok(Incident::ProviderOutage {
                provider: arg.unwrap_or(OUTAGE_PROVIDER).to_string(),
            }),
            "heartbeat-loss" => Ok(Incident::HeartbeatLoss {
                team: arg.unwrap_or(SILENT_TEAM).to_string(),
            }),
            "spend-spike" => Ok(Incident::SpendSpike {
                team: arg.unwrap_or(SPENDING_TEAM).to_string(),
            }),
            other => Err(format!(
                "unknown incident {other:?}: use provider-outage[:PROVIDER], heartbeat-loss[:TEAM] or spend-spike[:TEAM]"
            )),
        }
    }

    /// One line for a person watching the demo: what to look at.
    pub fn describe(&self) -> String {
        match self {
            Incident::ProviderOutage { provider } => format!(
                "incident on: 95 % of the tasks on {provider}'s agents fail; break the error ratio down by provider to find it"
            ),
            Incident::HeartbeatLoss { team } => format!(
                "incident on: team {team}'s agents stop heartbeating; watch clawmesh_agents_heartbeat_stale by team"
            ),
            Incident::SpendSpike { team } => format!(
                "incident on: team {team}'s tasks use {SPEND_SPIKE_FACTOR}x the tokens; watch clawmesh_budget_spend and the Spend dashboard row (spend by team), where a budget's fast burn fires"
            ),
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            workspace_id: "ws_sim".to_string(),
            agents: 200,
            history_tasks: 2_000,
            task_changes_per_minute: 600.0,
            visibility_lag_max: Duration::from_secs(5),
            rate_limit_per_minute: 1000,
            cursor_ttl: Duration::from_secs(300),
            tick: Duration::from_millis(100),
            seed: 0,
            late_output_probability: 0.3,
            unknown_agent_statuses: false,
            big_instructions_every: Some(50),
            keys: Vec::new(),
            failed_share: 0.02,
            cancelled_share: 0.04,
            latitude: Latitude::default(),
            incident: None,
            label_spread: None,
            prices: default_prices(),
            currency: "USD".to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimKey {
    pub id: String,
    pub secret: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}
