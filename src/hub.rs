//! Where the poll loops leave their results and the HTTP server picks them
//! up: the latest snapshot per workspace, the process-level facts (shard,
//! reloads), and the exposition rendered from them. A scrape reads an
//! `Arc`; it never renders and never calls the API.
//!
//! The hub is where a workspace's parts meet (see `fleet::snapshot`): it
//! joins the fleet's snapshot with the poll stage's parts as they are
//! handed over, and sets its own part, the OTLP pusher's health, on the
//! joined snapshots it holds. The renderers read only those.

use crate::expose::{Exposition, Format, Options};
use crate::fleet::{ExportHealth, Parts, Snapshot};
use crate::metrics::ProcessInfo;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    exposition: RwLock<Arc<Exposition>>,
    /// The HTTP server's counts, read at each render.
    http: Arc<crate::metrics::ServerStats>,
    /// What the last render showed of them, so that OTLP pushes the same.
    http_rendered: Mutex<crate::metrics::HttpStats>,
    /// The process's CPU, memory and descriptors as the last render read
    /// them (at each render, never per scrape), so that OTLP pushes the same.
    resources_rendered: Mutex<Option<crate::metrics::ProcessResources>>,
    /// The test seam of a crash: the stop writes no last checkpoint, as
    /// after `kill -9` (`Running::stop_as_if_killed`).
    killed: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    snapshots: BTreeMap<String, Snapshot>,
    /// Per configured slot whose key check has not settled (unreachable
    /// API, a rejected key after a reload): a snapshot with `clawmesh_up`
    /// 0, so that such a workspace shows and alerts from the first scrape.
    pending: BTreeMap<String, Snapshot>,
    /// Workspaces this process polls; each must sync before it is ready.
    expected: BTreeSet<String>,
    /// The initial assignment of workspaces is done (a shard may own none).
    started: bool,
    process: ProcessInfo,
    /// The OTLP pusher's health per workspace; `None` when OTLP is off.
    otlp: Option<BTreeMap<String, ExportHealth>>,
}

impl State {
    /// The process facts with what the workspaces' snapshots share: the
    /// webhook receiver's refusals that name no workspace (the same counts
    /// in every snapshot, shown once).
    fn process_view(&self) -> ProcessInfo {
        let mut p = self.process.clone();
        p.webhook_unattributed = self
            .snapshots
            .values()
            .find_map(|s| s.webhook.as_ref().map(|w| w.unattributed.clone()));
        p
    }

    /// The hub's own part of every joined snapshot: the OTLP export health,
    /// so that both ways out show it.
    fn set_export_health(&mut self) {
        if let Some(health) = &self.otlp {
            for (ws, snap) in self.snapshots.iter_mut() {
                snap.set_export_health(Some(health.get(ws).cloned().unwrap_or_default()));
            }
        }
    }
}

impl State {
    /// What is exposed: the polled workspaces, then the pending slots whose
    /// `workspace` label no other snapshot has (two series with one label
    /// set would break the scrape).
    fn all_snapshots(&self) -> Vec<&Snapshot> {
        let mut seen: BTreeSet<&str> = self.snapshots.keys().map(String::as_str).collect();
        let mut list: Vec<&Snapshot> = self.snapshots.values().collect();
        for p in self.pending.values() {
            if seen.insert(p.workspace.as_str()) {
                list.push(p);
            }
        }
        list
    }
}

impl Default for Hub {
    fn default() -> Self {
        let state = State::default();
        let e = Exposition::render::<Snapshot>(
            Format::Text,
            &Options::default(),
            &state.process,
            &[],
            0,
            false,
        );
        Hub {
            state: Mutex::new(state),
            exposition: RwLock::new(Arc::new(e)),
            http: Default::default(),
            http_rendered: Default::default(),
            resources_rendered: Default::default(),
            killed: Default::default(),
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// From now on, stopping is as after `kill -9`: no last checkpoint.
    pub fn kill(&self) {
        self.killed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn killed(&self) -> bool {
        self.killed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Claim `workspace` for one slot, which must then complete a sync
    /// before the exporter is ready: false when another slot of this
    /// process already polls it (two config entries with keys of the same
    /// workspace), which must not both publish under one id.
    pub fn claim(&self, workspace: &str) -> bool {
        let mut st = self.lock();
        let new = st.expected.insert(workspace.to_string());
        st.process.workspaces_owned = st.expected.len();
        new
    }

    /// The configured slot `slot` has not settled yet (its key check cannot
    /// reach the API, or its key was refused): show `snap` for it, and the
    /// exporter is not ready.
    pub fn set_pending(&self, slot: &str, snap: Snapshot) {
        let mut st = self.lock();
        st.pending.insert(slot.to_string(), snap);
        self.render(&st);
    }

    /// The slot `slot` settled (it polls, another shard owns it, or it
    /// stopped): its pending series go.
    pub fn settle(&self, slot: &str) {
        let mut st = self.lock();
        if st.pending.remove(slot).is_some() {
            self.render(&st);
        }
    }

    /// This process no longer polls `workspace`: its series go.
    pub fn forget(&self, workspace: &str) {
        let mut st = self.lock();
        st.expected.remove(workspace);
        st.snapshots.remove(workspace);
        st.process.workspaces_owned = st.expected.len();
        self.render(&st);
    }

    /// Replace a workspace's snapshot with the fleet's `snap` joined with
    /// the poll stage's `parts`, and re-render the exposition, once. A
    /// snapshot of a workspace no longer expected (a late publish after a
    /// reload stopped it) is dropped.
    pub fn publish(&self, snap: Snapshot, parts: Parts) {
        let mut st = self.lock();
        if !st.expected.contains(&snap.workspace) {
            return;
        }
        st.snapshots
            .insert(snap.workspace.clone(), snap.join(parts));
        st.set_export_health();
        self.render(&st);
    }

    /// Change the process-level facts and re-render.
    pub fn update_process(&self, f: impl FnOnce(&mut ProcessInfo)) {
        let mut st = self.lock();
        f(&mut st.process);
        self.render(&st);
    }

    /// A guarded loop panicked and goes on (see `supervise`).
    pub fn count_restart(&self, task: &'static str) {
        self.update_process(|p| *p.task_restarts.entry(task).or_insert(0) += 1);
    }

    /// The OTLP pusher reports how its exports went; re-rendered at once.
    pub fn set_otlp_health(&self, health: BTreeMap<String, ExportHealth>) {
        let mut st = self.lock();
        st.otlp = Some(health);
        st.set_export_health();
        self.render(&st);
    }

    /// The initial assignment of workspaces is done.
    pub fn set_started(&self) {
        self.lock().started = true;
    }

    /// Where the HTTP server counts what it refused.
    pub fn http_stats(&self) -> Arc<crate::metrics::ServerStats> {
        self.http.clone()
    }

    /// The process facts with the HTTP server's counts as last rendered.
    fn process_view(&self, st: &State) -> ProcessInfo {
        ProcessInfo {
            http: self
                .http_rendered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            resources: self
                .resources_rendered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..st.process_view()
        }
    }

    /// Renders from the snapshots held, not copies of them (at the
    /// breakdowns' caps a snapshot is megabytes), reserving the last
    /// render's size: growing by doubling would peak at up to twice it.
    fn render(&self, st: &State) {
        let list = st.all_snapshots();
        *self.http_rendered.lock().unwrap_or_else(|p| p.into_inner()) = self.http.snapshot();
        *self
            .resources_rendered
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(crate::metrics::ProcessResources::read());
        let last = self.exposition().gzip.len();
        let e = Arc::new(Exposition::render(
            Format::Text,
            &Options::default(),
            &self.process_view(st),
            &list,
            last,
            false,
        ));
        *self.exposition.write().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn exposition(&self) -> Arc<Exposition> {
        self.exposition
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every workspace's snapshot, pending slots included (OTLP carries
    /// their `clawmesh_up` 0 too).
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.lock().all_snapshots().into_iter().cloned().collect()
    }

    pub fn process(&self) -> ProcessInfo {
        self.process_view(&self.lock())
    }

    /// Ready once the workspaces are assigned, no configured slot is still
    /// pending, and every workspace this process polls has completed a sync
    /// of every resource.
    pub fn is_ready(&self) -> bool {
        let st = self.lock();
        st.started
            && st.pending.is_empty()
            && st.expected.iter().all(|w| {
                st.snapshots.get(w).is_some_and(|s| {
                    crate::fleet::RESOURCES
                        .iter()
                        .all(|r| s.health.last_sync.contains_key(r))
                })
            })
    }

    /// A poisoned lock only means another thread panicked mid-update of
    /// plain data; serving the data beats serving nothing.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
