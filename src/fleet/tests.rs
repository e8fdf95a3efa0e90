use super::*;
use crate::api::types::{TaskError, TaskMetrics};

const S: i64 = 1_000_000;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_micros(1_800_000_000 * S + secs * S)
}

fn task(id: &str, status: &str, updated: i64) -> Task {
    let status = TaskStatus::from_name(status);
    let started = !matches!(status, TaskStatus::Pending);
    let done = status.is_terminal();
    Task {
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
        },
        terminal_at: None,
        error: (status == TaskStatus::Failed).then(|| TaskError {
            code: Some("timeout".into()),
        }),
    }
}

fn finished(f: &Fleet, status: &str) -> u64 {
    f.counters().finished[status]
}

#[test]
fn each_terminal_transition_counts_once_through_duplicates_and_late_moves() {
    let mut f = Fleet::new(ts(0));
    assert_eq!(f.apply_task(&task("a", "pending", 1)), Applied::Updated);
    assert_eq!(f.apply_task(&task("a", "running", 2)), Applied::Updated);
    assert_eq!(f.apply_task(&task("a", "completed", 5)), Applied::Finished);
    // The same copy again (overlap window), and a later copy with outputs attached.
    assert_eq!(f.apply_task(&task("a", "completed", 5)), Applied::Unchanged);
    let mut late = task("a", "completed", 9);
    late.finished_at = Some(ts(5));
    assert_eq!(f.apply_task(&late), Applied::Unchanged);
    assert_eq!(finished(&f, "completed"), 1);
    assert_eq!(f.counters().queue_seconds.count(), 1);
    assert_eq!(f.counters().run_seconds.count(), 1);
    assert_eq!(f.counters().input_tokens, 10);
    assert_eq!(f.open_len(), 0);
}

#[test]
fn a_task_created_and_finished_between_polls_counts_with_its_queue_time() {
    let mut f = Fleet::new(ts(0));
    assert_eq!(f.apply_task(&task("b", "failed", 4)), Applied::Finished);
    assert_eq!(finished(&f, "failed"), 1);
    assert_eq!(f.counters().failures["timeout"], 1);
    assert_eq!(f.counters().queue_seconds.count(), 1);
}

#[test]
fn an_older_copy_never_moves_a_task_backwards() {
    let mut f = Fleet::new(ts(0));
    f.apply_task(&task("c", "running", 3));
    assert_eq!(f.apply_task(&task("c", "pending", 1)), Applied::Unchanged);
    assert_eq!(f.open_tasks()["running"], 1);
    assert_eq!(f.open_tasks()["pending"], 0);
    f.apply_task(&task("c", "cancelled", 4));
    assert_eq!(f.apply_task(&task("c", "running", 3)), Applied::Unchanged);
    assert_eq!(f.open_tasks()["running"], 0);
    // Queue time was observed when it started, not again at the end.
    assert_eq!(f.counters().queue_seconds.count(), 1);
}

#[test]
fn transitions_before_the_floor_are_not_counted() {
    let mut f = Fleet::new(ts(10));
    assert_eq!(
        f.apply_task(&task("d", "completed", 9)),
        Applied::BeforeFloor
    );
    assert_eq!(finished(&f, "completed"), 0);
    // Started before the floor: its queue time belongs to before, too.
    f.apply_task(&task("e", "running", 9));
    assert_eq!(f.counters().queue_seconds.count(), 0);
}

#[test]
fn the_ledger_is_pruned_and_a_pruned_task_is_never_counted_again() {
    let mut f = Fleet::new(ts(0));
    for i in 0..1000 {
        f.apply_task(&task(&format!("t{i}"), "completed", 1 + i));
    }
    assert_eq!(f.ledger_len(), 1000);
    f.raise_floor(ts(900));
    assert_eq!(f.ledger_len(), 100);
    // An output attached late to t5 moves its updated_at: still counted once.
    let mut late = task("t5", "completed", 2000);
    late.finished_at = Some(ts(6));
    assert_eq!(f.apply_task(&late), Applied::BeforeFloor);
    assert_eq!(finished(&f, "completed"), 1000);
    // The floor never goes down.
    f.raise_floor(ts(5));
    assert_eq!(f.floor(), ts(900));
}

#[test]
fn retain_open_forgets_vanished_tasks_but_keeps_recent_ones() {
    let mut f = Fleet::new(ts(0));
    f.apply_task(&task("old", "pending", 1));
    f.apply_task(&task("recent", "pending", 99));
    f.apply_task(&task("listed", "running", 2));
    let seen = ["listed".to_string()].into_iter().collect();
    f.retain_open(&seen, ts(100), Duration::from_secs(5));
    assert_eq!(f.open_len(), 2);
    assert_eq!(f.open_tasks()["pending"], 1);
    assert_eq!(f.oldest_pending_created_at(), Some(ts(1)));
}

#[test]
fn unknown_agent_statuses_are_kept_by_name_up_to_a_bound() {
    let mut f = Fleet::new(ts(0));
    assert!(f.agents().is_none());
    let agent = |status: String| Agent {
        id: status.clone(),
        status,
        created_at: ts(0),
        updated_at: ts(0),
    };
    let mut agents: Vec<Agent> = (0..25)
        .map(|i| agent(format!("new_status_{i:02}")))
        .collect();
    agents.push(agent("idle".into()));
    f.apply_agent_listing(&agents);
    let counts = f.agents().unwrap();
    assert_eq!(counts["idle"], 1);
    assert_eq!(counts["offline"], 0);
    assert_eq!(counts["new_status_00"], 1);
    assert_eq!(counts["other"], 5);
    assert_eq!(counts.len(), 6 + MAX_UNKNOWN_NAMES + 1);
}

#[test]
fn a_started_task_dropped_by_reconciliation_then_seen_finished_observes_its_queue_time_once() {
    let mut f = Fleet::new(ts(0));
    f.apply_task(&task("r", "running", 3));
    assert_eq!(f.counters().queue_seconds.count(), 1);
    // It finished; the reconciliation listing of open tasks no longer shows it.
    f.retain_open(&Default::default(), ts(100), Duration::from_secs(5));
    assert_eq!(f.open_len(), 0);
    assert_eq!(f.apply_task(&task("r", "completed", 50)), Applied::Finished);
    assert_eq!(
        f.counters().queue_seconds.count(),
        1,
        "queue time observed twice"
    );
    assert_eq!(f.counters().run_seconds.count(), 1);
    // And the memory of it goes with the floor.
    f.apply_task(&task("s", "running", 4));
    f.retain_open(&Default::default(), ts(100), Duration::from_secs(5));
    f.raise_floor(ts(10));
    assert_eq!(f.apply_task(&task("s", "completed", 60)), Applied::Finished);
    assert_eq!(
        f.counters().queue_seconds.count(),
        2,
        "started before the floor: not observed at finish"
    );
}

fn agent(id: &str, status: &str, updated: i64) -> Agent {
    Agent {
        id: id.into(),
        status: status.into(),
        created_at: ts(0),
        updated_at: ts(updated),
    }
}

fn agents_in(f: &Fleet, status: &str) -> u64 {
    f.agents().unwrap()[status]
}

#[test]
fn agent_events_apply_by_updated_at_and_a_listing_never_moves_them_back() {
    let mut f = Fleet::new(ts(0));
    f.apply_agent_listing_at(
        &[
            agent("a", "idle", 10),
            agent("b", "idle", 10),
            agent("c", "busy", 10),
        ],
        ts(20),
        Duration::from_secs(5),
    );
    assert_eq!((agents_in(&f, "idle"), agents_in(&f, "busy")), (2, 1));
    // Events: a newer status, an older one (ignored), a creation, a deletion.
    f.apply_agent_event(&agent("a", "error", 30), false);
    f.apply_agent_event(&agent("a", "busy", 25), false);
    f.apply_agent_event(&agent("d", "provisioning", 31), false);
    f.apply_agent_event(&agent("c", "busy", 32), true);
    f.apply_agent_event(&agent("c", "busy", 31), false);
    assert_eq!(agents_in(&f, "error"), 1);
    assert_eq!(agents_in(&f, "idle"), 1);
    assert_eq!(agents_in(&f, "busy"), 0);
    assert_eq!(agents_in(&f, "provisioning"), 1);
    // A listing that began before those events became visible: older copies
    // of a and c, no d yet. Nothing moves backwards.
    f.apply_agent_listing_at(
        &[
            agent("a", "idle", 10),
            agent("b", "idle", 10),
            agent("c", "busy", 10),
        ],
        ts(33),
        Duration::from_secs(5),
    );
    assert_eq!(agents_in(&f, "error"), 1);
    assert_eq!(agents_in(&f, "idle"), 1);
    assert_eq!(agents_in(&f, "busy"), 0);
    assert_eq!(agents_in(&f, "provisioning"), 1);
    // A listing long after: it is the truth (d was deleted meanwhile, its
    // event lost; c's deletion is visible).
    f.apply_agent_listing_at(
        &[agent("a", "error", 30), agent("b", "paused", 40)],
        ts(100),
        Duration::from_secs(5),
    );
    assert_eq!(agents_in(&f, "error"), 1);
    assert_eq!(agents_in(&f, "paused"), 1);
    assert_eq!(agents_in(&f, "idle") + agents_in(&f, "provisioning"), 0);
    assert_eq!(f.agents().unwrap().values().sum::<u64>(), 2);
}

#[test]
fn a_task_in_an_unknown_status_is_reconciled_like_the_others() {
    let mut f = Fleet::new(ts(0));
    f.apply_task(&task("x", "awaiting_review", 2));
    assert_eq!(
        f.open_statuses(),
        vec!["awaiting_review", "pending", "running"]
    );
    assert_eq!(f.open_tasks()["awaiting_review"], 1);
    // A reconciliation that asked for that status did not list it: gone.
    f.retain_open(&Default::default(), ts(100), Duration::from_secs(5));
    assert_eq!(f.open_len(), 0);
}

#[test]
fn without_finished_at_the_terminal_transition_dates_the_finish_not_updated_at() {
    let mut f = Fleet::new(ts(0));
    let mut t = task("n", "completed", 10);
    t.finished_at = None;
    t.terminal_at = Some(ts(10));
    assert_eq!(f.apply_task(&t), Applied::Finished);
    f.raise_floor(ts(20));
    assert_eq!(f.ledger_len(), 0);
    // Outputs attached much later move updated_at past the floor: the
    // finish is still at 10, before the floor, and is not counted again.
    t.updated_at = ts(500);
    assert_eq!(f.apply_task(&t), Applied::BeforeFloor);
    assert_eq!(f.counters().finished["completed"], 1);
}

#[test]
fn metrics_that_become_known_after_the_finish_count_once_when_they_arrive() {
    let mut f = Fleet::new(ts(0));
    let mut t = task("m", "completed", 10);
    t.metrics.run_seconds = None;
    t.metrics.output_tokens = None;
    assert_eq!(f.apply_task(&t), Applied::Finished);
    assert_eq!(f.counters().run_seconds.count(), 0);
    assert_eq!(
        (f.counters().input_tokens, f.counters().output_tokens),
        (10, 0)
    );
    // Later copies carry them: counted once, the input tokens not again.
    t.updated_at = ts(20);
    t.metrics.run_seconds = Some(3.0);
    t.metrics.output_tokens = Some(5);
    assert_eq!(f.apply_task(&t), Applied::Unchanged);
    assert_eq!(f.apply_task(&t), Applied::Unchanged);
    assert_eq!(f.counters().run_seconds.count(), 1);
    assert_eq!(
        (f.counters().input_tokens, f.counters().output_tokens),
        (10, 5)
    );
    assert_eq!(f.counters().finished["completed"], 1);
}
