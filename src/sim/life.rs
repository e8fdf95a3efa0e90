//! The fleet's life: seeding, and the tick that applies status changes.
//! Every change is a new version that becomes visible after a random lag.

use super::config::{Incident, LabelSpread, SimConfig, MAX_FILL_DELAY, SPEND_SPIKE_FACTOR};
use super::latitude::Latitude;
use super::model::{
    stamp_with, Agent, AgentConfig, AgentConstraints, AgentOut, Metrics, Output, Store, Task,
    TaskError, Transition, Ts, MICROS,
};
use super::pricing::PriceBook;
use super::truth::FleetCounters;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

const DAY: i64 = 86_400 * MICROS;
/// Tasks leave history this long after they finish (standard plans).
const RETENTION: i64 = 30 * DAY;
const TEAMS: [&str; 5] = ["payments", "growth", "support", "infra", "research"];
/// Token range of a run to its end.
type Tokens = (u64, u64);
/// (provider, model, input tokens, output tokens) of a run that ends: agents
/// carry long contexts, so input dwarfs output; the reasoning model writes
/// more; the long-context model reads more; the local model is given
/// smaller jobs. Ranges are half-open; a cancelled run uses a quarter.
const MODELS: [(&str, &str, Tokens, Tokens); 4] = [
    (
        "anthropic",
        "claude-sonnet-4",
        (2_000, 60_000),
        (200, 6_000),
    ),
    ("openai", "gpt-5", (1_500, 40_000), (300, 8_000)),
    ("google", "gemini-2.5-pro", (3_000, 80_000), (200, 5_000)),
    ("local", "llama-3.3-70b", (500, 8_000), (100, 2_000)),
];

/// The input and output token ranges of a run on `model`.
fn token_ranges(model: &str) -> (Tokens, Tokens) {
    MODELS
        .iter()
        .find(|m| m.1 == model)
        .map_or(((200, 20_000), (50, 4_000)), |m| (m.2, m.3))
}
const SKILLS: [&str; 6] = [
    "web_search",
    "code",
    "email",
    "browser",
    "files",
    "calendar",
];
/// Failure codes with uneven weights.
const FAILURES: [(&str, u32, &str); 5] = [
    ("timeout", 35, "the task exceeded its timeout"),
    ("model_error", 30, "the model provider returned an error"),
    ("skill_error", 15, "a skill failed"),
    (
        "invalid_input",
        12,
        "the instructions could not be processed",
    ),
    ("internal", 8, "internal error"),
];
const UNKNOWN_AGENT_STATUSES: [&str; 2] = ["hibernating", "upgrading"];

/// Whole milliseconds between two instants, rounded.
fn millis(from_us: i64, to_us: i64) -> i64 {
    ((to_us - from_us) + 500).div_euclid(1000)
}

/// Milliseconds-rounded seconds between two instants, as metrics give them.
fn secs_ms(from_us: i64, to_us: i64) -> f64 {
    millis(from_us, to_us) as f64 / 1000.0
}

/// Values a later version fills in (late metrics, late failure codes).
#[derive(Debug, Default)]
struct Fill {
    task: String,
    queue_ms: Option<i64>,
    run_ms: Option<i64>,
    input: Option<u64>,
    output: Option<u64>,
    error: Option<TaskError>,
}

pub struct Fleet {
    pub agents: Store<Agent>,
    pub tasks: Store<Task>,
    /// Ids of agents not deleted (true state).
    pub live_agents: Vec<String>,
    /// (created_at, id) of pending tasks (true state).
    pub pending: BTreeSet<(i64, String)>,
    pub running: Vec<String>,
    /// (visible_at, is_task, id): versions to prune once visible.
    vis_queue: BinaryHeap<Reverse<(i64, bool, String)>>,
    pub max_visible_us: i64,
    /// (due, task id): outputs to attach late.
    late_outputs: BinaryHeap<Reverse<(i64, String)>>,
    /// (due, fill number): values to fill in late, with the fills by number.
    late_fills: BinaryHeap<Reverse<(i64, u64)>>,
    fills: HashMap<u64, Fill>,
    next_fill: u64,
    /// (due, task id): `awaiting_input` tasks to return to running.
    resumes: BinaryHeap<Reverse<(i64, String)>>,
    /// Tasks now `expired` and `awaiting_input` (true state).
    pub expired: usize,
    pub awaiting: usize,
    latitude: Latitude,
    failed_share: f64,
    cancelled_share: f64,
    /// (leaves history at, task id) of terminal tasks.
    expiries: BinaryHeap<Reverse<(i64, String)>>,
    pub rng: StdRng,
    change_budget: f64,
    pub paused: bool,
    pub counters: FleetCounters,
    /// The same counters by breakdown (see `truth::Dims`).
    pub counters_by: BTreeMap<super::truth::Dims, FleetCounters>,
    /// Every agent's breakdown values, kept after it is deleted (its
    /// tasks' late values still count under them).
    agent_dims: HashMap<String, (BTreeMap<String, String>, String, String)>,
    /// An incident switched on (see `Incident`).
    pub incident: Option<Incident>,
    /// The prices tokens are priced with when they are counted.
    prices: PriceBook,
    lag_max_us: i64,
    changes_per_minute: f64,
    late_output_probability: f64,
    unknown_agent_statuses: bool,
    big_every: Option<usize>,
    label_spread: Option<LabelSpread>,
    new_tasks: usize,
    target_pending: usize,
    target_running: usize,
    big: Arc<str>,
    start_us: i64,
    /// The instant of the tick in progress: nothing is visible before it
    /// is made, whatever its (rounded-down) `updated_at` says.
    now_us: i64,
    /// Webhook events of the changes since the last drain; `None` while
    /// webhook delivery is off.
    pub events: Option<Vec<super::webhooks::SimEvent>>,
}

impl Fleet {
    /// A seeded fleet as of `start_us`: every seeded timestamp is earlier.
    pub fn new(cfg: &SimConfig, start_us: i64) -> Fleet {
        let target_open = (cfg.agents * 5 / 100).max(2);
        let mut f = Fleet {
            agents: Store::default(),
            tasks: Store::default(),
            live_agents: Vec::new(),
            pending: BTreeSet::new(),
            running: Vec::new(),
            vis_queue: BinaryHeap::new(),
            max_visible_us: start_us,
            late_outputs: BinaryHeap::new(),
            late_fills: BinaryHeap::new(),
            fills: HashMap::new(),
            next_fill: 0,
            resumes: BinaryHeap::new(),
            expired: 0,
            awaiting: 0,
            latitude: cfg.latitude.clone(),
            failed_share: cfg.failed_share.clamp(0.0, 1.0),
            cancelled_share: cfg.cancelled_share.clamp(0.0, 1.0),
            expiries: BinaryHeap::new(),
            rng: StdRng::seed_from_u64(cfg.seed),
            change_budget: 0.0,
            paused: false,
            counters: FleetCounters::default(),
            counters_by: BTreeMap::new(),
            agent_dims: HashMap::new(),
            incident: None,
            // Built in code by tests and the demo (no flag reads a list):
            // a bad one is a mistake of the caller, said plainly.
            prices: PriceBook::new(&cfg.prices)
                .unwrap_or_else(|e| panic!("SimConfig.prices is refused: {e}")),
            lag_max_us: cfg.visibility_lag_max.as_micros() as i64,
            changes_per_minute: cfg.task_changes_per_minute,
            late_output_probability: cfg.late_output_probability,
            unknown_agent_statuses: cfg.unknown_agent_statuses,
            big_every: cfg.big_instructions_every.filter(|n| *n > 0),
            label_spread: cfg.label_spread,
            new_tasks: 0,
            target_pending: (target_open * 2 / 5).max(1),
            target_running: (target_open - target_open * 2 / 5).max(1),
            big: Arc::from(big_instructions()),
            start_us,
            // Seeded history is visible from its stamps, as before the start.
            now_us: i64::MIN,
            events: None,
        };
        f.seed(cfg, start_us);
        f.now_us = start_us;
        f.set_incident(cfg.incident.clone(), start_us);
        f
    }

    /// A stamp for `now_us`, later than `after_us` (at or after it under
    /// whole-second stamps).
    fn stamp(&mut self, now_us: i64, after_us: i64) -> Ts {
        let whole = self.latitude.whole_second_stamps;
        stamp_with(&mut self.rng, now_us, after_us, whole)
    }

    /// A stamp for a change of the living fleet: later than `after_us` and
    /// than the start, so "changed since start" is exact despite rounding
    /// (at or after both under whole-second stamps).
    fn live_stamp(&mut self, now_us: i64, after_us: i64) -> Ts {
        self.stamp(now_us, after_us.max(self.start_us))
    }

    /// Schedules a task that just became terminal to leave history.
    fn retire_later(&mut self, t: &Task) {
        if let Some(f) = t.finished_at {
            self.expiries
                .push(Reverse((f.us + RETENTION, t.id.clone())));
        }
    }

    fn lag(&mut self) -> i64 {
        if self.latitude.lag_always_max {
            return self.lag_max_us;
        }
        self.rng.random_range(0..=self.lag_max_us)
    }

    /// When a change stamped `stamp_us` becomes visible: its stamp plus the
    /// lag, and never before it is made (a stamp rounded down to the
    /// second would otherwise make it visible "in the past", and the
    /// ground truth's `visible_by` would come before the change).
    fn visible_at(&mut self, stamp_us: i64) -> i64 {
        (stamp_us + self.lag()).max(self.now_us)
    }

    /// Visibility is measured from `updated_at` (not from the wall clock):
    /// the contract promises a change visible within 5 s of its `updated_at`,
    /// and `updated_at` is rounded down by up to a second.
    fn commit_task(&mut self, t: Task) {
        if self.events.is_some() {
            let prev = self
                .tasks
                .current(&t.id)
                .map(|p| (p.status.clone(), p.outputs.len()));
            let kind = match prev {
                None => "task.created".to_string(),
                Some((p, n)) if p == t.status && n < t.outputs.len() => {
                    "task.output_received".to_string()
                }
                // Late metrics or a late failure code: a type of its own
                // (the contract: new types may be added).
                Some((p, _)) if p == t.status => "task.updated".to_string(),
                Some((p, _)) if p == "awaiting_input" && t.status == "running" => {
                    "task.resumed".to_string()
                }
                Some(_) if t.status == "running" => "task.started".to_string(),
                Some(_) => format!("task.{}", t.status),
            };
            let object = serde_json::to_value(&t).expect("serialisable");
            self.emit(kind, object, t.updated_at.us);
        }
        let vis = self.visible_at(t.updated_at.us);
        self.max_visible_us = self.max_visible_us.max(vis);
        self.vis_queue.push(Reverse((vis, true, t.id.clone())));
        self.tasks.push(t, vis);
    }

    fn commit_agent(&mut self, a: Agent) {
        if self.events.is_some() {
            let kind = match self.agents.current(&a.id) {
                None => Some("agent.created"),
                Some(p) if p.status != a.status => Some("agent.status_changed"),
                Some(_) => None,
            };
            if let Some(kind) = kind {
                self.emit_agent(kind, &a, a.updated_at.us);
            }
        }
        let vis = self.visible_at(a.updated_at.us);
        self.max_visible_us = self.max_visible_us.max(vis);
        self.vis_queue.push(Reverse((vis, false, a.id.clone())));
        self.agents.push(a, vis);
    }

    fn emit(&mut self, kind: String, object: serde_json::Value, at_us: i64) {
        let digits = if self.latitude.whole_second_stamps {
            0
        } else {
            6
        };
        if let Some(out) = &mut self.events {
            out.push(super::webhooks::SimEvent {
                kind,
                object,
                at: Ts { us: at_us, digits },
            });
        }
    }

    fn emit_agent(&mut self, kind: &str, a: &Agent, at_us: i64) {
        let object = serde_json::to_value(AgentOut {
            agent: a,
            last_heartbeat_at: a.heartbeat_at(at_us),
        })
        .expect("serialisable");
        self.emit(kind.to_string(), object, at_us);
    }

    fn new_id(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
        loop {
            let s: String = (0..12)
                .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char)
                .collect();
            let id = format!("{prefix}_{s}");
            if !self.agents.entities.contains_key(&id) && !self.tasks.entities.contains_key(&id) {
                return id;
            }
        }
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.rng.random_range(0..xs.len())]
    }

    /// The breakdown values of a task, as the ground truth counts it.
    fn dims_of(&self, t: &Task) -> super::truth::Dims {
        let (agent_labels, provider, model) = t
            .agent_id
            .as_ref()
            .and_then(|a| self.agent_dims.get(a).cloned())
            .unwrap_or_default();
        super::truth::Dims {
            agent_labels,
            provider,
            model,
            task_labels: t.labels.clone(),
        }
    }

    /// Count into the totals and into the task's breakdown.
    fn count(&mut self, t: &Task, f: impl Fn(&mut FleetCounters)) {
        f(&mut self.counters);
        let key = self.dims_of(t);
        f(self.counters_by.entry(key).or_default());
    }

    /// Count `n` tokens of `kind` ("input" or "output") of the finished
    /// task `t`, and their spend: priced now, with the list held now, at
    /// the price in force at the task's finish (or as unpriced tokens of
    /// its provider and model).
    fn count_tokens(&mut self, t: &Task, kind: &'static str, n: u64) {
        let dims = self.dims_of(t);
        let finished = t
            .finished_at
            .expect("tokens are counted of finished tasks")
            .us;
        let price = self
            .prices
            .lookup(&dims.provider, &dims.model, finished)
            .map(|(input, output)| if kind == "input" { input } else { output });
        let day = chrono::DateTime::from_timestamp_micros(finished)
            .expect("an instant of the fleet's life")
            .format("%Y-%m-%d")
            .to_string();
        let unpriced = format!("{}/{}", dims.provider, dims.model);
        let status = t.status.clone();
        self.count(t, |c| {
            *c.tokens.entry(kind.into()).or_default() += n;
            match price {
                Some(p) => {
                    let v = u128::from(n) * p;
                    *c.spend
                        .entry(status.clone())
                        .or_default()
                        .entry(kind.into())
                        .or_default() += v;
                    *c.spend_by_finish_day.entry(day.clone()).or_default() += v;
                }
                None => {
                    *c.unpriced_tokens
                        .entry(unpriced.clone())
                        .or_default()
                        .entry(kind.into())
                        .or_default() += n
                }
            }
        });
    }

    /// Replaces the price list: tokens counted from now on are priced
    /// with it (those counted before keep their spend).
    pub fn set_prices(&mut self, prices: PriceBook) {
        self.prices = prices;
    }

    /// How many times its usual tokens a run of `t`'s agent uses: the
    /// spend spike's factor for its team's agents, else 1.
    fn token_factor(&self, t: &Task) -> u64 {
        let Some(Incident::SpendSpike { team }) = &self.incident else {
            return 1;
        };
        let agent_team = t
            .agent_id
            .as_ref()
            .and_then(|a| self.agent_dims.get(a))
            .and_then(|(labels, _, _)| labels.get("team"));
        if agent_team == Some(team) {
            SPEND_SPIKE_FACTOR
        } else {
            1
        }
    }

    fn new_agent(&mut self, created: Ts, status: &str) -> Agent {
        let id = self.new_id("agt");
        let (provider, model, _, _) = MODELS[self.rng.random_range(0..MODELS.len())];
        let skills = SKILLS
            .iter()
            .filter(|_| self.rng.random_bool(0.4))
            .map(|s| s.to_string())
            .collect();
        let mut labels = BTreeMap::new();
        let (team, env) = match self.label_spread {
            None => (
                self.pick(&TEAMS).to_string(),
                self.pick(&["prod", "prod", "staging"]).to_string(),
            ),
            Some(s) => (
                format!("team-{:02}", self.rng.random_range(0..s.teams.max(1))),
                format!("env-{:02}", self.rng.random_range(0..s.envs.max(1))),
            ),
        };
        labels.insert("team".to_string(), team);
        labels.insert("env".to_string(), env);
        self.agent_dims.insert(
            id.clone(),
            (labels.clone(), provider.to_string(), model.to_string()),
        );
        Agent {
            name: format!("{}-agent-{}", labels["team"], &id[4..8]),
            id,
            status: status.to_string(),
            labels,
            created_at: created,
            updated_at: created,
            heartbeat_phase: has_heartbeat(status).then_some(created),
            heartbeat_until: None,
            running_tasks: 0,
            config: AgentConfig {
                model_provider: provider.to_string(),
                model: model.to_string(),
                skills,
                constraints: AgentConstraints {
                    max_concurrent_tasks: self.rng.random_range(1..=4),
                    timeout_seconds: self.rng.random_range(5..=60) * 60,
                },
            },
            x_region: "eu-1",
        }
    }

    fn new_task(&mut self, created: Ts, big: bool) -> Task {
        let id = self.new_id("tsk");
        let team = self.pick(&TEAMS);
        let what = self.pick(&[
            "Summarise the open support tickets",
            "Reconcile yesterday's payouts",
            "Draft the weekly status email",
            "Triage new bug reports",
            "Research competitor pricing",
        ]);
        let mut labels = BTreeMap::new();
        labels.insert("team".to_string(), team.to_string());
        let prio = self.pick(&["low", "normal", "normal", "high"]);
        labels.insert("priority".to_string(), prio.to_string());
        Task {
            instructions: if big {
                self.big.clone()
            } else {
                Arc::from(format!("{what} for team {team}."))
            },
            id,
            agent_id: None,
            status: "pending".to_string(),
            labels,
            created_at: created,
            updated_at: created,
            started_at: None,
            finished_at: None,
            transitions: vec![Transition {
                status: "pending".to_string(),
                at: created,
            }],
            metrics: Metrics::default(),
            outputs: Vec::new(),
            error: None,
            x_region: "eu-1",
        }
    }

    fn output(&mut self) -> Output {
        let n: u32 = self.rng.random();
        Output {
            file_id: format!("file_{n:08x}"),
            name: self
                .pick(&["report.md", "summary.txt", "data.csv", "result.json"])
                .to_string(),
            size_bytes: self.rng.random_range(200..2_000_000),
        }
    }

    fn failure(&mut self) -> TaskError {
        let total: u32 = FAILURES.iter().map(|f| f.1).sum();
        let mut r = self.rng.random_range(0..total);
        for (code, w, msg) in FAILURES {
            if r < w {
                return TaskError {
                    code: Some(code.to_string()),
                    message: msg.to_string(),
                };
            }
            r -= w;
        }
        unreachable!("weights cover the range")
    }

    /// Random terminal outcome of a run: failed `failed_share`, cancelled
    /// `cancelled_share`, completed the rest (by default 91/5/4 %).
    /// Switch an incident on (or off with `None`) at `now_us`.
    pub fn set_incident(&mut self, incident: Option<Incident>, now_us: i64) {
        let team_of = |i: &Option<Incident>| match i {
            Some(Incident::HeartbeatLoss { team }) => Some(team.clone()),
            _ => None,
        };
        let (before, after) = (team_of(&self.incident), team_of(&incident));
        self.incident = incident;
        if before == after {
            return;
        }
        // Heartbeats stop (or resume) for the team's agents: a version
        // with the same `updated_at`, as heartbeats never move it.
        for id in self.live_agents.clone() {
            let Some(cur) = self.agents.current(&id).cloned() else {
                continue;
            };
            let team = cur.labels.get("team");
            let stop = after.as_ref().is_some_and(|t| Some(t) == team);
            let was = before.as_ref().is_some_and(|t| Some(t) == team);
            if stop != was {
                let mut a = (*cur).clone();
                a.heartbeat_until = stop.then_some(now_us);
                self.commit_agent(a);
            }
        }
    }

    /// The provider of a running task's agent, when an outage hits it.
    fn in_outage(&self, t: &Task) -> bool {
        let Some(Incident::ProviderOutage { provider }) = &self.incident else {
            return false;
        };
        t.agent_id
            .as_ref()
            .and_then(|a| self.agent_dims.get(a))
            .is_some_and(|(_, p, _)| p == provider)
    }

    fn outcome(&mut self) -> &'static str {
        let r: f64 = self.rng.random();
        if r < self.failed_share {
            "failed"
        } else if r < self.failed_share + self.cancelled_share {
            "cancelled"
        } else {
            "completed"
        }
    }

    fn seed(&mut self, cfg: &SimConfig, start_us: i64) {
        let mut agents = Vec::with_capacity(cfg.agents);
        for _ in 0..cfg.agents {
            let created_us = start_us - self.rng.random_range(DAY..60 * DAY);
            let created = self.stamp(created_us, i64::MIN);
            let r: f64 = self.rng.random();
            let status = match r {
                r if r < 0.03 => "provisioning",
                r if r < 0.08 => "paused",
                r if r < 0.11 => "error",
                r if r < 0.15 => "offline",
                _ => "idle",
            };
            let mut a = self.new_agent(created, status);
            // The current status since some time in the last day.
            let since_us = start_us - self.rng.random_range(600 * MICROS..DAY);
            a.updated_at = self.stamp(since_us, created.us);
            a.heartbeat_phase = has_heartbeat(status).then_some(a.updated_at);
            agents.push(a);
        }

        // History: terminal tasks created in the past 30 days (so the oldest
        // leave history while the simulator runs).
        for _ in 0..cfg.history_tasks {
            let queue_us = self.rng.random_range(MICROS..600 * MICROS);
            let run_us = self.rng.random_range(5 * MICROS..1800 * MICROS);
            let span = queue_us + run_us + 2 * MICROS;
            let created_us = start_us - span - self.rng.random_range(0..RETENTION - span);
            let created = self.stamp(created_us, i64::MIN);
            let mut t = self.new_task(created, false);
            let status = self.outcome();
            let from_pending = status == "cancelled" && self.rng.random_bool(0.5);
            let finished;
            if from_pending || agents.is_empty() {
                finished = self.stamp(created_us + queue_us, created.us);
                t.status = "cancelled".to_string();
            } else {
                let started = self.stamp(created_us + queue_us, created.us);
                finished = self.stamp(started.us + run_us, started.us);
                let agent = &agents[self.rng.random_range(0..agents.len())];
                let ((i0, i1), (o0, o1)) = token_ranges(&agent.config.model);
                let scale = if status == "cancelled" { 4 } else { 1 };
                t.agent_id = Some(agent.id.clone());
                t.started_at = Some(started);
                t.transitions.push(Transition {
                    status: "running".to_string(),
                    at: started,
                });
                t.metrics = Metrics {
                    queue_seconds: Some(secs_ms(created.us, started.us)),
                    run_seconds: Some(secs_ms(started.us, finished.us)),
                    input_tokens: Some(self.rng.random_range(i0..i1) / scale),
                    output_tokens: Some(self.rng.random_range(o0..o1) / scale),
                };
                t.status = status.to_string();
                if status == "completed" {
                    t.outputs.push(self.output());
                }
                if status == "failed" {
                    t.error = Some(self.failure());
                }
            }
            t.finished_at = Some(finished);
            t.transitions.push(Transition {
                status: t.status.clone(),
                at: finished,
            });
            t.updated_at = finished;
            self.retire_later(&t);
            self.commit_task(t);
        }

        // The open set: pending and running tasks created in the last minutes.
        for _ in 0..self.target_pending {
            let created_us = start_us - self.rng.random_range(MICROS..120 * MICROS);
            let created = self.stamp(created_us, i64::MIN);
            let t = self.new_task(created, false);
            self.pending.insert((created.us, t.id.clone()));
            self.commit_task(t);
        }
        for _ in 0..self.target_running {
            let candidates: Vec<usize> = (0..agents.len())
                .filter(|&i| {
                    let a = &agents[i];
                    (a.status == "idle" || a.status == "busy")
                        && a.running_tasks < a.config.constraints.max_concurrent_tasks
                })
                .collect();
            if candidates.is_empty() {
                break;
            }
            let ai = candidates[self.rng.random_range(0..candidates.len())];
            let created_us = start_us - self.rng.random_range(60 * MICROS..300 * MICROS);
            let created = self.stamp(created_us, i64::MIN);
            let start = created_us + self.rng.random_range(MICROS..50 * MICROS);
            let started = self.stamp(start, created.us);
            let mut t = self.new_task(created, false);
            start_fields(&mut t, &agents[ai].id, started);
            let a = &mut agents[ai];
            a.status = "busy".to_string();
            a.running_tasks += 1;
            if started.us > a.updated_at.us {
                a.updated_at = started;
            }
            self.running.push(t.id.clone());
            self.commit_task(t);
        }
        for a in agents {
            self.live_agents.push(a.id.clone());
            self.commit_agent(a);
        }
    }

    /// One step of life at `now_us`, `tick_secs` after the previous one.
    pub fn tick(&mut self, now_us: i64, tick_secs: f64) {
        self.now_us = now_us;
        if !self.paused {
            self.change_budget += self.changes_per_minute * tick_secs / 60.0;
            while self.change_budget >= 1.0 {
                self.change_budget -= 1.0;
                self.task_change(now_us);
            }
            // Agents change status now and then (~2% of them a minute), and
            // are rarely created or deleted.
            let n = self.live_agents.len().max(1) as f64;
            if self.rng.random_bool((n * 0.02 * tick_secs / 60.0).min(1.0)) {
                self.agent_status_change(now_us);
            }
            let rare = ((n * 0.001).max(0.05) * tick_secs / 60.0).min(1.0);
            if self.rng.random_bool(rare) {
                self.agent_create(now_us);
            }
            if self.rng.random_bool(rare) {
                self.agent_delete(now_us);
            }
            while let Some(Reverse((at, _))) = self.expiries.peek() {
                if *at > now_us {
                    break;
                }
                let Reverse((_, id)) = self.expiries.pop().expect("peeked");
                self.tasks.remove(&id);
            }
            while let Some(Reverse((due, _))) = self.late_outputs.peek() {
                if *due > now_us {
                    break;
                }
                let Reverse((_, id)) = self.late_outputs.pop().expect("peeked");
                self.attach_output(&id, now_us);
            }
            while let Some(Reverse((due, _))) = self.late_fills.peek() {
                if *due > now_us {
                    break;
                }
                let Reverse((_, n)) = self.late_fills.pop().expect("peeked");
                if let Some(fill) = self.fills.remove(&n) {
                    self.apply_fill(fill, now_us);
                }
            }
            while let Some(Reverse((due, _))) = self.resumes.peek() {
                if *due > now_us {
                    break;
                }
                let Reverse((_, id)) = self.resumes.pop().expect("peeked");
                self.resume_task(&id, now_us);
            }
        }
        self.process_visibility(now_us);
    }

    /// Prunes the versions superseded by ones now visible.
    pub fn process_visibility(&mut self, now_us: i64) {
        while let Some(Reverse((vis, _, _))) = self.vis_queue.peek() {
            if *vis > now_us {
                break;
            }
            let Reverse((_, is_task, id)) = self.vis_queue.pop().expect("peeked");
            if is_task {
                self.tasks.prune(&id, now_us);
            } else {
                self.agents.prune(&id, now_us);
            }
        }
    }

    /// One task status change. Each kind is weighted by how far its queue
    /// is from its target, so the open set reverts to a steady size; in the
    /// long run creations = starts + cancellations = finishes.
    fn task_change(&mut self, now_us: i64) {
        let (p, r) = (self.pending.len() as f64, self.running.len() as f64);
        let (tp, tr) = (self.target_pending as f64, self.target_running as f64);
        let w = |x: f64| x.clamp(0.05, 3.0);
        let create = w(1.0 + (tp - p) / tp);
        let start = if p > 0.0 { w(1.0 + (tr - r) / tr) } else { 0.0 };
        let finish = if r > 0.0 { w(1.0 + (r - tr) / tr) } else { 0.0 };
        let x = self.rng.random::<f64>() * (create + start + finish);
        let done = if x < create {
            self.create_task(now_us)
        } else if x < create + start {
            self.start_or_cancel(now_us)
        } else {
            self.finish_task(now_us)
        };
        // No free agent: the change still happens, as another kind.
        let _ = done || self.finish_task(now_us) || self.create_task(now_us);
    }

    fn create_task(&mut self, now_us: i64) -> bool {
        self.new_tasks += 1;
        let big = self.big_every.is_some_and(|n| self.new_tasks % n == 0);
        let created = self.live_stamp(now_us, i64::MIN);
        let t = self.new_task(created, big);
        self.pending.insert((created.us, t.id.clone()));
        self.commit_task(t);
        true
    }

    fn start_or_cancel(&mut self, now_us: i64) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        if self.latitude.unknown_task_statuses && self.rng.random_bool(0.02) {
            return self.expire_pending(now_us);
        }
        if self.rng.random_bool(0.03) {
            return self.cancel_pending(now_us);
        }
        self.start_task(now_us)
    }

    /// A random pending task becomes `expired`, a status outside the
    /// contract that it never leaves (and that never leaves history).
    fn expire_pending(&mut self, now_us: i64) -> bool {
        let i = self.rng.random_range(0..self.pending.len());
        let key = self.pending.iter().nth(i).cloned().expect("in range");
        self.pending.remove(&key);
        let mut t = (**self.tasks.current(&key.1).expect("pending task")).clone();
        let at = self.live_stamp(now_us, t.updated_at.us);
        enter_status(&mut t, "expired", at);
        self.expired += 1;
        self.commit_task(t);
        true
    }

    /// Schedules `fill` 1 s to [`MAX_FILL_DELAY`] after `now_us`.
    fn fill_later(&mut self, fill: Fill, now_us: i64) {
        let max = MAX_FILL_DELAY.as_micros() as i64;
        let due = now_us + self.rng.random_range(MICROS..=max);
        self.next_fill += 1;
        self.fills.insert(self.next_fill, fill);
        self.late_fills.push(Reverse((due, self.next_fill)));
    }

    /// A new version of the task (status unchanged) with the late values;
    /// the ground truth counts them now that they are known.
    fn apply_fill(&mut self, fill: Fill, now_us: i64) {
        let Some(cur) = self.tasks.current(&fill.task) else {
            return;
        };
        let mut t = (**cur).clone();
        if let Some(ms) = fill.queue_ms {
            t.metrics.queue_seconds = Some(ms as f64 / 1000.0);
            self.count(&t, |c| c.queue_seconds.observe_ms(ms));
        }
        if let Some(ms) = fill.run_ms {
            t.metrics.run_seconds = Some(ms as f64 / 1000.0);
            self.count(&t, |c| c.run_seconds.observe_ms(ms));
        }
        if let Some(n) = fill.input {
            t.metrics.input_tokens = Some(n);
            self.count_tokens(&t, "input", n);
        }
        if let Some(n) = fill.output {
            t.metrics.output_tokens = Some(n);
            self.count_tokens(&t, "output", n);
        }
        if let Some(e) = fill.error {
            if let Some(code) = &e.code {
                let code = code.clone();
                self.count(&t, |c| {
                    *c.failures_by_code.entry(code.clone()).or_default() += 1
                });
            }
            t.error = Some(e);
        }
        t.updated_at = self.live_stamp(now_us, t.updated_at.us);
        self.commit_task(t);
    }

    /// A running task goes `awaiting_input` (outside the contract) and
    /// returns to running 1-10 s later; its agent keeps it meanwhile.
    fn await_input(&mut self, id: String, now_us: i64) -> bool {
        let mut t = (**self.tasks.current(&id).expect("running task")).clone();
        let at = self.live_stamp(now_us, t.updated_at.us);
        enter_status(&mut t, "awaiting_input", at);
        self.awaiting += 1;
        let due = now_us + self.rng.random_range(MICROS..=10 * MICROS);
        self.resumes.push(Reverse((due, id)));
        self.commit_task(t);
        true
    }

    fn resume_task(&mut self, id: &str, now_us: i64) {
        let Some(cur) = self.tasks.current(id) else {
            return;
        };
        if cur.status != "awaiting_input" {
            return;
        }
        let mut t = (**cur).clone();
        let at = self.live_stamp(now_us, t.updated_at.us);
        enter_status(&mut t, "running", at);
        self.awaiting -= 1;
        self.running.push(id.to_string());
        self.commit_task(t);
    }

    /// Some idle or busy agent with room for one more task.
    fn free_agent(&mut self) -> Option<String> {
        for _ in 0..32 {
            if self.live_agents.is_empty() {
                return None;
            }
            let id = &self.live_agents[self.rng.random_range(0..self.live_agents.len())];
            let a = self.agents.current(id)?;
            if (a.status == "idle" || a.status == "busy")
                && a.running_tasks < a.config.constraints.max_concurrent_tasks
            {
                return Some(id.clone());
            }
        }
        None
    }

    /// Starts the oldest pending task on a free agent.
    fn start_task(&mut self, now_us: i64) -> bool {
        let Some(agent_id) = self.free_agent() else {
            return false;
        };
        let Some((_, id)) = self.pending.pop_first() else {
            return false;
        };
        let mut t = (**self.tasks.current(&id).expect("pending task")).clone();
        let started = self.live_stamp(now_us, t.updated_at.us);
        start_fields(&mut t, &agent_id, started);
        let queue_ms = millis(t.created_at.us, started.us);
        if self.latitude.late_metrics {
            t.metrics.queue_seconds = None;
            let fill = Fill {
                task: id.clone(),
                queue_ms: Some(queue_ms),
                ..Fill::default()
            };
            self.fill_later(fill, now_us);
        } else {
            self.count(&t, |c| c.queue_seconds.observe_ms(queue_ms));
        }
        self.running.push(id);
        self.commit_task(t);
        self.agent_running_delta(&agent_id, 1, now_us);
        true
    }

    fn cancel_pending(&mut self, now_us: i64) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let i = self.rng.random_range(0..self.pending.len());
        let key = self.pending.iter().nth(i).cloned().expect("in range");
        self.pending.remove(&key);
        let mut t = (**self.tasks.current(&key.1).expect("pending task")).clone();
        let at = self.live_stamp(now_us, t.updated_at.us);
        finish_fields(&mut t, "cancelled", at);
        self.count(&t, |c| {
            *c.finished_total.entry("cancelled".into()).or_default() += 1
        });
        self.retire_later(&t);
        self.commit_task(t);
        true
    }

    fn finish_task(&mut self, now_us: i64) -> bool {
        if self.running.is_empty() {
            return false;
        }
        let i = self.rng.random_range(0..self.running.len());
        let id = self.running.swap_remove(i);
        if self.latitude.unknown_task_statuses && self.rng.random_bool(0.05) {
            return self.await_input(id, now_us);
        }
        let mut t = (**self.tasks.current(&id).expect("running task")).clone();
        let at = self.live_stamp(now_us, t.updated_at.us);
        let status = if self.in_outage(&t) && self.rng.random_bool(0.95) {
            "failed"
        } else {
            self.outcome()
        };
        let outage = status == "failed" && self.in_outage(&t);
        finish_fields(&mut t, status, at);
        let started = t.started_at.expect("running task started");
        let run_ms = millis(started.us, at.us);
        let run = secs_ms(started.us, at.us);
        // Cancelled runs used fewer tokens; a spend spike's team many more
        // (the same draws, so the rest of the fleet's life is unchanged).
        let scale = if status == "cancelled" { 4 } else { 1 };
        let factor = self.token_factor(&t);
        let ((i0, i1), (o0, o1)) = token_ranges(&self.dims_of(&t).model);
        let input = self.rng.random_range(i0..i1) / scale * factor;
        let output = self.rng.random_range(o0..o1) / scale * factor;
        t.metrics.run_seconds = Some(run);
        t.metrics.input_tokens = Some(input);
        t.metrics.output_tokens = Some(output);
        // Late metrics: any subset (sometimes none) is null for now, known
        // (and counted) when a later version fills it in.
        let mut fill = Fill {
            task: id.clone(),
            ..Fill::default()
        };
        if self.latitude.late_metrics {
            if self.rng.random_bool(0.5) {
                t.metrics.run_seconds = None;
                fill.run_ms = Some(run_ms);
            }
            if self.rng.random_bool(0.5) {
                t.metrics.input_tokens = None;
                fill.input = Some(input);
            }
            if self.rng.random_bool(0.5) {
                t.metrics.output_tokens = None;
                fill.output = Some(output);
            }
        }
        if status == "completed" && self.rng.random_bool(0.5) {
            let o = self.output();
            t.outputs.push(o);
        }
        let mut code_fill = None;
        if status == "failed" {
            let mut e = self.failure();
            if outage {
                e = TaskError {
                    code: Some("model_error".into()),
                    message: "the model provider is unavailable".into(),
                };
            }
            if self.latitude.late_failure_codes {
                // Both shapes: no error object yet, or one without a code.
                t.error = self.rng.random_bool(0.5).then(|| TaskError {
                    code: None,
                    message: e.message.clone(),
                });
                code_fill = Some(Fill {
                    task: id.clone(),
                    error: Some(e),
                    ..Fill::default()
                });
            } else {
                let code = e.code.clone().expect("drawn with a code");
                self.count(&t, |c| {
                    *c.failures_by_code.entry(code.clone()).or_default() += 1
                });
                t.error = Some(e);
            }
        }
        let (late_input, late_output, late_run) = (
            fill.input.is_some(),
            fill.output.is_some(),
            fill.run_ms.is_some(),
        );
        self.count(&t, |c| {
            *c.finished_total.entry(status.into()).or_default() += 1;
            if !late_run {
                c.run_seconds.observe_ms(run_ms);
            }
        });
        if !late_input {
            self.count_tokens(&t, "input", input);
        }
        if !late_output {
            self.count_tokens(&t, "output", output);
        }
        if fill.run_ms.is_some() || fill.input.is_some() || fill.output.is_some() {
            self.fill_later(fill, now_us);
        }
        if let Some(f) = code_fill {
            self.fill_later(f, now_us);
        }
        if self
            .rng
            .random_bool(self.late_output_probability.clamp(0.0, 1.0))
        {
            let due = now_us + self.rng.random_range(MICROS..=20 * MICROS);
            self.late_outputs.push(Reverse((due, id.clone())));
        }
        let agent_id = t.agent_id.clone().expect("running task has an agent");
        self.retire_later(&t);
        self.commit_task(t);
        self.agent_running_delta(&agent_id, -1, now_us);
        true
    }

    /// Attaches an output to a task: a new version, status unchanged.
    pub fn attach_output(&mut self, id: &str, now_us: i64) -> bool {
        let Some(cur) = self.tasks.current(id) else {
            return false;
        };
        let mut t = (**cur).clone();
        t.updated_at = self.live_stamp(now_us, t.updated_at.us);
        let o = self.output();
        t.outputs.push(o);
        self.commit_task(t);
        true
    }

    fn agent_running_delta(&mut self, id: &str, delta: i32, now_us: i64) {
        let Some(cur) = self.agents.current(id) else {
            return;
        };
        let mut a = (**cur).clone();
        a.running_tasks = a.running_tasks.saturating_add_signed(delta);
        if a.running_tasks > 0 && a.status == "idle" {
            a.status = "busy".to_string();
        } else if a.running_tasks == 0 && a.status == "busy" {
            a.status = "idle".to_string();
        }
        a.updated_at = self.live_stamp(now_us, a.updated_at.us);
        self.commit_agent(a);
    }

    /// A random agent without running tasks changes status. Idle ones are
    /// disturbed with probability 0.18, others recover, so ~15% of the fleet
    /// is not active in the long run.
    fn agent_status_change(&mut self, now_us: i64) {
        if self.live_agents.is_empty() {
            return;
        }
        let id = self.live_agents[self.rng.random_range(0..self.live_agents.len())].clone();
        let Some(cur) = self.agents.current(&id).cloned() else {
            return;
        };
        if cur.running_tasks > 0 {
            return;
        }
        let old = cur.status.clone();
        let new = match old.as_str() {
            "idle" => {
                if !self.rng.random_bool(0.18) {
                    return;
                }
                if self.unknown_agent_statuses && self.rng.random_bool(0.3) {
                    self.pick(&UNKNOWN_AGENT_STATUSES)
                } else {
                    self.pick(&["paused", "paused", "offline", "error"])
                }
            }
            "error" => self.pick(&["idle", "idle", "offline"]),
            "offline" => self.pick(&["provisioning", "idle"]),
            _ => "idle",
        };
        let mut a = (*cur).clone();
        a.status = new.to_string();
        a.updated_at = self.live_stamp(now_us, a.updated_at.us);
        if !has_heartbeat(new) {
            a.heartbeat_phase = None;
        } else if a.heartbeat_phase.is_none() {
            a.heartbeat_phase = Some(a.updated_at);
        }
        self.commit_agent(a);
    }

    fn agent_create(&mut self, now_us: i64) {
        let created = self.live_stamp(now_us, i64::MIN);
        let a = self.new_agent(created, "provisioning");
        self.live_agents.push(a.id.clone());
        self.commit_agent(a);
    }

    fn agent_delete(&mut self, now_us: i64) {
        if self.live_agents.len() <= 1 {
            return;
        }
        let i = self.rng.random_range(0..self.live_agents.len());
        let Some(cur) = self.agents.current(&self.live_agents[i]).cloned() else {
            return;
        };
        if cur.running_tasks > 0 {
            return;
        }
        // When it happens; what `updated_at` it carries.
        let at = self.live_stamp(now_us, cur.updated_at.us);
        let updated = if self.latitude.deletion_keeps_updated_at {
            cur.updated_at
        } else {
            at
        };
        if self.events.is_some() {
            let mut gone = (*cur).clone();
            gone.updated_at = updated;
            self.emit_agent("agent.deleted", &gone, at.us);
        }
        let id = self.live_agents.swap_remove(i);
        // Visible within the lag of when it happened.
        let vis = self.visible_at(at.us);
        self.max_visible_us = self.max_visible_us.max(vis);
        self.vis_queue.push(Reverse((vis, false, id.clone())));
        self.agents.delete(&id, updated.us, vis);
    }
}

fn has_heartbeat(status: &str) -> bool {
    !matches!(status, "provisioning" | "offline")
}

/// The task enters `status` at `at`: its status, `updated_at` and a
/// transition.
fn enter_status(t: &mut Task, status: &str, at: Ts) {
    t.status = status.to_string();
    t.updated_at = at;
    t.transitions.push(Transition {
        status: status.to_string(),
        at,
    });
}

fn start_fields(t: &mut Task, agent_id: &str, started: Ts) {
    enter_status(t, "running", started);
    t.agent_id = Some(agent_id.to_string());
    t.started_at = Some(started);
    t.metrics.queue_seconds = Some(secs_ms(t.created_at.us, started.us));
}

fn finish_fields(t: &mut Task, status: &str, at: Ts) {
    enter_status(t, status, at);
    t.finished_at = Some(at);
}

/// 256 KiB of text, shared by every task that carries it.
fn big_instructions() -> String {
    let line = "Read every attached document carefully and produce a faithful summary. ";
    let mut s = String::with_capacity(256 * 1024);
    while s.len() + line.len() <= 256 * 1024 {
        s.push_str(line);
    }
    while s.len() < 256 * 1024 {
        s.push('.');
    }
    s
}
