//! The price table and budgets as an operator sets them: bad flags and
//! files refused at the start in one line, and reloads that put a new table
//! in force without restarting a workspace, refuse an invalid one whole,
//! and restart only the workspace whose budgets changed, losing no count.
//!
//! The reload tests need the real price-table parser and `Money`'s decimal
//! reader (the prices branch) and the spend and budget families (the
//! fleet's); each says so.

use crate::util::*;
use clawmesh_exporter::exporter::Running;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The simulator's four models at list prices, in `currency`, in our YAML;
/// `extra` adds entries (lines under `models:`).
fn table(currency: &str, extra: &str) -> String {
    format!(
        r#"# clawmesh price table (a test's)
currency: {currency}
models:
  - {{provider: anthropic, model: claude-sonnet-4, input_per_million: "3", output_per_million: "15"}}
  - {{provider: openai, model: gpt-5, input_per_million: "1.25", output_per_million: "10"}}
  - {{provider: google, model: gemini-2.5-pro, input_per_million: "1.25", output_per_million: "10"}}
  - {{provider: local, model: llama-3.3-70b, input_per_million: "0", output_per_million: "0"}}
{extra}"#
    )
}

/// A table with one bad entry (a negative price): refused whole.
const INVALID_TABLE: &str = "currency: USD\nmodels:\n  - {provider: openai, model: gpt-5, input_per_million: \"1.25\", output_per_million: \"10\"}\n  - {provider: anthropic, model: claude-sonnet-4, input_per_million: \"-3\", output_per_million: \"15\"}\n";

/// The binary with `args` (and a key in the environment): its exit code and
/// stderr. Killed, and the test failed, if it is still running after 30 s
/// (a configuration that should have been refused was taken).
fn run_bin(args: &[&str]) -> (Option<i32>, String) {
    let mut child = bin()
        .args(args)
        .args(["--web.listen-address", "127.0.0.1:0"])
        .env("CLAWMESH_API_KEY", "k")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: still running after 30 s: the configuration was taken");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn assert_one_line_exit_2(args: &[&str], needles: &[&str]) {
    let (code, err) = run_bin(args);
    assert_eq!(code, Some(2), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in {err}");
    }
}

#[test]
fn bad_price_flags_and_tables_are_one_line_and_exit_code_2() {
    let dir = temp_dir("spend-flags");
    let bad = dir.join("bad-prices.yaml");
    std::fs::write(&bad, INVALID_TABLE).unwrap();
    let bad = bad.to_str().unwrap();
    for (args, needle) in [
        (
            &["--prices.provider-alias", "google"][..],
            "--prices.provider-alias \\\"google\\\": write PROVIDER=TABLE_PROVIDER",
        ),
        (
            &["--prices.provider-alias", "=gemini"][..],
            "--prices.provider-alias",
        ),
        (
            &["--prices.max-entries", "0"][..],
            "--prices.max-entries: must be at least 1",
        ),
        (&["--prices.max-size", "lots"][..], "--prices.max-size"),
        (
            &["--prices.file", "/nonexistent/prices.yaml"][..],
            "/nonexistent/prices.yaml",
        ),
        (&["--prices.file", bad][..], "bad-prices.yaml"),
    ] {
        assert_one_line_exit_2(args, &[needle]);
    }
}

#[test]
fn bad_budgets_in_the_config_file_are_refused_at_the_start_with_their_path() {
    let dir = temp_dir("spend-budgets");
    std::fs::write(dir.join("key"), "k\n").unwrap();
    let file = dir.join("clawmesh.yml");
    std::fs::write(
        &file,
        "workspaces:\n  - name: a\n    api_url: http://127.0.0.1:1/v1\n    api_key_file: key\n    budgets:\n      - {name: x, monthly: -5}\n      - {name: x, daily: .nan}\n      - {name: y, monthly: lots, weekly: 3}\n",
    )
    .unwrap();
    assert_one_line_exit_2(
        &["--config.file", file.to_str().unwrap()],
        &[
            "workspaces[0].budgets[0].monthly: must not be negative",
            "workspaces[0].budgets[1].name: another budget of the workspace is named \\\"x\\\"",
            "workspaces[0].budgets[1].daily: must be a finite amount",
            "workspaces[0].budgets[2].monthly: \\\"lots\\\" is not an amount",
            "workspaces[0].budgets[2].weekly: unknown key",
        ],
    );
}

/// Budgets without a price table would show nothing spent for ever: the
/// start is refused, saying what to add.
#[test]
fn budgets_without_a_price_table_are_refused_at_the_start() {
    let dir = temp_dir("spend-unpriced-budgets");
    std::fs::write(dir.join("key"), "k\n").unwrap();
    let file = dir.join("clawmesh.yml");
    std::fs::write(
        &file,
        "workspaces:\n  - name: a\n    api_url: http://127.0.0.1:1/v1\n    api_key_file: key\n    budgets:\n      - {name: all, monthly: 100}\n",
    )
    .unwrap();
    assert_one_line_exit_2(
        &["--config.file", file.to_str().unwrap()],
        &[
            "sets budgets: but no price table is configured",
            "--prices.file",
        ],
    );
}

/// `check-config` reads the price table the file's `prices:` names, as
/// the start would: one it cannot use is a problem (exit code 2, no OK).
#[test]
fn check_config_reads_the_price_table_the_file_names() {
    let dir = temp_dir("spend-check");
    std::fs::write(dir.join("key"), "k\n").unwrap();
    let file = dir.join("clawmesh.yml");
    std::fs::write(
        &file,
        "prices:\n  file: missing-prices.yaml\nworkspaces:\n  - name: a\n    api_key_file: key\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(!stdout.contains("OK"), "{stdout}");
    assert!(stderr.contains("missing-prices.yaml"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// A config file of workspaces (name, simulator) with `budget` as each
/// one's monthly budget and the price table `prices.yaml` beside it.
fn write_config(dir: &Path, workspaces: &[(&str, &Sim, &str)]) -> std::path::PathBuf {
    std::fs::write(
        dir.join("key"),
        format!("{}\n", clawmesh_exporter::sim::DEMO_KEY),
    )
    .unwrap();
    let mut yaml = String::from("prices:\n  file: prices.yaml\nworkspaces:\n");
    for (name, sim, budget) in workspaces {
        yaml.push_str(&format!(
            "  - name: {name}\n    api_url: {}\n    api_key_file: key\n    poll_interval: 1s\n    agents_interval: 1s\n    reconcile_interval: 5s\n    overlap: 6s\n    budget_share: 1\n    budgets:\n      - {{name: total, monthly: \"{budget}\"}}\n",
            sim.url()
        ));
    }
    let file = dir.join("clawmesh.yml");
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

/// The series of workspace `ws` only (so that the counters of one of
/// several workspaces can be read with `counters_of_exporter`).
fn of_workspace(m: &BTreeMap<String, f64>, ws: &str) -> BTreeMap<String, f64> {
    let label = format!("workspace=\"{ws}\"");
    m.iter()
        .filter(|(k, _)| k.contains(&label))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Every series of `name` summed.
fn sum_of(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// Unpriced tokens of the models every test table prices: any is a task
/// priced without the table that was in force.
fn unpriced_of_known_models(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("clawmesh_task_unpriced_tokens_total{"))
        .filter(|(k, _)| {
            ["anthropic", "openai", "google", "local"]
                .iter()
                .any(|p| k.contains(&format!("provider=\"{p}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// `clawmesh_api_requests_total` of workspace `ws` summed over the
/// series whose labels include all of `labels`.
fn requests(m: &BTreeMap<String, f64>, ws: &str, labels: &[(&str, &str)]) -> f64 {
    let ws = format!("workspace=\"{ws}\"");
    m.iter()
        .filter(|(k, _)| k.starts_with("clawmesh_api_requests_total{") && k.contains(&ws))
        .filter(|(k, _)| {
            labels
                .iter()
                .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Key checks of workspace `ws`: one more is a restart of its slot.
fn key_checks(m: &BTreeMap<String, f64>, ws: &str) -> f64 {
    requests(m, ws, &[("endpoint", "/auth/token")])
}

/// No series of `names` seen in `before` is lower in `after`.
fn assert_none_went_down(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    names: &[&str],
) {
    for (k, v) in before {
        if !names.iter().any(|n| k.split('{').next() == Some(n)) {
            continue;
        }
        let a = after.get(k).copied().unwrap_or(0.0);
        assert!(a >= *v, "{k} went down from {v} to {a}");
    }
}

/// Waits for the prices merge (the table parser) and the fleet's spend
/// families. A reload with an invalid price table is refused whole: the
/// error names the entry, `clawmesh_exporter_config_last_reload_successful`
/// is 0, the old table is still in force (its info, and every model still
/// priced: no unpriced tokens of a known model), spend goes on; a good
/// table afterwards is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_an_invalid_price_table_is_refused_and_the_old_table_prices_on() {
    let sim = Sim::start(busy_fleet(61)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prices.yaml"), table("USD", "")).unwrap();
    let file = write_config(dir.path(), &[("a", &sim, "1000")]);
    let exporter = start_from_file(file).await;
    let_the_start_pass(&sim, &exporter).await;
    run_fleet_for(&sim, 30).await;
    let m0 = converge(&sim, &exporter).await;
    let usd = [("currency", "USD"), ("format", "clawmesh")];
    assert_eq!(value(&m0, "clawmesh_exporter_prices_info", &usd), Some(1.0));
    assert_eq!(
        value(&m0, "clawmesh_exporter_price_entries", &[]),
        Some(4.0)
    );
    let spend0 = sum_of(&m0, "clawmesh_task_spend_total");
    assert!(spend0 > 0.0, "nothing was priced: {spend0}");

    std::fs::write(dir.path().join("prices.yaml"), INVALID_TABLE).unwrap();
    let e = exporter
        .reload()
        .await
        .expect_err("an invalid table was taken");
    assert!(e.contains("prices.yaml"), "{e}");
    assert!(
        e.contains("claude-sonnet-4") || e.contains("models[1]"),
        "the refusal does not name the entry: {e}"
    );
    assert!(!e.contains('\n'), "{e}");
    run_fleet_for(&sim, 30).await;
    let m1 = converge(&sim, &exporter).await;
    assert_eq!(
        value(&m1, "clawmesh_exporter_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(value(&m1, "clawmesh_exporter_prices_info", &usd), Some(1.0));
    assert_eq!(
        value(&m1, "clawmesh_exporter_price_entries", &[]),
        Some(4.0)
    );
    assert!(
        sum_of(&m1, "clawmesh_task_spend_total") > spend0,
        "spend stopped after the refused reload"
    );
    assert_eq!(
        unpriced_of_known_models(&m1),
        0.0,
        "tasks of priced models went unpriced after the refused reload"
    );

    std::fs::write(dir.path().join("prices.yaml"), table("USD", "")).unwrap();
    exporter
        .reload()
        .await
        .unwrap_or_else(|e| panic!("a good table refused: {e}"));
    let m2 = parse(&scrape(exporter.addr).await);
    assert_eq!(
        value(&m2, "clawmesh_exporter_config_last_reload_successful", &[]),
        Some(1.0)
    );
    exporter.shutdown().await;
}

/// Waits for the prices merge. With `--prices.file` and no config file, a
/// reload re-reads the table; the new one is in force (its info says so)
/// and no workspace restarts for it: no new key check, no counter lower,
/// and the counters since the start still equal the simulator's truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_price_table_by_reload_restarts_no_workspace_and_loses_no_count() {
    let sim = Sim::start(busy_fleet(62)).await;
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.yaml");
    std::fs::write(&prices, table("USD", "")).unwrap();
    let cfg = exporter_config(&sim, &["--prices.file", prices.to_str().unwrap()]);
    let exporter = start_exporter(&cfg).await;
    let_the_start_pass(&sim, &exporter).await;
    let m0 = converge(&sim, &exporter).await;
    let (start, truth_start) = (counters_of_exporter(&m0), counters_of_truth(&sim.truth()));
    let ws = sim.truth().workspace_id;
    assert_eq!(
        value(&m0, "clawmesh_exporter_prices_info", &[("currency", "USD")]),
        Some(1.0)
    );
    run_fleet_for(&sim, 30).await;
    let m1 = converge(&sim, &exporter).await;

    // A price change from a date on: one entry more.
    let dated = "  - {provider: openai, model: gpt-5, since: 2026-01-01, input_per_million: \"1\", output_per_million: \"8\"}\n";
    std::fs::write(&prices, table("EUR", dated)).unwrap();
    let said = exporter
        .reload()
        .await
        .unwrap_or_else(|e| panic!("reload refused: {e}"));
    assert!(said.contains("5 entries"), "{said}");
    let m2 = parse(&scrape(exporter.addr).await);
    assert_eq!(
        value(
            &m2,
            "clawmesh_exporter_prices_info",
            &[("currency", "EUR"), ("format", "clawmesh")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m2, "clawmesh_exporter_prices_info", &[("currency", "USD")]),
        None,
        "the old table's info stayed"
    );
    assert_eq!(
        value(&m2, "clawmesh_exporter_price_entries", &[]),
        Some(5.0)
    );

    run_fleet_for(&sim, 30).await;
    let m3 = converge(&sim, &exporter).await;
    assert_eq!(
        key_checks(&m3, &ws),
        key_checks(&m1, &ws),
        "the workspace restarted for a new price table (its key was checked again)"
    );
    assert_none_went_down(
        &m1,
        &m3,
        &[
            "clawmesh_api_requests_total",
            "clawmesh_tasks_finished_total",
            "clawmesh_task_tokens_total",
            "clawmesh_task_spend_total",
        ],
    );
    assert_eq!(
        delta(&counters_of_exporter(&m3), &start),
        delta(&counters_of_truth(&sim.truth()), &truth_start),
        "counters since the start (left), truth (right)"
    );
    exporter.shutdown().await;
}

/// Waits for the prices merge (`Money::parse_decimal`) and the fleet's
/// budget families. A reload that changes one workspace's budget restarts
/// that workspace alone (the other, unchanged, keeps running: no new key
/// check), its new budget is served, and neither loses a count: the
/// counters since the start equal each simulator's truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_change_restarts_only_its_workspace_and_loses_no_count() {
    let (sa, sb) = (
        workspace_sim("ws_spend_a", 63).await,
        workspace_sim("ws_spend_b", 64).await,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prices.yaml"), table("USD", "")).unwrap();
    let file = write_config(dir.path(), &[("a", &sa, "100"), ("b", &sb, "100")]);
    let exporter = start_from_file(file).await;
    let_the_start_pass(&sa, &exporter).await;
    let_the_start_pass(&sb, &exporter).await;
    let counters = |m: &BTreeMap<String, f64>, ws: &str| counters_of_exporter(&of_workspace(m, ws));
    let (ma, mb) = (
        converge(&sa, &exporter).await,
        converge(&sb, &exporter).await,
    );
    let start_a = (counters(&ma, "ws_spend_a"), counters_of_truth(&sa.truth()));
    let start_b = (counters(&mb, "ws_spend_b"), counters_of_truth(&sb.truth()));
    // Until the first slot of a has made many requests: its successor,
    // with a client of its own, starts counting them from zero.
    let before = std::sync::Mutex::new(BTreeMap::new());
    wait_for(
        Duration::from_secs(60),
        "50 requests of the first slot of a",
        || async {
            sa.sim.resume();
            sb.sim.resume();
            let m = parse(&scrape(exporter.addr).await);
            let enough = requests(&m, "ws_spend_a", &[]) >= 50.0;
            *before.lock().unwrap() = m;
            enough
        },
    )
    .await;
    let before = before.into_inner().unwrap();
    let amount = |m: &BTreeMap<String, f64>, ws: &str| {
        value(
            m,
            "clawmesh_budget_amount",
            &[("workspace", ws), ("budget", "total"), ("period", "month")],
        )
    };
    assert_eq!(amount(&before, "ws_spend_a"), Some(100.0));

    write_config(dir.path(), &[("a", &sa, "250.5"), ("b", &sb, "100")]);
    let said = exporter
        .reload()
        .await
        .unwrap_or_else(|e| panic!("reload refused: {e}"));
    assert!(
        said.contains("1 workspace(s) kept, 1 stopped, 1 started"),
        "{said}"
    );
    let restarted = std::sync::Mutex::new(BTreeMap::new());
    wait_for(
        Duration::from_secs(60),
        "the restarted workspace to serve its new budget",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            let done = amount(&m, "ws_spend_a") == Some(250.5);
            *restarted.lock().unwrap() = m;
            done
        },
    )
    .await;
    let restarted = restarted.into_inner().unwrap();
    assert!(
        requests(&restarted, "ws_spend_a", &[]) < requests(&before, "ws_spend_a", &[]),
        "the workspace whose budget changed did not restart (its client's counts went on)"
    );
    run_fleet_for(&sa, 10).await;
    run_fleet_for(&sb, 10).await;
    let (ma, mb) = (
        converge(&sa, &exporter).await,
        converge(&sb, &exporter).await,
    );
    assert_eq!(
        key_checks(&mb, "ws_spend_b"),
        key_checks(&before, "ws_spend_b"),
        "the workspace whose budget did not change restarted"
    );
    assert_eq!(amount(&mb, "ws_spend_b"), Some(100.0));
    for (ws, m, (start, truth_start), sim) in [
        ("ws_spend_a", &ma, &start_a, &sa),
        ("ws_spend_b", &mb, &start_b, &sb),
    ] {
        assert_eq!(
            delta(&counters(m, ws), start),
            delta(&counters_of_truth(&sim.truth()), truth_start),
            "{ws}: counters since the start (left), truth (right)"
        );
    }
    exporter.shutdown().await;
}
