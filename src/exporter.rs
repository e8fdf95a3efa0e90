//! Wiring of one exporter process: server first (so /healthz answers while
//! the key is checked), then the key check, then the poll loops.

use crate::api::Client;
use crate::config::Config;
use crate::hub::Hub;
use crate::poll::{self, KeyError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// An exporter that is serving and polling.
pub struct Running {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub workspace: String,
    stop: watch::Sender<bool>,
    loops: Vec<JoinHandle<()>>,
    server: JoinHandle<()>,
}

/// Start serving on `listener` and polling the workspace of the configured
/// key. Fails only when the key cannot work (rejected, expired, lacking a
/// scope); an unreachable API is retried, with /readyz saying not ready.
pub async fn start(cfg: &Config, listener: TcpListener) -> Result<Running, KeyError> {
    let hub = Hub::new();
    let addr = listener.local_addr().map_err(|e| {
        KeyError::Api(crate::api::ApiError::Connection {
            endpoint: "listen".into(),
            detail: e.to_string(),
        })
    })?;
    let (stop, stop_rx) = watch::channel(false);
    let app = crate::server::app(hub.clone(), &cfg.telemetry_path);
    // Webhooks (issue 6): on the main listener, so they share its TLS and auth.
    let receiver = cfg.webhook.clone().map(crate::webhook::Receiver::new);
    let app = match &receiver {
        Some(r) => app.merge(r.router()),
        None => app,
    };
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = server_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    let client = Client::new(cfg.client.clone())?;
    let token = loop {
        match poll::check_key(&client).await {
            Ok(t) => break t,
            Err(KeyError::Api(e)) if !e.is_fatal_auth() => {
                tracing::warn!(error = %e, "cannot check the API key yet; retrying");
                tokio::time::sleep(cfg.poll.interval).await;
            }
            Err(e) => {
                let _ = stop.send(true);
                return Err(e);
            }
        }
    };
    tracing::info!(workspace = %token.workspace_id, scopes = %token.scopes.join(","), "API key accepted");
    let workspace = token.workspace_id.clone();
    let inbox = receiver.as_ref().map(|r| r.register(&workspace));
    let loops = poll::spawn_with_webhooks(
        client,
        &token,
        cfg.poll.clone(),
        hub.clone(),
        stop_rx,
        inbox,
    );
    Ok(Running {
        addr,
        hub,
        workspace,
        stop,
        loops,
        server,
    })
}

impl Running {
    /// Stop polling and serving; waits for both.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for l in self.loops {
            let _ = l.await;
        }
        let _ = self.server.await;
    }
}
