use super::*;

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
