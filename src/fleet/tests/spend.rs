//! Spend: tokens priced once, with the price in force at the task's
//! finish, through duplicates, late values, gone agents, checkpoints,
//! breakdowns and new tables; budgets over slices and periods.

use super::*;
use crate::prices::{Money, PriceOptions, PriceTable};

/// openai-m: 3 / 15 per million, then 2 / 10 from ts(100) (08:01:40Z);
/// anthropic-m: 1 / 1. No other model is priced.
fn table() -> Arc<PriceTable> {
    let yaml = r#"
currency: USD
models:
  - provider: openai
    model: openai-m
    input_per_million: 3
    output_per_million: 15
  - provider: openai
    model: openai-m
    since: 2027-01-15T08:01:40Z
    input_per_million: "2"
    output_per_million: "10"
  - provider: anthropic
    model: anthropic-m
    input_per_million: 1
    output_per_million: 1
"#;
    Arc::new(PriceTable::parse(yaml.as_bytes(), "test", &PriceOptions::default()).unwrap())
}

/// `n` of the currency: what a million tokens at `n` per million cost.
fn pm(n: u128) -> Money {
    Money(n * 10u128.pow(crate::prices::MONEY_DIGITS))
}

fn with_tokens(mut t: Task, input: Option<u64>, output: Option<u64>) -> Task {
    t.metrics.input_tokens = input;
    t.metrics.output_tokens = output;
    t
}

fn priced_fleet() -> Fleet {
    let mut f = fleet_at(1000);
    f.set_prices(table());
    f.apply_agent_listing(&[
        labelled_agent("a1", "red", "openai", Some(1)),
        labelled_agent("a2", "blue", "anthropic", Some(1)),
        labelled_agent("a3", "blue", "mistral", Some(1)),
    ]);
    f
}

const C: usize = 0; // completed
const F: usize = 1; // failed
const X: usize = 2; // cancelled

#[test]
fn tokens_are_priced_once_with_the_price_in_force_at_the_finish() {
    let mut f = priced_fleet();
    // Before the change: 3 / 15.
    let early = with_tokens(
        on("a1", task("t1", "completed", 50)),
        Some(1_000_000),
        Some(2),
    );
    f.apply_task(&early);
    f.apply_task(&early);
    // Exactly at the change: the new price, 2 / 10.
    let at = with_tokens(
        on("a1", task("t2", "completed", 100)),
        Some(1_000_000),
        Some(0),
    );
    f.apply_task(&at);
    let s = f.counters().spend;
    assert_eq!(s.0[0][C], pm(3).saturating_add(pm(2)));
    assert_eq!(s.0[1][C], Money(2 * pm(15).0 / 1_000_000));
    // A task that finished before the change, whose tokens come later
    // (after the change): the finish's price.
    let late = with_tokens(on("a1", task("t3", "failed", 90)), None, None);
    f.apply_task(&late);
    let later = with_tokens(
        on("a1", task("t3", "failed", 90)),
        Some(1_000_000),
        Some(1_000_000),
    );
    let mut later = later;
    later.updated_at = ts(500);
    f.apply_task(&later);
    f.apply_task(&later);
    let s = f.counters().spend;
    assert_eq!(
        s.0[0][F],
        pm(3),
        "the late input, at the price of its finish"
    );
    assert_eq!(s.0[1][F], pm(15));
    assert_eq!(f.counters().input_tokens, 3_000_000);
}

#[test]
fn an_unknown_model_is_unpriced_and_no_table_prices_nothing() {
    let mut f = priced_fleet();
    f.apply_task(&with_tokens(
        on("a3", task("t1", "completed", 50)),
        Some(7),
        Some(8),
    ));
    // No agent at all (a pending task cancelled with usage).
    f.apply_task(&with_tokens(task("t2", "cancelled", 50), Some(1), None));
    assert!(f.counters().spend.is_zero());
    let u = &f.counters().unpriced;
    assert_eq!(u[&("mistral".into(), "mistral-m".into())], [7, 8]);
    assert_eq!(u[&(String::new(), String::new())], [1, 0]);
    // Zero tokens of an unpriced model are still unpriced, not spend.
    let mut g = fleet_at(1000);
    g.apply_agent_listing(&[labelled_agent("a1", "red", "openai", Some(1))]);
    g.apply_task(&with_tokens(
        on("a1", task("t1", "completed", 50)),
        Some(7),
        Some(8),
    ));
    assert!(g.counters().spend.is_zero() && g.counters().unpriced.is_empty());
    let snap = g.snapshot("ws", ts(1000), Health::default(), Default::default());
    assert!(!snap.priced);
}

#[test]
fn spend_is_kept_by_terminal_status_so_waste_is_seen() {
    let mut f = priced_fleet();
    for (id, status) in [("t1", "completed"), ("t2", "failed"), ("t3", "cancelled")] {
        f.apply_task(&with_tokens(
            on("a2", task(id, status, 50)),
            Some(1_000_000),
            None,
        ));
    }
    let s = f.counters().spend;
    assert_eq!([s.0[0][C], s.0[0][F], s.0[0][X]], [pm(1); 3]);
    assert_eq!(s.total(), Money(3 * pm(1).0));
}

#[test]
fn a_gone_agent_s_late_tokens_are_priced_by_its_model() {
    let mut f = priced_fleet();
    f.apply_task(&with_tokens(
        on("a1", task("t1", "completed", 50)),
        Some(1_000_000),
        None,
    ));
    // a1 vanishes from a listing; its task's output comes after.
    f.apply_agent_listing_at(&[], ts(900), Duration::from_secs(5));
    let mut t = with_tokens(
        on("a1", task("t1", "completed", 50)),
        Some(1_000_000),
        Some(1_000_000),
    );
    t.updated_at = ts(950);
    f.apply_task(&t);
    assert_eq!(f.counters().spend.0[1][C], pm(15));
    assert!(f.counters().unpriced.is_empty());
}

#[test]
fn a_new_table_prices_only_what_becomes_known_after_it() {
    let mut f = priced_fleet();
    f.apply_task(&with_tokens(
        on("a3", task("t1", "completed", 50)),
        Some(5),
        None,
    ));
    let yaml = "currency: USD\nmodels:\n  - {provider: mistral, model: mistral-m, input_per_million: 10000, output_per_million: 0}\n";
    f.set_prices(Arc::new(
        PriceTable::parse(yaml.as_bytes(), "t", &PriceOptions::default()).unwrap(),
    ));
    // The same task again: nothing counted twice, nothing re-priced.
    f.apply_task(&with_tokens(
        on("a3", task("t1", "completed", 50)),
        Some(5),
        None,
    ));
    assert_eq!(
        f.counters().unpriced[&("mistral".into(), "mistral-m".into())],
        [5, 0]
    );
    assert!(f.counters().spend.is_zero());
    f.apply_task(&with_tokens(
        on("a3", task("t2", "completed", 60)),
        Some(5),
        Some(9),
    ));
    assert_eq!(f.counters().spend.0[0][C], Money(5 * 10u128.pow(25)));
    assert_eq!(
        f.counters().spend.0[1][C],
        Money::ZERO,
        "a price of 0 is a price"
    );
    assert_eq!(
        f.counters().unpriced[&("mistral".into(), "mistral-m".into())],
        [5, 0]
    );
}

#[test]
fn spend_survives_a_checkpoint_and_breakdowns_turned_on() {
    let mut f = priced_fleet();
    f.apply_task(&with_tokens(
        on("a1", task("t1", "completed", 50)),
        Some(1_000_000),
        Some(3),
    ));
    f.apply_task(&with_tokens(
        on("a3", task("t2", "failed", 50)),
        Some(4),
        Some(3),
    ));
    let before = f.counters().clone();
    let saved = f.save();
    let json = serde_json::to_string(&saved).unwrap();
    let saved: SavedFleet = serde_json::from_str(&json).unwrap();
    let (mut g, _) = broken_down(50).restore(saved).unwrap();
    g.set_prices(table());
    assert_eq!(g.counters().spend, before.spend);
    assert_eq!(g.counters().month, before.month);
    assert_eq!(g.counters().unpriced, before.unpriced);
    // Totals go on; the slices sum to them.
    g.apply_task(&with_tokens(
        on("a1", task("t3", "completed", 60)),
        Some(1_000_000),
        None,
    ));
    let snap = g.snapshot("ws", ts(1000), Health::default(), Default::default());
    let mut sum = Spend::default();
    for grp in &snap.task_groups {
        sum.merge(&grp.counters.spend);
    }
    assert_eq!(sum, g.counters().spend);
    assert_eq!(g.counters().spend.0[0][C], pm(3).saturating_add(pm(3)));
    // A checkpoint of before spend (no spend fields) restores with none.
    let mut v: serde_json::Value = serde_json::to_value(g.save()).unwrap();
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("spend");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v.as_object_mut().unwrap().remove("models_gone");
    for a in v["agents"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("model");
    }
    let old: SavedFleet = serde_json::from_value(v).unwrap();
    let (h, _) = broken_down(50).restore(old).unwrap();
    assert!(h.counters().spend.is_zero());
    assert_eq!(h.counters().input_tokens, g.counters().input_tokens);
}

#[test]
fn a_checkpoint_with_impossible_spend_is_refused_without_panic() {
    let mut f = priced_fleet();
    f.apply_task(&with_tokens(
        on("a1", task("t1", "completed", 50)),
        Some(1),
        Some(1),
    ));
    for bad in [
        "-1",
        "NaN",
        "1e400",
        "340282366920938463463374607431768211455",
        "0.1e-30",
        "x",
    ] {
        let mut v: serde_json::Value = serde_json::to_value(f.save()).unwrap();
        v["counters"]["spend"]["spend"][0][0] = serde_json::Value::String(bad.into());
        let s: SavedFleet = serde_json::from_value(v).unwrap();
        assert!(fleet_at(0).restore(s).is_err(), "{bad} restored");
    }
}

#[test]
fn budgets_sum_the_matching_slices_of_the_current_period() {
    let budget = |name: &str, matches: &[(&str, &str)], daily: Option<Money>| BudgetConfig {
        name: name.into(),
        matches: matches
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        monthly: Some(pm(10)),
        daily,
    };
    let mut f = Fleet::new(ts(-200_000))
        .with_breakdown(&by_config_team(), &["workspace".into()])
        .with_budgets(vec![
            budget("all", &[], None),
            budget("red", &[("team", "red")], Some(pm(1))),
            budget("nobody", &[("nope", "x")], None),
        ]);
    f.set_api_time(ApiTime::host(ts(1000)));
    f.set_prices(table());
    f.apply_agent_listing(&[
        labelled_agent("a1", "red", "openai", Some(1)),
        labelled_agent("a2", "blue", "anthropic", Some(1)),
    ]);
    // The day before (2027-01-14), then the day of ts(0) (2027-01-15).
    let mut y = with_tokens(
        on("a1", task("t0", "completed", -86_400)),
        Some(1_000_000),
        None,
    );
    y.created_at = ts(-90_000);
    y.started_at = Some(ts(-89_000));
    y.transitions.running_at = Some(ts(-89_000));
    assert_eq!(f.apply_task(&y), Applied::Finished);
    f.apply_task(&with_tokens(
        on("a1", task("t1", "completed", 50)),
        Some(1_000_000),
        None,
    ));
    f.apply_task(&with_tokens(
        on("a2", task("t2", "completed", 50)),
        Some(1_000_000),
        None,
    ));
    let snap = f.snapshot("ws", ts(1000), Health::default(), Default::default());
    let all = snap.budget_spend(&snap.budgets[0]);
    assert_eq!(all.total, Money(pm(3).0 * 2 + pm(1).0));
    assert_eq!(all.month, all.total);
    assert_eq!(all.day, Money(pm(3).0 + pm(1).0));
    let red = snap.budget_spend(&snap.budgets[1]);
    assert_eq!(
        (red.total, red.month, red.day),
        (Money(pm(3).0 * 2), Money(pm(3).0 * 2), pm(3))
    );
    assert_eq!(snap.budget_spend(&snap.budgets[2]), BudgetSpend::default());
    // The next day: the day's spend starts again, the month's goes on; a
    // month later both do.
    let mut next = snap.clone();
    next.api_now = Some(ts(86_400).micros());
    let red = next.budget_spend(&next.budgets[1]);
    assert_eq!((red.month, red.day), (Money(pm(3).0 * 2), Money::ZERO));
    next.api_now = Some(ts(40 * 86_400).micros());
    let red = next.budget_spend(&next.budgets[1]);
    assert_eq!(
        (red.total, red.month, red.day),
        (Money(pm(3).0 * 2), Money::ZERO, Money::ZERO)
    );
}

fn by_config_team() -> BreakdownConfig {
    BreakdownConfig {
        agent_labels: Patterns {
            allow: vec!["team".into()],
            deny: vec![],
        },
        ..Default::default()
    }
}

fn budget_on(name: &str, key: &str, value: &str) -> BudgetConfig {
    BudgetConfig {
        name: name.into(),
        matches: [(key.to_string(), value.to_string())].into(),
        monthly: Some(pm(10)),
        daily: Some(pm(1)),
    }
}

/// A budget's series are counters (its total) and period gauges rendered
/// from the slices it matches: when a slice is freed into `other` (its
/// task label value held by no remembered task any more, its agents long
/// gone), the budget must not lose what that slice spent. A project with
/// no task for the ledger's horizon is an ordinary quiet hour.
#[test]
fn a_budget_keeps_its_spend_when_its_slices_are_freed() {
    let cfg = BreakdownConfig {
        max_values: 3,
        task_labels: Patterns {
            allow: vec!["project".into()],
            deny: vec![],
        },
        ..by_config_team()
    };
    let mut f = Fleet::new(ts(0))
        .with_breakdown(&cfg, &["workspace".into()])
        .with_budgets(vec![
            budget_on("alpha", "task_project", "alpha"),
            budget_on("red", "team", "red"),
        ]);
    f.set_prices(table());
    f.set_api_time(ApiTime::host(ts(10)));
    let red = labelled_agent("a1", "red", "openai", Some(1));
    f.apply_agent_listing(std::slice::from_ref(&red));
    let mut t = with_tokens(on("a1", task("t1", "completed", 5)), Some(1_000_000), None);
    t.labels = vec![("project".into(), "alpha".into())];
    assert_eq!(f.apply_task(&t), Applied::Finished);
    let spent = |f: &mut Fleet, at: i64| {
        let s = f.snapshot("ws", ts(at), Health::default(), Default::default());
        (s.budget_spend(&s.budgets[0]), s.budget_spend(&s.budgets[1]))
    };
    let before = spent(&mut f, 10);
    assert_eq!(before.0.total, pm(3));
    assert_eq!(before.1.total, pm(3));
    // The task leaves the ledger; its project's slice is freed at the next
    // listing. Then the agent leaves, and its values past their horizon.
    f.raise_floor(ts(6));
    f.apply_agent_listing(&[red]);
    let later = 10 + DIMS_GONE_TTL.as_secs() as i64 + 10;
    f.set_api_time(ApiTime::host(ts(20)));
    f.apply_agent_listing_at(&[], ts(20), Duration::ZERO);
    f.set_api_time(ApiTime::host(ts(later)));
    f.apply_agent_listing_at(&[], ts(later), Duration::ZERO);
    let after = spent(&mut f, later);
    assert_eq!(
        after, before,
        "a budget's total (a counter) and its period spend never fall as its slices are freed"
    );
}

/// The model that prices a task's tokens is its agent's as of the task's
/// finish: a late value (output known after the finish) is priced by it
/// even when the agent changed model since, as the slice it counts in
/// (its `model` label) says.
#[test]
fn late_tokens_are_priced_by_the_model_of_the_finish() {
    let mut f = priced_fleet();
    let t = with_tokens(on("a1", task("t1", "completed", 50)), Some(1_000_000), None);
    assert_eq!(f.apply_task(&t), Applied::Finished);
    // The agent moves to anthropic's model (1 / 1 per million).
    let mut moved = labelled_agent("a1", "red", "anthropic", Some(1));
    moved.updated_at = ts(60);
    f.apply_agent_event(&moved, false);
    let mut late = with_tokens(
        on("a1", task("t1", "completed", 50)),
        Some(1_000_000),
        Some(1_000_000),
    );
    late.updated_at = ts(70);
    f.apply_task(&late);
    let s = f.counters().spend;
    assert_eq!(s.0[0][C], pm(3));
    assert_eq!(
        s.0[1][C],
        pm(15),
        "the late output at openai-m's price, the model it finished on"
    );
    // Its agent deleted and forgotten, a task's late output is still priced.
    let t = with_tokens(on("a1", task("t2", "completed", 80)), Some(1_000_000), None);
    f.apply_task(&t);
    f.apply_agent_event(&moved, true);
    f.set_api_time(ApiTime::host(ts(100_000)));
    f.apply_agent_listing_at(&[], ts(100_000), Duration::ZERO);
    let mut late = with_tokens(
        on("a1", task("t2", "completed", 80)),
        Some(1_000_000),
        Some(1_000_000),
    );
    late.updated_at = ts(100_000);
    f.apply_task(&late);
    assert!(
        f.counters().unpriced.is_empty(),
        "{:?}",
        f.counters().unpriced
    );
    assert_eq!(f.counters().spend.0[1][C], pm(16));
}

/// Whatever a live fleet can count, its checkpoint restores: a hostile or
/// buggy API value (7e15 output tokens in one task, under the 2^53 tokens
/// a checkpoint keeps) prices past 10^11 of the currency; a restore that
/// refused it would refuse every checkpoint from then on, and each restart
/// would start every counter again from zero.
#[test]
fn spend_a_live_fleet_counted_is_restored() {
    let mut f = priced_fleet();
    f.apply_task(&with_tokens(
        on("a1", task("t1", "completed", 50)),
        Some(1),
        Some(7_000_000_000_000_000),
    ));
    let spent = f.counters().spend;
    assert!(spent.0[1][C] > pm(100_000_000_000));
    let (g, _) = fleet_at(1000)
        .restore(f.save())
        .expect("a checkpoint of what the fleet counted restores");
    assert_eq!(g.counters().spend, spent);
}

/// A task stamped a little ahead of the API's clock (within
/// `max_timestamp_lead`) may finish in the next day (or month) while the
/// API's clock still reads the last seconds of this one: this period's
/// spend must not fall to 0 for those minutes, nor lose what this
/// period's tasks spend meanwhile.
#[test]
fn a_task_stamped_in_the_next_period_keeps_this_one_s_spend() {
    let all = BudgetConfig {
        name: "all".into(),
        matches: Default::default(),
        monthly: Some(pm(10)),
        daily: Some(pm(1)),
    };
    let mut f = Fleet::new(ts(0)).with_budgets(vec![all.clone()]);
    f.set_prices(table());
    f.apply_agent_listing(&[labelled_agent("a1", "red", "anthropic", Some(1))]);
    // ts(57_600) is 2027-01-16T00:00:00Z: the API reads 10 s before it.
    f.set_api_time(ApiTime::host(ts(57_590)));
    let done = |id: &str, at: i64| {
        with_tokens(
            on("a1", task(id, "completed", at)),
            Some(1_000_000),
            Some(0),
        )
    };
    assert_eq!(f.apply_task(&done("a", 57_580)), Applied::Finished);
    assert_eq!(f.apply_task(&done("b", 57_630)), Applied::Finished);
    assert_eq!(f.apply_task(&done("c", 57_585)), Applied::Finished);
    let s = f.snapshot("ws", ts(57_595), Health::default(), Default::default());
    let spent = s.budget_spend(&s.budgets[0]);
    assert_eq!(spent.total, pm(3));
    assert_eq!(
        (spent.day, spent.month),
        (pm(2), pm(3)),
        "today's two tasks, not the one stamped tomorrow (the month's all three: the 16th is no new month)"
    );
    // Past midnight: the new day's one task, the month's three.
    let mut next = s.clone();
    next.api_now = Some(ts(57_700).micros());
    let spent = next.budget_spend(&next.budgets[0]);
    assert_eq!((spent.day, spent.month), (pm(1), pm(3)));
    // Through a checkpoint.
    let (mut g, _) = Fleet::new(ts(0))
        .with_budgets(vec![all])
        .restore(f.save())
        .unwrap();
    g.set_api_time(ApiTime::host(ts(57_595)));
    let s = g.snapshot("ws", ts(57_595), Health::default(), Default::default());
    assert_eq!(s.budget_spend(&s.budgets[0]).day, pm(2));
}

/// A budget names a breakdown value (`team: ml`): that value must get a
/// slice of its own even when other values filled `--breakdown.max-values`
/// first, or the budget's tasks count under `other` and it shows nothing
/// spent for good, with no sign of why.
#[test]
fn a_budget_s_value_is_broken_down_past_the_value_cap() {
    let cfg = BreakdownConfig {
        max_values: 2,
        ..by_config_team()
    };
    let mut f = Fleet::new(ts(0))
        .with_breakdown(&cfg, &["workspace".into()])
        .with_budgets(vec![budget_on("ml", "team", "ml")]);
    f.set_prices(table());
    f.set_api_time(ApiTime::host(ts(10)));
    f.apply_agent_listing(&[
        labelled_agent("a1", "red", "openai", Some(1)),
        labelled_agent("a2", "blue", "openai", Some(1)),
        labelled_agent("a3", "ml", "openai", Some(1)),
        labelled_agent("a4", "green", "openai", Some(1)),
    ]);
    f.apply_task(&with_tokens(
        on("a3", task("t1", "completed", 5)),
        Some(1_000_000),
        None,
    ));
    let s = f.snapshot("ws", ts(10), Health::default(), Default::default());
    assert_eq!(s.budget_spend(&s.budgets[0]).total, pm(3));
}
