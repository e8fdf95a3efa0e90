//! The cost of one OTLP export for the 10,000-agent fleet of the core
//! benchmark: CPU time to build and encode the request from the snapshot,
//! and its size on the wire. No network: sending is the transport's cost,
//! the same for any payload of this size.
//!
//!     cargo bench --bench otlp_export
//!
//! Numbers go to BENCHMARKS.md.

use clawmesh_exporter::api::types::{Agent, Task, TaskError, TaskMetrics, TaskStatus, Timestamp};
use clawmesh_exporter::api::ApiStats;
use clawmesh_exporter::fleet::{Fleet, Health, Snapshot};
use clawmesh_exporter::histogram::{Histogram, API_LATENCY_BUCKETS};
use clawmesh_exporter::otlp::{encode, Batcher, HistogramMode, Temporality};
use std::time::Instant;

const AGENTS: usize = 10_000;
const FINISHED: usize = 50_000;
const OPEN: usize = 2_000;
const ROUNDS: u32 = 5_000;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_micros((1_800_000_000 + secs) * 1_000_000)
}

/// A deterministic pseudo-random stream, so every run measures the same fleet.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn fleet_snapshot() -> Snapshot {
    let mut rng = Lcg(7);
    let mut fleet = Fleet::new(ts(0));
    let statuses = [
        "idle",
        "busy",
        "busy",
        "busy",
        "paused",
        "error",
        "offline",
        "provisioning",
    ];
    let agents: Vec<Agent> = (0..AGENTS)
        .map(|i| Agent {
            last_heartbeat_at: None,
            labels: Vec::new(),
            text_repaired: false,
            config: Default::default(),
            id: format!("agt_{i}"),
            status: statuses[i % statuses.len()].to_string(),
            created_at: ts(0),
            updated_at: ts(0),
        })
        .collect();
    fleet.apply_agent_listing(&agents);
    let codes = [
        "model_error",
        "timeout",
        "tool_error",
        "rate_limited",
        "context_overflow",
        "cancelled_by_user",
        "sandbox_crash",
        "network",
        "quota",
        "invalid_input",
        "internal",
        "unknown_tool",
    ];
    for i in 0..FINISHED + OPEN {
        let finished = i < FINISHED;
        let status = if !finished {
            if i % 2 == 0 {
                "pending"
            } else {
                "running"
            }
        } else {
            ["completed", "completed", "completed", "failed", "cancelled"][i % 5]
        };
        let queue = rng.next() * rng.next() * 600.0;
        let run = rng.next() * rng.next() * 7200.0;
        fleet.apply_task(&Task {
            agent_id: None,
            labels: Vec::new(),
            text_repaired: false,
            id: format!("tsk_{i}"),
            status: TaskStatus::from_name(status),
            created_at: ts(1),
            updated_at: ts(30 + i as i64),
            started_at: (status != "pending").then(|| ts(3)),
            finished_at: finished.then(|| ts(30 + i as i64)),
            metrics: TaskMetrics {
                queue_seconds: (status != "pending").then_some(queue),
                run_seconds: finished.then_some(run),
                input_tokens: Some(1000 + i as u64 % 5000),
                output_tokens: Some(200 + i as u64 % 900),
                invalid: false,
            },
            transitions: Default::default(),
            error: (status == "failed").then(|| TaskError {
                code: Some(codes[i % codes.len()].into()),
            }),
        });
    }
    let mut health = Health {
        up: true,
        ..Default::default()
    };
    health.last_sync.insert("agents", 1_800_000_040.0);
    health.last_sync.insert("tasks", 1_800_000_041.0);
    health.sync_failures.insert("agents", 0);
    health.sync_failures.insert("tasks", 3);
    let mut api = ApiStats {
        rate_limit_limit: Some(1000),
        rate_limit_remaining: Some(800),
        budget_requests_per_minute: 100.0,
        ..Default::default()
    };
    for endpoint in ["/auth/token", "/agents", "/tasks"] {
        for code in ["200", "429", "503", "timeout"] {
            api.requests.insert((endpoint.into(), code.into()), 1000);
        }
        api.retries.insert(endpoint.into(), 12);
        let mut h = Histogram::new(API_LATENCY_BUCKETS);
        for _ in 0..5000 {
            h.observe(rng.next() * rng.next() * 3.0);
        }
        api.durations.insert(endpoint.into(), h);
    }
    let mut snap = fleet.snapshot("ws_bench", ts(9_000), health, api);
    snap.otlp = Some(Default::default());
    snap
}

/// User plus system CPU time of this process, in seconds (Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() {
    let snaps = vec![fleet_snapshot()];
    let text = clawmesh_exporter::expose::render(&Default::default(), &snaps);
    println!("fleet: {AGENTS} agents, {FINISHED} finished and {OPEN} open tasks");
    println!("/metrics for comparison: {} bytes of text", text.len());
    println!();
    println!("| Temporality | Histograms | Data points | Request (protobuf) | gRPC message | gzip -6 | CPU per export (build + encode) |");
    println!("|---|---|---|---|---|---|---|");
    for (t, h) in [
        (Temporality::Cumulative, HistogramMode::Explicit),
        (Temporality::Delta, HistogramMode::Explicit),
        (Temporality::Cumulative, HistogramMode::Exponential),
        (Temporality::Delta, HistogramMode::Exponential),
    ] {
        let resource = [
            ("service.name".to_string(), "clawmesh-exporter".to_string()),
            ("service.version".to_string(), "0.1.0".to_string()),
            (
                "service.instance.id".to_string(),
                "6f1c2a9e-0d3b-4c57-9a8e-2b7f1d0c4e55".to_string(),
            ),
        ];
        let mut b = Batcher::new(t, h, &resource, 1);
        // Warm up (and, for delta, leave undelivered state as a failing collector would).
        let first = b.build(&Default::default(), &snaps, 2);
        let bytes = encode(&first.request).len();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &encode(&first.request)).unwrap();
        let gzipped = gz.finish().unwrap().len();
        let (cpu0, wall0) = (cpu_seconds(), Instant::now());
        let mut sink = 0usize;
        for i in 0..ROUNDS {
            let batch = b.build(&Default::default(), &snaps, 3 + i as u64);
            sink += encode(&batch.request).len();
            if t == Temporality::Delta {
                b.delivered(batch.built_ns);
            }
        }
        let wall = wall0.elapsed().as_secs_f64() / ROUNDS as f64;
        let cpu = match (cpu0, cpu_seconds()) {
            (Some(a), Some(z)) => (z - a) / ROUNDS as f64,
            _ => wall,
        };
        assert!(sink > 0);
        println!(
            "| {t:?} | {h:?} | {} | {bytes} B | {} B | {gzipped} B | {:.0} µs (wall {:.0} µs) |",
            first.total_points(),
            bytes + 5,
            cpu * 1e6,
            wall * 1e6
        );
    }
}
