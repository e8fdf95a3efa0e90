//! Wiring of one exporter process: the HTTP server first (so /healthz
//! answers while keys are checked), then one supervised slot per configured
//! workspace (key check, shard ownership, poll loops), and reloads of the
//! configuration file that keep unchanged workspaces running; when
//! configured, the OTLP pusher.

use crate::api::Client;
use crate::config::Config;
use crate::config_file::WorkspaceConfig;
use crate::env::{Env, ProcessEnv};
use crate::hub::Hub;
use crate::poll::{self, KeyError};
use crate::shard::Shard;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// An exporter that is serving and polling.
pub struct Running {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    /// The id of the first workspace this process polls ("" if none).
    pub workspace: String,
    supervisor: Arc<Supervisor>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    signals: JoinHandle<()>,
    otlp: Option<crate::otlp::Pusher>,
}

/// Why a workspace cannot be watched with its configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}{source}", in_workspace(workspace))]
    Key { workspace: String, source: KeyError },
    #[error("workspace {workspace}: the key belongs to workspace {actual}, not {expected}: fix `id` or the key")]
    WrongWorkspace {
        workspace: String,
        expected: String,
        actual: String,
    },
    #[error("workspace {workspace}: its key belongs to workspace {id}, which another entry of the configuration already watches: remove one")]
    Duplicate { workspace: String, id: String },
    #[error("cannot serve on {0}")]
    Listen(std::io::Error),
}

/// Start serving on `listener` and watching the configured workspaces that
/// this shard owns. Fails when a key cannot work (rejected, expired,
/// lacking a scope, another workspace's); an unreachable API is retried in
/// the background, with /readyz saying not ready.
pub async fn start(cfg: &Config, listener: TcpListener) -> Result<Running, StartError> {
    crate::supervise::install_panic_hook();
    // Before anything can take time: a SIGHUP during the key checks must
    // not kill the process (the default action); it reloads once started.
    let hangups = Hangups::listen();
    let hub = Arc::new(Hub::with_options(cfg.exposition));
    let addr = listener.local_addr().map_err(StartError::Listen)?;
    let (stop, stop_rx) = watch::channel(false);
    // Webhooks: on the main listener, so they share its TLS and basic auth.
    let receiver = cfg.webhook.clone().map(crate::webhook::Receiver::new);
    let supervisor = Arc::new(Supervisor {
        hub: hub.clone(),
        reloading: tokio::sync::Mutex::new(()),
        receiver: receiver.clone(),
        shard: cfg.shard,
        config_file: cfg.config_file.clone(),
        files: cfg.files,
        storage: cfg
            .storage
            .clone()
            .map(|s| crate::storage::Storage::open(s, (cfg.shard.index, cfg.shard.total))),
        prices: crate::prices::Prices::new(crate::prices::PriceTable::clone(&cfg.prices.table)),
        prices_flags: cfg.prices.flags.clone(),
        stopping: stop_rx.clone(),
        handoffs: Default::default(),
        slots: tokio::sync::Mutex::new(BTreeMap::new()),
    });
    hub.update_process(|p| {
        p.shard = cfg.shard;
        p.workspaces_configured = cfg.workspaces.len();
        p.set_prices(&cfg.prices.table);
    });
    let reload: Option<crate::server::Reload> = cfg.enable_lifecycle.then(|| {
        let sup = supervisor.clone();
        Arc::new(move || {
            let sup = sup.clone();
            Box::pin(async move { sup.reload().await }) as crate::server::ReloadFuture
        }) as crate::server::Reload
    });
    let app = crate::server::app(
        hub.clone(),
        &cfg.telemetry_path,
        reload,
        receiver.as_ref().map(|r| r.router()),
        cfg.web.auth.clone(),
        &cfg.web.limits,
    );
    let server = tokio::spawn(crate::server::serve(
        listener,
        app,
        cfg.web.tls.clone(),
        cfg.web.limits,
        hub.http_stats(),
        stop_rx.clone(),
    ));

    let mut verdicts = Vec::new();
    for ws in &cfg.workspaces {
        verdicts.push(supervisor.start_slot(ws.clone()).await);
    }
    for verdict in verdicts {
        // A fatal one is said once, by the caller (exit code 2).
        if let Ok(Err(e)) = verdict.await {
            supervisor.stop_all().await;
            let _ = stop.send(true);
            return Err(e);
        }
    }
    hub.set_started();
    let signals = tokio::spawn(reload_on_sighup(hangups, supervisor.clone(), stop_rx));
    let workspace = supervisor.first_workspace().await;
    let otlp = cfg.otlp.clone().and_then(|o| {
        crate::otlp::start(o, hub.clone())
            .map_err(|e| tracing::error!(error = %e, "cannot set up OTLP; serving /metrics only"))
            .ok()
    });
    Ok(Running {
        addr,
        hub,
        workspace,
        supervisor,
        stop,
        server,
        signals,
        otlp,
    })
}

impl Running {
    /// Re-read the configuration file (as SIGHUP does).
    pub async fn reload(&self) -> Result<String, String> {
        self.supervisor.reload().await
    }

    /// Stop as a crash would leave things: no last checkpoint is written,
    /// so a start from the same storage resumes from the last periodic one
    /// (tests of exactness through crashes, in one process).
    pub async fn stop_as_if_killed(self) {
        self.hub.kill();
        self.shutdown().await;
    }

    /// Stop polling and serving; waits for both. With OTLP on, the numbers
    /// of the last sync are pushed once more (within `--otlp.timeout`).
    /// Never waits for a reload: one in progress gives up, and one that
    /// gets past its checks stops what it started (see `Supervisor::reload`).
    pub async fn shutdown(self) {
        // First, so that a reload sees it before starting slots.
        let _ = self.stop.send(true);
        self.supervisor.stop_all().await;
        if let Some(p) = self.otlp {
            p.shutdown().await;
        }
        let _ = self.server.await;
        let _ = self.signals.await;
    }
}

/// The SIGHUP stream, listened to from the start of `start`.
struct Hangups {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let hup = signal(SignalKind::hangup())
                .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload (--web.enable-lifecycle) or a restart"))
                .ok();
            Hangups { hup }
        }
        #[cfg(not(unix))]
        Hangups {}
    }
}

async fn reload_on_sighup(hangups: Hangups, sup: Arc<Supervisor>, mut stop: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hangups.hup else {
            return;
        };
        loop {
            let hangup = tokio::select! {
                r = hup.recv() => r.is_some(),
                _ = stop.wait_for(|s| *s) => false,
            };
            if !hangup {
                return;
            }
            let _ = sup.reload().await;
        }
    }
    #[cfg(not(unix))]
    let _ = (hangups, sup, stop.wait_for(|s| *s).await);
}

/// Owns the running workspaces and applies reloads.
struct Supervisor {
    hub: Arc<Hub>,
    /// One reload at a time (SIGHUP and /-/reload may race).
    reloading: tokio::sync::Mutex<()>,
    receiver: Option<Arc<crate::webhook::Receiver>>,
    shard: Shard,
    config_file: Option<PathBuf>,
    /// Bounds of the files a reload reads.
    files: crate::files::FileLimits,
    /// Checkpoints (`--storage.path`), for every slot; a reload keeps them.
    storage: Option<crate::storage::Storage>,
    /// The price table every slot prices with; a reload replaces it in
    /// place, restarting no slot.
    prices: crate::prices::Prices,
    /// Resolved again over the file's `prices:` at each reload.
    prices_flags: crate::prices::PricesArgs,
    /// What slots a reload stopped left for their successors.
    handoffs: Arc<poll::Handoffs>,
    /// True once shutdown began: a reload then starts nothing.
    stopping: watch::Receiver<bool>,
    slots: tokio::sync::Mutex<BTreeMap<String, Slot>>,
}

/// One configured workspace: its settings and the task that watches it.
struct Slot {
    cfg: WorkspaceConfig,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The workspace id, once the key check has told it.
    id: Arc<std::sync::Mutex<Option<String>>>,
}

/// The first outcome of a slot: fatal, or settled (polling, not ours, or
/// retrying an unreachable API in the background).
type Verdict = oneshot::Receiver<Result<(), StartError>>;

impl Supervisor {
    /// Start watching one workspace; the verdict tells how its key check went.
    async fn start_slot(&self, cfg: WorkspaceConfig) -> Verdict {
        // A slot of the same key stops first: its end must not take the
        // new one's series with it.
        let old = self.slots.lock().await.remove(&cfg.key);
        if let Some(old) = old {
            self.stop_slot(old).await;
        }
        let (verdict_tx, verdict) = oneshot::channel();
        let (stop, stop_rx) = watch::channel(false);
        let id = Arc::new(std::sync::Mutex::new(None));
        let mut run = cfg.clone();
        run.poll.storage = self.storage.clone();
        run.poll.handoff = Some(self.handoffs.clone());
        run.poll.prices = self.prices.clone();
        let task = tokio::spawn(watch_workspace(
            run,
            self.shard,
            self.hub.clone(),
            self.receiver.clone(),
            id.clone(),
            stop_rx,
            verdict_tx,
        ));
        self.slots.lock().await.insert(
            cfg.key.clone(),
            Slot {
                cfg,
                stop,
                task,
                id,
            },
        );
        verdict
    }

    /// Stop a slot and remove its series.
    async fn stop_slot(&self, slot: Slot) {
        let id = slot.id.clone();
        let key = slot.cfg.key.clone();
        halt(slot).await;
        self.hub.settle(&key);
        let id = id.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(id) = id {
            if let Some(r) = &self.receiver {
                r.unregister(&id);
            }
            self.hub.forget(&id);
        }
    }

    /// Stop every slot, keeping the last numbers in the hub for a final
    /// OTLP flush.
    async fn stop_all(&self) {
        let slots = std::mem::take(&mut *self.slots.lock().await);
        for (_, s) in slots {
            halt(s).await;
        }
    }

    async fn first_workspace(&self) -> String {
        let slots = self.slots.lock().await;
        slots
            .values()
            .find_map(|s| s.id.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Re-read the configuration file and the price table; refuse a bad
    /// one and keep the old. Unchanged workspaces keep running, with their
    /// counters; a new price table restarts none.
    async fn reload(&self) -> Result<String, String> {
        let shutting_down = || Err("shutting down: not reloaded".to_string());
        let mut stopping = self.stopping.clone();
        let _one_at_a_time = tokio::select! {
            l = self.reloading.lock() => l,
            _ = stopping.wait_for(|s| *s) => return shutting_down(),
        };
        if self.config_file.is_none() && self.prices_flags.file.is_none() {
            return Ok("no --config.file or --prices.file: nothing to reload".into());
        }
        // Files are read off the runtime, each within --files.read-timeout
        // (the price table within its own size bound); shutdown does not
        // wait even for that.
        let (file, files, flags) = (
            self.config_file.clone(),
            self.files,
            self.prices_flags.clone(),
        );
        let reading =
            tokio::task::spawn_blocking(move || read_for_reload(file.as_deref(), &flags, &files));
        let result = tokio::select! {
            r = reading => r.unwrap_or_else(|e| Err(format!("the reading failed: {e}"))),
            _ = stopping.wait_for(|s| *s) => return shutting_down(),
        };
        let shown = self
            .config_file
            .as_ref()
            .or(self.prices_flags.file.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let (new, table) = match result {
            Ok(r) => r,
            Err(msg) => {
                tracing::error!(file = %shown, problems = %msg, "configuration refused; the previous one (and its price table) keeps running");
                self.hub.update_process(|p| p.reload_ok = false);
                return Err(msg);
            }
        };
        if let Some(f) = &new {
            // The storage is the start's (its files, the shard sweep):
            // a change waits for a restart, and says so.
            let in_use = self.storage.as_ref().map(|s| &s.cfg);
            if f.storage.is_some() && f.storage.as_ref() != in_use {
                tracing::warn!(file = %shown, "storage: in the configuration file differs from the storage in use (read at the start, the flags winning): restart to apply it");
            }
        }
        // In force for every slot at its next sync: none restarts for it,
        // and what was counted is not priced again.
        let priced = match &table {
            Some(t) => format!("price table: {} entries ({})", t.entries(), t.currency()),
            None => "no price table".to_string(),
        };
        let table = table.unwrap_or_else(crate::prices::PriceTable::none);
        self.hub.update_process(|p| p.set_prices(&table));
        self.prices.replace(table);
        let Some(new) = new.map(|f| f.workspaces) else {
            self.hub.update_process(|p| {
                p.reload_ok = true;
                p.reload_success_at = crate::api::types::Timestamp::host_now().as_secs_f64();
            });
            tracing::info!(file = %shown, "price table reloaded (no --config.file: the workspaces are the flags')");
            return Ok(format!("no --config.file: {priced}"));
        };
        let (mut kept, mut started, mut stopped) = (0, 0, 0);
        let wanted: BTreeMap<String, WorkspaceConfig> =
            new.iter().map(|w| (w.key.clone(), w.clone())).collect();
        let current: Vec<(String, WorkspaceConfig)> = self
            .slots
            .lock()
            .await
            .iter()
            .map(|(k, s)| (k.clone(), s.cfg.clone()))
            .collect();
        for (key, cfg) in &current {
            if wanted.get(key) != Some(cfg) {
                if let Some(slot) = self.slots.lock().await.remove(key) {
                    self.stop_slot(slot).await;
                    stopped += 1;
                }
            } else {
                kept += 1;
            }
        }
        for (key, cfg) in wanted {
            if *self.stopping.borrow() {
                return shutting_down();
            }
            if !current.iter().any(|(k, c)| *k == key && *c == cfg) {
                // A bad key on reload is logged by the slot; the rest runs on.
                drop(self.start_slot(cfg).await);
                started += 1;
            }
        }
        if *self.stopping.borrow() {
            // Shutdown began while slots were starting and may have
            // stopped all before these were in: stop them too.
            self.stop_all().await;
            return shutting_down();
        }
        self.hub.update_process(|p| {
            p.reload_ok = true;
            p.reload_success_at = crate::api::types::Timestamp::host_now().as_secs_f64();
            p.workspaces_configured = new.len();
        });
        let msg = format!("configuration reloaded: {kept} workspace(s) kept, {stopped} stopped, {started} started; {priced}");
        tracing::info!(file = %shown, kept, stopped, started, prices = %priced, "configuration reloaded");
        Ok(msg)
    }
}

/// What a reload reads, off the runtime: the configuration file (when
/// there is one) and the price table the flags and its `prices:` name
/// (`None`: no table). `Err`: the one line saying why the reload is
/// refused; nothing read is applied then.
#[allow(clippy::type_complexity)]
fn read_for_reload(
    config_file: Option<&std::path::Path>,
    flags: &crate::prices::PricesArgs,
    files: &crate::files::FileLimits,
) -> Result<
    (
        Option<crate::config_file::FileConfig>,
        Option<crate::prices::PriceTable>,
    ),
    String,
> {
    let loaded = match config_file {
        Some(path) => Some(
            crate::config_file::load_file(path, &ProcessEnv as &dyn Env, files)
                .map_err(|p| format!("{}: {}", path.display(), p.0.join("; ")))?,
        ),
        None => None,
    };
    let source =
        crate::config::resolve_prices(flags, loaded.as_ref().and_then(|f| f.prices.clone()))?;
    if let Some(f) = &loaded {
        crate::config::budgets_need_prices(&f.workspaces, source.is_some())?;
    }
    let table = match &source {
        Some(s) => Some(crate::config::load_prices(s, files)?),
        None => None,
    };
    Ok((loaded, table))
}

async fn halt(slot: Slot) {
    let _ = slot.stop.send(true);
    let _ = slot.task.await;
}

/// Check the key, settle ownership, then poll until stopped. Until the
/// key check settles, the slot shows as a pending workspace with
/// `clawmesh_up` 0 (see [`pending_snapshot`]), and stays so when its key is
/// refused after a reload.
#[allow(clippy::too_many_arguments)]
async fn watch_workspace(
    cfg: WorkspaceConfig,
    shard: Shard,
    hub: Arc<Hub>,
    receiver: Option<Arc<crate::webhook::Receiver>>,
    id_out: Arc<std::sync::Mutex<Option<String>>>,
    mut stop: watch::Receiver<bool>,
    verdict: oneshot::Sender<Result<(), StartError>>,
) {
    let key = cfg.key.clone();
    // Log lines name the workspace as its metrics do until the key check
    // tells the id (then both use the id).
    let shown = shown_workspace(&cfg);
    let mut verdict = Some(verdict);
    // At start the caller prints a fatal verdict as its one line; after a
    // reload nobody waits for it, so the slot logs it.
    let refuse = |verdict: &mut Option<oneshot::Sender<Result<(), StartError>>>, e: StartError| {
        match verdict.take() {
            Some(v) if !v.is_closed() => {
                let _ = v.send(Err(e));
            }
            _ => {
                tracing::error!(workspace = %shown, error = %e, "cannot watch the workspace; its series show clawmesh_up 0 until the configuration is fixed")
            }
        }
    };
    let settle = |verdict: &mut Option<oneshot::Sender<Result<(), StartError>>>| {
        hub.settle(&key);
        if let Some(v) = verdict.take() {
            let _ = v.send(Ok(()));
        }
    };
    if cfg.expected_id.as_ref().is_some_and(|id| !shard.owns(id)) {
        tracing::debug!(workspace = %shown, "another shard owns this workspace");
        settle(&mut verdict);
        return;
    }
    let client = match Client::new(cfg.client.clone()) {
        Ok(c) => c,
        Err(e) => {
            refuse(
                &mut verdict,
                StartError::Key {
                    workspace: key.clone(),
                    source: KeyError::Api(e),
                },
            );
            return;
        }
    };
    hub.set_pending(&key, pending_snapshot(&cfg, &client));
    // Until the key check settles, no reload's handoff expires: this slot
    // may be its successor.
    let checking = cfg.poll.handoff.as_ref().map(|h| h.checking());
    let mut backoff = crate::supervise::Backoff::default();
    let token = loop {
        let checked = tokio::select! {
            r = crate::supervise::guard(poll::check_key(&client)) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let pause = match checked {
            Ok(Ok(t)) => break t,
            Ok(Err(KeyError::Api(e))) if !e.is_fatal_auth() => {
                tracing::warn!(workspace = %shown, api = %cfg.client.base_url, error = %e, "cannot check the API key yet; retrying (clawmesh_up is 0 meanwhile)");
                // Not fatal: start goes on, and this slot keeps trying.
                if let Some(v) = verdict.take() {
                    let _ = v.send(Ok(()));
                }
                cfg.poll.interval.max(Duration::from_secs(1))
            }
            Ok(Err(e)) => {
                hub.set_pending(&key, pending_snapshot(&cfg, &client));
                refuse(
                    &mut verdict,
                    StartError::Key {
                        workspace: key.clone(),
                        source: e,
                    },
                );
                return;
            }
            Err(caught) => {
                let pause = backoff.failed();
                hub.count_restart("key_check");
                crate::supervise::report("key_check", &key, &caught, pause);
                pause
            }
        };
        hub.set_pending(&key, pending_snapshot(&cfg, &client));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    };
    if let Some(expected) = cfg
        .expected_id
        .as_ref()
        .filter(|e| **e != token.workspace_id)
    {
        refuse(
            &mut verdict,
            StartError::WrongWorkspace {
                workspace: key.clone(),
                expected: expected.clone(),
                actual: token.workspace_id.clone(),
            },
        );
        return;
    }
    if !shard.owns(&token.workspace_id) {
        tracing::debug!(workspace = %token.workspace_id, "another shard owns this workspace");
        settle(&mut verdict);
        return;
    }
    if !hub.claim(&token.workspace_id) {
        refuse(
            &mut verdict,
            StartError::Duplicate {
                workspace: key.clone(),
                id: token.workspace_id.clone(),
            },
        );
        return;
    }
    tracing::info!(workspace = %token.workspace_id, scopes = %token.scopes.join(","), "API key accepted");
    *id_out.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.workspace_id.clone());
    // Events naming this workspace go to its queue from now on.
    let inbox = receiver.as_ref().map(|r| r.register(&token.workspace_id));
    let loops = poll::spawn(
        client,
        &token,
        cfg.poll.clone(),
        workspace_labels(&cfg),
        hub.clone(),
        stop.clone(),
        inbox,
    );
    drop(checking);
    // The workspace publishes under its id now (not ready before its first
    // sync): the pending series go.
    settle(&mut verdict);
    for l in loops {
        if let Err(e) = l.await {
            // Each round is guarded (see poll::spawn); this is only the
            // loop's own frame.
            tracing::error!(workspace = %token.workspace_id, error = %e, "a poll loop ended abnormally");
        }
    }
}

/// The workspace's labels after `workspace`: `workspace_name`, then the
/// configured extras.
fn workspace_labels(cfg: &WorkspaceConfig) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    if let Some(name) = &cfg.name {
        labels.push(("workspace_name".to_string(), name.clone()));
    }
    labels.extend(cfg.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

/// How a slot names its workspace before the key check tells the id, in
/// the `workspace` label and in log lines alike: the configured id, else
/// the entry's name or key source ("" for the flags' one workspace).
fn shown_workspace(cfg: &WorkspaceConfig) -> String {
    match (&cfg.expected_id, cfg.key.as_str()) {
        (Some(id), _) => id.clone(),
        (None, "flags") => String::new(),
        (None, key) => key.to_string(),
    }
}

/// What a slot shows before its key check settles: `clawmesh_up` 0, no
/// sync yet, the key check's requests, under [`shown_workspace`]: the id is
/// not known before the API answers.
fn pending_snapshot(cfg: &WorkspaceConfig, client: &Client) -> crate::fleet::Snapshot {
    let workspace = shown_workspace(cfg);
    let now = crate::api::types::Timestamp::host_now();
    let health = crate::fleet::Health {
        sync_failures: poll::RESOURCES.iter().map(|r| (*r, 0)).collect(),
        ..Default::default()
    };
    let snap = crate::fleet::Fleet::starting(client.api_time(), now, cfg.poll.fleet).snapshot(
        &workspace,
        now,
        health,
        client.stats(),
    );
    // Its labels join as a polled workspace's do (`Snapshot::join`).
    snap.join(crate::fleet::Parts {
        labels: workspace_labels(cfg),
        ..Default::default()
    })
}

/// "workspace payments: " before a message, unless the flags name the one workspace.
fn in_workspace(key: &str) -> String {
    if key == "flags" {
        String::new()
    } else {
        format!("workspace {key}: ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot still checking its key shows the labels its workspace will
    /// have once polled: `workspace`, `workspace_name`, then the extras.
    #[test]
    fn a_pending_slot_has_the_labels_of_a_polled_workspace() {
        let cfg = WorkspaceConfig {
            key: "payments".into(),
            name: Some("Payments".into()),
            expected_id: None,
            client: Default::default(),
            poll: Default::default(),
            labels: [("team".to_string(), "core".to_string())].into(),
        };
        let client = Client::new(cfg.client.clone()).unwrap();
        let snap = pending_snapshot(&cfg, &client);
        let labels: Vec<(&str, &str)> = snap
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("workspace", "payments"),
                ("workspace_name", "Payments"),
                ("team", "core")
            ]
        );
        assert!(!snap.health.up);
        assert!(snap.webhook.is_none() && snap.baseline.is_none());
    }
}
