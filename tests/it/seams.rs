//! The seams between features: each seed draws storage on or
//! off, a breakdown, the contract's latitude or not, API faults or not,
//! and 2 to 4 steps among a config reload (SIGHUP) that changes the
//! breakdown, a graceful restart, a `kill -9` and restart, webhooks
//! switched on, and the OTLP collector going down, then answering 503
//! with a huge body, then coming back, all on the real binary. After each
//! step, once converged: the served totals (each counter family summed
//! over the breakdown labels) equal the simulator's truth, health is
//! honest, and the process's peak RSS stays under the pod limit;
//! throughout, a scraper checks that no served counter ever goes down,
//! per series and summed over the workspace.
//!
//! CI runs [`CI_SEEDS`]; `SEAMS_SEEDS=7,8` (or `SEAMS_SEEDS=100..130`)
//! runs others. A failing seed prints its combination, the command that
//! replays it and where the exporter's logs are.

use crate::util::*;
use clawmesh_exporter::metrics::{Kind, PROCESS_FAMILIES, WORKSPACE_FAMILIES};
use clawmesh_exporter::sim::{Faults, GroundTruth, Latitude, SimConfig, WebhookSettings, DEMO_KEY};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The seeds CI runs, chosen so that together they draw every step, both
/// storage settings and every breakdown (checked by
/// `the_ci_seeds_cover_every_seam`), and so that each seam a known bug
/// broke fails its own seed: the OTLP collector (2), reloads changing the
/// breakdown with storage (3) and without (27), a restart changing it (14).
const CI_SEEDS: [u64; 4] = [2, 3, 14, 27];

/// Peak resident memory allowed to the exporter process (VmHWM): the
/// shipped pod limit (deploy/kubernetes/base/deployment.yaml, 64Mi, sized
/// for 10,000 agents). This fleet with breakdowns, storage, webhooks and
/// OTLP on peaks at 33-37 MiB (debug build; each seed prints its own).
const RSS_LIMIT_KIB: u64 = 64 * 1024;

const SECRET: &str = "whsec_seams";

/// What the exporter breaks its numbers down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breakdown {
    None,
    Provider,
    ProviderModel,
    AgentLabels,
}

const BREAKDOWNS: [Breakdown; 4] = [
    Breakdown::None,
    Breakdown::Provider,
    Breakdown::ProviderModel,
    Breakdown::AgentLabels,
];

impl Breakdown {
    /// The workspace entry's `breakdown:` lines.
    fn yaml(self) -> &'static str {
        match self {
            Breakdown::None => "",
            Breakdown::Provider => "    breakdown:\n      provider: true\n",
            Breakdown::ProviderModel => "    breakdown:\n      provider: true\n      model: true\n",
            Breakdown::AgentLabels => "    breakdown:\n      agent_labels: [team, env]\n",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The config file changes to this breakdown; SIGHUP.
    Reload(Breakdown),
    /// SIGTERM, the fleet moves on, a start with this breakdown.
    Restart(Breakdown),
    /// SIGKILL (no last checkpoint), the fleet moves on, a start with this
    /// breakdown.
    Crash(Breakdown),
    /// The simulator starts delivering webhooks (drops, duplicates,
    /// reordering) to the exporter's receiver.
    WebhooksOn,
    /// The OTLP collector goes away while the fleet moves, then answers
    /// 503 with a huge body, then comes back.
    CollectorDownUp,
}

#[derive(Debug, Clone)]
struct Combo {
    seed: u64,
    storage: bool,
    breakdown: Breakdown,
    /// The contract's latitude, every switch, the API's clock this far off.
    latitude_ms: Option<i64>,
    faults: bool,
    steps: Vec<Step>,
}

impl Combo {
    fn draw(seed: u64) -> Combo {
        let mut r = StdRng::seed_from_u64(seed ^ 0x5ea3_5ea3_0018_0018);
        let storage = r.random_bool(0.5);
        let breakdown = BREAKDOWNS[r.random_range(0..BREAKDOWNS.len())];
        let latitude_ms = r.random_bool(0.4).then(|| r.random_range(-45_000..=45_000));
        let faults = r.random_bool(0.5);
        let n = r.random_range(2..=4);
        let mut steps = Vec::new();
        let mut current = breakdown;
        let other = |r: &mut StdRng, b: Breakdown| loop {
            let n = BREAKDOWNS[r.random_range(0..BREAKDOWNS.len())];
            if n != b {
                return n;
            }
        };
        while steps.len() < n {
            let step = match r.random_range(0..10) {
                0..=3 => Step::Reload(other(&mut r, current)),
                4 | 5 => Step::Restart(if r.random_bool(0.5) {
                    other(&mut r, current)
                } else {
                    current
                }),
                6 | 7 => Step::Crash(if r.random_bool(0.5) {
                    other(&mut r, current)
                } else {
                    current
                }),
                8 => Step::WebhooksOn,
                _ => Step::CollectorDownUp,
            };
            if step == Step::WebhooksOn && steps.contains(&Step::WebhooksOn) {
                continue;
            }
            if let Step::Reload(b) | Step::Restart(b) | Step::Crash(b) = step {
                current = b;
            }
            steps.push(step);
        }
        Combo {
            seed,
            storage,
            breakdown,
            latitude_ms,
            faults,
            steps,
        }
    }

    /// The smallest fleet that still finishes a few tasks a second, with a
    /// 256 KiB task now and then for the memory bound.
    fn sim_config(&self) -> SimConfig {
        SimConfig {
            agents: 40,
            history_tasks: 60,
            task_changes_per_minute: 3000.0,
            visibility_lag_max: Duration::from_secs(2),
            seed: self.seed,
            big_instructions_every: Some(40),
            latitude: self.latitude_ms.map(Latitude::all).unwrap_or_default(),
            ..SimConfig::default()
        }
    }

    fn api_faults(&self) -> Faults {
        if !self.faults {
            return Faults::default();
        }
        Faults {
            html_500: 0.02,
            unavailable_503: 0.02,
            rate_limit_429: 0.02,
            truncated_json: 0.02,
            cursor_expired: 0.05,
            page_retry_after: 0.03,
            retry_after_secs: 1,
            latency_ms: 1,
            ..Faults::default()
        }
    }

    fn otlp(&self) -> bool {
        self.steps.contains(&Step::CollectorDownUp)
    }

    fn late_values(&self) -> bool {
        self.latitude_ms.is_some()
    }

    /// The run's directory; kept when the run fails.
    fn dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("cmx-seams-{}-{}", self.seed, std::process::id()))
    }

    fn replay(&self) -> String {
        format!(
            "SEAMS_SEEDS={} cargo test --test it seams::ci_seeds -- --nocapture",
            self.seed
        )
    }
}

// ---------------------------------------------------------------- the process

/// The exporter binary, killed on drop.
struct Exporter {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the exporter processes of one run are started: one at a time, on
/// one port (the webhook deliveries and the monitor follow it), over one
/// directory (config file, key, storage, a log per process).
struct Setup {
    dir: PathBuf,
    port: u16,
    api_url: String,
    storage: bool,
    collector: Option<String>,
    /// Processes started so far (names their logs).
    started: usize,
}

impl Setup {
    fn write_config(&self, b: Breakdown) {
        let mut yaml = format!(
            "workspaces:\n  - name: seams\n    api_url: {}\n    api_key_file: key\n    poll_interval: 1s\n    overlap: 6s\n    reconcile_interval: 5s\n    budget_share: 1\n    timeout: 5s\n    max_attempts: 8\n{}",
            self.api_url,
            b.yaml()
        );
        if self.storage {
            yaml.push_str("storage:\n  path: storage\n  interval: 1s\n");
        }
        std::fs::write(self.dir.join("clawmesh.yml"), yaml).unwrap();
    }

    async fn start(&mut self) -> Exporter {
        self.started += 1;
        let log = self.dir.join(format!("exporter-{}.log", self.started));
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        // The webhook receiver is always on, as deployed; the simulator
        // delivers from a WebhooksOn step on.
        let mut c = bin();
        c.args([
            "--config.file",
            self.dir.join("clawmesh.yml").to_str().unwrap(),
        ])
        .args(["--web.listen-address", &addr.to_string()])
        .args([
            "--webhook.secret-file",
            self.dir.join("whsec").to_str().unwrap(),
            "--webhook.poll-interval",
            "1s",
        ]);
        if let Some(endpoint) = &self.collector {
            c.args([
                "--otlp.endpoint",
                endpoint,
                "--otlp.interval",
                "250ms",
                // Long enough for a huge reply to show in the peak RSS
                // of an exporter that would read it whole.
                "--otlp.timeout",
                "2s",
            ]);
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut e = Exporter { child, addr, log };
        let url = format!("http://{addr}/metrics");
        let answers = holds_within(Duration::from_secs(30), || {
            let u = url.clone();
            async move { matches!(reqwest::get(u).await, Ok(r) if r.status() == 200) }
        })
        .await;
        if !answers {
            let exit = e.child.try_wait().ok().flatten();
            panic!(
                "the exporter did not serve /metrics within 30 s (exit: {exit:?}); log: {}",
                std::fs::read_to_string(&e.log).unwrap_or_default()
            );
        }
        e
    }
}

impl Exporter {
    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// SIGTERM; the exit status must say a clean stop.
    async fn stop(mut self) {
        self.signal("-TERM");
        let mut status = None;
        let child = &mut self.child;
        let stopped = holds_within(Duration::from_secs(30), || {
            status = child.try_wait().unwrap();
            let done = status.is_some();
            async move { done }
        })
        .await;
        assert!(stopped, "no exit within 30 s of SIGTERM");
        assert_eq!(status.unwrap().code(), Some(0), "exit after SIGTERM");
    }

    fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Peak resident memory so far, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

// ---------------------------------------------------------------- OTLP collector

/// A collector on a fixed loopback port that keeps the last export, and
/// can go away (connections refused) and come back.
struct Collector {
    port: u16,
    last: Arc<Mutex<Option<(std::time::Instant, f64)>>>,
    /// Answer every export with 503 and a [`HUGE_REPLY`] body: a collector
    /// (or a proxy before it) gone wrong, which must not cost the
    /// exporter more than a bounded read.
    huge: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The body of a [`Collector`] answering `huge`: twice the pod's memory
/// limit.
const HUGE_REPLY: usize = 128 << 20;

/// The finished tasks an export carries, summed over its points.
fn finished_in(
    r: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
    let family = WORKSPACE_FAMILIES
        .iter()
        .find(|f| f.name == "clawmesh_tasks_finished_total")
        .unwrap();
    let name = clawmesh_exporter::otlp::otel_name(family);
    let mut total = 0.0;
    for rm in &r.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in sm.metrics.iter().filter(|m| m.name == name) {
                if let Some(Data::Sum(s)) = &m.data {
                    for p in &s.data_points {
                        total += match p.value {
                            Some(Value::AsInt(i)) => i as f64,
                            Some(Value::AsDouble(d)) => d,
                            None => 0.0,
                        };
                    }
                }
            }
        }
    }
    total
}

impl Collector {
    async fn start() -> Collector {
        let mut c = Collector {
            port: free_port(),
            last: Arc::default(),
            huge: Arc::default(),
            stop: None,
            task: None,
        };
        c.up().await;
        c
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) {
        use prost::Message;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let last = self.last.clone();
        let huge = self.huge.clone();
        let app = axum::Router::new().route(
            "/v1/metrics",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (last, huge) = (last.clone(), huge.clone());
                async move {
                    use axum::response::IntoResponse;
                    use opentelemetry_proto::tonic::collector::metrics::v1::{
                        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
                    };
                    if huge.load(std::sync::atomic::Ordering::SeqCst) {
                        static MIB: [u8; 1 << 20] = [b'x'; 1 << 20];
                        let chunks = (0..HUGE_REPLY >> 20)
                            .map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from_static(&MIB)));
                        return (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            axum::body::Body::from_stream(tokio_stream::iter(chunks)),
                        )
                            .into_response();
                    }
                    let r =
                        ExportMetricsServiceRequest::decode(body).expect("an OTLP protobuf body");
                    *last.lock().unwrap() = Some((std::time::Instant::now(), finished_in(&r)));
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportMetricsServiceResponse::default().encode_to_vec(),
                    )
                        .into_response()
                }
            }),
        );
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        }));
    }

    /// Stop serving: kept-alive connections are closed too.
    async fn down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// The finished tasks of the last export that arrived after `since`.
    fn finished_since(&self, since: std::time::Instant) -> Option<f64> {
        self.last
            .lock()
            .unwrap()
            .filter(|(at, _)| *at > since)
            .map(|(_, v)| v)
    }
}

// ---------------------------------------------------------------- reading /metrics

type Labels = BTreeMap<String, String>;

fn split(series: &str) -> (&str, Labels) {
    let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
    let labels = rest
        .trim_end_matches('}')
        .split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once("=\"")?;
            Some((k.to_string(), v.trim_end_matches('"').to_string()))
        })
        .collect();
    (name, labels)
}

/// The served totals of `workspace`: each counter family summed over
/// every label but the one that tells its parts apart (status, code,
/// kind), keyed as [`counters_of_truth`] keys the truth.
fn served_totals(m: &BTreeMap<String, f64>, workspace: &str) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (k, v) in m {
        let (name, l) = split(k);
        if l.get("workspace").map(String::as_str) != Some(workspace) {
            continue;
        }
        let key = match name {
            "clawmesh_tasks_finished_total" => format!("finished/{}", l["status"]),
            "clawmesh_task_failures_total" => format!("failures/{}", l["code"]),
            "clawmesh_task_tokens_total" => format!("tokens/{}", l["kind"]),
            "clawmesh_task_queue_duration_seconds_count" => "queue/count".into(),
            "clawmesh_task_queue_duration_seconds_sum" => "queue/sum".into(),
            "clawmesh_task_run_duration_seconds_count" => "run/count".into(),
            "clawmesh_task_run_duration_seconds_sum" => "run/sum".into(),
            _ => continue,
        };
        *out.entry(key).or_default() += v;
    }
    out
}

/// The families whose totals are the fleet's (kept across restarts with
/// storage), and every other counter series (kept within a process).
fn is_fleet_counter(name: &str) -> bool {
    [
        "clawmesh_tasks_finished_total",
        "clawmesh_task_failures_total",
        "clawmesh_task_tokens_total",
        "clawmesh_task_queue_duration_seconds_",
        "clawmesh_task_run_duration_seconds_",
    ]
    .iter()
    .any(|f| name.starts_with(f))
}

fn counter_names() -> BTreeSet<String> {
    let kinds = WORKSPACE_FAMILIES
        .iter()
        .map(|f| (f.name, f.kind))
        .chain(PROCESS_FAMILIES.iter().map(|f| (f.name, f.kind)));
    let mut out = BTreeSet::new();
    for (name, kind) in kinds {
        match kind {
            Kind::Counter => {
                out.insert(name.to_string());
            }
            Kind::Histogram => {
                for s in ["_bucket", "_count", "_sum"] {
                    out.insert(format!("{name}{s}"));
                }
            }
            Kind::Gauge => {}
        }
    }
    out
}

fn sum_of(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            let (n, l) = split(k);
            n == name
                && labels
                    .iter()
                    .all(|(a, b)| l.get(*a).map(String::as_str) == Some(*b))
        })
        .map(|(_, v)| v)
        .sum()
}

// ---------------------------------------------------------------- the monitor

#[derive(Default)]
struct Watch {
    /// Highest value seen per counter series: fleet series for the run
    /// (with storage) or the process (without); others for the process.
    fleet: BTreeMap<String, f64>,
    other: BTreeMap<String, f64>,
    /// Highest served total per key ([`served_totals`]), as `fleet`.
    totals: BTreeMap<String, f64>,
    /// Bumped by the runner when a new process starts, so a scrape that
    /// straddles it is dropped.
    epoch: u64,
    scrapes: u64,
    violations: Vec<String>,
    /// Every violation, of which the first [`KEPT`] are in `violations`.
    went_down: usize,
    /// What the runner is doing, for the violations' messages.
    phase: String,
    /// A reload is restarting the slot: its own counters (API requests,
    /// budget waits) start afresh with it, at a moment the scrapes cannot
    /// see; they are not checked until the reload is through.
    slot_restarting: bool,
}

/// The labels the drawn breakdowns add.
const BREAKDOWN_LABELS: [&str; 4] = ["provider=\"", "model=\"", "team=\"", "env=\""];

/// Violations kept for the message.
const KEPT: usize = 50;

/// Scrapes every 100 ms while the run lasts and records every counter
/// that went down.
struct Monitor {
    watch: Arc<Mutex<Watch>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    fn start(addr: SocketAddr) -> Monitor {
        let watch: Arc<Mutex<Watch>> = Arc::default();
        let w = watch.clone();
        let counters = counter_names();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let epoch = w.lock().unwrap().epoch;
                let Ok(r) = client.get(format!("http://{addr}/metrics")).send().await else {
                    continue;
                };
                let Ok(text) = r.text().await else { continue };
                let m = parse(&text);
                let mut w = w.lock().unwrap();
                if w.epoch != epoch {
                    continue;
                }
                w.scrapes += 1;
                let phase = w.phase.clone();
                let Watch {
                    fleet,
                    other,
                    totals,
                    violations,
                    went_down,
                    slot_restarting,
                    ..
                } = &mut *w;
                for (k, v) in &m {
                    let (name, _) = split(k);
                    if !counters.contains(name) {
                        continue;
                    }
                    let seen = if is_fleet_counter(name) {
                        &mut *fleet
                    } else if *slot_restarting {
                        continue;
                    } else {
                        &mut *other
                    };
                    let was = seen.entry(k.clone()).or_insert(*v);
                    if *v < *was {
                        *went_down += 1;
                        if violations.len() < KEPT {
                            violations.push(format!("{phase}: {k} went down from {was} to {v}"));
                        }
                    }
                    *was = was.max(*v);
                }
                // A series with a breakdown label that a change of the
                // breakdown settings folded away (`provider` turned off)
                // comes back, when the label does, from what is counted
                // after: a new series for Prometheus. The totals, the
                // series without breakdown labels, and those that show on
                // both sides of a change (checked by
                // `breakdown::breakdown_changes_by_reload_and_restart_keep_the_totals`)
                // stay checked here throughout.
                fleet.retain(|k, _| {
                    m.contains_key(k) || !BREAKDOWN_LABELS.iter().any(|l| k.contains(l))
                });
                // Per workspace label: a slot whose key check is pending
                // shows zeros under its entry's name, another series.
                let workspaces: BTreeSet<String> = m
                    .keys()
                    .filter_map(|k| split(k).1.get("workspace").cloned())
                    .collect();
                let all = workspaces.iter().flat_map(|ws| {
                    served_totals(&m, ws)
                        .into_iter()
                        .map(move |(k, v)| (format!("{k} of {ws:?}"), v))
                });
                for (k, v) in all {
                    let was = totals.entry(k.clone()).or_insert(v);
                    // Sums of float seconds over slices: the order of addition.
                    if v < *was - 1e-6 * was.abs().max(1.0) {
                        *went_down += 1;
                        // The sums first: they say most.
                        violations.truncate(KEPT - 1);
                        violations.insert(0, format!(
                            "{phase}: the served total {k} (summed over the breakdown) went down from {was} to {v}"
                        ));
                    }
                    *was = was.max(v);
                }
            }
        });
        Monitor { watch, task }
    }

    fn phase(&self, p: &str) {
        self.watch.lock().unwrap().phase = p.to_string();
    }

    /// A new process: its other counters start anew; its fleet counters
    /// too when nothing carries them over (no storage).
    fn new_process(&self, fleet_too: bool) {
        let mut w = self.watch.lock().unwrap();
        w.epoch += 1;
        w.other.clear();
        if fleet_too {
            w.fleet.clear();
            w.totals.clear();
        }
    }

    /// A reload restarts the workspace's slot: counters of its health (API
    /// requests, sync failures) may start anew, the fleet's may not.
    /// A reload restarts the slot: its own counters start afresh.
    fn new_slot(&self) {
        let mut w = self.watch.lock().unwrap();
        w.epoch += 1;
        w.other.clear();
        w.slot_restarting = true;
    }

    /// The reload is through: the new slot's own counters are checked on.
    fn slot_started(&self) {
        let mut w = self.watch.lock().unwrap();
        w.epoch += 1;
        w.other.clear();
        w.slot_restarting = false;
    }

    fn assert_none_went_down(&self, at: &str) {
        let w = self.watch.lock().unwrap();
        assert!(
            w.violations.is_empty(),
            "{at}: served counters went down ({} times), first ones:\n  {}",
            w.went_down,
            w.violations[..w.violations.len().min(8)].join("\n  ")
        );
    }

    fn scrapes(&self) -> u64 {
        self.watch.lock().unwrap().scrapes
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- the run

/// Where counting is measured from: the served totals and the truth at
/// one converged point.
struct Baseline {
    served: BTreeMap<String, f64>,
    truth: GroundTruth,
}

/// Facts of a run, printed after it.
#[derive(Default, Debug)]
struct Measured {
    peak_rss_kib: u64,
    scrapes: u64,
    checks: usize,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

impl Combo {
    /// Tasks to let finish between two points.
    const FINISHED: u64 = 40;

    async fn run(&self) -> Measured {
        let sim = Sim::start(self.sim_config()).await;
        sim.faults(self.api_faults());
        let dir = self.dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), format!("{DEMO_KEY}\n")).unwrap();
        std::fs::write(dir.join("whsec"), format!("{SECRET}\n")).unwrap();
        let mut collector = if self.otlp() {
            Some(Collector::start().await)
        } else {
            None
        };
        let mut setup = Setup {
            dir: dir.clone(),
            port: free_port(),
            api_url: sim.url(),
            storage: self.storage,
            collector: collector.as_ref().map(Collector::endpoint),
            started: 0,
        };
        setup.write_config(self.breakdown);
        let mut exporter = setup.start().await;
        let monitor = Monitor::start(exporter.addr);
        let mut measured = Measured::default();
        monitor.phase("start");
        let mut base = self.epoch_start(&sim, &exporter).await;
        let mut restarted = false;
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("step {} ({step:?})", i + 1);
            monitor.phase(&at);
            sim.sim.resume();
            run_fleet_for(&sim, Self::FINISHED / 2).await;
            match *step {
                Step::Reload(b) => {
                    self.quiet(&sim).await;
                    setup.write_config(b);
                    const RELOADED: &str =
                        "clawmesh_exporter_config_last_reload_success_timestamp_seconds";
                    let last = must(&parse(&scrape(exporter.addr).await), RELOADED, &[]);
                    monitor.new_slot();
                    exporter.signal("-HUP");
                    wait_for(Duration::from_secs(30), "the reload to succeed", || async {
                        let m = parse(&scrape(exporter.addr).await);
                        value(&m, RELOADED, &[]).is_some_and(|t| t > last)
                            && value(&m, "clawmesh_exporter_config_last_reload_successful", &[])
                                == Some(1.0)
                    })
                    .await;
                    monitor.slot_started();
                    sim.faults(self.api_faults());
                }
                Step::Restart(b) | Step::Crash(b) => {
                    self.quiet(&sim).await;
                    measured.peak_rss_kib = measured.peak_rss_kib.max(exporter.peak_rss_kib());
                    if matches!(step, Step::Crash(_)) {
                        exporter.crash();
                    } else {
                        exporter.stop().await;
                    }
                    monitor.new_process(!self.storage);
                    // Down: the fleet moves on.
                    run_fleet_for(&sim, Self::FINISHED / 2).await;
                    setup.write_config(b);
                    exporter = setup.start().await;
                    sim.faults(self.api_faults());
                    restarted = true;
                    if !self.storage {
                        // A new process counts from zero: measured anew.
                        base = self.epoch_start(&sim, &exporter).await;
                    }
                }
                Step::WebhooksOn => sim.sim.set_webhooks(WebhookSettings {
                    url: format!("http://{}/webhooks/clawmesh", exporter.addr),
                    secret: SECRET.into(),
                    drop: 0.02,
                    duplicate: 0.1,
                    fail_attempt: 0.02,
                    reorder_ms: 200,
                    time_scale: 0.001,
                }),
                Step::CollectorDownUp => {
                    let c = collector.as_mut().unwrap();
                    c.down().await;
                    self.collector_failing_is_honest(&exporter, "down").await;
                    c.huge.store(true, std::sync::atomic::Ordering::SeqCst);
                    c.up().await;
                    self.collector_failing_is_honest(&exporter, "answering 503 with 128 MiB")
                        .await;
                    c.huge.store(false, std::sync::atomic::Ordering::SeqCst);
                }
            }
            sim.sim.resume();
            run_fleet_for(&sim, Self::FINISHED).await;
            let m = self.converged(&sim, &exporter).await;
            let converged_at = std::time::Instant::now();
            monitor.assert_none_went_down(&at);
            self.check(&sim, &m, &base, restarted, &at);
            if let Some(c) = &collector {
                self.otlp_pushed_the_same(&m, c, converged_at, &sim.truth().workspace_id, &at)
                    .await;
            }
            measured.checks += 1;
            measured.peak_rss_kib = measured.peak_rss_kib.max(exporter.peak_rss_kib());
            assert!(
                measured.peak_rss_kib < RSS_LIMIT_KIB,
                "{at}: peak RSS {} KiB, over {RSS_LIMIT_KIB} KiB",
                measured.peak_rss_kib
            );
        }
        monitor.phase("stop");
        exporter.stop().await;
        monitor.assert_none_went_down("the end");
        measured.scrapes = monitor.scrapes();
        assert!(
            measured.scrapes >= 20,
            "the monitor scraped {} times",
            measured.scrapes
        );
        if let Some(c) = collector.as_mut() {
            c.down().await;
        }
        assert_eq!(
            sim.truth().retry_after_violations,
            0,
            "came back before Retry-After"
        );
        let _ = std::fs::remove_dir_all(&dir);
        measured
    }

    /// A new client cannot know a Retry-After its predecessor was told:
    /// the faults go quiet and any such wait runs out.
    async fn quiet(&self, sim: &Sim) {
        if self.faults {
            sim.faults(Faults::default());
            let_a_retry_after_run_out(sim, 1).await;
        }
    }

    /// A process that counts from its start: let the start (and the late
    /// values of tasks before it) pass, then the first converged point.
    async fn epoch_start(&self, sim: &Sim, exporter: &Exporter) -> Baseline {
        sim.sim.resume();
        run_fleet_for(sim, Self::FINISHED / 4).await;
        if self.late_values() {
            let_the_late_values_of_the_start_pass_at(sim, exporter.addr).await;
        } else {
            // Two seconds past the start on the API's clock (see util).
            let until = sim_now_host_secs(sim) + 3.0;
            wait_for_sim_clock(sim, until, Duration::from_secs(20), "the start to pass").await;
        }
        let m = self.converged(sim, exporter).await;
        Baseline {
            served: served_totals(&m, &sim.truth().workspace_id),
            truth: sim.truth(),
        }
    }

    /// Paused, every webhook delivery ended, and converged.
    async fn converged(&self, sim: &Sim, exporter: &Exporter) -> BTreeMap<String, f64> {
        sim.sim.pause();
        wait_for(
            Duration::from_secs(30),
            "webhook deliveries to end",
            || async { sim.truth().webhooks.in_flight == 0 },
        )
        .await;
        converge_at(sim, exporter.addr).await
    }

    /// While the collector fails (`how`): each failed export counted, the
    /// points held, and polling and /metrics going on.
    async fn collector_failing_is_honest(&self, exporter: &Exporter, how: &str) {
        let m = parse(&scrape(exporter.addr).await);
        let failures = |m: &BTreeMap<String, f64>| {
            value(m, "clawmesh_otlp_exports_total", &[("result", "failure")]).unwrap_or(0.0)
        };
        let (f0, synced) = (
            failures(&m),
            sum_of(
                &m,
                "clawmesh_last_sync_timestamp_seconds",
                &[("resource", "tasks")],
            ),
        );
        wait_for(
            Duration::from_secs(30),
            &format!("failed exports counted and a sync while the collector is {how}"),
            || async {
                let m = parse(&scrape(exporter.addr).await);
                failures(&m) >= f0 + 3.0
                    && value(&m, "clawmesh_otlp_pending_data_points", &[]).is_some_and(|p| p > 0.0)
                    && sum_of(
                        &m,
                        "clawmesh_last_sync_timestamp_seconds",
                        &[("resource", "tasks")],
                    ) > synced
            },
        )
        .await;
    }

    /// At a converged point `m`: the served totals, the gauges and health.
    fn check(
        &self,
        sim: &Sim,
        m: &BTreeMap<String, f64>,
        base: &Baseline,
        restarted: bool,
        at: &str,
    ) {
        let t = sim.truth();
        let served = served_totals(m, &t.workspace_id);
        let want = delta(&counters_of_truth(&t), &counters_of_truth(&base.truth));
        let got = delta(&served, &base.served);
        assert!(
            want.get("finished/completed").copied().unwrap_or(0.0) >= 10.0,
            "{at}: too little happened to prove anything: {want:?}"
        );
        assert_eq!(
            got, want,
            "{at}: served totals since the baseline (left) differ from the simulator's (right)"
        );
        // Gauges: summed over the breakdown, the truth's.
        for (status, n) in &t.agents {
            assert_eq!(
                sum_of(m, "clawmesh_agents", &[("status", status)]),
                *n as f64,
                "{at}: agents {status}"
            );
        }
        for status in ["pending", "running"] {
            assert_eq!(
                sum_of(m, "clawmesh_tasks", &[("status", status)]),
                t.tasks_open.get(status).copied().unwrap_or(0) as f64,
                "{at}: tasks {status}"
            );
        }
        // Health: up, synced after the quiet point (converge waited for
        // that) but not in the future, checkpoints written and none failed.
        let now = now_secs();
        for r in ["agents", "tasks"] {
            let synced = sum_of(
                m,
                "clawmesh_last_sync_timestamp_seconds",
                &[("workspace", &t.workspace_id), ("resource", r)],
            );
            assert!(
                synced <= now + 1.0,
                "{at}: last {r} sync {synced} is ahead of now {now}"
            );
        }
        assert_eq!(
            value(m, "clawmesh_up", &[("workspace", &t.workspace_id)]),
            Some(1.0),
            "{at}: clawmesh_up"
        );
        let checkpoint = |n: &str| value(m, &format!("clawmesh_exporter_checkpoint_{n}"), &[]);
        if self.storage {
            let written = checkpoint("last_success_timestamp_seconds");
            assert!(
                written.is_some_and(|w| w <= now + 1.0),
                "{at}: last checkpoint {written:?}, now {now}"
            );
            for n in ["write_failures_total", "refused_total"] {
                let family = format!("clawmesh_exporter_checkpoint_{n}");
                assert_eq!(sum_of(m, &family, &[]), 0.0, "{at}: {family}");
            }
            if restarted {
                assert!(
                    checkpoint("restored_age_seconds").is_some(),
                    "{at}: the counters did not go on from the checkpoint"
                );
            }
        } else {
            assert!(
                !m.keys()
                    .any(|k| k.starts_with("clawmesh_exporter_checkpoint_")),
                "{at}: checkpoint series without storage"
            );
        }
    }

    /// OTLP: an export after the converged point `m` carries its totals.
    async fn otlp_pushed_the_same(
        &self,
        m: &BTreeMap<String, f64>,
        c: &Collector,
        converged_at: std::time::Instant,
        workspace: &str,
        at: &str,
    ) {
        let served = served_totals(m, workspace);
        {
            let finished: f64 = ["completed", "failed", "cancelled"]
                .iter()
                .map(|s| served.get(&format!("finished/{s}")).copied().unwrap_or(0.0))
                .sum();
            let pushed = holds_within(Duration::from_secs(20), || async {
                c.finished_since(converged_at) == Some(finished)
            })
            .await;
            assert!(
                pushed,
                "{at}: OTLP pushed {:?} finished tasks, /metrics served {finished}",
                c.finished_since(converged_at)
            );
        }
    }
}

/// Run the combinations, two at a time; the failures with their messages.
async fn run_seeds(seeds: &[u64]) -> Vec<String> {
    let sem = Arc::new(tokio::sync::Semaphore::new(2));
    let mut handles = Vec::new();
    for &seed in seeds {
        let combo = Combo::draw(seed);
        let permit = sem.clone().acquire_owned().await.unwrap();
        handles.push((
            combo.clone(),
            tokio::spawn(async move {
                let t0 = std::time::Instant::now();
                let r = tokio::spawn(async move { combo.run().await }).await;
                drop(permit);
                (r, t0.elapsed())
            }),
        ));
    }
    let mut failures = Vec::new();
    for (combo, h) in handles {
        let (r, took) = h.await.unwrap();
        match r {
            Ok(m) => eprintln!(
                "seams seed {}: held ({:.0} s, {} checks, {} scrapes, peak RSS {:.1} MiB) {combo:?}",
                combo.seed,
                took.as_secs_f64(),
                m.checks,
                m.scrapes,
                m.peak_rss_kib as f64 / 1024.0
            ),
            Err(e) => {
                let msg = e
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    })
                    .unwrap_or_else(|| "cancelled".into());
                let line = format!(
                    "seed {}: {combo:?}\n  {msg}\n  replay: {}\n  exporter logs: {}",
                    combo.seed,
                    combo.replay(),
                    combo.dir().display()
                );
                eprintln!("seams {line}");
                failures.push(line);
            }
        }
    }
    failures
}

/// `SEAMS_SEEDS`: `7`, `7,9,12` or `100..130` (end excluded).
fn seeds_from_env() -> Option<Vec<u64>> {
    let s = std::env::var("SEAMS_SEEDS").ok()?;
    if let Some((a, b)) = s.split_once("..") {
        let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
        return Some((a..b).collect());
    }
    Some(
        s.split(',')
            .map(|x| x.trim().parse().expect("SEAMS_SEEDS: numbers"))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_seeds() {
    let seeds = seeds_from_env().unwrap_or_else(|| CI_SEEDS.to_vec());
    let failures = run_seeds(&seeds).await;
    assert!(
        failures.is_empty(),
        "{} of {} seeds broke at a seam:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

#[test]
fn the_ci_seeds_cover_every_seam() {
    assert_eq!(
        format!("{:?}", Combo::draw(7)),
        format!("{:?}", Combo::draw(7)),
        "a seed draws the same combination every time"
    );
    let ci: Vec<Combo> = CI_SEEDS.iter().map(|s| Combo::draw(*s)).collect();
    let steps: Vec<Step> = ci.iter().flat_map(|c| c.steps.clone()).collect();
    let has = |f: &dyn Fn(&Step) -> bool| steps.iter().any(f);
    assert!(has(&|s| matches!(s, Step::Reload(_))), "a reload");
    assert!(has(&|s| matches!(s, Step::Crash(_))), "a crash");
    assert!(has(&|s| matches!(s, Step::Restart(_))), "a restart");
    assert!(has(&|s| *s == Step::WebhooksOn), "webhooks");
    assert!(has(&|s| *s == Step::CollectorDownUp), "the collector");
    assert!(ci.iter().any(|c| c.storage) && ci.iter().any(|c| !c.storage));
    assert!(ci.iter().any(|c| c.latitude_ms.is_some()));
    assert!(ci.iter().any(|c| c.faults));
    // A reload that changes the breakdown, with storage and without.
    for storage in [true, false] {
        assert!(
            ci.iter()
                .any(|c| c.storage == storage
                    && c.steps.iter().any(|s| matches!(s, Step::Reload(_)))),
            "a reload with storage {storage}"
        );
    }
    // A restart or crash that changes the breakdown, with storage.
    assert!(ci.iter().any(|c| {
        let mut b = c.breakdown;
        c.storage
            && c.steps.iter().any(|s| match *s {
                Step::Reload(n) => {
                    b = n;
                    false
                }
                Step::Restart(n) | Step::Crash(n) => {
                    let changed = n != b;
                    b = n;
                    changed
                }
                _ => false,
            })
    }));
    let used: BTreeSet<String> = ci
        .iter()
        .flat_map(|c| {
            std::iter::once(c.breakdown).chain(c.steps.iter().filter_map(|s| match s {
                Step::Reload(b) | Step::Restart(b) | Step::Crash(b) => Some(*b),
                _ => None,
            }))
        })
        .map(|b| format!("{b:?}"))
        .collect();
    assert_eq!(used.len(), BREAKDOWNS.len(), "every breakdown: {used:?}");
}

// ---------------------------------------------------------------- storage x sharding

/// Shard `index` of 2 over `file`, on `port`, logging to `log`.
async fn start_shard(file: &std::path::Path, port: u16, index: u32, log: PathBuf) -> Exporter {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = bin()
        .args(["--config.file", file.to_str().unwrap()])
        .args(["--web.listen-address", &addr.to_string()])
        // The pod-name form, as a StatefulSet's downward API gives it.
        .env("CLAWMESH_SHARD", format!("clawmesh-exporter-{index}"))
        .env("CLAWMESH_TOTAL_SHARDS", "2")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let e = Exporter { child, addr, log };
    wait_for(Duration::from_secs(30), "a shard to serve /metrics", || {
        let u = format!("http://{addr}/metrics");
        async move { matches!(reqwest::get(u).await, Ok(r) if r.status() == 200) }
    })
    .await;
    e
}

/// Two shards of one StatefulSet share the storage volume (one
/// directory): each resumes from its own checkpoint after both crash,
/// whichever starts first, and neither's counters go back. A start that
/// swept the files of "another assignment" would remove the checkpoint of
/// the shard beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_sharing_a_storage_directory_each_resume_from_their_own_checkpoint() {
    use clawmesh_exporter::shard::Shard;
    // One workspace per shard.
    let owned_by = |i: u32| {
        let shard = Shard::new(&i.to_string(), 2).unwrap();
        (0..)
            .map(|n| format!("ws_seam_{n}"))
            .find(|id| shard.owns(id))
            .unwrap()
    };
    let mut sims = Vec::new();
    for i in 0..2 {
        sims.push(
            Sim::start(SimConfig {
                workspace_id: owned_by(i),
                agents: 30,
                history_tasks: 40,
                task_changes_per_minute: 3000.0,
                visibility_lag_max: Duration::from_secs(1),
                seed: 180 + i as u64,
                ..SimConfig::default()
            })
            .await,
        );
    }
    let dir = std::env::temp_dir().join(format!("cmx-seams-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), format!("{DEMO_KEY}\n")).unwrap();
    let mut yaml = String::from("storage:\n  path: storage\n  interval: 1s\nworkspaces:\n");
    for (i, s) in sims.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: w{i}\n    id: {}\n    api_url: {}\n    api_key_file: key\n    poll_interval: 1s\n    overlap: 5s\n",
            s.truth().workspace_id,
            s.url()
        ));
    }
    let file = dir.join("clawmesh.yml");
    std::fs::write(&file, yaml).unwrap();
    let ports = [free_port(), free_port()];
    let mut logs = 0;
    let mut log = || {
        logs += 1;
        dir.join(format!("shard-{logs}.log"))
    };
    let mut shards = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        shards.push(start_shard(&file, *port, i as u32, log()).await);
    }
    let mut before = Vec::new();
    for (s, e) in sims.iter().zip(&shards) {
        run_fleet_for(s, 40).await;
        let m = converge_at(s, e.addr).await;
        before.push((served_totals(&m, &s.truth().workspace_id), s.truth()));
    }
    // Both crash; the fleets go on; shard 1 starts first, then shard 0.
    for e in shards.drain(..) {
        e.crash();
    }
    for s in &sims {
        run_fleet_for(s, 20).await;
    }
    let one = start_shard(&file, ports[1], 1, log()).await;
    wait_for(Duration::from_secs(30), "shard 1 to resume", || async {
        value(
            &parse(&scrape(one.addr).await),
            "clawmesh_exporter_checkpoint_restored_age_seconds",
            &[],
        )
        .is_some()
    })
    .await;
    let zero = start_shard(&file, ports[0], 0, log()).await;
    for (i, (e, s)) in [&zero, &one].into_iter().zip(&sims).enumerate() {
        let ws = s.truth().workspace_id;
        run_fleet_for(s, 20).await;
        let m = converge_at(s, e.addr).await;
        assert_eq!(
            sum_of(&m, "clawmesh_exporter_checkpoint_refused_total", &[]),
            0.0,
            "shard {i}: its checkpoint was refused or removed ({:?}); logs in {}",
            m.iter()
                .filter(
                    |(k, v)| k.starts_with("clawmesh_exporter_checkpoint_refused_total")
                        && **v > 0.0
                )
                .collect::<Vec<_>>(),
            dir.display()
        );
        assert!(
            value(&m, "clawmesh_exporter_checkpoint_restored_age_seconds", &[]).is_some(),
            "shard {i} did not resume from its checkpoint"
        );
        let (served, truth) = &before[i];
        assert_eq!(
            delta(&served_totals(&m, &ws), served),
            delta(&counters_of_truth(&s.truth()), &counters_of_truth(truth)),
            "shard {i}: served totals across the crash (left) differ from the simulator's (right)"
        );
    }
    zero.stop().await;
    one.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
