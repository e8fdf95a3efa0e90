//! A hostile ClawMesh API: a scripted server on loopback answers
//! /v1/auth/token, /v1/agents and /v1/tasks as each case says (cycling and
//! growing cursors, endless pages and bodies, hangs, bad bytes, huge
//! answers, absurd headers, echoed keys, absurd numbers), and the real
//! binary runs against it as a child process. Every case checks that the
//! process lives, its peak RSS (VmHWM) stays under the 64 Mi pod limit,
//! nothing panicked, the key shows nowhere, and the health series tell the
//! truth: `clawmesh_up` 0 and `clawmesh_sync_failures_total` rising when
//! syncs fail, `clawmesh_up` 1 and sane numbers where the case is
//! survivable. Each case prints its peak RSS (see BENCHMARKS.md).

use crate::util::{free_port, now_rfc3339, parse, value};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::Response;
use axum::Router;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: &str = "cmk_live_hostile_5e2d8c41aa07";
const WS: &str = "ws_hostile";
/// The pod limit of deploy/kubernetes: the peak RSS must stay below it.
const POD_LIMIT_KIB: u64 = 64 * 1024;
/// Generous: the CI machine has 2 cores shared with other tests.
const DEADLINE: Duration = Duration::from_secs(120);

/// One request as the script sees it.
struct Req {
    /// "/agents" or "/tasks".
    path: String,
    query: HashMap<String, String>,
    /// How many requests to this path came before this one.
    n: usize,
}

impl Req {
    fn param(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
    fn limit(&self) -> usize {
        self.param("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(20)
    }
}

type Answer = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
type Script = Arc<dyn Fn(Req) -> Answer + Send + Sync>;

fn json(status: u16, body: impl Into<Body>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

fn ready(r: Response<Body>) -> Answer {
    Box::pin(async move { r })
}

fn page(items: &[String], next: Option<&str>) -> String {
    format!(
        r#"{{"data":[{}],"has_more":{},"next_cursor":{}}}"#,
        items.join(","),
        next.is_some(),
        next.map_or("null".to_string(), |c| format!("\"{c}\""))
    )
}

fn agent(id: &str, status: &str) -> String {
    let t = now_rfc3339(0);
    format!(
        r#"{{"id":"{id}","name":"n","status":"{status}","created_at":"{t}","updated_at":"{t}"}}"#
    )
}

fn empty_page() -> Answer {
    ready(json(200, page(&[], None)))
}

/// A body that streams what `feed` sends; the feeder ends when the
/// exporter hangs up.
fn streamed(
    status: u16,
    feed: impl FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Answer2,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(feed(tx));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, Ok::<Bytes, std::io::Error>);
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

type Answer2 = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The scripted API. Paths a case does not script answer as a healthy,
/// empty workspace would.
struct Hostile {
    base: String,
}

impl Hostile {
    async fn start(agents: Script, tasks: Script) -> Hostile {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let app = Router::new().fallback(move |req: Request| {
            let counts = counts.clone();
            let (agents, tasks) = (agents.clone(), tasks.clone());
            async move {
                let path = req.uri().path().trim_start_matches("/v1").to_string();
                let query = reqwest::Url::parse(&format!("http://x/?{}", req.uri().query().unwrap_or("")))
                    .unwrap()
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let n = {
                    let mut c = counts.lock().unwrap();
                    let e = c.entry(path.clone()).or_default();
                    *e += 1;
                    *e - 1
                };
                let r = Req { path, query, n };
                match r.path.as_str() {
                    "/auth/token" => json(
                        200,
                        format!(
                            r#"{{"data":{{"id":"key_1","workspace_id":"{WS}","scopes":["agents:read","tasks:read"],"expires_at":null}}}}"#
                        ),
                    ),
                    "/agents" => agents(r).await,
                    "/tasks" => tasks(r).await,
                    _ => json(404, r#"{"error":{"code":"not_found","message":"no","request_id":"r"}}"#),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Hostile {
            base: format!("http://{addr}/v1"),
        }
    }
}

fn healthy() -> Script {
    Arc::new(|_| empty_page())
}

/// The binary under test: the test build's, or `CLAWMESH_HOSTILE_BIN`
/// (e.g. a release build, for the figures of BENCHMARKS.md).
fn binary() -> String {
    std::env::var("CLAWMESH_HOSTILE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_clawmesh-exporter").to_string())
}

/// The exporter binary, run as a user would run it.
struct Exporter {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Exporter {
    fn start(api: &Hostile, extra: &[&str]) -> Exporter {
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "clawmesh-hostile-{}-{port}.log",
            std::process::id()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary())
            .env_clear()
            .env("CLAWMESH_API_KEY", KEY)
            .args(["--api-url", &api.base])
            .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
            .args(["--poll-interval", "1s", "--agents.interval", "1s"])
            .args(["--api.timeout", "3s", "--api.max-attempts", "2"])
            .args(if extra.contains(&"--api.budget-share") {
                &[][..]
            } else {
                &["--api.budget-share", "1"][..]
            })
            .args(extra)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Exporter { child, port, log }
    }

    async fn scrape(&self) -> Option<String> {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }

    /// Scrapes until `cond` holds on the series; gives the last exposition.
    /// On the deadline, fails with the workspace's series and the log's tail.
    async fn wait_until(
        &self,
        what: &str,
        cond: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = String::new();
        loop {
            self.assert_alive();
            if let Some(text) = self.scrape().await {
                let ok = cond(&parse(&text));
                last = text;
                if ok {
                    return last;
                }
            }
            if tokio::time::Instant::now() > deadline {
                let series: Vec<&str> = last
                    .lines()
                    .filter(|l| {
                        !l.starts_with('#')
                            && (l.starts_with("clawmesh_up")
                                || l.starts_with("clawmesh_sync")
                                || l.starts_with("clawmesh_api_requests")
                                || l.starts_with("clawmesh_tasks_finished"))
                    })
                    .collect();
                let logs = self.logs();
                let tail: Vec<&str> = logs.lines().rev().take(15).collect();
                panic!(
                    "timed out after {DEADLINE:?} waiting for {what}\nseries:\n{}\nlog tail (newest first):\n{}",
                    series.join("\n"),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn assert_alive(&self) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        assert!(
            status.contains("State:") && !status.contains("State:\tZ"),
            "the exporter died; its log:\n{}",
            self.logs()
        );
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    fn logs(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The checks of every case, then SIGTERM; gives the logs.
    fn finish(mut self, case: &str, metrics: &str) -> String {
        self.assert_alive();
        let peak = self.peak_rss_kib();
        eprintln!(
            "hostile case {case}: peak RSS (VmHWM) {} KiB = {:.1} MiB",
            peak,
            peak as f64 / 1024.0
        );
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let logs = self.logs();
        let _ = std::fs::remove_file(&self.log);
        assert!(
            peak < POD_LIMIT_KIB,
            "{case}: peak RSS {peak} KiB, over the 64 MiB pod limit"
        );
        assert!(!logs.contains("panicked"), "{case}: a panic:\n{logs}");
        assert!(!logs.contains(KEY), "{case}: the key is in the logs");
        assert!(!metrics.contains(KEY), "{case}: the key is in /metrics");
        logs
    }
}

/// A failed case must not leave its exporter running.
impl Drop for Exporter {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn up(m: &BTreeMap<String, f64>) -> Option<f64> {
    value(m, "clawmesh_up", &[("workspace", WS)])
}

fn failures(m: &BTreeMap<String, f64>, resource: &str) -> f64 {
    value(
        m,
        "clawmesh_sync_failures_total",
        &[("workspace", WS), ("resource", resource)],
    )
    .unwrap_or(0.0)
}

/// Runs a case whose syncs of `resource` must fail: `clawmesh_up` 0 and
/// the failures rising (two at least), the log naming `why`.
async fn failing_case(
    case: &str,
    resource: &str,
    agents: Script,
    tasks: Script,
    extra: &[&str],
    why: &str,
) {
    let api = Hostile::start(agents, tasks).await;
    let ex = Exporter::start(&api, extra);
    let metrics = ex
        .wait_until(
            &format!("{case}: failed {resource} syncs counted and clawmesh_up 0"),
            |m| failures(m, resource) >= 2.0 && up(m) == Some(0.0),
        )
        .await;
    let logs = ex.finish(case, &metrics);
    assert!(
        logs.contains(why),
        "{case}: the log does not say {why:?}:\n{}",
        logs.lines().rev().take(10).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycling_cursors_fail_the_sync() {
    let agents: Script = Arc::new(|r| {
        let next = match r.param("cursor") {
            None | Some("b") => "a",
            _ => "b",
        };
        ready(json(
            200,
            page(&[agent(&format!("agt_{}", r.n), "idle")], Some(next)),
        ))
    });
    failing_case(
        "cycling cursors a->b->a",
        "agents",
        agents,
        healthy(),
        &[],
        "repeats a cursor",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_cursors_fail_the_sync() {
    let agents: Script = Arc::new(|r| {
        let grown = r.param("cursor").map_or(0, str::len) + 1024;
        ready(json(
            200,
            page(&[agent("agt_1", "idle")], Some(&"c".repeat(grown))),
        ))
    });
    failing_case(
        "growing cursors",
        "agents",
        agents,
        healthy(),
        &[],
        "--api.max-cursor-length",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ending_pages_fail_the_sync() {
    // has_more forever, a fresh cursor every time.
    let tasks: Script = Arc::new(|r| ready(json(200, page(&[], Some(&format!("fresh_{}", r.n))))));
    failing_case(
        "never-ending pages",
        "tasks",
        healthy(),
        tasks,
        &["--api.max-pages", "40"],
        "--api.max-pages (40)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ending_body_fails_the_sync() {
    let agents: Script = Arc::new(|_| {
        ready(streamed(200, |tx| {
            Box::pin(async move {
                if tx
                    .send(Bytes::from_static(b"{\"data\":[{\"id\":\""))
                    .await
                    .is_err()
                {
                    return;
                }
                let chunk = Bytes::from(vec![b'x'; 64 << 10]);
                while tx.send(chunk.clone()).await.is_ok() {}
            })
        }))
    });
    failing_case(
        "never-ending body",
        "agents",
        agents,
        healthy(),
        &[],
        "--api.max-body-size",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_before_the_headers_fails_the_sync() {
    let agents: Script = Arc::new(|_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            json(200, page(&[], None))
        })
    });
    failing_case(
        "hang before headers",
        "agents",
        agents,
        healthy(),
        &[],
        "timed out",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_mid_body_fails_the_sync() {
    let agents: Script = Arc::new(|_| {
        ready(streamed(200, |tx| {
            Box::pin(async move {
                let _ = tx
                    .send(Bytes::from_static(b"{\"data\":[{\"id\":\"agt_1\","))
                    .await;
                // Keep the body open without another byte.
                tx.closed().await;
            })
        }))
    });
    failing_case(
        "hang mid-body",
        "agents",
        agents,
        healthy(),
        &[],
        "timed out",
    )
    .await;
}

/// Bytes that are not UTF-8 in an agent's id: they read as U+FFFD (the
/// agent counts, marked `invalid_text`), not a failed listing that kept
/// agents unsynced and `/readyz` 503 for as long as the agent existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_reads_as_u_fffd_and_the_sync_succeeds() {
    let agents: Script = Arc::new(|_| {
        let mut body =
            b"{\"data\":[{\"id\":\"agt_\xff\xfe\",\"status\":\"idle\",\"created_at\":\"".to_vec();
        let t = now_rfc3339(0);
        body.extend_from_slice(
            format!("{t}\",\"updated_at\":\"{t}\"}}],\"has_more\":false,\"next_cursor\":null}}")
                .as_bytes(),
        );
        ready(json(200, body))
    });
    let api = Hostile::start(agents, healthy()).await;
    let ex = Exporter::start(&api, &[]);
    let metrics = ex
        .wait_until(
            "the agent counted, marked invalid_text, clawmesh_up 1",
            |m| {
                up(m) == Some(1.0)
                    && failures(m, "agents") == 0.0
                    && value(
                        m,
                        "clawmesh_agents",
                        &[("workspace", WS), ("status", "idle")],
                    ) == Some(1.0)
                    && value(
                        m,
                        "clawmesh_api_rejected_objects_total",
                        &[
                            ("workspace", WS),
                            ("resource", "agents"),
                            ("reason", "invalid_text"),
                        ],
                    )
                    .is_some_and(|n| n >= 1.0)
            },
        )
        .await;
    ex.finish("invalid UTF-8", &metrics);
}

fn deep(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// 100,000 levels of nesting in a field the exporter does not read: skipped
/// without recursion (serde_json ignores values iteratively), the sync
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_nesting_in_an_unread_field_is_skipped() {
    let agents: Script = Arc::new(|_| {
        let item =
            agent("agt_1", "idle").replacen('{', &format!(r#"{{"extra":{},"#, deep(100_000)), 1);
        ready(json(200, page(&[item], None)))
    });
    let api = Hostile::start(agents, healthy()).await;
    let ex = Exporter::start(&api, &[]);
    let metrics = ex
        .wait_until("the agent counted, clawmesh_up 1", |m| {
            up(m) == Some(1.0)
                && value(
                    m,
                    "clawmesh_agents",
                    &[("workspace", WS), ("status", "idle")],
                ) == Some(1.0)
        })
        .await;
    ex.finish("deep JSON nesting, unread field", &metrics);
}

/// 100,000 levels where the exporter reads a JSON value (a task's `error`):
/// serde_json's recursion limit refuses that task alone (`malformed`), no
/// stack overflow, and the listing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_nesting_where_it_is_read_refuses_that_task_alone() {
    let tasks: Script = Arc::new(|_| {
        let t = now_rfc3339(0);
        let item = format!(
            r#"{{"id":"tsk_1","status":"failed","created_at":"{t}","updated_at":"{t}","finished_at":"{t}","error":{{"code":{}}}}}"#,
            deep(100_000)
        );
        ready(json(200, page(&[item], None)))
    });
    let api = Hostile::start(healthy(), tasks).await;
    let ex = Exporter::start(&api, &[]);
    let metrics = ex
        .wait_until("the task refused as malformed, clawmesh_up 1", |m| {
            up(m) == Some(1.0)
                && failures(m, "tasks") == 0.0
                && value(
                    m,
                    "clawmesh_api_rejected_objects_total",
                    &[
                        ("workspace", WS),
                        ("resource", "tasks"),
                        ("reason", "malformed"),
                    ],
                )
                .is_some_and(|n| n >= 1.0)
        })
        .await;
    ex.finish("deep JSON nesting, read value", &metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_response_fails_the_sync() {
    // One agent of 100 MB, streamed without a Content-Length: the cap
    // must hold while reading, not from a declared length.
    let agents: Script = Arc::new(|_| {
        ready(streamed(200, |tx| {
            Box::pin(async move {
                let t = now_rfc3339(0);
                let head = format!(
                    r#"{{"data":[{{"id":"agt_1","status":"idle","created_at":"{t}","updated_at":"{t}","pad":""#
                );
                if tx.send(Bytes::from(head)).await.is_err() {
                    return;
                }
                let chunk = Bytes::from(vec![b'x'; 1 << 20]);
                for _ in 0..100 {
                    if tx.send(chunk.clone()).await.is_err() {
                        return;
                    }
                }
                let _ = tx
                    .send(Bytes::from_static(
                        b"\"}],\"has_more\":false,\"next_cursor\":null}",
                    ))
                    .await;
            })
        }))
    });
    failing_case(
        "100 MB response",
        "agents",
        agents,
        healthy(),
        &[],
        "even for a page of one object",
    )
    .await;
}

/// 25 agents with 1 MB status names, paged as the contract says: pages too
/// large are asked for again in smaller ones, and the names become
/// "other". The exposition stays small; the sync succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mb_status_names_are_bounded() {
    let status = Arc::new("s".repeat(1 << 20));
    let agents: Script = Arc::new(move |r| {
        let from: usize = r
            .param("cursor")
            .and_then(|c| c.strip_prefix("o"))
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let to = (from + r.limit()).min(25);
        let items: Vec<String> = (from..to)
            .map(|i| agent(&format!("agt_{i}"), &status))
            .collect();
        let next = (to < 25).then(|| format!("o{to}"));
        ready(json(200, page(&items, next.as_deref())))
    });
    let api = Hostile::start(agents, healthy()).await;
    let ex = Exporter::start(&api, &[]);
    let metrics = ex
        .wait_until("25 agents counted as status other, clawmesh_up 1", |m| {
            up(m) == Some(1.0)
                && value(
                    m,
                    "clawmesh_agents",
                    &[("workspace", WS), ("status", "other")],
                ) == Some(25.0)
        })
        .await;
    assert!(
        metrics.len() < 100_000,
        "exposition of {} bytes",
        metrics.len()
    );
    let m = parse(&metrics);
    assert_eq!(failures(&m, "agents"), 0.0);
    ex.finish("1 MB status names", &metrics);
}

fn with_headers(headers: &'static [(&'static str, &'static str)]) -> Script {
    Arc::new(move |_| {
        let mut r = json(200, page(&[], None));
        for (k, v) in headers {
            r.headers_mut().insert(*k, v.parse().unwrap());
        }
        ready(r)
    })
}

fn warnings_about(logs: &str, header: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains(header) && l.contains("outside what the API contract allows"))
        .count()
}

/// X-RateLimit-Limit 1 would pace one request every ten minutes: it is
/// read as the contract's 1,000, logged once, and polling goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_one_is_clamped() {
    const H: &[(&str, &str)] = &[
        ("x-ratelimit-limit", "1"),
        ("x-ratelimit-remaining", "900"),
        ("x-ratelimit-reset", "30"),
    ];
    let api = Hostile::start(with_headers(H), with_headers(H)).await;
    let ex = Exporter::start(&api, &[]);
    let metrics = ex
        .wait_until("many syncs at the clamped limit", |m| {
            up(m) == Some(1.0)
                && value(m, "clawmesh_api_rate_limit_limit", &[("workspace", WS)]) == Some(1000.0)
                && value(
                    m,
                    "clawmesh_api_requests_total",
                    &[("workspace", WS), ("endpoint", "/agents"), ("code", "200")],
                )
                .unwrap_or(0.0)
                    >= 5.0
        })
        .await;
    let m = parse(&metrics);
    assert_eq!(
        value(
            &m,
            "clawmesh_api_budget_requests_per_minute",
            &[("workspace", WS)]
        ),
        Some(1000.0)
    );
    let logs = ex.finish("X-RateLimit-Limit 1", &metrics);
    assert_eq!(
        warnings_about(&logs, "X-RateLimit-Limit"),
        1,
        "one log line per change:\n{logs}"
    );
}

/// X-RateLimit-Limit u64::MAX would switch pacing off: it is read as the
/// contract's burst ceiling of 3,000, so a small share still paces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_u64_max_is_clamped() {
    const H: &[(&str, &str)] = &[
        ("x-ratelimit-limit", "18446744073709551615"),
        ("x-ratelimit-remaining", "18446744073709551615"),
        ("x-ratelimit-reset", "18446744073709551615"),
    ];
    let api = Hostile::start(with_headers(H), with_headers(H)).await;
    // 1 % of 3,000 is 30 a minute: after the 10-second burst, pacing waits.
    let ex = Exporter::start(&api, &["--api.budget-share", "0.01"]);
    let metrics = ex
        .wait_until("pacing at the clamped limit", |m| {
            up(m) == Some(1.0)
                && value(m, "clawmesh_api_rate_limit_limit", &[("workspace", WS)]) == Some(3000.0)
                && value(
                    m,
                    "clawmesh_api_budget_wait_seconds_total",
                    &[("workspace", WS)],
                )
                .unwrap_or(0.0)
                    > 1.0
        })
        .await;
    let m = parse(&metrics);
    assert_eq!(
        value(
            &m,
            "clawmesh_api_budget_requests_per_minute",
            &[("workspace", WS)]
        ),
        Some(30.0)
    );
    assert_eq!(
        value(
            &m,
            "clawmesh_api_rate_limit_remaining",
            &[("workspace", WS)]
        ),
        Some(3000.0)
    );
    let logs = ex.finish("X-RateLimit-Limit u64::MAX", &metrics);
    assert_eq!(
        warnings_about(&logs, "X-RateLimit-Limit"),
        1,
        "one log line per change:\n{logs}"
    );
}

fn retry_after_300() -> Script {
    Arc::new(|r| {
        if r.n == 0 {
            return empty_page();
        }
        let mut resp = json(
            429,
            r#"{"error":{"code":"rate_limited","message":"slow down","request_id":"r"}}"#,
        );
        resp.headers_mut()
            .insert("retry-after", "300".parse().unwrap());
        ready(resp)
    })
}

/// A Retry-After longer than --api.max-retry-after is waited out for the
/// maximum only, with a log line; the failed syncs show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_s_retry_after_is_bounded_by_the_flag() {
    let api = Hostile::start(healthy(), retry_after_300()).await;
    let ex = Exporter::start(&api, &["--api.max-retry-after", "2s"]);
    let metrics = ex
        .wait_until("429s answered every 2 s, not every 300 s", |m| {
            up(m) == Some(0.0)
                && failures(m, "tasks") >= 1.0
                && value(
                    m,
                    "clawmesh_api_requests_total",
                    &[("workspace", WS), ("endpoint", "/tasks"), ("code", "429")],
                )
                .unwrap_or(0.0)
                    >= 3.0
        })
        .await;
    let logs = ex.finish("300 s Retry-After, --api.max-retry-after 2s", &metrics);
    assert!(logs.contains("longer than --api.max-retry-after"), "{logs}");
}

/// During a 300 s Retry-After (within the default bound) the workspace is
/// not syncing: `clawmesh_up` must say 0 and the wait must show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_s_retry_after_shows_as_a_wait() {
    let api = Hostile::start(healthy(), retry_after_300()).await;
    let ex = Exporter::start(&api, &[]);
    let metrics = ex
        .wait_until("clawmesh_up 0 and the Retry-After wait shown", |m| {
            up(m) == Some(0.0)
                && value(
                    m,
                    "clawmesh_api_wait_seconds",
                    &[("workspace", WS), ("reason", "retry_after")],
                )
                .unwrap_or(0.0)
                    > 200.0
        })
        .await;
    ex.finish("300 s Retry-After", &metrics);
}

/// An upstream that echoes the request, key included, in its error
/// message, request id, details and X-Request-Id: the key reaches neither
/// the logs (at debug level) nor /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_echoing_the_key_never_gets_it_logged() {
    let echo = |status: u16| -> Script {
        Arc::new(move |_| {
            let mut r = json(
                status,
                format!(
                    r#"{{"error":{{"code":"invalid_request","message":"bad request with Authorization: Bearer {KEY}","request_id":"{KEY}","details":{{"echo":"{KEY}"}}}}}}"#
                ),
            );
            r.headers_mut()
                .insert("x-request-id", format!("Bearer {KEY}").parse().unwrap());
            ready(r)
        })
    };
    let api = Hostile::start(echo(400), echo(502)).await;
    let ex = Exporter::start(&api, &["--log.level", "debug"]);
    let metrics = ex
        .wait_until("failed syncs of both resources", |m| {
            failures(m, "agents") >= 2.0 && failures(m, "tasks") >= 2.0 && up(m) == Some(0.0)
        })
        .await;
    let logs = ex.finish("an error message echoing the key", &metrics);
    assert!(
        logs.contains("<redacted>"),
        "the echo was not logged at all:\n{logs}"
    );
    assert!(
        !logs.contains(&KEY[..12]),
        "a prefix of the key is in the logs"
    );
}

/// Two finished tasks with run_seconds 1e308 and 1e-310: no panic, each
/// counted once, polling goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_run_seconds_do_not_kill_the_tasks_loop() {
    let at = Arc::new(Mutex::new(None::<String>));
    let tasks: Script = Arc::new(move |r| {
        // Finished well after the exporter's start (its counting floor is
        // the API's time at start, known to a second from `Date`).
        if r.n < 4 {
            return empty_page();
        }
        let t = at
            .lock()
            .unwrap()
            .get_or_insert_with(|| now_rfc3339(3))
            .clone();
        let task = |id: &str, run: &str| {
            format!(
                r#"{{"id":"{id}","status":"completed","created_at":"{t}","updated_at":"{t}","started_at":"{t}","finished_at":"{t}","metrics":{{"queue_seconds":0.5,"run_seconds":{run},"input_tokens":1,"output_tokens":1}},"error":null,"transitions":[]}}"#
            )
        };
        ready(json(
            200,
            page(
                &[task("tsk_huge", "1e308"), task("tsk_tiny", "1e-310")],
                None,
            ),
        ))
    });
    let api = Hostile::start(healthy(), tasks).await;
    let ex = Exporter::start(&api, &[]);
    let metrics = ex
        .wait_until("both tasks counted and later task syncs succeeding", |m| {
            up(m) == Some(1.0)
                && value(
                    m,
                    "clawmesh_tasks_finished_total",
                    &[("workspace", WS), ("status", "completed")],
                ) == Some(2.0)
                && value(
                    m,
                    "clawmesh_api_requests_total",
                    &[("workspace", WS), ("endpoint", "/tasks"), ("code", "200")],
                )
                .unwrap_or(0.0)
                    >= 6.0
        })
        .await;
    let m = parse(&metrics);
    assert_eq!(failures(&m, "tasks"), 0.0);
    // 1e308 s is no run time: refused and counted; 1e-310 is observed.
    assert_eq!(
        value(
            &m,
            "clawmesh_api_rejected_objects_total",
            &[
                ("workspace", WS),
                ("resource", "tasks"),
                ("reason", "invalid_number")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "clawmesh_task_run_duration_seconds_count",
            &[("workspace", WS)]
        ),
        Some(1.0)
    );
    ex.finish("run_seconds 1e308 and 1e-310", &metrics);
}

/// An upstream that echoes the key as data (an agent's status, a task's
/// failure code): it never becomes a label value or a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_echoed_as_a_status_or_code_never_reaches_metrics_or_logs() {
    let agents: Script = Arc::new(|_| {
        ready(json(
            200,
            page(
                &[agent("agt_1", KEY), agent(&format!("agt_{KEY}"), "idle")],
                None,
            ),
        ))
    });
    let at = Arc::new(Mutex::new(None::<String>));
    let tasks: Script = Arc::new(move |r| {
        if r.n < 4 {
            return empty_page();
        }
        let t = at
            .lock()
            .unwrap()
            .get_or_insert_with(|| now_rfc3339(3))
            .clone();
        let task = format!(
            r#"{{"id":"tsk_{KEY}","status":"failed","created_at":"{t}","updated_at":"{t}","started_at":"{t}","finished_at":"{t}","metrics":{{"queue_seconds":0.5,"run_seconds":1,"input_tokens":1,"output_tokens":1}},"error":{{"code":"{KEY}","message":"{KEY}"}},"transitions":[]}}"#
        );
        ready(json(200, page(&[task], None)))
    });
    let api = Hostile::start(agents, tasks).await;
    let ex = Exporter::start(&api, &["--log.level", "debug"]);
    let metrics = ex
        .wait_until("the failed task counted and both agents seen", |m| {
            up(m) == Some(1.0)
                && value(
                    m,
                    "clawmesh_tasks_finished_total",
                    &[("workspace", WS), ("status", "failed")],
                ) == Some(1.0)
                && value(
                    m,
                    "clawmesh_agents",
                    &[("workspace", WS), ("status", "idle")],
                ) == Some(1.0)
        })
        .await;
    // finish() asserts the key is in neither the logs nor /metrics.
    ex.finish("the key echoed as data", &metrics);
}

/// A Retry-After the contract's whole seconds cannot hold, or that is not a
/// number at all, is no licence to retry sooner: waited out, and shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_retry_after_is_waited_out_not_ignored() {
    for value_ in ["99999999999999999999999", "soon", "-1"] {
        let v = value_.to_string();
        let tasks: Script = Arc::new(move |r| {
            if r.n == 0 {
                return empty_page();
            }
            let mut resp = json(
                429,
                r#"{"error":{"code":"rate_limited","message":"slow down","request_id":"r"}}"#,
            );
            resp.headers_mut().insert("retry-after", v.parse().unwrap());
            ready(resp)
        });
        let api = Hostile::start(healthy(), tasks).await;
        let ex = Exporter::start(&api, &[]);
        let metrics = ex
            .wait_until("clawmesh_up 0 and a Retry-After wait shown", |m| {
                up(m) == Some(0.0)
                    && value(
                        m,
                        "clawmesh_api_wait_seconds",
                        &[("workspace", WS), ("reason", "retry_after")],
                    )
                    .unwrap_or(0.0)
                        > 20.0
            })
            .await;
        let m = parse(&metrics);
        let refused = value(
            &m,
            "clawmesh_api_requests_total",
            &[("workspace", WS), ("endpoint", "/tasks"), ("code", "429")],
        )
        .unwrap_or(0.0);
        assert!(
            refused <= 2.0,
            "Retry-After {value_:?}: retried {refused} times while it said to wait"
        );
        ex.finish(&format!("Retry-After {value_:?}"), &metrics);
    }
}

/// A listing that never ends, paced by the budget, fails within
/// --api.max-listing-duration, long before the page cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_never_ends_fails_within_its_duration() {
    let tasks: Script = Arc::new(|r| {
        Box::pin(async move {
            // Slow pages: 2000 of them would take over an hour.
            tokio::time::sleep(Duration::from_millis(300)).await;
            json(200, page(&[], Some(&format!("slow_{}", r.n))))
        })
    });
    failing_case(
        "a slow never-ending listing",
        "tasks",
        healthy(),
        tasks,
        &["--api.max-listing-duration", "3s"],
        "--api.max-listing-duration",
    )
    .await;
}

// ---- one hostile object costs that object, over real HTTP ----

mod objects {
    use crate::util::*;
    use clawmesh_exporter::exporter::Running;
    use clawmesh_exporter::sim::{Faults, Hostile};
    use std::time::Duration;

    fn hostile(every: u32, how: Hostile) -> Faults {
        Faults {
            hostile_every: every,
            hostile: how,
            ..Faults::default()
        }
    }

    fn rejected(m: &std::collections::BTreeMap<String, f64>, resource: &str, reason: &str) -> f64 {
        must(
            m,
            "clawmesh_api_rejected_objects_total",
            &[("resource", resource), ("reason", reason)],
        )
    }

    /// Up, ready, and no sync failed: what one bad object took out before.
    async fn healthy(exporter: &Running, m: &std::collections::BTreeMap<String, f64>) {
        assert_eq!(must(m, "clawmesh_up", &[]), 1.0);
        for r in ["agents", "tasks"] {
            assert_eq!(
                must(m, "clawmesh_sync_failures_total", &[("resource", r)]),
                0.0,
                "{r} syncs failed"
            );
        }
        let ready = reqwest::get(format!("http://{}/readyz", exporter.addr))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }

    /// A third of the tasks and agents carry a label `"x\ud800"` (what
    /// JavaScript's JSON.stringify makes of a cut emoji) on every read:
    /// each reads with U+FFFD, counts exactly once, and is counted as
    /// `invalid_text`; with a breakdown by that label, the sanitised
    /// value is a slice like any other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_surrogate_in_labels_fails_nothing_and_every_task_counts_once() {
        let sim = Sim::start(busy_fleet(181)).await;
        sim.faults(hostile(3, Hostile::LoneSurrogate));
        let exporter = start_exporter(&exporter_config(&sim, &[])).await;
        // Beside it, one broken down by the label (its series split, so
        // the gauges are compared on the first).
        let by_label = start_exporter(&exporter_config(
            &sim,
            &["--breakdown.task-labels", "hostile"],
        ))
        .await;
        run_fleet_for(&sim, 40).await;
        let_the_late_values_of_the_start_pass(&sim, &exporter).await;
        let e1 = converge(&sim, &exporter).await;
        let t1 = sim.truth();
        assert_gauges_match(&e1, &t1);
        run_fleet_for(&sim, 150).await;
        let e2 = converge(&sim, &exporter).await;
        let t2 = sim.truth();
        assert_gauges_match(&e2, &t2);
        assert_deltas_match((&e1, &t1), (&e2, &t2), 10.0);
        healthy(&exporter, &e2).await;
        assert!(rejected(&e2, "tasks", "invalid_text") > 0.0);
        assert!(rejected(&e2, "agents", "invalid_text") > 0.0);
        for why in ["invalid_field", "malformed"] {
            assert_eq!(rejected(&e2, "tasks", why), 0.0, "{why}");
        }
        // Under the breakdown, the sanitised value is a slice like any
        // other (each task counted once is shown by the first exporter).
        let m = converge(&sim, &by_label).await;
        let finished = |with: bool, l: &str| {
            m.iter()
                .filter(|(k, _)| {
                    k.starts_with("clawmesh_tasks_finished_total{")
                        && k.contains("task_hostile=") == with
                        && k.contains(l)
                })
                .map(|(_, v)| *v)
                .sum::<f64>()
        };
        assert!(
            finished(true, "task_hostile=\"x\u{FFFD}\"") > 0.0,
            "no task under the sanitised value: {m:#?}"
        );
        // Tasks without the label count in the total only.
        assert!(finished(true, "") <= finished(false, ""));
        healthy(&by_label, &m).await;
        by_label.shutdown().await;
        exporter.shutdown().await;
    }

    /// Objects that cannot be read at all (a field of the wrong type, a
    /// label nested 200 deep, bytes that are not UTF-8), one in five, on
    /// every read: each is one refused object, the listings go on, and the
    /// incremental listing still moves past them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreadable_objects_are_refused_alone_and_the_listings_go_on() {
        for (how, resource_reason) in [
            (Hostile::WrongType, "invalid_field"),
            (Hostile::Deep, "malformed"),
            (Hostile::InvalidUtf8, "invalid_text"),
        ] {
            let sim = Sim::start(busy_fleet(182)).await;
            sim.faults(hostile(5, how));
            let exporter = start_exporter(&exporter_config(&sim, &[])).await;
            run_fleet_for(&sim, 40).await;
            let m = converge(&sim, &exporter).await;
            healthy(&exporter, &m).await;
            for resource in ["agents", "tasks"] {
                assert!(
                    rejected(&m, resource, resource_reason) > 0.0,
                    "{how:?}: no {resource} refused as {resource_reason}"
                );
            }
            // Every finished task the exporter counted, the truth did.
            let t = sim.truth();
            let got = counters_of_exporter(&m)["finished/completed"];
            let want = counters_of_truth(&t)["finished/completed"];
            assert!(got > 0.0 && got <= want, "{how:?}: {got} of {want}");
            if how == Hostile::InvalidUtf8 {
                // Repaired, not refused: every task counts.
                assert_gauges_match(&m, &t);
            }
            exporter.shutdown().await;
        }
    }

    /// An exporter whose webhook receiver takes events signed with
    /// `secret`, converged on a paused simulator; `before` its metrics then.
    struct Hooked {
        sim: Sim,
        exporter: Running,
        ws: String,
        before: std::collections::BTreeMap<String, f64>,
        file: std::path::PathBuf,
        poster: Poster,
    }

    impl Hooked {
        async fn start(seed: u64, secret: &'static str) -> Hooked {
            let sim = Sim::start(busy_fleet(seed)).await;
            sim.sim.pause();
            let file = temp_file(&format!("whsec-{seed}"), secret);
            let cfg = exporter_config(&sim, &["--webhook.secret-file", file.to_str().unwrap()]);
            let exporter = start_exporter(&cfg).await;
            let ws = exporter.workspace.clone();
            let before = converge(&sim, &exporter).await;
            let poster = Poster {
                url: format!("http://{}/webhooks/clawmesh", exporter.addr),
                secret,
                // No kept-alive connections: one the exporter closes after
                // a refusal would fail the next post.
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap(),
            };
            Hooked {
                sim,
                exporter,
                ws,
                before,
                file,
                poster,
            }
        }
    }

    struct Poster {
        url: String,
        secret: &'static str,
        client: reqwest::Client,
    }

    impl Poster {
        /// Posts `body` signed: the status and the answer's text.
        async fn post(&self, body: Vec<u8>) -> (u16, String) {
            let r = self
                .client
                .post(&self.url)
                .header("x-clawmesh-signature", signature(self.secret, &body))
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    }

    /// Webhook events carry the same objects: a lone surrogate (or invalid
    /// UTF-8) in one is repaired and the task counts; an object that
    /// cannot be read is one refused object, acknowledged (a retry would
    /// carry the same bytes) and counted once, never a failed batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_webhook_event_with_a_broken_object_is_one_refused_or_repaired_object() {
        let Hooked {
            sim: _sim,
            exporter,
            ws,
            before,
            file,
            poster,
        } = Hooked::start(183, "whsec_hostile_objects").await;
        let post = |body: Vec<u8>| poster.post(body);
        // A task.completed event whose object has `labels` and
        // `created_at` as given (JSON text).
        let event = |evt: &str, task: &str, labels: &str, created: &str| {
            let now = now_rfc3339(2);
            let created = created.replace("NOW", &now);
            format!(
                r#"{{"id":"{evt}","type":"task.completed","created_at":"{now}","workspace_id":"{ws}","data":{{"object":{{"id":"{task}","agent_id":null,"status":"completed","labels":{labels},"created_at":{created},"updated_at":"{now}","started_at":"{now}","finished_at":"{now}","transitions":[],"error":null,"metrics":{{"queue_seconds":1,"run_seconds":2,"input_tokens":3,"output_tokens":4}}}}}}}}"#
            )
            .into_bytes()
        };
        let surrogate = event("evt_s", "tsk_s", r#"{"team":"x\ud800"}"#, r#""NOW""#);
        let mut not_utf8 = event("evt_u", "tsk_u", "{\"team\":\"x\u{E000}\"}", r#""NOW""#);
        let at = not_utf8
            .windows(3)
            .position(|w| w == "\u{E000}".as_bytes())
            .unwrap();
        not_utf8.splice(at..at + 3, [0xFF]);
        let wrong = event("evt_w", "tsk_w", "{}", "5");
        assert_eq!(post(surrogate).await, (200, "accepted\n".to_string()));
        assert_eq!(post(not_utf8).await, (200, "accepted\n".to_string()));
        assert_eq!(post(wrong.clone()).await, (200, "accepted\n".to_string()));
        // The platform's retry of the same event: not counted again.
        assert_eq!(post(wrong).await, (200, "duplicate\n".to_string()));
        let was = |name: &str, labels: &[(&str, &str)]| must(&before, name, labels);
        let want = [
            (
                "finished",
                was("clawmesh_tasks_finished_total", &[("status", "completed")]) + 2.0,
            ),
            (
                "invalid_text",
                was(
                    "clawmesh_api_rejected_objects_total",
                    &[("resource", "tasks"), ("reason", "invalid_text")],
                ) + 2.0,
            ),
            (
                "invalid_field",
                was(
                    "clawmesh_api_rejected_objects_total",
                    &[("resource", "tasks"), ("reason", "invalid_field")],
                ) + 1.0,
            ),
        ];
        let now = || async {
            let m = parse(&scrape(exporter.addr).await);
            [
                (
                    "finished",
                    must(
                        &m,
                        "clawmesh_tasks_finished_total",
                        &[("status", "completed")],
                    ),
                ),
                (
                    "invalid_text",
                    must(
                        &m,
                        "clawmesh_api_rejected_objects_total",
                        &[("resource", "tasks"), ("reason", "invalid_text")],
                    ),
                ),
                (
                    "invalid_field",
                    must(
                        &m,
                        "clawmesh_api_rejected_objects_total",
                        &[("resource", "tasks"), ("reason", "invalid_field")],
                    ),
                ),
            ]
        };
        wait_for(
            Duration::from_secs(30),
            "the three events applied",
            || async { now().await == want },
        )
        .await;
        let _ = std::fs::remove_file(&file);
        exporter.shutdown().await;
    }

    /// A lone surrogate escape outside the object, in the event's own id:
    /// the event is read (the id with U+FFFD), its task counts once, the
    /// object is not marked repaired (it holds none), and the platform's
    /// retry is a duplicate. On main the event was refused (400) on every
    /// retry, and the task counted only when a listing came by.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_webhook_event_with_a_lone_surrogate_in_its_id_is_read_and_counted_once() {
        let Hooked {
            sim: _sim,
            exporter,
            ws,
            before,
            file,
            poster,
        } = Hooked::start(184, "whsec_hostile_event_id").await;
        let post = |body: Vec<u8>| poster.post(body);
        let now = now_rfc3339(2);
        let event = format!(
            r#"{{"id":"evt_\ud800x","type":"task.completed","created_at":"{now}","workspace_id":"{ws}","data":{{"object":{{"id":"tsk_evtid","agent_id":null,"status":"completed","labels":{{"team":"x"}},"created_at":"{now}","updated_at":"{now}","started_at":"{now}","finished_at":"{now}","transitions":[],"error":null,"metrics":{{"queue_seconds":1,"run_seconds":2,"input_tokens":3,"output_tokens":4}}}}}}}}"#
        )
        .into_bytes();
        assert!(String::from_utf8_lossy(&event).contains(r#""evt_\ud800x""#));
        assert_eq!(post(event.clone()).await, (200, "accepted\n".to_string()));
        assert_eq!(post(event).await, (200, "duplicate\n".to_string()));
        let was = |name: &str, labels: &[(&str, &str)]| must(&before, name, labels);
        let want = (
            was("clawmesh_tasks_finished_total", &[("status", "completed")]) + 1.0,
            was(
                "clawmesh_api_rejected_objects_total",
                &[("resource", "tasks"), ("reason", "invalid_text")],
            ),
        );
        let now = || async {
            let m = parse(&scrape(exporter.addr).await);
            (
                must(
                    &m,
                    "clawmesh_tasks_finished_total",
                    &[("status", "completed")],
                ),
                must(
                    &m,
                    "clawmesh_api_rejected_objects_total",
                    &[("resource", "tasks"), ("reason", "invalid_text")],
                ),
            )
        };
        wait_for(Duration::from_secs(30), "the event applied", || async {
            now().await == want
        })
        .await;
        let _ = std::fs::remove_file(&file);
        exporter.shutdown().await;
    }

    /// The refused objects are counters like the others: a restart from
    /// the checkpoint goes on from them, never below.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_objects_are_restored_from_the_checkpoint() {
        let sim = Sim::start(busy_fleet(184)).await;
        sim.faults(hostile(5, Hostile::WrongType));
        let storage = temp_dir("hostile-ckpt");
        let flags = [
            "--storage.path",
            storage.to_str().unwrap(),
            "--storage.interval",
            "1s",
        ];
        let exporter = start_exporter(&exporter_config(&sim, &flags)).await;
        run_fleet_for(&sim, 30).await;
        // Served from a checkpoint taken after this sync.
        let m = converge(&sim, &exporter).await;
        let refused = rejected(&m, "tasks", "invalid_field");
        assert!(refused > 0.0, "nothing refused to restore");
        exporter.shutdown().await;
        // No more hostile objects: what shows is what was restored.
        sim.faults(Faults::default());
        let exporter = start_exporter(&exporter_config(&sim, &flags)).await;
        wait_for(
            Duration::from_secs(30),
            "the restored workspace",
            || async {
                let m = parse(&scrape(exporter.addr).await);
                value(&m, "clawmesh_exporter_checkpoint_restored_age_seconds", &[]).is_some()
            },
        )
        .await;
        let m = parse(&scrape(exporter.addr).await);
        assert!(
            rejected(&m, "tasks", "invalid_field") >= refused,
            "refused objects went down from {refused} across the restart"
        );
        exporter.shutdown().await;
        let _ = std::fs::remove_dir_all(&storage);
    }
}
