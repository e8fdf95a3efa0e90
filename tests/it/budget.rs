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
