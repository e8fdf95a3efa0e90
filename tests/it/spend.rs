//! Spend (issue 21): what the exporter says the fleet's tokens cost equals
//! the simulator's ground truth, priced by the simulator's own arithmetic
//! (src/sim/pricing.rs, apart from `crate::prices`) from the same list the
//! exporter's price file is written from: per slice (provider, model, team,
//! token kind, terminal status) under the contract's latitude, across a
//! dated price change, through kill -9 with storage, webhooks and faults;
//! unknown models count as unpriced tokens; budgets follow the truth; OTLP
//! carries the same numbers as /metrics.

use crate::util::*;
use clawmesh_exporter::sim::{
    prices_yaml, Faults, GroundTruth, Latitude, SimConfig, SimPrice, WebhookSettings, DEMO_KEY,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SPEND: &str = "clawmesh_task_spend_total";
const UNPRICED: &str = "clawmesh_task_unpriced_tokens_total";
const TOKENS: &str = "clawmesh_task_tokens_total";
const SECRET: &str = "whsec_spend_test";

/// Breakdowns by provider, model and team: the slices spend is compared by.
const BREAKDOWN: &[&str] = &[
    "--breakdown.provider",
    "--breakdown.model",
    "--breakdown.agent-labels",
    "team",
];
/// A spend slice: these labels' values ("" where absent).
const SLICE: [&str; 5] = ["provider", "model", "team", "kind", "status"];

// ------------------------------------------------------------ exact money

/// Decimal places of the simulator's amounts (10^-27 of the currency).
const DIGITS: usize = 27;

/// The truth's exact decimal text ("0.0453", "12") as an integer of
/// 10^-27 of the currency: the truth's side is compared without rounding.
fn units(text: &str) -> u128 {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    assert!(
        frac.len() <= DIGITS && !int.is_empty(),
        "not an amount of the truth: {text:?}"
    );
    let int: u128 = int.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let frac: u128 = format!("{frac:0<DIGITS$}")
        .parse()
        .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    int * 10u128.pow(DIGITS as u32) + frac
}

/// An exact amount as the double nearest to it (Rust's parsing of the
/// exact decimal text rounds correctly).
fn to_f64(u: u128) -> f64 {
    let scale = 10u128.pow(DIGITS as u32);
    format!("{}.{:0DIGITS$}", u / scale, u % scale)
        .parse()
        .unwrap()
}

/// How far a double from the exporter may be from the exact amount.
///
/// The exporter holds exact integers too, but it can only print a double
/// per series (Money::to_f64: the nearest double, short of the last bit);
/// the increase between two scrapes is the difference of two such
/// doubles, so it carries a few units in the last place *of the larger
/// value*, about 1e-16 of it. 1e-12 of the larger value leaves four orders
/// of magnitude for that and nothing for a real error: one token at the
/// cheapest price in these tests (1.25 per million) is 1e-8 of a
/// hundred-dollar series.
fn close(got: f64, want: f64, magnitude: f64) -> bool {
    (got - want).abs() <= 1e-12 * magnitude.abs().max(want.abs()).max(f64::MIN_POSITIVE)
}

// ------------------------------------------------------------ series

type Labels = BTreeMap<String, String>;
/// Amounts per slice: as served (doubles), and exact (the truth's).
type Served = BTreeMap<Vec<String>, f64>;
type Exact = BTreeMap<Vec<String>, u128>;

/// Every series of `name` with its labels.
fn series(m: &BTreeMap<String, f64>, name: &str) -> Vec<(Labels, f64)> {
    m.iter()
        .filter_map(|(k, v)| {
            let (n, rest) = k.split_once('{').unwrap_or((k, "}"));
            (n == name).then(|| (labels_of(rest.trim_end_matches('}')), *v))
        })
        .collect()
}

fn labels_of(s: &str) -> Labels {
    // Values in these tests hold no quotes or commas.
    s.split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once("=\"")?;
            Some((k.to_string(), v.trim_end_matches('"').to_string()))
        })
        .collect()
}

fn key_of(l: &Labels, dims: &[&str]) -> Vec<String> {
    dims.iter()
        .map(|d| l.get(*d).cloned().unwrap_or_default())
        .collect()
}

/// The sum of `name`'s series per combination of `dims`.
fn by(m: &BTreeMap<String, f64>, name: &str, dims: &[&str]) -> Served {
    let mut out = BTreeMap::new();
    for (l, v) in series(m, name) {
        *out.entry(key_of(&l, dims)).or_default() += v;
    }
    out
}

/// The sum of `name`'s series whose labels include all of `labels`.
fn sum_of(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(m, name)
        .iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str).unwrap_or("") == *v)
        })
        .map(|(_, v)| v)
        .sum()
}

/// The truth's spend per slice ([`SLICE`]), exact.
fn truth_spend(t: &GroundTruth) -> Exact {
    let mut out = BTreeMap::new();
    for row in &t.by_dims {
        let team = row
            .dims
            .agent_labels
            .get("team")
            .cloned()
            .unwrap_or_default();
        for (status, kinds) in &row.spend {
            for (kind, v) in kinds {
                let key = vec![
                    row.dims.provider.clone(),
                    row.dims.model.clone(),
                    team.clone(),
                    kind.clone(),
                    status.clone(),
                ];
                *out.entry(key).or_default() += units(v);
            }
        }
    }
    out
}

/// The truth's whole spend per (kind, status), exact.
fn truth_totals(t: &GroundTruth) -> Exact {
    let mut out = BTreeMap::new();
    for (status, kinds) in &t.spend {
        for (kind, v) in kinds {
            *out.entry(vec![kind.clone(), status.clone()]).or_default() += units(v);
        }
    }
    out
}

/// `after - before` per key; the truth's counters never go down.
fn exact_delta(after: &Exact, before: &Exact) -> Exact {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0);
            let d = a
                .checked_sub(b)
                .unwrap_or_else(|| panic!("the truth's spend of {k:?} went down"));
            (k.clone(), d)
        })
        .collect()
}

/// The exporter's increases per key against the exact ones the truth
/// made: every difference, one line each.
fn differences((e1, e2): (&Served, &Served), want: &Exact) -> Vec<String> {
    let keys: std::collections::BTreeSet<&Vec<String>> =
        e1.keys().chain(e2.keys()).chain(want.keys()).collect();
    let mut diffs = Vec::new();
    for k in keys {
        let (a, b) = (
            e2.get(k).copied().unwrap_or(0.0),
            e1.get(k).copied().unwrap_or(0.0),
        );
        let got = a - b;
        let w = to_f64(want.get(k).copied().unwrap_or(0));
        if !close(got, w, a) {
            diffs.push(format!(
                "{k:?}: exporter +{got:e} ({b:e} -> {a:e}), truth +{w:e} (exactly {})",
                want.get(k).copied().unwrap_or(0)
            ));
        }
    }
    diffs
}

/// The exporter's spend moved between its scrapes `e1` and `e2` as the
/// truth's did between `t1` and `t2`, in every slice and in total (kind,
/// status); the truth's slices sum to its totals. Returns the truth's
/// whole increase, which must be positive (nothing spent proves nothing).
fn assert_spend_deltas_match(
    (e1, t1): (&BTreeMap<String, f64>, &GroundTruth),
    (e2, t2): (&BTreeMap<String, f64>, &GroundTruth),
    what: &str,
) -> u128 {
    let want = exact_delta(&truth_spend(t2), &truth_spend(t1));
    let want_totals = exact_delta(&truth_totals(t2), &truth_totals(t1));
    let whole: u128 = want_totals.values().sum();
    assert_eq!(
        want.values().sum::<u128>(),
        whole,
        "{what}: the truth's slices do not sum to its totals"
    );
    assert!(whole > 0, "{what}: nothing was spent: nothing proven");
    let mut diffs = differences((&by(e1, SPEND, &SLICE), &by(e2, SPEND, &SLICE)), &want);
    diffs.extend(
        differences(
            (
                &by(e1, SPEND, &["kind", "status"]),
                &by(e2, SPEND, &["kind", "status"]),
            ),
            &want_totals,
        )
        .into_iter()
        .map(|d| format!("total {d}")),
    );
    assert!(
        diffs.is_empty(),
        "{what}: spend increases differ from the truth's (of {} slices, truth +{}):\n{}",
        want.len(),
        to_f64(whole),
        diffs.join("\n")
    );
    whole
}

/// `m` with the breakdown labels dropped and the series that differed
/// only by them summed: what the workspace's counters are, for
/// [`assert_deltas_match`] (which reads one series per status or kind).
fn without_breakdown(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let (name, rest) = k.split_once('{').unwrap_or((k, "}"));
        let labels: Vec<String> = labels_of(rest.trim_end_matches('}'))
            .into_iter()
            .filter(|(l, _)| !["provider", "model", "team"].contains(&l.as_str()))
            .map(|(l, v)| format!("{l}=\"{v}\""))
            .collect();
        *out.entry(format!("{name}{{{}}}", labels.join(",")))
            .or_default() += v;
    }
    out
}

/// [`assert_deltas_match`] for an exporter with breakdowns.
fn assert_counters_match(
    (e1, t1): (&BTreeMap<String, f64>, &GroundTruth),
    (e2, t2): (&BTreeMap<String, f64>, &GroundTruth),
) {
    assert_deltas_match(
        (&without_breakdown(e1), t1),
        (&without_breakdown(e2), t2),
        10.0,
    );
}

/// The exporter's unpriced tokens per (provider, model, kind) moved as
/// the truth's did, exactly (integers: a double holds them exactly), and
/// some did.
fn assert_unpriced_deltas_match(
    (e1, t1): (&BTreeMap<String, f64>, &GroundTruth),
    (e2, t2): (&BTreeMap<String, f64>, &GroundTruth),
    what: &str,
) {
    let truth = |t: &GroundTruth| -> Served {
        let mut out = Served::new();
        for (pm, kinds) in &t.unpriced_tokens {
            let (p, m) = pm.split_once('/').unwrap_or((pm, ""));
            for (kind, n) in kinds {
                out.insert(vec![p.into(), m.into(), kind.clone()], *n as f64);
            }
        }
        out
    };
    let dims = ["provider", "model", "kind"];
    let got = delta_of(&by(e2, UNPRICED, &dims), &by(e1, UNPRICED, &dims));
    let want = delta_of(&truth(t2), &truth(t1));
    assert!(
        !want.is_empty(),
        "{what}: no unpriced tokens: nothing proven"
    );
    assert_eq!(
        got, want,
        "{what}: unpriced tokens, exporter (left), truth (right)"
    );
}

/// `after - before` per key, zeros dropped.
fn delta_of(after: &Served, before: &Served) -> Served {
    after
        .iter()
        .map(|(k, a)| (k.clone(), a - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

// ------------------------------------------------------------ set-up

/// The simulator's default price list (the four models at list prices,
/// the local model at zero).
fn default_prices() -> Vec<SimPrice> {
    SimConfig::default().prices
}

/// A price file written from `prices` in a directory of its own, removed
/// with it.
struct PriceFile {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for PriceFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

fn price_file(prices: &[SimPrice]) -> PriceFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prices.yaml");
    std::fs::write(&path, prices_yaml(prices, "USD")).unwrap();
    PriceFile { path, _dir: dir }
}

/// [`exporter_config`]'s flags plus breakdowns and `--prices.file`.
fn flags<'a>(file: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut f = BREAKDOWN.to_vec();
    f.extend(["--prices.file", file.to_str().unwrap()]);
    f.extend_from_slice(extra);
    f
}

// ------------------------------------------------------------ tests

/// Every latitude of the contract (late tokens arriving in a later
/// version, whole-second stamps and ties, the API's clock 45 s ahead, the
/// lag at its maximum, unknown statuses): per (provider, model, team,
/// kind, status) the exporter's spend increase equals the truth's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_per_slice_equals_the_truth_under_the_contract_s_latitude() {
    let sim = Sim::start(latitude_fleet(2101, 45_000)).await;
    let prices = default_prices();
    let file = price_file(&prices);
    let exporter = start_exporter(&exporter_config(&sim, &flags(&file, &[]))).await;
    run_fleet_for(&sim, 60).await;
    let_the_late_values_of_the_start_pass(&sim, &exporter).await;
    let e1 = converge(&sim, &exporter).await;
    let t1 = sim.truth();
    run_fleet_for(&sim, 300).await;
    let e2 = converge(&sim, &exporter).await;
    let t2 = sim.truth();
    assert_counters_match((&e1, &t1), (&e2, &t2));
    assert_spend_deltas_match((&e1, &t1), (&e2, &t2), "latitude");
    // Every model has a price (the local one at zero): nothing unpriced.
    assert!(t2.unpriced_tokens.is_empty(), "{:?}", t2.unpriced_tokens);
    let unpriced: f64 = series(&e2, UNPRICED).iter().map(|(_, v)| v).sum();
    assert_eq!(
        unpriced, 0.0,
        "tokens unpriced though every model has a price"
    );
    let local: Vec<f64> = series(&e2, SPEND)
        .into_iter()
        .filter(|(l, _)| l.get("model").map(String::as_str) == Some("llama-3.3-70b"))
        .map(|(_, v)| v)
        .collect();
    assert!(
        !local.is_empty() && local.iter().all(|v| *v == 0.0),
        "the local model's spend shows, at zero (a price of 0 is a price): {local:?}"
    );
    assert_eq!(
        must(
            &e2,
            "clawmesh_exporter_prices_info",
            &[("currency", "USD"), ("format", "clawmesh")]
        ),
        1.0
    );
    assert_eq!(
        must(&e2, "clawmesh_exporter_price_entries", &[]),
        prices.len() as f64
    );
    exporter.shutdown().await;
}

/// The simulator's local model has no price in the table: its tokens count
/// as unpriced, by provider and model, exactly as the truth's; it has no
/// spend (never a silent 0 standing for a price), and the other models'
/// spend is still the truth's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_counts_as_unpriced_never_as_zero() {
    let prices: Vec<SimPrice> = default_prices()
        .into_iter()
        .filter(|p| p.provider != "local")
        .collect();
    assert_eq!(prices.len(), default_prices().len() - 1);
    let sim = Sim::start(SimConfig {
        prices: prices.clone(),
        ..busy_fleet(2102)
    })
    .await;
    let file = price_file(&prices);
    let exporter = start_exporter(&exporter_config(&sim, &flags(&file, &[]))).await;
    let_the_start_pass(&sim, &exporter).await;
    let e1 = converge(&sim, &exporter).await;
    let t1 = sim.truth();
    run_fleet_for(&sim, 200).await;
    let e2 = converge(&sim, &exporter).await;
    let t2 = sim.truth();
    assert_counters_match((&e1, &t1), (&e2, &t2));
    assert_spend_deltas_match((&e1, &t1), (&e2, &t2), "without the local model");
    assert_unpriced_deltas_match((&e1, &t1), (&e2, &t2), "without the local model");

    let local = [("provider", "local"), ("model", "llama-3.3-70b")];
    let truth_unpriced = |t: &GroundTruth, kind: &str| {
        t.unpriced_tokens
            .get("local/llama-3.3-70b")
            .and_then(|k| k.get(kind))
            .copied()
            .unwrap_or(0)
    };
    for kind in ["input", "output"] {
        let labels = [local[0], local[1], ("kind", kind)];
        let got = sum_of(&e2, UNPRICED, &labels) - sum_of(&e1, UNPRICED, &labels);
        let want = (truth_unpriced(&t2, kind) - truth_unpriced(&t1, kind)) as f64;
        assert!(
            want > 0.0,
            "no {kind} tokens of the local model: nothing proven"
        );
        assert_eq!(got, want, "unpriced {kind} tokens of local/llama-3.3-70b");
        // All of the model's tokens, none lost and none priced.
        let tokens = sum_of(&e2, TOKENS, &labels) - sum_of(&e1, TOKENS, &labels);
        assert_eq!(tokens, want, "{kind} tokens of the local model vs unpriced");
    }
    // Only the model without a price is unpriced.
    for (l, v) in series(&e2, UNPRICED) {
        if l.get("model").map(String::as_str) != Some("llama-3.3-70b") {
            assert_eq!(v, 0.0, "unpriced tokens of a priced model: {l:?}");
        }
    }
    assert_eq!(
        t2.unpriced_tokens.keys().collect::<Vec<_>>(),
        ["local/llama-3.3-70b"]
    );
    let local_spend: f64 = series(&e2, SPEND)
        .iter()
        .filter(|(l, _)| l.get("model").map(String::as_str) == Some("llama-3.3-70b"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(local_spend, 0.0, "the model without a price has spend");
    exporter.shutdown().await;
}

/// Spend per token of `model` and `kind` between two scrapes: (spend
/// increase, token increase, the larger spend value).
fn spent_per_token(
    e1: &BTreeMap<String, f64>,
    e2: &BTreeMap<String, f64>,
    model: &str,
    kind: &str,
) -> (f64, f64, f64) {
    let labels = [("model", model), ("kind", kind)];
    let spend = sum_of(e2, SPEND, &labels) - sum_of(e1, SPEND, &labels);
    let tokens = sum_of(e2, TOKENS, &labels) - sum_of(e1, TOKENS, &labels);
    (spend, tokens, sum_of(e2, SPEND, &labels))
}

/// Between the scrapes, every token of `model` was priced at `per_million`
/// (the list's decimal text) per million, of each kind.
fn assert_priced_at(
    e1: &BTreeMap<String, f64>,
    e2: &BTreeMap<String, f64>,
    model: &str,
    per_million: [&str; 2],
    what: &str,
) {
    for (kind, price) in ["input", "output"].into_iter().zip(per_million) {
        let (spend, tokens, magnitude) = spent_per_token(e1, e2, model, kind);
        assert!(tokens > 0.0, "{what}: no {kind} tokens of {model}");
        // tokens × price per million / 10^6, exactly, then to a double.
        let want = to_f64(tokens as u128 * units(price) / 1_000_000);
        assert!(
            close(spend, want, magnitude),
            "{what}: {tokens} {kind} tokens of {model} cost {spend}, at {price} per million {want}"
        );
    }
}

/// A table with a second price for one model from an instant ~25 s ahead
/// on the API's clock (which is 45 s behind the host's: a price taken by
/// the host's clock would apply from the start): the tasks finished before
/// it are priced at the old price, those after at the new one (a task
/// finishing in the very second, with whole-second stamps, at the new),
/// and the spend across the change equals the truth's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_at_a_date_applies_to_tasks_finished_after_it_only() {
    let sim = Sim::start(SimConfig {
        latitude: Latitude {
            whole_second_stamps: true,
            clock_offset_ms: -45_000,
            ..Latitude::default()
        },
        ..busy_fleet(2103)
    })
    .await;
    let model = "claude-sonnet-4";
    let mut prices = default_prices();
    let old = prices
        .iter()
        .find(|p| p.model == model)
        .expect("the simulator prices claude-sonnet-4")
        .clone();
    let new = ["6.5", "32.25"];
    let was = [
        old.input_per_million.as_str(),
        old.output_per_million.as_str(),
    ];
    assert_ne!(was, new);
    // A whole second of the API's clock, so that tasks finish right on it.
    let api_now = chrono::DateTime::parse_from_rfc3339(&sim.truth().now).unwrap();
    let since = (api_now + chrono::Duration::seconds(25)).with_timezone(&chrono::Utc);
    let since = since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    prices.push(SimPrice {
        since: Some(since.clone()),
        input_per_million: new[0].into(),
        output_per_million: new[1].into(),
        ..old.clone()
    });
    sim.sim.set_prices(prices.clone()).unwrap();
    let file = price_file(&prices);
    let exporter = start_exporter(&exporter_config(&sim, &flags(&file, &[]))).await;
    let_the_start_pass(&sim, &exporter).await;
    let e0 = converge(&sim, &exporter).await;
    let t0 = sim.truth();

    // Before the change: the old price.
    run_fleet_for(&sim, 60).await;
    let e1 = converge(&sim, &exporter).await;
    let t1 = sim.truth();
    assert!(
        rfc3339_secs(&t1.now) < rfc3339_secs(&since),
        "the machine was too slow: the fleet paused at {} (API clock), after the change at {since}",
        t1.now
    );
    assert_priced_at(&e0, &e1, model, was, "before the change");

    // Across it: the fleet lives through the instant of the change.
    sim.sim.resume();
    wait_for_sim_clock(
        &sim,
        host_secs(&t1, &since) + 1.0,
        Duration::from_secs(60),
        "the price change's instant",
    )
    .await;
    let e2 = converge(&sim, &exporter).await;
    let t2 = sim.truth();
    assert_spend_deltas_match((&e1, &t1), (&e2, &t2), "across the change");

    // After it: the new price.
    run_fleet_for(&sim, 100).await;
    let e3 = converge(&sim, &exporter).await;
    let t3 = sim.truth();
    assert_priced_at(&e2, &e3, model, new, "after the change");
    assert_spend_deltas_match((&e0, &t0), (&e3, &t3), "the whole run");
    assert_counters_match((&e0, &t0), (&e3, &t3));
    exporter.shutdown().await;
}

/// The exporter binary on `port` against `sim`, checkpoints in `storage`.
fn exporter_process(sim: &Sim, storage: &Path, prices: &Path, port: u16, log: &Path) -> Proc {
    let child = bin()
        .env("CLAWMESH_API_KEY", DEMO_KEY)
        .args([
            "--api-url",
            &sim.url(),
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--storage.path",
            storage.to_str().unwrap(),
            "--storage.interval",
            "1s",
            "--poll-interval",
            "1s",
            "--tasks.overlap",
            "6s",
            "--tasks.reconcile-interval",
            "5s",
            "--api.budget-share",
            "1",
        ])
        .args(flags(prices, &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// An exporter process, killed when dropped (a failing test leaves none).
struct Proc {
    child: std::process::Child,
    log: PathBuf,
}

impl Proc {
    /// SIGKILL: no last checkpoint, no goodbye.
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The end of its log, for a failure message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// /metrics of the process on `addr`: `None` while it does not answer.
async fn scrape_process(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let r = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    Some(parse(&r.text().await.ok()?))
}

/// Wait until the process on `addr` serves its workspace, synced.
async fn wait_until_up(addr: SocketAddr, ws: &str, p: &Proc) {
    let up = holds_within(Duration::from_secs(60), || async {
        scrape_process(addr)
            .await
            .is_some_and(|m| value(&m, "clawmesh_up", &[("workspace", ws)]) == Some(1.0))
    })
    .await;
    assert!(
        up,
        "the exporter was not up within 60 s; its log:\n{}",
        p.log_tail()
    );
}

/// The series of `before` that `now` shows lower, or not at all though
/// they were above zero. A series at zero may be absent: one whose slice
/// began after the last checkpoint was served at zero (the counters
/// served are the checkpoint's) and is not restored.
fn lower_than_before(before: &BTreeMap<String, f64>, now: &BTreeMap<String, f64>) -> Vec<String> {
    before
        .iter()
        .filter(|(k, b)| match now.get(*k) {
            Some(a) => a < b,
            None => **b > 0.0,
        })
        .map(|(k, b)| format!("{k} was {b}, is {:?}", now.get(k)))
        .collect()
}

/// The series of `m` above zero.
fn above_zero(m: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.into_iter().filter(|(_, v)| *v > 0.0).collect()
}

/// The spend and unpriced-token series, whole.
fn spend_series(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with("clawmesh_task_spend_total{")
                || k.starts_with("clawmesh_task_unpriced_tokens_total{")
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The binary with storage and breakdowns is killed (SIGKILL) while the
/// fleet lives and started again on the same path: no spend series served
/// after the restart is ever below what was served before the kill, and
/// in the end the spend since the first start is the truth's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_kill_9_and_restart_with_storage() {
    // Without the local model's price: its unpriced tokens are kept too.
    let prices: Vec<SimPrice> = default_prices()
        .into_iter()
        .filter(|p| p.provider != "local")
        .collect();
    let sim = Sim::start(SimConfig {
        prices: prices.clone(),
        ..busy_fleet(2104)
    })
    .await;
    let ws = sim.truth().workspace_id;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let storage = dir.join("storage");
    let prices = price_file(&prices);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut first = exporter_process(&sim, &storage, &prices, port, &dir.join("first.log"));
    wait_until_up(addr, &ws, &first).await;
    let_the_start_pass_at(&sim, addr).await;
    let e1 = converge_at(&sim, addr).await;
    let t1 = sim.truth();

    // The fleet lives; the most each series was ever served, up to the kill.
    let mut served: BTreeMap<String, f64> = BTreeMap::new();
    let total = |s: &Sim| s.truth().finished_total.values().sum::<u64>();
    let start = total(&sim);
    sim.sim.resume();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while total(&sim) < start + 150 {
        if let Some(m) = scrape_process(addr).await {
            for (k, v) in spend_series(&m) {
                let s = served.entry(k).or_insert(v);
                *s = s.max(v);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "150 tasks did not finish within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served.values().any(|v| *v > 0.0),
        "nothing spent before the kill: nothing proven"
    );
    first.kill_9();
    // Tasks finish while no exporter runs.
    run_fleet_for(&sim, 50).await;

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let second = exporter_process(&sim, &storage, &prices, port, &dir.join("second.log"));
    // From its first answer until it is synced, no series is below what
    // was served before the kill (Prometheus would see a reset). A scrape
    // without any spend series is no reset (the series are stale, not
    // lower): that they should be there from the restore on is
    // `restored_spend_is_served_before_the_first_sync`'s.
    let mut scrapes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(m) = scrape_process(addr).await {
            let now = spend_series(&m);
            if !now.is_empty() {
                scrapes += 1;
                let lower = lower_than_before(&served, &now);
                assert!(lower.is_empty(), "after the restart:\n{}", lower.join("\n"));
            }
            if value(&m, "clawmesh_up", &[("workspace", ws.as_str())]) == Some(1.0) && scrapes > 0 {
                assert!(
                    value(&m, "clawmesh_exporter_checkpoint_restored_age_seconds", &[]).is_some(),
                    "the counters did not go on from the checkpoint"
                );
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted exporter was not up within 60 s; its log:\n{}",
            second.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    run_fleet_for(&sim, 100).await;
    let e2 = converge_at(&sim, addr).await;
    let t2 = sim.truth();
    let lower = lower_than_before(&served, &spend_series(&e2));
    assert!(lower.is_empty(), "in the end:\n{}", lower.join("\n"));
    assert_spend_deltas_match((&e1, &t1), (&e2, &t2), "through kill -9");
    assert_unpriced_deltas_match((&e1, &t1), (&e2, &t2), "through kill -9");
    assert_counters_match((&e1, &t1), (&e2, &t2));
    drop(second);
}

/// After a restart with storage the restored counters are served before
/// the first sync, which a slow API (every answer 1.5 s late) holds back:
/// the spend and unpriced series among them, as they were, not absent
/// while the token counters restored from the same checkpoint show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_spend_is_served_before_the_first_sync() {
    let prices: Vec<SimPrice> = default_prices()
        .into_iter()
        .filter(|p| p.provider != "local")
        .collect();
    let sim = Sim::start(SimConfig {
        prices: prices.clone(),
        ..busy_fleet(2108)
    })
    .await;
    let ws = sim.truth().workspace_id;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = price_file(&prices);
    let storage = dir.join("storage");
    let extra = [
        "--storage.path",
        storage.to_str().unwrap(),
        "--storage.interval",
        "1s",
    ];
    let cfg = exporter_config(&sim, &flags(&file, &extra));
    let exporter = start_exporter(&cfg).await;
    run_fleet_for(&sim, 100).await;
    // Paused, and served from a checkpoint taken after the last sync.
    // (Series at zero left out: a slice with nothing counted need not be
    // restored.)
    let before = above_zero(spend_series(&converge(&sim, &exporter).await));
    assert!(!before.is_empty(), "nothing spent: nothing proven");
    exporter.stop_as_if_killed().await;
    sim.faults(Faults {
        hang: 1.0,
        hang_ms: 1500,
        ..Faults::default()
    });
    let exporter = start_exporter(&cfg).await;
    let restored = |m: &BTreeMap<String, f64>| {
        value(m, "clawmesh_exporter_checkpoint_restored_age_seconds", &[]).is_some()
    };
    let up = |m: &BTreeMap<String, f64>| {
        value(m, "clawmesh_up", &[("workspace", ws.as_str())]) == Some(1.0)
    };
    // Every scrape from the restore until the first sync.
    let mut scrapes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = parse(&scrape(exporter.addr).await);
        if up(&m) {
            break;
        }
        if restored(&m) {
            scrapes += 1;
            assert!(
                value(&m, TOKENS, &[]).is_some(),
                "the restored token counters are served"
            );
            assert_eq!(
                above_zero(spend_series(&m)),
                before,
                "restored spend and unpriced tokens served before the first sync (left), before the restart (right)"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exporter did not sync within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        scrapes > 0,
        "no scrape between the restore and the first sync"
    );
    sim.faults(Faults::default());
    let after = above_zero(spend_series(&converge(&sim, &exporter).await));
    assert_eq!(
        after, before,
        "the spend changed while the fleet was paused"
    );
    exporter.shutdown().await;
}

/// The simulator delivers webhooks (drops, duplicates, failed attempts,
/// reordering) while the API answers 5xx and 429 now and then: each
/// task's spend counts once, the truth's, also after every delivery and
/// duplicate has arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_is_counted_once_through_webhooks_and_faults() {
    // A calmer fleet than the others: each change is a delivery or more,
    // and on a loaded machine the debug build's webhook worker could not
    // keep up with 3,000 a minute (the polls waited on it for a minute).
    let sim = Sim::start(SimConfig {
        task_changes_per_minute: 1200.0,
        ..busy_fleet(2105)
    })
    .await;
    sim.sim.pause();
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let prices = price_file(&default_prices());
    let extra = [
        "--webhook.secret-file",
        secret.to_str().unwrap(),
        "--webhook.poll-interval",
        "2s",
        "--webhook.missed-grace",
        "3s",
        "--api.timeout",
        "1s",
        // The simulator posts every delivery at once, each on a connection
        // of its pool (no bound on deliveries in flight): on a loaded
        // machine it held 358 connections to the exporter, and past the
        // default 512 the exporter refuses new ones, this test's scrapes
        // among them. The connection cap is not what this test is about.
        "--web.max-connections",
        "4096",
    ];
    let exporter = start_exporter(&exporter_config(&sim, &flags(&prices, &extra))).await;
    let_the_start_pass(&sim, &exporter).await;
    let e1 = converge(&sim, &exporter).await;
    let t1 = sim.truth();
    sim.sim.set_webhooks(WebhookSettings {
        url: format!("http://{}/webhooks/clawmesh", exporter.addr),
        secret: SECRET.into(),
        drop: 0.05,
        duplicate: 0.2,
        fail_attempt: 0.05,
        reorder_ms: 300,
        time_scale: 0.001,
    });
    sim.faults(Faults {
        html_500: 0.08,
        empty_502: 0.08,
        unavailable_503: 0.08,
        rate_limit_429: 0.08,
        retry_after_secs: 1,
        ..Faults::default()
    });
    run_fleet_for(&sim, 150).await;
    // With webhooks healthy the exporter polls less (and under load, with
    // ~80 deliveries a second, it was seen making 2 requests a minute): the
    // faults of the busy stretch are left to chance. The fleet pauses (no
    // more deliveries) and the polls go on until the API has failed some,
    // each a listing read again that must not count anything twice.
    sim.sim.pause();
    let requests = sim.truth().requests_total;
    let faulty = holds_within(Duration::from_secs(60), || async {
        sim.truth().faults_injected >= 8
    })
    .await;
    let t = sim.truth();
    if !faulty {
        // What the exporter was doing instead.
        let text = scrape(exporter.addr).await;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.starts_with("clawmesh_api_")
                        || l.starts_with("clawmesh_up")
                        || l.starts_with("clawmesh_last_sync")
                        || l.starts_with("clawmesh_webhook_")
                        || l.starts_with("clawmesh_sync"))
            })
            .collect();
        panic!(
            "{} faulty answers of {} requests ({} in the last 60 s), {} tasks finished; the exporter:\n{}",
            t.faults_injected,
            t.requests_total,
            t.requests_total - requests,
            t.finished_total.values().sum::<u64>(),
            lines.join("\n")
        );
    }
    let e2 = converge(&sim, &exporter).await;
    let t2 = sim.truth();
    assert_spend_deltas_match((&e1, &t1), (&e2, &t2), "webhooks and faults");
    assert_counters_match((&e1, &t1), (&e2, &t2));

    // Every delivery, duplicate and retry has arrived: nothing more counts.
    wait_for(Duration::from_secs(30), "deliveries to end", || async {
        sim.truth().webhooks.in_flight == 0
    })
    .await;
    sim.faults(Faults::default());
    let e3 = converge(&sim, &exporter).await;
    assert_eq!(
        spend_series(&e3),
        spend_series(&e2),
        "late deliveries changed the spend"
    );
    let t = sim.truth();
    assert_eq!(t.retry_after_violations, 0);
    let w = &t.webhooks;
    assert!(
        w.duplicates_sent > 0 && w.failed_attempts > 0 && w.delivered.values().sum::<u64>() > 0,
        "deliveries were not exercised: {w:?}"
    );
    let accepted = must(
        &e3,
        "clawmesh_webhook_requests_total",
        &[("result", "accepted")],
    );
    assert!(accepted > 0.0, "no delivery was accepted");
    exporter.shutdown().await;
}

/// The config file of one workspace on `sim` in `dir`, with breakdowns,
/// `budgets` (YAML lines under the workspace) and the price file
/// `prices.yaml` beside it (`prices:` of the file).
fn budget_config(sim: &Sim, dir: &Path, budgets: &str) -> PathBuf {
    std::fs::write(dir.join("key"), format!("{DEMO_KEY}\n")).unwrap();
    std::fs::write(
        dir.join("prices.yaml"),
        prices_yaml(&default_prices(), "USD"),
    )
    .unwrap();
    let file = dir.join("clawmesh.yml");
    let yaml = format!(
        "workspaces:\n  - name: spend\n    api_url: {}\n    api_key_file: key\n    poll_interval: 1s\n    agents_interval: 1s\n    reconcile_interval: 5s\n    budget_share: 1\n    breakdown:\n      provider: true\n      model: true\n      agent_labels: [team]\n{budgets}prices:\n  file: prices.yaml\n",
        sim.url()
    );
    std::fs::write(&file, yaml).unwrap();
    file
}

async fn start_from_file(file: PathBuf) -> clawmesh_exporter::exporter::Running {
    use clap::Parser;
    let args = clawmesh_exporter::config::RunArgs {
        config_file: Some(file),
        listen_address: "127.0.0.1:0".into(),
        ..clawmesh_exporter::config::Cli::try_parse_from(["clawmesh-exporter"])
            .unwrap()
            .run
    };
    let cfg = args
        .validate(&std::collections::HashMap::<String, String>::new())
        .unwrap_or_else(|e| panic!("config: {e}"));
    start_exporter(&cfg).await
}

/// The first instant of the next UTC month after the API instant `now`,
/// in Unix seconds.
fn next_month_start(now: &str) -> f64 {
    use chrono::Datelike;
    let d = chrono::DateTime::parse_from_rfc3339(now)
        .unwrap()
        .with_timezone(&chrono::Utc)
        .date_naive();
    let (y, m) = if d.month() == 12 {
        (d.year() + 1, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    chrono::NaiveDate::from_ymd_opt(y, m, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp() as f64
}

/// The UTC day ("YYYY-MM-DD") and month ("YYYY-MM") of an API instant.
fn day_and_month(now: &str) -> (String, String) {
    let d = chrono::DateTime::parse_from_rfc3339(now)
        .unwrap()
        .with_timezone(&chrono::Utc);
    (
        d.format("%Y-%m-%d").to_string(),
        d.format("%Y-%m").to_string(),
    )
}

/// The truth's spend of the tasks finished on `day`, and in `month`.
fn truth_period(t: &GroundTruth, day: &str, month: &str) -> (u128, u128) {
    let of_day = t.spend_by_finish_day.get(day).map_or(0, |v| units(v));
    let of_month = t
        .spend_by_finish_day
        .iter()
        .filter(|(d, _)| d.starts_with(month))
        .map(|(_, v)| units(v))
        .sum();
    (of_day, of_month)
}

/// A workspace budget and a team's (config file `budgets:`): the amounts
/// show as configured; each budget's spend counter moves as the truth's
/// spend it matches; the day's and month's spend as the truth's spend of
/// the tasks finished today and this month (UTC, API clock); the month
/// ends at the next month's first midnight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_gauges_follow_the_truth() {
    let sim = Sim::start(SimConfig {
        latitude: Latitude {
            clock_offset_ms: 20_000,
            ..Latitude::default()
        },
        ..busy_fleet(2106)
    })
    .await;
    let team = "payments";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = budget_config(
        &sim,
        dir,
        &format!(
            "    budgets:\n      - name: all\n        monthly: 50000\n        daily: \"2500\"\n      - name: team-{team}\n        match: {{team: {team}}}\n        monthly: 8000\n        daily: 400.5\n"
        ),
    );
    let exporter = start_from_file(file).await;
    // The stretch measured must lie within one UTC day of the API's clock
    // (the period gauges start again at midnight): with midnight near,
    // let it pass first.
    let to_midnight = 86_400.0 - rfc3339_secs(&sim.truth().now).rem_euclid(86_400.0);
    if to_midnight < 120.0 {
        wait_for_sim_clock(
            &sim,
            sim_now_host_secs(&sim) + to_midnight + 2.0,
            Duration::from_secs(130),
            "UTC midnight on the API's clock",
        )
        .await;
    }
    let_the_start_pass(&sim, &exporter).await;
    let e1 = converge(&sim, &exporter).await;
    let t1 = sim.truth();
    run_fleet_for(&sim, 250).await;
    let e2 = converge(&sim, &exporter).await;
    let t2 = sim.truth();
    let (day, month) = day_and_month(&t2.now);
    assert_eq!(
        day_and_month(&t1.now).0,
        day,
        "the stretch crossed midnight"
    );

    for (budget, period, amount) in [
        ("all", "month", 50000.0),
        ("all", "day", 2500.0),
        ("team-payments", "month", 8000.0),
        ("team-payments", "day", 400.5),
    ] {
        assert_eq!(
            must(
                &e2,
                "clawmesh_budget_amount",
                &[("budget", budget), ("period", period)]
            ),
            amount,
            "{budget} {period}"
        );
    }

    // Spend since counting began, per budget.
    let total = |t: &GroundTruth| truth_totals(t).values().sum::<u128>();
    let of_team = |t: &GroundTruth| {
        truth_spend(t)
            .iter()
            .filter(|(k, _)| k[2] == team)
            .map(|(_, v)| v)
            .sum::<u128>()
    };
    let counter = |m: &BTreeMap<String, f64>, b: &str| {
        must(m, "clawmesh_budget_spend_total", &[("budget", b)])
    };
    let period = |m: &BTreeMap<String, f64>, b: &str, p: &str| {
        must(
            m,
            "clawmesh_budget_period_spend",
            &[("budget", b), ("period", p)],
        )
    };
    let team_budget = format!("team-{team}");
    let (d1, m1) = truth_period(&t1, &day, &month);
    let (d2, m2) = truth_period(&t2, &day, &month);
    let team_spent = of_team(&t2) - of_team(&t1);
    assert!(team_spent > 0, "team {team} spent nothing: nothing proven");
    let checks = [
        (
            "all: spend_total",
            counter(&e2, "all"),
            counter(&e1, "all"),
            total(&t2) - total(&t1),
        ),
        (
            "all: day",
            period(&e2, "all", "day"),
            period(&e1, "all", "day"),
            d2 - d1,
        ),
        (
            "all: month",
            period(&e2, "all", "month"),
            period(&e1, "all", "month"),
            m2 - m1,
        ),
        (
            "team: spend_total",
            counter(&e2, &team_budget),
            counter(&e1, &team_budget),
            team_spent,
        ),
        // All of the stretch's tasks finished today: a team budget's day
        // and month move as its counter.
        (
            "team: day",
            period(&e2, &team_budget, "day"),
            period(&e1, &team_budget, "day"),
            team_spent,
        ),
        (
            "team: month",
            period(&e2, &team_budget, "month"),
            period(&e1, &team_budget, "month"),
            team_spent,
        ),
    ];
    let mut diffs = Vec::new();
    for (what, after, before, want) in checks {
        let got = after - before;
        if !close(got, to_f64(want), after) {
            diffs.push(format!(
                "{what}: exporter +{got:e} ({before} -> {after}), truth +{:e}",
                to_f64(want)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "budgets differ from the truth:\n{}",
        diffs.join("\n")
    );
    assert!(d2 > d1, "nothing spent today: nothing proven");

    // The periods end at the API's next midnight and next month.
    let month_end = must(
        &e2,
        "clawmesh_budget_period_end_timestamp_seconds",
        &[("period", "month")],
    );
    assert_eq!(month_end, next_month_start(&t2.now), "the month's end");
    let day_end = must(
        &e2,
        "clawmesh_budget_period_end_timestamp_seconds",
        &[("period", "day")],
    );
    let api_now = rfc3339_secs(&t2.now);
    assert_eq!(
        day_end,
        (api_now / 86_400.0).floor() * 86_400.0 + 86_400.0,
        "the day's end"
    );
    exporter.shutdown().await;
}

// ------------------------------------------------------------ OTLP

mod otlp_receiver {
    //! An HTTP/protobuf OTLP receiver that keeps every request.
    use axum::body::Bytes;
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    };
    use prost::Message;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub struct Received(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

    impl Received {
        pub fn all(&self) -> Vec<ExportMetricsServiceRequest> {
            self.0.lock().unwrap().clone()
        }
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    async fn export(
        axum::extract::State(got): axum::extract::State<Received>,
        body: Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let request =
            ExportMetricsServiceRequest::decode(body).expect("a valid OTLP protobuf body");
        got.0.lock().unwrap().push(request);
        (
            axum::http::StatusCode::OK,
            [("content-type", "application/x-protobuf")],
            ExportMetricsServiceResponse::default().encode_to_vec(),
        )
            .into_response()
    }

    /// Serving until the test's runtime ends; the endpoint and what came.
    pub async fn start() -> (String, Received) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Received::default();
        let app = axum::Router::new()
            .route("/v1/metrics", axum::routing::post(export))
            .with_state(got.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), got)
    }
}

/// The newest cumulative value of each `clawmesh.task.spend` point in
/// `requests`, keyed by its attributes under the Prometheus label names.
fn otlp_spend(
    requests: &[opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest],
) -> BTreeMap<Labels, f64> {
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality,
    };
    let mut out: BTreeMap<Labels, (u64, f64)> = BTreeMap::new();
    for r in requests {
        for m in r
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .filter(|m| m.name == "clawmesh.task.spend")
        {
            let Some(Data::Sum(s)) = &m.data else {
                panic!("clawmesh.task.spend is not a Sum: {:?}", m.data)
            };
            assert!(s.is_monotonic, "spend is a counter");
            assert_eq!(
                s.aggregation_temporality,
                AggregationTemporality::Cumulative as i32
            );
            for p in &s.data_points {
                let labels: Labels = p
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => s.clone(),
                            other => panic!("attribute {} is not a string: {other:?}", kv.key),
                        };
                        let k = match kv.key.as_str() {
                            k if k == clawmesh_exporter::otlp::WORKSPACE_ATTRIBUTE => "workspace",
                            "gen_ai.provider.name" => "provider",
                            "gen_ai.request.model" => "model",
                            "gen_ai.token.type" => "kind",
                            k => k,
                        };
                        (k.to_string(), v)
                    })
                    .collect();
                let v = match p.value {
                    Some(number_data_point::Value::AsDouble(d)) => d,
                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                    None => panic!("a spend point without a value"),
                };
                let slot = out.entry(labels).or_insert((0, v));
                if p.time_unix_nano >= slot.0 {
                    *slot = (p.time_unix_nano, v);
                }
            }
        }
    }
    out.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// With an OTLP receiver (HTTP, cumulative): once the exporter has
/// converged, the `clawmesh.task.spend` points of an export made after it
/// carry exactly what /metrics serves, series by series (both are the same
/// exact amounts, turned into a double the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_carries_the_same_spend() {
    let sim = Sim::start(busy_fleet(2107)).await;
    let (endpoint, received) = otlp_receiver::start().await;
    let prices = price_file(&default_prices());
    let extra = [
        "--otlp.endpoint",
        endpoint.as_str(),
        "--otlp.protocol",
        "http/protobuf",
        "--otlp.interval",
        "250ms",
        "--otlp.timeout",
        "2s",
        "--otlp.temporality",
        "cumulative",
    ];
    let exporter = start_exporter(&exporter_config(&sim, &flags(&prices, &extra))).await;
    run_fleet_for(&sim, 150).await;
    let m = converge(&sim, &exporter).await;
    let shown: BTreeMap<Labels, f64> = series(&m, SPEND).into_iter().collect();
    assert!(
        shown.values().any(|v| *v > 0.0),
        "nothing spent: nothing proven"
    );
    // Two more exports: the second was built after the convergence.
    let n = received.len();
    wait_for(
        Duration::from_secs(30),
        "two exports after convergence",
        || async { received.len() >= n + 2 },
    )
    .await;
    let pushed = otlp_spend(&received.all());
    // The fleet is paused: /metrics still shows the same.
    let again: BTreeMap<Labels, f64> = series(&parse(&scrape(exporter.addr).await), SPEND)
        .into_iter()
        .collect();
    assert_eq!(again, shown, "the spend moved while the fleet was paused");
    assert_eq!(
        pushed.keys().collect::<Vec<_>>(),
        shown.keys().collect::<Vec<_>>(),
        "OTLP and /metrics hold different spend series"
    );
    for (k, v) in &shown {
        assert_eq!(pushed[k], *v, "{k:?}: OTLP (left) and /metrics (right)");
    }
    exporter.shutdown().await;
}
