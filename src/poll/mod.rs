//! The per-workspace scheduler: checks the key, then keeps two loops going,
//! one for agents (full listings) and one for tasks (reconciliation plus
//! incremental listings), sharing one client and so one API budget. After
//! every sync it publishes a snapshot to the hub.

use crate::api::clock::ApiTime;
use crate::api::types::{Timestamp, Token};
use crate::api::{ApiError, Client, ListEvent, TaskQuery};
use crate::fleet::{Fleet, FleetLimits, Health, Parts, Snapshot};
use crate::hub::Hub;
use crate::supervise::sleep_or_stop;
use crate::supervise::{guard, Backoff, Caught};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

mod checkpoint;
pub mod settings;

/// The resources a workspace syncs (the fleet's list, named here too).
pub use crate::fleet::RESOURCES;

/// The scopes the exporter needs, and the ones it should not have.
pub const REQUIRED_SCOPES: [&str; 2] = ["agents:read", "tasks:read"];
const WRITE_SCOPES: [&str; 3] = ["agents:write", "tasks:write", "webhooks:manage"];

/// A workspace's scheduler settings. `Default` is the empty base the
/// settings table fills; the defaults a user gets are the flags'
/// (`settings::PollArgs`).
#[derive(Debug, Clone, Default)]
pub struct PollConfig {
    /// How often tasks are listed incrementally.
    pub interval: Duration,
    /// How often agents are listed in full.
    pub agents_interval: Duration,
    /// How often open tasks are listed in full to repair the open set.
    pub reconcile_interval: Duration,
    /// How far back each incremental listing re-reads; covers the
    /// contract's visibility lag (at most 5 s).
    pub overlap: Duration,
    /// How long finished tasks are remembered for de-duplication.
    pub dedup_horizon: Duration,
    /// How the fleet judges what the API says (future stamps, unknown
    /// statuses, late failure codes).
    pub fleet: FleetLimits,
    /// Which dimensions the workspace's series are broken down by.
    pub breakdown: crate::fleet::BreakdownConfig,
    /// Agents read one by one per task sync (`GET /agents/{id}`) when tasks
    /// name agents not yet listed; the rest count without agent values.
    pub max_agent_lookups: usize,
    /// What the workspace's spend is held against (the config file's
    /// `budgets:`).
    pub budgets: Vec<crate::fleet::BudgetConfig>,
    /// The price table, shared by every workspace and replaced in place by
    /// a reload; set by the exporter, not per workspace.
    pub prices: crate::prices::Prices,
    /// Checkpoints; set by the exporter, not per workspace.
    pub storage: Option<crate::storage::Storage>,
    /// Where a stopped slot leaves its workspace for the slot a reload
    /// starts in its place; set by the exporter, not per workspace.
    pub handoff: Option<Arc<Handoffs>>,
}

/// A workspace as a slot that a reload stopped left it (the fleet as a
/// checkpoint keeps it, and the watermark), for the slot that replaces it:
/// a reload that changes a workspace's settings (its breakdowns, an
/// interval) must not reset its counters, with storage or without.
#[derive(Debug, Default)]
pub struct Handoffs {
    left: Mutex<std::collections::HashMap<String, Handoff>>,
    /// Slots whose key check has not settled: any may be the successor
    /// (only the key check tells its workspace id), however long the API
    /// stays down, so no handoff expires meanwhile.
    checking: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
struct Handoff {
    left: std::time::Instant,
    fleet: crate::fleet::SavedFleet,
    watermark: Timestamp,
}

/// A slot's key check under way (see [`Handoffs::checking`]).
pub struct KeyCheck(Arc<Handoffs>);

impl Drop for KeyCheck {
    fn drop(&mut self) {
        self.0
            .checking
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Handoffs {
    /// How long a left workspace waits for its successor once no key
    /// check is under way: a reload starts it at once; one that never
    /// comes (the workspace was removed, or its new key refused) must not
    /// hold a fleet's memory for good.
    const KEEP: Duration = Duration::from_secs(600);

    /// Held by a slot from its start until its key check settled.
    pub fn checking(self: &Arc<Self>) -> KeyCheck {
        self.checking
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        KeyCheck(self.clone())
    }

    fn expire(&self, m: &mut std::collections::HashMap<String, Handoff>, now: std::time::Instant) {
        if self.checking.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            m.retain(|_, h| now.saturating_duration_since(h.left) < Self::KEEP);
        }
    }

    fn put(&self, workspace: &str, fleet: crate::fleet::SavedFleet, watermark: Timestamp) {
        self.put_at(workspace, fleet, watermark, std::time::Instant::now());
    }

    fn put_at(
        &self,
        workspace: &str,
        fleet: crate::fleet::SavedFleet,
        watermark: Timestamp,
        now: std::time::Instant,
    ) {
        let mut m = self.left.lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut m, now);
        m.insert(
            workspace.to_string(),
            Handoff {
                left: now,
                fleet,
                watermark,
            },
        );
    }

    fn forget(&self, workspace: &str) {
        let mut m = self.left.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(workspace);
    }

    fn take(&self, workspace: &str) -> Option<(crate::fleet::SavedFleet, Timestamp)> {
        self.take_at(workspace, std::time::Instant::now())
    }

    fn take_at(
        &self,
        workspace: &str,
        now: std::time::Instant,
    ) -> Option<(crate::fleet::SavedFleet, Timestamp)> {
        let mut m = self.left.lock().unwrap_or_else(|p| p.into_inner());
        // The caller's own key check holds every handoff: whatever its
        // age, the one left is the newest state of its workspace here
        // (every slot that polls it takes it first and leaves it at its
        // stop, after its last checkpoint).
        self.expire(&mut m, now);
        m.remove(workspace).map(|h| (h.fleet, h.watermark))
    }
}

/// Why the exporter cannot watch a workspace with this key at all.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the API key lacks scope {scope}: create a key with agents:read and tasks:read")]
    MissingScope { scope: String },
    #[error("the API key expired at {at} by the API's own answer (GET /auth/token): create a new key with agents:read and tasks:read")]
    Expired { at: String },
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// `GET /auth/token`, and the verdict on its scopes.
pub async fn check_key(client: &Client) -> Result<Token, KeyError> {
    let token = client.token().await?;
    // The counting floor is the API's time at the start: ask until two
    // answers agree on the API's clock (one may be a proxy's), a few times
    // at most (an API whose answers carry no Date leaves the host's clock).
    for _ in 0..3 {
        if client.api_time().confirmed() {
            break;
        }
        // Only to read the clock: a failure here is not the key's.
        if client.token().await.is_err() {
            break;
        }
    }
    // A key the API itself says has expired (its clock, not ours) would
    // fail at the first listing; say so now, as a rejected key is.
    if let Some(at) = token
        .expires_at
        .filter(|t| *t <= client.api_time().earliest)
    {
        return Err(KeyError::Expired {
            at: at.to_rfc3339(),
        });
    }
    for scope in REQUIRED_SCOPES {
        if !token.scopes.iter().any(|s| s == scope) {
            return Err(KeyError::MissingScope {
                scope: scope.to_string(),
            });
        }
    }
    let extra: Vec<&str> = WRITE_SCOPES
        .iter()
        .copied()
        .filter(|w| token.scopes.iter().any(|s| s == w))
        .collect();
    if !extra.is_empty() {
        tracing::warn!(
            workspace = %token.workspace_id,
            scopes = %extra.join(","),
            "the API key carries write scopes the exporter never uses; a key with only agents:read and tasks:read limits the damage if it leaks"
        );
    }
    Ok(token)
}

/// The shared state of one workspace: the fleet and how its syncs go.
struct Workspace {
    id: String,
    labels: Vec<(String, String)>,
    client: Client,
    hub: Arc<Hub>,
    cfg: PollConfig,
    state: Mutex<State>,
}

struct State {
    fleet: Fleet,
    health: Health,
    ok: [bool; 2],
    /// With the webhook receiver on: what it saw, and what polling found first.
    webhook: Option<crate::webhook::Tracker>,
    /// Why the client is held longer than a poll interval (a long
    /// `Retry-After`, a spent window): not syncing meanwhile.
    waiting: Option<&'static str>,
    /// The counters went on from a checkpoint: the first snapshot, as
    /// restored, rides on every later one (`Snapshot::baseline`).
    restored: bool,
    baseline: Option<Arc<Snapshot>>,
    /// Restored, and polling not yet past what the stopped process had
    /// counted (from events too): no missed event is suspected until then.
    resuming: bool,
    /// Where the incremental listing stands, for the checkpoint (the task
    /// loop's, told after each listing; an older one is only safer).
    watermark: Timestamp,
    /// With storage: the workspace as of the last checkpoint written (or
    /// as it started: restored, or from zero). The counters it keeps are
    /// served from it, never from further, also while writes fail: after
    /// a crash, or a stop whose last writes failed, the restart goes on
    /// from there, so nothing served is lost and no counter falls.
    durable: Option<Arc<Snapshot>>,
}

impl State {
    /// Up: the last sync of every resource succeeded and no long wait holds
    /// the next.
    fn set_up(&mut self) {
        self.health.up = self.ok.iter().all(|ok| *ok) && self.waiting.is_none();
    }
}

/// Start polling a workspace whose key passed [`check_key`] and which its
/// caller has claimed in the hub. The loops stop when `stop` turns true.
/// `labels` are the workspace's own labels after `workspace`
/// (`workspace_name`, configured extras). With `inbox`, a worker applies the
/// webhook events routed to this workspace; polling then slows down while
/// they arrive.
///
/// With storage, the slot owns its checkpoint first (`storage::Lock`):
/// while another process (the same workspace and shard assignment on the
/// same directory) holds it, the slot stands by, polling nothing and
/// publishing nothing (the exporter is not ready), and takes over, from
/// the checkpoint the other wrote last, once it is released.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    client: Client,
    token: &Token,
    cfg: PollConfig,
    labels: Vec<(String, String)>,
    hub: Arc<Hub>,
    stop: watch::Receiver<bool>,
    inbox: Option<crate::webhook::Inbox>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(storage) = cfg.storage.clone() else {
        return start(client, token, cfg, labels, hub, stop, inbox, None);
    };
    let id = token.workspace_id.clone();
    let take = move |storage: &crate::storage::Storage, id: &str| match storage.lock(id) {
        Ok(Some(lock)) => Some(Some(lock)),
        Ok(None) => None,
        Err(e) => {
            // Not a second owner, but a place where no lock can be made
            // (read-only, no flock on this file system): polling goes on;
            // the writes will say what is wrong.
            tracing::warn!(workspace = %id, dir = %storage.cfg.dir.display(), error = %e, "cannot lock the checkpoint; going on without (make sure no other exporter with the same shard uses this directory)");
            Some(None)
        }
    };
    if let Some(lock) = take(&storage, &id) {
        return start(client, token, cfg, labels, hub, stop, inbox, lock);
    }
    let token = token.clone();
    let lock_path = storage.cfg.lock_path_of(&id, storage.shard);
    vec![tokio::spawn(async move {
        let mut stop = stop;
        let mut said = Instant::now();
        // Counted in `clawmesh_exporter_workspaces{state="standby"}` while
        // it waits, however the wait ends.
        struct Standby(Arc<Hub>);
        impl Drop for Standby {
            fn drop(&mut self) {
                self.0.update_process(|p| {
                    p.workspaces_standby = p.workspaces_standby.saturating_sub(1)
                });
            }
        }
        hub.update_process(|p| p.workspaces_standby += 1);
        let standby = Standby(hub.clone());
        tracing::warn!(workspace = %id, lock = %lock_path.display(), "another exporter process holds this workspace's checkpoint (two exporters with the same shard on one --storage.path?): standing by, not polling, until it is released; then this one goes on from its last checkpoint");
        let lock = loop {
            if sleep_or_stop(Instant::now() + Duration::from_secs(1), &mut stop).await {
                return;
            }
            if let Some(lock) = take(&storage, &id) {
                break lock;
            }
            if said.elapsed() >= Duration::from_secs(60) {
                said = Instant::now();
                tracing::warn!(workspace = %id, lock = %lock_path.display(), "still standing by: another exporter process holds this workspace's checkpoint");
            }
        };
        drop(standby);
        tracing::info!(workspace = %id, "the checkpoint was released: taking over");
        for l in start(client, &token, cfg, labels, hub, stop, inbox, lock) {
            let _ = l.await;
        }
    })]
}

/// [`spawn`], the checkpoint (if any) owned.
#[allow(clippy::too_many_arguments)]
fn start(
    client: Client,
    token: &Token,
    cfg: PollConfig,
    labels: Vec<(String, String)>,
    hub: Arc<Hub>,
    stop: watch::Receiver<bool>,
    inbox: Option<crate::webhook::Inbox>,
    lock: Option<crate::storage::Lock>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (rx, tracker) = match inbox {
        Some(i) => (Some((i.rx, i.changed)), Some(i.tracker)),
        None => (None, None),
    };
    // The key check has read the API's clock: the counting floor and the
    // first watermark are the API's time at the start, not the host's.
    let started = Timestamp::host_now();
    let api_start = client.api_time();
    let limits = cfg.fleet;
    let label_names: Vec<String> = std::iter::once("workspace".to_string())
        .chain(labels.iter().map(|(k, _)| k.clone()))
        .collect();
    // Every way a slot's fleet is made (fresh, restored from a checkpoint
    // or a handoff) starts from this one, so all hold the budgets and the
    // table in force: restored spend is served from the first render, not
    // from the first sync (which an outage can hold off for long), and an
    // agent gone before the first sync keeps its model.
    let fresh = || {
        let mut f = Fleet::starting(api_start, started, limits)
            .with_breakdown(&cfg.breakdown, &label_names)
            .with_budgets(cfg.budgets.clone());
        f.set_prices(cfg.prices.current());
        f
    };
    let mut health = Health {
        token_expiry: token.expires_at.map(|t| t.as_secs_f64()),
        ..Default::default()
    };
    // The workspace a reload's stopped slot left goes on as it was (newer
    // than any checkpoint); else, with storage, the counters and the
    // watermark go on from the workspace's checkpoint, when it has a
    // usable one.
    let handed = cfg
        .handoff
        .as_ref()
        .and_then(|h| h.take(&token.workspace_id))
        .and_then(|(saved, watermark)| match fresh().restore(saved) {
            Ok((fleet, note)) => {
                if let Some(note) = note {
                    tracing::warn!(workspace = %token.workspace_id, "{note}");
                }
                Some((fleet, watermark))
            }
            Err(e) => {
                tracing::error!(workspace = %token.workspace_id, error = %e, "the workspace the reload stopped cannot be taken over; this is a bug: the counters start from zero");
                None
            }
        });
    let handed_over = handed.is_some();
    let (fleet, watermark, saver) = match (&cfg.storage, handed) {
        (None, Some((fleet, watermark))) => (fleet, watermark, None),
        (Some(storage), Some((fleet, watermark))) => {
            let mut h = crate::fleet::CheckpointHealth::new();
            h.restored_age_seconds = Some(0.0);
            health.checkpoint = Some(h);
            let saver = checkpoint::Saver::new(storage.cfg.clone(), storage.shard, lock);
            (fleet, watermark, Some(saver))
        }
        (Some(storage), None) => {
            let (fleet, watermark, h) = checkpoint::resume(
                storage,
                &token.workspace_id,
                api_start,
                fresh,
                api_start.latest,
                cfg.fleet.max_timestamp_lead,
            );
            health.checkpoint = Some(h);
            let saver = checkpoint::Saver::new(storage.cfg.clone(), storage.shard, lock);
            (fleet, watermark, Some(saver))
        }
        (None, None) => (fresh(), api_start.latest, None),
    };
    let restored = handed_over
        || health
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.restored_age_seconds.is_some());
    let ws = Arc::new(Workspace {
        id: token.workspace_id.clone(),
        labels,
        client,
        hub,
        cfg,
        state: Mutex::new(State {
            fleet,
            health,
            ok: [false; 2],
            webhook: tracker,
            waiting: None,
            restored,
            baseline: None,
            resuming: restored,
            watermark,
            durable: None,
        }),
    });
    ws.publish();
    let (ws_saver, saver_stop, ws_left) = (ws.clone(), stop.clone(), ws.clone());
    let agents = {
        let ws = ws.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::default();
            loop {
                let start = Instant::now();
                let round = guard(async {
                    tokio::select! {
                        _ = ws.sync_agents() => {}
                        _ = stop.wait_for(|s| *s) => return true,
                    }
                    ws.wait_next(start, ws.cfg.agents_interval, &mut stop).await
                })
                .await;
                if ws.after_round(0, round, &mut backoff, &mut stop).await {
                    return;
                }
            }
        })
    };
    let webhooks =
        rx.map(|(rx, changed)| tokio::spawn(apply_webhooks(ws.clone(), rx, changed, stop.clone())));
    let watch = tokio::spawn(watch_waits(ws.clone(), stop.clone()));
    let tasks = tokio::spawn(async move {
        let mut sync = TaskSync::new(watermark);
        // What the stopped process counted after its last checkpoint (from
        // events too) is in a listing that starts once its last changes are
        // visible: after this start, plus the overlap (longer than the lag).
        // Until then polling suspects no missed webhook event.
        if restored {
            sync.resume_after = Some(api_start.latest.saturating_add(ws.cfg.overlap));
        }
        let mut stop = stop;
        let mut backoff = Backoff::default();
        loop {
            let start = Instant::now();
            let round = guard(async {
                tokio::select! {
                    _ = sync.run(&ws) => {}
                    _ = stop.wait_for(|s| *s) => return true,
                }
                ws.wait_next(start, ws.cfg.interval, &mut stop).await
            })
            .await;
            // A panic mid-listing leaves the watermark where the last
            // listing put it: the next round reads the pages again, and
            // the ledger keeps the counts exact.
            if ws.after_round(1, round, &mut backoff, &mut stop).await {
                return;
            }
        }
    });
    let mut loops = vec![agents, tasks, watch];
    loops.extend(saver.map(|s| tokio::spawn(checkpoint::run(s, ws_saver, saver_stop))));
    loops.extend(webhooks);
    match ws_left.cfg.handoff.clone() {
        Some(handoffs) => vec![tokio::spawn(hand_off(ws_left, loops, handoffs))],
        None => loops,
    }
}

/// Wait for every loop of a stopping workspace, then leave it for the slot
/// a reload starts in its place: taken after the last change, so that the
/// successor serves nothing less than this slot did. A kill leaves nothing.
async fn hand_off(
    ws: Arc<Workspace>,
    loops: Vec<tokio::task::JoinHandle<()>>,
    handoffs: Arc<Handoffs>,
) {
    for l in loops {
        if let Err(e) = l.await {
            // Each round is guarded; this is only the loop's own frame.
            tracing::error!(workspace = %ws.id, error = %e, "a poll loop ended abnormally");
        }
    }
    if ws.hub.killed() {
        return;
    }
    // Read before the lock: no lock is held while the client's is.
    let now = ws.client.api_time().estimate();
    let (fleet, watermark) = {
        let mut st = ws.lock();
        // With storage, the successor serves what it is handed as durable:
        // handed counts the last checkpoint written lacks (its writes
        // failed, or one hangs), a crash before its next write would take
        // back from the counters served. It resumes from that checkpoint
        // then, as a restart would, and its listing counts the rest again.
        if let Some(durable) = st.durable.clone().filter(|_| ws.cfg.storage.is_some()) {
            let live = st
                .fleet
                .snapshot(&ws.id, now, Default::default(), Default::default());
            if !checkpoint::serves_all(&live, &durable) {
                handoffs.forget(&ws.id);
                // Debug: at a shutdown there is no successor.
                tracing::debug!(workspace = %ws.id, "the last checkpoint written lacks counts of this slot (writes failed): a successor resumes from that checkpoint, not from memory");
                return;
            }
        }
        (st.fleet.save(), st.watermark)
    };
    handoffs.put(&ws.id, fleet, watermark);
}

/// The webhook worker: applies queued events in batches, publishing once
/// per batch, and publishes request counts that changed without an event
/// (refusals, duplicates) at most every quarter second.
async fn apply_webhooks(
    ws: Arc<Workspace>,
    mut rx: tokio::sync::mpsc::Receiver<crate::webhook::Change>,
    changed: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    const COUNTS_EVERY: Duration = Duration::from_millis(250);
    let mut batch = Vec::with_capacity(256);
    let mut published = Instant::now();
    // Counts changed since the last publish, without an event.
    let mut dirty = false;
    let mut backoff = Backoff::default();
    loop {
        // One round: a batch applied, or counts due. A panic in it loses
        // that batch (polling still finds its changes) but not the worker.
        let round = guard(async {
            tokio::select! {
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        return true;
                    }
                    // The table in force now (a reload may have replaced it).
                    let prices = ws.cfg.prices.current();
                    let mut st = ws.lock_at_api_time();
                    let State { fleet, webhook, .. } = &mut *st;
                    fleet.set_prices(prices);
                    if let Some(tracker) = webhook {
                        crate::supervise::injected(&ws.id, "webhook_worker");
                        for change in batch.drain(..) {
                            crate::webhook::apply(fleet, tracker, change);
                        }
                    }
                }
                _ = changed.notified(), if !dirty => {
                    dirty = true;
                    return false;
                }
                _ = tokio::time::sleep_until(published + COUNTS_EVERY), if dirty => {}
                _ = stop.wait_for(|s| *s) => return true,
            }
            ws.publish();
            published = Instant::now();
            dirty = false;
            false
        })
        .await;
        match round {
            Ok(true) => return,
            Ok(false) => backoff.succeeded(),
            Err(c) => {
                batch.clear();
                let pause = backoff.failed();
                ws.hub.count_restart("webhook_worker");
                crate::supervise::report("webhook_worker", &ws.id, &c, pause);
                if sleep_or_stop(Instant::now() + pause, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Show a long wait as such: while the client is held longer than a poll
/// interval (a `Retry-After`, a spent window), nothing syncs, so
/// `clawmesh_up` is 0 and `clawmesh_api_wait_seconds` counts down. A sync
/// blocked in the wait cannot publish; this does, every few seconds.
async fn watch_waits(ws: Arc<Workspace>, mut stop: watch::Receiver<bool>) {
    let tick = ws
        .cfg
        .interval
        .clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        if sleep_or_stop(Instant::now() + tick, &mut stop).await {
            return;
        }
        let held = ws.long_wait();
        let was = {
            let mut st = ws.lock();
            let was = std::mem::replace(&mut st.waiting, held.map(|h| h.1));
            st.set_up();
            was
        };
        match (was, held) {
            (None, Some((d, why))) => tracing::warn!(
                workspace = %ws.id,
                reason = why,
                wait = %humantime::format_duration(Duration::from_secs(d.as_secs())),
                "the API holds the next request longer than a poll interval; clawmesh_up is 0 until a sync succeeds after it"
            ),
            (Some(_), None) => tracing::info!(workspace = %ws.id, "the wait for the API is over"),
            _ => {}
        }
        if was.is_some() || held.is_some() {
            ws.publish();
        }
    }
}

/// The checkpoint loop's view of a workspace (`checkpoint::Checkpointed`).
impl checkpoint::Checkpointed for Workspace {
    fn id(&self) -> &str {
        &self.id
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn take(&self, shard: (u32, u32), taken: Timestamp) -> (crate::storage::Checkpoint, Snapshot) {
        let mut st = self.lock();
        let api = self.client.api_time();
        let c = crate::storage::Checkpoint {
            workspace: self.id.clone(),
            shard,
            saved_at: taken.micros(),
            api_saved_at: api.earliest.micros(),
            watermark: st.watermark.micros(),
            fleet: st.fleet.save(),
        };
        // Only its counters are read (`serve_durable`).
        let snap = st.fleet.snapshot(
            &self.id,
            api.estimate(),
            Default::default(),
            Default::default(),
        );
        (c, snap)
    }

    fn record(
        &self,
        f: &mut dyn FnMut(&mut crate::fleet::CheckpointHealth, &mut Option<Arc<Snapshot>>),
    ) -> bool {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(h) = st.health.checkpoint.as_mut() else {
            return false;
        };
        f(h, &mut st.durable);
        true
    }

    fn publish(&self) {
        Workspace::publish(self);
    }
}

impl Workspace {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read the agents these tasks name that the fleet does not know yet
    /// (created since the last listing), at most `left` of them per sync,
    /// so that their tasks count under the agents' breakdown values. A
    /// failed read ends the lookups of this sync: the tasks then count
    /// without agent values (the sum over the breakdown stays exact).
    async fn learn_agents(&self, page: &[crate::api::types::Task], left: &mut usize) {
        let unknown = self.lock().fleet.unknown_agents(page);
        for id in unknown {
            if *left == 0 {
                return;
            }
            // Past the share of the budget lookups may spend: the rest
            // count without agent values, and the next listing reads them.
            if !self.client.may_look_up_agent() {
                tracing::debug!(workspace = %self.id, "agent lookups have spent their share of the budget (--api.lookup-share); tasks count without agent values until the next listing");
                *left = 0;
                return;
            }
            *left -= 1;
            match self.client.agent(&id).await {
                Ok(agent) => {
                    let mut st = self.lock_at_api_time();
                    st.fleet.learn_agent(&id, agent.as_ref());
                }
                // An answer about this agent alone (a body not an agent, a
                // 4xx): not asked again for a while, the others still are.
                Err(e) if !e.is_retryable() && !e.is_fatal_auth() => {
                    tracing::warn!(workspace = %self.id, agent = %id, error = %e, "reading an agent its tasks name failed; those tasks count without its breakdown values");
                    self.lock().fleet.learn_agent(&id, None);
                }
                Err(e) => {
                    tracing::warn!(workspace = %self.id, error = %e, "reading an agent its tasks name failed; those tasks count without its breakdown values");
                    *left = 0;
                    return;
                }
            }
        }
    }

    /// The state, its fleet told the API's time now: the lock to apply what
    /// was just read under. The time is read first, so no lock is held
    /// while the client's clock is.
    fn lock_at_api_time(&self) -> std::sync::MutexGuard<'_, State> {
        let api_time = self.client.api_time();
        let mut st = self.lock();
        st.fleet.set_api_time(api_time);
        st
    }

    /// How long and why the client is held, when longer than a poll interval.
    fn long_wait(&self) -> Option<(Duration, &'static str)> {
        self.client
            .held_for()
            .filter(|(d, _)| *d > self.cfg.interval)
    }

    /// Sleep until the next sync of a loop that started its last at
    /// `start`; true when told to stop. While webhooks are healthy the wait
    /// is longer, but it is re-judged every `normal` interval, so polling
    /// speeds up again soon after events stop.
    async fn wait_next(
        &self,
        start: Instant,
        normal: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            let due = start + self.interval(normal);
            if sleep_or_stop(due.min(Instant::now() + normal), stop).await {
                return true;
            }
            if Instant::now() >= start + self.interval(normal) {
                return false;
            }
        }
    }

    /// `normal`, or the webhook poll interval while webhooks are healthy.
    fn interval(&self, normal: Duration) -> Duration {
        match &self.lock().webhook {
            Some(w) => w.poll_interval(normal),
            None => normal,
        }
    }

    /// Hands the fleet's snapshot and this stage's parts to the hub, which
    /// joins them (`fleet::Snapshot::join`); neither is patched here.
    fn publish(&self) {
        let (snap, parts) = {
            let mut st = self.lock();
            let State {
                fleet,
                health,
                webhook,
                restored,
                baseline,
                durable,
                ..
            } = &mut *st;
            let snap = fleet.snapshot(
                &self.id,
                self.client.api_time().estimate(),
                health.clone(),
                self.client.stats(),
            );
            let webhook = webhook.as_mut().map(|w| w.health());
            if *restored && baseline.is_none() {
                // The workspace as restored, webhook health and all.
                let restored = snap.clone().join(Parts {
                    webhook: webhook.clone(),
                    ..Parts::default()
                });
                *baseline = Some(Arc::new(restored));
                // With storage, what the checkpoint restored is durable
                // already; without (a reload's handoff), nothing ever is,
                // and the counters are served live.
                if self.cfg.storage.is_some() {
                    *durable = baseline.clone();
                }
            } else if durable.is_none() && self.cfg.storage.is_some() {
                // A fresh start: zero until the first write holds more.
                let fresh = snap.clone().join(Parts {
                    webhook: webhook.clone(),
                    ..Parts::default()
                });
                *durable = Some(Arc::new(fresh));
            }
            let parts = Parts {
                labels: self.labels.clone(),
                webhook,
                durable: durable.clone(),
                baseline: baseline.clone(),
            };
            (snap, parts)
        };
        self.hub.publish(snap, parts);
    }

    /// After a round of the loop of `resource`: true when told to stop.
    /// A round that panicked is a failed sync (the workspace is down until
    /// a round succeeds), counted as a restart, and the loop pauses.
    async fn after_round(
        &self,
        resource: usize,
        round: Result<bool, Caught>,
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let caught = match round {
            Ok(stopped) => {
                backoff.succeeded();
                return stopped;
            }
            Err(c) => c,
        };
        let task = ["poll_agents", "poll_tasks"][resource];
        let pause = backoff.failed();
        self.hub.count_restart(task);
        crate::supervise::report(task, &self.id, &caught, pause);
        {
            let mut st = self.lock();
            *st.health
                .sync_failures
                .entry(RESOURCES[resource])
                .or_insert(0) += 1;
            st.ok[resource] = false;
            st.set_up();
        }
        self.publish();
        sleep_or_stop(Instant::now() + pause, stop).await
    }

    /// Record how a sync of `resource` ended and publish.
    fn finish(&self, resource: usize, started: Timestamp, result: Result<(), ApiError>) {
        // Read before the lock: no lock is held while the client's is.
        let waiting = self.long_wait().map(|h| h.1);
        {
            let mut st = self.lock();
            let name = RESOURCES[resource];
            match &result {
                Ok(()) => {
                    st.health.last_sync.insert(name, started.as_secs_f64());
                    st.health.sync_failures.entry(name).or_insert(0);
                }
                Err(e) => {
                    *st.health.sync_failures.entry(name).or_insert(0) += 1;
                    tracing::warn!(workspace = %self.id, resource = name, error = %e, "sync failed; keeping the last good numbers");
                }
            }
            st.ok[resource] = result.is_ok();
            st.waiting = waiting;
            st.set_up();
        }
        self.publish();
    }

    async fn sync_agents(&self) {
        let started = Timestamp::host_now();
        crate::supervise::injected(&self.id, "poll_agents");
        let result = async {
            let api_start = self.client.api_time();
            let (agents, rejected) = self
                .client
                .list_agents()
                .collect_all_with_rejected()
                .await?;
            let mut st = self.lock_at_api_time();
            // One agent that cannot be read is that agent refused, not
            // the listing failed (which would keep agents unsynced).
            for m in &rejected {
                st.fleet.reject_malformed(m);
            }
            let unreadable: Vec<&str> = rejected.iter().filter_map(|m| m.id.as_deref()).collect();
            st.fleet.apply_agent_listing_keeping(
                &agents,
                &unreadable,
                api_start.latest,
                self.cfg.overlap,
            );
            drop(st);
            tracing::debug!(workspace = %self.id, agents = agents.len(), "agents synced");
            Ok(())
        }
        .await;
        self.finish(0, started, result);
    }
}

/// The task loop's own memory: where the incremental listing resumes.
struct TaskSync {
    /// The newest `updated_at` an incremental listing read (complete or
    /// cut short), never past the API's time at that listing's start.
    watermark: Timestamp,
    last_reconcile: Option<Instant>,
    /// Restored from a checkpoint: resuming (no missed webhook event is
    /// suspected) until a complete listing started after this instant
    /// (the API's clock).
    resume_after: Option<Timestamp>,
}

impl TaskSync {
    fn new(started: Timestamp) -> Self {
        TaskSync {
            watermark: started,
            last_reconcile: None,
            resume_after: None,
        }
    }

    async fn run(&mut self, ws: &Workspace) {
        // Health is on the host's clock (Prometheus compares it with
        // time()); everything compared with API timestamps is on the API's.
        let started = Timestamp::host_now();
        let result = self.sync(ws).await;
        ws.finish(1, started, result);
    }

    async fn sync(&mut self, ws: &Workspace) -> Result<(), ApiError> {
        // What this sync counts is priced with the table in force now (a
        // reload replaces it in place, restarting no slot).
        let prices = ws.cfg.prices.current();
        ws.lock().fleet.set_prices(prices);
        let started = ws.client.api_time();
        let due = self
            .last_reconcile
            .is_none_or(|t| t.elapsed() >= ws.cfg.reconcile_interval);
        // A failed reconciliation must not stop counting: the incremental
        // listing runs anyway, and the error is reported after it.
        let mut reconciled = Ok(());
        if due {
            reconciled = self.reconcile(ws, started).await;
            if reconciled.is_ok() {
                self.last_reconcile = Some(Instant::now());
            }
        }
        // The earliest the API's clock can read now: were it later, the
        // watermark could pass a change that becomes visible late.
        let listing_start = ws.client.api_time().earliest;
        // Re-read the overlap window: a change with an older updated_at may
        // have become visible since the last listing (visibility lag).
        let query = TaskQuery {
            statuses: vec![],
            updated_after: Some(self.watermark.saturating_sub(ws.cfg.overlap)),
            sort_by_updated_at: true,
        };
        let mut newest = self.watermark;
        let mut lookups = ws.cfg.max_agent_lookups;
        let mut listing = ws.client.list_tasks(query);
        let read = loop {
            let ev = match listing.next().await {
                Ok(Some(ev)) => ev,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            if let ListEvent::Page(page) = ev {
                ws.learn_agents(&page, &mut lookups).await;
                let mut st = ws.lock_at_api_time();
                let State {
                    fleet,
                    webhook,
                    resuming,
                    ..
                } = &mut *st;
                for t in &page {
                    let applied = fleet.apply_task(t);
                    // Resuming, polling re-counts what the stopped process
                    // had counted from events that will not come again:
                    // no suspicion of a missed event.
                    if let (Some(w), false) = (webhook.as_mut(), *resuming) {
                        w.polled(t, applied);
                    }
                    if applied != crate::fleet::Applied::Rejected {
                        newest = newest.max(t.updated_at);
                    }
                }
                // Mid-listing, the lock held (it is poisoned then): the
                // watermark has not moved, so the next round reads it all
                // again and the ledger keeps the counts exact.
                // A task that cannot be read is refused alone; its
                // updated_at, when it reads, moves the watermark as any
                // other's (one that does not read cannot hold it back).
                for m in listing.take_rejected() {
                    fleet.reject_malformed(&m);
                    if let Some(at) = m.updated_at {
                        newest = newest.max(at);
                    }
                }
                crate::supervise::injected(&ws.id, "poll_tasks");
            }
        };
        // The watermark moves to the newest updated_at read, never past the
        // listing's own start: a change made while the pages were read
        // (budget waits, Retry-After) may have become visible only after
        // its page went by, yet a later page can carry a newer updated_at.
        // Only a change with updated_at after start minus the lag can have
        // been invisible when its place went by; the overlap (longer than
        // the lag) re-reads those next time. That holds as well for the
        // pages a failed listing did read (ordered by updated_at, they are
        // every change up to the newest read): so a listing cut short (a
        // page cap, its deadline, an error) still moves on, and one that
        // can never finish in one go (a backlog after a long stop) ends.
        self.watermark = newest.min(listing_start);
        ws.lock().watermark = self.watermark;
        read?;
        let forget_before = started
            .earliest
            .saturating_sub(ws.cfg.dedup_horizon)
            .min(self.watermark.saturating_sub(ws.cfg.overlap));
        // Raise, then tell the time: a floor that still follows an
        // unconfirmed clock is set from it, kept above what was pruned.
        let api_time = ws.client.api_time();
        let mut st = ws.lock();
        st.fleet.raise_floor(forget_before);
        st.fleet.set_api_time(api_time);
        st.fleet.settle();
        if self.resume_after.is_some_and(|t| listing_start >= t) {
            self.resume_after = None;
            st.resuming = false;
        }
        drop(st);
        reconciled
    }

    /// A full listing of open tasks: repairs the open set (gauges) from the
    /// source. Counting stays with the incremental listing and the ledger.
    /// Pending and running are listed whole; statuses the contract does not
    /// name (held by some open task) only as far back as they count as
    /// open, in as many listings as keep each URL short.
    async fn reconcile(&mut self, ws: &Workspace, started: ApiTime) -> Result<(), ApiError> {
        let (known, unknown, ttl) = {
            let st = ws.lock();
            let (k, u) = st.fleet.open_statuses();
            (k, u, st.fleet.unknown_status_ttl())
        };
        let since = started.earliest.saturating_sub(ttl);
        let mut queries = vec![TaskQuery {
            statuses: known.clone(),
            updated_after: None,
            sort_by_updated_at: false,
        }];
        queries.extend(
            status_chunks(&unknown, MAX_STATUS_PARAM).map(|statuses| TaskQuery {
                statuses,
                updated_after: Some(since),
                sort_by_updated_at: false,
            }),
        );
        let mut seen: HashSet<String> = HashSet::new();
        let mut lookups = ws.cfg.max_agent_lookups;
        for query in queries {
            let mut mine: HashSet<String> = HashSet::new();
            let mut listing = ws.client.list_tasks(query);
            while let Some(ev) = listing.next().await? {
                match ev {
                    ListEvent::Page(page) => {
                        ws.learn_agents(&page, &mut lookups).await;
                        let mut st = ws.lock_at_api_time();
                        for t in page {
                            st.fleet.apply_task(&t);
                            mine.insert(t.id);
                        }
                        // A refused open task whose id reads stays open
                        // (what was known of it stands).
                        for m in listing.take_rejected() {
                            st.fleet.reject_malformed(&m);
                            mine.extend(m.id);
                        }
                    }
                    ListEvent::Restarted => mine.clear(),
                }
            }
            seen.extend(mine);
        }
        let asked: HashSet<String> = known.into_iter().chain(unknown).collect();
        ws.lock()
            .fleet
            .retain_open(&seen, &asked, started.latest, ws.cfg.overlap);
        Ok(())
    }
}

/// The longest `status=` value a reconciliation sends (bytes of the names
/// and commas, before escaping): URLs stay far below what servers and
/// proxies accept (commonly 8 KiB).
const MAX_STATUS_PARAM: usize = 1024;

/// `names` in groups whose comma-joined length stays within `max`; a name
/// longer than `max` alone is left out (it cannot be asked for safely).
fn status_chunks(names: &[String], max: usize) -> impl Iterator<Item = Vec<String>> + '_ {
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut len = 0;
    for n in names.iter().filter(|n| !n.is_empty() && n.len() <= max) {
        match chunks.last_mut() {
            Some(c) if len + 1 + n.len() <= max => {
                c.push(n.clone());
                len += 1 + n.len();
            }
            _ => {
                chunks.push(vec![n.clone()]);
                len = n.len();
            }
        }
    }
    chunks.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_micros(1_800_000_000_000_000 + secs * 1_000_000)
    }

    fn agent(id: &str, labels: &str) -> crate::api::types::Agent {
        let json = format!(
            r#"{{"id":"{id}","status":"busy","created_at":"2026-11-23T10:15:02Z","updated_at":"2026-11-23T10:15:02Z","labels":{labels}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    fn finished(id: &str, agent: &str) -> crate::api::types::Task {
        let t = at(5).to_rfc3339();
        let json = format!(
            r#"{{"id":"{id}","agent_id":"{agent}","status":"completed","created_at":"{t}","updated_at":"{t}","started_at":"{t}","finished_at":"{t}"}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    /// With storage, the counters are served as the last checkpoint had
    /// them. A dimension discovered since (an agent label key the
    /// patterns choose) pads every slice with an empty value: the same
    /// series, which must go on at its durable value, not fall to 0 until
    /// the next write; and slices freed since (`Breakdown::expire`) must
    /// be served where their counts went, so that the served slices still
    /// sum to the served totals.
    #[test]
    fn durable_counters_are_served_through_a_new_dimension_and_freed_slices() {
        let cfg = crate::fleet::BreakdownConfig {
            agent_labels: crate::fleet::Patterns {
                allow: vec!["team*".into()],
                deny: vec![],
            },
            ..Default::default()
        };
        let mut f = Fleet::new(at(0)).with_breakdown(&cfg, &["workspace".into()]);
        let red = agent("a1", r#"{"team":"red"}"#);
        f.apply_agent_listing_at(
            &[red, agent("a2", r#"{"team":"blue"}"#)],
            at(1),
            Duration::ZERO,
        );
        f.apply_task(&finished("t1", "a1"));
        f.apply_task(&finished("t2", "a2"));
        let snap = |f: &mut Fleet| f.snapshot("ws", at(10), Health::default(), Default::default());
        let durable = snap(&mut f);
        let served = |f: &mut Fleet| {
            let mut s = snap(f);
            crate::fleet::serve_durable(&mut s, &durable);
            let by_team: std::collections::BTreeMap<String, u64> = s
                .task_groups
                .iter()
                .map(|g| (g.by.join(","), g.counters.finished["completed"]))
                .collect();
            let sum: u64 = by_team.values().sum();
            assert_eq!(sum, s.counters.finished["completed"], "{by_team:?}");
            by_team
        };
        // A new label key: a new dimension; a2 went.
        let red_b = agent("a1", r#"{"team":"red","team_b":"x"}"#);
        f.apply_agent_listing_at(std::slice::from_ref(&red_b), at(20), Duration::ZERO);
        let by_team = served(&mut f);
        assert_eq!(by_team.get("red,"), Some(&1), "{by_team:?}");
        assert_eq!(by_team.get("blue,"), Some(&1), "{by_team:?}");
        // The tasks are forgotten, a2's values too: their slices are freed.
        f.raise_floor(at(6));
        f.apply_agent_listing_at(&[red_b], at(20 + 3601), Duration::ZERO);
        let by_team = served(&mut f);
        assert_eq!(by_team.get("blue,"), None, "{by_team:?}");
    }

    /// A reload while the API is down (or slow to answer the key check for
    /// longer than `Handoffs::KEEP`): the stopped slot's handoff must wait
    /// for its successor's key check, else the successor, without
    /// storage, starts every counter from zero when the API comes back;
    /// with no key check left under way, it goes after `KEEP`.
    #[test]
    fn a_handoff_waits_past_its_keep_while_a_key_check_is_pending() {
        let h = Arc::new(Handoffs::default());
        let saved = || Fleet::new(Timestamp::from_micros(0)).save();
        let wm = Timestamp::from_micros(7);
        let t0 = std::time::Instant::now();
        let late = t0 + Handoffs::KEEP + Duration::from_secs(1);
        let checking = h.checking();
        h.put_at("w1", saved(), wm, t0);
        h.put_at("w2", saved(), wm, t0);
        assert!(h.take_at("w3", late).is_none());
        // The successor's own check just settled; another is still under way.
        let other = h.checking();
        drop(checking);
        let taken = h.take_at("w1", late).map(|(_, w)| w.micros());
        assert_eq!(taken, Some(7), "dropped while a key check was pending");
        drop(other);
        assert!(h.take_at("w2", late).is_none(), "kept past KEEP for nobody");
    }

    #[test]
    fn reconciliation_statuses_split_into_short_groups() {
        let names: Vec<String> = (0..40)
            .map(|i| format!("status_{i:03}_{}", "x".repeat(90)))
            .collect();
        let chunks: Vec<Vec<String>> = status_chunks(&names, MAX_STATUS_PARAM).collect();
        assert!(chunks.len() > 1);
        for c in &chunks {
            assert!(
                c.join(",").len() <= MAX_STATUS_PARAM,
                "{}",
                c.join(",").len()
            );
        }
        let all: Vec<String> = chunks.concat();
        assert_eq!(all, names, "every name asked for once, in order");
        let huge = vec!["y".repeat(MAX_STATUS_PARAM + 1), "ok".to_string()];
        assert_eq!(
            status_chunks(&huge, MAX_STATUS_PARAM).collect::<Vec<_>>(),
            vec![vec!["ok".to_string()]]
        );
    }

    /// A label dimension discovered after the last checkpoint pads every
    /// slice's values with "": the durable counters must still be served
    /// for them (found by the seams suite: after a reload to agent labels
    /// with storage, every served total fell to 0 until the next write).
    #[test]
    fn durable_counters_are_served_when_a_dimension_was_discovered_since() {
        use crate::api::types::{Agent, Task, TaskStatus, Timestamp};
        let t = |s: i64| Timestamp::from_micros(1_800_000_000_000_000 + s * 1_000_000);
        let cfg = crate::fleet::BreakdownConfig {
            agent_labels: crate::fleet::Patterns {
                allow: vec!["team".into()],
                deny: vec![],
            },
            ..Default::default()
        };
        let mut f = Fleet::new(t(0)).with_breakdown(&cfg, &["workspace".into()]);
        let task = Task {
            agent_id: None,
            labels: Vec::new(),
            id: "t1".into(),
            status: TaskStatus::from_name("completed"),
            created_at: t(1),
            updated_at: t(3),
            started_at: Some(t(2)),
            finished_at: Some(t(3)),
            ..serde_json::from_str(r#"{"id":"x","status":"pending","created_at":"2027-01-15T08:00:00Z","updated_at":"2027-01-15T08:00:00Z"}"#).unwrap()
        };
        f.apply_task(&task);
        let durable = f.snapshot("ws", t(5), Health::default(), Default::default());
        assert!(durable.dims.is_empty(), "no label key seen yet");
        let agent: Agent = serde_json::from_str(r#"{"id":"a1","status":"idle","labels":{"team":"red"},"created_at":"2027-01-15T08:00:00Z","updated_at":"2027-01-15T08:00:00Z"}"#).unwrap();
        f.apply_agent_listing(&[agent]);
        let mut live = f.snapshot("ws", t(6), Health::default(), Default::default());
        assert_eq!(live.dims, ["team"]);
        crate::fleet::serve_durable(&mut live, &durable);
        let served: u64 = live
            .task_groups
            .iter()
            .map(|g| g.counters.finished["completed"])
            .sum();
        assert_eq!(
            served, 1,
            "the durable count is served under the padded slice"
        );
    }
}
