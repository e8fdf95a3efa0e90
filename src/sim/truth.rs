//! Ground truth: the true current state (ignoring visibility lag) and the
//! counters since the simulator started, which tests compare the exporter's
//! numbers against exactly.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const AGENT_STATUSES: [&str; 6] =
    ["provisioning", "idle", "busy", "paused", "error", "offline"];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    pub count: u64,
    pub sum: f64,
}

/// Observations of millisecond-rounded seconds, summed in whole
/// milliseconds: the sum is exact whatever the order, and its f64 form
/// survives a JSON round trip unchanged.
#[derive(Clone, Debug, Default)]
pub struct MsObservations {
    pub count: u64,
    pub sum_ms: i64,
}

impl MsObservations {
    pub fn observe_ms(&mut self, ms: i64) {
        self.count += 1;
        self.sum_ms += ms;
    }
    pub fn to_observations(&self) -> Observations {
        Observations {
            count: self.count,
            sum: self.sum_ms as f64 / 1000.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub workspace_id: String,
    /// The API's clock (as are `visible_by` and every stamp).
    pub now: String,
    /// The API's clock minus the host's, in milliseconds: a host instant is
    /// an API instant minus this.
    #[serde(default)]
    pub clock_offset_ms: i64,
    pub paused: bool,
    /// Every change made so far is visible by this instant.
    pub visible_by: String,
    pub agents: BTreeMap<String, u64>,
    /// `pending` and `running`; with unknown task statuses on, also
    /// `expired` and `awaiting_input`.
    pub tasks_open: BTreeMap<String, u64>,
    pub oldest_pending_created_at: Option<String>,
    pub finished_total: BTreeMap<String, u64>,
    pub failures_by_code: BTreeMap<String, u64>,
    pub tokens: BTreeMap<String, u64>,
    pub queue_seconds: Observations,
    pub run_seconds: Observations,
    pub requests_total: u64,
    pub requests_by_key: BTreeMap<String, u64>,
    pub requests_by_endpoint: BTreeMap<String, u64>,
    pub rate_limited_total: u64,
    pub retry_after_violations: u64,
    pub faults_injected: u64,
    /// Webhook deliveries (all zero while delivery is off).
    #[serde(default)]
    pub webhooks: super::webhooks::WebhookCounts,
    /// The counters above by the finest breakdown (the task's agent's
    /// labels, provider and model, and the task's labels), each value
    /// attributed to the task's agent when it is committed: summed, they
    /// are the totals above.
    #[serde(default)]
    pub by_dims: Vec<DimTruth>,
    /// Live agents by their labels, provider, model and status.
    #[serde(default)]
    pub agents_by: Vec<AgentDimTruth>,
    /// The currency of the simulator's prices (and of every spend here).
    #[serde(default)]
    pub currency: String,
    /// Spend of the tokens counted in `tokens`, by the task's terminal
    /// status and the token kind: exact decimal text in currency units
    /// ("0.0453"; "0" for each of the 3 statuses × 2 kinds until spent).
    /// Each value is priced when it is committed, at the price in force at
    /// its task's `finished_at` (API clock) under the list the simulator
    /// holds then.
    #[serde(default)]
    pub spend: BTreeMap<String, BTreeMap<String, String>>,
    /// Tokens counted in `tokens` whose model had no price, by
    /// "provider/model" and kind (never priced at zero).
    #[serde(default)]
    pub unpriced_tokens: BTreeMap<String, BTreeMap<String, u64>>,
    /// Total spend by the UTC day ("YYYY-MM-DD") of the task's finish
    /// instant, for a budget's day and month gauges.
    #[serde(default)]
    pub spend_by_finish_day: BTreeMap<String, String>,
}

/// What breakdowns read of a task: its agent's labels, provider and model
/// ("" and empty without an agent), and its own labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Dims {
    pub agent_labels: BTreeMap<String, String>,
    pub provider: String,
    pub model: String,
    pub task_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DimTruth {
    #[serde(flatten)]
    pub dims: Dims,
    pub finished_total: BTreeMap<String, u64>,
    pub failures_by_code: BTreeMap<String, u64>,
    pub tokens: BTreeMap<String, u64>,
    pub queue_seconds: Observations,
    pub run_seconds: Observations,
    /// As `GroundTruth::spend`, of this breakdown's tasks.
    #[serde(default)]
    pub spend: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentDimTruth {
    pub agent_labels: BTreeMap<String, String>,
    pub provider: String,
    pub model: String,
    pub status: String,
    pub count: u64,
    /// Of them, idle or busy with a heartbeat (as the API answers now)
    /// older than 90 s, or none for longer than that since their last change.
    pub heartbeat_stale: u64,
}

/// Fleet counters since start, kept by the fleet's life.
#[derive(Clone, Debug)]
pub struct FleetCounters {
    /// At the terminal transition.
    pub finished_total: BTreeMap<String, u64>,
    /// The next four: when the version carrying the value is committed (at
    /// the transition, or later under late metrics / late failure codes).
    pub failures_by_code: BTreeMap<String, u64>,
    pub tokens: BTreeMap<String, u64>,
    pub queue_seconds: MsObservations,
    pub run_seconds: MsObservations,
    /// With the tokens: status -> kind -> spend in 10^-27 currency units.
    pub spend: BTreeMap<String, BTreeMap<String, u128>>,
    /// With the tokens: "provider/model" -> kind -> tokens without a price.
    pub unpriced_tokens: BTreeMap<String, BTreeMap<String, u64>>,
    /// With the tokens: UTC day of the finish -> spend in 10^-27.
    pub spend_by_finish_day: BTreeMap<String, u128>,
}

/// Spend amounts as the truth shows them (exact decimal text).
pub fn spend_text(
    m: &BTreeMap<String, BTreeMap<String, u128>>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    m.iter()
        .map(|(status, kinds)| {
            let kinds = kinds
                .iter()
                .map(|(k, v)| (k.clone(), super::pricing::format_spend(*v)))
                .collect();
            (status.clone(), kinds)
        })
        .collect()
}

impl Default for FleetCounters {
    fn default() -> Self {
        let zeros = |names: &[&str]| names.iter().map(|n| (n.to_string(), 0)).collect();
        FleetCounters {
            finished_total: zeros(&["completed", "failed", "cancelled"]),
            failures_by_code: BTreeMap::new(),
            tokens: zeros(&["input", "output"]),
            queue_seconds: MsObservations::default(),
            run_seconds: MsObservations::default(),
            spend: ["completed", "failed", "cancelled"]
                .iter()
                .map(|s| {
                    let kinds = ["input", "output"].map(|k| (k.to_string(), 0u128));
                    (s.to_string(), kinds.into_iter().collect())
                })
                .collect(),
            unpriced_tokens: BTreeMap::new(),
            spend_by_finish_day: BTreeMap::new(),
        }
    }
}

/// Request counters, kept by the HTTP layer.
#[derive(Clone, Debug, Default)]
pub struct RequestCounters {
    pub requests_total: u64,
    pub requests_by_key: BTreeMap<String, u64>,
    pub requests_by_endpoint: BTreeMap<String, u64>,
    pub rate_limited_total: u64,
    pub retry_after_violations: u64,
    pub faults_injected: u64,
}
