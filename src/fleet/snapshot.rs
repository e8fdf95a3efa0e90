//! What the metric table reads about one workspace ([`Snapshot`]), and the
//! health records it carries: of the sync ([`Health`]), the checkpoints
//! ([`CheckpointHealth`]), the OTLP exports ([`ExportHealth`]) and the webhooks
//! ([`WebhookHealth`]). Plain data, defined here below every stage that
//! fills one in, so none of them reaches up to another for a type.
//!
//! # Who writes what
//!
//! Each stage writes only its own part; the parts meet in one place.
//!
//! - The fleet builds the snapshot (`Fleet::snapshot`): everything it counts
//!   and holds, the sync health and API stats `poll` hands it, the
//!   `workspace` label, and empty join slots.
//! - The workspace's poll stage keeps its own [`Parts`] beside the fleet: the
//!   configured labels, the webhook health, and with storage the last
//!   checkpoint written (`durable`, whose counters are served) and the
//!   restored `baseline`. It hands the fleet's snapshot and its parts to the
//!   hub as they are, patching neither.
//! - The hub joins them ([`Snapshot::join`], the only writer of the join
//!   slots `labels` beyond `workspace`, `webhook`, `baseline`, and of the
//!   served counters), and sets its own part, the OTLP pusher's health
//!   ([`Snapshot::set_export_health`]), on the joined snapshot it holds.
//! - The renderers (the Prometheus exposition, the OTLP batch) read joined
//!   snapshots only, through the one metric table.
//!
//! So a number shows the same whichever way it leaves, and no stage has to
//! know what a later one will add.

use super::budget::BudgetConfig;
use super::counters::Counters;
use super::spend::{day_of, month_of};
use crate::prices::Money;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The poll stage's part of a workspace's snapshot: what it knows beside the
/// fleet. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    /// The workspace's labels after `workspace`: `workspace_name` and the
    /// configured extra labels.
    pub labels: Vec<(String, String)>,
    /// Set when the webhook receiver is on.
    pub webhook: Option<WebhookHealth>,
    /// With storage: the workspace as the last checkpoint written has it.
    /// The counters a checkpoint keeps are served from it ([`serve_durable`]).
    pub durable: Option<Arc<Snapshot>>,
    /// The workspace as restored, before this process counted anything.
    pub baseline: Option<Arc<Snapshot>>,
}

impl Snapshot {
    /// The fleet's snapshot joined with the poll stage's parts: the one
    /// place that writes the join slots and the served counters.
    pub fn join(mut self, parts: Parts) -> Snapshot {
        self.webhook = parts.webhook;
        if let Some(d) = &parts.durable {
            serve_durable(&mut self, d);
        }
        self.baseline = parts.baseline;
        self.labels.extend(parts.labels);
        self
    }

    /// The hub's own part: how OTLP exports carrying this workspace went
    /// (`None` while OTLP is off).
    pub fn set_export_health(&mut self, health: Option<ExportHealth>) {
        self.otlp = health;
    }
}

/// How the sync of one workspace is going; written by `poll`, read by the
/// metric table.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The last sync of every resource succeeded.
    pub up: bool,
    /// Start of the last successful sync per resource ("agents", "tasks"),
    /// Unix seconds: the data is at least this fresh.
    pub last_sync: BTreeMap<&'static str, f64>,
    pub sync_failures: BTreeMap<&'static str, u64>,
    /// Unix seconds; `None` for a key that never expires.
    pub token_expiry: Option<f64>,
    /// With `--storage.path`: how the workspace's checkpoints go.
    pub checkpoint: Option<CheckpointHealth>,
}

/// How a workspace's checkpoints go (`crate::storage`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointHealth {
    /// When one was last written (Unix seconds, the host's clock).
    pub last_success: Option<f64>,
    /// Writes that failed, by reason (`io`, `too_large`, `timeout`).
    pub write_failures: BTreeMap<&'static str, u64>,
    /// Bytes of the last checkpoint written (or read at the start).
    pub size_bytes: u64,
    /// How long the last write took, encoding included.
    pub write_seconds: f64,
    /// Checkpoints refused at the start, by reason (`storage::Refusal`).
    pub refused: BTreeMap<&'static str, u64>,
    /// The counters go on from a checkpoint written this long before the
    /// start; `None`: they started from zero.
    pub restored_age_seconds: Option<f64>,
}

impl CheckpointHealth {
    pub const WRITE_FAILURES: [&'static str; 3] = ["io", "too_large", "timeout"];

    /// Nothing written or refused yet: every write failure reason at 0, so
    /// each series shows from the first scrape.
    pub fn new() -> Self {
        let mut h = CheckpointHealth::default();
        for r in Self::WRITE_FAILURES {
            h.write_failures.insert(r, 0);
        }
        h
    }
}

/// Everything the metric table needs about one workspace, taken once per sync.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub workspace: String,
    /// Labels on every series of the workspace, `workspace` first, then
    /// `workspace_name` and the configured extra labels.
    pub labels: Vec<(String, String)>,
    pub agents: Option<BTreeMap<String, u64>>,
    pub tasks_open: BTreeMap<String, u64>,
    pub oldest_pending_age_seconds: f64,
    pub counters: Counters,
    /// When this fleet began counting (Unix seconds): counters are totals
    /// since then; a new value means they restarted from zero.
    pub counting_since: f64,
    /// When this process's slot began (Unix seconds): the start of the
    /// counters a checkpoint does not keep (`metrics::restored` says which
    /// it keeps); `counting_since` unless the fleet was restored.
    pub slot_since: f64,
    pub ledger_len: usize,
    pub open_len: usize,
    pub health: Health,
    pub api: crate::api::ApiStats,
    /// How OTLP exports carrying this workspace's numbers went; `None` when
    /// OTLP is off. Stamped by the hub, not by the poll loops.
    pub otlp: Option<ExportHealth>,
    /// Set by the poll loop when the webhook receiver is on.
    pub webhook: Option<WebhookHealth>,
    /// The breakdown label names, in the order of every group's `by`
    /// (empty without breakdowns).
    pub dims: Vec<String>,
    /// Agents per breakdown group (one group, `by` empty, without
    /// breakdowns); empty before the first complete listing.
    pub agent_groups: Vec<AgentGroup>,
    /// Task counters and open tasks per breakdown slice (one, `by` empty,
    /// without breakdowns).
    pub task_groups: Vec<TaskGroup>,
    /// Per-agent heartbeats, when asked for (`--agents.heartbeat-series`).
    pub heartbeats: Vec<AgentHeartbeat>,
    /// What the breakdowns hold; `None` without breakdowns.
    pub breakdown: Option<BreakdownInfo>,
    /// When the counters went on from a checkpoint: the workspace as
    /// restored, before this process counted anything. A delta exporter
    /// counts this process's increase from it, not from zero.
    pub baseline: Option<Arc<Snapshot>>,
    /// Whether a price table is in force: the spend families show only
    /// then (without one, no token is unpriced either).
    pub priced: bool,
    /// What the workspace's spend is held against.
    pub budgets: Arc<Vec<BudgetConfig>>,
    /// The API's time at the snapshot (Unix micros): which calendar month
    /// and day are current. `None` before the API told its time.
    pub api_now: Option<i64>,
}

/// What a budget's tasks spent: in all, and in the current month and day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetSpend {
    pub total: Money,
    pub month: Money,
    pub day: Money,
}

impl Snapshot {
    /// The spend of the tasks `b` matches: those of every slice whose
    /// breakdown values include all of `b.matches` (the workspace's when
    /// it matches nothing in particular). A label that is no breakdown
    /// label (yet) matches no slice.
    pub fn budget_spend(&self, b: &BudgetConfig) -> BudgetSpend {
        let (month, day) = self
            .api_now
            .map_or((i64::MIN, i64::MIN), |t| (month_of(t), day_of(t)));
        let mut out = BudgetSpend::default();
        let mut add = |c: &Counters| {
            out.total = out.total.saturating_add(c.spend.total());
            out.month = out.month.saturating_add(c.month.of(month));
            out.day = out.day.saturating_add(c.day.of(day));
        };
        if b.matches.is_empty() {
            add(&self.counters);
            return out;
        }
        let Some(at): Option<Vec<(usize, &String)>> = b
            .matches
            .iter()
            .map(|(k, v)| self.dims.iter().position(|d| d == k).map(|i| (i, v)))
            .collect()
        else {
            return out;
        };
        for g in &self.task_groups {
            if at.iter().all(|(i, v)| g.by.get(*i) == Some(*v)) {
                add(&g.counters);
            }
        }
        out
    }
}

/// Agents of one combination of breakdown values.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentGroup {
    /// Values in the order of `Snapshot::dims`; "" where none.
    pub by: Vec<String>,
    /// Per status; the six known ones always.
    pub statuses: BTreeMap<String, u64>,
    /// Idle and busy agents whose heartbeat is stale, per status.
    pub silent: BTreeMap<String, u64>,
}

/// The task numbers of one breakdown slice.
#[derive(Debug, Clone)]
pub struct TaskGroup {
    pub by: Vec<String>,
    pub counters: Counters,
    /// Open tasks per status; pending and running always.
    pub open: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentHeartbeat {
    pub id: String,
    pub status: String,
    pub by: Vec<String>,
    /// The API's `last_heartbeat_at` (Unix seconds, the API's clock).
    pub at: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakdownInfo {
    /// Distinct values admitted per breakdown label.
    pub values: Vec<(String, usize)>,
    pub combinations: usize,
}

/// The OTLP pusher's record for one workspace, plain data for the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportHealth {
    /// Exports that carried this workspace's numbers and were accepted.
    pub succeeded: u64,
    /// Exports that carried them and failed after their retries.
    pub failed: u64,
    /// Unix seconds of the last accepted export.
    pub last_success: Option<f64>,
    /// Data points of this workspace built but not yet delivered: at most
    /// one per series, since unsent deltas merge and a newer cumulative
    /// value replaces an unsent one.
    pub pending_points: u64,
}

/// What the metric table shows about a workspace's webhooks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookHealth {
    /// Requests per result that named this workspace.
    pub requests: BTreeMap<&'static str, u64>,
    /// Requests the receiver refused before a verified body named a
    /// workspace (one receiver serves every workspace, and an unverified
    /// body names none that can be trusted): the same shared counts in every
    /// workspace's health, shown once, at the process level.
    pub unattributed: BTreeMap<&'static str, u64>,
    pub missed_events: u64,
    /// When the last verified event for the workspace arrived (Unix seconds).
    pub last_event: Option<f64>,
}

/// Serve the counters a checkpoint keeps as `durable` had them (the last
/// checkpoint written): a crash then loses nothing that was served, and a
/// counter never falls at the restart. Gauges and the exporter's own
/// counters stay live. A slice the checkpoint did not have yet shows 0.
///
/// Slices are matched by the series they render (their non-empty labels):
/// a dimension discovered since pads every slice with an empty value, and
/// is the same series. A slice of `durable` no longer live was freed into
/// the slice of every label `other` (`Breakdown::expire`): it is served
/// there, so that the slices still sum to the served totals.
pub fn serve_durable(snap: &mut Snapshot, durable: &Snapshot) {
    fn series<'a>(dims: &'a [String], by: &'a [String]) -> Vec<(&'a str, &'a str)> {
        dims.iter()
            .zip(by)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
    snap.counters = durable.counters.clone();
    let mut by: HashMap<Vec<(&str, &str)>, &Counters> = durable
        .task_groups
        .iter()
        .map(|g| (series(&durable.dims, &g.by), &g.counters))
        .collect();
    let served: Vec<Counters> = snap
        .task_groups
        .iter()
        .map(|g| {
            by.remove(&series(&snap.dims, &g.by))
                .map_or_else(Counters::default, |c| c.clone())
        })
        .collect();
    // Freed since: served where their counts went (the slice of no values
    // when there is no `other` one, which cannot be: the sum holds).
    let all = |g: &TaskGroup, v: &str| g.by.iter().all(|x| x == v);
    let to = snap
        .task_groups
        .iter()
        .position(|g| !g.by.is_empty() && all(g, super::bounded::OTHER))
        .or_else(|| snap.task_groups.iter().position(|g| all(g, "")));
    let mut freed = Counters::default();
    for c in by.values() {
        freed.merge(c);
    }
    for (i, (g, c)) in snap.task_groups.iter_mut().zip(served).enumerate() {
        g.counters = c;
        if Some(i) == to {
            g.counters.merge(&freed);
        }
    }
}
