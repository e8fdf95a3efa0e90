//! The price table attacked through its reloads: a storm of good and bad
//! tables (hostile ones among them) while the fleet is polled leaves the
//! last good table in force, says so truthfully, loses no count and
//! shows nothing of what a refused file held.

use crate::util::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// The simulator's four models priced, in `currency`, with `extra` more
/// models (distinct entries, so each table's entry count tells it apart).
fn good_table(currency: &str, extra: usize) -> String {
    let mut t = format!(
        "currency: {currency}\nmodels:\n  - {{provider: anthropic, model: claude-sonnet-4, input_per_million: \"3\", output_per_million: \"15\"}}\n  - {{provider: openai, model: gpt-5, input_per_million: \"1.25\", output_per_million: \"10\"}}\n  - {{provider: google, model: gemini-2.5-pro, input_per_million: \"1.25\", output_per_million: \"10\"}}\n  - {{provider: local, model: llama-3.3-70b, input_per_million: \"0\", output_per_million: \"0\"}}\n"
    );
    for i in 0..extra {
        t.push_str(&format!(
            "  - {{provider: openai, model: \"extra-{i}-*\", input_per_million: 1, output_per_million: 2}}\n"
        ));
    }
    t
}

/// What a refused file may hold: it must show nowhere.
const SECRET: &str = "cm_live_S3CRETS3CRETS3CRET";

/// A bad price file, by kind; `path` is made one (a file, a FIFO, a
/// directory).
fn make_bad(path: &std::path::Path, kind: usize) -> &'static str {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir_all(path);
    let write = |text: String| std::fs::write(path, text).unwrap();
    match kind % 7 {
        0 => {
            write(good_table("USD", 0).replace("\"15\"", "\"-15\"") + &format!("# {SECRET}\n"));
            "a negative price"
        }
        1 => {
            write(format!(
                "currency: USD\nmodels: []\nx: &a [{}]\ny: &b [{}]\nz: [{}]\n",
                vec!["0"; 1000].join(","),
                vec!["*a"; 100].join(","),
                vec!["*b"; 100].join(",")
            ));
            "an alias bomb"
        }
        2 => {
            write("currency: USD\nmodels: []\n".into());
            "no model"
        }
        3 => {
            let ok = std::process::Command::new("mkfifo")
                .arg(path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mkfifo");
            "a FIFO"
        }
        4 => {
            std::fs::create_dir(path).unwrap();
            "a directory"
        }
        5 => {
            write(format!("{SECRET}\n"));
            "a key file"
        }
        _ => {
            write(format!(
                "{{\"{SECRET}\": {{\"litellm_provider\": \"openai\", \"input_cost_per_token\": \"{SECRET}\""
            ));
            "a cut JSON"
        }
    }
}

fn make_good(path: &std::path::Path, currency: &str, extra: usize) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir_all(path);
    std::fs::write(path, good_table(currency, extra)).unwrap();
}

/// Counters that must never go down between two scrapes.
const COUNTED: [&str; 4] = [
    "clawmesh_tasks_finished_total",
    "clawmesh_task_tokens_total",
    "clawmesh_task_spend_total",
    "clawmesh_task_unpriced_tokens_total",
];

fn assert_none_went_down(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    when: &str,
) {
    for (k, v) in before {
        if COUNTED.iter().any(|n| k.split('{').next() == Some(n)) {
            let a = after.get(k).copied().unwrap_or(0.0);
            assert!(a >= *v, "{when}: {k} went down from {v} to {a}");
        }
    }
}

fn unpriced_of_known_models(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("clawmesh_task_unpriced_tokens_total{"))
        .filter(|(k, _)| {
            ["anthropic", "openai", "google", "local"]
                .iter()
                .any(|p| k.contains(&format!("provider=\"{p}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// 50 reloads by POST /-/reload, good and bad tables in turn (a negative
/// price, an alias bomb, no model, a FIFO, a directory, a key file, cut
/// JSON), while the simulator runs: after each, the reload's verdict
/// metric says what happened, the info and entry count are the last good
/// table's, no counter went down, no task of a priced model went
/// unpriced, and no refusal shows what the file held. Then 20 reloads at
/// once all succeed, and the counters since the start equal the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_storm_of_good_and_hostile_tables_keeps_the_last_good_one_in_force() {
    let sim = Sim::start(busy_fleet(2101)).await;
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.yaml");
    make_good(&prices, "USD", 0);
    let cfg = exporter_config(
        &sim,
        &[
            "--prices.file",
            prices.to_str().unwrap(),
            "--web.enable-lifecycle",
        ],
    );
    let exporter = start_exporter(&cfg).await;
    let_the_start_pass(&sim, &exporter).await;
    let m0 = converge(&sim, &exporter).await;
    let (start, truth_start) = (counters_of_exporter(&m0), counters_of_truth(&sim.truth()));
    let client = reqwest::Client::new();
    let reload_url = format!("http://{}/-/reload", exporter.addr);
    let mut last = m0;
    let mut in_force = ("USD".to_string(), 4.0);
    let currencies = ["EUR", "GBP", "JPY", "CHF", "USD"];
    sim.sim.resume();
    for i in 0..50 {
        let good = i % 2 == 0;
        let what = if good {
            let c = currencies[(i / 2) % currencies.len()];
            make_good(&prices, c, i);
            in_force = (c.to_string(), 4.0 + i as f64);
            "a good table"
        } else {
            make_bad(&prices, i / 2)
        };
        let r = client.post(&reload_url).send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(
            status.is_success(),
            good,
            "reload {i} ({what}): {status} {body}"
        );
        assert!(
            !body.contains(SECRET),
            "reload {i} ({what}) showed the file: {body}"
        );
        assert!(
            body.len() < 5000,
            "reload {i} ({what}): {} bytes",
            body.len()
        );
        let text = scrape(exporter.addr).await;
        assert!(
            !text.contains(SECRET),
            "reload {i} ({what}): /metrics shows the file"
        );
        let m = parse(&text);
        assert_eq!(
            value(&m, "clawmesh_exporter_config_last_reload_successful", &[]),
            Some(if good { 1.0 } else { 0.0 }),
            "reload {i} ({what})"
        );
        let infos: Vec<_> = m
            .keys()
            .filter(|k| k.starts_with("clawmesh_exporter_prices_info{"))
            .collect();
        assert_eq!(infos.len(), 1, "reload {i} ({what}): {infos:?}");
        assert_eq!(
            value(
                &m,
                "clawmesh_exporter_prices_info",
                &[("currency", &in_force.0), ("format", "clawmesh")]
            ),
            Some(1.0),
            "reload {i} ({what}): {infos:?}"
        );
        assert_eq!(
            value(&m, "clawmesh_exporter_price_entries", &[]),
            Some(in_force.1),
            "reload {i} ({what})"
        );
        assert_none_went_down(&last, &m, &format!("reload {i} ({what})"));
        assert_eq!(
            unpriced_of_known_models(&m),
            0.0,
            "reload {i} ({what}): a task of a priced model went unpriced"
        );
        last = m;
    }
    // At once: one at a time inside, every one taken.
    make_good(&prices, "EUR", 3);
    let all: Vec<_> = (0..20)
        .map(|_| tokio::spawn(client.post(&reload_url).send()))
        .collect();
    for r in all {
        assert!(r.await.unwrap().unwrap().status().is_success());
    }
    run_fleet_for(&sim, 30).await;
    let m = converge(&sim, &exporter).await;
    assert_eq!(
        value(&m, "clawmesh_exporter_prices_info", &[("currency", "EUR")]),
        Some(1.0)
    );
    assert_eq!(value(&m, "clawmesh_exporter_price_entries", &[]), Some(7.0));
    assert_none_went_down(&last, &m, "the end");
    assert_eq!(
        delta(&counters_of_exporter(&m), &start),
        delta(&counters_of_truth(&sim.truth()), &truth_start),
        "counters since the start (left), truth (right)"
    );
    exporter.shutdown().await;
}

/// The largest LiteLLM-format file the defaults take (--prices.max-size
/// 8MiB, --prices.max-entries 100000): as many models as fit, each
/// "p/<name>" (found by its short name too).
fn worst_json() -> String {
    // The defaults' worst: --prices.max-entries models, each named at the
    // longest the API reads (128 bytes, so kept), the file padded with an
    // unused field to just under --prices.max-size.
    let (n, max) = (clawmesh_exporter::prices::DEFAULT_MAX_ENTRIES, 6usize << 20);
    let entry = |i: usize, pad: usize| {
        format!(
            "\"{i:0128}\":{{\"litellm_provider\":\"p\",\"input_cost_per_token\":0,\"output_cost_per_token\":0,\"x\":\"{}\"}},",
            "x".repeat(pad)
        )
    };
    let pad = (max - 2) / n - entry(0, 0).len();
    let mut s = String::from("{");
    for i in 0..n {
        s.push_str(&entry(i, pad));
    }
    s.pop();
    s.push('}');
    assert!(s.len() <= max, "{}", s.len());
    s
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The shipped memory limit (deploy/: 64Mi) must hold the exporter with
/// the worst price table the defaults take, loaded at the start and again
/// by a reload (when the old table is still held): peak RSS of the real
/// binary, polling the simulator, under 52 MiB (debug build: 46 MiB
/// measured; 20,000 entries took 57).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worst_table_the_defaults_take_fits_the_shipped_memory_limit() {
    let sim = Sim::start(busy_fleet(2102)).await;
    let dir = temp_dir("attack-prices-rss");
    let prices = dir.join("prices.json");
    std::fs::write(&prices, worst_json()).unwrap();
    let port = free_port();
    let mut child = bin()
        .args([
            "--api-url",
            &sim.url(),
            "--prices.file",
            prices.to_str().unwrap(),
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--poll-interval",
            "1s",
        ])
        .env("CLAWMESH_API_KEY", clawmesh_exporter::sim::DEMO_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || async {
        let r = reqwest::get(&url).await.ok()?;
        Some(parse(&r.text().await.ok()?))
    };
    wait_for(Duration::from_secs(60), "the exporter to poll", || async {
        scrape().await.is_some_and(|m| {
            value(&m, "clawmesh_exporter_price_entries", &[])
                == Some(clawmesh_exporter::prices::DEFAULT_MAX_ENTRIES as f64)
        })
    })
    .await;
    let started = vm_hwm_kib(pid);
    let before = scrape().await.unwrap();
    let at = value(
        &before,
        "clawmesh_exporter_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for(Duration::from_secs(60), "the reload", || async {
        scrape().await.is_some_and(|m| {
            value(
                &m,
                "clawmesh_exporter_config_last_reload_success_timestamp_seconds",
                &[],
            ) != at
        })
    })
    .await;
    let reloaded = vm_hwm_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "peak RSS with the worst table: {started} KiB at the start, {reloaded} KiB after a reload"
    );
    assert!(
        reloaded < 52 << 10,
        "peak RSS {reloaded} KiB (start {started} KiB)"
    );
}
