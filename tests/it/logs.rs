//! Log lines as a Prometheus user expects them: `ts`, `level`, `caller`,
//! `msg`, then the fields, in logfmt and JSON alike; a fatal error in the
//! chosen format; the flags' workspace named in a log line as its metrics
//! name it. The real binary, run as a user would run it.

use crate::util::*;
use clawmesh_exporter::sim::DEMO_KEY;
use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The exporter, its stderr lines as they come.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
    url: String,
}

impl Running {
    fn start(api_url: &str, extra: &[&str]) -> Running {
        let port = free_port();
        let mut child = bin()
            .env("CLAWMESH_API_KEY", DEMO_KEY)
            .args(["--api-url", api_url, "--poll-interval", "1s"])
            .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(l);
            }
        });
        Running {
            child,
            lines,
            reader,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for_line(&self, what: &str, needle: &str) -> String {
        wait_for(Duration::from_secs(60), what, || async {
            self.lines().iter().any(|l| l.contains(needle))
        })
        .await;
        self.lines()
            .into_iter()
            .find(|l| l.contains(needle))
            .unwrap()
    }

    /// SIGTERM and the exit code; every line is read by then.
    fn stop(mut self) -> (Option<i32>, Vec<String>) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let code = self.child.wait().unwrap().code();
        // The reader ends at EOF, when the exporter has exited.
        self.reader.join().unwrap();
        let got = self.lines.lock().unwrap().clone();
        (code, got)
    }
}

/// `2026-12-06T13:29:57.637Z`: RFC 3339, milliseconds, UTC.
fn assert_ts(ts: &str, line: &str) {
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok()
            && ts.len() == 24
            && ts.as_bytes()[19] == b'.'
            && ts.ends_with('Z'),
        "ts {ts:?} is not RFC 3339 with milliseconds in UTC: {line}"
    );
}

fn assert_caller(caller: &str, line: &str) {
    let (file, n) = caller.rsplit_once(':').unwrap_or(("", ""));
    assert!(
        file.ends_with(".rs") && n.parse::<u32>().is_ok(),
        "caller {caller:?} is not file:line: {line}"
    );
}

const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_parse_and_start_with_ts_level_caller_msg() {
    let sim = Sim::start(busy_fleet(41)).await;
    let exporter = Running::start(&sim.url(), &["--log.format=json", "--log.level=debug"]);
    let accepted = exporter
        .wait_for_line("the key to be accepted", "API key accepted")
        .await;
    let (_, lines) = exporter.stop();
    assert!(lines.len() >= 2, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(l.starts_with(r#"{"ts":""#), "ts is not the first key: {l}");
        assert_ts(v["ts"].as_str().unwrap(), l);
        assert!(LEVELS.contains(&v["level"].as_str().unwrap_or("")), "{l}");
        assert_caller(v["caller"].as_str().unwrap_or(""), l);
        assert!(v["msg"].is_string(), "{l}");
        for old in ["timestamp", "message", "fields", "target"] {
            assert!(v.get(old).is_none(), "old key {old}: {l}");
        }
        // The order a reader sees: ts, level, caller, msg, then the fields.
        let at = |k: &str| l.find(&format!("\"{k}\":")).unwrap();
        assert!(
            at("ts") < at("level") && at("level") < at("caller") && at("caller") < at("msg"),
            "{l}"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&accepted).unwrap();
    assert_eq!(v["msg"], "API key accepted", "{accepted}");
    assert_eq!(v["level"], "info", "{accepted}");
    assert_eq!(
        v["workspace"], "ws_sim",
        "the fields follow, by name: {accepted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logfmt_lines_start_with_ts_level_caller_msg() {
    let sim = Sim::start(busy_fleet(42)).await;
    let exporter = Running::start(&sim.url(), &["--log.level=debug"]);
    let accepted = exporter
        .wait_for_line("the key to be accepted", "API key accepted")
        .await;
    let (_, lines) = exporter.stop();
    assert!(lines.len() >= 2, "{lines:?}");
    for l in &lines {
        let f = logfmt(l).unwrap_or_else(|| panic!("not logfmt: {l}"));
        let keys: Vec<&str> = f.iter().take(4).map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["ts", "level", "caller", "msg"], "{l}");
        assert_ts(&f[0].1, l);
        assert!(LEVELS.contains(&f[1].1.as_str()), "{l}");
        assert_caller(&f[2].1, l);
    }
    let f = logfmt(&accepted).unwrap();
    assert_eq!(
        f[3],
        ("msg".to_string(), "API key accepted".to_string()),
        "{accepted}"
    );
    assert!(
        f.contains(&("workspace".to_string(), "ws_sim".to_string())),
        "the fields follow, by name: {accepted}"
    );
    assert!(
        accepted.contains(r#" msg="API key accepted" workspace=ws_sim "#),
        "{accepted}"
    );
}

#[test]
fn a_bad_config_file_under_json_logging_is_one_json_line_and_exit_code_2() {
    let dir = temp_dir("logs-bad-config");
    let file = dir.join("clawmesh.yml");
    std::fs::write(&file, "workspaces: [\n").unwrap();
    for (what, args, needle) in [
        (
            "a config file that is not YAML",
            vec!["--config.file", file.to_str().unwrap()],
            file.to_str().unwrap(),
        ),
        ("no API key", vec![], "CLAWMESH_API_KEY"),
    ] {
        let out = bin().arg("--log.format=json").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
        let v: serde_json::Value = serde_json::from_str(err.trim_end())
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {err}"));
        assert_eq!(v["level"], "error", "{what}: {err}");
        assert_ts(v["ts"].as_str().unwrap_or(""), &err);
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {err}"
        );
        assert!(
            v["err"].as_str().unwrap_or("").contains(needle),
            "{what}: {err}"
        );
    }
    // The same failure under logfmt (the default) is one logfmt line.
    let out = bin()
        .args(["--config.file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ts=") && err.contains(" level=error caller="),
        "{err}"
    );
}

/// The flags' one workspace, before its key check tells the id: the log
/// line and `clawmesh_up` give it the same `workspace` value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flags_workspace_is_named_alike_in_logs_and_metrics() {
    // Nothing listens there: the key check keeps failing, not fatally.
    let api = format!("http://127.0.0.1:{}/v1", free_port());
    let exporter = Running::start(&api, &["--log.format=json", "--api.max-attempts", "1"]);
    let line = exporter
        .wait_for_line("the key check to fail", "cannot check the API key yet")
        .await;
    let metrics = reqwest::get(format!("{}/metrics", exporter.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    exporter.stop();
    let labelled: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("clawmesh_up{workspace=\""))
        .filter_map(|rest| rest.split_once('"').map(|(w, _)| w))
        .collect();
    assert_eq!(labelled.len(), 1, "{metrics}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["workspace"], labelled[0],
        "log {line}\nmetric {labelled:?}"
    );
}
