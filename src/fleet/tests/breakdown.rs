use super::*;

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

// ---- breakdowns under pressure: caps, reserved names, duplicate series, clock skew ----

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
fn agent_combinations_are_bounded_like_task_slices() {
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
fn no_agents_with_breakdowns_still_renders_the_zeros() {
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
fn label_keys_that_sanitise_to_an_underscore_never_take_a_reserved_name() {
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
fn no_duplicate_series_when_dimensions_come_later_and_values_overflow() {
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
fn a_heartbeat_far_ahead_of_the_api_clock_does_not_hide_a_silent_agent() {
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
fn an_agent_lookup_that_cannot_apply_is_not_asked_again() {
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
