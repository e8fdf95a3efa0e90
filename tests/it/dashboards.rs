//! Static checks of the Grafana dashboards in `dashboards/`, and the metric
//! names used by dashboards and rules against the exporter's contract.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use crate::rules::all_rules;
use crate::{files_with_suffix, read};

/// Stable dashboard uids: links and bookmarks depend on them, never change them.
const UIDS: [(&str, &str); 2] = [
    ("clawmesh-exporter.json", "clawmesh-exporter"),
    ("clawmesh-fleet.json", "clawmesh-fleet"),
];

const BUILD_INFO: &str = "clawmesh_exporter_build_info";

/// The breakdown dimensions with a variable on the fleet dashboard.
pub const DIMENSIONS: [&str; 4] = ["team", "env", "provider", "model"];

/// The families that carry the breakdown dimensions (histograms by their base
/// name). tests/it/prometheus.rs checks against a real scrape that each does.
pub const DIMENSION_FAMILIES: [&str; 10] = [
    "clawmesh_agents",
    "clawmesh_agents_active",
    "clawmesh_agents_heartbeat_stale",
    "clawmesh_tasks",
    "clawmesh_tasks_finished_total",
    "clawmesh_task_failures_total",
    "clawmesh_task_tokens_total",
    "clawmesh_task_spend_total",
    "clawmesh_task_queue_duration_seconds",
    "clawmesh_task_run_duration_seconds",
];

/// Whether `metric` (a series name) belongs to a family of [`DIMENSION_FAMILIES`].
fn carries_dimensions(metric: &str) -> bool {
    DIMENSION_FAMILIES.iter().any(|f| {
        metric == *f
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| metric.strip_suffix(s) == Some(f))
    })
}

/// Names of the SLO recording rules (alerts/clawmesh-slo.yml) start so.
pub const SLO_PREFIX: &str = "workspace_provider:clawmesh_slo_";

/// Whether alerts/clawmesh-slo.yml is missing: it exists, so every SLO name
/// a dashboard uses must be recorded and its panels must have data (a
/// checkout without the file fails loudly elsewhere: the rules tests).
pub fn slo_rules_pending() -> bool {
    !crate::repo_root().join("alerts/clawmesh-slo.yml").exists()
}

/// Every series name the exporter exposes (families with their suffixes),
/// from the metric table itself, so this list cannot drift from the code.
fn exposed_series() -> HashSet<String> {
    use clawmesh_exporter::metrics::{Kind, PROCESS_FAMILIES, WORKSPACE_FAMILIES};
    let mut names: HashSet<String> = HashSet::from([BUILD_INFO.to_string()]);
    let families = WORKSPACE_FAMILIES
        .iter()
        .map(|f| (f.name, f.kind))
        .chain(PROCESS_FAMILIES.iter().map(|f| (f.name, f.kind)));
    for (name, kind) in families {
        if kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
            // The native histogram, over protobuf (docs/formats.md).
            names.insert(name.to_string());
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

struct Dashboard {
    file: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    let files = files_with_suffix("dashboards", ".json");
    assert!(!files.is_empty(), "no dashboards in dashboards/");
    files
        .iter()
        .map(|p| {
            let file = p.file_name().unwrap().to_string_lossy().to_string();
            let json = serde_json::from_str(&read(p))
                .unwrap_or_else(|e| panic!("{file}: invalid JSON: {e}"));
            Dashboard { file, json }
        })
        .collect()
}

/// All panels, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push(p);
        for nested in p["panels"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            out.push(nested);
        }
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn panel_name(file: &str, panel: &Value) -> String {
    format!(
        "{file}: panel {:?}",
        panel["title"].as_str().unwrap_or("<untitled>")
    )
}

/// Replaces Grafana's variables by values Prometheus accepts.
fn substitute(expr: &str) -> String {
    [
        ("${workspace}", ".*"),
        ("$workspace", ".*"),
        ("$team", ".*"),
        ("$env", ".*"),
        ("$provider", ".*"),
        ("$model", ".*"),
        ("${__rate_interval}", "1m"),
        ("$__rate_interval", "1m"),
        ("${__interval}", "1m"),
        ("$__interval", "1m"),
        ("${__range}", "1h"),
        ("$__range", "1h"),
    ]
    .iter()
    .fold(expr.to_string(), |e, (var, value)| e.replace(var, value))
}

/// One query of one dashboard panel, Grafana variables substituted.
pub struct PanelQuery {
    pub file: String,
    pub title: String,
    pub ref_id: String,
    pub expr: String,
}

impl PanelQuery {
    /// Where the query is, for messages: file, panel title and refId.
    pub fn place(&self) -> String {
        format!(
            "{}: panel {:?} target {}",
            self.file, self.title, self.ref_id
        )
    }
}

/// The mark in the title of a panel that reads native histograms
/// (dashboards/generate.py `NATIVE`).
pub const NATIVE_MARK: &str = "(native histogram)";

/// Titles of the panels on native histograms: empty unless Prometheus
/// scrapes them.
pub fn native_panel_titles() -> Vec<String> {
    panel_queries()
        .into_iter()
        .filter(|q| q.title.contains(NATIVE_MARK))
        .map(|q| q.title)
        .collect()
}

/// Every PromQL query of every dashboard panel (rows' nested panels included),
/// with Grafana variables substituted so that a real Prometheus can evaluate it.
pub fn panel_queries() -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for d in dashboards() {
        for panel in panels(&d.json) {
            for (i, t) in panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(PanelQuery {
                        file: d.file.clone(),
                        title: panel["title"].as_str().unwrap_or("<untitled>").to_string(),
                        ref_id: t["refId"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| i.to_string()),
                        expr: substitute(expr),
                    });
                }
            }
        }
    }
    out
}

/// Every PromQL expression of every dashboard panel target and every rule, as
/// (where, expression), with Grafana variables substituted so that a real
/// Prometheus can evaluate it.
pub fn all_promql_expressions() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = panel_queries()
        .into_iter()
        .map(|q| (q.place(), q.expr))
        .collect();
    for rule in all_rules() {
        out.push((
            format!("{}: {} {}", rule.file, rule.kind, rule.name),
            rule.expr.clone(),
        ));
    }
    out
}

/// Metric-like identifiers of a PromQL expression: `clawmesh_*` and the
/// standard `process_*` names, and `level:metric:operations` names. Quoted
/// strings (label values) are skipped.
fn metric_identifiers(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            if ident.starts_with("clawmesh_")
                || ident.starts_with("process_")
                || ident.contains(':')
            {
                out.insert(ident);
            }
        } else if c.is_ascii_digit() || c == '$' {
            // a number or duration (5m, 1e3) or a Grafana variable: skip the whole word
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn extractor_finds_metrics_and_recording_rules() {
    let got = metric_identifiers(
        r#"sum by (workspace) (rate(clawmesh_tasks_finished_total{status="clawmesh_fake", workspace=~"$workspace"}[$__rate_interval])) / workspace:clawmesh_tasks_finished:rate5m * 60 + on (instance) process_open_fds"#,
    );
    let want: BTreeSet<String> = [
        "clawmesh_tasks_finished_total",
        "workspace:clawmesh_tasks_finished:rate5m",
        "process_open_fds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
}

#[test]
fn every_metric_name_is_exposed_or_recorded() {
    let exposed = exposed_series();
    let recorded: HashSet<String> = all_rules()
        .into_iter()
        .filter(|r| r.kind == "record")
        .map(|r| r.name)
        .collect();
    let mut problems = Vec::new();
    for (place, expr) in all_promql_expressions() {
        for name in metric_identifiers(&expr) {
            let slo_pending = name.starts_with(SLO_PREFIX) && slo_rules_pending();
            if !exposed.contains(&name) && !recorded.contains(&name) && !slo_pending {
                problems.push(format!("{place}: unknown metric {name}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "metrics neither exposed nor recorded:\n{}",
        problems.join("\n")
    );
}

#[test]
fn expressions_are_ready_for_prometheus() {
    let all = all_promql_expressions();
    assert!(all.len() > 30, "only {} expressions found", all.len());
    for (place, expr) in all {
        assert!(
            !expr.contains('$') || expr.contains("{{"),
            "{place}: unsubstituted variable in {expr}"
        );
        assert!(!expr.trim().is_empty(), "{place}: empty expression");
    }
}

#[test]
fn dashboards_are_current_grafana_json() {
    for d in dashboards() {
        let version = d.json["schemaVersion"].as_u64().unwrap_or(0);
        assert!(version >= 39, "{}: schemaVersion {version} < 39", d.file);
        assert!(
            d.json["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{}: no title",
            d.file
        );
    }
}

#[test]
fn dashboard_uids_are_unique_and_stable() {
    let mut seen = HashSet::new();
    for d in dashboards() {
        let uid = d.json["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no uid", d.file));
        assert!(
            seen.insert(uid.to_string()),
            "{}: uid {uid} used twice",
            d.file
        );
        let expected = UIDS.iter().find(|(f, _)| *f == d.file).map(|(_, u)| *u);
        assert_eq!(
            Some(uid),
            expected,
            "{}: uid must stay as listed in UIDS",
            d.file
        );
        let mut ids = HashSet::new();
        for panel in panels(&d.json) {
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{} has no id", panel_name(&d.file, panel)));
            assert!(ids.insert(id), "{}: panel id {id} used twice", d.file);
        }
    }
}

#[test]
fn dashboards_have_datasource_and_workspace_variables() {
    for d in dashboards() {
        let vars = d.json["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no templating", d.file));
        let var = |name: &str| {
            vars.iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{}: no variable {name}", d.file))
        };
        let ds = var("datasource");
        assert_eq!(
            ds["type"], "datasource",
            "{}: datasource variable type",
            d.file
        );
        assert_eq!(
            ds["query"], "prometheus",
            "{}: datasource variable must select prometheus",
            d.file
        );

        let ws = var("workspace");
        assert_eq!(ws["type"], "query", "{}: workspace variable type", d.file);
        let query = ws["query"]
            .as_str()
            .or_else(|| ws["query"]["query"].as_str())
            .unwrap_or_default();
        assert_eq!(
            query.replace(' ', ""),
            "label_values(clawmesh_up,workspace)",
            "{}: workspace query",
            d.file
        );
        assert_eq!(
            ws["multi"], true,
            "{}: workspace must be multi-value",
            d.file
        );
        assert_eq!(
            ws["includeAll"], true,
            "{}: workspace must include All",
            d.file
        );
        assert_eq!(
            ws["datasource"]["uid"], "${datasource}",
            "{}: workspace variable datasource",
            d.file
        );
    }
}

/// A datasource reference is fine when it is the variable (or Grafana's built-in one for annotations).
fn check_datasource(place: &str, ds: &Value) {
    match ds {
        Value::Null => {}
        Value::String(s) => assert!(s.starts_with('$'), "{place}: hard-coded datasource {s:?}"),
        Value::Object(o) => {
            if let Some(uid) = o.get("uid").and_then(Value::as_str) {
                assert!(
                    uid.starts_with('$') || uid == "-- Grafana --",
                    "{place}: hard-coded datasource uid {uid:?}"
                );
            }
        }
        other => panic!("{place}: unexpected datasource {other}"),
    }
}

#[test]
fn panels_use_the_datasource_variable_and_have_unit_and_description() {
    for d in dashboards() {
        let all = panels(&d.json);
        assert!(
            all.iter().filter(|p| !is_row(p)).count() >= 8,
            "{}: too few panels",
            d.file
        );
        for panel in all {
            let place = panel_name(&d.file, panel);
            check_datasource(&place, &panel["datasource"]);
            for t in panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                check_datasource(&place, &t["datasource"]);
            }
            if is_row(panel) {
                continue; // rows are headings: no data, no unit
            }
            let unit = panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default();
            assert!(
                !unit.is_empty(),
                "{place}: no unit (fieldConfig.defaults.unit)"
            );
            let desc = panel["description"].as_str().unwrap_or_default();
            assert!(!desc.trim().is_empty(), "{place}: no description");
            let targets = panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(!targets.is_empty(), "{place}: no query");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                // The process's own series (build info, caught panics)
                // carry no workspace label.
                let process_only = metric_identifiers(expr).iter().all(|m| {
                    m == clawmesh_exporter::metrics::BUILD_INFO
                        || clawmesh_exporter::metrics::PROCESS_FAMILIES
                            .iter()
                            .any(|f| f.name == m)
                });
                if expr.contains("clawmesh_") && !process_only {
                    assert!(
                        expr.contains("$workspace"),
                        "{place}: query ignores the workspace variable: {expr}"
                    );
                }
            }
        }
        for a in d.json["annotations"]["list"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            check_datasource(&format!("{}: annotation", d.file), &a["datasource"]);
        }
        for v in d.json["templating"]["list"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            check_datasource(
                &format!("{}: variable {}", d.file, v["name"]),
                &v["datasource"],
            );
        }
    }
}

fn fleet_dashboard() -> Dashboard {
    dashboards()
        .into_iter()
        .find(|d| d.file == "clawmesh-fleet.json")
        .expect("dashboards/clawmesh-fleet.json")
}

/// A "Where" panel: one query aggregated by one dimension.
pub struct WhereQuery {
    pub query: PanelQuery,
    pub dimension: String,
}

/// The fleet dashboard's panels titled "... by team|provider|model", with the
/// dimension they break down by.
pub fn where_queries() -> Vec<WhereQuery> {
    panel_queries()
        .into_iter()
        .filter(|q| q.file == "clawmesh-fleet.json")
        .filter_map(|q| {
            let dimension = ["team", "provider", "model"]
                .into_iter()
                .find(|d| q.title.ends_with(&format!(" by {d}")))?;
            Some(WhereQuery {
                dimension: dimension.to_string(),
                query: q,
            })
        })
        .collect()
}

#[test]
fn fleet_has_a_variable_per_dimension_whose_all_matches_an_absent_label() {
    let d = fleet_dashboard();
    let vars = d.json["templating"]["list"].as_array().unwrap();
    for dim in DIMENSIONS {
        let v = vars
            .iter()
            .find(|v| v["name"] == dim)
            .unwrap_or_else(|| panic!("{}: no variable {dim}", d.file));
        assert_eq!(
            v["query"].as_str().unwrap_or_default().replace(' ', ""),
            format!("label_values(clawmesh_agents{{workspace=~\"$workspace\"}},{dim})"),
            "{}: variable {dim} query",
            d.file
        );
        assert_eq!(v["multi"], true, "{}: {dim} must be multi-value", d.file);
        assert_eq!(v["includeAll"], true, "{}: {dim} must include All", d.file);
        // ".*" matches the empty value too: a breakdown that is off (label
        // absent) still shows under All. An allValue of ".+" would hide it.
        assert_eq!(v["allValue"], ".*", "{}: {dim} allValue", d.file);
        assert_eq!(v["datasource"]["uid"], "${datasource}");
    }
}

#[test]
fn fleet_panels_on_broken_down_families_filter_by_every_dimension() {
    let d = fleet_dashboard();
    let mut filtered = 0;
    for panel in panels(&d.json) {
        for t in panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let expr = t["expr"].as_str().unwrap_or_default();
            if !metric_identifiers(expr)
                .iter()
                .any(|m| carries_dimensions(m))
            {
                continue;
            }
            filtered += 1;
            for dim in DIMENSIONS {
                assert!(
                    expr.contains(&format!("{dim}=~\"${dim}\"")),
                    "{}: ignores the {dim} variable: {expr}",
                    panel_name(&d.file, panel)
                );
            }
        }
    }
    assert!(filtered >= 20, "only {filtered} filtered fleet queries");
}

#[test]
fn where_panels_break_down_by_their_dimension_and_show_it() {
    let d = fleet_dashboard();
    let mut seen = BTreeSet::new();
    for panel in panels(&d.json) {
        let title = panel["title"].as_str().unwrap_or_default();
        let Some(dim) = ["team", "provider", "model"]
            .into_iter()
            .find(|d| title.ends_with(&format!(" by {d}")))
        else {
            continue;
        };
        seen.insert(title.split(" by ").next().unwrap().to_string() + " by " + dim);
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains(&format!("sum by ({dim}")),
                "{title}: not summed by {dim}: {expr}"
            );
            assert!(
                t["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("{{{{{dim}}}}}")),
                "{title}: the legend does not show {dim}"
            );
        }
    }
    for what in [
        "Throughput",
        "Error ratio",
        "Tokens per minute",
        "Run time p95",
        "Spend per hour",
    ] {
        for dim in ["team", "provider", "model"] {
            let title = format!("{what} by {dim}");
            assert!(seen.contains(&title), "fleet: no panel {title:?}");
        }
    }
}
