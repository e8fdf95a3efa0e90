//! The price table: what a model's tokens cost, per provider and model,
//! from a date on; read from our own small YAML or LiteLLM's
//! `model_prices_and_context_window.json` as it is.
//!
//! Prices are exact: a price is the decimal written in the file, held as an
//! integer number of [`Money`] units per token (10^-27 of the currency), so
//! that tokens × price, and every sum of them, is an integer and no rounding
//! ever happens. The fleet prices each task once, with the price in force
//! when it finished ([`PriceTable::lookup`]).
//!
//! Why 10^-27: a price per million tokens is written with up to 21
//! decimal places, so per token it needs 27; LiteLLM's per-token doubles,
//! read as the shortest decimal Python wrote, need up to 24
//! (5.0000000000000004e-08). A float would round at every addition, and a
//! counter that rounds differently after a restart is not the same counter.
//! u128 at this scale holds 3.4 × 10^11 of the currency, a fleet's spend
//! for ages; a sum that would pass it is refused, never wrapped.
//!
//! Numbers are read from their text: `Money::parse_decimal` takes `12`,
//! `0.5`, `.5` and `5.` (YAML reads those as numbers), `3e-6`; a YAML
//! price is the scalar's own text (`2.50`, `0.1` exactly as written, not
//! the float serde_norway would make of them).
//!
//! A table is checked whole: a file with one bad entry is refused with every
//! problem named (entry and field), and the table in use keeps running.

mod money;
mod table;

pub use money::{Money, MONEY_DIGITS};
pub use table::{
    parse_aliases, Price, PriceOptions, PriceTable, PricesArgs, PricesConfig, TableFormat,
    DEFAULT_MAX_ENTRIES,
};

use std::sync::{Arc, RwLock};

/// The table every workspace prices with, shared: a reload replaces it
/// in place (`replace`), and each sync takes the current one (`current`),
/// so a new table needs no restart of any workspace and loses no count.
#[derive(Clone, Default)]
pub struct Prices(Arc<RwLock<Arc<PriceTable>>>);

impl Prices {
    pub fn new(table: PriceTable) -> Self {
        Prices(Arc::new(RwLock::new(Arc::new(table))))
    }
    /// The table in force now.
    pub fn current(&self) -> Arc<PriceTable> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// Put `table` in force (a reload).
    pub fn replace(&self, table: PriceTable) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }
}

impl std::fmt::Debug for Prices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.current();
        f.debug_struct("Prices")
            .field("currency", &t.currency())
            .field("entries", &t.entries())
            .finish()
    }
}

/// Every handle is the process's one table: a workspace's settings compare
/// equal whatever it holds (a new table is not a new workspace).
impl PartialEq for Prices {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Prices {}

#[cfg(test)]
mod attack;
#[cfg(test)]
mod tests;
