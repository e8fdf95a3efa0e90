//! Integration tests: one binary, a module per concern.

mod util;

mod attack_prices;
mod breakdown;
mod budget;
mod checkpoint;
mod cli;
mod dashboards;
mod deploy;
mod docs;
mod exactness;
mod exposition;
mod formats;
mod health;
mod hostile_api;
mod hostile_clients;
mod layers;
mod logs;
mod operator;
mod otlp;
mod production;
mod prometheus;
mod rules;
mod scenario;
mod seams;
mod secrets;
mod spend;
mod spend_config;
mod webhook;

use std::path::{Path, PathBuf};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files directly in `dir` (relative to the repository root) whose name ends with `suffix`, sorted.
pub fn files_with_suffix(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let dir = repo_root().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
