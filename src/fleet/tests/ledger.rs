use super::*;

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

// ---- exact under everything the contract allows ----

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

// ---- stale copies, deletions and numbers at their limits ----

#[test]
fn a_stale_running_copy_after_the_failure_does_not_settle_its_code() {
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
fn a_stale_running_copy_after_the_finish_does_not_count_partial_usage() {
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
fn an_unknown_status_before_pending_does_not_hide_the_task_from_pending() {
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
fn a_deletion_keeping_its_old_updated_at_outlives_one_listing() {
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
fn finite_durations_do_not_overflow_the_histogram_sum() {
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
fn timestamp_arithmetic_saturates_for_huge_durations() {
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

// ---- the counting floor while the API clock is unsure ----

/// An HTTP `Date` for API instant `t`.
fn http_date(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_micros(t.micros())
        .unwrap()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

#[test]
fn the_floor_at_start_is_fixed_by_an_answer_without_a_date() {
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
fn one_lying_date_at_start_does_not_count_the_whole_history() {
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

#[test]
fn a_provisional_floor_never_falls_below_what_the_ledger_forgot() {
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
