//! Where the poll loops leave their results and the HTTP server picks them
//! up: the latest snapshot per workspace and the exposition rendered from
//! them. A scrape reads an `Arc`; it never renders and never calls the API.

use crate::expose::{self, Exposition};
use crate::fleet::{ExportHealth, Snapshot};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug)]
pub struct Hub {
    snapshots: Mutex<BTreeMap<String, Snapshot>>,
    exposition: RwLock<Arc<Exposition>>,
    expected_workspaces: Mutex<usize>,
    /// The OTLP pusher's health per workspace; `None` when OTLP is off.
    otlp: Mutex<Option<BTreeMap<String, ExportHealth>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            snapshots: Mutex::new(BTreeMap::new()),
            exposition: RwLock::new(Arc::new(Exposition::new(expose::render(&[])))),
            expected_workspaces: Mutex::new(0),
            otlp: Mutex::new(None),
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// One more workspace must complete a sync before the exporter is ready.
    pub fn expect_workspace(&self) {
        *lock(&self.expected_workspaces) += 1;
    }

    /// Replace a workspace's snapshot and re-render the exposition, once.
    pub fn publish(&self, snap: Snapshot) {
        let mut all = lock(&self.snapshots);
        all.insert(snap.workspace.clone(), snap);
        self.render(&mut all);
    }

    /// The OTLP pusher reports how its exports went: stamped into every
    /// snapshot (so both ways out show it) and re-rendered at once.
    pub fn set_otlp_health(&self, health: BTreeMap<String, ExportHealth>) {
        let mut all = lock(&self.snapshots);
        *lock(&self.otlp) = Some(health);
        self.render(&mut all);
    }

    /// Render under the snapshots lock, so two renders cannot land out of order.
    fn render(&self, all: &mut BTreeMap<String, Snapshot>) {
        if let Some(health) = &*lock(&self.otlp) {
            for (ws, snap) in all.iter_mut() {
                snap.otlp = Some(health.get(ws).cloned().unwrap_or_default());
            }
        }
        let list: Vec<Snapshot> = all.values().cloned().collect();
        let e = Arc::new(Exposition::new(expose::render(&list)));
        *self.exposition.write().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn exposition(&self) -> Arc<Exposition> {
        self.exposition
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        lock(&self.snapshots).values().cloned().collect()
    }

    /// Ready once every expected workspace has completed a sync of every resource.
    pub fn is_ready(&self) -> bool {
        let expected = *lock(&self.expected_workspaces);
        let all = lock(&self.snapshots);
        expected > 0
            && all.len() >= expected
            && all.values().all(|s| {
                crate::poll::RESOURCES
                    .iter()
                    .all(|r| s.health.last_sync.contains_key(r))
            })
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain
/// data; serving the data beats serving nothing.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
