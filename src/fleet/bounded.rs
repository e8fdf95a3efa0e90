//! Label values from the outside world, bounded.

use std::collections::BTreeSet;

/// Admits label values: the known ones always, the first `cap` unknown ones
/// (of at most [`MAX_NAME_LEN`] bytes) by their own name, every later one
/// as "other". The admitted set only
/// grows, so a name keeps its series for the life of the process.
#[derive(Debug)]
pub struct BoundedNames {
    known: &'static [&'static str],
    unknown: BTreeSet<String>,
    cap: usize,
}

pub const OTHER: &str = "other";

/// A name longer than this (bytes) is "other": label values, and status
/// names that go into reconciliation URLs, stay short.
pub const MAX_NAME_LEN: usize = crate::api::types::MAX_TEXT_LEN;

impl BoundedNames {
    pub fn new(known: &'static [&'static str], cap: usize) -> Self {
        BoundedNames {
            known,
            unknown: BTreeSet::new(),
            cap,
        }
    }

    /// The unknown names admitted so far.
    pub fn admitted(&self) -> impl Iterator<Item = &str> {
        self.unknown.iter().map(String::as_str)
    }

    pub fn admit(&mut self, name: &str) -> String {
        if self.known.contains(&name) || self.unknown.contains(name) {
            return name.to_string();
        }
        if self.unknown.len() < self.cap && name != OTHER && name.len() <= MAX_NAME_LEN {
            self.unknown.insert(name.to_string());
            return name.to_string();
        }
        OTHER.to_string()
    }
}
