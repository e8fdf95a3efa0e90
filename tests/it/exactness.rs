//! The numbers must be right: every gauge and every counter delta equals the
//! simulator's ground truth, exactly, on a clean run, under every fault, across
//! a restart, and with the visibility lag at the contract's maximum.

use crate::util::*;
use clawmesh_exporter::sim::{Faults, SimConfig};
use std::time::Duration;

/// Two quiet points with a busy stretch between: the exporter's deltas must
/// equal the ground truth's, and its gauges the truth at each point.
async fn assert_exact(sim: &Sim, cfg_extra: &[&str], finished: u64) {
    let exporter = start_exporter(&exporter_config(sim, cfg_extra)).await;
    run_fleet_for(sim, finished / 4).await;
    let_the_late_values_of_the_start_pass(sim, &exporter).await;
    let e1 = converge(sim, &exporter).await;
    let t1 = sim.truth();
    assert_gauges_match(&e1, &t1);

    run_fleet_for(sim, finished).await;
    let e2 = converge(sim, &exporter).await;
    let t2 = sim.truth();
    assert_gauges_match(&e2, &t2);

    assert_deltas_match((&e1, &t1), (&e2, &t2), 10.0);
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_run_counts_exactly() {
    let sim = Sim::start(busy_fleet(11)).await;
    assert_exact(&sim, &[], 300).await;
}

/// Every fault the simulator injects into answers, at once.
fn every_fault() -> Faults {
    Faults {
        html_500: 0.04,
        empty_502: 0.04,
        unavailable_503: 0.04,
        rate_limit_429: 0.04,
        truncated_json: 0.04,
        cursor_expired: 0.1,
        hang: 0.02,
        hang_ms: 1500,
        retry_after_secs: 1,
        latency_ms: 2,
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_switched_on_still_counts_exactly() {
    let sim = Sim::start(busy_fleet(12)).await;
    sim.faults(every_fault());
    assert_exact(&sim, &["--api.timeout", "1s"], 300).await;
    let t = sim.truth();
    assert!(
        t.faults_injected >= 10,
        "faults were not exercised: {}",
        t.faults_injected
    );
    assert_eq!(
        t.retry_after_violations, 0,
        "the exporter came back before Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_lag_at_the_contract_maximum_counts_exactly() {
    let sim = Sim::start(SimConfig {
        visibility_lag_max: Duration::from_secs(5),
        ..busy_fleet(13)
    })
    .await;
    assert_exact(&sim, &[], 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_counters_start_from_zero_and_gauges_are_right_after_one_sync() {
    let sim = Sim::start(busy_fleet(14)).await;
    let first = start_exporter(&exporter_config(&sim, &[])).await;
    run_fleet_for(&sim, 100).await;
    let before = converge(&sim, &first).await;
    assert!(
        must(
            &before,
            "clawmesh_tasks_finished_total",
            &[("status", "completed")]
        ) > 0.0
    );
    first.shutdown().await;

    // The fleet is paused: the new process must show the same gauges after
    // its first sync, and counters at zero.
    let t0 = sim.truth();
    let second = start_exporter(&exporter_config(&sim, &[])).await;
    let after = converge(&sim, &second).await;
    assert_gauges_match(&after, &t0);
    assert!(
        delta(&counters_of_exporter(&after), &Default::default()).is_empty(),
        "counters restart from zero"
    );
    let_the_start_pass(&sim, &second).await;

    run_fleet_for(&sim, 200).await;
    let e2 = converge(&sim, &second).await;
    let t2 = sim.truth();
    assert_gauges_match(&e2, &t2);
    assert_eq!(
        delta(&counters_of_exporter(&e2), &Default::default()),
        delta(&counters_of_truth(&t2), &counters_of_truth(&t0))
    );
    second.shutdown().await;
}

/// Everything the contract allows at once (whole-second stamps, the API's
/// clock off the host's, late metrics and failure codes, deletions keeping
/// updated_at, unknown task statuses, the lag always at its maximum, and
/// listings slowed mid-way), with the clock behind and ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contracts_latitude_still_counts_exactly() {
    for (seed, offset_ms) in [(21, -45_000), (22, 45_000)] {
        let sim = Sim::start(latitude_fleet(seed, offset_ms)).await;
        sim.faults(Faults {
            page_retry_after: 0.05,
            retry_after_secs: 1,
            ..Faults::default()
        });
        assert_exact(&sim, &[], 300).await;
        assert_eq!(sim.truth().retry_after_violations, 0);
    }
}

/// The skew case: the API's clock 15 s behind ours, changes visible up to
/// the contract's 5 s late, and listings stalled mid-way by a `Retry-After`
/// longer than the overlap. A change that became visible late behind the
/// cursor of a stalled listing is re-read only if the watermark stays at
/// the listing's start: capped by the host's clock (15 s ahead) it does
/// not, and the change is lost for good; capped by the API's clock, every
/// one is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clock_behind_and_a_retry_after_mid_listing_lose_nothing() {
    let sim = Sim::start(SimConfig {
        latitude: clawmesh_exporter::sim::Latitude {
            clock_offset_ms: -15_000,
            ..Default::default()
        },
        visibility_lag_max: Duration::from_secs(5),
        ..busy_fleet(23)
    })
    .await;
    sim.faults(Faults {
        tail_page_retry_after: 0.6,
        retry_after_secs: 12,
        ..Faults::default()
    });
    assert_exact(
        &sim,
        &["--tasks.overlap", "10s", "--api.max-attempts", "10"],
        300,
    )
    .await;
    let t = sim.truth();
    assert!(t.faults_injected >= 1, "no listing was stalled");
    assert_eq!(t.retry_after_violations, 0);
}

// ---- checkpoints ----

/// [`assert_exact`] with checkpoints on and the exporter killed (no last
/// checkpoint, as `kill -9`) `crashes` times at moments drawn from `seed`
/// during the busy stretch, each time started again on the same storage
/// while the fleet moves on: the deltas over the whole stretch still equal
/// the truth's.
async fn assert_exact_through_crashes(sim: &Sim, faults: Faults, crashes: usize, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let storage =
        std::env::temp_dir().join(format!("cmx-it-exact-crash-{seed}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&storage);
    let flags = [
        "--storage.path",
        storage.to_str().unwrap(),
        "--storage.interval",
        "1s",
        "--api.timeout",
        "1s",
    ];
    sim.faults(faults.clone());
    let mut exporter = start_exporter(&exporter_config(sim, &flags)).await;
    run_fleet_for(sim, 60).await;
    let_the_late_values_of_the_start_pass(sim, &exporter).await;
    let e1 = converge(sim, &exporter).await;
    let t1 = sim.truth();
    assert_gauges_match(&e1, &t1);
    for crash in 0..crashes {
        run_fleet_for(sim, rng.random_range(20..120)).await;
        // A new client cannot know a Retry-After its predecessor was told.
        sim.faults(Faults::default());
        let_a_retry_after_run_out(sim, faults.retry_after_secs).await;
        exporter.stop_as_if_killed().await;
        run_fleet_for(sim, rng.random_range(20..120)).await;
        exporter = start_exporter(&exporter_config(sim, &flags)).await;
        sim.faults(faults.clone());
        let m = parse(&scrape(exporter.addr).await);
        assert!(
            value(&m, "clawmesh_exporter_checkpoint_restored_age_seconds", &[]).is_some(),
            "crash {crash}: the counters did not go on from the checkpoint"
        );
    }
    run_fleet_for(sim, 100).await;
    let e2 = converge(sim, &exporter).await;
    let t2 = sim.truth();
    assert_gauges_match(&e2, &t2);
    let want = delta(&counters_of_truth(&t2), &counters_of_truth(&t1));
    let got = delta(&counters_of_exporter(&e2), &counters_of_exporter(&e1));
    assert_eq!(
        got, want,
        "through {crashes} crashes (seed {seed}): exporter deltas (left) differ from the ground truth (right)"
    );
    exporter.shutdown().await;
    assert_eq!(sim.truth().retry_after_violations, 0);
    let _ = std::fs::remove_dir_all(&storage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checkpoints_crashes_at_random_moments_count_exactly_under_every_fault() {
    let sim = Sim::start(busy_fleet(14)).await;
    let faults = every_fault();
    assert_exact_through_crashes(&sim, faults, 2, 14).await;
    assert!(sim.truth().faults_injected >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checkpoints_crashes_count_exactly_under_the_contracts_latitude() {
    let sim = Sim::start(latitude_fleet(24, -45_000)).await;
    let faults = Faults {
        page_retry_after: 0.05,
        retry_after_secs: 1,
        ..Faults::default()
    };
    assert_exact_through_crashes(&sim, faults, 2, 24).await;
}
