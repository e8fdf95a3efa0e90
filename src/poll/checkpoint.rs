//! A workspace's checkpoints: resuming from one at the start, writing one
//! after syncs at most every `--storage.interval` and once more at the stop.
//! The file format and its atomic replacement are `crate::storage`'s.

use super::Workspace;
use crate::api::clock::ApiTime;
use crate::api::types::Timestamp;
use crate::fleet::{CheckpointHealth, Fleet};
use crate::storage::{self, Checkpoint, Found, StorageConfig};
use std::time::Duration;
use tokio::time::Instant;

/// How long the API keeps finished tasks (standard plans, CONTRACT.md:
/// "Tasks leave history 30 days after they finish").
const API_HISTORY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The fleet and watermark a workspace starts from: the checkpoint's when
/// there is a usable one, else `fresh()`'s and `fresh_watermark`.
pub(super) fn resume(
    storage: &storage::Storage,
    workspace: &str,
    now: ApiTime,
    fresh: impl Fn() -> Fleet,
    fresh_watermark: Timestamp,
) -> (Fleet, Timestamp, CheckpointHealth) {
    let mut health = CheckpointHealth::default();
    for r in CheckpointHealth::WRITE_FAILURES {
        health.write_failures.insert(r, 0);
    }
    let (cfg, shard) = (&storage.cfg, storage.shard);
    let path = cfg.path_of(workspace, shard);
    let refuse = |health: &mut CheckpointHealth, why: storage::Refusal, what: &str| {
        *health.refused.entry(why.name()).or_default() += 1;
        tracing::warn!(
            workspace,
            path = %path.display(),
            reason = why.name(),
            "the checkpoint is refused ({what}); the counters start from zero (it is replaced at the next write)"
        );
    };
    let c = match storage::read(cfg, workspace, shard) {
        Found::Nothing if storage::swept(&storage.swept, workspace) => {
            // Its checkpoint of another shard assignment went at the start.
            *health
                .refused
                .entry(storage::Refusal::Shard.name())
                .or_default() += 1;
            return (fresh(), fresh_watermark, health);
        }
        Found::Nothing => {
            tracing::info!(workspace, path = %path.display(), "no checkpoint for this workspace yet (a first start, or it is new to this shard): the counters start from zero");
            return (fresh(), fresh_watermark, health);
        }
        Found::Refused(why, what) => {
            refuse(&mut health, why, &what);
            return (fresh(), fresh_watermark, health);
        }
        Found::Usable(c) => *c,
    };
    let Checkpoint {
        api_saved_at,
        watermark,
        fleet: saved,
        ..
    } = c;
    let (fleet, note) = match fresh().restore(saved) {
        Ok(r) => r,
        Err(what) => {
            refuse(&mut health, storage::Refusal::Corrupt, &what);
            return (fresh(), fresh_watermark, health);
        }
    };
    let age = Duration::from_micros(
        now.latest
            .micros()
            .saturating_sub(api_saved_at)
            .max(0)
            .unsigned_abs(),
    );
    health.restored_age_seconds = Some(age.as_secs_f64());
    health.size_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    let age_text = humantime::format_duration(Duration::from_secs(age.as_secs()));
    if age > API_HISTORY {
        tracing::warn!(workspace, age = %age_text, "the checkpoint is older than the API's 30-day task history: the counters go on, but tasks that finished more than 30 days ago and after the checkpoint have left the API and are not counted");
    } else {
        tracing::info!(workspace, age = %age_text, "the counters go on from the checkpoint: the first listing reads every task changed since it was written, and counts each once");
    }
    if let Some(note) = note {
        tracing::warn!(workspace, "{note}");
    }
    (fleet, Timestamp::from_micros(watermark), health)
}

/// When a workspace's checkpoints are written.
pub(super) struct Saver {
    cfg: StorageConfig,
    shard: (u32, u32),
    last: Option<Instant>,
}

impl Saver {
    pub(super) fn new(cfg: StorageConfig, shard: (u32, u32)) -> Self {
        Saver {
            cfg,
            shard,
            last: None,
        }
    }

    /// Write a checkpoint if the interval has passed since the last (or
    /// `now_anyway`: at the stop).
    pub(super) async fn maybe_write(
        &mut self,
        ws: &Workspace,
        watermark: Timestamp,
        now_anyway: bool,
    ) {
        if !now_anyway && self.last.is_some_and(|t| t.elapsed() < self.cfg.interval) {
            return;
        }
        if now_anyway && ws.hub.killed() {
            return;
        }
        self.last = Some(Instant::now());
        let started = std::time::Instant::now();
        // Taken under the lock: the fleet and the watermark as of one moment.
        let c = {
            let st = ws.lock();
            Checkpoint {
                workspace: ws.id.clone(),
                shard: self.shard,
                saved_at: Timestamp::host_now().micros(),
                api_saved_at: ws.client.api_time().earliest.micros(),
                watermark: watermark.micros(),
                fleet: st.fleet.save(),
            }
        };
        let path = self.cfg.path_of(&ws.id, self.shard);
        let max = self.cfg.max_size;
        let written = tokio::task::spawn_blocking(move || {
            let bytes = storage::encode(&c, max)?;
            storage::write_atomic(&path, &bytes).map_err(storage::WriteError::Io)?;
            Ok::<u64, storage::WriteError>(bytes.len() as u64)
        })
        .await
        .unwrap_or_else(|e| {
            Err(storage::WriteError::Io(std::io::Error::other(
                e.to_string(),
            )))
        });
        {
            let mut st = ws.lock();
            let Some(h) = st.health.checkpoint.as_mut() else {
                return;
            };
            match written {
                Ok(n) => {
                    h.last_success = Some(Timestamp::host_now().as_secs_f64());
                    h.size_bytes = n;
                    h.write_seconds = started.elapsed().as_secs_f64();
                }
                Err(e) => {
                    let n = h.write_failures.entry(e.reason()).or_default();
                    *n += 1;
                    // The 1st, 2nd, 4th... failure: a full volume cannot flood the log.
                    if n.is_power_of_two() {
                        tracing::warn!(workspace = %ws.id, dir = %self.cfg.dir.display(), failures = *n, "cannot write the checkpoint: {e}");
                    }
                }
            }
        }
        ws.publish();
    }
}
