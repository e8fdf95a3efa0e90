use super::*;
use crate::api::types::{Agent, Task, TaskError, TaskMetrics, TaskStatus, Timestamp};
use crate::fleet::{Fleet, Health};
use crate::metrics::{self, Kind, Sample, Value};

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_micros((1_800_000_000 + secs) * 1_000_000)
}

/// A small fleet with one of everything, for the golden exposition.
pub(crate) fn sample_snapshot() -> Snapshot {
    let mut fleet = Fleet::new(ts(0)).with_budgets(vec![crate::fleet::BudgetConfig {
        name: "all".into(),
        matches: Default::default(),
        monthly: crate::prices::Money::parse_decimal("5000", 0).ok(),
        daily: crate::prices::Money::parse_decimal("250.5", 0).ok(),
    }]);
    fleet.set_prices(std::sync::Arc::new(sample_prices()));
    let agents: Vec<Agent> = ["idle", "idle", "busy", "error", "hibernating"]
        .iter()
        .enumerate()
        .map(|(i, s)| Agent {
            last_heartbeat_at: None,
            labels: Vec::new(),
            text_repaired: false,
            // The first agent's model is priced, the second's is not.
            config: crate::api::types::AgentConfig {
                model_provider: (i < 2).then(|| "openai".to_string()),
                model: (i < 2).then(|| ["gpt-5", "gpt-9"][i].to_string()),
            },
            id: format!("agt_{i}"),
            status: s.to_string(),
            created_at: ts(0),
            updated_at: ts(0),
        })
        .collect();
    fleet.apply_agent_listing(&agents);
    let task = |id: &str, status: &str, code: Option<&str>| Task {
        agent_id: Some(if status == "failed" { "agt_1" } else { "agt_0" }.into()),
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
    // The API's time, as a sync sets it (which month and day are current).
    snap.api_now = Some(ts(61).micros());
    // As the hub stamps it when OTLP is on.
    snap.otlp = Some(crate::fleet::ExportHealth {
        succeeded: 40,
        failed: 2,
        last_success: Some(1_800_000_060.0),
        pending_points: 0,
    });
    snap
}

/// The golden fleet's price table: gpt-5 at 1.25 / 10 per million tokens.
pub(crate) fn sample_prices() -> crate::prices::PriceTable {
    let yaml = "currency: USD\nmodels:\n  - {provider: openai, model: gpt-5, input_per_million: \"1.25\", output_per_million: 10}\n";
    crate::prices::PriceTable::parse(yaml.as_bytes(), "golden", &Default::default()).unwrap()
}

fn process() -> ProcessInfo {
    let mut p = ProcessInfo {
        workspaces_configured: 2,
        workspaces_owned: 1,
        reload_success_at: 1_800_000_000.0,
        shard: crate::shard::Shard { index: 1, total: 2 },
        started_at: 1_799_999_990.0,
        ..Default::default()
    };
    p.set_prices(&sample_prices());
    p
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

// ---- OpenMetrics and protobuf ----

use super::native::{self, ZERO_THRESHOLD};
use super::protobuf::{self as pb, MetricFamily};
use crate::histogram::{Histogram, API_LATENCY_BUCKETS};
use prost::Message;
use std::collections::BTreeMap;

fn body(format: Format, options: Options, snapshots: &[Snapshot]) -> Vec<u8> {
    render_format(format, &options, &process(), snapshots)
}

fn openmetrics(options: Options, snapshots: &[Snapshot]) -> String {
    String::from_utf8(body(Format::OpenMetrics, options, snapshots)).unwrap()
}

/// Every `MetricFamily` of a delimited protobuf body, as Prometheus reads
/// it: each behind its length, to the last byte.
fn decode(mut body: &[u8]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(MetricFamily::decode_length_delimited(&mut body).expect("a delimited family"));
    }
    out
}

/// The build's revision and version, and exemplars' times (the exporter's
/// clock when the task was counted), pinned for a golden file.
fn pinned(text: &str) -> String {
    let text = text
        .replace(metrics::revision(), "REVISION")
        .replace(metrics::version(), "VERSION");
    text.lines()
        .map(|l| match l.find(" # {") {
            Some(_) => format!("{} AT\n", &l[..l.rfind(' ').unwrap()]),
            None => format!("{l}\n"),
        })
        .collect()
}

fn golden(name: &str, got: &str) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("golden file {name} missing: run with UPDATE_GOLDEN=1"));
    assert_eq!(
        got, want,
        "{name} changed: review, then regenerate with UPDATE_GOLDEN=1"
    );
}

#[test]
fn openmetrics_matches_golden() {
    let om = openmetrics(ALL_ON, &[sample_snapshot()]);
    assert!(om.contains(" # {task_id=\"t4\"} 1 "), "{om}");
    golden("exposition.om", &pinned(&om));
}

#[test]
fn protobuf_decoded_matches_golden() {
    let mut families = decode(&body(
        Format::Protobuf,
        Options::default(),
        &[sample_snapshot()],
    ));
    let mut exemplars = 0;
    let mut pin = |e: &mut pb::Exemplar| {
        e.timestamp = Some(pb::Timestamp {
            seconds: 1,
            nanos: 0,
        });
        exemplars += 1;
    };
    let mut text = String::new();
    for f in &mut families {
        for m in &mut f.metric {
            for l in &mut m.label {
                if l.name.as_deref() == Some("revision") {
                    l.value = Some("REVISION".into());
                }
                if l.name.as_deref() == Some("version") {
                    l.value = Some("VERSION".into());
                }
            }
            if let Some(e) = m.counter.as_mut().and_then(|c| c.exemplar.as_mut()) {
                pin(e);
            }
            if let Some(h) = &mut m.histogram {
                h.bucket
                    .iter_mut()
                    .filter_map(|b| b.exemplar.as_mut())
                    .for_each(&mut pin);
                h.exemplars.iter_mut().for_each(&mut pin);
            }
        }
        // A family a line, then a metric a line: readable in a diff.
        let metric = std::mem::take(&mut f.metric);
        text.push_str(&format!("{f:?}\n"));
        for m in &metric {
            text.push_str(&format!("  {m:?}\n"));
        }
    }
    // The failed counter's, and the run and queue histograms' buckets
    // (each in the bucket and among the histogram's).
    assert!(exemplars >= 3, "{text}");
    golden("exposition.pb.txt", &text);
}

/// A series as every format names it: sample name, then its labels in
/// order.
type Key = (String, Vec<(String, String)>);

/// `name{labels} value` of every sample line (comments, exemplars and
/// `# EOF` left out), unescaped; values as `{:?}` prints the number.
fn samples_of_text(text: &str) -> BTreeMap<Key, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let end = line.find(['{', ' ']).unwrap();
        let name = line[..end].to_string();
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            while !rest.starts_with('}') {
                let eq = rest.find("=\"").unwrap();
                let n = rest[..eq].to_string();
                rest = &rest[eq + 2..];
                let mut v = String::new();
                let mut chars = rest.char_indices();
                loop {
                    match chars.next().unwrap() {
                        (_, '\\') => v.push(match chars.next().unwrap().1 {
                            'n' => '\n',
                            c => c,
                        }),
                        (i, '"') => {
                            rest = &rest[i + 1..];
                            break;
                        }
                        (_, c) => v.push(c),
                    }
                }
                labels.push((n, v));
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            rest = &rest[1..];
        }
        let value: f64 = rest[1..].split(' ').next().unwrap().parse().unwrap();
        let dup = out.insert((name, labels), format!("{value:?}"));
        assert!(dup.is_none(), "a series twice: {line}");
    }
    out
}

/// The same from decoded protobuf: a histogram's buckets named and
/// labelled as the text formats name them (`+Inf` is the count), created
/// timestamps as OpenMetrics' `_created`.
fn samples_of_protobuf(families: &[MetricFamily]) -> BTreeMap<Key, String> {
    let mut out = BTreeMap::new();
    let secs = |t: &Option<pb::Timestamp>| {
        let t = t.as_ref().expect("a created timestamp");
        format!("{:?}", t.seconds as f64 + t.nanos as f64 / 1e9)
    };
    for f in families {
        let name = f.name.clone().unwrap();
        let family = name.strip_suffix("_total").unwrap_or(&name).to_string();
        for m in &f.metric {
            let labels: Vec<(String, String)> = m
                .label
                .iter()
                .map(|l| (l.name.clone().unwrap(), l.value.clone().unwrap()))
                .collect();
            let mut put = |n: String, l: Vec<(String, String)>, v: String| {
                assert!(out.insert((n, l), v).is_none(), "a series twice in {name}");
            };
            if let Some(c) = &m.counter {
                put(
                    name.clone(),
                    labels.clone(),
                    format!("{:?}", c.value.unwrap()),
                );
                put(
                    format!("{family}_created"),
                    labels.clone(),
                    secs(&c.created_timestamp),
                );
            }
            if let Some(g) = &m.gauge {
                put(
                    name.clone(),
                    labels.clone(),
                    format!("{:?}", g.value.unwrap()),
                );
            }
            if let Some(h) = &m.histogram {
                for b in h
                    .bucket
                    .iter()
                    .filter(|b| b.upper_bound.unwrap().is_finite())
                {
                    let mut l = labels.clone();
                    l.push(("le".into(), format!("{}", b.upper_bound.unwrap())));
                    put(
                        format!("{name}_bucket"),
                        l,
                        format!("{:?}", b.cumulative_count.unwrap() as f64),
                    );
                }
                let count = format!("{:?}", h.sample_count.unwrap() as f64);
                let mut l = labels.clone();
                l.push(("le".into(), "+Inf".into()));
                put(format!("{name}_bucket"), l, count.clone());
                put(format!("{name}_count"), labels.clone(), count);
                put(
                    format!("{name}_sum"),
                    labels.clone(),
                    format!("{:?}", h.sample_sum.unwrap()),
                );
                put(
                    format!("{name}_created"),
                    labels.clone(),
                    secs(&h.created_timestamp),
                );
            }
        }
    }
    out
}

/// Two workspaces with breakdowns, values to escape, numbers of every
/// shape, and created times that differ by family.
fn broken_down() -> [Snapshot; 2] {
    let mut a = sample_snapshot();
    a.labels
        .push(("team".into(), "back\\slash \"quoted\"\nnew line é".into()));
    a.dims = vec!["provider".into(), "team_2".into()];
    for (i, g) in a.task_groups.iter_mut().enumerate() {
        g.by = vec![format!("open\"ai\\{i}"), String::new()];
        g.counters.queue_seconds.observe(1e-7);
        g.counters.queue_seconds.observe(0.0);
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
    a.counting_since = 1_700_000_000.5;
    a.slot_since = 1_800_000_000.25;
    let mut b = sample_snapshot();
    b.workspace = "ws_other".into();
    b.labels = vec![("workspace".into(), "ws_other".into())];
    b.oldest_pending_age_seconds = f64::NEG_INFINITY;
    [a, b]
}

#[test]
fn every_format_shows_the_same_samples() {
    let snaps = broken_down();
    let text = samples_of_text(&render(&process(), &snaps));
    let om_text = openmetrics(ALL_ON, &snaps);
    assert!(om_text.ends_with("\n# EOF\n"));
    let om = samples_of_text(&om_text);
    let pb = samples_of_protobuf(&decode(&body(Format::Protobuf, Options::default(), &snaps)));
    assert!(text.len() > 200, "{} samples", text.len());
    // OpenMetrics is the text format's samples and `_created`.
    let (created, plain): (BTreeMap<_, _>, BTreeMap<_, _>) = om
        .clone()
        .into_iter()
        .partition(|((n, _), _)| n.ends_with("_created"));
    assert_eq!(plain, text);
    assert_eq!(om, pb);
    // `_created` beside every counter and histogram, no gauge's, at the
    // start OTLP sends: a restored family's since the workspace began
    // counting, another's since the slot began, the process's since it
    // started.
    let counters_and_histograms = text
        .keys()
        .filter(|(n, _)| n.ends_with("_total") || n.ends_with("_count"))
        .count();
    assert_eq!(created.len(), counters_and_histograms);
    let at = |name: &str, ws: &str| {
        created
            .iter()
            .find(|((n, l), _)| n == name && l.first().map(|(_, v)| v.as_str()) == Some(ws))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        at("clawmesh_tasks_finished_created", "ws_test").as_deref(),
        Some("1700000000.5")
    );
    assert_eq!(
        at("clawmesh_task_run_duration_seconds_created", "ws_test").as_deref(),
        Some("1700000000.5")
    );
    assert_eq!(
        at("clawmesh_api_requests_created", "ws_test").as_deref(),
        Some("1800000000.25")
    );
    assert_eq!(
        at("clawmesh_api_requests_created", "ws_other").as_deref(),
        Some("1800000000.0")
    );
    assert_eq!(
        at("clawmesh_exporter_http_refusals_created", "max_connections").as_deref(),
        Some("1799999990.0")
    );
}

#[test]
fn openmetrics_names_families_as_the_spec_does() {
    let om = openmetrics(ALL_ON, &[sample_snapshot()]);
    for want in [
        "# TYPE clawmesh_tasks_finished counter\n# HELP clawmesh_tasks_finished Tasks",
        "\nclawmesh_tasks_finished_total{workspace=\"ws_test\",status=\"completed\"} 1\n",
        "\nclawmesh_tasks_finished_created{workspace=\"ws_test\",status=\"completed\"} 1800000000\n",
        "# TYPE clawmesh_task_run_duration_seconds histogram\n# UNIT clawmesh_task_run_duration_seconds seconds\n",
        "# TYPE clawmesh_api_budget_wait_seconds counter\n# UNIT clawmesh_api_budget_wait_seconds seconds\n",
        "# UNIT clawmesh_exporter_checkpoint_size_bytes bytes\n",
        "\nclawmesh_tasks_oldest_pending_age_seconds{workspace=\"ws_test\"} ",
        "\nclawmesh_api_request_duration_seconds_bucket{workspace=\"ws_test\",endpoint=\"/tasks\",le=\"+Inf\"} 1\n",
    ] {
        assert!(om.contains(want), "no {want:?} in\n{om}");
    }
    // Gauges have no `_created`; HELP escapes quotes in OpenMetrics.
    assert!(!om.contains("clawmesh_agents_created"), "{om}");
    assert!(om.contains(r#"unknown ones appear by name (past 20, as \"other\")"#));
    // Infinities and NaN as OpenMetrics spells them.
    let [a, _] = broken_down();
    let om = openmetrics(ALL_ON, &[a]);
    for want in [" NaN\n", " +Inf\n"] {
        assert!(om.contains(want), "no {want:?}");
    }
    assert!(!om.contains(" inf\n"));
}

#[test]
fn exemplars_show_only_when_asked_for() {
    let snaps = broken_down();
    let on = ALL_ON;
    let off = Options {
        exemplars: false,
        ..ALL_ON
    };
    let exemplars = |families: &[MetricFamily]| {
        let mut n = 0;
        for m in families.iter().flat_map(|f| &f.metric) {
            n += m.counter.as_ref().map_or(0, |c| c.exemplar.iter().count());
            if let Some(h) = &m.histogram {
                n += h.bucket.iter().filter(|b| b.exemplar.is_some()).count() + h.exemplars.len();
            }
        }
        n
    };
    assert!(openmetrics(on, &snaps).contains(" # {task_id="));
    assert!(exemplars(&decode(&body(Format::Protobuf, on, &snaps))) > 0);
    assert!(!openmetrics(off, &snaps).contains(" # {"));
    assert_eq!(exemplars(&decode(&body(Format::Protobuf, off, &snaps))), 0);
    // The text format has none either way.
    assert_eq!(
        body(Format::Text, on, &snaps),
        body(Format::Text, off, &snaps)
    );
}

#[test]
fn an_exemplars_task_id_is_escaped_in_openmetrics() {
    let mut fleet = crate::fleet::Fleet::new(ts(0));
    let id = "t\"5\\x\ny";
    fleet.apply_task(&Task {
        agent_id: None,
        labels: Vec::new(),
        text_repaired: false,
        id: id.into(),
        status: TaskStatus::Failed,
        created_at: ts(1),
        updated_at: ts(30),
        started_at: Some(ts(3)),
        finished_at: Some(ts(30)),
        metrics: TaskMetrics {
            queue_seconds: Some(2.0),
            run_seconds: Some(27.0),
            ..Default::default()
        },
        transitions: Default::default(),
        error: None,
    });
    let snap = fleet.snapshot("ws_test", ts(61), Default::default(), Default::default());
    let om = openmetrics(ALL_ON, std::slice::from_ref(&snap));
    let escaped = r#"# {task_id="t\"5\\x\ny"} "#;
    let lines: Vec<&str> = om.lines().filter(|l| l.contains(escaped)).collect();
    // The failed counter and the run histogram's bucket (and the queue's).
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("clawmesh_tasks_finished_total{")),
        "{om}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("clawmesh_task_run_duration_seconds_bucket{")),
        "{om}"
    );
    // And protobuf carries it as it is.
    let pb = decode(&body(Format::Protobuf, Options::default(), &[snap]));
    let c = pb
        .iter()
        .find(|f| f.name.as_deref() == Some("clawmesh_tasks_finished_total"))
        .and_then(|f| {
            f.metric
                .iter()
                .find_map(|m| m.counter.as_ref()?.exemplar.clone())
        })
        .unwrap();
    assert_eq!(c.label[0].value.as_deref(), Some(id));
}

/// The bucket Prometheus puts `v > 0` in at `schema`: the smallest `i`
/// with `v <= 2^(i/2^schema)`; exact for powers of two and coarse
/// schemas, by logarithm otherwise.
fn prometheus_index(v: f64, schema: i32) -> i32 {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let power_of_two = bits & ((1 << 52) - 1) == 0;
    if schema <= 0 {
        let per = 1 << -schema;
        if power_of_two {
            exp.div_euclid(per) + (exp.rem_euclid(per) != 0) as i32
        } else {
            exp.div_euclid(per) + 1
        }
    } else if power_of_two {
        exp << schema
    } else {
        (v.log2() * (1 << schema) as f64).ceil() as i32
    }
}

proptest::proptest! {
    #[test]
    fn native_buckets_hold_each_observation_where_prometheus_puts_it(
        center in -140i32..100,
        spread in 0.0f64..60.0,
        raw in proptest::collection::vec((0.0f64..1.0, 0u8..10), 0..300),
    ) {
        let values: Vec<f64> = raw
            .iter()
            .map(|(f, shape)| match shape {
                0 => 0.0,
                // Powers of two: bucket boundaries at every schema.
                1 => 2f64.powi(center + (f * spread) as i32),
                2 => -(2f64.powf(center as f64 + f * spread)),
                _ => 2f64.powf(center as f64 + f * spread),
            })
            .collect();
        let mut h = Histogram::new(API_LATENCY_BUCKETS);
        for v in &values {
            h.observe(*v);
        }
        let n = native::native(h.exponential()).expect("a schema Prometheus takes");
        proptest::prop_assert_eq!(n.schema, h.exponential().scale().min(8));
        proptest::prop_assert!((-4..=8).contains(&n.schema));
        let mut zero = 0u64;
        let (mut positive, mut negative) = (BTreeMap::new(), BTreeMap::new());
        for v in &values {
            if v.abs() <= ZERO_THRESHOLD {
                zero += 1;
            } else {
                let side = if *v > 0.0 { &mut positive } else { &mut negative };
                *side.entry(prometheus_index(v.abs(), n.schema)).or_insert(0u64) += 1;
            }
        }
        let decoded = |s: &native::Spans| -> BTreeMap<i32, u64> {
            native::absolute(&s.spans, &s.deltas)
                .into_iter()
                .filter(|(_, c)| *c > 0)
                .collect()
        };
        let total: u64 = n.zero_count
            + decoded(&n.positive).values().sum::<u64>()
            + decoded(&n.negative).values().sum::<u64>();
        proptest::prop_assert_eq!(total, values.len() as u64);
        proptest::prop_assert_eq!(n.zero_count, zero);
        proptest::prop_assert_eq!(decoded(&n.positive), positive);
        proptest::prop_assert_eq!(decoded(&n.negative), negative);
        // Each span starts with a bucket that holds something, and spans
        // are apart by more than the two empty buckets a span may hold.
        for s in [&n.positive, &n.negative] {
            proptest::prop_assert_eq!(s.deltas.len() as u32, s.spans.iter().map(|x| x.1).sum::<u32>());
            proptest::prop_assert!(s.spans.iter().skip(1).all(|x| x.0 > 2));
        }
    }
}

#[test]
fn an_empty_histogram_is_still_native_in_protobuf() {
    let snap = crate::fleet::Fleet::new(ts(0)).snapshot(
        "ws",
        ts(1),
        Default::default(),
        Default::default(),
    );
    let pb = decode(&body(Format::Protobuf, Options::default(), &[snap]));
    let h = pb
        .iter()
        .find(|f| f.name.as_deref() == Some("clawmesh_task_run_duration_seconds"))
        .and_then(|f| f.metric[0].histogram.clone())
        .unwrap();
    assert_eq!(h.sample_count, Some(0));
    assert_eq!(h.zero_threshold, Some(ZERO_THRESHOLD));
    assert_eq!(ZERO_THRESHOLD, 2f64.powi(-128));
    assert_eq!(h.schema, Some(8));
    // client_golang leaves the `+Inf` bucket out.
    assert_eq!(
        h.bucket.len(),
        h.bucket
            .iter()
            .filter(|b| b.upper_bound.unwrap().is_finite())
            .count()
    );
    assert!(!h.bucket.is_empty());
}

#[test]
fn every_format_gzips_and_keeps_its_bytes_when_asked() {
    let snaps = broken_down();
    for format in Format::ALL {
        let e = Exposition::render(format, &Options::default(), &process(), &snaps, 0, true);
        let plain = body(format, Options::default(), &snaps);
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(&mut e.text_reader(), &mut inflated).unwrap();
        assert_eq!(inflated, plain, "{format:?}");
        assert_eq!(e.identity.as_deref(), Some(&plain[..]), "{format:?}");
        assert_eq!(e.text_len, plain.len(), "{format:?}");
    }
}

#[test]
fn protobuf_streamed_is_byte_for_byte_what_prost_writes_for_each_family() {
    // The writer measures a family, then writes its fields and metrics in
    // pieces; prost, given the whole decoded family, must write the same.
    let body = body(Format::Protobuf, Options::default(), &broken_down());
    let families = decode(&body);
    assert!(families.len() > 40);
    let again: Vec<u8> = families
        .iter()
        .flat_map(|f| f.encode_length_delimited_to_vec())
        .collect();
    assert_eq!(again, body);
}

/// Everything a render can show: the golden files and the cross-format
/// comparisons see `_created` too.
const ALL_ON: Options = Options {
    exemplars: true,
    created_lines: true,
    plain_max: usize::MAX,
};

#[test]
fn openmetrics_has_no_created_lines_unless_asked_for() {
    // One snapshot: its exemplars' times are the clock's when it was built.
    let snap = [sample_snapshot()];
    let off = openmetrics(Options::default(), &snap);
    assert!(!off.contains("_created"));
    let on = openmetrics(ALL_ON, &snap);
    assert!(on.contains("clawmesh_tasks_finished_created{"));
    assert!(on.contains("clawmesh_task_run_duration_seconds_created{"));
    // Nothing else differs.
    let without: Vec<&str> = on.lines().filter(|l| !l.contains("_created")).collect();
    assert!(
        without == off.lines().collect::<Vec<_>>(),
        "more than _created differs"
    );
}

#[test]
fn a_body_past_the_plain_cap_is_not_kept_as_it_is() {
    let snaps = [sample_snapshot()];
    let len = body(Format::Text, Options::default(), &snaps).len();
    let at = |plain_max| {
        let o = Options {
            plain_max,
            ..Options::default()
        };
        Exposition::render(Format::Text, &o, &process(), &snaps, 0, true)
    };
    let kept = at(len);
    assert_eq!(kept.identity.as_ref().map(|b| b.len()), Some(len));
    let over = at(len - 1);
    assert!(over.identity.is_none(), "a body over the cap was kept");
    // The gzip is the same body either way.
    assert_eq!(over.text(), kept.text());
}
