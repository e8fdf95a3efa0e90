//! The HTTP side: `/metrics`, `/healthz`, `/readyz` and a landing page.
//! Built by [`app`] so tests can serve it on any listener; `conn.rs` holds
//! each connection to its bounds.

mod conn;
pub mod negotiate;

pub use conn::{serve, BodyTimeout};

use crate::hub::Hub;
use crate::webconfig::{require_basic_auth, AuthGate, BasicAuth};
// The limits are the web config's (`--web.*`, the web config file); named here too.
pub use crate::webconfig::{Limits, MIN_HEADER_BYTES};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
    limits: &Limits,
) -> Router {
    let state = AppState {
        hub: hub.clone(),
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
            Arc::new(AuthGate::new(auth, limits, hub.http_stats())),
            require_basic_auth,
        ));
    }
    router
}

/// The last render in the format the scraper asked for: gzipped as it is
/// kept, or as it is (kept too once a scraper without gzip asked, until
/// then inflated as it is read). Never rendered here but at the first ask
/// of a format (see `Hub::exposition_for`).
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let format = negotiate::format(&headers);
    let gzip = negotiate::gzip(&headers);
    let e = match s.hub.cached(format, !gzip) {
        Some(e) => e,
        // A first ask renders (at the breakdowns' caps, a tenth of a second
        // and more): not on the threads that serve every other request.
        None => {
            let hub = s.hub.clone();
            match tokio::task::spawn_blocking(move || hub.exposition_for(format, !gzip)).await {
                Ok(e) => e,
                Err(_) => {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the exposition could not be rendered; see the log\n",
                    )
                        .into_response()
                }
            }
        }
    };
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    // Caches between scraper and exporter must key on both.
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (h, e.gzip.clone()).into_response()
    } else if let Some(bytes) = &e.identity {
        (h, bytes.clone()).into_response()
    } else {
        (h, Body::new(Inflating::new(&e))).into_response()
    }
}

/// The plain text of an exposition, inflated from its gzip a piece at a
/// time as the client reads it: only the gzip is kept (`expose`), and a
/// plain scrape holds one piece, never the whole text.
struct Inflating {
    reader: Box<dyn std::io::Read + Send>,
    left: usize,
}

impl Inflating {
    const PIECE: usize = 64 * 1024;

    fn new(e: &crate::expose::Exposition) -> Self {
        Inflating {
            reader: Box::new(e.text_reader()),
            left: e.text_len,
        }
    }
}

impl http_body::Body for Inflating {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let mut piece = vec![0; self.left.min(Self::PIECE)];
        // Inflating from memory: no I/O to wait for.
        let r = std::io::Read::read_exact(&mut self.reader, &mut piece);
        Poll::Ready(Some(r.map(|()| {
            self.left -= piece.len();
            http_body::Frame::data(bytes::Bytes::from(piece))
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left as u64)
    }
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
