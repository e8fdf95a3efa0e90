//! Injected faults: what the simulator does wrong on purpose, per /v1
//! request (`POST /_sim/faults`), and how it writes a hostile object.

use serde::{Deserialize, Serialize};

/// Injected faults, all off by default. Probabilities are per /v1 request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// 500 with an HTML body.
    pub html_500: f64,
    /// 502 with an empty body.
    pub empty_502: f64,
    /// 503 `service_unavailable` with `Retry-After: retry_after_secs`.
    pub unavailable_503: f64,
    /// 429 with `Retry-After: retry_after_secs`, even below the limit.
    pub rate_limit_429: f64,
    /// A 200 whose JSON body is cut in the middle.
    pub truncated_json: f64,
    /// A request carrying a cursor gets 400 `cursor_expired`.
    pub cursor_expired: f64,
    /// The request sleeps `hang_ms` before answering normally.
    pub hang: f64,
    pub hang_ms: u64,
    /// A page request carrying a cursor (mid-listing) gets 429
    /// `rate_limited` with `Retry-After: retry_after_secs`: a listing
    /// slowed mid-way.
    pub page_retry_after: f64,
    /// Like `page_retry_after`, but only for pages of a `sort=updated_at`
    /// task listing whose cursor is within `visibility_lag_max` of now: the
    /// tail of an incremental listing, where a change behind the cursor
    /// can still become visible while the listing waits.
    pub tail_page_retry_after: f64,
    /// For injected 429 and 503; 0 means 1.
    pub retry_after_secs: u32,
    /// Added to every request (not counted as a fault).
    pub latency_ms: u64,
    /// Every /v1 request answers 503 with an HTML body.
    pub outage: bool,
    /// One object in this many (chosen by its id, so the same ones on
    /// every read, in listings and `GET /{resource}/{id}`) is written
    /// hostile as `hostile` says; 0: none. Not counted as a fault: the
    /// ground truth still holds the object as it is.
    pub hostile_every: u32,
    pub hostile: Hostile,
}

/// How a hostile object is written (`Faults::hostile_every`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hostile {
    /// A label `hostile` of `"x\ud800"`: a lone UTF-16 surrogate escape,
    /// what JavaScript's `JSON.stringify` makes of a cut emoji.
    #[default]
    LoneSurrogate,
    /// A label `hostile` of `"x"` and a byte 0xFF: not UTF-8.
    InvalidUtf8,
    /// `created_at` a number, not a timestamp (`id` and `updated_at` as
    /// usual).
    WrongType,
    /// A label `hostile` nested 200 arrays deep.
    Deep,
    /// Not hostile, but what the contract allows: a task's `agent_id`
    /// names an agent that does not exist (deleted, or never there), a
    /// different one per task; `GET /agents/{id}` of it is a 404.
    MissingAgent,
}

/// The character written where [`Hostile::InvalidUtf8`] puts a 0xFF
/// byte: a private-use one the simulator never writes otherwise.
pub(crate) const NOT_UTF8_MARK: char = '\u{E000}';

impl Hostile {
    /// Whether the object `id` is one of every `every` written hostile.
    pub fn chosen(every: u32, id: &str) -> bool {
        // FNV-1a: the same ids in every process.
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        every > 0 && h % u64::from(every) == 0
    }

    /// The JSON text `json` of the object `id` (as the simulator writes
    /// it) made hostile.
    pub(crate) fn mangle(self, id: &str, json: &str) -> String {
        let label = |value: &str| {
            let open = "\"labels\":{";
            let Some(at) = json.find(open) else {
                return json.to_string();
            };
            let rest = &json[at + open.len()..];
            let sep = if rest.starts_with('}') { "" } else { "," };
            format!("{}{open}\"hostile\":{value}{sep}{rest}", &json[..at])
        };
        match self {
            Hostile::LoneSurrogate => label(r#""x\ud800""#),
            Hostile::InvalidUtf8 => label(&format!("\"x{NOT_UTF8_MARK}\"")),
            Hostile::WrongType => json.replacen(
                "\"created_at\":\"",
                "\"created_at\":1764000000,\"created_at_text\":\"",
                1,
            ),
            Hostile::Deep => label(&format!("{}{}", "[".repeat(200), "]".repeat(200))),
            Hostile::MissingAgent => {
                json.replacen("\"agent_id\":\"", &format!("\"agent_id\":\"gone_{id}_"), 1)
            }
        }
    }
}
