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
            .map(|(k, v)| format!("{k}={}", logfmt_value(&v.text())))
            .collect::<Vec<_>>()
            .join(" "),
        LogFormat::Json => {
            let parts: Vec<String> = all
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Str(s) => serde_json::Value::from(s.as_str()),
                        Value::I64(n) => serde_json::Value::from(*n),
                        Value::U64(n) => serde_json::Value::from(*n),
                        // NaN and the infinities are no JSON numbers.
                        Value::F64(n) if n.is_finite() => serde_json::Value::from(*n),
                        Value::F64(n) => serde_json::Value::from(n.to_string()),
                        Value::Bool(b) => serde_json::Value::from(*b),
                    };
                    format!("{}:{v}", serde_json::Value::from(k.as_str()))
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
    }
}

/// A logfmt value: bare when it can be, else quoted with `"`, `\` and
/// control characters escaped, so that one event stays one line.
fn logfmt_value(v: &str) -> String {
    let bare = !v.is_empty()
        && !v
            .chars()
            .any(|c| c <= ' ' || c == '=' || c == '"' || c.is_control());
    if bare {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
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

struct Lines {
    format: LogFormat,
}

#[derive(Default)]
struct Fields {
    msg: String,
    fields: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, v: Value) {
        if field.name() == "message" {
            self.msg = v.text();
        } else if field.name().starts_with("log.") {
            // What tracing-log adds to a dependency's `log` record: its
            // target, module, file and line, already in `caller`.
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
        let caller = meta.file().zip(meta.line()).map(|(f, l)| caller(f, l));
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
}
