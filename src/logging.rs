//! Log lines as Prometheus and its exporters write them: `ts` (RFC 3339,
//! milliseconds, UTC), `level`, `caller` (file:line), `msg`, then the
//! event's own fields, in logfmt or in JSON with the same keys, one line per
//! event on stderr. A log pipeline built for Prometheus reads ours unchanged.
//!
//! A leaf: imports nothing of the crate. `main.rs` sets it up before anything
//! can fail, so that a fatal error is a line in the chosen format too.

use std::io::Write as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// `--log.format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// `--log.level`: the level of this crate's lines; dependencies log one
/// notch quieter (warnings and errors only).
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Sends every `tracing` event of the process to stderr as one line. Once
/// per process; a second call changes nothing.
pub fn init(level: LogLevel, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::new(format!("warn,clawmesh_exporter={}", level.name()));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(Lines { format })
        .try_init();
}

/// One field's value, kept typed so that JSON shows numbers as numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::I64(n) => n.to_string(),
            Value::U64(n) => n.to_string(),
            Value::F64(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
        }
    }
}

/// The keys every line starts with; an event field of the same name would
/// make the line ambiguous, so it is written with a `field_` prefix.
const RESERVED: [&str; 4] = ["ts", "level", "caller", "msg"];

/// One log line (without its newline): `ts`, `level`, `caller` (left out
/// when unknown), `msg`, then `fields` in their order.
pub fn line(
    format: LogFormat,
    ts: &str,
    level: &str,
    caller: Option<&str>,
    msg: &str,
    fields: &[(String, Value)],
) -> String {
    let mut all: Vec<(String, Value)> = Vec::with_capacity(fields.len() + 4);
    all.push(("ts".into(), Value::Str(ts.into())));
    all.push(("level".into(), Value::Str(level.into())));
    if let Some(c) = caller {
        all.push(("caller".into(), Value::Str(c.into())));
    }
    all.push(("msg".into(), Value::Str(msg.into())));
    for (k, v) in fields {
        let k = if RESERVED.contains(&k.as_str()) {
            format!("field_{k}")
        } else {
            k.clone()
        };
        all.push((k, v.clone()));
    }
    match format {
        LogFormat::Logfmt => all
            .iter()
            .map(|(k, v)| format!("{}={}", logfmt_key(k), logfmt_value(&v.text())))
            .collect::<Vec<_>>()
            .join(" "),
        LogFormat::Json => {
            let mut out = String::from("{");
            for (i, (k, v)) in all.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_str(&mut out, k);
                out.push(':');
                match v {
                    Value::Str(s) => json_str(&mut out, s),
                    Value::I64(n) => out.push_str(&n.to_string()),
                    Value::U64(n) => out.push_str(&n.to_string()),
                    // NaN and the infinities are no JSON numbers.
                    Value::F64(n) if n.is_finite() => {
                        out.push_str(&serde_json::Value::from(*n).to_string())
                    }
                    Value::F64(n) => json_str(&mut out, &n.to_string()),
                    Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                }
            }
            out.push('}');
            out
        }
    }
}

/// Characters written as `\uXXXX` in both formats, quoted in logfmt: the
/// control characters (C0, DEL, C1: a newline, a carriage return, an ANSI
/// escape sequence from an upstream's text) and the Unicode line and
/// paragraph separators, which some line readers split on (Python's
/// `splitlines`, JavaScript). One event stays one line for every reader.
fn escaped(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `c` escaped as logfmt (go-logfmt) and JSON both read it back.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        // All of them are in the Basic Multilingual Plane: four digits.
        c if escaped(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push(c),
    }
}

/// A JSON string: valid JSON for every Rust string (they hold no lone
/// surrogate), and one line.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        push_escaped(out, c);
    }
    out.push('"');
}

/// A logfmt key: a field name is the code's, but one with a space, `=` or
/// `"` would break the line, so those become `_`.
fn logfmt_key(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c <= ' ' || c == '=' || c == '"' || escaped(c) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// A logfmt value: bare when it can be, else quoted with `"`, `\` and
/// control characters escaped (`\n`, `\u001b`: go-logfmt's and JSON's
/// escapes), so that one event stays one line that a logfmt parser reads
/// back to the same text.
fn logfmt_value(v: &str) -> String {
    let bare = !v.is_empty()
        && !v
            .chars()
            .any(|c| c <= ' ' || c == '=' || c == '"' || escaped(c));
    if bare {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        push_escaped(&mut out, c);
    }
    out.push('"');
    out
}

/// `src/poll/mod.rs` and line 12 as `poll/mod.rs:12`; a dependency's
/// absolute path from its own `src/` on.
fn caller(file: &str, line: u32) -> String {
    let short = file
        .rsplit_once("/src/")
        .map(|(_, rest)| rest)
        .or_else(|| file.strip_prefix("src/"))
        .unwrap_or(file);
    format!("{short}:{line}")
}

/// Where an event comes from: its own metadata's file and line, else (a
/// dependency's `log` record, whose metadata has none) the file and line
/// tracing-log put in its fields; `None` when neither says.
fn caller_of(meta: Option<(&str, u32)>, log: Option<(&str, u64)>) -> Option<String> {
    match (meta, log) {
        (Some((file, line)), _) => Some(caller(file, line)),
        (None, Some((file, line))) => Some(caller(file, u32::try_from(line).unwrap_or(u32::MAX))),
        (None, None) => None,
    }
}

struct Lines {
    format: LogFormat,
}

#[derive(Default)]
struct Fields {
    msg: String,
    fields: Vec<(String, Value)>,
    /// A dependency's `log` record (through tracing-log) carries its file
    /// and line as fields; its metadata has none.
    log_file: Option<String>,
    log_line: Option<u64>,
}

impl Fields {
    fn put(&mut self, field: &Field, v: Value) {
        if field.name() == "message" {
            self.msg = v.text();
        } else if field.name() == "log.file" {
            self.log_file = Some(v.text());
        } else if field.name() == "log.line" {
            self.log_line = match v {
                Value::U64(n) => Some(n),
                Value::I64(n) => u64::try_from(n).ok(),
                _ => v.text().parse().ok(),
            };
        } else if field.name().starts_with("log.") {
            // The rest of what tracing-log adds to a dependency's `log`
            // record (target, module): `caller` says where it came from.
        } else {
            self.fields.push((field.name().to_string(), v));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::Str(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::Str(value.to_string()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
}

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let level = meta.level().as_str().to_ascii_lowercase();
        let caller = caller_of(
            meta.file().zip(meta.line()),
            f.log_file.as_deref().zip(f.log_line),
        );
        let mut text = line(
            self.format,
            &ts,
            &level,
            caller.as_deref(),
            &f.msg,
            &f.fields,
        );
        text.push('\n');
        // One write per line, so that lines of concurrent events never
        // interleave; a closed stderr loses the line and nothing else.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<(String, Value)> {
        vec![
            ("workspace".into(), Value::Str("ws 1".into())),
            ("n".into(), Value::U64(3)),
            ("ratio".into(), Value::F64(f64::NAN)),
            ("msg".into(), Value::Bool(true)),
        ]
    }

    #[test]
    fn logfmt_lines_start_with_prometheus_keys_and_quote_what_needs_it() {
        let l = line(
            LogFormat::Logfmt,
            "2026-01-02T03:04:05.678Z",
            "warn",
            Some("poll/mod.rs:12"),
            "sync failed; \"keeping\" a=b\nnext",
            &fields(),
        );
        assert_eq!(
            l,
            r#"ts=2026-01-02T03:04:05.678Z level=warn caller=poll/mod.rs:12 msg="sync failed; \"keeping\" a=b\nnext" workspace="ws 1" n=3 ratio=NaN field_msg=true"#
        );
        assert_eq!(logfmt_value(""), r#""""#);
    }

    #[test]
    fn json_lines_have_the_same_keys_in_the_same_order_and_typed_values() {
        let l = line(
            LogFormat::Json,
            "2026-01-02T03:04:05.678Z",
            "error",
            None,
            "cannot start",
            &fields(),
        );
        assert_eq!(
            l,
            r#"{"ts":"2026-01-02T03:04:05.678Z","level":"error","msg":"cannot start","workspace":"ws 1","n":3,"ratio":"NaN","field_msg":true}"#
        );
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["n"], 3);
    }

    #[test]
    fn caller_is_the_path_from_src() {
        assert_eq!(caller("src/poll/mod.rs", 7), "poll/mod.rs:7");
        assert_eq!(
            caller("/home/u/.cargo/registry/src/x/hyper-1/src/proto/h1.rs", 9),
            "proto/h1.rs:9"
        );
        assert_eq!(caller("main.rs", 1), "main.rs:1");
    }

    #[test]
    fn a_field_name_that_would_break_logfmt_is_written_with_underscores() {
        let fields = vec![("odd key=\"x\"\n".to_string(), Value::I64(-1))];
        let l = line(LogFormat::Logfmt, "t", "info", None, "m", &fields);
        assert_eq!(l, "ts=t level=info msg=m odd_key__x__=-1");
    }

    #[test]
    fn a_dependencys_log_record_has_a_caller_from_its_fields() {
        let rustls = "/r/.cargo/registry/src/i/rustls-0.23.1/src/common_state.rs";
        assert_eq!(
            caller_of(None, Some((rustls, 42))).as_deref(),
            Some("common_state.rs:42")
        );
        assert_eq!(
            caller_of(Some(("src/hub.rs", 3)), Some((rustls, 42))).as_deref(),
            Some("hub.rs:3")
        );
        assert_eq!(caller_of(None, None), None);
    }
}
