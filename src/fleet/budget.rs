//! The budgets a workspace's spend is held against (the config file's
//! `budgets:`). Rendered, not counted: `Snapshot::budget_spend` sums the
//! served slices a budget matches.

use crate::prices::Money;
use std::collections::BTreeMap;

/// A budget of a workspace (the config file's `budgets:`): spend of the
/// tasks whose breakdown values match `matches` (all of them when empty),
/// per calendar month and optionally per day (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetConfig {
    /// The `budget` label; unique in a workspace.
    pub name: String,
    /// Breakdown label name -> value (`team: ml`, `provider: openai`); a
    /// task counts when its slice has every one of them.
    pub matches: BTreeMap<String, String>,
    /// Per calendar month (UTC), in the price table's currency.
    pub monthly: Option<Money>,
    /// Per day (UTC).
    pub daily: Option<Money>,
}

impl BudgetConfig {
    /// The rules a budget follows, checked once for the config file:
    /// (field, what is wrong). `breakdown` says which labels exist.
    pub fn check(&self, breakdown: &super::BreakdownConfig) -> Result<(), (&'static str, String)> {
        if self.name.is_empty() || self.name.len() > 128 {
            return Err(("name", "must be 1 to 128 characters".into()));
        }
        if self.monthly.is_none() && self.daily.is_none() {
            return Err(("monthly", "a budget needs monthly, daily or both".into()));
        }
        for key in self.matches.keys() {
            let known = match key.as_str() {
                "provider" => breakdown.provider,
                "model" => breakdown.model,
                k => match k.strip_prefix("task_") {
                    Some(t) => {
                        breakdown.task_labels.matches(t) || breakdown.agent_labels.matches(k)
                    }
                    None => breakdown.agent_labels.matches(k),
                },
            };
            if !known {
                return Err((
                    "match",
                    format!("{key:?} is not a label the workspace's series are broken down by: a budget on it needs the breakdown (--breakdown.provider, --breakdown.model, --breakdown.agent-labels or --breakdown.task-labels with task_ before the key)"),
                ));
            }
        }
        Ok(())
    }
}
