//! Client tests over real HTTP on loopback: a tiny axum server answers what
//! each test scripts and records when and what it was asked.

use super::*;
use crate::secret::Secret;
use axum::{body::Body, extract::Request, http::Response, Router};
use proptest::prelude::*;

const KEY: &str = "cmk_live_canary_0123456789";

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: Vec<(String, String)>,
    at: Instant,
    auth: Option<String>,
}

impl Seen {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    fn error(status: u16, code: &str, details: &str) -> Self {
        Reply::new(
            status,
            format!(
                r#"{{"error":{{"code":"{code}","message":"scripted {code}","request_id":"req_{status}","details":{details}}}}}"#
            ),
        )
    }
    fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn after(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

struct Server {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Starts a server whose answer to the n-th request (from 0) is `script(n, request)`.
async fn serve(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let script = Arc::new(script);
    let log = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let log = log.clone();
        let script = script.clone();
        async move {
            let query =
                reqwest::Url::parse(&format!("http://x/?{}", req.uri().query().unwrap_or("")))
                    .unwrap()
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
            let info = Seen {
                path: req.uri().path().to_string(),
                query,
                at: Instant::now(),
                auth: req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from),
            };
            let n = {
                let mut log = log.lock().unwrap();
                log.push(info.clone());
                log.len() - 1
            };
            let reply = script(n, &info);
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            let mut b = Response::builder().status(reply.status);
            for (k, v) in reply.headers {
                b = b.header(k, v);
            }
            b.body(Body::from(reply.body)).unwrap()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        base: format!("http://{addr}/v1/"),
        seen,
    }
}

fn config(base: &str) -> ClientConfig {
    ClientConfig {
        base_url: base.to_string(),
        key: Secret::new(KEY),
        request_timeout: Duration::from_secs(5),
        max_attempts: 5,
        backoff_base: Duration::from_millis(2),
        backoff_cap: Duration::from_millis(20),
        budget_share: 1.0,
        page_size: 100,
        ..ClientConfig::default()
    }
}

fn client(s: &Server) -> Client {
    Client::new(config(&s.base)).unwrap()
}

/// Every error is shown to operators: it must never carry the key.
fn assert_no_key(e: &ApiError) {
    assert!(!format!("{e}").contains(KEY), "{e}");
    assert!(!format!("{e:?}").contains(KEY), "{e:?}");
}

const TOKEN: &str = r#"{"data":{"id":"key_1","name":"mon","workspace_id":"ws_1","scopes":["agents:read","tasks:read"],"created_at":"2026-11-01T00:00:00Z","expires_at":null}}"#;

fn agent(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","name":"n","status":"idle","labels":{{}},"created_at":"2026-11-23T10:15:02.1Z","updated_at":"2026-11-23T10:15:02Z","last_heartbeat_at":null,"config":{{"model":"m"}},"new_field":[1,2]}}"#
    )
}

fn task(id: &str, instructions_len: usize) -> String {
    format!(
        r#"{{"id":"{id}","agent_id":null,"status":"running","instructions":"{}","created_at":"2026-11-23T10:15:02.123456Z","updated_at":"2026-11-23T10:15:03.12Z","started_at":"2026-11-23T10:15:02.5Z","finished_at":null,"transitions":[{{"status":"pending","at":"2026-11-23T10:15:02Z"}}],"metrics":{{"queue_seconds":0.4,"run_seconds":null}},"error":null}}"#,
        "x".repeat(instructions_len)
    )
}

fn page(items: &[String], next: Option<&str>) -> String {
    format!(
        r#"{{"data":[{}],"has_more":{},"next_cursor":{}}}"#,
        items.join(","),
        next.is_some(),
        next.map_or("null".to_string(), |c| format!("\"{c}\""))
    )
}

#[tokio::test]
async fn pagination_follows_next_cursor_with_limit_100() {
    let s = serve(|_, req| match req.param("cursor") {
        None => Reply::new(200, page(&[agent("a1"), agent("a2")], Some("c1"))),
        Some("c1") => Reply::new(200, page(&[agent("a3")], Some("c2"))),
        Some("c2") => Reply::new(200, page(&[agent("a4")], None)),
        Some(_) => Reply::error(400, "invalid_cursor", "{}"),
    })
    .await;
    let c = client(&s);
    let agents = c.list_agents().collect_all().await.unwrap();
    let ids: Vec<_> = agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2", "a3", "a4"]);

    let seen = s.seen();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r.path, "/v1/agents");
        assert_eq!(r.param("limit"), Some("100"));
        assert_eq!(r.auth.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    }
    assert_eq!(seen[1].param("cursor"), Some("c1"));
    assert_eq!(seen[2].param("cursor"), Some("c2"));

    // After the last page the listing is over without asking again.
    let mut l = c.list_agents();
    let mut pages = 0;
    while let Some(ev) = l.next().await.unwrap() {
        assert!(matches!(ev, ListEvent::Page(_)));
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert!(l.next().await.unwrap().is_none());
    assert_eq!(s.count(), 6);
    assert_eq!(c.stats().count("/agents", "200"), 6);
}

#[tokio::test]
async fn task_query_parameters_and_tolerant_parsing() {
    let s =
        serve(|_, _| Reply::new(200, page(&[task("t1", 256 * 1024), task("t2", 0)], None))).await;
    let c = client(&s);
    let after = types::Timestamp::parse("2026-11-23T10:15:02.000007Z").unwrap();
    let tasks = c
        .list_tasks(TaskQuery {
            statuses: vec!["pending".into(), "running".into()],
            updated_after: Some(after),
            sort_by_updated_at: true,
        })
        .collect_all()
        .await
        .unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].metrics.queue_seconds, Some(0.4));
    let r = &s.seen()[0];
    assert_eq!(r.path, "/v1/tasks");
    assert_eq!(r.param("limit"), Some("100"));
    assert_eq!(r.param("status"), Some("pending,running"));
    assert_eq!(
        r.param("updated_after"),
        Some("2026-11-23T10:15:02.000007Z")
    );
    assert_eq!(r.param("sort"), Some("updated_at"));

    // No filters: none sent.
    c.list_tasks(TaskQuery::default())
        .collect_all()
        .await
        .unwrap();
    let r = &s.seen()[1];
    assert_eq!(r.query.len(), 1, "{:?}", r.query);
}

#[tokio::test]
async fn token_introspection() {
    let s = serve(|_, _| Reply::new(200, TOKEN)).await;
    let t = client(&s).token().await.unwrap();
    assert_eq!(t.workspace_id, "ws_1");
    assert_eq!(t.scopes, ["agents:read", "tasks:read"]);
    assert!(t.expires_at.is_none());
    assert_eq!(s.seen()[0].path, "/v1/auth/token");
}

#[tokio::test]
async fn rate_limited_waits_for_retry_after() {
    let s = serve(|n, _| {
        if n == 0 {
            Reply::error(429, "rate_limited", "{}").header("retry-after", 1)
        } else {
            Reply::new(200, TOKEN)
        }
    })
    .await;
    let c = client(&s);
    c.token().await.unwrap();
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    let st = c.stats();
    assert_eq!(st.count("/auth/token", "429"), 1);
    assert_eq!(st.count("/auth/token", "200"), 1);
    assert_eq!(st.retries.get("/auth/token"), Some(&1));
    assert!(st.retry_after_wait_seconds >= 1.0);
    assert_eq!(st.durations["/auth/token"].count(), 2);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_persisting_surfaces_rate_limited() {
    let s = serve(|_, _| Reply::error(429, "rate_limited", "{}").header("retry-after", 3)).await;
    let c = client(&s);
    let e = c.token().await.unwrap_err();
    assert!(
        matches!(e, ApiError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(3)),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_no_key(&e);
    assert_eq!(s.count(), 5);
    for w in s.seen().windows(2) {
        assert!(w[1].at - w[0].at >= Duration::from_secs(3));
    }
}

#[tokio::test]
async fn server_error_with_html_is_retried() {
    let s = serve(|n, _| {
        if n == 0 {
            let mut r = Reply::new(500, "<html><body>Internal Server Error</body></html>");
            r.headers = vec![("content-type", "text/html".into())];
            r
        } else {
            Reply::new(200, TOKEN)
        }
    })
    .await;
    let c = client(&s);
    c.token().await.unwrap();
    assert_eq!(s.count(), 2);
    assert_eq!(c.stats().count("/auth/token", "500"), 1);
}

#[tokio::test]
async fn bad_gateway_with_empty_body() {
    let s = serve(|n, _| {
        if n == 0 {
            Reply::new(502, "")
        } else {
            Reply::new(200, TOKEN)
        }
    })
    .await;
    client(&s).token().await.unwrap();
    assert_eq!(s.count(), 2);

    // When it persists, the typed error says 502 without a code.
    let s = serve(|_, _| Reply::new(502, "")).await;
    let e = client(&s).token().await.unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::Server {
                status: 502,
                code: None,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(s.count(), 5);
    assert_no_key(&e);

    // An enveloped 503 keeps its code and request id.
    let s = serve(|_, _| Reply::error(503, "service_unavailable", "{}")).await;
    let e = client(&s).token().await.unwrap_err();
    match &e {
        ApiError::Server {
            status: 503,
            code: Some(code),
            request_id: Some(rid),
        } => {
            assert_eq!(code, "service_unavailable");
            assert_eq!(rid, "req_503");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn truncated_json_is_retried_then_surfaces() {
    let full = page(&[agent("a1"), agent("a2")], None);
    let cut = full[..full.len() / 2].to_string();
    let (full2, cut2) = (full.clone(), cut.clone());
    let s =
        serve(move |n, _| Reply::new(200, if n == 0 { cut2.clone() } else { full2.clone() })).await;
    let agents = client(&s).list_agents().collect_all().await.unwrap();
    assert_eq!(agents.len(), 2);
    assert_eq!(s.count(), 2);

    let s = serve(move |_, _| Reply::new(200, cut.clone())).await;
    let e = client(&s).list_agents().next().await.unwrap_err();
    match &e {
        ApiError::UnexpectedBody {
            endpoint,
            status: 200,
            detail,
        } => {
            assert_eq!(endpoint, "/agents");
            assert!(detail.contains("truncated"), "{detail}");
            assert!(detail.len() < 300);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_retryable());
    assert_eq!(s.count(), 5);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    type Check = fn(&ApiError) -> bool;
    let cases: Vec<(Reply, Check)> = vec![
        (
            Reply::error(400, "invalid_request", "{}"),
            |e| matches!(e, ApiError::BadRequest { code, .. } if code == "invalid_request"),
        ),
        (
            Reply::error(400, "invalid_cursor", "{}"),
            |e| matches!(e, ApiError::BadRequest { code, .. } if code == "invalid_cursor"),
        ),
        (
            Reply::error(400, "brand_new_code", "{}"),
            |e| matches!(e, ApiError::BadRequest { code, .. } if code == "brand_new_code"),
        ),
        (Reply::error(401, "unauthenticated", "{}"), |e| {
            matches!(e, ApiError::Unauthenticated { request_id } if request_id == "req_401")
                && e.is_fatal_auth()
        }),
        (Reply::error(401, "token_expired", "{}"), |e| {
            matches!(e, ApiError::TokenExpired { .. }) && e.is_fatal_auth()
        }),
        (
            Reply::error(
                403,
                "insufficient_scope",
                r#"{"required_scope":"tasks:read"}"#,
            ),
            |e| matches!(e, ApiError::InsufficientScope { .. }) && e.is_fatal_auth(),
        ),
        (Reply::error(404, "not_found", "{}"), |e| {
            matches!(e, ApiError::NotFound)
        }),
        (Reply::new(404, "<html>nope</html>"), |e| {
            matches!(e, ApiError::UnexpectedBody { status: 404, .. })
        }),
    ];
    for (reply, check) in cases {
        let reply = Arc::new(Mutex::new(Some(reply)));
        let s = serve(move |_, _| {
            reply
                .lock()
                .unwrap()
                .take()
                .unwrap_or_else(|| Reply::new(200, TOKEN))
        })
        .await;
        let c = client(&s);
        let e = c.list_tasks(TaskQuery::default()).next().await.unwrap_err();
        assert!(check(&e), "{e:?}");
        assert!(!e.is_retryable(), "{e:?}");
        assert_no_key(&e);
        assert_eq!(s.count(), 1, "{e:?} was retried");
        assert!(c.stats().retries.values().all(|n| *n == 0));
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let s =
        serve(|_, _| Reply::new(302, "").header("location", "http://127.0.0.1:1/elsewhere")).await;
    let e = client(&s).token().await.unwrap_err();
    assert!(
        matches!(e, ApiError::UnexpectedBody { status: 302, .. }),
        "{e:?}"
    );
    assert_eq!(s.count(), 1);
}

#[tokio::test]
async fn insufficient_scope_names_the_scope() {
    let s = serve(|_, _| {
        Reply::error(
            403,
            "insufficient_scope",
            r#"{"required_scope":"tasks:read"}"#,
        )
    })
    .await;
    let e = client(&s)
        .list_tasks(TaskQuery::default())
        .next()
        .await
        .unwrap_err();
    match &e {
        ApiError::InsufficientScope { scope, request_id } => {
            assert_eq!(scope, "tasks:read");
            assert_eq!(request_id, "req_403");
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("lacks scope tasks:read"), "{msg}");
    assert!(msg.contains("agents:read and tasks:read"), "{msg}");
}

#[tokio::test]
async fn cursor_expired_restarts_the_listing() {
    let expired_once = Arc::new(Mutex::new(false));
    let s = serve(move |_, req| match req.param("cursor") {
        None => Reply::new(200, page(&[agent("a1")], Some("c1"))),
        Some("c1") => {
            let mut e = expired_once.lock().unwrap();
            if !*e {
                *e = true;
                Reply::error(400, "cursor_expired", "{}")
            } else {
                Reply::new(200, page(&[agent("a2")], None))
            }
        }
        Some(_) => Reply::error(400, "invalid_cursor", "{}"),
    })
    .await;
    let c = client(&s);
    let mut l = c.list_agents();
    let mut events = Vec::new();
    while let Some(ev) = l.next().await.unwrap() {
        events.push(match ev {
            ListEvent::Page(items) => items
                .iter()
                .map(|a| a.id.clone())
                .collect::<Vec<_>>()
                .join(","),
            ListEvent::Restarted => "restarted".to_string(),
        });
    }
    assert_eq!(events, ["a1", "restarted", "a1", "a2"]);
    let cursors: Vec<_> = s
        .seen()
        .iter()
        .map(|r| r.param("cursor").map(String::from))
        .collect();
    assert_eq!(cursors, [None, Some("c1".into()), None, Some("c1".into())]);
    // collect_all drops what it had on a restart.
    assert_eq!(c.list_agents().collect_all().await.unwrap().len(), 2);
}

#[tokio::test]
async fn cursor_expired_gives_up_after_three_restarts() {
    let s = serve(|_, req| match req.param("cursor") {
        None => Reply::new(200, page(&[agent("a1")], Some("c1"))),
        Some(_) => Reply::error(400, "cursor_expired", "{}"),
    })
    .await;
    let mut l = client(&s).list_agents();
    let mut restarts = 0;
    let err = loop {
        match l.next().await {
            Ok(Some(ListEvent::Restarted)) => restarts += 1,
            Ok(Some(ListEvent::Page(_))) => {}
            Ok(None) => panic!("listing ended"),
            Err(e) => break e,
        }
    };
    assert_eq!(restarts, 3);
    assert!(
        matches!(&err, ApiError::BadRequest { code, .. } if code == "cursor_expired"),
        "{err:?}"
    );
    assert_eq!(s.count(), 8);
}

#[tokio::test]
async fn request_timeout_fires_and_is_retried() {
    let s = serve(|n, _| {
        let r = Reply::new(200, TOKEN);
        if n == 0 {
            r.after(Duration::from_secs(2))
        } else {
            r
        }
    })
    .await;
    let mut cfg = config(&s.base);
    cfg.request_timeout = Duration::from_millis(200);
    let c = Client::new(cfg.clone()).unwrap();
    let started = Instant::now();
    c.token().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(s.count(), 2);
    let st = c.stats();
    assert_eq!(st.count("/auth/token", "timeout"), 1);
    assert_eq!(st.count("/auth/token", "200"), 1);

    let s = serve(|_, _| Reply::new(200, TOKEN).after(Duration::from_secs(2))).await;
    cfg.base_url = s.base.clone();
    cfg.max_attempts = 2;
    let e = Client::new(cfg).unwrap().token().await.unwrap_err();
    assert!(
        matches!(&e, ApiError::Timeout { endpoint } if endpoint == "/auth/token"),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_eq!(s.count(), 2);
}

#[tokio::test]
async fn connection_errors_are_retried_then_surface() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = config(&format!("http://{addr}/v1"));
    cfg.max_attempts = 3;
    let c = Client::new(cfg).unwrap();
    let e = c.token().await.unwrap_err();
    assert!(matches!(e, ApiError::Connection { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert_no_key(&e);
    let st = c.stats();
    assert_eq!(st.count("/auth/token", "connection_error"), 3);
    assert_eq!(st.retries["/auth/token"], 2);
}

/// Share 0.06 of a 1000/min limit is 60/min: after the 10-second burst the
/// client sends one request per second (paused time, measured by the server).
#[tokio::test(start_paused = true)]
async fn budget_paces_at_share_of_limit() {
    let s = serve(|_, _| {
        Reply::new(200, TOKEN)
            .header("x-ratelimit-limit", 1000)
            .header("x-ratelimit-remaining", 500)
            .header("x-ratelimit-reset", 30)
    })
    .await;
    let mut cfg = config(&s.base);
    cfg.budget_share = 0.06;
    let c = Client::new(cfg).unwrap();
    for _ in 0..80 {
        c.token().await.unwrap();
    }
    let seen = s.seen();
    let t0 = seen[0].at;
    let times: Vec<Duration> = seen.iter().map(|r| r.at - t0).collect();
    // The bucket holds 10 tokens.
    assert!(times[9] < Duration::from_millis(100), "{:?}", times[9]);
    for w in times[10..].windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(990), "{gap:?}");
    }
    // Never more than burst + rate in any minute.
    for (i, t) in times.iter().enumerate() {
        let in_minute = times[i..]
            .iter()
            .filter(|u| **u < *t + Duration::from_secs(60))
            .count();
        assert!(
            in_minute <= 70,
            "{in_minute} requests in the minute from {t:?}"
        );
    }
    let st = c.stats();
    // Paused time did not fire a request timeout while the socket was busy.
    assert_eq!(st.count("/auth/token", "200"), 80);
    assert_eq!(st.rate_limit_limit, Some(1000));
    assert!((st.budget_requests_per_minute - 60.0).abs() < 1e-9);
    assert!(st.budget_wait_seconds >= 68.0, "{}", st.budget_wait_seconds);
}

#[tokio::test(start_paused = true)]
async fn low_remaining_waits_for_reset() {
    let s = serve(|n, _| {
        let remaining = if n == 0 { 10 } else { 900 };
        Reply::new(200, TOKEN)
            .header("x-ratelimit-limit", 1000)
            .header("x-ratelimit-remaining", remaining)
            .header("x-ratelimit-reset", 5)
    })
    .await;
    let c = client(&s);
    for _ in 0..3 {
        c.token().await.unwrap();
    }
    let seen = s.seen();
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(5));
    assert!(seen[2].at - seen[1].at < Duration::from_millis(100));
    let st = c.stats();
    assert_eq!(st.rate_limit_remaining, Some(900));
    assert_eq!(st.rate_limit_reset_seconds, Some(5));
    assert!(st.budget_wait_seconds >= 5.0);
}

#[tokio::test]
async fn the_key_never_shows() {
    let s = serve(|_, _| Reply::error(401, "unauthenticated", "{}")).await;
    let cfg = config(&s.base);
    assert!(!format!("{cfg:?}").contains(KEY));
    let c = Client::new(cfg).unwrap();
    assert!(!format!("{c:?}").contains(KEY));
    let e = c.token().await.unwrap_err();
    assert_no_key(&e);

    let mut bad = config(&s.base);
    bad.key = Secret::new(format!("{KEY}\n"));
    let e = Client::new(bad).unwrap_err();
    assert!(matches!(e, ApiError::Config { .. }));
    assert_no_key(&e);
}

/// A writer that keeps what the tracing subscriber prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_never_carry_the_key() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let s = serve(|n, _| match n {
        0 => Reply::error(429, "rate_limited", "{}"),
        1 => Reply::new(500, "<html>oops</html>"),
        2 => Reply::new(200, TOKEN),
        _ => Reply::error(401, "unauthenticated", "{}"),
    })
    .await;
    let c = client(&s);
    c.token().await.unwrap();
    c.token().await.unwrap_err();

    let logs = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("ClawMesh API request failed; retrying"),
        "{logs}"
    );
    assert!(logs.contains("endpoint=\"/auth/token\""), "{logs}");
    assert!(!logs.contains(KEY), "{logs}");
    assert!(!logs.contains("Bearer"), "{logs}");
}

#[test]
fn config_is_validated() {
    assert!(Client::new(config("http://127.0.0.1:1/v1/")).is_ok());
    for bad in ["", "api.clawmesh.com/v1", "ftp://x/v1", "http://"] {
        let e = Client::new(config(bad)).unwrap_err();
        assert!(matches!(e, ApiError::Config { .. }), "{bad}: {e:?}");
    }
    let mut cfg = config("http://127.0.0.1:1/v1");
    cfg.budget_share = 0.0;
    assert!(Client::new(cfg.clone()).is_err());
    cfg.budget_share = 1.5;
    assert!(Client::new(cfg.clone()).is_err());
    cfg.budget_share = 0.1;
    cfg.page_size = 101;
    assert!(Client::new(cfg.clone()).is_err());
    let d = ClientConfig::default();
    assert_eq!(d.base_url, "https://api.clawmesh.com/v1");
    assert_eq!((d.max_attempts, d.page_size), (5, 100));
    assert_eq!(d.request_timeout, Duration::from_secs(10));
}

#[test]
fn error_mapping_of_odd_answers() {
    let e = error::from_status(
        "/tasks",
        409,
        br#"{"error":{"code":"conflict","message":"m","request_id":"r"}}"#,
        None,
        None,
        KEY,
    );
    assert!(
        matches!(&e, ApiError::Rejected { status: 409, code, .. } if code == "conflict"),
        "{e:?}"
    );
    let e = error::from_status(
        "/tasks",
        403,
        br#"{"error":{"code":"ip_blocked","message":"m","request_id":"r"}}"#,
        None,
        None,
        KEY,
    );
    assert!(e.is_fatal_auth(), "{e:?}");
    let e = error::from_status("/tasks", 504, b"<html>", None, Some("hdr_1".into()), KEY);
    assert!(
        matches!(&e, ApiError::Server { status: 504, code: None, request_id: Some(r) } if r == "hdr_1"),
        "{e:?}"
    );
    let e = error::from_status("/tasks", 401, b"", None, None, KEY);
    assert!(
        matches!(&e, ApiError::UnexpectedBody { status: 401, .. }) && e.is_fatal_auth(),
        "{e:?}"
    );
    let e = error::from_status(
        "/tasks",
        400,
        br#"{"error":{"code":"invalid_request","message":"m","request_id":"r","details":null}}"#,
        None,
        None,
        KEY,
    );
    assert!(matches!(&e, ApiError::BadRequest { .. }), "{e:?}");
    let e = error::from_status(
        "/tasks",
        403,
        br#"{"error":{"code":"insufficient_scope","message":"m","request_id":"r"}}"#,
        None,
        None,
        KEY,
    );
    assert!(
        matches!(&e, ApiError::InsufficientScope { scope, .. } if scope == "unknown"),
        "{e:?}"
    );
}

#[test]
fn parse_page_reasons() {
    let detail = |body: &[u8]| match parse_page::<types::Agent>(body) {
        Err(ApiError::UnexpectedBody { detail, .. }) => detail,
        other => panic!("{other:?}"),
    };
    assert_eq!(detail(b""), "empty body");
    assert_eq!(detail(b"  <html>"), "HTML instead of JSON");
    assert!(detail(br#"{"data":[{"id":"#).starts_with("truncated JSON"));
    assert!(detail(br#"{"data":[],"has_more":true,"next_cursor":null}"#).contains("next_cursor"));
    assert!(detail(br#"{"data":{},"has_more":false}"#).starts_with("JSON not matching"));
    let p = parse_page::<types::Agent>(br#"{"data":[],"has_more":false,"next_cursor":null,"x":1}"#)
        .unwrap();
    assert!(p.data.is_empty() && !p.has_more);
}

fn valid_pages() -> (String, String) {
    (
        page(&[task("t1", 100), task("t2", 3)], Some("c_9")),
        page(&[agent("a1"), agent("a2")], Some("c_9")),
    )
}

proptest! {
    #[test]
    fn parse_page_never_panics_on_random_bytes(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_page::<types::Task>(&body);
        let _ = parse_page::<types::Agent>(&body);
    }

    #[test]
    fn parse_page_never_panics_on_truncated_or_mangled_pages(cut in 0.0f64..1.0, at in 0.0f64..1.0, byte in any::<u8>()) {
        let (tasks, agents) = valid_pages();
        for full in [tasks.as_bytes(), agents.as_bytes()] {
            let n = (full.len() as f64 * cut) as usize;
            let prefix = &full[..n];
            let r1 = parse_page::<types::Task>(prefix);
            let r2 = parse_page::<types::Agent>(prefix);
            // A strict prefix of an object is never a valid page.
            prop_assert!(r1.is_err() && r2.is_err());
            let mut mangled = full.to_vec();
            let i = ((mangled.len() - 1) as f64 * at) as usize;
            mangled[i] = byte;
            let _ = parse_page::<types::Task>(&mangled);
            let _ = parse_page::<types::Agent>(&mangled);
        }
        prop_assert!(parse_page::<types::Task>(tasks.as_bytes()).is_ok());
        prop_assert!(parse_page::<types::Agent>(agents.as_bytes()).is_ok());
    }
}

/// The poller spawns these futures on a multi-thread runtime.
#[test]
fn futures_are_send_and_client_is_sync() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<Client>();
    let c = Client::new(config("http://127.0.0.1:1/v1")).unwrap();
    let mut l = c.list_agents();
    assert_send(&l.next());
    assert_send(&c.token());
    assert_send(&c.list_tasks(TaskQuery::default()).collect_all());
}

// ---- an upstream that cannot exhaust us ----

fn listing_error(e: &ApiError) -> &str {
    match e {
        ApiError::Listing { detail, .. } => detail,
        other => panic!("not a listing error: {other:?}"),
    }
}

#[tokio::test]
async fn a_cursor_cycle_fails_the_listing() {
    // a -> b -> a: the previous cursor differs every time.
    let s = serve(|_, req| match req.param("cursor") {
        None => Reply::new(200, page(&[agent("a1")], Some("a"))),
        Some("a") => Reply::new(200, page(&[agent("a2")], Some("b"))),
        Some(_) => Reply::new(200, page(&[agent("a3")], Some("a"))),
    })
    .await;
    let c = client(&s);
    let mut l = c.list_agents();
    let e = loop {
        match l.next().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a cycling listing ended as if complete"),
            Err(e) => break e,
        }
    };
    assert!(listing_error(&e).contains("repeats a cursor"), "{e}");
    assert_eq!(s.count(), 3);
    // The listing stays failed: it cannot be taken for a complete one.
    assert!(matches!(l.next().await, Err(ApiError::Listing { .. })));
    assert_eq!(s.count(), 3);
}

#[tokio::test]
async fn cursors_longer_than_the_cap_fail_the_listing() {
    let s =
        serve(|n, _| Reply::new(200, page(&[agent("a")], Some(&"c".repeat(100 * (n + 1)))))).await;
    let mut cfg = config(&s.base);
    cfg.limits.max_cursor_len = 1000;
    let e = Client::new(cfg)
        .unwrap()
        .list_agents()
        .collect_all()
        .await
        .unwrap_err();
    assert!(listing_error(&e).contains("--api.max-cursor-length"), "{e}");
    // The 11th answer's cursor (1,100 bytes) is the first too long.
    assert_eq!(s.count(), 11);
}

#[tokio::test]
async fn never_ending_pages_stop_at_the_page_cap() {
    let s = serve(|n, _| Reply::new(200, page(&[agent("a")], Some(&format!("c{n}"))))).await;
    let mut cfg = config(&s.base);
    cfg.limits.max_pages = 50;
    let e = Client::new(cfg)
        .unwrap()
        .list_agents()
        .collect_all()
        .await
        .unwrap_err();
    assert!(listing_error(&e).contains("--api.max-pages (50)"), "{e}");
    assert_eq!(s.count(), 50);
}

#[tokio::test]
async fn a_listing_stops_at_the_byte_cap() {
    let body = page(&[task("t", 4000)], Some("next"));
    let s =
        serve(move |n, _| Reply::new(200, body.replace("\"next\"", &format!("\"c{n}\"")))).await;
    let mut cfg = config(&s.base);
    cfg.limits.max_listing_bytes = 40_000;
    cfg.limits.max_body_bytes = 10_000;
    let e = Client::new(cfg)
        .unwrap()
        .list_tasks(TaskQuery::default())
        .collect_all()
        .await
        .unwrap_err();
    assert!(listing_error(&e).contains("--api.max-listing-bytes"), "{e}");
    assert!((10..=11).contains(&s.count()), "{}", s.count());
}

/// A page too large for the body cap is asked for again in halves; the
/// next page grows back.
#[tokio::test]
async fn a_page_too_large_is_asked_again_with_a_smaller_limit() {
    let s = serve(|_, req| {
        let limit: usize = req.param("limit").unwrap().parse().unwrap();
        let last = req.param("cursor") == Some("c1");
        let tasks: Vec<String> = (0..limit.min(if last { 3 } else { 100 }))
            .map(|i| task(&format!("t{i}"), 3000))
            .collect();
        Reply::new(200, page(&tasks, (!last).then_some("c1")))
    })
    .await;
    let mut cfg = config(&s.base);
    cfg.limits.max_body_bytes = 45_000; // 12 tasks of 3.4 KB fit, 24 do not
    let tasks = Client::new(cfg)
        .unwrap()
        .list_tasks(TaskQuery::default())
        .collect_all()
        .await
        .unwrap();
    assert_eq!(tasks.len(), 12 + 3);
    let limits: Vec<_> = s
        .seen()
        .iter()
        .map(|r| r.param("limit").unwrap().to_string())
        .collect();
    // The rest of the listing keeps the size that fit: no page read twice.
    assert_eq!(limits, ["100", "50", "25", "12", "12"]);
}

#[tokio::test]
async fn one_object_larger_than_the_cap_fails_with_a_clear_error() {
    let s = serve(|_, _| Reply::new(200, page(&[task("t", 50_000)], None))).await;
    let mut cfg = config(&s.base);
    cfg.limits.max_body_bytes = 40_000;
    let e = Client::new(cfg)
        .unwrap()
        .list_tasks(TaskQuery::default())
        .collect_all()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::BodyTooLarge {
                single_object: true,
                limit: 40_000,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("--api.max-body-size"), "{e}");
    assert!(!e.is_retryable());
    // 100, 50, 25, 12, 6, 3, 1: seven tries, each refused as it streamed.
    assert_eq!(s.count(), 7);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_bounded_and_held_for_tells_it() {
    let s = serve(|n, _| {
        if n == 0 {
            Reply::error(429, "rate_limited", "{}").header("retry-after", 86_400)
        } else {
            Reply::new(200, TOKEN)
        }
    })
    .await;
    let mut cfg = config(&s.base);
    cfg.limits.max_retry_after = Duration::from_secs(7);
    let c = Client::new(cfg).unwrap();
    let probe = c.clone();
    let watcher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        probe.held_for()
    });
    c.token().await.unwrap();
    let seen = s.seen();
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(7) && gap < Duration::from_secs(8),
        "{gap:?}"
    );
    let (d, why) = watcher.await.unwrap().expect("held during the Retry-After");
    assert_eq!(why, "retry_after");
    assert!(
        d <= Duration::from_secs(6) && d > Duration::from_secs(5),
        "{d:?}"
    );
    assert_eq!(c.stats().held_for, None);
}

/// An upstream (or proxy) that echoes the request, key included, in its
/// error message, request id, details or a body that fails to parse.
#[tokio::test]
async fn upstream_text_echoing_the_key_is_scrubbed() {
    let bearer = format!("Bearer {KEY}");
    let cases: Vec<Reply> = vec![
        Reply::new(
            400,
            format!(
                r#"{{"error":{{"code":"invalid_request","message":"bad header Authorization: {bearer}","request_id":"{KEY}","details":null}}}}"#
            ),
        ),
        Reply::new(
            403,
            format!(
                r#"{{"error":{{"code":"insufficient_scope","message":"m","request_id":"r","details":{{"required_scope":"{KEY}"}}}}}}"#
            ),
        ),
        Reply::new(
            409,
            format!(
                r#"{{"error":{{"code":"{KEY}","message":"{}{}","request_id":"r","details":null}}}}"#,
                "x".repeat(190),
                KEY
            ),
        ),
        Reply::new(
            200,
            format!(r#"{{"data":{{"id":"{bearer}","workspace_id":7}}}}"#),
        ),
        Reply::new(
            200,
            r#"{"data":{"id":"k","workspace_id":"ws","scopes":"token sk_other_0123456789abcdef and Bearer abc.def-ghi"}}"#.to_string(),
        ),
        Reply::error(502, "bad_gateway", "{}").header("x-request-id", &bearer),
    ];
    let cases = Arc::new(Mutex::new(cases.into_iter().map(Some).collect::<Vec<_>>()));
    let n_cases = cases.lock().unwrap().len();
    let s = serve(move |n, _| cases.lock().unwrap()[n].take().unwrap()).await;
    let mut cfg = config(&s.base);
    cfg.max_attempts = 1;
    let c = Client::new(cfg).unwrap();
    for i in 0..n_cases {
        let e = c.token().await.unwrap_err();
        assert_no_key(&e);
        let text = e.to_string();
        assert!(
            !text.contains("cmk_live"),
            "case {i}: a prefix of the key: {text}"
        );
        assert!(
            !text.contains("abc.def-ghi"),
            "case {i}: a bearer token: {text}"
        );
    }
}

#[test]
fn clean_redacts_the_key_cut_short_and_bearer_tokens() {
    let cut = &KEY[..14];
    assert_eq!(
        error::clean(&format!("got {KEY}, {cut}"), KEY, 200),
        "got <redacted>, <redacted>"
    );
    assert_eq!(
        error::clean("authorization: bearer xyz123 ok", KEY, 200),
        "authorization: bearer <redacted> ok"
    );
    // The window is cut before scrubbing: a huge text costs little, and
    // a key straddling the cut is still caught by its prefix.
    let long = format!("{}{KEY}", "x".repeat(195));
    let out = error::clean(&long, KEY, 200);
    assert!(!out.contains("cmk_live"), "{out}");
    assert!(out.len() <= 203, "{}", out.len());
}

/// Ids, statuses and codes from the API become label values and map keys:
/// longer than the bound, an id is kept as its digest, a name as "other".
#[test]
fn api_strings_are_bounded_where_they_are_read() {
    let long = "s".repeat(1 << 20);
    let body = format!(
        r#"{{"data":[{{"id":"{long}","status":"{long}","created_at":"2026-11-23T10:15:02Z","updated_at":"2026-11-23T10:15:02Z"}}],"has_more":false,"next_cursor":null}}"#
    );
    let page = parse_page::<types::Agent>(body.as_bytes()).unwrap();
    let a = &page.data[0];
    assert_eq!(a.status, "other");
    assert!(
        a.id.starts_with("sha256:") && a.id.len() == 71,
        "{}",
        a.id.len()
    );
    assert_eq!(
        a.id,
        types::bound_id(&long),
        "the same long id, the same digest"
    );
    assert_ne!(types::bound_id(&long), types::bound_id(&format!("{long}x")));
    assert_eq!(types::bound_id("agt_1"), "agt_1");

    let body = format!(
        r#"{{"data":[{{"id":"t","status":"{long}","created_at":"2026-11-23T10:15:02Z","updated_at":"2026-11-23T10:15:02Z","error":{{"code":"{long}"}}}}],"has_more":false,"next_cursor":null}}"#
    );
    let page = parse_page::<types::Task>(body.as_bytes()).unwrap();
    let t = &page.data[0];
    assert_eq!(t.status.name(), "other");
    assert_eq!(t.error.as_ref().unwrap().code.as_deref(), Some("other"));

    let many: Vec<String> = (0..1000).map(|i| format!("\"scope{i}\"")).collect();
    let body = format!(
        r#"{{"data":{{"id":"{long}","workspace_id":"{long}","scopes":["{long}",{}]}}}}"#,
        many.join(",")
    );
    let token = serde_json::from_str::<types::Envelope<types::Token>>(&body)
        .unwrap()
        .data;
    assert_eq!(token.workspace_id.len(), 71);
    assert_eq!(token.scopes.len(), types::MAX_SCOPES);
    assert_eq!(token.scopes[0], "other");
}

// ---- hostile breakdown fields: labels, providers, agent ids ----

fn hostile_agent(fields: &str) -> types::Agent {
    let json = format!(
        r#"{{"id":"agt_1","name":"n","status":"idle","created_at":"2026-11-23T10:15:02Z","updated_at":"2026-11-23T10:15:02Z"{fields}}}"#
    );
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{fields}: {e}"))
}

#[test]
fn hostile_agent_breakdown_fields_never_fail_the_page() {
    for fields in [
        r#","labels":["team","x"]"#,
        r#","labels":42"#,
        r#","labels":null"#,
        r#","labels":{"team":7,"env":null,"ok":"v","":"empty","nested":{"a":"b"}}"#,
        r#","config":"gpt""#,
        r#","config":[1]"#,
        r#","config":{"model":5,"model_provider":{"x":1}}"#,
        r#","last_heartbeat_at":"yesterday""#,
        r#","last_heartbeat_at":17"#,
        r#","last_heartbeat_at":"9999-99-99T99:99:99Z""#,
    ] {
        let a = hostile_agent(fields);
        assert!(a.last_heartbeat_at.is_none(), "{fields}");
        assert!(
            a.config.model.is_none() && a.config.model_provider.is_none(),
            "{fields}"
        );
        // Only string entries with a non-empty key survive.
        assert!(
            a.labels.iter().all(|(k, _)| k == "ok"),
            "{fields}: {:?}",
            a.labels
        );
    }
}

#[test]
fn huge_label_maps_and_keys_are_bounded() {
    let mut m = serde_json::Map::new();
    for i in 0..5000 {
        m.insert(
            format!("k{i:05}"),
            serde_json::Value::String("x".repeat(10_000)),
        );
    }
    m.insert("a".repeat(100_000), "v".into());
    let labels = serde_json::to_string(&m).unwrap();
    let a = hostile_agent(&format!(r#","labels":{labels}"#));
    assert_eq!(a.labels.len(), types::MAX_LABELS);
    assert!(a
        .labels
        .iter()
        .all(|(k, v)| k.len() <= types::MAX_TEXT_LEN && v.len() <= types::MAX_TEXT_LEN));
}

#[test]
fn hostile_task_agent_ids_are_read_as_none_or_bounded() {
    let task = |agent_id: &str| {
        let json = format!(
            r#"{{"id":"t","agent_id":{agent_id},"status":"running","created_at":"2026-11-23T10:15:02Z","updated_at":"2026-11-23T10:15:02Z"}}"#
        );
        serde_json::from_str::<types::Task>(&json).unwrap_or_else(|e| panic!("{agent_id}: {e}"))
    };
    assert_eq!(task("5").agent_id, None);
    assert_eq!(task(r#""""#).agent_id, None);
    assert_eq!(task(r#"{"id":"a"}"#).agent_id, None);
    let long = task(&format!(r#""{}""#, "a".repeat(10_000)));
    assert!(long.agent_id.unwrap().len() <= types::MAX_TEXT_LEN);
}

#[test]
fn agent_ids_cannot_leave_their_path_segment() {
    assert_eq!(escape_segment("agt_1"), "agt_1");
    assert_eq!(escape_segment("../tasks?x=1#"), "..%2Ftasks%3Fx%3D1%23");
    assert_eq!(escape_segment("é"), "%C3%A9");
}

#[tokio::test]
async fn dot_segment_agent_ids_never_request_another_path() {
    // "." and ".." are dot segments: GET /agents/. is GET /agents/, the
    // listing, and /agents/.. the API's root. No agent has such an id;
    // the client must not ask for one.
    let s = serve(|_, _| Reply::new(200, format!(r#"{{"data":{}}}"#, agent("agt_x")))).await;
    let c = client(&s);
    for id in [".", ".."] {
        assert!(c.agent(id).await.unwrap().is_none(), "{id}");
    }
    assert_eq!(s.count(), 0, "{:?}", s.seen());
    // Percent signs are escaped: "%2e" stays an id, not a dot.
    c.agent("%2e").await.unwrap();
    assert_eq!(s.seen()[0].path, "/v1/agents/%252e");
}

// ---- one malformed object is one refused object ----

/// A task as the API writes it, `extra` fields added (JSON text, each
/// starting with a comma).
fn task_text(id: &str, updated: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"{id}","status":"completed","created_at":"2026-11-23T10:00:00Z","updated_at":"{updated}","transitions":[]{extra}}}"#
    )
}

fn page_of(items: &[String]) -> Vec<u8> {
    format!(
        r#"{{"data":[{}],"has_more":false,"next_cursor":null}}"#,
        items.join(",")
    )
    .into_bytes()
}

#[test]
fn a_lone_surrogate_in_a_label_reads_as_u_fffd_and_the_task_stands() {
    // What JavaScript's JSON.stringify makes of an emoji cut in half:
    // serde_json refuses it, which failed the whole page on every poll.
    let body = page_of(&[
        task_text(
            "t1",
            "2026-11-23T10:00:05Z",
            r#","labels":{"team":"x\ud800"}"#,
        ),
        task_text(
            "t2",
            "2026-11-23T10:00:06Z",
            r#","labels":{"team":"\udc00y"}"#,
        ),
        // A pair is one character, not a repair.
        task_text(
            "t3",
            "2026-11-23T10:00:07Z",
            r#","labels":{"team":"\ud83d\ude00"}"#,
        ),
        // An escaped backslash before "ud800" is text, not an escape.
        task_text(
            "t4",
            "2026-11-23T10:00:08Z",
            r#","labels":{"team":"\\ud800"}"#,
        ),
        // A high surrogate followed by another high one: both lone.
        task_text(
            "t5",
            "2026-11-23T10:00:09Z",
            r#","agent_id":"a\ud800\ud800""#,
        ),
    ]);
    let page = parse_page::<types::Task>(&body).unwrap();
    assert!(page.rejected.is_empty(), "{:?}", page.rejected);
    let label = |i: usize| page.data[i].labels[0].1.clone();
    assert_eq!(label(0), "x\u{FFFD}");
    assert_eq!(label(1), "\u{FFFD}y");
    assert_eq!(label(2), "😀");
    assert_eq!(label(3), "\\ud800");
    assert_eq!(page.data[4].agent_id.as_deref(), Some("a\u{FFFD}\u{FFFD}"));
    let repaired: Vec<bool> = page.data.iter().map(|t| t.text_repaired).collect();
    assert_eq!(repaired, [true, true, false, false, true]);
    // The same in an agent listing and a single agent.
    let agent = r#"{"id":"agt_1","status":"idle","created_at":"2026-11-23T10:00:00Z","updated_at":"2026-11-23T10:00:00Z","labels":{"team":"x\ud800"}}"#;
    let page = parse_page::<types::Agent>(&page_of(&[agent.to_string()])).unwrap();
    assert_eq!(page.data[0].labels[0].1, "x\u{FFFD}");
    assert!(page.data[0].text_repaired);
    let one =
        parse_envelope::<types::Agent>(format!(r#"{{"data":{agent}}}"#).as_bytes(), "").unwrap();
    assert_eq!(one.labels[0].1, "x\u{FFFD}");
}

#[test]
fn repairing_surrogates_never_panics_and_keeps_the_length() {
    for s in [
        "",
        "\\",
        "\\u",
        "\\ud8",
        "\\ud800",
        "\\ud800\\",
        "\\ud800\\u",
        "\\ud800\\udc0",
        "\\\\\\ud800",
        "\\uzzzz",
        "é\\udfff",
    ] {
        let r = types::repair_surrogates(s);
        assert_eq!(r.len(), s.len(), "{s:?}");
    }
    assert_eq!(types::repair_surrogates("\\\\\\ud800"), "\\\\\\ufffd");
    assert_eq!(types::repair_surrogates("\\ud800\\"), "\\ufffd\\");
}

#[test]
fn one_malformed_object_is_one_refused_object_never_the_page() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let very_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut items = vec![
        // Each wrong in one field; id and updated_at still read.
        task_text("bad_status", "2026-11-23T10:00:01Z", "")
            .replace(r#""status":"completed""#, r#""status":5"#),
        task_text("bad_created", "2026-11-23T10:00:02Z", "").replace(
            r#""created_at":"2026-11-23T10:00:00Z""#,
            r#""created_at":1764000000"#,
        ),
        task_text("bad_transitions", "2026-11-23T10:00:03Z", r#","x":1"#)
            .replace(r#""transitions":[]"#, r#""transitions":"many""#),
        task_text(
            "deep_labels",
            "2026-11-23T10:00:04Z",
            &format!(r#","labels":{{"a":{deep}}}"#),
        ),
        // Neither id nor updated_at reads.
        task_text("x", "not a time", "").replace(r#""id":"x""#, r#""id":{"a":1}"#),
        "5".to_string(),
        "null".to_string(),
        // Ignored fields may be anything, however deep: the task stands.
        task_text(
            "deep_ignored",
            "2026-11-23T10:00:05Z",
            &format!(r#","instructions":{very_deep}"#),
        ),
        task_text("good", "2026-11-23T10:00:06Z", ""),
    ];
    // A byte that is not UTF-8 (0xFF where the mark is), in a label.
    items.push(task_text(
        "last",
        "2026-11-23T10:00:07Z",
        ",\"labels\":{\"team\":\"x\u{E000}\"}",
    ));
    let mark = "\u{E000}".as_bytes();
    let mut body = page_of(&items);
    let at = body.windows(3).position(|w| w == mark).unwrap();
    body.splice(at..at + 3, [0xFF]);

    let page = parse_page::<types::Task>(&body).expect("the page stands");
    let ids: Vec<&str> = page.data.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["deep_ignored", "good", "last"]);
    assert!(!page.data[1].text_repaired);
    assert_eq!(
        page.data[2].labels,
        [("team".to_string(), "x\u{FFFD}".to_string())]
    );
    assert!(page.data[2].text_repaired);
    let refused: Vec<(Option<&str>, &str, Option<types::Timestamp>)> = page
        .rejected
        .iter()
        .map(|m| (m.id.as_deref(), m.reason, m.updated_at))
        .collect();
    let at = |s: &str| types::Timestamp::parse(s);
    assert_eq!(
        refused,
        [
            (
                Some("bad_status"),
                "invalid_field",
                at("2026-11-23T10:00:01Z")
            ),
            (
                Some("bad_created"),
                "invalid_field",
                at("2026-11-23T10:00:02Z")
            ),
            (
                Some("bad_transitions"),
                "invalid_field",
                at("2026-11-23T10:00:03Z")
            ),
            (Some("deep_labels"), "malformed", at("2026-11-23T10:00:04Z")),
            (None, "invalid_field", None),
            (None, "invalid_field", None),
            (None, "invalid_field", None),
        ]
    );
    assert!(page.rejected.iter().all(|m| m.resource == "tasks"));
}

/// Invalid UTF-8 in one object of a page marks that object repaired
/// (`invalid_text`), not every other object that holds a U+FFFD the API
/// sent as such: on main a page with one bad byte marked them all, and
/// each counted once more in clawmesh_api_rejected_objects_total.
#[test]
fn only_the_object_with_invalid_utf8_is_marked_repaired_not_one_with_a_real_u_fffd() {
    let items = vec![
        task_text(
            "sent_as_is",
            "2026-11-23T10:00:01Z",
            ",\"labels\":{\"team\":\"x\u{FFFD}\"}",
        ),
        task_text(
            "bad_byte",
            "2026-11-23T10:00:02Z",
            ",\"labels\":{\"team\":\"y\u{E000}\"}",
        ),
        task_text(
            "after",
            "2026-11-23T10:00:03Z",
            ",\"labels\":{\"team\":\"\u{FFFD}z\"}",
        ),
    ];
    let mark = "\u{E000}".as_bytes();
    let mut body = page_of(&items);
    let at = body.windows(3).position(|w| w == mark).unwrap();
    body.splice(at..at + 3, [0xC3]);
    let page = parse_page::<types::Task>(&body).unwrap();
    let labels: Vec<&str> = page.data.iter().map(|t| t.labels[0].1.as_str()).collect();
    assert_eq!(labels, ["x\u{FFFD}", "y\u{FFFD}", "\u{FFFD}z"]);
    let repaired: Vec<bool> = page.data.iter().map(|t| t.text_repaired).collect();
    assert_eq!(repaired, [false, true, false]);
    // A single agent: a bad byte outside its object marks nothing.
    let agent = "{\"id\":\"agt_1\",\"status\":\"idle\",\"created_at\":\"2026-11-23T10:00:00Z\",\"updated_at\":\"2026-11-23T10:00:00Z\",\"labels\":{\"team\":\"x\u{FFFD}\"}}";
    let mut body = format!("{{\"data\":{agent},\"note\":\"\u{E000}\"}}").into_bytes();
    let at = body.windows(3).position(|w| w == mark).unwrap();
    body.splice(at..at + 3, [0xFF]);
    let one = parse_envelope::<types::Agent>(&body, "").unwrap();
    assert!(!one.text_repaired);
}

/// Duplicate keys refuse the object (serde's derive: "duplicate field"),
/// never count it twice or under the first or last value; a lone
/// surrogate in an id or a status is repaired like any text; a `data`
/// that is not an array, or a cursor that is not Unicode, fails the page
/// (a cursor cannot be sent back repaired: it would name another page).
#[test]
fn duplicate_keys_broken_ids_statuses_and_cursors() {
    let items = vec![
        task_text("dup_status", "2026-11-23T10:00:01Z", "").replace(
            r#""status":"completed""#,
            r#""status":"completed","status":"pending""#,
        ),
        task_text("a", "2026-11-23T10:00:02Z", "").replace(r#""id":"a""#, r#""id":"a","id":"b""#),
        task_text(r"t\ud800", "2026-11-23T10:00:03Z", ""),
        task_text("s", "2026-11-23T10:00:04Z", "")
            .replace(r#""status":"completed""#, r#""status":"complet\udc00""#),
    ];
    let page = parse_page::<types::Task>(&page_of(&items)).unwrap();
    let refused: Vec<(Option<&str>, &str, Option<types::Timestamp>)> = page
        .rejected
        .iter()
        .map(|m| (m.id.as_deref(), m.reason, m.updated_at))
        .collect();
    assert_eq!(
        refused,
        [
            (
                Some("dup_status"),
                "invalid_field",
                types::Timestamp::parse("2026-11-23T10:00:01Z")
            ),
            // The id itself is doubled: neither is taken.
            (None, "invalid_field", None),
        ]
    );
    let read: Vec<(&str, bool, bool)> = page
        .data
        .iter()
        .map(|t| (t.id.as_str(), t.text_repaired, t.status.is_terminal()))
        .collect();
    assert_eq!(
        read,
        [("t\u{FFFD}", true, true), ("s", true, false)],
        "{:?}",
        page.data.iter().map(|t| &t.status).collect::<Vec<_>>()
    );
    for body in [
        r#"{"data":{"id":"t"},"has_more":false,"next_cursor":null}"#.to_string(),
        r#"{"data":"many","has_more":false,"next_cursor":null}"#.to_string(),
        r#"{"data":[],"has_more":true,"next_cursor":"c\ud800"}"#.to_string(),
    ] {
        assert!(
            parse_page::<types::Task>(body.as_bytes()).is_err(),
            "{body}"
        );
    }
}

/// 100,000 tiny objects in one page: each is one refused object (they
/// are numbers, not tasks), the page stands, and it takes one pass.
#[test]
fn a_page_of_100k_tiny_objects_is_read_one_by_one() {
    let body = format!(
        r#"{{"data":[{}],"has_more":false,"next_cursor":null}}"#,
        vec!["5"; 100_000].join(",")
    );
    let started = std::time::Instant::now();
    let page = parse_page::<types::Task>(body.as_bytes()).unwrap();
    eprintln!("100k tiny objects read in {:?}", started.elapsed());
    assert!(page.data.is_empty());
    assert_eq!(page.rejected.len(), 100_000);
    assert!(page
        .rejected
        .iter()
        .all(|m| m.reason == "invalid_field" && m.id.is_none()));
}
