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
    /// The host's clock. Only for what is compared with the host's clock
    /// (health timestamps, the webhook replay window); anything compared
    /// with an API timestamp takes `Client::api_time` instead.
    pub fn host_now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_micros() as i64)
    }
    pub fn parse(s: &str) -> Option<Self> {
        let dt = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        Some(Timestamp(dt.timestamp_micros()))
    }
    /// A duration's microseconds as an i64, saturating: `as` would keep
    /// the low 64 bits of a longer one (300000 years wraps negative).
    fn duration_micros(d: std::time::Duration) -> i64 {
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
    }
    pub fn saturating_sub(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_sub(Self::duration_micros(d)))
    }
    pub fn saturating_add(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(Self::duration_micros(d)))
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
/// The longest id, status or code kept as the API sent it (bytes). Each
/// becomes a label value or a map key held for hours: 25 agents with 1 MB
/// status names once made a 21 MB exposition. Longer ids are kept as their
/// digest (still one identity each), longer names as "other".
pub const MAX_TEXT_LEN: usize = 128;

/// `s`, or when longer than [`MAX_TEXT_LEN`] its SHA-256 ("sha256:<hex>",
/// 71 bytes): the same long id always maps to the same short one.
pub fn bound_id(s: &str) -> String {
    if s.len() <= MAX_TEXT_LEN {
        return s.to_string();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `s`, or "other" when longer than [`MAX_TEXT_LEN`] (the name the label
/// bounds give every name they do not admit).
pub fn bound_name(s: &str) -> String {
    if s.len() <= MAX_TEXT_LEN {
        s.to_string()
    } else {
        "other".to_string()
    }
}

fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(bound_id(&<std::borrow::Cow<'de, str>>::deserialize(d)?))
}

fn lenient_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_str().filter(|s| !s.is_empty()).map(bound_id))
}

fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(bound_name(&<std::borrow::Cow<'de, str>>::deserialize(d)?))
}

/// The most scopes of a key kept (the contract names four); the rest are
/// not ours to check, and all of them go into one log line.
pub const MAX_SCOPES: usize = 32;

fn de_scopes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let all = <Vec<std::borrow::Cow<'de, str>>>::deserialize(d)?;
    Ok(all.iter().take(MAX_SCOPES).map(|s| bound_name(s)).collect())
}

#[derive(Debug, Clone, Deserialize)]
pub struct Token {
    #[serde(deserialize_with = "de_id")]
    pub id: String,
    /// The `workspace` label of every series: bounded like any id.
    #[serde(deserialize_with = "de_id")]
    pub workspace_id: String,
    #[serde(deserialize_with = "de_scopes")]
    pub scopes: Vec<String>,
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Agent {
    #[serde(deserialize_with = "de_id")]
    pub id: String,
    /// Kept as text: new statuses may appear at any time.
    #[serde(deserialize_with = "de_name")]
    pub status: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Null until the agent first runs; a value that is not a timestamp
    /// reads as null rather than failing the page.
    #[serde(default, deserialize_with = "lenient_timestamp")]
    pub last_heartbeat_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "de_labels")]
    pub labels: Labels,
    #[serde(default, deserialize_with = "de_config")]
    pub config: AgentConfig,
    /// Some text of it was not Unicode (a lone UTF-16 surrogate escape,
    /// invalid UTF-8) and reads with U+FFFD in its place.
    #[serde(skip)]
    pub text_repaired: bool,
}

/// The part of an agent's `config` the breakdowns read.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    pub model_provider: Option<String>,
    pub model: Option<String>,
}

/// The most labels of one object kept (the rest are read and dropped):
/// a breakdown reads a handful, and a hostile object must not cost more
/// than a bounded map.
pub const MAX_LABELS: usize = 64;

/// An object's `labels`, sorted by key: at most [`MAX_LABELS`] entries,
/// keys longer than [`MAX_TEXT_LEN`] dropped, values bounded like names.
pub type Labels = Vec<(String, String)>;

fn de_labels<'de, D: Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
    // Anything but an object of strings (null, a list, numbers) is read as
    // what it can mean: no labels, or only its string entries.
    let serde_json::Value::Object(m) = serde_json::Value::deserialize(d)? else {
        return Ok(Vec::new());
    };
    // serde_json's map is sorted by key.
    Ok(m.iter()
        .filter(|(k, _)| !k.is_empty() && k.len() <= MAX_TEXT_LEN)
        .filter_map(|(k, v)| Some((k.clone(), bound_name(v.as_str()?))))
        .take(MAX_LABELS)
        .collect())
}

fn de_config<'de, D: Deserializer<'de>>(d: D) -> Result<AgentConfig, D::Error> {
    // A config that is not an object reads as empty: the page stands.
    let v = serde_json::Value::deserialize(d)?;
    let name = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(bound_name)
    };
    Ok(AgentConfig {
        model_provider: name("model_provider"),
        model: name("model"),
    })
}

fn lenient_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_str().and_then(Timestamp::parse))
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
        Ok(TaskStatus::from_name(&bound_name(&s)))
    }
}

/// A task's `metrics`, every field null until known. A value the contract
/// cannot mean (a negative or non-integral count, a negative duration, a
/// string) is taken as unknown and flagged in `invalid`: one bad field
/// must neither fail the whole page nor reach a counter.
#[derive(Debug, Clone, Default)]
pub struct TaskMetrics {
    pub queue_seconds: Option<f64>,
    pub run_seconds: Option<f64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Some field held a value that is not a valid one.
    pub invalid: bool,
}

impl<'de> Deserialize<'de> for TaskMetrics {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Raw {
            queue_seconds: Lenient<Seconds>,
            run_seconds: Lenient<Seconds>,
            input_tokens: Lenient<u64>,
            output_tokens: Lenient<u64>,
        }
        let r = Raw::deserialize(d)?;
        Ok(TaskMetrics {
            invalid: [
                r.queue_seconds.is_invalid(),
                r.run_seconds.is_invalid(),
                r.input_tokens.is_invalid(),
                r.output_tokens.is_invalid(),
            ]
            .contains(&true),
            queue_seconds: r.queue_seconds.value().map(|s| s.0),
            run_seconds: r.run_seconds.value().map(|s| s.0),
            input_tokens: r.input_tokens.value(),
            output_tokens: r.output_tokens.value(),
        })
    }
}

/// A duration in seconds: finite and not negative.
#[derive(Debug, Clone, Copy)]
struct Seconds(f64);

/// A JSON value read without failing: null, a valid `T`, or anything else.
#[derive(Debug, Clone, Copy, Default)]
enum Lenient<T> {
    #[default]
    Null,
    Valid(T),
    Invalid,
}

impl<T: Copy> Lenient<T> {
    fn value(&self) -> Option<T> {
        match self {
            Lenient::Valid(v) => Some(*v),
            _ => None,
        }
    }
    fn is_invalid(&self) -> bool {
        matches!(self, Lenient::Invalid)
    }
}

/// How the text of a JSON number becomes a `T`, or does not.
trait FromNumber: Sized {
    fn from_number(text: &str) -> Option<Self>;
}

impl FromNumber for u64 {
    fn from_number(text: &str) -> Option<Self> {
        text.parse::<u64>().ok().or_else(|| {
            // 7.0 or 1e3 are whole numbers too; 2^64 and beyond, negative
            // or fractional ones are not counts.
            let v: f64 = text.parse().ok()?;
            (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 18_446_744_073_709_551_616.0)
                .then_some(v as u64)
        })
    }
}

impl FromNumber for Seconds {
    fn from_number(text: &str) -> Option<Self> {
        // Out of f64's range (1e400) parses as infinite: not a duration.
        let v: f64 = text.parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(Seconds(v))
    }
}

impl<'de, T: FromNumber> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // As raw text: serde_json would refuse a number out of f64's range
        // before any visitor saw it, failing the whole page.
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        let text = raw.get().trim();
        Ok(if text == "null" {
            Lenient::Null
        } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            T::from_number(text).map_or(Lenient::Invalid, Lenient::Valid)
        } else {
            Lenient::Invalid
        })
    }
}

/// A failed task's `error`: only its code is read. Anything but a string
/// code (absent, null, a number) is "not known yet".
#[derive(Debug, Clone, Default)]
pub struct TaskError {
    pub code: Option<String>,
}

impl<'de> Deserialize<'de> for TaskError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(TaskError {
            code: v
                .get("code")
                .and_then(|c| c.as_str())
                .filter(|c| !c.is_empty())
                .map(bound_name),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    #[serde(deserialize_with = "de_id")]
    pub id: String,
    /// Null while a pending task is not yet assigned.
    #[serde(default, deserialize_with = "lenient_id")]
    pub agent_id: Option<String>,
    #[serde(default, deserialize_with = "de_labels")]
    pub labels: Labels,
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
    /// What `transitions` says (it only grows, unlike `updated_at`); kept
    /// as a summary, not the list.
    #[serde(default, deserialize_with = "null_as_default")]
    pub transitions: Transitions,
    /// Some text of it was not Unicode (a lone UTF-16 surrogate escape,
    /// invalid UTF-8) and reads with U+FFFD in its place.
    #[serde(skip)]
    pub text_repaired: bool,
}

/// The summary of a task's `transitions` the exporter uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transitions {
    /// How many: a copy with more is further along.
    pub count: u32,
    /// When the task first ran.
    pub running_at: Option<Timestamp>,
    /// When it entered its (last) terminal status.
    pub terminal_at: Option<Timestamp>,
    /// The latest `at` of any transition.
    pub latest_at: Option<Timestamp>,
}

impl<'de> Deserialize<'de> for Transitions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Transition {
            status: TaskStatus,
            at: Timestamp,
        }
        let mut out = Transitions::default();
        for t in Vec::<Transition>::deserialize(d)? {
            out.count = out.count.saturating_add(1);
            if t.status == TaskStatus::Running && out.running_at.is_none() {
                out.running_at = Some(t.at);
            }
            if t.status.is_terminal() {
                out.terminal_at = Some(t.at);
            }
            out.latest_at = out.latest_at.max(Some(t.at));
        }
        Ok(out)
    }
}

/// Where a copy of a task is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: u8,
    /// The status is one the contract names (its stage is certain).
    pub known: bool,
    pub transitions: u32,
    pub updated_at: Timestamp,
}

impl Progress {
    /// Whether this copy is further along than `held`: never back from
    /// running to pending (whatever a hostile `transitions` says); else
    /// more transitions (the list only grows, and a status the contract
    /// does not name may come anywhere, even before pending), then the
    /// later stage, then the later `updated_at`. Neither further along:
    /// the same state as far as the lifecycle can tell.
    pub fn further_than(&self, held: &Progress) -> bool {
        if self.known && held.known && self.stage < held.stage {
            return false;
        }
        (self.transitions, self.stage, self.updated_at)
            > (held.transitions, held.stage, held.updated_at)
    }
}

/// How far along its lifecycle a task is: pending, then running (and any
/// status the contract does not name), then terminal. A task never moves
/// back a stage.
pub fn stage(status: &TaskStatus) -> u8 {
    match status {
        TaskStatus::Pending => 0,
        TaskStatus::Running | TaskStatus::Other(_) => 1,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled => 2,
    }
}

impl Task {
    /// When the task finished: `finished_at`, else the time of its terminal
    /// transition, else (neither known) its `updated_at`.
    pub fn finished_time(&self) -> Timestamp {
        self.finished_at
            .or(self.transitions.terminal_at)
            .unwrap_or(self.updated_at)
    }

    /// When the task started, if it did: `started_at`, else its first
    /// running transition.
    pub fn started_time(&self) -> Option<Timestamp> {
        self.started_at.or(self.transitions.running_at)
    }

    /// Where this copy is in its lifecycle; see [`Progress::further_than`].
    pub fn progress(&self) -> Progress {
        Progress {
            stage: stage(&self.status),
            known: !matches!(self.status, TaskStatus::Other(_)),
            transitions: self.transitions.count,
            updated_at: self.updated_at,
        }
    }

    /// The latest instant the task names anywhere.
    pub fn latest_stamp(&self) -> Timestamp {
        [
            Some(self.created_at),
            Some(self.updated_at),
            self.started_at,
            self.finished_at,
            self.transitions.latest_at,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(self.updated_at)
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One page of a listing: the objects read, and those refused whole.
#[derive(Debug)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub rejected: Vec<Malformed>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// A page as it comes, each object kept as its text: one object that
/// cannot be read must cost that object, never the page (it would fail
/// every listing it is in, for as long as it is in it).
#[derive(Deserialize)]
pub(crate) struct RawPage<'a> {
    #[serde(borrow)]
    pub data: Vec<&'a serde_json::value::RawValue>,
    pub has_more: bool,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// What an object of a listing or an event is, for [`parse_object`].
pub trait Object: serde::de::DeserializeOwned {
    /// Its resource in `clawmesh_api_rejected_objects_total`.
    const RESOURCE: &'static str;
    fn mark_text_repaired(&mut self);
}

impl Object for Task {
    const RESOURCE: &'static str = "tasks";
    fn mark_text_repaired(&mut self) {
        self.text_repaired = true;
    }
}

impl Object for Agent {
    const RESOURCE: &'static str = "agents";
    fn mark_text_repaired(&mut self) {
        self.text_repaired = true;
    }
}

/// An object refused whole, and what could still be read of it.
#[derive(Debug, Clone)]
pub struct Malformed {
    pub resource: &'static str,
    /// `invalid_field` (a field missing, of the wrong type or an
    /// impossible value) or `malformed` (not a JSON object, nested deeper
    /// than the parser goes).
    pub reason: &'static str,
    pub id: Option<String>,
    /// Its `updated_at` when that still reads: an incremental listing
    /// moves past it as past any other.
    pub updated_at: Option<Timestamp>,
    /// What is wrong, for the log (no value of the object).
    pub detail: String,
}

/// Reasons of [`Malformed`].
pub const MALFORMED_REASONS: [&str; 2] = ["invalid_field", "malformed"];

/// `body` as text, invalid UTF-8 read as U+FFFD as `String::from_utf8_lossy`
/// does (a copy only when there is some), and where in the text each U+FFFD
/// put there starts: only the objects holding one were repaired, not every
/// object with a U+FFFD the API sent as such.
pub fn lossy_text(body: &[u8]) -> (std::borrow::Cow<'_, str>, Vec<usize>) {
    if let Ok(text) = std::str::from_utf8(body) {
        return (std::borrow::Cow::Borrowed(text), Vec::new());
    }
    let mut text = String::with_capacity(body.len() + 16);
    let mut replaced = Vec::new();
    for chunk in body.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            replaced.push(text.len());
            text.push(char::REPLACEMENT_CHARACTER);
        }
    }
    (std::borrow::Cow::Owned(text), replaced)
}

/// Whether `part`, a slice of `text` (an object read from it), holds one of
/// the U+FFFD [`lossy_text`] put at `replaced`.
pub fn replaced_within(text: &str, replaced: &[usize], part: &str) -> bool {
    if replaced.is_empty() {
        return false;
    }
    let start = (part.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    if start
        .checked_add(part.len())
        .is_none_or(|end| end > text.len())
    {
        // Not a slice of it (cannot happen: objects borrow from the text);
        // any replacement then may be in it.
        return true;
    }
    let first = replaced.partition_point(|&at| at < start);
    replaced
        .get(first)
        .is_some_and(|&at| at < start + part.len())
}

/// One object from its JSON text. Lone UTF-16 surrogate escapes (what
/// JavaScript's `JSON.stringify` makes of a cut emoji) read as U+FFFD,
/// as invalid UTF-8 does: the object counts, with that text repaired and
/// marked (`text_repaired`, counted as `invalid_text`). `lossy`: the text
/// had invalid UTF-8 replaced already, in this object ([`replaced_within`]).
pub fn parse_object<T: Object>(raw: &str, lossy: bool) -> Result<T, Malformed> {
    let fixed = repair_surrogates(raw);
    let repaired = matches!(fixed, std::borrow::Cow::Owned(_))
        || (lossy && fixed.contains(char::REPLACEMENT_CHARACTER));
    match serde_json::from_str::<T>(&fixed) {
        Ok(mut t) => {
            if repaired {
                t.mark_text_repaired();
            }
            Ok(t)
        }
        Err(e) => {
            /// What every object names, each read leniently.
            #[derive(Deserialize)]
            struct Ident {
                #[serde(default, deserialize_with = "lenient_id")]
                id: Option<String>,
                #[serde(default, deserialize_with = "lenient_timestamp")]
                updated_at: Option<Timestamp>,
            }
            let ident = serde_json::from_str::<Ident>(&fixed).ok();
            let reason = match e.classify() {
                serde_json::error::Category::Data => "invalid_field",
                _ => "malformed",
            };
            // serde's messages name the field and the type, never a value
            // longer than a number; shortened all the same.
            Err(Malformed {
                resource: T::RESOURCE,
                reason,
                id: ident.as_ref().and_then(|i| i.id.clone()),
                updated_at: ident.and_then(|i| i.updated_at),
                detail: crate::text::shorten(&e.to_string(), 160),
            })
        }
    }
}

/// `text` (JSON) with every lone UTF-16 surrogate escape (`\ud800` not
/// followed by a low one, or a low one alone) replaced by `\ufffd`: the
/// same length, so only those six bytes change, and a copy is made only
/// when there is one. serde_json refuses a lone surrogate, which would
/// refuse the whole object for one broken emoji in a label.
pub fn repair_surrogates(text: &str) -> std::borrow::Cow<'_, str> {
    let b = text.as_bytes();
    let hex4 = |at: usize| -> Option<u32> {
        let h = b.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    let unicode_escape = |at: usize| -> Option<u32> {
        (b.get(at) == Some(&b'\\') && b.get(at + 1) == Some(&b'u'))
            .then(|| hex4(at + 2))
            .flatten()
    };
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while let Some(off) = b.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        i += off;
        let Some(code) = unicode_escape(i) else {
            // Any other escape is two bytes (`\\` included, so the next
            // backslash found is a new escape).
            i += 2;
            continue;
        };
        let lone = match code {
            0xD800..=0xDBFF => match unicode_escape(i + 6) {
                Some(0xDC00..=0xDFFF) => {
                    i += 12;
                    continue;
                }
                _ => true,
            },
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            out.get_or_insert_with(|| b.to_vec())[i..i + 6].copy_from_slice(b"\\ufffd");
        }
        i += 6;
    }
    match out {
        None => std::borrow::Cow::Borrowed(text),
        // Six ASCII bytes for six ASCII bytes: still UTF-8.
        Some(v) => std::borrow::Cow::Owned(
            String::from_utf8(v)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
    }
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
    fn bad_numbers_in_metrics_read_as_unknown_and_fail_nothing() {
        let page: Page<Task> = crate::api::parse_page(
            br#"{"data":[{"id":"t1","status":"completed","created_at":"2026-11-23T10:00:00Z",
                "updated_at":"2026-11-23T10:00:05Z","transitions":[],
                "metrics":{"queue_seconds":-1,"run_seconds":"soon","input_tokens":-5,
                           "output_tokens":1.5,"extra":[1,2]},
                "error":{"code":42}},
               {"id":"t2","status":"completed","created_at":"2026-11-23T10:00:00Z",
                "updated_at":"2026-11-23T10:00:05Z","transitions":[],
                "metrics":{"queue_seconds":2,"run_seconds":3.25,"input_tokens":18446744073709551615,
                           "output_tokens":7.0},"error":"boom"}],
               "has_more":false,"next_cursor":null}"#,
        )
        .unwrap();
        let (a, b) = (&page.data[0], &page.data[1]);
        assert!(a.metrics.invalid);
        assert_eq!(
            (
                a.metrics.queue_seconds,
                a.metrics.run_seconds,
                a.metrics.input_tokens,
                a.metrics.output_tokens
            ),
            (None, None, None, None)
        );
        assert_eq!(a.error.as_ref().unwrap().code, None);
        assert!(!b.metrics.invalid);
        assert_eq!(b.metrics.queue_seconds, Some(2.0));
        assert_eq!(b.metrics.input_tokens, Some(u64::MAX));
        assert_eq!(b.metrics.output_tokens, Some(7));
        assert_eq!(b.error.as_ref().unwrap().code, None);
    }

    #[test]
    fn an_out_of_range_number_in_metrics_does_not_fail_the_page() {
        // 1e400 is a JSON number (RFC 8259 grammar); as a duration it is
        // not a valid one, so it must read as unknown, as "soon" does,
        // not fail the page (which would stop the incremental sync for as
        // long as the task is in the overlap: for good, since the watermark
        // only moves after a complete listing).
        let page = crate::api::parse_page::<Task>(
            br#"{"data":[{"id":"t1","status":"completed","created_at":"2026-11-23T10:00:00Z",
                "updated_at":"2026-11-23T10:00:05Z","transitions":[],
                "metrics":{"queue_seconds":1e400,"run_seconds":2,"input_tokens":1e400,
                           "output_tokens":-1e400}}],
               "has_more":false,"next_cursor":null}"#,
        );
        let page = page.expect("one bad number must not fail the page");
        assert!(page.data[0].metrics.invalid);
        assert_eq!(page.data[0].metrics.run_seconds, Some(2.0));
    }

    #[test]
    fn transitions_summarise_stage_count_and_times() {
        let t: Task = serde_json::from_str(
            r#"{"id":"t","status":"running","created_at":"2026-11-23T10:00:00Z",
                "updated_at":"2026-11-23T10:00:03Z","started_at":null,
                "transitions":[{"status":"pending","at":"2026-11-23T10:00:00Z"},
                               {"status":"running","at":"2026-11-23T10:00:01Z"},
                               {"status":"awaiting_input","at":"2026-11-23T10:00:02Z"},
                               {"status":"running","at":"2026-11-23T10:00:03Z"}]}"#,
        )
        .unwrap();
        assert_eq!(t.transitions.count, 4);
        assert_eq!(t.started_time(), Timestamp::parse("2026-11-23T10:00:01Z"));
        assert_eq!(
            t.latest_stamp(),
            Timestamp::parse("2026-11-23T10:00:03Z").unwrap()
        );
        assert_eq!(t.progress().stage, 1);
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

#[cfg(test)]
mod metric_numbers {
    use super::*;

    fn task_json(metrics: &str) -> String {
        format!(
            r#"{{"id":"t1","status":"completed","created_at":"2026-11-23T10:00:00Z",
                "updated_at":"2026-11-23T10:00:05Z","transitions":[],
                "metrics":{metrics}}}"#
        )
    }

    #[test]
    fn metrics_read_the_same_through_the_webhook_value_path() {
        // The webhook path parses the body to serde_json::Value first, then
        // the task from that Value: the RawValue-based metrics must still read.
        let v: serde_json::Value = serde_json::from_str(&task_json(
            r#"{"queue_seconds":1.5,"run_seconds":2,"input_tokens":7,"output_tokens":1E2}"#,
        ))
        .unwrap();
        let t: Task = serde_json::from_value(v).expect("a webhook task must parse");
        assert!(!t.metrics.invalid, "{:?}", t.metrics);
        assert_eq!(t.metrics.queue_seconds, Some(1.5));
        assert_eq!(t.metrics.run_seconds, Some(2.0));
        assert_eq!(t.metrics.input_tokens, Some(7));
        assert_eq!(t.metrics.output_tokens, Some(100));
    }

    #[test]
    fn every_json_spelling_of_a_number_reads_the_same_from_text_and_from_a_value() {
        for (m, q, tok) in [
            (
                r#"{"queue_seconds":-0,"input_tokens":-0}"#,
                Some(0.0),
                Some(0),
            ),
            (
                r#"{"queue_seconds":0.0e0,"input_tokens":0.0e0}"#,
                Some(0.0),
                Some(0),
            ),
            (
                r#"{"queue_seconds": 1E2 ,"input_tokens": 1E2 }"#,
                Some(100.0),
                Some(100),
            ),
            (
                r#"{"input_tokens":18446744073709551615}"#,
                None,
                Some(u64::MAX),
            ),
        ] {
            let t: Task = serde_json::from_str(&task_json(m)).unwrap();
            assert_eq!(
                (t.metrics.queue_seconds, t.metrics.input_tokens),
                (q, tok),
                "{m}"
            );
            assert!(!t.metrics.invalid, "{m}");
            let v: serde_json::Value = serde_json::from_str(&task_json(m)).unwrap();
            let t: Task = serde_json::from_value(v).unwrap();
            assert_eq!(
                (t.metrics.queue_seconds, t.metrics.input_tokens),
                (q, tok),
                "value {m}"
            );
        }
        let huge = format!(r#"{{"input_tokens":{}}}"#, "9".repeat(5000));
        let t: Task = serde_json::from_str(&task_json(&huge)).unwrap();
        assert!(t.metrics.invalid);
    }
}
