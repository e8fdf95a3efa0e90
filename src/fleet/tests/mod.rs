//! Tests of the fleet, one file per source file they test: `ledger.rs` the
//! exactly-once ledger and agent state of `fleet/mod.rs`, `breakdown.rs`
//! the slices, `saved.rs` checkpoint save and restore. The task and agent
//! builders they share live here.

use super::*;
use crate::api::clock::ApiTime;
use crate::api::types::{TaskError, TaskMetrics, Transitions};

mod breakdown;
mod ledger;
mod saved;
mod spend;

const S: i64 = 1_000_000;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_micros(1_800_000_000 * S + secs * S)
}

fn task(id: &str, status: &str, updated: i64) -> Task {
    let status = TaskStatus::from_name(status);
    let started = !matches!(status, TaskStatus::Pending);
    let done = status.is_terminal();
    Task {
        agent_id: None,
        labels: Vec::new(),
        text_repaired: false,
        id: id.into(),
        status: status.clone(),
        created_at: ts(1),
        updated_at: ts(updated),
        started_at: started.then(|| ts(2)),
        finished_at: done.then(|| ts(updated)),
        metrics: TaskMetrics {
            queue_seconds: started.then_some(1.0),
            run_seconds: done.then_some(3.0),
            input_tokens: done.then_some(10),
            output_tokens: done.then_some(5),
            invalid: false,
        },
        transitions: transitions_for(&status, updated),
        error: (status == TaskStatus::Failed).then(|| TaskError {
            code: Some("timeout".into()),
        }),
    }
}

/// `transitions` as the API would summarise them for a task in `status`
/// last changed at `updated`: pending, then running, then terminal.
fn transitions_for(status: &TaskStatus, updated: i64) -> Transitions {
    let stage = crate::api::types::stage(status);
    Transitions {
        count: stage as u32 + 1,
        running_at: (stage > 0).then(|| ts(2)),
        terminal_at: status.is_terminal().then(|| ts(updated)),
        latest_at: Some(ts(updated)),
    }
}

/// The statuses a reconciliation asked for.
fn asked(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const OPEN: &[&str] = &["pending", "running"];

fn finished(f: &Fleet, status: &str) -> u64 {
    f.counters().finished[status]
}

fn agent(id: &str, status: &str, updated: i64) -> Agent {
    Agent {
        last_heartbeat_at: None,
        labels: Vec::new(),
        text_repaired: false,
        config: Default::default(),
        id: id.into(),
        status: status.into(),
        created_at: ts(0),
        updated_at: ts(updated),
    }
}

/// A fleet on an API clock reading `now` (seconds from the test base).
fn fleet_at(now: i64) -> Fleet {
    let mut f = Fleet::starting(
        ApiTime::host(ts(0)),
        Timestamp::from_micros(0),
        FleetLimits::default(),
    );
    f.set_api_time(ApiTime::host(ts(now)));
    f
}

fn labelled_agent(id: &str, team: &str, provider: &str, heartbeat: Option<i64>) -> Agent {
    Agent {
        last_heartbeat_at: heartbeat.map(ts),
        labels: vec![("team".into(), team.into())],
        text_repaired: false,
        config: crate::api::types::AgentConfig {
            model_provider: Some(provider.into()),
            model: Some(format!("{provider}-m")),
        },
        id: id.into(),
        status: "busy".into(),
        created_at: ts(0),
        updated_at: ts(1),
    }
}

fn on(agent: &str, mut t: Task) -> Task {
    t.agent_id = Some(agent.into());
    t.labels = vec![("priority".into(), "high".into())];
    t
}

fn broken_down(max_values: usize) -> Fleet {
    let cfg = BreakdownConfig {
        provider: true,
        model: true,
        agent_labels: Patterns {
            allow: vec!["team".into()],
            deny: vec![],
        },
        task_labels: Patterns {
            allow: vec!["prio*".into()],
            deny: vec![],
        },
        max_values,
        ..Default::default()
    };
    Fleet::new(ts(0)).with_breakdown(&cfg, &["workspace".into()])
}
