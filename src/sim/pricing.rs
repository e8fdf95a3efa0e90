//! What tokens cost, as the simulator reckons it for its ground truth:
//! [`SimPrice`] lists, their exact integer form, and the price file the
//! exporter reads ([`prices_yaml`]).
//!
//! Deliberately independent of `crate::prices` (the exporter's table and
//! arithmetic): the truth is computed by other code, so a bug shared by
//! both cannot pass unseen. Amounts are integers of 10^-21 currency per
//! million tokens, i.e. 10^-27 per token: the spend of `n` tokens is
//! `n × price` exactly, in `u128`, with no rounding anywhere.

use serde::{Deserialize, Serialize};

/// Fractional digits of a price per million tokens the simulator keeps
/// (what our price-table format allows).
pub const PRICE_DIGITS: usize = 21;
/// Fractional digits of a spend amount: per-million digits plus the six of
/// "per million".
pub const SPEND_DIGITS: usize = PRICE_DIGITS + 6;
/// The highest price per million tokens our price-table format accepts;
/// the simulator refuses what the exporter would refuse.
const MAX_PER_MILLION: u128 = 10_000;

/// One price of a model, as tests and the demo hand it to the simulator
/// (and `/_sim/prices` takes it as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimPrice {
    /// A ClawMesh provider name (an agent's `config.model_provider`).
    pub provider: String,
    /// An exact model name: the simulator's list has no patterns.
    pub model: String,
    /// In force from this instant on (RFC 3339, the API's clock); absent:
    /// always. A task finishing exactly at `since` takes this price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Price of a million input tokens: decimal text ("3", "1.25"), at most
    /// 21 fractional digits.
    pub input_per_million: String,
    pub output_per_million: String,
}

impl SimPrice {
    /// A price in force always.
    pub fn new(provider: &str, model: &str, input: &str, output: &str) -> SimPrice {
        SimPrice {
            provider: provider.to_string(),
            model: model.to_string(),
            since: None,
            input_per_million: input.to_string(),
            output_per_million: output.to_string(),
        }
    }
}

/// Realistic list prices in USD of the simulator's four models (see
/// deploy/prices.example.yaml, which carries them with their date). The
/// local model costs nothing: a price of zero is still a price.
pub fn default_prices() -> Vec<SimPrice> {
    vec![
        SimPrice::new("anthropic", "claude-sonnet-4", "3", "15"),
        SimPrice::new("openai", "gpt-5", "1.25", "10"),
        SimPrice::new("google", "gemini-2.5-pro", "1.25", "10"),
        SimPrice::new("local", "llama-3.3-70b", "0", "0"),
    ]
}

/// `prices` as a price file in our YAML format (SPEC21.md), so that a test
/// or the demo hands the exporter the very list the truth is computed with.
/// Every string is quoted (a JSON string is a YAML double-quoted scalar),
/// so decimals stay exact text and no name is read as another type.
pub fn prices_yaml(prices: &[SimPrice], currency: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut out = String::from("# clawmesh price table, written by the simulator\n");
    out.push_str(&format!("currency: {}\nmodels:\n", q(currency)));
    if prices.is_empty() {
        // `models:` alone would be null, not an empty list.
        out.truncate(out.len() - 1);
        out.push_str(" []\n");
    }
    for p in prices {
        out.push_str(&format!("  - provider: {}\n", q(&p.provider)));
        out.push_str(&format!("    model: {}\n", q(&p.model)));
        if let Some(s) = &p.since {
            out.push_str(&format!("    since: {}\n", q(s)));
        }
        out.push_str(&format!(
            "    input_per_million: {}\n",
            q(&p.input_per_million)
        ));
        out.push_str(&format!(
            "    output_per_million: {}\n",
            q(&p.output_per_million)
        ));
    }
    out
}

/// A decimal price per million tokens as an integer of 10^-21 (plain
/// digits with an optional fraction: the simulator writes its own lists,
/// so it needs no exponents).
pub fn parse_per_million(s: &str) -> Result<u128, String> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (s.contains('.') && frac.is_empty()) {
        return Err(format!(
            "{s:?} is not a decimal: write digits with an optional fraction, e.g. \"1.25\""
        ));
    }
    if frac.len() > PRICE_DIGITS {
        return Err(format!(
            "{s:?} has {} decimal places; at most {PRICE_DIGITS} are kept",
            frac.len()
        ));
    }
    let int = int.trim_start_matches('0');
    if int.len() > 5 || int.parse::<u128>().unwrap_or(0) > MAX_PER_MILLION {
        return Err(format!(
            "{s:?} is above {MAX_PER_MILLION} per million tokens"
        ));
    }
    let whole: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|e| format!("{s:?}: {e}"))?
    };
    let mut f: u128 = 0;
    for (i, b) in frac.bytes().enumerate() {
        f += u128::from(b - b'0') * 10u128.pow((PRICE_DIGITS - 1 - i) as u32);
    }
    let v = whole * 10u128.pow(PRICE_DIGITS as u32) + f;
    if v > MAX_PER_MILLION * 10u128.pow(PRICE_DIGITS as u32) {
        return Err(format!(
            "{s:?} is above {MAX_PER_MILLION} per million tokens"
        ));
    }
    Ok(v)
}

/// A spend in 10^-27 currency units as exact decimal text in currency units,
/// without trailing zeros ("0.0453", "12", "0").
pub fn format_spend(v: u128) -> String {
    let scale = 10u128.pow(SPEND_DIGITS as u32);
    let (int, frac) = (v / scale, v % scale);
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:0width$}", width = SPEND_DIGITS);
    format!("{int}.{}", f.trim_end_matches('0'))
}

/// One parsed entry: (provider, model, since in µs of the API's clock,
/// input and output per million in 10^-21).
type Entry = (String, String, Option<i64>, u128, u128);

/// A [`SimPrice`] list checked and in integer form.
#[derive(Clone, Debug, Default)]
pub struct PriceBook {
    entries: Vec<Entry>,
}

impl PriceBook {
    /// Refuses the whole list when an entry is bad, naming it and its field.
    pub fn new(prices: &[SimPrice]) -> Result<PriceBook, String> {
        let mut entries: Vec<Entry> = Vec::with_capacity(prices.len());
        for (i, p) in prices.iter().enumerate() {
            let at = |field: &str, e: String| {
                format!("price {i} ({}/{}), {field}: {e}", p.provider, p.model)
            };
            let since = match &p.since {
                None => None,
                Some(s) => Some(
                    chrono::DateTime::parse_from_rfc3339(s)
                        .map_err(|e| at("since", format!("{s:?} is not RFC 3339 ({e})")))?
                        .timestamp_micros(),
                ),
            };
            let input =
                parse_per_million(&p.input_per_million).map_err(|e| at("input_per_million", e))?;
            let output = parse_per_million(&p.output_per_million)
                .map_err(|e| at("output_per_million", e))?;
            if entries
                .iter()
                .any(|e| e.0 == p.provider && e.1 == p.model && e.2 == since)
            {
                return Err(at(
                    "since",
                    "another price of this model has the same `since`: keep one".into(),
                ));
            }
            entries.push((p.provider.clone(), p.model.clone(), since, input, output));
        }
        Ok(PriceBook { entries })
    }

    /// The (input, output) price per million in 10^-21 of this exact
    /// provider and model in force at `at_us`: the latest `since` at or
    /// before it (absent `since` is before everything). `None`: unpriced.
    pub fn lookup(&self, provider: &str, model: &str, at_us: i64) -> Option<(u128, u128)> {
        self.entries
            .iter()
            .filter(|e| e.0 == provider && e.1 == model)
            .filter(|e| e.2.is_none_or(|s| s <= at_us))
            .max_by_key(|e| e.2.map_or(i128::MIN, i128::from))
            .map(|e| (e.3, e.4))
    }
}
