//! Hostile price tables beyond `tests.rs`: what an adversary (or a bad
//! generator) can put in a file the operator points at, each refused with
//! a short message or read exactly, never a panic, in bounded time and
//! memory.

use super::*;
use crate::api::types::Timestamp;
use std::time::{Duration, Instant};

fn opts() -> PriceOptions {
    PriceOptions::default()
}

fn parse(text: &str) -> Result<PriceTable, Vec<String>> {
    PriceTable::parse(text.as_bytes(), "p", &opts())
}

fn refused(text: &str) -> String {
    match parse(text) {
        Ok(t) => panic!(
            "taken ({} entries): {}",
            t.entries(),
            crate::text::shorten(text, 200)
        ),
        Err(p) => p.join("\n"),
    }
}

fn at(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

fn now() -> Timestamp {
    at("2026-12-06T12:00:00Z")
}

fn entry(provider: &str, input: &str, output: &str) -> String {
    format!(
        r#"{{"litellm_provider": {provider}, "input_cost_per_token": {input}, "output_cost_per_token": {output}}}"#
    )
}

/// A YAML "billion laughs": a few KB whose aliases expand to `leaves` ×
/// `fan`² scalars. serde_norway bounds alias jumps at 100 × the events,
/// not the nodes a jump replays, so a 1,000-scalar anchor replayed 10^4
/// times is 10^7 values (about a GB) from 5 KB of text.
fn laughs(leaves: usize, fan: usize) -> String {
    format!(
        "currency: USD\nmodels: []\nx: &a [{}]\ny: &b [{}]\nz: [{}]\n",
        vec!["0"; leaves].join(","),
        vec!["*a"; fan].join(","),
        vec!["*b"; fan].join(","),
    )
}

/// Found: a few KB of YAML aliases expanded into serde_norway's `Value`
/// (10^6 nodes here, ~100 MB; 10^7 with a fan of 100, past the shipped
/// 64Mi many times over) before any check of what the table holds. The
/// `--files.max-yaml-size` bound is on the text, which this is far under.
#[test]
fn a_yaml_alias_bomb_is_refused_before_it_is_expanded() {
    let text = laughs(1000, 32);
    assert!(text.len() < 8 << 10, "{}", text.len());
    let t = Instant::now();
    let e = refused(&text);
    assert!(e.contains("alias"), "not refused for its aliases: {e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A few aliases that stay small are YAML as usual: taken.
    let shared = "currency: USD\nmodels:\n  - &m {provider: openai, model: a, input_per_million: 1, output_per_million: 2}\n  - {provider: openai, model: b, input_per_million: 1, output_per_million: 2}\n";
    parse(shared).unwrap_or_else(|p| panic!("{}", p.join("\n")));
}

/// Found: a table of no model (`models: []`, or `models:` left empty) was
/// taken, and with 0 entries the fleet treats it as no table at all: no
/// spend and no unpriced tokens either (ClawMeshUnpricedTokens silent),
/// while `clawmesh_exporter_prices_info` says a table is in force and
/// budgets are accepted (they then count nothing, for ever). LiteLLM's
/// format already refuses a table that prices nothing.
#[test]
fn a_table_of_no_model_is_refused_not_taken_as_no_table() {
    for text in [
        "currency: USD\nmodels: []\n",
        "currency: USD\nmodels:\n",
        r#"{"currency": "USD", "models": []}"#,
    ] {
        let e = refused(text);
        assert!(e.contains("no model"), "{text:?}: {e}");
    }
}

/// 8 MiB of one JSON key or value: read (a name is a name) or refused with
/// a message that quotes at most a few dozen characters of it.
#[test]
fn a_giant_json_key_or_value_is_read_or_refused_shortly() {
    let giant = "a".repeat(8 << 20);
    let t = Instant::now();
    // A name past the API's 128 bytes is never asked for (the API's
    // reading hashes it): read, and not kept.
    let normal = entry("\"openai\"", "1e-6", "2e-6");
    let text = format!("{{\"{giant}\": {normal}, \"m\": {normal}}}");
    let table = parse(&text).unwrap_or_else(|p| panic!("{}", crate::text::shorten(&p[0], 200)));
    assert!(table.lookup("openai", &giant, now()).is_none());
    assert!(table.lookup("openai", "m", now()).is_some());
    assert_eq!(table.entries(), 1);
    let text = format!(
        "{{\"m\": {}, \"n\": {normal}}}",
        entry(&format!("\"{giant}\""), "1e-6", "2e-6")
    );
    let table = parse(&text).unwrap_or_else(|p| panic!("{}", crate::text::shorten(&p[0], 200)));
    assert!(table.lookup(&giant, "m", now()).is_none());
    assert_eq!(table.entries(), 1);
    for text in [
        format!(
            "{{\"{giant}\": {}}}",
            entry("\"openai\"", &format!("\"{giant}\""), "1")
        ),
        format!("{{\"{giant}\": {}}}", entry("1", "1e-6", "1e-6")),
        format!(
            "{{\"m\": {}}}",
            entry("\"openai\"", &format!("1{}", "0".repeat(8 << 20)), "1")
        ),
        format!(
            "{{\"m\": {}}}",
            entry("\"openai\"", &format!("0.{}1", "0".repeat(8 << 20)), "1")
        ),
        format!("{{\"{giant}\": 1}}"),
    ] {
        let e = refused(&text);
        assert!(
            e.len() < 1000,
            "{} bytes: {}",
            e.len(),
            crate::text::shorten(&e, 300)
        );
    }
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// A field twice in one entry, numbers at and past a double's ends, keys
/// with NUL, escapes and broken surrogates.
#[test]
fn json_duplicates_extreme_numbers_and_odd_keys() {
    let e = refused(
        r#"{"m": {"litellm_provider": "openai", "input_cost_per_token": 1e-6, "input_cost_per_token": 0, "output_cost_per_token": 1e-6}}"#,
    );
    assert!(e.contains("input_cost_per_token: is given twice"), "{e}");
    let e = refused(
        r#"{"m": {"litellm_provider": "openai", "litellm_provider": "azure", "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}}"#,
    );
    assert!(e.contains("litellm_provider: is given twice"), "{e}");
    // The same model key twice: the second is named.
    let one = entry("\"openai\"", "1e-6", "1e-6");
    let e = refused(&format!(r#"{{"m": {one}, "m": {one}}}"#));
    assert!(e.contains("again"), "{e}");

    let price = |text: &str| -> Result<Money, String> {
        parse(&format!("{{\"m\": {}}}", entry("\"openai\"", text, "0")))
            .map(|t| t.lookup("openai", "m", now()).unwrap().input)
            .map_err(|p| p.join("; "))
    };
    // Python reads these as the doubles 0.0 and 1e-07; so does the table.
    assert_eq!(price("1e-400"), Ok(Money::ZERO));
    assert_eq!(price("0e999999"), Ok(Money::ZERO));
    assert_eq!(
        price("1.0000000000000000000000000001e-7"),
        Ok(Money::parse_decimal("1e-7", 0).unwrap())
    );
    assert_eq!(
        price("5.0000000000000004e-08"),
        Ok(Money::parse_decimal("5.0000000000000004e-08", 0).unwrap())
    );
    // The smallest double has more places than a unit holds; past a
    // double's range is not JSON serde_json reads: both refused, in a line.
    for text in ["5e-324", "1e400", "-0", "-1e-6"] {
        let e = price(text).unwrap_err();
        assert!(!e.contains('\n') && e.len() < 400, "{text}: {e}");
    }

    let t = parse(&format!(
        r#"{{"a\u0000b": {one}, "\u00e9t\u00e9": {one}, "x\ty": {one}}}"#
    ))
    .unwrap();
    assert!(t.lookup("openai", "a\0b", now()).is_some());
    assert!(t.lookup("openai", "été", now()).is_some());
    assert!(t.lookup("openai", "a", now()).is_none());
    for key in [r"\ud800", r"\udc00x", r"\ud800\u0041", r"\u00"] {
        let e = refused(&format!(r#"{{"{key}": {one}}}"#));
        assert!(e.contains("not valid JSON"), "{key}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

/// YAML features a price table has no use for: tags, merge keys, several
/// documents, odd currencies, dates at the ends of time.
#[test]
fn yaml_tags_merges_documents_currencies_and_dates() {
    let e = refused("currency: USD\nmodels:\n  - {provider: a, model: b, input_per_million: !!binary aGVsbG8=, output_per_million: 1}\n");
    assert!(e.contains("input_per_million"), "{e}");
    let e = refused("currency: USD\nbase: &b {provider: a, input_per_million: 1, output_per_million: 1}\nmodels:\n  - {<<: *b, model: m}\n");
    assert!(e.contains("<<"), "{e}");
    let e = refused("currency: USD\nmodels:\n  - {provider: a, model: b, input_per_million: 1, output_per_million: 1}\n---\ncurrency: EUR\nmodels: []\n");
    assert!(!e.contains('\n'), "{e}");
    for c in [
        "US",
        "USDX",
        "usd",
        "U$D",
        "ÄÖÜ",
        "\"\u{0}\u{0}\u{0}\"",
        "123",
        "~",
    ] {
        let e = refused(&format!(
            "currency: {c}\nmodels:\n  - {{provider: a, model: b, input_per_million: 1, output_per_million: 1}}\n"
        ));
        assert!(
            e.contains("currency") || e.contains("control characters"),
            "{c}: {e}"
        );
    }
    let dated = |since: &str| {
        parse(&format!(
            "currency: USD\nmodels:\n  - {{provider: a, model: b, since: \"{since}\", input_per_million: 1, output_per_million: 1}}\n"
        ))
    };
    // In force from year 0 on; not yet in force until 9999.
    let t = dated("0000-01-01").unwrap();
    assert!(t.lookup("a", "b", now()).is_some());
    let t = dated("9999-12-31T23:59:59Z").unwrap();
    assert!(t.lookup("a", "b", now()).is_none());
    assert!(t.lookup("a", "b", at("9999-12-31T23:59:59Z")).is_some());
    // A leap second is the next day's first instant.
    let t = dated("2026-12-31T23:59:60Z").unwrap();
    assert!(t
        .lookup("a", "b", at("2026-12-31T23:59:59.999999Z"))
        .is_none());
    assert!(t.lookup("a", "b", at("2027-01-01T00:00:00Z")).is_some());
    for bad in [
        "+275760-01-01",
        "10000-01-01",
        "2026-02-30",
        "2026-12-01T25:00:00Z",
        "",
    ] {
        assert!(dated(bad).is_err(), "{bad}");
    }
}

fn patterns(n: usize, pattern: impl Fn(usize) -> String) -> PriceTable {
    let mut y = String::from("currency: USD\nmodels:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - {{provider: p, model: \"{}\", input_per_million: 1, output_per_million: 1}}\n",
            pattern(i)
        ));
    }
    let opts = PriceOptions {
        max_entries: n.max(1),
        ..opts()
    };
    let limits = crate::files::FileLimits {
        max_yaml_bytes: u64::MAX,
        ..Default::default()
    };
    PriceTable::parse_with(y.as_bytes(), "p", &opts, &limits)
        .unwrap_or_else(|p| panic!("{}", p.join("\n")))
}

/// `*`, `**`, `a*b*c*` against 128-character names: matched as a glob
/// should, and a backtracking pattern costs no more than a scan.
#[test]
fn patterns_match_like_globs_without_quadratic_cost() {
    let t = patterns(4, |i| {
        ["*", "**", "a*b*c*", "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b"][i].into()
    });
    let long_a = "a".repeat(128);
    let abc = format!("a{}b{}c", "x".repeat(60), "y".repeat(60));
    assert!(t.lookup("p", &long_a, now()).is_some());
    assert!(t.lookup("p", "", now()).is_some());
    assert!(t.lookup("p", &abc, now()).is_some());
    assert!(t.lookup("q", &abc, now()).is_none());
    // Only the backtracking pattern, against a name it almost matches.
    let t = patterns(1, |_| format!("{}b", "*a".repeat(60)));
    let started = Instant::now();
    for _ in 0..1000 {
        assert!(t.lookup("p", &long_a, now()).is_none());
    }
    let each = started.elapsed() / 1000;
    assert!(
        each < Duration::from_micros(200),
        "one lookup took {each:?}"
    );
}

/// The cost of a lookup among `n` patterns none of which matches (an
/// unpriced model is looked up at every token count of its tasks); 2,600
/// backtracking patterns are what fits in --files.max-yaml-size.
/// `cargo test --release --lib prices::attack::measure_patterns -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_patterns() {
    for n in [2_600, 100_000] {
        let t = patterns(n, |i| format!("model-{i}-*"));
        let name = format!("model-x-{}", "z".repeat(120));
        let started = Instant::now();
        for _ in 0..10 {
            assert!(t.lookup("p", &name, now()).is_none());
        }
        println!(
            "{n} patterns, no match: {:?} a lookup",
            started.elapsed() / 10
        );
        let t = patterns(n, |i| format!("{}b{i}", "*a".repeat(20)));
        let name = "a".repeat(128);
        let started = Instant::now();
        for _ in 0..3 {
            assert!(t.lookup("p", &name, now()).is_none());
        }
        println!(
            "{n} backtracking patterns, no match: {:?} a lookup",
            started.elapsed() / 3
        );
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

fn measure(name: &str, text: &[u8]) {
    let before = peak_kib();
    let started = Instant::now();
    let r = PriceTable::parse(text, "p", &opts());
    println!(
        "{name}: {} bytes, {:?}, {:?}, peak +{} KiB (VmHWM {} KiB)",
        text.len(),
        r.as_ref()
            .map(|t| t.entries())
            .map_err(|p| crate::text::shorten(&p.join("; "), 120)),
        started.elapsed(),
        peak_kib() - before,
        peak_kib()
    );
}

/// The worst files under the default limits, each alone (the peak is the
/// process's): `cargo test --release --lib prices::attack::measure_worst_json -- --ignored --exact --nocapture`
#[test]
#[ignore]
fn measure_worst_json() {
    // As many models as fit (each at least ~85 bytes), each
    // "p/<name>" (kept twice: as written and as its short name), to
    // just under 8 MiB.
    let n = 90_000;
    let per = ((8 << 20) - n * 90) / n;
    let mut s = String::from("{");
    for i in 0..n {
        s.push_str(&format!(
            "\"p/{i:0per$}\":{{\"litellm_provider\":\"p\",\"input_cost_per_token\":0,\"output_cost_per_token\":0}},"
        ));
    }
    s.pop();
    s.push('}');
    assert!(s.len() <= 8 << 20, "{}", s.len());
    measure("worst json", s.as_bytes());
}

#[test]
#[ignore]
fn measure_worst_yaml() {
    // Flow entries of the shortest form, to just under 256 KiB.
    let mut s = String::from("currency: USD\nmodels:\n");
    let mut i = 0;
    while s.len() < (256 << 10) - 100 {
        s.push_str(&format!(
            "- {{provider: p, model: m{i}, input_per_million: 1, output_per_million: 1}}\n"
        ));
        i += 1;
    }
    measure("worst yaml", s.as_bytes());
}

#[test]
#[ignore]
fn measure_alias_bomb() {
    measure("alias bomb 10^6", laughs(1000, 32).as_bytes());
    measure("alias bomb 10^7", laughs(1000, 100).as_bytes());
}
