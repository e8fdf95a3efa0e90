//! The table itself, its two file formats and its settings.

use super::Money;
use crate::api::types::Timestamp;
use crate::files::FileLimits;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    pub max_entries: usize,
    /// The currency of a LiteLLM table (it does not say; it is USD).
    pub litellm_currency: String,
}

impl Default for PriceOptions {
    fn default() -> Self {
        PriceOptions {
            provider_aliases: BTreeMap::new(),
            max_entries: 100_000,
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
        default_value_t = 100_000
    )]
    pub max_entries: usize,
    /// The largest price file read (LiteLLM's table is about 3.4 MB).
    #[arg(long = "prices.max-size", env = "CLAWMESH_PRICES_MAX_SIZE", default_value = "8MiB", value_parser = crate::units::parse_size)]
    pub max_size: u64,
}

/// Prices per provider and model, each from a date on.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    currency: String,
    format: Option<TableFormat>,
    entries: usize,
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
        let _ = (bytes, name, opts);
        Err(vec!["not implemented yet".into()])
    }

    /// Read the file `cfg` names within `limits`' deadline (its own size
    /// bound, `cfg.max_bytes`).
    pub fn load(cfg: &PricesConfig, limits: &FileLimits) -> Result<PriceTable, Vec<String>> {
        let _ = (cfg, limits, Path::new(""));
        Err(vec!["not implemented yet".into()])
    }

    /// The price per token of `model` of `provider` in force at `at` (the
    /// task's finish): the exact model before a pattern, the most specific
    /// pattern first; of its dated prices the latest from on or before
    /// `at`. `None`: not priced (unknown model, or only later prices).
    pub fn lookup(&self, provider: &str, model: &str, at: Timestamp) -> Option<Price> {
        let _ = (provider, model, at);
        None
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
