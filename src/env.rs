//! The environment seam: where settings read environment variables. The
//! process in production, a map in tests, so that no test has to set (and
//! race on) the real environment.

use std::collections::HashMap;

/// Where the exporter reads its environment: the process, or a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}
