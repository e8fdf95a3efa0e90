//! attack12: adversarial reproductions against issue 12 (checkpoints).

use crate::util::*;
use clawmesh_exporter::sim::Faults;
use std::time::Duration;

/// After a crash, the counters come back as the last periodic checkpoint
/// had them, which is less than what was served (and pushed) between that
/// checkpoint and the crash, until the first incremental listing of the
/// new process re-counts it. Every scrape in that window sees a counter
/// fall: Prometheus takes it as a reset (`resets()` = 1), and
/// `increase()`/`rate()` then add the whole restored total to the window,
/// the very thing the issue forbids. Here the window is widened by a slow
/// API (each request answers after 1.5 s), but it exists after every
/// crash: from the publish at the start to the end of the first sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack12_after_a_crash_the_counters_never_show_less_than_before_it() {
    let sim = Sim::start(busy_fleet(4242)).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let cfg = exporter_config(
        &sim,
        &[
            "--storage.path",
            storage.to_str().unwrap(),
            "--storage.interval",
            "1h",
        ],
    );
    let exporter = start_exporter(&cfg).await;
    let ws = sim.truth().workspace_id;
    let finished = |m: &std::collections::BTreeMap<String, f64>| {
        ["completed", "failed", "cancelled"]
            .iter()
            .map(|s| {
                value(
                    m,
                    "clawmesh_tasks_finished_total",
                    &[("workspace", ws.as_str()), ("status", s)],
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    // The one checkpoint of the hour: after the first sync.
    wait_for(Duration::from_secs(30), "the first checkpoint", || async {
        let m = parse(&scrape(exporter.addr).await);
        value(
            &m,
            "clawmesh_exporter_checkpoint_last_success_timestamp_seconds",
            &[],
        )
        .is_some()
    })
    .await;
    run_fleet_for(&sim, 150).await;
    let e1 = converge(&sim, &exporter).await;
    let served = finished(&e1);
    exporter.stop_as_if_killed().await;

    // The fleet is paused: nothing finishes meanwhile. A slow API.
    sim.faults(Faults {
        hang: 1.0,
        hang_ms: 1500,
        ..Faults::default()
    });
    let exporter = start_exporter(&cfg).await;
    let mut lowest = f64::INFINITY;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = parse(&scrape(exporter.addr).await);
        if value(
            &m,
            "clawmesh_tasks_finished_total",
            &[("workspace", ws.as_str())],
        )
        .is_some()
        {
            lowest = lowest.min(finished(&m));
        }
        if value(&m, "clawmesh_up", &[("workspace", ws.as_str())]) == Some(1.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not up within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.faults(Faults::default());
    let e2 = converge(&sim, &exporter).await;
    assert!(
        value(
            &e2,
            "clawmesh_exporter_checkpoint_restored_age_seconds",
            &[]
        )
        .is_some(),
        "the counters went on from the checkpoint"
    );
    assert_eq!(finished(&e2), served, "after the first sync: caught up");
    assert!(
        lowest >= served,
        "before the crash /metrics served {served} finished tasks; after the restart it served {lowest} until the first sync: a counter reset for Prometheus"
    );
    exporter.shutdown().await;
}
