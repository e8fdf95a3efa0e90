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
use std::time::{Duration, Instant};

/// A format (or its bytes as they are) not asked for in this long is no
/// longer rendered at each sync; the next ask renders it again. Longer
/// than any scrape interval.
pub const ASKED_WITHIN: Duration = Duration::from_secs(600);

/// The process's resources are read at most this often. A render runs at
/// each publish (each poll of each workspace: 50 workspaces at 1 s are 50
/// a second), and each read (a thread for its deadline, `/proc/self/stat`,
/// a walk of `/proc/self/fd`: 1.7 ms at 1,100 descriptors, debug build)
/// runs under the state's lock; a served value is at most this old.
pub const RESOURCES_EVERY: Duration = Duration::from_secs(1);

/// One render of each format, by [`Format`] index.
type Expositions = [Option<Arc<Exposition>>; 3];

/// When a format was last asked for.
#[derive(Debug, Default, Clone, Copy)]
struct Asked {
    any: Option<Instant>,
    /// Without gzip: the bytes as they are are kept too.
    identity: Option<Instant>,
}

impl Asked {
    fn recent(at: Option<Instant>) -> bool {
        at.is_some_and(|t| t.elapsed() < ASKED_WITHIN)
    }
}

fn slot(f: Format) -> usize {
    match f {
        Format::Text => 0,
        Format::OpenMetrics => 1,
        Format::Protobuf => 2,
    }
}

#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    /// The last render of each format asked for lately; `None` for one
    /// nobody asked for since (rendered at the first ask).
    expositions: RwLock<Expositions>,
    /// When each format was last asked for, and in it the bytes as they are.
    asked: Mutex<[Asked; 3]>,
    /// What a render shows beyond the numbers (`--web.disable-exemplars`).
    options: Options,
    /// The HTTP server's counts, read at each render.
    http: Arc<crate::metrics::ServerStats>,
    /// What the last render showed of them, so that OTLP pushes the same.
    http_rendered: Mutex<crate::metrics::HttpStats>,
    /// The process's CPU, memory and descriptors as the last render read
    /// them, and when (at a render at most every [`RESOURCES_EVERY`], never
    /// per scrape), so that OTLP pushes the same.
    resources_rendered: Mutex<Option<(Instant, crate::metrics::ProcessResources)>>,
    /// How many times the resources were read (tests).
    resource_reads: std::sync::atomic::AtomicU64,
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
        Hub::with_options(Options::default())
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// A hub whose renders show what `options` says. Nothing is rendered
    /// until a scrape asks (or a sync publishes and the text format, the
    /// default, has been asked for lately).
    pub fn with_options(options: Options) -> Self {
        Hub {
            state: Mutex::new(State::default()),
            expositions: RwLock::new(Default::default()),
            asked: Mutex::new(Default::default()),
            options,
            http: Default::default(),
            http_rendered: Default::default(),
            resources_rendered: Default::default(),
            resource_reads: Default::default(),
            killed: Default::default(),
        }
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
                .as_ref()
                .map(|(_, r)| r.clone()),
            ..st.process_view()
        }
    }

    /// Renders, once per change, every format asked for lately (a format
    /// nobody reads is not rendered; the others are dropped, so that a
    /// scrape never reads one older than the numbers).
    fn render(&self, st: &State) {
        *self.http_rendered.lock().unwrap_or_else(|p| p.into_inner()) = self.http.snapshot();
        {
            let mut res = self
                .resources_rendered
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if res
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= RESOURCES_EVERY)
            {
                *res = Some((Instant::now(), self.read_resources()));
            }
        }
        let asked = *self.lock_asked();
        let mut next: Expositions = Default::default();
        for f in Format::ALL {
            let a = asked[slot(f)];
            if Asked::recent(a.any) {
                next[slot(f)] = Some(self.render_one(st, f, Asked::recent(a.identity)));
            }
        }
        *self.expositions.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Renders `format` from the snapshots held, not copies of them (at
    /// the breakdowns' caps a snapshot is megabytes), reserving the last
    /// render's size: growing by doubling would peak at up to twice it.
    fn render_one(&self, st: &State, format: Format, identity: bool) -> Arc<Exposition> {
        let last = self.current(format).map_or(0, |e| e.gzip.len());
        Arc::new(Exposition::render(
            format,
            &self.options,
            &self.process_view(st),
            &st.all_snapshots(),
            last,
            identity,
        ))
    }

    fn current(&self, format: Format) -> Option<Arc<Exposition>> {
        self.expositions.read().unwrap_or_else(|p| p.into_inner())[slot(format)].clone()
    }

    /// The exposition in the text format (tests, and a reader that does
    /// not negotiate).
    pub fn exposition(&self) -> Arc<Exposition> {
        self.exposition_for(Format::Text, false)
    }

    /// The last render in `format`, rendered now if nobody asked for it
    /// lately (then at each sync while it is asked for). `identity`: the
    /// scraper takes no gzip, so its bytes as they are are kept from the
    /// next render on (until then it is inflated as it is read).
    pub fn exposition_for(&self, format: Format, identity: bool) -> Arc<Exposition> {
        if let Some(e) = self.cached(format, identity) {
            return e;
        }
        // Under the state's lock, as a sync's render: one render of what
        // the snapshots hold, whoever asks at once.
        let st = self.lock();
        if let Some(e) = self.current(format) {
            return e;
        }
        // Asked before any change was rendered: the process's resources
        // as a render reads them.
        self.resources_rendered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| (Instant::now(), self.read_resources()));
        let e = self.render_one(&st, format, identity);
        self.expositions.write().unwrap_or_else(|p| p.into_inner())[slot(format)] = Some(e.clone());
        e
    }

    /// The last render in `format` if there is one (it is asked for now:
    /// see [`Hub::exposition_for`]); `None` when it must be rendered, which
    /// the server does off its async threads.
    pub fn cached(&self, format: Format, identity: bool) -> Option<Arc<Exposition>> {
        {
            let mut asked = self.lock_asked();
            let now = Some(Instant::now());
            asked[slot(format)].any = now;
            if identity {
                asked[slot(format)].identity = now;
            }
        }
        self.current(format)
    }

    fn read_resources(&self) -> crate::metrics::ProcessResources {
        self.resource_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        crate::metrics::ProcessResources::read()
    }

    fn lock_asked(&self) -> std::sync::MutexGuard<'_, [Asked; 3]> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_is_rendered_at_its_first_ask_then_once_per_change() {
        let hub = Hub::default();
        assert!(Format::ALL.iter().all(|f| hub.current(*f).is_none()));
        let a = hub.exposition_for(Format::OpenMetrics, false);
        let b = hub.exposition_for(Format::OpenMetrics, false);
        assert!(Arc::ptr_eq(&a, &b), "a second scrape rendered again");
        assert!(a.identity.is_none());
        hub.update_process(|p| p.workspaces_configured = 3);
        let c = hub
            .current(Format::OpenMetrics)
            .expect("rendered at the change");
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(
            hub.current(Format::Protobuf).is_none() && hub.current(Format::Text).is_none(),
            "a format nobody asked for was rendered"
        );
        // A scraper without gzip: its bytes as they are from the next render on.
        let d = hub.exposition_for(Format::OpenMetrics, true);
        assert!(Arc::ptr_eq(&c, &d) && d.identity.is_none());
        hub.update_process(|p| p.workspaces_configured = 4);
        let e = hub.current(Format::OpenMetrics).unwrap();
        assert_eq!(
            e.identity.as_deref().map(<[u8]>::to_vec),
            Some(crate::expose::Exposition::text(&e).into_bytes())
        );
    }

    /// A render runs at each publish (each poll of each workspace, each
    /// OTLP health change): the process's resources are read at most once
    /// a second of them, not at each.
    #[test]
    fn the_process_resources_are_read_at_most_once_a_second_of_renders() {
        let hub = Hub::default();
        hub.exposition_for(Format::Text, false);
        let start = Instant::now();
        for i in 0..200 {
            hub.update_process(|p| p.workspaces_configured = i);
        }
        let reads = hub.resource_reads.load(std::sync::atomic::Ordering::SeqCst);
        let most = 2 + start.elapsed().as_secs() / RESOURCES_EVERY.as_secs();
        assert!(
            (1..=most).contains(&reads),
            "{reads} reads for 200 renders in {:?}",
            start.elapsed()
        );
        assert!(hub.process().resources.is_some());
    }
}
