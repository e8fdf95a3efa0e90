//! `cargo bench --bench fleet`: the exporter's own work per poll cycle at the
//! 10k scenario's scale, without the network: applying a page of task
//! changes, a 10,000-agent listing, parsing a page of 100 tasks as the API
//! sends them, and rendering /metrics once; and a checkpoint of the 10k
//! scenario's state (saving, encoding, writing it to disk).
//! Prints the median and spread over repeated runs.

use clawmesh_exporter::api::types::{Agent, Task, TaskError, TaskMetrics, TaskStatus, Timestamp};
use clawmesh_exporter::api::ApiStats;
use clawmesh_exporter::expose::{render, Exposition, Format, Options};
use clawmesh_exporter::fleet::{Fleet, Health};
use std::hint::black_box;
use std::time::{Duration, Instant};

const S: i64 = 1_000_000;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_micros(1_800_000_000 * S + s * S)
}

fn task(i: usize, status: &str, at: i64) -> Task {
    let status = TaskStatus::from_name(status);
    Task {
        agent_id: None,
        labels: Vec::new(),
        text_repaired: false,
        id: format!("tsk_{i:08}"),
        status: status.clone(),
        created_at: ts(at - 30),
        updated_at: ts(at),
        started_at: Some(ts(at - 20)),
        finished_at: status.is_terminal().then(|| ts(at)),
        metrics: TaskMetrics {
            queue_seconds: Some(10.0),
            run_seconds: Some(20.0),
            input_tokens: Some(900),
            output_tokens: Some(300),
            invalid: false,
        },
        transitions: Default::default(),
        error: (status == TaskStatus::Failed).then(|| TaskError {
            code: Some("timeout".into()),
        }),
    }
}

/// One page of 100 finished tasks in the contract's full shape (transitions,
/// metrics, outputs, labels, instructions), as the simulator writes them.
fn page_of_tasks() -> Vec<u8> {
    let mut items = Vec::new();
    for i in 0..100 {
        items.push(format!(
            r#"{{"id":"tsk_{i:08}","agent_id":"agt_{i:06}","status":"completed","instructions":"Summarise the open support tickets for team payments.","labels":{{"team":"payments","priority":"normal"}},"created_at":"2026-12-02T10:00:00.123Z","updated_at":"2026-12-02T10:05:00.5Z","started_at":"2026-12-02T10:00:01Z","finished_at":"2026-12-02T10:05:00.5Z","transitions":[{{"status":"pending","at":"2026-12-02T10:00:00.123Z"}},{{"status":"running","at":"2026-12-02T10:00:01Z"}},{{"status":"completed","at":"2026-12-02T10:05:00.5Z"}}],"metrics":{{"queue_seconds":0.877,"run_seconds":299.5,"input_tokens":{},"output_tokens":{}}},"outputs":[{{"file_id":"file_{i:08x}","name":"report.md","size_bytes":1200}}],"error":null,"x_region":"eu-1"}}"#,
            1000 + i,
            200 + i
        ));
    }
    format!(
        r#"{{"data":[{}],"has_more":true,"next_cursor":"abc"}}"#,
        items.join(",")
    )
    .into_bytes()
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn bench(name: &str, runs: usize, mut f: impl FnMut()) {
    f(); // warm up
    let times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    let (min, med, max) = median(times);
    println!("{name:<58} median {med:>10.3?}  (min {min:.3?}, max {max:.3?}, {runs} runs)");
}

fn main() {
    let statuses = [
        "idle",
        "busy",
        "idle",
        "paused",
        "error",
        "offline",
        "provisioning",
        "idle",
    ];
    let agents: Vec<Agent> = (0..10_000)
        .map(|i| Agent {
            last_heartbeat_at: Some(ts(0)),
            text_repaired: false,
            // The simulator's spread: 5 teams, 2 environments, 4 providers
            // with a model each.
            labels: vec![
                ("env".into(), ["prod", "staging"][i % 2].into()),
                ("team".into(), format!("team-{}", i % 5)),
            ],
            config: clawmesh_exporter::api::types::AgentConfig {
                model_provider: Some(format!("provider-{}", i % 4)),
                model: Some(format!("model-{}", i % 4)),
            },
            id: format!("agt_{i:06}"),
            status: statuses[i % statuses.len()].into(),
            created_at: ts(0),
            updated_at: ts(0),
        })
        .collect();
    // 15 s of the scenario: 1,000 changes per minute is 250 changes per poll,
    // re-read twice by the overlap window.
    let cycle: Vec<Task> = (0..250)
        .map(|i| {
            task(
                i,
                ["running", "completed", "failed", "cancelled", "pending"][i % 5],
                100 + i as i64,
            )
        })
        .collect();

    let page = page_of_tasks();
    bench("parse a page of 100 tasks (the API's JSON)", 200, || {
        let p = clawmesh_exporter::api::parse_page::<Task>(black_box(&page)).unwrap();
        black_box(p);
    });

    bench("apply a 10,000-agent listing", 50, || {
        let mut f = Fleet::new(ts(0));
        f.apply_agent_listing(black_box(&agents));
    });

    // Breakdowns off (today's figures) and on (team, env, provider, model),
    // measured one after the other in the same process.
    let cfg = clawmesh_exporter::fleet::BreakdownConfig {
        provider: true,
        model: true,
        agent_labels: clawmesh_exporter::fleet::Patterns {
            allow: vec!["team".into(), "env".into()],
            deny: vec![],
        },
        ..Default::default()
    };
    // Prices (issue 21): the four models, each with a price change, and a
    // pattern that prices nothing here, as a table of a few dozen would.
    let mut yaml = String::from("currency: USD\nmodels:\n");
    for i in 0..4 {
        yaml.push_str(&format!(
            "  - {{provider: provider-{i}, model: model-{i}, input_per_million: \"1.25\", output_per_million: 10}}\n  - {{provider: provider-{i}, model: model-{i}, since: 2027-01-15T08:00:50Z, input_per_million: \"0.875\", output_per_million: \"7.5\"}}\n  - {{provider: provider-{i}, model: \"other-{i}-*\", input_per_million: 3, output_per_million: 15}}\n"
        ));
    }
    let table = std::sync::Arc::new(
        clawmesh_exporter::prices::PriceTable::parse(yaml.as_bytes(), "bench", &Default::default())
            .expect("the bench's price table"),
    );
    let budgets = vec![clawmesh_exporter::fleet::BudgetConfig {
        name: "all".into(),
        matches: Default::default(),
        monthly: Some(clawmesh_exporter::prices::Money(10u128.pow(32))),
        daily: None,
    }];
    for (what, breakdown, priced) in [
        ("breakdowns off", None, false),
        ("breakdowns off, priced", None, true),
        ("breakdowns on", Some(&cfg), false),
        ("breakdowns on, priced", Some(&cfg), true),
    ] {
        println!("-- {what}");
        let mut n = 0usize;
        let mut fleet = Fleet::new(ts(0));
        if let Some(cfg) = breakdown {
            fleet = fleet.with_breakdown(cfg, &["workspace".to_string()]);
        }
        if priced {
            fleet = fleet.with_budgets(budgets.clone());
            fleet.set_prices(table.clone());
        }
        bench("apply a 10,000-agent listing (into a fleet)", 50, || {
            fleet.apply_agent_listing(black_box(&agents));
        });
        bench(
            "apply one poll's 250 task changes, twice (overlap)",
            200,
            || {
                n += 1;
                for (i, t) in cycle.iter().chain(cycle.iter()).enumerate() {
                    let mut t = t.clone();
                    t.id.push_str(&n.to_string());
                    t.agent_id = Some(format!("agt_{:06}", (i * 37) % 10_000));
                    fleet.apply_task(black_box(&t));
                }
            },
        );
        println!(
            "  (tasks remembered after {n} cycles: {})",
            fleet.ledger_len()
        );
        let health = Health {
            up: true,
            ..Default::default()
        };
        bench("take the snapshot of one workspace", 100, || {
            black_box(fleet.snapshot("ws_bench", ts(200), health.clone(), ApiStats::default()));
        });
        let snap = fleet.snapshot("ws_bench", ts(200), health.clone(), ApiStats::default());
        bench("render /metrics (into gzip) for one workspace", 200, || {
            black_box(Exposition::render(
                Format::Text,
                &Options::default(),
                &Default::default(),
                black_box(std::slice::from_ref(&snap)),
                0,
                false,
            ));
        });
        let text = render(&Default::default(), std::slice::from_ref(&snap));
        let e = Exposition::render(
            Format::Text,
            &Options::default(),
            &Default::default(),
            std::slice::from_ref(&snap),
            0,
            false,
        );
        println!(
            "  (series {}, text {} bytes, gzip {} bytes)",
            text.lines().filter(|l| !l.starts_with('#')).count(),
            e.text_len,
            e.gzip.len()
        );
        // Each format (issue 20), gzipped and also kept as it is (a scraper
        // without gzip), exemplars on.
        for format in Format::ALL {
            for identity in [false, true] {
                let kept = if identity { "gzip + identity" } else { "gzip" };
                bench(&format!("render {format:?} ({kept})"), 100, || {
                    black_box(Exposition::render(
                        format,
                        &Options::default(),
                        &Default::default(),
                        black_box(std::slice::from_ref(&snap)),
                        0,
                        identity,
                    ));
                });
            }
            let e = Exposition::render(
                format,
                &Options::default(),
                &Default::default(),
                std::slice::from_ref(&snap),
                0,
                false,
            );
            println!(
                "  ({format:?}: {} bytes, gzip {} bytes)",
                e.text_len,
                e.gzip.len()
            );
        }
    }

    // ---- checkpoints (issue 12) ----
    // The 10k scenario's state at its largest: 10,000 agents and 100,000
    // tasks held (30,000 open, 70,000 finished within the dedup horizon),
    // with breakdowns on.
    println!(
        "-- checkpoint: 10,000 agents, 100,000 tasks held (30,000 open, 70,000 in the ledger)"
    );
    let mut fleet = Fleet::new(ts(0)).with_breakdown(&cfg, &["workspace".to_string()]);
    fleet.apply_agent_listing(&agents);
    for i in 0..100_000usize {
        let status = if i < 30_000 {
            ["pending", "running"][i % 2]
        } else {
            ["completed", "failed", "cancelled"][i % 3]
        };
        let mut t = task(i, status, 100 + (i % 1000) as i64);
        t.agent_id = Some(format!("agt_{:06}", i % 10_000));
        fleet.apply_task(&t);
    }
    println!(
        "  (open {}, ledger {})",
        fleet.open_len(),
        fleet.ledger_len()
    );
    bench("save the fleet (under the workspace lock)", 20, || {
        black_box(fleet.save());
    });
    let c = clawmesh_exporter::storage::Checkpoint {
        workspace: "ws_bench".into(),
        shard: (0, 1),
        saved_at: 0,
        api_saved_at: 0,
        watermark: 0,
        fleet: fleet.save(),
    };
    bench("encode the checkpoint (JSON + gzip)", 20, || {
        black_box(clawmesh_exporter::storage::encode(&c, u64::MAX).unwrap());
    });
    let bytes = clawmesh_exporter::storage::encode(&c, u64::MAX).unwrap();
    let dir = std::env::temp_dir().join(format!("cmx-bench-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ws_bench.ckpt");
    bench(
        "write it (temporary file, fsync, rename, fsync dir)",
        20,
        || {
            clawmesh_exporter::storage::write_atomic(&path, black_box(&bytes)).unwrap();
        },
    );
    bench("read and decode it (at start)", 20, || {
        let b = std::fs::read(&path).unwrap();
        black_box(clawmesh_exporter::storage::decode(&b, u64::MAX).unwrap());
    });
    let json = serde_json::to_vec(&c).unwrap().len();
    println!(
        "  (checkpoint {} bytes on disk, {} uncompressed; at --storage.interval 10s: {:.1} MB written per minute)",
        bytes.len(),
        json,
        bytes.len() as f64 * 6.0 / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
