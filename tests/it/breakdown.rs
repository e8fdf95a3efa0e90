//! Breakdowns: every per-dimension count equals the simulator's
//! ground truth by dimension and sums to the workspace total, under the
//! exactness suite's faults; past the value cap a dimension shows `other`
//! and the series count stays true.

use crate::util::*;
use clawmesh_exporter::exporter::Running;
use clawmesh_exporter::sim::{Faults, DEMO_KEY};
use serde_json::Value as Json;
use std::collections::BTreeMap;

const FLAGS: &[&str] = &[
    "--breakdown.provider",
    "--breakdown.model",
    "--breakdown.agent-labels",
    "team,env",
    "--breakdown.task-labels",
    "priority",
];

/// The breakdown labels and where the truth keeps each.
const DIMS: &[&str] = &["provider", "model", "team", "env", "task_priority"];

type Labels = BTreeMap<String, String>;

/// Every series of `name` with its labels.
fn series(m: &BTreeMap<String, f64>, name: &str) -> Vec<(Labels, f64)> {
    m.iter()
        .filter_map(|(k, v)| {
            let (n, rest) = k.split_once('{').unwrap_or((k, "}"));
            (n == name).then(|| (labels_of(rest.trim_end_matches('}')), *v))
        })
        .collect()
}

fn labels_of(s: &str) -> Labels {
    // Values in these tests hold no quotes or commas.
    s.split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once("=\"")?;
            Some((k.to_string(), v.trim_end_matches('"').to_string()))
        })
        .collect()
}

/// The values of `dims` in a series' labels ("" where absent).
fn key_of(l: &Labels, dims: &[&str]) -> Vec<String> {
    dims.iter()
        .map(|d| l.get(*d).cloned().unwrap_or_default())
        .collect()
}

/// The exporter's counters per combination of `dims`.
fn exporter_by(
    m: &BTreeMap<String, f64>,
    dims: &[&str],
) -> BTreeMap<Vec<String>, BTreeMap<String, f64>> {
    let mut out: BTreeMap<Vec<String>, BTreeMap<String, f64>> = BTreeMap::new();
    let mut add = |l: &Labels, what: String, v: f64| {
        *out.entry(key_of(l, dims))
            .or_default()
            .entry(what)
            .or_default() += v;
    };
    for (l, v) in series(m, "clawmesh_tasks_finished_total") {
        add(&l, format!("finished/{}", l["status"]), v);
    }
    for (l, v) in series(m, "clawmesh_task_failures_total") {
        add(&l, format!("failures/{}", l["code"]), v);
    }
    for (l, v) in series(m, "clawmesh_task_tokens_total") {
        add(&l, format!("tokens/{}", l["kind"]), v);
    }
    for (h, n) in [
        ("queue", "clawmesh_task_queue_duration_seconds"),
        ("run", "clawmesh_task_run_duration_seconds"),
    ] {
        for (l, v) in series(m, &format!("{n}_count")) {
            add(&l, format!("{h}/count"), v);
        }
        for (l, v) in series(m, &format!("{n}_sum")) {
            add(&l, format!("{h}/sum"), v);
        }
    }
    out
}

/// A truth row's value of a breakdown label.
fn truth_dim(row: &Json, dim: &str) -> String {
    let s = |v: &Json| v.as_str().unwrap_or("").to_string();
    match dim {
        "provider" => s(&row["provider"]),
        "model" => s(&row["model"]),
        "task_priority" => s(&row["task_labels"]["priority"]),
        other => s(&row["agent_labels"][other]),
    }
}

/// The simulator's counters per combination of `dims`.
fn truth_by(t: &Json, dims: &[&str]) -> BTreeMap<Vec<String>, BTreeMap<String, f64>> {
    let rows = t["by_dims"]
        .as_array()
        .expect("the ground truth has by_dims");
    let mut out: BTreeMap<Vec<String>, BTreeMap<String, f64>> = BTreeMap::new();
    for row in rows {
        let key: Vec<String> = dims.iter().map(|d| truth_dim(row, d)).collect();
        let c = out.entry(key).or_default();
        for (field, prefix) in [
            ("finished_total", "finished"),
            ("failures_by_code", "failures"),
            ("tokens", "tokens"),
        ] {
            for (k, v) in row[field].as_object().into_iter().flatten() {
                *c.entry(format!("{prefix}/{k}")).or_default() += v.as_f64().unwrap();
            }
        }
        for h in ["queue", "run"] {
            let o = &row[format!("{h}_seconds")];
            *c.entry(format!("{h}/count")).or_default() += o["count"].as_f64().unwrap();
            *c.entry(format!("{h}/sum")).or_default() += o["sum"].as_f64().unwrap();
        }
    }
    out
}

/// `after - before` per group, zero deltas dropped, sums to the millisecond.
fn delta_by(
    after: &BTreeMap<Vec<String>, BTreeMap<String, f64>>,
    before: &BTreeMap<Vec<String>, BTreeMap<String, f64>>,
) -> BTreeMap<Vec<String>, BTreeMap<String, f64>> {
    let empty = BTreeMap::new();
    after
        .iter()
        .map(|(k, a)| (k.clone(), delta(a, before.get(k).unwrap_or(&empty))))
        .filter(|(_, d)| !d.is_empty())
        .collect()
}

fn truth_json(sim: &Sim) -> Json {
    serde_json::to_value(sim.truth()).unwrap()
}

/// The agent gauges per (dims, status) equal the truth's, exactly.
fn assert_agents_match(m: &BTreeMap<String, f64>, t: &Json) {
    let dims = ["provider", "team", "env"];
    let mut want: BTreeMap<(Vec<String>, String), f64> = BTreeMap::new();
    for row in t["agents_by"]
        .as_array()
        .expect("the ground truth has agents_by")
    {
        let key = dims.iter().map(|d| truth_dim(row, d)).collect();
        *want
            .entry((key, row["status"].as_str().unwrap().to_string()))
            .or_default() += row["count"].as_f64().unwrap();
    }
    let mut got: BTreeMap<(Vec<String>, String), f64> = BTreeMap::new();
    for (l, v) in series(m, "clawmesh_agents") {
        *got.entry((key_of(&l, &dims), l["status"].clone()))
            .or_default() += v;
    }
    got.retain(|_, v| *v != 0.0);
    want.retain(|_, v| *v != 0.0);
    assert_eq!(
        got, want,
        "agents by (provider, team, env, status): exporter (left), truth (right)"
    );
}

async fn assert_exact_by_dimension(sim: &Sim, extra: &[&str], finished: u64) {
    let flags: Vec<&str> = FLAGS.iter().chain(extra).copied().collect();
    let exporter = start_exporter(&exporter_config(sim, &flags)).await;
    run_fleet_for(sim, finished / 4).await;
    let_the_late_values_of_the_start_pass(sim, &exporter).await;
    let e1 = converge(sim, &exporter).await;
    let t1 = truth_json(sim);
    assert_agents_match(&e1, &t1);
    run_fleet_for(sim, finished).await;
    let e2 = converge(sim, &exporter).await;
    let t2 = truth_json(sim);
    assert_agents_match(&e2, &t2);

    let mut groupings: Vec<Vec<&str>> = DIMS.iter().map(|d| vec![*d]).collect();
    groupings.push(vec!["provider", "team"]);
    groupings.push(DIMS.to_vec());
    groupings.push(vec![]);
    for dims in &groupings {
        let want = delta_by(&truth_by(&t2, dims), &truth_by(&t1, dims));
        let got = delta_by(&exporter_by(&e2, dims), &exporter_by(&e1, dims));
        assert!(
            want.len() > 1 || dims.is_empty(),
            "the fleet spreads over one {dims:?} only: {want:?}"
        );
        assert_eq!(
            got, want,
            "by {dims:?}: exporter deltas (left), ground truth (right)"
        );
    }
    // The sum over the breakdown is the workspace total.
    let total = delta(&counters_of_truth(&sim.truth()), &{
        let t: clawmesh_exporter::sim::GroundTruth = serde_json::from_value(t1).unwrap();
        counters_of_truth(&t)
    });
    let summed = delta_by(&exporter_by(&e2, &[]), &exporter_by(&e1, &[]));
    assert_eq!(
        summed.get(&Vec::new()),
        Some(&total),
        "the breakdowns do not sum to the workspace total"
    );
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dimension_counts_exactly() {
    let sim = Sim::start(busy_fleet(31)).await;
    assert_exact_by_dimension(&sim, &[], 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dimension_counts_exactly_under_faults_and_latitude() {
    let sim = Sim::start(latitude_fleet(32, -2_500)).await;
    sim.faults(Faults {
        html_500: 0.04,
        unavailable_503: 0.04,
        rate_limit_429: 0.04,
        truncated_json: 0.04,
        cursor_expired: 0.1,
        retry_after_secs: 1,
        latency_ms: 2,
        ..Faults::default()
    });
    assert_exact_by_dimension(&sim, &["--api.timeout", "1s"], 300).await;
    assert!(
        sim.truth().faults_injected >= 10,
        "faults were not exercised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_value_cap_a_dimension_is_other_and_the_series_count_is_true() {
    let sim = Sim::start(busy_fleet(33)).await;
    let exporter = start_exporter(&exporter_config(
        &sim,
        &[
            "--breakdown.agent-labels",
            "team",
            "--breakdown.max-values",
            "2",
        ],
    ))
    .await;
    run_fleet_for(&sim, 50).await;
    let m = converge(&sim, &exporter).await;
    let ws = sim.truth().workspace_id;
    let teams: std::collections::BTreeSet<String> = series(&m, "clawmesh_agents")
        .into_iter()
        .filter_map(|(l, _)| l.get("team").cloned())
        .collect();
    assert_eq!(teams.len(), 3, "two teams and other: {teams:?}");
    assert!(teams.contains("other"), "{teams:?}");
    assert_eq!(
        must(&m, "clawmesh_breakdown_values", &[("dimension", "team")]),
        2.0
    );
    // Every agent is still counted: the sum is the truth's.
    let agents: f64 = series(&m, "clawmesh_agents").iter().map(|(_, v)| v).sum();
    assert_eq!(agents, sim.truth().agents.values().sum::<u64>() as f64);
    // The series count is what the exposition holds with a breakdown label.
    let text = scrape(exporter.addr).await;
    let with_team = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("team=\""))
        .count();
    let m = parse(&text);
    assert_eq!(
        must(&m, "clawmesh_breakdown_series", &[("workspace", &ws)]),
        with_team as f64
    );
    if let Some(promtool) = require_tool("promtool") {
        let (ok, report) = promtool_check_metrics(&promtool, &text);
        assert!(ok, "promtool check metrics: {report}");
    }
    exporter.shutdown().await;
}

/// The config file of one workspace on `sim`, with `breakdown` (YAML
/// lines under the workspace, or "") and storage in `dir/storage` when
/// asked; polls every second.
fn breakdown_config(
    sim: &Sim,
    dir: &std::path::Path,
    breakdown: &str,
    storage: bool,
) -> std::path::PathBuf {
    std::fs::write(dir.join("key"), format!("{DEMO_KEY}\n")).unwrap();
    let file = dir.join("clawmesh.yml");
    let mut yaml = format!(
        "workspaces:\n  - name: seams\n    api_url: {}\n    api_key_file: key\n    poll_interval: 1s\n    agents_interval: 1s\n    reconcile_interval: 5s\n    budget_share: 1\n{breakdown}",
        sim.url()
    );
    if storage {
        yaml.push_str("storage:\n  path: storage\n  interval: 1s\n");
    }
    std::fs::write(&file, yaml).unwrap();
    file
}

async fn start_from_file(file: std::path::PathBuf) -> Running {
    use clap::Parser;
    let args = clawmesh_exporter::config::RunArgs {
        config_file: Some(file),
        listen_address: "127.0.0.1:0".into(),
        ..clawmesh_exporter::config::Cli::try_parse_from(["clawmesh-exporter"])
            .unwrap()
            .run
    };
    let cfg = args
        .validate(&std::collections::HashMap::<String, String>::new())
        .unwrap_or_else(|e| panic!("config: {e}"));
    start_exporter(&cfg).await
}

/// Every counter series of the finished family, by its whole label set.
fn finished_series(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.iter()
        .filter(|(k, _)| k.starts_with("clawmesh_tasks_finished_total{"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The exporter's counters summed over every breakdown label.
fn summed(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    exporter_by(m, &[]).remove(&Vec::new()).unwrap_or_default()
}

/// No series seen in `before` is lower in `after` (a series may go).
fn assert_none_went_down(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    when: &str,
) {
    for (k, v) in before {
        if let Some(a) = after.get(k) {
            assert!(a >= v, "{when}: {k} went down from {v} to {a}");
        }
    }
}

/// Issue 18, item 3: breakdown settings changed by a reload (on, a
/// dimension more, off) and by a restart with storage never reset the
/// served totals: the sum over the slices equals the simulator's truth
/// since the start, and no series that shows before and after a change
/// goes down (before the fix, turning `provider` on by SIGHUP dropped the
/// finished counter from 71 to 16, and a restart with the flag newly
/// added lost what was counted before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakdown_changes_by_reload_and_restart_keep_the_totals() {
    for storage in [false, true] {
        let sim = Sim::start(busy_fleet(35)).await;
        let dir = tempfile::tempdir().unwrap();
        let file = breakdown_config(&sim, dir.path(), "", storage);
        let exporter = start_from_file(file).await;
        let_the_start_pass(&sim, &exporter).await;
        let start = summed(&converge(&sim, &exporter).await);
        let truth_start = counters_of_truth(&sim.truth());
        let mut seen = finished_series(&converge(&sim, &exporter).await);
        let steps = [
            "    breakdown:\n      provider: true\n",
            "    breakdown:\n      provider: true\n      agent_labels: [team]\n",
            "    breakdown:\n      agent_labels: [team]\n",
            "",
        ];
        let mut exporter = exporter;
        for (i, step) in steps.iter().enumerate() {
            run_fleet_for(&sim, 30).await;
            breakdown_config(&sim, dir.path(), step, storage);
            if storage && i % 2 == 1 {
                // A restart with the new settings (the checkpoint keeps them).
                exporter.shutdown().await;
                exporter = start_from_file(dir.path().join("clawmesh.yml")).await;
            } else {
                exporter
                    .reload()
                    .await
                    .unwrap_or_else(|e| panic!("reload refused: {e}"));
            }
            let m = converge(&sim, &exporter).await;
            let now = finished_series(&m);
            assert_none_went_down(&seen, &now, &format!("storage {storage}, step {i}"));
            let got = delta(&summed(&m), &start);
            let want = delta(&counters_of_truth(&sim.truth()), &truth_start);
            assert_eq!(
                got, want,
                "storage {storage}, after step {i} ({step:?}): served totals since the start (left), truth (right)"
            );
            seen = now;
        }
        exporter.shutdown().await;
    }
}

/// A reload while the API is down (crossed with an outage): the new slot retries its key check while the stopped slot's
/// fleet waits for it; once the API answers, the workspace goes on from
/// it under the new breakdown settings: without storage, the served
/// totals since the start equal the truth (the tasks that finished in
/// the outage counted once) and no series goes down. A handoff dropped
/// while the key check was pending restarted every counter from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_the_api_is_down_goes_on_from_the_stopped_slot() {
    let sim = Sim::start(busy_fleet(36)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = breakdown_config(&sim, dir.path(), "", false);
    let exporter = start_from_file(file).await;
    let_the_start_pass(&sim, &exporter).await;
    let start = summed(&converge(&sim, &exporter).await);
    let truth_start = counters_of_truth(&sim.truth());
    run_fleet_for(&sim, 30).await;
    let before = finished_series(&converge(&sim, &exporter).await);
    sim.faults(Faults {
        outage: true,
        ..Faults::default()
    });
    breakdown_config(
        &sim,
        dir.path(),
        "    breakdown:\n      provider: true\n",
        false,
    );
    exporter
        .reload()
        .await
        .unwrap_or_else(|e| panic!("reload refused: {e}"));
    wait_for(
        std::time::Duration::from_secs(60),
        "the new slot's key check to meet the outage",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(
                &m,
                "clawmesh_api_requests_total",
                &[("endpoint", "/auth/token"), ("code", "503")],
            )
            .is_some_and(|n| n >= 2.0)
        },
    )
    .await;
    // Tasks finish while nobody can poll.
    run_fleet_for(&sim, 20).await;
    sim.faults(Faults::default());
    let m = converge(&sim, &exporter).await;
    assert_none_went_down(&before, &finished_series(&m), "after the outage");
    assert_eq!(
        delta(&summed(&m), &start),
        delta(&counters_of_truth(&sim.truth()), &truth_start),
        "served totals since the start (left), truth (right)"
    );
    exporter.shutdown().await;
}
