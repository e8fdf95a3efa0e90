//! The checkpoint flags (`--storage.*`): they win setting by setting over
//! the config file's `storage:`, and the result is checked once.

use super::StorageConfig;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, Args)]
pub struct StorageArgs {
    /// Directory for a checkpoint per workspace, so that a restart neither resets the counters nor misses what finished meanwhile (off without it; also `storage.path` in the config file).
    #[arg(long = "storage.path", env = "CLAWMESH_STORAGE_PATH")]
    pub storage_path: Option<PathBuf>,
    /// A checkpoint per workspace this often, one more at the stop; the counters it keeps are served as of the last one [default: 10s].
    #[arg(long = "storage.interval", env = "CLAWMESH_STORAGE_INTERVAL", value_parser = humantime::parse_duration)]
    pub storage_interval: Option<Duration>,
    /// Largest checkpoint written or read, uncompressed; a larger one is not written (counted) [default: 512MiB].
    #[arg(long = "storage.max-size", env = "CLAWMESH_STORAGE_MAX_SIZE", value_parser = crate::units::parse_size)]
    pub storage_max_size: Option<u64>,
    /// How long one checkpoint write may take (a frozen or hung volume); a write past it is given up and counted failed (timeout), the stop's final write too [default: 5s].
    #[arg(long = "storage.write-timeout", env = "CLAWMESH_STORAGE_WRITE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub storage_write_timeout: Option<Duration>,
}

impl StorageArgs {
    /// These flags over the config file's `storage:`, checked (and the
    /// directory checked writable); `None` when checkpoints are off.
    pub fn resolve(&self, file: Option<StorageConfig>) -> Result<Option<StorageConfig>, String> {
        // Flags win setting by setting over the file's `storage:`.
        let mut cfg = match (&self.storage_path, file) {
            (Some(dir), Some(f)) => StorageConfig {
                dir: dir.clone(),
                ..f
            },
            (Some(dir), None) => StorageConfig::new(dir.clone()),
            (None, Some(f)) => f,
            (None, None) => {
                if self.storage_interval.is_some()
                    || self.storage_max_size.is_some()
                    || self.storage_write_timeout.is_some()
                {
                    return Err("--storage.interval, --storage.max-size and --storage.write-timeout need --storage.path (or storage.path in the config file)".into());
                }
                return Ok(None);
            }
        };
        if let Some(i) = self.storage_interval {
            cfg.interval = i;
        }
        if let Some(m) = self.storage_max_size {
            cfg.max_size = m;
        }
        if let Some(t) = self.storage_write_timeout {
            cfg.write_timeout = t;
        }
        // Longer, and a write that hangs at the stop would outlast the
        // usual 30 s grace of a SIGTERM.
        if !(Duration::from_millis(100)..=Duration::from_secs(20)).contains(&cfg.write_timeout) {
            return Err(
                "--storage.write-timeout: must be from 100ms to 20s (a write that hangs at the stop holds the exit that long)".into(),
            );
        }
        // The counters a checkpoint keeps are served as of the last one:
        // longer than a minute and rates would stall (and alerts fire).
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&cfg.interval) {
            return Err(
                "--storage.interval: must be from 1s to 1m (the counters move once per checkpoint)"
                    .into(),
            );
        }
        if cfg.max_size < 1024 * 1024 {
            return Err("--storage.max-size: must be at least 1MiB".into());
        }
        cfg.check()?;
        Ok(Some(cfg))
    }
}
