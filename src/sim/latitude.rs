//! What the contract allows that the simulator does not do by default: each
//! a switch, all off in [`Latitude::default`], all on in [`Latitude::all`].

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latitude {
    /// Every timestamp is cut down to whole seconds (0 fractional digits);
    /// successive versions of one object may carry the same `updated_at`.
    pub whole_second_stamps: bool,
    /// The API's clock is the host's plus this many milliseconds.
    pub clock_offset_ms: i64,
    /// A task's starting version has `queue_seconds: null`, its finishing
    /// version some of `run_seconds`, `input_tokens`, `output_tokens` null;
    /// a version 1-20 s later (status unchanged) fills them in. The ground
    /// truth counts each value when the version carrying it is committed.
    pub late_metrics: bool,
    /// A failed task carries `error: null` or `error: {"code": null, ..}`;
    /// a version 1-20 s later fills in the code, and `failures_by_code`
    /// counts it then (`finished_total{failed}` at the transition).
    pub late_failure_codes: bool,
    /// An agent's deletion (store version and `agent.deleted` event object)
    /// keeps its last `updated_at`.
    pub deletion_keeps_updated_at: bool,
    /// Statuses the contract does not name: pending tasks sometimes become
    /// `expired` (never left, no `finished_at`), running tasks sometimes go
    /// `awaiting_input` for 1-10 s and back to `running`.
    pub unknown_task_statuses: bool,
    /// Every change becomes visible exactly `visibility_lag_max` after its
    /// `updated_at`.
    pub lag_always_max: bool,
}

/// The switch names of [`Latitude::parse_list`], in field order.
pub const SWITCHES: [&str; 6] = [
    "whole-seconds",
    "late-metrics",
    "late-failure-codes",
    "deletion-keeps-updated-at",
    "unknown-task-statuses",
    "lag-always-max",
];

impl Latitude {
    /// Every switch on, with the API's clock `clock_offset_ms` off the host's.
    pub fn all(clock_offset_ms: i64) -> Latitude {
        Latitude {
            whole_second_stamps: true,
            clock_offset_ms,
            late_metrics: true,
            late_failure_codes: true,
            deletion_keeps_updated_at: true,
            unknown_task_statuses: true,
            lag_always_max: true,
        }
    }

    /// `all`, `none`, or a comma-separated list of [`SWITCHES`] (the clock
    /// offset is given apart and stays 0 here).
    pub fn parse_list(s: &str) -> Result<Latitude, String> {
        let mut l = Latitude::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => l = Latitude::all(l.clock_offset_ms),
                "none" => {}
                "whole-seconds" => l.whole_second_stamps = true,
                "late-metrics" => l.late_metrics = true,
                "late-failure-codes" => l.late_failure_codes = true,
                "deletion-keeps-updated-at" => l.deletion_keeps_updated_at = true,
                "unknown-task-statuses" => l.unknown_task_statuses = true,
                "lag-always-max" => l.lag_always_max = true,
                other => {
                    return Err(format!(
                        "unknown latitude {other:?} (all, none, or a list of {})",
                        SWITCHES.join(", ")
                    ))
                }
            }
        }
        Ok(l)
    }
}

/// A signed duration in milliseconds: `-15s`, `+1m`, `250ms`, `0`
/// (humantime after an optional sign).
pub fn parse_signed_ms(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let (neg, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let d = humantime::parse_duration(rest.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| format!("{s:?}: too long"))?;
    Ok(if neg { -ms } else { ms })
}
