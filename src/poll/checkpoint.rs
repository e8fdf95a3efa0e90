//! A workspace's checkpoints: resuming from one at the start; a loop that
//! writes one every `--storage.interval` and once more at the stop; and
//! serving the counters a checkpoint keeps as the last one written has
//! them. The file format and its atomic replacement are `crate::storage`'s.

use crate::api::clock::ApiTime;
use crate::api::types::Timestamp;
use crate::fleet::{serve_durable, CheckpointHealth, Counters, Fleet, Snapshot};
use crate::hub::Hub;
use crate::storage::{self, Checkpoint, Found, StorageConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the checkpoint loop needs of its workspace (`super::Workspace` is
/// one): defined here, so that this file needs nothing of the poll loops
/// and they may use it.
pub(super) trait Checkpointed: Send + Sync + 'static {
    fn id(&self) -> &str;
    fn hub(&self) -> &Hub;
    /// Under one lock, as of one moment: the checkpoint to write, and the
    /// snapshot whose counters it keeps (`serve_durable`).
    fn take(&self, shard: (u32, u32), taken: Timestamp) -> (Checkpoint, Snapshot);
    /// Under the workspace's lock: `f` on its checkpoint health and the
    /// last checkpoint written; false (`f` not called) without checkpoint
    /// health.
    fn record(&self, f: &mut dyn FnMut(&mut CheckpointHealth, &mut Option<Arc<Snapshot>>)) -> bool;
    /// Publish the workspace's snapshot (after a write, its served counters move).
    fn publish(&self);
}

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
    lead: Duration,
) -> (Fleet, Timestamp, CheckpointHealth) {
    let mut health = CheckpointHealth::new();
    let (cfg, shard) = (&storage.cfg, storage.shard);
    let path = cfg.path_of(workspace, shard);
    let refuse = |health: &mut CheckpointHealth, why: storage::Refusal, what: &str| {
        *health.refused.entry(why.name()).or_default() += 1;
        // Set aside, not overwritten by the next write: a refusal that was
        // wrong (a clock far off at the start) can be undone by hand.
        let aside = storage::set_aside(&path);
        tracing::warn!(
            workspace,
            path = %path.display(),
            reason = why.name(),
            kept_as = aside.as_ref().map(|p| p.display().to_string()),
            "the checkpoint is refused ({what}); the counters start from zero (a new checkpoint is written at the next write)"
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
    // The floors, the watermark and the save time were taken from the
    // API's clock: later than that clock reads now (by more than the lead
    // any object may have), the API's clock went back (or the file is from
    // elsewhere), and the floor would keep every task finishing until then
    // from counting, unseen. Judged against the API's clock alone (a host
    // clock that is right says nothing of the API's), and only once
    // answers confirm it: one proxy's `Date` is not enough to throw
    // counters away.
    let newest = saved.newest_floor().max(watermark).max(api_saved_at);
    if now.confirmed() && newest > now.latest.saturating_add(lead).micros() {
        let ahead =
            Duration::from_micros(newest.saturating_sub(now.latest.micros()).unsigned_abs());
        refuse(
            &mut health,
            storage::Refusal::Future,
            &format!(
                "its counting floor, watermark or save time is {} ahead of the API's clock now (more than --api.max-timestamp-lead): the API's clock went back, or the file is from elsewhere",
                humantime::format_duration(Duration::from_secs(ahead.as_secs()))
            ),
        );
        return (fresh(), fresh_watermark, health);
    }
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

/// Whether serving `durable`'s counters ([`serve_durable`], the join's)
/// serves every
/// count `live` has: the fleet holds nothing the last checkpoint written
/// lacks.
pub(super) fn serves_all(live: &Snapshot, durable: &Snapshot) -> bool {
    let same = |a: &Counters, b: &Counters| {
        a.finished == b.finished
            && a.failures == b.failures
            && a.input_tokens == b.input_tokens
            && a.output_tokens == b.output_tokens
            && a.queue_seconds == b.queue_seconds
            && a.run_seconds == b.run_seconds
            && a.rejected == b.rejected
    };
    let mut served = live.clone();
    serve_durable(&mut served, durable);
    same(&served.counters, &live.counters)
        && served
            .task_groups
            .iter()
            .zip(&live.task_groups)
            .all(|(s, l)| same(&s.counters, &l.counters))
}

/// The checkpoint loop of a workspace: a checkpoint every
/// `--storage.interval` (the fleet as the last sync or webhook batch left
/// it), and one at the stop, but after a kill (the test seam).
pub(super) async fn run<W: Checkpointed>(
    mut saver: Saver,
    ws: Arc<W>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = crate::supervise::Backoff::default();
    // The first soon (until it, the counters are served live and a crash
    // would lose them), then every interval.
    let mut next = saver.cfg.interval.min(Duration::from_secs(1));
    loop {
        let pause = std::mem::replace(&mut next, saver.cfg.interval);
        let stopped = tokio::select! {
            _ = tokio::time::sleep(pause) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped && ws.hub().killed() {
            return;
        }
        match crate::supervise::guard(saver.write(&*ws)).await {
            Ok(()) => backoff.succeeded(),
            Err(c) => {
                let pause = backoff.failed();
                ws.hub().count_restart("checkpoint");
                crate::supervise::report("checkpoint", ws.id(), &c, pause);
                if !stopped
                    && crate::supervise::sleep_or_stop(Instant::now() + pause, &mut stop).await
                {
                    return;
                }
            }
        }
        if stopped {
            return;
        }
    }
}

/// Where and how a workspace's checkpoints are written.
pub(super) struct Saver {
    cfg: StorageConfig,
    shard: (u32, u32),
    /// The checkpoint's ownership, held while this slot runs (and by a
    /// write still running after it).
    lock: Option<storage::Lock>,
    /// A write given up at its deadline whose process has not ended: no
    /// other is started until it has (at most one in flight).
    abandoned: Option<storage::Writer>,
    /// The temporary file an abandoned write left (killed mid-write): the
    /// next writer removes it.
    stale: Option<std::path::PathBuf>,
}

impl Saver {
    pub(super) fn new(cfg: StorageConfig, shard: (u32, u32), lock: Option<storage::Lock>) -> Self {
        Saver {
            cfg,
            shard,
            lock,
            abandoned: None,
            stale: None,
        }
    }

    /// Write a checkpoint of the workspace as it is now; once written, its
    /// counters are the ones served. Never longer than
    /// `--storage.write-timeout` (encoding aside).
    async fn write<W: Checkpointed>(&mut self, ws: &W) {
        let started = std::time::Instant::now();
        let written = match self.abandoned.as_mut().map(|w| w.finished()) {
            Some(None) => Err(storage::WriteError::Stuck),
            _ => {
                if let Some(w) = self.abandoned.take() {
                    self.stale = Some(w.temporary().to_path_buf());
                }
                self.write_now(ws).await
            }
        };
        let mut written = Some(written);
        let recorded = ws.record(&mut |h, durable| {
            let Some(written) = written.take() else {
                return;
            };
            match written {
                Ok((n, taken, snap)) => {
                    // As of when its state was taken: what is safe on disk.
                    h.last_success = Some(taken.as_secs_f64());
                    h.size_bytes = n;
                    h.write_seconds = started.elapsed().as_secs_f64();
                    *durable = Some(Arc::new(snap));
                }
                Err(e) => {
                    // The counters served stay those of the last checkpoint
                    // written: served further, a restart now (from that
                    // checkpoint) would show them fall. They move again
                    // with the next write that succeeds; meanwhile this
                    // counts, and the alert fires.
                    let n = h.write_failures.entry(e.reason()).or_default();
                    *n += 1;
                    // The 1st, 2nd, 4th... failure: a full volume cannot flood the log.
                    if n.is_power_of_two() {
                        tracing::warn!(workspace = %ws.id(), dir = %self.cfg.dir.display(), failures = *n, "cannot write the checkpoint: {e}; the counters served stay as the last checkpoint has them until a write succeeds");
                    }
                }
            }
        });
        if !recorded {
            return;
        }
        ws.publish();
    }

    /// Take the workspace's state, encode it and write it: its size, when
    /// it was taken and the snapshot whose counters it keeps.
    async fn write_now(
        &mut self,
        ws: &impl Checkpointed,
    ) -> Result<(u64, Timestamp, Snapshot), storage::WriteError> {
        // Taken under the lock: the fleet, the watermark and what will be
        // served, as of one moment.
        let taken = Timestamp::host_now();
        let (c, snap) = ws.take(self.shard, taken);
        let max = self.cfg.max_size;
        let bytes = tokio::task::spawn_blocking(move || storage::encode(&c, max))
            .await
            .unwrap_or_else(|e| {
                Err(storage::WriteError::Io(std::io::Error::other(
                    e.to_string(),
                )))
            })?;
        let path = self.cfg.path_of(ws.id(), self.shard);
        let mut writer =
            storage::Writer::start_after(&path, &bytes, self.lock.as_ref(), self.stale.as_deref())
                .map_err(storage::WriteError::Io)?;
        self.stale = None;
        let deadline = Instant::now() + self.cfg.write_timeout;
        loop {
            if let Some(done) = writer.finished() {
                done.map_err(storage::WriteError::Io)?;
                return Ok((bytes.len() as u64, taken, snap));
            }
            if Instant::now() >= deadline {
                writer.abandon();
                self.abandoned = Some(writer);
                return Err(storage::WriteError::Timeout(self.cfg.write_timeout));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
