//! Breakdowns: which properties of agents and tasks become labels of the
//! workspace's series, and the bounded sets of values they take.
//!
//! A task is counted in exactly one slice (the combination of its
//! dimensions' values, as known when it is counted), so the sum over any
//! breakdown is the workspace total. Every bound here keeps the series
//! count from following the data: dimensions (`max_labels`), values per
//! dimension (`max_values`, then `other`) and combinations (`max_slices`,
//! then every dimension `other`).

use super::counters::{restore_counters, save_counters, Counters, SavedCounters};
use crate::api::types::{Agent, Labels, Task};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Label names a dimension never takes as they are: the families' own,
/// the per-agent series', Prometheus' reserved and target ones.
const RESERVED: &[&str] = &[
    "status",
    "code",
    "kind",
    "resource",
    "reason",
    "endpoint",
    "result",
    "state",
    "le",
    "quantile",
    "dimension",
    "agent_id",
    "provider",
    "model",
    "job",
    "instance",
    "workspace",
    "workspace_name",
    "shard",
    "total_shards",
    "task",
];

/// Which keys of a label map become dimensions: those matching any
/// pattern of `allow` and none of `deny` (`*` matches any run of
/// characters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl Patterns {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }
    pub fn matches(&self, key: &str) -> bool {
        self.allow.iter().any(|p| glob(p, key)) && !self.deny.iter().any(|p| glob(p, key))
    }
}

/// `*`-only glob matching, linear in the text for each star segment.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What the operator chose to break the series down by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakdownConfig {
    pub provider: bool,
    pub model: bool,
    pub agent_labels: Patterns,
    pub task_labels: Patterns,
    /// Distinct values per dimension; later ones count as `other`.
    pub max_values: usize,
    /// Dimensions from labels (wildcards discover them); later keys are
    /// not broken down by.
    pub max_labels: usize,
    /// Combinations of values; a later one counts with every dimension `other`.
    pub max_slices: usize,
}

impl Default for BreakdownConfig {
    fn default() -> Self {
        BreakdownConfig {
            provider: false,
            model: false,
            agent_labels: Patterns::default(),
            task_labels: Patterns::default(),
            max_values: 50,
            max_labels: 10,
            // At 250 the worst case fits the shipped 64Mi with 30 %
            // headroom, steady and at restore (BENCHMARKS.md, "The default cap").
            max_slices: 250,
        }
    }
}

/// Patterns from a flag or the config file: trimmed, empty entries
/// dropped; a pattern must be able to match a label key.
pub fn breakdown_patterns(allow: &[String], deny: &[String]) -> Result<Patterns, String> {
    let clean = |v: &[String]| -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for p in v.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            if p.len() > crate::api::types::MAX_TEXT_LEN {
                return Err(format!(
                    "the pattern {} is longer than a label key can be ({} bytes)",
                    crate::text::shorten(p, 32),
                    crate::api::types::MAX_TEXT_LEN
                ));
            }
            out.push(p.to_string());
        }
        Ok(out)
    };
    let (allow, deny) = (clean(allow)?, clean(deny)?);
    if allow.is_empty() && !deny.is_empty() {
        return Err(
            "a deny list needs an allow list to narrow (e.g. --breakdown.agent-labels '*')".into(),
        );
    }
    Ok(Patterns { allow, deny })
}

impl BreakdownConfig {
    /// The bounds, checked: (setting, what is wrong).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=10_000).contains(&self.max_values) {
            return Err(("max_values", "must be from 1 to 10000".into()));
        }
        if self.max_labels > 64 {
            return Err(("max_labels", "must be at most 64".into()));
        }
        if !(2..=1_000_000).contains(&self.max_slices) {
            return Err(("max_combinations", "must be from 2 to 1000000".into()));
        }
        Ok(())
    }

    /// Whether any dimension is chosen.
    pub fn enabled(&self) -> bool {
        self.provider || self.model || !self.agent_labels.is_empty() || !self.task_labels.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Provider,
    Model,
    Agent(String),
    Task(String),
}

#[derive(Debug)]
struct Dim {
    /// The Prometheus label name.
    name: String,
    source: Source,
    values: HashSet<Arc<str>>,
    overflow_logged: bool,
    long_logged: bool,
}

/// The values of one agent's dimensions by position (task dimensions
/// empty), as the fleet holds them.
pub type AgentDims = Arc<[Arc<str>]>;

/// A combination of values by dimension position, trailing empty values
/// trimmed: keys made before a dimension was discovered stay valid and
/// no two keys render to the same series.
type Key = Box<[Arc<str>]>;

#[derive(Debug)]
pub struct Breakdown {
    cfg: BreakdownConfig,
    reserved: HashSet<String>,
    dims: Vec<Dim>,
    label_dims: usize,
    slices: HashMap<Key, u32>,
    keys: Vec<Key>,
    pub(super) counters: Vec<Counters>,
    empty: Arc<str>,
    other: Arc<str>,
    full_logged: bool,
    label_cap_logged: bool,
    /// The combinations of agent values admitted (capped apart from the
    /// task slices).
    agent_combinations: HashSet<Key>,
    agent_full_logged: bool,
    /// Values a budget names, by label name: admitted past `max_values`
    /// (budgets are few), or the budget's tasks would count under
    /// `other` and it would show nothing spent for good.
    pinned: HashMap<String, HashSet<String>>,
}

/// Prometheus label name from an object's label key: `[^a-zA-Z0-9_]`
/// becomes `_`, a leading digit gets a `_` before it.
pub fn sanitize(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

impl Breakdown {
    /// `workspace_labels`: the names the workspace's own labels take
    /// (`workspace`, `workspace_name`, configured extras), never reused.
    pub fn new(cfg: BreakdownConfig, workspace_labels: &[String]) -> Self {
        let mut b = Breakdown {
            reserved: RESERVED
                .iter()
                .map(|s| s.to_string())
                .chain(workspace_labels.iter().cloned())
                .collect(),
            cfg,
            dims: Vec::new(),
            label_dims: 0,
            slices: HashMap::new(),
            keys: Vec::new(),
            counters: Vec::new(),
            empty: Arc::from(""),
            other: Arc::from(super::bounded::OTHER),
            full_logged: false,
            label_cap_logged: false,
            agent_combinations: HashSet::new(),
            agent_full_logged: false,
            pinned: HashMap::new(),
        };
        if b.cfg.provider {
            b.add_dim("provider".into(), Source::Provider);
        }
        if b.cfg.model {
            b.add_dim("model".into(), Source::Model);
        }
        // Slice 0: nothing known (no dimension has a value).
        b.intern(Vec::new());
        b
    }

    fn add_dim(&mut self, name: String, source: Source) {
        self.dims.push(Dim {
            name,
            source,
            values: HashSet::new(),
            overflow_logged: false,
            long_logged: false,
        });
    }

    /// A name no dimension or workspace label has: `base`, or with
    /// `label_` before it when reserved, then `_2`, `_3`... while taken.
    fn free_name(&self, base: String) -> String {
        let base = if self.reserved.contains(&base) || base.starts_with("__") {
            format!("label_{}", base.trim_start_matches('_'))
        } else {
            base
        };
        let taken = |n: &str| self.reserved.contains(n) || self.dims.iter().any(|d| d.name == n);
        if !taken(&base) {
            return base;
        }
        // "_" (a key of symbols only) suffixed would start with "__".
        let stem = if base == "_" { "label" } else { base.as_str() };
        (2..)
            .map(|i| format!("{stem}_{i}"))
            .find(|n| !taken(n))
            .expect("unbounded")
    }

    /// Makes dimensions of the label keys `labels` has that `patterns`
    /// choose and that are not yet dimensions (in key order: the first
    /// key to take a name keeps it).
    fn discover(&mut self, labels: &Labels, task: bool) {
        let patterns = if task {
            &self.cfg.task_labels
        } else {
            &self.cfg.agent_labels
        };
        if patterns.is_empty() {
            return;
        }
        let new: Vec<String> = labels
            .iter()
            .map(|(k, _)| k)
            .filter(|k| patterns.matches(k))
            .filter(|k| {
                !self.dims.iter().any(|d| match &d.source {
                    Source::Agent(x) => !task && x == *k,
                    Source::Task(x) => task && x == *k,
                    _ => false,
                })
            })
            .cloned()
            .collect();
        for key in new {
            if !self.add_label_dim(key, task) {
                return;
            }
        }
    }

    /// Make a dimension of a label key; `false` when `max_labels` are taken.
    fn add_label_dim(&mut self, key: String, task: bool) -> bool {
        if self.label_dims >= self.cfg.max_labels {
            if !self.label_cap_logged {
                self.label_cap_logged = true;
                tracing::warn!(
                    key = %key,
                    max = self.cfg.max_labels,
                    "a label key matches the breakdown patterns, but --breakdown.max-labels dimensions are taken: it is not broken down by; narrow the patterns or raise the cap"
                );
            }
            return false;
        }
        let name = if task {
            self.free_name(format!("task_{}", sanitize(&key)))
        } else {
            self.free_name(sanitize(&key))
        };
        tracing::info!(key = %key, label = %name, task, "breaking series down by a new label");
        self.label_dims += 1;
        let source = if task {
            Source::Task(key)
        } else {
            Source::Agent(key)
        };
        self.add_dim(name, source);
        true
    }

    /// Admit `value` of the label `name` whatever `max_values` says: a
    /// budget names it.
    pub(super) fn pin(&mut self, name: &str, value: &str) {
        self.pinned
            .entry(name.to_string())
            .or_default()
            .insert(value.to_string());
    }

    /// How many values of the label `name` budgets name.
    fn pinned_of(&self, name: &str) -> usize {
        self.pinned.get(name).map_or(0, HashSet::len)
    }

    fn admit(&mut self, dim: usize, value: Option<&str>) -> Arc<str> {
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            return self.empty.clone();
        };
        let max = self.cfg.max_values;
        let d = &mut self.dims[dim];
        if let Some(known) = d.values.get(v) {
            return known.clone();
        }
        let pinned = self.pinned.get(&d.name).is_some_and(|p| p.contains(v));
        if (d.values.len() < max || pinned)
            && v != super::bounded::OTHER
            && v.len() <= super::bounded::MAX_NAME_LEN
        {
            let v: Arc<str> = Arc::from(v);
            d.values.insert(v.clone());
            return v;
        }
        // Not a count of values: a value over 128 bytes reaches here as
        // "other" (the API's reading bounds every name).
        if v == super::bounded::OTHER || v.len() > super::bounded::MAX_NAME_LEN {
            if !d.long_logged {
                d.long_logged = true;
                tracing::warn!(
                    label = %d.name,
                    max_bytes = super::bounded::MAX_NAME_LEN,
                    "a breakdown label value is longer than 128 bytes (or is \"other\" itself): it counts as \"other\""
                );
            }
        } else if !d.overflow_logged {
            d.overflow_logged = true;
            tracing::warn!(
                label = %d.name,
                max,
                "a breakdown label has more distinct values than --breakdown.max-values: later ones count as \"other\""
            );
        }
        self.other.clone()
    }

    /// The values of an agent's dimensions.
    pub fn agent_dims(&mut self, a: &Agent) -> AgentDims {
        self.discover(&a.labels, false);
        let mut out = Vec::with_capacity(self.dims.len());
        for i in 0..self.dims.len() {
            let v = match &self.dims[i].source {
                Source::Provider => a.config.model_provider.clone(),
                Source::Model => a.config.model.clone(),
                Source::Agent(k) => label(&a.labels, k).map(str::to_string),
                Source::Task(_) => None,
            };
            out.push(self.admit(i, v.as_deref()));
        }
        self.admit_agent_combination(&mut out);
        out.into()
    }

    /// The agent families' series are one per combination of agent
    /// values: those are capped like the tasks' (apart from them, so that
    /// they add no task series), past it every agent value `other`. `out`:
    /// an agent's values, one per dimension.
    fn admit_agent_combination(&mut self, out: &mut [Arc<str>]) {
        let key: Key = Self::agent_key(&out.to_vec().into()).into();
        if !self.agent_combinations.contains(&key) {
            // The last place is the overflow's.
            if self.agent_combinations.len() + 1 < self.cfg.max_slices.max(2) {
                self.agent_combinations.insert(key);
            } else {
                if !self.agent_full_logged {
                    self.agent_full_logged = true;
                    tracing::warn!(
                        max = self.cfg.max_slices,
                        "the agents' breakdown values reached --breakdown.max-combinations: later agents count with every breakdown label \"other\""
                    );
                }
                for (v, d) in out.iter_mut().zip(&self.dims) {
                    if !matches!(d.source, Source::Task(_)) {
                        *v = self.other.clone();
                    }
                }
                self.agent_combinations
                    .insert(Self::agent_key(&out.to_vec().into()).into());
            }
        }
    }

    /// The slice a task counts in: its agent's dimensions (`None`: no
    /// agent, or one not known) and its own labels'.
    pub fn slice(&mut self, agent: Option<&AgentDims>, t: &Task) -> u32 {
        self.discover(&t.labels, true);
        let mut key = Vec::with_capacity(self.dims.len());
        for i in 0..self.dims.len() {
            let v = match &self.dims[i].source {
                Source::Task(k) => {
                    let v = label(&t.labels, k).map(str::to_string);
                    self.admit(i, v.as_deref())
                }
                _ => agent
                    .and_then(|a| a.get(i).cloned())
                    .unwrap_or_else(|| self.empty.clone()),
            };
            key.push(v);
        }
        self.intern(key)
    }

    fn intern(&mut self, key: Vec<Arc<str>>) -> u32 {
        self.intern_or(key, |b| vec![b.other.clone(); b.dims.len()])
    }

    /// The slice of `key`, made if new; past the cap, that of
    /// `overflow`'s key (made even then: one per kind and dimension count).
    fn intern_or(
        &mut self,
        mut key: Vec<Arc<str>>,
        overflow: impl FnOnce(&Self) -> Vec<Arc<str>>,
    ) -> u32 {
        let trim = |key: &mut Vec<Arc<str>>| {
            while key.last().is_some_and(|v| v.is_empty()) {
                key.pop();
            }
        };
        trim(&mut key);
        if let Some(i) = self.slices.get(key.as_slice()) {
            return *i;
        }
        if self.keys.len() >= self.cfg.max_slices.max(2) {
            if !self.full_logged {
                self.full_logged = true;
                tracing::warn!(
                    max = self.cfg.max_slices,
                    "the breakdowns reached --breakdown.max-combinations: later ones count with every breakdown label \"other\""
                );
            }
            key = overflow(self);
            trim(&mut key);
            if let Some(i) = self.slices.get(key.as_slice()) {
                return *i;
            }
        }
        let i = self.keys.len() as u32;
        let key: Key = key.into();
        self.slices.insert(key.clone(), i);
        self.keys.push(key);
        self.counters.push(Counters::default());
        i
    }

    /// The Prometheus label names of the dimensions, in position order.
    pub fn names(&self) -> Vec<String> {
        self.dims.iter().map(|d| d.name.clone()).collect()
    }

    /// A key's values padded to every dimension, as label values.
    pub fn values_of(&self, key: &[Arc<str>]) -> Vec<String> {
        (0..self.dims.len())
            .map(|i| key.get(i).map_or(String::new(), |v| v.to_string()))
            .collect()
    }

    pub fn key(&self, slice: u32) -> &[Arc<str>] {
        &self.keys[slice as usize]
    }

    pub fn slices(&self) -> usize {
        self.keys.len()
    }

    /// Distinct values admitted per dimension (label name, count).
    pub fn value_counts(&self) -> Vec<(String, usize)> {
        self.dims
            .iter()
            .map(|d| (d.name.clone(), d.values.len()))
            .collect()
    }

    /// An agent's key for the agent gauges: its dimensions, trimmed.
    pub fn agent_key(dims: &AgentDims) -> Vec<Arc<str>> {
        let mut k: Vec<Arc<str>> = dims.to_vec();
        while k.last().is_some_and(|v| v.is_empty()) {
            k.pop();
        }
        k
    }
}

fn label<'a>(labels: &'a Labels, key: &str) -> Option<&'a str> {
    labels
        .binary_search_by(|(k, _)| k.as_str().cmp(key))
        .ok()
        .map(|i| labels[i].1.as_str())
}

/// A breakdown as a checkpoint keeps it: what it discovered (dimensions,
/// values, combinations) and each combination's counters.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SavedBreakdown {
    /// What it was configured as: another configuration restores none of it.
    config: String,
    dims: Vec<SavedDim>,
    keys: Vec<Vec<String>>,
    counters: Vec<SavedCounters>,
    agent_combinations: Vec<Vec<String>>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SavedDim {
    name: String,
    /// "provider", "model", "agent" or "task".
    source: String,
    key: String,
    values: Vec<String>,
}

impl Breakdown {
    /// What identifies a breakdown's configuration across restarts: its
    /// settings and the names it may not take.
    fn fingerprint(&self) -> String {
        let mut reserved: Vec<&String> = self.reserved.iter().collect();
        reserved.sort();
        format!("{:?} {:?}", self.cfg, reserved)
    }

    pub(super) fn save(&self) -> SavedBreakdown {
        let strs = |k: &[Arc<str>]| k.iter().map(|v| v.to_string()).collect::<Vec<_>>();
        let mut agent_combinations: Vec<Vec<String>> =
            self.agent_combinations.iter().map(|k| strs(k)).collect();
        agent_combinations.sort();
        SavedBreakdown {
            config: self.fingerprint(),
            dims: self
                .dims
                .iter()
                .map(|d| {
                    let (source, key) = match &d.source {
                        Source::Provider => ("provider", ""),
                        Source::Model => ("model", ""),
                        Source::Agent(k) => ("agent", k.as_str()),
                        Source::Task(k) => ("task", k.as_str()),
                    };
                    let mut values: Vec<String> = d.values.iter().map(|v| v.to_string()).collect();
                    values.sort();
                    SavedDim {
                        name: d.name.clone(),
                        source: source.into(),
                        key: key.into(),
                        values,
                    }
                })
                .collect(),
            keys: self.keys.iter().map(|k| strs(k)).collect(),
            counters: self.counters.iter().map(save_counters).collect(),
            agent_combinations,
        }
    }

    /// Take over what `s` saved. Under the same configuration it is taken
    /// as it was; under another, every saved combination is folded into
    /// this configuration's: a dimension both have keeps its values, one
    /// only this has is unknown (no label), one only `s` had is summed
    /// away. So a series that both configurations render (the same labels)
    /// goes on from its saved value, and the sum over the slices stays the
    /// workspace total. `Err`: it cannot be a breakdown's (the checkpoint
    /// is refused).
    pub(super) fn restore(&mut self, s: SavedBreakdown) -> Result<Remap, String> {
        let bad = |what: &str| Err(format!("breakdown: {what}"));
        if s.keys.len() != s.counters.len() || s.keys.is_empty() || !s.keys[0].is_empty() {
            return bad("combinations and their counters disagree");
        }
        // The widest the settings allow (a checkpoint of wider settings
        // than these is folded into these, not refused).
        if s.keys.len() > 1_000_000 + 64 || s.dims.len() > 2 + 64 {
            return bad("more combinations or dimensions than the bounds allow");
        }
        let same = s.config == self.fingerprint();
        let mut dims = Vec::with_capacity(s.dims.len());
        for d in s.dims {
            let source = match d.source.as_str() {
                "provider" => Source::Provider,
                "model" => Source::Model,
                "agent" => Source::Agent(d.key),
                "task" => Source::Task(d.key),
                _ => return bad("a dimension of an unknown source"),
            };
            if d.values.len() > 10_000 || dims.iter().any(|x: &Dim| x.name == d.name) {
                return bad("a dimension with too many values, or a name twice");
            }
            dims.push(Dim {
                name: d.name,
                source,
                values: d.values.into_iter().map(Arc::from).collect(),
                overflow_logged: false,
                long_logged: false,
            });
        }
        let n = dims.len();
        let key = |k: Vec<String>| -> Key { k.into_iter().map(Arc::from).collect() };
        let mut seen = HashSet::with_capacity(s.keys.len());
        let mut keys = Vec::with_capacity(s.keys.len());
        for k in s.keys {
            if k.len() > n || k.last().is_some_and(|v| v.is_empty()) {
                return bad("a combination that is not one of its dimensions");
            }
            let k = key(k);
            if !seen.insert(k.clone()) {
                return bad("a combination twice");
            }
            keys.push(k);
        }
        drop(seen);
        let mut counters = Vec::with_capacity(s.counters.len());
        for c in s.counters {
            counters.push(restore_counters(c)?);
        }
        if same {
            if keys.len() > self.cfg.max_slices.max(2) + 64
                || dims
                    .iter()
                    .any(|d| d.values.len() > self.cfg.max_values + self.pinned_of(&d.name))
            {
                return bad("more combinations or values than its own settings allow");
            }
            // Taken as they were, so bounded here as live ones are: a
            // name that is no label name, or a label of the families'
            // own (a duplicate label breaks the whole scrape); a value
            // longer than any admitted.
            let name_ok = |d: &Dim| match d.source {
                Source::Provider => d.name == "provider",
                Source::Model => d.name == "model",
                _ => {
                    sanitize(&d.name) == d.name
                        && !d.name.starts_with("__")
                        && !self.reserved.contains(&d.name)
                }
            };
            let long = |v: &Arc<str>| v.len() > super::bounded::MAX_NAME_LEN;
            if !dims.iter().all(name_ok)
                || dims.iter().any(|d| d.values.iter().any(long))
                || keys.iter().any(|k| k.iter().any(long))
            {
                return bad("a label name or value no breakdown makes");
            }
            let slices = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i as u32))
                .collect();
            self.label_dims = dims
                .iter()
                .filter(|d| matches!(d.source, Source::Agent(_) | Source::Task(_)))
                .count();
            let old = (0..dims.len()).map(Some).collect();
            self.dims = dims;
            self.slices = slices;
            self.keys = keys;
            self.counters = counters;
            self.agent_combinations = s.agent_combinations.into_iter().map(key).collect();
            return Ok(Remap {
                slices: (0..self.keys.len() as u32).collect(),
                dims: old,
                changed: false,
            });
        }
        // Another configuration: the label dimensions this one chooses
        // too come first, in their saved order (their names stay).
        for d in &dims {
            let (key, task) = match &d.source {
                Source::Agent(k) if self.cfg.agent_labels.matches(k) => (k, false),
                Source::Task(k) if self.cfg.task_labels.matches(k) => (k, true),
                _ => continue,
            };
            if !self.has_source(&d.source) && !self.add_label_dim(key.clone(), task) {
                break;
            }
        }
        let old: Vec<Option<usize>> = dims
            .iter()
            .map(|d| self.dims.iter().position(|x| x.source == d.source))
            .collect();
        let mut remap = Remap {
            slices: Vec::with_capacity(keys.len()),
            dims: old,
            changed: true,
        };
        for (k, c) in keys.iter().zip(&counters) {
            let values: Vec<String> = k.iter().map(|v| v.to_string()).collect();
            let projected = self.project(&remap, &values, true);
            let i = self.intern(projected);
            self.counters[i as usize].merge(c);
            remap.slices.push(i);
        }
        Ok(remap)
    }

    /// What a fleet saved without breakdowns maps to: every task in the
    /// slice of no values.
    pub(super) fn restore_none(&mut self) -> Remap {
        Remap {
            slices: Vec::new(),
            dims: Vec::new(),
            changed: true,
        }
    }

    /// Fold `c` into the slice of no values (slice 0).
    pub(super) fn add_unattributed(&mut self, c: &Counters) {
        self.counters[0].merge(c);
    }

    /// Every slice's counters summed.
    pub(super) fn sum(&self) -> Counters {
        let mut total = Counters::default();
        for c in &self.counters {
            total.merge(c);
        }
        total
    }

    fn has_source(&self, source: &Source) -> bool {
        self.dims.iter().any(|d| d.source == *source)
    }

    /// Saved values by saved position, as values of this breakdown's
    /// dimensions (admitted, so bounded as live ones are); `task`: the
    /// task dimensions' too, else those are unknown.
    fn project(&mut self, remap: &Remap, values: &[String], task: bool) -> Vec<Arc<str>> {
        let mut out = vec![self.empty.clone(); self.dims.len()];
        for (i, v) in values.iter().enumerate() {
            let Some(Some(j)) = remap.dims.get(i) else {
                continue;
            };
            if !task && matches!(self.dims[*j].source, Source::Task(_)) {
                continue;
            }
            out[*j] = if v == super::bounded::OTHER {
                self.other.clone()
            } else {
                self.admit(*j, Some(v))
            };
        }
        out
    }

    /// An agent's values as saved, as this breakdown's.
    pub(super) fn dims_from(&mut self, remap: &Remap, values: Vec<String>) -> AgentDims {
        if values.len() > self.dims.len().max(remap.dims.len()) {
            return Arc::from(Vec::new());
        }
        let mut v = self.project(remap, &values, false);
        if remap.changed {
            // Under the cap of these settings, which may be lower.
            self.admit_agent_combination(&mut v);
        }
        while v.last().is_some_and(|v| v.is_empty()) {
            v.pop();
        }
        v.into()
    }

    /// Free the combinations no longer in use, and then the values no
    /// combination or agent holds: past `max_values` or
    /// `max_combinations`, values of agents long gone would otherwise make
    /// every later one `other` for good. A combination is in use while an
    /// open or remembered task counts in it (`used`, by slice) or, unless
    /// it has a task label's value (held by tasks only), an agent (held,
    /// or gone within the horizon its values are kept for) has its agent
    /// values (`agents`). What a freed combination counted
    /// is folded into the `other` one, so the sum over the slices stays
    /// the workspace total. Returns where each old slice went, when any
    /// was freed.
    pub(super) fn expire(
        &mut self,
        used: &[bool],
        agents: &HashSet<Vec<Arc<str>>>,
    ) -> Option<Vec<u32>> {
        let task_dim: Vec<bool> = self
            .dims
            .iter()
            .map(|d| matches!(d.source, Source::Task(_)))
            .collect();
        let other_key: Key = {
            let mut k = vec![self.other.clone(); self.dims.len()];
            while k.last().is_some_and(|v| v.is_empty()) {
                k.pop();
            }
            k.into()
        };
        let agent_part = |k: &Key| -> Vec<Arc<str>> {
            let mut a: Vec<Arc<str>> = k
                .iter()
                .zip(&task_dim)
                .map(|(v, t)| if *t { self.empty.clone() } else { v.clone() })
                .collect();
            while a.last().is_some_and(|v| v.is_empty()) {
                a.pop();
            }
            a
        };
        let free: Vec<bool> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                if i == 0 || *k == other_key || used.get(i).copied().unwrap_or(true) {
                    return false;
                }
                // A task label's value is held by tasks only: one-off
                // values (a run id) go with their last remembered task,
                // whether or not an agent of the rest stays.
                let task_value = k
                    .iter()
                    .zip(&task_dim)
                    .any(|(v, t)| *t && !v.is_empty() && **v != *super::bounded::OTHER);
                let a = agent_part(k);
                task_value || !(a.is_empty() || agents.contains(&a))
            })
            .collect();
        let freed = free.iter().filter(|f| **f).count();
        // The agent combinations and values in use go on either way.
        self.agent_combinations = agents.iter().map(|k| k.clone().into()).collect();
        if freed == 0 {
            return None;
        }
        let old_keys = std::mem::take(&mut self.keys);
        let old_counters = std::mem::take(&mut self.counters);
        self.slices.clear();
        let mut remap = vec![0u32; old_keys.len()];
        let mut folded = Counters::default();
        for (i, (k, c)) in old_keys.into_iter().zip(old_counters).enumerate() {
            if free[i] {
                folded.merge(&c);
                continue;
            }
            let j = self.keys.len() as u32;
            self.slices.insert(k.clone(), j);
            self.keys.push(k);
            self.counters.push(c);
            remap[i] = j;
        }
        // Values still named by a combination or an agent.
        for d in &mut self.dims {
            d.values.clear();
            d.overflow_logged = false;
        }
        let held: Vec<Vec<Arc<str>>> = self
            .keys
            .iter()
            .map(|k| k.to_vec())
            .chain(agents.iter().cloned())
            .collect();
        for k in held {
            for (i, v) in k.into_iter().enumerate() {
                if !v.is_empty() && &*v != super::bounded::OTHER {
                    if let Some(d) = self.dims.get_mut(i) {
                        d.values.insert(v);
                    }
                }
            }
        }
        self.full_logged = false;
        self.agent_full_logged = false;
        let o = self.intern(other_key.to_vec());
        self.counters[o as usize].merge(&folded);
        for (i, f) in free.iter().enumerate() {
            if *f {
                remap[i] = o;
            }
        }
        tracing::info!(
            freed,
            "breakdown combinations of values no agent or remembered task has any more were freed (their counts go on under \"other\")"
        );
        Some(remap)
    }
}

/// How a saved breakdown's slices and dimension positions map onto this
/// one's.
#[derive(Debug)]
pub(super) struct Remap {
    /// Saved slice -> slice here.
    slices: Vec<u32>,
    /// Saved dimension position -> position here (`None`: not one here).
    dims: Vec<Option<usize>>,
    /// Whether it was saved under other settings (and folded into these).
    pub changed: bool,
}

impl Remap {
    /// Where a saved slice counts here (slice 0 when it is not one).
    pub(super) fn slice(&self, old: u32) -> u32 {
        self.slices.get(old as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log lines `f` writes.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Out(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Out {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Out::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let logs = out.0.lock().unwrap().clone();
        String::from_utf8(logs).unwrap()
    }

    #[test]
    fn a_label_value_over_128_bytes_is_logged_as_too_long_not_as_too_many() {
        let cfg = BreakdownConfig {
            task_labels: Patterns {
                allow: vec!["team".into()],
                deny: vec![],
            },
            ..Default::default()
        };
        let mut b = Breakdown::new(cfg, &["workspace".into()]);
        b.discover(&vec![("team".to_string(), "a".to_string())], true);
        // As the API reads a 129-byte value (types::bound_name), and as
        // one would come if it did not.
        let long = crate::api::types::bound_name(&"x".repeat(129));
        let logs = logs_of(|| {
            assert_eq!(&*b.admit(0, Some(&long)), "other");
            assert_eq!(&*b.admit(0, Some(&"y".repeat(129))), "other");
        });
        assert!(logs.contains("longer than 128 bytes"), "{logs}");
        assert!(!logs.contains("max-values"), "{logs}");
        assert_eq!(logs.matches("longer than 128 bytes").count(), 1, "{logs}");
    }

    #[test]
    fn globs() {
        assert!(glob("team", "team"));
        assert!(!glob("team", "teams"));
        assert!(glob("team*", "team_lead"));
        assert!(glob("*", ""));
        assert!(glob("*-id", "cost-id"));
        assert!(!glob("*-id", "cost-ids"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn names_are_sanitised_and_collisions_resolved_in_key_order() {
        assert_eq!(sanitize("app.kubernetes.io/name"), "app_kubernetes_io_name");
        assert_eq!(sanitize("1st"), "_1st");
        let cfg = BreakdownConfig {
            agent_labels: Patterns {
                allow: vec!["*".into()],
                deny: vec!["secret*".into()],
            },
            ..Default::default()
        };
        let mut b = Breakdown::new(cfg, &["workspace".into(), "region".into()]);
        let labels: Labels = ["status", "team-a", "team_a", "region", "secret_x", "__x"]
            .iter()
            .map(|k| (k.to_string(), "v".to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        b.discover(&labels, false);
        assert_eq!(
            b.names(),
            [
                "label_x",
                "label_region",
                "label_status",
                "team_a",
                "team_a_2"
            ]
        );
    }
}
