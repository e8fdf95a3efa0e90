//! The fleet as a checkpoint keeps it (`crate::storage` writes and reads
//! the file): everything exactly-once counting needs to go on after a
//! restart as if the process had never stopped: the counters, the
//! counting floor, the ledger, the open and unlisted tasks, the agents
//! (their breakdown values decide the slices of their tasks), and the
//! start of the series.
//!
//! Plain data with owned strings and integer micros, apart from the
//! fleet's own types, so that those stay free to change; a change here is
//! a new checkpoint version (`storage::VERSION`).

use super::breakdown::SavedBreakdown;
use super::counters::{restore_counters, save_counters, SavedCounters};
use super::{AgentSeen, Counted, Fleet, Marks, OpenTask};
use crate::api::types::{Progress, TaskStatus, Timestamp};

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedFleet {
    /// Unix micros on the host's clock: when the series began (their
    /// start time over OTLP).
    counting_since: i64,
    floor: i64,
    pruned_to: i64,
    counters: SavedCounters,
    agents_known: bool,
    agent_statuses: Vec<String>,
    open_statuses: Vec<String>,
    failure_codes: Vec<String>,
    agents: Vec<SavedAgent>,
    /// Deleted agents: (id, deletion's updated_at, when it came).
    agent_gone: Vec<(String, i64, i64)>,
    /// Gone agents' breakdown values: (id, values, when they went).
    dims_gone: Vec<(String, Vec<String>, i64)>,
    /// Gone agents' models: (id, provider, model). Absent before spend.
    #[serde(default)]
    models_gone: Vec<(String, String, String)>,
    open: Vec<SavedOpen>,
    ledger: Vec<SavedCounted>,
    unlisted: Vec<(String, SavedMarks, SavedProgress)>,
    breakdown: Option<SavedBreakdown>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedAgent {
    id: String,
    status: String,
    updated_at: i64,
    created_at: i64,
    last_heartbeat_at: Option<i64>,
    seen_at: i64,
    dims: Vec<String>,
    /// (provider, model); absent in checkpoints of before spend (the next
    /// listing tells it again).
    #[serde(default)]
    model: Option<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedOpen {
    id: String,
    status: String,
    created_at: i64,
    progress: SavedProgress,
    marks: SavedMarks,
    slice: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedCounted {
    id: String,
    finished_at: i64,
    marks: SavedMarks,
    slice: u32,
}

/// The marks as bits: queue, run, input, output, code.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SavedMarks(u8);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SavedProgress {
    stage: u8,
    known: bool,
    transitions: u32,
    updated_at: i64,
}

impl From<Marks> for SavedMarks {
    fn from(m: Marks) -> Self {
        let bits = [m.queue, m.run, m.input, m.output, m.code];
        SavedMarks(
            bits.iter()
                .enumerate()
                .fold(0, |acc, (i, b)| acc | (u8::from(*b) << i)),
        )
    }
}

impl From<SavedMarks> for Marks {
    fn from(s: SavedMarks) -> Self {
        let bit = |i: u8| s.0 & (1 << i) != 0;
        Marks {
            queue: bit(0),
            run: bit(1),
            input: bit(2),
            output: bit(3),
            code: bit(4),
        }
    }
}

impl From<Progress> for SavedProgress {
    fn from(p: Progress) -> Self {
        SavedProgress {
            stage: p.stage,
            known: p.known,
            transitions: p.transitions,
            updated_at: p.updated_at.micros(),
        }
    }
}

impl From<SavedProgress> for Progress {
    fn from(s: SavedProgress) -> Self {
        Progress {
            stage: s.stage,
            known: s.known,
            transitions: s.transitions,
            updated_at: Timestamp::from_micros(s.updated_at),
        }
    }
}

impl SavedFleet {
    /// The later of the two floors (counting and pruning), which the
    /// fleet took from the API's clock, not from objects: neither can be
    /// later than that clock when the checkpoint was taken, and one in the
    /// future would keep every task from counting until then.
    pub fn newest_floor(&self) -> i64 {
        self.floor.max(self.pruned_to)
    }
}

impl Fleet {
    /// Everything a restart needs to go on counting exactly.
    pub fn save(&self) -> SavedFleet {
        let ts = |t: Timestamp| t.micros();
        SavedFleet {
            counting_since: self.counting_since.micros(),
            floor: self.floor.micros(),
            pruned_to: self.pruned_to.micros(),
            counters: save_counters(&self.counters),
            agents_known: self.agents_known,
            agent_statuses: self.agent_names.admitted().map(str::to_string).collect(),
            open_statuses: self.open_names.admitted().map(str::to_string).collect(),
            failure_codes: self.failure_codes.admitted().map(str::to_string).collect(),
            agents: self
                .agent_by_id
                .iter()
                .map(|(id, e)| SavedAgent {
                    id: id.to_string(),
                    status: e.status.clone(),
                    updated_at: ts(e.updated_at),
                    created_at: ts(e.created_at),
                    last_heartbeat_at: e.last_heartbeat_at.map(ts),
                    seen_at: ts(e.seen_at),
                    dims: e.dims.iter().map(|v| v.to_string()).collect(),
                    model: Some((e.model.0.to_string(), e.model.1.to_string())),
                })
                .collect(),
            agent_gone: self
                .agent_gone
                .iter()
                .map(|(id, (d, c))| (id.to_string(), ts(*d), ts(*c)))
                .collect(),
            dims_gone: self
                .dims_gone
                .iter()
                .map(|(id, (d, at))| {
                    let values = d.iter().map(|v| v.to_string()).collect();
                    (id.to_string(), values, ts(*at))
                })
                .collect(),
            models_gone: self
                .models_gone
                .iter()
                .map(|(id, m)| (id.to_string(), m.0.to_string(), m.1.to_string()))
                .collect(),
            open: self
                .open
                .iter()
                .map(|(id, o)| SavedOpen {
                    id: id.clone(),
                    status: o.status.name().to_string(),
                    created_at: ts(o.created_at),
                    progress: o.progress.into(),
                    marks: o.marks.into(),
                    slice: o.slice,
                })
                .collect(),
            ledger: self
                .ledger
                .iter()
                .map(|(id, c)| SavedCounted {
                    id: id.to_string(),
                    finished_at: ts(c.finished_at),
                    marks: c.marks.into(),
                    slice: c.slice,
                })
                .collect(),
            unlisted: self
                .unlisted
                .iter()
                .map(|(id, (m, p))| (id.to_string(), (*m).into(), (*p).into()))
                .collect(),
            breakdown: self.breakdown.as_ref().map(|b| b.save()),
        }
    }

    /// Take over a saved fleet: `self` is a fleet just made for this start
    /// (limits, breakdown configuration, the API's clock); what `s` holds
    /// replaces its state. `Err`: `s` cannot be a fleet's (refused whole;
    /// `self` is then unchanged in use, the caller starts it fresh).
    /// The message says what was not restored, if anything.
    pub fn restore(mut self, s: SavedFleet) -> Result<(Fleet, Option<String>), String> {
        let ts = Timestamp::from_micros;
        let mut note = None;
        // Where each saved slice counts now (`None`: no breakdowns now).
        let remap = match (self.breakdown.as_mut(), s.breakdown) {
            (Some(b), Some(sb)) => {
                let r = b.restore(sb)?;
                if r.changed {
                    note = Some("the breakdown settings changed: the saved combinations are folded into the new ones (a label both settings have keeps its series and values; one only the new settings have is unknown for what was counted before); the totals go on".to_string());
                }
                Some(r)
            }
            // Breakdowns are new: everything counted before is in the
            // slice of no values, the series without breakdown labels.
            (Some(b), None) => {
                note = Some("breakdowns are new: what was counted before stays in the series without breakdown labels; the totals go on".into());
                Some(b.restore_none())
            }
            (None, _) => None,
        };
        let slice = |i: u32| remap.as_ref().map_or(0, |r| r.slice(i));
        let limit = super::MAX_UNKNOWN_NAMES;
        if s.agent_statuses.len() > limit
            || s.open_statuses.len() > limit
            || s.failure_codes.len() > limit * 2
        {
            return Err("more unknown names than the fleet admits".into());
        }
        for n in &s.agent_statuses {
            self.agent_names.admit(n);
        }
        for n in &s.open_statuses {
            self.open_names.admit(n);
        }
        for n in &s.failure_codes {
            self.failure_codes.admit(n);
        }
        // A task is open or counted, never both: one that were both would
        // count again when it finishes.
        let open_ids: std::collections::HashSet<&str> =
            s.open.iter().map(|o| o.id.as_str()).collect();
        if s.ledger.iter().any(|c| open_ids.contains(c.id.as_str())) {
            return Err("a task both open and counted".into());
        }
        self.counters = restore_counters(s.counters)?;
        // The series' start (host clock): never after now, whatever the
        // host's clock did meanwhile (OTLP would show points before it).
        self.counting_since = ts(s.counting_since).min(Timestamp::host_now());
        self.floor = ts(s.floor);
        self.pruned_to = ts(s.pruned_to);
        // The floor followed an unconfirmed clock before; it is settled now.
        self.provisional_start = None;
        self.agents_known = s.agents_known;
        let dims = |f: &mut Fleet, v: Vec<String>| -> super::AgentDims {
            match (&mut f.breakdown, &remap) {
                (Some(b), Some(r)) => b.dims_from(r, v),
                _ => Arc::from(Vec::new()),
            }
        };
        let mut by_id = HashMap::with_capacity(s.agents.len());
        for a in s.agents {
            let status = self.agent_names.admit(&a.status);
            let seen = AgentSeen {
                status,
                updated_at: ts(a.updated_at),
                created_at: ts(a.created_at),
                last_heartbeat_at: a.last_heartbeat_at.map(ts),
                seen_at: ts(a.seen_at),
                dims: dims(&mut self, a.dims),
                model: saved_model(a.model)?,
            };
            by_id.insert(a.id.into_boxed_str(), seen);
        }
        self.agent_by_id = by_id;
        self.agents = super::AGENT_STATUSES
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        for e in self.agent_by_id.values() {
            *self.agents.entry(e.status.clone()).or_default() += 1;
        }
        self.agent_gone = s
            .agent_gone
            .into_iter()
            .map(|(id, d, c)| (id.into_boxed_str(), (ts(d), ts(c))))
            .collect();
        let mut gone = HashMap::with_capacity(s.dims_gone.len());
        for (id, v, at) in s.dims_gone {
            gone.insert(id.into_boxed_str(), (dims(&mut self, v), ts(at)));
        }
        self.dims_gone = gone;
        let mut models = HashMap::with_capacity(s.models_gone.len());
        for (id, p, m) in s.models_gone {
            if self.dims_gone.contains_key(id.as_str()) {
                models.insert(id.into_boxed_str(), saved_model(Some((p, m)))?);
            }
        }
        self.models_gone = models;
        self.open = s
            .open
            .into_iter()
            .map(|o| {
                let status = match TaskStatus::from_name(&o.status) {
                    TaskStatus::Other(n) => TaskStatus::Other(self.open_names.admit(&n)),
                    known => known,
                };
                let open = OpenTask {
                    status,
                    created_at: ts(o.created_at),
                    progress: o.progress.into(),
                    marks: o.marks.into(),
                    slice: slice(o.slice),
                };
                (o.id, open)
            })
            .collect();
        self.ledger = s
            .ledger
            .into_iter()
            .map(|c| {
                let counted = Counted {
                    finished_at: ts(c.finished_at),
                    marks: c.marks.into(),
                    slice: slice(c.slice),
                };
                (c.id.into_boxed_str(), counted)
            })
            .collect();
        self.codes_waiting = self.ledger.values().filter(|c| !c.marks.code).count();
        self.unlisted = s
            .unlisted
            .into_iter()
            .map(|(id, m, p)| (id.into_boxed_str(), (m.into(), p.into())))
            .collect();
        self.settle_slices()?;
        Ok((self, note))
    }
}

/// An agent's model as saved, bounded as the API's reading bounds text.
fn saved_model(m: Option<(String, String)>) -> Result<super::AgentModel, String> {
    let (p, m) = m.unwrap_or_default();
    let max = crate::api::types::MAX_TEXT_LEN;
    if p.len() > max || m.len() > max {
        return Err(format!("an agent's model or provider past {max} bytes"));
    }
    Ok(Arc::new((p.into_boxed_str(), m.into_boxed_str())))
}
