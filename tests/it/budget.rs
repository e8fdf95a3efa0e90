//! The exporter spends at most its share of the workspace's API budget, and
//! never comes back before `Retry-After`.

use crate::util::*;
use clawmesh_exporter::sim::{Faults, SimConfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stays_inside_its_share_of_the_rate_limit_over_a_minute_and_more() {
    // 2,000 agents are 20 pages per listing, every second: far more than a
    // 6 % share of the contract's 1,000 requests per minute (60) would allow.
    let sim = Sim::start(SimConfig {
        agents: 2000,
        history_tasks: 100,
        rate_limit_per_minute: 1000,
        ..busy_fleet(21)
    })
    .await;
    let exporter = start_exporter(&exporter_config(&sim, &["--api.budget-share", "0.06"])).await;
    let spent = |s: &Sim| s.truth().requests_total;
    let start = tokio::time::Instant::now();
    let at_start = spent(&sim);
    tokio::time::sleep(Duration::from_secs(75)).await; // the measurement window itself, not a synchronisation
    let used = spent(&sim) - at_start;
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    // The bucket holds 10 s of budget: 60/min * minutes + 10.
    let allowed = 60.0 * minutes + 10.0;
    assert!(
        (used as f64) <= allowed,
        "spent {used} requests in {minutes:.2} min; budget allows {allowed:.0}"
    );
    assert!(
        (used as f64) >= 0.8 * 60.0 * minutes,
        "the pacing is far too timid: {used} in {minutes:.2} min"
    );
    assert_eq!(
        sim.truth().rate_limited_total,
        0,
        "the exporter ran into the workspace's rate limit"
    );
    let m = parse(&scrape(exporter.addr).await);
    assert!(
        must(&m, "clawmesh_api_budget_wait_seconds_total", &[]) > 10.0,
        "the exporter never waited for its budget"
    );
    assert_eq!(
        must(&m, "clawmesh_api_budget_requests_per_minute", &[]),
        60.0
    );
    assert_eq!(must(&m, "clawmesh_api_rate_limit_limit", &[]), 1000.0);
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_out_retry_after() {
    let sim = Sim::start(busy_fleet(22)).await;
    let exporter = start_exporter(&exporter_config(&sim, &[])).await;
    sim.faults(Faults {
        rate_limit_429: 0.3,
        unavailable_503: 0.1,
        retry_after_secs: 1,
        ..Faults::default()
    });
    wait_for(
        Duration::from_secs(60),
        "twenty answers with Retry-After",
        || async { sim.truth().faults_injected >= 20 },
    )
    .await;
    let t = sim.truth();
    assert_eq!(t.retry_after_violations, 0, "came back before Retry-After");
    let m = parse(&scrape(exporter.addr).await);
    assert!(must(&m, "clawmesh_api_retry_after_wait_seconds_total", &[]) >= 1.0);
    exporter.shutdown().await;
}

/// The requests of `m` to endpoints for which `keep` holds, all codes.
fn requests(m: &std::collections::BTreeMap<String, f64>, keep: impl Fn(&str) -> bool) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("clawmesh_api_requests_total{"))
        .filter(|(k, _)| keep(k))
        .map(|(_, v)| *v)
        .sum()
}

/// Every task names an agent that does not exist (deleted, or never
/// there), a different one each: with breakdowns by agent, each is a
/// `GET /agents/{id}` answered 404. Those lookups once spent 64 % of the
/// default budget; they may spend `--api.lookup-share` (10 %) of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_of_missing_agents_spend_at_most_their_share_of_the_budget() {
    use clawmesh_exporter::sim::Hostile;
    let sim = Sim::start(busy_fleet(24)).await;
    sim.faults(Faults {
        hostile_every: 1,
        hostile: Hostile::MissingAgent,
        ..Faults::default()
    });
    // The default budget (10 % of 1,000 a minute), polled every second:
    // the exporter spends all of it.
    let exporter = start_exporter(&exporter_config(
        &sim,
        &[
            "--api.budget-share",
            "0.1",
            "--breakdown.agent-labels",
            "team",
        ],
    ))
    .await;
    let lookup = |k: &str| k.contains("endpoint=\"/agents/{id}\"");
    wait_for(Duration::from_secs(60), "a first lookup", || async {
        requests(&parse(&scrape(exporter.addr).await), lookup) > 0.0
    })
    .await;
    let m0 = parse(&scrape(exporter.addr).await);
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await; // the measurement window itself, not a synchronisation
    let m1 = parse(&scrape(exporter.addr).await);
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let lookups = requests(&m1, lookup) - requests(&m0, lookup);
    let all = requests(&m1, |_| true) - requests(&m0, |_| true);
    let not_found = must(
        &m1,
        "clawmesh_api_requests_total",
        &[("endpoint", "/agents/{id}"), ("code", "404")],
    );
    assert!(not_found > 0.0, "no lookup of a missing agent");
    // 10 % of 100 a minute, and the lookup bucket's 10 s of it.
    let allowed = 0.1 * 100.0 * minutes + 0.1 * 100.0 / 6.0;
    eprintln!(
        "lookups {lookups} of {all} requests in {minutes:.2} min ({:.1} %), allowed {allowed:.1}",
        100.0 * lookups / all.max(1.0)
    );
    assert!(
        lookups <= allowed,
        "{lookups} lookups of {all} requests in {minutes:.2} min; the share allows {allowed:.1}"
    );
    assert!(
        lookups / all < 0.15,
        "lookups were {:.0} % of the requests",
        100.0 * lookups / all
    );
    // The rest of the budget went to the listings, which kept syncing.
    assert_eq!(must(&m1, "clawmesh_up", &[]), 1.0);
    exporter.shutdown().await;
}
