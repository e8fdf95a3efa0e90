//! The ClawMesh JSON as the exporter reads it: only the fields it uses.
//! Unknown fields are skipped by serde without being kept, so a 256 KiB
//! `instructions` costs parse time but no memory.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// An instant in microseconds since the Unix epoch, as the API gives it
/// (RFC 3339, UTC, 0 to 6 fractional digits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const MICROS_PER_SEC: i64 = 1_000_000;

    pub fn from_micros(us: i64) -> Self {
        Timestamp(us)
    }
    pub fn micros(self) -> i64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / Self::MICROS_PER_SEC as f64
    }
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_micros() as i64)
    }
    pub fn parse(s: &str) -> Option<Self> {
        let dt = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        Some(Timestamp(dt.timestamp_micros()))
    }
    pub fn saturating_sub(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_sub(d.as_micros() as i64))
    }
    pub fn saturating_add(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(d.as_micros() as i64))
    }
    /// RFC 3339 with all six fractional digits, for query parameters.
    pub fn to_rfc3339(self) -> String {
        let dt = chrono::DateTime::from_timestamp_micros(self.0).unwrap_or_default();
        dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 timestamp: {s:?}")))
    }
}

/// `GET /auth/token`.
#[derive(Debug, Clone, Deserialize)]
pub struct Token {
    pub id: String,
    pub workspace_id: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Agent {
    pub id: String,
    /// Kept as text: new statuses may appear at any time.
    pub status: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A task status. Statuses the contract does not name yet are kept by name
/// and treated as not terminal (a terminal status is promised never to change,
/// which we cannot know of one we have never seen).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    Other(String),
}

impl TaskStatus {
    pub fn from_name(s: &str) -> Self {
        match s {
            "pending" => TaskStatus::Pending,
            "running" => TaskStatus::Running,
            "completed" => TaskStatus::Completed,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            other => TaskStatus::Other(other.to_string()),
        }
    }
    pub fn name(&self) -> &str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Other(s) => s,
        }
    }
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl<'de> Deserialize<'de> for TaskStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(TaskStatus::from_name(&s))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TaskMetrics {
    #[serde(default)]
    pub queue_seconds: Option<f64>,
    #[serde(default)]
    pub run_seconds: Option<f64>,
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TaskError {
    #[serde(default)]
    pub code: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub id: String,
    pub status: TaskStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// Null or absent both mean "nothing known yet".
    #[serde(default, deserialize_with = "null_as_default")]
    pub metrics: TaskMetrics,
    #[serde(default)]
    pub error: Option<TaskError>,
    /// When the task entered its terminal status, from `transitions`
    /// (which never changes, unlike `updated_at`); kept alone, not the list.
    #[serde(
        default,
        rename = "transitions",
        deserialize_with = "terminal_transition_at"
    )]
    pub terminal_at: Option<Timestamp>,
}

impl Task {
    /// When the task finished: `finished_at`, else the time of its terminal
    /// transition, else (neither known) its `updated_at`.
    pub fn finished_time(&self) -> Timestamp {
        self.finished_at
            .or(self.terminal_at)
            .unwrap_or(self.updated_at)
    }
}

fn terminal_transition_at<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    #[derive(Deserialize)]
    struct Transition {
        status: TaskStatus,
        at: Timestamp,
    }
    let list = Option::<Vec<Transition>>::deserialize(d)?.unwrap_or_default();
    Ok(list
        .into_iter()
        .rev()
        .find(|t| t.status.is_terminal())
        .map(|t| t.at))
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One page of a listing.
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// `{"data": ...}` around a single object.
#[derive(Debug, Deserialize)]
pub struct Envelope<T> {
    pub data: T,
}

/// `{"error": {...}}`.
#[derive(Debug, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_with_0_to_6_fractional_digits() {
        let base = Timestamp::parse("2026-11-23T10:15:02Z").unwrap();
        for (s, us) in [
            ("2026-11-23T10:15:02.1Z", 100_000),
            ("2026-11-23T10:15:02.12Z", 120_000),
            ("2026-11-23T10:15:02.123Z", 123_000),
            ("2026-11-23T10:15:02.1234Z", 123_400),
            ("2026-11-23T10:15:02.12345Z", 123_450),
            ("2026-11-23T10:15:02.123456Z", 123_456),
        ] {
            assert_eq!(
                Timestamp::parse(s).unwrap().micros() - base.micros(),
                us,
                "{s}"
            );
        }
        let t = Timestamp::parse("2026-11-23T10:15:02.000007Z").unwrap();
        assert_eq!(Timestamp::parse(&t.to_rfc3339()), Some(t));
    }

    #[test]
    fn task_tolerates_nulls_unknown_fields_and_statuses() {
        let t: Task = serde_json::from_str(
            r#"{"id":"t1","agent_id":null,"status":"paused_for_review","created_at":"2026-11-23T10:15:02Z",
                "updated_at":"2026-11-23T10:15:02.5Z","started_at":null,"finished_at":null,
                "metrics":null,"error":null,"transitions":[],"instructions":"x","brand_new":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(t.status, TaskStatus::Other("paused_for_review".into()));
        assert!(!t.status.is_terminal());
        assert!(t.metrics.run_seconds.is_none());
    }

    #[test]
    fn a_terminal_task_without_finished_at_finishes_at_its_terminal_transition() {
        let t: Task = serde_json::from_str(
            r#"{"id":"t2","status":"completed","created_at":"2026-11-23T10:00:00Z",
                "updated_at":"2026-11-23T11:00:00Z","finished_at":null,
                "transitions":[{"status":"pending","at":"2026-11-23T10:00:00Z"},
                               {"status":"running","at":"2026-11-23T10:00:01Z"},
                               {"status":"completed","at":"2026-11-23T10:05:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(
            t.finished_time(),
            Timestamp::parse("2026-11-23T10:05:00Z").unwrap()
        );
    }
}
