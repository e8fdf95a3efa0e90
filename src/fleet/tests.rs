use super::*;
use crate::api::clock::ApiTime;
use crate::api::types::{TaskError, TaskMetrics, Transitions};

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
    f.retain_open(&seen, &asked(OPEN), ts(100), Duration::from_secs(5));
    assert_eq!(f.open_len(), 2);
    assert_eq!(f.open_tasks()["pending"], 1);
    assert_eq!(f.oldest_pending_created_at(), Some(ts(1)));
}

#[test]
fn unknown_agent_statuses_are_kept_by_name_up_to_a_bound() {
    let mut f = Fleet::new(ts(0));
    assert!(f.agents().is_none());
    let agent = |status: String| Agent {
        last_heartbeat_at: None,
        labels: Vec::new(),
        text_repaired: false,
        config: Default::default(),
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
    f.retain_open(
        &Default::default(),
        &asked(OPEN),
        ts(100),
        Duration::from_secs(5),
    );
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
    f.retain_open(
        &Default::default(),
        &asked(OPEN),
        ts(100),
        Duration::from_secs(5),
    );
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
    // d is new: created when its event says (too recent for a listing).
    let mut d = agent("d", "provisioning", 31);
    d.created_at = ts(31);
    f.apply_agent_event(&d, false);
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
        (
            vec!["pending".to_string(), "running".to_string()],
            vec!["awaiting_review".to_string()]
        )
    );
    assert_eq!(f.open_tasks()["awaiting_review"], 1);
    // A reconciliation that did not ask for it keeps it.
    f.retain_open(
        &Default::default(),
        &asked(OPEN),
        ts(100),
        Duration::from_secs(5),
    );
    assert_eq!(f.open_len(), 1);
    // One that asked for that status and did not list it: gone.
    f.retain_open(
        &Default::default(),
        &asked(&["pending", "running", "awaiting_review"]),
        ts(100),
        Duration::from_secs(5),
    );
    assert_eq!(f.open_len(), 0);
}

#[test]
fn without_finished_at_the_terminal_transition_dates_the_finish_not_updated_at() {
    let mut f = Fleet::new(ts(0));
    let mut t = task("n", "completed", 10);
    t.finished_at = None;
    t.transitions.terminal_at = Some(ts(10));
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

// ---- Exact under everything the contract allows (issue 9) ----

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

#[test]
fn an_agent_missing_from_a_listing_is_gone_even_if_it_changed_just_before() {
    // Seen busy in one listing, then (task finished, agent deleted) absent
    // from the next, which started within the lag of that last change:
    // deleted, not kept with its old status.
    let agent = |id: &str, status: &str, created: i64, at: i64| Agent {
        last_heartbeat_at: None,
        labels: Vec::new(),
        text_repaired: false,
        config: Default::default(),
        id: id.into(),
        status: status.into(),
        created_at: ts(created),
        updated_at: ts(at),
    };
    let lag = Duration::from_secs(6);
    let mut f = Fleet::new(ts(0));
    f.apply_agent_listing_at(
        &[agent("a", "busy", 1, 99), agent("b", "idle", 1, 50)],
        ts(100),
        lag,
    );
    f.apply_agent_listing_at(&[agent("b", "idle", 1, 50)], ts(101), lag);
    assert_eq!(f.agents().unwrap()["busy"], 0);
    assert_eq!(f.agents().unwrap().values().sum::<u64>(), 1);
    // One a webhook told of, created too recently to be listed, stays.
    f.apply_agent_event(&agent("c", "provisioning", 100, 100), false);
    f.apply_agent_listing_at(&[agent("b", "idle", 1, 50)], ts(102), lag);
    assert_eq!(f.agents().unwrap()["provisioning"], 1);
}

#[test]
fn equal_updated_at_never_moves_a_task_backwards() {
    // Pending then running within one whole second: both say updated_at 5.
    for (first, second) in [("pending", "running"), ("running", "pending")] {
        let mut f = Fleet::new(ts(0));
        f.apply_task(&task("t", first, 5));
        f.apply_task(&task("t", second, 5));
        assert_eq!(f.open_tasks()["running"], 1, "{first} then {second}");
        assert_eq!(f.open_tasks()["pending"], 0, "{first} then {second}");
        assert_eq!(f.counters().queue_seconds.count(), 1);
    }
    // A later stage wins even over a later updated_at of an earlier one.
    let mut f = Fleet::new(ts(0));
    f.apply_task(&task("u", "running", 5));
    assert_eq!(f.apply_task(&task("u", "pending", 6)), Applied::Unchanged);
    assert_eq!(f.open_tasks()["running"], 1);
    // More transitions win at equal updated_at and stage: running, then an
    // unknown status, then running again, all in one second.
    let mut f = Fleet::new(ts(0));
    let mut r1 = task("v", "running", 5);
    r1.transitions.count = 2;
    let mut paused = task("v", "awaiting_input", 5);
    paused.transitions.count = 3;
    let mut r2 = task("v", "running", 5);
    r2.transitions.count = 4;
    for t in [&r1, &r2, &paused, &r1] {
        f.apply_task(t);
    }
    assert_eq!(f.open_tasks()["running"], 1);
    assert_eq!(
        f.open_tasks().get("awaiting_input").copied().unwrap_or(0),
        0
    );
}

#[test]
fn agent_events_at_the_listed_updated_at_apply_and_deletions_are_never_lost() {
    let agent = |id: &str, status: &str, at: i64| Agent {
        last_heartbeat_at: None,
        labels: Vec::new(),
        text_repaired: false,
        config: Default::default(),
        id: id.into(),
        status: status.into(),
        created_at: ts(0),
        updated_at: ts(at),
    };
    let mut f = Fleet::new(ts(0));
    f.apply_agent_listing_at(
        &[agent("a", "idle", 10), agent("b", "idle", 10)],
        ts(100),
        Duration::from_secs(5),
    );
    // An event with the listed updated_at is news: it applies.
    f.apply_agent_event(&agent("a", "busy", 10), false);
    assert_eq!(f.agents().unwrap()["busy"], 1);
    // A deletion carrying the agent's last updated_at is not lost...
    f.apply_agent_event(&agent("b", "idle", 10), true);
    assert_eq!(f.agents().unwrap()["idle"], 0);
    // ...and a listing read before it (same updated_at) does not bring it back.
    f.apply_agent_listing_at(
        &[agent("a", "busy", 10), agent("b", "idle", 10)],
        ts(101),
        Duration::from_secs(5),
    );
    assert_eq!(f.agents().unwrap().values().sum::<u64>(), 1);
    // The other way round: a listed copy replaces an event copy of the same
    // updated_at (the listing was read later; the next one repairs a guess).
    f.apply_agent_event(&agent("a", "paused", 12), false);
    f.apply_agent_listing_at(&[agent("a", "error", 12)], ts(102), Duration::from_secs(5));
    assert_eq!(f.agents().unwrap()["error"], 1);
    assert_eq!(f.agents().unwrap()["paused"], 0);
}

#[test]
fn the_counting_floor_at_start_is_the_api_time_not_the_host_time() {
    // The host reads 100 s, the API 85 s (15 s behind). A task that
    // finished at API time 90, after the start, counts; one at 80 does not.
    let api = ApiTime {
        earliest: ts(85),
        latest: ts(86),
        host: ts(100),
        answers: 2,
    };
    let mut f = Fleet::starting(api, ts(100), FleetLimits::default());
    assert_eq!(f.floor(), ts(86));
    assert_eq!(
        f.apply_task(&task("after", "completed", 90)),
        Applied::Finished
    );
    assert_eq!(
        f.apply_task(&task("before", "completed", 80)),
        Applied::BeforeFloor
    );
}

#[test]
fn a_queue_time_null_when_first_seen_running_counts_once_when_known() {
    let mut f = Fleet::new(ts(0));
    let mut r = task("q", "running", 3);
    r.metrics.queue_seconds = None;
    f.apply_task(&r);
    assert_eq!(f.counters().queue_seconds.count(), 0);
    // The value arrives on a later copy (or one of the same updated_at).
    r.metrics.queue_seconds = Some(1.5);
    f.apply_task(&r);
    f.apply_task(&r);
    assert_eq!(f.counters().queue_seconds.count(), 1);
    assert_eq!(f.counters().queue_seconds.sum(), 1.5);
    f.apply_task(&task("q", "completed", 9));
    assert_eq!(
        f.counters().queue_seconds.count(),
        1,
        "not again at the finish"
    );
    // Created and finished between two polls, queue still null: it counts
    // when a later copy of the finished task carries it.
    let mut c = task("c", "completed", 9);
    c.metrics.queue_seconds = None;
    f.apply_task(&c);
    c.metrics.queue_seconds = Some(2.0);
    c.updated_at = ts(12);
    f.apply_task(&c);
    assert_eq!(f.counters().queue_seconds.count(), 2);
}

#[test]
fn a_failure_code_filled_late_counts_once_under_its_code() {
    let mut f = fleet_at(10);
    let mut t = task("x", "failed", 8);
    t.error = Some(TaskError { code: None });
    f.apply_task(&t);
    assert_eq!(finished(&f, "failed"), 1);
    assert_eq!(f.counters().failures.values().sum::<u64>(), 0, "not yet");
    t.error = Some(TaskError {
        code: Some("model_error".into()),
    });
    f.apply_task(&t);
    f.apply_task(&t);
    assert_eq!(f.counters().failures["model_error"], 1);
    assert_eq!(f.counters().failures.values().sum::<u64>(), 1);
    // A failure whose code stays null: unknown, once, after the grace.
    let mut n = task("n", "failed", 9);
    n.error = None;
    f.apply_task(&n);
    f.settle();
    assert_eq!(f.counters().failures["unknown"], 0, "within the grace");
    f.set_api_time(ApiTime::host(ts(9 + 301)));
    f.settle();
    f.settle();
    assert_eq!(f.counters().failures["unknown"], 1);
    // The code arriving after that does not move it.
    n.error = Some(TaskError {
        code: Some("timeout".into()),
    });
    f.apply_task(&n);
    assert_eq!(f.counters().failures["timeout"], 0);
    // And one forgotten by the floor before the grace ends counts unknown too.
    let mut g = task("g", "failed", 400);
    g.error = None;
    f.apply_task(&g);
    f.raise_floor(ts(500));
    assert_eq!(f.counters().failures["unknown"], 2);
    assert_eq!(
        f.counters().failures.values().sum::<u64>(),
        finished(&f, "failed")
    );
}

#[test]
fn the_contract_failure_codes_are_present_at_zero_from_the_start() {
    let f = Fleet::new(ts(0));
    for code in [
        "timeout",
        "model_error",
        "skill_error",
        "invalid_input",
        "internal",
        "unknown",
    ] {
        assert_eq!(f.counters().failures.get(code), Some(&0), "{code}");
    }
}

#[test]
fn a_terminal_like_unknown_status_stops_counting_as_open_after_its_limit() {
    let mut f = fleet_at(10);
    f.apply_task(&task("e", "expired", 5));
    assert_eq!(f.open_tasks()["expired"], 1);
    f.set_api_time(ApiTime::host(ts(5 + 3601)));
    f.settle();
    assert_eq!(f.open_len(), 0, "memory is bounded by the limit");
    assert!(!f.open_tasks().contains_key("expired") || f.open_tasks()["expired"] == 0);
    // The reconciliation showing the old task again does not bring it back.
    assert_eq!(f.apply_task(&task("e", "expired", 5)), Applied::Unchanged);
    assert_eq!(f.open_len(), 0);
    // A task first seen in it long after its last change never enters.
    f.apply_task(&task("old", "expired", 1));
    assert_eq!(f.open_len(), 0);
    // If it moves on (a new copy, further along), it counts again.
    let mut done = task("e", "completed", 3700);
    done.finished_at = Some(ts(3700));
    assert_eq!(f.apply_task(&done), Applied::Finished);
}

#[test]
fn unknown_statuses_are_bounded_in_names_and_length() {
    let mut f = Fleet::new(ts(0));
    for i in 0..30 {
        f.apply_task(&task(&format!("t{i}"), &format!("status_{i:02}"), 5));
    }
    f.apply_task(&task("long", &"z".repeat(1 << 20), 5));
    let open = f.open_tasks();
    assert_eq!(open.len(), 2 + MAX_UNKNOWN_NAMES + 1, "{:?}", open.keys());
    assert_eq!(open["other"], 11);
    let (_, unknown) = f.open_statuses();
    assert_eq!(unknown.len(), MAX_UNKNOWN_NAMES);
    assert!(unknown.iter().all(|n| n.len() <= 128 && n != "other"));
}

#[test]
fn timestamps_far_in_the_future_are_refused_and_counted() {
    let mut f = fleet_at(100);
    let mut t = task("f", "running", 100);
    t.updated_at = Timestamp::parse("9999-12-31T23:59:59Z").unwrap();
    assert_eq!(f.apply_task(&t), Applied::Rejected);
    assert_eq!(f.open_len(), 0);
    assert_eq!(f.counters().rejected[&("tasks", "future_timestamp")], 1);
    // The honest copies go on as usual.
    assert_eq!(f.apply_task(&task("f", "running", 100)), Applied::Updated);
    let mut done = task("f", "completed", 101);
    done.finished_at = Some(Timestamp::parse("9999-01-01T00:00:00Z").unwrap());
    assert_eq!(f.apply_task(&done), Applied::Rejected);
    assert_eq!(
        f.apply_task(&task("f", "completed", 102)),
        Applied::Finished
    );
    // Within the allowed lead (5 m): applied.
    assert_eq!(
        f.apply_task(&task("g", "pending", 100 + 299)),
        Applied::Updated
    );
    // Agents: a future copy does not pin the agent.
    let agent = |status: &str, at: &str| Agent {
        last_heartbeat_at: None,
        labels: Vec::new(),
        text_repaired: false,
        config: Default::default(),
        id: "a".into(),
        status: status.into(),
        created_at: ts(0),
        updated_at: Timestamp::parse(at).unwrap(),
    };
    let now = ts(100);
    f.apply_agent_listing_at(
        &[agent("idle", "9999-12-31T00:00:00Z")],
        now,
        Duration::ZERO,
    );
    assert_eq!(f.agents().unwrap().values().sum::<u64>(), 0);
    f.apply_agent_event(&agent("error", "9999-12-31T00:00:00Z"), false);
    f.apply_agent_listing_at(
        &[agent("busy", &format!("{:?}", ts(99)))],
        now,
        Duration::ZERO,
    );
    assert_eq!(f.agents().unwrap()["busy"], 1);
    assert_eq!(f.counters().rejected[&("agents", "future_timestamp")], 2);
}

#[test]
fn token_counts_near_the_limit_saturate_instead_of_wrapping() {
    let mut f = Fleet::new(ts(0));
    for i in 0..3 {
        let mut t = task(&format!("t{i}"), "completed", 5 + i);
        t.metrics.input_tokens = Some(u64::MAX / 2 + 1);
        f.apply_task(&t);
    }
    assert_eq!(f.counters().input_tokens, u64::MAX);
}

#[test]
fn absurd_durations_neither_panic_nor_land_in_a_histogram_wrongly() {
    let mut f = Fleet::new(ts(0));
    for (i, v) in [1e308, 1e-310, 0.0, f64::MIN_POSITIVE]
        .into_iter()
        .enumerate()
    {
        let mut t = task(&format!("t{i}"), "completed", 5);
        t.metrics.run_seconds = Some(v);
        f.apply_task(&t);
    }
    // 1e308 s is refused (no sum may overflow); the rest, subnormal
    // included, is observed without a panic.
    assert_eq!(f.counters().run_seconds.count(), 3);
    assert_eq!(f.counters().run_seconds.exponential().count(), 3);
    assert_eq!(f.counters().rejected[&("tasks", "invalid_number")], 1);
    let mut h = crate::histogram::Histogram::new(TASK_DURATION_BUCKETS);
    h.observe(1e308);
    h.observe(1e-310);
    assert_eq!(h.exponential().count(), 2);
}

// ---- Adversarial review (branch attack) ----

#[test]
fn attack_a_stale_running_copy_after_the_failure_does_not_settle_its_code() {
    // The task fails with its code still null (late failure codes); then a
    // webhook retry of its `task.started` event arrives (delivery order is
    // not guaranteed). That running copy must not count as a terminal one.
    let mut f = fleet_at(10);
    let mut failed = task("x", "failed", 8);
    failed.error = Some(TaskError { code: None });
    assert_eq!(f.apply_task(&failed), Applied::Finished);
    let stale = task("x", "running", 3);
    assert_eq!(f.apply_task(&stale), Applied::Unchanged);
    // The code arrives on a later copy: it counts under its code.
    failed.error = Some(TaskError {
        code: Some("timeout".into()),
    });
    failed.updated_at = ts(12);
    f.apply_task(&failed);
    assert_eq!(
        f.counters().failures.values().sum::<u64>(),
        finished(&f, "failed"),
        "every failure counted by code: {:?}",
        f.counters().failures
    );
    assert_eq!(f.counters().failures["timeout"], 1);
}

#[test]
fn attack_a_stale_running_copy_after_the_finish_does_not_count_partial_usage() {
    // Usage is "null until known": a running copy may carry the tokens used
    // so far. The finished copy still has them null (late metrics); a stale
    // running copy arriving after it must not count its partial value in
    // place of the final one.
    let mut f = fleet_at(10);
    let mut done = task("y", "completed", 8);
    done.metrics.input_tokens = None;
    done.metrics.run_seconds = None;
    f.apply_task(&done);
    let mut stale = task("y", "running", 3);
    stale.metrics.input_tokens = Some(400);
    stale.metrics.run_seconds = Some(0.5);
    f.apply_task(&stale);
    done.metrics.input_tokens = Some(1000);
    done.metrics.run_seconds = Some(6.0);
    done.updated_at = ts(12);
    f.apply_task(&done);
    assert_eq!(f.counters().input_tokens, 1000);
    assert_eq!(f.counters().run_seconds.sum(), 6.0);
}

#[test]
fn attack_an_unknown_status_before_pending_does_not_hide_the_task_from_pending() {
    // New statuses may be added anywhere in the lifecycle: a task created
    // `scheduled` that becomes `pending` (its transitions grow 1 -> 2) is
    // pending, and counts in the pending gauge and the oldest-pending age.
    let mut f = fleet_at(10);
    let mut sched = task("s", "scheduled", 3);
    sched.started_at = None;
    sched.metrics.queue_seconds = None;
    sched.transitions = Transitions {
        count: 1,
        running_at: None,
        terminal_at: None,
        latest_at: Some(ts(3)),
    };
    f.apply_task(&sched);
    let mut pending = task("s", "pending", 5);
    pending.transitions.count = 2;
    assert_eq!(f.apply_task(&pending), Applied::Updated);
    assert_eq!(f.open_tasks()["pending"], 1);
    assert!(f.oldest_pending_created_at().is_some());
}

#[test]
fn attack_a_deletion_keeping_its_old_updated_at_outlives_one_listing() {
    // deletion-keeps-updated-at: the deletion carries the agent's last
    // updated_at (10), long before now (100). A listing that started before
    // the deletion was visible (started within the lag of it) still shows the
    // agent: the deletion must beat that copy too, not only the first one.
    let agent = |id: &str, at: i64| Agent {
        last_heartbeat_at: None,
        labels: Vec::new(),
        text_repaired: false,
        config: Default::default(),
        id: id.into(),
        status: "idle".into(),
        created_at: ts(0),
        updated_at: ts(at),
    };
    let lag = Duration::from_secs(10);
    let mut f = fleet_at(100);
    f.apply_agent_listing_at(&[agent("a", 10)], ts(90), lag);
    // The deletion happens at API time 100; its event comes at once.
    f.apply_agent_event(&agent("a", 10), true);
    // A listing started at 98 (before the deletion) ends now.
    f.apply_agent_listing_at(&[agent("a", 10)], ts(98), lag);
    assert_eq!(f.agents().unwrap().values().sum::<u64>(), 0);
    // The next one started at 102, within the lag of the deletion: it may
    // still show the agent.
    f.set_api_time(ApiTime::host(ts(103)));
    f.apply_agent_listing_at(&[agent("a", 10)], ts(102), lag);
    assert_eq!(
        f.agents().unwrap().values().sum::<u64>(),
        0,
        "the deleted agent came back"
    );
}

#[test]
fn attack_finite_durations_do_not_overflow_the_histogram_sum() {
    // Each value is a finite, non-negative number of seconds, as the
    // contract's `number` allows; the sum must not become +Inf for good.
    let mut f = Fleet::new(ts(0));
    for i in 0..2 {
        let mut t = task(&format!("t{i}"), "completed", 5);
        t.metrics.run_seconds = Some(1e308);
        f.apply_task(&t);
    }
    assert!(
        f.counters().run_seconds.sum().is_finite(),
        "sum {}",
        f.counters().run_seconds.sum()
    );
}

#[test]
fn attack_timestamp_arithmetic_saturates_for_huge_durations() {
    let t = Timestamp::from_micros(0);
    assert_eq!(t.saturating_add(Duration::MAX).micros(), i64::MAX);
    assert!(t.saturating_sub(Duration::MAX).micros() <= i64::MIN + 1);
    // 300000 years (a "never refuse" --api.max-timestamp-lead) is more
    // microseconds than an i64 holds: it must not wrap into the past.
    let lead = humantime::parse_duration("300000y").unwrap();
    let now = ts(0);
    assert!(now.saturating_add(lead) > now);
    let mut f = Fleet::starting(
        ApiTime::host(ts(0)),
        Timestamp::from_micros(0),
        FleetLimits {
            max_timestamp_lead: lead,
            ..FleetLimits::default()
        },
    );
    f.set_api_time(ApiTime::host(ts(10)));
    assert_eq!(f.apply_task(&task("p", "pending", 5)), Applied::Updated);
}

/// An HTTP `Date` for API instant `t`.
fn http_date(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_micros(t.micros())
        .unwrap()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

#[test]
fn attack_the_floor_at_start_is_fixed_by_an_answer_without_a_date() {
    use crate::api::clock::ApiClock;
    // As poll::spawn does: the floor is the API's time after the key check.
    // The API's clock is 45 s behind the host's; the key check's answer
    // carried no Date (the contract promises none; a proxy may drop it).
    let clock = ApiClock::default();
    let host_start = ts(1000);
    clock.observe(None, ts(999), host_start);
    let mut f = Fleet::starting(clock.at(host_start), host_start, FleetLimits::default());
    // Every later answer carries the API's Date.
    clock.observe(Some(&http_date(ts(1010 - 45))), ts(1010), ts(1010));
    f.set_api_time(clock.at(ts(1011)));
    // The API's clock read 955 at the start: a task that finished at 965,
    // ten seconds after the start, is a transition to count.
    assert_eq!(
        f.apply_task(&task("t", "completed", 965)),
        Applied::Finished,
        "floor {:?}",
        f.floor()
    );
}

#[test]
fn attack_one_lying_date_at_start_counts_the_whole_history() {
    use crate::api::clock::ApiClock;
    // The key check's answer carries a Date a day behind (a proxy answering
    // with its own clock, a cached answer); every later one the true time.
    let clock = ApiClock::default();
    let host_start = ts(100_000);
    clock.observe(
        Some(&http_date(ts(100_000 - 86_400))),
        ts(99_999),
        host_start,
    );
    let mut f = Fleet::starting(clock.at(host_start), host_start, FleetLimits::default());
    // Two answers that agree are needed to overrule the first (one answer
    // alone may be the liar).
    clock.observe(Some(&http_date(ts(100_010))), ts(100_010), ts(100_010));
    clock.observe(Some(&http_date(ts(100_011))), ts(100_011), ts(100_011));
    f.set_api_time(clock.at(ts(100_011)));
    // Finished an hour before the exporter started: not a transition of
    // this process's counters.
    assert_eq!(
        f.apply_task(&task("old", "completed", 100_000 - 3600)),
        Applied::BeforeFloor,
        "floor {:?}",
        f.floor()
    );
}

// ---- Adversarial review, round 2 (branch attack2) ----

#[test]
fn attack2_a_provisional_floor_never_falls_below_what_the_ledger_forgot() {
    // The key check saw one Date (later answers carry none, or never agree):
    // the clock stays unconfirmed, so the floor "follows the clock" on every
    // set_api_time, long after raise_floor pruned the ledger past it.
    let api = ApiTime {
        earliest: ts(99_999),
        latest: ts(100_000),
        host: ts(100_000),
        answers: 1,
    };
    let mut f = Fleet::starting(api, ts(100_000), FleetLimits::default());
    assert_eq!(
        f.apply_task(&task("t", "completed", 100_100)),
        Applied::Finished
    );
    assert_eq!(finished(&f, "completed"), 1);
    // Two hours on, one sync in poll's order: raise_floor(forget_before),
    // then set_api_time with the (still unconfirmed) clock.
    let later = ApiTime {
        earliest: ts(107_199),
        latest: ts(107_200),
        host: ts(107_200),
        answers: 1,
    };
    f.raise_floor(ts(107_200 - 3600));
    f.set_api_time(later);
    assert!(
        f.floor() >= ts(107_200 - 3600),
        "the floor fell back below the pruned ledger: {:?}",
        f.floor()
    );
    // A late copy of the pruned task (outputs attached late move updated_at).
    let mut late = task("t", "completed", 100_100);
    late.updated_at = ts(107_190);
    f.apply_task(&late);
    assert_eq!(finished(&f, "completed"), 1, "one task counted twice");
}

// ---- breakdowns (issue 11) ----

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

/// Sums every task group's counters.
fn summed(s: &Snapshot) -> (u64, u64, u64, u64) {
    s.task_groups.iter().fold((0, 0, 0, 0), |a, g| {
        (
            a.0 + g.counters.finished.values().sum::<u64>(),
            a.1 + g.counters.failures.values().sum::<u64>(),
            a.2 + g.counters.input_tokens,
            a.3 + g.counters.run_seconds.count(),
        )
    })
}

#[test]
fn breakdowns_split_every_count_and_sum_to_the_total() {
    let mut f = broken_down(50);
    f.apply_agent_listing(&[
        labelled_agent("a1", "search", "anthropic", Some(1)),
        labelled_agent("a2", "billing", "openai", Some(1)),
    ]);
    f.apply_task(&on("a1", task("t1", "running", 3)));
    f.apply_task(&on("a1", task("t1", "completed", 5)));
    f.apply_task(&on("a2", task("t2", "failed", 6)));
    // A duplicate and a pending task without an agent.
    f.apply_task(&on("a2", task("t2", "failed", 6)));
    f.apply_task(&task("t3", "cancelled", 7));
    // A task of an agent never seen counts without agent values.
    f.apply_task(&on("a9", task("t4", "completed", 8)));
    let s = f.snapshot("ws", ts(10), Health::default(), Default::default());
    assert_eq!(s.dims, ["provider", "model", "team", "task_priority"]);
    let total = &s.counters;
    let (fin, fail, input, runs) = summed(&s);
    assert_eq!(fin, total.finished.values().sum::<u64>());
    assert_eq!(fin, 4);
    assert_eq!(fail, total.failures.values().sum::<u64>());
    assert_eq!(input, total.input_tokens);
    assert_eq!(runs, total.run_seconds.count());
    let group = |by: &[&str]| {
        s.task_groups
            .iter()
            .find(|g| g.by == by)
            .unwrap_or_else(|| {
                panic!(
                    "no group {by:?} in {:?}",
                    s.task_groups.iter().map(|g| &g.by).collect::<Vec<_>>()
                )
            })
    };
    let a1 = group(&["anthropic", "anthropic-m", "search", "high"]);
    assert_eq!(a1.counters.finished["completed"], 1);
    assert_eq!(a1.counters.queue_seconds.count(), 1);
    let a2 = group(&["openai", "openai-m", "billing", "high"]);
    assert_eq!(a2.counters.finished["failed"], 1);
    assert_eq!(a2.counters.failures["timeout"], 1);
    let none = group(&["", "", "", ""]);
    assert_eq!(none.counters.finished["cancelled"], 1);
    assert_eq!(
        group(&["", "", "", "high"]).counters.finished["completed"],
        1
    );
    // Agents by their values; the family renders every group.
    assert_eq!(s.agent_groups.len(), 2);
    assert!(s.agent_groups.iter().all(|g| g.statuses["busy"] == 1));
}

#[test]
fn a_late_failure_code_counts_in_the_slice_of_its_failure() {
    let mut f = broken_down(50);
    f.apply_agent_listing(&[labelled_agent("a1", "search", "anthropic", None)]);
    let mut t = on("a1", task("t1", "failed", 5));
    t.error = Some(TaskError { code: None });
    f.apply_task(&t);
    // The agent goes before the code is given up on.
    f.apply_agent_listing_at(&[], ts(20), Duration::from_secs(5));
    f.raise_floor(ts(6));
    let s = f.snapshot("ws", ts(30), Health::default(), Default::default());
    let g = s
        .task_groups
        .iter()
        .find(|g| g.by[0] == "anthropic")
        .expect("the slice of the agent");
    assert_eq!(g.counters.failures[UNKNOWN_CODE], 1);
    assert_eq!(s.counters.failures[UNKNOWN_CODE], 1);
}

#[test]
fn values_past_the_cap_count_as_other_and_agents_gone_keep_their_values() {
    let mut f = broken_down(2);
    let agents: Vec<Agent> = ["t1", "t2", "t3", "t4"]
        .iter()
        .enumerate()
        .map(|(i, team)| labelled_agent(&format!("a{i}"), team, "p", Some(1)))
        .collect();
    f.apply_agent_listing(&agents);
    let s = f.snapshot("ws", ts(10), Health::default(), Default::default());
    let teams: BTreeSet<&str> = s.agent_groups.iter().map(|g| g.by[2].as_str()).collect();
    assert_eq!(teams, ["other", "t1", "t2"].into_iter().collect());
    let team = s
        .breakdown
        .as_ref()
        .unwrap()
        .values
        .iter()
        .find(|(d, _)| d == "team")
        .unwrap()
        .1;
    assert_eq!(team, 2);
    // a0 is deleted while its task runs: the task still counts as team t1.
    f.apply_task(&on("a0", task("x", "running", 3)));
    f.apply_agent_listing_at(&agents[1..], ts(20), Duration::from_secs(5));
    f.apply_task(&on("a0", task("x", "completed", 21)));
    let s = f.snapshot("ws", ts(30), Health::default(), Default::default());
    let g = s
        .task_groups
        .iter()
        .find(|g| g.counters.finished["completed"] == 1)
        .unwrap();
    assert_eq!(g.by[2], "t1");
}

#[test]
fn silent_heartbeats_are_judged_as_of_the_listing() {
    let mut f = broken_down(50);
    let mut quiet = labelled_agent("a1", "search", "p", Some(100));
    quiet.status = "idle".into();
    let fresh = labelled_agent("a2", "search", "p", Some(170));
    let mut never = labelled_agent("a3", "ops", "p", None);
    never.updated_at = ts(150);
    let mut paused = labelled_agent("a4", "ops", "p", Some(0));
    paused.status = "paused".into();
    f.apply_agent_listing_at(
        &[quiet, fresh, never, paused],
        ts(200),
        Duration::from_secs(5),
    );
    let s = f.snapshot("ws", ts(10_000), Health::default(), Default::default());
    let silent = |team: &str, status: &str| {
        s.agent_groups
            .iter()
            .filter(|g| g.by[2] == team)
            .map(|g| g.silent[status])
            .sum::<u64>()
    };
    // 100 s without a heartbeat at the listing (200): silent; 30 s: not;
    // never heartbeated but busy only since 150: not yet; paused: never.
    assert_eq!(silent("search", "idle"), 1);
    assert_eq!(silent("search", "busy"), 0);
    assert_eq!(silent("ops", "busy"), 0);
    assert_eq!(
        s.agent_groups
            .iter()
            .map(|g| g.silent.values().sum::<u64>())
            .sum::<u64>(),
        1
    );
}

// ---- adversarial review of the breakdowns (issue 11) ----

fn team_fleet(max_values: usize, max_slices: usize) -> Fleet {
    let cfg = BreakdownConfig {
        agent_labels: Patterns {
            allow: vec!["*".into()],
            deny: vec![],
        },
        task_labels: Patterns {
            allow: vec!["*".into()],
            deny: vec![],
        },
        max_values,
        max_slices,
        ..Default::default()
    };
    Fleet::new(ts(0)).with_breakdown(&cfg, &["workspace".into()])
}

fn with_labels(id: &str, labels: &[(&str, &str)]) -> Agent {
    let mut a = agent(id, "idle", 1);
    a.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    a
}

/// Renders the snapshot and fails on a series (name and label set) that
/// appears twice, which makes Prometheus reject the whole scrape.
fn assert_no_duplicate_series(s: &Snapshot) -> String {
    let text = crate::expose::render(&Default::default(), std::slice::from_ref(s));
    let mut seen = HashSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        assert!(
            seen.insert(series.to_string()),
            "duplicate series {series}\n{text}"
        );
    }
    text
}

#[test]
fn attack_agent_combinations_are_bounded_like_task_slices() {
    // Every agent its own combination of two labels: the agent families'
    // series must follow --breakdown.max-combinations, not the fleet size.
    let mut f = team_fleet(1000, 10);
    let agents: Vec<Agent> = (0..200)
        .map(|i| {
            with_labels(
                &format!("a{i}"),
                &[("team", &format!("t{i}")), ("env", &format!("e{i}"))],
            )
        })
        .collect();
    f.apply_agent_listing(&agents);
    let s = f.snapshot("ws", ts(10), Health::default(), Default::default());
    assert!(
        s.agent_groups.len() <= 10,
        "{} agent groups past a cap of 10 combinations",
        s.agent_groups.len()
    );
    // Every agent still counted exactly once.
    let total: u64 = s.agent_groups.iter().map(|g| g.statuses["idle"]).sum();
    assert_eq!(total, 200);
    assert_no_duplicate_series(&s);
}

#[test]
fn attack_no_agents_with_breakdowns_still_renders_the_zeros() {
    // Without breakdowns an empty fleet renders clawmesh_agents 0 per
    // status; with them it must too (alerts on == 0 need a series).
    let mut f = team_fleet(50, 100);
    f.apply_agent_listing(&[]);
    let s = f.snapshot("ws", ts(10), Health::default(), Default::default());
    let text = assert_no_duplicate_series(&s);
    assert!(
        text.contains(r#"clawmesh_agents{workspace="ws",status="idle"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"clawmesh_agents_active{workspace="ws"} 0"#),
        "{text}"
    );
}

#[test]
fn attack_label_keys_that_sanitise_to_an_underscore_never_take_a_reserved_name() {
    // "-", "." and "é" all sanitise to "_": the second and third must not
    // become "__2", "__3" (names starting "__" are Prometheus' own).
    let mut f = team_fleet(50, 100);
    f.apply_agent_listing(&[with_labels("a", &[("-", "x"), (".", "y"), ("é", "z")])]);
    let s = f.snapshot("ws", ts(10), Health::default(), Default::default());
    assert_eq!(s.dims.len(), 3, "{:?}", s.dims);
    for d in &s.dims {
        assert!(!d.starts_with("__"), "{:?}", s.dims);
    }
    assert_no_duplicate_series(&s);
}

#[test]
fn attack_no_duplicate_series_when_dimensions_come_later_and_values_overflow() {
    let mut f = team_fleet(2, 4);
    // Tasks counted before any dimension exists, then with one, then
    // values past the cap, a literal "other", and combinations past the cap.
    f.apply_task(&task("t0", "completed", 2));
    f.apply_agent_listing(&[
        with_labels("a1", &[("team", "a")]),
        with_labels("a2", &[("team", "b")]),
        with_labels("a3", &[("team", "c")]),
        with_labels("a4", &[("team", "other")]),
        with_labels("a5", &[("team", "a"), ("env", "x")]),
        with_labels("a6", &[("team", "b"), ("env", "y")]),
        with_labels("a7", &[("env", "z")]),
    ]);
    for (i, a) in ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "nobody"]
        .iter()
        .enumerate()
    {
        let mut t = task(&format!("t{}", i + 1), "completed", 3 + i as i64);
        t.agent_id = Some(a.to_string());
        t.labels = vec![("prio".into(), format!("p{i}"))];
        f.apply_task(&t);
    }
    let s = f.snapshot("ws", ts(100), Health::default(), Default::default());
    assert_no_duplicate_series(&s);
    let fin: u64 = s
        .task_groups
        .iter()
        .map(|g| g.counters.finished.values().sum::<u64>())
        .sum();
    assert_eq!(fin, 9);
    let keys: Vec<&Vec<String>> = s.task_groups.iter().map(|g| &g.by).collect();
    // The cap, and the all-"other" combination past it.
    assert!(
        s.breakdown.as_ref().unwrap().combinations <= 4 + 1,
        "{keys:?}"
    );
}

#[test]
fn attack_a_heartbeat_far_ahead_of_the_api_clock_does_not_hide_a_silent_agent() {
    // The API's clock reads 1000; an agent busy since 10 claims a heartbeat
    // a year ahead. Like a future updated_at, that instant is not believed:
    // it is judged from its last change, silent for long.
    let mut f = fleet_at(1000);
    f = f.with_breakdown(
        &BreakdownConfig {
            provider: true,
            ..Default::default()
        },
        &["workspace".into()],
    );
    let mut a = agent("a", "busy", 10);
    a.last_heartbeat_at = Some(ts(1000 + 365 * 86_400));
    f.apply_agent_listing_at(&[a], ts(1000), Duration::from_secs(5));
    let s = f.snapshot("ws", ts(1000), Health::default(), Default::default());
    let silent: u64 = s.agent_groups.iter().map(|g| g.silent["busy"]).sum();
    assert_eq!(silent, 1);
}

#[test]
fn attack_an_agent_lookup_that_cannot_apply_is_not_asked_again() {
    // GET /agents/a9 answers another agent, or one with a future stamp:
    // either way a9 must not be looked up again on every sync.
    let mut f = fleet_at(1000).with_breakdown(
        &BreakdownConfig {
            provider: true,
            ..Default::default()
        },
        &["workspace".into()],
    );
    f.apply_agent_listing_at(&[], ts(1000), Duration::from_secs(5));
    let mut t = task("t", "running", 500);
    t.agent_id = Some("a9".into());
    let mut u = task("u", "running", 500);
    u.agent_id = Some("a8".into());
    assert_eq!(f.unknown_agents([&t, &u]), ["a8", "a9"]);
    f.learn_agent("a9", Some(&agent("someone_else", "idle", 500)));
    let future = agent("a8", "idle", 1000 + 86_400);
    f.learn_agent("a8", Some(&future));
    assert!(
        f.unknown_agents([&t, &u]).is_empty(),
        "{:?}",
        f.unknown_agents([&t, &u])
    );
    // The other agent is not taken in under the wrong id.
    let s = f.snapshot("ws", ts(1000), Health::default(), Default::default());
    let agents: u64 = s
        .agent_groups
        .iter()
        .flat_map(|g| g.statuses.values())
        .sum();
    assert_eq!(agents, 0);
}

// ---- checkpoints (issue 12) ----

/// Through a checkpoint (saved, encoded to the file's bytes, decoded,
/// restored into a fleet made as at a start) at any point of a busy
/// sequence, the fleet goes on exactly as one that never stopped:
/// counters, histograms, late values, open tasks, ledger, breakdowns.
#[test]
fn a_fleet_through_a_checkpoint_at_any_point_ends_as_one_that_never_stopped() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let teams = ["red", "blue", "green"];
    let providers = ["openai", "anthropic"];
    let agents: Vec<Agent> = (0..6)
        .map(|i| labelled_agent(&format!("a{i}"), teams[i % 3], providers[i % 2], Some(1)))
        .collect();
    // Sightings: each task pending, running, terminal (some copies twice,
    // some failures without a code until a later copy), interleaved.
    let mut sightings: Vec<(i64, Task)> = Vec::new();
    for i in 0..120 {
        let id = format!("t{i}");
        let agent = format!("a{}", i % 6);
        let t0 = rng.random_range(1..200);
        let end = ["completed", "failed", "cancelled", "weird_status"][i % 4];
        sightings.push((t0, on(&agent, task(&id, "pending", t0))));
        sightings.push((t0 + 1, on(&agent, task(&id, "running", t0 + 1))));
        let mut done = on(&agent, task(&id, end, t0 + 3));
        if end == "failed" && i % 8 == 1 {
            done.error = Some(TaskError { code: None });
            let mut late = done.clone();
            late.updated_at = ts(t0 + 9);
            late.error = Some(TaskError {
                code: Some("model_error".into()),
            });
            sightings.push((t0 + 9, late));
        }
        if rng.random_bool(0.3) {
            sightings.push((t0 + 4, done.clone()));
        }
        sightings.push((t0 + 3, done));
    }
    sightings.sort_by_key(|(at, _)| *at);
    let run = |f: &mut Fleet, from: usize, to: usize| {
        for (i, (_, t)) in sightings[from..to].iter().enumerate() {
            if (from + i) % 50 == 0 {
                f.apply_agent_listing(&agents);
            }
            f.apply_task(t);
            if (from + i) % 97 == 0 {
                f.raise_floor(ts(((from + i) / 10) as i64));
                f.settle();
            }
        }
    };
    let render = |f: &mut Fleet| {
        let s = f.snapshot("ws", ts(500), Health::default(), Default::default());
        format!(
            "{:?} {:?} {:?} {:?} {:?} {} {}",
            s.counters,
            s.tasks_open,
            s.agents,
            s.task_groups,
            s.agent_groups,
            s.ledger_len,
            s.open_len
        )
    };
    let mut never = broken_down(50);
    run(&mut never, 0, sightings.len());
    let want = render(&mut never);
    for cut in [
        0,
        1,
        37,
        sightings.len() / 2,
        sightings.len() - 3,
        sightings.len(),
    ] {
        let mut before = broken_down(50);
        run(&mut before, 0, cut);
        let c = crate::storage::Checkpoint {
            workspace: "ws".into(),
            shard: (0, 1),
            saved_at: 0,
            api_saved_at: 0,
            watermark: 0,
            fleet: before.save(),
        };
        let bytes = crate::storage::encode(&c, u64::MAX).unwrap();
        let back = crate::storage::decode(&bytes, u64::MAX).unwrap();
        let (mut after, note) = broken_down(50).restore(back.fleet).unwrap();
        assert_eq!(note, None, "same configuration: nothing dropped");
        run(&mut after, cut, sightings.len());
        assert_eq!(
            render(&mut after),
            want,
            "through a checkpoint after {cut} sightings"
        );
    }
    assert!(never.counters().finished["completed"] > 0);
}

/// A checkpoint saved under other breakdown settings keeps the workspace
/// totals and starts the broken-down series afresh; late values of tasks
/// counted before still count in the totals.
#[test]
fn a_checkpoint_from_other_breakdown_settings_keeps_the_totals() {
    let mut f = broken_down(50);
    f.apply_agent_listing(&[labelled_agent("a1", "red", "openai", Some(1))]);
    let mut t = on("a1", task("t1", "failed", 5));
    t.error = Some(TaskError { code: None });
    f.apply_task(&t);
    f.apply_task(&on("a1", task("t2", "completed", 6)));
    let saved = f.save();
    let (mut g, note) = broken_down(2).restore(saved).unwrap();
    assert!(note.unwrap().contains("breakdown settings changed"));
    assert_eq!(g.counters().finished["completed"], 1);
    assert_eq!(g.counters().finished["failed"], 1);
    // The late code of a task counted before the restart: in the totals
    // and in the slice it was folded into.
    let mut late = on("a1", task("t1", "failed", 9));
    late.finished_at = Some(ts(5));
    f.apply_task(&late);
    g.apply_task(&late);
    assert_eq!(g.counters().failures["timeout"], 1);
    assert_slices_add_up(&mut g);
}

/// The slices of a snapshot sum to the workspace totals, family by family.
fn assert_slices_add_up(f: &mut Fleet) {
    let s = f.snapshot("ws", ts(10), Health::default(), Default::default());
    let mut sum = Counters::default();
    for g in &s.task_groups {
        sum.merge(&g.counters);
    }
    assert_eq!(sum.finished, s.counters.finished, "finished by slice");
    assert_eq!(sum.failures, s.counters.failures, "failures by slice");
    assert_eq!(sum.input_tokens, s.counters.input_tokens);
    assert_eq!(sum.output_tokens, s.counters.output_tokens);
    assert_eq!(sum.run_seconds.count(), s.counters.run_seconds.count());
    assert_eq!(
        sum.run_seconds.bucket_counts(),
        s.counters.run_seconds.bucket_counts()
    );
    assert_eq!(sum.queue_seconds.count(), s.counters.queue_seconds.count());
}

/// The finished count of the slice whose label values are `by` (padded
/// with "" to every dimension), if there is one.
fn finished_in(f: &mut Fleet, by: &[&str], status: &str) -> Option<u64> {
    let s = f.snapshot("ws", ts(10), Health::default(), Default::default());
    s.task_groups
        .iter()
        .find(|g| {
            let mut want: Vec<String> = by.iter().map(|v| v.to_string()).collect();
            want.resize(g.by.len(), String::new());
            g.by == want
        })
        .map(|g| g.counters.finished[status])
}

fn by_config(provider: bool, team: bool) -> BreakdownConfig {
    BreakdownConfig {
        provider,
        agent_labels: Patterns {
            allow: if team { vec!["team".into()] } else { vec![] },
            deny: vec![],
        },
        ..Default::default()
    }
}

/// Turning breakdowns on (a reload or a restart with new settings) must
/// not reset what the series without breakdown labels showed: it goes on
/// as the slice of no values, and the new slices add to it.
#[test]
fn turning_breakdowns_on_keeps_the_series_and_the_totals() {
    let mut f = Fleet::new(ts(0));
    f.apply_agent_listing(&[labelled_agent("a1", "red", "openai", Some(1))]);
    for i in 0..3 {
        f.apply_task(&on("a1", task(&format!("t{i}"), "completed", 5)));
    }
    let (mut g, note) = Fleet::new(ts(0))
        .with_breakdown(&by_config(true, false), &["workspace".into()])
        .restore(f.save())
        .unwrap();
    assert!(note.unwrap().contains("breakdowns are new"));
    assert_eq!(
        finished_in(&mut g, &[], "completed"),
        Some(3),
        "the unlabelled series went on"
    );
    // The next listing gives the agents their values; later tasks count there.
    g.apply_agent_listing(&[labelled_agent("a1", "red", "openai", Some(1))]);
    g.apply_task(&on("a1", task("t9", "completed", 7)));
    assert_eq!(finished_in(&mut g, &["openai"], "completed"), Some(1));
    assert_eq!(finished_in(&mut g, &[], "completed"), Some(3));
    assert_eq!(g.counters().finished["completed"], 4);
    assert_slices_add_up(&mut g);
}

/// Adding a dimension keeps every series of the dimensions kept (a
/// dimension it adds is unknown, no label, for what was counted before);
/// removing one folds its series into those of the rest. No series a
/// configuration shows before and after the change ever goes down.
#[test]
fn changing_breakdown_dimensions_keeps_the_series_both_show() {
    let mut f = Fleet::new(ts(0)).with_breakdown(&by_config(false, true), &["workspace".into()]);
    f.apply_agent_listing(&[
        labelled_agent("a1", "red", "openai", Some(1)),
        labelled_agent("a2", "blue", "anthropic", Some(1)),
    ]);
    f.apply_task(&on("a1", task("t1", "completed", 5)));
    f.apply_task(&on("a1", task("t2", "completed", 5)));
    f.apply_task(&on("a2", task("t3", "completed", 5)));
    f.apply_task(&task("t4", "completed", 5));
    // team -> provider and team: {team=red} goes on.
    let (mut g, _) = Fleet::new(ts(0))
        .with_breakdown(&by_config(true, true), &["workspace".into()])
        .restore(f.save())
        .unwrap();
    assert_eq!(finished_in(&mut g, &["", "red"], "completed"), Some(2));
    assert_eq!(finished_in(&mut g, &["", "blue"], "completed"), Some(1));
    assert_eq!(finished_in(&mut g, &[], "completed"), Some(1));
    g.apply_agent_listing(&[
        labelled_agent("a1", "red", "openai", Some(1)),
        labelled_agent("a2", "blue", "anthropic", Some(1)),
    ]);
    g.apply_task(&on("a1", task("t5", "completed", 7)));
    assert_eq!(
        finished_in(&mut g, &["openai", "red"], "completed"),
        Some(1)
    );
    assert_slices_add_up(&mut g);
    // provider and team -> provider: the team series fold by provider.
    let (mut h, _) = Fleet::new(ts(0))
        .with_breakdown(&by_config(true, false), &["workspace".into()])
        .restore(g.save())
        .unwrap();
    assert_eq!(finished_in(&mut h, &["openai"], "completed"), Some(1));
    assert_eq!(finished_in(&mut h, &[], "completed"), Some(4));
    assert_eq!(h.counters().finished["completed"], 5);
    assert_slices_add_up(&mut h);
    // ...and off: the one series holds everything.
    let (mut k, _) = Fleet::new(ts(0)).restore(h.save()).unwrap();
    assert_eq!(finished_in(&mut k, &[], "completed"), Some(5));
    // The same settings again restore the slices as they were.
    let (mut same, note) = Fleet::new(ts(0))
        .with_breakdown(&by_config(true, false), &["workspace".into()])
        .restore(h.save())
        .unwrap();
    assert!(note.is_none(), "{note:?}");
    assert_eq!(finished_in(&mut same, &["openai"], "completed"), Some(1));
}

/// A checkpoint written while the breakdown bug reset the slices (the
/// totals held what no slice did): the difference counts in the slice
/// of no values at restore, so the served sum is the total.
#[test]
fn slices_short_of_the_totals_are_made_up_at_restore() {
    let mut f = Fleet::new(ts(0)).with_breakdown(&by_config(true, false), &["workspace".into()]);
    f.apply_task(&task("t1", "completed", 5));
    let mut v = serde_json::to_value(f.save()).unwrap();
    v["counters"]["finished"]["completed"] = serde_json::json!(7);
    let saved: crate::fleet::SavedFleet = serde_json::from_value(v).unwrap();
    let (mut g, _) = Fleet::new(ts(0))
        .with_breakdown(&by_config(true, false), &["workspace".into()])
        .restore(saved)
        .unwrap();
    assert_eq!(finished_in(&mut g, &[], "completed"), Some(7));
    assert_slices_add_up(&mut g);
}

/// Values of agents long gone free their places: 3 agents with one-off
/// teams fill `max_values`; once they left (and the horizon that keeps a
/// gone agent's values passed), a new team gets a value of its own, not
/// `other`, and `clawmesh_breakdown_values` shows the places free again.
#[test]
fn breakdown_values_of_agents_long_gone_are_freed() {
    let cfg = BreakdownConfig {
        max_values: 3,
        ..by_config(false, true)
    };
    let mut f = Fleet::new(ts(0)).with_breakdown(&cfg, &["workspace".into()]);
    let team = |id: &str, team: &str| labelled_agent(id, team, "openai", Some(1));
    f.apply_agent_listing_at(
        &[
            team("a1", "one-off-1"),
            team("a2", "one-off-2"),
            team("a3", "one-off-3"),
        ],
        ts(10),
        Duration::ZERO,
    );
    f.apply_task(&on("a1", task("t1", "completed", 5)));
    let values = |f: &mut Fleet| {
        f.snapshot("ws", ts(10), Health::default(), Default::default())
            .breakdown
            .unwrap()
            .values[0]
            .1
    };
    assert_eq!(values(&mut f), 3);
    // They leave; their values are kept for their tasks for the horizon.
    f.apply_agent_listing_at(&[], ts(20), Duration::ZERO);
    assert_eq!(values(&mut f), 3);
    f.apply_agent_listing_at(&[team("a4", "real")], ts(30), Duration::ZERO);
    assert_eq!(finished_in(&mut f, &["other"], "completed"), None);
    // Past the horizon, with the counted task forgotten by the ledger.
    f.ledger.clear();
    let later = ts(30).saturating_add(DIMS_GONE_TTL + Duration::from_secs(1));
    f.apply_agent_listing_at(
        &[team("a4", "real"), team("a5", "new")],
        later,
        Duration::ZERO,
    );
    assert!(values(&mut f) <= 3);
    let s = f.snapshot("ws", later, Health::default(), Default::default());
    let by_team: Vec<&str> = s.agent_groups.iter().map(|g| g.by[0].as_str()).collect();
    assert!(
        by_team.contains(&"new"),
        "a new team after the horizon: {by_team:?}"
    );
    assert!(!by_team.contains(&"other"), "{by_team:?}");
    // What the freed slice counted goes on under "other": the sum holds.
    assert_eq!(finished_in(&mut f, &["one-off-1"], "completed"), None);
    assert_eq!(finished_in(&mut f, &["other"], "completed"), Some(1));
    assert_slices_add_up(&mut f);
    // And through a checkpoint.
    let (mut g, _) = Fleet::new(ts(0))
        .with_breakdown(&cfg, &["workspace".into()])
        .restore(f.save())
        .unwrap();
    assert!(values(&mut g) <= 3);
    assert_slices_add_up(&mut g);
}

/// a checksummed checkpoint whose counters sit at u64::MAX
/// (edited, or written by a buggy build) must be refused at restore, or
/// go on saturating as every live counter does ("counters saturate"):
/// never an overflow panic at the next finish (a debug build panics in
/// the poll round on every retry: clawmesh_up 0 for ever) nor a wrap to
/// zero (a reset in release).
#[test]
fn restored_counters_at_u64_max_neither_panic_nor_wrap() {
    let mut f = Fleet::new(ts(0));
    f.apply_task(&task("t0", "completed", 5));
    let mut v = serde_json::to_value(f.save()).unwrap();
    v["counters"]["finished"]["completed"] = serde_json::json!(u64::MAX);
    let saved: crate::fleet::SavedFleet = serde_json::from_value(v).unwrap();
    let Ok((mut g, _)) = Fleet::new(ts(0)).restore(saved) else {
        return; // refused: fine
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        g.apply_task(&task("t1", "completed", 6));
        g.counters().finished["completed"]
    }));
    match r {
        Ok(n) => assert_eq!(n, u64::MAX, "the counter wrapped"),
        Err(_) => panic!("a restored counter at u64::MAX panics the next finish"),
    }
}

/// A checkpoint's float sums read back to the very bits written: serde_json's
/// default parser can be one ulp off, and a histogram `_sum` one ulp lower
/// after a restart is a counter reset for Prometheus (found by the seams
/// suite: 11.835999999999993 served before a crash, ...991 after).
#[test]
fn checkpointed_float_sums_read_back_exactly() {
    let mut h = crate::histogram::Histogram::new(TASK_DURATION_BUCKETS);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        h.observe((x % 100_000) as f64 / 1000.0 + 0.001);
        let text = serde_json::to_string(&h.save()).unwrap();
        let back: crate::histogram::SavedHistogram = serde_json::from_str(&text).unwrap();
        let r = crate::histogram::Histogram::restore(TASK_DURATION_BUCKETS, back).unwrap();
        assert_eq!(
            r.sum().to_bits(),
            h.sum().to_bits(),
            "{} read back as {}",
            h.sum(),
            r.sum()
        );
    }
}

/// A checkpoint whose breakdown is `slices` copies of one slice (keys by
/// team), each slice's counters `per_slice` finished tasks and as many
/// queue-time observations at zero (summing to `sum`), edited as an attacker (or a buggy
/// build) could: each within the bounds of one counter.
fn hostile_slices(
    slices: usize,
    per_slice: u64,
    totals: u64,
    sum: f64,
) -> crate::fleet::SavedFleet {
    let mut f = Fleet::new(ts(0)).with_breakdown(&by_config(false, true), &["workspace".into()]);
    f.apply_agent_listing(&[labelled_agent("a1", "red", "openai", Some(1))]);
    f.apply_task(&on("a1", task("t1", "completed", 5)));
    let mut v = serde_json::to_value(f.save()).unwrap();
    let edit = |c: &mut serde_json::Value, n: u64, sum: f64| {
        c["finished"]["completed"] = serde_json::json!(n);
        let q = &mut c["queue_seconds"];
        let buckets = q["counts"].as_array().unwrap().len();
        let mut counts = vec![0u64; buckets];
        counts[0] = n;
        q["counts"] = serde_json::json!(counts);
        q["count"] = serde_json::json!(n);
        q["sum"] = serde_json::json!(sum);
        q["zero_count"] = serde_json::json!(n);
        q["positive"] = serde_json::json!([0, []]);
        q["negative"] = serde_json::json!([0, []]);
        c["run_seconds"] = c["queue_seconds"].clone();
        c["input_tokens"] = serde_json::json!(0);
        c["output_tokens"] = serde_json::json!(0);
    };
    edit(&mut v["counters"], totals, sum);
    let b = &mut v["breakdown"];
    let template = b["counters"][1].clone();
    let mut keys = vec![serde_json::json!([])];
    let mut counters = vec![b["counters"][0].clone()];
    edit(&mut counters[0], 0, 0.0);
    for i in 0..slices {
        keys.push(serde_json::json!([format!("team{i}")]));
        let mut c = template.clone();
        edit(&mut c, per_slice, sum);
        counters.push(c);
    }
    b["keys"] = serde_json::json!(keys);
    b["counters"] = serde_json::json!(counters);
    v["ledger"] = serde_json::json!([]);
    v["open"] = serde_json::json!([]);
    serde_json::from_value(v).unwrap()
}

/// Slices that hold more than the workspace totals (an edited
/// checkpoint) cannot be served as they are (the sum over a breakdown
/// would not be the total): the checkpoint is refused, as every corrupt
/// one is. And slices each within the bound of a counter but summing past
/// u64 (2049 slices of 2^53 queue observations at zero) must not panic
/// the fold (the exponential histogram's merge added unchecked).
#[test]
fn slices_holding_more_than_the_totals_refuse_the_checkpoint_without_panic() {
    let narrow =
        || Fleet::new(ts(0)).with_breakdown(&by_config(true, false), &["workspace".into()]);
    let same = || Fleet::new(ts(0)).with_breakdown(&by_config(false, true), &["workspace".into()]);
    // Modest: 3 slices of 5 against totals of 7.
    for (what, fresh) in [("folded", &narrow as &dyn Fn() -> Fleet), ("same", &same)] {
        let r = fresh().restore(hostile_slices(3, 5, 7, 0.0));
        assert!(
            r.as_ref()
                .is_err_and(|e| e.contains("more than the totals")),
            "{what}: slices of 15 over totals of 7: {:?}",
            r.map(|_| ())
        );
    }
    // Past u64 when summed.
    let huge = 1u64 << 53;
    let r = std::panic::catch_unwind(|| {
        narrow()
            .restore(hostile_slices(2049, huge, huge, 0.0))
            .map(|_| ())
    });
    match r {
        Ok(r) => assert!(r.is_err(), "slices summing past u64 were taken"),
        Err(_) => panic!("slices summing past u64 panic the restore"),
    }
    // Counts that add up, but sums near the largest double: what is
    // taken is served finite and saved as a checkpoint that restores.
    let (g, _) = narrow()
        .restore(hostile_slices(2, 1, 2, f64::MAX / 1.5))
        .unwrap();
    let again = narrow().restore(g.save());
    assert!(again.is_ok(), "{:?}", again.map(|_| ()));
}

/// Lowering `--breakdown.max-combinations` (a reload, or a restart
/// with storage) folds the saved slices into the cap; the agents' series
/// (one per combination of agent values) must be capped as well, at once
/// and after the next listing, not kept past the cap for as long as the
/// agents live.
#[test]
fn a_folded_checkpoint_keeps_the_agent_combinations_within_the_cap() {
    let wide = BreakdownConfig {
        max_slices: 100,
        ..by_config(false, true)
    };
    let mut f = Fleet::new(ts(0)).with_breakdown(&wide, &["workspace".into()]);
    let agents: Vec<Agent> = (0..20)
        .map(|i| labelled_agent(&format!("a{i}"), &format!("team{i}"), "openai", Some(1)))
        .collect();
    f.apply_agent_listing(&agents);
    let narrow = BreakdownConfig {
        max_slices: 5,
        ..by_config(false, true)
    };
    let (mut g, note) = Fleet::new(ts(0))
        .with_breakdown(&narrow, &["workspace".into()])
        .restore(f.save())
        .unwrap();
    assert!(note.unwrap().contains("settings changed"));
    let groups = |g: &mut Fleet| {
        g.snapshot("ws", ts(10), Health::default(), Default::default())
            .agent_groups
            .len()
    };
    assert!(
        groups(&mut g) <= 5,
        "restored: {} agent series",
        groups(&mut g)
    );
    g.apply_agent_listing(&agents);
    assert!(
        groups(&mut g) <= 5,
        "after a listing: {} agent series",
        groups(&mut g)
    );
    // Every agent is still counted, in some series.
    let s = g.snapshot("ws", ts(10), Health::default(), Default::default());
    let n: u64 = s
        .agent_groups
        .iter()
        .map(|a| a.statuses.values().sum::<u64>())
        .sum();
    assert_eq!(n, 20);
}

/// One-off task label values (a run id, a ticket) must not fill
/// `--breakdown.max-values` for good either: once no open or remembered
/// task counts in their combinations, they are freed like agents'
/// values, with their own tasks or on an agent that stays.
#[test]
fn one_off_task_label_values_are_freed_too() {
    let cfg = BreakdownConfig {
        max_values: 3,
        task_labels: Patterns {
            allow: vec!["run".into()],
            deny: vec![],
        },
        ..by_config(false, true)
    };
    let mut f = Fleet::new(ts(0)).with_breakdown(&cfg, &["workspace".into()]);
    let agents = [labelled_agent("a1", "red", "openai", Some(1))];
    f.apply_agent_listing(&agents);
    let run = |agent: Option<&str>, id: &str, run: &str| {
        let mut t = task(id, "completed", 5);
        t.agent_id = agent.map(Into::into);
        t.labels = vec![("run".into(), run.into())];
        t
    };
    f.apply_task(&run(Some("a1"), "t1", "r1"));
    f.apply_task(&run(None, "t2", "r2"));
    f.apply_task(&run(Some("a1"), "t3", "r3"));
    // The tasks leave the ledger (past the horizon); the agent stays.
    f.ledger.clear();
    f.apply_agent_listing(&agents);
    f.apply_task(&run(Some("a1"), "t4", "r4"));
    f.apply_task(&run(None, "t5", "r5"));
    let s = f.snapshot("ws", ts(10), Health::default(), Default::default());
    let runs: Vec<&str> = s.task_groups.iter().map(|g| g.by[1].as_str()).collect();
    assert!(
        runs.contains(&"r4") && runs.contains(&"r5"),
        "new run ids after the old ones were forgotten: {runs:?}"
    );
    assert!(!runs.contains(&"r1"), "{runs:?}");
    assert_eq!(f.counters().finished["completed"], 5);
    assert_slices_add_up(&mut f);
}

/// A checkpoint restored under the same settings takes its
/// combinations and dimensions as they were, but label values and names
/// come back bounded as the fleet makes them live: a value past 128 bytes
/// (never admitted live) or a dimension named as no label can be (a
/// space, `__name__`) or as the families' own labels (`status`: a
/// duplicate label breaks the whole scrape) is refused, never served.
#[test]
fn breakdown_labels_of_a_same_settings_checkpoint_are_bounded() {
    let cfg = by_config(false, true);
    let mut f = Fleet::new(ts(0)).with_breakdown(&cfg, &["workspace".into()]);
    f.apply_agent_listing(&[labelled_agent("a1", "red", "openai", Some(1))]);
    f.apply_task(&on("a1", task("t1", "completed", 5)));
    let v = serde_json::to_value(f.save()).unwrap();
    assert_eq!(v["breakdown"]["keys"][1][0], "red");
    let long = "x".repeat(200);
    type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 5] = [
        ("a long value", &|v| {
            v["breakdown"]["keys"][1][0] = serde_json::json!(long);
            v["breakdown"]["dims"][0]["values"] = serde_json::json!([long]);
        }),
        ("a long dimension value", &|v| {
            v["breakdown"]["dims"][0]["values"] = serde_json::json!(["red", long]);
        }),
        ("a name with a space", &|v| {
            v["breakdown"]["dims"][0]["name"] = serde_json::json!("te am");
        }),
        ("__name__", &|v| {
            v["breakdown"]["dims"][0]["name"] = serde_json::json!("__name__");
        }),
        ("a family's label", &|v| {
            v["breakdown"]["dims"][0]["name"] = serde_json::json!("status");
        }),
    ];
    for (what, edit) in edits {
        let mut v = v.clone();
        edit(&mut v);
        let saved: crate::fleet::SavedFleet = serde_json::from_value(v).unwrap();
        let r = Fleet::new(ts(0))
            .with_breakdown(&cfg, &["workspace".into()])
            .restore(saved);
        let Ok((mut g, _)) = r else {
            continue; // refused: fine
        };
        let s = g.snapshot("ws", ts(10), Health::default(), Default::default());
        assert!(
            s.dims
                .iter()
                .all(|d| crate::fleet::sanitize(d) == *d && !d.starts_with("__") && d != "status"),
            "{what}: served as label names {:?}",
            s.dims
        );
        let values = s.task_groups.iter().flat_map(|g| &g.by);
        assert!(
            values.clone().all(|v| v.len() <= 128),
            "{what}: served a label value of {} bytes",
            values.map(|v| v.len()).max().unwrap_or(0)
        );
        let info = s.breakdown.unwrap();
        assert!(info.values.iter().all(|(_, n)| *n <= cfg.max_values));
    }
}
