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

/// A logfmt line as go-logfmt (the reader of Prometheus' own tooling)
/// decodes it, strictly: a bare value ends at a space and holds no `=` or
/// `"`; a quoted one takes JSON's escapes (`\n`, `\"`, `\\`, `\u001b`) and
/// no raw control character. `None` where go-logfmt would fail.
fn go_logfmt(line: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start_matches(|c: char| c <= ' ');
        if rest.is_empty() {
            return Some(out);
        }
        let end = rest.find(|c: char| c <= ' ' || c == '=')?;
        let key = &rest[..end];
        if key.is_empty() || key.contains('"') || !rest[end..].starts_with('=') {
            return None;
        }
        rest = &rest[end + 1..];
        let value = if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            loop {
                match chars.next()? {
                    (i, '"') => {
                        rest = &q[i + 1..];
                        break;
                    }
                    (_, '\\') => match chars.next()?.1 {
                        c @ ('"' | '\\' | '/') => v.push(c),
                        'b' => v.push('\u{8}'),
                        'f' => v.push('\u{c}'),
                        'n' => v.push('\n'),
                        'r' => v.push('\r'),
                        't' => v.push('\t'),
                        'u' => {
                            let hex: String = (0..4)
                                .map(|_| chars.next().map(|(_, c)| c))
                                .collect::<Option<_>>()?;
                            let unit = u32::from_str_radix(&hex, 16).ok()?;
                            v.push(char::from_u32(unit)?);
                        }
                        _ => return None,
                    },
                    (_, c) if c < ' ' => return None,
                    (_, c) => v.push(c),
                }
            }
            v
        } else {
            let end = rest.find(|c: char| c <= ' ').unwrap_or(rest.len());
            let v = &rest[..end];
            if v.contains(['=', '"']) {
                return None;
            }
            rest = &rest[end..];
            v.to_string()
        };
        out.push((key.to_string(), value));
    }
}

/// Where a line reader may break a line: `\n`, `\r`, and what Python's
/// `splitlines` and JavaScript also take for one (VT, FF, the file, group
/// and record separators, NEL, U+2028, U+2029).
fn breaks_a_line(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\u{b}'
            | '\u{c}'
            | '\u{1c}'
            | '\u{1d}'
            | '\u{1e}'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// `msg` and a field `v` written as one line in both formats, and read back
/// by a JSON parser and a strict logfmt parser to the same text.
fn assert_reads_back(msg: &str, v: &str) {
    use clawmesh_exporter::logging::{line, LogFormat, Value};
    let fields = vec![
        ("err".to_string(), Value::Str(v.to_string())),
        ("n".to_string(), Value::U64(7)),
    ];
    let ts = "2026-01-02T03:04:05.678Z";
    let j = line(LogFormat::Json, ts, "warn", Some("a.rs:1"), msg, &fields);
    assert!(!j.contains(breaks_a_line), "JSON line breaks: {j:?}");
    let p: serde_json::Value =
        serde_json::from_str(&j).unwrap_or_else(|e| panic!("not JSON ({e}): {j:?}"));
    assert_eq!(p["msg"], msg, "{j:?}");
    assert_eq!(p["err"], v, "{j:?}");
    assert_eq!(p["n"], 7, "{j:?}");
    let l = line(LogFormat::Logfmt, ts, "warn", Some("a.rs:1"), msg, &fields);
    assert!(!l.contains(breaks_a_line), "logfmt line breaks: {l:?}");
    let f = go_logfmt(&l).unwrap_or_else(|| panic!("go-logfmt cannot read {l:?}"));
    let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["ts", "level", "caller", "msg", "err", "n"], "{l:?}");
    assert_eq!(f[3].1, msg, "{l:?}");
    assert_eq!(f[4].1, v, "{l:?}");
}

/// Text from upstreams (API error messages, collector replies, ids, paths)
/// as an attacker or a broken proxy would write it.
const HOSTILE: [&str; 14] = [
    "line one\nts=2026-01-01T00:00:00Z level=error msg=forged",
    "cr\rlf\r\n",
    "\u{1b}[31mred\u{1b}[0m \u{1b}]0;title\u{7}",
    r#"quote " and backslash \ and \" and \\n"#,
    "a=b c=\"d\"",
    "=",
    "",
    " leading and trailing ",
    "nul\u{0} del\u{7f} nel\u{85} c1\u{9b}",
    "line\u{2028}separator\u{2029}paragraph",
    "vt\u{b} ff\u{c} fs\u{1c} gs\u{1d} rs\u{1e}",
    "repaired \u{fffd}\u{fffd} bytes",
    "astral \u{1f980} and bom \u{feff}",
    r"C:\temp\clawmesh.yml",
];

#[test]
fn hostile_texts_stay_one_line_that_logfmt_and_json_read_back() {
    for t in HOSTILE {
        assert_reads_back(t, t);
        assert_reads_back("fixed", t);
    }
    let huge = "x\"\n".repeat(100_000);
    assert_reads_back(&huge, &huge);
}

proptest::proptest! {
    #[test]
    fn any_text_stays_one_line_that_logfmt_and_json_read_back(msg in proptest::prelude::any::<String>(), v in proptest::prelude::any::<String>()) {
        assert_reads_back(&msg, &v);
    }
}

/// An upstream whose every answer is `status` with `body`: a hostile API
/// the simulator cannot play (it writes only sane error messages).
async fn answering(status: u16, body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 {status} Hostile\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/v1")
}

/// An API error message with a forged log line, ANSI escapes, quotes and
/// line separators reaches the log (the operator must see what the API
/// said) as one line of the chosen format, read back to the same text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_message_is_one_line_read_back_in_both_formats() {
    let message = "no\nts=2026-01-01T00:00:00Z level=error msg=forged \u{1b}[2J\u{1b}[31mred\u{1b}[0m \"q\" a=b back\\slash \u{85}nel \u{2028}ls \u{7f}";
    let body = serde_json::json!({"error": {"code": "conflict", "message": message, "request_id": "req_1"}});
    let api = answering(409, body.to_string()).await;
    for format in ["json", "logfmt"] {
        let exporter = Running::start(
            &api,
            &[&format!("--log.format={format}"), "--api.max-attempts", "1"],
        );
        exporter
            .wait_for_line("the key check to fail", "cannot check the API key yet")
            .await;
        let (_, lines) = exporter.stop();
        let mut seen = 0;
        for l in &lines {
            let (msg, err) = if format == "json" {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{format}: not JSON ({e}): {l:?}"));
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                (s("msg"), s("error"))
            } else {
                let f = go_logfmt(l).unwrap_or_else(|| panic!("{format}: not logfmt: {l:?}"));
                assert_eq!(f[0].0, "ts", "{format}: a line of its own: {l:?}");
                let s = |k: &str| {
                    f.iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                (s("msg"), s("error"))
            };
            assert!(!l.contains(breaks_a_line), "{format}: {l:?}");
            if msg.starts_with("cannot check the API key yet") {
                assert!(
                    err.contains(&format!("(409 conflict: {message}, request req_1)")),
                    "{format}: the API's message, read back as it was: {err:?}"
                );
                seen += 1;
            }
        }
        assert!(seen >= 1, "{format}: {lines:?}");
    }
}

/// `--log.level` keeps this crate's lines at or above it, as the filter
/// `warn,clawmesh_exporter=LEVEL` always did: at warn a failing key check
/// shows and "serving metrics" (info) does not; at error neither does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_keeps_the_lines_at_or_above_it() {
    // Nothing listens there: the key check fails, a warning each time.
    let api = format!("http://127.0.0.1:{}/v1", free_port());
    let exporter = Running::start(&api, &["--log.level=warn", "--api.max-attempts", "1"]);
    exporter
        .wait_for_line("the key check to fail", "cannot check the API key yet")
        .await;
    let (_, lines) = exporter.stop();
    for l in &lines {
        let f = logfmt(l).unwrap_or_else(|| panic!("not logfmt: {l}"));
        assert!(
            ["warn", "error"].contains(&f[1].1.as_str()),
            "below --log.level=warn: {l}"
        );
    }
    let exporter = Running::start(&api, &["--log.level=error", "--api.max-attempts", "1"]);
    let metrics = format!("{}/metrics", exporter.url);
    // The key check failed at least twice: each was a warning.
    wait_for(Duration::from_secs(60), "two failed key checks", || async {
        let Ok(r) = reqwest::get(&metrics).await else {
            return false;
        };
        let text = r.text().await.unwrap_or_default();
        parse(&text).iter().any(|(k, v)| {
            k.starts_with("clawmesh_api_requests_total{") && k.contains("/auth/token") && *v >= 2.0
        })
    })
    .await;
    let (_, lines) = exporter.stop();
    assert!(lines.is_empty(), "below --log.level=error: {lines:?}");
}
