//! The price table: exact money, both formats, lookup, the real LiteLLM
//! table, hostile files.

use super::*;
use crate::api::types::Timestamp;
use crate::files::FileLimits;
use num_bigint::BigInt;
use num_rational::BigRational;
use proptest::prelude::*;
use std::collections::HashMap;

const UNIT: u128 = 10u128.pow(MONEY_DIGITS);

fn m(text: &str) -> Money {
    Money::parse_decimal(text, 0).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn per_million(text: &str) -> Money {
    Money::parse_decimal(text, -6).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

fn opts() -> PriceOptions {
    PriceOptions::default()
}

fn parse(text: &str) -> Result<PriceTable, Vec<String>> {
    PriceTable::parse(text.as_bytes(), "p.yml", &opts())
}

fn problems(text: &str) -> String {
    match PriceTable::parse(text.as_bytes(), "p.yml", &opts()) {
        Ok(_) => panic!("taken:\n{text}"),
        Err(p) => p.join("\n"),
    }
}

// ---- Money::parse_decimal ----

#[test]
fn parse_decimal_reads_every_written_form_exactly() {
    assert_eq!(m("12"), Money(12 * UNIT));
    assert_eq!(m("0.5"), Money(UNIT / 2));
    assert_eq!(m(".5"), Money(UNIT / 2));
    assert_eq!(m("5."), Money(5 * UNIT));
    assert_eq!(m("+2.5"), Money(5 * UNIT / 2));
    assert_eq!(m("3e-6"), Money(3 * 10u128.pow(21)));
    assert_eq!(m("1E2"), Money(100 * UNIT));
    assert_eq!(m("1e+2"), Money(100 * UNIT));
    assert_eq!(m("000.000"), Money::ZERO);
    assert_eq!(m("0e999999999999"), Money::ZERO);
    assert_eq!(
        m("5.0000000000000004e-08"),
        Money(50_000_000_000_000_004_000)
    );
    assert_eq!(m("0.000000000000000000000000001"), Money(1));
    assert_eq!(m("1000e-30"), Money(1));
    // Per million: "3" is 3e-6 per token.
    assert_eq!(per_million("3"), Money(3 * 10u128.pow(21)));
    assert_eq!(per_million("0.000000000000000000001"), Money(1));
    assert_eq!(per_million("2.50"), per_million("2.5"));
}

#[test]
fn parse_decimal_refuses_with_the_reason() {
    let err = |t: &str, shift| Money::parse_decimal(t, shift).unwrap_err();
    assert!(err("-1", 0).contains("negative"));
    assert!(err("-0", 0).contains("negative"));
    for t in ["NaN", "nan", ".nan", "inf", ".inf", "+.inf", "Infinity"] {
        assert!(err(t, 0).contains("not a finite number"), "{t}");
    }
    assert!(err("", 0).contains("empty"));
    for t in [
        "abc", ".", "e5", "1e", "1e+", "1.2.3", "1_000", "0x10", " 1", "1 ", "1,5", "+-1", "1e5.5",
    ] {
        assert!(
            err(t, 0).contains("is not a decimal number"),
            "{t}: {}",
            err(t, 0)
        );
    }
    assert!(err("0.0000000000000000000000000001", 0)
        .contains("more decimal places than a money amount holds (27"));
    let e = err("0.0000000000000000000001", -6);
    assert!(
        e.contains("more decimal places than a price holds (21 places"),
        "{e}"
    );
    assert!(err("1e300", 0).contains("too large"));
    assert!(err("340282366920938463464", 0).contains("too large"));
    assert!(err("1e999999999999999999999", 0).contains("too large"));
    // The largest amount u128 holds is taken, one unit more is not.
    let max = Money(u128::MAX).to_decimal();
    assert_eq!(m(&max), Money(u128::MAX));
    assert!(err("340282366920.938463463374607431768211456", 0).contains("too large"));
}

proptest! {
    #[test]
    fn parse_decimal_never_panics(s in "\\PC{0,60}", shift in -30i32..30) {
        let _ = Money::parse_decimal(&s, shift);
    }

    #[test]
    fn parse_decimal_never_panics_on_number_like_text(s in "[-+]?[0-9]{0,45}(\\.[0-9]{0,45})?([eE][-+]?[0-9]{0,25})?", shift in -30i32..30) {
        let _ = Money::parse_decimal(&s, shift);
    }

    #[test]
    fn to_decimal_reads_back(v in any::<u128>()) {
        prop_assert_eq!(Money::parse_decimal(&Money(v).to_decimal(), 0), Ok(Money(v)));
    }

    #[test]
    fn a_per_million_price_is_a_millionth_of_the_same_amount(v in 0u128..u128::MAX / 1_000_000) {
        let text = Money(v).to_decimal();
        // Written per million, the same text is 10^-6 of it per token,
        // exact when it had at most 21 places.
        match Money::parse_decimal(&text, -6) {
            Ok(p) => prop_assert_eq!(p.0 * 1_000_000, v),
            Err(e) => prop_assert!(v % 1_000_000 != 0 && e.contains("more decimal places")),
        }
    }
}

// ---- our YAML ----

const EXAMPLE: &str = "\
# clawmesh price table
currency: USD
models:
  - provider: anthropic
    model: claude-sonnet-4
    input_per_million: 3
    output_per_million: 15
  - provider: anthropic
    model: claude-sonnet-4
    since: 2026-12-01T00:00:00Z
    input_per_million: \"2.5\"
    output_per_million: \"12.5\"
  - provider: anthropic
    model: claude-*
    input_per_million: 1
    output_per_million: 2
  - provider: anthropic
    model: claude-sonnet-*
    input_per_million: 4
    output_per_million: 5
  - provider: anthropic
    model: claude-opus-*
    input_per_million: 40
    output_per_million: 50
  - provider: \"*\"
    model: llama-*
    input_per_million: 0
    output_per_million: 0
  - provider: \"*\"
    model: claude-haiku
    input_per_million: 0.8
    output_per_million: 4
  - provider: openai
    model: gpt-4o
    since: 2026-01-01
    input_per_million: 2.50
    output_per_million: 10
";

fn price(i: &str, o: &str) -> Option<Price> {
    Some(Price {
        input: per_million(i),
        output: per_million(o),
    })
}

#[test]
fn yaml_table_prices_by_model_pattern_provider_and_date() {
    let t = parse(EXAMPLE).unwrap();
    assert_eq!(t.currency(), "USD");
    assert_eq!(t.format(), Some(TableFormat::Clawmesh));
    assert_eq!(t.entries(), 8);
    assert!(!t.is_empty());
    let before = ts("2026-11-30T23:59:59.999999Z");
    let at = ts("2026-12-01T00:00:00Z");
    // Exact model, with its price change: a task finishing exactly at
    // `since` takes the new price.
    assert_eq!(
        t.lookup("anthropic", "claude-sonnet-4", before),
        price("3", "15")
    );
    assert_eq!(
        t.lookup("anthropic", "claude-sonnet-4", at),
        price("2.5", "12.5")
    );
    // Patterns: the most specific first, whatever the file order.
    assert_eq!(
        t.lookup("anthropic", "claude-sonnet-4-5", at),
        price("4", "5")
    );
    assert_eq!(
        t.lookup("anthropic", "claude-opus-4", at),
        price("40", "50")
    );
    assert_eq!(t.lookup("anthropic", "claude-3", at), price("1", "2"));
    // Provider "*" after the provider's own models and patterns.
    assert_eq!(t.lookup("anthropic", "claude-haiku", at), price("1", "2"));
    assert_eq!(t.lookup("mistral", "claude-haiku", at), price("0.8", "4"));
    // A price of 0 is a price.
    assert_eq!(t.lookup("meta", "llama-3", at), price("0", "0"));
    // Unknown model, unknown provider, and a model whose only price is later.
    assert_eq!(t.lookup("anthropic", "gpt-4o", at), None);
    assert_eq!(t.lookup("mistral", "mistral-large", at), None);
    assert_eq!(
        t.lookup("openai", "gpt-4o", ts("2025-12-31T23:59:59Z")),
        None
    );
    assert_eq!(
        t.lookup("openai", "gpt-4o", ts("2026-01-01T00:00:00Z")),
        price("2.5", "10")
    );
}

#[test]
fn pattern_ties_go_by_file_order_and_star_matches_anywhere() {
    let t = parse(
        "currency: EUR\nmodels:\n\
         - {provider: p, model: 'a*c', input_per_million: 1, output_per_million: 1}\n\
         - {provider: p, model: 'ab*', input_per_million: 2, output_per_million: 2}\n\
         - {provider: p, model: '*x*y*', input_per_million: 3, output_per_million: 3}\n",
    )
    .unwrap();
    let at = ts("2026-01-01T00:00:00Z");
    assert_eq!(t.lookup("p", "abc", at), price("1", "1"));
    assert_eq!(t.lookup("p", "abd", at), price("2", "2"));
    assert_eq!(t.lookup("p", "zzxqqyzz", at), price("3", "3"));
    assert_eq!(t.lookup("p", "ac", at), price("1", "1"));
    assert_eq!(t.lookup("p", "yx", at), None);
}

#[test]
fn yaml_numbers_are_read_as_written() {
    // serde_norway reads 2.50 and 0.1 as floats; the price is the text.
    let t = parse(
        "currency: USD\nmodels:\n\
         - {provider: p, model: a, input_per_million: 0.1, output_per_million: 2.50}\n\
         - {provider: p, model: b, input_per_million: 1e-3, output_per_million: 0.123456789012345678901}\n\
         - {provider: p, model: c, input_per_million: '3e-1', output_per_million: \"10000\"}\n",
    )
    .unwrap();
    let at = Timestamp(0);
    let a = t.lookup("p", "a", at).unwrap();
    assert_eq!(a.input, Money(10u128.pow(20)));
    assert_eq!(a.output, Money(25 * 10u128.pow(20)));
    let b = t.lookup("p", "b", at).unwrap();
    assert_eq!(b.input, Money(10u128.pow(18)));
    // 21 significant digits: a float would hold 17.
    assert_eq!(b.output, Money(123_456_789_012_345_678_901));
    assert_eq!(t.lookup("p", "c", at), price("0.3", "10000"));
}

#[test]
fn a_flow_style_yaml_table_is_ours_not_litellm() {
    let t = parse(r#"{"currency": "USD", "models": [{"provider": "p", "model": "m", "input_per_million": 1, "output_per_million": 2}]}"#).unwrap();
    assert_eq!(t.format(), Some(TableFormat::Clawmesh));
    assert_eq!(t.lookup("p", "m", Timestamp(0)), price("1", "2"));
}

#[test]
fn a_bad_yaml_table_is_refused_with_every_problem_named() {
    let p = problems(
        "currency: usd\nextra: 1\nmodels:\n\
         - {provider: p, model: a, input_per_million: -1, output_per_million: .nan}\n\
         - {provider: p, model: b, input_per_million: 10000.0000001, output_per_million: 1e300}\n\
         - {provider: p, model: c, input_per_million: 0.0000000000000000000001, output_per_million: abc}\n\
         - {provider: p, model: d, output_per_million: 1, colour: red}\n\
         - {provider: p, model: e, since: 2026-13-01, input_per_million: 1, output_per_million: 1}\n\
         - {provider: p, model: f, input_per_million: 1, output_per_million: 1}\n\
         - {provider: p, model: f, input_per_million: 2, output_per_million: 2}\n\
         - {provider: [x], model: g, input_per_million: true, output_per_million: {a: 1}}\n\
         - just text\n",
    );
    for want in [
        "p.yml: currency: \"usd\" is not a currency code",
        "p.yml: extra: is not a key of a price table",
        "models[0] (p/a): input_per_million: is negative",
        "models[0] (p/a): output_per_million: is not a finite number",
        "models[1] (p/b): input_per_million: 10000.0000001 is above the highest price taken (10000 per million tokens)",
        "models[1] (p/b): output_per_million: 1e300 is above the highest price",
        "models[2] (p/c): input_per_million: has more decimal places than a price holds (21 places",
        "models[2] (p/c): output_per_million: \"abc\" is not a decimal number",
        "models[3] (p/d): colour: is not a key of a model",
        "models[3] (p/d): input_per_million: is missing",
        "models[4] (p/e): since: \"2026-13-01\" is not a date",
        "models[6] (p/f): gives the price of this model again (first in models[5])",
        "models[7] (?/g): provider: is a list, not a name",
        "models[7] (?/g): input_per_million: is a boolean, not a price",
        "models[7] (?/g): output_per_million: is a mapping, not a price",
        "models[8]: is a string, not a model",
    ] {
        assert!(p.contains(want), "missing {want:?} in:\n{p}");
    }
    assert!(!p.contains("models[5]:"), "{p}");
    assert!(problems("models: []\n").contains("currency: is missing"));
    assert!(problems("currency: USD\n").contains("models: is missing"));
    assert!(problems("currency: USD\nmodels: 3\n").contains("models: is a number, not a list"));
}

#[test]
fn problems_are_capped_and_the_rest_counted() {
    let mut y = String::from("currency: USD\nmodels:\n");
    for i in 0..50 {
        y += &format!(
            "  - {{provider: p, model: m{i}, input_per_million: -1, output_per_million: 1}}\n"
        );
    }
    let p = parse(&y).unwrap_err();
    assert_eq!(p.len(), 21, "{p:?}");
    assert_eq!(p[20], "p.yml: ... and 30 more problems");
}

#[test]
fn the_same_model_at_two_dates_is_two_entries_not_a_duplicate() {
    let t = parse(
        "currency: USD\nmodels:\n\
         - {provider: p, model: m, since: 2026-02-01, input_per_million: 2, output_per_million: 2}\n\
         - {provider: p, model: m, since: '2026-01-01T00:00:00+01:00', input_per_million: 1, output_per_million: 1}\n",
    )
    .unwrap();
    assert_eq!(t.entries(), 2);
    assert_eq!(t.lookup("p", "m", ts("2025-12-31T22:59:59Z")), None);
    assert_eq!(
        t.lookup("p", "m", ts("2025-12-31T23:00:00Z")),
        price("1", "1")
    );
    assert_eq!(
        t.lookup("p", "m", ts("2026-02-01T00:00:00Z")),
        price("2", "2")
    );
}

#[test]
fn more_yaml_entries_than_the_limit_are_refused() {
    let mut y = String::from("currency: USD\nmodels:\n");
    for i in 0..11 {
        y += &format!(
            "  - {{provider: p, model: m{i}, input_per_million: 1, output_per_million: 1}}\n"
        );
    }
    let o = PriceOptions {
        max_entries: 10,
        ..opts()
    };
    let p = PriceTable::parse(y.as_bytes(), "p.yml", &o)
        .unwrap_err()
        .join("\n");
    assert!(
        p.contains("models: holds 11 entries, more than --prices.max-entries (10)"),
        "{p}"
    );
    let o = PriceOptions {
        max_entries: 11,
        ..opts()
    };
    assert_eq!(
        PriceTable::parse(y.as_bytes(), "p.yml", &o)
            .unwrap()
            .entries(),
        11
    );
}

#[test]
fn aliases_map_a_clawmesh_provider_to_the_tables() {
    let o = PriceOptions {
        provider_aliases: [("google".to_string(), "gemini".to_string())].into(),
        ..opts()
    };
    let t = PriceTable::parse(
        b"currency: USD\nmodels:\n- {provider: gemini, model: g, input_per_million: 1, output_per_million: 1}\n",
        "p.yml",
        &o,
    )
    .unwrap();
    assert_eq!(t.lookup("google", "g", Timestamp(0)), price("1", "1"));
    assert_eq!(t.lookup("gemini", "g", Timestamp(0)), price("1", "1"));
}

#[test]
fn the_flags_build_the_settings() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        p: PricesArgs,
    }
    let c = Cli::try_parse_from(["x"]).unwrap();
    assert_eq!(c.p.config(), Ok(None));
    let c = Cli::try_parse_from([
        "x",
        "--prices.file",
        "/t.json",
        "--prices.provider-alias",
        "google=gemini,vertex=vertex_ai",
        "--prices.max-size",
        "1MiB",
    ])
    .unwrap();
    let cfg = c.p.config().unwrap().unwrap();
    assert_eq!(cfg.max_bytes, 1 << 20);
    assert_eq!(cfg.options.max_entries, 10_000);
    assert_eq!(cfg.options.provider_aliases["google"], "gemini");
    assert_eq!(cfg.options.provider_aliases["vertex"], "vertex_ai");
    for bad in ["google", "=gemini", "google="] {
        let c = Cli::try_parse_from(["x", "--prices.provider-alias", bad]).unwrap();
        assert!(
            c.p.config()
                .unwrap_err()
                .contains("write PROVIDER=TABLE_PROVIDER"),
            "{bad}"
        );
    }
    let c = Cli::try_parse_from([
        "x",
        "--prices.provider-alias",
        "a=b",
        "--prices.provider-alias",
        "a=c",
    ])
    .unwrap();
    assert!(c.p.config().unwrap_err().contains("given twice"));
    let c = Cli::try_parse_from(["x", "--prices.max-entries", "0"]).unwrap();
    assert!(c
        .p
        .config()
        .unwrap_err()
        .starts_with("--prices.max-entries"));
}

// ---- the real LiteLLM table ----

fn litellm_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/litellm/model_prices_and_context_window.json")
}

fn litellm(aliases: &[(&str, &str)]) -> PriceTable {
    let cfg = PricesConfig {
        file: litellm_path(),
        options: PriceOptions {
            provider_aliases: aliases
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            ..opts()
        },
        max_bytes: 8 << 20,
    };
    PriceTable::load(&cfg, &FileLimits::default()).unwrap_or_else(|p| panic!("{}", p.join("\n")))
}

/// What `tokens_in` and `tokens_out` cost at the table's price.
fn cost(
    t: &PriceTable,
    provider: &str,
    model: &str,
    tokens_in: u64,
    tokens_out: u64,
) -> (String, String, String) {
    let p = t
        .lookup(provider, model, Timestamp::host_now())
        .unwrap_or_else(|| panic!("{provider}/{model} not priced"));
    let i = p.input.times(tokens_in).unwrap();
    let o = p.output.times(tokens_out).unwrap();
    (
        i.to_decimal(),
        o.to_decimal(),
        i.checked_add(o).unwrap().to_decimal(),
    )
}

fn s3(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

#[test]
fn the_real_litellm_table_loads_and_prices_exactly() {
    let t = litellm(&[("google", "gemini")]);
    assert_eq!(t.format(), Some(TableFormat::Litellm));
    assert_eq!(t.currency(), "USD");
    // 3,882 entries of the pinned file (sample_spec aside) have a
    // provider and both costs (counted with Python's json).
    assert_eq!(t.entries(), 3882);
    // The expected amounts were computed from the JSON text with Python's
    // fractions.Fraction, apart from this code.
    assert_eq!(
        cost(&t, "openai", "gpt-4o", 1_000_000, 1_000_000),
        s3("2.5", "10", "12.5")
    );
    assert_eq!(
        cost(&t, "openai", "gpt-4o-mini", 1_000_000, 1_000_000),
        s3("0.15", "0.6", "0.75")
    );
    assert_eq!(
        cost(&t, "anthropic", "claude-sonnet-4-5", 123_457, 9_876),
        s3("0.370371", "0.14814", "0.518511")
    );
    // "gemini/gemini-2.5-flash" found as "gemini-2.5-flash", with the alias.
    assert_eq!(
        cost(&t, "google", "gemini-2.5-flash", 1_234_567, 7_654_321),
        s3("0.3703701", "19.1358025", "19.5061726")
    );
    assert_eq!(
        cost(&t, "deepseek", "deepseek-chat", 1_000_001, 333),
        s3("0.28000028", "0.00013986", "0.28014014")
    );
    // 24 decimal places held exactly (5.0000000000000004e-08 per token).
    assert_eq!(
        cost(&t, "novita", "nvidia/nemotron-3-nano-30b-a3b", 3, 7),
        s3(
            "0.000000150000000000000012",
            "0.00000140000000000000014",
            "0.000001550000000000000152"
        )
    );
    let p = t
        .lookup(
            "novita",
            "novita/nvidia/nemotron-3-nano-30b-a3b",
            Timestamp(0),
        )
        .unwrap();
    assert_eq!(p.input, Money(50_000_000_000_000_004_000));
    // The key as written is found too; an entry without costs is not priced.
    assert!(t
        .lookup("gemini", "gemini/gemini-2.5-flash", Timestamp(0))
        .is_some());
    assert_eq!(t.lookup("openai", "sample_spec", Timestamp(0)), None);
    // Another provider's model of the same name is not this one.
    assert_eq!(t.lookup("anthropic", "gpt-4o", Timestamp(0)), None);
}

// ---- the exactness of a million tasks ----

/// `text` (a decimal, written per 10^`per` tokens) as an exact fraction
/// per token: (numerator, power of ten of the denominator), read apart
/// from `Money::parse_decimal`.
fn exact(text: &str, per: u32) -> (BigInt, u32) {
    let (mantissa, exp) = match text.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap()),
        None => (text, 0),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: BigInt = format!("{whole}{frac}").parse().unwrap();
    let den = frac.len() as i32 - exp + per as i32;
    assert!(den >= 0, "{text}");
    (digits, den as u32)
}

#[test]
fn a_million_tasks_add_up_to_the_exact_rational_sum() {
    use rand::{Rng, SeedableRng};
    // About 6 s unoptimised, 1.3 s in release.
    let tasks = 1_000_000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let mut total = Money::ZERO;
    // Numerators summed per denominator 10^k, then one fraction.
    let mut sums: HashMap<u32, BigInt> = HashMap::new();
    for _ in 0..tasks {
        let tokens: u64 = rng.random_range(0..=10_000_000);
        let (text, shift, per) = if rng.random_bool(0.5) {
            // Ours: per million, up to 21 places.
            let places = rng.random_range(0..=21);
            let mut t = rng.random_range(0..100u32).to_string();
            if places > 0 {
                t.push('.');
                for _ in 0..places {
                    t.push(char::from(b'0' + rng.random_range(0..10u8)));
                }
            }
            (t, -6, 6)
        } else {
            // LiteLLM's: a per-token double, as Python writes it.
            let v: f64 = rng.random_range(1e-9..1e-4);
            (format!("{v:e}"), 0, 0)
        };
        let price = Money::parse_decimal(&text, shift).unwrap();
        total = total.checked_add(price.times(tokens).unwrap()).unwrap();
        let (num, den) = exact(&text, per);
        *sums.entry(den).or_default() += num * BigInt::from(tokens);
    }
    let ten = BigInt::from(10);
    let want = sums
        .into_iter()
        .fold(BigRational::from_integer(0.into()), |acc, (den, num)| {
            acc + BigRational::new(num, ten.pow(den))
        });
    let got = BigRational::new(BigInt::from(total.0), ten.pow(MONEY_DIGITS));
    assert_eq!(got, want);
    assert!(total.to_f64() > 0.0);
}

// ---- hostile files ----

fn json_problems(text: &str) -> String {
    match PriceTable::parse(text.as_bytes(), "p.json", &opts()) {
        Ok(_) => panic!("taken: {}", crate::text::shorten(text, 200)),
        Err(p) => p.join("\n"),
    }
}

fn entry(provider: &str, input: &str, output: &str) -> String {
    format!(
        r#"{{"litellm_provider": {provider}, "input_cost_per_token": {input}, "output_cost_per_token": {output}, "mode": "chat"}}"#
    )
}

#[test]
fn a_file_past_the_size_limit_is_refused_before_it_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.json");
    std::fs::write(&file, vec![b' '; 1025]).unwrap();
    let cfg = PricesConfig {
        file: file.clone(),
        options: opts(),
        max_bytes: 1024,
    };
    let p = PriceTable::load(&cfg, &FileLimits::default())
        .unwrap_err()
        .join("\n");
    assert!(
        p.starts_with("raise --prices.max-size (prices.max_size) or name a smaller price table: "),
        "{p}"
    );
    assert!(p.contains("is larger than 1024 bytes"), "{p}");
    // One byte less is read (and refused for what it holds: nothing).
    std::fs::write(&file, vec![b' '; 1024]).unwrap();
    let p = PriceTable::load(&cfg, &FileLimits::default())
        .unwrap_err()
        .join("\n");
    assert!(p.contains("is empty"), "{p}");
    let cfg = PricesConfig {
        file: dir.path().join("absent.json"),
        ..cfg
    };
    let p = PriceTable::load(&cfg, &FileLimits::default())
        .unwrap_err()
        .join("\n");
    assert!(p.starts_with("check --prices.file (prices.file): "), "{p}");
    let cfg = PricesConfig {
        file: dir.path().to_path_buf(),
        ..cfg
    };
    let p = PriceTable::load(&cfg, &FileLimits::default())
        .unwrap_err()
        .join("\n");
    assert!(p.contains("not a regular file"), "{p}");
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let deep = |open: &str, n: usize| open.repeat(n);
    // JSON: what is not used is skipped by serde_json's IgnoredAny, which
    // loops rather than recurses, so depth costs no stack; a used field or
    // an entry 100,000 deep is a wrong type, an unclosed one the end of
    // the file.
    let n = 100_000;
    let e = entry(r#""p""#, "1e-6", "1e-6");
    let closed = |open: &str, close: &str| format!("{}1{}", open.repeat(n), close.repeat(n));
    let p = json_problems(&format!(
        r#"{{"m": {{"input_cost_per_token": {}}}, "n": {e}}}"#,
        closed("[", "]")
    ));
    assert!(
        p.contains(r#"entry 0 ("m"): input_cost_per_token: is a list, not a JSON number"#),
        "{p}"
    );
    let p = json_problems(&format!(r#"{{"m": {}, "n": {e}}}"#, closed("[", "]")));
    assert!(
        p.contains(r#"entry 0 ("m"): is a list, not a model's object"#),
        "{p}"
    );
    let t = PriceTable::parse(
        format!(
            r#"{{"m": {{"supports": {}}}, "n": {e}}}"#,
            closed("{\"a\":", "}")
        )
        .as_bytes(),
        "p.json",
        &opts(),
    )
    .unwrap();
    assert_eq!(t.entries(), 1);
    for text in [
        format!(r#"{{"m": {{"input_cost_per_token": {}"#, deep("[", n)),
        format!(r#"{{"m": {{"supports": {}"#, deep("{\"a\":", n)),
        format!(r#"{{"m": {}"#, deep("[", n)),
    ] {
        let p = json_problems(&text);
        assert!(
            p.contains("EOF while parsing"),
            "{}",
            crate::text::shorten(&p, 300)
        );
    }
    // YAML, block and flow.
    let p = problems(&format!("currency: USD\nmodels: {}", deep("[", 100_000)));
    assert!(p.contains("is nested deeper than 64 levels"), "{p}");
    let p = problems(&deep("[", 100_000));
    assert!(p.contains("is nested deeper than 64 levels"), "{p}");
    // (600 levels: under --files.max-yaml-size, so the depth is what
    // refuses it.)
    let mut y = String::new();
    for i in 0..600 {
        y += &format!("{}a:\n", " ".repeat(i));
    }
    assert!(problems(&y).contains("is nested deeper than 64 levels"));
}

#[test]
fn bad_numbers_in_a_litellm_table_are_named() {
    let p = json_problems(&format!(
        r#"{{"a": {}, "b": {}, "c": {}, "d": {}, "e": {}, "f": {}, "g": {}}}"#,
        entry(r#""p""#, "-1e-6", "1e-6"),
        entry(r#""p""#, "1e300", "1e-6"),
        entry(r#""p""#, r#""1e-6""#, "true"),
        entry(r#""p""#, "[1]", "{}"),
        entry("3", "1e-6", "1e-6"),
        entry(r#""p""#, "0.011", "1e-28"),
        entry(r#""p""#, "18446744073709551616", "1e-6"),
    ));
    for want in [
        r#"p.json: entry 0 ("a"): input_cost_per_token: is negative"#,
        r#"entry 1 ("b"): input_cost_per_token: 1e300 is above the highest price taken"#,
        r#"entry 2 ("c"): input_cost_per_token: is a string ("1e-6"), not a JSON number"#,
        r#"entry 2 ("c"): output_cost_per_token: is a boolean, not a JSON number"#,
        r#"entry 3 ("d"): input_cost_per_token: is a list, not a JSON number"#,
        r#"entry 3 ("d"): output_cost_per_token: is an object, not a JSON number"#,
        r#"entry 4 ("e"): litellm_provider: is not a provider's name"#,
        r#"entry 5 ("f"): input_cost_per_token: 1.1e-2 is above the highest price taken"#,
        r#"entry 5 ("f"): output_cost_per_token: has more decimal places than a money amount holds"#,
        r#"entry 6 ("g"): input_cost_per_token: 1.8446744073709552e19 is above the highest price"#,
    ] {
        assert!(p.contains(want), "missing {want:?} in:\n{p}");
    }
    // NaN and Infinity are not JSON: the whole file is refused where they are.
    for bad in ["NaN", "Infinity", "-Infinity", "1e400"] {
        let p = json_problems(&format!(r#"{{"a": {}}}"#, entry(r#""p""#, bad, "1")));
        assert!(p.contains("line 1 column"), "{bad}: {p}");
    }
}

#[test]
fn a_litellm_entry_without_costs_is_skipped_and_a_broken_one_named() {
    let t = PriceTable::parse(
        format!(
            r#"{{"sample_spec": {{"litellm_provider": "x"}}, "img": {{"litellm_provider": "p", "input_cost_per_token": null, "output_cost_per_image": 0.04}}, "noprov": {{"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}}, "p/m": {}, "m2": {}}}"#,
            entry(r#""p""#, "1e-6", "0"),
            entry(r#""q""#, "0", "0")
        )
        .as_bytes(),
        "p.json",
        &opts(),
    )
    .unwrap();
    assert_eq!(t.entries(), 2);
    assert_eq!(t.lookup("p", "img", Timestamp(0)), None);
    assert_eq!(t.lookup("p", "m", Timestamp(0)), price("1", "0"));
    assert_eq!(t.lookup("q", "m2", Timestamp(0)), price("0", "0"));
    // A name given twice, an entry that is not an object.
    let p = json_problems(&format!(
        r#"{{"m": {e}, "m": {e}, "n": 3, "o": [1]}}"#,
        e = entry(r#""p""#, "1e-6", "1e-6")
    ));
    assert!(
        p.contains(r#"entry 1 ("m"): gives the price of this model again (first in entry 0)"#),
        "{p}"
    );
    assert!(
        p.contains(r#"entry 2 ("n"): is a number, not a model's object"#),
        "{p}"
    );
    assert!(
        p.contains(r#"entry 3 ("o"): is a list, not a model's object"#),
        "{p}"
    );
    let p = json_problems(
        r#"{"m": {"litellm_provider": "p", "input_cost_per_token": 1, "input_cost_per_token": 2, "output_cost_per_token": 0}}"#,
    );
    assert!(p.contains("input_cost_per_token: is given twice"), "{p}");
    // The exact key wins over a "provider/model" of the same short name.
    let t = PriceTable::parse(
        format!(
            r#"{{"p/m": {}, "m": {}}}"#,
            entry(r#""p""#, "1e-6", "1e-6"),
            entry(r#""p""#, "2e-6", "2e-6")
        )
        .as_bytes(),
        "p.json",
        &opts(),
    )
    .unwrap();
    assert_eq!(t.lookup("p", "m", Timestamp(0)), price("2", "2"));
    assert_eq!(t.lookup("p", "p/m", Timestamp(0)), price("1", "1"));
}

#[test]
fn neither_format_nor_nothing_is_a_table() {
    assert!(json_problems("").contains("is empty"));
    assert!(json_problems(" \n\t").contains("is empty"));
    assert!(json_problems("\u{feff}").contains("is empty"));
    assert!(json_problems("{}").contains("holds no priced model"));
    assert!(json_problems(r#"{"a": {"x": 1}}"#).contains("holds no priced model"));
    assert!(json_problems("[1, 2]").contains("is neither a ClawMesh price table"));
    assert!(json_problems("hello").contains("is neither a ClawMesh price table"));
    assert!(json_problems("a: 1\nb: 2\n").contains("is neither a ClawMesh price table"));
    assert!(json_problems("{\"a\": ").contains("EOF while parsing"));
    assert!(json_problems("{} {}").contains("trailing characters"));
    assert!(json_problems("currency: [").contains("is not valid YAML"));
    let p = PriceTable::parse(b"\xff\xfe{}", "p.json", &opts())
        .unwrap_err()
        .join("\n");
    assert!(p.contains("is not UTF-8 text"), "{p}");
    // A byte order mark is read past, in either format.
    let t = PriceTable::parse(
        format!("\u{feff}{{\"m\": {}}}", entry(r#""p""#, "1e-6", "1e-6")).as_bytes(),
        "p.json",
        &opts(),
    )
    .unwrap();
    assert_eq!(t.entries(), 1);
    let t = PriceTable::parse(
        "\u{feff}currency: USD\nmodels: [{provider: p, model: m, input_per_million: 1, output_per_million: 1}]\n".as_bytes(),
        "p.yml",
        &opts(),
    )
    .unwrap();
    assert_eq!(t.entries(), 1);
}

/// A LiteLLM-like table of `n` models, each priced, in about 8 bytes
/// more than `n` × 28.
fn many_json(n: usize) -> String {
    let mut s = String::with_capacity(n * 40);
    s.push('{');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s += &format!(
            r#""{i}":{{"litellm_provider":"p","input_cost_per_token":1e-6,"output_cost_per_token":0}}"#
        );
    }
    s.push('}');
    s
}

#[test]
fn a_million_models_are_refused_at_the_limit() {
    let text = many_json(1_000_000);
    let started = std::time::Instant::now();
    let p = json_problems(&text);
    assert!(
        p.contains("holds more than 10000 models (--prices.max-entries): raise it"),
        "{p}"
    );
    // It stops there: it reads a tenth of the file, not all of it.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let o = PriceOptions {
        max_entries: 1000,
        ..opts()
    };
    let small = many_json(1000);
    assert_eq!(
        PriceTable::parse(small.as_bytes(), "p.json", &o)
            .unwrap()
            .entries(),
        1000
    );
    let p = PriceTable::parse(many_json(1001).as_bytes(), "p.json", &o)
        .unwrap_err()
        .join("\n");
    assert!(p.contains("holds more than 1000 models"), "{p}");
    let mut y = String::from("currency: USD\nmodels:\n");
    for i in 0..1001 {
        y += &format!(
            "- {{provider: p, model: m{i}, input_per_million: 1, output_per_million: 1}}\n"
        );
    }
    let p = PriceTable::parse(y.as_bytes(), "p.yml", &o)
        .unwrap_err()
        .join("\n");
    assert!(
        p.contains("models: holds 1001 entries, more than --prices.max-entries (1000)"),
        "{p}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn any_bytes_are_a_table_or_problems_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = PriceTable::parse(&bytes, "p", &opts());
    }

    #[test]
    fn mangled_tables_never_panic(cut in 0usize..400, byte in any::<u8>(), at in 0usize..400) {
        for base in [EXAMPLE.to_string(), format!(r#"{{"p/m": {}, "n": {}}}"#, entry(r#""p""#, "1e-6", "2.5e-6"), entry(r#""q""#, "0", "1"))] {
            let mut b = base.into_bytes();
            b.truncate(cut.min(b.len()));
            if !b.is_empty() {
                let i = at % b.len();
                b[i] = byte;
            }
            let _ = PriceTable::parse(&b, "p", &opts());
        }
    }
}

/// Peak memory (VmHWM, KiB) of this process so far.
fn peak_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The figures of the report: parse time and peak memory of the real
/// table and of hostile ones. Alone, so that the peak is this test's:
/// `cargo test --release --lib prices::tests::measure -- --ignored --exact --nocapture`
/// with the name of one of them.
fn measure(name: &str, text: &str, max_entries: usize) {
    let o = PriceOptions {
        max_entries,
        ..opts()
    };
    let before = peak_kib();
    let started = std::time::Instant::now();
    let r = PriceTable::parse(text.as_bytes(), "p", &o);
    let took = started.elapsed();
    let after = peak_kib();
    println!(
        "{name}: {} bytes, {:?}, parse {took:?}, peak +{} KiB (VmHWM {before} -> {after} KiB)",
        text.len(),
        r.as_ref()
            .map(|t| t.entries())
            .map_err(|p| crate::text::shorten(&p.join("; "), 120)),
        after - before
    );
}

#[test]
#[ignore]
fn measure_litellm() {
    let text = std::fs::read_to_string(litellm_path()).unwrap();
    measure("litellm", &text, 100_000);
}

#[test]
#[ignore]
fn measure_million_json() {
    let text = many_json(1_000_000);
    measure("10^6 json models, limit 100000", &text, 100_000);
}

#[test]
#[ignore]
fn measure_million_json_unlimited() {
    let text = many_json(1_000_000);
    measure("10^6 json models, limit 10^7", &text, 10_000_000);
}

#[test]
#[ignore]
fn measure_million_yaml() {
    let mut y = String::from("currency: USD\nmodels:\n");
    for _ in 0..1_000_000 {
        y += "- {}\n";
    }
    measure("10^6 yaml models", &y, 100_000);
}

/// A YAML table past `--files.max-yaml-size` is refused before the YAML
/// parser sees it (the parser holds about 50 times the text), however it
/// is written; LiteLLM's JSON of the same size is read (streaming).
#[test]
fn a_yaml_table_past_the_yaml_limit_is_refused_before_parsing() {
    let limits = crate::files::FileLimits::default();
    let mut yaml = String::from("currency: USD\nmodels:\n");
    while yaml.len() as u64 <= limits.max_yaml_bytes {
        yaml.push_str("  - {}\n");
    }
    let flow = format!(
        r#"{{"currency": "USD", "models": [{}{{}}]}}"#,
        "{}, ".repeat(70_000)
    );
    for (what, text) in [("block", &yaml), ("flow", &flow)] {
        let t = std::time::Instant::now();
        let e = PriceTable::parse(text.as_bytes(), "big.yaml", &PriceOptions::default())
            .unwrap_err()
            .join("\n");
        assert!(e.contains("--files.max-yaml-size"), "{what}: {e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{what} was parsed"
        );
    }
    // Just under the limit: parsed (and refused for what it holds).
    let mut small = String::from("currency: USD\nmodels:\n");
    while small.len() as u64 + 40 < limits.max_yaml_bytes {
        small.push_str("  - {}\n");
    }
    let e = PriceTable::parse(small.as_bytes(), "small.yaml", &PriceOptions::default())
        .unwrap_err()
        .join("\n");
    assert!(!e.contains("--files.max-yaml-size"), "{e}");
}
