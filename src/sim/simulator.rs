//! The simulator: its shared state behind one handle, the fleet's life
//! started on the runtime, the ground truth read from the state, and the
//! control methods. Its HTTP face (`router`, `serve`) is in http.rs.

use super::config::{Incident, SimConfig, SimKey, DEMO_KEY, DEMO_KEY_ID};
use super::delivery;
use super::faults::Faults;
use super::life::Fleet;
use super::model::{format_us, whole_second, Clock, MICROS};
use super::pricing::{self, PriceBook, SimPrice};
use super::state::{HttpState, Inner, KeyEntry};
use super::truth::{self, GroundTruth};
use super::webhooks::{self, WebhookSettings};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub struct Simulator {
    pub(super) inner: Arc<Inner>,
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Simulator {
        use rand::{Rng, SeedableRng};
        let clock = Clock::from_offset_ms(cfg.latitude.clock_offset_ms);
        let mut start_us = clock.now_us();
        if cfg.latitude.whole_second_stamps {
            start_us = whole_second(start_us);
        }
        let fleet = Fleet::new(&cfg, start_us);
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed_f00d);
        let cursor_secret = rng.random();
        let mut keys = HashMap::new();
        let demo = SimKey {
            id: DEMO_KEY_ID.to_string(),
            secret: DEMO_KEY.to_string(),
            scopes: vec!["agents:read".to_string(), "tasks:read".to_string()],
            expires_at: chrono::DateTime::from_timestamp_micros(start_us + 90 * 86_400 * MICROS),
        };
        for k in std::iter::once(demo).chain(cfg.keys.iter().cloned()) {
            keys.insert(
                k.secret.clone(),
                KeyEntry {
                    key: k,
                    created_us: start_us,
                },
            );
        }
        let http = HttpState {
            keys,
            window: 0,
            window_count: 0,
            not_before: HashMap::new(),
            counters: Default::default(),
            rng,
            next_request: 0,
        };
        let deliverer = webhooks::Deliverer::new(cfg.seed);
        Simulator {
            inner: Arc::new(Inner {
                cfg,
                clock,
                start_us,
                fleet: Mutex::new(fleet),
                http: Mutex::new(http),
                faults: Mutex::new(Faults::default()),
                started: AtomicBool::new(false),
                cursor_secret,
                webhooks: Mutex::new(deliverer),
            }),
        }
    }

    /// Spawns the fleet's life on the current tokio runtime (idempotent).
    /// The task holds a weak reference and ends when the simulator is dropped.
    pub fn start(&self) {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let tick = self.inner.cfg.tick.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(tick);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let Some(clock) = weak.upgrade().map(|i| i.clock) else {
                return;
            };
            let mut last = clock.now_us();
            loop {
                iv.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let now = clock.now_us();
                // Real elapsed time keeps the change rate true under load;
                // capped so a stalled runtime does not cause a burst.
                let dt = ((now - last) as f64 / MICROS as f64).clamp(0.0, 10.0);
                last = now;
                let events = {
                    let mut f = inner.fleet();
                    f.tick(now, dt);
                    f.events.as_mut().map(std::mem::take)
                };
                if let Some(events) = events.filter(|e| !e.is_empty()) {
                    delivery::dispatch(&inner, events);
                }
            }
        });
    }

    pub fn ground_truth(&self) -> GroundTruth {
        let inner = &self.inner;
        let now = inner.clock.now_us();
        let f = inner.fleet();
        let mut agents: BTreeMap<String, u64> = truth::AGENT_STATUSES
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        for id in &f.live_agents {
            if let Some(a) = f.agents.current(id) {
                *agents.entry(a.status.clone()).or_default() += 1;
            }
        }
        let mut tasks_open = BTreeMap::new();
        tasks_open.insert("pending".to_string(), f.pending.len() as u64);
        tasks_open.insert("running".to_string(), f.running.len() as u64);
        if inner.cfg.latitude.unknown_task_statuses {
            tasks_open.insert("expired".to_string(), f.expired as u64);
            tasks_open.insert("awaiting_input".to_string(), f.awaiting as u64);
        }
        let oldest_pending_created_at = f
            .pending
            .first()
            .and_then(|(_, id)| f.tasks.current(id))
            .map(|t| t.created_at.format());
        let c = f.counters.clone();
        let by_dims = f
            .counters_by
            .iter()
            .map(|(d, c)| truth::DimTruth {
                dims: d.clone(),
                finished_total: c.finished_total.clone(),
                failures_by_code: c.failures_by_code.clone(),
                tokens: c.tokens.clone(),
                queue_seconds: c.queue_seconds.to_observations(),
                run_seconds: c.run_seconds.to_observations(),
                spend: truth::spend_text(&c.spend),
            })
            .collect();
        let agents_by = agents_by(&f, now);
        let (paused, max_visible) = (f.paused, f.max_visible_us);
        drop(f);
        let r = inner.http().counters.clone();
        GroundTruth {
            workspace_id: inner.cfg.workspace_id.clone(),
            now: format_us(now),
            clock_offset_ms: inner.cfg.latitude.clock_offset_ms,
            paused,
            visible_by: format_us(max_visible),
            agents,
            tasks_open,
            oldest_pending_created_at,
            finished_total: c.finished_total,
            failures_by_code: c.failures_by_code,
            tokens: c.tokens,
            queue_seconds: c.queue_seconds.to_observations(),
            run_seconds: c.run_seconds.to_observations(),
            requests_total: r.requests_total,
            requests_by_key: r.requests_by_key,
            requests_by_endpoint: r.requests_by_endpoint,
            rate_limited_total: r.rate_limited_total,
            retry_after_violations: r.retry_after_violations,
            faults_injected: r.faults_injected,
            webhooks: inner.webhooks().counts.clone(),
            by_dims,
            agents_by,
            currency: inner.cfg.currency.clone(),
            spend: truth::spend_text(&c.spend),
            unpriced_tokens: c.unpriced_tokens,
            spend_by_finish_day: c
                .spend_by_finish_day
                .iter()
                .map(|(day, v)| (day.clone(), pricing::format_spend(*v)))
                .collect(),
        }
    }

    /// Deliver webhook events from now on (an empty `url`: stop), with
    /// `settings`' faults.
    pub fn set_webhooks(&self, settings: WebhookSettings) {
        let on = !settings.url.is_empty();
        self.inner.webhooks().settings = settings;
        let mut f = self.inner.fleet();
        if on != f.events.is_some() {
            f.events = on.then(Vec::new);
        }
    }

    /// Replaces the price list (refused whole when an entry is bad, naming
    /// it): tokens counted from now on are priced with it, at their task's
    /// finish instant; tokens counted before keep their spend.
    pub fn set_prices(&self, prices: Vec<SimPrice>) -> Result<(), String> {
        let book = PriceBook::new(&prices)?;
        self.inner.fleet().set_prices(book);
        Ok(())
    }

    /// Switch an incident on, or off with `None`.
    pub fn set_incident(&self, incident: Option<Incident>) {
        let now = self.inner.clock.now_us();
        self.inner.fleet().set_incident(incident, now);
    }

    /// Replaces all faults.
    pub fn set_faults(&self, f: Faults) {
        *self.inner.faults.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// No new changes until [`Simulator::resume`]; the API keeps answering
    /// and pending visibility lags still elapse.
    pub fn pause(&self) {
        self.inner.fleet().paused = true;
    }

    pub fn resume(&self) {
        self.inner.fleet().paused = false;
    }

    /// When the simulator started (RFC 3339, API clock): every seeded
    /// timestamp is earlier, every change of the living fleet later (at or
    /// after under whole-second stamps).
    pub fn started_at(&self) -> String {
        format_us(self.inner.start_us)
    }

    /// The API's clock now, in microseconds since the epoch.
    pub fn now_us(&self) -> i64 {
        self.inner.clock.now_us()
    }

    pub fn add_key(&self, k: SimKey) {
        let created_us = self.inner.clock.now_us();
        self.inner
            .http()
            .keys
            .insert(k.secret.clone(), KeyEntry { key: k, created_us });
    }
}

/// Live agents by breakdown and status, with how many are silent (idle or
/// busy without a heartbeat for 90 s, as the API would answer now).
fn agents_by(f: &Fleet, now_us: i64) -> Vec<truth::AgentDimTruth> {
    let stale_us = 90 * MICROS;
    // (labels, provider, model, status) -> (agents, silent ones)
    type Key = (BTreeMap<String, String>, String, String, String);
    let mut m: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for id in &f.live_agents {
        let Some(a) = f.agents.current(id) else {
            continue;
        };
        let key = (
            a.labels.clone(),
            a.config.model_provider.clone(),
            a.config.model.clone(),
            a.status.clone(),
        );
        let running = matches!(a.status.as_str(), "idle" | "busy");
        let last = a.heartbeat_at(now_us).map_or(a.updated_at.us, |h| h.us);
        let e = m.entry(key).or_default();
        e.0 += 1;
        if running && now_us - last > stale_us {
            e.1 += 1;
        }
    }
    m.into_iter()
        .map(
            |((agent_labels, provider, model, status), (count, stale))| truth::AgentDimTruth {
                agent_labels,
                provider,
                model,
                status,
                count,
                heartbeat_stale: stale,
            },
        )
        .collect()
}
