//! Never blind: a workspace that is not syncing shows it from the first
//! scrape (clawmesh_up 0, /readyz 503), and a panic in a loop is caught,
//! counted, shown, and costs no count.

use crate::util::*;
use clawmesh_exporter::sim::{Faults, SimConfig};
use std::time::Duration;

async fn readyz(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_shows_down_and_not_ready_from_the_first_scrape() {
    let sim = Sim::start(busy_fleet(71)).await;
    let mut cfg = exporter_config(&sim, &[]);
    // Nothing listens there (the port was free a moment ago).
    cfg.workspaces[0].client.base_url = format!("http://127.0.0.1:{}/v1", free_port());
    let exporter = start_exporter(&cfg).await;

    // The first scrape, before any answer could come back.
    let m = parse(&scrape(exporter.addr).await);
    assert_eq!(
        value(&m, "clawmesh_up", &[]),
        Some(0.0),
        "clawmesh_up must exist and be 0 before the first sync"
    );
    assert_eq!(readyz(exporter.addr).await, 503);

    // The key check's failures show as requests, and it stays down.
    wait_for(
        Duration::from_secs(60),
        "the failed key checks to show",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(
                &m,
                "clawmesh_api_requests_total",
                &[("endpoint", "/auth/token"), ("code", "connection_error")],
            )
            .is_some_and(|n| n >= 2.0)
        },
    )
    .await;
    let m = parse(&scrape(exporter.addr).await);
    assert_eq!(must(&m, "clawmesh_up", &[("workspace", "")]), 0.0);
    assert_eq!(
        must(&m, "clawmesh_sync_failures_total", &[("resource", "tasks")]),
        0.0
    );
    assert!(
        value(&m, "clawmesh_last_sync_timestamp_seconds", &[]).is_none(),
        "nothing was synced, so no sync time may show"
    );
    assert_eq!(
        readyz(exporter.addr).await,
        503,
        "never ready without a sync"
    );
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_at_start_shows_down_until_the_api_answers_then_the_workspace_takes_over() {
    let sim = Sim::start(busy_fleet(72)).await;
    sim.faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let exporter = start_exporter(&exporter_config(&sim, &[])).await;
    let m = parse(&scrape(exporter.addr).await);
    assert_eq!(must(&m, "clawmesh_up", &[("workspace", "")]), 0.0);
    assert_eq!(readyz(exporter.addr).await, 503);
    wait_for(
        Duration::from_secs(60),
        "the outage to show in the key check's requests",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(
                &m,
                "clawmesh_api_requests_total",
                &[("endpoint", "/auth/token"), ("code", "503")],
            )
            .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    assert_eq!(readyz(exporter.addr).await, 503);

    sim.faults(Faults::default());
    let ws = sim.truth().workspace_id;
    wait_for(
        Duration::from_secs(60),
        "the workspace to sync and be ready",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(&m, "clawmesh_up", &[("workspace", &ws)]) == Some(1.0)
                && readyz(exporter.addr).await == 200
        },
    )
    .await;
    let m = parse(&scrape(exporter.addr).await);
    assert!(
        value(&m, "clawmesh_up", &[("workspace", "")]).is_none(),
        "the pending series must go once the workspace publishes under its id: {m:?}"
    );
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_the_poll_loops_are_caught_counted_shown_and_cost_no_count() {
    let sim = Sim::start(SimConfig {
        workspace_id: "ws_panics".into(),
        ..busy_fleet(73)
    })
    .await;
    let exporter = start_exporter(&exporter_config(&sim, &[])).await;
    run_fleet_for(&sim, 50).await;
    let_the_late_values_of_the_start_pass(&sim, &exporter).await;
    let e1 = converge(&sim, &exporter).await;
    let t1 = sim.truth();
    for task in ["poll_agents", "poll_tasks"] {
        assert_eq!(
            must(
                &e1,
                "clawmesh_exporter_task_restarts_total",
                &[("task", task)]
            ),
            0.0
        );
    }
    let failures = |m: &std::collections::BTreeMap<String, f64>, r: &str| {
        must(m, "clawmesh_sync_failures_total", &[("resource", r)])
    };

    // The tasks loop panics mid-listing twice (its lock held), the agents
    // loop once, while the fleet goes on.
    clawmesh_exporter::supervise::inject_panics("ws_panics", "poll_tasks", 3);
    clawmesh_exporter::supervise::inject_panics("ws_panics", "poll_agents", 1);
    sim.sim.resume();
    // Three panics in a row pause the loop 1 s, 2 s, then 4 s: down all along.
    wait_for(
        Duration::from_secs(60),
        "clawmesh_up 0 after a panic",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(&m, "clawmesh_up", &[("workspace", "ws_panics")]) == Some(0.0)
        },
    )
    .await;
    wait_for(
        Duration::from_secs(60),
        "the panics to be caught and counted",
        || async {
            let m = parse(&scrape(exporter.addr).await);
            value(
                &m,
                "clawmesh_exporter_task_restarts_total",
                &[("task", "poll_tasks")],
            ) == Some(3.0)
                && value(
                    &m,
                    "clawmesh_exporter_task_restarts_total",
                    &[("task", "poll_agents")],
                ) == Some(1.0)
        },
    )
    .await;
    let m = parse(&scrape(exporter.addr).await);
    assert!(failures(&m, "tasks") >= failures(&e1, "tasks") + 3.0);
    assert!(failures(&m, "agents") >= failures(&e1, "agents") + 1.0);

    // The loops go on: up again, and every count exact through the panics.
    run_fleet_for(&sim, 200).await;
    let e2 = converge(&sim, &exporter).await;
    let t2 = sim.truth();
    assert_eq!(must(&e2, "clawmesh_up", &[("workspace", "ws_panics")]), 1.0);
    assert_gauges_match(&e2, &t2);
    assert_deltas_match((&e1, &t1), (&e2, &t2), 10.0);
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_the_key_checks_run_does_not_kill_the_process() {
    use std::process::{Command, Stdio};
    let port = free_port();
    let api = format!("http://127.0.0.1:{}/v1", free_port());
    let mut child = bin()
        .env("CLAWMESH_API_KEY", "cm_test_key")
        .args([
            "--api-url",
            &api,
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
        ])
        // Many slow attempts: the first key check outlasts the signal.
        .args(["--api.max-attempts", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    // The server answers before the key checks end.
    wait_for(Duration::from_secs(30), "the server to answer", || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let pid = child.id().to_string();
    let kill = |sig: &str| {
        Command::new("kill").args([sig, &pid]).status().unwrap();
    };
    kill("-HUP");
    // Still serving, and still down (the API is unreachable).
    wait_for(
        Duration::from_secs(30),
        "clawmesh_up 0 after the SIGHUP",
        || async {
            let Ok(r) = reqwest::get(format!("{base}/metrics")).await else {
                return false;
            };
            let m = parse(&r.text().await.unwrap_or_default());
            value(&m, "clawmesh_up", &[]) == Some(0.0)
        },
    )
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the SIGHUP killed the exporter"
    );
    kill("-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}
