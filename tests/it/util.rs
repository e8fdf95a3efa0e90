//! Shared test plumbing: a simulator and an exporter on loopback, scraping,
//! and waiting for conditions (never for fixed times).

use clawmesh_exporter::config::{Cli, Config};
use clawmesh_exporter::exporter::{self, Running};
use clawmesh_exporter::secret::Secret;
use clawmesh_exporter::sim::{Faults, GroundTruth, Latitude, SimConfig, Simulator, DEMO_KEY};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub struct Sim {
    pub sim: Simulator,
    pub addr: SocketAddr,
    /// The server; aborted on drop, so that a finished test's fleet stops
    /// living (its life task ends with the last reference).
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Sim {
    pub async fn start(cfg: SimConfig) -> Sim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = Simulator::new(cfg);
        let server = tokio::spawn(sim.clone().serve(listener));
        Sim { sim, addr, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn truth(&self) -> GroundTruth {
        self.sim.ground_truth()
    }

    pub fn faults(&self, f: Faults) {
        self.sim.set_faults(f);
    }
}

/// A small, busy fleet: many transitions per second so a test sees plenty.
pub fn busy_fleet(seed: u64) -> SimConfig {
    SimConfig {
        agents: 250,
        history_tasks: 300,
        task_changes_per_minute: 3000.0,
        visibility_lag_max: Duration::from_secs(2),
        seed,
        big_instructions_every: Some(40),
        ..SimConfig::default()
    }
}

/// [`busy_fleet`] with every latitude the contract allows, the API's clock
/// `offset_ms` off the host's.
pub fn latitude_fleet(seed: u64, offset_ms: i64) -> SimConfig {
    SimConfig {
        latitude: Latitude::all(offset_ms),
        ..busy_fleet(seed)
    }
}

/// Exporter flags for tests: fast polling against `sim`.
pub fn exporter_config(sim: &Sim, extra: &[&str]) -> Config {
    let defaults = [
        ("--poll-interval", "1s"),
        ("--tasks.overlap", "6s"),
        ("--tasks.reconcile-interval", "5s"),
        ("--api.budget-share", "1"),
        ("--web.listen-address", "127.0.0.1:0"),
    ];
    let mut args = vec!["clawmesh-exporter"];
    for (flag, v) in defaults {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, v]);
        }
    }
    args.extend_from_slice(extra);
    let url = sim.url();
    args.extend_from_slice(&["--api-url", &url]);
    let mut cfg = Cli::try_parse_from_args(&args)
        .validate_with_key(Secret::new(DEMO_KEY))
        .unwrap();
    for w in &mut cfg.workspaces {
        w.client.backoff_base = Duration::from_millis(20);
        w.client.backoff_cap = Duration::from_millis(500);
    }
    cfg
}

trait ParseArgs {
    fn try_parse_from_args(args: &[&str]) -> clawmesh_exporter::config::RunArgs;
}

impl ParseArgs for Cli {
    fn try_parse_from_args(args: &[&str]) -> clawmesh_exporter::config::RunArgs {
        use clap::Parser;
        Cli::try_parse_from(args).unwrap().run
    }
}

pub async fn start_exporter(cfg: &Config) -> Running {
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
    exporter::start(cfg, listener)
        .await
        .expect("exporter starts")
}

pub async fn scrape(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Series in an exposition: `name{labels}` as rendered -> value.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The value of the series `name` whose labels include all of `labels`.
pub fn value(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.iter()
        .find(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k, ""));
            n == name
                && labels
                    .iter()
                    .all(|(l, v)| rest.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
}

pub fn must(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(m, name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?}"))
}

/// Poll `cond` every 50 ms until it holds; panic with `what` after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        holds_within(limit, cond).await,
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Poll `cond` every 50 ms until it holds (true) or `limit` has passed
/// (false), for a caller whose failure message needs more than a text.
pub async fn holds_within<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

pub fn rfc3339_secs(s: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_micros() as f64
        / 1e6
}

/// An instant of the truth (the API's clock, RFC 3339) on the host's clock,
/// in seconds: what the exporter's own timestamps are comparable with.
pub fn host_secs(truth: &GroundTruth, api_instant: &str) -> f64 {
    rfc3339_secs(api_instant) - truth.clock_offset_ms as f64 / 1000.0
}

/// Let the fleet live until at least `n` more tasks have finished.
pub async fn run_fleet_for(sim: &Sim, n: u64) {
    let total = |s: &Sim| s.truth().finished_total.values().sum::<u64>();
    let start = total(sim);
    sim.sim.resume();
    wait_for(Duration::from_secs(120), "tasks to finish", || async {
        total(sim) >= start + n
    })
    .await;
}

/// Pause the simulator, then wait until the exporter has completed a sync of
/// both resources that began after every change so far became visible.
/// Returns the exposition at that point.
pub async fn converge(sim: &Sim, exporter: &Running) -> BTreeMap<String, f64> {
    converge_at(sim, exporter.addr).await
}

/// [`converge`] for an exporter serving at `addr` (one in its own process).
pub async fn converge_at(sim: &Sim, addr: SocketAddr) -> BTreeMap<String, f64> {
    sim.sim.pause();
    let truth = sim.truth();
    // The exporter stamps its syncs with the host's clock.
    let visible_by = host_secs(&truth, &truth.visible_by);
    let ws = truth.workspace_id.as_str();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = parse(&scrape(addr).await);
        // The counters are there (from the first publish on).
        let counting = value(&m, "clawmesh_tasks_finished_total", &[("workspace", ws)]).is_some();
        let synced = counting
            && ["agents", "tasks"].iter().all(|r| {
                value(
                    &m,
                    "clawmesh_last_sync_timestamp_seconds",
                    &[("workspace", ws), ("resource", r)],
                )
                .is_some_and(|t| t > visible_by)
            });
        if synced {
            return served_from_a_checkpoint_taken_after(addr, m).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sync after the fleet went quiet within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With storage, the counters served are the last checkpoint's: wait for
/// one whose state was taken after `m` was served (so after the sync it
/// shows), and return what is served then.
async fn served_from_a_checkpoint_taken_after(
    addr: SocketAddr,
    m: BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    const TAKEN: &str = "clawmesh_exporter_checkpoint_last_success_timestamp_seconds";
    if !m
        .keys()
        .any(|k| k.starts_with("clawmesh_exporter_checkpoint_"))
    {
        return m;
    }
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = parse(&scrape(addr).await);
        if value(&m, TAKEN, &[]).is_some_and(|t| t > after) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint within 60 s after the sync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The counters the exporter and the ground truth both keep, in one map,
/// so that two points can be subtracted and compared whole.
pub fn counters_of_exporter(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in ["completed", "failed", "cancelled"] {
        out.insert(
            format!("finished/{s}"),
            value(m, "clawmesh_tasks_finished_total", &[("status", s)]).unwrap_or(0.0),
        );
    }
    for (k, v) in m {
        if let Some(rest) = k.strip_prefix("clawmesh_task_failures_total{") {
            let code = rest
                .split("code=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            out.insert(format!("failures/{code}"), *v);
        }
    }
    for kind in ["input", "output"] {
        out.insert(
            format!("tokens/{kind}"),
            value(m, "clawmesh_task_tokens_total", &[("kind", kind)]).unwrap_or(0.0),
        );
    }
    for (h, n) in [
        ("queue", "clawmesh_task_queue_duration_seconds"),
        ("run", "clawmesh_task_run_duration_seconds"),
    ] {
        out.insert(
            format!("{h}/count"),
            value(m, &format!("{n}_count"), &[]).unwrap_or(0.0),
        );
        out.insert(
            format!("{h}/sum"),
            value(m, &format!("{n}_sum"), &[]).unwrap_or(0.0),
        );
    }
    out
}

pub fn counters_of_truth(t: &GroundTruth) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (s, n) in &t.finished_total {
        out.insert(format!("finished/{s}"), *n as f64);
    }
    for (c, n) in &t.failures_by_code {
        out.insert(format!("failures/{c}"), *n as f64);
    }
    for (k, n) in &t.tokens {
        out.insert(format!("tokens/{k}"), *n as f64);
    }
    out.insert("queue/count".into(), t.queue_seconds.count as f64);
    out.insert("queue/sum".into(), t.queue_seconds.sum);
    out.insert("run/count".into(), t.run_seconds.count as f64);
    out.insert("run/sum".into(), t.run_seconds.sum);
    out
}

pub fn delta(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        // Sums of float seconds: round away the last bits of addition order.
        let d = if k.ends_with("/sum") {
            (d * 1000.0).round() / 1000.0
        } else {
            d
        };
        if d != 0.0 {
            out.insert(k.clone(), d);
        }
    }
    out
}

/// Every gauge the exporter shows equals the ground truth, exactly.
pub fn assert_gauges_match(m: &BTreeMap<String, f64>, t: &GroundTruth) {
    for (status, n) in &t.agents {
        assert_eq!(
            must(m, "clawmesh_agents", &[("status", status)]),
            *n as f64,
            "agents {status}"
        );
    }
    let active =
        t.agents.get("idle").copied().unwrap_or(0) + t.agents.get("busy").copied().unwrap_or(0);
    assert_eq!(
        must(m, "clawmesh_agents_active", &[]),
        active as f64,
        "active agents"
    );
    for (status, n) in &t.tasks_open {
        // A status the contract does not name has a series once seen.
        let got = match status.as_str() {
            "pending" | "running" => must(m, "clawmesh_tasks", &[("status", status)]),
            _ => value(m, "clawmesh_tasks", &[("status", status)]).unwrap_or(0.0),
        };
        assert_eq!(got, *n as f64, "tasks {status}");
    }
}

/// A tool the test needs: `Some(path)` when present; when missing, a failure
/// under `CI=true` and a skip (with a notice) elsewhere.
pub fn require_tool(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "{name} is required under CI=true; .ci/run installs it (Debian package prometheus)"
            )
        }
        None => {
            eprintln!("SKIPPED: {name} not installed (apt-get install prometheus); CI=true makes this a failure");
            None
        }
    }
}

/// A loopback port free right now, for a process that must be told its
/// port, or for a listener that goes away and comes back on it.
///
/// Taken below the kernel's ephemeral range (32768..60999 on Linux), which
/// `bind(0)` and outgoing connections draw from: between this check and the
/// later bind, no other socket of this or another suite gets it by chance.
/// Each process starts at its own stretch of 100 (of 220, from its pid: a
/// suite takes a few dozen) and walks on from there, each port at most once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    const STRETCH: u32 = 100;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % (SPAN / STRETCH) * STRETCH,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// Let the fleet live until every late value (`late_metrics`,
/// `late_failure_codes`) of a task that started or finished before the
/// exporter did has arrived. The exporter never counts those (they belong
/// to tasks outside its count), while the ground truth counts a late value
/// when it arrives: a delta taken from a point before they all arrived
/// would differ by them.
pub async fn let_the_late_values_of_the_start_pass(sim: &Sim, exporter: &Running) {
    let_the_late_values_of_the_start_pass_at(sim, exporter.addr).await;
}

/// [`let_the_late_values_of_the_start_pass`] for an exporter serving at
/// `addr` (one in its own process).
pub async fn let_the_late_values_of_the_start_pass_at(sim: &Sim, addr: SocketAddr) {
    let started = exporter_start_host_secs(sim, addr).await;
    let past = started + 2.0 + clawmesh_exporter::sim::MAX_FILL_DELAY.as_secs_f64();
    sim.sim.resume();
    wait_for_sim_clock(
        sim,
        past,
        Duration::from_secs(60),
        "the late values of tasks before the exporter's start",
    )
    .await;
}

/// The simulator's clock, now on the host's (Unix seconds).
pub fn sim_now_host_secs(sim: &Sim) -> f64 {
    let t = sim.truth();
    host_secs(&t, &t.now)
}

/// Wait until the simulator's clock, converted to the host's, is past
/// `host_secs` (Unix seconds).
pub async fn wait_for_sim_clock(sim: &Sim, host_secs: f64, limit: Duration, what: &str) {
    wait_for(limit, what, || async { sim_now_host_secs(sim) > host_secs }).await;
}

/// Let a `Retry-After` of `secs` told to an exporter about to stop run
/// out on the simulator's clock: a new client cannot know it.
pub async fn let_a_retry_after_run_out(sim: &Sim, secs: u32) {
    let until = sim_now_host_secs(sim) + secs.max(1) as f64 + 1.0;
    wait_for_sim_clock(
        sim,
        until,
        Duration::from_secs(10),
        "a Retry-After to run out",
    )
    .await;
}

/// The exporter's first task sync (host clock), once it has one.
async fn exporter_start_host_secs(sim: &Sim, addr: SocketAddr) -> f64 {
    let ws = sim.truth().workspace_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = parse(&scrape(addr).await);
        let labels = [("workspace", ws.as_str()), ("resource", "tasks")];
        if let Some(t) = value(&m, "clawmesh_last_sync_timestamp_seconds", &labels) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no task sync within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the simulator's clock is two seconds past the exporter's start
/// (the exporter's start on the host's clock, converted).
/// The simulator stamps each time with 0 to 6 fractional digits, i.e.
/// rounded down by up to a second, and the exporter's counting floor is the
/// API's time at its start rounded up to the second of a `Date` header: a
/// task that starts or finishes in the first two seconds after the exporter
/// started may fall before the floor, and "since the exporter started"
/// would exclude it. Tests that compare with
/// the ground truth from the exporter's start let those seconds pass on the
/// simulator's clock before the fleet moves.
pub async fn let_the_start_pass(sim: &Sim, exporter: &Running) {
    let started = exporter_start_host_secs(sim, exporter.addr).await;
    wait_for_sim_clock(
        sim,
        started + 2.0,
        Duration::from_secs(10),
        "two seconds past the exporter's start",
    )
    .await;
}

/// `promtool check metrics` on an exposition: whether it passed, and what
/// it printed (stdout, then stderr).
pub fn promtool_check_metrics(promtool: &str, text: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), report)
}

/// The exporter binary with an empty environment: only what the test sets
/// reaches it, as on a clean host.
pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_clawmesh-exporter"));
    c.env_clear();
    c
}

/// A new empty directory for `name`, of its own for every call (a test
/// running twice in one process, or a loop, never sees an earlier one's
/// files; neither do two modules naming theirs alike).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "cmx-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    // Left over from an earlier process that had this pid.
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A quiet simulated workspace with its own id, for tests that run several.
pub fn workspace_fleet(id: &str, seed: u64) -> SimConfig {
    SimConfig {
        workspace_id: id.into(),
        agents: 20,
        history_tasks: 20,
        task_changes_per_minute: 600.0,
        visibility_lag_max: Duration::from_millis(500),
        seed,
        ..SimConfig::default()
    }
}

/// [`workspace_fleet`] running.
pub async fn workspace_sim(id: &str, seed: u64) -> Sim {
    Sim::start(workspace_fleet(id, seed)).await
}

/// The host's time `offset_secs` from now as the API writes instants
/// (RFC 3339, microseconds, UTC).
pub fn now_rfc3339(offset_secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The `X-ClawMesh-Signature` of `body` under `secret`, as the simulator's
/// webhook sender makes it (not the exporter's verifier: the test checks that).
pub fn signature(secret: &str, body: &[u8]) -> String {
    clawmesh_exporter::sim::sign_webhook(secret, body)
}

/// A file `name` holding `content`, in a [`temp_dir`] of its own.
pub fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let p = temp_dir(name).join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// The fields of a logfmt line, values unquoted and unescaped: `None` for
/// a line that is not logfmt.
pub fn logfmt(line: &str) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::new();
    let mut rest = line.trim_end();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || key.contains([' ', '"']) {
            return None;
        }
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i + 1,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        fields.push((key.to_string(), value));
        rest = after.trim_start();
    }
    Some(fields)
}

/// What a fatal error line says, for a person: `msg: err` of a logfmt
/// line, unescaped; any other text as it is (clap's own errors are plain).
pub fn said(stderr: &str) -> String {
    let line = stderr.trim_end();
    match logfmt(line) {
        Some(f) if f.first().is_some_and(|(k, _)| k == "ts") => {
            let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            match (get("msg"), get("err")) {
                (Some(m), Some(e)) => format!("{m}: {e}"),
                (Some(m), None) => m.to_string(),
                _ => line.to_string(),
            }
        }
        _ => line.to_string(),
    }
}

/// The exporter's counters moved between its scrapes `e1` and `e2` exactly
/// as the ground truth did between `t1` and `t2`, and at least `at_least`
/// tasks completed meanwhile (less proves nothing).
pub fn assert_deltas_match(
    (e1, t1): (&BTreeMap<String, f64>, &GroundTruth),
    (e2, t2): (&BTreeMap<String, f64>, &GroundTruth),
    at_least: f64,
) {
    let want = delta(&counters_of_truth(t2), &counters_of_truth(t1));
    let got = delta(&counters_of_exporter(e2), &counters_of_exporter(e1));
    assert!(
        want["finished/completed"] >= at_least,
        "too little happened to prove anything: {want:?}"
    );
    assert_eq!(
        got, want,
        "exporter deltas (left) differ from the ground truth (right)"
    );
}

/// [`let_the_start_pass`] for an exporter serving at `addr` (one in its
/// own process).
pub async fn let_the_start_pass_at(sim: &Sim, addr: SocketAddr) {
    let started = exporter_start_host_secs(sim, addr).await;
    wait_for_sim_clock(
        sim,
        started + 2.0,
        Duration::from_secs(10),
        "two seconds past the exporter's start",
    )
    .await;
}
