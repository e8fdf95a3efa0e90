//! The HTTP side: `/metrics`, `/healthz`, `/readyz` and a landing page.
//! Built by [`app`] so tests can serve it on any listener.

use crate::hub::Hub;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    telemetry_path: String,
}

pub fn app(hub: Arc<Hub>, telemetry_path: &str) -> Router {
    let state = AppState {
        hub,
        telemetry_path: telemetry_path.to_string(),
    };
    Router::new()
        .route("/", get(landing))
        .route(telemetry_path, get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
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
