//! The YAML configuration file (`--config.file`): many workspaces, each with
//! its own API URL, key source, labels, budget share and intervals.
//!
//! Parsed in two steps, as postgres_exporter does: the YAML becomes a raw
//! tree, every problem in it is collected with its path in the file
//! (`workspaces[2].poll_interval: ...`), and only a file without problems
//! becomes the validated [`WorkspaceConfig`] list the rest of the code takes.

use crate::api::ClientConfig;
use crate::env::Env;
use crate::files::{FileError, FileLimits, Problems};
use crate::poll::PollConfig;
use crate::secret::Secret;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// One workspace to watch, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceConfig {
    /// Identity across reloads: the name, else the id, else the key source.
    pub key: String,
    /// Display name, exported as the label `workspace_name`.
    pub name: Option<String>,
    /// The workspace id the key must belong to, when known in advance: lets
    /// a shard skip a workspace it does not own without a request.
    pub expected_id: Option<String>,
    pub client: ClientConfig,
    pub poll: PollConfig,
    /// Extra labels on every series of this workspace.
    pub labels: BTreeMap<String, String>,
}

/// Labels the exporter sets itself; a config may not reuse them.
pub const RESERVED_LABELS: &[&str] = &[
    "workspace",
    "workspace_name",
    "status",
    "code",
    "kind",
    "endpoint",
    "resource",
    "state",
    "le",
    "result",
    "version",
    "revision",
    "shard",
    "job",
    "instance",
    // the breakdown labels
    "provider",
    "model",
    "agent_id",
    "dimension",
];

const TOP_KEYS: &[&str] = &["defaults", "workspaces", "storage", "prices"];
const STORAGE_KEYS: &[&str] = &["path", "interval", "max_size", "write_timeout"];
const PRICES_KEYS: &[&str] = &["file", "provider_aliases", "max_entries", "max_size"];
const BUDGET_KEYS: &[&str] = &["name", "match", "monthly", "daily"];
/// The per-workspace settings that are not durations (the durations are
/// the modules' `DURATIONS` tables, see [`setting_keys`]).
const OTHER_SETTING_KEYS: &[&str] = &[
    "api_url",
    "budget_share",
    "max_attempts",
    "max_body_size",
    "max_pages",
    "max_listing_bytes",
    "max_cursor_length",
    "breakdown",
    "heartbeat_series_max",
    "max_agent_lookups",
    "budgets",
];

/// Every key a workspace or `defaults:` may set.
fn setting_keys() -> Vec<&'static str> {
    let mut keys: Vec<&str> = OTHER_SETTING_KEYS[..2].to_vec();
    keys.extend(crate::poll::settings::DURATIONS.iter().map(|r| r.0));
    keys.extend(crate::fleet::settings::DURATIONS.iter().map(|r| r.0));
    keys.extend(crate::api::settings::DURATIONS.iter().map(|r| r.0));
    keys.extend(&OTHER_SETTING_KEYS[2..]);
    keys
}

/// The flags' defaults, for what a file leaves unset: as if no flag and
/// no environment variable were given.
pub(crate) fn flag_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .mut_args(|a| a.env(None::<&'static str>));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("every flag has a default or is optional");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

/// What reading a workspace takes besides its mapping: where relative key
/// files are, the environment, the file bounds, and the flags' defaults
/// for what the file leaves unset (made once per file).
struct Context<'a> {
    base_dir: &'a Path,
    env: &'a dyn Env,
    files: &'a FileLimits,
    api: crate::api::settings::ApiArgs,
    poll: crate::poll::settings::PollArgs,
    fleet: crate::fleet::settings::FleetArgs,
}

const BREAKDOWN_KEYS: &[&str] = &[
    "provider",
    "model",
    "agent_labels",
    "agent_labels_deny",
    "task_labels",
    "task_labels_deny",
    "max_values",
    "max_labels",
    "max_combinations",
];

/// A workspace's `breakdown:` (else the one in `defaults`, whole).
fn breakdown(
    m: &serde_norway::Mapping,
    d: &serde_norway::Mapping,
    at: &str,
    p: &mut Vec<String>,
) -> crate::fleet::BreakdownConfig {
    let mut cfg = crate::fleet::BreakdownConfig::default();
    let Some((v, path)) = setting(m, d, at, "breakdown") else {
        return cfg;
    };
    let Value::Mapping(b) = v else {
        p.push(format!(
            "{path}: must be a mapping (provider, model, agent_labels, ...)"
        ));
        return cfg;
    };
    check_keys(b, &format!("{path}."), BREAKDOWN_KEYS, p);
    let flag = |k: &str, p: &mut Vec<String>| match b.get(k) {
        None => false,
        Some(Value::Bool(x)) => *x,
        Some(_) => {
            p.push(format!("{path}.{k}: must be true or false"));
            false
        }
    };
    cfg.provider = flag("provider", p);
    cfg.model = flag("model", p);
    let list = |k: &str, p: &mut Vec<String>| -> Vec<String> {
        match b.get(k) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(|i| match i.as_str() {
                    Some(s) => Some(s.to_string()),
                    None => {
                        p.push(format!("{path}.{k}: every entry must be a string"));
                        None
                    }
                })
                .collect(),
            Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
            Some(_) => {
                p.push(format!(
                    "{path}.{k}: must be a list of label keys, e.g. [team, env]"
                ));
                Vec::new()
            }
        }
    };
    let patterns = |allow: &str, deny: &str, p: &mut Vec<String>| {
        let (a, dn) = (list(allow, p), list(deny, p));
        crate::fleet::breakdown_patterns(&a, &dn).unwrap_or_else(|e| {
            p.push(format!("{path}.{allow}: {e}"));
            Default::default()
        })
    };
    cfg.agent_labels = patterns("agent_labels", "agent_labels_deny", p);
    cfg.task_labels = patterns("task_labels", "task_labels_deny", p);
    let count = |k: &str, default: usize, p: &mut Vec<String>| match b.get(k) {
        None => default,
        Some(v) => v.as_u64().map(|n| n as usize).unwrap_or_else(|| {
            p.push(format!("{path}.{k}: must be a whole number"));
            default
        }),
    };
    cfg.max_values = count("max_values", cfg.max_values, p);
    cfg.max_labels = count("max_labels", cfg.max_labels, p);
    cfg.max_slices = count("max_combinations", cfg.max_slices, p);
    if let Err((k, e)) = cfg.check() {
        p.push(format!("{path}.{k}: {e}"));
    }
    cfg
}
const WORKSPACE_ONLY_KEYS: &[&str] = &["name", "id", "api_key_file", "api_key_env", "labels"];

/// Read and validate a configuration file. Relative key file paths are
/// taken relative to the file's directory. Problems do not name the file:
/// the caller says which file it read.
pub fn load(
    path: &Path,
    env: &dyn Env,
    files: &FileLimits,
) -> Result<Vec<WorkspaceConfig>, Problems> {
    load_file(path, env, files).map(|f| f.workspaces)
}

/// What a configuration file holds.
#[derive(Debug)]
pub struct FileConfig {
    pub workspaces: Vec<WorkspaceConfig>,
    /// `storage:` (read at the start only: a reload keeps the storage).
    pub storage: Option<crate::storage::StorageConfig>,
    /// `prices:`, what it sets (the `--prices.*` flags win over it).
    pub prices: Option<FilePrices>,
}

/// The file's `prices:` as written: each key `None` when unset, so that
/// the `--prices.*` flags can win key by key (`config::resolve_prices`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilePrices {
    /// Relative to the configuration file's directory.
    pub file: Option<std::path::PathBuf>,
    pub provider_aliases: Option<BTreeMap<String, String>>,
    pub max_entries: Option<usize>,
    pub max_size: Option<u64>,
}

pub fn load_file(path: &Path, env: &dyn Env, files: &FileLimits) -> Result<FileConfig, Problems> {
    // Bounded as YAML (--files.max-yaml-size): the parser's memory is
    // a multiple of the text.
    let text = crate::files::read_yaml(path, files).map_err(|e| Problems(vec![e.to_string()]))?;
    parse_file(&text, path.parent().unwrap_or(Path::new(".")), env, files)
}

pub fn parse(
    text: &str,
    base_dir: &Path,
    env: &dyn Env,
    files: &FileLimits,
) -> Result<Vec<WorkspaceConfig>, Problems> {
    parse_file(text, base_dir, env, files).map(|f| f.workspaces)
}

/// `storage:`: where checkpoints go (a relative path is taken relative
/// to the file's directory), how often, how large at most.
fn storage(
    v: Option<&Value>,
    base_dir: &Path,
    p: &mut Vec<String>,
) -> Option<crate::storage::StorageConfig> {
    use crate::storage::StorageConfig;
    let m = match v {
        None | Some(Value::Null) => return None,
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            p.push(
                "storage: must be a mapping with path: (and optionally interval:, max_size:)"
                    .into(),
            );
            return None;
        }
    };
    check_keys(m, "storage.", STORAGE_KEYS, p);
    let Some(path) = m
        .get("path")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        p.push("storage.path: a directory is needed".into());
        return None;
    };
    let mut cfg = StorageConfig::new(base_dir.join(path));
    if let Some(v) = m.get("interval") {
        match v.as_str().map(humantime::parse_duration) {
            Some(Ok(d)) => cfg.interval = d,
            _ => p.push("storage.interval: a duration such as 10s".into()),
        }
    }
    if let Some(v) = m.get("max_size") {
        match v.as_str().map(crate::units::parse_size) {
            Some(Ok(n)) => cfg.max_size = n,
            _ => p.push("storage.max_size: a size such as 512MiB".into()),
        }
    }
    if let Some(v) = m.get("write_timeout") {
        match v.as_str().map(humantime::parse_duration) {
            Some(Ok(d)) => cfg.write_timeout = d,
            _ => p.push("storage.write_timeout: a duration such as 5s".into()),
        }
    }
    Some(cfg)
}

/// `prices:`: where the price table is (a relative path is taken relative
/// to the file's directory), the provider aliases and the table's bounds.
fn prices(v: Option<&Value>, base_dir: &Path, p: &mut Vec<String>) -> Option<FilePrices> {
    let m = match v {
        None | Some(Value::Null) => return None,
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            p.push("prices: must be a mapping with file: (and optionally provider_aliases:, max_entries:, max_size:)".into());
            return None;
        }
    };
    check_keys(m, "prices.", PRICES_KEYS, p);
    let mut cfg = FilePrices::default();
    match m.get("file") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if !f.trim().is_empty() => cfg.file = Some(base_dir.join(f)),
        Some(_) => p.push("prices.file: must be the path of a price table".into()),
    }
    match m.get("provider_aliases") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(a)) => {
            let mut aliases = BTreeMap::new();
            for (k, v) in a {
                match (k.as_str(), v.as_str()) {
                    (Some(k), Some(v)) if !k.is_empty() && !v.is_empty() => {
                        aliases.insert(k.to_string(), v.to_string());
                    }
                    _ => p.push(format!(
                        "prices.provider_aliases: {}: every entry must be a ClawMesh provider and the table's name for it, both non-empty strings (google: gemini)",
                        k.as_str().map_or_else(|| format!("{k:?}"), str::to_string)
                    )),
                }
            }
            cfg.provider_aliases = Some(aliases);
        }
        Some(_) => p.push(
            "prices.provider_aliases: must be a mapping of ClawMesh provider to the table's (google: gemini)".into(),
        ),
    }
    match m.get("max_entries") {
        None => {}
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => cfg.max_entries = Some(n as usize),
            _ => p.push("prices.max_entries: must be a whole number of at least 1".into()),
        },
    }
    match m.get("max_size") {
        None => {}
        Some(v) => {
            let parsed = match v {
                Value::Number(n) => n.as_u64().ok_or_else(|| "not a whole number".to_string()),
                Value::String(s) => crate::units::parse_size(s),
                _ => Err("write it as a size such as \"8MiB\"".to_string()),
            };
            match parsed {
                Ok(n) if n >= 1 => cfg.max_size = Some(n),
                Ok(_) => p.push("prices.max_size: must be at least 1 byte".into()),
                Err(e) => p.push(format!("prices.max_size: {e}")),
            }
        }
    }
    Some(cfg)
}

pub fn parse_file(
    text: &str,
    base_dir: &Path,
    env: &dyn Env,
    files: &FileLimits,
) -> Result<FileConfig, Problems> {
    // Before the parser: its work on deep nesting is quadratic.
    crate::files::check_yaml_depth(text, files.max_yaml_depth)
        .map_err(|e| Problems(vec![format!("the file {e}")]))?;
    let root: Value =
        serde_norway::from_str(text).map_err(|e| Problems(vec![format!("not valid YAML: {e}")]))?;
    let mut p = Vec::new();
    let Some(top) = root.as_mapping() else {
        return Err(Problems(vec![
            "the file must be a mapping with `workspaces:` (and optionally `defaults:`)".into(),
        ]));
    };
    check_keys(top, "", TOP_KEYS, &mut p);
    let empty = serde_norway::Mapping::new();
    let defaults = match top.get("defaults") {
        None | Some(Value::Null) => &empty,
        Some(Value::Mapping(m)) => {
            check_keys(m, "defaults.", &setting_keys(), &mut p);
            m
        }
        Some(_) => {
            p.push("defaults: must be a mapping".into());
            &empty
        }
    };
    let list = match top.get("workspaces") {
        Some(Value::Sequence(s)) if !s.is_empty() => s.as_slice(),
        Some(Value::Sequence(_)) | None | Some(Value::Null) => {
            p.push("workspaces: at least one workspace is needed".into());
            &[]
        }
        Some(_) => {
            p.push("workspaces: must be a list".into());
            &[]
        }
    };
    let cx = Context {
        base_dir,
        env,
        files,
        api: flag_defaults(),
        poll: flag_defaults(),
        fleet: flag_defaults(),
    };
    let mut out = Vec::new();
    let mut keys = BTreeSet::new();
    for (i, w) in list.iter().enumerate() {
        let at = format!("workspaces[{i}]");
        let Some(m) = w.as_mapping() else {
            p.push(format!("{at}: must be a mapping"));
            continue;
        };
        let allowed: Vec<&str> = setting_keys()
            .into_iter()
            .chain(WORKSPACE_ONLY_KEYS.iter().copied())
            .collect();
        check_keys(m, &format!("{at}."), &allowed, &mut p);
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            if !keys.insert(name.to_string()) {
                p.push(format!("{at}: another workspace has the same identity {name:?}: give each a distinct name"));
            }
        }
        let before = p.len();
        let ws = workspace(m, defaults, &at, &cx, &mut p);
        if let Some(ws) = ws.filter(|_| p.len() == before) {
            if ws.name.is_none() && !keys.insert(ws.key.clone()) {
                p.push(format!(
                    "{at}: another workspace has the same identity {:?}: give each a distinct name",
                    ws.key
                ));
            }
            out.push(ws);
        }
    }
    let storage = storage(top.get("storage"), base_dir, &mut p);
    let prices = prices(top.get("prices"), base_dir, &mut p);
    if p.is_empty() {
        Ok(FileConfig {
            workspaces: out,
            storage,
            prices,
        })
    } else {
        // A bad `defaults:` entry is found once per workspace: say it once.
        let mut seen = BTreeSet::new();
        p.retain(|l| seen.insert(l.clone()));
        Err(Problems(p))
    }
}

fn check_keys(m: &serde_norway::Mapping, at: &str, allowed: &[&str], p: &mut Vec<String>) {
    for k in m.keys() {
        match k.as_str() {
            Some(k) if allowed.contains(&k) => {}
            Some(k) => p.push(format!(
                "{at}{k}: unknown key (known: {})",
                allowed.join(", ")
            )),
            None => p.push(format!("{at}{k:?}: keys must be strings")),
        }
    }
}

/// A setting from the workspace, else from `defaults`, with the path it came from.
fn setting<'a>(
    m: &'a serde_norway::Mapping,
    d: &'a serde_norway::Mapping,
    at: &str,
    k: &str,
) -> Option<(&'a Value, String)> {
    m.get(k)
        .map(|v| (v, format!("{at}.{k}")))
        .or_else(|| d.get(k).map(|v| (v, format!("defaults.{k}"))))
}

fn string(v: &Value, path: &str, p: &mut Vec<String>) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        _ => {
            p.push(format!("{path}: must be a non-empty string"));
            None
        }
    }
}

/// The `max_*` size and count bounds of a workspace (or its defaults); the
/// durations come from the table, and the whole is checked after.
fn api_limits(
    m: &serde_norway::Mapping,
    d: &serde_norway::Mapping,
    at: &str,
    p: &mut Vec<String>,
) -> crate::api::ApiLimits {
    let def = crate::api::ApiLimits::default();
    let size = |k: &str, default: u64, p: &mut Vec<String>| match setting(m, d, at, k) {
        None => default,
        Some((v, path)) => {
            let parsed = match v {
                Value::Number(n) => n.as_u64().ok_or_else(|| "not a whole number".to_string()),
                Value::String(s) => crate::units::parse_size(s),
                _ => Err("write it as a size such as \"8MiB\"".to_string()),
            };
            parsed.unwrap_or_else(|e| {
                p.push(format!("{path}: {e}"));
                default
            })
        }
    };
    let max_body_bytes = size("max_body_size", def.max_body_bytes, p);
    let max_listing_bytes = size("max_listing_bytes", def.max_listing_bytes, p);
    let count = |k: &str, default: u64, p: &mut Vec<String>| match setting(m, d, at, k) {
        None => default,
        Some((v, path)) => match v.as_u64() {
            Some(n) if (1..=u32::MAX as u64).contains(&n) => n,
            _ => {
                p.push(format!("{path}: must be a whole number of at least 1"));
                default
            }
        },
    };
    crate::api::ApiLimits {
        max_body_bytes,
        max_pages: count("max_pages", def.max_pages.into(), p) as u32,
        max_listing_bytes,
        max_cursor_len: count("max_cursor_length", def.max_cursor_len as u64, p) as usize,
        ..def
    }
}

/// Fill `cfg` from a module's table of durations: each one the workspace
/// (or `defaults:`) sets, else the flag's default.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn durations<A, C>(
    table: &crate::units::DurationRows<A, C>,
    flags: &A,
    cfg: &mut C,
    m: &serde_norway::Mapping,
    d: &serde_norway::Mapping,
    at: &str,
    p: &mut Vec<String>,
) {
    for (key, flag, field) in table {
        *field(cfg) = duration(m, d, at, key, p).unwrap_or_else(|| flag(flags));
    }
}

/// A duration the workspace (or `defaults:`) sets; `None` when unset or bad
/// (the problem is noted).
fn duration(
    m: &serde_norway::Mapping,
    d: &serde_norway::Mapping,
    at: &str,
    k: &str,
    p: &mut Vec<String>,
) -> Option<Duration> {
    let (v, path) = setting(m, d, at, k)?;
    match v.as_str().map(humantime::parse_duration) {
        Some(Ok(x)) if !x.is_zero() => Some(x),
        Some(Ok(_)) => {
            p.push(format!("{path}: must be longer than zero"));
            None
        }
        Some(Err(e)) => {
            p.push(format!(
                "{path}: bad duration {:?}: {e} (examples: 15s, 2m, 1h30m)",
                v.as_str().unwrap_or("")
            ));
            None
        }
        None => {
            p.push(format!(
                "{path}: bad duration: write it as a string such as \"15s\""
            ));
            None
        }
    }
}

fn workspace(
    m: &serde_norway::Mapping,
    d: &serde_norway::Mapping,
    at: &str,
    cx: &Context,
    p: &mut Vec<String>,
) -> Option<WorkspaceConfig> {
    let name = m
        .get("name")
        .and_then(|v| string(v, &format!("{at}.name"), p));
    let expected_id = m.get("id").and_then(|v| string(v, &format!("{at}.id"), p));
    // Problems are noted in the order they always were: the key, the
    // client's URL and shares, the scheduler, the client's bounds, labels.
    let key = key(m, at, cx, p);
    let (api_url, mut client) = client(m, d, at, cx, p);
    let poll = poll(m, d, at, cx, p);
    client_bounds(&mut client, m, d, at, cx, p);
    let labels = labels(m, at, p);
    let ((key, source), client) = (
        key?,
        ClientConfig {
            base_url: api_url?,
            ..client
        },
    );
    let identity = name
        .clone()
        .or_else(|| expected_id.clone())
        .unwrap_or_else(|| format!("{source}@{}", client.base_url));
    Some(WorkspaceConfig {
        key: identity,
        name,
        expected_id,
        client: ClientConfig { key, ..client },
        poll,
        labels,
    })
}

/// The workspace's key, from `api_key_file` (relative to the file's
/// directory) or `api_key_env`, with where it came from (`file:a.key`).
fn key(
    m: &serde_norway::Mapping,
    at: &str,
    cx: &Context,
    p: &mut Vec<String>,
) -> Option<(Secret, String)> {
    let key_file = m
        .get("api_key_file")
        .and_then(|v| string(v, &format!("{at}.api_key_file"), p));
    let key_env = m
        .get("api_key_env")
        .and_then(|v| string(v, &format!("{at}.api_key_env"), p));
    match (&key_file, &key_env) {
        (Some(f), None) => {
            let path = cx.base_dir.join(f);
            match crate::files::read_to_string(&path, cx.files) {
                Ok(s) if !s.trim().is_empty() => Some((Secret::new(s.trim()), format!("file:{f}"))),
                Ok(_) => {
                    p.push(format!("{at}.api_key_file: {} is empty", path.display()));
                    None
                }
                Err(e) => {
                    p.push(match e {
                        FileError::Io(e) => {
                            format!("{at}.api_key_file: cannot read {}: {e}", path.display())
                        }
                        e => format!("{at}.api_key_file: {} {e}", path.display()),
                    });
                    None
                }
            }
        }
        (None, Some(var)) => match cx.env.var(var).filter(|k| !k.trim().is_empty()) {
            Some(k) => Some((Secret::new(k.trim()), format!("env:{var}"))),
            None => {
                p.push(format!(
                    "{at}.api_key_env: the environment variable {var} is not set"
                ));
                None
            }
        },
        (Some(_), Some(_)) => {
            p.push(format!("{at}: give api_key_file or api_key_env, not both"));
            None
        }
        (None, None) => {
            p.push(format!(
                "{at}: needs api_key_file or api_key_env (a key with agents:read and tasks:read)"
            ));
            None
        }
    }
}

/// The API client's URL (`None` when unusable: the problem is noted), and
/// its budget and attempts; the bounds come after ([`client_bounds`]).
fn client(
    m: &serde_norway::Mapping,
    d: &serde_norway::Mapping,
    at: &str,
    cx: &Context,
    p: &mut Vec<String>,
) -> (Option<String>, ClientConfig) {
    let api_url = match setting(m, d, at, "api_url") {
        Some((v, path)) => string(v, &path, p).and_then(|u| {
            let u = u.trim_end_matches('/').to_string();
            match crate::api::settings::check_url(&u) {
                Ok(()) => Some(u),
                Err(e) => {
                    p.push(format!("{path}: {e}"));
                    None
                }
            }
        }),
        None => Some(cx.api.api_url.trim_end_matches('/').to_string()),
    };
    let budget_share = match setting(m, d, at, "budget_share") {
        Some((v, path)) => match v.as_f64() {
            Some(s) if crate::api::settings::budget_share_ok(s) => s,
            _ => {
                p.push(format!(
                    "{path}: must be a number in (0, 1], e.g. 0.1 for 10 %"
                ));
                cx.api.budget_share
            }
        },
        None => cx.api.budget_share,
    };
    // The file's range (1 to 20) is narrower than the flag's (at least 1);
    // kept as it was.
    let max_attempts = match setting(m, d, at, "max_attempts") {
        Some((v, path)) => match v.as_u64() {
            Some(n) if (1..=20).contains(&n) => n as u32,
            _ => {
                p.push(format!("{path}: must be a whole number from 1 to 20"));
                cx.api.max_attempts
            }
        },
        None => cx.api.max_attempts,
    };
    let client = ClientConfig {
        max_attempts,
        budget_share,
        lookup_share: cx.api.lookup_share,
        ..ClientConfig::default()
    };
    (api_url, client)
}

/// The API client's bounds and durations, checked together.
fn client_bounds(
    client: &mut ClientConfig,
    m: &serde_norway::Mapping,
    d: &serde_norway::Mapping,
    at: &str,
    cx: &Context,
    p: &mut Vec<String>,
) {
    client.limits = api_limits(m, d, at, p);
    durations(
        crate::api::settings::DURATIONS,
        &cx.api,
        client,
        m,
        d,
        at,
        p,
    );
    if let Err(e) = client
        .limits
        .check(|f| format!("{at}.{}", f.replace('-', "_")))
    {
        p.push(e);
    }
}

/// The order of the scheduler's rules in a file's problems.
const FILE_RULE_ORDER: &[crate::poll::settings::PollRule] = {
    use crate::poll::settings::PollRule::*;
    &[FailureCodeGrace, Overlap, DedupHorizon, Interval]
};

/// The scheduler's settings, the fleet's judgement and breakdowns with them.
fn poll(
    m: &serde_norway::Mapping,
    d: &serde_norway::Mapping,
    at: &str,
    cx: &Context,
    p: &mut Vec<String>,
) -> PollConfig {
    let mut poll = cx.poll.config(cx.fleet.limits(), Default::default());
    durations(
        crate::poll::settings::DURATIONS,
        &cx.poll,
        &mut poll,
        m,
        d,
        at,
        p,
    );
    // Unset, the agents are listed as often as the workspace's own tasks.
    if setting(m, d, at, "agents_interval").is_none() {
        poll.agents_interval = poll.interval;
    }
    durations(
        crate::fleet::settings::DURATIONS,
        &cx.fleet,
        &mut poll.fleet,
        m,
        d,
        at,
        p,
    );
    poll.fleet.per_agent_series = match setting(m, d, at, "heartbeat_series_max") {
        None => 0,
        Some((v, path)) => v.as_u64().map(|n| n as usize).unwrap_or_else(|| {
            p.push(format!(
                "{path}: must be a whole number (0: no per-agent series)"
            ));
            0
        }),
    };
    poll.breakdown = breakdown(m, d, at, p);
    poll.budgets = budgets(m, d, at, &poll.breakdown, p);
    poll.max_agent_lookups = match setting(m, d, at, "max_agent_lookups") {
        None => poll.max_agent_lookups,
        Some((v, path)) => v.as_u64().map(|n| n as usize).unwrap_or_else(|| {
            p.push(format!("{path}: must be a whole number (0: never)"));
            poll.max_agent_lookups
        }),
    };
    // The file has always listed these rules in this order (the flags
    // stop at the first, most basic one).
    let broken = poll.check();
    for rule in FILE_RULE_ORDER.iter().filter(|r| broken.contains(r)) {
        p.push(rule.file_message(at));
    }
    poll
}

/// A workspace's `budgets:` (else the list in `defaults`, whole), each
/// checked against the workspace's breakdowns: a budget can only match
/// labels its series are broken down by.
fn budgets(
    m: &serde_norway::Mapping,
    d: &serde_norway::Mapping,
    at: &str,
    breakdown: &crate::fleet::BreakdownConfig,
    p: &mut Vec<String>,
) -> Vec<crate::fleet::BudgetConfig> {
    let Some((v, path)) = setting(m, d, at, "budgets") else {
        return Vec::new();
    };
    // A default list is checked against each workspace's breakdowns: a
    // problem of one workspace only says which.
    let whose = if path.starts_with("defaults.") {
        format!(" (for {at})")
    } else {
        String::new()
    };
    let items = match v {
        Value::Null => return Vec::new(),
        Value::Sequence(s) => s,
        _ => {
            p.push(format!(
                "{path}: must be a list of budgets (name:, monthly: and/or daily:, optionally match:)"
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(b) = item.as_mapping() else {
            p.push(format!(
                "{at}: must be a mapping (name:, monthly:, daily:, match:)"
            ));
            continue;
        };
        let before = p.len();
        check_keys(b, &format!("{at}."), BUDGET_KEYS, p);
        let name = match b.get("name") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                p.push(format!(
                    "{at}.name: a name is needed (the budget label), 1 to 128 characters"
                ));
                String::new()
            }
        };
        if !name.is_empty() && !names.insert(name.clone()) {
            p.push(format!(
                "{at}.name: another budget of the workspace is named {name:?}: give each a distinct name"
            ));
        }
        let mut matches = BTreeMap::new();
        match b.get("match") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(mm)) => {
                for (k, v) in mm {
                    match (k.as_str(), v.as_str()) {
                        (Some(k), Some(v)) => {
                            matches.insert(k.to_string(), v.to_string());
                        }
                        _ => p.push(format!(
                            "{at}.match: label names and values must be strings (quote a value such as \"42\")"
                        )),
                    }
                }
            }
            Some(_) => p.push(format!(
                "{at}.match: must be a mapping of breakdown label to value, e.g. {{team: ml}}"
            )),
        }
        let monthly = b
            .get("monthly")
            .and_then(|v| amount(v, &format!("{at}.monthly"), p));
        let daily = b
            .get("daily")
            .and_then(|v| amount(v, &format!("{at}.daily"), p));
        let budget = crate::fleet::BudgetConfig {
            name,
            matches,
            monthly,
            daily,
        };
        if p.len() == before {
            match budget.check(breakdown) {
                Ok(()) => out.push(budget),
                Err((field, e)) => p.push(format!("{at}.{field}{whose}: {e}")),
            }
        }
    }
    out
}

/// A budget's amount in the currency: a YAML number or a quoted decimal
/// ("2500.50"), read exactly; `None` when bad (the problem is noted).
fn amount(v: &Value, path: &str, p: &mut Vec<String>) -> Option<crate::prices::Money> {
    let text = match v {
        Value::Number(n) => {
            // Said here in words: `.nan` or `-5` would otherwise read as
            // text the decimal reader names less plainly.
            if n.as_f64().is_some_and(|f| !f.is_finite()) {
                p.push(format!("{path}: must be a finite amount, not {n}"));
                return None;
            }
            n.to_string()
        }
        Value::String(s) => s.trim().to_string(),
        _ => {
            p.push(format!(
                "{path}: must be an amount in the price table's currency: a number or a quoted decimal such as \"2500.50\""
            ));
            return None;
        }
    };
    if text.starts_with('-') {
        p.push(format!("{path}: must not be negative ({text})"));
        return None;
    }
    match crate::prices::Money::parse_decimal(&text, 0) {
        Ok(m) => Some(m),
        Err(e) => {
            p.push(format!("{path}: {text:?} is not an amount: {e}"));
            None
        }
    }
}

/// `labels:`, each a valid Prometheus label name the exporter does not set itself.
fn labels(m: &serde_norway::Mapping, at: &str, p: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    match m.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(l)) => {
            for (k, v) in l {
                let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                    p.push(format!("{at}.labels: names and values must be strings"));
                    continue;
                };
                if !valid_label_name(k) {
                    p.push(format!("{at}.labels.{k}: not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"));
                } else if RESERVED_LABELS.contains(&k) {
                    p.push(format!(
                        "{at}.labels.{k}: the exporter sets this label itself; choose another name"
                    ));
                } else {
                    labels.insert(k.to_string(), v.to_string());
                }
            }
        }
        Some(_) => p.push(format!(
            "{at}.labels: must be a mapping of label names to values"
        )),
    }
    labels
}

pub fn valid_label_name(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some(f) if f == '_' || f.is_ascii_alphabetic())
        && c.all(|ch| ch == '_' || ch.is_ascii_alphanumeric())
        && !k.starts_with("__")
}

/// `check-config FILE`: the report a user reads, and whether the file is good.
pub fn check(path: &Path, env: &dyn Env, files: &FileLimits) -> Result<String, Problems> {
    let list = load(path, env, files)?;
    Ok(format!(
        "{}: OK, {} workspace(s): {}",
        path.display(),
        list.len(),
        list.iter()
            .map(|w| w.key.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env() -> HashMap<String, String> {
        [("KEY_B".to_string(), "kb".to_string())]
            .into_iter()
            .collect()
    }

    /// A directory holding `a.key`, removed when dropped.
    fn dir_with_key() -> tempfile::TempDir {
        let d = tempfile::Builder::new()
            .prefix("cmx-cfg-")
            .tempdir()
            .unwrap();
        std::fs::write(d.path().join("a.key"), "ka\n").unwrap();
        d
    }

    const GOOD: &str = r#"
defaults:
  api_url: http://127.0.0.1:1/v1
  poll_interval: 30s
  budget_share: 0.05
workspaces:
  - name: payments
    id: ws_a
    api_key_file: a.key
    labels: {team: payments, env: prod}
  - name: search
    api_key_env: KEY_B
    poll_interval: 1m
    agents_interval: 5m
    budget_share: 0.2
"#;

    /// A file with many problems lists them in the order the exporter
    /// listed them before the settings moved into their modules (ae9b5e5):
    /// a reader fixing them top to bottom meets the same list.
    #[test]
    fn a_files_problems_come_in_the_order_they_always_did() {
        let text = r#"
workspaces:
  - name: a
    api_key_env: KEY_B
    api_url: ftp://x
    overlap: 1s
    dedup_horizon: 1s
    failure_code_grace: 2h
    poll_interval: 1ms
    max_body_size: 1
    breakdown: {max_values: 0}
    labels: {job: x}
"#;
        let p = parse(text, Path::new("."), &env(), &FileLimits::default()).unwrap_err();
        assert_eq!(
            p.0,
            [
                "workspaces[0].api_url: must start with https:// (or http:// for the simulator)",
                "workspaces[0].breakdown.max_values: must be from 1 to 10000",
                "workspaces[0]: failure_code_grace must be shorter than dedup_horizon",
                "workspaces[0]: overlap must be at least 5s, the API's visibility lag",
                "workspaces[0]: dedup_horizon must be at least twice the overlap",
                "workspaces[0]: poll_interval must be at least 1s",
                "workspaces[0].max_body_size: must be at least 1KiB",
                "workspaces[0].labels.job: the exporter sets this label itself; choose another name",
            ]
        );
    }

    #[test]
    fn a_good_file_validates_with_defaults_and_overrides() {
        let dir = dir_with_key();
        let d = dir.path();
        let w = parse(GOOD, d, &env(), &FileLimits::default()).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].key, "payments");
        assert_eq!(w[0].expected_id.as_deref(), Some("ws_a"));
        assert_eq!(w[0].client.key.expose(), "ka");
        assert_eq!(w[0].client.base_url, "http://127.0.0.1:1/v1");
        assert_eq!(w[0].client.budget_share, 0.05);
        assert_eq!(w[0].poll.interval, Duration::from_secs(30));
        assert_eq!(w[0].poll.agents_interval, Duration::from_secs(30));
        assert_eq!(w[0].labels["team"], "payments");
        assert_eq!(w[1].client.key.expose(), "kb");
        assert_eq!(w[1].client.budget_share, 0.2);
        assert_eq!(w[1].poll.agents_interval, Duration::from_secs(300));
    }

    #[test]
    fn upstream_bounds_are_read_and_checked() {
        let dir = dir_with_key();
        let d = dir.path();
        let good = r#"
defaults:
  max_body_size: 4MiB
  max_retry_after: 1m
workspaces:
  - api_key_file: a.key
    max_pages: 300
    max_listing_bytes: 1073741824
    max_cursor_length: 512
"#;
        let w = parse(good, d, &env(), &FileLimits::default()).unwrap();
        let l = &w[0].client.limits;
        assert_eq!(l.max_body_bytes, 4 << 20);
        assert_eq!(l.max_pages, 300);
        assert_eq!(l.max_listing_bytes, 1 << 30);
        assert_eq!(l.max_cursor_len, 512);
        assert_eq!(l.max_retry_after, Duration::from_secs(60));
        let bad = r#"
workspaces:
  - api_key_file: a.key
    max_body_size: 12 parsecs
    max_pages: 0
  - api_key_file: a.key
    max_body_size: 100
"#;
        let e = parse(bad, d, &env(), &FileLimits::default()).unwrap_err().0;
        for want in [
            "workspaces[0].max_body_size: \"12 parsecs\": unknown unit",
            "workspaces[0].max_pages: must be a whole number of at least 1",
            "workspaces[1].max_body_size: must be at least 1KiB",
        ] {
            assert!(e.iter().any(|l| l.contains(want)), "{want}: {e:#?}");
        }
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let dir = dir_with_key();
        let d = dir.path();
        let bad = r#"
defaults:
  poll_intervall: 30s
workspaces:
  - name: a
    api_key_file: missing.key
    poll_interval: fast
    labels: {workspace: x, "bad-name": y}
  - name: b
    api_key_env: NOT_SET
    budget_share: 3
    overlap: 2s
  - name: a
    api_key_file: a.key
  - api_key_file: a.key
    api_key_env: KEY_B
colour: blue
"#;
        let e = parse(bad, d, &env(), &FileLimits::default()).unwrap_err().0;
        let want = [
            "colour: unknown key",
            "defaults.poll_intervall: unknown key",
            "workspaces[0].api_key_file: cannot read",
            "workspaces[0].poll_interval: bad duration \"fast\"",
            "workspaces[0].labels.workspace: the exporter sets this label itself",
            "workspaces[0].labels.bad-name: not a valid Prometheus label name",
            "workspaces[1].api_key_env: the environment variable NOT_SET is not set",
            "workspaces[1].budget_share: must be a number in (0, 1]",
            "workspaces[1]: overlap must be at least 5s",
            "workspaces[2]: another workspace has the same identity \"a\"",
            "workspaces[3]: give api_key_file or api_key_env, not both",
        ];
        for w in want {
            assert!(
                e.iter().any(|l| l.starts_with(w)),
                "missing problem {w:?} in {e:#?}"
            );
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn not_yaml_or_empty_is_one_clear_problem() {
        let dir = dir_with_key();
        let d = dir.path();
        assert!(parse("workspaces: [", d, &env(), &FileLimits::default())
            .unwrap_err()
            .0[0]
            .starts_with("not valid YAML"));
        assert_eq!(
            parse("workspaces: []", d, &env(), &FileLimits::default())
                .unwrap_err()
                .0,
            vec!["workspaces: at least one workspace is needed"]
        );
        assert!(parse("- a", d, &env(), &FileLimits::default())
            .unwrap_err()
            .0[0]
            .contains("must be a mapping"));
    }

    #[test]
    fn secrets_never_show_in_problems_or_debug() {
        let dir = dir_with_key();
        let d = dir.path();
        let w = parse(GOOD, d, &env(), &FileLimits::default()).unwrap();
        assert!(!format!("{w:?}").contains("ka\""));
        assert!(!format!("{:?}", w[1]).contains("\"kb\""));
    }

    #[test]
    fn a_bad_default_is_one_problem_not_one_per_workspace() {
        let dir = dir_with_key();
        let d = dir.path();
        let text = "defaults:\n  poll_interval: fast\nworkspaces:\n  - name: a\n    api_key_env: KEY_B\n  - name: b\n    api_key_env: KEY_B\n";
        let e = parse(text, d, &env(), &FileLimits::default())
            .unwrap_err()
            .0;
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("defaults.poll_interval: bad duration"),
            "{e:?}"
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let dir = dir_with_key();
        let d = dir.path();
        let t = std::time::Instant::now();
        let deep = format!("workspaces: {}", "[".repeat(100_000));
        let e = parse(&deep, d, &env(), &FileLimits::default())
            .unwrap_err()
            .0;
        assert_eq!(
            e,
            vec!["the file is nested deeper than 64 levels (--files.max-yaml-depth)"]
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn a_key_file_that_is_not_a_regular_file_is_named() {
        let dir = dir_with_key();
        let d = dir.path();
        let text = "workspaces:\n  - name: a\n    api_key_file: /dev/zero\n";
        let e = parse(text, d, &env(), &FileLimits::default())
            .unwrap_err()
            .0;
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("workspaces[0].api_key_file: /dev/zero is a character device"),
            "{e:?}"
        );
    }

    #[test]
    fn storage_is_read_relative_to_the_file_and_checked() {
        let dir = dir_with_key();
        let d = dir.path();
        let good = "storage:\n  path: state\n  interval: 30s\n  max_size: 64MiB\nworkspaces:\n  - api_key_file: a.key\n";
        let f = parse_file(good, d, &env(), &FileLimits::default()).unwrap();
        let s = f.storage.unwrap();
        assert_eq!(s.dir, d.join("state"));
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!(s.max_size, 64 * 1024 * 1024);
        let bad = "storage:\n  interval: soon\n  max_size: lots\n  colour: blue\nworkspaces:\n  - api_key_file: a.key\n";
        let p = parse_file(bad, d, &env(), &FileLimits::default())
            .unwrap_err()
            .0;
        let all = p.join("\n");
        assert!(all.contains("storage.colour"), "{all}");
        assert!(all.contains("storage.path"), "{all}");
        let bad = "storage:\n  path: state\n  interval: soon\n  max_size: lots\nworkspaces:\n  - api_key_file: a.key\n";
        let all = parse_file(bad, d, &env(), &FileLimits::default())
            .unwrap_err()
            .0
            .join("\n");
        assert!(
            all.contains("storage.interval") && all.contains("storage.max_size"),
            "{all}"
        );
    }

    /// A budget the file cannot use is named with its path; the whole file
    /// is refused.
    #[test]
    fn bad_budgets_are_refused_with_their_path() {
        let text = r#"
defaults:
  budgets: {name: x}
workspaces:
  - name: a
    api_key_env: KEY_B
    budgets:
      - {name: neg, monthly: -5}
      - {name: nan, daily: .nan}
      - {name: garbage, monthly: "lots"}
      - {name: weekly, weekly: 5}
      - {name: nothing}
      - {name: list, monthly: [1]}
      - "just a name"
      - {match: {}}
  - name: b
    api_key_env: KEY_B
"#;
        let e = parse(text, Path::new("."), &env(), &FileLimits::default())
            .unwrap_err()
            .0;
        let want = [
            "defaults.budgets: must be a list of budgets",
            "workspaces[0].budgets[0].monthly: must not be negative (-5)",
            "workspaces[0].budgets[1].daily: must be a finite amount",
            "workspaces[0].budgets[2].monthly: \"lots\" is not an amount",
            "workspaces[0].budgets[3].weekly: unknown key (known: name, match, monthly, daily)",
            "workspaces[0].budgets[4].monthly: a budget needs monthly, daily or both",
            "workspaces[0].budgets[5].monthly: must be an amount in the price table's currency",
            "workspaces[0].budgets[6]: must be a mapping",
            "workspaces[0].budgets[7].name: a name is needed",
        ];
        for w in want {
            assert!(e.iter().any(|l| l.starts_with(w)), "{w:?} not in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    /// Waits for the prices merge (`Money::parse_decimal`): amounts read
    /// exactly, from numbers and quoted decimals; a budget of a workspace,
    /// else its defaults'; names unique per workspace; a match only on a
    /// label the workspace is broken down by.
    #[test]
    fn budgets_are_read_exactly_per_workspace_and_from_defaults() {
        use crate::prices::Money;
        let unit = 10u128.pow(crate::prices::MONEY_DIGITS);
        let text = r#"
defaults:
  budgets:
    - {name: all, monthly: 100}
workspaces:
  - name: a
    api_key_env: KEY_B
    breakdown: {agent_labels: [team]}
    budgets:
      - name: a-total
        monthly: 50000
        daily: "2500.5"
      - name: team-ml
        match: {team: ml}
        monthly: 8000
  - name: b
    api_key_env: KEY_B
"#;
        let w = parse(text, Path::new("."), &env(), &FileLimits::default()).unwrap();
        let a = &w[0].poll.budgets;
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].name, "a-total");
        assert_eq!(a[0].monthly, Some(Money(50_000 * unit)));
        assert_eq!(a[0].daily, Some(Money(2500 * unit + unit / 2)));
        assert_eq!(a[1].matches["team"], "ml");
        assert_eq!(a[1].daily, None);
        assert_eq!(w[1].poll.budgets.len(), 1);
        assert_eq!(w[1].poll.budgets[0].monthly, Some(Money(100 * unit)));
        let bad = r#"
defaults:
  budgets:
    - {name: ml, match: {team: ml}, monthly: 1}
workspaces:
  - name: a
    api_key_env: KEY_B
    budgets:
      - {name: x, monthly: 1}
      - {name: x, daily: 2}
      - {name: p, match: {provider: openai}, monthly: 1}
  - name: b
    api_key_env: KEY_B
"#;
        let e = parse(bad, Path::new("."), &env(), &FileLimits::default())
            .unwrap_err()
            .0;
        let want = [
            "workspaces[0].budgets[1].name: another budget of the workspace is named \"x\"",
            "workspaces[0].budgets[2].match: \"provider\" is not a label",
            "defaults.budgets[0].match (for workspaces[1]): \"team\" is not a label",
        ];
        for w in want {
            assert!(e.iter().any(|l| l.starts_with(w)), "{w:?} not in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn prices_are_read_relative_to_the_file_and_checked() {
        let dir = dir_with_key();
        let d = dir.path();
        let good = "prices:\n  file: prices.yaml\n  provider_aliases: {google: gemini}\n  max_entries: 10\n  max_size: 16MiB\nworkspaces:\n  - api_key_file: a.key\n";
        let f = parse_file(good, d, &env(), &FileLimits::default()).unwrap();
        let p = f.prices.unwrap();
        assert_eq!(p.file, Some(d.join("prices.yaml")));
        assert_eq!(p.provider_aliases.unwrap()["google"], "gemini");
        assert_eq!(p.max_entries, Some(10));
        assert_eq!(p.max_size, Some(16 << 20));
        let none = parse_file(
            "workspaces:\n  - api_key_file: a.key\n",
            d,
            &env(),
            &FileLimits::default(),
        )
        .unwrap();
        assert_eq!(none.prices, None);
        let bad = "prices:\n  file: 3\n  provider_aliases: [google]\n  max_entries: 0\n  max_size: lots\n  colour: blue\nworkspaces:\n  - api_key_file: a.key\n";
        let e = parse_file(bad, d, &env(), &FileLimits::default())
            .unwrap_err()
            .0;
        let want = [
            "prices.colour: unknown key (known: file, provider_aliases, max_entries, max_size)",
            "prices.file: must be the path of a price table",
            "prices.provider_aliases: must be a mapping",
            "prices.max_entries: must be a whole number of at least 1",
            "prices.max_size: \"lots\"",
        ];
        for w in want {
            assert!(e.iter().any(|l| l.starts_with(w)), "{w:?} not in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }
}
