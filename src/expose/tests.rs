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
    let e = Exposition::render(
        Format::Text,
        &Options::default(),
        &process(),
        &[sample_snapshot()],
        0,
        false,
    );
    let mut out = String::new();
    flate2::read::GzDecoder::new(&e.gzip[..])
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, render(&process(), &[sample_snapshot()]));
    assert_eq!((e.text(), e.text_len), (out.clone(), out.len()));
}

/// The exposition as the `prometheus` crate's encoder writes it, built the
/// way this module did before it wrote the text itself: the reference the
/// renderer must match byte for byte (escapes, number formats, suffixes).
fn encoded_by_prometheus(process: &ProcessInfo, snapshots: &[Snapshot]) -> String {
    use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
    fn header(name: &str, help: &str, kind: Kind) -> MetricFamily {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help(help.to_string());
        mf.set_field_type(match kind {
            Kind::Gauge => MetricType::GAUGE,
            Kind::Counter => MetricType::COUNTER,
            Kind::Histogram => MetricType::HISTOGRAM,
        });
        mf
    }
    fn label(name: &str, value: &str) -> LabelPair {
        let mut l = LabelPair::default();
        l.set_name(name.to_string());
        l.set_value(value.to_string());
        l
    }
    fn metric(
        kind: Kind,
        names: &[&str],
        workspace: &[(String, String)],
        dims: &[String],
        s: &Sample,
    ) -> proto::Metric {
        let mut m = proto::Metric::default();
        let mut labels: Vec<LabelPair> = workspace.iter().map(|(n, v)| label(n, v)).collect();
        labels.extend(
            dims.iter()
                .zip(&s.by)
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| label(n, v)),
        );
        labels.extend(names.iter().zip(&s.labels).map(|(n, v)| label(n, v)));
        m.set_label(labels);
        match (&s.value, kind) {
            (Value::Number(v), Kind::Counter) => {
                let mut c = proto::Counter::default();
                c.set_value(*v);
                m.set_counter(c);
            }
            (Value::Number(v), _) => {
                let mut g = proto::Gauge::default();
                g.set_value(*v);
                m.set_gauge(g);
            }
            (Value::Histogram(h), _) => {
                let mut ph = proto::Histogram::default();
                ph.set_sample_count(h.count());
                ph.set_sample_sum(h.sum());
                ph.set_bucket(
                    h.cumulative()
                        .map(|(le, n)| {
                            let mut b = proto::Bucket::default();
                            b.set_upper_bound(le);
                            b.set_cumulative_count(n);
                            b
                        })
                        .collect(),
                );
                m.set_histogram(ph);
            }
        }
        m
    }
    let mut families = Vec::new();
    let mut mf = header(metrics::BUILD_INFO, metrics::BUILD_INFO_HELP, Kind::Gauge);
    let mut m = proto::Metric::default();
    m.set_label(vec![
        label("revision", metrics::revision()),
        label("version", metrics::version()),
    ]);
    let mut g = proto::Gauge::default();
    g.set_value(1.0);
    m.set_gauge(g);
    mf.mut_metric().push(m);
    families.push(mf);
    let mut samples = Vec::new();
    for family in metrics::PROCESS_FAMILIES {
        let mut mf = header(family.name, family.help, family.kind);
        samples.clear();
        (family.collect)(process, &mut samples);
        for s in &samples {
            mf.mut_metric()
                .push(metric(family.kind, family.labels, &[], &[], s));
        }
        if !mf.get_metric().is_empty() {
            families.push(mf);
        }
    }
    for family in metrics::WORKSPACE_FAMILIES {
        let mut mf = header(family.name, family.help, family.kind);
        for snap in snapshots {
            samples.clear();
            (family.collect)(snap, &mut samples);
            for s in &samples {
                mf.mut_metric().push(metric(
                    family.kind,
                    family.labels,
                    &snap.labels,
                    &snap.dims,
                    s,
                ));
            }
        }
        if !mf.get_metric().is_empty() {
            families.push(mf);
        }
    }
    let mut out = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&families, &mut out)
        .unwrap();
    out
}

#[test]
fn renders_byte_for_byte_what_the_prometheus_encoder_renders() {
    // Two workspaces, breakdowns with values to escape and an empty one,
    // and numbers in every format Display has.
    let mut a = sample_snapshot();
    a.labels
        .push(("team".into(), "back\\slash \"quoted\"\nnew line é".into()));
    a.dims = vec!["provider".into(), "team_2".into()];
    for (i, g) in a.task_groups.iter_mut().enumerate() {
        g.by = vec![format!("open\"ai\\{i}"), String::new()];
        g.counters.queue_seconds.observe(1e-7);
        g.counters.run_seconds.observe(1e21);
        g.counters.input_tokens = u64::MAX;
    }
    for g in &mut a.agent_groups {
        g.by = vec!["anthropic".into(), "line\nbreak".into()];
    }
    a.oldest_pending_age_seconds = f64::NAN;
    a.api.clock_skew_seconds = Some(-0.0);
    a.api.budget_wait_seconds = 123_456_789.125;
    a.health.token_expiry = Some(f64::INFINITY);
    let mut b = sample_snapshot();
    b.workspace = "ws_other".into();
    b.labels = vec![("workspace".into(), "ws_other".into())];
    b.oldest_pending_age_seconds = f64::NEG_INFINITY;
    let snaps = [a, b];
    assert_eq!(
        render(&process(), &snaps),
        encoded_by_prometheus(&process(), &snaps)
    );
}
