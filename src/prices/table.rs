//! The table itself, its two file formats and its settings.

use super::{Money, MONEY_DIGITS};
use crate::api::types::{Timestamp, MAX_TEXT_LEN};
use crate::files::{FileError, FileLimits};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_norway::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

/// The highest price taken: 10,000 per million tokens (0.01 per token),
/// far above any model's; a larger one is a unit mistake (per token
/// written where per million was meant, or 1e300).
pub const MAX_PER_MILLION: u32 = 10_000;
const MAX_PRICE: Money = Money(MAX_PER_MILLION as u128 * 10u128.pow(MONEY_DIGITS - 6));

/// Problems listed at most; the rest are counted (a generated file with a
/// systematic mistake would otherwise print 100,000 lines).
const MAX_PROBLEMS: usize = 20;

/// The most prices a table holds by default (`--prices.max-entries`):
/// LiteLLM's table has about 4,900 models; 10,000 at the longest names
/// the API reads, in a 6 MiB file, fit the shipped 64Mi beside the
/// exporter, through a reload that holds two (BENCHMARKS.md).
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// A model's price per token of each kind, in [`Money`] units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: Money,
    pub output: Money,
}

/// Which file format a table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Our own YAML (docs/spend.md).
    Clawmesh,
    /// LiteLLM's `model_prices_and_context_window.json`.
    Litellm,
}

impl TableFormat {
    pub fn name(self) -> &'static str {
        match self {
            TableFormat::Clawmesh => "clawmesh",
            TableFormat::Litellm => "litellm",
        }
    }
}

/// What reading a table needs beyond its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceOptions {
    /// ClawMesh provider name -> the table's (`google` -> `gemini`).
    pub provider_aliases: BTreeMap<String, String>,
    /// Entries (models × price dates) at most; past it the file is refused.
    /// In a LiteLLM table every model counts, priced or not.
    pub max_entries: usize,
    /// The currency of a LiteLLM table (it does not say; it is USD).
    pub litellm_currency: String,
}

impl Default for PriceOptions {
    fn default() -> Self {
        PriceOptions {
            provider_aliases: BTreeMap::new(),
            max_entries: DEFAULT_MAX_ENTRIES,
            litellm_currency: "USD".into(),
        }
    }
}

/// Where the table comes from: a file (`--prices.file`, or `prices.file`
/// in the config file) and how it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricesConfig {
    pub file: PathBuf,
    pub options: PriceOptions,
    /// The largest price file read (LiteLLM's is 3.4 MB).
    pub max_bytes: u64,
}

/// The `--prices.*` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PricesArgs {
    /// A price table: our own YAML, or LiteLLM's model_prices_and_context_window.json as it is (see docs/spend.md). Reloaded with the configuration; without one, nothing is priced.
    #[arg(long = "prices.file", env = "CLAWMESH_PRICES_FILE")]
    pub file: Option<PathBuf>,
    /// A ClawMesh provider's name in the price table, as PROVIDER=TABLE_PROVIDER (e.g. google=gemini); repeatable.
    #[arg(
        long = "prices.provider-alias",
        env = "CLAWMESH_PRICES_PROVIDER_ALIAS",
        value_delimiter = ','
    )]
    pub provider_alias: Vec<String>,
    /// The most entries (models × price dates) a price table may hold; a larger one is refused.
    #[arg(
        long = "prices.max-entries",
        env = "CLAWMESH_PRICES_MAX_ENTRIES",
        default_value_t = DEFAULT_MAX_ENTRIES
    )]
    pub max_entries: usize,
    /// The largest price file read (LiteLLM's table is about 3.4 MB).
    #[arg(long = "prices.max-size", env = "CLAWMESH_PRICES_MAX_SIZE", default_value = "6MiB", value_parser = crate::units::parse_size)]
    pub max_size: u64,
}

impl PricesArgs {
    /// The table the flags name (`None` without `--prices.file`), aliases
    /// parsed; the error is one line naming the flag. The config file's
    /// `prices:` is merged by the caller (flags win).
    pub fn config(&self) -> Result<Option<PricesConfig>, String> {
        let provider_aliases = parse_aliases(&self.provider_alias)?;
        if self.max_entries == 0 {
            return Err("--prices.max-entries: must be at least 1, e.g. 10000".into());
        }
        if self.max_size == 0 {
            return Err("--prices.max-size: must be at least 1 byte, e.g. 6MiB".into());
        }
        Ok(self.file.as_ref().map(|file| PricesConfig {
            file: file.clone(),
            options: PriceOptions {
                provider_aliases,
                max_entries: self.max_entries,
                ..PriceOptions::default()
            },
            max_bytes: self.max_size,
        }))
    }
}

/// `PROVIDER=TABLE_PROVIDER` pairs (`--prices.provider-alias`): trimmed;
/// a pair given again with the same table is the same pair, with another
/// it is refused.
pub fn parse_aliases(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let parsed = pair
            .split_once('=')
            .map(|(p, t)| (p.trim(), t.trim()))
            .filter(|(p, t)| !p.is_empty() && !t.is_empty());
        let Some((provider, table)) = parsed else {
            return Err(format!(
                "--prices.provider-alias {:?}: write PROVIDER=TABLE_PROVIDER, a ClawMesh provider and the price table's name for it (e.g. google=gemini)",
                crate::text::shorten(pair, 80)
            ));
        };
        if let Some(other) = out.insert(provider.to_string(), table.to_string()) {
            if other != table {
                return Err(format!(
                    "--prices.provider-alias: {:?} is given twice ({} and {}): give it once",
                    crate::text::shorten(provider, 80),
                    crate::text::shorten(&other, 80),
                    crate::text::shorten(table, 80)
                ));
            }
        }
    }
    Ok(out)
}

/// Prices per provider and model, each from a date on.
///
/// Built for `lookup`, which runs once per priced token count: one hash
/// lookup per provider and model (borrowed `&str` keys, nothing
/// allocated), patterns only when no exact model matches, and a binary
/// search among a model's dated prices.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    currency: String,
    format: Option<TableFormat>,
    entries: usize,
    /// Table provider -> its models; provider "*" under "*".
    providers: HashMap<String, Models>,
    /// ClawMesh provider -> table provider.
    aliases: HashMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Models {
    exact: HashMap<String, Dated>,
    /// Most specific first (most non-`*` characters), ties in file order.
    patterns: Vec<(String, Dated)>,
}

impl Models {
    fn find(&self, model: &str) -> Option<&Dated> {
        self.exact.get(model).or_else(|| {
            self.patterns
                .iter()
                .find(|(p, _)| glob(p.as_bytes(), model.as_bytes()))
                .map(|(_, d)| d)
        })
    }
}

/// A model's prices: one always in force (most models: held inline),
/// or its changes by `since` (micros; `i64::MIN`: always), ascending.
#[derive(Debug, Clone)]
enum Dated {
    Always(Price),
    Changes(Vec<(i64, Price)>),
}

impl Dated {
    fn at(&self, at: Timestamp) -> Option<Price> {
        match self {
            Dated::Always(p) => Some(*p),
            Dated::Changes(c) => {
                let n = c.partition_point(|(since, _)| *since <= at.0);
                n.checked_sub(1).map(|i| c[i].1)
            }
        }
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters (bytes: names are compared as bytes, `*` is ASCII).
/// Linear backtracking to the last `*`, no allocation.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl PriceTable {
    /// No table: nothing is priced, every token is unpriced.
    pub fn none() -> Self {
        PriceTable::default()
    }

    /// Read a table from the bytes of a file (`name`, for messages): our
    /// YAML or LiteLLM's JSON, told apart by content. `Err`: every
    /// problem, each naming its entry and field.
    pub fn parse(bytes: &[u8], name: &str, opts: &PriceOptions) -> Result<PriceTable, Vec<String>> {
        Self::parse_with(bytes, name, opts, &FileLimits::default())
    }

    pub(super) fn parse_with(
        bytes: &[u8],
        name: &str,
        opts: &PriceOptions,
        limits: &FileLimits,
    ) -> Result<PriceTable, Vec<String>> {
        let max_yaml_depth = limits.max_yaml_depth;
        let fail = |p: String| Err(vec![format!("{name}: {p}")]);
        // A byte order mark is what some editors write first; neither
        // parser takes it, and it says nothing.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let Ok(text) = std::str::from_utf8(bytes) else {
            return fail("is not UTF-8 text: name a price table (YAML or LiteLLM's JSON)".into());
        };
        if text.trim().is_empty() {
            return fail("is empty: write a price table (docs/spend.md) or name LiteLLM's model_prices_and_context_window.json".into());
        }
        let yaml_fits = text.len() as u64 <= limits.max_yaml_bytes;
        let too_large = || {
            format!(
                "is YAML larger than {} bytes (--files.max-yaml-size): the YAML parser holds about 50 times that while it reads; raise the flag, or use LiteLLM's JSON format for a table this large",
                limits.max_yaml_bytes
            )
        };
        let mut b = Builder::new(opts);
        b.currency = opts.litellm_currency.clone();
        let format = if text.trim_start().starts_with('{') {
            b.litellm = true;
            match read_litellm(text, &mut b) {
                Ok(()) => TableFormat::Litellm,
                // `{currency: ..., models: [...]}`: our format, in flow style.
                Err(_) if b.ours => {
                    if !yaml_fits {
                        return fail(too_large());
                    }
                    b = Builder::new(opts);
                    read_ours(text, &mut b, max_yaml_depth);
                    TableFormat::Clawmesh
                }
                Err(e) => {
                    b.problem(e);
                    TableFormat::Litellm
                }
            }
        } else {
            if !yaml_fits {
                return fail(too_large());
            }
            read_ours(text, &mut b, max_yaml_depth);
            TableFormat::Clawmesh
        };
        if format == TableFormat::Litellm && b.problems.is_empty() && b.entries == 0 {
            b.problem("holds no priced model (no entry with litellm_provider, input_cost_per_token and output_cost_per_token): is it LiteLLM's model_prices_and_context_window.json?".into());
        }
        // A table of no model would be taken as no table at all (the
        // fleet prices nothing and counts no token as unpriced) while
        // its info says one is in force and budgets are accepted.
        if format == TableFormat::Clawmesh && b.problems.is_empty() && b.entries == 0 {
            b.problem("models: holds no model: list the models and their prices (docs/spend.md), or remove the price table".into());
        }
        b.finish(name, format)
    }

    /// Read the file `cfg` names within `limits`' deadline (its own size
    /// bound, `cfg.max_bytes`).
    pub fn load(cfg: &PricesConfig, limits: &FileLimits) -> Result<PriceTable, Vec<String>> {
        let limits = FileLimits {
            max_bytes: cfg.max_bytes,
            ..*limits
        };
        let name = cfg.file.display().to_string();
        let bytes = crate::files::read(&cfg.file, &limits).map_err(|e| {
            vec![match e {
                FileError::TooLarge { max } => format!(
                    "raise --prices.max-size (prices.max_size) or name a smaller price table: {name} is larger than {max} bytes"
                ),
                e => format!("check --prices.file (prices.file): {name} {e}"),
            }]
        })?;
        Self::parse_with(&bytes, &name, &cfg.options, &limits)
    }

    /// The price per token of `model` of `provider` in force at `at` (the
    /// task's finish): the exact model before a pattern, the most specific
    /// pattern first; of its dated prices the latest from on or before
    /// `at`. `None`: not priced (unknown model, or only later prices).
    ///
    /// The provider is first mapped by the aliases; models of provider
    /// `*` are looked at only when the provider has no such model.
    pub fn lookup(&self, provider: &str, model: &str, at: Timestamp) -> Option<Price> {
        let provider = self.aliases.get(provider).map_or(provider, String::as_str);
        let dated = self
            .providers
            .get(provider)
            .and_then(|m| m.find(model))
            .or_else(|| self.providers.get("*").and_then(|m| m.find(model)))?;
        dated.at(at)
    }

    /// The currency every price is in ("" without a table).
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// Entries held (models × price dates).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The format read; `None` without a table.
    pub fn format(&self) -> Option<TableFormat> {
        self.format
    }

    /// Whether this prices anything.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// What both formats build: entries, checked as they come, and every
/// problem found.
struct Builder<'o> {
    opts: &'o PriceOptions,
    currency: String,
    entries: usize,
    problems: Vec<String>,
    /// Problems past MAX_PROBLEMS, counted only.
    more: usize,
    providers: HashMap<String, BuildModels>,
    /// Entries are named `entry N` (LiteLLM) rather than `models[N]`,
    /// and a "provider/model" key is also found as "model" (unless the
    /// file has that model itself).
    litellm: bool,
    /// A top-level `currency` or `models` key was met in JSON: our format.
    ours: bool,
}

/// A model's prices as read: (since, price, the entry's index).
type Building = Vec<(i64, Price, usize)>;

#[derive(Default)]
struct BuildModels {
    exact: HashMap<String, Building>,
    patterns: Vec<(String, Building)>,
    pattern_index: HashMap<String, usize>,
}

/// Sorted by since; one price always in force held without a Vec.
fn dated(mut b: Building) -> Dated {
    b.sort_by_key(|(since, _, _)| *since);
    match b.as_slice() {
        [(i64::MIN, p, _)] => Dated::Always(*p),
        _ => Dated::Changes(b.into_iter().map(|(s, p, _)| (s, p)).collect()),
    }
}

impl<'o> Builder<'o> {
    fn new(opts: &'o PriceOptions) -> Self {
        Builder {
            opts,
            currency: String::new(),
            entries: 0,
            problems: Vec::new(),
            more: 0,
            providers: HashMap::new(),
            litellm: false,
            ours: false,
        }
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        } else {
            self.more += 1;
        }
    }

    /// One price of one model (`what`: the entry, for messages);
    /// `patterns`: whether `*` in the model is a pattern.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        index: usize,
        what: &str,
        provider: &str,
        model: &str,
        since: Option<i64>,
        price: Price,
        patterns: bool,
    ) {
        let since = since.unwrap_or(i64::MIN);
        if !self.providers.contains_key(provider) {
            self.providers
                .insert(provider.to_string(), BuildModels::default());
        }
        let Some(models) = self.providers.get_mut(provider) else {
            return;
        };
        let dated = if patterns && model.contains('*') {
            let i = *models
                .pattern_index
                .entry(model.to_string())
                .or_insert_with(|| {
                    models.patterns.push((model.to_string(), Vec::new()));
                    models.patterns.len() - 1
                });
            &mut models.patterns[i].1
        } else {
            // One price per model is the rule: no room for four.
            models
                .exact
                .entry(model.to_string())
                .or_insert_with(|| Vec::with_capacity(1))
        };
        if let Some(&(_, _, first)) = dated.iter().find(|d| d.0 == since) {
            let first = if self.litellm {
                format!("entry {first}")
            } else {
                format!("models[{first}]")
            };
            let p = format!("{what}: gives the price of this model again (first in {first}): keep one, or give each a different since");
            self.problem(p);
            return;
        }
        dated.push((since, price, index));
        self.entries += 1;
    }

    fn finish(self, name: &str, format: TableFormat) -> Result<PriceTable, Vec<String>> {
        if !self.problems.is_empty() {
            let mut out: Vec<String> = self
                .problems
                .into_iter()
                .map(|p| format!("{name}: {p}"))
                .collect();
            if self.more > 0 {
                out.push(format!("{name}: ... and {} more problems", self.more));
            }
            return Err(out);
        }
        let litellm = self.litellm;
        let providers = self
            .providers
            .into_iter()
            .map(|(p, m)| {
                // Straight into the table's map, short names added there:
                // the build map and a second copy of every name were the
                // peak of a large LiteLLM file (74 MB for 90,000 models).
                let mut shorts = Vec::new();
                if litellm {
                    for (k, b) in &m.exact {
                        let short = k.strip_prefix(p.as_str()).and_then(|k| k.strip_prefix('/'));
                        if let (Some(short), [(_, price, _)]) = (short, b.as_slice()) {
                            if !short.is_empty() && !m.exact.contains_key(short) {
                                shorts.push((short.to_string(), *price));
                            }
                        }
                    }
                }
                // Sized once: growing it doubles its buckets past the need.
                let mut exact: HashMap<String, Dated> =
                    HashMap::with_capacity(m.exact.len() + shorts.len());
                for (k, b) in m.exact {
                    exact.insert(k, dated(b));
                }
                for (short, price) in shorts {
                    exact.entry(short).or_insert(Dated::Always(price));
                }
                let mut patterns: Vec<_> =
                    m.patterns.into_iter().map(|(k, b)| (k, dated(b))).collect();
                // Stable: ties keep file order.
                patterns.sort_by_key(|(p, _)| {
                    std::cmp::Reverse(p.bytes().filter(|&c| c != b'*').count())
                });
                (p, Models { exact, patterns })
            })
            .collect();
        Ok(PriceTable {
            currency: self.currency,
            format: Some(format),
            entries: self.entries,
            providers,
            aliases: self
                .opts
                .provider_aliases
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// A price's text read exactly, per `shift` (-6: per million tokens),
/// within the highest price.
fn price_text(text: &str, shift: i32) -> Result<Money, String> {
    let m = Money::parse_decimal(text, shift).map_err(|e| {
        if e.starts_with("is too large") {
            above(text)
        } else {
            e
        }
    })?;
    if m > MAX_PRICE {
        return Err(above(text));
    }
    Ok(m)
}

fn above(text: &str) -> String {
    format!(
        "{} is above the highest price taken ({MAX_PER_MILLION} per million tokens): is the unit right?",
        crate::text::shorten(text, 40)
    )
}

// ---- Our own YAML (format "clawmesh") ----

const ENTRY_KEYS: [&str; 5] = [
    "provider",
    "model",
    "since",
    "input_per_million",
    "output_per_million",
];

/// The text of every plain scalar, as written: serde_norway reads
/// `2.50` as the float 2.5 and a long decimal would lose digits, so
/// price numbers are taken from this second reading, where a string
/// field receives the scalar's own text (plain or quoted). It fails
/// only where the first reading finds a problem too.
#[derive(serde::Deserialize)]
struct Texts {
    #[serde(default)]
    models: Vec<BTreeMap<String, String>>,
}

fn read_ours(text: &str, b: &mut Builder, max_depth: usize) {
    if let Err(e) = crate::files::check_yaml_depth(text, max_depth) {
        return b.problem(format!("{e}: a price table nests 3 deep"));
    }
    if let Err(e) = crate::files::check_yaml_aliases(text) {
        return b.problem(e.to_string());
    }
    let doc: Value = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => return b.problem(format!("is not valid YAML (nor LiteLLM's JSON): {e}")),
    };
    let Value::Mapping(top) = doc else {
        return b.problem(neither());
    };
    let has = |k: &str| top.get(k).is_some();
    if !has("currency") && !has("models") {
        return b.problem(neither());
    }
    for k in top.keys() {
        match k.as_str() {
            Some("currency" | "models") => {}
            _ => b.problem(format!(
                "{}: is not a key of a price table: the keys are currency and models",
                key_text(k)
            )),
        }
    }
    match top.get("currency") {
        Some(Value::String(c)) if c.len() == 3 && c.bytes().all(|c| c.is_ascii_uppercase()) => {
            b.currency = c.clone();
        }
        Some(v) => b.problem(format!(
            "currency: {} is not a currency code: write 3 upper-case letters, e.g. USD",
            short(v)
        )),
        None => b.problem(
            "currency: is missing: write the currency of the prices, e.g. currency: USD".into(),
        ),
    }
    let models = match top.get("models") {
        Some(Value::Sequence(m)) => m.as_slice(),
        Some(Value::Null) => &[],
        Some(v) => return b.problem(format!("models: is {}, not a list of models", kind(v))),
        None => return b.problem("models: is missing: list the models and their prices".into()),
    };
    if models.len() > b.opts.max_entries {
        return b.problem(format!(
            "models: holds {} entries, more than --prices.max-entries ({}): raise it, or is this the right file?",
            models.len(),
            b.opts.max_entries
        ));
    }
    let texts = serde_norway::from_str::<Texts>(text);
    for (i, entry) in models.iter().enumerate() {
        let texts = texts.as_ref().ok().and_then(|t| t.models.get(i));
        entry_read(b, i, entry, texts);
    }
    if let (Err(e), true) = (&texts, b.problems.is_empty()) {
        b.problem(format!("models: {e}"));
    }
}

fn entry_read(b: &mut Builder, i: usize, entry: &Value, texts: Option<&BTreeMap<String, String>>) {
    let Value::Mapping(m) = entry else {
        return b.problem(format!("models[{i}]: is {}, not a model (provider, model, input_per_million, output_per_million)", kind(entry)));
    };
    let name = |k: &str| match m.get(k) {
        Some(Value::String(s)) => s.as_str(),
        _ => "?",
    };
    let what = format!(
        "models[{i}] ({})",
        crate::text::shorten(&format!("{}/{}", name("provider"), name("model")), 100)
    );
    let mut ok = true;
    for k in m.keys() {
        if !k.as_str().is_some_and(|k| ENTRY_KEYS.contains(&k)) {
            ok = false;
            b.problem(format!(
                "{what}: {}: is not a key of a model: the keys are {}",
                key_text(k),
                ENTRY_KEYS.join(", ")
            ));
        }
    }
    let mut names = [""; 2];
    for (slot, k) in names.iter_mut().zip(["provider", "model"]) {
        match m.get(k) {
            Some(Value::String(s)) if !s.is_empty() => *slot = s.as_str(),
            Some(v) => {
                ok = false;
                b.problem(format!("{what}: {k}: is {}, not a name", kind(v)));
            }
            None => {
                ok = false;
                b.problem(format!("{what}: {k}: is missing"));
            }
        }
    }
    let since = match m.get("since") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match since_parse(s) {
            Some(t) => Some(t),
            None => {
                ok = false;
                b.problem(format!(
                    "{what}: since: {:?} is not a date: write 2026-12-01 or 2026-12-01T00:00:00Z",
                    crate::text::shorten(s, 40)
                ));
                None
            }
        },
        Some(v) => {
            ok = false;
            b.problem(format!(
                "{what}: since: is {}, not a date: write 2026-12-01 or 2026-12-01T00:00:00Z",
                kind(v)
            ));
            None
        }
    };
    let mut prices = [Money::ZERO; 2];
    for (slot, k) in prices
        .iter_mut()
        .zip(["input_per_million", "output_per_million"])
    {
        let text = match m.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(
                texts
                    .and_then(|t| t.get(k).cloned())
                    .unwrap_or_else(|| n.to_string()),
            ),
            Some(v) => {
                b.problem(format!(
                    "{what}: {k}: is {}, not a price: write a decimal number such as 2.5",
                    kind(v)
                ));
                None
            }
            None => {
                b.problem(format!(
                    "{what}: {k}: is missing: write the price of a million tokens, e.g. 2.5"
                ));
                None
            }
        };
        match text.map(|t| price_text(&t, -6)) {
            Some(Ok(p)) => *slot = p,
            Some(Err(e)) => {
                ok = false;
                b.problem(format!("{what}: {k}: {e}"));
            }
            None => ok = false,
        }
    }
    if ok {
        let price = Price {
            input: prices[0],
            output: prices[1],
        };
        b.add(i, &what, names[0], names[1], since, price, true);
    }
}

/// RFC 3339, or a date (00:00 UTC).
fn since_parse(s: &str) -> Option<i64> {
    if let Some(t) = Timestamp::parse(s) {
        return Some(t.0);
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros())
}

fn neither() -> String {
    "is neither a ClawMesh price table (YAML with currency: and models:, see docs/spend.md) nor LiteLLM's model_prices_and_context_window.json (a JSON object of models with litellm_provider)".into()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", crate::text::shorten(s, 40)),
        v => kind(v).to_string(),
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => crate::text::shorten(s, 60),
        v => kind(v).to_string(),
    }
}

// ---- LiteLLM's JSON (format "litellm") ----

/// LiteLLM's `model_prices_and_context_window.json` (format "litellm"),
/// read as a stream: one entry at a time, every field but the three used
/// skipped unread (`IgnoredAny`), so memory is the file's bytes and the
/// entries kept, and a file past `max_entries` stops there.
///
/// A cost is a JSON number, which serde_json reads as a double (the
/// `arbitrary_precision` feature would keep its text, but it changes
/// every number the crate reads). LiteLLM's file is written by Python,
/// whose `json` writes each double as its shortest round-trip decimal
/// (`5.0000000000000004e-08`); Rust's `{:e}` gives that same shortest
/// decimal, which is then read exactly: the price is the text in the file.
fn read_litellm(text: &str, b: &mut Builder) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let r = Top {
        b: &mut *b,
        index: 0,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    r.map_err(|e| {
        if e.is_data() {
            format!("{e}")
        } else {
            format!("is not valid JSON: {e}: is the file whole, as LiteLLM publishes it?")
        }
    })
}

struct Top<'a, 'o> {
    b: &'a mut Builder<'o>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of models (LiteLLM's model_prices_and_context_window.json)")
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let i = self.index;
            self.index += 1;
            // Every model counts, priced or not: reading stops here, after
            // at most max_entries models kept and as many entries read.
            if i >= self.b.opts.max_entries {
                return Err(de::Error::custom(format!(
                    "holds more than {} models (--prices.max-entries): raise it, or is this the right file?",
                    self.b.opts.max_entries
                )));
            }
            if key == "currency" || key == "models" {
                self.b.ours = true;
                return Err(de::Error::custom("our format"));
            }
            if key == "sample_spec" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let entry: Entry = map.next_value()?;
            let what = format!("entry {i} ({:?})", crate::text::shorten(&key, 100));
            if let Some(price) = entry.check(&what, self.b) {
                let provider = price.0;
                // A name past the API's 128 bytes is never asked for (the
                // API's reading hashes it): not kept, so that a table's
                // memory is bounded by its entries, not by its names.
                if key.len() > MAX_TEXT_LEN || provider.len() > MAX_TEXT_LEN {
                    continue;
                }
                self.b.add(i, &what, &provider, &key, None, price.1, false);
            }
        }
        Ok(())
    }
}

/// A field's value, whatever its type (a wrong type is a problem of
/// that entry, not an end of reading).
enum Scalar {
    /// A number's shortest decimal text.
    Num(String),
    Str(String),
    Null,
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;
impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Num(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Num(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        // The shortest decimal that reads back as `v`: what Python wrote.
        Ok(Scalar::Num(format!("{v:e}")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::Other("a boolean"))
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Scalar, A::Error> {
        while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Scalar, A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("a list"))
    }
}

/// One model's entry: the three fields used; `NotObject` when the
/// entry itself is not an object.
#[derive(Default)]
struct Entry {
    not_object: Option<&'static str>,
    provider: Option<Scalar>,
    input: Option<Scalar>,
    output: Option<Scalar>,
    twice: Option<&'static str>,
}

enum Field {
    Provider,
    Input,
    Output,
    Other,
}

impl<'de> serde::Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "litellm_provider" => Field::Provider,
                    "input_cost_per_token" => Field::Input,
                    "output_cost_per_token" => Field::Output,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> serde::Deserialize<'de> for Entry {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Entry, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a model's entry")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entry, A::Error> {
                let mut e = Entry::default();
                while let Some(k) = m.next_key::<Field>()? {
                    let (slot, name) = match k {
                        Field::Provider => (&mut e.provider, "litellm_provider"),
                        Field::Input => (&mut e.input, "input_cost_per_token"),
                        Field::Output => (&mut e.output, "output_cost_per_token"),
                        Field::Other => {
                            m.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let v = m.next_value::<Scalar>()?;
                    if slot.replace(v).is_some() {
                        e.twice = Some(name);
                    }
                }
                Ok(e)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Entry, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Entry::not(" a list"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Entry, E> {
                Ok(Entry::not(" a string"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Entry, E> {
                Ok(Entry::not(" a number"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Entry, E> {
                Ok(Entry::not(" a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Entry, E> {
                Ok(Entry::not(" a number"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Entry, E> {
                Ok(Entry::not(" a boolean"))
            }
            fn visit_unit<E>(self) -> Result<Entry, E> {
                Ok(Entry::not(" null"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Entry {
    fn not(kind: &'static str) -> Entry {
        Entry {
            not_object: Some(kind),
            ..Entry::default()
        }
    }

    /// The provider and price, `None` when skipped (a cost or the
    /// provider absent or null: LiteLLM lists models it does not price
    /// by token) or wrong (a problem is noted).
    fn check(self, what: &str, b: &mut Builder) -> Option<(String, Price)> {
        if let Some(kind) = self.not_object {
            b.problem(format!("{what}: is{kind}, not a model's object"));
            return None;
        }
        if let Some(name) = self.twice {
            b.problem(format!("{what}: {name}: is given twice: keep one"));
            return None;
        }
        let mut ok = true;
        let provider = match self.provider {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Str(s)) if !s.is_empty() => Some(s),
            Some(_) => {
                ok = false;
                b.problem(format!(
                    "{what}: litellm_provider: is not a provider's name"
                ));
                None
            }
        };
        let mut prices = [None, None];
        for (slot, (v, name)) in prices.iter_mut().zip([
            (self.input, "input_cost_per_token"),
            (self.output, "output_cost_per_token"),
        ]) {
            let text = match v {
                None | Some(Scalar::Null) => continue,
                Some(Scalar::Num(t)) => t,
                Some(Scalar::Str(s)) => {
                    ok = false;
                    b.problem(format!(
                        "{what}: {name}: is a string ({:?}), not a JSON number",
                        crate::text::shorten(&s, 40)
                    ));
                    continue;
                }
                Some(Scalar::Other(kind)) => {
                    ok = false;
                    b.problem(format!("{what}: {name}: is {kind}, not a JSON number"));
                    continue;
                }
            };
            match price_text(&text, 0) {
                Ok(m) => *slot = Some(m),
                Err(e) => {
                    ok = false;
                    b.problem(format!("{what}: {name}: {e}"));
                }
            }
        }
        match (ok, provider, prices) {
            (true, Some(p), [Some(input), Some(output)]) => Some((p, Price { input, output })),
            _ => None,
        }
    }
}
