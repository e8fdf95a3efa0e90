//! The fleet state of one workspace: what the exporter knows, and the
//! exactly-once ledger that turns repeated sightings of tasks into counters.
//!
//! Everything enters through [`Fleet::apply_task`] and
//! [`Fleet::apply_agent_listing`] / [`Fleet::apply_agent_event`], whether it
//! came from a listing, a reconciliation or a webhook. No I/O here.

mod bounded;
mod breakdown;
mod budget;
mod counters;
mod saved;
pub mod settings;
mod snapshot;
mod spend;

pub use bounded::{BoundedNames, OTHER};
pub use breakdown::{
    breakdown_patterns, glob, sanitize, AgentDims, Breakdown, BreakdownConfig, Patterns,
};
pub use budget::BudgetConfig;
pub use counters::{
    Counters, AGENT_STATUSES, FAILURE_CODES, MAX_DURATION_SECONDS, MAX_UNKNOWN_NAMES,
    OPEN_TASK_STATUSES, REJECT_REASONS, RESOURCES, TASK_DURATION_BUCKETS, TERMINAL_STATUSES,
    UNKNOWN_CODE,
};
pub use saved::SavedFleet;
pub use snapshot::{
    serve_durable, AgentGroup, AgentHeartbeat, BreakdownInfo, BudgetSpend, CheckpointHealth,
    ExportHealth, Health, Parts, Snapshot, TaskGroup, WebhookHealth,
};
pub use spend::{
    day_end, month_end, PeriodSpend, Spend, Unpriced, MAX_UNPRICED_MODELS, SPEND_STATUSES,
    TOKEN_KINDS,
};

use crate::api::clock::ApiTime;
use crate::api::types::{Agent, Progress, Task, TaskStatus, Timestamp};
use crate::histogram::Exemplar;
use crate::prices::PriceTable;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How the fleet judges what the API tells it; `poll` fills it from flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetLimits {
    /// An object naming an instant further than this ahead of the API's
    /// own clock is refused (`future_timestamp`): applied, it would win
    /// every later comparison and pin its state.
    pub max_timestamp_lead: Duration,
    /// A task in a status the contract does not name counts as open for at
    /// most this long after its last change: such a status may be
    /// terminal-like (`expired`) and never change again.
    pub unknown_status_ttl: Duration,
    /// A failed task whose `error.code` is still null this long after it
    /// finished counts under `unknown`.
    pub failure_code_grace: Duration,
    /// An agent in idle or busy whose last heartbeat is older than this
    /// (as the listing that read it saw it) counts as silent.
    pub heartbeat_stale_after: Duration,
    /// Per-agent heartbeat series, at most this many (0: off).
    pub per_agent_series: usize,
}

impl Default for FleetLimits {
    fn default() -> Self {
        FleetLimits {
            max_timestamp_lead: Duration::from_secs(300),
            unknown_status_ttl: Duration::from_secs(3600),
            failure_code_grace: Duration::from_secs(300),
            heartbeat_stale_after: Duration::from_secs(90),
            per_agent_series: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct AgentSeen {
    status: String,
    updated_at: Timestamp,
    created_at: Timestamp,
    last_heartbeat_at: Option<Timestamp>,
    /// The API's time when this copy was read: heartbeats are judged as
    /// of then, not as of the render (agents may be listed rarely).
    seen_at: Timestamp,
    /// Its breakdown values (empty without breakdowns).
    dims: AgentDims,
    /// Its provider and model (`config`), which price its tasks' tokens.
    model: AgentModel,
}

/// An agent's `config.model_provider` and `config.model` ("" when absent).
type AgentModel = Arc<(Box<str>, Box<str>)>;

fn agent_model(a: &Agent) -> AgentModel {
    let get = |v: &Option<String>| v.as_deref().unwrap_or("").into();
    Arc::new((get(&a.config.model_provider), get(&a.config.model)))
}

/// Which of a task's once-only observations are made (or never will be):
/// each is counted when its value first becomes known, whichever copy of
/// the task carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Marks {
    queue: bool,
    run: bool,
    input: bool,
    output: bool,
    /// The failure is counted by code (or the task did not fail).
    code: bool,
}

#[derive(Debug, Clone)]
struct OpenTask {
    /// The admitted status (an unknown one bounded like a label value).
    status: TaskStatus,
    created_at: Timestamp,
    /// `Task::progress` of the copy held (its `updated_at` included): only
    /// a copy further along moves it.
    progress: Progress,
    marks: Marks,
    /// The breakdown slice it counts in, as of the copy held.
    slice: u32,
}

/// A finished task in the ledger: when it finished, and what was counted.
#[derive(Debug, Clone, Copy)]
struct Counted {
    finished_at: Timestamp,
    marks: Marks,
    /// The breakdown slice it was counted in: its later values count there.
    slice: u32,
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
    /// Refused: it names an instant implausibly far ahead of the API's clock.
    Rejected,
}

#[derive(Debug)]
pub struct Fleet {
    agents: BTreeMap<String, u64>,
    agent_names: BoundedNames,
    agents_known: bool,
    /// Every agent known, by id: its (admitted) status and `updated_at`.
    /// A listing replaces it and webhook events update it, never backwards.
    agent_by_id: HashMap<Box<str>, AgentSeen>,
    /// Agents a webhook said were deleted: the deletion's `updated_at`, and
    /// when it came (the API's time), until a listing started long enough
    /// after that no longer can show them. The deletion may carry the
    /// agent's last `updated_at`, long past: that cannot date it.
    agent_gone: HashMap<Box<str>, (Timestamp, Timestamp)>,
    open: HashMap<String, OpenTask>,
    open_names: BoundedNames,
    failure_codes: BoundedNames,
    /// Terminal tasks counted, by id, with the instant they finished. An
    /// entry can go once the floor passes its finish time: a later sighting
    /// of that task is then `BeforeFloor` and ignored, never counted twice.
    ledger: HashMap<Box<str>, Counted>,
    /// Failed tasks in the ledger still waiting for their code.
    codes_waiting: usize,
    /// Open tasks that a reconciliation (or the unknown-status limit)
    /// dropped from `open`, with what was counted of them and how far
    /// along they were: a stale copy does not bring them back, and their
    /// queue time is not observed twice.
    unlisted: HashMap<Box<str>, (Marks, Progress)>,
    /// Terminal transitions at or before this instant are not counted: they
    /// happened before the exporter started, or their ledger entry is gone.
    floor: Timestamp,
    counters: Counters,
    counting_since: Timestamp,
    /// When this process's slot began (the host's clock): where the
    /// counters a checkpoint does not keep (health, API requests) start.
    slot_since: Timestamp,
    /// The API's time as last told by `poll`; `None` (tests) judges nothing
    /// against it.
    api_time: Option<ApiTime>,
    /// The host's instant of the start while the API's clock was not yet
    /// confirmed by two answers: the floor follows the clock until it is.
    provisional_start: Option<Timestamp>,
    /// The highest floor `raise_floor` pruned the ledger (and `unlisted`)
    /// to: the floor never falls below it, whatever the clock says, or a
    /// late copy of a forgotten task would count again.
    pruned_to: Timestamp,
    limits: FleetLimits,
    /// `None`: no breakdowns, every task in the workspace's one slice.
    breakdown: Option<Breakdown>,
    /// The breakdown values of agents gone (deleted, or missing from a
    /// listing) and when they went: their tasks may still finish.
    dims_gone: HashMap<Box<str>, (AgentDims, Timestamp)>,
    /// The models of those agents (kept while prices are set).
    models_gone: HashMap<Box<str>, AgentModel>,
    /// The price table tokens are priced with as they become known.
    prices: Arc<PriceTable>,
    /// What spend is held against (rendered from the counters).
    budgets: Arc<Vec<BudgetConfig>>,
}

/// How long the breakdown values of an agent that went are remembered for
/// its tasks that finish later.
const DIMS_GONE_TTL: Duration = Duration::from_secs(3600);

impl Fleet {
    /// A fleet that counts terminal transitions after `counting_since`,
    /// with no API clock (tests, benchmarks).
    pub fn new(counting_since: Timestamp) -> Self {
        Fleet {
            agents: BTreeMap::new(),
            agent_names: BoundedNames::new(&AGENT_STATUSES, MAX_UNKNOWN_NAMES),
            agents_known: false,
            agent_by_id: HashMap::new(),
            agent_gone: HashMap::new(),
            open: HashMap::new(),
            open_names: BoundedNames::new(&OPEN_TASK_STATUSES, MAX_UNKNOWN_NAMES),
            failure_codes: BoundedNames::new(&FAILURE_CODES, MAX_UNKNOWN_NAMES * 2),
            ledger: HashMap::new(),
            codes_waiting: 0,
            unlisted: HashMap::new(),
            floor: counting_since,
            counters: Counters::default(),
            counting_since,
            slot_since: counting_since,
            api_time: None,
            provisional_start: None,
            pruned_to: Timestamp::from_micros(i64::MIN),
            limits: FleetLimits::default(),
            breakdown: None,
            dims_gone: HashMap::new(),
            models_gone: HashMap::new(),
            prices: Arc::new(PriceTable::none()),
            budgets: Arc::new(Vec::new()),
        }
    }

    /// Break the series down as `cfg` says (nothing when it chooses no
    /// dimension). `workspace_labels`: the names of the workspace's own
    /// labels, which no dimension takes.
    pub fn with_breakdown(mut self, cfg: &BreakdownConfig, workspace_labels: &[String]) -> Self {
        self.breakdown = cfg
            .enabled()
            .then(|| Breakdown::new(cfg.clone(), workspace_labels));
        self
    }

    /// Hold spend against these budgets (the config file's `budgets:`).
    pub fn with_budgets(mut self, budgets: Vec<BudgetConfig>) -> Self {
        self.budgets = Arc::new(budgets);
        self
    }

    /// Price what counts from now on with `table` (`poll` hands the
    /// current one at each sync; a reload's new table prices only what
    /// becomes known after it: nothing counted is priced again).
    pub fn set_prices(&mut self, table: Arc<PriceTable>) {
        self.prices = table;
    }

    /// Whether gone agents' values are kept for their tasks that finish
    /// later: their breakdown values, or their models for pricing.
    fn keeps_gone(&self) -> bool {
        self.breakdown.is_some() || !self.prices.is_empty()
    }

    /// The model of a task's agent as known now: held, or gone.
    fn model_of(&self, t: &Task) -> Option<AgentModel> {
        let id = t.agent_id.as_deref()?;
        self.agent_by_id
            .get(id)
            .map(|e| e.model.clone())
            .or_else(|| self.models_gone.get(id).cloned())
    }

    /// Price `n` tokens of `kind` (0 input, 1 output) of the terminal task
    /// `t` counted in `slice`, with the price in force at its finish; what
    /// no price covers counts as unpriced, by its agent's model.
    fn price(&mut self, t: &Task, slice: u32, kind: usize, n: u64) {
        if self.prices.is_empty() {
            return;
        }
        let Some(status) = spend::SPEND_STATUSES
            .iter()
            .position(|s| *s == t.status.name())
        else {
            return;
        };
        let model = self.model_of(t);
        let (provider, name) = model.as_deref().map_or(("", ""), |m| (&*m.0, &*m.1));
        let finished = t.finished_time();
        let cost = self
            .prices
            .lookup(provider, name, finished)
            .and_then(|p| [p.input, p.output][kind].times(n));
        match cost {
            Some(m) => {
                let (month, day) = (
                    spend::month_of(finished.micros()),
                    spend::day_of(finished.micros()),
                );
                self.add(slice, |c| {
                    c.spend.add(kind, status, m);
                    c.month.add(month, m);
                    c.day.add(day, m);
                });
            }
            None => {
                // The workspace's only, like refusals: slices sum to the
                // total without it.
                spend::add_unpriced(&mut self.counters.unpriced, provider, name, kind, n);
            }
        }
    }

    /// Add to the workspace's counters and to those of `slice`.
    fn add(&mut self, slice: u32, f: impl Fn(&mut Counters)) {
        f(&mut self.counters);
        if let Some(c) = self
            .breakdown
            .as_mut()
            .and_then(|b| b.counters.get_mut(slice as usize))
        {
            f(c);
        }
    }

    /// Make the slices add up to the workspace totals again: whatever the
    /// totals hold that no slice does (counted under breakdowns that did
    /// not survive, before this version folded them) counts in the slice
    /// of no values, the series without breakdown labels.
    /// `Err` when the slices hold more than the totals: no fleet counts
    /// so (each task counts in both), only an edited or corrupt
    /// checkpoint, which cannot be served as it is (the sum over a
    /// breakdown would not be the total) and is refused.
    fn settle_slices(&mut self) -> Result<(), String> {
        let Some(b) = &mut self.breakdown else {
            return Ok(());
        };
        let sum = b.sum();
        let Some(mut missing) = self.counters.since(&sum) else {
            return Err("breakdown: the slices hold more than the totals".into());
        };
        // Refusals and unpriced tokens are the workspace's only, never a
        // slice's.
        missing.rejected.values_mut().for_each(|n| *n = 0);
        missing.unpriced.clear();
        if !missing.is_zero() {
            b.add_unattributed(&missing);
        }
        Ok(())
    }

    /// Free the breakdown combinations and values nothing uses any more
    /// (see `Breakdown::expire`): after each complete agent listing.
    fn expire_breakdown(&mut self) {
        let Some(b) = &mut self.breakdown else {
            return;
        };
        let mut used = vec![false; b.slices()];
        for s in self
            .open
            .values()
            .map(|o| o.slice)
            .chain(self.ledger.values().map(|c| c.slice))
        {
            if let Some(u) = used.get_mut(s as usize) {
                *u = true;
            }
        }
        let agents: HashSet<Vec<Arc<str>>> = self
            .agent_by_id
            .values()
            .map(|e| &e.dims)
            .chain(self.dims_gone.values().map(|(d, _)| d))
            .map(Breakdown::agent_key)
            .collect();
        let Some(remap) = b.expire(&used, &agents) else {
            return;
        };
        let to = |s: &mut u32| *s = remap.get(*s as usize).copied().unwrap_or(0);
        self.open.values_mut().for_each(|o| to(&mut o.slice));
        self.ledger.values_mut().for_each(|c| to(&mut c.slice));
    }

    fn agent_dims(&mut self, a: &Agent) -> AgentDims {
        match &mut self.breakdown {
            Some(b) => b.agent_dims(a),
            None => Arc::from(Vec::new()),
        }
    }

    /// The slice a task counts in now: its agent's values as known (held,
    /// or remembered after the agent went) and its own labels'.
    fn slice_of(&mut self, t: &Task) -> u32 {
        let Some(b) = &mut self.breakdown else {
            return 0;
        };
        let agent = t.agent_id.as_deref().and_then(|id| {
            self.agent_by_id
                .get(id)
                .map(|e| &e.dims)
                .or_else(|| self.dims_gone.get(id).map(|(d, _)| d))
        });
        b.slice(agent, t)
    }

    /// Agent ids named by these tasks that the fleet knows nothing of
    /// (neither held nor remembered gone): with breakdowns by agent,
    /// `poll` reads them before the tasks count, so that a task of an
    /// agent created since the last listing counts under its values.
    pub fn unknown_agents<'a>(&self, tasks: impl IntoIterator<Item = &'a Task>) -> Vec<String> {
        if !self.keeps_gone() {
            return Vec::new();
        }
        let mut out: Vec<String> = tasks
            .into_iter()
            .filter(|t| t.status != TaskStatus::Pending)
            .filter_map(|t| t.agent_id.as_deref())
            .filter(|id| !self.agent_by_id.contains_key(*id) && !self.dims_gone.contains_key(*id))
            .map(str::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// An agent read on its own (`GET /agents/{id}`) for its breakdown
    /// values; `None`: the API does not know it (404), so its tasks count
    /// without agent values, and it is not asked for again for a while.
    pub fn learn_agent(&mut self, id: &str, agent: Option<&Agent>) {
        let now = self
            .api_time
            .map_or(Timestamp::from_micros(0), |t| t.latest);
        // An answer for another id is not this agent's.
        if let Some(a) = agent.filter(|a| a.id == id) {
            self.apply_agent_event(a, false);
        }
        // Not taken in (404, another id, a stamp refused, deleted): its
        // tasks count without agent values and it is not asked again for
        // a while, else every sync would spend its lookups on it.
        if !self.agent_by_id.contains_key(id) && !self.dims_gone.contains_key(id) {
            let empty: AgentDims = Arc::from(Vec::new());
            self.dims_gone.insert(id.into(), (empty, now));
        }
    }

    /// A fleet of a workspace whose API read `api` at the start: it counts
    /// what finishes after `api.latest` (nothing that finished before the
    /// start, whatever the clocks), and reports `host_start` as the start
    /// of its counters (the host's clock, as Prometheus and OTLP read it).
    pub fn starting(api: ApiTime, host_start: Timestamp, limits: FleetLimits) -> Self {
        let mut f = Fleet::new(api.latest);
        f.counting_since = host_start;
        f.slot_since = host_start;
        f.api_time = Some(api);
        f.limits = limits;
        if !api.confirmed() {
            f.provisional_start = Some(api.host);
        }
        f
    }

    /// The API's time now, before applying what was just read. While the
    /// start was judged on an unconfirmed clock (no `Date` yet, or one
    /// answer's word), the floor at start follows the clock's best word,
    /// until two answers agree.
    pub fn set_api_time(&mut self, t: ApiTime) {
        self.api_time = Some(t);
        if let Some(host_start) = self.provisional_start {
            if t.answers > 0 {
                self.floor = t.latest_at(host_start).max(self.pruned_to);
            }
            if t.confirmed() {
                self.provisional_start = None;
            }
        }
    }

    /// An object of a listing or an event that could not be read at all
    /// (`Malformed`): counted and logged like any refused one.
    pub fn reject_malformed(&mut self, m: &crate::api::types::Malformed) {
        let reason = REJECT_REASONS
            .iter()
            .find(|r| **r == m.reason)
            .copied()
            .unwrap_or("malformed");
        let resource = RESOURCES
            .iter()
            .find(|r| **r == m.resource)
            .copied()
            .unwrap_or("tasks");
        // What is wrong (serde's words: a field and a type, no value),
        // for whoever follows the warnings of `reject` down.
        tracing::debug!(resource, reason, detail = %m.detail, "an object from the ClawMesh API could not be read");
        self.reject(resource, reason, m.id.as_deref().unwrap_or("(unreadable)"));
    }

    fn reject(&mut self, resource: &'static str, reason: &'static str, id: &str) {
        let n = self
            .counters
            .rejected
            .entry((resource, reason))
            .or_default();
        *n = n.saturating_add(1);
        // The 1st, 2nd, 4th, 8th ... of a kind: a flood cannot flood the log.
        if n.is_power_of_two() {
            tracing::warn!(
                resource,
                reason,
                id = %crate::text::shorten(id, 64),
                refused_so_far = *n,
                "an object from the ClawMesh API was refused (future_timestamp: not applied; invalid_number: applied without the invalid value; invalid_text: applied with U+FFFD for text that is not Unicode; invalid_field, malformed: not readable, skipped)"
            );
        }
    }

    /// Names an instant too far ahead of the API's own clock to be true.
    fn implausible(&self, latest: Timestamp) -> bool {
        self.api_time
            .is_some_and(|t| latest > t.latest.saturating_add(self.limits.max_timestamp_lead))
    }

    /// Forget gone agents' values past their horizon.
    fn forget_gone(&mut self, now: Timestamp) {
        let forget = now.saturating_sub(DIMS_GONE_TTL);
        self.dims_gone.retain(|_, (_, at)| *at > forget);
        let gone = &self.dims_gone;
        self.models_gone.retain(|id, _| gone.contains_key(id));
    }

    /// Replace the agents with a complete listing.
    pub fn apply_agent_listing(&mut self, agents: &[Agent]) {
        self.apply_agent_listing_at(agents, Timestamp::from_micros(i64::MAX), Duration::ZERO);
    }

    /// Replace the agents with a complete listing that started at
    /// `listing_start` (the API's time, its latest bound), keeping what
    /// webhook events told that the listing could not show yet: a copy
    /// newer than the listed one, an agent created within `lag` of the
    /// start, a deletion the listing predates.
    ///
    /// Ties: a listed copy replaces a held one of the same `updated_at`
    /// (the listing is read later than what it replaces, and the next
    /// listing repairs a wrong guess); a deletion beats every copy of the
    /// same `updated_at`.
    pub fn apply_agent_listing_at(
        &mut self,
        agents: &[Agent],
        listing_start: Timestamp,
        lag: Duration,
    ) {
        self.apply_agent_listing_keeping(agents, &[], listing_start, lag);
    }

    /// [`Fleet::apply_agent_listing_at`] of a listing in which the agents
    /// `unreadable` were listed but could not be read (counted by
    /// `reject_malformed`): what was known of them stands, as it does for
    /// one refused for its timestamps, rather than read as deleted.
    pub fn apply_agent_listing_keeping(
        &mut self,
        agents: &[Agent],
        unreadable: &[&str],
        listing_start: Timestamp,
        lag: Duration,
    ) {
        let recent = listing_start.saturating_sub(lag);
        if self.keeps_gone() {
            // Values of agents gone past the horizon free their places
            // before this listing's agents take theirs.
            let now = self.api_time.map_or(listing_start, |t| t.latest);
            self.forget_gone(now);
            self.expire_breakdown();
        }
        let mut old = std::mem::take(&mut self.agent_by_id);
        let mut next = HashMap::with_capacity(agents.len());
        for id in unreadable {
            if let Some(e) = old.remove(*id) {
                next.insert((*id).into(), e);
            }
        }
        for a in agents {
            if a.text_repaired {
                self.reject("agents", "invalid_text", &a.id);
            }
            if self.implausible(a.updated_at.max(a.created_at)) {
                self.reject("agents", "future_timestamp", &a.id);
                // What was known of it stands.
                if let Some(e) = old.remove(a.id.as_str()) {
                    next.insert(a.id.as_str().into(), e);
                }
                continue;
            }
            if self
                .agent_gone
                .get(a.id.as_str())
                .is_some_and(|(d, _)| *d >= a.updated_at)
            {
                continue;
            }
            let seen = match old.remove(a.id.as_str()) {
                Some(e) if e.updated_at > a.updated_at => e,
                _ => self.seen(a, listing_start),
            };
            next.insert(a.id.as_str().into(), seen);
        }
        // An agent missing from a complete listing is deleted, unless it was
        // created too recently to be visible in it (a webhook told of it
        // first). Its last change being recent says nothing: a listing
        // shows every agent whose creation is visible, in some state.
        let (kept, went): (Vec<_>, Vec<_>) =
            old.into_iter().partition(|(_, e)| e.created_at > recent);
        next.extend(kept);
        self.agent_gone.retain(|_, (_, came)| *came > recent);
        if self.keeps_gone() {
            let now = self.api_time.map_or(listing_start, |t| t.latest);
            for (id, e) in went {
                self.models_gone.insert(id.clone(), e.model);
                self.dims_gone.insert(id, (e.dims, now));
            }
            self.forget_gone(now);
        }
        self.agent_by_id = next;
        self.agents = AGENT_STATUSES.iter().map(|s| (s.to_string(), 0)).collect();
        for e in self.agent_by_id.values() {
            *self.agents.entry(e.status.clone()).or_default() += 1;
        }
        self.agents_known = true;
    }

    /// Apply an agent as a webhook event carried it (created, changed, or
    /// `deleted`). A copy older than the one known changes nothing; one of
    /// the same `updated_at` does (an event is news, and a deletion must
    /// not be lost for carrying the agent's last `updated_at`).
    pub fn apply_agent_event(&mut self, a: &Agent, deleted: bool) {
        if a.text_repaired {
            self.reject("agents", "invalid_text", &a.id);
        }
        if self.implausible(a.updated_at.max(a.created_at)) {
            self.reject("agents", "future_timestamp", &a.id);
            return;
        }
        if self
            .agent_gone
            .get(a.id.as_str())
            .is_some_and(|(d, _)| *d >= a.updated_at)
        {
            return;
        }
        if let Some(e) = self.agent_by_id.get(a.id.as_str()) {
            if e.updated_at > a.updated_at {
                return;
            }
            if let Some(n) = self.agents.get_mut(&e.status) {
                *n = n.saturating_sub(1);
            }
        }
        if deleted {
            if let Some(e) = self.agent_by_id.remove(a.id.as_str()) {
                if self.keeps_gone() {
                    let now = self.api_time.map_or(a.updated_at, |t| t.latest);
                    self.models_gone.insert(a.id.as_str().into(), e.model);
                    self.dims_gone.insert(a.id.as_str().into(), (e.dims, now));
                }
            }
            let came = self.api_time.map_or(a.updated_at, |t| t.latest);
            self.agent_gone
                .insert(a.id.as_str().into(), (a.updated_at, came.max(a.updated_at)));
            return;
        }
        let seen_at = self.api_time.map_or(a.updated_at, |t| t.latest);
        let seen = self.seen(a, seen_at);
        *self.agents.entry(seen.status.clone()).or_default() += 1;
        self.dims_gone.remove(a.id.as_str());
        self.models_gone.remove(a.id.as_str());
        self.agent_by_id.insert(a.id.as_str().into(), seen);
    }

    /// What the fleet holds of an agent read at `seen_at` (the API's time).
    fn seen(&mut self, a: &Agent, seen_at: Timestamp) -> AgentSeen {
        AgentSeen {
            status: self.agent_names.admit(&a.status),
            updated_at: a.updated_at,
            created_at: a.created_at,
            last_heartbeat_at: a.last_heartbeat_at,
            // A listing without a start (tests) judges no heartbeat.
            seen_at: if seen_at == Timestamp::from_micros(i64::MAX) {
                a.updated_at
                    .max(a.last_heartbeat_at.unwrap_or(a.updated_at))
            } else {
                seen_at
            },
            dims: self.agent_dims(a),
            model: agent_model(a),
        }
    }

    /// Apply one sighting of a task, from any source. Idempotent: the same
    /// sighting applied twice changes nothing the second time. Order-proof:
    /// a copy that is not further along (`Task::progress`) than the one
    /// held never moves the task, and a value that becomes known in any
    /// copy is counted once.
    pub fn apply_task(&mut self, t: &Task) -> Applied {
        if self.implausible(t.latest_stamp()) {
            self.reject("tasks", "future_timestamp", &t.id);
            return Applied::Rejected;
        }
        if t.metrics.invalid {
            // Applied without the invalid values (they read as unknown).
            self.reject("tasks", "invalid_number", &t.id);
        }
        if t.text_repaired {
            // Applied with U+FFFD where the text was not Unicode.
            self.reject("tasks", "invalid_text", &t.id);
        }
        if let Some(mut c) = self.ledger.get(t.id.as_str()).copied() {
            // Terminal is final; a later copy only moves outputs, or brings
            // values that were null: those count now, once. A stale open
            // copy (a webhook retry of `task.started`, delivered out of
            // order) carries no final values: it must neither count its
            // partial usage nor settle the failure code.
            let waiting = !c.marks.code;
            self.count_known(&mut c.marks, t, t.status.is_terminal(), c.slice);
            if waiting && c.marks.code {
                self.codes_waiting -= 1;
            }
            self.ledger.insert(t.id.as_str().into(), c);
            return Applied::Unchanged;
        }
        if t.status.is_terminal() {
            return self.finish(t);
        }
        let progress = t.progress();
        if let Some(mut o) = self.open.remove(t.id.as_str()) {
            let moved = progress.further_than(&o.progress);
            if moved {
                o.status = self.admit_status(&t.status);
                o.progress = progress;
                o.slice = self.slice_of(t);
            }
            self.count_known(&mut o.marks, t, false, o.slice);
            if self.settled(&o.status, o.progress.updated_at) {
                self.unlisted
                    .insert(t.id.as_str().into(), (o.marks, o.progress));
            } else {
                self.open.insert(t.id.clone(), o);
            }
            return if moved {
                Applied::Updated
            } else {
                Applied::Unchanged
            };
        }
        let mut marks = Marks::default();
        if let Some((m, p)) = self.unlisted.remove(t.id.as_str()) {
            if !progress.further_than(&p) {
                // A stale copy of a task already gone from the open set.
                let mut m = m;
                let slice = self.slice_of(t);
                self.count_known(&mut m, t, false, slice);
                self.unlisted.insert(t.id.as_str().into(), (m, p));
                return Applied::Unchanged;
            }
            marks = m;
        }
        let slice = self.slice_of(t);
        self.count_known(&mut marks, t, false, slice);
        let status = self.admit_status(&t.status);
        if self.settled(&status, t.updated_at) {
            self.unlisted
                .insert(t.id.as_str().into(), (marks, progress));
            return Applied::Unchanged;
        }
        self.open.insert(
            t.id.clone(),
            OpenTask {
                status,
                created_at: t.created_at,
                progress,
                marks,
                slice,
            },
        );
        Applied::Updated
    }

    /// A status as held: the contract's own, or an unknown one bounded like
    /// a label value (past the cap, or too long, "other").
    fn admit_status(&mut self, s: &TaskStatus) -> TaskStatus {
        match s {
            TaskStatus::Other(name) => TaskStatus::Other(self.open_names.admit(name)),
            known => known.clone(),
        }
    }

    /// A task in an unknown status unchanged for longer than the limit:
    /// it no longer counts as open.
    fn settled(&self, status: &TaskStatus, updated_at: Timestamp) -> bool {
        settled_by(self.unknown_cutoff(), status, updated_at)
    }

    /// Tasks in unknown statuses last changed before this stop counting as
    /// open; `None` without an API clock.
    fn unknown_cutoff(&self) -> Option<Timestamp> {
        self.api_time
            .map(|now| now.earliest.saturating_sub(self.limits.unknown_status_ttl))
    }

    /// Count what `t` makes known for the first time: its queue time (once
    /// it started after the floor), and for a terminal copy its run time,
    /// tokens and failure code.
    fn count_known(&mut self, marks: &mut Marks, t: &Task, terminal: bool, slice: u32) {
        let floor = self.floor;
        let m = &t.metrics;
        let absurd = |v: Option<f64>| v.is_some_and(|v| !(0.0..=MAX_DURATION_SECONDS).contains(&v));
        if (!marks.queue && absurd(m.queue_seconds))
            || (terminal && !marks.run && absurd(m.run_seconds))
        {
            self.reject("tasks", "invalid_number", &t.id);
        }
        if !marks.queue {
            match t.started_time() {
                Some(s) if s <= floor => marks.queue = true,
                Some(_) => {
                    if let Some(q) = m.queue_seconds {
                        if !absurd(Some(q)) {
                            self.add(slice, |c| c.queue_seconds.observe(q));
                        }
                        marks.queue = true;
                    }
                }
                None => {}
            }
        }
        if !terminal {
            return;
        }
        if let (false, Some(v)) = (marks.run, m.run_seconds) {
            if !absurd(Some(v)) {
                let e = Exemplar::new(t.id.as_str(), v, host_now());
                self.add(slice, |c| c.run_seconds.observe_as(v, e.as_ref()));
            }
            marks.run = true;
        }
        if let (false, Some(v)) = (marks.input, m.input_tokens) {
            self.add(slice, |c| c.input_tokens = c.input_tokens.saturating_add(v));
            self.price(t, slice, 0, v);
            marks.input = true;
        }
        if let (false, Some(v)) = (marks.output, m.output_tokens) {
            self.add(slice, |c| {
                c.output_tokens = c.output_tokens.saturating_add(v)
            });
            self.price(t, slice, 1, v);
            marks.output = true;
        }
        if !marks.code {
            if t.status != TaskStatus::Failed {
                marks.code = true;
            } else if let Some(code) = t.error.as_ref().and_then(|e| e.code.as_deref()) {
                let code = self.failure_codes.admit(code);
                self.add(slice, |c| *c.failures.entry(code.clone()).or_default() += 1);
                marks.code = true;
            }
        }
    }

    fn finish(&mut self, t: &Task) -> Applied {
        let open = self.open.remove(t.id.as_str()).map(|o| o.marks);
        let unlisted = self.unlisted.remove(t.id.as_str()).map(|(m, _)| m);
        let mut marks = open.or(unlisted).unwrap_or_default();
        let finished_at = t.finished_time();
        if finished_at <= self.floor {
            return Applied::BeforeFloor;
        }
        let slice = self.slice_of(t);
        let status = t.status.name();
        let failed = (t.status == TaskStatus::Failed)
            .then(|| Exemplar::new(t.id.as_str(), 1.0, host_now()))
            .flatten();
        self.add(slice, |c| {
            *c.finished.entry(status.to_string()).or_default() += 1;
            if failed.is_some() {
                c.last_failed.0.clone_from(&failed);
            }
        });
        // A task created and finished between two polls was never open
        // here: its queue time is observed now, once.
        self.count_known(&mut marks, t, true, slice);
        if !marks.code {
            self.codes_waiting += 1;
        }
        self.ledger.insert(
            t.id.as_str().into(),
            Counted {
                finished_at,
                marks,
                slice,
            },
        );
        Applied::Finished
    }

    /// After complete listings of open tasks in the statuses `asked`,
    /// started at `listing_start` (the API's time, its latest bound):
    /// forget open tasks of those statuses that the listings did not show,
    /// unless they changed too recently to be visible in them (`lag`). A
    /// task missing from them has finished (the incremental sync counts
    /// it) or been deleted.
    pub fn retain_open(
        &mut self,
        seen: &HashSet<String>,
        asked: &HashSet<String>,
        listing_start: Timestamp,
        lag: Duration,
    ) {
        let keep_after = listing_start.saturating_sub(lag);
        let unlisted = &mut self.unlisted;
        self.open.retain(|id, o| {
            let keep = seen.contains(id)
                || o.progress.updated_at > keep_after
                || !asked.contains(o.status.name());
            if !keep {
                unlisted.insert(id.as_str().into(), (o.marks, o.progress));
            }
            keep
        });
    }

    /// Raise the counting floor (never lowers it) and drop ledger entries at
    /// or below it: memory stays bounded by the tasks finished since then.
    /// A failure still without its code is counted under `unknown` as its
    /// entry goes.
    pub fn raise_floor(&mut self, floor: Timestamp) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        self.pruned_to = self.pruned_to.max(floor);
        let mut unknown = Vec::new();
        self.ledger.retain(|_, c| {
            let keep = c.finished_at > floor;
            if !keep && !c.marks.code {
                unknown.push(c.slice);
            }
            keep
        });
        self.count_unknown_codes(unknown);
        // Such a task changed last at or before the floor: a copy of it can
        // only be one that is not counted again anyway.
        self.unlisted.retain(|_, (_, p)| p.updated_at > floor);
    }

    /// Count under `unknown` the failures of these slices whose code
    /// never came.
    fn count_unknown_codes(&mut self, slices: Vec<u32>) {
        self.codes_waiting = self.codes_waiting.saturating_sub(slices.len());
        for slice in slices {
            self.add(slice, |c| {
                *c.failures.entry(UNKNOWN_CODE.to_string()).or_default() += 1
            });
        }
    }

    /// Time-based settling, after each sync: failures whose code stayed
    /// null past the grace count under `unknown`; tasks in unknown
    /// statuses unchanged past their limit stop counting as open.
    pub fn settle(&mut self) {
        let Some(now) = self.api_time else { return };
        if self.codes_waiting > 0 {
            let due = now.earliest.saturating_sub(self.limits.failure_code_grace);
            let mut unknown = Vec::new();
            for c in self.ledger.values_mut() {
                if !c.marks.code && c.finished_at < due {
                    c.marks.code = true;
                    unknown.push(c.slice);
                }
            }
            self.count_unknown_codes(unknown);
        }
        let cutoff = self.unknown_cutoff();
        let unlisted = &mut self.unlisted;
        self.open.retain(|id, o| {
            let settled = settled_by(cutoff, &o.status, o.progress.updated_at);
            if settled {
                unlisted.insert(id.as_str().into(), (o.marks, o.progress));
            }
            !settled
        });
    }

    pub fn floor(&self) -> Timestamp {
        self.floor
    }

    /// Agents per status from the last complete listing; `None` before one.
    pub fn agents(&self) -> Option<&BTreeMap<String, u64>> {
        self.agents_known.then_some(&self.agents)
    }

    /// Open tasks per status; pending and running always present, and an
    /// unknown status once seen (at 0 when no task is in it any more, so
    /// its series does not vanish).
    pub fn open_tasks(&self) -> BTreeMap<String, u64> {
        let mut counts: BTreeMap<String, u64> = OPEN_TASK_STATUSES
            .iter()
            .copied()
            .chain(self.open_names.admitted())
            .map(|s| (s.to_string(), 0))
            .collect();
        for o in self.open.values() {
            *counts.entry(o.status.name().to_string()).or_default() += 1;
        }
        counts
    }

    /// The statuses a reconciliation lists: pending and running, then the
    /// unknown ones of open tasks held, by their admitted names (at most
    /// [`MAX_UNKNOWN_NAMES`], each of bounded length; "other" is not a
    /// status to ask for).
    pub fn open_statuses(&self) -> (Vec<String>, Vec<String>) {
        let known = OPEN_TASK_STATUSES.iter().map(|s| s.to_string()).collect();
        let unknown: BTreeSet<String> = self
            .open
            .values()
            .filter_map(|o| match &o.status {
                TaskStatus::Other(n) if n != bounded::OTHER => Some(n.clone()),
                _ => None,
            })
            .collect();
        (known, unknown.into_iter().collect())
    }

    /// How long a task in an unknown status counts as open.
    pub fn unknown_status_ttl(&self) -> Duration {
        self.limits.unknown_status_ttl
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

/// Whether a task in `status`, last changed at `updated_at`, is past the
/// unknown-status limit `cutoff`.
fn settled_by(cutoff: Option<Timestamp>, status: &TaskStatus, updated_at: Timestamp) -> bool {
    matches!(status, TaskStatus::Other(_)) && cutoff.is_some_and(|c| updated_at < c)
}

#[cfg(test)]
mod tests;

/// Statuses whose agents are meant to heartbeat (the contract's active).
pub const HEARTBEAT_STATUSES: [&str; 2] = ["idle", "busy"];

impl Fleet {
    /// `now` is the API's time (an estimate), against which ages of API
    /// timestamps are measured.
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
                .map(|c| now.micros().saturating_sub(c.micros()).max(0) as f64 / 1e6)
                .unwrap_or(0.0),
            counters: self.counters.clone(),
            counting_since: self.counting_since.as_secs_f64(),
            slot_since: self.slot_since.as_secs_f64(),
            ledger_len: self.ledger.len(),
            open_len: self.open.len(),
            health,
            api,
            otlp: None,
            webhook: None,
            dims: self
                .breakdown
                .as_ref()
                .map(|b| b.names())
                .unwrap_or_default(),
            agent_groups: self.agent_groups(),
            task_groups: self.task_groups(),
            heartbeats: self.heartbeats(),
            breakdown: self.breakdown.as_ref().map(|b| BreakdownInfo {
                values: b.value_counts(),
                combinations: b.slices(),
            }),
            baseline: None,
            priced: !self.prices.is_empty(),
            budgets: self.budgets.clone(),
            api_now: self.api_time.map(|t| t.latest.micros()),
        }
    }

    /// Whether an agent meant to heartbeat has not for longer than the
    /// limit, as of when its copy was read.
    fn silent(&self, e: &AgentSeen) -> bool {
        if !HEARTBEAT_STATUSES.contains(&e.status.as_str()) {
            return false;
        }
        // Never heartbeated: judged from when it last changed (an agent
        // that just became idle may not have sent its first one yet).
        // A heartbeat further ahead of the API's clock than any stamp is
        // believed (like a future updated_at) is none.
        let lead = e.seen_at.saturating_add(self.limits.max_timestamp_lead);
        let last = e
            .last_heartbeat_at
            .filter(|h| *h <= lead)
            .unwrap_or(e.updated_at);
        e.seen_at > last.saturating_add(self.limits.heartbeat_stale_after)
    }

    fn agent_groups(&self) -> Vec<AgentGroup> {
        if !self.agents_known {
            return Vec::new();
        }
        let zeros = |names: &[&str]| -> BTreeMap<String, u64> {
            names.iter().map(|s| (s.to_string(), 0)).collect()
        };
        let mut groups: BTreeMap<Vec<Arc<str>>, AgentGroup> = BTreeMap::new();
        for e in self.agent_by_id.values() {
            let key = Breakdown::agent_key(&e.dims);
            let g = groups.entry(key).or_insert_with(|| AgentGroup {
                by: Vec::new(),
                statuses: zeros(&AGENT_STATUSES),
                silent: zeros(&HEARTBEAT_STATUSES),
            });
            *g.statuses.entry(e.status.clone()).or_default() += 1;
            if self.silent(e) {
                *g.silent.entry(e.status.clone()).or_default() += 1;
            }
        }
        let Some(b) = &self.breakdown else {
            // One group of every agent, its unknown statuses as the
            // workspace's (still at 0 when no agent is in one now).
            let mut g = groups.into_values().next().unwrap_or_else(|| AgentGroup {
                by: Vec::new(),
                statuses: BTreeMap::new(),
                silent: zeros(&HEARTBEAT_STATUSES),
            });
            g.statuses = self.agents.clone();
            return vec![g];
        };
        if groups.is_empty() {
            // No agent: the zeros still render, as without breakdowns.
            groups.insert(
                Vec::new(),
                AgentGroup {
                    by: Vec::new(),
                    statuses: zeros(&AGENT_STATUSES),
                    silent: zeros(&HEARTBEAT_STATUSES),
                },
            );
        }
        groups
            .into_iter()
            .map(|(k, mut g)| {
                g.by = b.values_of(&k);
                g
            })
            .collect()
    }

    fn task_groups(&self) -> Vec<TaskGroup> {
        let Some(b) = &self.breakdown else {
            return vec![TaskGroup {
                by: Vec::new(),
                counters: self.counters.clone(),
                open: self.open_tasks(),
            }];
        };
        let mut open: Vec<BTreeMap<String, u64>> = (0..b.slices())
            .map(|_| {
                OPEN_TASK_STATUSES
                    .iter()
                    .map(|s| (s.to_string(), 0))
                    .collect()
            })
            .collect();
        for o in self.open.values() {
            if let Some(m) = open.get_mut(o.slice as usize) {
                *m.entry(o.status.name().to_string()).or_default() += 1;
            }
        }
        b.counters
            .iter()
            .zip(open)
            .enumerate()
            .map(|(i, (c, open))| TaskGroup {
                by: b.values_of(b.key(i as u32)),
                counters: c.clone(),
                open,
            })
            .collect()
    }

    fn heartbeats(&self) -> Vec<AgentHeartbeat> {
        let max = self.limits.per_agent_series;
        if max == 0 {
            return Vec::new();
        }
        let mut ids: Vec<&Box<str>> = self.agent_by_id.keys().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let e = &self.agent_by_id[id];
                let at = e.last_heartbeat_at?;
                Some(AgentHeartbeat {
                    id: id.to_string(),
                    status: e.status.clone(),
                    by: match &self.breakdown {
                        Some(b) => b.values_of(&Breakdown::agent_key(&e.dims)),
                        None => Vec::new(),
                    },
                    at: at.as_secs_f64(),
                })
            })
            .take(max)
            .collect()
    }
}

/// When an exemplar was counted: the exporter's clock (Unix seconds), so
/// that a scraper sees a bucket's exemplars in order whatever the API's.
fn host_now() -> f64 {
    Timestamp::host_now().as_secs_f64()
}
