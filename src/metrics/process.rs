//! The process's own families (no `workspace` label) and the facts they read:
//! sharding, reloads, caught panics, the HTTP server's counts, and the
//! process's resources (CPU, memory, file descriptors and their limits, read
//! from `/proc/self` as every Prometheus client library does). The counts
//! are kept here, below the server that bumps them and the hub that reads
//! them at render time, so neither reaches up to the other.

use super::{num, By, FamilyOf, Kind, Sample, Stability, Value};
pub use resources::ProcessResources;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

mod resources;

/// Why the server cut a client off: a connection closed at accept past
/// the cap, or by its watchdog, or a request refused for lack of a bcrypt
/// slot. All are exported, zeros included.
pub const REFUSALS: [&str; 5] = [
    "max_connections",
    "header_timeout",
    "idle_timeout",
    "response_stalled",
    "auth_busy",
];

/// The server's counts, kept as it goes and read when the exposition is
/// rendered.
#[derive(Debug, Default)]
pub struct ServerStats {
    open: std::sync::atomic::AtomicU64,
    refusals: [std::sync::atomic::AtomicU64; REFUSALS.len()],
}

/// [`ServerStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpStats {
    pub open_connections: u64,
    pub refusals: BTreeMap<&'static str, u64>,
}

impl ServerStats {
    pub fn refused(&self, reason: &'static str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.refusals[i].fetch_add(1, Relaxed);
        }
    }

    /// A connection opened; [`ServerStats::closed`] when it ends.
    pub fn opened(&self) {
        self.open.fetch_add(1, Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Relaxed);
    }

    pub fn snapshot(&self) -> HttpStats {
        HttpStats {
            open_connections: self.open.load(Relaxed),
            refusals: REFUSALS
                .iter()
                .zip(&self.refusals)
                .map(|(r, n)| (*r, n.load(Relaxed)))
                .collect(),
        }
    }
}

/// A family about the process: no `workspace` label.
pub type ProcessFamily = FamilyOf<ProcessInfo>;

/// Facts about the process rather than a workspace: sharding and reloads.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessInfo {
    pub shard: crate::shard::Shard,
    pub workspaces_configured: usize,
    pub workspaces_owned: usize,
    /// Owned, but standing by: another exporter process holds their
    /// checkpoint (`poll::spawn`).
    pub workspaces_standby: usize,
    /// When the process started (Unix seconds): the start of the counters
    /// that are the process's own.
    pub started_at: f64,
    /// Whether the last reload of the config file worked (true before any).
    pub reload_ok: bool,
    /// Unix seconds of the last successful (re)load of the configuration.
    pub reload_success_at: f64,
    /// Webhook requests refused before a verified body named a workspace,
    /// per result; `None` when the receiver is off. Filled in by the hub
    /// from the workspaces' snapshots at render time.
    pub webhook_unattributed: Option<BTreeMap<&'static str, u64>>,
    /// Panics caught per guarded loop (see `supervise`), every loop at 0
    /// from the start.
    pub task_restarts: BTreeMap<&'static str, u64>,
    /// The HTTP server's open connections and refusals; filled in by the
    /// hub at render time.
    pub http: HttpStats,
    /// The price table in force (set at the start and by each reload that
    /// puts one in force); `None` without one.
    pub prices: Option<PricesInfo>,
    /// CPU, memory and file descriptors, read by the hub at render time
    /// ([`ProcessResources::read`]); `None` before that (and in the golden
    /// test, whose numbers must not vary), when the families are absent.
    pub resources: Option<ProcessResources>,
}

impl Default for ProcessInfo {
    fn default() -> Self {
        ProcessInfo {
            shard: Default::default(),
            workspaces_configured: 0,
            workspaces_owned: 0,
            workspaces_standby: 0,
            // The process's own start, so that the start of its counters
            // is process_start_time_seconds; the clock now where /proc
            // cannot say (not Linux).
            started_at: resources::start_time()
                .unwrap_or_else(|| crate::api::types::Timestamp::host_now().as_secs_f64()),
            reload_ok: true,
            reload_success_at: crate::api::types::Timestamp::host_now().as_secs_f64(),
            webhook_unattributed: None,
            task_restarts: crate::supervise::TASKS.iter().map(|t| (*t, 0)).collect(),
            http: Default::default(),
            prices: None,
            resources: None,
        }
    }
}

/// What the process families say of the price table in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricesInfo {
    pub currency: String,
    /// `clawmesh` or `litellm`.
    pub format: &'static str,
    /// Entries held (a model's price from one date on).
    pub entries: usize,
}

impl ProcessInfo {
    /// `table` is the one in force now (none: [`crate::prices::PriceTable::none`]).
    pub fn set_prices(&mut self, table: &crate::prices::PriceTable) {
        self.prices = table.format().map(|f| PricesInfo {
            currency: table.currency().to_string(),
            format: f.name(),
            entries: table.entries(),
        });
    }
}

pub const PROCESS_FAMILIES: &[ProcessFamily] = &[
    // The HTTP server's bounds: what it cut off, and what it holds open.
    ProcessFamily {
        name: "clawmesh_exporter_http_connections",
        help: "Client connections open to the HTTP server, at the last render; at most --web.max-connections.",
        kind: Kind::Gauge,
        unit: "{connection}",
        stability: Stability::Experimental,
        labels: &[],
        collect: |p, out| out.push(num(&[], p.http.open_connections as f64)),
    },
    ProcessFamily {
        name: "clawmesh_exporter_http_refusals_total",
        help: "Clients the HTTP server cut off, by reason: max_connections (closed at accept), header_timeout (headers or TLS handshake too slow), idle_timeout, response_stalled (the client stopped reading), auth_busy (503: no bcrypt slot within --web.basic-auth.max-wait).",
        kind: Kind::Counter,
        unit: "{refusal}",
        stability: Stability::Experimental,
        labels: &["reason"],
        collect: |p, out| {
            out.extend(REFUSALS.iter().map(|r| num(&[r], p.http.refusals.get(r).copied().unwrap_or(0) as f64)))
        },
    },
    ProcessFamily {
        name: "clawmesh_webhook_unattributed_requests_total",
        help: "Webhook deliveries refused before a verified body named a workspace (bad_signature, too_large, bad_request, stale, unknown_workspace), for the whole receiver; absent when the receiver is off.",
        kind: Kind::Counter,
        unit: "{request}",
        stability: Stability::Experimental,
        labels: &["result"],
        collect: |p, out| {
            if let Some(u) = &p.webhook_unattributed {
                out.extend(u.iter().map(|(r, n)| num(&[r], *n as f64)));
            }
        },
    },
    ProcessFamily {
        name: "clawmesh_exporter_shard_info",
        help: "This replica's shard and the number of shards workspaces are split across (constant 1).",
        kind: Kind::Gauge,
        unit: "1",
        stability: Stability::Stable,
        labels: &["shard", "total_shards"],
        collect: |p, out| {
            out.push(Sample {
                labels: vec![p.shard.index.to_string(), p.shard.total.to_string()],
                value: Value::Number(1.0),
                by: By::default(),
                exemplar: None,
            })
        },
    },
    ProcessFamily {
        name: "clawmesh_exporter_workspaces",
        help: "Workspaces in the configuration, those this shard owns and polls, and those it owns but stands by for (another exporter process holds their checkpoint).",
        kind: Kind::Gauge,
        unit: "{workspace}",
        stability: Stability::Stable,
        labels: &["state"],
        collect: |p, out| {
            out.push(num(&["configured"], p.workspaces_configured as f64));
            out.push(num(&["owned"], p.workspaces_owned as f64));
            out.push(num(&["standby"], p.workspaces_standby as f64));
        },
    },
    ProcessFamily {
        name: "clawmesh_exporter_config_last_reload_successful",
        help: "1 when the last (re)load of the configuration file worked; 0 when it was refused and the previous one kept running.",
        kind: Kind::Gauge,
        unit: "1",
        stability: Stability::Stable,
        labels: &[],
        collect: |p, out| out.push(num(&[], if p.reload_ok { 1.0 } else { 0.0 })),
    },
    ProcessFamily {
        name: "clawmesh_exporter_config_last_reload_success_timestamp_seconds",
        help: "When the configuration was last (re)loaded successfully (Unix seconds).",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |p, out| out.push(num(&[], p.reload_success_at)),
    },
    // The price table in force: which (a reload that puts a new one in
    // force shows here), and how large.
    ProcessFamily {
        name: "clawmesh_exporter_prices_info",
        help: "The price table in force (constant 1): its currency and format (clawmesh or litellm); absent without --prices.file.",
        kind: Kind::Gauge,
        unit: "1",
        stability: Stability::Experimental,
        labels: &["currency", "format"],
        collect: |p, out| {
            if let Some(t) = &p.prices {
                out.push(num(&[&t.currency, t.format], 1.0));
            }
        },
    },
    ProcessFamily {
        name: "clawmesh_exporter_price_entries",
        help: "Prices the price table in force holds (one per model and date it holds from); 0 without a table.",
        kind: Kind::Gauge,
        unit: "{entry}",
        stability: Stability::Experimental,
        labels: &[],
        collect: |p, out| out.push(num(&[], p.prices.as_ref().map_or(0, |t| t.entries) as f64)),
    },
    ProcessFamily {
        name: "clawmesh_exporter_task_restarts_total",
        help: "Panics caught in the exporter's loops (key_check, poll_agents, poll_tasks, webhook_worker, otlp_pusher, checkpoint); each loop went on after a pause. Any increase is a bug: see the log.",
        kind: Kind::Counter,
        unit: "{restart}",
        stability: Stability::Stable,
        labels: &["task"],
        collect: |p, out| out.extend(p.task_restarts.iter().map(|(t, n)| num(&[t], *n as f64))),
    },
    // The standard process families of every Prometheus client library
    // (client_golang's process collector: its names and help texts), and
    // the memory limit they are compared with. Each is absent where it
    // cannot be read (not Linux, /proc hidden), never a made-up 0.
    ProcessFamily {
        name: "process_cpu_seconds_total",
        help: "Total user and system CPU time spent in seconds.",
        kind: Kind::Counter,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |p, out| out.extend(p.resources.as_ref().and_then(|r| r.cpu_seconds).map(|v| num(&[], v))),
    },
    ProcessFamily {
        name: "process_resident_memory_bytes",
        help: "Resident memory size in bytes.",
        kind: Kind::Gauge,
        unit: "By",
        stability: Stability::Stable,
        labels: &[],
        collect: |p, out| out.extend(p.resources.as_ref().and_then(|r| r.resident_bytes).map(|v| num(&[], v))),
    },
    ProcessFamily {
        name: "process_virtual_memory_bytes",
        help: "Virtual memory size in bytes.",
        kind: Kind::Gauge,
        unit: "By",
        stability: Stability::Stable,
        labels: &[],
        collect: |p, out| out.extend(p.resources.as_ref().and_then(|r| r.virtual_bytes).map(|v| num(&[], v))),
    },
    ProcessFamily {
        name: "process_open_fds",
        help: "Number of open file descriptors.",
        kind: Kind::Gauge,
        unit: "{file_descriptor}",
        stability: Stability::Stable,
        labels: &[],
        collect: |p, out| out.extend(p.resources.as_ref().and_then(|r| r.open_fds).map(|v| num(&[], v))),
    },
    ProcessFamily {
        name: "process_max_fds",
        help: "Maximum number of open file descriptors.",
        kind: Kind::Gauge,
        unit: "{file_descriptor}",
        stability: Stability::Stable,
        labels: &[],
        collect: |p, out| out.extend(p.resources.as_ref().and_then(|r| r.max_fds).map(|v| num(&[], v))),
    },
    ProcessFamily {
        name: "process_start_time_seconds",
        help: "Start time of the process since unix epoch in seconds.",
        kind: Kind::Gauge,
        unit: "s",
        stability: Stability::Stable,
        labels: &[],
        collect: |p, out| out.extend(p.resources.as_ref().and_then(|r| r.start_time).map(|v| num(&[], v))),
    },
    ProcessFamily {
        name: "clawmesh_exporter_memory_limit_bytes",
        help: "The memory limit of the cgroup the exporter runs in (the lowest of its own and its parents': memory.max, or memory.limit_in_bytes under cgroup v1), to compare with process_resident_memory_bytes; absent when unlimited or unreadable.",
        kind: Kind::Gauge,
        unit: "By",
        stability: Stability::Experimental,
        labels: &[],
        collect: |p, out| out.extend(p.resources.as_ref().and_then(|r| r.memory_limit_bytes).map(|v| num(&[], v))),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(p: &ProcessInfo, name: &str) -> Vec<(Vec<String>, f64)> {
        let f = PROCESS_FAMILIES.iter().find(|f| f.name == name).unwrap();
        let mut out = Vec::new();
        (f.collect)(p, &mut out);
        out.into_iter()
            .map(|s| match s.value {
                Value::Number(v) => (s.labels.iter().map(|l| l.to_string()).collect(), v),
                _ => panic!("{name}: not a number"),
            })
            .collect()
    }

    /// Without a table the info is absent and the entries 0; with one,
    /// both say which table it is.
    #[test]
    fn the_price_families_say_which_table_is_in_force() {
        let mut p = ProcessInfo::default();
        p.set_prices(&crate::prices::PriceTable::none());
        assert!(collected(&p, "clawmesh_exporter_prices_info").is_empty());
        assert_eq!(
            collected(&p, "clawmesh_exporter_price_entries"),
            [(vec![], 0.0)]
        );
        p.prices = Some(PricesInfo {
            currency: "EUR".into(),
            format: "litellm",
            entries: 1234,
        });
        assert_eq!(
            collected(&p, "clawmesh_exporter_prices_info"),
            [(vec!["EUR".to_string(), "litellm".to_string()], 1.0)]
        );
        assert_eq!(
            collected(&p, "clawmesh_exporter_price_entries"),
            [(vec![], 1234.0)]
        );
    }
}
