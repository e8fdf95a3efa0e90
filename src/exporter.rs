//! Wiring of one exporter process: the HTTP server first (so /healthz
//! answers while keys are checked), then one supervised slot per configured
//! workspace (key check, shard ownership, poll loops), and reloads of the
//! configuration file that keep unchanged workspaces running; when
//! configured, the OTLP pusher.

use crate::api::Client;
use crate::config::{Config, Env, ProcessEnv};
use crate::config_file::WorkspaceConfig;
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
    let hub = Hub::new();
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
        slots: tokio::sync::Mutex::new(BTreeMap::new()),
    });
    hub.update_process(|p| {
        p.shard = cfg.shard;
        p.workspaces_configured = cfg.workspaces.len();
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
        verdicts.push((ws.key.clone(), supervisor.start_slot(ws.clone()).await));
    }
    for (key, verdict) in verdicts {
        if let Ok(Err(e)) = verdict.await {
            tracing::error!(workspace = %key, error = %e, "cannot watch the workspace");
            supervisor.stop_all().await;
            let _ = stop.send(true);
            return Err(e);
        }
    }
    hub.set_started();
    let signals = tokio::spawn(reload_on_sighup(supervisor.clone(), stop_rx));
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

    /// Stop polling and serving; waits for both. With OTLP on, the numbers
    /// of the last sync are pushed once more (within `--otlp.timeout`).
    pub async fn shutdown(self) {
        // A reload in progress finishes first, so it cannot start slots
        // after they were all stopped.
        let _no_reload = self.supervisor.reloading.lock().await;
        let _ = self.stop.send(true);
        self.supervisor.stop_all().await;
        if let Some(p) = self.otlp {
            p.shutdown().await;
        }
        let _ = self.server.await;
        let _ = self.signals.await;
    }
}

async fn reload_on_sighup(sup: Arc<Supervisor>, mut stop: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
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
    let _ = (sup, stop.wait_for(|s| *s).await);
}

/// Owns the running workspaces and applies reloads.
struct Supervisor {
    hub: Arc<Hub>,
    /// One reload at a time (SIGHUP and /-/reload may race).
    reloading: tokio::sync::Mutex<()>,
    receiver: Option<Arc<crate::webhook::Receiver>>,
    shard: Shard,
    config_file: Option<PathBuf>,
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
        let (verdict_tx, verdict) = oneshot::channel();
        let (stop, stop_rx) = watch::channel(false);
        let id = Arc::new(std::sync::Mutex::new(None));
        let task = tokio::spawn(watch_workspace(
            cfg.clone(),
            self.shard,
            self.hub.clone(),
            self.receiver.clone(),
            id.clone(),
            stop_rx,
            verdict_tx,
        ));
        let old = self.slots.lock().await.insert(
            cfg.key.clone(),
            Slot {
                cfg,
                stop,
                task,
                id,
            },
        );
        if let Some(old) = old {
            self.stop_slot(old).await;
        }
        verdict
    }

    /// Stop a slot and remove its series.
    async fn stop_slot(&self, slot: Slot) {
        let id = slot.id.clone();
        halt(slot).await;
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

    /// Re-read the configuration file; refuse a bad one and keep the old.
    /// Unchanged workspaces keep running, with their counters.
    async fn reload(&self) -> Result<String, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let Some(path) = &self.config_file else {
            return Ok("no --config.file: nothing to reload".into());
        };
        let result = crate::config_file::load(path, &ProcessEnv as &dyn Env);
        let new = match result {
            Ok(n) => n,
            Err(p) => {
                let msg = p.0.join("; ");
                tracing::error!(file = %path.display(), problems = %msg, "configuration refused; the previous one keeps running");
                self.hub.update_process(|p| p.reload_ok = false);
                return Err(msg);
            }
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
            if !current.iter().any(|(k, c)| *k == key && *c == cfg) {
                // A bad key on reload is logged by the slot; the rest runs on.
                drop(self.start_slot(cfg).await);
                started += 1;
            }
        }
        self.hub.update_process(|p| {
            p.reload_ok = true;
            p.reload_success_at = crate::api::types::Timestamp::host_now().as_secs_f64();
            p.workspaces_configured = new.len();
        });
        let msg = format!("configuration reloaded: {kept} workspace(s) kept, {stopped} stopped, {started} started");
        tracing::info!(file = %path.display(), kept, stopped, started, "configuration reloaded");
        Ok(msg)
    }
}

async fn halt(slot: Slot) {
    let _ = slot.stop.send(true);
    let _ = slot.task.await;
}

/// Check the key, settle ownership, then poll until stopped.
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
    let fail = |source: KeyError| StartError::Key {
        workspace: key.clone(),
        source,
    };
    if cfg.expected_id.as_ref().is_some_and(|id| !shard.owns(id)) {
        tracing::debug!(workspace = %key, "another shard owns this workspace");
        let _ = verdict.send(Ok(()));
        return;
    }
    let client = match Client::new(cfg.client.clone()) {
        Ok(c) => c,
        Err(e) => {
            let _ = verdict.send(Err(fail(KeyError::Api(e))));
            return;
        }
    };
    let mut verdict = Some(verdict);
    let token = loop {
        let checked = tokio::select! {
            r = poll::check_key(&client) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match checked {
            Ok(t) => break t,
            Err(KeyError::Api(e)) if !e.is_fatal_auth() => {
                tracing::warn!(workspace = %key, error = %e, "cannot check the API key yet; retrying");
                if let Some(v) = verdict.take() {
                    let _ = v.send(Ok(()));
                }
                tokio::select! {
                    _ = tokio::time::sleep(cfg.poll.interval.max(Duration::from_secs(1))) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            Err(e) => {
                tracing::error!(workspace = %key, error = %e, "the API key cannot be used for this workspace");
                if let Some(v) = verdict.take() {
                    let _ = v.send(Err(fail(e)));
                }
                return;
            }
        }
    };
    if let Some(expected) = cfg
        .expected_id
        .as_ref()
        .filter(|e| **e != token.workspace_id)
    {
        let e = StartError::WrongWorkspace {
            workspace: key.clone(),
            expected: expected.clone(),
            actual: token.workspace_id.clone(),
        };
        tracing::error!(error = %e, "refusing to watch the workspace");
        if let Some(v) = verdict.take() {
            let _ = v.send(Err(e));
        }
        return;
    }
    if !shard.owns(&token.workspace_id) {
        tracing::debug!(workspace = %token.workspace_id, "another shard owns this workspace");
        if let Some(v) = verdict.take() {
            let _ = v.send(Ok(()));
        }
        return;
    }
    if !hub.claim(&token.workspace_id) {
        let e = StartError::Duplicate {
            workspace: key.clone(),
            id: token.workspace_id.clone(),
        };
        tracing::error!(error = %e, "refusing to watch the workspace twice");
        if let Some(v) = verdict.take() {
            let _ = v.send(Err(e));
        }
        return;
    }
    tracing::info!(workspace = %token.workspace_id, scopes = %token.scopes.join(","), "API key accepted");
    *id_out.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.workspace_id.clone());
    let mut labels = Vec::new();
    if let Some(name) = &cfg.name {
        labels.push(("workspace_name".to_string(), name.clone()));
    }
    labels.extend(cfg.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Events naming this workspace go to its queue from now on.
    let inbox = receiver.as_ref().map(|r| r.register(&token.workspace_id));
    let loops = poll::spawn(
        client,
        &token,
        cfg.poll.clone(),
        labels,
        hub,
        stop.clone(),
        inbox,
    );
    if let Some(v) = verdict.take() {
        let _ = v.send(Ok(()));
    }
    for l in loops {
        let _ = l.await;
    }
}

/// "workspace payments: " before a message, unless the flags name the one workspace.
fn in_workspace(key: &str) -> String {
    if key == "flags" {
        String::new()
    } else {
        format!("workspace {key}: ")
    }
}
