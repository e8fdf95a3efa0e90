//! The scheduler's flags (`--poll-interval`, `--agents.interval`,
//! `--tasks.*`) and the rules its settings follow, for the flags and the
//! config file alike.

use super::PollConfig;
use crate::fleet::{BreakdownConfig, FleetLimits};
use crate::units::{fill_durations, DurationRows};
use clap::Args;
use std::time::Duration;

/// The contract's maximum visibility lag; the overlap may not be shorter.
pub const MAX_VISIBILITY_LAG: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
pub struct PollArgs {
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
    /// Agents read one by one per task sync when tasks name agents not yet listed (0: never).
    #[arg(
        long = "breakdown.max-agent-lookups",
        env = "CLAWMESH_BREAKDOWN_MAX_AGENT_LOOKUPS",
        default_value_t = 20
    )]
    pub breakdown_max_agent_lookups: usize,
}

/// The scheduler's per-workspace durations: the config-file key, the
/// flag's value, and the setting both fill. The file reader, the flags and
/// the reload comparison go through this table, so a new duration is a
/// flag, a field and a row.
pub const DURATIONS: &DurationRows<PollArgs, PollConfig> = &[
    ("poll_interval", |a| a.poll_interval, |c| &mut c.interval),
    // The file's default is the workspace's own poll_interval (config_file).
    (
        "agents_interval",
        |a| a.agents_interval.unwrap_or(a.poll_interval),
        |c| &mut c.agents_interval,
    ),
    (
        "reconcile_interval",
        |a| a.reconcile_interval,
        |c| &mut c.reconcile_interval,
    ),
    ("overlap", |a| a.overlap, |c| &mut c.overlap),
    (
        "dedup_horizon",
        |a| a.dedup_horizon,
        |c| &mut c.dedup_horizon,
    ),
];

impl PollArgs {
    /// The scheduler's settings from these flags, before [`PollConfig::check`].
    pub fn config(&self, fleet: FleetLimits, breakdown: BreakdownConfig) -> PollConfig {
        let mut cfg = PollConfig {
            fleet,
            breakdown,
            max_agent_lookups: self.breakdown_max_agent_lookups,
            ..PollConfig::default()
        };
        fill_durations(DURATIONS, self, &mut cfg);
        cfg
    }
}

/// A rule a workspace's scheduler settings break. Each rule is checked in
/// one place ([`PollConfig::check`]); the flags and the config file each
/// say it in their own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollRule {
    /// At least 1 s between task listings.
    Interval,
    /// The overlap covers the API's visibility lag.
    Overlap,
    /// The de-duplication horizon is at least twice the overlap.
    DedupHorizon,
    /// A failure's code may come late, but before the failure is forgotten.
    FailureCodeGrace,
}

impl PollConfig {
    /// Every rule these settings break, most basic first.
    pub fn check(&self) -> Vec<PollRule> {
        let mut broken = Vec::new();
        if self.interval < Duration::from_secs(1) {
            broken.push(PollRule::Interval);
        }
        if self.overlap < MAX_VISIBILITY_LAG {
            broken.push(PollRule::Overlap);
        }
        if self.dedup_horizon < self.overlap * 2 {
            broken.push(PollRule::DedupHorizon);
        }
        if self.fleet.failure_code_grace >= self.dedup_horizon {
            broken.push(PollRule::FailureCodeGrace);
        }
        broken
    }
}

impl PollRule {
    /// The rule as the flags say it.
    pub fn flag_message(self, cfg: &PollConfig) -> String {
        match self {
            PollRule::Interval => "--poll-interval: must be at least 1s".into(),
            PollRule::Overlap => format!(
                "--tasks.overlap {}: must be at least 5s, the API's visibility lag, or task changes can be missed",
                humantime::format_duration(cfg.overlap)
            ),
            PollRule::DedupHorizon => {
                "--tasks.dedup-horizon: must be at least twice --tasks.overlap".into()
            }
            PollRule::FailureCodeGrace => "--tasks.failure-code-grace: must be shorter than --tasks.dedup-horizon (a failure is forgotten after the horizon)".into(),
        }
    }

    /// The rule as the config file says it, for the workspace at `at`.
    pub fn file_message(self, at: &str) -> String {
        match self {
            PollRule::Interval => format!("{at}: poll_interval must be at least 1s"),
            PollRule::Overlap => {
                format!("{at}: overlap must be at least 5s, the API's visibility lag")
            }
            PollRule::DedupHorizon => {
                format!("{at}: dedup_horizon must be at least twice the overlap")
            }
            PollRule::FailureCodeGrace => {
                format!("{at}: failure_code_grace must be shorter than dedup_horizon")
            }
        }
    }
}

/// Equal settings: a reload leaves the workspace running as it is.
/// `storage` and `handoff` are the exporter's, not the workspace's.
impl PartialEq for PollConfig {
    fn eq(&self, o: &Self) -> bool {
        let (mut a, mut b) = (self.clone(), o.clone());
        DURATIONS.iter().all(|(_, _, f)| *f(&mut a) == *f(&mut b))
            && self.fleet == o.fleet
            && self.breakdown == o.breakdown
            && self.max_agent_lookups == o.max_agent_lookups
            && self.budgets == o.budgets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// How many fields at the top of a `{:?}` print hold `value`.
    fn top_level_fields_holding(debug: &str, value: &str) -> usize {
        let (mut depth, mut n) = (0, 0);
        for (i, c) in debug.char_indices() {
            match c {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => depth -= 1,
                ':' if depth == 1 => {
                    let rest = debug[i + 1..].trim_start();
                    let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
                    n += usize::from(&rest[..end] == value);
                }
                _ => {}
            }
        }
        n
    }

    /// A reload keeps a workspace running when its settings are equal, and
    /// the comparison goes through the DURATIONS table: every duration of
    /// the settings is a row of it, and a change of any setting a workspace
    /// has (a duration, the fleet's judgement, the breakdowns, the lookups,
    /// the budgets) restarts it, while the exporter's own (storage, handoff,
    /// the price table) do not.
    #[test]
    fn a_reload_compares_every_setting_of_a_workspace() {
        assert_eq!(
            top_level_fields_holding(&format!("{:?}", PollConfig::default()), "0ns"),
            DURATIONS.len(),
            "a Duration of PollConfig is not in poll::settings::DURATIONS: the reload would not see it change"
        );
        let base = PollConfig {
            max_agent_lookups: 3,
            ..PollConfig::default()
        };
        for (key, _, field) in DURATIONS {
            let mut changed = base.clone();
            *field(&mut changed) += Duration::from_secs(1);
            assert_ne!(base, changed, "{key}");
        }
        type Change = (&'static str, fn(&mut PollConfig));
        let changes: [Change; 6] = [
            ("fleet duration", |c| {
                c.fleet.heartbeat_stale_after += Duration::from_secs(1)
            }),
            ("per-agent series", |c| c.fleet.per_agent_series += 1),
            ("breakdown", |c| {
                c.breakdown.provider = !c.breakdown.provider
            }),
            ("breakdown caps", |c| c.breakdown.max_values += 1),
            ("lookups", |c| c.max_agent_lookups += 1),
            ("budgets", |c| {
                c.budgets.push(crate::fleet::BudgetConfig {
                    name: "b".into(),
                    matches: Default::default(),
                    monthly: Some(crate::prices::Money(1)),
                    daily: None,
                })
            }),
        ];
        for (what, change) in changes {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(base, changed, "{what}");
        }
        let exporters = PollConfig {
            storage: Some(crate::storage::Storage {
                cfg: crate::storage::StorageConfig::new("/nonexistent".into()),
                shard: (0, 1),
                swept: Arc::default(),
            }),
            handoff: Some(Arc::default()),
            // The process's one table: a new one restarts no workspace.
            prices: crate::prices::Prices::new(crate::prices::PriceTable::none()),
            ..base.clone()
        };
        assert_eq!(base, exporters);
    }
}
