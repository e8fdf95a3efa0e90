//! Checkpoints that cannot be used or written, through a real exporter and
//! the simulator: a damaged file is refused with its reason counted and the
//! exporter starts fresh and stays up (never a crash loop); a place it
//! cannot write counts every failed write and keeps polling; and the next
//! start resumes from what the fresh start wrote.

use crate::util::*;
use clawmesh_exporter::sim::Faults;
use clawmesh_exporter::storage::StorageConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn temp_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "cmx-it-ckpt-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn file_of(storage: &Path, workspace: &str) -> PathBuf {
    StorageConfig {
        dir: storage.to_path_buf(),
        interval: Duration::from_secs(1),
        max_size: StorageConfig::DEFAULT_MAX_SIZE,
    }
    .path_of(workspace, (0, 1))
}

async fn metric_once(addr: std::net::SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    wait_for(Duration::from_secs(30), name, || async {
        value(&parse(&scrape(addr).await), name, labels).is_some()
    })
    .await;
    value(&parse(&scrape(addr).await), name, labels).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_is_refused_counted_and_replaced_and_the_next_start_resumes() {
    let sim = Sim::start(busy_fleet(31)).await;
    let ws = sim.truth().workspace_id;
    let storage = temp_dir("damaged");
    let flags = [
        "--storage.path",
        storage.to_str().unwrap(),
        "--storage.interval",
        "1s",
    ];
    // A first start writes a real checkpoint; the process then stops.
    let exporter = start_exporter(&exporter_config(&sim, &flags)).await;
    run_fleet_for(&sim, 40).await;
    metric_once(
        exporter.addr,
        "clawmesh_exporter_checkpoint_last_success_timestamp_seconds",
        &[],
    )
    .await;
    exporter.shutdown().await;
    let good = std::fs::read(file_of(&storage, &ws)).unwrap();
    for (damage, reason) in [
        (good[..good.len() / 2].to_vec(), "corrupt"),
        (b"not a checkpoint at all".to_vec(), "corrupt"),
        (
            {
                let mut b = good.clone();
                b[8] ^= 0x7f; // the version
                b
            },
            "version",
        ),
        // Checksummed but impossible: a watermark a year ahead of the
        // API's clock would keep every change from being read until then.
        (
            {
                use clawmesh_exporter::storage::{decode, encode};
                let mut c = decode(&good, u64::MAX).unwrap();
                c.watermark += 365 * 86_400 * 1_000_000;
                encode(&c, u64::MAX).unwrap()
            },
            "corrupt",
        ),
    ] {
        std::fs::write(file_of(&storage, &ws), &damage).unwrap();
        let exporter = start_exporter(&exporter_config(&sim, &flags)).await;
        let refused = metric_once(
            exporter.addr,
            "clawmesh_exporter_checkpoint_refused_total",
            &[("reason", reason)],
        )
        .await;
        assert_eq!(refused, 1.0, "{reason}");
        // Kept aside as it was, not overwritten by the fresh start's writes.
        let aside = clawmesh_exporter::storage::aside_path(&file_of(&storage, &ws));
        assert_eq!(
            std::fs::read(&aside).ok(),
            Some(damage.clone()),
            "the refused file is kept as {aside:?}"
        );
        let m = parse(&scrape(exporter.addr).await);
        assert!(value(&m, "clawmesh_exporter_checkpoint_restored_age_seconds", &[]).is_none());
        // Fresh, and up: it polls and counts, and writes a new checkpoint.
        // (Moved aside: any file there now is a new checkpoint, unless the
        // fresh start wrote one already.)
        let before = std::fs::read(file_of(&storage, &ws)).ok();
        wait_for(
            Duration::from_secs(60),
            "up, counting (a finished task served, so in the stop's checkpoint), and a new checkpoint written",
            || async {
                let m = parse(&scrape(exporter.addr).await);
                value(&m, "clawmesh_up", &[]) == Some(1.0)
                    && value(&m, "clawmesh_tasks_finished_total", &[("status", "completed")])
                        .is_some_and(|n| n > 0.0)
                    && std::fs::read(file_of(&storage, &ws)).is_ok_and(|b| Some(&b) != before.as_ref())
            },
        )
        .await;
        exporter.shutdown().await;
    }
    // What the last fresh start wrote is resumed from.
    let e1 = {
        let exporter = start_exporter(&exporter_config(&sim, &flags)).await;
        let age = metric_once(
            exporter.addr,
            "clawmesh_exporter_checkpoint_restored_age_seconds",
            &[],
        )
        .await;
        assert!(age >= 0.0);
        let m = parse(&scrape(exporter.addr).await);
        assert_eq!(
            must(
                &m,
                "clawmesh_exporter_checkpoint_refused_total",
                &[("reason", "corrupt")]
            ),
            0.0
        );
        exporter.shutdown().await;
        m
    };
    assert!(
        must(
            &e1,
            "clawmesh_tasks_finished_total",
            &[("status", "completed")]
        ) > 0.0,
        "the counters went on"
    );
    let _ = std::fs::remove_dir_all(&storage);
}

/// A checkpoint that cannot be written (here: a directory where the file
/// goes, which also cannot be read) is counted per failed write, with the
/// log line once per power of two; polling and counting go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_written_is_counted_and_polling_goes_on() {
    let sim = Sim::start(busy_fleet(32)).await;
    let ws = sim.truth().workspace_id;
    let storage = temp_dir("unwritable");
    std::fs::create_dir_all(file_of(&storage, &ws).join("in-the-way")).unwrap();
    let flags = [
        "--storage.path",
        storage.to_str().unwrap(),
        "--storage.interval",
        "1s",
    ];
    let exporter = start_exporter(&exporter_config(&sim, &flags)).await;
    let refused = metric_once(
        exporter.addr,
        "clawmesh_exporter_checkpoint_refused_total",
        &[("reason", "unreadable")],
    )
    .await;
    assert_eq!(refused, 1.0);
    wait_for(
        Duration::from_secs(60),
        "three failed writes while polling goes on",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(
                &m,
                "clawmesh_exporter_checkpoint_write_failures_total",
                &[("reason", "io")],
            )
            .is_some_and(|n| n >= 3.0)
                && value(&m, "clawmesh_up", &[]) == Some(1.0)
        },
    )
    .await;
    let m = parse(&scrape(exporter.addr).await);
    assert!(value(
        &m,
        "clawmesh_exporter_checkpoint_last_success_timestamp_seconds",
        &[]
    )
    .is_none());
    exporter.shutdown().await;
    let _ = std::fs::remove_dir_all(&storage);
}

/// With storage the counters served are those of the last checkpoint
/// written, so a crash (here a minute's interval: one checkpoint early on,
/// then none before the crash) loses nothing that was served: after the restart no scrape
/// shows a counter lower than before the crash (Prometheus would take it
/// for a reset and `increase()` would add the whole total), even while a
/// slow API (every answer 1.5 s late) holds the first sync back; and once
/// synced, the counters are the truth's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_counters_never_show_less_than_before_it() {
    let sim = Sim::start(busy_fleet(4242)).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let flags = |interval: &'static str| {
        exporter_config(
            &sim,
            &[
                "--storage.path",
                storage.to_str().unwrap(),
                "--storage.interval",
                interval,
            ],
        )
    };
    let exporter = start_exporter(&flags("1m")).await;
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
    // The most the process ever served, up to the crash.
    let mut served = 0.0f64;
    for _ in 0..20 {
        served = served.max(finished(&parse(&scrape(exporter.addr).await)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exporter.stop_as_if_killed().await;
    sim.sim.pause();

    sim.faults(Faults {
        hang: 1.0,
        hang_ms: 1500,
        ..Faults::default()
    });
    let exporter = start_exporter(&flags("1s")).await;
    let mut lowest = f64::INFINITY;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = parse(&scrape(exporter.addr).await);
        lowest = lowest.min(finished(&m));
        if value(&m, "clawmesh_up", &[("workspace", ws.as_str())]) == Some(1.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not up within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lowest >= served,
        "before the crash /metrics served {served} finished tasks; after the restart it served {lowest}: a counter reset for Prometheus"
    );
    sim.faults(Faults::default());
    let e2 = converge(&sim, &exporter).await;
    let t = sim.truth();
    let since_start: f64 = e2
        .iter()
        .filter(|(k, _)| k.starts_with("clawmesh_tasks_finished_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(since_start >= served, "{since_start} < {served}");
    assert!(
        value(
            &e2,
            "clawmesh_exporter_checkpoint_restored_age_seconds",
            &[]
        )
        .is_some(),
        "the counters went on from the checkpoint"
    );
    assert!(t.finished_total.values().sum::<u64>() as f64 >= since_start);
    exporter.shutdown().await;
}

/// A stop long enough that the changes meanwhile do not fit one listing
/// (`--api.max-pages`): each cut-short listing still moves the watermark
/// as far as its pages went, so the backlog is read over several and every
/// task counts once; without that, the listing would fail at the cap
/// forever and the restored counters never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_longer_than_one_listing_is_read_over_several_and_counts_exactly() {
    let sim = Sim::start(busy_fleet(33)).await;
    let storage = temp_dir("backlog");
    let flags = [
        "--storage.path",
        storage.to_str().unwrap(),
        "--storage.interval",
        "1s",
        "--api.max-pages",
        "6",
    ];
    let exporter = start_exporter(&exporter_config(&sim, &flags)).await;
    run_fleet_for(&sim, 60).await;
    let e1 = converge(&sim, &exporter).await;
    let t1 = sim.truth();
    exporter.shutdown().await;
    // Down: far more changes than 6 pages of 100.
    let changes = |t: &clawmesh_exporter::sim::GroundTruth| t.finished_total.values().sum::<u64>();
    run_fleet_for(&sim, 700).await;
    sim.sim.pause();
    assert!(changes(&sim.truth()) - changes(&t1) >= 700);
    let exporter = start_exporter(&exporter_config(&sim, &flags)).await;
    let e2 = converge(&sim, &exporter).await;
    let t2 = sim.truth();
    let want = delta(&counters_of_truth(&t2), &counters_of_truth(&t1));
    let got = delta(&counters_of_exporter(&e2), &counters_of_exporter(&e1));
    assert_eq!(
        got, want,
        "exporter deltas (left) differ from the ground truth (right)"
    );
    assert!(
        must(
            &e2,
            "clawmesh_sync_failures_total",
            &[("resource", "tasks")]
        ) >= 1.0,
        "the backlog fit one listing: the test proves nothing"
    );
    exporter.shutdown().await;
    let _ = std::fs::remove_dir_all(&storage);
}
