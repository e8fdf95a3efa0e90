//! The Prometheus rule files in `alerts/`: promtool accepts them, their unit
//! tests pass and cover every alert, and every alert is a product (severity,
//! summary, description, runbook section).
//!
//! The rule files are read with a small line parser rather than a YAML
//! library (the crate has none): it understands the layout used in
//! `alerts/*.yml`, where `expr` is either on one line or a `|` block.

use std::path::PathBuf;
use std::process::Command;

use crate::util::require_tool;
use crate::{files_with_suffix, read, repo_root};

const RUNBOOK_BASE: &str =
    "https://github.com/clawmesh/clawmesh-exporter/blob/main/docs/runbooks.md#";
const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

/// One recording or alerting rule as written in a rule file.
#[derive(Debug, Default, Clone)]
pub struct Rule {
    pub file: String,
    /// `record` or `alert`.
    pub kind: &'static str,
    pub name: String,
    pub expr: String,
    /// `key: value` pairs under `labels:` and `annotations:` (one-line values,
    /// or folded `>-` blocks joined with spaces).
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
}

impl Rule {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Value of `key: value` on a trimmed line, if the line is that key.
fn key_value<'a>(trimmed: &'a str, key: &str) -> Option<&'a str> {
    trimmed.strip_prefix(key)?.strip_prefix(':').map(str::trim)
}

/// Reads a scalar that starts after `key:` on line `i`: inline, or a `|` / `>` block.
/// Returns the value and the index of the first line after it.
fn scalar(lines: &[&str], i: usize, inline: &str) -> (String, usize) {
    let unquote = |s: &str| s.trim_matches(|c| c == '"' || c == '\'').to_string();
    if !inline.starts_with('|') && !inline.starts_with('>') {
        return (unquote(inline), i + 1);
    }
    let folded = inline.starts_with('>');
    let key_indent = indent(lines[i]);
    let mut j = i + 1;
    let mut parts = Vec::new();
    while j < lines.len() && (lines[j].trim().is_empty() || indent(lines[j]) > key_indent) {
        parts.push(lines[j].trim());
        j += 1;
    }
    while parts.last() == Some(&"") {
        parts.pop();
    }
    (parts.join(if folded { " " } else { "\n" }), j)
}

/// Every rule of one rule file.
pub fn parse_rule_file(path: &std::path::Path) -> Vec<Rule> {
    let text = read(path);
    let lines: Vec<&str> = text.lines().collect();
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let mut rules: Vec<Rule> = Vec::new();
    let mut section = "";
    let mut section_indent = 0;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ").trim();
        if line.trim_start().starts_with('#') || trimmed.is_empty() {
            i += 1;
            continue;
        }
        if !section.is_empty() && indent(line) <= section_indent {
            section = "";
        }
        if let Some(name) = key_value(trimmed, "record").or_else(|| key_value(trimmed, "alert")) {
            let kind = if trimmed.starts_with("record") {
                "record"
            } else {
                "alert"
            };
            rules.push(Rule {
                file: file.clone(),
                kind,
                name: name.to_string(),
                ..Rule::default()
            });
            section = "";
            i += 1;
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            i += 1;
            continue;
        };
        if let Some(v) = key_value(trimmed, "expr") {
            let (expr, next) = scalar(&lines, i, v);
            rule.expr = expr;
            i = next;
            continue;
        }
        if trimmed == "labels:" || trimmed == "annotations:" {
            section = if trimmed == "labels:" {
                "labels"
            } else {
                "annotations"
            };
            section_indent = indent(line);
            i += 1;
            continue;
        }
        if !section.is_empty() {
            if let Some((k, v)) = trimmed.split_once(':') {
                let (value, next) = scalar(&lines, i, v.trim());
                let pair = (k.trim().to_string(), value);
                if section == "labels" {
                    rule.labels.push(pair);
                } else {
                    rule.annotations.push(pair);
                }
                i = next;
                continue;
            }
        }
        i += 1;
    }
    rules
}

/// Every rule of every `alerts/*.yml` file.
pub fn all_rules() -> Vec<Rule> {
    files_with_suffix("alerts", ".yml")
        .iter()
        .flat_map(|p| parse_rule_file(p))
        .collect()
}

fn run_promtool(args: &[&str], files: &[PathBuf]) {
    let Some(bin) = require_tool("promtool") else {
        return;
    };
    assert!(!files.is_empty(), "no files for promtool {args:?}");
    let out = Command::new(bin)
        .args(args)
        .args(files)
        .current_dir(repo_root())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
}

#[test]
fn promtool_check_rules() {
    run_promtool(&["check", "rules"], &files_with_suffix("alerts", ".yml"));
}

#[test]
fn promtool_test_rules() {
    run_promtool(
        &["test", "rules"],
        &files_with_suffix("alerts/tests", ".yml"),
    );
}

#[test]
fn parser_reads_the_rule_files() {
    let rules = all_rules();
    let alerts = rules.iter().filter(|r| r.kind == "alert").count();
    let records = rules.iter().filter(|r| r.kind == "record").count();
    assert!(alerts >= 10, "found only {alerts} alerts");
    assert!(records >= 10, "found only {records} recording rules");
    for rule in &rules {
        assert!(
            !rule.expr.trim().is_empty(),
            "{} {}: no expr parsed",
            rule.file,
            rule.name
        );
    }
}

#[test]
fn recording_rules_follow_level_metric_operations() {
    for rule in all_rules().iter().filter(|r| r.kind == "record") {
        let parts: Vec<&str> = rule.name.split(':').collect();
        let ok = parts.len() == 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
            && parts[1].starts_with("clawmesh_")
            && !parts[1].ends_with("_total");
        assert!(
            ok,
            "{}: recording rule {} is not level:metric:operations",
            rule.file, rule.name
        );
    }
}

#[test]
fn every_alert_is_a_product() {
    let runbooks = read(&repo_root().join("docs/runbooks.md"));
    let headings: Vec<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let mut names = std::collections::HashSet::new();
    for alert in all_rules().iter().filter(|r| r.kind == "alert") {
        let name = &alert.name;
        assert!(names.insert(name.clone()), "alert {name} defined twice");
        let severity = alert.label("severity").unwrap_or_default();
        assert!(
            SEVERITIES.contains(&severity),
            "{name}: severity {severity:?} not one of {SEVERITIES:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                alert.annotation(key).is_some_and(|v| !v.is_empty()),
                "{name}: annotation {key} missing"
            );
        }
        assert!(
            alert.annotation("description").unwrap().contains("$value")
                || alert.annotation("description").unwrap().contains("$labels"),
            "{name}: description shows no live value"
        );
        let anchor = name.to_lowercase();
        assert_eq!(
            alert.annotation("runbook_url").unwrap(),
            format!("{RUNBOOK_BASE}{anchor}"),
            "{name}: runbook_url"
        );
        assert!(
            headings.contains(&anchor),
            "{name}: docs/runbooks.md has no section \"## {name}\""
        );
    }
}

/// Every alert has, in alerts/tests, a case where it fires and one where it must not.
#[test]
fn every_alert_has_firing_and_silent_unit_tests() {
    let mut firing = std::collections::HashSet::new();
    let mut silent = std::collections::HashSet::new();
    for path in files_with_suffix("alerts/tests", ".yml") {
        let text = read(&path);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = key_value(line.trim(), "alertname") else {
                continue;
            };
            let exp = lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| l.starts_with("exp_alerts:"));
            match exp {
                Some(l) if l.trim_start_matches("exp_alerts:").trim().starts_with("[]") => {
                    silent.insert(name.to_string())
                }
                Some(_) => firing.insert(name.to_string()),
                None => false,
            };
        }
    }
    for alert in all_rules().iter().filter(|r| r.kind == "alert") {
        assert!(
            firing.contains(&alert.name),
            "{}: no unit test where it fires",
            alert.name
        );
        assert!(
            silent.contains(&alert.name),
            "{}: no unit test where it stays silent",
            alert.name
        );
    }
}

/// The Prometheus snippet is a valid configuration and loads the rule files.
#[test]
fn promtool_check_prometheus_config() {
    run_promtool(
        &["check", "config"],
        &[repo_root().join("deploy/prometheus/prometheus.yml")],
    );
}

/// The alert table (docs/alerts.md) lists every alert with its severity, and nothing else.
#[test]
fn readme_lists_every_alert_with_its_severity() {
    let readme = read(&repo_root().join("docs/alerts.md"));
    let listed: Vec<(String, String)> = readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix("`ClawMesh")?.strip_suffix('`')?;
            Some((format!("ClawMesh{name}"), cells.get(2)?.to_string()))
        })
        .collect();
    let alerts: Vec<(String, String)> = all_rules()
        .into_iter()
        .filter(|r| r.kind == "alert")
        .map(|r| {
            (
                r.name.clone(),
                r.label("severity").unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed, alerts,
        "docs/alerts.md \"Alerts\": the table must list every alert of alerts/ with its severity, in file order"
    );
}

/// The SLO files are what `alerts/slo/generate.py` renders from its objectives.
#[test]
fn the_slo_files_are_generated_from_their_objectives() {
    let out = Command::new("python3")
        .args(["alerts/slo/generate.py", "--check"])
        .current_dir(repo_root())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
