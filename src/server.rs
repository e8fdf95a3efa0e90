//! The HTTP side: `/metrics`, `/healthz`, `/readyz` and a landing page.
//! Built by [`app`] so tests can serve it on any listener.

use crate::hub::Hub;
use crate::webconfig::{require_basic_auth, BasicAuth};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    telemetry_path: String,
}

/// Reloads the configuration: `Ok` says what changed, `Err` why it was refused.
pub type ReloadFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
pub type Reload = Arc<dyn Fn() -> ReloadFuture + Send + Sync>;

/// The routes, with `POST /-/reload` when `reload` is given and basic auth
/// on everything but the probes when `auth` is given.
/// `extra` routes (the webhook receiver) sit behind the same basic auth.
pub fn app(
    hub: Arc<Hub>,
    telemetry_path: &str,
    reload: Option<Reload>,
    extra: Option<Router>,
    auth: Option<Arc<BasicAuth>>,
) -> Router {
    let state = AppState {
        hub,
        telemetry_path: telemetry_path.to_string(),
    };
    let mut router = Router::new()
        .route("/", get(landing))
        .route(telemetry_path, get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    if let Some(reload) = reload {
        router = router.route(
            "/-/reload",
            post(move || {
                let reload = reload.clone();
                async move {
                    match reload().await {
                        Ok(msg) => (StatusCode::OK, msg + "\n"),
                        Err(msg) => (
                            StatusCode::BAD_REQUEST,
                            format!("configuration refused: {msg}\n"),
                        ),
                    }
                }
            }),
        );
    }
    if let Some(extra) = extra {
        router = router.merge(extra);
    }
    if let Some(auth) = auth {
        router = router.layer(axum::middleware::from_fn_with_state(
            auth,
            require_basic_auth,
        ));
    }
    router
}

/// Serve `app` on `listener`, over TLS when `tls` is given, until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let result = match tls {
        None => {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                h.graceful_shutdown(Some(Duration::from_secs(5)));
            });
            match listener.into_std() {
                Ok(std_listener) => {
                    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
                    axum_server::from_tcp_rustls(std_listener, config)
                        .handle(handle)
                        .serve(app.into_make_service())
                        .await
                }
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let e = s.hub.exposition();
    let ct = [(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT))];
    if accepts_gzip(&headers) {
        let h = [
            (header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT)),
            (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
        ];
        (h, e.gzip.clone()).into_response()
    } else {
        (ct, e.text.clone()).into_response()
    }
}

/// `Accept-Encoding` names gzip with a non-zero weight.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    == Some(0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.hub.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first sync has not completed\n",
        )
    }
}

async fn landing(State(s): State<AppState>) -> Html<String> {
    let p = &s.telemetry_path;
    Html(format!(
        "<!doctype html><html><head><title>ClawMesh Exporter</title></head><body>\
         <h1>ClawMesh Exporter</h1><p>Version {}</p><ul>\
         <li><a href=\"{p}\">{p}</a>: metrics</li>\
         <li><a href=\"/healthz\">/healthz</a>: liveness</li>\
         <li><a href=\"/readyz\">/readyz</a>: ready after the first complete sync</li>\
         </ul></body></html>",
        crate::metrics::version()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&h("gzip")));
        assert!(accepts_gzip(&h("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("gzip;q=0.0")));
        assert!(!accepts_gzip(&h("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
