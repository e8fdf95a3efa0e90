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
