//! The simulator's own object model (deliberately independent of
//! `crate::api::types`), versions with visibility lag, and the keyset indexes.

use rand::Rng;
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

pub const MICROS: i64 = 1_000_000;

/// An instant with the number of fractional digits it is printed with. The
/// value is always already rounded to `digits`, so printing never loses
/// anything: what the client parses is exactly what is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts {
    pub us: i64,
    pub digits: u8,
}

impl Ts {
    pub fn format(&self) -> String {
        let secs = self.us.div_euclid(MICROS);
        let frac = self.us.rem_euclid(MICROS);
        let dt = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
        let base = dt.format("%Y-%m-%dT%H:%M:%S");
        if self.digits == 0 {
            format!("{base}Z")
        } else {
            let f = format!("{frac:06}");
            format!("{base}.{}Z", &f[..self.digits as usize])
        }
    }
}

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.format())
    }
}

/// Formats any microsecond instant with all six digits (ground truth, cursors).
pub fn format_us(us: i64) -> String {
    Ts { us, digits: 6 }.format()
}

/// The host's clock (tests compare against it; the simulator itself reads
/// its [`Clock`]).
pub fn host_now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The API's clock: the host's plus a fixed offset. Every instant the
/// simulator uses comes from one of these, never from the host directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    pub offset_us: i64,
}

impl Clock {
    pub fn from_offset_ms(ms: i64) -> Clock {
        Clock {
            offset_us: ms.saturating_mul(1000),
        }
    }
    pub fn now_us(&self) -> i64 {
        host_now_us() + self.offset_us
    }
}

/// An instant as an HTTP `Date` (IMF-fixdate, RFC 9110 5.6.7).
pub fn imf_fixdate(us: i64) -> String {
    let dt = chrono::DateTime::from_timestamp(us.div_euclid(MICROS), 0).unwrap_or_default();
    dt.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `us` rounded down to a whole second.
pub fn whole_second(us: i64) -> i64 {
    us - us.rem_euclid(MICROS)
}

/// A timestamp for `now_us` with a random number (0..=6) of fractional
/// digits, rounded down to them, and strictly later than `after_us` (so that
/// an object's `updated_at` strictly increases with each change). If the
/// rounding would not be later, more digits are used; failing that, one
/// microsecond after `after_us`.
#[cfg(test)]
pub fn stamp(rng: &mut impl Rng, now_us: i64, after_us: i64) -> Ts {
    stamp_with(rng, now_us, after_us, false)
}

/// [`stamp`], or with `whole_seconds` a stamp with 0 fractional digits that
/// is only at or after `after_us` (versions of one object may then share an
/// `updated_at`). `after_us` must itself be a whole second then.
pub fn stamp_with(rng: &mut impl Rng, now_us: i64, after_us: i64, whole_seconds: bool) -> Ts {
    if whole_seconds {
        return Ts {
            us: whole_second(now_us).max(after_us),
            digits: 0,
        };
    }
    let mut d: u8 = rng.random_range(0..=6);
    loop {
        let g = 10i64.pow(6 - d as u32);
        let v = now_us - now_us.rem_euclid(g);
        if v > after_us {
            return Ts { us: v, digits: d };
        }
        if d == 6 {
            return Ts {
                us: after_us + 1,
                digits: 6,
            };
        }
        d += 1;
    }
}

fn ser_arc_str<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentConstraints {
    pub max_concurrent_tasks: u32,
    pub timeout_seconds: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentConfig {
    pub model_provider: String,
    pub model: String,
    pub skills: Vec<String>,
    pub constraints: AgentConstraints,
}

#[derive(Clone, Debug, Serialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Ts,
    pub updated_at: Ts,
    /// Heartbeats are refreshed every 30 s without moving `updated_at`, so
    /// they are derived at answer time from this phase (None: no heartbeat,
    /// for provisioning and offline agents).
    #[serde(skip)]
    pub heartbeat_phase: Option<Ts>,
    /// Heartbeats stop at this instant (a heartbeat-loss incident).
    #[serde(skip)]
    pub heartbeat_until: Option<i64>,
    pub running_tasks: u32,
    pub config: AgentConfig,
    /// Not in the contract: clients must ignore unknown fields.
    pub x_region: &'static str,
}

impl Agent {
    /// The heartbeat as of `now_us`: the phase plus whole 30 s periods, so it
    /// keeps the phase's digit count and stays exact.
    pub fn heartbeat_at(&self, now_us: i64) -> Option<Ts> {
        let p = self.heartbeat_phase?;
        let now_us = self.heartbeat_until.map_or(now_us, |u| now_us.min(u));
        let period = 30 * MICROS;
        let n = (now_us - p.us).max(0) / period;
        Some(Ts {
            us: p.us + n * period,
            digits: p.digits,
        })
    }
}

/// An agent as answered: the stored object plus its heartbeat as of now.
#[derive(Serialize)]
pub struct AgentOut<'a> {
    #[serde(flatten)]
    pub agent: &'a Agent,
    pub last_heartbeat_at: Option<Ts>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Transition {
    pub status: String,
    pub at: Ts,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {
    pub queue_seconds: Option<f64>,
    pub run_seconds: Option<f64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Output {
    pub file_id: String,
    pub name: String,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskError {
    /// `None` (serialised null) while a late failure code is not yet known.
    pub code: Option<String>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Task {
    pub id: String,
    pub agent_id: Option<String>,
    pub status: String,
    /// Shared between versions: 256 KiB instructions are not copied per change.
    #[serde(serialize_with = "ser_arc_str")]
    pub instructions: Arc<str>,
    pub labels: BTreeMap<String, String>,
    pub created_at: Ts,
    pub updated_at: Ts,
    pub started_at: Option<Ts>,
    pub finished_at: Option<Ts>,
    pub transitions: Vec<Transition>,
    pub metrics: Metrics,
    pub outputs: Vec<Output>,
    pub error: Option<TaskError>,
    pub x_region: &'static str,
}

/// What the store needs to know about an object.
pub trait Obj {
    fn id(&self) -> &str;
    fn created_us(&self) -> i64;
    fn updated_us(&self) -> i64;
    /// Worth keeping in the "open" index (non-terminal tasks).
    fn is_open(&self) -> bool {
        false
    }
}

impl Obj for Agent {
    fn id(&self) -> &str {
        &self.id
    }
    fn created_us(&self) -> i64 {
        self.created_at.us
    }
    fn updated_us(&self) -> i64 {
        self.updated_at.us
    }
}

impl Obj for Task {
    fn id(&self) -> &str {
        &self.id
    }
    fn created_us(&self) -> i64 {
        self.created_at.us
    }
    fn updated_us(&self) -> i64 {
        self.updated_at.us
    }
    /// Pending, running, and `awaiting_input` (a status outside the
    /// contract that returns to running); not `expired`, which a task never
    /// leaves.
    fn is_open(&self) -> bool {
        matches!(
            self.status.as_str(),
            "pending" | "running" | "awaiting_input"
        )
    }
}

/// One state of an object; `obj: None` is a deletion.
pub struct Version<T> {
    pub updated_us: i64,
    pub visible_us: i64,
    pub obj: Option<Arc<T>>,
}

pub struct Entity<T> {
    pub created_us: i64,
    /// Non-decreasing by `updated_us` (equal under whole-second stamps, or
    /// for a deletion that keeps `updated_at`); older ones are pruned once a
    /// newer one is visible, so this stays short.
    pub versions: Vec<Version<T>>,
}

impl<T> Entity<T> {
    /// Index of the newest version visible at `now_us`. Lags are random, so
    /// a newer version may become visible before an older one; the older one
    /// then never shows.
    fn visible_idx(&self, now_us: i64) -> Option<usize> {
        self.versions.iter().rposition(|v| v.visible_us <= now_us)
    }
    pub fn visible(&self, now_us: i64) -> Option<&Version<T>> {
        self.visible_idx(now_us).map(|i| &self.versions[i])
    }
    pub fn current(&self) -> Option<&Arc<T>> {
        self.versions.last().and_then(|v| v.obj.as_ref())
    }
}

/// Objects of one kind with their versions and keyset indexes.
pub struct Store<T> {
    pub entities: HashMap<String, Entity<T>>,
    /// (created_at, id) of every object with a retained version.
    pub by_created: BTreeSet<(i64, String)>,
    /// (updated_at, id) of every retained version. Versions of one object
    /// with equal `updated_at` share one entry, removed only with the last
    /// of them.
    pub by_updated: BTreeSet<(i64, String)>,
    /// (created_at, id) of objects with a retained open version: listings
    /// filtered to open statuses scan this instead of the whole history.
    pub open: BTreeSet<(i64, String)>,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            entities: HashMap::new(),
            by_created: BTreeSet::new(),
            by_updated: BTreeSet::new(),
            open: BTreeSet::new(),
        }
    }
}

/// One listed item: its sort key, id and the version's object.
pub struct Hit<T> {
    pub key: i64,
    pub id: String,
    pub obj: Arc<T>,
}

pub struct Listing<T> {
    pub items: Vec<Hit<T>>,
    pub has_more: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Order {
    Created,
    Updated,
}

impl<T: Obj> Store<T> {
    pub fn current(&self, id: &str) -> Option<&Arc<T>> {
        self.entities.get(id).and_then(|e| e.current())
    }

    pub fn visible(&self, id: &str, now_us: i64) -> Option<&Arc<T>> {
        self.entities
            .get(id)
            .and_then(|e| e.visible(now_us))
            .and_then(|v| v.obj.as_ref())
    }

    /// Records a new state of an object.
    pub fn push(&mut self, obj: T, visible_us: i64) {
        let id = obj.id().to_string();
        let (c, u, open) = (obj.created_us(), obj.updated_us(), obj.is_open());
        self.push_version(
            id,
            c,
            Version {
                updated_us: u,
                visible_us,
                obj: Some(Arc::new(obj)),
            },
            open,
        );
    }

    /// Records a deletion; `updated_us` must not be earlier than the last
    /// version's.
    pub fn delete(&mut self, id: &str, updated_us: i64, visible_us: i64) {
        let Some(c) = self.entities.get(id).map(|e| e.created_us) else {
            return;
        };
        self.push_version(
            id.to_string(),
            c,
            Version {
                updated_us,
                visible_us,
                obj: None,
            },
            false,
        );
    }

    fn push_version(&mut self, id: String, created_us: i64, v: Version<T>, open: bool) {
        self.by_updated.insert((v.updated_us, id.clone()));
        self.by_created.insert((created_us, id.clone()));
        if open {
            self.open.insert((created_us, id.clone()));
        }
        let e = self.entities.entry(id).or_insert_with(|| Entity {
            created_us,
            versions: Vec::new(),
        });
        debug_assert!(e
            .versions
            .last()
            .is_none_or(|l| l.updated_us <= v.updated_us));
        e.versions.push(v);
    }

    /// Forgets an object at once, without a deletion version (tasks leaving
    /// history simply vanish).
    pub fn remove(&mut self, id: &str) {
        let Some(e) = self.entities.remove(id) else {
            return;
        };
        for v in e.versions {
            self.by_updated.remove(&(v.updated_us, id.to_string()));
        }
        self.by_created.remove(&(e.created_us, id.to_string()));
        self.open.remove(&(e.created_us, id.to_string()));
    }

    /// Drops the versions superseded by one visible at `now_us`, and the
    /// object itself once its deletion is visible.
    pub fn prune(&mut self, id: &str, now_us: i64) {
        let Some(e) = self.entities.get_mut(id) else {
            return;
        };
        let Some(i) = e.visible_idx(now_us) else {
            return;
        };
        let dropped: Vec<i64> = e.versions.drain(..i).map(|v| v.updated_us).collect();
        for u in dropped {
            // A newer version with the same updated_at still uses the key.
            if !e.versions.iter().any(|v| v.updated_us == u) {
                self.by_updated.remove(&(u, id.to_string()));
            }
        }
        let created = e.created_us;
        let gone = e.versions.len() == 1 && e.versions[0].obj.is_none();
        let still_open = e
            .versions
            .iter()
            .any(|v| v.obj.as_ref().is_some_and(|o| o.is_open()));
        if !still_open {
            self.open.remove(&(created, id.to_string()));
        }
        if gone {
            let e = self.entities.remove(id).expect("present");
            for v in e.versions {
                self.by_updated.remove(&(v.updated_us, id.to_string()));
            }
            self.by_created.remove(&(created, id.to_string()));
            self.open.remove(&(created, id.to_string()));
        }
    }

    /// One keyset page as visible at `now_us`: objects after `after` (a sort
    /// key and id, exclusive), with the sort key below `before` if given,
    /// matching `filter`. Reads one item more than `limit` to tell
    /// `has_more`.
    #[allow(clippy::too_many_arguments)]
    pub fn list(
        &self,
        order: Order,
        only_open: bool,
        after: Option<(i64, String)>,
        created_before: Option<i64>,
        now_us: i64,
        limit: usize,
        filter: impl Fn(&T) -> bool,
    ) -> Listing<T> {
        let index = match (order, only_open) {
            (Order::Updated, _) => &self.by_updated,
            (Order::Created, true) => &self.open,
            (Order::Created, false) => &self.by_created,
        };
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut items = Vec::new();
        let mut has_more = false;
        for (key, id) in index.range((lower, Bound::Unbounded)) {
            if order == Order::Created {
                if let Some(b) = created_before {
                    if *key >= b {
                        break;
                    }
                }
            }
            let Some(e) = self.entities.get(id) else {
                continue;
            };
            let Some(v) = e.visible(now_us) else {
                continue;
            };
            // In updated order each entry is a version: show it only if it
            // is the one currently visible for its object.
            if order == Order::Updated && v.updated_us != *key {
                continue;
            }
            let Some(obj) = &v.obj else { continue };
            if order == Order::Updated {
                if let Some(b) = created_before {
                    if obj.created_us() >= b {
                        continue;
                    }
                }
            }
            if !filter(obj) {
                continue;
            }
            if items.len() == limit {
                has_more = true;
                break;
            }
            items.push(Hit {
                key: *key,
                id: id.clone(),
                obj: obj.clone(),
            });
        }
        Listing { items, has_more }
    }
}
