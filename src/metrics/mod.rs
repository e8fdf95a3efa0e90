//! The table of metric families: each declared once, with its name, help,
//! type, unit and a pure function from a workspace [`Snapshot`] to samples.
//! Both ways out (Prometheus text in `expose`, OTLP) iterate this table, so
//! they cannot disagree. Adding a metric is one entry here, a line in the
//! golden test, and a row in `docs/metrics.md` (a test keeps them in step).

use crate::fleet::{Snapshot, SPEND_STATUSES, TOKEN_KINDS};
use crate::histogram::{Exemplar, Histogram};

mod process;

pub use process::{
    HttpStats, ProcessFamily, ProcessInfo, ProcessResources, ServerStats, PROCESS_FAMILIES,
    REFUSALS,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stability {
    Stable,
    Experimental,
}

/// A sample's value; a histogram is borrowed from the snapshot, not
/// copied (at the breakdowns' caps, thousands of them per render).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Number(f64),
    Histogram(&'a Histogram),
}

/// One sample: label values in the order of the family's `labels`, and
/// of the workspace's breakdown labels (`Snapshot::dims`) in `by`, which
/// is empty for a family without breakdowns. An empty value is no label.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub labels: Vec<String>,
    pub value: Value<'a>,
    pub by: By<'a>,
    /// A counter's latest event that named its task (a histogram carries
    /// its own, per bucket).
    pub exemplar: Option<&'a Exemplar>,
}

/// A sample's breakdown values, borrowed from its group: every sample of a
/// group shares them (a copy per sample cost more than the text they make).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct By<'a>(pub &'a [String]);

impl<'a> std::ops::Deref for By<'a> {
    type Target = [String];
    fn deref(&self) -> &[String] {
        self.0
    }
}

impl<'a> IntoIterator for &By<'a> {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A metric family over some source `T`: a workspace [`Snapshot`], or the
/// process ([`ProcessInfo`]).
pub struct FamilyOf<T> {
    /// Prometheus name, including `_total` for counters.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// UCUM unit for OTLP (`s`, `{task}`); Prometheus carries it in the name.
    pub unit: &'static str,
    pub stability: Stability,
    /// Labels of the family. Workspace families carry the workspace's own
    /// labels (`workspace` first) before these.
    pub labels: &'static [&'static str],
    pub collect: for<'a> fn(&'a T, &mut Vec<Sample<'a>>),
}

/// A family of every workspace, labelled by it.
pub type Family = FamilyOf<Snapshot>;

fn num<'a>(labels: &[&str], v: f64) -> Sample<'a> {
    Sample {
        labels: labels.iter().map(|s| s.to_string()).collect(),
        value: Value::Number(v),
        by: By::default(),
        exemplar: None,
    }
}

fn per_name<'a>(out: &mut Vec<Sample<'a>>, map: impl IntoIterator<Item = (&'a String, &'a u64)>) {
    out.extend(map.into_iter().map(|(k, v)| num(&[k], *v as f64)));
}

/// Samples of a breakdown group: `f`'s, each with the group's values.
fn grouped<'a>(out: &mut Vec<Sample<'a>>, by: &'a [String], f: impl FnOnce(&mut Vec<Sample<'a>>)) {
    let from = out.len();
    f(out);
    for s in &mut out[from..] {
        s.by = By(by);
    }
}

fn hist(h: &Histogram) -> Sample<'_> {
    Sample {
        labels: vec![],
        value: Value::Histogram(h),
        by: By::default(),
        exemplar: None,
    }
}

/// The series the breakdown labels add: every sample of a broken-down
/// family (a histogram is its buckets, `_sum` and `_count`).
fn breakdown_series(s: &Snapshot) -> f64 {
    let mut out = Vec::new();
    let mut n = 0usize;
    for f in WORKSPACE_FAMILIES {
        if f.name == "clawmesh_breakdown_series" {
            continue;
        }
        out.clear();
        (f.collect)(s, &mut out);
        for x in out.iter().filter(|x| x.by.iter().any(|v| !v.is_empty())) {
            n += match &x.value {
                Value::Number(_) => 1,
                // Its buckets, +Inf included, then _sum and _count.
                Value::Histogram(h) => h.cumulative().count() + 3,
            };
        }
    }
    n as f64
}

/// Every family labelled by workspace, in exposition order.
/// The families whose numbers a checkpoint keeps (`fleet::SavedFleet`):
/// after a restore they go on from their saved values and start, and with
/// storage they are served as the last checkpoint written has them
/// (`poll::checkpoint::serve_durable`). Every other counter starts afresh
/// with the process's slot (`Snapshot::slot_since`).
pub const RESTORED_FAMILIES: &[&str] = &[
    "clawmesh_tasks_finished_total",
    "clawmesh_task_failures_total",
    "clawmesh_task_tokens_total",
    "clawmesh_task_spend_total",
    "clawmesh_task_unpriced_tokens_total",
    "clawmesh_budget_spend_total",
    "clawmesh_task_queue_duration_seconds",
    "clawmesh_task_run_duration_seconds",
    "clawmesh_api_rejected_objects_total",
];

pub fn restored(name: &str) -> bool {
    RESTORED_FAMILIES.contains(&name)
}

pub const WORKSPACE_FAMILIES: &[Family] = &[
    Family {
        name: "clawmesh_agents",
        help: "Agents per status, from the last complete listing. The six known statuses are always present; unknown ones appear by name (past 20, as \"other\").",
        kind: Kind::Gauge,
        unit: "{agent}",
        stability: Stability::Stable,
        labels: &["status"],
        collect: |s, out| {
            for g in &s.agent_groups {
                grouped(out, &g.by, |out| per_name(out, &g.statuses));
            }
        },
    },
    Family {
        name: "clawmesh_agents_active",
        help: "Agents that are idle or busy.",
        kind: Kind::Gauge,
        unit: "{agent}",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| {
            for g in &s.agent_groups {
                let a = &g.statuses;
                let active = a.get("idle").copied().unwrap_or(0) + a.get("busy").copied().unwrap_or(0);
                grouped(out, &g.by, |out| out.push(num(&[], active as f64)));
            }
        },
    },
    Family {
        name: "clawmesh_agents_heartbeat_stale",
        help: "Idle and busy agents whose last_heartbeat_at is older than --agents.heartbeat-stale-after (default 90s, three missed heartbeats) as the listing that read them saw it, per status.",
        kind: Kind::Gauge,
        unit: "{agent}",
        stability: Stability::Stable,
        labels: &["status"],
        collect: |s, out| {
            for g in &s.agent_groups {
                grouped(out, &g.by, |out| per_name(out, &g.silent));
            }
        },
    },
    Family {
        name: "clawmesh_tasks",
        help: "Tasks not yet finished, per status (pending, running).",
        kind: Kind::Gauge,
        unit: "{task}",
        stability: Stability::Stable,
        labels: &["status"],
        collect: |s, out| {
            for g in &s.task_groups {
                grouped(out, &g.by, |out| per_name(out, &g.open));
            }
        },
    },
    Family {
        name: "clawmesh_tasks_oldest_pending_age_seconds",
        help: "Age of the oldest pending task at the last sync; 0 when none is pending.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| out.push(num(&[], s.oldest_pending_age_seconds)),
    },
    Family {
        name: "clawmesh_tasks_finished_total",
        help: "Tasks that reached a terminal status (completed, failed, cancelled) since the exporter started, each counted once.",
        kind: Kind::Counter,
        unit: "{task}",
        stability: Stability::Stable,
        labels: &["status"],
        collect: |s, out| {
            for g in &s.task_groups {
                grouped(out, &g.by, |out| {
                    let from = out.len();
                    per_name(out, &g.counters.finished);
                    // The latest failed task, beside the failed count.
                    if let Some(x) = out[from..].iter_mut().find(|x| x.labels[0] == "failed") {
                        x.exemplar = g.counters.last_failed.0.as_ref();
                    }
                });
            }
        },
    },
    Family {
        name: "clawmesh_task_failures_total",
        help: "Failed tasks by error code since the exporter started.",
        kind: Kind::Counter,
        unit: "{task}",
        stability: Stability::Stable,
        labels: &["code"],
        collect: |s, out| {
            for g in &s.task_groups {
                grouped(out, &g.by, |out| per_name(out, &g.counters.failures));
            }
        },
    },
    Family {
        name: "clawmesh_task_queue_duration_seconds",
        help: "Time tasks waited from creation to start (the task's metrics.queue_seconds), observed when they start.",
        kind: Kind::Histogram,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| {
            for g in &s.task_groups {
                grouped(out, &g.by, |out| out.push(hist(&g.counters.queue_seconds)));
            }
        },
    },
    Family {
        name: "clawmesh_task_run_duration_seconds",
        help: "Time tasks ran from start to finish (the task's metrics.run_seconds), observed when they finish.",
        kind: Kind::Histogram,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| {
            for g in &s.task_groups {
                grouped(out, &g.by, |out| out.push(hist(&g.counters.run_seconds)));
            }
        },
    },
    Family {
        name: "clawmesh_task_tokens_total",
        help: "Model tokens used by finished tasks, by kind (input, output).",
        kind: Kind::Counter,
        unit: "{token}",
        stability: Stability::Stable,
        labels: &["kind"],
        collect: |s, out| {
            for g in &s.task_groups {
                grouped(out, &g.by, |out| {
                    out.push(num(&["input"], g.counters.input_tokens as f64));
                    out.push(num(&["output"], g.counters.output_tokens as f64));
                });
            }
        },
    },
    Family {
        name: "clawmesh_task_spend_total",
        help: "What finished tasks' model tokens cost, in the price table's currency (clawmesh_exporter_prices_info), by token kind (input, output) and terminal status; each value priced once, exactly, with the price in force when its task finished. Present with a price table (--prices.file).",
        kind: Kind::Counter,
        unit: "{currency}",
        stability: Stability::Experimental,
        labels: &["kind", "status"],
        collect: |s, out| {
            if !s.priced {
                return;
            }
            for g in &s.task_groups {
                grouped(out, &g.by, |out| {
                    for (k, kind) in TOKEN_KINDS.iter().enumerate() {
                        for (i, status) in SPEND_STATUSES.iter().enumerate() {
                            let v = g.counters.spend.0[k][i].to_f64();
                            out.push(num(&[kind, status], v));
                        }
                    }
                });
            }
        },
    },
    Family {
        name: "clawmesh_task_unpriced_tokens_total",
        help: "Tokens of finished tasks that no price of the table covers (their model is not in it, or only from a later date), by kind and the agent's provider and model (absent when the agent is not known; past 100 models, \"other\"). Never priced at 0: a missing price shows here. Present with a price table.",
        kind: Kind::Counter,
        unit: "{token}",
        stability: Stability::Experimental,
        labels: &["kind", "provider", "model"],
        collect: |s, out| {
            if !s.priced {
                return;
            }
            for ((provider, model), v) in &s.counters.unpriced {
                for (k, kind) in TOKEN_KINDS.iter().enumerate() {
                    out.push(num(&[kind, provider, model], v[k] as f64));
                }
            }
        },
    },
    Family {
        name: "clawmesh_budget_amount",
        help: "A budget of the workspace (the config file's budgets:), per calendar period (month, day; UTC), in the price table's currency.",
        kind: Kind::Gauge,
        unit: "{currency}",
        stability: Stability::Experimental,
        labels: &["budget", "period"],
        collect: |s, out| {
            for b in s.budgets.iter() {
                for (period, amount) in [("month", b.monthly), ("day", b.daily)] {
                    if let Some(m) = amount {
                        out.push(num(&[&b.name, period], m.to_f64()));
                    }
                }
            }
        },
    },
    Family {
        name: "clawmesh_budget_period_spend",
        help: "What the tasks a budget matches spent that finished in the current calendar period (month, day; UTC, on the API's clock), in the price table's currency; starts again at 0 with each period.",
        kind: Kind::Gauge,
        unit: "{currency}",
        stability: Stability::Experimental,
        labels: &["budget", "period"],
        collect: |s, out| {
            for b in s.budgets.iter() {
                let spent = s.budget_spend(b);
                for (period, amount, v) in [("month", b.monthly, spent.month), ("day", b.daily, spent.day)] {
                    if amount.is_some() {
                        out.push(num(&[&b.name, period], v.to_f64()));
                    }
                }
            }
        },
    },
    Family {
        name: "clawmesh_budget_spend_total",
        help: "What the tasks a budget matches spent since counting began, in the price table's currency: its rate is the budget's burn.",
        kind: Kind::Counter,
        unit: "{currency}",
        stability: Stability::Experimental,
        labels: &["budget"],
        collect: |s, out| {
            for b in s.budgets.iter() {
                out.push(num(&[&b.name], s.budget_spend(b).total.to_f64()));
            }
        },
    },
    Family {
        name: "clawmesh_budget_period_end_timestamp_seconds",
        help: "When the current calendar period (month, day; UTC, on the API's clock) ends, Unix seconds: what a projection of the period's spend runs to. Present for a workspace with budgets.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Experimental,
        labels: &["period"],
        collect: |s, out| {
            if let (false, Some(now)) = (s.budgets.is_empty(), s.api_now) {
                out.push(num(&["month"], crate::fleet::month_end(now)));
                out.push(num(&["day"], crate::fleet::day_end(now)));
            }
        },
    },
    Family {
        name: "clawmesh_agent_last_heartbeat_timestamp_seconds",
        help: "Each agent's last_heartbeat_at (Unix seconds, the API's clock), with --agents.heartbeat-series only: one series per agent (at most --agents.heartbeat-series-max).",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Experimental,
        labels: &["agent_id", "status"],
        collect: |s, out| {
            for h in &s.heartbeats {
                grouped(out, &h.by, |out| out.push(num(&[&h.id, &h.status], h.at)));
            }
        },
    },
    Family {
        name: "clawmesh_breakdown_series",
        help: "Series the breakdown labels produce for the workspace (a histogram counts its buckets, _sum and _count); absent without breakdowns.",
        kind: Kind::Gauge,
        unit: "{series}",
        stability: Stability::Experimental,
        labels: &[],
        collect: |s, out| {
            if s.breakdown.is_some() {
                out.push(num(&[], breakdown_series(s)));
            }
        },
    },
    Family {
        name: "clawmesh_breakdown_values",
        help: "Distinct values admitted per breakdown label (at most --breakdown.max-values; later values count as \"other\").",
        kind: Kind::Gauge,
        unit: "{value}",
        stability: Stability::Experimental,
        labels: &["dimension"],
        collect: |s, out| {
            if let Some(b) = &s.breakdown {
                out.extend(b.values.iter().map(|(d, n)| num(&[d], *n as f64)));
            }
        },
    },
    Family {
        name: "clawmesh_up",
        help: "1 when the last sync of every resource of the workspace succeeded, else 0.",
        kind: Kind::Gauge,
        unit: "1",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| out.push(num(&[], if s.health.up { 1.0 } else { 0.0 })),
    },
    Family {
        name: "clawmesh_last_sync_timestamp_seconds",
        help: "Start of the last successful sync per resource (Unix seconds): the data is at least this fresh.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Stable,
        labels: &["resource"],
        collect: |s, out| out.extend(s.health.last_sync.iter().map(|(r, t)| num(&[r], *t))),
    },
    Family {
        name: "clawmesh_sync_failures_total",
        help: "Syncs per resource that failed (the last good numbers were kept).",
        kind: Kind::Counter,
        unit: "{sync}",
        stability: Stability::Stable,
        labels: &["resource"],
        collect: |s, out| out.extend(s.health.sync_failures.iter().map(|(r, n)| num(&[r], *n as f64))),
    },
    Family {
        name: "clawmesh_api_requests_total",
        help: "Requests to the ClawMesh API by endpoint and HTTP status (or timeout, connection_error), retries included.",
        kind: Kind::Counter,
        unit: "{request}",
        stability: Stability::Stable,
        labels: &["endpoint", "code"],
        collect: |s, out| out.extend(s.api.requests.iter().map(|((e, c), n)| num(&[e, c], *n as f64))),
    },
    Family {
        name: "clawmesh_api_request_duration_seconds",
        help: "Latency of ClawMesh API requests by endpoint, every attempt.",
        kind: Kind::Histogram,
        unit: "s",
        stability: Stability::Stable,
        labels: &["endpoint"],
        collect: |s, out| {
            out.extend(s.api.durations.iter().map(|(e, h)| Sample { labels: vec![e.clone()], value: Value::Histogram(h), by: By::default(), exemplar: None }))
        },
    },
    Family {
        name: "clawmesh_api_retries_total",
        help: "ClawMesh API requests that were retried, by endpoint.",
        kind: Kind::Counter,
        unit: "{request}",
        stability: Stability::Stable,
        labels: &["endpoint"],
        collect: |s, out| out.extend(s.api.retries.iter().map(|(e, n)| num(&[e], *n as f64))),
    },
    Family {
        name: "clawmesh_api_clock_skew_seconds",
        help: "The ClawMesh API's clock minus the exporter's, from the API's Date headers (positive: the API is ahead). API timestamps are compared with the API's clock; absent before the first answer with a Date.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| out.extend(s.api.clock_skew_seconds.map(|v| num(&[], v))),
    },
    Family {
        name: "clawmesh_api_rejected_objects_total",
        help: "Sightings of API objects refused whole (reason future_timestamp: an instant far ahead of the API's own clock; invalid_field: a field missing or of the wrong type; malformed: not an object, or nested too deep) or in part (invalid_number: a negative or malformed metric, read as unknown; invalid_text: a lone UTF-16 surrogate or invalid UTF-8, read as U+FFFD), by resource.",
        kind: Kind::Counter,
        unit: "{object}",
        stability: Stability::Stable,
        labels: &["resource", "reason"],
        collect: |s, out| out.extend(s.counters.rejected.iter().map(|((r, why), n)| num(&[r, why], *n as f64))),
    },
    Family {
        name: "clawmesh_api_rate_limit_limit",
        help: "The workspace's API request limit per minute (X-RateLimit-Limit), shared by all its integrations.",
        kind: Kind::Gauge,
        unit: "{request}",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| out.extend(s.api.rate_limit_limit.map(|v| num(&[], v as f64))),
    },
    Family {
        name: "clawmesh_api_rate_limit_remaining",
        help: "Requests left in the workspace's current rate-limit window (X-RateLimit-Remaining).",
        kind: Kind::Gauge,
        unit: "{request}",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| out.extend(s.api.rate_limit_remaining.map(|v| num(&[], v as f64))),
    },
    Family {
        name: "clawmesh_api_budget_requests_per_minute",
        help: "Requests per minute the exporter allows itself: its configured share of the workspace's limit.",
        kind: Kind::Gauge,
        unit: "{request}/min",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| out.push(num(&[], s.api.budget_requests_per_minute)),
    },
    Family {
        name: "clawmesh_api_budget_wait_seconds_total",
        help: "Time the exporter waited to stay inside its API budget (its share, or a nearly spent window).",
        kind: Kind::Counter,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| out.push(num(&[], s.api.budget_wait_seconds)),
    },
    Family {
        name: "clawmesh_api_retry_after_wait_seconds_total",
        help: "Time the exporter waited because the API asked it to (Retry-After).",
        kind: Kind::Counter,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| out.push(num(&[], s.api.retry_after_wait_seconds)),
    },
    Family {
        name: "clawmesh_api_wait_seconds",
        help: "How long the exporter must still wait before its next API request, by reason (retry_after: the API asked; rate_limit: the budget or a nearly spent window); 0 when it need not.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Stable,
        labels: &["reason"],
        collect: |s, out| {
            for reason in ["rate_limit", "retry_after"] {
                let wait = s.api.held_for.filter(|h| h.1 == reason).map_or(0.0, |h| h.0);
                out.push(num(&[reason], wait));
            }
        },
    },
    Family {
        name: "clawmesh_api_token_expiry_timestamp_seconds",
        help: "When the API key expires (Unix seconds); absent for a key that never expires.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |s, out| out.extend(s.health.token_expiry.map(|t| num(&[], t))),
    },
    Family {
        name: "clawmesh_otlp_exports_total",
        help: "OTLP exports that carried the workspace's numbers, by result (success, failure after retries); absent when OTLP is off.",
        kind: Kind::Counter,
        unit: "{export}",
        stability: Stability::Experimental,
        labels: &["result"],
        collect: |s, out| {
            if let Some(o) = &s.otlp {
                out.push(num(&["success"], o.succeeded as f64));
                out.push(num(&["failure"], o.failed as f64));
            }
        },
    },
    Family {
        name: "clawmesh_otlp_last_success_timestamp_seconds",
        help: "When an OTLP export carrying the workspace's numbers was last accepted (Unix seconds); absent before the first.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Experimental,
        labels: &[],
        collect: |s, out| out.extend(s.otlp.as_ref().and_then(|o| o.last_success).map(|t| num(&[], t))),
    },
    Family {
        name: "clawmesh_otlp_pending_data_points",
        help: "Data points of the workspace built for OTLP but not yet delivered; bounded by the series count while the collector is away.",
        kind: Kind::Gauge,
        unit: "{data_point}",
        stability: Stability::Experimental,
        labels: &[],
        collect: |s, out| out.extend(s.otlp.as_ref().map(|o| num(&[], o.pending_points as f64))),
    },
    Family {
        name: "clawmesh_exporter_tracked_tasks",
        help: "Tasks the exporter holds in memory: open ones, and finished ones remembered to count each exactly once.",
        kind: Kind::Gauge,
        unit: "{task}",
        stability: Stability::Experimental,
        labels: &["state"],
        collect: |s, out| {
            out.push(num(&["open"], s.open_len as f64));
            out.push(num(&["finished"], s.ledger_len as f64));
        },
    },
    // Checkpoints: present only with --storage.path.
    Family {
        name: "clawmesh_exporter_checkpoint_last_success_timestamp_seconds",
        help: "When the workspace's checkpoint was last written (Unix seconds); absent before the first.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Experimental,
        labels: &[],
        collect: |s, out| out.extend(s.health.checkpoint.as_ref().and_then(|c| c.last_success).map(|t| num(&[], t))),
    },
    Family {
        name: "clawmesh_exporter_checkpoint_write_failures_total",
        help: "Checkpoint writes that failed, by reason: io (a full or read-only volume, permissions), too_large (past --storage.max-size), timeout (not done within --storage.write-timeout: a frozen or hung volume). The previous checkpoint stays, and the counters it keeps are served as it has them until a write succeeds.",
        kind: Kind::Counter,
        unit: "{write}",
        stability: Stability::Experimental,
        labels: &["reason"],
        collect: |s, out| {
            if let Some(c) = &s.health.checkpoint {
                out.extend(crate::fleet::CheckpointHealth::WRITE_FAILURES.iter().map(|r| num(&[r], c.write_failures.get(r).copied().unwrap_or(0) as f64)));
            }
        },
    },
    Family {
        name: "clawmesh_exporter_checkpoint_size_bytes",
        help: "Bytes of the workspace's last checkpoint written (or read at the start).",
        kind: Kind::Gauge,
        unit: "By",
        stability: Stability::Experimental,
        labels: &[],
        collect: |s, out| out.extend(s.health.checkpoint.as_ref().map(|c| num(&[], c.size_bytes as f64))),
    },
    Family {
        name: "clawmesh_exporter_checkpoint_write_duration_seconds",
        help: "How long the last checkpoint write took, encoding and flushing to disk included.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Experimental,
        labels: &[],
        collect: |s, out| out.extend(s.health.checkpoint.as_ref().map(|c| num(&[], c.write_seconds))),
    },
    Family {
        name: "clawmesh_exporter_checkpoint_refused_total",
        help: "Checkpoints refused at the start, by reason (corrupt, version, workspace, shard, too_large, unreadable, future): the counters started from zero instead.",
        kind: Kind::Counter,
        unit: "{checkpoint}",
        stability: Stability::Experimental,
        labels: &["reason"],
        collect: |s, out| {
            if let Some(c) = &s.health.checkpoint {
                out.extend(crate::storage::Refusal::ALL.iter().map(|r| num(&[r.name()], c.refused.get(r.name()).copied().unwrap_or(0) as f64)));
            }
        },
    },
    Family {
        name: "clawmesh_exporter_checkpoint_restored_age_seconds",
        help: "How old the checkpoint the counters went on from was at the start; absent when they started from zero.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Experimental,
        labels: &[],
        collect: |s, out| out.extend(s.health.checkpoint.as_ref().and_then(|c| c.restored_age_seconds).map(|a| num(&[], a))),
    },
    // Webhooks: present only when the receiver is on.
    Family {
        name: "clawmesh_webhook_requests_total",
        help: "Webhook deliveries received, by result (accepted, duplicate, ignored, unknown_type, bad_signature, too_large, bad_request, stale, unknown_workspace, queue_full). Only requests that named the workspace; refusals before that are in clawmesh_webhook_unattributed_requests_total.",
        kind: Kind::Counter,
        unit: "{request}",
        stability: Stability::Experimental,
        labels: &["result"],
        collect: |s, out| {
            if let Some(w) = &s.webhook {
                out.extend(w.requests.iter().map(|(r, n)| num(&[r], *n as f64)));
            }
        },
    },
    Family {
        name: "clawmesh_webhook_missed_events_total",
        help: "Terminal task transitions polling counted first and no webhook brought within --webhook.missed-grace: events the webhook path lost.",
        kind: Kind::Counter,
        unit: "{event}",
        stability: Stability::Experimental,
        labels: &[],
        collect: |s, out| out.extend(s.webhook.as_ref().map(|w| num(&[], w.missed_events as f64))),
    },
    Family {
        name: "clawmesh_webhook_last_event_timestamp_seconds",
        help: "When the last verified webhook event for the workspace arrived (Unix seconds).",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Experimental,
        labels: &[],
        collect: |s, out| out.extend(s.webhook.as_ref().and_then(|w| w.last_event).map(|t| num(&[], t))),
    },
];

/// The one family without a workspace: which build is running.
pub const BUILD_INFO: &str = "clawmesh_exporter_build_info";
pub const BUILD_INFO_HELP: &str =
    "A metric with a constant 1 value labelled by the version and git revision of the exporter.";

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn revision() -> &'static str {
    option_env!("CLAWMESH_GIT_REVISION").unwrap_or("unknown")
}
