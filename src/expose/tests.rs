use super::*;
use crate::api::types::{Agent, Task, TaskError, TaskMetrics, TaskStatus, Timestamp};
use crate::fleet::{Fleet, Health};

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_micros((1_800_000_000 + secs) * 1_000_000)
}

/// A small fleet with one of everything, for the golden exposition.
pub(crate) fn sample_snapshot() -> Snapshot {
    let mut fleet = Fleet::new(ts(0));
    let agents: Vec<Agent> = ["idle", "idle", "busy", "error", "hibernating"]
        .iter()
        .enumerate()
        .map(|(i, s)| Agent {
            last_heartbeat_at: None,
            labels: Vec::new(),
            text_repaired: false,
            config: Default::default(),
            id: format!("agt_{i}"),
            status: s.to_string(),
            created_at: ts(0),
            updated_at: ts(0),
        })
        .collect();
    fleet.apply_agent_listing(&agents);
    let task = |id: &str, status: &str, code: Option<&str>| Task {
        agent_id: None,
        labels: Vec::new(),
        text_repaired: false,
        id: id.into(),
        status: TaskStatus::from_name(status),
        created_at: ts(1),
        updated_at: ts(30),
        started_at: (status != "pending").then(|| ts(3)),
        finished_at: TaskStatus::from_name(status).is_terminal().then(|| ts(30)),
        metrics: TaskMetrics {
            queue_seconds: (status != "pending").then_some(2.0),
            run_seconds: TaskStatus::from_name(status).is_terminal().then_some(27.0),
            input_tokens: Some(1200),
            output_tokens: Some(300),
            invalid: false,
        },
        transitions: Default::default(),
        error: code.map(|c| TaskError {
            code: Some(c.into()),
        }),
    };
    fleet.apply_task(&task("t1", "pending", None));
    fleet.apply_task(&task("t2", "running", None));
    fleet.apply_task(&task("t3", "completed", None));
    fleet.apply_task(&task("t4", "failed", Some("model_error")));
    let mut health = Health {
        up: true,
        token_expiry: Some(1_900_000_000.0),
        ..Default::default()
    };
    health.last_sync.insert("agents", 1_800_000_040.0);
    health.last_sync.insert("tasks", 1_800_000_041.5);
    health.sync_failures.insert("agents", 0);
    health.sync_failures.insert("tasks", 2);
    let mut checkpoint = crate::fleet::CheckpointHealth {
        last_success: Some(1_800_000_042.0),
        size_bytes: 52_314,
        write_seconds: 0.0125,
        restored_age_seconds: Some(31.5),
        ..Default::default()
    };
    checkpoint.write_failures.insert("io", 1);
    checkpoint.refused.insert("corrupt", 1);
    health.checkpoint = Some(checkpoint);
    let mut api = crate::api::ApiStats {
        rate_limit_limit: Some(1000),
        rate_limit_remaining: Some(870),
        budget_requests_per_minute: 100.0,
        budget_wait_seconds: 1.25,
        clock_skew_seconds: Some(-15.25),
        ..Default::default()
    };
    api.requests.insert(("/tasks".into(), "200".into()), 12);
    api.requests.insert(("/tasks".into(), "503".into()), 1);
    api.retries.insert("/tasks".into(), 1);
    let mut h = crate::histogram::Histogram::new(crate::histogram::API_LATENCY_BUCKETS);
    h.observe(0.02);
    api.durations.insert("/tasks".into(), h);
    let mut snap = fleet.snapshot("ws_test", ts(61), health, api);
    // As the hub stamps it when OTLP is on.
    snap.otlp = Some(crate::fleet::ExportHealth {
        succeeded: 40,
        failed: 2,
        last_success: Some(1_800_000_060.0),
        pending_points: 0,
    });
    snap
}

fn process() -> ProcessInfo {
    ProcessInfo {
        workspaces_configured: 2,
        workspaces_owned: 1,
        reload_success_at: 1_800_000_000.0,
        shard: crate::shard::Shard { index: 1, total: 2 },
        ..Default::default()
    }
}

#[test]
fn workspace_labels_come_first_then_the_familys() {
    let mut snap = sample_snapshot();
    snap.labels
        .push(("workspace_name".into(), "Payments".into()));
    snap.labels.push(("team".into(), "pay\"ments".into()));
    let text = render(&process(), &[snap]);
    assert!(
        text.contains(r#"clawmesh_agents{workspace="ws_test",workspace_name="Payments",team="pay\"ments",status="busy"} 1"#),
        "{text}"
    );
}

#[test]
fn exposition_matches_golden_text() {
    let text = render(&process(), &[sample_snapshot()])
        .replace(
            &format!("revision=\"{}\"", metrics::revision()),
            "revision=\"REVISION\"",
        )
        .replace(
            &format!("version=\"{}\"", metrics::version()),
            "version=\"VERSION\"",
        );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/exposition.prom");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let want =
        std::fs::read_to_string(path).expect("golden file missing: run with UPDATE_GOLDEN=1");
    assert_eq!(
        text, want,
        "exposition changed: review, then regenerate with UPDATE_GOLDEN=1"
    );
}

#[test]
fn every_family_is_documented_in_docs_metrics_md() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let mut names: Vec<&str> = metrics::WORKSPACE_FAMILIES.iter().map(|f| f.name).collect();
    names.push(metrics::BUILD_INFO);
    names.extend(metrics::PROCESS_FAMILIES.iter().map(|f| f.name));
    for name in &names {
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/metrics.md lacks a row for {name}"
        );
    }
    // And nothing documented that is not exposed.
    for word in doc
        .split('`')
        .filter(|w| w.starts_with("clawmesh_") && !w.contains('{') && !w.contains(' '))
    {
        assert!(
            names.contains(&word),
            "docs/metrics.md documents {word}, which the exporter does not expose"
        );
    }
}

#[test]
fn gzip_round_trips() {
    use std::io::Read;
    let e = Exposition::new(render(&process(), &[sample_snapshot()]));
    let mut out = String::new();
    flate2::read::GzDecoder::new(&e.gzip[..])
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.as_bytes(), &e.text[..]);
}
