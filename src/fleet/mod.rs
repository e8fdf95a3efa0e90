//! The fleet state of one workspace: what the exporter knows, and the
//! exactly-once ledger that turns repeated sightings of tasks into counters.
//!
//! Everything enters through [`Fleet::apply_task`] and
//! [`Fleet::apply_agent_listing`] / [`Fleet::apply_agent_event`], whether it
//! came from a listing, a reconciliation or a webhook. No I/O here.

mod bounded;

pub use bounded::BoundedNames;

use crate::api::types::{Agent, Task, TaskStatus, Timestamp};
use crate::histogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The agent statuses the contract names; always exported, zeros included.
pub const AGENT_STATUSES: [&str; 6] =
    ["provisioning", "idle", "busy", "paused", "error", "offline"];
/// Open task statuses always exported.
pub const OPEN_TASK_STATUSES: [&str; 2] = ["pending", "running"];
/// Terminal statuses, always exported on the finished counter.
pub const TERMINAL_STATUSES: [&str; 3] = ["completed", "failed", "cancelled"];

/// Buckets for queue and run durations: seconds to hours, since agent tasks
/// range from a quick tool call to a long research job.
pub const TASK_DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// Past this many distinct unknown names (statuses, error codes), further
/// ones are counted under "other" so a misbehaving API cannot blow up the
/// series count.
pub const MAX_UNKNOWN_NAMES: usize = 20;

#[derive(Debug, Clone)]
struct AgentSeen {
    status: String,
    updated_at: Timestamp,
}

#[derive(Debug, Clone)]
struct OpenTask {
    status: TaskStatus,
    created_at: Timestamp,
    updated_at: Timestamp,
    /// The queue duration of this task has been observed (or was before
    /// the counting floor and never will be).
    queue_seen: bool,
}

/// A finished task in the ledger: when it finished, and which of its
/// metrics were known (they are null until known, and may come later).
#[derive(Debug, Clone, Copy)]
struct Counted {
    finished_at: Timestamp,
    run: bool,
    input: bool,
    output: bool,
}

/// What applying one task sighting did; tests and (later) webhook
/// reconciliation read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A terminal transition, counted now.
    Finished,
    /// A new or changed open task.
    Updated,
    /// Nothing new: a duplicate, an older copy, or a terminal task already counted.
    Unchanged,
    /// A terminal task that finished at or before the counting floor.
    BeforeFloor,
}

/// Counters of terminal transitions and what they carried.
#[derive(Debug, Clone)]
pub struct Counters {
    pub finished: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub queue_seconds: Histogram,
    pub run_seconds: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            finished: TERMINAL_STATUSES
                .iter()
                .map(|s| (s.to_string(), 0))
                .collect(),
            failures: BTreeMap::new(),
            input_tokens: 0,
            output_tokens: 0,
            queue_seconds: Histogram::new(TASK_DURATION_BUCKETS),
            run_seconds: Histogram::new(TASK_DURATION_BUCKETS),
        }
    }
}

#[derive(Debug)]
pub struct Fleet {
    agents: BTreeMap<String, u64>,
    agent_names: BoundedNames,
    agents_known: bool,
    /// Every agent known, by id: its (admitted) status and `updated_at`.
    /// A listing replaces it and webhook events update it, never backwards.
    agent_by_id: HashMap<Box<str>, AgentSeen>,
    /// Agents a webhook said were deleted, with the deletion's `updated_at`,
    /// until a listing no longer can show them.
    agent_gone: HashMap<Box<str>, Timestamp>,
    open: HashMap<String, OpenTask>,
    open_names: BoundedNames,
    failure_codes: BoundedNames,
    /// Terminal tasks counted, by id, with the instant they finished. An
    /// entry can go once the floor passes its finish time: a later sighting
    /// of that task is then `BeforeFloor` and ignored, never counted twice.
    ledger: HashMap<Box<str>, Counted>,
    /// Started tasks that a reconciliation dropped from `open` (they had
    /// finished, and the incremental listing had not shown it yet), with
    /// their last `updated_at`: their queue time was observed already.
    started_unlisted: HashMap<Box<str>, Timestamp>,
    /// Terminal transitions at or before this instant are not counted: they
    /// happened before the exporter started, or their ledger entry is gone.
    floor: Timestamp,
    counters: Counters,
    counting_since: Timestamp,
}

impl Fleet {
    /// A fleet that counts terminal transitions after `counting_since`.
    pub fn new(counting_since: Timestamp) -> Self {
        Fleet {
            agents: BTreeMap::new(),
            agent_names: BoundedNames::new(&AGENT_STATUSES, MAX_UNKNOWN_NAMES),
            agents_known: false,
            agent_by_id: HashMap::new(),
            agent_gone: HashMap::new(),
            open: HashMap::new(),
            open_names: BoundedNames::new(&OPEN_TASK_STATUSES, MAX_UNKNOWN_NAMES),
            failure_codes: BoundedNames::new(&[], MAX_UNKNOWN_NAMES * 2),
            ledger: HashMap::new(),
            started_unlisted: HashMap::new(),
            floor: counting_since,
            counters: Counters::default(),
            counting_since,
        }
    }

    /// Replace the agents with a complete listing.
    pub fn apply_agent_listing(&mut self, agents: &[Agent]) {
        self.apply_agent_listing_at(agents, Timestamp::from_micros(i64::MAX), Duration::ZERO);
    }

    /// Replace the agents with a complete listing that started at
    /// `listing_start`, keeping what webhook events told that the listing
    /// could not show yet: a copy newer than the listed one, an agent
    /// created within `lag` of the start, a deletion the listing predates.
    pub fn apply_agent_listing_at(
        &mut self,
        agents: &[Agent],
        listing_start: Timestamp,
        lag: Duration,
    ) {
        let recent = listing_start.saturating_sub(lag);
        let mut old = std::mem::take(&mut self.agent_by_id);
        let mut next = HashMap::with_capacity(agents.len());
        for a in agents {
            if self
                .agent_gone
                .get(a.id.as_str())
                .is_some_and(|d| *d >= a.updated_at)
            {
                continue;
            }
            let seen = match old.remove(a.id.as_str()) {
                Some(e) if e.updated_at > a.updated_at => e,
                _ => AgentSeen {
                    status: self.agent_names.admit(&a.status),
                    updated_at: a.updated_at,
                },
            };
            next.insert(a.id.as_str().into(), seen);
        }
        next.extend(old.into_iter().filter(|(_, e)| e.updated_at > recent));
        self.agent_gone.retain(|_, d| *d > recent);
        self.agent_by_id = next;
        self.agents = AGENT_STATUSES.iter().map(|s| (s.to_string(), 0)).collect();
        for e in self.agent_by_id.values() {
            *self.agents.entry(e.status.clone()).or_default() += 1;
        }
        self.agents_known = true;
    }

    /// Apply an agent as a webhook event carried it (created, changed, or
    /// `deleted`). Only a copy newer than the one known changes anything.
    pub fn apply_agent_event(&mut self, a: &Agent, deleted: bool) {
        if self
            .agent_gone
            .get(a.id.as_str())
            .is_some_and(|d| *d >= a.updated_at)
        {
            return;
        }
        if let Some(e) = self.agent_by_id.get(a.id.as_str()) {
            if e.updated_at >= a.updated_at {
                return;
            }
            if let Some(n) = self.agents.get_mut(&e.status) {
                *n = n.saturating_sub(1);
            }
        }
        if deleted {
            self.agent_by_id.remove(a.id.as_str());
            self.agent_gone.insert(a.id.as_str().into(), a.updated_at);
            return;
        }
        let status = self.agent_names.admit(&a.status);
        *self.agents.entry(status.clone()).or_default() += 1;
        self.agent_by_id.insert(
            a.id.as_str().into(),
            AgentSeen {
                status,
                updated_at: a.updated_at,
            },
        );
    }

    /// Apply one sighting of a task, from any source. Idempotent: the same
    /// sighting applied twice changes nothing the second time.
    pub fn apply_task(&mut self, t: &Task) -> Applied {
        if let Some(c) = self.ledger.get_mut(t.id.as_str()) {
            // Terminal is final; a later updated_at only means outputs
            // moved, or metrics that were null became known: those count
            // now, once.
            let m = &t.metrics;
            let k = &mut self.counters;
            if !c.run && m.run_seconds.is_some() {
                c.run = true;
                observe(&mut k.run_seconds, m.run_seconds);
            }
            if !c.input && m.input_tokens.is_some() {
                c.input = true;
                k.input_tokens += m.input_tokens.unwrap_or(0);
            }
            if !c.output && m.output_tokens.is_some() {
                c.output = true;
                k.output_tokens += m.output_tokens.unwrap_or(0);
            }
            return Applied::Unchanged;
        }
        if t.status.is_terminal() {
            return self.finish(t);
        }
        let started_after_floor = t.started_at.is_some_and(|s| s > self.floor);
        match self.open.get_mut(t.id.as_str()) {
            Some(o) if o.updated_at >= t.updated_at => Applied::Unchanged,
            Some(o) => {
                o.status = t.status.clone();
                o.updated_at = t.updated_at;
                if !o.queue_seen && t.started_at.is_some() {
                    o.queue_seen = true;
                    if started_after_floor {
                        observe(&mut self.counters.queue_seconds, t.metrics.queue_seconds);
                    }
                }
                Applied::Updated
            }
            None => {
                let queue_seen = t.started_at.is_some();
                let seen_before = self.started_unlisted.remove(t.id.as_str()).is_some();
                if started_after_floor && !seen_before {
                    observe(&mut self.counters.queue_seconds, t.metrics.queue_seconds);
                }
                self.open.insert(
                    t.id.clone(),
                    OpenTask {
                        status: t.status.clone(),
                        created_at: t.created_at,
                        updated_at: t.updated_at,
                        queue_seen,
                    },
                );
                Applied::Updated
            }
        }
    }

    fn finish(&mut self, t: &Task) -> Applied {
        let open = self.open.remove(t.id.as_str());
        let seen_started = open.is_some_and(|o| o.queue_seen)
            | self.started_unlisted.remove(t.id.as_str()).is_some();
        let finished_at = t.finished_time();
        if finished_at <= self.floor {
            return Applied::BeforeFloor;
        }
        let c = &mut self.counters;
        // A task created and finished between two polls was never open here:
        // its queue time is observed now, once.
        if !seen_started && t.started_at.is_some_and(|s| s > self.floor) {
            observe(&mut c.queue_seconds, t.metrics.queue_seconds);
        }
        *c.finished.entry(t.status.name().to_string()).or_default() += 1;
        if t.status == TaskStatus::Failed {
            let code = t
                .error
                .as_ref()
                .and_then(|e| e.code.as_deref())
                .filter(|c| !c.is_empty())
                .unwrap_or("unknown");
            *c.failures
                .entry(self.failure_codes.admit(code))
                .or_default() += 1;
        }
        c.input_tokens += t.metrics.input_tokens.unwrap_or(0);
        c.output_tokens += t.metrics.output_tokens.unwrap_or(0);
        observe(&mut c.run_seconds, t.metrics.run_seconds);
        let m = &t.metrics;
        let counted = Counted {
            finished_at,
            run: m.run_seconds.is_some(),
            input: m.input_tokens.is_some(),
            output: m.output_tokens.is_some(),
        };
        self.ledger.insert(t.id.as_str().into(), counted);
        Applied::Finished
    }

    /// After a complete listing of open tasks started at `listing_start`:
    /// forget open tasks the listing did not show, unless they changed too
    /// recently to be visible in it (`lag`). A task missing from the listing
    /// has finished (the incremental sync counts it) or been deleted.
    pub fn retain_open(
        &mut self,
        seen: &std::collections::HashSet<String>,
        listing_start: Timestamp,
        lag: Duration,
    ) {
        let keep_after = listing_start.saturating_sub(lag);
        // The listing asked for every open status held here (see
        // `open_statuses`), so its silence means finished or gone.
        let unlisted = &mut self.started_unlisted;
        self.open.retain(|id, o| {
            let keep = seen.contains(id) || o.updated_at > keep_after;
            if !keep && o.queue_seen {
                unlisted.insert(id.as_str().into(), o.updated_at);
            }
            keep
        });
    }

    /// Raise the counting floor (never lowers it) and drop ledger entries at
    /// or below it: memory stays bounded by the tasks finished since then.
    pub fn raise_floor(&mut self, floor: Timestamp) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        self.ledger.retain(|_, c| c.finished_at > floor);
        // Such a task started before its last update, so at or before the
        // floor: its queue time would not be observed again anyway.
        self.started_unlisted.retain(|_, updated| *updated > floor);
    }

    pub fn floor(&self) -> Timestamp {
        self.floor
    }

    /// Agents per status from the last complete listing; `None` before one.
    pub fn agents(&self) -> Option<&BTreeMap<String, u64>> {
        self.agents_known.then_some(&self.agents)
    }

    /// Open tasks per status; pending and running always present.
    pub fn open_tasks(&mut self) -> BTreeMap<String, u64> {
        let mut counts: BTreeMap<String, u64> = OPEN_TASK_STATUSES
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        for o in self.open.values() {
            *counts
                .entry(self.open_names.admit(o.status.name()))
                .or_default() += 1;
        }
        counts
    }

    /// The statuses of the open tasks held: pending and running, and any
    /// the contract does not name yet. A reconciliation lists them all, so
    /// that a task missing from it can be forgotten whatever its status.
    pub fn open_statuses(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> =
            OPEN_TASK_STATUSES.iter().map(|s| s.to_string()).collect();
        names.extend(self.open.values().map(|o| o.status.name().to_string()));
        names.into_iter().collect()
    }

    pub fn oldest_pending_created_at(&self) -> Option<Timestamp> {
        self.open
            .values()
            .filter(|o| o.status == TaskStatus::Pending)
            .map(|o| o.created_at)
            .min()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Terminal tasks remembered for de-duplication.
    pub fn ledger_len(&self) -> usize {
        self.ledger.len()
    }

    pub fn open_len(&self) -> usize {
        self.open.len()
    }
}

fn observe(h: &mut Histogram, v: Option<f64>) {
    if let Some(v) = v {
        h.observe(v);
    }
}

#[cfg(test)]
mod tests;

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
    pub ledger_len: usize,
    pub open_len: usize,
    pub health: Health,
    pub api: crate::api::ApiStats,
    /// How OTLP exports carrying this workspace's numbers went; `None` when
    /// OTLP is off. Stamped by the hub, not by the poll loops.
    pub otlp: Option<ExportHealth>,
    /// Set by the poll loop when the webhook receiver is on.
    pub webhook: Option<crate::webhook::WebhookHealth>,
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

impl Fleet {
    pub fn snapshot(
        &mut self,
        workspace: &str,
        now: Timestamp,
        health: Health,
        api: crate::api::ApiStats,
    ) -> Snapshot {
        let oldest = self.oldest_pending_created_at();
        Snapshot {
            workspace: workspace.to_string(),
            labels: vec![("workspace".to_string(), workspace.to_string())],
            agents: self.agents().cloned(),
            tasks_open: self.open_tasks(),
            oldest_pending_age_seconds: oldest
                .map(|c| (now.micros() - c.micros()).max(0) as f64 / 1e6)
                .unwrap_or(0.0),
            counters: self.counters.clone(),
            counting_since: self.counting_since.as_secs_f64(),
            ledger_len: self.ledger.len(),
            open_len: self.open.len(),
            health,
            api,
            otlp: None,
            webhook: None,
        }
    }
}
