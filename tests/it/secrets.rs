//! A canary key must never show: not in logs at debug level, not in
//! /metrics, not in error output. The real binary runs as a user would run it.

use crate::util::*;
use chrono::{Duration as CDuration, Utc};
use clawmesh_exporter::sim::{Faults, SimKey};
use std::process::{Command, Stdio};
use std::time::Duration;

const CANARY: &str = "cmk_canary_7b1e0f5d9a";

fn exporter_cmd(sim: &Sim, port: u16) -> Command {
    let mut c = bin();
    c.env("CLAWMESH_API_KEY", CANARY)
        .args([
            "--api-url",
            &sim.url(),
            "--log.level",
            "debug",
            "--poll-interval",
            "1s",
        ])
        .args([
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--api.max-attempts",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn key(scopes: &[&str], expires_in_days: i64) -> SimKey {
    SimKey {
        id: "key_canary".into(),
        secret: CANARY.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: Some(Utc::now() + CDuration::days(expires_in_days)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_never_appears_in_debug_logs_or_metrics() {
    let sim = Sim::start(busy_fleet(31)).await;
    sim.sim
        .add_key(key(&["agents:read", "tasks:read", "tasks:write"], 30));
    // Errors and retries get logged too: make some.
    sim.faults(Faults {
        html_500: 0.1,
        unavailable_503: 0.1,
        truncated_json: 0.05,
        ..Faults::default()
    });
    let port = free_port();
    let child = exporter_cmd(&sim, port).spawn().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_for(Duration::from_secs(60), "the exporter to be ready", || {
        let url = url.clone();
        async move { matches!(reqwest::get(format!("{url}/readyz")).await, Ok(r) if r.status() == 200) }
    })
    .await;
    wait_for(Duration::from_secs(60), "retries to happen", || async {
        sim.truth().faults_injected >= 5
    })
    .await;
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("clawmesh_up{workspace=\"ws_sim\"}"));
    unsafe_kill(&child);
    let out = child.wait_with_output().unwrap();
    let logs =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        logs.contains("level=debug"),
        "debug logging was not on: {logs:.400}"
    );
    assert!(
        logs.contains("write scopes"),
        "no least-privilege warning for tasks:write"
    );
    assert!(!logs.contains(CANARY), "the key leaked into the logs");
    assert!(!metrics.contains(CANARY), "the key leaked into /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_a_scope_is_one_clear_line_and_exit_code_2_without_the_key() {
    let sim = Sim::start(busy_fleet(32)).await;
    sim.sim.add_key(key(&["agents:read"], 30));
    let out = tokio::task::spawn_blocking({
        let mut c = exporter_cmd(&sim, free_port());
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains("lacks scope tasks:read"), "{err}");
    // Said once: not also logged by the slot and by the start.
    let saying = err.lines().filter(|l| l.contains("lacks scope")).count();
    assert_eq!(saying, 1, "the refusal must be one line: {err}");
    assert!(!err.contains(CANARY) && !String::from_utf8_lossy(&out.stdout).contains(CANARY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_unknown_key_fails_clearly_without_the_key() {
    let sim = Sim::start(busy_fleet(33)).await;
    for (scopes, days, needle) in [
        (Some(&["agents:read", "tasks:read"][..]), -1, "expired"),
        (None, 0, "rejected the api key"),
    ] {
        if let Some(s) = scopes {
            sim.sim.add_key(key(s, days));
        }
        let mut c = exporter_cmd(&sim, free_port());
        if scopes.is_none() {
            c.env("CLAWMESH_API_KEY", format!("{CANARY}_unknown"));
        }
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.to_lowercase().contains(needle), "{err}");
        let saying = err
            .lines()
            .filter(|l| l.to_lowercase().contains(needle))
            .count();
        assert_eq!(saying, 1, "the refusal must be one line: {err}");
        assert!(!err.contains(CANARY), "{err}");
    }
}

/// SIGTERM, as Kubernetes or systemd would send.
fn unsafe_kill(child: &std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}
